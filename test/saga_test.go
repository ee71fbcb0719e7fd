// Package test holds ksaga's end-to-end tests: the order saga on kfake (an
// in-process Kafka with transactions) and real redis-servers, with the
// reference participants.
package test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
)

func TestHappyPath(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 1000})
	e.startParticipants()
	eng := e.startEngine(nil)
	defer eng.stop(t)

	const n = 50
	sagas := ids("ok", n)
	for _, id := range sagas {
		e.start(newOrder(id))
	}
	evs := e.waitTerminal(sagas, 60*time.Second)
	for _, id := range sagas {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Errorf("saga %s ended %s, want %s; events %+v", id, got, message.EventSagaCompleted, evs[id])
		}
		if got := e.hash("ksaga:sim:payment:" + id)["status"]; got != "authorized" {
			t.Errorf("payment of %s is %q, want authorized", id, got)
		}
		if got := e.hash("ksaga:sim:shipment:" + id)["status"]; got != "scheduled" {
			t.Errorf("shipment of %s is %q, want scheduled", id, got)
		}
		if got := e.hash("ksaga:sim:order:" + id)["status"]; got != "completed" {
			t.Errorf("order %s is %q, want completed", id, got)
		}
	}
	if got, want := e.stock("sku-1"), int64(1000-2*n); got != want {
		t.Errorf("stock of sku-1 is %d, want %d", got, want)
	}
	e.waitRedis(sagas, 10*time.Second)
	_ = order.Name
}

// caughtUp counts the records that the engine's catch-up polls added to its
// committed transactions.
type caughtUp struct{ n atomic.Int64 }

func (c *caughtUp) AfterCommit(_ context.Context, b *orchestrator.Batch) { c.n.Add(int64(b.CaughtUp)) }

// TestCatchUpUnderSteadyLoad offers starts one at a time, as a steady stream,
// so that records keep being committed while the engine's transactions run:
// its catch-up polls then add those records to the next transaction, with a
// second preload for their sagas. Every saga completes, once, and Redis ends
// with every saga's last state.
func TestCatchUpUnderSteadyLoad(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 10000})
	e.startParticipants()
	hook := &caughtUp{}
	eng := e.startEngine(nil, orchestrator.Hooks(hook))
	defer eng.stop(t)

	sagas := ids("steady", 400)
	for _, id := range sagas {
		e.start(newOrder(id))
	}
	evs := e.waitTerminal(sagas, 60*time.Second)
	for _, id := range sagas {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Errorf("saga %s ended %s, want one %s", id, got, message.EventSagaCompleted)
		}
	}
	e.waitRedis(sagas, 10*time.Second)
	if hook.n.Load() == 0 {
		t.Error("no transaction took records from a catch-up poll: the load did not test it")
	}
	t.Logf("records added by catch-up polls: %d", hook.n.Load())
}
