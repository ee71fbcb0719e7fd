package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
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

// servePprof adds Go's profiles to mux under /debug/pprof/ (--pprof),
// for profiling an engine under load:
//
//	go tool pprof http://localhost:9090/debug/pprof/profile?seconds=30
func servePprof(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// startHTTP serves newMux on --metrics-addr until the returned stop is
// called; stop waits for the server to shut down. With an empty address it
// serves nothing. It fails when the address cannot be bound.
func (a *app) startHTTP(g prometheus.Gatherer, ready readyCheck) (stop func(), err error) {
	if a.cfg.MetricsAddr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on --metrics-addr %s: %w; choose another address, or \"\" to disable the HTTP server", a.cfg.MetricsAddr, err)
	}
	mux := newMux(g, ready)
	if a.cfg.Pprof {
		servePprof(mux)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("http server", "err", err)
		}
	}()
	a.log.Info("serving /metrics, /healthz and /readyz", "addr", ln.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			a.log.Warn("http server shutdown", "err", err)
		}
		<-done
	}, nil
}
