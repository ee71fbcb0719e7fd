package orchestrator

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// The engine brings Redis up to date after each commit without waiting for
// it: one write at a time runs on a goroutine of its own while the loop
// begins the next transaction. The ordering the replay relies on holds:
// a write carries only committed states, and each partition's states,
// deadline entries and checkpoint go in one script (see writePartition), so
// the checkpoint never passes a state that is not written. Until Redis
// acknowledges a saga's last state the saga stays in memory, so a batch
// never reads an older state from Redis than the one it committed. All the
// bookkeeping (pending states, checkpoints, what leaves memory) is done by
// the loop goroutine; the writer only runs store.put.

// redisWrite is a write of committed states to Redis in progress.
type redisWrite struct {
	fs []flush
	// states counts the states it carries; since is when the oldest of
	// them was committed.
	states int
	since  time.Time
	done   chan redisWritten
}

type redisWritten struct {
	lost []int32
	err  error
}

// startRedisWrite hands every partition's pending states and cleared
// attempt counts to a new write, unless one is in progress: what is
// committed meanwhile waits for the next.
func (e *Engine) startRedisWrite() {
	if e.writing != nil {
		return
	}
	var fs []flush
	n := 0
	for p, part := range e.parts {
		if len(part.pending) == 0 && len(part.cleared) == 0 {
			continue
		}
		f := flush{p: p, expect: part.checkpoint, states: part.pending, cleared: part.cleared}
		for _, w := range part.pending {
			// States read back after Redis lost them come with older
			// offsets than the rest.
			f.checkpoint = max(f.checkpoint, w.offset+1)
		}
		// The write owns these slices now; the loop appends to new ones.
		part.pending, part.cleared = nil, nil
		fs = append(fs, f)
		n += len(f.states)
	}
	if len(fs) == 0 {
		return
	}
	w := &redisWrite{fs: fs, states: n, since: e.pendingSince, done: make(chan redisWritten, 1)}
	e.pendingSince = time.Time{}
	e.writing = w
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), e.cfg.txnTimeout)
		defer cancel()
		lost, err := e.store.put(ctx, fs)
		w.done <- redisWritten{lost: lost, err: err}
	}()
}

// finishRedisWrite takes in the outcome of the write in progress, if any,
// waiting for it when wait is set. It reports whether no write is in
// progress any more. Written states leave their partition's pending list
// (ended sagas leave memory) and the checkpoints move; after a failure the
// states go back ahead of those committed since, for the next write; a
// partition whose checkpoint Redis no longer holds is marked lost, to be
// rebuilt by the loop (rebuildLost).
func (e *Engine) finishRedisWrite(wait bool) bool {
	w := e.writing
	if w == nil {
		return true
	}
	var res redisWritten
	if wait {
		res = <-w.done
	} else {
		select {
		case res = <-w.done:
		default:
			return false
		}
	}
	e.writing = nil
	if res.err != nil {
		for _, f := range w.fs {
			if part := e.parts[f.p]; part != nil {
				part.pending = slices.Concat(f.states, part.pending)
				part.cleared = slices.Concat(f.cleared, part.cleared)
			}
		}
		if e.pendingSince.IsZero() || (!w.since.IsZero() && w.since.Before(e.pendingSince)) {
			e.pendingSince = w.since
		}
		e.log.Warn("redis write failed; states stay in memory until it is back", "pending", e.pendingStates(), "err", res.err)
		e.down.Store(true)
		e.reportRedisLag(res.err)
		return true
	}
	for _, f := range w.fs {
		part := e.parts[f.p]
		if part == nil {
			continue
		}
		if slices.Contains(res.lost, f.p) {
			// Nothing of this partition was written; its rebuild replays
			// these states from the state topic.
			e.lost[f.p] = true
			continue
		}
		for _, o := range f.cleared {
			delete(part.attempts, o)
		}
		part.checkpoint = max(part.checkpoint, f.checkpoint)
		for _, st := range f.states {
			// An ended saga leaves memory once Redis holds its last state.
			if ent, ok := e.sagas[st.state.ID]; ok && ent.state.Version == st.state.Version && ent.state.Terminal() {
				delete(e.sagas, st.state.ID)
			}
		}
	}
	e.reportRedisLag(nil)
	return true
}

// flushRedis writes everything pending to Redis and waits for it: after
// the write in progress, one more with what is left.
func (e *Engine) flushRedis() {
	e.finishRedisWrite(true)
	e.startRedisWrite()
	e.finishRedisWrite(true)
}

// pendingStates counts the committed states Redis has not acknowledged.
func (e *Engine) pendingStates() int {
	n := 0
	for _, part := range e.parts {
		n += len(part.pending)
	}
	if e.writing != nil {
		n += e.writing.states
	}
	return n
}

// reportRedisLag tells the HookRedisLag hooks how far Redis is behind.
func (e *Engine) reportRedisLag(err error) {
	var oldest time.Time
	if e.writing != nil {
		oldest = e.writing.since
	}
	if oldest.IsZero() || (!e.pendingSince.IsZero() && e.pendingSince.Before(oldest)) {
		oldest = e.pendingSince
	}
	n := e.pendingStates()
	if n == 0 {
		oldest = time.Time{}
	}
	for _, h := range e.cfg.hooks {
		if h, ok := h.(HookRedisLag); ok {
			h.OnRedisLag(n, oldest, err)
		}
	}
}

// notePending records that committed states wait for Redis from now on,
// unless older ones already do.
func (e *Engine) notePending() {
	if e.pendingSince.IsZero() {
		e.pendingSince = e.cfg.now()
	}
}

// rebuildLost rebuilds, from the state topic, the view of each partition
// whose checkpoint Redis no longer holds (Redis lost data or went back in
// time). It runs at the loop's level, between transactions; a rebuild that
// fails stays marked and is tried again.
func (e *Engine) rebuildLost(ctx context.Context) error {
	for len(e.lost) > 0 {
		var p int32
		for p = range e.lost {
			break
		}
		delete(e.lost, p)
		if e.parts[p] == nil {
			continue // revoked meanwhile: its next owner restores it
		}
		e.log.Warn("redis lost data or went back in time; rebuilding its view from the state topic", "partition", p)
		if err := e.restore(ctx, p); err != nil {
			e.lost[p] = true
			return err
		}
	}
	return nil
}

// rebuildStale rebuilds, from the state topic, each partition whose memory
// may be behind it (see commitUnknown). No transaction runs until it has
// succeeded: it returns an infrastructure error to retry after a backoff.
func (e *Engine) rebuildStale(ctx context.Context) error {
	for len(e.stale) > 0 {
		var p int32
		for p = range e.stale {
			break
		}
		if e.parts[p] == nil {
			delete(e.stale, p) // revoked meanwhile: its next owner restores it
			continue
		}
		if err := e.restore(ctx, p); err != nil {
			return fmt.Errorf("%w: rebuild partition %d after a commit with an unknown outcome: %w", errInfra, p, err)
		}
	}
	return nil
}

// redisCheckInterval is how often an idle engine checks that Redis still
// holds its checkpoints.
const redisCheckInterval = time.Second

// maintainRedis takes in a finished write, rebuilds lost partitions, starts
// a write of what is pending (retrying one that failed) and, once a second
// while nothing is being written, checks that Redis did not lose data or go
// back in time while the engine had nothing to write (a FLUSHALL, a restart
// from an older snapshot, a failover to a lagging or empty replica): such a
// partition is rebuilt from the state topic.
func (e *Engine) maintainRedis(ctx context.Context) {
	e.finishRedisWrite(false)
	if err := e.rebuildLost(ctx); err != nil {
		e.log.Warn("rebuild failed; will retry", "err", err)
		return
	}
	e.repairView(ctx)
	if e.writing != nil {
		return
	}
	for _, part := range e.parts {
		if len(part.pending) > 0 || len(part.cleared) > 0 {
			e.startRedisWrite()
			return
		}
	}
	if time.Since(e.redisChecked) < redisCheckInterval {
		return
	}
	e.redisChecked = time.Now()
	var ps []int32
	for p, part := range e.parts {
		if part.checkpoint > 0 {
			ps = append(ps, p)
		}
	}
	if len(ps) == 0 {
		return
	}
	got, err := e.store.checkpoints(ctx, ps)
	if err != nil {
		e.log.Warn("redis check failed", "err", err)
		e.down.Store(true)
		e.reportRedisLag(err)
		return
	}
	e.down.Store(false)
	for i, p := range ps {
		if got[i] < e.parts[p].checkpoint {
			e.log.Warn("redis checkpoint is behind the engine's", "partition", p, "checkpoint", got[i], "expected", e.parts[p].checkpoint)
			e.lost[p] = true
		}
	}
	if err := e.rebuildLost(ctx); err != nil {
		e.log.Warn("rebuild failed; will retry", "err", err)
	}
}
