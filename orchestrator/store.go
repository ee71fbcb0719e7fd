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
// counters. Keys, for saga type T:
//
//	ksaga:T:state:<id>                 hash {version, state}
//	ksaga:T:checkpoint:<partition>     state-topic offset up to which Redis is complete
//	ksaga:T:deadlines:<partition>      zset of non-terminal saga ids by deadline (Unix ms)
//	ksaga:T:attempts:<group>:<partition> hash inbox offset -> "count|first ms|last ms|limit|error"
//
// Every key is written by one command or script of its own, so the store
// works on Redis Cluster.
type store struct {
	rdb   redis.UniversalClient
	typ   string
	group string
}

// casState writes a state only if its version is higher than the stored one:
// a fenced zombie that wakes up late cannot put an older state back.
var casState = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'version')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'state', ARGV[2])
return 1`)

// setCheckpoint only moves a checkpoint forward. With ARGV[2] = "1" the key
// must exist: a missing key means Redis lost its data (FLUSHALL, a failover
// to an empty replica) and the engine rebuilds it from the state topic.
var setCheckpoint = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if not cur and ARGV[2] == '1' then return -1 end
if not cur or tonumber(cur) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1`)

// countAttempt adds one failed attempt of an inbox record and returns the
// count and the first failure's time. ARGV[3] is the record's attempt limit
// and ARGV[4] the error, kept so that a restarted engine knows when the
// record is exhausted and why.
var countAttempt = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
local n, first = 0, ARGV[2]
if v then
  local a, b = string.match(v, '^(%d+)|(%d+)')
  n, first = tonumber(a), b
end
n = n + 1
redis.call('HSET', KEYS[1], ARGV[1], n .. '|' .. first .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
return {n, first}`)

func (s *store) stateKey(id string) string    { return "ksaga:" + s.typ + ":state:" + id }
func (s *store) checkpointKey(p int32) string { return fmt.Sprintf("ksaga:%s:checkpoint:%d", s.typ, p) }
func (s *store) deadlinesKey(p int32) string  { return fmt.Sprintf("ksaga:%s:deadlines:%d", s.typ, p) }
func (s *store) attemptsKey(p int32) string {
	return fmt.Sprintf("ksaga:%s:attempts:%s:%d", s.typ, s.group, p)
}

// StateKey returns the Redis key of a saga's state hash, with fields
// "version" and "state" (the State as JSON).
func StateKey(sagaType, id string) string { return "ksaga:" + sagaType + ":state:" + id }

func (s *store) load(ctx context.Context) error {
	for _, sc := range []*redis.Script{casState, setCheckpoint, countAttempt} {
		if err := sc.Load(ctx, s.rdb).Err(); err != nil {
			return fmt.Errorf("load redis scripts: %w", err)
		}
	}
	return nil
}

// loaded is what a batch lookup found.
type loaded struct {
	states map[string]*State
	// lost lists partitions whose checkpoint vanished: Redis lost its data.
	lost []int32
}

// get loads the states of ids in one round trip, and checks that the
// checkpoints of the partitions in expect (partition -> checkpoint the engine
// knows was written) still exist. A missing state is absent from the map.
func (s *store) get(ctx context.Context, ids []string, expect map[int32]int64) (loaded, error) {
	out := loaded{states: make(map[string]*State, len(ids))}
	pipe := s.rdb.Pipeline()
	gets := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		gets[i] = pipe.HGet(ctx, s.stateKey(id), "state")
	}
	type check struct {
		p   int32
		cmd *redis.IntCmd
	}
	var checks []check
	for p, c := range expect {
		if c > 0 {
			checks = append(checks, check{p, pipe.Exists(ctx, s.checkpointKey(p))})
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return out, fmt.Errorf("%w: load saga states: %w", errInfra, err)
	}
	for i, g := range gets {
		raw, err := g.Bytes()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("%w: load saga %s: %w", errInfra, ids[i], err)
		}
		st := new(State)
		if err := json.Unmarshal(raw, st); err != nil {
			return out, fmt.Errorf("%w: decode saga %s from redis: %w", errInfra, ids[i], err)
		}
		out.states[ids[i]] = st
	}
	for _, c := range checks {
		if c.cmd.Val() == 0 {
			out.lost = append(out.lost, c.p)
		}
	}
	return out, nil
}

// write is one state to put in Redis.
type write struct {
	partition int32
	offset    int64 // of its record on the state topic
	state     *State
	raw       []byte
}

// put writes states with the version compare-and-set and keeps the deadline
// indexes, in one round trip.
func (s *store) put(ctx context.Context, ws []write) error {
	if len(ws) == 0 {
		return nil
	}
	pipe := s.rdb.Pipeline()
	for _, w := range ws {
		casState.EvalSha(ctx, pipe, []string{s.stateKey(w.state.ID)}, w.state.Version, w.raw)
		if w.state.Terminal() || w.state.Deadline == 0 {
			pipe.ZRem(ctx, s.deadlinesKey(w.partition), w.state.ID)
		} else {
			pipe.ZAdd(ctx, s.deadlinesKey(w.partition), redis.Z{Score: float64(w.state.Deadline), Member: w.state.ID})
		}
	}
	_, err := pipe.Exec(ctx)
	if err != nil && isNoScript(err) {
		if err := s.load(ctx); err != nil {
			return err
		}
		return s.put(ctx, ws)
	}
	if err != nil {
		return fmt.Errorf("write saga states: %w", err)
	}
	return nil
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// mark moves a partition's checkpoint. exists says the checkpoint must
// already be in Redis (the engine wrote or read it before).
type mark struct {
	p      int32
	offset int64
	exists bool
}

// advance moves checkpoints and forgets attempt counts, in one round trip.
// It returns the partitions whose checkpoint vanished (Redis lost its data);
// the others moved. An error means none is known to have moved.
func (s *store) advance(ctx context.Context, marks []mark, cleared map[int32][]int64) (lost []int32, err error) {
	if len(marks) == 0 && len(cleared) == 0 {
		return nil, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(marks))
	for i, m := range marks {
		flag := "0"
		if m.exists {
			flag = "1"
		}
		cmds[i] = setCheckpoint.EvalSha(ctx, pipe, []string{s.checkpointKey(m.p)}, m.offset, flag)
	}
	for p, offsets := range cleared {
		fields := make([]string, len(offsets))
		for i, o := range offsets {
			fields[i] = strconv.FormatInt(o, 10)
		}
		pipe.HDel(ctx, s.attemptsKey(p), fields...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		if isNoScript(err) {
			if err := s.load(ctx); err != nil {
				return nil, err
			}
			return s.advance(ctx, marks, cleared)
		}
		return nil, fmt.Errorf("write checkpoints: %w", err)
	}
	for i, c := range cmds {
		if n, _ := c.Int(); n < 0 {
			lost = append(lost, marks[i].p)
		}
	}
	return lost, nil
}

// readCheckpoint returns partition p's checkpoint, 0 when there is none.
func (s *store) readCheckpoint(ctx context.Context, p int32) (int64, error) {
	v, err := s.rdb.Get(ctx, s.checkpointKey(p)).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read checkpoint of partition %d: %w", p, err)
	}
	return v, nil
}

// deadlines returns the non-terminal sagas of partition p by deadline.
func (s *store) deadlines(ctx context.Context, p int32) ([]redis.Z, error) {
	zs, err := s.rdb.ZRangeWithScores(ctx, s.deadlinesKey(p), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read deadlines of partition %d: %w", p, err)
	}
	return zs, nil
}

// attempt is the durable failure count of one inbox record. err is set
// when the record is to be dead-lettered on its next delivery.
type attempt struct {
	count       int
	first, last time.Time
	err         error
}

// countFailure adds a failed attempt of the inbox record at (p, offset),
// whose attempt limit is limit.
func (s *store) countFailure(ctx context.Context, p int32, offset int64, now time.Time, limit int, cause error) (int, time.Time, error) {
	msg := cause.Error()
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	res, err := countAttempt.Run(ctx, s.rdb, []string{s.attemptsKey(p)}, offset, now.UnixMilli(), limit, msg).Slice()
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("count failed attempt: %w", err)
	}
	n, _ := res[0].(int64)
	firstMs, _ := strconv.ParseInt(fmt.Sprint(res[1]), 10, 64)
	return int(n), time.UnixMilli(firstMs), nil
}

// attempts loads the failure counts of partition p's inbox records.
func (s *store) attempts(ctx context.Context, p int32) (map[int64]attempt, error) {
	m, err := s.rdb.HGetAll(ctx, s.attemptsKey(p)).Result()
	if err != nil {
		return nil, fmt.Errorf("read attempt counts of partition %d: %w", p, err)
	}
	out := make(map[int64]attempt, len(m))
	for k, v := range m {
		off, err1 := strconv.ParseInt(k, 10, 64)
		parts := strings.SplitN(v, "|", 5)
		if err1 != nil || len(parts) != 5 {
			continue
		}
		n, _ := strconv.Atoi(parts[0])
		first, _ := strconv.ParseInt(parts[1], 10, 64)
		last, _ := strconv.ParseInt(parts[2], 10, 64)
		limit, _ := strconv.Atoi(parts[3])
		a := attempt{count: n, first: time.UnixMilli(first), last: time.UnixMilli(last)}
		if n >= limit {
			a.err = fmt.Errorf("%s (after %d attempts)", parts[4], n)
		}
		out[off] = a
	}
	return out, nil
}
