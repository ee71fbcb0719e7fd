package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"time"
)

// DefaultShutdownDrain is the default of --shutdown-drain with real
// services: the readiness probe of the manifests in deploy/ fails a pod
// after periodSeconds (5) × failureThreshold (3), and a pod deleted in a
// rolling update leaves its Services' endpoints within about as long,
// whatever the probe says.
const DefaultShutdownDrain = 15 * time.Second

// errDraining is what /readyz answers while the daemon drains.
var errDraining = errors.New("shutting down: the HTTP API serves until --shutdown-drain ends, then stops")

// shutdownFlags holds --shutdown-drain as given; drain is what applies.
type shutdownFlags struct {
	given time.Duration
	drain time.Duration
}

func (f *shutdownFlags) register(fs *flag.FlagSet) {
	fs.DurationVar(&f.given, "shutdown-drain", DefaultShutdownDrain, "with --api-addr, how long the HTTP API goes on serving after SIGTERM or SIGINT, while /readyz answers 503, before it stops accepting: long enough for load balancers to stop sending to it; 0 stops at once (default 15s, the manifests' readiness probe period × failure threshold; 0 in embedded mode)")
}

// validate checks --shutdown-drain and sets what applies: nothing without
// the HTTP API, and by default nothing in embedded mode.
func (f *shutdownFlags) validate(c *Config) error {
	f.drain = f.given
	switch {
	case f.given < 0:
		return fmt.Errorf("%s %v is negative: want a duration such as 15s, or 0 to stop at once", c.Flag("shutdown-drain"), f.given)
	case c.IsSet("shutdown-drain") && !c.API.Enabled():
		return fmt.Errorf("%s applies only with --api-addr (without the HTTP API there is nothing to drain)", c.Flag("shutdown-drain"))
	case !c.API.Enabled(), c.Embedded() && !c.IsSet("shutdown-drain"):
		f.drain = 0
	}
	return nil
}

// drain runs between the end of ctx (SIGTERM) and the HTTP API's shutdown:
// /readyz answers 503 (errDraining) while the API and the engines go on for
// a.drain, so that the load balancers that send requests to this instance
// see it unready, or its pod terminating, and stop before it stops
// accepting connections. It ends early when a service stops on its own.
func (a *app) drain(svc *services) {
	if a.drainFor <= 0 {
		return
	}
	a.draining.Store(true)
	a.log.Info("shutting down: /readyz answers 503; the HTTP API serves until the drain ends", "drain", a.drainFor.String())
	t := time.NewTimer(a.drainFor)
	defer t.Stop()
	select {
	case <-t.C:
	case <-svc.failed:
		a.log.Warn("a service stopped during the drain; stopping now", "err", svc.err)
	}
}

// readyUnlessDraining is check, failing with errDraining once the drain has
// begun.
func (a *app) readyUnlessDraining(check readyCheck) readyCheck {
	return func(ctx context.Context) error {
		if a.draining.Load() {
			return errDraining
		}
		return check(ctx)
	}
}

// closeWhileDraining is h, answering with "Connection: close" once the
// drain has begun: a caller on a keep-alive connection opens a new one for
// its next request, which its Service sends to a ready instance (kube-proxy
// balances connections, not requests), instead of finding this one closed
// when the drain ends. The HTTP API's server wraps its handler with it.
func (a *app) closeWhileDraining(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.draining.Load() {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
}
