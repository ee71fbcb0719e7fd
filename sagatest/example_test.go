package sagatest_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/ksaga/ksaga/examples/trip"
	"github.com/ksaga/ksaga/sagatest"
)

// Run the trip saga with its participants on an in-process Kafka and
// Redis. In a test, sagatest.New(t) does the same and stops everything
// when the test ends.
func Example() {
	h, err := sagatest.Open(sagatest.Miniredis()) // New(t) uses a real redis-server
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close()
	rdb := h.Redis()
	def := trip.New(trip.NewStore(rdb))
	for _, err := range []error{
		h.Participant(trip.Hotel, trip.NewHotel(rdb)),
		h.Participant(trip.Card, trip.NewCard(rdb, 100_000)),
		h.Saga(def),
	} {
		if err != nil {
			fmt.Println(err)
			return
		}
	}

	ctx := context.Background()
	for _, t := range []trip.Trip{
		{TripID: "t-1", Traveller: "ada", Hotel: "h-1", Nights: 2, AmountCents: 25_000},
		{TripID: "t-2", Traveller: "bob", Hotel: "h-1", Nights: 9, AmountCents: 250_000},
	} {
		ev, err := h.Run(ctx, def, t.TripID, t)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(strings.TrimSpace(t.TripID + " " + ev.Type + " " + ev.Reason))
	}
	for _, ev := range h.Events(def, "t-2") {
		fmt.Println(strings.TrimSpace(ev.Type + " " + ev.Step))
	}
	// Output:
	// t-1 SagaCompleted
	// t-2 SagaCompensated CARD_DECLINED
	// SagaStarted
	// StepSucceeded book-hotel
	// StepFailed charge-card
	// CompensationStarted
	// StepCompensated book-hotel
	// SagaCompensated
}
