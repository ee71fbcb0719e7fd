package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/outcome"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
)

// Waiting for outcomes. POST and GET /v1/sagas/{type}/{id} take ?wait=D (a
// Go duration such as 30s or 1m, or whole seconds, at most --api-max-wait):
// the answer waits, at most D, for the saga's terminal event, and is
//
//	200  the terminal event (message.Event: type SagaCompleted,
//	     SagaCompensated or SagaFailed, its reason, the final data); at
//	     once when the saga had ended already (then read from the view)
//	202  the saga had not ended when the wait ran out: POST answers as it
//	     does without wait, GET with the saga's state as GET answers it
//
// The daemon reads each saga type's events with one Kafka consumer
// (internal/outcome, as package client's Run does), started by the first
// wait for that type: a waiting request is a map entry and its parked
// goroutine, never a poll. No end is missed: a wait is registered before
// the request starts the saga or reads it from the Redis view, so an end
// committed after the registration is handed to it, and one committed
// before is in the view, which the engine writes just after each commit.
// The view may lag that commit by a moment (an end the watcher saw just
// before the registration, not yet in the view): it is read again when the
// wait runs out, so that such an answer comes late but right.
//
// A waiting request gives its --api-max-in-flight slot back while it waits
// and holds one of --api-max-waiters instead, so waits never keep starts
// out; a request that asks to wait when all of those are taken is answered
// 429 with Retry-After before anything is done. When the API stops, the
// waits in progress end at once (202).

// waitSlack is how much longer than its wait a waiting request's
// connection may stay silent (read) or take to answer (write).
const waitSlack = 30 * time.Second

// waiters serves ?wait=: the readers of the saga types' events and the
// slots of --api-max-waiters. It is safe for concurrent use.
type waiters struct {
	opts []kgo.Opt
	// max is --api-max-wait; 0 refuses every wait.
	max time.Duration
	// slots holds one element per waiting request; its capacity is
	// --api-max-waiters.
	slots chan struct{}
	// stopping is closed when the API stops: waits end at once.
	stopping chan struct{}
	stopOnce sync.Once
	// timeout bounds the start of a watcher (listing the offsets).
	timeout time.Duration
	log     *slog.Logger

	mu       sync.Mutex
	watchers map[string]*outcome.Watcher
	closed   bool
}

func newWaiters(opts []kgo.Opt, maxWait time.Duration, slots chan struct{}, timeout time.Duration, log *slog.Logger) *waiters {
	return &waiters{opts: opts, max: maxWait, slots: slots, stopping: make(chan struct{}), timeout: timeout, log: log,
		watchers: make(map[string]*outcome.Watcher)}
}

// pending is a request's wait for its saga's end, registered before the
// request starts the saga or reads it.
type pending struct {
	ws   *waiters
	d    time.Duration
	wait *outcome.Wait
	// release gives the request's in-flight slot back.
	release func()
}

// begin reads the request's ?wait= and, when it asks to wait, takes a
// waiter's slot and registers the wait for saga id. It returns nil and true
// when the request does not wait, and false when it answered: 400 for a
// wait it cannot have, 429 when every slot is taken, 503 when the saga
// type's events cannot be read. End a pending with end.
func (ws *waiters) begin(w http.ResponseWriter, r *http.Request, s apiSaga, id string, release func()) (*pending, bool) {
	d, err := ws.param(r)
	switch {
	case err != nil:
		writeError(w, http.StatusBadRequest, err.Error())
		return nil, false
	case d == 0:
		return nil, true
	}
	select {
	case ws.slots <- struct{}{}:
	default:
		w.Header().Set("Retry-After", apiBusyRetryAfter)
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf("as many requests wait for outcomes as may at once (%d, --api-max-waiters): retry after %s s, or without wait", cap(ws.slots), apiBusyRetryAfter))
		return nil, false
	}
	wait, err := ws.watch(r.Context(), s.def.Name(), id)
	if err != nil {
		<-ws.slots
		ws.log.Warn("HTTP API: cannot read the saga type's events for a wait; refusing it", "saga", s.def.Name(), "id", id, "err", err)
		unavailable(w, "the saga's outcome cannot be waited for now: retry later, or without wait")
		return nil, false
	}
	return &pending{ws: ws, d: d, wait: wait, release: release}, true
}

// end unregisters the wait and gives its slot back; nil does nothing.
func (pw *pending) end() {
	if pw == nil {
		return
	}
	pw.wait.Stop()
	<-pw.ws.slots
}

// param returns the request's ?wait=: 0 when it has none.
func (ws *waiters) param(r *http.Request) (time.Duration, error) {
	vals := r.URL.Query()["wait"]
	switch len(vals) {
	case 0:
		return 0, nil
	case 1:
	default:
		return 0, errors.New("wait is given more than once: give it once")
	}
	bound := fmt.Sprintf("this API waits at most %v (--api-max-wait)", ws.max)
	if ws.max == 0 {
		bound = "this API does not wait (--api-max-wait 0): leave wait out"
	}
	d, err := time.ParseDuration(vals[0])
	if err != nil {
		n, nerr := strconv.ParseUint(vals[0], 10, 31)
		if nerr != nil {
			return 0, fmt.Errorf("wait %s is not a duration such as 30s or 1m, nor whole seconds; %s", quoteShort(vals[0]), bound)
		}
		d = time.Duration(n) * time.Second
	}
	switch {
	case d < 0:
		return 0, fmt.Errorf("wait %v is negative; %s", d, bound)
	case d > ws.max:
		return 0, fmt.Errorf("wait %v is longer than allowed: %s", d, bound)
	}
	return d, nil
}

// watch registers a wait for saga id of sagaType, starting the type's
// watcher the first time.
func (ws *waiters) watch(ctx context.Context, sagaType, id string) (*outcome.Wait, error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.closed {
		return nil, errors.New("the HTTP API is stopping")
	}
	w, ok := ws.watchers[sagaType]
	if !ok {
		ctx, cancel := context.WithTimeout(ctx, ws.timeout)
		defer cancel()
		var err error
		if w, err = outcome.Start(ctx, ws.opts, sagaType); err != nil {
			return nil, err
		}
		ws.watchers[sagaType] = w
	}
	return w.Wait(id), nil
}

// stop ends the waits in progress: call it before the server's Shutdown,
// which waits for them.
func (ws *waiters) stop() {
	ws.stopOnce.Do(func() { close(ws.stopping) })
}

// close stops the watchers and waits for them; after it no wait begins.
func (ws *waiters) close() {
	ws.stop()
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.closed = true
	for _, w := range ws.watchers {
		w.Close()
	}
}

// await waits for the saga's end at most pw.d, with the request's in-flight
// slot given back. It returns the terminal event, or false when the wait
// ran out, the API stops or the caller went away.
func (pw *pending) await(w http.ResponseWriter, r *http.Request) (message.Event, bool) {
	pw.release()
	// The server's read and write timeouts count from the request's
	// start, and are shorter than the longest wait: a waiting request
	// has its own. (A read timeout would cancel the request's context,
	// through the read net/http keeps going to see a caller hang up.)
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(pw.d + waitSlack))
	_ = rc.SetWriteDeadline(time.Now().Add(pw.d + waitSlack))
	t := time.NewTimer(pw.d)
	defer t.Stop()
	select {
	case <-pw.wait.Done():
		return pw.wait.Event(), true
	case <-t.C:
	case <-pw.ws.stopping:
	case <-r.Context().Done():
	}
	return message.Event{}, false
}

// awaitStart answers a start that waits (POST ?wait=) once it is stored,
// or had been: st is the saga's state when the view had it.
func (a *api) awaitStart(w http.ResponseWriter, r *http.Request, s apiSaga, pw *pending, st *orchestrator.State, ok202 accepted) {
	if ev, ok := outcomeOf(s, st, 0); ok {
		writeJSON(w, http.StatusOK, ev)
		return
	}
	ev, ok := pw.await(w, r)
	if !ok {
		// The view may have an end the wait missed (see above).
		if st, version, err := a.load(r.Context(), s, ok202.SagaID); err == nil {
			ev, ok = outcomeOf(s, st, version)
		}
	}
	if ok {
		writeJSON(w, http.StatusOK, ev)
		return
	}
	a.acceptedAt(w, r, ok202)
}

// awaitGet answers a GET that waits: st, of version, is the saga's state
// when the request began.
func (a *api) awaitGet(w http.ResponseWriter, r *http.Request, s apiSaga, pw *pending, st *orchestrator.State, version int64) {
	ev, ok := outcomeOf(s, st, version)
	if !ok {
		if ev, ok = pw.await(w, r); !ok {
			// Read again: the state to answer with, and an end the
			// wait may have missed.
			if now, v, err := a.load(r.Context(), s, st.ID); err == nil && now != nil {
				st, version = now, v
				ev, ok = outcomeOf(s, st, version)
			}
		}
	}
	if ok {
		writeJSON(w, http.StatusOK, ev)
		return
	}
	w.Header().Set("ETag", `"`+strconv.FormatInt(version, 10)+`"`)
	w.Header().Set("Cache-Control", "no-cache")
	writeJSON(w, http.StatusAccepted, viewOf(s, st, version))
}

// outcomeOf returns the terminal event of a saga that has ended, rebuilt
// from its state st as the engine wrote it (version, when not 0, is the
// view's version), and false for a saga that has not ended (or nil).
func outcomeOf(s apiSaga, st *orchestrator.State, version int64) (message.Event, bool) {
	if st == nil {
		return message.Event{}, false
	}
	ev := message.Event{SagaID: st.ID, SagaType: s.def.Name(), State: st.Status, Version: st.Version, At: st.Updated.UTC(), Data: st.Data}
	if version != 0 {
		ev.Version = version
	}
	switch st.Status {
	case message.StatusCompleted:
		ev.Type = message.EventSagaCompleted
	case message.StatusCompensated:
		ev.Type, ev.Reason = message.EventSagaCompensated, st.Reason
	case message.StatusFailed:
		// The step whose compensation failed, as the engine names it.
		i := st.Step
		if st.Undoing >= 0 {
			i = st.Undoing
		}
		if steps := s.def.Steps(); i >= 0 && i < len(steps) {
			ev.Step = steps[i].Name
		}
		ev.Type, ev.Reason = message.EventSagaFailed, st.Reason
	default:
		return message.Event{}, false
	}
	return ev, true
}
