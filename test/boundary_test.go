package test

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
)

// foreign returns partitioners of other Kafka clients than the Java one:
// librdkafka's default (consistent_random: CRC32 of the key), kafka-go's
// Hash balancer (FNV-1a) and round-robin.
func foreign() map[string]kgo.Partitioner {
	by := func(fn func(key []byte, n int) int) kgo.Partitioner {
		return kgo.BasicConsistentPartitioner(func(string) func(*kgo.Record, int) int {
			return func(r *kgo.Record, n int) int { return fn(r.Key, n) }
		})
	}
	var rr atomic.Int64
	return map[string]kgo.Partitioner{
		"crc32": by(func(k []byte, n int) int { return int(crc32.ChecksumIEEE(k) % uint32(n)) }),
		"fnv1a": by(func(k []byte, n int) int {
			h := fnv.New32a()
			h.Write(k)
			return int(h.Sum32() % uint32(n))
		}),
		"round-robin": by(func(_ []byte, n int) int { return int(rr.Add(1)) % n }),
	}
}

// countingHook sums Batch.Forwarded.
type countingHook struct{ forwarded atomic.Int64 }

func (h *countingHook) AfterCommit(_ context.Context, b *orchestrator.Batch) {
	h.forwarded.Add(int64(b.Forwarded))
}

// TestForeignPartitioners produces start requests and duplicates of them
// with other clients' partitioners into two engines. Each saga is handled
// on its home partition only: it completes once, no command is sent twice,
// nothing is dead-lettered, and every record that landed elsewhere was
// moved.
func TestForeignPartitioners(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100000})
	e.startParticipants()
	hook := &countingHook{}
	a := e.startEngine(nil, orchestrator.TransactionalID("engine-a"), orchestrator.Hooks(hook))
	defer a.stop(t)
	b := e.startEngine(nil, orchestrator.TransactionalID("engine-b"), orchestrator.Hooks(hook))
	defer b.stop(t)

	var sagas []string
	misplaced := 0
	for name, p := range foreign() {
		cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.RecordPartitioner(p))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 40 {
			o := newOrder(fmt.Sprintf("%s-%d", name, i))
			v, _ := json.Marshal(o)
			for dup := range 2 { // the same start twice: dropped as a duplicate
				r := &kgo.Record{Topic: message.Inbox(order.Name), Key: []byte(o.OrderID), Value: v,
					Headers: []kgo.RecordHeader{{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)}}}
				if err := cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
					t.Fatal(err)
				}
				if r.Partition != message.HomePartition(o.OrderID, partitions) {
					misplaced++
				}
				_ = dup
			}
			sagas = append(sagas, o.OrderID)
		}
		cl.Close()
	}
	evs := e.waitTerminal(sagas, 90*time.Second)
	for _, id := range sagas {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Errorf("saga %s ended %s, want %s", id, got, message.EventSagaCompleted)
		}
	}
	e.assertOnce(evs, sagas...)
	if dead := e.readAll(message.DLT(order.Name), 300*time.Millisecond); len(dead) != 0 {
		t.Errorf("%d records dead-lettered (first: %s), want none", len(dead), header(dead[0], dlq.HeaderReason))
	}
	if misplaced == 0 {
		t.Fatal("no record landed off its home partition: the test proves nothing")
	}
	if got := hook.forwarded.Load(); got != int64(misplaced) {
		t.Errorf("forwarded %d records, want %d (each misplaced record exactly once)", got, misplaced)
	}
	if got, want := e.stock("sku-1"), int64(100000-2*len(sagas)); got != want {
		t.Errorf("stock %d, want %d", got, want)
	}
}

// TestRedisGoesBackInTime restores the engine's Redis to a snapshot taken
// earlier (DEBUG RELOAD NOSAVE: as a restart from an older RDB file or a
// failover to a lagging replica would), then redelivers the start requests
// of the sagas that finished after the snapshot. The engine sees that Redis
// went back, rebuilds its view from the state topic, and drops the
// duplicates: no saga runs twice. On a Redis Cluster only the shard holding
// partition 0 goes back.
func TestRedisGoesBackInTime(t *testing.T) {
	for _, cluster := range []bool{false, true} {
		name := "single"
		if cluster {
			name = "cluster"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			rollback := func(ctx context.Context, cmd ...any) error { return e.eng.Do(ctx, cmd...).Err() }
			if cluster {
				nodes := redistest.StartCluster(t, 3)
				var addrs []string
				for _, n := range nodes {
					addrs = append(addrs, n.Addr)
				}
				cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
				t.Cleanup(func() { cc.Close() })
				e.eng = cc
				rollback = func(ctx context.Context, cmd ...any) error {
					node, err := cc.MasterForKey(ctx, orchestrator.StateKey(order.Name, 0, "x"))
					if err != nil {
						return err
					}
					return node.Do(ctx, cmd...).Err()
				}
			}
			e.seed(map[string]int64{"sku-1": 100000})
			e.startParticipants()
			eng := e.startEngine(nil)
			defer eng.stop(t)

			before, after := ids("old", 30), ids("new", 30)
			for _, id := range before {
				e.start(newOrder(id))
			}
			e.waitTerminal(before, 60*time.Second)
			e.waitRedis(before, 30*time.Second)
			ctx := context.Background()
			if err := rollback(ctx, "SAVE"); err != nil {
				t.Fatalf("SAVE: %v", err)
			}
			for _, id := range after {
				e.start(newOrder(id))
			}
			e.waitTerminal(after, 60*time.Second)
			e.waitRedis(after, 30*time.Second)
			if err := rollback(ctx, "DEBUG", "RELOAD", "NOSAVE"); err != nil {
				t.Fatalf("DEBUG RELOAD NOSAVE: %v", err)
			}
			for _, id := range after {
				e.start(newOrder(id)) // redelivered: must be dropped
			}
			// A new saga after the duplicates: once it ended, they were
			// handled.
			e.start(newOrder("last"))
			evs := e.waitTerminal(append(after, "last"), 60*time.Second)
			e.assertOnce(evs, append(before, after...)...)
			e.waitRedis(append(before, after...), 30*time.Second)
		})
	}
}

// hangingSaga reserves stock, then runs a local step that never returns,
// ignoring its ctx, or panics: the saga author's code is at fault.
func hangingSaga(panics bool, undone *atomic.Int64, fences *sync.Map) *saga.Definition {
	block := make(chan struct{})
	cmd := func(typ string) func(context.Context, *order.Order) (saga.Command, error) {
		return func(_ context.Context, o *order.Order) (saga.Command, error) {
			return saga.Command{Participant: order.Inventory, Type: typ, Payload: o}, nil
		}
	}
	return saga.New(order.Name,
		saga.Step[order.Order]{Name: order.StepReserveInventory, Do: cmd(order.ReserveInventory), Undo: cmd(order.ReleaseInventory)},
		saga.Step[order.Order]{Name: "stuck", CallTimeout: 500 * time.Millisecond,
			Local: func(ctx context.Context, o *order.Order) error {
				k, _ := saga.KeyFrom(ctx)
				fences.Store(fmt.Sprintf("do-%d", k.Fence), k.Fence)
				if panics {
					panic("saga author's bug")
				}
				<-block // ignores ctx: only the engine's timeout gets it back
				return nil
			},
			UndoLocal: func(ctx context.Context, o *order.Order) error {
				k, _ := saga.KeyFrom(ctx)
				fences.Store("undo", k.Fence)
				undone.Add(1)
				return nil
			}},
	)
}

// TestSagaCodeContained: a local step that hangs past its timeout, or
// panics, is a failed attempt like an error. The third is dead-lettered
// while the saga compensates, including the local step itself (its outcome
// is unknown), with a fence above every attempt's. The engine keeps running
// and reports the right step as failed.
func TestSagaCodeContained(t *testing.T) {
	for _, panics := range []bool{false, true} {
		t.Run(fmt.Sprintf("panics=%v", panics), func(t *testing.T) {
			e := newEnv(t)
			e.seed(map[string]int64{"sku-1": 10})
			e.startParticipants(order.Inventory)
			var undone atomic.Int64
			var fences sync.Map
			eng := e.startEngine(hangingSaga(panics, &undone, &fences))
			defer eng.stop(t)

			e.start(newOrder("h-1"))
			evs := e.waitTerminal([]string{"h-1"}, 60*time.Second)
			if got := terminal(evs["h-1"]); got != message.EventSagaCompensated {
				t.Fatalf("saga ended %s, want %s; events %+v", got, message.EventSagaCompensated, evs["h-1"])
			}
			failedStep := ""
			for _, ev := range evs["h-1"] {
				if ev.Type == message.EventStepFailed {
					failedStep = ev.Step
				}
			}
			if failedStep != "stuck" {
				t.Errorf("StepFailed names step %q, want stuck", failedStep)
			}
			if got := undone.Load(); got != 1 {
				t.Errorf("UndoLocal ran %d times, want 1", got)
			}
			undoFence, _ := fences.Load("undo")
			fences.Range(func(k, v any) bool {
				if k != "undo" && v.(int64) >= undoFence.(int64) {
					t.Errorf("attempt fence %d is not below the undo's %d", v, undoFence)
				}
				return true
			})
			if got := e.stock("sku-1"); got != 10 {
				t.Errorf("stock %d, want 10 (released)", got)
			}
			dead := e.readAll(message.DLT(order.Name), 300*time.Millisecond)
			if len(dead) != 1 || header(dead[0], dlq.HeaderReason) != orchestrator.ReasonExhausted {
				t.Fatalf("DLQ holds %d records, want 1 with reason %s", len(dead), orchestrator.ReasonExhausted)
			}
			if got := header(dead[0], "ksaga-attempts"); got != "3" {
				t.Errorf("dead letter after %s attempts, want 3", got)
			}
			select {
			case err := <-eng.done:
				t.Fatalf("engine stopped: %v", err)
			default:
			}
		})
	}
}

// onPartition returns n order ids whose home partition is p.
func onPartition(prefix string, p int32, n int) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if message.HomePartition(id, partitions) == p {
			out = append(out, id)
		}
	}
	return out
}

// TestBrokerLimits runs against Kafka's default 1 MB record batch limit:
// orders with a 190 KiB field, all on one partition, complete (their
// commands and states are batched within the limit), and two inbox records
// of 600 KiB are dead-lettered side by side with copies that fit.
func TestBrokerLimits(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 1000})
	e.startParticipants()
	eng := e.startEngine(nil)
	defer eng.stop(t)

	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ProducerLinger(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	big := onPartition("big", 0, 8)
	var wg sync.WaitGroup
	produce := func(r *kgo.Record) {
		wg.Add(1)
		cl.Produce(context.Background(), r, func(_ *kgo.Record, err error) {
			if err != nil {
				t.Errorf("produce: %v", err)
			}
			wg.Done()
		})
	}
	start := []kgo.RecordHeader{{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)}}
	for _, id := range big {
		o := newOrder(id)
		o.ShipTo.City = strings.Repeat("b", 190<<10)
		v, _ := json.Marshal(o)
		produce(&kgo.Record{Topic: message.Inbox(order.Name), Key: []byte(id), Value: v, Headers: start})
	}
	poison := onPartition("poison", 0, 2)
	for _, id := range poison {
		produce(&kgo.Record{Topic: message.Inbox(order.Name), Key: []byte(id), Value: []byte(strings.Repeat("p", 600<<10)), Headers: start})
	}
	wg.Wait()
	evs := e.waitTerminal(big, 90*time.Second)
	for _, id := range big {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Errorf("saga %s ended %s, want completed", id, got)
		}
	}
	dead := e.readAll(message.DLT(order.Name), 500*time.Millisecond)
	if len(dead) != 2 {
		t.Fatalf("DLQ holds %d records, want the 2 oversized ones", len(dead))
	}
	for _, r := range dead {
		if got := header(r, dlq.HeaderReason); got != orchestrator.ReasonTooLarge {
			t.Errorf("dead letter reason %q, want %s", got, orchestrator.ReasonTooLarge)
		}
	}
}

// evolvedOrder is the order's data after an incompatible change: items
// became a string.
type evolvedOrder struct {
	OrderID string `json:"order_id"`
	Items   string `json:"items"`
}

// TestStoredDataNoLongerDecodes changes the saga's data type while a saga
// waits: the engine restores the partition anyway, dead-letters the
// waiting saga's reply (its stored data no longer decodes) and goes on with
// new sagas.
func TestStoredDataNoLongerDecodes(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100})
	// The old definition: the same step as the new one, over order.Order
	// (the same version, so that only the data type differs).
	old := e.startEngine(saga.New(order.Name, saga.Step[order.Order]{Name: order.StepReserveInventory,
		Do: func(_ context.Context, o *order.Order) (saga.Command, error) {
			return saga.Command{Participant: order.Inventory, Type: order.ReserveInventory,
				Payload: order.InventoryCommand{OrderID: o.OrderID, Items: o.Items}}, nil
		}}))
	e.start(newOrder("evo-1")) // waits: no participant runs
	waitFor(t, 30*time.Second, func() bool { return len(e.commands(order.Inventory)) == 1 })
	old.stop(t)

	v2 := saga.New(order.Name, saga.Step[evolvedOrder]{Name: order.StepReserveInventory,
		Do: func(_ context.Context, o *evolvedOrder) (saga.Command, error) {
			return saga.Command{Participant: order.Inventory, Type: order.ReserveInventory,
				Payload: order.InventoryCommand{OrderID: o.OrderID, Items: []order.Item{{SKU: "sku-1", Qty: 1}}}}, nil
		}})
	eng := e.startEngine(v2)
	defer eng.stop(t)
	e.startParticipants(order.Inventory)
	e.produce(&kgo.Record{Topic: message.Inbox(order.Name), Key: []byte("evo-2"), Value: []byte(`{"order_id":"evo-2","items":"one"}`),
		Headers: []kgo.RecordHeader{{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)}}})
	evs := e.waitTerminal([]string{"evo-2"}, 60*time.Second)
	if got := terminal(evs["evo-2"]); got != message.EventSagaCompleted {
		t.Errorf("new saga ended %s, want completed", got)
	}
	waitFor(t, 30*time.Second, func() bool {
		for _, r := range e.readAll(message.DLT(order.Name), 200*time.Millisecond) {
			if string(r.Key) == "evo-1" && header(r, dlq.HeaderReason) == orchestrator.ReasonInvalid {
				return true
			}
		}
		return false
	})
}

// TestBadKeysAndTombstones: a key that is not UTF-8 is dead-lettered (its
// id could not be stored as sent), and a tombstone on the state topic
// deletes the saga from the view when the engine rebuilds it.
func TestBadKeysAndTombstones(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100})
	e.startParticipants()
	eng := e.startEngine(nil)
	defer eng.stop(t)

	v, _ := json.Marshal(newOrder("x"))
	e.produce(&kgo.Record{Topic: message.Inbox(order.Name), Key: []byte("bad-\xff"), Value: v,
		Headers: []kgo.RecordHeader{{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)}}})
	e.start(newOrder("gone"))
	e.waitTerminal([]string{"gone"}, 60*time.Second)
	e.waitRedis([]string{"gone"}, 30*time.Second)
	dead := e.readAll(message.DLT(order.Name), 300*time.Millisecond)
	if len(dead) != 1 || header(dead[0], dlq.HeaderReason) != orchestrator.ReasonMissingSagaID {
		t.Fatalf("DLQ holds %d records, want the bad key with reason %s", len(dead), orchestrator.ReasonMissingSagaID)
	}

	// Delete the saga from the state topic, then lose Redis: the rebuild
	// must not bring it back.
	manual, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer manual.Close()
	tomb := &kgo.Record{Topic: message.State(order.Name), Partition: message.HomePartition("gone", partitions), Key: []byte("gone")}
	if err := manual.ProduceSync(context.Background(), tomb).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := e.eng.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	e.start(newOrder("after")) // makes the engine look at Redis again
	e.waitTerminal([]string{"after"}, 60*time.Second)
	e.waitRedis([]string{"after"}, 30*time.Second)
	st, err := e.redisState("gone")
	if err != nil {
		t.Fatal(err)
	}
	if st != nil {
		t.Errorf("deleted saga is back in Redis at version %d", st.Version)
	}
}

// TestMisplacedDuplicateBesideReply hands a restarted engine, in one
// batch, the reply a saga waits for on its home partition and duplicates
// of its start request on every other partition, while the saga's state is
// only in Redis. The duplicates are moved home and dropped there; the reply
// finds the saga (its state is read under the home partition's keys, not
// under those of the partition a duplicate landed on), and every saga
// completes with nothing dead-lettered.
func TestMisplacedDuplicateBesideReply(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100000})
	sagas := ids("beside", 12)
	eng := e.startEngine(nil)
	for _, id := range sagas {
		e.start(newOrder(id))
	}
	for _, id := range sagas {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if st, err := e.redisState(id); err == nil && st != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("saga %s: no state in Redis after 30s", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	eng.stop(t)

	// The replies reach the inbox while no engine runs.
	stop := e.startParticipants("inventory")
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := 0
		for _, r := range e.readAll(message.Inbox(order.Name), 200*time.Millisecond) {
			if header(r, message.HeaderMessageType) == message.TypeReply {
				n++
			}
		}
		if n == len(sagas) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d replies in the inbox after 30s", n, len(sagas))
		}
	}
	stop()

	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, id := range sagas {
		v, _ := json.Marshal(newOrder(id))
		for p := range int32(partitions) {
			if p == message.HomePartition(id, partitions) {
				continue
			}
			r := &kgo.Record{Topic: message.Inbox(order.Name), Partition: p, Key: []byte(id), Value: v,
				Headers: []kgo.RecordHeader{
					{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
					{Key: message.HeaderMessageID, Value: []byte("start-" + id)},
				}}
			if err := cl.ProduceSync(context.Background(), r).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}

	e.startParticipants()
	eng = e.startEngine(nil)
	defer eng.stop(t)
	evs := e.waitTerminal(sagas, 60*time.Second)
	for _, id := range sagas {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Errorf("saga %s ended %s, want %s", id, got, message.EventSagaCompleted)
		}
	}
	e.assertOnce(evs, sagas...)
	for _, r := range e.readAll(message.DLT(order.Name), 300*time.Millisecond) {
		t.Errorf("dead-lettered %s: %s", r.Key, header(r, dlq.HeaderReason))
	}
}
