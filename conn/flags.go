package conn

import (
	"flag"
	"fmt"
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

// flagNames are the flags RegisterFlags defines, Kafka's then Redis's.
var flagNames = []string{
	"kafka-tls", "kafka-tls-ca", "kafka-tls-cert", "kafka-tls-key", "kafka-tls-server-name",
	"kafka-sasl-mechanism", "kafka-sasl-username", "kafka-sasl-password", "kafka-sasl-password-file",
	"redis-username", "redis-password", "redis-password-file",
	"redis-tls", "redis-tls-ca", "redis-tls-cert", "redis-tls-key", "redis-tls-server-name",
}

// FlagNames returns the names of the flags that RegisterFlags defines
// (Kafka's, then Redis's), for a program that lists environment twins.
func FlagNames() []string { return append([]string(nil), flagNames...) }

// FromEnv sets each flag that RegisterFlags defined on fs and that was not
// given on fs's command line from its environment twin (EnvName), read
// with getenv, when that is not empty: the flag wins over its twin. Call it
// after fs.Parse. Flags of other packages are left alone. It returns an
// error naming the variable when a value does not parse (KSAGA_KAFKA_TLS
// wants true or false).
func FromEnv(fs *flag.FlagSet, getenv func(string) string) error {
	given := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, name := range flagNames {
		if given[name] || fs.Lookup(name) == nil {
			continue
		}
		env := EnvName(name)
		v := getenv(env)
		if v == "" {
			continue
		}
		if err := fs.Set(name, v); err != nil {
			return fmt.Errorf("%s=%q: --%s wants true or false", env, v, name)
		}
	}
	return nil
}
