package client_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/client"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/topic"
)

type data struct {
	N int `json:"n"`
}

var def = saga.New("t", saga.Step[data]{Name: "s", Local: func(context.Context, *data) error { return nil }})

// TestRequests checks the records Start, StartRaw and Compensate produce:
// on the home partition of the inbox, keyed by the id, with the headers
// the engine reads.
func TestRequests(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	seeds := kgo.SeedBrokers(cluster.ListenAddrs()...)
	c, err := client.New(seeds)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if err := c.Start(ctx, def, "a", data{1}); !errors.Is(err, client.ErrNoInbox) {
		t.Fatalf("Start before the inbox exists: got %v, want ErrNoInbox", err)
	}
	adm, err := kadm.NewOptClient(seeds)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	spec := topic.Spec{Partitions: 5, ReplicationFactor: 1}
	if err := topic.Create(ctx, adm, spec, topic.OfSaga(def, spec), slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	ids := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	for _, id := range ids {
		if err := c.Start(ctx, def, id, data{1}); err != nil {
			t.Fatalf("Start %s: %v", id, err)
		}
	}
	if err := c.StartRaw(ctx, def.Name(), "raw", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if err := c.Compensate(ctx, def, "a", "customer cancelled"); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx, def, "", data{1}); err == nil {
		t.Error("Start with an empty id: got nil error")
	}
	if err := c.Start(ctx, def, "x", map[string]int{"m": 1}); !errors.Is(err, saga.ErrInvalidData) {
		t.Errorf("Start with unknown fields: got %v, want ErrInvalidData", err)
	}

	cl, err := kgo.NewClient(seeds, kgo.ConsumeTopics(message.Inbox(def.Name())))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for len(recs) < len(ids)+2 && ctx.Err() == nil {
		recs = append(recs, cl.PollFetches(ctx).Records()...)
	}
	types := map[string]string{}
	for _, r := range recs {
		id := string(r.Key)
		if want := message.HomePartition(id, 5); r.Partition != want {
			t.Errorf("%s on partition %d, want its home %d", id, r.Partition, want)
		}
		h := map[string]string{}
		for _, hd := range r.Headers {
			h[hd.Key] = string(hd.Value)
		}
		if h[message.HeaderSagaID] != id || h[message.HeaderSagaType] != def.Name() || h[message.HeaderMessageID] == "" {
			t.Errorf("%s: headers %v", id, h)
		}
		types[id] += h[message.HeaderMessageType] + h[message.HeaderReason] + ";"
	}
	if got, want := types["a"], "StartSaga;Compensatecustomer cancelled;"; got != want {
		t.Errorf("requests of a: got %q, want %q", got, want)
	}
	if got, want := types["raw"], "StartSaga;"; got != want {
		t.Errorf("requests of raw: got %q, want %q", got, want)
	}
}
