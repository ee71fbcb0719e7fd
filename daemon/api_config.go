package daemon

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// APIConfig is the configuration of the HTTP API (the --api-* flags). Its
// zero value is the API turned off.
type APIConfig struct {
	// Addr is where the API listens (--api-addr); empty disables it.
	Addr string
	// TokenFile holds the bearer tokens the API accepts, one a line
	// (--api-token-file). The daemon reads it again when it changes. A
	// file that does not exist (yet) is no token: every request gets 401
	// until it appears, so that an optional Kubernetes Secret can be
	// created after the pods.
	TokenFile string
	// InsecureNoAuth serves the API without authentication
	// (--api-insecure-no-auth); it excludes TokenFile.
	InsecureNoAuth bool
	// TLSCert and TLSKey are the PEM files of the API's certificate and
	// key (--api-tls-cert, --api-tls-key): both or neither. The daemon
	// reads them again when they change.
	TLSCert, TLSKey string
	// ProduceTimeout bounds how long a request waits for Kafka to
	// acknowledge its record (--api-produce-timeout); past it the API
	// answers 503.
	ProduceTimeout time.Duration
}

// Enabled reports whether the API runs (--api-addr is set).
func (c APIConfig) Enabled() bool { return c.Addr != "" }

// apiFlags holds the --api-* flags as given.
type apiFlags struct {
	addr, tokenFile, tlsCert, tlsKey string
	insecure                         bool
	produceTimeout                   time.Duration
}

// defaultProduceTimeout is the default of --api-produce-timeout: long
// enough for a leader election, short enough for an HTTP caller.
const defaultProduceTimeout = 5 * time.Second

func (v *apiFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&v.addr, "api-addr", "", "`address` of the HTTP API (POST /v1/sagas/{type}/{id} starts a saga, GET reads it); empty disables it")
	fs.StringVar(&v.tokenFile, "api-token-file", "", "`file` of the bearer tokens the HTTP API accepts, one a line (# starts a comment); read again when it changes")
	fs.BoolVar(&v.insecure, "api-insecure-no-auth", false, "serve the HTTP API without authentication (instead of --api-token-file): anyone who reaches it can start and compensate sagas")
	fs.StringVar(&v.tlsCert, "api-tls-cert", "", "PEM `file` of the HTTP API's TLS certificate (with --api-tls-key; read again when it changes); default plain HTTP")
	fs.StringVar(&v.tlsKey, "api-tls-key", "", "PEM `file` of the HTTP API's TLS key (with --api-tls-cert)")
	fs.DurationVar(&v.produceTimeout, "api-produce-timeout", defaultProduceTimeout, "how long an HTTP API request waits for Kafka to store its record before answering 503")
}

// config validates the --api-* flags; name names a flag as it was given.
func (v *apiFlags) config(name func(string) string, set map[string]string) (APIConfig, error) {
	c := APIConfig{Addr: v.addr, TokenFile: v.tokenFile, InsecureNoAuth: v.insecure,
		TLSCert: v.tlsCert, TLSKey: v.tlsKey, ProduceTimeout: v.produceTimeout}
	if c.Addr == "" {
		for _, f := range []string{"api-token-file", "api-insecure-no-auth", "api-tls-cert", "api-tls-key", "api-produce-timeout"} {
			if _, ok := set[f]; ok {
				return c, fmt.Errorf("%s applies only with --api-addr (the HTTP API is off without it)", name(f))
			}
		}
		return APIConfig{}, nil
	}
	if err := checkListenAddr(c.Addr); err != nil {
		return c, fmt.Errorf("%s %q: %w (use host:port or :port, or \"\" to disable the HTTP API)", name("api-addr"), c.Addr, err)
	}
	switch {
	case c.TokenFile != "" && c.InsecureNoAuth:
		return c, fmt.Errorf("%s and %s exclude each other: keep the token file to require bearer tokens", name("api-token-file"), name("api-insecure-no-auth"))
	case c.TokenFile == "" && !c.InsecureNoAuth:
		return c, fmt.Errorf("%s needs --api-token-file (bearer tokens, one a line), or --api-insecure-no-auth to serve the API without authentication", name("api-addr"))
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return c, fmt.Errorf("%s and %s go together: set both or neither", name("api-tls-cert"), name("api-tls-key"))
	case c.ProduceTimeout < 10*time.Millisecond:
		return c, fmt.Errorf("%s %v is too short: want a duration such as 5s", name("api-produce-timeout"), c.ProduceTimeout)
	}
	if c.TokenFile != "" {
		// The file may appear later (an optional Secret), but its
		// directory must exist: a wrong path is a usage error.
		fi, err := os.Stat(c.TokenFile)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if _, derr := os.Stat(filepath.Dir(c.TokenFile)); derr != nil {
				return c, fmt.Errorf("%s %s: %w", name("api-token-file"), c.TokenFile, derr)
			}
		case err != nil:
			return c, fmt.Errorf("%s: %w", name("api-token-file"), err)
		case fi.IsDir():
			return c, fmt.Errorf("%s %s is a directory: want the file of the tokens", name("api-token-file"), c.TokenFile)
		default:
			if _, err := os.ReadFile(c.TokenFile); err != nil {
				return c, fmt.Errorf("%s: %w", name("api-token-file"), err)
			}
		}
	}
	if c.TLSCert != "" {
		if _, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey); err != nil {
			return c, fmt.Errorf("%s %s, %s %s: %w", name("api-tls-cert"), c.TLSCert, name("api-tls-key"), c.TLSKey, err)
		}
	}
	return c, nil
}
