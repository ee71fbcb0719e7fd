package daemon

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/console"
	"github.com/ksaga/ksaga/saga"
)

// ConsoleConfig is the configuration of the web console (the --console-*
// flags, package console). Its zero value is the console turned off.
type ConsoleConfig struct {
	// Addr is where the console listens (--console-addr); empty disables
	// it.
	Addr string
	// TokenFile holds the tokens users log in with: --console-token-file,
	// else --api-token-file (the same file, names and scopes as the HTTP
	// API's).
	TokenFile string
	// TLSCert and TLSKey are the console's certificate and key:
	// --console-tls-cert and --console-tls-key, else the API's.
	TLSCert, TLSKey string
	// TraceURL links a saga to its trace: {trace_id} is replaced by the
	// saga's trace id (--console-trace-url).
	TraceURL string
}

// Enabled reports whether the console runs (--console-addr is set).
func (c ConsoleConfig) Enabled() bool { return c.Addr != "" }

// register binds the --console-* flags to c's fields.
func (c *ConsoleConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.Addr, "console-addr", "", "`address` of the web console (find a saga, read its timeline, the dead letters; compensate, resume, redrive); empty disables it")
	fs.StringVar(&c.TokenFile, "console-token-file", "", "`file` of the tokens users log in to the console with, in --api-token-file's format: read:TYPE shows sagas of TYPE, compensate:TYPE compensates and redrives them, resume:TYPE resumes them (default --api-token-file)")
	fs.StringVar(&c.TLSCert, "console-tls-cert", "", "PEM `file` of the console's TLS certificate, with --console-tls-key (default --api-tls-cert; else plain HTTP)")
	fs.StringVar(&c.TLSKey, "console-tls-key", "", "PEM `file` of the console's TLS key (default --api-tls-key)")
	fs.StringVar(&c.TraceURL, "console-trace-url", "", "`URL` of a saga's trace in your tracing UI, {trace_id} standing for its trace id, such as https://tempo.example/trace/{trace_id}; empty shows the id without a link")
}

// validate checks the --console-* flags in c, given the API's validated
// configuration (whose token file and certificate the console uses by
// default), and fills those defaults in; it makes c the zero
// ConsoleConfig when the console is off.
func (c *ConsoleConfig) validate(name func(string) string, set map[string]string, api APIConfig) error {
	if c.Addr == "" {
		for _, f := range []string{"console-token-file", "console-tls-cert", "console-tls-key", "console-trace-url"} {
			if _, ok := set[f]; ok {
				return fmt.Errorf("%s applies only with --console-addr (the console is off without it)", name(f))
			}
		}
		*c = ConsoleConfig{}
		return nil
	}
	if err := checkListenAddr(c.Addr); err != nil {
		return fmt.Errorf("%s %q: %w (use host:port or :port, or \"\" to disable the console)", name("console-addr"), c.Addr, err)
	}
	if c.TokenFile == "" {
		c.TokenFile = api.TokenFile
	}
	if c.TLSCert == "" && c.TLSKey == "" {
		c.TLSCert, c.TLSKey = api.TLSCert, api.TLSKey
	}
	switch {
	case c.TokenFile == "":
		return fmt.Errorf("%s needs --console-token-file or --api-token-file: users log in with a token of the file (the console has no unauthenticated mode)", name("console-addr"))
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return fmt.Errorf("%s and %s go together: set both or neither", name("console-tls-cert"), name("console-tls-key"))
	}
	if c.TraceURL != "" {
		u, err := url.Parse(c.TraceURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || !strings.Contains(c.TraceURL, "{trace_id}") {
			return fmt.Errorf("%s %q: want an http(s) URL with {trace_id} in it, such as https://tempo.example/trace/{trace_id}", name("console-trace-url"), c.TraceURL)
		}
	}
	fi, err := os.Stat(c.TokenFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, derr := os.Stat(filepath.Dir(c.TokenFile)); derr != nil {
			return fmt.Errorf("%s %s: %w", name("console-token-file"), c.TokenFile, derr)
		}
	case err != nil:
		return fmt.Errorf("%s: %w", name("console-token-file"), err)
	case fi.IsDir():
		return fmt.Errorf("%s %s is a directory: want the file of the tokens", name("console-token-file"), c.TokenFile)
	default:
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return fmt.Errorf("%s: %w", name("console-token-file"), err)
		}
		if _, problems := parseTokens(b); len(problems) > 0 {
			return fmt.Errorf("%s %s: %v", name("console-token-file"), c.TokenFile, problems[0])
		}
	}
	if c.TLSCert != "" {
		if _, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey); err != nil {
			return fmt.Errorf("%s %s, %s %s: %w", name("console-tls-cert"), c.TLSCert, name("console-tls-key"), c.TLSKey, err)
		}
	}
	return nil
}

// consoleTokens gives the console the tokens of a token file.
type consoleTokens struct{ t *tokenSet }

// Lookup compares sum with every token's, in constant time, as
// tokenSet.lookup does.
func (c consoleTokens) Lookup(sum [sha256.Size]byte) *console.Principal {
	entries := *c.t.entries.Load()
	match := -1
	for i := range entries {
		eq := subtle.ConstantTimeCompare(sum[:], entries[i].sum[:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return nil
	}
	p := entries[match].p
	return &console.Principal{Name: p.name, May: p.may}
}

// consoleLogins applies the HTTP API's backoff after failed
// authentications to the console's logins, per client address.
type consoleLogins struct{ b *authBackoff }

func (l consoleLogins) Wait(r *http.Request) time.Duration { return l.b.wait(clientAddr(r)) }
func (l consoleLogins) Failed(r *http.Request)             { l.b.failed(clientAddr(r)) }

// startConsole serves the web console on --console-addr until the returned
// stop is called; stop waits for the requests in progress (at most
// shutdownTimeout) and for the console's consumers. Without --console-addr
// it serves nothing.
func (a *app) startConsole(ctx context.Context, env *Env, defs []*saga.Definition) (stop func(), err error) {
	c := a.cfg.Console
	if !c.Enabled() {
		return func() {}, nil
	}
	if len(defs) == 0 {
		return nil, errors.New("--console-addr: no saga type is registered, so the console has nothing to show")
	}
	kc, err := kgo.NewClient(env.KafkaOpts()...)
	if err != nil {
		return nil, fmt.Errorf("console Kafka client: %w", err)
	}
	parts, err := apiSagas(ctx, kc, defs)
	kc.Close()
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	var sagas []console.Saga
	for _, def := range defs {
		s := console.Saga{Def: def, InboxPartitions: parts[def.Name()].partitions, AuditPartitions: parts[def.Name()].auditPartitions}
		for _, e := range env.svc.engines {
			if e.saga == def.Name() {
				s.Engine = e.eng
			}
		}
		sagas = append(sagas, s)
	}
	tokens := newTokenSet(c.TokenFile, a.log)
	con, err := console.New(console.Config{Sagas: sagas, Redis: env.rdb, Brokers: env.Brokers, KafkaOpts: env.kafkaOpts,
		Tokens: consoleTokens{tokens}, Logins: consoleLogins{newAuthBackoff(time.Now, a.log)}, Tool: a.o.name + "-console", TraceURL: c.TraceURL, Logger: a.log})
	if err != nil {
		return nil, err
	}
	loads := []func(){tokens.load}
	srv := &http.Server{
		Handler:           con.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      2 * time.Minute, // a redrive reads the dead letters
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	if c.TLSCert != "" {
		certs, err := newCertReloader(c.TLSCert, c.TLSKey, a.log)
		if err != nil {
			return nil, fmt.Errorf("--console-tls-cert %s, --console-tls-key %s: %w", c.TLSCert, c.TLSKey, err)
		}
		loads = append(loads, certs.load)
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.getCertificate}
	}
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on --console-addr %s: %w; choose another address, or \"\" to disable the console", c.Addr, err)
	}
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	useTLS := srv.TLSConfig != nil
	done := make(chan struct{}, 3)
	go func() {
		defer func() { done <- struct{}{} }()
		reload(runCtx, reloadInterval, loads...)
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		if err := con.Run(runCtx); err != nil {
			a.log.Error("console: its indexes stopped", "err", err)
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		serve := srv.Serve
		if useTLS {
			serve = func(ln net.Listener) error { return srv.ServeTLS(ln, "", "") }
		}
		if err := serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("console server", "err", err)
		}
	}()
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	a.log.Info("serving the web console", "addr", ln.Addr().String(), "scheme", scheme, "tokens", c.TokenFile)
	if host, _, _ := net.SplitHostPort(c.Addr); !useTLS && host != "127.0.0.1" && host != "localhost" && host != "::1" {
		a.log.Warn("the web console serves plain HTTP: browsers keep its session cookie (Secure) only over https or on localhost; " +
			"serve it behind a proxy that terminates TLS, or give it --console-tls-cert and --console-tls-key")
	}
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			a.log.Warn("console shutdown", "err", err)
		}
		stopRun()
		for range 3 {
			<-done
		}
		con.Close()
	}, nil
}
