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
	saga.Step[order]{Name: "reserve", Do: cmd("down", "Reserve"), Undo: cmd("up", "Release"), Deadline: time.Hour},
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
	h := sagatest.New(t, sagatest.Timeout(2*time.Second), sagatest.Logger(slog.New(slog.DiscardHandler)))
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
	if err := h.Saga(waiting); err == nil || !strings.Contains(err.Error(), "registered twice") {
		t.Errorf("second Saga: got %v, want registered twice", err)
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
