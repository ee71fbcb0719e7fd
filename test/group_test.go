package test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
)

// failureReply is a participant's failure reply to command msgID of saga id.
func failureReply(id, msgID, reason string) *kgo.Record {
	r := replyRecord(id, msgID)
	for i, h := range r.Headers {
		if h.Key == message.HeaderOutcome {
			r.Headers[i].Value = []byte(message.OutcomeFailure)
		}
	}
	r.Headers = append(r.Headers, kgo.RecordHeader{Key: message.HeaderReason, Value: []byte(reason)})
	return r
}

// TestParallelGroup runs a saga whose first two steps form a parallel group,
// with the test as their participants: both commands go out at once; the
// saga moves on when both succeeded. When one fails while the other is in
// flight, the other is awaited, then compensated once if it succeeded or
// its outcome is unknown (no reply before its deadline), never if it failed.
func TestParallelGroup(t *testing.T) {
	e := newEnv(t)
	to := func(participant, typ string) func(context.Context, *order.Order) (saga.Command, error) {
		return func(_ context.Context, o *order.Order) (saga.Command, error) {
			return saga.Command{Participant: participant, Type: typ, Payload: o}, nil
		}
	}
	def := saga.New(order.Name,
		saga.Step[order.Order]{Name: "stock", Group: "reserve", Do: to("inventory", "Reserve"), Undo: to("inventory", "Release"),
			ReplyTimeout: 8 * time.Second, Retry: retry.Policy{MaxAttempts: 1}},
		saga.Step[order.Order]{Name: "pay", Group: "reserve", Do: to("payment", "Authorize"), Undo: to("payment", "Cancel")},
		saga.Step[order.Order]{Name: "note", Local: func(context.Context, *order.Order) error { return nil }},
	)
	eng := e.startEngine(def)
	defer eng.stop(t)

	waitCommand := func(participant, id string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); e.commands(participant)[id+" attempt 1"] == 0; {
			if time.Now().After(deadline) {
				t.Fatalf("no command %s to %s within 30s", id, participant)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	ids := []string{"g-ok", "g-fail", "g-silent", "g-comp"}
	for _, id := range ids {
		e.start(newOrder(id))
	}
	for _, id := range ids {
		waitCommand("inventory", id+"/stock/do")
		waitCommand("payment", id+"/pay/do")
	}
	// g-ok: both succeed. g-fail: pay fails while stock is in flight, then
	// stock succeeds. g-silent: pay fails, stock never answers. g-comp: an
	// operator compensates while both are in flight.
	e.produce(compensateRecord("g-comp"))
	e.produce(replyRecord("g-ok", "g-ok/pay/do"), replyRecord("g-ok", "g-ok/stock/do"),
		failureReply("g-fail", "g-fail/pay/do", "PAYMENT_DECLINED"), failureReply("g-silent", "g-silent/pay/do", "PAYMENT_DECLINED"))
	time.Sleep(300 * time.Millisecond)
	if cmds := e.commands("inventory"); cmds["g-fail/stock/undo attempt 1"] != 0 {
		t.Errorf("stock of g-fail compensated while its reply was awaited")
	}
	e.produce(replyRecord("g-fail", "g-fail/stock/do"))
	waitCommand("inventory", "g-fail/stock/undo")
	waitCommand("inventory", "g-silent/stock/undo")
	waitCommand("payment", "g-comp/pay/undo")
	e.produce(replyRecord("g-comp", "g-comp/pay/undo"))
	waitCommand("inventory", "g-comp/stock/undo")
	e.produce(replyRecord("g-fail", "g-fail/stock/undo"), replyRecord("g-silent", "g-silent/stock/undo"), replyRecord("g-comp", "g-comp/stock/undo"))
	for deadline := time.Now().Add(30 * time.Second); ; {
		evs := e.events()
		if terminal(evs["g-ok"]) != "" && terminal(evs["g-fail"]) != "" && terminal(evs["g-silent"]) != "" && terminal(evs["g-comp"]) != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no terminal event within 30s: g-ok %q, g-fail %q, g-silent %q", history(evs["g-ok"]), history(evs["g-fail"]), history(evs["g-silent"]))
		}
		time.Sleep(100 * time.Millisecond)
	}
	evs := e.events()

	want := map[string][]string{
		"g-ok": {"SagaStarted ", "StepSucceeded pay", "StepSucceeded stock", "StepSucceeded note", "SagaCompleted "},
		"g-fail": {"SagaStarted ", "StepFailed pay", "StepSucceeded stock", "CompensationStarted ",
			"StepCompensated stock", "SagaCompensated "},
		"g-silent": {"SagaStarted ", "StepFailed pay", "StepFailed stock", "CompensationStarted ",
			"StepCompensated stock", "SagaCompensated "},
		"g-comp": {"SagaStarted ", "StepFailed stock", "StepFailed pay", "CompensationStarted ",
			"StepCompensated pay", "StepCompensated stock", "SagaCompensated "},
	}
	for id, w := range want {
		if got := history(evs[id]); !slices.Equal(got, w) {
			t.Errorf("saga %s: events %q, want %q", id, got, w)
		}
	}
	for _, participant := range []string{"inventory", "payment"} {
		for cmd, n := range e.commands(participant) {
			if n != 1 {
				t.Errorf("%s: command %s sent %d times, want once", participant, cmd, n)
			}
		}
	}
	// A member's late reply, after the saga compensated it, is stale: it
	// is dropped, not dead-lettered.
	e.produce(replyRecord("g-comp", "g-comp/stock/do"), replyRecord("g-comp", "g-comp/pay/do"))
	time.Sleep(500 * time.Millisecond)
	if dead := e.readAll(message.DLT(order.Name), 300*time.Millisecond); len(dead) != 0 {
		t.Errorf("%d records dead-lettered, want none (a late reply to a member is stale)", len(dead))
	}
	if cmds := e.commands("payment"); cmds["g-fail/pay/undo attempt 1"]+cmds["g-silent/pay/undo attempt 1"] != 0 {
		t.Errorf("a payment that failed was compensated: %v", cmds)
	}
}
