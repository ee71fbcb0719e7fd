package orchestrator

import (
	"slices"
	"time"
)

// Retention: an ended saga stays in the Redis view and the state topic for
// the engine's retention (Retention, 7 days by default), measured from when
// it ended, so that a late duplicate of its start request, a late reply or
// an operator's look find it. Then a tombstone on the state topic, in a
// transaction like every other change, deletes it there (compaction removes
// the record) and, once committed, from Redis. Its id is free again: a start
// request for it starts a new saga, and a reply or a Compensate for it is
// dead-lettered as unknown-saga. The view's size is bounded by the sagas
// that run and those that ended within the retention.

// expiry is an ended saga whose retention has passed.
type expiry struct {
	p  int32
	id string
}

const (
	// maxExpiredPerBatch bounds the tombstones of one transaction.
	maxExpiredPerBatch = 1000
	// expirySweep is how often the engine looks for expired sagas when
	// the last look found fewer than maxExpiredPerBatch.
	expirySweep = time.Second
)

// dueExpiries returns the ended sagas of the owned partitions whose
// retention has passed, at most maxExpiredPerBatch.
func (e *Engine) dueExpiries(now time.Time) []expiry {
	if e.cfg.retention <= 0 || (now.Sub(e.swept) < expirySweep && !e.sweepFull) {
		return nil
	}
	e.swept = now
	cutoff := now.Add(-e.cfg.retention).UnixMilli()
	var out []expiry
	for p, part := range e.parts {
		if part.index == nil {
			continue
		}
		for _, id := range part.index.expired(cutoff, maxExpiredPerBatch-len(out)) {
			out = append(out, expiry{p: p, id: id})
		}
		if len(out) >= maxExpiredPerBatch {
			break
		}
	}
	e.sweepFull = len(out) >= maxExpiredPerBatch
	return out
}

// requeueExpired puts back expired sagas whose tombstones were not
// committed, ahead of the rest.
func (e *Engine) requeueExpired(xs []expiry) {
	byPart := make(map[int32][]expiring)
	for _, x := range xs {
		part := e.parts[x.p]
		if part == nil || part.index == nil {
			continue // revoked meanwhile: its next owner finds it
		}
		if ent, ok := part.index.sagas[x.id]; ok && ent.ended > 0 {
			byPart[x.p] = append(byPart[x.p], expiring{id: x.id, ended: ent.ended})
		}
	}
	for p, back := range byPart {
		x := e.parts[p].index
		x.ended = slices.Insert(x.ended, x.head, back...)
	}
}

// forget removes an expired saga, whose tombstone at offset committed, from
// memory and the index, and queues the deletion of its Redis key.
func (e *Engine) forget(x expiry, offset int64) {
	part := e.parts[x.p]
	if part == nil {
		return // revoked meanwhile: the new owner replays the tombstone
	}
	part.index.set(x.id, offset, nil, true)
	delete(e.sagas, x.id)
	delete(e.flight, x.id)
	e.timers.remove(x.id)
	e.notePending()
	part.pending = append(part.pending, write{partition: x.p, offset: offset, state: &State{ID: x.id}, deleted: true})
}
