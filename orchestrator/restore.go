package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ksaga/ksaga/internal/ctxtime"
	"github.com/ksaga/ksaga/saga"
)

// applyChanges applies the partition assignments and revocations that the
// group reported, in order. A newly assigned partition is restored before
// any of its records is handled.
func (e *Engine) applyChanges(ctx context.Context) error {
	e.mu.Lock()
	changes := e.changes
	e.changes = nil
	e.mu.Unlock()
	for i, c := range changes {
		if !c.assigned {
			e.drop(ctx, c.p)
			// The session reports one revocation per transaction: until
			// End, it swallows the next one (kgo's GroupTransactSession
			// returns early from its revoke and lost callbacks while the
			// first is pending). An idle engine ends an empty
			// transaction after the poll so that it hears the next.
			e.revoked = true
			continue
		}
		e.ready.Store(false)
		if err := e.restore(ctx, c.p); err != nil {
			// Keep the rest for the next try, ahead of newer changes.
			e.mu.Lock()
			e.changes = append(append([]assignment(nil), changes[i:]...), e.changes...)
			e.mu.Unlock()
			if errors.Is(err, saga.ErrVersionNotHosted) {
				e.log.Error(err.Error())
				return err // not a dependency's failure: Run ends
			}
			return fmt.Errorf("%w: restore partition %d: %w", errInfra, c.p, err)
		}
	}
	e.ready.Store(e.joined.Load())
	return nil
}

// drop forgets a partition the engine no longer owns, after one last try to
// bring Redis up to date with it.
func (e *Engine) drop(ctx context.Context, p int32) {
	part, ok := e.parts[p]
	if !ok {
		return
	}
	// One last try to bring Redis up to date with it: its next owner
	// then replays less.
	if len(part.pending) > 0 || len(part.cleared) > 0 || e.writing != nil {
		e.flushRedis()
	}
	delete(e.parts, p)
	delete(e.lost, p)
	delete(e.stale, p)
	for id, ent := range e.sagas {
		if ent.partition == p {
			delete(e.sagas, id)
		}
	}
	e.landAll(p)
	e.timers.removePartition(p)
	e.log.Info("partition revoked", "partition", p)
}

// restore replays partition p of the state topic into memory, from the Redis
// checkpoint (from the start when Redis has none) to the end, once no
// transaction is open on it, and arms the deadlines of its running sagas.
// Committed states that Redis lacks stay in memory until Redis acknowledges
// them. It is also how the engine rebuilds a partition's view after Redis
// lost data or went back in time: whatever Redis came back with is a prefix
// of the state topic up to its checkpoint (see store), and the replay
// supplies the rest.
func (e *Engine) restore(ctx context.Context, p int32) error {
	start := time.Now()
	// A write in progress may move p's checkpoint: take it in first.
	e.finishRedisWrite(true)
	delete(e.lost, p)
	from, err := e.store.readCheckpoint(ctx, p)
	if err != nil {
		return err
	}
	attempts, err := e.store.attempts(ctx, p)
	if err != nil {
		return err
	}
	end, err := e.stableEnd(ctx, p)
	if err != nil {
		return err
	}
	// The index of what the state topic holds before the checkpoint is
	// read once, when the partition is assigned; a rebuild keeps it (it
	// follows the state topic, not Redis) and refreshes it from the
	// replay.
	var index *sagaIndex
	if old := e.parts[p]; old != nil && old.index != nil {
		index = old.index
	} else if index, err = e.scanIndex(ctx, p, from); err != nil {
		return err
	}
	replayed, err := e.replay(ctx, p, from, end)
	if err != nil {
		return err
	}
	for id, ent := range e.sagas {
		if ent.partition == p {
			delete(e.sagas, id)
		}
	}
	e.timers.removePartition(p)
	part := &partition{checkpoint: from, attempts: attempts, index: index}
	seen := make(map[string]bool, len(replayed))
	for _, w := range replayed {
		seen[w.state.ID] = true
		index.set(w.state.ID, w.offset, w.state, w.deleted)
		if w.deleted {
			// A tombstone: the saga was deleted from the state topic.
			part.pending = append(part.pending, w)
			continue
		}
		ent := e.entryOf(w.state, p)
		ent.raw = w.raw
		e.sagas[w.state.ID] = ent
		part.pending = append(part.pending, w)
		if st := w.state; !st.Terminal() && st.Deadline > 0 {
			e.timers.add(timer{deadline: st.Deadline, sagaID: st.ID, waiting: st.Waiting, attempt: st.Attempt, partition: p})
		}
	}
	index.sortEnded()
	if err := e.checkVersions(p, index); err != nil {
		return err
	}
	// The deadlines of running sagas that are not in memory come from the
	// index: Redis's deadline index may have lost them.
	var others []string
	for id, ent := range index.sagas {
		if ent.ended == 0 && !seen[id] {
			if ent.deadline > 0 {
				e.timers.add(timer{deadline: ent.deadline, sagaID: id, partition: p})
			}
			others = append(others, id)
		}
	}
	e.indexFlight(ctx, p, replayed, others, from)
	e.parts[p] = part
	e.rebuilds++
	e.repairSoon = true // what did Redis lose before? (repair.go)
	delete(e.stale, p)
	if len(part.pending) > 0 {
		e.notePending()
	}
	e.startRedisWrite()
	e.log.Info("partition restored", "partition", p, "from", from, "to", end, "states", len(replayed), "sagas", len(index.sagas), "took", time.Since(start))
	return nil
}

// replay reads partition p of the state topic from offset from to end with
// read_committed, and returns the last state of each saga in offset order.
func (e *Engine) replay(ctx context.Context, p int32, from, end int64) ([]write, error) {
	latest := make(map[string]int)
	var out []write
	err := e.readState(ctx, p, from, end, func(r *kgo.Record) {
		var w write
		if r.Value == nil {
			// A tombstone deletes the saga's state from the view.
			w = write{partition: p, offset: r.Offset, state: &State{ID: string(r.Key)}, deleted: true}
		} else {
			st := new(State)
			if err := json.Unmarshal(r.Value, st); err != nil {
				e.log.Error("skipping undecodable state record", "partition", p, "offset", r.Offset, "err", err)
				return
			}
			w = write{partition: p, offset: r.Offset, state: st, raw: r.Value}
		}
		if i, ok := latest[w.state.ID]; ok {
			out[i].state = nil // superseded
		}
		latest[w.state.ID] = len(out)
		out = append(out, w)
	})
	if err != nil {
		return nil, err
	}
	kept := out[:0]
	for _, w := range out {
		if w.state != nil {
			kept = append(kept, w)
		}
	}
	return kept, nil
}

// stableEnd returns the end offset of partition p of the state topic once no
// transaction is open on it (last stable offset = high watermark). A
// transaction still open there was started by an earlier owner; it either
// commits (its states must be replayed) or aborts within the transaction
// timeout.
func (e *Engine) stableEnd(ctx context.Context, p int32) (int64, error) {
	deadline := time.Now().Add(2*e.cfg.txnTimeout + 10*time.Second)
	for {
		lso, err := e.listOffset(ctx, p, 1)
		if err != nil {
			return 0, err
		}
		hwm, err := e.listOffset(ctx, p, 0)
		if err != nil {
			return 0, err
		}
		if lso >= hwm {
			return hwm, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("state partition %d keeps an open transaction (stable offset %d, end %d)", p, lso, hwm)
		}
		ctxtime.Sleep(ctx, 100*time.Millisecond)
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
}

// listOffset returns the end offset of a state partition at an isolation
// level: 0 the high watermark, 1 the last stable offset.
func (e *Engine) listOffset(ctx context.Context, p int32, isolation int8) (int64, error) {
	req := kmsg.NewPtrListOffsetsRequest()
	req.IsolationLevel = isolation
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = e.stateTopic
	rp := kmsg.NewListOffsetsRequestTopicPartition()
	rp.Partition = p
	rp.Timestamp = -1
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, e.sess.Client())
	if err != nil {
		return 0, fmt.Errorf("list offsets of %s[%d]: %w", e.stateTopic, p, err)
	}
	for _, t := range resp.Topics {
		for _, rp := range t.Partitions {
			if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
				return 0, fmt.Errorf("list offsets of %s[%d]: %w", e.stateTopic, p, err)
			}
			return rp.Offset, nil
		}
	}
	return 0, fmt.Errorf("list offsets of %s[%d]: partition missing from the response", e.stateTopic, p)
}
