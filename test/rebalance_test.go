package test

import (
	"context"
	"testing"
	"time"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// TestRebalance moves partitions between two engines while sagas are in
// flight: a second engine joins, then the first leaves. Every saga ends
// once, and no command is sent twice.
func TestRebalance(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100000})
	e.startParticipants()
	a := e.startEngine(nil, orchestrator.TransactionalID("engine-a"))

	sagas := ids("r", 600)
	for i, id := range sagas {
		e.start(newOrder(id))
		switch i {
		case 200:
			b := e.startEngine(nil, orchestrator.TransactionalID("engine-b"))
			defer b.stop(t)
		case 400:
			a.stop(t)
		}
	}
	evs := e.waitTerminal(sagas, 120*time.Second)
	for _, id := range sagas {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Errorf("saga %s ended %s, want completed", id, got)
		}
	}
	e.assertOnce(evs, sagas...)
	if got, want := e.stock("sku-1"), int64(100000-2*len(sagas)); got != want {
		t.Errorf("stock %d, want %d", got, want)
	}
	e.waitRedis(sagas, 30*time.Second)
}

// TestSecondRevocationOfAnIdleEngine: an engine that handles nothing
// between two rebalances must still hear the second revocation (the
// transact session reports one per transaction). Otherwise it keeps the
// lost partition's deadlines and fires them next to the new owner: each
// Timeout message would be produced twice.
func TestSecondRevocationOfAnIdleEngine(t *testing.T) {
	e := newEnv(t)
	store := sim.NewOrderStore(e.sim)
	send := func(_ context.Context, o *order.Order) (saga.Command, error) {
		return saga.Command{Participant: order.Inventory, Type: order.ReserveInventory, Payload: o}, nil
	}
	def := saga.New(order.Name,
		saga.Step[order.Order]{Name: order.StepReserveInventory, Do: send, ReplyTimeout: 15 * time.Second},
		saga.Step[order.Order]{Name: order.StepCompleteOrder, Local: store.Complete, UndoLocal: store.Cancel},
	)
	a := e.startEngine(def, orchestrator.TransactionalID("engine-a"))
	defer a.stop(t)
	sagas := ids("idle", 30)
	for _, id := range sagas {
		e.start(newOrder(id))
	}
	// No participant runs: every saga waits on its deadline, and engine a
	// has nothing to do.
	waitFor(t, 30*time.Second, func() bool { return len(e.commands(order.Inventory)) == len(sagas) })
	b := e.startEngine(def, orchestrator.TransactionalID("engine-b"))
	defer b.stop(t)
	waitFor(t, 30*time.Second, b.eng.Ready)
	time.Sleep(2 * time.Second)
	c := e.startEngine(def, orchestrator.TransactionalID("engine-c"))
	defer c.stop(t)
	waitFor(t, 30*time.Second, c.eng.Ready)

	// Past the deadlines, every saga's Timeout must have been produced
	// once, by the partition's one owner.
	waitFor(t, 60*time.Second, func() bool {
		n := 0
		for _, r := range e.readAll(message.Inbox(order.Name), 200*time.Millisecond) {
			if header(r, message.HeaderMessageType) == message.TypeTimeout {
				n++
			}
		}
		return n >= len(sagas)
	})
	time.Sleep(2 * time.Second)
	seen := make(map[string]int)
	for _, r := range e.readAll(message.Inbox(order.Name), 300*time.Millisecond) {
		if header(r, message.HeaderMessageType) == message.TypeTimeout {
			seen[header(r, message.HeaderMessageID)]++
		}
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("timeout %s produced %d times, want 1", id, n)
		}
	}
}
