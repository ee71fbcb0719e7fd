package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// store is the engine's Redis view: saga states (versioned), per-partition
// checkpoints of the state topic, deadline indexes and durable attempt
// counters. Keys, for saga type T and inbox partition p:
//
//	ksaga:{T:p}:state:<id>             hash {version, state}
//	ksaga:{T:p}:checkpoint             state-topic offset up to which Redis is complete
//	ksaga:{T:p}:deadlines              zset of non-terminal saga ids by deadline (Unix ms)
//	ksaga:{T:p}:attempts:<group>       hash inbox offset -> "count|first ms|last ms|limit|step|error"
//
// A partition's keys share one hash slot, so each write and each read of a
// partition is one script, atomic on one node, also on Redis Cluster.
//
// Redis is a view that can go back in time: a restart from an RDB file or an
// AOF synced every second, a failover to a lagging replica, a snapshot
// restore. Because a partition's states and checkpoint are written by one
// script, what comes back is always a prefix: some checkpoint with every
// state before it. The engine remembers the checkpoint it last wrote or read;
// every script checks that the checkpoint in Redis is not lower, and when it
// is (or is gone), the engine stops trusting the partition's view and
// replays the state topic from the checkpoint Redis has.
type store struct {
	rdb   redis.UniversalClient
	typ   string
	group string
	// timeout bounds each call into Redis (0: defaultRedisTimeout).
	timeout time.Duration
}

// defaultRedisTimeout bounds a call into Redis when no RedisTimeout is set.
const defaultRedisTimeout = 5 * time.Second

// errRedis marks a failed or timed-out call into Redis. It is an
// infrastructure failure (errInfra): retried, never counted against a
// record.
var errRedis = fmt.Errorf("%w: redis", errInfra)

// bounded runs fn with ctx bounded by the store's timeout, and returns when
// that ends even if fn has not: a Redis that hangs (a stopped process, a
// stuck failover) behind a client that does not apply contexts to its
// sockets (go-redis without ContextTimeoutEnabled waits for its own read
// timeout, and retries) must not hold the engine's loop past the bound. fn
// then finishes in the background, on the client's own timeouts. Errors
// wrap errRedis.
func bounded[T any](ctx context.Context, s *store, fn func(context.Context) (T, error)) (T, error) {
	d := s.timeout
	if d <= 0 {
		d = defaultRedisTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := fn(ctx)
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil && !errors.Is(r.err, errRedis) {
			r.err = fmt.Errorf("%w: %w", errRedis, r.err)
		}
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("%w: no answer within %v: %w", errRedis, d, ctx.Err())
	}
}

// writePartition writes one partition's states with a version
// compare-and-set, keeps the deadline index in step with each state it
// writes, forgets cleared attempt counts and moves the checkpoint forward.
//
//	KEYS:  checkpoint, deadlines, attempts, state keys...
//	ARGV:  expected checkpoint (0: none known), new checkpoint (0: keep),
//	       n cleared offsets, the offsets, then per state: version, state,
//	       deadline ms (0: not waiting), saga id; a version of "del"
//	       deletes the saga's state (a tombstone on the state topic)
//
// It returns -1, and writes nothing, when the checkpoint is lower than
// expected: Redis went back in time.
var writePartition = redis.NewScript(`
local expected = tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if expected > 0 and (not cur or tonumber(cur) < expected) then return -1 end
local ncleared = tonumber(ARGV[3])
if ncleared > 0 then redis.call('HDEL', KEYS[3], unpack(ARGV, 4, 3 + ncleared)) end
local a = 4 + ncleared
for k = 4, #KEYS do
  if ARGV[a] == 'del' then
    redis.call('DEL', KEYS[k])
    redis.call('ZREM', KEYS[2], ARGV[a + 3])
  else
    local v = redis.call('HGET', KEYS[k], 'version')
    if not v or tonumber(v) < tonumber(ARGV[a]) then
      redis.call('HSET', KEYS[k], 'version', ARGV[a], 'state', ARGV[a + 1])
      if ARGV[a + 2] == '0' then
        redis.call('ZREM', KEYS[2], ARGV[a + 3])
      else
        redis.call('ZADD', KEYS[2], ARGV[a + 2], ARGV[a + 3])
      end
    end
  end
  a = a + 4
end
local new = tonumber(ARGV[2])
if new > 0 and (not cur or tonumber(cur) < new) then redis.call('SET', KEYS[1], ARGV[2]) end
return 1`)

// readPartition reads states of one partition and checks its checkpoint in
// the same step.
//
//	KEYS:  checkpoint, state keys...
//	ARGV:  expected checkpoint (0: none known)
//
// It returns {-1} when the checkpoint is lower than expected, else {1,
// state or false, ...}.
var readPartition = redis.NewScript(`
local expected = tonumber(ARGV[1])
local cur = redis.call('GET', KEYS[1])
if expected > 0 and (not cur or tonumber(cur) < expected) then return {-1} end
local out = {1}
for k = 2, #KEYS do out[k] = redis.call('HGET', KEYS[k], 'state') end
return out`)

// countAttempt adds one failed attempt of an inbox record and returns the
// count and the first failure's time. ARGV[3] is the record's attempt limit,
// ARGV[4] the index of the step whose code failed (-1: none) and ARGV[5]
// the error, kept so that a restarted engine knows when the record is
// exhausted, why, and which step to report as failed.
var countAttempt = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
local n, first = 0, ARGV[2]
if v then
  local a, b = string.match(v, '^(%d+)|(%d+)')
  n, first = tonumber(a), b
end
n = n + 1
redis.call('HSET', KEYS[1], ARGV[1], n .. '|' .. first .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5])
return {n, first}`)

// Every key of a partition carries the hash tag {<type>:<partition>}, so
// that on Redis Cluster they live in one slot, on one shard: a shard that
// fails over to a lagging replica, or restarts from an older snapshot, takes
// a partition's states and its checkpoint back in time together, and one
// check of the checkpoint's value covers them all.

func partitionTag(typ string, p int32) string {
	return "ksaga:{" + typ + ":" + strconv.Itoa(int(p)) + "}:"
}

func (s *store) stateKey(p int32, id string) string { return partitionTag(s.typ, p) + "state:" + id }
func (s *store) checkpointKey(p int32) string       { return partitionTag(s.typ, p) + "checkpoint" }
func (s *store) deadlinesKey(p int32) string        { return partitionTag(s.typ, p) + "deadlines" }
func (s *store) attemptsKey(p int32) string         { return partitionTag(s.typ, p) + "attempts:" + s.group }

// StateKey returns the Redis key of a saga's state hash, with fields
// "version" and "state" (the State as JSON): ksaga:{<type>:<p>}:state:<id>,
// where p is the saga's home partition (message.HomePartition of the id and
// the inbox's partition count).
func StateKey(sagaType string, partition int32, id string) string {
	return partitionTag(sagaType, partition) + "state:" + id
}

// StateKeyPattern is the SCAN pattern that matches the state keys of every
// saga of a type. The saga id follows the first ":state:" of a key.
func StateKeyPattern(sagaType string) string { return "ksaga:{" + sagaType + ":*}:state:*" }

func (s *store) load(ctx context.Context) error {
	_, err := bounded(ctx, s, func(ctx context.Context) (struct{}, error) {
		for _, sc := range []*redis.Script{writePartition, readPartition, countAttempt} {
			if err := sc.Load(ctx, s.rdb).Err(); err != nil {
				return struct{}{}, fmt.Errorf("load redis scripts: %w", err)
			}
		}
		return struct{}{}, nil
	})
	return err
}

// loaded is what a batch lookup found.
type loaded struct {
	states map[string]*State
	// lost lists partitions whose checkpoint is lower than the engine
	// knows, or gone: Redis lost data or went back in time.
	lost []int32
}

// read is the lookup of one partition: the ids to load and the checkpoint
// the engine knows was written (0: none).
type read struct {
	p      int32
	expect int64
	ids    []string
}

// get loads the states of the sagas in rs in one round trip, each
// partition's with a check of its checkpoint. A missing state is absent from
// the map. A partition whose check fails is listed in lost and none of its
// states is returned.
func (s *store) get(ctx context.Context, rs []read) (loaded, error) {
	return bounded(ctx, s, func(ctx context.Context) (loaded, error) { return s.getUnbounded(ctx, rs) })
}

func (s *store) getUnbounded(ctx context.Context, rs []read) (loaded, error) {
	out := loaded{states: make(map[string]*State)}
	if len(rs) == 0 {
		return out, nil
	}
	cmds, err := s.run(ctx, func(pipe redis.Pipeliner) []*redis.Cmd {
		cmds := make([]*redis.Cmd, len(rs))
		for i, r := range rs {
			keys := make([]string, 0, len(r.ids)+1)
			keys = append(keys, s.checkpointKey(r.p))
			for _, id := range r.ids {
				keys = append(keys, s.stateKey(r.p, id))
			}
			cmds[i] = readPartition.EvalSha(ctx, pipe, keys, r.expect)
		}
		return cmds
	})
	if err != nil {
		return out, fmt.Errorf("load saga states: %w", err)
	}
	for i, c := range cmds {
		vals, err := c.Slice()
		if err != nil {
			return out, fmt.Errorf("load saga states: %w", err)
		}
		if n, _ := vals[0].(int64); n < 0 {
			out.lost = append(out.lost, rs[i].p)
			continue
		}
		for j, id := range rs[i].ids {
			raw, ok := vals[j+1].(string)
			if !ok {
				continue
			}
			st := new(State)
			if err := json.Unmarshal([]byte(raw), st); err != nil {
				return out, fmt.Errorf("decode saga %s from redis: %w", id, err)
			}
			out.states[id] = st
		}
	}
	return out, nil
}

// run runs the scripts that fill builds in one pipeline, loading the
// scripts again when Redis lost them (a restart, a failover).
func (s *store) run(ctx context.Context, fill func(redis.Pipeliner) []*redis.Cmd) ([]*redis.Cmd, error) {
	for try := 0; ; try++ {
		pipe := s.rdb.Pipeline()
		cmds := fill(pipe)
		_, err := pipe.Exec(ctx)
		if err != nil && isNoScript(err) && try == 0 {
			if err := s.load(ctx); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		return cmds, nil
	}
}

// write is one state to put in Redis.
type write struct {
	partition int32
	offset    int64 // of its record on the state topic
	state     *State
	raw       []byte
	// deleted marks a tombstone of the state topic: the saga's state goes.
	deleted bool
}

// flush is what one partition's write carries.
type flush struct {
	p          int32
	expect     int64 // the checkpoint the engine knows was written (0: none)
	checkpoint int64 // the new checkpoint (0: keep)
	states     []write
	cleared    []int64 // inbox offsets whose attempt counts go
}

// put runs the flushes in one round trip. It returns the partitions whose
// checkpoint was lower than expected (Redis lost data or went back in
// time): nothing of theirs was written. The others were written. An error
// means none is known to have been written.
func (s *store) put(ctx context.Context, fs []flush) (lost []int32, err error) {
	return bounded(ctx, s, func(ctx context.Context) ([]int32, error) { return s.putUnbounded(ctx, fs) })
}

func (s *store) putUnbounded(ctx context.Context, fs []flush) (lost []int32, err error) {
	if len(fs) == 0 {
		return nil, nil
	}
	cmds, err := s.run(ctx, func(pipe redis.Pipeliner) []*redis.Cmd {
		cmds := make([]*redis.Cmd, len(fs))
		for i, f := range fs {
			keys := make([]string, 0, 3+len(f.states))
			keys = append(keys, s.checkpointKey(f.p), s.deadlinesKey(f.p), s.attemptsKey(f.p))
			args := make([]any, 0, 3+len(f.cleared)+4*len(f.states))
			args = append(args, f.expect, f.checkpoint, len(f.cleared))
			for _, o := range f.cleared {
				args = append(args, o)
			}
			for _, w := range f.states {
				keys = append(keys, s.stateKey(f.p, w.state.ID))
				deadline := w.state.Deadline
				if w.state.Terminal() {
					deadline = 0
				}
				if w.deleted {
					args = append(args, "del", "", 0, w.state.ID)
					continue
				}
				args = append(args, w.state.Version, w.raw, deadline, w.state.ID)
			}
			cmds[i] = writePartition.EvalSha(ctx, pipe, keys, args...)
		}
		return cmds
	})
	if err != nil {
		return nil, fmt.Errorf("write saga states: %w", err)
	}
	for i, c := range cmds {
		n, err := c.Int()
		if err != nil {
			return nil, fmt.Errorf("write saga states: %w", err)
		}
		if n < 0 {
			lost = append(lost, fs[i].p)
		}
	}
	return lost, nil
}

// checkpoints returns the checkpoints Redis holds for ps, in one round trip;
// a missing one is 0.
func (s *store) checkpoints(ctx context.Context, ps []int32) ([]int64, error) {
	return bounded(ctx, s, func(ctx context.Context) ([]int64, error) { return s.checkpointsUnbounded(ctx, ps) })
}

func (s *store) checkpointsUnbounded(ctx context.Context, ps []int32) ([]int64, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(ps))
	for i, p := range ps {
		cmds[i] = pipe.Get(ctx, s.checkpointKey(p))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read checkpoints: %w", err)
	}
	out := make([]int64, len(ps))
	for i, c := range cmds {
		v, err := c.Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("read checkpoint of partition %d: %w", ps[i], err)
		}
		out[i] = v
	}
	return out, nil
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// readCheckpoint returns partition p's checkpoint, 0 when there is none.
func (s *store) readCheckpoint(ctx context.Context, p int32) (int64, error) {
	v, err := bounded(ctx, s, func(ctx context.Context) (int64, error) { return s.rdb.Get(ctx, s.checkpointKey(p)).Int64() })
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read checkpoint of partition %d: %w", p, err)
	}
	return v, nil
}

// attempt is the durable failure count of one inbox record. err is set
// when the record is to be dead-lettered on its next delivery.
type attempt struct {
	count       int
	first, last time.Time
	err         error
	// step is the index of the step whose code failed, or -1.
	step int
}

// countFailure adds a failed attempt of the inbox record at (p, offset),
// whose attempt limit is limit.
func (s *store) countFailure(ctx context.Context, p int32, offset int64, now time.Time, limit, step int, cause error) (int, time.Time, error) {
	msg := cause.Error()
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	res, err := bounded(ctx, s, func(ctx context.Context) ([]any, error) {
		return countAttempt.Run(ctx, s.rdb, []string{s.attemptsKey(p)}, offset, now.UnixMilli(), limit, step, msg).Slice()
	})
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("count failed attempt: %w", err)
	}
	n, _ := res[0].(int64)
	firstMs, _ := strconv.ParseInt(fmt.Sprint(res[1]), 10, 64)
	return int(n), time.UnixMilli(firstMs), nil
}

// attempts loads the failure counts of partition p's inbox records.
func (s *store) attempts(ctx context.Context, p int32) (map[int64]attempt, error) {
	m, err := bounded(ctx, s, func(ctx context.Context) (map[string]string, error) {
		return s.rdb.HGetAll(ctx, s.attemptsKey(p)).Result()
	})
	if err != nil {
		return nil, fmt.Errorf("read attempt counts of partition %d: %w", p, err)
	}
	out := make(map[int64]attempt, len(m))
	for k, v := range m {
		off, err1 := strconv.ParseInt(k, 10, 64)
		parts := strings.SplitN(v, "|", 6)
		if err1 != nil || len(parts) != 6 {
			continue
		}
		n, _ := strconv.Atoi(parts[0])
		first, _ := strconv.ParseInt(parts[1], 10, 64)
		last, _ := strconv.ParseInt(parts[2], 10, 64)
		limit, _ := strconv.Atoi(parts[3])
		step, err := strconv.Atoi(parts[4])
		if err != nil {
			step = -1
		}
		a := attempt{count: n, first: time.UnixMilli(first), last: time.UnixMilli(last), step: step}
		if n >= limit {
			a.err = fmt.Errorf("%s (after %d attempts)", parts[5], n)
		}
		out[off] = a
	}
	return out, nil
}
