package test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
)

// effects records the calls of local steps and their undos, by step.
type effects struct {
	mu    sync.Mutex
	calls map[string]int
}

func (f *effects) add(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls == nil {
		f.calls = make(map[string]int)
	}
	f.calls[name]++
}

func (f *effects) get(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[name]
}

func (f *effects) local(name string, err error) func(context.Context, *order.Order) error {
	return func(context.Context, *order.Order) error {
		f.add(name)
		return err
	}
}

// history returns a saga's events as "Type step" strings.
func history(evs []message.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Type+" "+ev.Step)
	}
	return out
}

// TestLocalStepsOfTheStartAreUndone runs a saga whose first two steps are
// local: the first succeeds, the second keeps failing until its attempts
// run out, in the start request's own transaction. The saga must exist and
// compensate: the second step's effect may have been made before its
// transaction aborted, and the first one's stands.
func TestLocalStepsOfTheStartAreUndone(t *testing.T) {
	e := newEnv(t)
	var f effects
	def := saga.New(order.Name,
		saga.Step[order.Order]{Name: "hold-budget", Local: f.local("hold", nil), UndoLocal: f.local("release", nil)},
		saga.Step[order.Order]{Name: "confirm", Local: f.local("confirm", errors.New("store down")), UndoLocal: f.local("unconfirm", nil),
			Retry: retry.Policy{MaxAttempts: 2, InitialInterval: 10 * time.Millisecond}},
		saga.Step[order.Order]{Name: "ship", Do: func(_ context.Context, o *order.Order) (saga.Command, error) {
			return saga.Command{Participant: "shipping", Type: "ScheduleShipment", Payload: o}, nil
		}},
	)
	eng := e.startEngine(def)
	defer eng.stop(t)

	e.start(newOrder("l-1"))
	evs := e.waitTerminal([]string{"l-1"}, 30*time.Second)
	want := []string{
		message.EventSagaStarted + " ", message.EventStepSucceeded + " hold-budget",
		message.EventStepFailed + " confirm", message.EventCompensationStarted + " ",
		message.EventStepCompensated + " confirm", message.EventStepCompensated + " hold-budget",
		message.EventSagaCompensated + " ",
	}
	if got := history(evs["l-1"]); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if got := f.get("release"); got != 1 {
		t.Errorf("hold-budget's UndoLocal ran %d times, want once", got)
	}
	if got := f.get("unconfirm"); got != 1 {
		t.Errorf("confirm's UndoLocal ran %d times, want once", got)
	}
	if dead := e.readAll(message.DLT(order.Name), 300*time.Millisecond); len(dead) != 1 || string(dead[0].Key) != "l-1" {
		t.Errorf("dead letters %d, want the start request of l-1", len(dead))
	}
}

// TestReplyStepSucceedsBeforeItIsCompensated replies success to a
// participant step whose next, local step keeps failing: the reply is
// dead-lettered when the attempts run out, yet its step did succeed. The
// history must say so before the step is compensated.
func TestReplyStepSucceedsBeforeItIsCompensated(t *testing.T) {
	e := newEnv(t)
	var f effects
	inventory := func(typ string) func(context.Context, *order.Order) (saga.Command, error) {
		return func(_ context.Context, o *order.Order) (saga.Command, error) {
			return saga.Command{Participant: "inventory", Type: typ, Payload: o}, nil
		}
	}
	def := saga.New(order.Name,
		saga.Step[order.Order]{Name: "reserve", Do: inventory("ReserveInventory"), Undo: inventory("ReleaseInventory")},
		saga.Step[order.Order]{Name: "note", Local: f.local("note", nil)},
		saga.Step[order.Order]{Name: "confirm", Local: f.local("confirm", errors.New("store down")),
			Retry: retry.Policy{MaxAttempts: 2, InitialInterval: 10 * time.Millisecond}},
	)
	eng := e.startEngine(def)
	defer eng.stop(t)

	reply := func(inReplyTo string) *kgo.Record {
		return &kgo.Record{Topic: message.Inbox(order.Name), Key: []byte("h-1"), Headers: []kgo.RecordHeader{
			{Key: message.HeaderMessageType, Value: []byte(message.TypeReply)},
			{Key: message.HeaderMessageID, Value: []byte("reply-" + inReplyTo)},
			{Key: message.HeaderInReplyTo, Value: []byte(inReplyTo)},
			{Key: message.HeaderStepAttempt, Value: []byte("1")},
			{Key: message.HeaderOutcome, Value: []byte(message.OutcomeSuccess)},
		}}
	}
	e.produce(startRecord(newOrder("h-1")), reply("h-1/reserve/do"))
	for deadline := time.Now().Add(30 * time.Second); e.commands("inventory")["h-1/reserve/undo attempt 1"] == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("no ReleaseInventory within 30s; events %q", history(e.events()["h-1"]))
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.produce(reply("h-1/reserve/undo"))
	evs := e.waitTerminal([]string{"h-1"}, 30*time.Second)
	want := []string{
		message.EventSagaStarted + " ", message.EventStepSucceeded + " reserve", message.EventStepSucceeded + " note",
		message.EventStepFailed + " confirm", message.EventCompensationStarted + " ",
		message.EventStepCompensated + " reserve", message.EventSagaCompensated + " ",
	}
	if got := history(evs["h-1"]); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
}

// undoCounter counts the failed UndoLocal calls the engine reports.
type undoCounter struct{ n atomic.Int64 }

func (c *undoCounter) AfterCommit(_ context.Context, b *orchestrator.Batch) {
	c.n.Add(int64(len(b.UndoLocalFailures)))
}

// TestUndoLocalFailuresAreVisible makes a local step's UndoLocal fail twice:
// each failure is logged with its error, kept as the saga's last error in
// its view and reported to hooks, and the compensation then completes.
func TestUndoLocalFailuresAreVisible(t *testing.T) {
	e := newEnv(t)
	var f effects
	var fails atomic.Int64
	def := saga.New(order.Name,
		saga.Step[order.Order]{Name: "hold-budget", Local: f.local("hold", nil), UndoLocal: func(context.Context, *order.Order) error {
			if fails.Add(1) <= 2 {
				return errors.New("ledger down")
			}
			return nil
		}},
		saga.Step[order.Order]{Name: "confirm", Local: f.local("confirm", retry.Permanent(errors.New("rejected")))},
	)
	logs := &logRecorder{Handler: testLogger(t).Handler(), msgs: new(messages)}
	var undos undoCounter
	eng := e.startEngine(def, orchestrator.Logger(slog.New(logs)), orchestrator.Hooks(&undos))
	defer eng.stop(t)

	e.start(newOrder("u-1"))
	var seen *orchestrator.State
	for deadline := time.Now().Add(30 * time.Second); seen == nil; {
		if st, err := e.redisState("u-1"); err == nil && st != nil && st.LastError != "" {
			seen = st
		}
		if time.Now().After(deadline) {
			t.Fatal("the view never showed the UndoLocal's error within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if seen.LastError != "ledger down" || seen.UndoFailures < 1 {
		t.Errorf("view: last error %q, undo failures %d; want %q and at least 1", seen.LastError, seen.UndoFailures, "ledger down")
	}
	evs := e.waitTerminal([]string{"u-1"}, 30*time.Second)
	if got := terminal(evs["u-1"]); got != message.EventSagaCompensated {
		t.Errorf("saga ended %s, want %s", got, message.EventSagaCompensated)
	}
	if !logs.msgs.has("UndoLocal failed") {
		t.Errorf("no UndoLocal failure was logged; logged %q", logs.msgs.all())
	}
	if got := undos.n.Load(); got != 2 {
		t.Errorf("hooks saw %d UndoLocal failures, want 2", got)
	}
}
