package orchestrator

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
)

// benchStore returns a store on a fresh redis-server, with its scripts
// loaded.
func benchStore(b *testing.B) *store {
	b.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(b)})
	b.Cleanup(func() { rdb.Close() })
	s := &store{rdb: rdb, typ: "order", group: "ksaga-order"}
	if err := s.load(context.Background()); err != nil {
		b.Fatal(err)
	}
	return s
}

// benchWrites returns n states of a running order saga spread over six
// partitions, as one batch's after-commit write holds them: each waits on a
// deadline (ZADD) and weighs what a real one does (about 700 bytes).
func benchWrites(b *testing.B, n int) []write {
	b.Helper()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ws := make([]write, n)
	for i := range ws {
		id := fmt.Sprintf("o-bench-%06d", i)
		st := &State{
			ID: id, Type: "order", Version: 1, Status: message.StatusRunning, Step: 1, Undoing: -1,
			Waiting: id + "/authorize-payment/do", Attempt: 1, Deadline: now.Add(30 * time.Second).UnixMilli(),
			StepStarted: now.UnixMilli(), StartID: "start-" + id,
			StartHash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
			Data:      startValue, Created: now, Updated: now,
		}
		raw, err := json.Marshal(st)
		if err != nil {
			b.Fatal(err)
		}
		ws[i] = write{partition: int32(i % 6), offset: int64(i / 6), state: st, raw: raw}
	}
	return ws
}

// flushes groups writes by partition, as flushRedis does, each moving its
// partition's checkpoint to offset.
func flushes(ws []write, expect, offset int64) []flush {
	byPart := make(map[int32]*flush)
	var out []flush
	for _, w := range ws {
		f := byPart[w.partition]
		if f == nil {
			f = &flush{p: w.partition, expect: expect, checkpoint: offset}
			byPart[w.partition] = f
		}
		f.states = append(f.states, w)
	}
	for _, f := range byPart {
		out = append(out, *f)
	}
	return out
}

// BenchmarkStoreAfterCommit measures the Redis work after a commit
// (flushRedis without the bookkeeping): one pipeline with one script per
// partition that writes its states with the version compare-and-set, keeps
// the deadline index and moves the checkpoint, against a real redis-server.
// Each iteration writes a higher version, so every compare-and-set writes.
func BenchmarkStoreAfterCommit(b *testing.B) {
	for _, n := range []int{1, 20, 1000} {
		b.Run(fmt.Sprintf("states=%d", n), func(b *testing.B) {
			s := benchStore(b)
			ws := benchWrites(b, n)
			ctx := context.Background()
			var version, offset int64
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				version++
				for i := range ws {
					ws[i].state.Version = version
				}
				expect := offset
				offset += int64(n)
				if lost, err := s.put(ctx, flushes(ws, expect, offset)); err != nil || len(lost) > 0 {
					b.Fatalf("put: lost %v, err %v", lost, err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/state")
		})
	}
}

// BenchmarkStoreGet measures a batch's preload: reading the states of the
// sagas not in memory, in one round trip, with the checkpoint check.
func BenchmarkStoreGet(b *testing.B) {
	for _, n := range []int{20, 1000} {
		b.Run(fmt.Sprintf("states=%d", n), func(b *testing.B) {
			s := benchStore(b)
			ws := benchWrites(b, n)
			ctx := context.Background()
			if _, err := s.put(ctx, flushes(ws, 0, 1)); err != nil {
				b.Fatal(err)
			}
			byPart := make(map[int32]*read)
			for _, w := range ws {
				rd := byPart[w.partition]
				if rd == nil {
					rd = &read{p: w.partition, expect: 1}
					byPart[w.partition] = rd
				}
				rd.ids = append(rd.ids, w.state.ID)
			}
			var reads []read
			for _, rd := range byPart {
				reads = append(reads, *rd)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				got, err := s.get(ctx, reads)
				if err != nil {
					b.Fatal(err)
				}
				if len(got.states) != n || len(got.lost) > 0 {
					b.Fatalf("got %d states, lost %v; want %d, none", len(got.states), got.lost, n)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/state")
		})
	}
}
