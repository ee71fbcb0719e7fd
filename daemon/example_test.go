package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/client"
	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/examples/trip"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/saga"
)

// A whole program: the trip saga and its participants, run by the daemon.
// With no flags the daemon runs the embedded mode, whose Demo here starts
// one trip and prints how it ended; with --kafka-brokers and --redis-addr
// the same main runs against real services until SIGTERM (use daemon.Main
// instead of daemon.Run in a real main).
func Example() {
	dir, _ := os.MkdirTemp("", "ksaga-example-")
	defer os.RemoveAll(dir)
	var def *saga.Definition
	code := daemon.Run(context.Background(), []string{"--data-dir", dir, "--metrics-addr", ""},
		daemon.Name("tripd"),
		daemon.BuildSaga(func(_ context.Context, env *daemon.Env) (*saga.Definition, error) {
			def = trip.New(trip.NewStore(env.Redis()))
			return def, nil
		}),
		daemon.BuildParticipant(trip.Hotel, func(_ context.Context, env *daemon.Env) (participant.Handler, error) {
			return trip.NewHotel(env.ParticipantsRedis()), nil
		}),
		daemon.BuildParticipant(trip.Card, func(_ context.Context, env *daemon.Env) (participant.Handler, error) {
			return trip.NewCard(env.ParticipantsRedis(), trip.DefaultCardLimitCents), nil
		}),
		daemon.Demo(func(ctx context.Context, env *daemon.Env) error { return startOneTrip(ctx, env, def) }),
		daemon.Output(os.Stdout, io.Discard),
	)
	fmt.Println("exit status", code)
	// Output:
	// trip t-1: SagaCompleted
	// exit status 0
}

// startOneTrip starts a trip with package client and follows its events to
// its end.
func startOneTrip(ctx context.Context, env *daemon.Env, def *saga.Definition) error {
	c, err := client.New(env.KafkaOpts()...)
	if err != nil {
		return err
	}
	defer c.Close()
	t := trip.Trip{TripID: "t-1", Traveller: "ada", Hotel: "h-1", Nights: 2, AmountCents: 25_000}
	if err := c.Start(ctx, def, t.TripID, t); err != nil {
		return err
	}
	events, err := kgo.NewClient(append(env.KafkaOpts(), kgo.ConsumeTopics(message.Events(trip.Name)),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return err
	}
	defer events.Close()
	for {
		fs := events.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		for _, r := range fs.Records() {
			var ev message.Event
			if json.Unmarshal(r.Value, &ev) == nil && ev.SagaID == t.TripID && message.Terminal(ev.Type) {
				fmt.Fprintf(env.Stdout, "trip %s: %s\n", ev.SagaID, ev.Type)
				return nil
			}
		}
	}
}
