package test

import (
	"testing"
	"time"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
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
