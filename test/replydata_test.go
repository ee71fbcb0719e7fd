package test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// TestReplyData runs the order saga: the payment participant returns an
// authorization id, the shipping participant a tracking number. A completed
// order's SagaCompleted carries both; an undeliverable order's CancelPayment
// names the authorization it cancels.
func TestReplyData(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100})
	e.startParticipants()
	eng := e.startEngine(nil)
	defer eng.stop(t)

	undeliverable := newOrder("rd-2")
	undeliverable.ShipTo.Country = "XX"
	e.start(newOrder("rd-1"))
	e.start(undeliverable)
	evs := e.waitTerminal([]string{"rd-1", "rd-2"}, 60*time.Second)

	var done order.Order
	last := evs["rd-1"][len(evs["rd-1"])-1]
	if err := json.Unmarshal(last.Data, &done); err != nil || last.Type != message.EventSagaCompleted {
		t.Fatalf("last event %s with data %s (%v), want SagaCompleted with the order", last.Type, last.Data, err)
	}
	if done.TrackingNumber != sim.TrackingNumber("rd-1") || done.AuthorizationID != sim.AuthorizationID("rd-1") {
		t.Errorf("SagaCompleted carries tracking %q and authorization %q, want %q and %q",
			done.TrackingNumber, done.AuthorizationID, sim.TrackingNumber("rd-1"), sim.AuthorizationID("rd-1"))
	}
	if got := terminal(evs["rd-2"]); got != message.EventSagaCompensated {
		t.Fatalf("undeliverable order ended %s, want %s", got, message.EventSagaCompensated)
	}
	if got, want := e.hash(sim.PaymentKey("rd-2"))["cancelled_authorization_id"], sim.AuthorizationID("rd-2"); got != want {
		t.Errorf("CancelPayment named authorization %q, want %q", got, want)
	}
}

// TestSagaInEveryCall reads the saga's Info in each call into a step's code,
// and starts a saga with the data of another: the data names its own id,
// which must match the key, or the start is dead-lettered as invalid.
func TestSagaInEveryCall(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	seen := map[string]saga.Info{}
	record := func(kind string) func(ctx context.Context) {
		return func(ctx context.Context) {
			info, ok := saga.InfoFrom(ctx)
			if !ok {
				t.Errorf("%s: no saga.Info in ctx", kind)
			}
			mu.Lock()
			seen[kind] = info
			mu.Unlock()
		}
	}
	do, local, undo := record("do"), record("local"), record("undo-local")
	def := saga.New(order.Name,
		saga.Step[order.Order]{Name: "hold", Local: func(ctx context.Context, _ *order.Order) error { local(ctx); return nil },
			UndoLocal: func(ctx context.Context, _ *order.Order) error { undo(ctx); return nil }},
		saga.Step[order.Order]{Name: "ask", Do: func(ctx context.Context, o *order.Order) (saga.Command, error) {
			do(ctx)
			return saga.Command{Participant: "inventory", Type: "ReserveInventory", Payload: o}, nil
		}},
	)
	eng := e.startEngine(def)
	defer eng.stop(t)

	e.start(newOrder("in-1"))
	mismatched := startRecord(newOrder("ok-1"))
	mismatched.Key = []byte("in-2")
	e.produce(mismatched)
	for deadline := time.Now().Add(30 * time.Second); ; {
		mu.Lock()
		n := len(seen)
		mu.Unlock()
		if n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("saw %v within 30s, want Info in Local and Do", seen)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Compensating runs the UndoLocal.
	e.produce(compensateRecord("in-1"))
	e.waitTerminal([]string{"in-1"}, 30*time.Second)
	mu.Lock()
	defer mu.Unlock()
	for kind, info := range seen {
		if info.SagaID != "in-1" || info.Type != order.Name || info.Started.IsZero() {
			t.Errorf("%s: Info %+v, want saga in-1 of type %s with its start time", kind, info, order.Name)
		}
	}
	if seen["do"].Step != "ask" || seen["do"].Attempt != 1 || !seen["undo-local"].Compensating {
		t.Errorf("Info: do %+v, undo-local %+v", seen["do"], seen["undo-local"])
	}
	var reasons []string
	for _, r := range e.readAll(message.DLT(order.Name), 300*time.Millisecond) {
		reasons = append(reasons, string(r.Key)+":"+header(r, dlq.HeaderReason))
	}
	if len(reasons) != 1 || reasons[0] != "in-2:"+orchestrator.ReasonInvalid {
		t.Errorf("dead letters %q, want [in-2:%s] (the data names another saga)", reasons, orchestrator.ReasonInvalid)
	}
}

// compensateRecord asks saga id to compensate, as client.Compensate does.
func compensateRecord(id string) *kgo.Record {
	return &kgo.Record{Topic: message.Inbox(order.Name), Key: []byte(id), Headers: []kgo.RecordHeader{
		{Key: message.HeaderMessageType, Value: []byte(message.TypeCompensate)},
		{Key: message.HeaderMessageID, Value: []byte("compensate-" + id)},
	}}
}
