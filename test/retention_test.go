package test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
)

// stateKeys counts the saga state keys in the engine's Redis.
func (e *env) stateKeys() int {
	e.t.Helper()
	n := 0
	iter := e.eng.Scan(context.Background(), 0, orchestrator.StateKeyPattern(order.Name), 1000).Iterator()
	for iter.Next(context.Background()) {
		n++
	}
	if err := iter.Err(); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// TestRetention runs sagas on an engine that keeps ended sagas for two
// seconds. Each then leaves the Redis view and gets a tombstone on the state
// topic; a reply for one is dead-lettered as unknown-saga, and a start
// request that reuses an id starts a new saga. An engine that takes over
// the partitions meanwhile keeps the retention.
func TestRetention(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 1000})
	e.startParticipants()
	hook := &expiredCounter{}
	eng := e.startEngine(nil, orchestrator.Retention(2*time.Second), orchestrator.Hooks(hook))
	defer func() { eng.stop(t) }()

	sagas := ids("r", 20)
	for _, id := range sagas {
		e.start(newOrder(id))
	}
	e.waitTerminal(sagas, 60*time.Second)
	// A new engine learns when each saga ended from the state topic.
	eng.stop(t)
	eng = e.startEngine(nil, orchestrator.Retention(2*time.Second), orchestrator.Hooks(hook))
	for deadline := time.Now().Add(30 * time.Second); e.stateKeys() > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d state keys left in Redis 30s after the sagas ended, want 0", e.stateKeys())
		}
		time.Sleep(200 * time.Millisecond)
	}
	tombs := map[string]int{}
	for _, r := range e.readAll(message.State(order.Name), 300*time.Millisecond) {
		if r.Value == nil {
			tombs[string(r.Key)]++
		}
	}
	for _, id := range sagas {
		if tombs[id] != 1 {
			t.Errorf("saga %s has %d tombstones on the state topic, want 1", id, tombs[id])
		}
	}
	if got := hook.n.Load(); got != int64(len(sagas)) {
		t.Errorf("hooks saw %d expired sagas, want %d", got, len(sagas))
	}

	// The id reuse policy: past retention, an id is free.
	e.produce(&kgo.Record{Topic: message.Inbox(order.Name), Key: []byte(sagas[0]), Headers: []kgo.RecordHeader{
		{Key: message.HeaderMessageType, Value: []byte(message.TypeReply)},
		{Key: message.HeaderMessageID, Value: []byte("late-reply")},
		{Key: message.HeaderInReplyTo, Value: []byte(sagas[0] + "/reserve-inventory/do")},
		{Key: message.HeaderOutcome, Value: []byte(message.OutcomeSuccess)},
	}})
	e.start(newOrder(sagas[1]))
	for deadline := time.Now().Add(30 * time.Second); ; {
		started := 0
		for _, ev := range e.events()[sagas[1]] {
			if ev.Type == message.EventSagaStarted {
				started++
			}
		}
		if started == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("saga %s started %d times, want a second start past its retention", sagas[1], started)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var reasons []string
	for _, r := range e.readAll(message.DLT(order.Name), 300*time.Millisecond) {
		reasons = append(reasons, fmt.Sprintf("%s:%s", r.Key, header(r, dlq.HeaderReason)))
	}
	if want := sagas[0] + ":" + orchestrator.ReasonUnknownSaga; len(reasons) != 1 || reasons[0] != want {
		t.Errorf("dead letters %q, want [%s]", reasons, want)
	}
}

// expiredCounter sums Batch.Expired.
type expiredCounter struct{ n atomic.Int64 }

func (c *expiredCounter) AfterCommit(_ context.Context, b *orchestrator.Batch) {
	c.n.Add(int64(b.Expired))
}
