package orchestrator

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
)

func testStore(t *testing.T) (*store, *redis.Client) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	t.Cleanup(func() { rdb.Close() })
	s := &store{rdb: rdb, typ: "order", group: "g"}
	if err := s.load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, rdb
}

func running(id string, version, deadline int64) write {
	st := &State{ID: id, Type: "order", Version: version, Status: message.StatusRunning, Deadline: deadline}
	return write{partition: 0, state: st, raw: []byte(`{}`)}
}

// TestStoreDeadlinesFollowTheCAS: a refused state write (an older version,
// from a fenced instance that woke up late) leaves the deadline index alone;
// a stale deadline would otherwise hide the real one.
func TestStoreDeadlinesFollowTheCAS(t *testing.T) {
	s, rdb := testStore(t)
	ctx := context.Background()
	put := func(expect, checkpoint int64, ws ...write) []int32 {
		t.Helper()
		lost, err := s.put(ctx, []flush{{p: 0, expect: expect, checkpoint: checkpoint, states: ws}})
		if err != nil {
			t.Fatal(err)
		}
		return lost
	}
	put(0, 1, running("s-1", 5, 5000))
	put(1, 2, running("s-1", 4, 4000)) // stale: refused
	score, err := rdb.ZScore(ctx, s.deadlinesKey(0), "s-1").Result()
	if err != nil || score != 5000 {
		t.Fatalf("deadline %v (err %v), want 5000: the refused write moved it", score, err)
	}
	done := running("s-1", 6, 0)
	done.state.Status = message.StatusCompleted
	put(2, 3, done)
	if n, _ := rdb.ZCard(ctx, s.deadlinesKey(0)).Result(); n != 0 {
		t.Errorf("%d deadlines left after the saga ended, want 0", n)
	}
}

// TestStoreDetectsRollback: a checkpoint lower than the one the engine
// wrote (Redis restarted from an older snapshot) or gone refuses writes and
// reads of the partition, which the engine then rebuilds.
func TestStoreDetectsRollback(t *testing.T) {
	s, rdb := testStore(t)
	ctx := context.Background()
	if lost, err := s.put(ctx, []flush{{p: 0, checkpoint: 10, states: []write{running("s-1", 1, 1)}}}); err != nil || len(lost) != 0 {
		t.Fatalf("first put: lost %v, err %v", lost, err)
	}
	rdb.Set(ctx, s.checkpointKey(0), 7, 0) // back in time
	lost, err := s.put(ctx, []flush{{p: 0, expect: 10, checkpoint: 11, states: []write{running("s-1", 2, 1)}}})
	if err != nil || len(lost) != 1 {
		t.Fatalf("put after the rollback: lost %v, err %v; want partition 0 lost", lost, err)
	}
	if v, _ := rdb.HGet(ctx, s.stateKey(0, "s-1"), "version").Result(); v != "1" {
		t.Errorf("state version %s, want 1: nothing may be written to a partition that went back", v)
	}
	got, err := s.get(ctx, []read{{p: 0, expect: 10, ids: []string{"s-1"}}})
	if err != nil || len(got.lost) != 1 || len(got.states) != 0 {
		t.Fatalf("get after the rollback: %+v, err %v; want partition 0 lost and no state", got, err)
	}
	rdb.FlushAll(ctx)
	if got, _ := s.get(ctx, []read{{p: 0, expect: 10, ids: []string{"s-1"}}}); len(got.lost) != 1 {
		t.Errorf("get after FLUSHALL: lost %v, want partition 0", got.lost)
	}
}
