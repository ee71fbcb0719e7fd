package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/metrics"
	"github.com/ksaga/ksaga/orchestrator"
)

// readyPingTimeout bounds how long a readiness check waits for Redis to
// answer PING.
const readyPingTimeout = time.Second

// readiness is the one check behind /readyz and ksaga_engine_ready, so that
// the probe and the gauge agree: an engine is ready when it says so
// (orchestrator.Engine.Ready: joined, restored, its last use of Redis and
// Kafka did not fail) and the engines' Redis answers PING within
// readyPingTimeout. Its methods are safe for concurrent use; close waits
// for a PING still running.
type readiness struct {
	svc     *services
	rdb     redis.UniversalClient
	timeout time.Duration

	wg sync.WaitGroup
	// mu guards pinging: the PING running, nil when none is.
	mu      sync.Mutex
	pinging *pingCall
}

// pingCall is one PING: err is set before done is closed.
type pingCall struct {
	done chan struct{}
	err  error
}

func newReadiness(svc *services, rdb redis.UniversalClient) *readiness {
	return &readiness{svc: svc, rdb: rdb, timeout: readyPingTimeout}
}

// check returns nil when every engine is ready and Redis answers, else
// why not: what /readyz answers.
func (r *readiness) check(ctx context.Context) error {
	for _, e := range r.svc.engines {
		if !e.eng.Ready() {
			return fmt.Errorf("engine of saga %s not ready: joining the consumer group, restoring its partitions, or its last use of Redis or Kafka failed", e.saga)
		}
	}
	return r.ping(ctx)
}

// engine returns what WatchEngine reads for e: its in-flight sagas, and
// Ready as /readyz answers it for e.
func (r *readiness) engine(e *namedEngine) metrics.Engine { return readyEngine{e.eng, r} }

type readyEngine struct {
	*orchestrator.Engine
	r *readiness
}

func (e readyEngine) Ready() bool {
	return e.Engine.Ready() && e.r.ping(context.Background()) == nil
}

// ping returns nil when Redis answers PING within r.timeout.
//
// The PING runs in a goroutine of its own because go-redis bounds a
// command by the client's read timeout and retries, not by ctx (unless the
// client was made with ContextTimeoutEnabled): against a hung Redis it can
// take several seconds, and neither a probe nor a scrape may wait that
// long. One PING runs at a time; checks that come meanwhile wait for it.
func (r *readiness) ping(ctx context.Context) error {
	r.mu.Lock()
	call := r.pinging
	if call == nil {
		call = &pingCall{done: make(chan struct{})}
		r.pinging = call
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			pctx, cancel := context.WithTimeout(context.Background(), r.timeout)
			call.err = r.rdb.Ping(pctx).Err()
			cancel()
			r.mu.Lock()
			r.pinging = nil
			r.mu.Unlock()
			close(call.done)
		}()
	}
	r.mu.Unlock()
	t := time.NewTimer(r.timeout)
	defer t.Stop()
	select {
	case <-call.done:
	case <-t.C:
		return fmt.Errorf("redis did not answer PING within %v", r.timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
	if call.err != nil {
		// The answer of /readyz carries no addresses or client errors:
		// the engine's log says why (redis check failed, redis write
		// failed), and ksaga_redis_errors_total counts it.
		return errors.New("redis PING failed")
	}
	return nil
}

// close waits for a PING still running. Close the Redis client first: that
// ends a PING that waits on a hung Redis.
func (r *readiness) close() { r.wg.Wait() }
