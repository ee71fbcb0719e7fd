package sagatest_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/sagatest"
)

type order struct {
	ID string `json:"id"`
}

// waiting reserves with participant "down", which never answers, and
// releases with participant "up".
var waiting = saga.New("waiting",
	saga.Step[order]{Name: "reserve", Do: cmd("down", "Reserve"), Undo: cmd("up", "Release"), ReplyTimeout: time.Hour},
)

func cmd(participant, typ string) func(context.Context, *order) (saga.Command, error) {
	return func(_ context.Context, o *order) (saga.Command, error) {
		return saga.Command{Participant: participant, Type: typ, Payload: o}, nil
	}
}

// TestHarness runs a saga whose first participant never answers, on a
// real redis-server: Wait times out with the saga's events so far,
// Compensate ends it, and an undecodable start is dead-lettered.
func TestHarness(t *testing.T) {
	h := sagatest.New(t, sagatest.WaitTimeout(2*time.Second), sagatest.Logger(slog.New(slog.DiscardHandler)))
	ctx := context.Background()
	down := participant.HandlerFunc(func(context.Context, []participant.Request) ([]participant.Reply, error) {
		return nil, errors.New("down") // retried until the harness closes
	})
	up := participant.Routes{
		"Release": func(context.Context, participant.Request) (participant.Reply, error) {
			return participant.Success(), nil
		},
	}
	for name, h1 := range map[string]participant.Handler{"down": down, "up": up} {
		if err := h.Participant(name, h1); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Saga(waiting); err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx, waiting, "o-1", order{ID: "o-1"}); err != nil {
		t.Fatal(err)
	}
	_, err := h.Wait(ctx, waiting, "o-1")
	if err == nil || !strings.Contains(err.Error(), "waiting saga o-1 has not ended; its events: SagaStarted") {
		t.Fatalf("Wait of a saga that cannot end: got %v", err)
	}
	if err := h.Compensate(ctx, waiting, "o-1", "test"); err != nil {
		t.Fatal(err)
	}
	ev, err := h.Wait(ctx, waiting, "o-1")
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != message.EventSagaCompensated || ev.Reason != "compensation requested: test" {
		t.Errorf("after Compensate: got %s %q, want %s %q", ev.Type, ev.Reason, message.EventSagaCompensated, "compensation requested: test")
	}
	if err := h.StartRaw(ctx, waiting, "o-2", []byte(`{"id":`)); err != nil {
		t.Fatal(err)
	}
	d, err := h.WaitDeadLetter(ctx, waiting, "o-2")
	if err != nil {
		t.Fatal(err)
	}
	if d.Reason != "undecodable" || len(h.DeadLetters(waiting)) != 1 {
		t.Errorf("dead letters: got %q and %d, want undecodable and 1", d.Reason, len(h.DeadLetters(waiting)))
	}
}

// TestFakeClock runs a saga whose participant never answers, with a 30s
// step deadline and three sends, on a clock the test moves: the three
// deadlines (90s) pass and the saga compensates in the time its messages
// take through Kafka (about 0.3s a hop here), not in 90s.
func TestFakeClock(t *testing.T) {
	h := sagatest.New(t, sagatest.FakeClock(), sagatest.Logger(slog.New(slog.DiscardHandler)))
	ctx := context.Background()
	silent := saga.New("silent",
		saga.Step[order]{Name: "reserve", Do: cmd("mute", "Reserve"), Undo: cmd("up", "Release"), ReplyTimeout: 30 * time.Second},
	)
	mute := participant.HandlerFunc(func(_ context.Context, reqs []participant.Request) ([]participant.Reply, error) {
		return nil, errors.New("mute") // never answers
	})
	up := participant.Routes{"Release": func(context.Context, participant.Request) (participant.Reply, error) {
		return participant.Success(), nil
	}}
	for _, err := range []error{h.Participant("mute", mute), h.Participant("up", up), h.Saga(silent)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Start(ctx, silent, "s-1", order{ID: "s-1"}); err != nil {
		t.Fatal(err)
	}
	for len(h.Events(silent, "s-1")) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	began := time.Now()
	var ev message.Event
	for {
		h.Clock().Advance(31 * time.Second)
		wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		got, err := h.Wait(wctx, silent, "s-1")
		cancel()
		if err == nil {
			ev = got
			break
		}
		if time.Since(began) > 10*time.Second {
			t.Fatalf("no terminal event 10s after the clock began to move: %v", err)
		}
	}
	took := time.Since(began)
	t.Logf("three 30s deadlines and a compensation in %v of wall time", took.Round(time.Millisecond))
	if ev.Type != message.EventSagaCompensated || !strings.Contains(ev.Reason, "no reply after 3 attempts") {
		t.Errorf("terminal event %s %q, want SagaCompensated after no reply", ev.Type, ev.Reason)
	}
	if took > 10*time.Second {
		t.Errorf("took %v of wall time, want seconds, not the deadlines' 90s", took)
	}
}

// TestRegisterTwice registers a saga type twice on a Harness made by Open,
// which returns the error (New's would fail the test).
func TestRegisterTwice(t *testing.T) {
	h, err := sagatest.Open(sagatest.Miniredis(), sagatest.Logger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Saga(waiting); err != nil {
		t.Fatal(err)
	}
	if err := h.Saga(waiting); err == nil || !strings.Contains(err.Error(), "registered twice") {
		t.Errorf("second Saga: got %v, want registered twice", err)
	}
}
