package test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/client"
	"github.com/ksaga/ksaga/compensation"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
)

// waitEvent waits until saga id has an event of type typ.
func (e *env) waitEvent(id, typ string, timeout time.Duration) {
	e.t.Helper()
	for deadline := time.Now().Add(timeout); ; {
		for _, ev := range e.events()[id] {
			if ev.Type == typ {
				return
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("saga %s had no %s within %v; events %q", id, typ, timeout, history(e.events()[id]))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// replyRecord is a participant's success reply to command msgID of saga id.
func replyRecord(id, msgID string) *kgo.Record {
	return &kgo.Record{Topic: message.Inbox(order.Name), Key: []byte(id), Headers: []kgo.RecordHeader{
		{Key: message.HeaderMessageType, Value: []byte(message.TypeReply)},
		{Key: message.HeaderMessageID, Value: []byte(msgID + "/reply")},
		{Key: message.HeaderInReplyTo, Value: []byte(msgID)},
		{Key: message.HeaderOutcome, Value: []byte(message.OutcomeSuccess)},
	}}
}

// TestPark parks sagas whose steps ran out of attempts instead of
// compensating them: a participant step that got no reply, and a local step
// whose store was down. One is resumed by an operator (its command is sent
// again with fresh attempts and the same message id), one by its late
// reply, one compensated by an operator, and the local one resumed once its
// store is back.
func TestPark(t *testing.T) {
	e := newEnv(t)
	var storeDown atomic.Bool
	storeDown.Store(true)
	issue := func(_ context.Context, o *order.Order) (saga.Command, error) {
		return saga.Command{Participant: "coupon", Type: "ReserveCoupon", Payload: o}, nil
	}
	release := func(_ context.Context, o *order.Order) (saga.Command, error) {
		return saga.Command{Participant: "coupon", Type: "ReleaseCoupon", Payload: o}, nil
	}
	def := saga.New(order.Name,
		saga.Step[order.Order]{Name: "issue", Do: issue, Undo: release, ReplyTimeout: 300 * time.Millisecond,
			Retry: retry.Policy{MaxAttempts: 2}, Park: true,
			Skip: func(o *order.Order) bool { return o.Coupon == "local" }},
		saga.Step[order.Order]{Name: "store", Local: func(_ context.Context, o *order.Order) error {
			if o.Coupon == "local" && storeDown.Load() {
				return errors.New("store down")
			}
			return nil
		}, Retry: retry.Policy{MaxAttempts: 2, InitialInterval: 10 * time.Millisecond}, Park: true},
	)
	eng := e.startEngine(def, orchestrator.Compensation(compensation.Policy{MaxAttempts: 20, Deadline: 5 * time.Second}))
	defer eng.stop(t)
	cl, err := client.New(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()

	local := newOrder("p-local")
	local.Coupon = "local"
	for _, o := range []order.Order{newOrder("p-resume"), newOrder("p-late"), newOrder("p-comp"), local} {
		e.start(o)
	}
	for _, id := range []string{"p-resume", "p-late", "p-comp", "p-local"} {
		e.waitEvent(id, message.EventSagaParked, 30*time.Second)
	}
	st, err := e.redisState("p-resume")
	if err != nil || st == nil || st.Status != message.StatusParked || st.Deadline != 0 {
		t.Fatalf("parked saga's view: %+v (%v), want status parked with no deadline", st, err)
	}
	sends := e.commands("coupon")["p-resume/issue/do attempt 1"]

	if err := cl.Resume(ctx, def, "p-resume", "coupon service is back"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); e.commands("coupon")["p-resume/issue/do attempt 1"] == sends; {
		if time.Now().After(deadline) {
			t.Fatal("the resumed step was not sent again within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.produce(replyRecord("p-resume", "p-resume/issue/do"), replyRecord("p-late", "p-late/issue/do"))
	if err := cl.Compensate(ctx, def, "p-comp", "customer cancelled"); err != nil {
		t.Fatal(err)
	}
	e.produce(replyRecord("p-comp", "p-comp/issue/undo"))
	storeDown.Store(false)
	if err := cl.Resume(ctx, def, "p-local", "store is back"); err != nil {
		t.Fatal(err)
	}
	evs := e.waitTerminal([]string{"p-resume", "p-late", "p-comp", "p-local"}, 30*time.Second)
	want := map[string]string{"p-resume": message.EventSagaCompleted, "p-late": message.EventSagaCompleted,
		"p-comp": message.EventSagaCompensated, "p-local": message.EventSagaCompleted}
	for id, w := range want {
		if got := terminal(evs[id]); got != w {
			t.Errorf("saga %s ended %s, want %s; events %q", id, got, w, history(evs[id]))
		}
		resumed := 0
		for _, ev := range evs[id] {
			if ev.Type == message.EventSagaResumed {
				resumed++
			}
		}
		if wantResumed := map[bool]int{true: 1, false: 0}[id != "p-comp"]; resumed != wantResumed {
			t.Errorf("saga %s: %d SagaResumed, want %d", id, resumed, wantResumed)
		}
	}
}
