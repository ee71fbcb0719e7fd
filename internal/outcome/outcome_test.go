package outcome_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/outcome"
	"github.com/ksaga/ksaga/message"
)

// event returns saga id's event of type typ as the engine writes it.
func event(t *testing.T, id, typ string) *kgo.Record {
	t.Helper()
	v, err := json.Marshal(message.Event{SagaID: id, SagaType: "note", Type: typ, Version: 2, Data: json.RawMessage(`{"id":"` + id + `"}`)})
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Topic: message.Events("note"), Key: []byte(id), Value: v,
		Headers: []kgo.RecordHeader{{Key: message.HeaderMessageType, Value: []byte(typ)}}}
}

// TestWatcher hands a terminal event to every wait of its saga, and only
// to those: not to another saga's, not for an event that is not terminal,
// not to a wait stopped before it came, nor for an end written before the
// watcher began (the caller looks that one up elsewhere).
func TestWatcher(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, message.Events("note")))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	opts := []kgo.Opt{kgo.SeedBrokers(cluster.ListenAddrs()...)}
	prod, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := prod.ProduceSync(ctx, event(t, "before", message.EventSagaCompleted)).FirstErr(); err != nil {
		t.Fatal(err)
	}

	w, err := outcome.Start(ctx, opts, "note")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if n, _ := w.Began(0); n != 2 {
		t.Errorf("Began: %d partitions, want 2", n)
	}
	before, a1, a2, b, stopped := w.Wait("before"), w.Wait("a"), w.Wait("a"), w.Wait("b"), w.Wait("a")
	stopped.Stop()
	stopped.Stop() // twice is fine
	if err := prod.ProduceSync(ctx, event(t, "a", message.EventSagaParked), event(t, "a", message.EventSagaCompensated),
		event(t, "b", message.EventStepSucceeded)).FirstErr(); err != nil {
		t.Fatal(err)
	}
	for i, x := range []*outcome.Wait{a1, a2} {
		select {
		case <-x.Done():
			if ev := x.Event(); ev.SagaID != "a" || ev.Type != message.EventSagaCompensated || string(ev.Data) != `{"id":"a"}` {
				t.Errorf("wait %d: got %+v, want a's SagaCompensated", i, ev)
			}
		case <-ctx.Done():
			t.Fatalf("wait %d for a: no event", i)
		}
		x.Stop()
	}
	// A second end (a look back that finds the one the watcher handed
	// out) leaves the first.
	w.Deliver(message.Event{SagaID: "a", Type: message.EventSagaFailed})
	if ev := a1.Event(); ev.Type != message.EventSagaCompensated {
		t.Errorf("after a second Deliver: %s, want the first, SagaCompensated", ev.Type)
	}
	time.Sleep(200 * time.Millisecond)
	for name, x := range map[string]*outcome.Wait{"before (ended before the watcher began)": before, "b (not ended)": b, "a stopped wait": stopped} {
		select {
		case <-x.Done():
			t.Errorf("%s: got %+v, want nothing", name, x.Event())
		default:
		}
	}
	before.Stop()
	b.Stop()
	if n := w.Waits(); n != 0 {
		t.Errorf("Waits after every Stop: %d, want 0", n)
	}
}

// TestStartWithoutTopic fails when the saga type's events topic does not
// exist.
func TestStartWithoutTopic(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if w, err := outcome.Start(ctx, []kgo.Opt{kgo.SeedBrokers(cluster.ListenAddrs()...)}, "nosuch"); err == nil {
		w.Close()
		t.Fatal("Start of a saga type without an events topic: no error")
	}
}
