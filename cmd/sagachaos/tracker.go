package main

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/chaos/check"
	"github.com/ksaga/ksaga/chaos/check/localfirst"
	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
)

// startDeadLettered stands in the terminal events of a local-first
// transfer whose start request was dead-lettered.
const startDeadLettered = "start dead-lettered"

// headerMarker names the header that tags each poison record, so that its
// dead-letter copy can be found.
const headerMarker = check.HeaderMarker

// tracker follows the events and the inbox dead-letter topics of the order
// saga and the local-first saga (read_committed, from the start) to tell
// when every saga has ended and which records were dead-lettered. A
// transfer of the local-first saga whose start request was dead-lettered
// has ended too, with no saga: its terminal events then start with
// startDeadLettered.
type tracker struct {
	client *kgo.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex
	// terminal holds the terminal event types of each saga, in order;
	// endAt is when its first one says it ended (the engine's clock).
	terminal map[string][]string
	endAt    map[string]time.Time
	// dlqByKey holds the dead-letter records of each key.
	dlqByKey map[string][]deadLetter
	// dlqByMarker holds the dead-letter reasons of each poison marker.
	dlqByMarker  map[string][]string
	events, dead int
	// lastEnd is the latest time a terminal event says its saga ended at
	// (message.Event.At, the engine's clock).
	lastEnd time.Time
	// parks holds, for each saga that parked, its SagaParked events and
	// the events that may resolve them (SagaResumed, CompensationStarted),
	// in order.
	parks map[string][]parkEvent
}

// parkEvent is an event of a saga that parked.
type parkEvent struct {
	typ, step, reason string
	at                time.Time
}

func newTracker(brokers []string) (*tracker, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(message.Events(order.Name), message.DLT(order.Name), message.Events(localfirst.Name), message.DLT(localfirst.Name)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(200*time.Millisecond),
	)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &tracker{
		client: cl, cancel: cancel, done: make(chan struct{}),
		terminal: make(map[string][]string), endAt: make(map[string]time.Time),
		dlqByKey: make(map[string][]deadLetter), dlqByMarker: make(map[string][]string),
		parks: make(map[string][]parkEvent),
	}
	go t.run(ctx)
	return t, nil
}

func (t *tracker) run(ctx context.Context) {
	defer close(t.done)
	events := map[string]bool{message.Events(order.Name): true, message.Events(localfirst.Name): true}
	dlt := map[string]bool{message.DLT(order.Name): true, message.DLT(localfirst.Name): true}
	localDLT := message.DLT(localfirst.Name)
	for {
		fs := t.client.PollFetches(ctx)
		if ctx.Err() != nil {
			return
		}
		t.mu.Lock()
		fs.EachRecord(func(r *kgo.Record) {
			switch {
			case events[r.Topic]:
				t.events++
				var ev message.Event
				if json.Unmarshal(r.Value, &ev) != nil {
					return
				}
				switch ev.Type {
				case message.EventSagaParked, message.EventSagaResumed, message.EventCompensationStarted:
					// Only the sagas that parked: CompensationStarted
					// is common.
					if ev.Type == message.EventSagaParked || len(t.parks[ev.SagaID]) > 0 {
						t.parks[ev.SagaID] = append(t.parks[ev.SagaID], parkEvent{typ: ev.Type, step: ev.Step, reason: ev.Reason, at: ev.At})
					}
				}
				if message.Terminal(ev.Type) {
					if len(t.terminal[ev.SagaID]) == 0 {
						t.endAt[ev.SagaID] = ev.At
					}
					t.terminal[ev.SagaID] = append(t.terminal[ev.SagaID], ev.Type)
					if ev.At.After(t.lastEnd) {
						t.lastEnd = ev.At
					}
				}
			case dlt[r.Topic]:
				t.dead++
				reason := header(r, dlq.HeaderReason)
				if r.Topic == localDLT && header(r, message.HeaderMessageType) == message.TypeStartSaga {
					t.terminal[string(r.Key)] = append(t.terminal[string(r.Key)], startDeadLettered)
				}
				t.dlqByKey[string(r.Key)] = append(t.dlqByKey[string(r.Key)], deadLetter{reason: reason, err: header(r, dlq.HeaderExceptionMessage)})
				if m := header(r, headerMarker); m != "" {
					t.dlqByMarker[m] = append(t.dlqByMarker[m], reason)
				}
			}
		})
		t.mu.Unlock()
	}
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// ended returns how many of ids have a terminal event, and the ids that
// have none.
func (t *tracker) ended(ids []string) (n int, missing []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, id := range ids {
		if len(t.terminal[id]) > 0 {
			n++
		} else {
			missing = append(missing, id)
		}
	}
	return n, missing
}

// terminalOf returns the terminal event types of saga id.
func (t *tracker) terminalOf(id string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.terminal[id]...)
}

// endedAt returns when saga id ended by its first terminal event, or the
// zero time.
func (t *tracker) endedAt(id string) time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.endAt[id]
}

// deadLetter is a dead-letter record's reason and error message.
type deadLetter struct{ reason, err string }

// dlqOf returns the dead-letter records of key.
func (t *tracker) dlqOf(key string) []deadLetter {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]deadLetter(nil), t.dlqByKey[key]...)
}

// markers returns how many of the markers have a dead-letter record, and
// those that have none.
func (t *tracker) markers(ms []string) (n int, missing []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, m := range ms {
		if len(t.dlqByMarker[m]) > 0 {
			n++
		} else {
			missing = append(missing, m)
		}
	}
	return n, missing
}

// lastEnded returns the latest time a saga ended at, by its terminal event.
func (t *tracker) lastEnded() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastEnd
}

// parkedSince returns the sagas that parked at or after since (a SagaParked
// event's time, the engine's clock), in no particular order.
func (t *tracker) parkedSince(since time.Time) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var ids []string
	for id, evs := range t.parks {
		if slices.ContainsFunc(evs, func(e parkEvent) bool { return e.typ == message.EventSagaParked && !e.at.Before(since) }) {
			ids = append(ids, id)
		}
	}
	return ids
}

// parking returns how saga id's last parking was resolved so far: the
// event that resolved it (SagaResumed or CompensationStarted), or false
// while it is parked (or never parked).
func (t *tracker) parking(id string) (parkEvent, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	evs := t.parks[id]
	last := -1
	for i, e := range evs {
		if e.typ == message.EventSagaParked {
			last = i
		}
	}
	if last < 0 || last == len(evs)-1 {
		return parkEvent{}, false
	}
	return evs[last+1], true
}

// counts returns the records read so far.
func (t *tracker) counts() (events, dead int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.events, t.dead
}

func (t *tracker) close() {
	t.cancel()
	<-t.done
	t.client.Close()
}
