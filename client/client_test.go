package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
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
	createInbox(ctx, t, seeds, def, 5)
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

// createInbox creates the topics of def's saga type, its inbox with n
// partitions.
func createInbox(ctx context.Context, t *testing.T, seeds kgo.Opt, def *saga.Definition, n int) {
	t.Helper()
	adm, err := kadm.NewOptClient(seeds)
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	spec := topic.Spec{Partitions: n, ReplicationFactor: 1}
	if err := topic.Create(ctx, adm, spec, topic.OfSaga(def, spec), slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
}

// order is the order saga's data of DESIGN.md; its fields are not in key
// order, so json.Marshal writes them out of order.
type order struct {
	OrderID     string `json:"order_id"`
	CustomerID  string `json:"customer_id"`
	AmountCents int    `json:"amount_cents"`
	Currency    string `json:"currency"`
	Items       []struct {
		SKU string `json:"sku"`
		Qty int    `json:"qty"`
	} `json:"items"`
	ShipTo map[string]string `json:"ship_to"`
	// Note is written by json.Marshal with HTML characters escaped.
	Note string `json:"note,omitempty"`
}

var orderSaga = saga.New("order", saga.Step[order]{Name: "s", Local: func(context.Context, *order) error { return nil }})

// twiceKeyed writes a JSON object with a key twice.
type twiceKeyed struct{}

func (twiceKeyed) MarshalJSON() ([]byte, error) { return []byte(`{"n":1,"n":2}`), nil }

// TestStartWritesCanonicalJSON checks that Start writes its data in
// canonical form: the bytes message.Canonical gives for the same data
// written in any other order, which the HTTP API and the outboxes write
// too (their tests hold them to the same value).
func TestStartWritesCanonicalJSON(t *testing.T) {
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
	createInbox(ctx, t, seeds, orderSaga, 3)
	createInbox(ctx, t, seeds, def, 3)

	const (
		// reordered is the order of DESIGN.md with its keys in another
		// order, space, and escapes.
		reordered = `{ "ship_to": {"country": "DE", "city": "Berlin"}, "note": "\u003cfragile\u003e \u0026 \u00e9",
			"items": [{"qty": 2, "sku": "sku-1"}], "currency": "USD", "amount_cents": 4599,
			"customer_id": "c-1", "order_id": "o-1" }`
		want = `{"amount_cents":4599,"currency":"USD","customer_id":"c-1","items":[{"qty":2,"sku":"sku-1"}],` +
			`"note":"<fragile> & é","order_id":"o-1","ship_to":{"city":"Berlin","country":"DE"}}`
	)
	canonical, err := message.Canonical([]byte(reordered))
	if err != nil {
		t.Fatal(err)
	}
	if string(canonical) != want {
		t.Fatalf("message.Canonical: got %s, want %s", canonical, want)
	}
	var o order
	if err := json.Unmarshal([]byte(reordered), &o); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx, orderSaga, "o-1", o); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx, def, "x", twiceKeyed{}); !errors.Is(err, saga.ErrInvalidData) || !strings.Contains(err.Error(), `duplicate key "n"`) {
		t.Errorf("Start with a key twice: got %v, want ErrInvalidData naming the key", err)
	}

	cl, err := kgo.NewClient(seeds, kgo.ConsumeTopics(message.Inbox(orderSaga.Name())))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for len(recs) == 0 && ctx.Err() == nil {
		recs = append(recs, cl.PollFetches(ctx).Records()...)
	}
	if len(recs) != 1 {
		t.Fatalf("got %d records, want 1", len(recs))
	}
	if got := recs[0].Value; !bytes.Equal(got, canonical) {
		t.Errorf("Start wrote %s, want %s", got, canonical)
	}
}
