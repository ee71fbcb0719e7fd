package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
)

// Waiting for a saga's outcome: the engine writes each saga's history to
// saga.T.events, keyed by the saga id, and ends it with exactly one terminal
// event (SagaCompleted, SagaCompensated or SagaFailed) that carries the
// saga's final data. A Client reads saga.T.events with one consumer per saga
// type, started the first time it is needed, from the end of the topic, and
// hands each terminal event to the runs that wait for it: a thousand waiting
// callers cost one consumer and a map entry each, not a thousand polls.

// Run is a saga whose outcome a caller can wait for: one this client started
// (StartRun), or one started elsewhere (GetRun).
type Run struct {
	c     *Client
	w     *watcher
	typ   string
	id    string
	since time.Time // GetRun: how far back to look for its end
	ch    chan message.Event
	once  sync.Once
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
	r := &Run{c: c, w: w, typ: def.Name(), id: id, ch: w.register(id)}
	if err := c.Start(ctx, def, id, data); err != nil {
		w.unregister(id, r.ch)
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
func (r *Run) Get(ctx context.Context) (message.Event, error) {
	if r.ch == nil {
		if err := r.lookBack(ctx); err != nil {
			return message.Event{}, err
		}
	}
	select {
	case ev := <-r.ch:
		// Put it back for the next Get.
		r.ch <- ev
		r.once.Do(func() { r.w.unregister(r.id, r.ch) })
		return ev, nil
	case <-ctx.Done():
		return message.Event{}, fmt.Errorf("%s saga %s: %w: %w", r.typ, r.id, ErrStillRunning, ctx.Err())
	}
}

// lookBack registers a GetRun's wait, then reads the saga's events
// partition from since up to where the watcher began, for an end reached
// before: together they miss nothing.
func (r *Run) lookBack(ctx context.Context) error {
	w, err := r.c.watcher(ctx, r.typ)
	if err != nil {
		return fmt.Errorf("%s saga %s: watch its events: %w", r.typ, r.id, err)
	}
	r.w, r.ch = w, w.register(r.id)
	p := message.HomePartition(r.id, int32(len(w.start)))
	end := w.start[p]
	adm := kadm.NewClient(w.cl)
	offs, err := adm.ListOffsetsAfterMilli(ctx, r.since.UnixMilli(), w.topic)
	if err != nil {
		return fmt.Errorf("%s saga %s: find its events since %v: %w", r.typ, r.id, r.since, err)
	}
	from, ok := offs.Lookup(w.topic, p)
	if !ok || from.Err != nil || from.Offset < 0 || from.Offset >= end {
		return nil // nothing written since then before the watcher began
	}
	cl, err := kgo.NewClient(append(r.c.opts,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{w.topic: {p: kgo.NewOffset().At(from.Offset)}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// The last offset before the watcher's start may be a
		// transaction marker: with them delivered, the read sees it.
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
				if ev, ok := terminalEvent(rec); ok {
					w.deliver(ev)
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

// watcher reads saga.T.events from where it began and hands terminal
// events to the runs that wait for them.
type watcher struct {
	cl    *kgo.Client
	topic string
	// start is the end offset of each partition when the watcher began:
	// everything from there on is read.
	start map[int32]int64

	mu      sync.Mutex
	waiters map[string][]chan message.Event
}

// watcher returns the watcher of sagaType's events, starting it the first
// time.
func (c *Client) watcher(ctx context.Context, sagaType string) (*watcher, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w, ok := c.watchers[sagaType]; ok {
		return w, nil
	}
	topic := message.Events(sagaType)
	ends, err := kadm.NewClient(c.cl).ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	w := &watcher{topic: topic, start: make(map[int32]int64), waiters: make(map[string][]chan message.Event)}
	at := make(map[int32]kgo.Offset)
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			w.start[o.Partition] = o.Offset
			at[o.Partition] = kgo.NewOffset().At(o.Offset)
		}
	})
	if len(at) == 0 {
		return nil, fmt.Errorf("topic %s has no partitions: is the saga type's daemon running?", topic)
	}
	w.cl, err = kgo.NewClient(append(c.opts,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: at}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return nil, err
	}
	if c.watchers == nil {
		c.watchers = make(map[string]*watcher)
	}
	c.watchers[sagaType] = w
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		w.run()
	}()
	return w, nil
}

// run reads the events until the watcher's client is closed.
func (w *watcher) run() {
	for {
		fs := w.cl.PollFetches(context.Background())
		if fs.IsClientClosed() {
			return
		}
		fs.EachRecord(func(rec *kgo.Record) {
			if ev, ok := terminalEvent(rec); ok {
				w.deliver(ev)
			}
		})
	}
}

// terminalEvent decodes rec when it is a terminal event. The engine names
// an event's type in its ksaga-message-type header, so other events are
// passed over undecoded.
func terminalEvent(rec *kgo.Record) (message.Event, bool) {
	if !message.Terminal(header(rec, message.HeaderMessageType)) {
		return message.Event{}, false
	}
	var ev message.Event
	if err := json.Unmarshal(rec.Value, &ev); err != nil || !message.Terminal(ev.Type) {
		return message.Event{}, false
	}
	return ev, true
}

func (w *watcher) register(id string) chan message.Event {
	ch := make(chan message.Event, 1)
	w.mu.Lock()
	w.waiters[id] = append(w.waiters[id], ch)
	w.mu.Unlock()
	return ch
}

func (w *watcher) unregister(id string, ch chan message.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	chs := w.waiters[id]
	for i, c := range chs {
		if c == ch {
			chs = append(chs[:i], chs[i+1:]...)
			break
		}
	}
	if len(chs) == 0 {
		delete(w.waiters, id)
	} else {
		w.waiters[id] = chs
	}
}

// deliver hands ev to the runs that wait for its saga. A saga has one
// terminal event; one seen twice (a look back and the watcher) is dropped.
func (w *watcher) deliver(ev message.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, ch := range w.waiters[ev.SagaID] {
		select {
		case ch <- ev:
		default:
		}
	}
}
