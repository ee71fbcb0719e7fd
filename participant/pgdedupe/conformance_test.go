package pgdedupe_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/participant/participanttest"
)

// TestConformance runs the participant conformance suite against the
// hotel of the package example in PostgreSQL, built both ways: with Run
// from participant.Routes, and with Table.Handler. A key's effects are its
// bookings; its hotel "h-<key>" has ten free rooms, or none for the
// failure subtest until Heal frees one.
func TestConformance(t *testing.T) {
	p := pool(t)
	ctx := context.Background()
	if _, err := p.Exec(ctx, hotelSchema); err != nil {
		t.Fatal(err)
	}
	routes := newTable(t, unique("hotel-conformance-routes"))
	handler := newTable(t, unique("hotel-conformance-handler"))
	setRooms := func(t testing.TB, key string, free int) {
		t.Helper()
		_, err := p.Exec(ctx, `INSERT INTO rooms VALUES ($1, $2) ON CONFLICT (hotel) DO UPDATE SET free = $2`, "h-"+key, free)
		if err != nil {
			t.Fatal(err)
		}
	}
	bookRoom := func(t testing.TB, key string) participant.Request {
		t.Helper()
		payload, err := json.Marshal(Room{TripID: key, Hotel: "h-" + key})
		if err != nil {
			t.Fatal(err)
		}
		return participant.Request{Type: "BookRoom", Payload: payload}
	}
	fixture := func(newHandler func() participant.Handler) participanttest.Fixture {
		return participanttest.Fixture{
			NewHandler: newHandler,
			Success: func(t testing.TB, key string) participant.Request {
				setRooms(t, key, 10)
				return bookRoom(t, key)
			},
			Failure: func(t testing.TB, key string) participant.Request {
				setRooms(t, key, 0)
				return bookRoom(t, key)
			},
			Heal: func(t testing.TB, key string) { setRooms(t, key, 1) },
			Effects: func(t testing.TB, key string) int {
				t.Helper()
				var n int
				if err := p.QueryRow(ctx, `SELECT count(*) FROM bookings WHERE trip_id = $1`, key).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			},
		}
	}

	t.Run("Routes and Run", func(t *testing.T) {
		participanttest.Run(t, func(t *testing.T) participanttest.Fixture {
			// Instances share the table, as replicas share the database.
			return fixture(func() participant.Handler { return NewHotel(routes) })
		})
	})
	t.Run("Handler", func(t *testing.T) {
		participanttest.Run(t, func(t *testing.T) participanttest.Fixture {
			return fixture(func() participant.Handler {
				return handler.Handler(func(ctx context.Context, tx pgx.Tx, req participant.Request) (participant.Reply, error) {
					var r Room
					if err := json.Unmarshal(req.Payload, &r); err != nil {
						return participant.Failure(participant.ReasonBadCommand), nil
					}
					return book(ctx, tx, &r)
				})
			})
		})
	})
}
