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
	// TokenFile holds the bearer tokens the API accepts, one a line, each
	// with a name and scopes (parseTokens describes the format;
	// --api-token-file). Every line must be a valid token, of at least 32
	// bytes, when the daemon starts. The daemon reads it again when it
	// changes, skipping invalid lines then. A
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
	// MaxInFlight bounds the requests served at once
	// (--api-max-in-flight); past it the API answers 429 with
	// Retry-After. Each holds at most a few times the body limit (256
	// KiB) in memory.
	MaxInFlight int
	// MaxWait bounds the wait a request may ask for with ?wait=
	// (--api-max-wait); 0 turns waiting off. The API's write timeout
	// grows with it.
	MaxWait time.Duration
	// MaxWaiters bounds the requests waiting for an outcome at once
	// (--api-max-waiters); past it a request that asks to wait is
	// answered 429 with Retry-After, and nothing is done. A waiting
	// request holds a waiter slot, not one of MaxInFlight's: waits never
	// keep starts out.
	MaxWaiters int
}

// Enabled reports whether the API runs (--api-addr is set).
func (c APIConfig) Enabled() bool { return c.Addr != "" }

// defaultProduceTimeout is the default of --api-produce-timeout: long
// enough for a leader election, short enough for an HTTP caller.
const defaultProduceTimeout = 5 * time.Second

// defaultMaxInFlight is the default of --api-max-in-flight: at about 1 MiB
// for a request with a body of the 256 KiB limit (TestAPIBoundedMemory),
// 64 MiB at most.
const defaultMaxInFlight = 64

// defaultMaxWait is the default of --api-max-wait, and maxMaxWait its
// largest value: a wait past a few minutes outlives proxies' idle
// timeouts, and a caller that needs longer asks again.
const (
	defaultMaxWait = 60 * time.Second
	maxMaxWait     = 10 * time.Minute
)

// defaultMaxWaiters is the default of --api-max-waiters: at about 17 KiB
// of heap and 10 to 18 KiB of goroutine stacks a waiter
// (BenchmarkAPIWaiters: net/http's connection, its buffers and its two
// goroutines, mostly), 36 MiB at most.
const defaultMaxWaiters = 1024

// register binds the --api-* flags to c's fields.
func (c *APIConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.Addr, "api-addr", "", "`address` of the HTTP API (POST /v1/sagas/{type}/{id} starts a saga, GET reads it); empty disables it")
	fs.StringVar(&c.TokenFile, "api-token-file", "", "`file` of the bearer tokens the HTTP API accepts, one a line: NAME TOKEN SCOPE... (SCOPE: start|read|compensate|resume|*:TYPE|*), or TOKEN alone (every scope); # starts a comment; read again when it changes")
	fs.BoolVar(&c.InsecureNoAuth, "api-insecure-no-auth", false, "serve the HTTP API without authentication (instead of --api-token-file): anyone who reaches it can start and compensate sagas")
	fs.StringVar(&c.TLSCert, "api-tls-cert", "", "PEM `file` of the HTTP API's TLS certificate (with --api-tls-key; read again when it changes); default plain HTTP")
	fs.StringVar(&c.TLSKey, "api-tls-key", "", "PEM `file` of the HTTP API's TLS key (with --api-tls-cert)")
	fs.DurationVar(&c.ProduceTimeout, "api-produce-timeout", defaultProduceTimeout, "how long an HTTP API request waits for Kafka to store its record before answering 503")
	fs.IntVar(&c.MaxInFlight, "api-max-in-flight", defaultMaxInFlight, "how many HTTP API requests are served at once; past it they are answered 429 with Retry-After (each takes up to about 1 MiB); a request waiting for an outcome (?wait=) counts against --api-max-waiters instead while it waits")
	fs.DurationVar(&c.MaxWait, "api-max-wait", defaultMaxWait, "the longest wait for a saga's outcome a request may ask for with ?wait= (POST or GET /v1/sagas/{type}/{id}); a longer one is answered 400; 0 turns waiting off (at most 10m)")
	fs.IntVar(&c.MaxWaiters, "api-max-waiters", defaultMaxWaiters, "how many HTTP API requests may wait for an outcome (?wait=) at once; past it they are answered 429 with Retry-After (each takes up to about 35 KiB while it waits)")
}

// validate checks the --api-* flags in c, and makes c the zero APIConfig
// when the API is off; name names a flag as it was given.
func (c *APIConfig) validate(name func(string) string, set map[string]string) error {
	if c.Addr == "" {
		for _, f := range []string{"api-token-file", "api-insecure-no-auth", "api-tls-cert", "api-tls-key", "api-produce-timeout", "api-max-in-flight", "api-max-wait", "api-max-waiters"} {
			if _, ok := set[f]; ok {
				return fmt.Errorf("%s applies only with --api-addr (the HTTP API is off without it)", name(f))
			}
		}
		*c = APIConfig{}
		return nil
	}
	if err := checkListenAddr(c.Addr); err != nil {
		return fmt.Errorf("%s %q: %w (use host:port or :port, or \"\" to disable the HTTP API)", name("api-addr"), c.Addr, err)
	}
	switch {
	case c.TokenFile != "" && c.InsecureNoAuth:
		return fmt.Errorf("%s and %s exclude each other: keep the token file to require bearer tokens", name("api-token-file"), name("api-insecure-no-auth"))
	case c.TokenFile == "" && !c.InsecureNoAuth:
		return fmt.Errorf("%s needs --api-token-file (bearer tokens, one a line), or --api-insecure-no-auth to serve the API without authentication", name("api-addr"))
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return fmt.Errorf("%s and %s go together: set both or neither", name("api-tls-cert"), name("api-tls-key"))
	case c.ProduceTimeout < 10*time.Millisecond:
		return fmt.Errorf("%s %v is too short: want a duration such as 5s", name("api-produce-timeout"), c.ProduceTimeout)
	case c.MaxInFlight < 1:
		return fmt.Errorf("%s %d: want 1 or more requests at once (default %d)", name("api-max-in-flight"), c.MaxInFlight, defaultMaxInFlight)
	case c.MaxWait < 0 || c.MaxWait > maxMaxWait:
		return fmt.Errorf("%s %v: want a duration from 0 (no waiting) to %v (default %v)", name("api-max-wait"), c.MaxWait, maxMaxWait, defaultMaxWait)
	case c.MaxWaiters < 1:
		return fmt.Errorf("%s %d: want 1 or more waiting requests at once (default %d)", name("api-max-waiters"), c.MaxWaiters, defaultMaxWaiters)
	}
	if c.TokenFile != "" {
		// The file may appear later (an optional Secret), but its
		// directory must exist: a wrong path is a usage error.
		fi, err := os.Stat(c.TokenFile)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if _, derr := os.Stat(filepath.Dir(c.TokenFile)); derr != nil {
				return fmt.Errorf("%s %s: %w", name("api-token-file"), c.TokenFile, derr)
			}
		case err != nil:
			return fmt.Errorf("%s: %w", name("api-token-file"), err)
		case fi.IsDir():
			return fmt.Errorf("%s %s is a directory: want the file of the tokens", name("api-token-file"), c.TokenFile)
		default:
			b, err := os.ReadFile(c.TokenFile)
			if err != nil {
				return fmt.Errorf("%s: %w", name("api-token-file"), err)
			}
			// At start every line must be a token: a short token or a
			// mistyped scope stops the daemon here, where it is seen,
			// rather than being skipped (as a reload of the file skips
			// it, with an error in the log).
			if _, problems := parseTokens(b); len(problems) > 0 {
				more := ""
				if len(problems) > 1 {
					more = fmt.Sprintf(" (and %d more lines)", len(problems)-1)
				}
				return fmt.Errorf("%s %s: %v%s", name("api-token-file"), c.TokenFile, problems[0], more)
			}
		}
	}
	if c.TLSCert != "" {
		if _, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey); err != nil {
			return fmt.Errorf("%s %s, %s %s: %w", name("api-tls-cert"), c.TLSCert, name("api-tls-key"), c.TLSKey, err)
		}
	}
	return nil
}
