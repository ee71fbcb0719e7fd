package test

import (
	"testing"
	"time"

	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
)

// TestInFlightAfterRestart checks the engine's in-flight index (the
// ksaga_sagas_in_flight metrics): sagas waiting on a participant are
// counted at their step, and a restarted engine counts them again once it
// restored their partitions, whether their states come from the state topic
// or from Redis.
func TestInFlightAfterRestart(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100})
	// No payment participant: the sagas wait at authorize-payment.
	e.startParticipants(order.Inventory)
	eng := e.startEngine(nil)
	ids := ids("wait", 4)
	for _, id := range ids {
		e.start(newOrder(id))
	}
	waitFlight(t, eng.eng, "authorize-payment", len(ids))
	eng.stop(t)

	eng = e.startEngine(nil)
	defer eng.stop(t)
	f := waitFlight(t, eng.eng, "authorize-payment", len(ids))
	if f.Oldest.IsZero() || time.Since(f.Oldest) > time.Minute {
		t.Errorf("oldest at authorize-payment: %v, want when the sagas got there", f.Oldest)
	}
	for _, f := range eng.eng.InFlight() {
		if f.Step != "authorize-payment" && f.Sagas != 0 {
			t.Errorf("in flight elsewhere: %+v", f)
		}
	}
}

// waitFlight waits until n sagas wait at step (not compensating).
func waitFlight(t *testing.T, eng *orchestrator.Engine, step string, n int) orchestrator.StepFlight {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, f := range eng.InFlight() {
			if f.Step == step && !f.Compensating && f.Sagas == n {
				return f
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("in flight: %+v, want %d sagas at %s", eng.InFlight(), n, step)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
