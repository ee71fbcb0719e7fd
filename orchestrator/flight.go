package orchestrator

import (
	"context"
	"time"

	"github.com/ksaga/ksaga/message"
)

// DeadLetterReasons lists every reason the engine dead-letters an inbox
// record with (the Reason* constants), for metrics that start each at zero.
func DeadLetterReasons() []string {
	return []string{
		ReasonUndecodable, ReasonMissingSagaID, ReasonUnknownType, ReasonUnknownSaga,
		ReasonNotWaiting, ReasonConflictingStart, ReasonTooLarge, ReasonInvalid,
		ReasonExhausted, ReasonPermanent, ReasonCompensation,
	}
}

// DropReasons lists every reason the engine drops a duplicate or stale
// inbox record with (the Drop* constants).
func DropReasons() []string {
	return []string{DropDuplicateStart, DropStaleReply, DropStaleTimeout, DropEnded, DropNotParked}
}

// StepFlight is what InFlight reports for one step of the saga, or for its
// compensation.
type StepFlight struct {
	// Step names the step; Compensating is set for the sagas that
	// compensate it.
	Step         string
	Compensating bool
	// Parked is set for the sagas parked at the step (saga.Step.Park):
	// they wait for an operator, with no Budget.
	Parked bool
	// Sagas counts the running sagas that wait on the step.
	Sagas int
	// Oldest is when the longest-waiting of them entered the step
	// (State.StepStarted); zero when Sagas is 0.
	Oldest time.Time
	// Budget is how long a saga may stay in the step before the engine
	// acts on its own: the step's Deadline times its attempts, for a
	// compensation the compensation policy's attempts times its reply
	// deadline and the longest backoff between failed attempts. A saga
	// older than that is stuck: its deadline did not fire.
	Budget time.Duration
}

// flying is a running saga in the in-flight index.
type flying struct {
	p       int32
	version int
	step    int
	undo    bool
	parked  bool
	since   int64 // Unix ms
}

// InFlight returns the running sagas of the partitions this instance owns,
// per step and per compensation, one entry for each step that a saga can
// wait on (participant steps, and the compensation of every step that has
// one), in step order, with Sagas 0 where none waits. Sagas of a partition
// are counted once it is restored. It is safe to call from any goroutine.
func (e *Engine) InFlight() []StepFlight {
	steps := e.m.steps
	do := make([]StepFlight, len(steps))
	undo := make([]StepFlight, len(steps))
	parked := make([]StepFlight, len(steps))
	for i, s := range steps {
		do[i] = StepFlight{Step: s.Name, Budget: s.Deadline * time.Duration(s.Retry.Attempts())}
		comp := e.m.compOf(i)
		per := undoBackoff.MaxInterval
		if !s.Local {
			per += comp.ReplyDeadline()
		}
		undo[i] = StepFlight{Step: s.Name, Compensating: true, Budget: per * time.Duration(comp.Attempts())}
		parked[i] = StepFlight{Step: s.Name, Parked: true}
	}
	e.flightMu.Lock()
	for _, f := range e.flight {
		i := e.newestStep(f)
		if i < 0 || i >= len(steps) {
			continue
		}
		sf := &do[i]
		switch {
		case f.parked:
			sf = &parked[i]
		case f.undo:
			sf = &undo[i]
		}
		sf.Sagas++
		if t := time.UnixMilli(f.since); sf.Oldest.IsZero() || t.Before(sf.Oldest) {
			sf.Oldest = t
		}
	}
	e.flightMu.Unlock()
	out := make([]StepFlight, 0, 2*len(steps))
	for i, s := range steps {
		if !s.Local || do[i].Sagas > 0 {
			out = append(out, do[i])
		}
	}
	for i := len(steps) - 1; i >= 0; i-- {
		if steps[i].Undoable || undo[i].Sagas > 0 {
			out = append(out, undo[i])
		}
	}
	for i, s := range steps {
		if s.Park || parked[i].Sagas > 0 {
			out = append(out, parked[i])
		}
	}
	return out
}

// newestStep returns the index in the newest definition of the step f
// waits on: a saga of an older version is counted under its step's name.
// It is -1 for a step the newest version no longer has.
func (e *Engine) newestStep(f flying) int {
	if f.version == e.m.version {
		return f.step
	}
	m := e.vs.byV[f.version]
	if m == nil {
		m = e.vs.old[f.version]
	}
	if m == nil || f.step < 0 || f.step >= len(m.steps) {
		return -1
	}
	return e.m.def.StepIndex(m.steps[f.step].Name)
}

// fly puts a saga's state into the in-flight index: a running one is
// indexed, an ended one leaves it. The caller holds flightMu.
func (e *Engine) fly(p int32, st *State) {
	if st.Terminal() {
		delete(e.flight, st.ID)
		return
	}
	e.flight[st.ID] = flying{p: p, version: st.OnVersion(), step: stepOf(st), undo: st.Undoing >= 0, parked: st.Status == message.StatusParked, since: st.StepStarted}
}

// landAll removes partition p's sagas from the in-flight index.
func (e *Engine) landAll(p int32) {
	e.flightMu.Lock()
	defer e.flightMu.Unlock()
	for id, f := range e.flight {
		if f.p == p {
			delete(e.flight, id)
		}
	}
}

// flightLoadBatch bounds the states read in one round trip when a restored
// partition's in-flight sagas are indexed.
const flightLoadBatch = 500

// indexFlight indexes the running sagas of a restored partition p: those
// replayed from the state topic and those Redis's deadline index lists,
// whose states it reads from Redis. It is best effort: the in-flight index
// only feeds metrics, and a saga it misses is indexed when it next changes.
func (e *Engine) indexFlight(ctx context.Context, p int32, replayed []write, others []string, checkpoint int64) {
	var loaded []*State
	for start := 0; start < len(others); start += flightLoadBatch {
		ids := others[start:min(start+flightLoadBatch, len(others))]
		got, err := e.store.get(ctx, []read{{p: p, expect: checkpoint, ids: ids}})
		if err != nil || len(got.lost) > 0 {
			e.log.Warn("cannot read the running sagas of a restored partition; sagas_in_flight undercounts them until they change", "partition", p, "err", err)
			break
		}
		for _, id := range ids {
			if st, ok := got.states[id]; ok {
				loaded = append(loaded, st)
			}
		}
	}
	e.flightMu.Lock()
	defer e.flightMu.Unlock()
	for id, f := range e.flight {
		if f.p == p {
			delete(e.flight, id)
		}
	}
	for _, st := range loaded {
		e.fly(p, st)
	}
	for _, w := range replayed {
		if !w.deleted {
			e.fly(p, w.state)
		}
	}
}
