package orchestrator

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The engine reads back a saga that Redis lost when a record needs it (see
// index.go), so it stays correct whatever Redis drops. The view that
// operators, sagactl and the HTTP API read is repaired too: a repair pass
// walks the index of every owned partition, a chunk per turn of the loop,
// asks Redis which of the sagas' keys it lacks, and writes those back from
// the state topic. A pass starts when Redis reports evicted keys
// (INFO stats evicted_keys grew) and at least every repairInterval (for
// keys deleted by hand, which Redis does not count), and once a partition
// was restored (an engine that starts, or takes a partition over, does not
// know what Redis lost before), and checks a chunk of sagas every
// repairChunkEvery.

const (
	// repairInterval is the longest time between two repair passes.
	repairInterval = 5 * time.Minute
	// repairChunk is how many sagas one turn of the loop checks, at most
	// every repairChunkEvery: a pass costs the loop a round trip to Redis
	// per partition every 100ms, not one every transaction.
	repairChunk      = 1000
	repairChunkEvery = 100 * time.Millisecond
	// evictionCheckInterval is how often the engine reads evicted_keys.
	evictionCheckInterval = time.Second
)

// repair is a repair pass in progress.
type repair struct {
	ids  []repairID
	next int
	// found counts the keys found missing so far.
	found int
	// at is when its last chunk was checked.
	at time.Time
}

type repairID struct {
	p  int32
	id string
}

// repairView runs a turn of the repair pass, starting one when it is due.
// Its failures are logged and the pass goes on at the next turn.
func (e *Engine) repairView(ctx context.Context) {
	now := time.Now()
	if e.repairing == nil {
		due := now.Sub(e.repaired) >= repairInterval || e.repairSoon
		if !due && now.Sub(e.evictionsChecked) >= evictionCheckInterval {
			e.evictionsChecked = now
			if n, err := e.store.evictedKeys(ctx); err == nil {
				due = e.evicted >= 0 && n > e.evicted
				e.evicted = n
			}
		}
		if !due {
			return
		}
		e.repaired, e.repairSoon = now, false
		e.repairing = &repair{}
		for p, part := range e.parts {
			if part.index == nil {
				continue
			}
			for id := range part.index.sagas {
				e.repairing.ids = append(e.repairing.ids, repairID{p, id})
			}
		}
	}
	r := e.repairing
	if now.Sub(r.at) < repairChunkEvery {
		return
	}
	r.at = now
	chunk := r.ids[r.next:min(r.next+repairChunk, len(r.ids))]
	byPart := make(map[int32][]string)
	for _, x := range chunk {
		if part := e.parts[x.p]; part != nil && part.index != nil {
			if _, ok := part.index.sagas[x.id]; ok {
				byPart[x.p] = append(byPart[x.p], x.id)
			}
		}
	}
	for p, ids := range byPart {
		missing, err := e.store.missing(ctx, p, ids)
		if err != nil {
			e.log.Warn("redis view repair: cannot check keys; will retry", "partition", p, "err", err)
			return
		}
		if len(missing) == 0 {
			continue
		}
		back, err := e.readBack(ctx, p, missing, e.parts[p].index)
		if err != nil {
			e.log.Warn("redis view repair: cannot read states back; will retry", "partition", p, "err", err)
			return
		}
		part := e.parts[p]
		for _, w := range back {
			part.pending = append(part.pending, w)
		}
		e.notePending()
		r.found += len(back)
	}
	r.next += len(chunk)
	if r.next >= len(r.ids) {
		if r.found > 0 {
			e.log.Warn("redis had lost saga states; wrote them back from the state topic", "sagas", r.found, "checked", len(r.ids))
		}
		e.repairing = nil
	}
}

// missing returns those of partition p's saga ids whose state key Redis
// does not hold.
func (s *store) missing(ctx context.Context, p int32, ids []string) ([]string, error) {
	return bounded(ctx, s, func(ctx context.Context) ([]string, error) {
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.IntCmd, len(ids))
		for i, id := range ids {
			cmds[i] = pipe.Exists(ctx, s.stateKey(p, id))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
		var out []string
		for i, c := range cmds {
			if c.Val() == 0 {
				out = append(out, ids[i])
			}
		}
		return out, nil
	})
}

// evictedKeys returns the keys Redis evicted since it started (INFO stats
// evicted_keys), summed over the primaries of a cluster.
func (s *store) evictedKeys(ctx context.Context) (int64, error) {
	return bounded(ctx, s, func(ctx context.Context) (int64, error) {
		cc, ok := s.rdb.(*redis.ClusterClient)
		if !ok {
			info, err := s.rdb.Info(ctx, "stats").Result()
			if err != nil {
				return 0, err
			}
			return parseEvicted(info), nil
		}
		var mu sync.Mutex
		var total int64
		err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			info, err := c.Info(ctx, "stats").Result()
			if err != nil {
				return err
			}
			mu.Lock()
			total += parseEvicted(info)
			mu.Unlock()
			return nil
		})
		return total, err
	})
}

func parseEvicted(info string) int64 {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "evicted_keys:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}
