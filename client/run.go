package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/outcome"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
)

// Waiting for a saga's outcome: the engine writes each saga's history to
// saga.T.events, keyed by the saga id, and ends it with exactly one terminal
// event (SagaCompleted, SagaCompensated or SagaFailed) that carries the
// saga's final data. A Client reads saga.T.events with one consumer per saga
// type (package internal/outcome), started the first time it is needed,
// from the end of the topic, and hands each terminal event to the runs that
// wait for it: a thousand waiting callers cost one consumer and a map entry
// each, not a thousand polls.

// Run is a saga whose outcome a caller can wait for: one this client started
// (StartRun), or one started elsewhere (GetRun).
type Run struct {
	c     *Client
	typ   string
	id    string
	since time.Time // GetRun: how far back to look for its end

	mu   sync.Mutex
	wait *outcome.Wait // nil until a GetRun's first Get
	once sync.Once
}

// ID returns the saga's id.
func (r *Run) ID() string { return r.id }

// StartRun starts saga id as Start does, and returns its Run, whose Get waits
// for its outcome. The client listens for the outcome before it produces the
// start request, so an outcome that comes at once is not missed.
func (c *Client) StartRun(ctx context.Context, def *saga.Definition, id string, data any) (*Run, error) {
	w, err := c.watcher(ctx, def.Name())
	if err != nil {
		return nil, fmt.Errorf("start %s saga %s: watch its events: %w", def.Name(), id, err)
	}
	r := &Run{c: c, typ: def.Name(), id: id, wait: w.Wait(id)}
	if err := c.Start(ctx, def, id, data); err != nil {
		r.wait.Stop()
		return nil, err
	}
	return r, nil
}

// GetRun returns the Run of saga id, started elsewhere (another process, the
// HTTP API, an outbox). Its Get first looks for an end the saga had already
// reached in saga.T.events, from since on (one partition of the topic, the
// saga's), then waits for one to come. A saga that ended before since, or
// whose events the topic's retention removed, is never found: Get then waits
// until its ctx ends.
func (c *Client) GetRun(def *saga.Definition, id string, since time.Time) *Run {
	return &Run{c: c, typ: def.Name(), id: id, since: since}
}

// ErrStillRunning is returned by Get when its ctx ended before the saga did.
var ErrStillRunning = errors.New("the saga has not ended yet")

// Get waits until the saga ends and returns its terminal event: Type is
// message.EventSagaCompleted, EventSagaCompensated or EventSagaFailed,
// Reason says why a saga compensated or failed, Data holds its final data
// (what it started with and what its steps kept from the replies). When ctx
// ends first it returns an error wrapping ErrStillRunning and ctx's error;
// Get may be called again. A Run's Get returns the same event every time.
// A Run that is still waiting when its caller gives up keeps a map entry in
// the client until the saga ends or the client is closed.
func (r *Run) Get(ctx context.Context) (message.Event, error) {
	wait, err := r.waiting(ctx)
	if err != nil {
		return message.Event{}, err
	}
	select {
	case <-wait.Done():
		r.once.Do(wait.Stop)
		return wait.Event(), nil
	case <-ctx.Done():
		return message.Event{}, fmt.Errorf("%s saga %s: %w: %w", r.typ, r.id, ErrStillRunning, ctx.Err())
	}
}

// waiting returns the run's wait, registering a GetRun's and looking back
// for an end reached before the first time.
func (r *Run) waiting(ctx context.Context) (*outcome.Wait, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.wait != nil {
		return r.wait, nil
	}
	w, err := r.c.watcher(ctx, r.typ)
	if err != nil {
		return nil, fmt.Errorf("%s saga %s: watch its events: %w", r.typ, r.id, err)
	}
	wait := w.Wait(r.id)
	if err := r.lookBack(ctx, w); err != nil {
		wait.Stop()
		return nil, err
	}
	r.wait = wait
	return wait, nil
}

// lookBack reads the saga's events partition from since up to its end
// offset now, after the run's wait was registered, for an end reached
// before: the watcher hands out every end committed at or after the offset
// it has read to by the registration, which is not past the end read here,
// so together they miss nothing. (Reading only up to where the watcher
// began would miss an end committed between the watcher's start, made for
// an earlier run, and this registration.)
func (r *Run) lookBack(ctx context.Context, w *outcome.Watcher) error {
	parts, _ := w.Began(0)
	p := message.HomePartition(r.id, parts)
	adm := kadm.NewClient(w.Client())
	ends, err := adm.ListEndOffsets(ctx, w.Topic())
	if err != nil {
		return fmt.Errorf("%s saga %s: find the end of its events: %w", r.typ, r.id, err)
	}
	endOff, ok := ends.Lookup(w.Topic(), p)
	if !ok || endOff.Err != nil {
		return fmt.Errorf("%s saga %s: find the end of its events: partition %d not listed", r.typ, r.id, p)
	}
	end := endOff.Offset
	offs, err := adm.ListOffsetsAfterMilli(ctx, r.since.UnixMilli(), w.Topic())
	if err != nil {
		return fmt.Errorf("%s saga %s: find its events since %v: %w", r.typ, r.id, r.since, err)
	}
	from, ok := offs.Lookup(w.Topic(), p)
	if !ok || from.Err != nil || from.Offset < 0 || from.Offset >= end {
		return nil // nothing written since then
	}
	cl, err := kgo.NewClient(append(r.c.opts,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{w.Topic(): {p: kgo.NewOffset().At(from.Offset)}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// The last offset before the end may be a transaction marker:
		// with them delivered, the read sees it.
		kgo.KeepControlRecords())...)
	if err != nil {
		return err
	}
	defer cl.Close()
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil // Get reports it
		}
		done := false
		fs.EachRecord(func(rec *kgo.Record) {
			if rec.Offset >= end-1 {
				done = true
			}
			if rec.Offset < end && !rec.Attrs.IsControl() && string(rec.Key) == r.id {
				if ev, ok := outcome.Terminal(rec); ok {
					w.Deliver(ev)
				}
			}
		})
		if done || fs.IsClientClosed() {
			return nil
		}
		if err := fs.Err0(); err != nil {
			return fmt.Errorf("%s saga %s: read its events: %w", r.typ, r.id, err)
		}
	}
}

// watcher returns the watcher of sagaType's events, starting it the first
// time.
func (c *Client) watcher(ctx context.Context, sagaType string) (*outcome.Watcher, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w, ok := c.watchers[sagaType]; ok {
		return w, nil
	}
	w, err := outcome.Start(ctx, c.opts, sagaType)
	if err != nil {
		return nil, err
	}
	if c.watchers == nil {
		c.watchers = make(map[string]*outcome.Watcher)
	}
	c.watchers[sagaType] = w
	return w, nil
}
