// Package outcome hands out sagas' terminal events as they are written: one
// reader of saga.<type>.events per saga type, shared by every caller that
// waits for a saga of that type to end. Package client's Run and the HTTP
// API's waits (package daemon) both use it.
//
//	w, err := outcome.Start(ctx, opts, "order")
//	if err != nil {
//		return err
//	}
//	defer w.Close()
//	wait := w.Wait("o-7")
//	defer wait.Stop()
//	select {
//	case <-wait.Done():
//		ev := wait.Event() // SagaCompleted, SagaCompensated or SagaFailed
//	case <-ctx.Done():
//	}
//
// A Watcher reads from the end of the topic as it was when Start returned:
// a Wait registered afterwards gets every terminal event committed after
// its registration, and may get one committed a little before (the reader
// lags). An end reached before the Wait was registered must be looked up
// elsewhere, after registering (the saga's state in the Redis view, or the
// topic itself from an offset on): together the two miss nothing. A
// thousand waits cost one reader and a map entry each, not a thousand
// polls.
package outcome

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
)

// Watcher reads one saga type's terminal events and hands each to the
// Waits registered for its saga. It is safe for concurrent use.
type Watcher struct {
	cl    *kgo.Client
	topic string
	// began is the end offset of each partition when the watcher began:
	// it reads everything from there on.
	began map[int32]int64
	done  chan struct{}

	mu    sync.Mutex
	waits map[string][]*Wait
}

// Start lists the end offsets of saga.<sagaType>.events and reads the topic
// from there, read_committed, with a Kafka client made of opts (which must
// not consume anything of their own), until Close. It fails when the topic
// has no partition it can list (the saga type's daemon has not created
// it), or the client cannot be made.
func Start(ctx context.Context, opts []kgo.Opt, sagaType string) (*Watcher, error) {
	topic := message.Events(sagaType)
	cl, err := kgo.NewClient(append(opts[:len(opts):len(opts)], kgo.FetchIsolationLevel(kgo.ReadCommitted()))...)
	if err != nil {
		return nil, err
	}
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		cl.Close()
		return nil, fmt.Errorf("list the end offsets of %s: %w", topic, err)
	}
	w := &Watcher{cl: cl, topic: topic, began: make(map[int32]int64), done: make(chan struct{}), waits: make(map[string][]*Wait)}
	at := make(map[int32]kgo.Offset)
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			w.began[o.Partition] = o.Offset
			at[o.Partition] = kgo.NewOffset().At(o.Offset)
		}
	})
	if len(at) == 0 {
		cl.Close()
		return nil, fmt.Errorf("topic %s has no partitions: is the saga type's daemon running?", topic)
	}
	cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{topic: at})
	go w.run()
	return w, nil
}

// Topic returns the topic the watcher reads, saga.<type>.events.
func (w *Watcher) Topic() string { return w.topic }

// Client returns the watcher's Kafka client, for requests of the caller's
// own (listing offsets). The caller must not close it nor consume with it.
func (w *Watcher) Client() *kgo.Client { return w.cl }

// Began returns how many partitions the topic has and the offset the
// watcher began at in partition p: events from there on are handed out.
func (w *Watcher) Began(p int32) (partitions int32, offset int64) {
	return int32(len(w.began)), w.began[p]
}

// Close closes the watcher's client and waits for its reader to stop. The
// Waits still registered then never end: their callers' own deadlines end
// them.
func (w *Watcher) Close() {
	w.cl.Close()
	<-w.done
}

// run reads the events until the watcher's client is closed.
func (w *Watcher) run() {
	defer close(w.done)
	for {
		fs := w.cl.PollFetches(context.Background())
		if fs.IsClientClosed() {
			return
		}
		fs.EachRecord(func(rec *kgo.Record) {
			if ev, ok := Terminal(rec); ok {
				w.Deliver(ev)
			}
		})
	}
}

// Terminal decodes rec when it is a terminal event. The engine names an
// event's type in its ksaga-message-type header, so other events are
// passed over undecoded.
func Terminal(rec *kgo.Record) (message.Event, bool) {
	if !message.Terminal(header(rec, message.HeaderMessageType)) {
		return message.Event{}, false
	}
	var ev message.Event
	if err := json.Unmarshal(rec.Value, &ev); err != nil || !message.Terminal(ev.Type) {
		return message.Event{}, false
	}
	return ev, true
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// Wait is one caller's wait for saga id's terminal event. Stop it when
// done, whether it ended or not: until then it is kept in the watcher.
type Wait struct {
	w    *Watcher
	id   string
	done chan struct{}
	ev   message.Event // set before done is closed
}

// Wait registers a wait for saga id's terminal event. Register before
// looking up whether the saga ended already (see the package doc).
func (w *Watcher) Wait(id string) *Wait {
	x := &Wait{w: w, id: id, done: make(chan struct{})}
	w.mu.Lock()
	w.waits[id] = append(w.waits[id], x)
	w.mu.Unlock()
	return x
}

// Done returns a channel that is closed when the saga's terminal event has
// come (Deliver).
func (x *Wait) Done() <-chan struct{} { return x.done }

// Event returns the terminal event; it is valid once Done is closed.
func (x *Wait) Event() message.Event {
	<-x.done
	return x.ev
}

// Stop removes the wait from the watcher. It may be called more than once.
func (x *Wait) Stop() {
	w := x.w
	w.mu.Lock()
	defer w.mu.Unlock()
	waits := w.waits[x.id]
	for i, y := range waits {
		if y == x {
			waits = append(waits[:i], waits[i+1:]...)
			break
		}
	}
	if len(waits) == 0 {
		delete(w.waits, x.id)
	} else {
		w.waits[x.id] = waits
	}
}

// Deliver ends the Waits registered for ev's saga with ev: the watcher
// calls it for each terminal event it reads, and a caller that looked the
// end up elsewhere may too. A saga has one terminal event; a Wait that has
// one already keeps it.
func (w *Watcher) Deliver(ev message.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, x := range w.waits[ev.SagaID] {
		select {
		case <-x.done:
		default:
			x.ev = ev
			close(x.done)
		}
	}
}

// Waits returns how many Waits are registered.
func (w *Watcher) Waits() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, ws := range w.waits {
		n += len(ws)
	}
	return n
}
