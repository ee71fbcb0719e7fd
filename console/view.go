package console

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
)

// viewState is a saga's state in the Redis view.
type viewState struct {
	orchestrator.State
}

// readState reads saga id of t from the Redis view: nil, nil when the view
// does not have it.
func (c *Console) readState(ctx context.Context, t *sagaType, id string) (*viewState, error) {
	key := orchestrator.StateKey(t.name, message.HomePartition(id, t.InboxPartitions), id)
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	raw, err := c.cfg.Redis.HGet(ctx, key, "state").Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, nil
	case err != nil:
		c.log.Warn("console: read a saga from the Redis view", "key", key, "err", err)
		return nil, errRedis
	}
	var s viewState
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("the view holds a state for %s that is not the engine's JSON", id)
	}
	return &s, nil
}

// errRedis is what a page says when Redis does not answer: the daemon's
// log has the error.
var errRedis = errors.New("the Redis view did not answer (the daemon's log says why): try again")

// deadlinesKey is the sorted set of the running sagas of partition p, by
// deadline (Unix ms): the engine's ksaga:{T:p}:deadlines.
func deadlinesKey(sagaType string, p int32) string {
	return "ksaga:{" + sagaType + ":" + strconv.Itoa(int(p)) + "}:deadlines"
}

// flightRow is a running or parked saga of the in-flight lists.
type flightRow struct {
	ID       string
	Deadline time.Time
	Overdue  bool
	// Since is when the saga parked (the parked list).
	Since time.Time
	// Age is how long the saga has been in its step, and Budget how long
	// it may be (the stuck list).
	Age, Budget time.Duration
	State       *viewState // nil when gone since
}

// readStates reads the states of rows from the Redis view in one
// pipeline.
func (c *Console) readStates(ctx context.Context, t *sagaType, rows []flightRow) error {
	cmds := make([]*redis.StringCmd, len(rows))
	_, err := c.cfg.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, r := range rows {
			cmds[i] = p.HGet(ctx, orchestrator.StateKey(t.name, message.HomePartition(r.ID, t.InboxPartitions), r.ID), "state")
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		c.log.Warn("console: read sagas from the Redis view", "saga", t.name, "err", err)
		return errRedis
	}
	for i := range rows {
		if b, err := cmds[i].Bytes(); err == nil {
			var s viewState
			if json.Unmarshal(b, &s) == nil {
				rows[i].State = &s
			}
		}
	}
	return nil
}

// parked returns the parked sagas among the latest events (SagaParked
// last), the most recently parked first, from skip, at most n, with their
// states, and how many there are.
func (c *Console) parked(ctx context.Context, t *sagaType, skip, n int) ([]flightRow, int, error) {
	evs, total := t.events.parkedPage(skip, n)
	rows := make([]flightRow, len(evs))
	for i, e := range evs {
		rows[i] = flightRow{ID: e.SagaID, Since: e.At}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	if err := c.readStates(ctx, t, rows); err != nil {
		return nil, 0, err
	}
	return rows, total, nil
}

// inFlight returns the running sagas with a deadline, soonest deadline
// first (the most overdue first), from skip, at most n, and how many there
// are. It reads each partition's deadlines (ZRANGE, skip+n of each at
// most), merges them and reads the page's states in one pipeline: a page
// costs 2 round trips and O(partitions × (skip+n)), whatever the number of
// sagas.
func (c *Console) inFlight(ctx context.Context, t *sagaType, skip, n int) ([]flightRow, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	type z struct {
		id    string
		score float64
	}
	parts := int(t.InboxPartitions)
	ranges := make([]*redis.ZSliceCmd, parts)
	counts := make([]*redis.IntCmd, parts)
	_, err := c.cfg.Redis.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range parts {
			key := deadlinesKey(t.name, int32(i))
			ranges[i] = p.ZRangeWithScores(ctx, key, 0, int64(skip+n-1))
			counts[i] = p.ZCard(ctx, key)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		c.log.Warn("console: read the deadlines from the Redis view", "saga", t.name, "err", err)
		return nil, 0, errRedis
	}
	var all []z
	var total int64
	for i := range parts {
		total += counts[i].Val()
		for _, m := range ranges[i].Val() {
			id, _ := m.Member.(string)
			all = append(all, z{id, m.Score})
		}
	}
	slices.SortFunc(all, func(a, b z) int { return cmp.Or(cmp.Compare(a.score, b.score), cmp.Compare(a.id, b.id)) })
	if skip >= len(all) {
		return nil, total, nil
	}
	all = all[skip:min(len(all), skip+n)]
	now := c.cfg.Now()
	rows := make([]flightRow, len(all))
	for i, e := range all {
		d := time.UnixMilli(int64(e.score))
		rows[i] = flightRow{ID: e.id, Deadline: d, Overdue: d.Before(now)}
	}
	if err := c.readStates(ctx, t, rows); err != nil {
		return nil, 0, err
	}
	return rows, total, nil
}
