package pgdedupe_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/participant/pgdedupe"
)

// Room is the payload of the hotel's BookRoom command.
type Room struct {
	TripID string `json:"trip_id"`
	Hotel  string `json:"hotel"`
}

// hotelSchema is the hotel's own tables.
const hotelSchema = `
CREATE TABLE IF NOT EXISTS rooms (hotel text PRIMARY KEY, free int NOT NULL);
CREATE TABLE IF NOT EXISTS bookings (
	id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	trip_id   text NOT NULL,
	hotel     text NOT NULL,
	reference text NOT NULL
);`

// book takes a free room of r.Hotel for r.TripID and replies with the
// booking's reference, or fails with NO_ROOMS. It runs in the transaction
// that writes the command's dedupe row.
func book(ctx context.Context, tx pgx.Tx, r *Room) (participant.Reply, error) {
	tag, err := tx.Exec(ctx, `UPDATE rooms SET free = free - 1 WHERE hotel = $1 AND free > 0`, r.Hotel)
	if err != nil {
		return participant.Reply{}, err
	}
	if tag.RowsAffected() == 0 {
		return participant.Failure("NO_ROOMS"), nil
	}
	ref := r.Hotel + "/" + r.TripID
	if _, err := tx.Exec(ctx, `INSERT INTO bookings (trip_id, hotel, reference) VALUES ($1, $2, $3)`, r.TripID, r.Hotel, ref); err != nil {
		return participant.Reply{}, err
	}
	return participant.SuccessWith(map[string]string{"reference": ref})
}

// NewHotel returns the hotel participant's handler, its effects made
// exactly-once by the dedupe table rooms.
func NewHotel(received *pgdedupe.Table) participant.Handler {
	return participant.Routes{
		"BookRoom": participant.Typed(func(ctx context.Context, r *Room) (participant.Reply, error) {
			return received.Run(ctx, func(ctx context.Context, tx pgx.Tx) (participant.Reply, error) {
				return book(ctx, tx, r)
			})
		}),
	}
}

// A hotel participant whose rooms and bookings live in PostgreSQL: each
// booking and its command's dedupe row commit together, so a command
// delivered twice books once and gets the same reply, data included.
func Example() {
	ctx := context.Background()
	addr, err := dsn() // the service's database, e.g. "postgres://hotel@localhost:5432/hotel"
	if err != nil {
		log.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, addr)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	received, err := pgdedupe.New(pool, "hotel")
	if err != nil {
		log.Fatal(err)
	}
	if err := received.Migrate(ctx); err != nil { // or pgdedupe.Schema in the service's migrations
		log.Fatal(err)
	}
	if _, err := pool.Exec(ctx, hotelSchema+`INSERT INTO rooms VALUES ('grand', 1) ON CONFLICT (hotel) DO UPDATE SET free = 1`); err != nil {
		log.Fatal(err)
	}

	h := NewHotel(received)
	req := func(tripID string) participant.Request {
		return participant.Request{SagaID: tripID, SagaType: "trip", Type: "BookRoom", MessageID: tripID + "/book-hotel/do",
			Payload: []byte(`{"trip_id":"` + tripID + `","hotel":"grand"}`)}
	}
	// t-1 is delivered twice (a retried batch): it books once. t-2 finds
	// no room left.
	reqs := []participant.Request{req("t-1"), req("t-1"), req("t-2")}
	replies, err := h.Handle(ctx, reqs)
	if err != nil {
		log.Fatal(err)
	}
	for i, r := range replies {
		fmt.Println(strings.Join(strings.Fields(reqs[i].SagaID+" "+r.Outcome+" "+r.Reason+" "+r.Data), " "))
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM bookings WHERE hotel = 'grand'`).Scan(&n); err != nil {
		log.Fatal(err)
	}
	fmt.Println("bookings:", n)
	// Output:
	// t-1 success {"reference":"grand/t-1"}
	// t-1 success {"reference":"grand/t-1"}
	// t-2 failure NO_ROOMS
	// bookings: 1
}
