package daemon_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
)

// answer is an HTTP answer: status, headers, body.
type answer struct {
	code int
	hdr  http.Header
	body []byte
}

// waitOutcome decodes the body of a 200 to ?wait=: the terminal event.
func waitOutcome(t *testing.T, what string, a answer) message.Event {
	t.Helper()
	if a.code != http.StatusOK {
		t.Fatalf("%s: status %d (%s), want 200 with the outcome", what, a.code, a.body)
	}
	var ev message.Event
	if err := json.Unmarshal(a.body, &ev); err != nil {
		t.Fatalf("%s: the body %s is not an event: %v", what, a.body, err)
	}
	return ev
}

// sagaStatus waits until the API reads saga typ/id in status.
func sagaStatus(t *testing.T, d *apiDaemon, token, typ, id, status string) {
	t.Helper()
	waitFor(t, "saga "+typ+"/"+id+" "+status, func() bool {
		code, _, body := d.get(t, "/v1/sagas/"+typ+"/"+id, token, nil)
		return code == http.StatusOK && strings.Contains(string(body), `"status":"`+status+`"`)
	})
}

// testWait holds the answers of ?wait= (TestAPI runs it): 200 with the
// terminal event for a saga that ends within the wait (told by the events'
// reader) or had ended (told by the view, at once), 202 for one that still
// runs when the wait runs out, 400 for a wait it cannot have.
func testWait(t *testing.T, d *apiDaemon, token string) {
	var completed, compensated message.Event
	t.Run("ends within the wait", func(t *testing.T) {
		// A note ends in the transaction that starts it: the wait was
		// registered before the start was produced.
		code, _, body := d.post(t, "/v1/sagas/note/n-w1?wait=20s", token, `{"id":"n-w1"}`)
		completed = waitOutcome(t, "POST ?wait of a saga that ends at once", answer{code: code, body: body})
		if completed.Type != message.EventSagaCompleted || completed.State != message.StatusCompleted || completed.SagaID != "n-w1" ||
			completed.SagaType != "note" || string(completed.Data) != `{"id":"n-w1"}` || completed.Version < 1 || completed.At.IsZero() {
			t.Errorf("outcome %s: want SagaCompleted of note/n-w1 with its data", body)
		}
		// A parcel waits for its courier, who never answers, until it is
		// asked to compensate while a GET waits.
		code, _, body = d.post(t, "/v1/sagas/parcel/p-w1", token, `{"id":"p-w1","weight":1}`)
		if code != http.StatusAccepted {
			t.Fatalf("start p-w1: %d %s", code, body)
		}
		sagaStatus(t, d, token, "parcel", "p-w1", "running")
		got := make(chan answer, 1)
		go func() {
			code, hdr, body := d.get(t, "/v1/sagas/parcel/p-w1?wait=25s", token, nil)
			got <- answer{code, hdr, body}
		}()
		waitFor(t, "the GET to wait", func() bool { return scrapeValue(t, d, "ksaga_api_waiters") == 1 })
		code, _, body = d.post(t, "/v1/sagas/parcel/p-w1/compensate", token, `{"reason":"changed my mind"}`)
		if code != http.StatusAccepted {
			t.Fatalf("compensate p-w1: %d %s", code, body)
		}
		a := <-got
		compensated = waitOutcome(t, "GET ?wait of a saga compensated during the wait", a)
		if compensated.Type != message.EventSagaCompensated || compensated.State != message.StatusCompensated ||
			!strings.Contains(compensated.Reason, "changed my mind") || string(compensated.Data) != `{"id":"p-w1","weight":1}` {
			t.Errorf("outcome %s: want SagaCompensated with the reason and the data", a.body)
		}
		if n := scrapeValue(t, d, "ksaga_api_waiters"); n != 0 {
			t.Errorf("ksaga_api_waiters %v after the wait, want 0", n)
		}
	})

	t.Run("still running", func(t *testing.T) {
		began := time.Now()
		code, hdr, body := d.post(t, "/v1/sagas/parcel/p-w2?wait=500ms", token, `{"id":"p-w2","weight":2}`)
		if took := time.Since(began); code != http.StatusAccepted || took < 500*time.Millisecond {
			t.Fatalf("POST ?wait=500ms of a saga that runs on: %d %s after %v, want 202 after 500ms", code, body, took)
		}
		if want := `{"saga_id":"p-w2","type":"parcel","status":"accepted"}` + "\n"; string(body) != want || hdr.Get("Location") != "/v1/sagas/parcel/p-w2" {
			t.Errorf("202: body %s, Location %q; want %s and the saga's URL", body, hdr.Get("Location"), want)
		}
		sagaStatus(t, d, token, "parcel", "p-w2", "running")
		began = time.Now()
		code, hdr, body = d.get(t, "/v1/sagas/parcel/p-w2?wait=1", token, nil)
		if took := time.Since(began); code != http.StatusAccepted || took < time.Second {
			t.Fatalf("GET ?wait=1 (seconds) of a running saga: %d %s after %v, want 202 after 1s", code, body, took)
		}
		var v struct {
			SagaID  string `json:"saga_id"`
			Status  string `json:"status"`
			Step    string `json:"step"`
			Version int64  `json:"version"`
		}
		if err := json.Unmarshal(body, &v); err != nil || v.SagaID != "p-w2" || v.Status != "running" || v.Step != "ship" || v.Version < 1 {
			t.Errorf("202 body %s: want the saga's state, running at step ship", body)
		}
		if hdr.Get("ETag") == "" {
			t.Error("202 without the state's ETag")
		}
	})

	t.Run("already ended", func(t *testing.T) {
		for _, tc := range []struct {
			name, method, path, body string
			want                     message.Event
		}{
			{"GET a completed saga", http.MethodGet, "/v1/sagas/note/n-w1?wait=30s", "", completed},
			{"POST a completed saga's start again", http.MethodPost, "/v1/sagas/note/n-w1?wait=30s", `{"id":"n-w1"}`, completed},
			{"GET a compensated saga", http.MethodGet, "/v1/sagas/parcel/p-w1?wait=30s", "", compensated},
		} {
			began := time.Now()
			var a answer
			if tc.method == http.MethodGet {
				a.code, a.hdr, a.body = d.get(t, tc.path, token, nil)
			} else {
				a.code, a.hdr, a.body = d.post(t, tc.path, token, tc.body)
			}
			if took := time.Since(began); took > 5*time.Second {
				t.Errorf("%s: answered after %v, want at once", tc.name, took)
			}
			// Rebuilt from the view, it is the event the engine wrote.
			ev := waitOutcome(t, tc.name, a)
			if ev.SagaID != tc.want.SagaID || ev.SagaType != tc.want.SagaType || ev.Type != tc.want.Type || ev.State != tc.want.State ||
				ev.Reason != tc.want.Reason || ev.Step != tc.want.Step || ev.Version != tc.want.Version || string(ev.Data) != string(tc.want.Data) {
				t.Errorf("%s: outcome %s, want the terminal event %+v", tc.name, a.body, tc.want)
			}
		}
	})

	t.Run("bad wait", func(t *testing.T) {
		for _, tc := range []struct {
			name, method, query, reason string
		}{
			{"not a duration", "GET", "?wait=soon", `wait "soon" is not a duration such as 30s or 1m, nor whole seconds; this API waits at most 1m0s (--api-max-wait)`},
			{"longer than the bound", "GET", "?wait=2m", "wait 2m0s is longer than allowed: this API waits at most 1m0s (--api-max-wait)"},
			{"seconds past the bound", "POST", "?wait=61", "wait 1m1s is longer than allowed"},
			{"negative", "POST", "?wait=-1s", "wait -1s is negative; this API waits at most 1m0s"},
			{"twice", "GET", "?wait=1s&wait=2s", "wait is given more than once"},
		} {
			code, _, body := d.do(t, tc.method, "/v1/sagas/parcel/p-w3"+tc.query, token, strings.NewReader(`{"id":"p-w3","weight":1}`),
				map[string]string{"Content-Type": "application/json"})
			var e struct{ Error string }
			if err := json.Unmarshal(body, &e); code != http.StatusBadRequest || err != nil || !strings.Contains(e.Error, tc.reason) {
				t.Errorf("%s: %d %s, want 400 saying %q", tc.name, code, body, tc.reason)
			}
		}
		// The refused starts were not produced.
		time.Sleep(time.Second)
		if code, _, body := d.get(t, "/v1/sagas/parcel/p-w3", token, nil); code != http.StatusNotFound {
			t.Errorf("GET p-w3 after starts with a bad wait: %d %s, want 404", code, body)
		}
	})
}

// testResume holds POST .../resume (TestAPI runs it, after testWait): a
// parked saga is resumed (SagaResumed, its step's command sent again) and
// the request audited in its transaction; a saga that is not parked is 409
// and nothing is written.
func testResume(t *testing.T, d *apiDaemon, brokers []string, token, tokenName string) {
	code, _, body := d.post(t, "/v1/sagas/note/held-1", token, `{"id":"held-1"}`)
	if code != http.StatusAccepted {
		t.Fatalf("start held-1: %d %s", code, body)
	}
	sagaStatus(t, d, token, "note", "held-1", "parked")
	code, _, body = d.post(t, "/v1/sagas/note/held-1/resume", token, `{"reason":"the courier is back"}`)
	if want := `{"saga_id":"held-1","type":"note","status":"accepted"}` + "\n"; code != http.StatusAccepted || string(body) != want {
		t.Fatalf("resume a parked saga: %d %s, want 202 %s", code, body, want)
	}
	// The engine took it: resumed with the reason, its command sent
	// again, unanswered again, parked again.
	evs := sagaEvents(t, brokers, "note", "held-1", func(evs []message.Event) bool {
		return len(evs) > 0 && evs[len(evs)-1].Type == message.EventSagaParked && slicesHas(evs, message.EventSagaResumed)
	})
	var types []string
	resumed := false
	for _, ev := range evs {
		types = append(types, ev.Type)
		if ev.Type == message.EventSagaResumed {
			resumed = ev.Reason == "resumed: the courier is back" && ev.Step == "hold"
		}
	}
	if !resumed || types[len(types)-1] != message.EventSagaParked {
		t.Errorf("held-1's events %q: want a SagaResumed at step hold, reason \"resumed: the courier is back\", then SagaParked", types)
	}
	audits := auditRecords(t, brokers, "note", 1, 30*time.Second)
	if len(audits) != 1 {
		t.Fatalf("note audit records: %d, want 1", len(audits))
	}
	if a := audits[0]; a.Action != message.AuditResume || a.SagaType != "note" || a.SagaID != "held-1" || a.By != tokenName ||
		a.Note != "the courier is back" || a.Tool != "apid-api" || a.Inbox != "saga.note.inbox" || a.Partition == nil ||
		*a.Partition != message.HomePartition("held-1", 3) || a.Run == "" {
		t.Errorf("audit record %+v: want a saga-resume of note/held-1 by %s, tool apid-api, note \"the courier is back\"", a, tokenName)
	}

	// 409 for a saga that is not parked, and nothing written.
	for _, tc := range []struct{ path, reason string }{
		{"/v1/sagas/parcel/p-w2/resume", "saga parcel/p-w2 is running, not parked: there is nothing to resume"},
		{"/v1/sagas/note/n-w1/resume", "saga note/n-w1 has ended (completed): there is nothing to resume"},
	} {
		code, _, body := d.post(t, tc.path, token, ``)
		var e struct{ Error string }
		if err := json.Unmarshal(body, &e); code != http.StatusConflict || err != nil || e.Error != tc.reason {
			t.Errorf("POST %s: %d %s, want 409 %q", tc.path, code, body, tc.reason)
		}
	}
	if n := len(auditRecords(t, brokers, "note", 2, 2*time.Second)); n != 1 {
		t.Errorf("note audit records after refused resumes: %d, want 1", n)
	}
}

func slicesHas(evs []message.Event, typ string) bool {
	for _, ev := range evs {
		if ev.Type == typ {
			return true
		}
	}
	return false
}

// sagaEvents reads saga typ/id's committed events until done returns true
// (or 30 seconds pass).
func sagaEvents(t *testing.T, brokers []string, typ, id string, done func([]message.Event) bool) []message.Event {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(message.Events(typ)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var evs []message.Event
	for !done(evs) && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			var ev message.Event
			if string(r.Key) == id && json.Unmarshal(r.Value, &ev) == nil {
				evs = append(evs, ev)
			}
		})
	}
	return evs
}

// TestAPIWaiters holds the bounds of waiting: past --api-max-waiters a
// request that asks to wait is answered 429 and nothing is done; a waiting
// request does not hold one of --api-max-in-flight (a start goes through
// while it waits, with a limit of one); stopping the daemon ends the waits
// at once, with 202.
func TestAPIWaiters(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	brokers := cluster.ListenAddrs()
	rs := redistest.StartServer(t)
	d := startAPIDaemon(t, brokers, rs.Addr, nil, "--api-insecure-no-auth", "--api-max-in-flight", "1", "--api-max-waiters", "1", "--shutdown-drain", "0")
	if code, _, body := d.post(t, "/v1/sagas/parcel/q-1", "", `{"id":"q-1","weight":1}`); code != http.StatusAccepted {
		t.Fatalf("start q-1: %d %s", code, body)
	}
	sagaStatus(t, d, "", "parcel", "q-1", "running")
	got := make(chan answer, 1)
	go func() {
		code, hdr, body := d.get(t, "/v1/sagas/parcel/q-1?wait=50s", "", nil)
		got <- answer{code, hdr, body}
	}()
	waitFor(t, "the GET to wait", func() bool { return scrapeValue(t, d, "ksaga_api_waiters") == 1 })
	if n := scrapeValue(t, d, "ksaga_api_in_flight"); n != 0 {
		t.Errorf("ksaga_api_in_flight %v while one request waits, want 0", n)
	}

	starts := inboxStarts(t, brokers, "parcel")
	for _, r := range []struct{ method, path string }{{http.MethodGet, "/v1/sagas/parcel/q-1?wait=1s"}, {http.MethodPost, "/v1/sagas/parcel/q-2?wait=1s"}} {
		code, hdr, body := d.do(t, r.method, r.path, "", strings.NewReader(`{"id":"q-2","weight":1}`), map[string]string{"Content-Type": "application/json"})
		if code != http.StatusTooManyRequests || hdr.Get("Retry-After") != "1" || !strings.Contains(string(body), "as many requests wait for outcomes as may at once (1, --api-max-waiters)") {
			t.Errorf("%s %s with every waiter's slot taken: %d %s (Retry-After %q), want 429 naming --api-max-waiters", r.method, r.path, code, body, hdr.Get("Retry-After"))
		}
	}
	if n := inboxStarts(t, brokers, "parcel"); n != starts {
		t.Errorf("start requests on the inbox: %d after a refused POST ?wait, want %d", n, starts)
	}
	// The one in-flight slot is free: a start and a read go through.
	if code, _, body := d.post(t, "/v1/sagas/parcel/q-3", "", `{"id":"q-3","weight":1}`); code != http.StatusAccepted {
		t.Errorf("a start while a request waits, with --api-max-in-flight 1: %d %s, want 202", code, body)
	}
	if code, _, body := d.get(t, "/v1/sagas/parcel/q-1", "", nil); code != http.StatusOK {
		t.Errorf("a read while a request waits: %d %s, want 200", code, body)
	}

	began := time.Now()
	d.stop(t)
	select {
	case a := <-got:
		if a.code != http.StatusAccepted || !strings.Contains(string(a.body), `"status":"running"`) {
			t.Errorf("the wait when the daemon stopped: %d %s, want 202 with the running saga", a.code, a.body)
		}
		if took := time.Since(began); took > 10*time.Second {
			t.Errorf("the wait answered %v after the stop began, want at once", took)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the wait did not end when the daemon stopped")
	}
}
