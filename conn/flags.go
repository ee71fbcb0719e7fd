package conn

import (
	"flag"
	"fmt"
	"time"
)

// RegisterFlags defines the --kafka-tls* and --kafka-sasl-* flags on fs,
// bound to k's fields, with k's current values as their defaults (so a
// program that parses its arguments with several flag sets keeps what an
// earlier one set). The usage strings do not name the environment twins:
// EnvName does, and FromEnv reads them.
func (k *Kafka) RegisterFlags(fs *flag.FlagSet) {
	fs.BoolVar(&k.TLS, "kafka-tls", k.TLS, "connect to Kafka with TLS (implied by the other --kafka-tls-* flags)")
	fs.StringVar(&k.CAFile, "kafka-tls-ca", k.CAFile, "PEM `file` of the CAs that sign the brokers' certificates (default: the system's roots)")
	fs.StringVar(&k.CertFile, "kafka-tls-cert", k.CertFile, "client certificate PEM `file`, for brokers that authenticate clients by certificate (needs --kafka-tls-key)")
	fs.StringVar(&k.KeyFile, "kafka-tls-key", k.KeyFile, "private key PEM `file` of --kafka-tls-cert")
	fs.StringVar(&k.ServerName, "kafka-tls-server-name", k.ServerName, "`name` the brokers' certificates must be valid for (default: the host of each broker address)")
	fs.StringVar(&k.SASLMechanism, "kafka-sasl-mechanism", k.SASLMechanism, "SASL `mechanism`: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or AWS_MSK_IAM (credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN); empty: no SASL")
	fs.StringVar(&k.Username, "kafka-sasl-username", k.Username, "SASL `user` (PLAIN, SCRAM)")
	fs.StringVar(&k.Password, "kafka-sasl-password", k.Password, "SASL `password` (PLAIN, SCRAM); prefer --kafka-sasl-password-file or the environment")
	fs.StringVar(&k.PasswordFile, "kafka-sasl-password-file", k.PasswordFile, "`file` holding the SASL password (a mounted Secret), read for every new connection")
}

// RegisterFlags defines the --redis-username, --redis-password* and
// --redis-tls* flags on fs, bound to r's fields, with r's current values as
// their defaults. The usage strings do not name the environment twins:
// EnvName does, and FromEnv reads them.
func (r *Redis) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&r.Username, "redis-username", r.Username, "Redis ACL `user` (default: the default user)")
	fs.StringVar(&r.Password, "redis-password", r.Password, "Redis `password` (of --redis-username, or --requirepass); prefer --redis-password-file or the environment")
	fs.StringVar(&r.PasswordFile, "redis-password-file", r.PasswordFile, "`file` holding the Redis password (a mounted Secret), read for every new connection")
	fs.BoolVar(&r.TLS, "redis-tls", r.TLS, "connect to Redis with TLS (implied by the other --redis-tls-* flags)")
	fs.StringVar(&r.CAFile, "redis-tls-ca", r.CAFile, "PEM `file` of the CAs that sign Redis's certificate (default: the system's roots)")
	fs.StringVar(&r.CertFile, "redis-tls-cert", r.CertFile, "client certificate PEM `file`, for tls-auth-clients yes (needs --redis-tls-key)")
	fs.StringVar(&r.KeyFile, "redis-tls-key", r.KeyFile, "private key PEM `file` of --redis-tls-cert")
	fs.StringVar(&r.ServerName, "redis-tls-server-name", r.ServerName, "`name` Redis's certificate must be valid for (default: the host of the address)")
}

// FlagNames returns the names of the flags that RegisterFlags defines,
// sorted (Kafka's, then Redis's), for a program that lists environment
// twins. It reads them from RegisterFlags: there is no list to keep.
func FlagNames() []string {
	fs := flag.NewFlagSet("conn", flag.ContinueOnError)
	new(Kafka).RegisterFlags(fs)
	new(Redis).RegisterFlags(fs)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	return names
}

// FromEnv sets each flag that RegisterFlags defined on fs and that was not
// given on fs's command line from its environment twin (EnvName), read
// with getenv, when that is not empty: the flag wins over its twin. Call it
// after fs.Parse. Flags of other packages are left alone. It returns an
// error naming the variable when a value does not parse (KSAGA_KAFKA_TLS
// wants true or false).
func FromEnv(fs *flag.FlagSet, getenv func(string) string) error {
	_, err := ApplyEnv(GoFlags(fs, FlagNames()...), getenv)
	return err
}

// EnvFlag is a flag with a KSAGA_* environment twin, as ApplyEnv sees it:
// the daemon's flags, sagactl's (on pflag) and this package's share
// ApplyEnv through it.
type EnvFlag struct {
	// Name is the flag's name without dashes; its twin is EnvName(Name).
	Name string
	// Given reports whether the command line set the flag.
	Given bool
	// Kind is what the flag's value is, for the error message: "bool",
	// "int", "float", "duration", or "" for anything else.
	Kind string
	// Set sets the flag from a string, as the command line does.
	Set func(string) error
}

// ApplyEnv sets each of flags that was not given on the command line from
// its environment twin (EnvName), read with getenv, when that is not
// empty: a flag given on the command line wins over its twin. It returns
// the names of the flags it set, each with its variable. Its error names
// the first variable whose value does not parse and what the flag wants
// (KSAGA_PARTITIONS="x": --partitions wants an integer).
func ApplyEnv(flags []EnvFlag, getenv func(string) string) (map[string]string, error) {
	set := make(map[string]string)
	for _, f := range flags {
		if f.Given {
			continue
		}
		env := EnvName(f.Name)
		v := getenv(env)
		if v == "" {
			continue
		}
		if err := f.Set(v); err != nil {
			want := fmt.Sprintf("a valid value (%v)", err)
			switch f.Kind {
			case "bool":
				want = "true or false"
			case "int":
				want = "an integer"
			case "float":
				want = "a number"
			case "duration":
				want = "a duration such as 30s or 720h"
			}
			return set, fmt.Errorf("%s=%q: --%s wants %s", env, v, f.Name, want)
		}
		set[f.Name] = env
	}
	return set, nil
}

// GoFlags returns the flags of fs named in names (all of fs's, in
// lexicographical order, when names is empty) for ApplyEnv. Call it after
// fs.Parse: Given says whether the command line set each. A name fs does
// not define is left out.
func GoFlags(fs *flag.FlagSet, names ...string) []EnvFlag {
	given := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var out []EnvFlag
	add := func(f *flag.Flag) {
		out = append(out, EnvFlag{Name: f.Name, Given: given[f.Name], Kind: goKind(f), Set: func(v string) error { return fs.Set(f.Name, v) }})
	}
	if len(names) == 0 {
		fs.VisitAll(add)
		return out
	}
	for _, name := range names {
		if f := fs.Lookup(name); f != nil {
			add(f)
		}
	}
	return out
}

// goKind is EnvFlag.Kind of a flag of package flag.
func goKind(f *flag.Flag) string {
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return "bool"
	}
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case int, int64, uint, uint64:
			return "int"
		case float64:
			return "float"
		case time.Duration:
			return "duration"
		}
	}
	return ""
}
