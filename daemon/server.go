package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"regexp"
	rpprof "runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// readyCheck returns nil when the daemon is ready for traffic, else why not
// (readiness.check).
type readyCheck func(ctx context.Context) error

// newMux serves /metrics from g, /healthz (200 while the process runs) and
// /readyz (200 when ready returns nil, else 503 with the reason).
func newMux(g prometheus.Gatherer, ready readyCheck) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// serverTimeouts are the timeouts of the HTTP server on --metrics-addr.
type serverTimeouts struct {
	// ReadHeader and Read bound reading a request's headers and the whole
	// request; Write bounds the time from the end of the headers to the end
	// of the answer (the profiles extend it by their duration); Idle is
	// how long a keep-alive connection waits for its next request.
	ReadHeader, Read, Write, Idle time.Duration
}

// metricsTimeouts are the metrics server's timeouts. Idle outlasts the
// ServiceMonitor's 30s scrape interval, so that Prometheus keeps its
// connection, and closes one that a client left open.
var metricsTimeouts = serverTimeouts{ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: 30 * time.Second, Idle: 60 * time.Second}

// newServer returns an HTTP server of h with timeouts t.
func newServer(h http.Handler, t serverTimeouts) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    16 << 10,
	}
}

// maxProfileSeconds bounds the seconds of /debug/pprof/profile and
// /debug/pprof/trace: a profile holds the server's write deadline, and a
// CPU profile costs the whole process while it runs.
const maxProfileSeconds = 60

// servePprof adds Go's profiles to mux under /debug/pprof/ (--pprof),
// for profiling an engine under load:
//
//	go tool pprof http://localhost:9090/debug/pprof/profile?seconds=30
//
// /debug/pprof/cmdline answers the command line with the values of
// password-like flags and the passwords in URLs redacted (redactArgs);
// profile and trace take at most maxProfileSeconds seconds, and move the
// write deadline (writeTimeout after the headers) past their end.
func servePprof(mux *http.ServeMux, writeTimeout time.Duration) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprint(w, strings.Join(redactArgs(os.Args), "\x00"))
	})
	cpu := profiler{name: "profile", seconds: 30 * time.Second, start: rpprof.StartCPUProfile, stop: rpprof.StopCPUProfile, writeTimeout: writeTimeout}
	tr := profiler{name: "trace", seconds: time.Second, start: trace.Start, stop: trace.Stop, writeTimeout: writeTimeout}
	mux.HandleFunc("GET /debug/pprof/profile", cpu.serveHTTP)
	mux.HandleFunc("GET /debug/pprof/trace", tr.serveHTTP)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
}

// profiler serves a recording that runs for a while: the CPU profile or
// the execution trace, as net/http/pprof's Profile and Trace do, but
// bounded by maxProfileSeconds and within the server's write timeout.
type profiler struct {
	name string
	// seconds is the recording's duration when ?seconds= is absent.
	seconds      time.Duration
	start        func(io.Writer) error
	stop         func()
	writeTimeout time.Duration
}

func (p profiler) serveHTTP(w http.ResponseWriter, r *http.Request) {
	d := p.seconds
	if s := r.FormValue("seconds"); s != "" {
		sec, err := strconv.ParseFloat(s, 64)
		if err != nil || !(sec > 0 && sec <= maxProfileSeconds) {
			http.Error(w, fmt.Sprintf("seconds=%q: want a number of seconds above 0 and at most %d", s, maxProfileSeconds), http.StatusBadRequest)
			return
		}
		d = time.Duration(sec * float64(time.Second))
	}
	if err := http.NewResponseController(w).SetWriteDeadline(time.Now().Add(d + p.writeTimeout)); err != nil {
		http.Error(w, "cannot extend the write deadline for the "+p.name+": "+err.Error(), http.StatusInternalServerError)
		return
	}
	// Set before the recording starts: from then on its goroutine owns w
	// (it writes the header with its first bytes).
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="`+p.name+`"`)
	if err := p.start(w); err != nil {
		// Another one runs: Go records one CPU profile, and one trace, at
		// a time.
		w.Header().Del("Content-Disposition")
		http.Error(w, "cannot start the "+p.name+": "+err.Error(), http.StatusConflict)
		return
	}
	t := time.NewTimer(d)
	select {
	case <-t.C:
	case <-r.Context().Done():
		t.Stop()
	}
	p.stop()
}

// secretFlag matches the names of flags whose values are secrets:
// --redis-password, --kafka-sasl-password, a --…-token, a --…-secret. Flags
// that name a file holding one (--redis-password-file) are not secret.
var secretFlag = regexp.MustCompile(`(?i)(password|passwd|secret|token|credential)s?$`)

// secretInValue matches a password in a key=value connection string
// (PostgreSQL's "host=db password=…").
var secretInValue = regexp.MustCompile(`(?i)\b(password|passwd)=('[^']*'|\S+)`)

// redacted replaces a secret.
const redacted = "REDACTED"

// redactArgs returns a copy of a command line with the values of
// password-like flags (secretFlag: "--redis-password x",
// "-redis-password=x") replaced by REDACTED, and so the passwords in URLs
// (postgres://user:pw@db) and in key=value connection strings, wherever
// they are. args[0] is kept as it is.
func redactArgs(args []string) []string {
	out := make([]string, len(args))
	if len(args) == 0 {
		return out
	}
	out[0] = args[0]
	secretNext, flags := false, true
	for i, a := range args[1:] {
		i++
		switch {
		case secretNext:
			out[i], secretNext = redacted, false
			continue
		case flags && a == "--":
			flags = false
		case flags && strings.HasPrefix(a, "-") && len(a) > 1:
			dashes := len(a) - len(strings.TrimLeft(a, "-"))
			name, _, hasValue := strings.Cut(a[dashes:], "=")
			if secretFlag.MatchString(name) {
				if hasValue {
					out[i] = a[:dashes] + name + "=" + redacted
				} else {
					out[i], secretNext = a, true
				}
				continue
			}
		}
		out[i] = redactValue(a)
	}
	return out
}

// redactValue redacts the passwords of the URLs and key=value connection
// strings in s.
func redactValue(s string) string {
	s = secretInValue.ReplaceAllString(s, "${1}="+redacted)
	// A flag's value may follow "=": look at what follows the last one
	// before "://" too.
	prefix, rest := "", s
	if i := strings.Index(s, "://"); i >= 0 {
		if j := strings.LastIndex(s[:i], "="); j >= 0 {
			prefix, rest = s[:j+1], s[j+1:]
		}
	}
	if u, err := url.Parse(rest); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), redacted)
			return prefix + u.String()
		}
	}
	return s
}

// startHTTP serves newMux (and, with --pprof, the profiles) on
// --metrics-addr until the returned stop is called; stop waits for the
// server to shut down. With an empty address it serves nothing. It fails
// when the address cannot be bound.
func (a *app) startHTTP(g prometheus.Gatherer, ready readyCheck) (stop func(), err error) {
	if a.cfg.MetricsAddr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on --metrics-addr %s: %w; choose another address, or \"\" to disable the HTTP server", a.cfg.MetricsAddr, err)
	}
	srv := newServer(a.metricsHandler(g, ready), metricsTimeouts)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("http server", "err", err)
		}
	}()
	a.log.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String(), "pprof", a.cfg.Pprof)
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			a.log.Warn("http server shutdown", "err", err)
		}
		<-done
	}, nil
}

// metricsHandler is what the server on --metrics-addr serves: newMux, and
// the profiles only with --pprof.
func (a *app) metricsHandler(g prometheus.Gatherer, ready readyCheck) http.Handler {
	mux := newMux(g, ready)
	if a.cfg.Pprof {
		servePprof(mux, metricsTimeouts.Write)
	}
	return mux
}

// loopback returns addr with the loopback as its host when it has none
// (":9090" is "127.0.0.1:9090"): what the embedded mode, a demo on a
// laptop, listens on unless told otherwise. Other addresses, and the empty
// one (no server), are kept.
func loopback(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host != "" {
		return addr
	}
	return net.JoinHostPort("127.0.0.1", port)
}
