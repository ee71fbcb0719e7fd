package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/compensation"
	"github.com/ksaga/ksaga/internal/sagadef"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga/order"
)

type storeFunc func(context.Context, *order.Order) error

func (f storeFunc) Complete(ctx context.Context, o *order.Order) error { return f(ctx, o) }
func (f storeFunc) Cancel(context.Context, *order.Order) error         { return nil }

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTestMachine(completeErr error) (*machine, *clock) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	def := order.NewV2(storeFunc(func(context.Context, *order.Order) error { return completeErr }))
	return newMachine(sagadef.Of(def), compensation.Policy{MaxAttempts: 2}, c.now), c
}

var startValue, _ = json.Marshal(order.Order{
	OrderID: "o-1", CustomerID: "c-1", AmountCents: 100, Currency: "USD",
	Items: []order.Item{{SKU: "a", Qty: 1}}, ShipTo: order.Address{Country: "DE"},
})

// run applies inputs in order, each built from the state so far.
type run struct {
	t   *testing.T
	m   *machine
	st  *State
	out *outcome
}

func (r *run) apply(in *input) (*outcome, error) {
	var data any
	if r.st != nil {
		var err error
		if data, err = r.m.def.Decode(r.st.Data); err != nil {
			r.t.Fatal(err)
		}
	}
	out, err := r.m.apply(context.Background(), r.st, data, in)
	if err == nil && out.state != nil {
		r.st = out.state
	}
	r.out = out
	return out, err
}

func (r *run) must(in *input) *outcome {
	r.t.Helper()
	out, err := r.apply(in)
	if err != nil {
		r.t.Fatalf("apply %s: %v", in.typ, err)
	}
	return out
}

func (r *run) reply(outcome, reason string) *outcome {
	r.t.Helper()
	return r.must(&input{typ: message.TypeReply, sagaID: "o-1", inReplyTo: r.st.Waiting, outcome: outcome, reason: reason})
}

func types(out *outcome) []string {
	var ts []string
	for _, ev := range out.events {
		ts = append(ts, ev.Type)
	}
	return ts
}

func cmdTypes(out *outcome) []string {
	var ts []string
	for _, c := range out.commands {
		ts = append(ts, c.msgType)
	}
	return ts
}

func start(t *testing.T, completeErr error) *run {
	m, _ := newTestMachine(completeErr)
	r := &run{t: t, m: m}
	out := r.must(&input{typ: message.TypeStartSaga, sagaID: "o-1", msgID: "m-1", value: startValue})
	if got, want := cmdTypes(out), []string{order.ReserveInventory, order.AuthorizePayment}; !slices.Equal(got, want) {
		t.Fatalf("start sent %v, want %v", got, want)
	}
	return r
}

func TestMachineCompletes(t *testing.T) {
	r := start(t, nil)
	r.reply(message.OutcomeSuccess, "")
	r.reply(message.OutcomeSuccess, "")
	out := r.reply(message.OutcomeSuccess, "")
	want := []string{message.EventStepSucceeded, message.EventStepSucceeded, message.EventSagaCompleted}
	if got := types(out); !slices.Equal(got, want) {
		t.Errorf("last reply emitted %v, want %v", got, want)
	}
	if r.st.Status != message.StatusCompleted || r.st.Version != 4 {
		t.Errorf("state %s v%d, want completed v4", r.st.Status, r.st.Version)
	}
}

func TestMachineCompensatesInReverse(t *testing.T) {
	r := start(t, nil)
	r.reply(message.OutcomeSuccess, "")                               // reserved
	r.reply(message.OutcomeSuccess, "")                               // authorized
	out := r.reply(message.OutcomeFailure, order.ReasonUndeliverable) // shipping failed
	if got, want := cmdTypes(out), []string{order.CancelPayment}; !slices.Equal(got, want) {
		t.Fatalf("shipping failure sent %v, want %v", got, want)
	}
	out = r.reply(message.OutcomeSuccess, "")
	if got, want := cmdTypes(out), []string{order.ReleaseInventory}; !slices.Equal(got, want) {
		t.Fatalf("payment cancelled sent %v, want %v", got, want)
	}
	out = r.reply(message.OutcomeSuccess, "")
	if got, want := types(out), []string{message.EventStepCompensated, message.EventSagaCompensated}; !slices.Equal(got, want) {
		t.Errorf("last undo emitted %v, want %v", got, want)
	}
}

func TestMachineStaleAndForeignReplies(t *testing.T) {
	r := start(t, nil)
	first := r.st.Waiting
	r.reply(message.OutcomeSuccess, "")
	out := r.must(&input{typ: message.TypeReply, sagaID: "o-1", inReplyTo: first, outcome: message.OutcomeSuccess})
	if out.drop != DropStaleReply {
		t.Errorf("duplicate reply: drop %q, want %q", out.drop, DropStaleReply)
	}
	_, err := r.apply(&input{typ: message.TypeReply, sagaID: "o-1", inReplyTo: "o-1/complete-order/do", outcome: message.OutcomeSuccess})
	var ie *InputError
	if !errors.As(err, &ie) || ie.Reason != ReasonNotWaiting || !retry.IsPermanent(err) {
		t.Errorf("reply for a step not waited on: err %v, want permanent %s", err, ReasonNotWaiting)
	}
	r.st = nil
	_, err = r.apply(&input{typ: message.TypeReply, sagaID: "o-1", inReplyTo: first, outcome: message.OutcomeSuccess})
	if !errors.As(err, &ie) || ie.Reason != ReasonUnknownSaga {
		t.Errorf("reply for an unknown saga: err %v, want %s", err, ReasonUnknownSaga)
	}
}

func TestMachineStart(t *testing.T) {
	r := start(t, nil)
	out := r.must(&input{typ: message.TypeStartSaga, sagaID: "o-1", value: startValue})
	if out.drop != DropDuplicateStart {
		t.Errorf("same start again: drop %q, want %q", out.drop, DropDuplicateStart)
	}
	_, err := r.apply(&input{typ: message.TypeStartSaga, sagaID: "o-1", value: []byte(`{"order_id":"o-1"}`)})
	var ie *InputError
	if !errors.As(err, &ie) || ie.Reason != ReasonConflictingStart {
		t.Errorf("different start: err %v, want %s", err, ReasonConflictingStart)
	}
	r.st = nil
	for _, v := range []string{`{"order_id":"o-2"}`, `{"order_id":"o-2","customer_id":"c","amount_cents":-5,"currency":"USD","items":[{"sku":"a","qty":1}]}`, `{"nope":1}`} {
		if _, err := r.apply(&input{typ: message.TypeStartSaga, sagaID: "o-2", value: []byte(v)}); !errors.As(err, &ie) || ie.Reason != ReasonInvalid {
			t.Errorf("start %s: err %v, want %s", v, err, ReasonInvalid)
		}
	}
}

func TestMachineTimeouts(t *testing.T) {
	r := start(t, nil)
	timeout := func() *outcome {
		return r.must(&input{typ: message.TypeTimeout, sagaID: "o-1", inReplyTo: r.st.Waiting, attempt: r.st.Attempt})
	}
	for attempt := 2; attempt <= 3; attempt++ {
		out := timeout()
		if len(out.commands) != 1 || out.commands[0].attempt != attempt || out.commands[0].msgID != "o-1/reserve-inventory/do" {
			t.Fatalf("timeout %d: commands %+v, want a re-send of the same message id with attempt %d", attempt-1, out.commands, attempt)
		}
	}
	// The third timeout exhausts the step: its outcome is unknown. Its
	// parallel partner, authorize-payment, is still awaited.
	out := timeout()
	if got := cmdTypes(out); len(got) != 0 || r.st.Waiting != "o-1/authorize-payment/do" {
		t.Fatalf("exhausted member sent %v and waits on %q, want nothing sent and authorize-payment awaited", got, r.st.Waiting)
	}
	for attempt := 2; attempt <= 3; attempt++ {
		timeout()
	}
	// Both outcomes unknown: both are undone, last first.
	out = timeout()
	if got, want := cmdTypes(out), []string{order.CancelPayment}; !slices.Equal(got, want) {
		t.Fatalf("exhausted group sent %v, want %v", got, want)
	}
	stale := r.must(&input{typ: message.TypeTimeout, sagaID: "o-1", inReplyTo: "o-1/reserve-inventory/do", attempt: 3})
	if stale.drop != DropStaleTimeout {
		t.Errorf("old timeout: drop %q, want %q", stale.drop, DropStaleTimeout)
	}
	// Compensation gives up after MaxAttempts (2) sends.
	timeout()
	out = timeout()
	if got := types(out); !slices.Contains(got, message.EventSagaFailed) || out.giveUp != ReasonCompensation {
		t.Errorf("undo exhausted: events %v giveUp %q, want SagaFailed and %s", got, out.giveUp, ReasonCompensation)
	}
}

func TestMachineLocalStepError(t *testing.T) {
	r := start(t, errors.New("orders db down"))
	r.reply(message.OutcomeSuccess, "")
	r.reply(message.OutcomeSuccess, "")
	before := r.st
	reply := &input{typ: message.TypeReply, sagaID: "o-1", inReplyTo: r.st.Waiting, outcome: message.OutcomeSuccess}
	_, err := r.apply(reply)
	var se *StepError
	if !errors.As(err, &se) || se.Step != order.StepCompleteOrder || retry.IsPermanent(err) {
		t.Fatalf("err %v, want a retryable StepError of %s", err, order.StepCompleteOrder)
	}
	if r.st != before {
		t.Fatal("a failed apply changed the state")
	}
	out, err := r.m.abort(context.Background(), r.st, mustDecode(t, r), reply, "retries-exhausted", se.Index)
	if err != nil {
		t.Fatal(err)
	}
	r.st = out.state
	// The reply's step succeeded: the history says so before the local
	// step that failed after it, and before its compensation.
	want := []string{message.EventStepSucceeded + " " + order.StepScheduleShipping, message.EventStepFailed + " " + order.StepCompleteOrder, message.EventCompensationStarted + " "}
	var got []string
	for _, ev := range out.events {
		got = append(got, ev.Type+" "+ev.Step)
	}
	if !slices.Equal(got, want) {
		t.Errorf("abort events %q, want %q", got, want)
	}
	// complete-order may have left its effect (its outcome is unknown):
	// its UndoLocal comes first, in a transaction of its own, due now.
	if got := cmdTypes(out); len(got) != 0 {
		t.Errorf("abort sent %v, want nothing before the local undo", got)
	}
	if !strings.HasSuffix(r.st.Waiting, "/complete-order/undo-local") || r.st.Deadline > r.m.now().UnixMilli() {
		t.Fatalf("after abort the saga waits on %q until %d, want the local undo due now", r.st.Waiting, r.st.Deadline)
	}
	out = r.must(&input{typ: message.TypeTimeout, sagaID: "o-1", inReplyTo: r.st.Waiting, attempt: r.st.Attempt})
	if got, want := cmdTypes(out), []string{order.CancelShipment}; !slices.Equal(got, want) {
		t.Errorf("after the local undo sent %v, want %v (undo the last completed step next)", got, want)
	}
}

func mustDecode(t *testing.T, r *run) any {
	d, err := r.m.def.Decode(r.st.Data)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestMachineStepCompensationPolicy: a step's own compensation policy
// (saga.Step.Compensation) wins over the engine's. Version 3 of the order
// saga sends CancelPayment up to 20 times; the engine's policy here gives
// up after 2.
func TestMachineStepCompensationPolicy(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	def := order.NewV3(storeFunc(func(context.Context, *order.Order) error { return nil }))
	r := &run{t: t, m: newMachine(sagadef.Of(def), compensation.Policy{MaxAttempts: 2}, c.now)}
	r.must(&input{typ: message.TypeStartSaga, sagaID: "o-1", msgID: "m-1", value: startValue})
	timeout := func() *outcome {
		return r.must(&input{typ: message.TypeTimeout, sagaID: "o-1", inReplyTo: r.st.Waiting, attempt: r.st.Attempt})
	}
	// Both members of the reserve group time out three times each: the
	// saga compensates, payment first.
	var out *outcome
	for range 6 {
		out = timeout()
	}
	if got := cmdTypes(out); !slices.Equal(got, []string{order.CancelPayment}) {
		t.Fatalf("exhausted group sent %v, want CancelPayment", got)
	}
	sends := 1
	for sends < 30 {
		out = timeout()
		if slices.Contains(types(out), message.EventSagaFailed) {
			break
		}
		sends++
	}
	if sends != 20 {
		t.Fatalf("CancelPayment sent %d times before the saga failed, want 20 (the step's policy, not the engine's 2)", sends)
	}
}
