package trip_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/examples/trip"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/sagatest"
)

// TestTrip runs the trip saga end to end with its participants on kfake and
// a redis-server, one trip per way it can end, and checks each trip's
// outcome, its exactly one terminal event, and the participants' ledgers.
func TestTrip(t *testing.T) {
	h := sagatest.New(t)
	rdb := h.Redis()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	def := trip.New(trip.NewStore(rdb))
	for _, err := range []error{
		h.Participant(trip.Hotel, trip.NewHotel(rdb)),
		h.Participant(trip.Card, trip.NewCard(rdb, 100_000)),
		h.Saga(def),
		rdb.Set(ctx, trip.RoomsKey("h-small"), 1, 0).Err(),
		rdb.Set(ctx, trip.BlockedKey("mallory"), 1, 0).Err(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		name   string
		trip   trip.Trip
		event  string // terminal event type
		reason string // in the terminal event
		// ledgers: status of the booking, the charge and the confirmation
		// ("" = never written).
		booking, charge, confirmation string
	}{
		{
			name:  "completed",
			trip:  trip.Trip{TripID: "t-ok", Traveller: "alice", Hotel: "h-small", Nights: 2, AmountCents: 30_000},
			event: message.EventSagaCompleted, booking: "booked", charge: "charged", confirmation: "confirmed",
		},
		{
			name:  "card declined: the hotel is cancelled",
			trip:  trip.Trip{TripID: "t-declined", Traveller: "bob", Hotel: "h-big", Nights: 1, AmountCents: 150_000},
			event: message.EventSagaCompensated, reason: trip.ReasonDeclined, booking: "cancelled",
		},
		{
			name:  "no rooms left: nothing to undo",
			trip:  trip.Trip{TripID: "t-full", Traveller: "carol", Hotel: "h-small", Nights: 1, AmountCents: 10_000},
			event: message.EventSagaCompensated, reason: trip.ReasonNoRooms,
		},
		{
			name:  "confirm fails: UndoLocal, refund, cancel",
			trip:  trip.Trip{TripID: "t-blocked", Traveller: "mallory", Hotel: "h-big", Nights: 3, AmountCents: 20_000},
			event: message.EventSagaCompensated, booking: "cancelled", charge: "refunded", confirmation: "cancelled",
		},
	}
	// One after the other: h-small has one room, which t-ok takes first.
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := h.Run(ctx, def, tt.trip.TripID, tt.trip)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Type != tt.event || (tt.reason != "" && !strings.Contains(ev.Reason, tt.reason)) {
				t.Errorf("terminal event: got %s %q, want %s with reason %q", ev.Type, ev.Reason, tt.event, tt.reason)
			}
			for key, want := range map[string]string{
				trip.BookingKey(tt.trip.TripID):      tt.booking,
				trip.ChargeKey(tt.trip.TripID):       tt.charge,
				trip.ConfirmationKey(tt.trip.TripID): tt.confirmation,
			} {
				if got := rdb.HGet(ctx, key, "status").Val(); got != want {
					t.Errorf("%s status: got %q, want %q", key, got, want)
				}
			}
			// The hotel's booking reference came back with its reply: a
			// cancellation names it, a completed trip's event carries it.
			ref := trip.BookingReference(tt.trip.TripID)
			if tt.booking == "cancelled" {
				if got := rdb.HGet(ctx, trip.BookingKey(tt.trip.TripID), "cancelled_reference").Val(); got != ref {
					t.Errorf("CancelRoom named booking %q, want %q", got, ref)
				}
			}
			var final trip.Trip
			if err := json.Unmarshal(ev.Data, &final); err != nil {
				t.Fatalf("terminal event data %s: %v", ev.Data, err)
			}
			if tt.booking != "" && final.BookingRef != ref {
				t.Errorf("terminal event's booking_ref %q, want %q", final.BookingRef, ref)
			}
		})
	}
	t.Run("blocked traveller is dead-lettered with its cause", func(t *testing.T) {
		d, err := h.WaitDeadLetter(ctx, def, "t-blocked")
		if err != nil {
			t.Fatal(err)
		}
		if d.Reason != dlq.ReasonPermanent || !strings.Contains(d.ErrorMessage, trip.ErrBlocked.Error()) {
			t.Errorf("dead letter: reason %q, message %q; want permanent-error and %q", d.Reason, d.ErrorMessage, trip.ErrBlocked)
		}
	})
	t.Run("poison start is dead-lettered", func(t *testing.T) {
		if err := h.StartRaw(ctx, def, "t-poison", []byte("{not JSON")); err != nil {
			t.Fatal(err)
		}
		d, err := h.WaitDeadLetter(ctx, def, "t-poison")
		if err != nil {
			t.Fatal(err)
		}
		if d.Reason != dlq.ReasonUndecodable {
			t.Errorf("dead-letter reason: got %q, want undecodable", d.Reason)
		}
		if evs := h.Events(def, "t-poison"); len(evs) != 0 {
			t.Errorf("events of the poison start: got %d, want none", len(evs))
		}
	})
	t.Run("the client refuses invalid data", func(t *testing.T) {
		if err := h.Start(ctx, def, "t-invalid", trip.Trip{TripID: "t-invalid"}); err == nil {
			t.Error("Start of a trip without traveller: got nil error, want one")
		}
	})
	t.Run("exactly one terminal event each, rooms conserved", func(t *testing.T) {
		time.Sleep(300 * time.Millisecond) // let a second terminal event show, if any
		for _, tt := range tests {
			n := 0
			for _, ev := range h.Events(def, tt.trip.TripID) {
				if message.Terminal(ev.Type) {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%s: %d terminal events, want 1: %v", tt.trip.TripID, n, h.Events(def, tt.trip.TripID))
			}
		}
		if left := rdb.Get(ctx, trip.RoomsKey("h-small")).Val(); left != "0" {
			t.Errorf("rooms left at h-small: got %s, want 0 (t-ok has the only one)", left)
		}
	})
}
