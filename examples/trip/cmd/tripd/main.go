// Command tripd runs the trip saga and its participants on package daemon:
// "tripd -help" lists its flags; with no flags it runs on an in-process
// Kafka and Redis until interrupted, with Kafka's data in
// $TMPDIR/ksaga-tripd (--data-dir), which it locks while it runs.
package main

import (
	"context"

	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/examples/trip"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/saga"
)

func main() {
	daemon.Main(
		daemon.Name("tripd"),
		daemon.BuildSaga(func(_ context.Context, env *daemon.Env) (*saga.Definition, error) {
			return trip.New(trip.NewStore(env.Redis())), nil
		}),
		daemon.BuildParticipant(trip.Hotel, func(_ context.Context, env *daemon.Env) (participant.Handler, error) {
			return trip.NewHotel(env.ParticipantsRedis()), nil
		}),
		daemon.BuildParticipant(trip.Card, func(_ context.Context, env *daemon.Env) (participant.Handler, error) {
			return trip.NewCard(env.ParticipantsRedis(), trip.DefaultCardLimitCents), nil
		}),
	)
}
