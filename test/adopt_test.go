package test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// TestAdoptedSagasMoveToTheNewVersion: a version that adopts an older one
// (saga.Definition.Adopts) takes over its running sagas without hosting
// it. Sagas of the order saga's version 1 wait on their participants while
// the engine is replaced by one that runs only "version 3": version 1 with a
// local step appended and a migration of the data. Every saga completes on
// version 3: the appended step runs for it, its terminal data is the
// migrated data, its state records version 3, and its history and events
// agree.
func TestAdoptedSagasMoveToTheNewVersion(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 1 << 30})
	store := sim.NewOrderStore(e.sim)
	v1 := order.NewV1(store)

	eng := e.startEngine(v1)
	ids := ids("adopt", 200)
	for _, id := range ids {
		e.start(newOrder(id))
	}
	e.waitRedisVersion(ids, order.V1)
	eng.stop(t)

	notified := make(chan string, len(ids))
	v3 := saga.New(order.Name, append(order.StepsV1(store),
		saga.Step[order.Order]{Name: "notify", Local: func(ctx context.Context, o *order.Order) error {
			select {
			case notified <- o.OrderID:
			default:
			}
			return nil
		}})...,
	).WithVersion(3).Adopts(v1, saga.Migrate(func(o *order.Order) (*order.Order, error) {
		o.Currency = "EUR" // the migration is visible in the terminal data
		return o, nil
	}))
	defer e.startEngine(v3).stop(t)
	e.startParticipants()
	evs := e.waitTerminal(ids, 2*time.Minute)
	for _, id := range ids {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Fatalf("saga %s: %s, want SagaCompleted; events %+v", id, got, evs[id])
		}
		var last message.Event
		ran := false
		for _, ev := range evs[id] {
			if ev.Type == message.EventStepSucceeded && ev.Step == "notify" {
				ran = true
			}
			last = ev
		}
		var data order.Order
		if err := json.Unmarshal(last.Data, &data); err != nil || data.Currency != "EUR" {
			t.Fatalf("saga %s ended with data %s (%v), want the migrated currency EUR", id, last.Data, err)
		}
		if !ran {
			t.Fatalf("saga %s never ran the step version 3 appended", id)
		}
		st, err := e.redisState(id)
		if err != nil || st == nil || st.OnVersion() != 3 {
			t.Fatalf("saga %s: state %+v (%v), want version 3", id, st, err)
		}
		// The history in the state is the saga's events.
		if len(st.History) != len(evs[id]) {
			t.Fatalf("saga %s: history of %d entries, %d events", id, len(st.History), len(evs[id]))
		}
		for k, h := range st.History {
			if ev := evs[id][k]; h.Type != ev.Type || h.Step != ev.Step || h.Version != ev.Version {
				t.Fatalf("saga %s: history entry %d %+v, event %+v", id, k, h, ev)
			}
		}
	}
}

// waitRedisVersion waits until Redis holds every saga of ids on definition
// version v.
func (e *env) waitRedisVersion(ids []string, v int) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := 0
		for _, id := range ids {
			if st, err := e.redisState(id); err == nil && st != nil && st.OnVersion() == v {
				n++
			}
		}
		if n == len(ids) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatal(fmt.Sprintf("%d of %d sagas on version %d in Redis after 30s", n, len(ids), v))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
