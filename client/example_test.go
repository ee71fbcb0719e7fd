package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/client"
	"github.com/ksaga/ksaga/examples/trip"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/topic"
)

// Start a saga from a program of your own: the request lands on the saga's
// home partition of saga.trip.inbox, durable before Start returns.
func Example() {
	ctx := context.Background()
	cluster, _ := kfake.NewCluster(kfake.NumBrokers(1)) // your Kafka
	defer cluster.Close()
	brokers := kgo.SeedBrokers(cluster.ListenAddrs()...)
	// The daemon that runs the trip saga creates its topics; here, by hand.
	adm, _ := kadm.NewOptClient(brokers)
	defer adm.Close()
	spec := topic.Spec{Partitions: 6, ReplicationFactor: 1}
	_ = topic.Create(ctx, adm, spec, topic.OfSagaType(trip.Name, spec), slog.New(slog.NewTextHandler(io.Discard, nil)))

	c, err := client.New(brokers)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	def := trip.New(nil) // a client needs only the saga's name and data type: no store
	err = c.Start(ctx, def, "t-1", trip.Trip{TripID: "t-1", Traveller: "ada", Hotel: "h-1", Nights: 2, AmountCents: 25_000})
	fmt.Println("start:", err)
	err = c.Start(ctx, def, "t-2", trip.Trip{TripID: "t-2"})
	fmt.Println("invalid start:", err)

	cl, _ := kgo.NewClient(brokers, kgo.ConsumeTopics(message.Inbox(trip.Name)))
	defer cl.Close()
	r := cl.PollFetches(ctx).Records()[0]
	fmt.Printf("%s on partition %d (home %d)\n", r.Key, r.Partition, message.HomePartition("t-1", 6))
	// Output:
	// start: <nil>
	// invalid start: start trip saga t-2: invalid saga data: trip: trip_id, traveller and hotel are required
	// t-1 on partition 4 (home 4)
}
