package test

import (
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
)

// redisErrors counts the Redis failures the engine reports.
type redisErrors struct{ n atomic.Int64 }

func (r *redisErrors) OnRedisLag(_ int, _ time.Time, err error) {
	if err != nil {
		r.n.Add(1)
	}
}

// TestRedisHangsPastTheTransactionTimeout stops the engine's Redis (SIGSTOP:
// connections stay open, nothing is answered) for four transaction timeouts
// while a start request arrives. The engine must neither end nor stall: it
// reports itself not ready and counts Redis errors while Redis hangs, and the
// saga completes within seconds of Redis answering again.
func TestRedisHangsPastTheTransactionTimeout(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100})
	e.startParticipants()
	errs := &redisErrors{}
	const txnTimeout = 2 * time.Second
	eng := e.startEngine(nil, orchestrator.TransactionTimeout(txnTimeout), orchestrator.Hooks(errs))
	defer eng.stop(t)

	e.start(newOrder("before"))
	e.waitTerminal([]string{"before"}, 60*time.Second)

	if err := e.engRedis.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := e.engRedis.Signal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
		}
	}
	defer resume()
	e.start(newOrder("during"))
	notReady := false
	for end := time.Now().Add(4 * txnTimeout); time.Now().Before(end); {
		select {
		case err := <-eng.done:
			eng.done <- err
			t.Fatalf("the engine ended while Redis hung: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		notReady = notReady || !eng.eng.Ready()
	}
	if !notReady {
		t.Error("the engine reported itself ready all the time Redis hung")
	}
	if errs.n.Load() == 0 {
		t.Error("no Redis error was reported while Redis hung")
	}
	resume()
	back := time.Now()
	evs := e.waitTerminal([]string{"during"}, 30*time.Second)
	t.Logf("the saga ended %v after Redis answered again", time.Since(back).Round(100*time.Millisecond))
	if got := terminal(evs["during"]); got != message.EventSagaCompleted {
		t.Errorf("saga ended %s, want %s", got, message.EventSagaCompleted)
	}
	for deadline := time.Now().Add(10 * time.Second); !eng.eng.Ready(); {
		if time.Now().After(deadline) {
			t.Fatal("the engine was not ready again 10s after the saga completed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
