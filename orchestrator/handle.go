package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/retry"
)

// maxParallelSagas bounds the sagas of a batch handled at once.
const maxParallelSagas = 16

// handling is one inbox record on its way through the engine: the record,
// the batch it is handled in, its decoded input (nil until it is decoded)
// and where the records it writes go. It lives for one record.
type handling struct {
	e       *Engine
	b       *batch
	r       *kgo.Record
	in      *input
	produce func(*kgo.Record)
}

// group is the records of one saga in a batch.
type group struct {
	recs []*kgo.Record
	sub  *batch
	out  []*kgo.Record
}

// handleAll applies a batch's records. A record that arrived off its saga's
// home partition is moved there first (see forward). Sagas are independent,
// so each saga's records are handled in order by a goroutine of its own,
// while different sagas run in parallel: a local step's I/O (the orders
// store) then costs about one round trip per batch rather than one per
// saga. The results are merged, and their records produced, in the order of
// the batch. It returns the record whose failure aborts the transaction, if
// any; the first failure cancels the sagas still running.
func (e *Engine) handleAll(ctx context.Context, b *batch, recs []*kgo.Record, produce func(*kgo.Record)) (*kgo.Record, error) {
	var groups []*group
	byID := make(map[string]*group)
	for _, r := range recs {
		h := handling{e: e, b: b, r: r, produce: produce}
		if h.forward(ctx) {
			continue
		}
		id := string(r.Key)
		g := byID[id]
		if g == nil || id == "" {
			g = &group{sub: &batch{overlay: make(map[string]*entry, 1), loaded: b.loaded}}
			groups = append(groups, g)
			byID[id] = g
		}
		g.recs = append(g.recs, r)
	}
	gctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		failOnce sync.Once
		failed   *kgo.Record
		failErr  error
		next     atomic.Int64
	)
	// work handles groups, taken in batch order, until none is left or a
	// failure cancelled the batch. The engine's long-lived workers run it:
	// a goroutine per saga, or per batch, cost a stack and its growth
	// (saga code and its I/O run deep) again and again.
	work := func() {
		for {
			i := int(next.Add(1)) - 1
			if i >= len(groups) || gctx.Err() != nil {
				return
			}
			g := groups[i]
			for _, r := range g.recs {
				if gctx.Err() != nil {
					return
				}
				h := handling{e: e, b: g.sub, r: r, produce: func(r *kgo.Record) { g.out = append(g.out, r) }}
				if err := h.handle(gctx); err != nil {
					// Only the first failure counts against its
					// record: the others may be this cancellation.
					failOnce.Do(func() { failed, failErr = r, err; cancel() })
					return
				}
			}
		}
	}
	if workers := min(maxParallelSagas, len(groups)); workers <= 1 {
		work() // one saga: no hand-over on the latency path
	} else {
		if e.workers == nil {
			e.workers = newWorkers(maxParallelSagas)
		}
		for range workers {
			wg.Add(1)
			e.workers.run(func() {
				defer wg.Done()
				work()
			})
		}
	}
	wg.Wait()
	if failed != nil {
		return failed, failErr
	}
	for _, g := range groups {
		sub := g.sub
		b.Events = append(b.Events, sub.Events...)
		b.StepLatencies = append(b.StepLatencies, sub.StepLatencies...)
		b.DeadLettered = append(b.DeadLettered, sub.DeadLettered...)
		b.UndoLocalFailures = append(b.UndoLocalFailures, sub.UndoLocalFailures...)
		b.Dropped = append(b.Dropped, sub.Dropped...)
		b.Changes = append(b.Changes, sub.Changes...)
		b.dead = append(b.dead, sub.dead...)
		b.cleared = append(b.cleared, sub.cleared...)
		for _, id := range sub.order {
			b.order = append(b.order, id)
			b.overlay[id] = sub.overlay[id]
		}
		for _, r := range g.out {
			produce(r)
		}
	}
	return nil, nil
}

// forward moves h.r to its saga's home partition when it arrived on another
// one, and reports whether it did. Producers are not trusted to hash keys
// as the engine does (librdkafka hashes with CRC32, kafka-go with FNV-1a or
// not at all): a saga's messages are handled on one partition only, by one
// instance, in order. The copy keeps the key, value and headers, adds the
// original's place and timestamp as headers (its own timestamp is the time
// it is moved: see message.HeaderOriginalTimestamp), and is produced in this transaction, with the offset of the original:
// it is moved exactly once. A record that cannot be routed (no key, a key
// that is not UTF-8) is left where it is; handle dead-letters it.
func (h *handling) forward(ctx context.Context) bool {
	e, r := h.e, h.r
	home, off := e.misplaced(r)
	if !off {
		return false
	}
	hs := make([]kgo.RecordHeader, 0, len(r.Headers)+2)
	hs = append(hs, r.Headers...)
	hs = append(hs, kgo.RecordHeader{Key: message.HeaderForwardedFrom,
		Value: []byte(strconv.Itoa(int(r.Partition)) + "/" + strconv.FormatInt(r.Offset, 10))},
		kgo.RecordHeader{Key: message.HeaderOriginalTimestamp, Value: []byte(strconv.FormatInt(r.Timestamp.UnixMilli(), 10))})
	fwd := &kgo.Record{Topic: e.inbox, Partition: home, Key: r.Key, Value: r.Value, Headers: hs}
	if ok, n, limit := e.fits(ctx, fwd); !ok {
		h.deadLetter(ctx, nil, inputErr(ReasonTooLarge, "record is off its home partition %d and, at %d bytes, cannot be moved there (the topic's limit is %d)", home, n, limit))
		return true
	}
	h.produce(fwd)
	h.b.Forwarded++
	e.log.Debug("moved to the home partition", "saga_id", string(r.Key), "partition", r.Partition, "offset", r.Offset, "home", home)
	return true
}

// misplaced reports whether r arrived off its saga's home partition, and
// which partition that is. A record that cannot be routed (no key, a key
// that is not UTF-8) is never misplaced.
func (e *Engine) misplaced(r *kgo.Record) (home int32, off bool) {
	if len(r.Key) == 0 || !utf8.Valid(r.Key) || e.nparts == 0 {
		return r.Partition, false
	}
	home = message.HomePartition(string(r.Key), e.nparts)
	return home, home != r.Partition
}

// lookup returns a saga's current state: changed in this batch, in memory,
// or read from Redis by preload.
func (e *Engine) lookup(b *batch, id string, p int32) *entry {
	if ent, ok := b.overlay[id]; ok {
		return ent
	}
	if ent, ok := e.sagas[id]; ok {
		return ent
	}
	st, ok := b.loaded[id]
	if !ok {
		return nil
	}
	return e.entryOf(st, p)
}

// entryOf decodes a stored state's data with the definition version that
// runs the saga (versions.machineOf: a saga of an adopted version is moved
// to the adopting one). Data that no longer decodes (the saga's data type
// changed incompatibly) is kept as a bad entry rather than failing: the
// saga's records are then dead-lettered, the partition goes on.
func (e *Engine) entryOf(st *State, p int32) *entry {
	m, run, data, err := e.vs.machineOf(st)
	if err != nil {
		e.log.Error("saga cannot run; its records will be dead-lettered", "saga_id", st.ID, "err", err)
		return &entry{state: st, partition: p, m: e.m, bad: err}
	}
	return &entry{state: run, data: data, partition: p, m: m}
}

// handle applies h.r. It returns an error only for a failure that aborts
// the transaction; everything else (dead-letters, drops) is part of the
// batch.
func (h *handling) handle(ctx context.Context) error {
	e, b, r := h.e, h.b, h.r
	part := e.parts[r.Partition]
	// The key is the saga id; decode rejects a record whose key is not.
	ent := e.lookup(b, string(r.Key), r.Partition)
	var st *State
	var data any
	if ent != nil {
		st, data = ent.state, ent.data
	}
	ctx, tc := e.traceRecord(ctx, r, st)
	in, err := e.decode(r)
	if err != nil {
		h.deadLetter(ctx, deadLetterTrace(r, st, tc), err)
		return nil
	}
	in.trace = tc
	h.in = in
	if ent != nil && ent.bad != nil {
		h.deadLetter(ctx, deadLetterTrace(r, st, tc), retry.Permanent(&InputError{Reason: ReasonInvalid, Err: ent.bad}))
		return nil
	}

	// A record whose attempts ran out is dead-lettered and its saga
	// compensated, in this transaction.
	if a, ok := part.attempts[r.Offset]; ok && a.err != nil {
		return h.exhausted(ctx, ent, a)
	}

	m := e.m // a start: the newest version
	if ent != nil {
		m = ent.m
	}
	out, err := m.apply(ctx, st, data, in)
	if err != nil {
		if !retry.IsPermanent(err) {
			return err
		}
		a := attempt{count: 1, first: e.cfg.now(), last: e.cfg.now(), err: err, step: -1}
		if prior, ok := part.attempts[r.Offset]; ok {
			a.count, a.first = prior.count+1, prior.first
		}
		var ie *InputError
		if errors.As(err, &ie) {
			// Bad input (a reply for a step the saga does not wait on, a
			// conflicting start, an unknown type) is dead-lettered; the
			// saga it names goes on as it was.
			h.deadLetterAt(ctx, deadLetterTrace(r, st, tc), a)
			return nil
		}
		return h.exhausted(ctx, ent, a)
	}
	if _, ok := part.attempts[r.Offset]; ok {
		b.cleared = append(b.cleared, deadLetter{r.Partition, r.Offset})
	}
	if out.drop != "" {
		b.Dropped = append(b.Dropped, out.drop)
		e.log.DebugContext(ctx, "dropped", "reason", out.drop, "saga_id", in.sagaID, "message_id", in.msgID, "partition", r.Partition, "offset", r.Offset)
		return nil
	}
	if !h.applied(ctx, st, m, out) {
		return nil
	}
	if out.undoFailed != "" {
		b.UndoLocalFailures = append(b.UndoLocalFailures, out.undoFailed)
		e.log.WarnContext(ctx, "UndoLocal failed; retrying after a backoff", "saga_id", in.sagaID, "step", out.undoFailed,
			"failures", out.state.UndoSends, "err", out.state.LastError)
	}
	if out.giveUp != "" {
		h.deadLetter(ctx, out.state.Trace, &InputError{Reason: out.giveUp, Err: errors.New(out.state.Reason)})
	}
	return nil
}

// exhausted dead-letters h.r after the attempts a and, when its saga (ent;
// nil: none) is running, compensates it.
func (h *handling) exhausted(ctx context.Context, ent *entry, a attempt) error {
	e, in := h.e, h.in
	var st *State
	if ent != nil {
		st = ent.state
	}
	h.deadLetterAt(ctx, deadLetterTrace(h.r, st, in.trace), a)
	failed := a.step
	var se *StepError
	if errors.As(a.err, &se) {
		failed = se.Index
	}
	var out *outcome
	var err error
	m := e.m
	switch {
	case ent == nil && in.typ == message.TypeStartSaga && failed >= 0:
		// The start's own transaction ran local steps that may have
		// left effects: the saga is started to compensate them.
		out, err = m.abortStart(ctx, in, deadLetterReason(a.err), failed)
	case ent == nil || ent.state.Status != message.StatusRunning || ent.bad != nil:
		return nil
	default:
		m = ent.m
		out, err = m.abort(ctx, ent.state, ent.data, in, deadLetterReason(a.err), failed)
	}
	if err != nil {
		// The compensation's first command could not be built (its Undo
		// failed). The record is in the DLQ; the saga waits for an
		// operator's Compensate message.
		e.log.ErrorContext(ctx, "cannot start compensation", "saga_id", in.sagaID, "err", err)
		return nil
	}
	if out == nil {
		return nil // a start with nothing to undo: only dead-lettered
	}
	h.applied(ctx, st, m, out)
	return nil
}

// applied records an outcome in the batch and produces its commands and
// events. An outcome whose records would not fit their topics (saga code
// that built a command larger than the broker takes) is not applied: r is
// dead-lettered instead, and applied reports false.
// prev is the saga's state before h.r (nil: h.r started it); m is the
// machine that produced out.
func (h *handling) applied(ctx context.Context, prev *State, m *machine, out *outcome) bool {
	e, b, r, in := h.e, h.b, h.r, h.in
	id := out.state.ID
	m.stamp(out.state)
	if out.state.Trace == nil {
		out.state.Trace = in.trace
	}
	change := Change{Record: r, Prev: prev, Next: out.state, Events: out.events}
	for _, c := range out.commands {
		change.Sent = &Sent{Topic: c.topic, Type: c.msgType, MessageID: c.msgID, Step: c.step, Undo: out.state.Undoing >= 0, Attempt: c.attempt}
	}
	if e.tracer != nil {
		e.tracer.TraceChange(ctx, &change)
	}
	raw, err := out.state.appendJSON(make([]byte, 0, len(out.state.Data)+768))
	if err != nil {
		h.deadLetter(ctx, deadLetterTrace(r, prev, in.trace), retry.Permanent(&InputError{Reason: ReasonInvalid, Err: fmt.Errorf("encode state of saga %s: %w", id, err)}))
		return false
	}
	recs := make([]*kgo.Record, 0, len(out.commands)+len(out.events)+1)
	for _, c := range out.commands {
		recs = append(recs, e.commandRecord(out.state, c))
	}
	for _, ev := range out.events {
		recs = append(recs, e.eventRecord(ev, out.state.Trace))
	}
	state := e.stateRecord(out.state, r.Partition, raw)
	for _, rec := range append(recs, state) {
		if ok, n, limit := e.fits(ctx, rec); !ok {
			h.deadLetter(ctx, deadLetterTrace(r, prev, in.trace), inputErr(ReasonTooLarge, "handling it would write a record of %d bytes to %s, whose limit (max.message.bytes) is %d", n, rec.Topic, limit))
			return false
		}
	}
	b.Changes = append(b.Changes, change)
	if _, had := b.overlay[id]; !had {
		b.order = append(b.order, id)
	}
	b.overlay[id] = &entry{state: out.state, data: out.data, partition: r.Partition, raw: raw, rec: state, m: m}
	for _, rec := range recs {
		h.produce(rec)
	}
	for _, ev := range out.events {
		b.Events = append(b.Events, ev)
		switch ev.Type {
		case message.EventStepSucceeded, message.EventStepFailed, message.EventStepCompensated:
			if out.state.StepStarted > 0 {
				b.StepLatencies = append(b.StepLatencies, StepLatency{Step: ev.Step, Duration: ev.At.Sub(time.UnixMilli(out.state.StepStarted))})
			}
		}
	}
	return true
}
