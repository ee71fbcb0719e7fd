package localfirst_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/chaos/check/localfirst"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/sagatest"
)

// TestLocalFirst runs the saga end to end on kfake and a redis-server: a
// transfer that completes holds its amount once; one the approver refuses
// is released; one whose Local first step panics on every attempt never
// holds anything.
func TestLocalFirst(t *testing.T) {
	h := sagatest.New(t)
	rdb := h.Redis()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	def := localfirst.New(localfirst.NewStore(rdb, true, nil))
	for _, err := range []error{
		h.Participant(localfirst.Approver, localfirst.NewApprover(rdb)),
		h.Saga(def),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name     string
		tr       localfirst.Transfer
		panics   int
		event    string // terminal event type; "" for none
		hold     string // status of the hold ("" = never written)
		approval string
		held     int64 // the account's held total after it
	}{
		{name: "completed", tr: localfirst.Transfer{TransferID: "t-1", Account: "a-1", AmountCents: 700},
			event: message.EventSagaCompleted, hold: "held", approval: "approved", held: 700},
		{name: "refused: the hold is released", tr: localfirst.Transfer{TransferID: "t-2", Account: "a-1", AmountCents: 300, Refuse: true},
			event: message.EventSagaCompensated, hold: "released", held: 700},
		{name: "the Local first step panics on every attempt", tr: localfirst.Transfer{TransferID: "t-3", Account: "a-1", AmountCents: 50},
			panics: 3, held: 700},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.panics > 0 {
				if err := rdb.Set(ctx, localfirst.PanicKey, tt.panics, 0).Err(); err != nil {
					t.Fatal(err)
				}
				defer rdb.Del(ctx, localfirst.PanicKey)
			}
			var got string
			if tt.panics == 0 {
				ev, err := h.Run(ctx, def, tt.tr.TransferID, tt.tr)
				if err != nil {
					t.Fatal(err)
				}
				got = ev.Type
			} else {
				if err := h.Start(ctx, def, tt.tr.TransferID, tt.tr); err != nil {
					t.Fatal(err)
				}
				d, err := h.WaitDeadLetter(ctx, def, tt.tr.TransferID)
				if err != nil {
					t.Fatal(err)
				}
				if d.Reason != "retries-exhausted" || !strings.Contains(d.ErrorMessage, localfirst.StepHold) {
					t.Errorf("dead letter: reason %q, message %q; want retries-exhausted naming %s", d.Reason, d.ErrorMessage, localfirst.StepHold)
				}
				// The engine may start the saga to compensate it, or
				// leave no saga at all; either way nothing is held.
				for _, ev := range h.Events(def, tt.tr.TransferID) {
					if message.Terminal(ev.Type) && ev.Type != message.EventSagaCompensated {
						t.Errorf("terminal event %s, want none or %s", ev.Type, message.EventSagaCompensated)
					}
				}
			}
			if tt.event != "" && got != tt.event {
				t.Errorf("terminal event: got %s, want %s", got, tt.event)
			}
			hold := rdb.HGetAll(ctx, localfirst.HoldKey(tt.tr.TransferID)).Val()
			if hold["status"] != tt.hold && !(tt.hold == "" && hold["status"] == "released") {
				t.Errorf("hold: got %v, want status %q", hold, tt.hold)
			}
			if tt.hold == "held" && hold["applies"] != "1" {
				t.Errorf("hold applied %s times, want once", hold["applies"])
			}
			if got := rdb.HGet(ctx, localfirst.ApprovalKey(tt.tr.TransferID), "status").Val(); got != tt.approval {
				t.Errorf("approval: got %q, want %q", got, tt.approval)
			}
			if got, _ := rdb.Get(ctx, localfirst.HeldKey("a-1")).Int64(); got != tt.held {
				t.Errorf("held on a-1: got %d, want %d", got, tt.held)
			}
		})
	}
}

// A late Hold of an abandoned attempt, with a fence below the Release's,
// is refused and takes nothing.
func TestHoldFenced(t *testing.T) {
	h := sagatest.New(t)
	rdb := h.Redis()
	ctx := context.Background()
	s := localfirst.NewStore(rdb, false, nil)
	tr := &localfirst.Transfer{TransferID: "t-late", Account: "a-2", AmountCents: 40}
	at := func(fence int64) context.Context {
		return saga.WithKey(ctx, saga.Key{SagaID: tr.TransferID, Step: localfirst.StepHold, Fence: fence})
	}
	if err := s.Release(at(5), tr); err != nil {
		t.Fatalf("release before any hold: %v", err)
	}
	if err := s.Hold(at(1), tr); err == nil {
		t.Error("a hold at fence 1 after a release at fence 5: got nil error, want a refusal")
	}
	for range 2 {
		if err := s.Release(at(5), tr); err != nil {
			t.Errorf("release again: %v", err)
		}
	}
	if got, _ := rdb.Get(ctx, localfirst.HeldKey("a-2")).Int64(); got != 0 {
		t.Errorf("held on a-2: got %d, want 0", got)
	}
	tr.TransferID = "t-twice"
	for range 2 {
		if err := s.Hold(at(1), tr); err != nil {
			t.Fatalf("hold: %v", err)
		}
	}
	if got, _ := rdb.Get(ctx, localfirst.HeldKey("a-2")).Int64(); got != 40 {
		t.Errorf("held on a-2 after the same hold twice: got %d, want 40", got)
	}
}
