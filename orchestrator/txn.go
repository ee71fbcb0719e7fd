package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/ctxtime"
)

// batch is the work of one transaction.
type batch struct {
	Batch
	overlay map[string]*entry // sagas changed in this batch
	loaded  map[string]*State // sagas read from Redis for this batch
	order   []string          // changed saga ids, in first-change order
	expired []expiry          // ended sagas deleted after their retention
	tombs   []*kgo.Record     // their tombstones, in the same order
	dead    []deadLetter
	// cleared lists records whose attempt counts go once committed.
	cleared []deadLetter
}

func (e *Engine) transact(runCtx context.Context, recs []*kgo.Record, due []timer, expired []expiry, stale bool) error {
	b := &batch{overlay: make(map[string]*entry), Batch: Batch{Records: len(recs)}, expired: expired}
	start := time.Now()
	phase := func(d *time.Duration) {
		now := time.Now()
		*d, start = now.Sub(start), now
	}
	// The preload's calls into Redis are bounded one by one
	// (RedisTimeout); a rebuild it runs is bounded by the transaction
	// timeout. Neither eats into the transaction's own time below.
	pctx, pcancel := context.WithTimeout(context.WithoutCancel(runCtx), e.cfg.txnTimeout)
	again := false // catchUp wants the batch consumed again
	err := e.preload(pctx, b, recs)
	if err == nil && stale {
		var ok bool
		recs, ok, err = e.catchUp(pctx, b, recs)
		again = err == nil && !ok
		b.CaughtUp = len(recs) - b.Records
		b.Records = len(recs)
	}
	pcancel()
	phase(&b.Phases.Preload)
	if err != nil || again {
		// No transaction began: the next step consumes the batch again.
		e.rearm(due, b.expired)
		return errors.Join(err, e.rewind(runCtx))
	}
	// A transaction, once begun, is finished even when Run's context is
	// cancelled: abandoning it would leave it open on the broker, and the
	// next owner of its partitions would wait for the transaction timeout
	// before it could restore them.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(runCtx), e.cfg.txnTimeout)
	defer cancel()
	if err := e.sess.Begin(); err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	e.open = true
	e.began, e.full = time.Now(), b.Records >= e.cfg.maxPoll
	// Whatever happens next ends this transaction: the session then
	// reports revocations again.
	e.revoked = false
	committed := false
	if e.tracer != nil {
		var end func(bool)
		ctx, end = e.tracer.TraceTransaction(ctx, &b.Batch)
		defer func() { end(committed) }()
	}
	var produceErr atomic.Value
	produce := func(r *kgo.Record) {
		e.sess.Produce(ctx, r, func(r *kgo.Record, err error) {
			if err != nil {
				produceErr.CompareAndSwap(nil, fmt.Errorf("produce to %s: %w", r.Topic, err))
			}
		})
	}
	for _, t := range due {
		produce(e.timeoutRecord(t))
		b.Timeouts++
	}
	for _, x := range b.expired {
		// A tombstone: the saga leaves the state topic (compaction
		// removes it) and, once committed, the Redis view.
		tomb := &kgo.Record{Topic: e.stateTopic, Partition: x.p, Key: []byte(x.id)}
		produce(tomb)
		b.tombs = append(b.tombs, tomb)
		b.Expired++
	}

	failed, failErr := e.handleAll(ctx, b, recs, produce)
	if failed == nil {
		for _, id := range b.order {
			produce(b.overlay[id].rec)
		}
	}
	phase(&b.Phases.Handle)
	if failErr == nil {
		if err := e.sess.Client().Flush(ctx); err != nil {
			failErr = fmt.Errorf("%w: flush: %w", errInfra, err)
		} else if v := produceErr.Load(); v != nil {
			failErr = fmt.Errorf("%w: %w", errInfra, v.(error))
		}
		phase(&b.Phases.Flush)
	}
	// Ending the transaction and counting a failed attempt get a context
	// of their own: the work's may have expired (saga code that used its
	// whole timeout), and an abort or a count that fails on it would leave
	// the record's failure uncounted and retried forever.
	endCtx, endCancel := context.WithTimeout(context.WithoutCancel(runCtx), e.cfg.txnTimeout)
	defer endCancel()
	var unknown error // the commit's, when its outcome is unknown
	if failErr != nil {
		if err := e.abort(runCtx); err != nil {
			// Left open: the next step aborts it (or the client's
			// producer has failed for good and Run ends). It never
			// commits, so its timers and expired sagas go back.
			e.rearm(due, b.expired)
			return err
		}
	} else {
		ok, err := e.sess.End(endCtx, kgo.TryCommit)
		phase(&b.Phases.Commit)
		if err == nil && ok {
			e.open = false
			e.afterCommit(endCtx, b)
			committed = true
			e.down.Store(false)
			return nil
		}
		if err != nil {
			// The commit's outcome is unknown: see commitUnknown.
			if _, aerr := e.sess.End(endCtx, kgo.TryAbort); aerr != nil {
				return fmt.Errorf("end transaction: %w (the abort after it failed too: %w)", err, aerr)
			}
			unknown = err
		} else {
			e.log.Info("transaction aborted (a rebalance, or the broker refused the commit); re-consuming from committed offsets")
		}
		e.open = false
	}
	// The transaction ended without a commit: the hooks hear so, and the
	// timers and expired sagas whose records it did not write go back.
	e.afterCompletion(endCtx, b, false)
	e.rearm(due, b.expired)
	switch {
	case unknown != nil:
		return e.commitUnknown(unknown)
	case failed != nil:
		return e.retryLater(endCtx, runCtx, failed, failErr)
	}
	return failErr
}

// commitUnknown recovers from a commit that failed with its outcome unknown
// (the broker went away, the request timed out). kgo keeps the session in
// the transaction and asks for a TryAbort, which fences whatever is still
// open broker-side: the transaction is then either committed or aborted
// for good, and the session re-consumes from the committed offsets.
// transact runs that abort; when it fails too, the session cannot go on:
// Run returns the error and the instance restarts. Once it succeeded, memory
// may lack the transaction's states (it committed) or not: commitUnknown
// marks every owned partition to be rebuilt from the state topic before the
// next transaction, as a restart would.
func (e *Engine) commitUnknown(err error) error {
	for p := range e.parts {
		e.stale[p] = true
	}
	e.log.Warn("the commit's outcome is unknown; aborted, rebuilding the partitions from the state topic", "err", err)
	return fmt.Errorf("%w: end transaction: %w", errInfra, err)
}

// rearm puts back timers whose Timeout messages were not committed, and
// expired sagas whose tombstones were not.
func (e *Engine) rearm(due []timer, expired []expiry) {
	e.requeueExpired(expired)
	for _, t := range due {
		e.timers.add(t)
	}
}

// rewind makes the session re-consume from the committed offsets: the
// polled records were not handled. It must succeed before the next poll,
// or the next commit would pass over them: see abort.
func (e *Engine) rewind(runCtx context.Context) error {
	e.revoked = false
	if !e.open {
		if err := e.sess.Begin(); err != nil {
			return fmt.Errorf("%w: begin transaction to rewind: %w", errInfra, err)
		}
		e.open = true
	}
	return e.abort(runCtx)
}

// abort ends the open transaction with an abort, which also sets the
// session back to the committed offsets. Each try gets a fresh context: one
// that a hung dependency let expire must not leave the transaction open (the
// next Begin would fail and end the engine) or the polled records consumed
// (the next commit would pass over them). When the tries fail, the
// transaction stays open and the loop's next step aborts it first.
func (e *Engine) abort(runCtx context.Context) error {
	var err error
	for try := 1; try <= 3; try++ {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(runCtx), e.cfg.txnTimeout)
		_, err = e.sess.End(ctx, kgo.TryAbort)
		cancel()
		if err == nil {
			e.open = false
			return nil
		}
		if runCtx.Err() != nil {
			break
		}
		ctxtime.Sleep(runCtx, e.cfg.infraBackoff.Backoff(try+1))
	}
	return fmt.Errorf("%w: abort transaction: %w", errInfra, err)
}

// preload reads from Redis, in one round trip, the sagas of the batch that
// are not in memory, each partition's with a check that Redis did not go
// back in time since the engine last wrote it. A partition that did is
// restored from the state topic first.
func (e *Engine) preload(ctx context.Context, b *batch, recs []*kgo.Record) error {
	seen := make(map[string]bool)
	byPart := make(map[int32]*read)
	var reads []read
	for _, r := range recs {
		part := e.parts[r.Partition]
		if part == nil {
			return fmt.Errorf("%w: partition %d is not restored", errInfra, r.Partition)
		}
		id := string(r.Key)
		if id == "" || seen[id] {
			continue
		}
		if _, off := e.misplaced(r); off {
			// Moved to its home partition, not handled here: its saga's
			// state lives under the home partition's keys and is loaded
			// with the record that is handled there, in a later batch
			// or further on in this one.
			continue
		}
		seen[id] = true
		if _, ok := e.sagas[id]; ok {
			continue
		}
		if _, ok := b.loaded[id]; ok {
			continue
		}
		rd := byPart[r.Partition]
		if rd == nil {
			rd = &read{p: r.Partition, expect: part.checkpoint}
			byPart[r.Partition] = rd
		}
		rd.ids = append(rd.ids, id)
	}
	if len(byPart) == 0 {
		return nil
	}
	for _, rd := range byPart {
		reads = append(reads, *rd)
	}
	got, err := e.store.get(ctx, reads)
	if err != nil {
		return err
	}
	if len(got.lost) > 0 {
		for _, p := range got.lost {
			e.lost[p] = true
		}
		if err := e.rebuildLost(ctx); err != nil {
			return fmt.Errorf("%w: %w", errInfra, err)
		}
		return e.preload(ctx, b, recs)
	}
	if err := e.readBackLost(ctx, b, reads, got.states); err != nil {
		return err
	}
	if b.loaded == nil {
		b.loaded = got.states
	} else {
		maps.Copy(b.loaded, got.states)
	}
	return nil
}

// readBackLost reads back from the state topic the sagas of reads that
// Redis did not return although the state topic holds them (Redis lost
// their keys: an eviction, a DEL), adds them to states and queues them to
// be written to Redis again.
func (e *Engine) readBackLost(ctx context.Context, b *batch, reads []read, states map[string]*State) error {
	for _, rd := range reads {
		part := e.parts[rd.p]
		var missing []string
		for _, id := range rd.ids {
			if _, ok := states[id]; ok {
				continue
			}
			if _, ok := part.index.sagas[id]; ok {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			continue
		}
		back, err := e.readBack(ctx, rd.p, missing, part.index)
		if err != nil {
			return fmt.Errorf("%w: read back the states redis lost: %w", errInfra, err)
		}
		if len(back) < len(missing) {
			return fmt.Errorf("%w: read back %d of the %d states redis lost in partition %d", errInfra, len(back), len(missing), rd.p)
		}
		for id, w := range back {
			states[id] = w.state
			part.pending = append(part.pending, w)
		}
		e.notePending()
		b.ReadBack += len(back)
		e.log.Warn("redis lost saga states that the state topic holds; read them back", "partition", rd.p, "sagas", len(back), "first", missing[0])
	}
	return nil
}

// msgRebuiltMidBatch is logged when a batch is consumed again because a
// partition was rebuilt while it was read.
const msgRebuiltMidBatch = "a partition was rebuilt while a batch was read; consuming the batch again"

// catchUp adds to a batch the records committed while the last transaction
// ran. kgo keeps one fetch per broker buffered and sends the next only once
// the buffered one is polled: the records of a poll that found them waiting
// were fetched early in the last transaction, and those committed later are
// fetched only now. Without catchUp they would wait for the transaction
// after this one, and each hop through the engine would cost about one
// transaction more. The fetch that the poll started has usually come back
// during the preload, so catchUp takes it with a short wait, preloads its
// sagas and returns the batch with its records. It reports false when the
// batch must be consumed again: the poll brought an assignment change, to
// be applied first, or its preload rebuilt a partition (see below).
func (e *Engine) catchUp(ctx context.Context, b *batch, recs []*kgo.Record) ([]*kgo.Record, bool, error) {
	wctx, cancel := context.WithTimeout(ctx, catchUpWait)
	fetches := e.sess.PollRecords(wctx, e.cfg.maxPoll-len(recs))
	cancel()
	e.polled = time.Now()
	var more []*kgo.Record
	fetches.EachRecord(func(r *kgo.Record) { more = append(more, r) })
	if len(more) == 0 {
		return recs, true, nil
	}
	e.mu.Lock()
	changed := len(e.changes) > 0
	e.mu.Unlock()
	if changed {
		return recs, false, nil
	}
	rebuilds := e.rebuilds
	if err := e.preload(ctx, b, more); err != nil {
		return recs, true, err
	}
	if e.rebuilds != rebuilds {
		// The preload rebuilt a partition that Redis lost or took back
		// in time. A rebuild replaces the partition's sagas in memory
		// with a replay from Redis's checkpoint: sagas that the first
		// preload found in memory, and so did not load, may have left
		// it (a running saga whose state Redis holds, an ended one a
		// write taken in on the way let go). Their records would find
		// no saga. The batch is consumed again, with one preload over
		// all of it.
		e.log.Info(msgRebuiltMidBatch, "records", len(recs)+len(more))
		return recs, false, nil
	}
	return append(recs, more...), true, nil
}

// afterCommit moves the batch's states into memory, runs the after-commit
// hooks, brings Redis up to date and runs the after-completion hooks.
func (e *Engine) afterCommit(ctx context.Context, b *batch) {
	e.flightMu.Lock()
	for _, id := range b.order {
		ent := b.overlay[id]
		e.sagas[id] = ent
		part := e.parts[ent.partition]
		if part == nil { // revoked meanwhile: the new owner replays it
			delete(e.sagas, id)
			delete(e.flight, id)
			continue
		}
		e.fly(ent.partition, ent.state)
		e.notePending()
		part.pending = append(part.pending, write{partition: ent.partition, offset: ent.rec.Offset, state: ent.state, raw: ent.raw})
		part.index.set(id, ent.rec.Offset, ent.state, false)
		ent.rec = nil // kept in memory: only its offset was needed
		if st := ent.state; !st.Terminal() && st.Deadline > 0 {
			e.timers.add(timer{deadline: st.Deadline, sagaID: id, waiting: st.Waiting, attempt: st.Attempt, partition: ent.partition})
		} else {
			e.timers.remove(id)
		}
	}
	for i, x := range b.expired {
		e.forget(x, b.tombs[i].Offset)
	}
	e.flightMu.Unlock()
	for _, d := range append(b.dead, b.cleared...) {
		if part := e.parts[d.p]; part != nil {
			if _, ok := part.attempts[d.offset]; ok {
				part.cleared = append(part.cleared, d.offset)
			}
		}
	}
	for _, h := range e.cfg.hooks {
		if h, ok := h.(HookAfterCommit); ok {
			h.AfterCommit(ctx, &b.Batch)
		}
	}
	e.finishRedisWrite(false)
	e.startRedisWrite()
	e.afterCompletion(ctx, b, true)
}

func (e *Engine) afterCompletion(ctx context.Context, b *batch, committed bool) {
	for _, h := range e.cfg.hooks {
		if h, ok := h.(HookAfterCompletion); ok {
			h.AfterCompletion(ctx, &b.Batch, committed)
		}
	}
}
