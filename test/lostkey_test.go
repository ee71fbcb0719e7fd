package test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
)

// readBackCounter sums Batch.ReadBack.
type readBackCounter struct{ n atomic.Int64 }

func (c *readBackCounter) AfterCommit(_ context.Context, b *orchestrator.Batch) {
	c.n.Add(int64(b.ReadBack))
}

// TestRedisLosesOneKey deletes single saga keys from the engine's Redis and
// keeps its checkpoints, as an allkeys-* eviction, a partial restore or an
// operator's DEL would: a finished saga's, then, across an engine restart,
// a running saga's. A duplicate start of the finished saga must be dropped,
// not run again; the running saga must go on where it was. The engine reads
// both back from the state topic and writes them to Redis again.
func TestRedisLosesOneKey(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100})
	stopParticipants := e.startParticipants()
	hook := &readBackCounter{}
	eng := e.startEngine(nil, orchestrator.Hooks(hook))
	ctx := context.Background()
	del := func(id string) {
		t.Helper()
		key := orchestrator.StateKey(order.Name, message.HomePartition(id, partitions), id)
		if n, err := e.eng.Del(ctx, key).Result(); err != nil || n != 1 {
			t.Fatalf("DEL %s: %d, %v", key, n, err)
		}
	}

	e.start(newOrder("done"))
	e.waitTerminal([]string{"done"}, 60*time.Second)
	e.waitRedis([]string{"done"}, 10*time.Second)
	// The ended saga leaves memory once the engine takes the write in:
	// an idle engine's loop turns once a second.
	time.Sleep(1500 * time.Millisecond)
	del("done")
	e.start(newOrder("done")) // a client's retry
	time.Sleep(time.Second)

	// A saga that waits on a participant that is down, read from Redis
	// (not memory) by a new engine.
	stopParticipants()
	e.start(newOrder("waiting"))
	for deadline := time.Now().Add(30 * time.Second); ; {
		if st, err := e.redisState("waiting"); err == nil && st != nil && st.Waiting != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second saga did not reach Redis within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	eng.stop(t)
	del("waiting")
	eng = e.startEngine(nil, orchestrator.Hooks(hook))
	defer eng.stop(t)
	e.start(newOrder("waiting")) // a client's retry
	e.startParticipants()
	evs := e.waitTerminal([]string{"done", "waiting"}, 60*time.Second)
	time.Sleep(500 * time.Millisecond)
	evs = e.events()
	for _, id := range []string{"done", "waiting"} {
		started := 0
		for _, ev := range evs[id] {
			if ev.Type == message.EventSagaStarted {
				started++
			}
		}
		if got := terminal(evs[id]); started != 1 || got != message.EventSagaCompleted {
			t.Errorf("saga %s: %d SagaStarted, ended %s; want one SagaStarted and one %s; events %q", id, started, got, message.EventSagaCompleted, history(evs[id]))
		}
	}
	if dead := e.readAll(message.DLT(order.Name), 300*time.Millisecond); len(dead) != 0 {
		t.Errorf("%d records dead-lettered, want none (the retries are duplicates)", len(dead))
	}
	// "done" is read back by the record that needs it; "waiting" too, or
	// by the repair pass the new engine starts once it restored the
	// partition, whichever comes first (neither starts it again).
	if hook.n.Load() < 1 {
		t.Errorf("the engine read back %d states, want at least 1", hook.n.Load())
	}
	e.waitRedis([]string{"done", "waiting"}, 10*time.Second)
	if got, want := e.stock("sku-1"), int64(100-2*2); got != want {
		t.Errorf("stock %d, want %d (each order reserved once)", got, want)
	}
}

// TestRedisViewIsRepaired deletes state keys of finished sagas, which no
// record will ask for again, and makes Redis evict keys (of its own, here:
// volatile ones). Seeing the eviction count grow, the engine checks its view
// and writes the lost states back from the state topic.
func TestRedisViewIsRepaired(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 1000})
	e.startParticipants()
	eng := e.startEngine(nil)
	defer eng.stop(t)
	ctx := context.Background()

	sagas := ids("v", 30)
	for _, id := range sagas {
		e.start(newOrder(id))
	}
	e.waitTerminal(sagas, 60*time.Second)
	e.waitRedis(sagas, 10*time.Second)
	for _, id := range sagas[:10] {
		if err := e.eng.Del(ctx, orchestrator.StateKey(order.Name, message.HomePartition(id, partitions), id)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Evictions, of volatile keys only: nothing of the engine's.
	used, err := e.eng.Info(ctx, "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	var mem int64
	for _, line := range strings.Split(used, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			mem, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	e.eng.ConfigSet(ctx, "maxmemory-policy", "volatile-lru")
	e.eng.ConfigSet(ctx, "maxmemory", strconv.FormatInt(mem+(512<<10), 10))
	filler := strings.Repeat("x", 10<<10)
	for i := range 200 {
		e.eng.Set(ctx, fmt.Sprintf("filler:%d", i), filler, time.Hour)
	}
	e.eng.ConfigSet(ctx, "maxmemory", "0")
	e.eng.ConfigSet(ctx, "maxmemory-policy", "noeviction")
	if info, _ := e.eng.Info(ctx, "stats").Result(); !strings.Contains(info, "evicted_keys:") || strings.Contains(info, "evicted_keys:0\r\n") {
		t.Fatalf("Redis evicted nothing: the test proves nothing")
	}
	e.waitRedis(sagas, 20*time.Second)
}

// TestRedisViewIsRepairedAfterARestart: keys the view lost while no engine
// ran (evicted, deleted by hand, a partial restore) are written back soon
// after an engine takes the partitions, not at the next periodic pass
// minutes later: the engine cannot know what Redis lost before it started.
func TestRedisViewIsRepairedAfterARestart(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 1000})
	e.startParticipants()
	eng := e.startEngine(nil)
	ctx := context.Background()

	sagas := ids("r", 30)
	for _, id := range sagas {
		e.start(newOrder(id))
	}
	e.waitTerminal(sagas, 60*time.Second)
	e.waitRedis(sagas, 10*time.Second)
	eng.stop(t)
	for _, id := range sagas[:10] {
		if err := e.eng.Del(ctx, orchestrator.StateKey(order.Name, message.HomePartition(id, partitions), id)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	eng = e.startEngine(nil)
	defer eng.stop(t)
	e.waitRedis(sagas, 20*time.Second)
}
