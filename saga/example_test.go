package saga_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
)

type Trip struct {
	TripID string `json:"trip_id"`
	Nights int    `json:"nights"`
}

func (t *Trip) Validate() error {
	if t.Nights <= 0 {
		return errors.New("nights must be positive")
	}
	return nil
}

func bookHotel(_ context.Context, t *Trip) (saga.Command, error) {
	return saga.Command{Participant: "hotel", Type: "BookRoom", Payload: t}, nil
}

func cancelHotel(_ context.Context, t *Trip) (saga.Command, error) {
	return saga.Command{Participant: "hotel", Type: "CancelRoom", Payload: map[string]string{"trip_id": t.TripID}}, nil
}

func confirmTrip(_ context.Context, t *Trip) error { return nil }

// A saga is a list of typed steps: commands to participants, each with its
// compensation next to it, and local functions. A step's code is plain Go:
// test it by calling it; test the saga end to end with package sagatest.
func Example() {
	trip := saga.New("trip",
		saga.Step[Trip]{Name: "book-hotel", Do: bookHotel, Undo: cancelHotel},
		saga.Step[Trip]{Name: "confirm", Local: confirmTrip, Retry: retry.Policy{MaxAttempts: 5}},
	)
	for _, s := range trip.Steps() {
		fmt.Printf("%s local=%v undoable=%v attempts=%d\n", s.Name, s.Local, s.Undoable, s.Retry.Attempts())
	}

	// The start request the engine would accept, and one it would refuse.
	data, err := trip.Decode([]byte(`{"trip_id":"t-1","nights":3}`))
	if err != nil {
		panic(err)
	}
	_, err = trip.Decode([]byte(`{"trip_id":"t-2","nights":0}`))
	fmt.Println(err, retry.IsPermanent(err))

	// A step's command, as the engine would send it for this saga.
	ctx := saga.WithInfo(context.Background(), saga.Info{SagaID: "t-1", Type: "trip", Step: "book-hotel", Attempt: 1})
	cmd, _ := bookHotel(ctx, data.(*Trip))
	fmt.Println(cmd.Participant, cmd.Type)
	// Output:
	// book-hotel local=false undoable=true attempts=3
	// confirm local=true undoable=false attempts=5
	// invalid saga data: trip: nights must be positive true
	// hotel BookRoom
}
