package test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
)

// TestCatchUpRollbackKeepsRunningSagas replays a rebuild inside a catch-up
// that no Redis write accompanies. Redis goes back to an older, non-empty
// snapshot (a failover to a lagging replica) while the engine is inside a
// transaction that writes nothing to Redis. The next poll brings a
// duplicate start of a running saga S, which the first preload skips (S is
// in memory); the catch-up brings a start on S's partition, whose preload
// finds the checkpoint went back and rebuilds the partition from Redis's
// older checkpoint, which S's state precedes: S leaves memory. Handled
// then, the duplicate would start S a second time. The batch must be
// consumed again instead.
func TestCatchUpRollbackKeepsRunningSagas(t *testing.T) {
	e := newEnv(t)
	var (
		running = onPartition("run", 0, 1)[0]
		later   = onPartition("later", 0, 1)[0] // moves the checkpoint past running's
		late    = onPartition("late", 0, 2)[1]  // comes with the catch-up
		holding = onPartition("hold", 2, 1)[0]  // keeps the engine in a transaction
	)
	var armed atomic.Bool
	entered, release := make(chan struct{}), make(chan struct{})
	def := saga.New(order.Name,
		// A step every saga skips. Its Skip is called again to tell a
		// stale reply from a foreign one; the holding saga's blocks there,
		// in a transaction that changes no saga.
		saga.Step[order.Order]{
			Name: "opt",
			Do: func(context.Context, *order.Order) (saga.Command, error) {
				return saga.Command{Participant: "coupon", Type: "Never"}, nil
			},
			Skip: func(o *order.Order) bool {
				if o.OrderID == holding && armed.Load() {
					close(entered)
					<-release
				}
				return true
			},
			CallTimeout: time.Minute,
		},
		saga.Step[order.Order]{
			Name: "wait",
			Do: func(_ context.Context, o *order.Order) (saga.Command, error) {
				return saga.Command{Participant: "inventory", Type: "ReserveInventory", Payload: o}, nil
			},
			ReplyTimeout: 5 * time.Minute,
		},
	)
	logs := &logRecorder{Handler: testLogger(t).Handler(), msgs: new(messages)}
	eng := e.startEngine(def, orchestrator.Logger(slog.New(logs)))
	defer eng.stop(t)

	ctx := context.Background()
	checkpoint := func(p int) int64 {
		v, _ := e.eng.Get(ctx, fmt.Sprintf("ksaga:{%s:%d}:checkpoint", order.Name, p)).Int64()
		return v
	}
	waitState := func(id string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if st, err := e.redisState(id); err == nil && st != nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("saga %s never reached redis", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	e.start(newOrder(running))
	e.start(newOrder(holding))
	waitState(running)
	waitState(holding)
	time.Sleep(100 * time.Millisecond)
	snapshot := checkpoint(0)
	e.start(newOrder(later))
	waitState(later)
	for deadline := time.Now().Add(10 * time.Second); checkpoint(0) <= snapshot; {
		if time.Now().After(deadline) {
			t.Fatalf("partition 0's checkpoint stayed at %d", snapshot)
		}
		time.Sleep(20 * time.Millisecond)
	}

	armed.Store(true)
	// The engine checks Redis's checkpoints once a second when it has
	// nothing to write; one that ran after the rollback would rebuild the
	// partition between batches. The rollback comes right after a check.
	awaitCheck(t, e)
	// A reply to the skipped step: the engine calls Skip to tell whether
	// it was ever sent, and blocks there.
	e.produce(&kgo.Record{Topic: message.Inbox(order.Name), Key: []byte(holding), Headers: []kgo.RecordHeader{
		{Key: message.HeaderMessageType, Value: []byte(message.TypeReply)},
		{Key: message.HeaderMessageID, Value: []byte("stray-reply")},
		{Key: message.HeaderInReplyTo, Value: []byte(holding + "/opt/do")},
		{Key: message.HeaderOutcome, Value: []byte(message.OutcomeSuccess)},
	}})
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the holding saga's Skip was not called within 30s")
	}
	// Redis goes back to the snapshot taken after running's state was
	// written: running's state is there, later's is not.
	if err := e.eng.Set(ctx, fmt.Sprintf("ksaga:{%s:0}:checkpoint", order.Name), strconv.FormatInt(snapshot, 10), 0).Err(); err != nil {
		t.Fatal(err)
	}
	// Fetched while the transaction runs: a duplicate start of running,
	// and a reply for a saga that was never started on another
	// partition, whose read makes the first preload take a while.
	dup := startRecord(newOrder(running))
	ghost := onPartition("ghost", 1, 1)[0]
	e.produce(dup, &kgo.Record{Topic: message.Inbox(order.Name), Key: []byte(ghost), Headers: []kgo.RecordHeader{
		{Key: message.HeaderMessageType, Value: []byte(message.TypeReply)},
		{Key: message.HeaderMessageID, Value: []byte("ghost-reply")},
		{Key: message.HeaderInReplyTo, Value: []byte(ghost + "/wait/do")},
		{Key: message.HeaderOutcome, Value: []byte(message.OutcomeSuccess)},
	}})
	time.Sleep(300 * time.Millisecond)
	e.start(newOrder(late)) // committed after that fetch: the catch-up's
	time.Sleep(50 * time.Millisecond)
	if err := e.eng.Do(ctx, "CLIENT", "PAUSE", "300", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	close(release)

	waitState(late)
	time.Sleep(500 * time.Millisecond)
	evs := e.events()
	started := 0
	for _, ev := range evs[running] {
		if ev.Type == message.EventSagaStarted {
			started++
		}
	}
	if started != 1 {
		t.Errorf("saga %s: got %d SagaStarted events, want 1; events %+v", running, started, evs[running])
	}
	for id, n := range e.commands("inventory") {
		if n != 1 {
			t.Errorf("command %s sent %d times, want once", id, n)
		}
	}
	if !logs.msgs.has("rebuilt while a batch was read") {
		t.Errorf("the engine never consumed a batch again after a rebuild: the race was not replayed; logged %q", logs.msgs.all())
	}
}

// awaitCheck waits until the engine reads its checkpoints from Redis, as
// seen through MONITOR.
func awaitCheck(t *testing.T, e *env) {
	t.Helper()
	conn, err := net.Dial("tcp", e.engRedis.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		if line := sc.Text(); strings.Contains(strings.ToUpper(line), `"GET"`) && strings.Contains(line, ":checkpoint") {
			return
		}
	}
	t.Fatalf("the engine did not check its checkpoints within 10s: %v", sc.Err())
}
