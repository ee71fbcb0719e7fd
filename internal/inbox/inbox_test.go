package inbox_test

import (
	"context"
	"errors"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/inbox"
	"github.com/ksaga/ksaga/internal/kfaketest"
	"github.com/ksaga/ksaga/message"
)

func TestStart(t *testing.T) {
	r := inbox.Start("order", "o-1", 6, []byte(`{"a":1}`))
	if r.Topic != "saga.order.inbox" || string(r.Key) != "o-1" || string(r.Value) != `{"a":1}` {
		t.Fatalf("got topic %q key %q value %q, want saga.order.inbox, o-1, {\"a\":1}", r.Topic, r.Key, r.Value)
	}
	if want := message.HomePartition("o-1", 6); r.Partition != want {
		t.Errorf("got partition %d, want %d", r.Partition, want)
	}
	want := [][2]string{
		{message.HeaderSagaID, "o-1"},
		{message.HeaderSagaType, "order"},
		{message.HeaderMessageType, message.TypeStartSaga},
		{message.HeaderMessageID, "start-o-1"},
	}
	if len(r.Headers) != len(want) {
		t.Fatalf("got %d headers, want %d", len(r.Headers), len(want))
	}
	for i, h := range r.Headers {
		if h.Key != want[i][0] || string(h.Value) != want[i][1] {
			t.Errorf("header %d: got %s=%s, want %s=%s", i, h.Key, h.Value, want[i][0], want[i][1])
		}
	}
}

func TestPartitions(t *testing.T) {
	c, adm := kfaketest.NewAdmin(t, 1)
	ctx := context.Background()
	if _, err := adm.CreateTopic(ctx, 3, 1, nil, message.Inbox("order")); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if n, err := inbox.Partitions(ctx, cl, message.Inbox("order")); n != 3 || err != nil {
		t.Errorf("got %d, %v, want 3, nil", n, err)
	}
	if n, err := inbox.Partitions(ctx, cl, message.Inbox("none")); n != 0 || !errors.Is(err, kerr.UnknownTopicOrPartition) {
		t.Errorf("a missing topic: got %d, %v, want 0, %v", n, err, kerr.UnknownTopicOrPartition)
	}
}
