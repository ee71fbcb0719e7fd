package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/client"
	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/internal/kfaketest"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/internal/tlstest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/topic"
)

// parcel is the data of the parcel saga: a local step, then a command to
// the participant courier, which no test runs, so the saga waits there
// until it is asked to compensate.
type parcel struct {
	ID     string `json:"id"`
	Weight int    `json:"weight"`
}

func (p *parcel) Validate() error {
	if p.Weight <= 0 {
		return errors.New("weight must be positive")
	}
	return nil
}

var parcelSaga = saga.New("parcel",
	saga.Step[parcel]{Name: "weigh", Local: func(context.Context, *parcel) error { return nil }},
	saga.Step[parcel]{Name: "ship", Do: func(_ context.Context, p *parcel) (saga.Command, error) {
		return saga.Command{Participant: "courier", Type: "Ship", Payload: p}, nil
	}},
)

// note is the data of the note saga: a local step, so a note saga ends
// (SagaCompleted) in the transaction that starts it; but a note whose id
// starts with "held-" is then sent to the courier, whom no test runs, and
// parks when its one attempt gets no reply within 300ms.
type note struct {
	ID string `json:"id"`
}

var noteSaga = saga.New("note",
	saga.Step[note]{Name: "write", Local: func(context.Context, *note) error { return nil }},
	saga.Step[note]{Name: "hold", Do: func(_ context.Context, n *note) (saga.Command, error) {
		return saga.Command{Participant: "courier", Type: "Hold", Payload: n}, nil
	}, Skip: func(n *note) bool { return !strings.HasPrefix(n.ID, "held-") },
		ReplyTimeout: 300 * time.Millisecond, Retry: retry.Policy{MaxAttempts: 1}, Park: true},
)

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// apiDaemon is a daemon.Run with --api-addr, on a kfake and a redis-server.
type apiDaemon struct {
	base, metrics string
	client        *http.Client
	stderr        *syncBuffer
	cancel        context.CancelFunc
	done          chan int
}

// runDaemon runs the parcel and note sagas (no participant runs) with args
// added to the usual ones, until the test ends.
func runDaemon(t *testing.T, brokers []string, redisAddr string, args ...string) *apiDaemon {
	t.Helper()
	d := &apiDaemon{metrics: freeAddr(t), stderr: &syncBuffer{}, done: make(chan int, 1)}
	var ctx context.Context
	ctx, d.cancel = context.WithCancel(context.Background())
	go func() {
		d.done <- daemon.Run(ctx, append([]string{
			"--kafka-brokers", strings.Join(brokers, ","), "--redis-addr", redisAddr, "--participants", "none",
			"--replication-factor", "1", "--partitions", "3", "--metrics-addr", d.metrics,
			"--transactional-id", "api-0", "--session-timeout", "6s", "--log-format", "json",
		}, args...), daemon.Name("apid"), daemon.Saga(parcelSaga), daemon.Saga(noteSaga),
			daemon.Participant("courier", echoHandler), daemon.Output(io.Discard, d.stderr), env(nil))
	}()
	t.Cleanup(func() { d.stop(t) })
	return d
}

// startAPIDaemon is runDaemon with the HTTP API on a free port; it waits
// until the API answers and the daemon is ready. Requests go through
// client (nil: a plain one).
func startAPIDaemon(t *testing.T, brokers []string, redisAddr string, client *http.Client, args ...string) *apiDaemon {
	t.Helper()
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	apiAddr := freeAddr(t)
	d := runDaemon(t, brokers, redisAddr, append([]string{"--api-addr", apiAddr}, args...)...)
	d.client, d.base = client, "http://"+apiAddr
	if slices.Contains(args, "--api-tls-cert") {
		d.base = "https://" + apiAddr
	}
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case code := <-d.done:
			d.done <- code
			t.Fatalf("daemon exited with %d while starting:\n%s", code, d.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API and the engines are not ready after a minute:\n%s", d.stderr)
		}
		code, _, _ := d.get(t, "/v1/openapi.json", "", nil)
		if code == http.StatusOK {
			if resp, err := http.Get("http://" + d.metrics + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return d
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exited returns the daemon's exit status, or -1 while it runs.
func (d *apiDaemon) exited() int {
	select {
	case code := <-d.done:
		d.done <- code
		return code
	default:
		return -1
	}
}

// stop cancels the daemon and waits for it; it is safe to call twice.
func (d *apiDaemon) stop(t *testing.T) int {
	t.Helper()
	d.cancel()
	select {
	case code := <-d.done:
		d.done <- code
		return code
	case <-time.After(time.Minute):
		t.Fatalf("the daemon did not stop within a minute:\n%s", d.stderr)
		return -1
	}
}

// do sends a request and returns the status, the headers and the body; a
// transport error is status 0.
func (d *apiDaemon) do(t *testing.T, method, path, token string, body io.Reader, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, d.base+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, nil, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// from returns d with a client whose requests come from the loopback
// address ip (127.0.0.2, …): the API's backoff after failed
// authentications counts per client address.
func (d *apiDaemon) from(ip string) *apiDaemon {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if base, ok := d.client.Transport.(*http.Transport); ok {
		tr = base.Clone()
	}
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	tr.DialContext = dialer.DialContext
	c := *d
	c.client = &http.Client{Transport: tr, Timeout: d.client.Timeout}
	return &c
}

func (d *apiDaemon) get(t *testing.T, path, token string, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	return d.do(t, http.MethodGet, path, token, nil, hdr)
}

func (d *apiDaemon) post(t *testing.T, path, token, body string) (int, http.Header, []byte) {
	t.Helper()
	return d.do(t, http.MethodPost, path, token, strings.NewReader(body), map[string]string{"Content-Type": "application/json"})
}

// routes returns the method, route and status of every answer the API
// counted in ksaga_api_requests_total (series at zero left out); the
// answers to requests that matched no operation are "unmatched <code>".
func (d *apiDaemon) routes(t *testing.T) []string {
	t.Helper()
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	label := regexp.MustCompile(`(\w+)="([^"]*)"`)
	var out []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "ksaga_api_requests_total{")
		if !ok {
			continue
		}
		labels := map[string]string{}
		for _, m := range label.FindAllStringSubmatch(line, -1) {
			labels[m[1]] = m[2]
		}
		if strings.HasSuffix(line, "} 0") {
			continue
		}
		if labels["route"] == "unmatched" {
			out = append(out, "unmatched "+labels["code"])
		} else {
			out = append(out, labels["method"]+" "+labels["route"]+" "+labels["code"])
		}
	}
	slices.Sort(out)
	return out
}

// documented returns the method, path and status of every response the
// OpenAPI document lists, and "unmatched <code>" for each answer its
// x-ksaga-unmatched lists (to requests that match no operation).
func documented(t *testing.T, doc []byte) []string {
	t.Helper()
	var d struct {
		OpenAPI   string                                `json:"openapi"`
		Paths     map[string]map[string]json.RawMessage `json:"paths"`
		Unmatched struct {
			Responses map[string]json.RawMessage `json:"responses"`
		} `json:"x-ksaga-unmatched"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatalf("the OpenAPI document is not JSON: %v", err)
	}
	if !strings.HasPrefix(d.OpenAPI, "3.") {
		t.Errorf("openapi %q, want 3.x", d.OpenAPI)
	}
	var out []string
	for path, ops := range d.Paths {
		for method, raw := range ops {
			if method == "parameters" {
				continue
			}
			var op struct {
				Responses map[string]json.RawMessage `json:"responses"`
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			for code := range op.Responses {
				out = append(out, strings.ToUpper(method)+" "+path+" "+code)
			}
		}
	}
	for code := range d.Unmatched.Responses {
		out = append(out, "unmatched "+code)
	}
	slices.Sort(out)
	return out
}

// failAPIProduces makes the broker answer NOT_ENOUGH_REPLICAS to every
// produce request of the API while fail is set: its starts, outside a
// transaction, and its compensations, in transactions of the id
// <transactional id>.api (the engine's transactional ids have no dot).
func failAPIProduces(cluster *kfake.Cluster, fail *atomic.Bool) {
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		pr := req.(*kmsg.ProduceRequest)
		if !fail.Load() || (pr.TransactionID != nil && !strings.HasSuffix(*pr.TransactionID, ".api")) {
			return nil, nil, false
		}
		return kfaketest.ProduceError(pr, kerr.NotEnoughReplicas.Code), nil, true
	})
}

// auditRecords reads the committed audit records of saga.<typ>.audit
// until there are want of them or the timeout passes.
func auditRecords(t *testing.T, brokers []string, typ string, want int, timeout time.Duration) []audit.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic.Audit(typ)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []audit.Record
	for len(out) < want && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			var a audit.Record
			if err := json.Unmarshal(r.Value, &a); err != nil {
				t.Errorf("audit record %s: %v", r.Value, err)
				return
			}
			out = append(out, a)
		})
	}
	return out
}

// history is what a saga type's events and dead letters say per saga id.
type history struct {
	started, terminal, events map[string]int
	dead                      []string // ids of dead-lettered inbox records
}

// readHistory reads saga.<typ>.events and saga.<typ>.inbox-dlt (committed
// records) until done returns true or the timeout passes.
func readHistory(t *testing.T, brokers []string, typ string, timeout time.Duration, done func(history) bool) history {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(message.Events(typ), message.DLT(typ)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	h := history{started: map[string]int{}, terminal: map[string]int{}, events: map[string]int{}}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for !done(h) {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return h
		}
		fs.EachRecord(func(r *kgo.Record) {
			if r.Topic == message.DLT(typ) {
				h.dead = append(h.dead, string(r.Key))
				return
			}
			var ev message.Event
			if err := json.Unmarshal(r.Value, &ev); err != nil {
				t.Errorf("event %s: %v", r.Value, err)
				return
			}
			h.events[ev.SagaID]++
			switch {
			case ev.Type == message.EventSagaStarted:
				h.started[ev.SagaID]++
			case message.Terminal(ev.Type):
				h.terminal[ev.SagaID]++
			}
		})
	}
	return h
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Write and rename, as Kubernetes updates a mounted Secret: a reader
	// never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestAPI drives every status of the HTTP API through a daemon on kfake and
// a redis-server, checks what each means (a 202 start is one saga whatever
// the retries, a 409 starts nothing, a 503 comes with Retry-After and no
// internals, a compensation is checked against the view and audited with
// the token's name, a token does only what its scopes allow, the token
// file is read again when it changes), and finally that the statuses the
// handlers and the router answered are exactly those the OpenAPI document
// lists.
func TestAPI(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	// A cleanup, not a defer: it runs after those of the daemons, which
	// stop faster with their Kafka still there.
	t.Cleanup(cluster.Close)
	var failProduce atomic.Bool
	failAPIProduces(cluster, &failProduce)
	brokers := cluster.ListenAddrs()
	rs := redistest.StartServer(t)
	tokenFile := filepath.Join(t.TempDir(), "tokens")
	const (
		token       = "t0ken-one_0123456789abcdefghijkl" // the old format, line 3: named line-3
		token2      = "t0ken-two_0123456789abcdefghijkl"
		readerToken = "t0ken-reader_0123456789abcdefghi"
	)
	writeFile(t, tokenFile, "# the API's tokens\n\n  "+token+"  \nparcel-reader "+readerToken+" read:parcel\n")
	d := startAPIDaemon(t, brokers, rs.Addr, nil, "--api-token-file", tokenFile, "--api-produce-timeout", "1s")

	wantStatus := func(t *testing.T, what string, code int, body []byte, want int) {
		t.Helper()
		if code != want {
			t.Fatalf("%s: status %d (%s), want %d", what, code, body, want)
		}
	}
	errorOf := func(t *testing.T, body []byte) string {
		t.Helper()
		var e struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
			t.Fatalf("body %q is not {\"error\": ...}", body)
		}
		return e.Error
	}
	// noInternals fails when an answer names an address, a Redis command
	// or a Kafka error: those are for the log.
	noInternals := func(t *testing.T, what string, body []byte) {
		t.Helper()
		for _, s := range []string{"127.0.0.1", "dial", "HMGET", "ksaga:{", "NOT_ENOUGH_REPLICAS", "connection refused", rs.Addr} {
			if strings.Contains(string(body), s) {
				t.Errorf("%s: body %s names %q", what, body, s)
			}
		}
	}
	const start = `{"id":"p-1","weight":3}`

	t.Run("openapi document", func(t *testing.T) {
		code, hdr, body := d.get(t, "/v1/openapi.json", "", nil)
		wantStatus(t, "GET /v1/openapi.json without a token", code, body, http.StatusOK)
		if ct := hdr.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q, want application/json", ct)
		}
		file, err := os.ReadFile("openapi.json")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(body, file) {
			t.Error("the served document differs from daemon/openapi.json")
		}
	})

	t.Run("401", func(t *testing.T) {
		for i, tc := range []struct {
			name, auth, challenge string
		}{
			{"no token", "", `Bearer realm="ksaga"`},
			{"wrong token", "Bearer nope", `Bearer realm="ksaga", error="invalid_token"`},
			{"other scheme", "Basic " + token, `Bearer realm="ksaga"`},
			{"a comment of the file", "Bearer #", `Bearer realm="ksaga", error="invalid_token"`},
			{"the name of a token", "Bearer parcel-reader", `Bearer realm="ksaga", error="invalid_token"`},
			{"a token's prefix", "Bearer " + token[:31], `Bearer realm="ksaga", error="invalid_token"`},
		} {
			// Each case from an address of its own: the backoff
			// after failed authentications counts per address.
			c := d.from(fmt.Sprintf("127.0.0.%d", 10+i))
			for _, r := range []struct{ method, path string }{
				{http.MethodPost, "/v1/sagas/parcel/p-1"}, {http.MethodGet, "/v1/sagas/parcel/p-1"},
				{http.MethodPost, "/v1/sagas/parcel/p-1/compensate"}, {http.MethodPost, "/v1/sagas/nosuch/p-1"},
				{http.MethodPost, "/v1/sagas/parcel/p-1/resume"}, {http.MethodGet, "/v1/sagas/parcel/p-1?wait=1s"},
			} {
				code, hdr, body := c.do(t, r.method, r.path, "", strings.NewReader(start),
					map[string]string{"Authorization": tc.auth, "Content-Type": "application/json"})
				wantStatus(t, tc.name+": "+r.method+" "+r.path, code, body, http.StatusUnauthorized)
				if got := hdr.Get("WWW-Authenticate"); got != tc.challenge {
					t.Errorf("%s: WWW-Authenticate %q, want %q", tc.name, got, tc.challenge)
				}
				errorOf(t, body)
			}
		}
		// Nothing was started.
		code, _, body := d.get(t, "/v1/sagas/parcel/p-1", token, nil)
		wantStatus(t, "GET after refused starts", code, body, http.StatusNotFound)
	})

	t.Run("429 after failed authentications", func(t *testing.T) {
		c := d.from("127.0.0.30")
		for i := range 10 {
			code, _, body := c.get(t, "/v1/sagas/parcel/p-1", "wrong-"+strconv.Itoa(i), nil)
			wantStatus(t, fmt.Sprintf("failure %d", i+1), code, body, http.StatusUnauthorized)
		}
		// The address is backed off on every route, whatever its
		// token, the valid one included: it cannot learn which is.
		for _, r := range []struct{ method, path, body string }{
			{http.MethodGet, "/v1/sagas/parcel/p-1", ""}, {http.MethodPost, "/v1/sagas/parcel/p-1", start},
			{http.MethodPost, "/v1/sagas/parcel/p-1/compensate", "{}"}, {http.MethodPost, "/v1/sagas/parcel/p-1/resume", "{}"},
		} {
			for _, tok := range []string{"wrong", token} {
				code, hdr, body := c.do(t, r.method, r.path, tok, strings.NewReader(r.body), map[string]string{"Content-Type": "application/json"})
				wantStatus(t, r.method+" "+r.path+" after 10 failures", code, body, http.StatusTooManyRequests)
				if ra, err := strconv.Atoi(hdr.Get("Retry-After")); err != nil || ra < 1 || ra > 5 {
					t.Errorf("Retry-After %q, want 1 to 5 seconds", hdr.Get("Retry-After"))
				}
				if msg := errorOf(t, body); !strings.Contains(msg, "missing or invalid bearer token") {
					t.Errorf("429 error %q", msg)
				}
			}
		}
		// Another address is not.
		code, _, body := d.from("127.0.0.31").get(t, "/v1/sagas/parcel/p-1", token, nil)
		wantStatus(t, "another address", code, body, http.StatusNotFound)
	})

	t.Run("hostile input", func(t *testing.T) {
		deep := strings.Repeat("[", 10001) + strings.Repeat("]", 10001)
		asJSON := map[string]string{"Content-Type": "application/json"}
		for _, tc := range []struct {
			name, method, path, body string
			hdr                      map[string]string
			want                     int
			reason                   string
		}{
			// Saga ids: idRule, percent-encoded or not.
			{"NUL in the id", "GET", "/v1/sagas/parcel/a%00b", "", nil, 400, "the saga id has U+0000 (NUL) at byte 1: a saga id is 1 to 128 characters of A-Z, a-z, 0-9 and . _ : @ -, not starting with '.'"},
			{"CR LF in the id", "POST", "/v1/sagas/parcel/a%0D%0Ab", `{"id":"a","weight":1}`, asJSON, 400, "U+000D (CR) at byte 1"},
			{"LF in the id", "GET", "/v1/sagas/parcel/a%0Ab", "", nil, 400, "U+000A (LF) at byte 1"},
			{"ESC in the id", "POST", "/v1/sagas/parcel/a%1B%5B2Jb", `{"id":"a","weight":1}`, asJSON, 400, "U+001B (ESC) at byte 1"},
			{"U+202E in the id", "POST", "/v1/sagas/parcel/p-%E2%80%AEgnp.exe", `{"id":"a","weight":1}`, asJSON, 400, "U+202E at byte 2"},
			{"%2F in the id", "GET", "/v1/sagas/parcel/a%2Fb", "", nil, 400, "'/' (%2F) at byte 1"},
			{"%2f in the id", "POST", "/v1/sagas/parcel/a%2fb/compensate", "", nil, 400, "'/' (%2F) at byte 1"},
			{"%2E%2E as the id", "GET", "/v1/sagas/parcel/%2E%2E", "", nil, 400, "a leading '.' at byte 0"},
			{".. as the id", "GET", "/v1/sagas/parcel/..", "", nil, 400, "a leading '.' at byte 0"},
			{"%252F in the id", "GET", "/v1/sagas/parcel/a%252Fb", "", nil, 400, "'%' at byte 1"},
			{"a space in the id", "GET", "/v1/sagas/parcel/a%20b", "", nil, 400, "' ' at byte 1"},
			{"non-ASCII in the id", "GET", "/v1/sagas/parcel/caf%C3%A9", "", nil, 400, "U+00E9 at byte 3"},
			{"id not UTF-8", "POST", "/v1/sagas/parcel/%FF", start, asJSON, 400, "the byte 0xFF (not UTF-8) at byte 0"},
			{"id too long", "POST", "/v1/sagas/parcel/" + strings.Repeat("i", 129), start, asJSON, 400, "the saga id is 129 bytes long, the limit is 128"},
			{"id empty", "GET", "/v1/sagas/parcel/", "", nil, 400, "the saga id is empty"},
			// Paths the router does not serve: JSON, never a redirect.
			{"a path with ..", "GET", "/v1/sagas/parcel/a/../b", "", nil, 404, "no such endpoint"},
			{"a path with //", "GET", "/v1/sagas//p-1", "", nil, 404, `unknown saga type ""`},
			{"another path", "GET", "/metrics", "", nil, 404, "no such endpoint"},
			{"a trailing slash", "GET", "/v1/openapi.json/", "", nil, 404, "no such endpoint"},
			{"another method", "DELETE", "/v1/sagas/parcel/p-1", "", nil, 405, "method DELETE is not allowed on /v1/sagas/{type}/{id}: use GET or POST"},
			{"GET compensate", "GET", "/v1/sagas/parcel/p-1/compensate", "", nil, 405, "use POST"},
			{"GET resume", "GET", "/v1/sagas/parcel/p-1/resume", "", nil, 405, "use POST"},
			{"POST the document", "POST", "/v1/openapi.json", "{}", asJSON, 405, "use GET"},
			// Bodies: one JSON value, canonical, of the data type's
			// field names.
			{"a key twice", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":1,"weight":2}`, asJSON, 400, `the body has the key "weight" twice in one object (at offset 23): keys must be unique`},
			{"a key twice, escaped", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":1,"w\u0065ight":2}`, asJSON, 400, `the key "weight" twice`},
			{"a field name in capitals", "POST", "/v1/sagas/parcel/p-2", `{"ID":"p-2","weight":1}`, asJSON, 400, `the body has the key "ID" where "id" is expected: field names are case-sensitive; write "id"`},
			{"a field name in mixed case", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","Weight":1}`, asJSON, 400, `the key "Weight" where "weight" is expected`},
			{"a field name with a Kelvin sign", "POST", "/v1/sagas/parcel/p-2", "{\"id\":\"p-2\",\"weight\":1,\"\u212aey\":1}", asJSON, 400, `json: unknown field`},
			{"a compensate field in capitals", "POST", "/v1/sagas/parcel/p-1/compensate", `{"REASON":"x"}`, asJSON, 400, `the key "REASON" where "reason" is expected`},
			{"body not UTF-8", "POST", "/v1/sagas/parcel/p-2", "{\"id\":\"p-2\xff\",\"weight\":1}", asJSON, 400, "the body is not one JSON value: invalid UTF-8 in a string at offset 10"},
			{"a key not UTF-8", "POST", "/v1/sagas/parcel/p-2", "{\"id\xc3\":\"p-2\",\"weight\":1}", asJSON, 400, "invalid UTF-8"},
			{"lone surrogate", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2\ud800","weight":1}`, asJSON, 400, `lone UTF-16 surrogate \ud800`},
			{"nested 10001 deep", "POST", "/v1/sagas/parcel/p-2", deep, asJSON, 400, "the body is not one JSON value"},
			{"a reason with a newline", "POST", "/v1/sagas/parcel/p-1/compensate", `{"reason":"ok\nby: root"}`, asJSON, 400, "the reason has U+000A (LF) at byte 2"},
			{"a reason with ESC", "POST", "/v1/sagas/parcel/p-1/compensate", `{"reason":"\u001b[2J"}`, asJSON, 400, "U+001B (ESC)"},
			{"a resume reason with a newline", "POST", "/v1/sagas/parcel/p-1/resume", `{"reason":"ok\nby: root"}`, asJSON, 400, "the reason has U+000A (LF) at byte 2"},
			{"a reason too long", "POST", "/v1/sagas/parcel/p-1/compensate", `{"reason":"` + strings.Repeat("r", 1025) + `"}`, asJSON, 400, "the reason is 1025 bytes long, the limit is 1024"},
			// Media types: a cross-site form cannot post JSON.
			{"a form post", "POST", "/v1/sagas/parcel/p-2", `id=p-2&weight=1`, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415, `Content-Type "application/x-www-form-urlencoded" is not application/json`},
			{"a text/plain post", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":1}`, map[string]string{"Content-Type": "text/plain"}, 415, "is not application/json"},
			{"a multipart post", "POST", "/v1/sagas/parcel/p-2/compensate", "--x\r\n\r\n--x--", map[string]string{"Content-Type": "multipart/form-data; boundary=x"}, 415, "is not application/json"},
			{"a form post of resume", "POST", "/v1/sagas/parcel/p-2/resume", `reason=x`, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 415, "is not application/json"},
			{"no Content-Type", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":1}`, nil, 415, "no Content-Type"},
			{"another charset", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":1}`, map[string]string{"Content-Type": "application/json; charset=latin1"}, 415, `charset "latin1": the body must be UTF-8`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var body io.Reader
				if tc.body != "" {
					body = strings.NewReader(tc.body)
				}
				code, hdr, got := d.do(t, tc.method, tc.path, token, body, tc.hdr)
				wantStatus(t, tc.name, code, got, tc.want)
				if ct := hdr.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q, want application/json", ct)
				}
				if msg := errorOf(t, got); !strings.Contains(msg, tc.reason) {
					t.Errorf("error %q, want it to contain %q", msg, tc.reason)
				}
				if tc.want == 405 && hdr.Get("Allow") == "" {
					t.Error("405 without Allow")
				}
			})
		}
		// None of them started a saga.
		for _, id := range []string{"p-2", "a"} {
			code, _, body := d.get(t, "/v1/sagas/parcel/"+id, token, nil)
			wantStatus(t, "GET "+id+" after the hostile requests", code, body, http.StatusNotFound)
		}
		// A charset of utf-8 is fine.
		code, _, body := d.do(t, http.MethodPost, "/v1/sagas/note/n-utf8", token, strings.NewReader(`{"id":"n-utf8"}`),
			map[string]string{"Content-Type": "application/json; charset=UTF-8"})
		wantStatus(t, "charset=UTF-8", code, body, http.StatusAccepted)
	})

	t.Run("400 404 413", func(t *testing.T) {
		huge := `{"id":"p-big","weight":1,"pad":"` + strings.Repeat("x", 256<<10) + `"}`
		for _, tc := range []struct {
			name, method, path, body string
			want                     int
			reason                   string
		}{
			{"unknown type", "POST", "/v1/sagas/nosuch/p-1", start, 404, `unknown saga type "nosuch" (this daemon runs note, parcel)`},
			{"unknown type, compensate", "POST", "/v1/sagas/nosuch/p-1/compensate", "", 404, `unknown saga type "nosuch"`},
			{"unknown type, get", "GET", "/v1/sagas/nosuch/p-1", "", 404, `unknown saga type "nosuch"`},
			{"unknown saga", "GET", "/v1/sagas/parcel/nobody", "", 404, "saga parcel/nobody not found"},
			{"compensate an unknown saga", "POST", "/v1/sagas/parcel/nobody/compensate", `{"reason":"r"}`, 404, "saga parcel/nobody not found: no such saga, or its start request is not handled yet"},
			{"resume an unknown saga", "POST", "/v1/sagas/parcel/nobody/resume", `{"reason":"r"}`, 404, "saga parcel/nobody not found: no such saga, or its start request is not handled yet"},
			{"wait for an unknown saga", "GET", "/v1/sagas/parcel/nobody?wait=5s", "", 404, "saga parcel/nobody not found"},
			{"not JSON", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2",`, 400, "the body is not one JSON value"},
			{"two JSON values", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":1} {}`, 400, "data after the JSON value"},
			{"empty body", "POST", "/v1/sagas/parcel/p-2", ``, 400, "the body is not one JSON value"},
			{"unknown field", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":1,"colour":"red"}`, 400, `json: unknown field "colour"`},
			{"wrong type", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":"heavy"}`, 400, "invalid saga data: parcel"},
			{"Validate fails", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":0}`, 400, "weight must be positive"},
			{"compensate body not JSON", "POST", "/v1/sagas/parcel/p-1/compensate", `reason`, 400, `the body is not {"reason": "..."}`},
			{"compensate unknown field", "POST", "/v1/sagas/parcel/p-1/compensate", `{"why":"x"}`, 400, `unknown field "why"`},
			{"start too large", "POST", "/v1/sagas/parcel/p-big", huge, 413, "larger than 262144 bytes"},
			{"compensate too large", "POST", "/v1/sagas/parcel/p-1/compensate", `{"reason":"` + strings.Repeat("r", 16<<10) + `"}`, 413, "larger than 16384 bytes"},
			{"resume too large", "POST", "/v1/sagas/parcel/p-1/resume", `{"reason":"` + strings.Repeat("r", 16<<10) + `"}`, 413, "larger than 16384 bytes"},
			{"resume unknown field", "POST", "/v1/sagas/parcel/p-1/resume", `{"note":"x"}`, 400, `unknown field "note"`},
		} {
			var body io.Reader
			if tc.body != "" || tc.method == "POST" {
				body = strings.NewReader(tc.body)
			}
			code, _, got := d.do(t, tc.method, tc.path, token, body, map[string]string{"Content-Type": "application/json"})
			wantStatus(t, tc.name, code, got, tc.want)
			if msg := errorOf(t, got); !strings.Contains(msg, tc.reason) {
				t.Errorf("%s: error %q, want it to contain %q", tc.name, msg, tc.reason)
			}
		}
		// Without Content-Length, the limit applies while reading.
		code, _, got := d.do(t, "POST", "/v1/sagas/parcel/p-big", token, io.MultiReader(strings.NewReader(huge)), map[string]string{"Content-Type": "application/json"})
		wantStatus(t, "chunked start too large", code, got, 413)
	})

	t.Run("403", func(t *testing.T) {
		for _, tc := range []struct {
			name, method, path, body, reason string
		}{
			{"start", "POST", "/v1/sagas/parcel/p-9", `{"id":"p-9","weight":1}`, "token parcel-reader may not start sagas of type parcel: its scopes in the token file do not include start:parcel"},
			{"compensate", "POST", "/v1/sagas/parcel/p-1/compensate", `{}`, "may not compensate sagas of type parcel"},
			{"resume", "POST", "/v1/sagas/parcel/p-1/resume", `{}`, "token parcel-reader may not resume sagas of type parcel: its scopes in the token file do not include resume:parcel"},
			{"read another type", "GET", "/v1/sagas/note/n-1", "", "may not read sagas of type note"},
		} {
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			code, _, got := d.do(t, tc.method, tc.path, readerToken, body, map[string]string{"Content-Type": "application/json"})
			wantStatus(t, tc.name, code, got, http.StatusForbidden)
			if msg := errorOf(t, got); msg != tc.reason && !strings.Contains(msg, tc.reason) {
				t.Errorf("%s: error %q, want it to contain %q", tc.name, msg, tc.reason)
			}
		}
		code, _, got := d.get(t, "/v1/sagas/parcel/p-9", readerToken, nil)
		wantStatus(t, "read:parcel reads parcel sagas", code, got, http.StatusNotFound)
	})

	t.Run("start is idempotent", func(t *testing.T) {
		code, hdr, body := d.post(t, "/v1/sagas/parcel/p-1", token, start)
		wantStatus(t, "start", code, body, http.StatusAccepted)
		var acc map[string]string
		if err := json.Unmarshal(body, &acc); err != nil {
			t.Fatal(err)
		}
		if want := map[string]string{"saga_id": "p-1", "type": "parcel", "status": "accepted"}; fmt.Sprint(acc) != fmt.Sprint(want) {
			t.Errorf("202 body %v, want %v", acc, want)
		}
		if loc := hdr.Get("Location"); loc != "/v1/sagas/parcel/p-1" {
			t.Errorf("Location %q, want /v1/sagas/parcel/p-1", loc)
		}
		// The same JSON value, written otherwise, at once: most likely
		// produced again (the view does not have the saga yet) and
		// dropped by the engine.
		again := "{ \"weight\": 3,\n \"id\": \"p-1\" }"
		code, _, body2 := d.post(t, "/v1/sagas/parcel/p-1", token, again)
		wantStatus(t, "the same start again", code, body2, http.StatusAccepted)
		if !bytes.Equal(body2, body) {
			t.Errorf("second answer %s, want the first %s", body2, body)
		}
		// Once the view has it, the same start is answered from there.
		waitStatus(t, d, token, "p-1", "running")
		code, _, body3 := d.post(t, "/v1/sagas/parcel/p-1", token, again)
		wantStatus(t, "the same start once the saga runs", code, body3, http.StatusAccepted)
		if !bytes.Equal(body3, body) {
			t.Errorf("third answer %s, want the first %s", body3, body)
		}
		code, _, body4 := d.post(t, "/v1/sagas/parcel/p-1", token, `{"id":"p-1","weight":4}`)
		wantStatus(t, "other data for a running saga", code, body4, http.StatusConflict)
		if msg := errorOf(t, body4); !strings.Contains(msg, "saga parcel/p-1 was started with other data (it is running)") {
			t.Errorf("409 error %q", msg)
		}
	})

	t.Run("a start made through the API, retried with package client", func(t *testing.T) {
		// The API's start comes first, so that it is produced (the view
		// cannot have p-4 yet); the client's is produced whatever the
		// view says. The engine drops a start whose bytes are those of
		// the first and dead-letters any other (conflicting-start): the
		// history check at the end of TestAPI finds one SagaStarted for
		// p-4 and no dead letter only if both wrote the same bytes. The
		// data has HTML characters, which json.Marshal escapes.
		body := "{\n  \"weight\": 2,\n  \"id\": \"p-\\u0034 <&>\"\n}"
		canonical, err := message.Canonical([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if want := `{"id":"p-4 <&>","weight":2}`; string(canonical) != want {
			t.Fatalf("message.Canonical: got %s, want %s", canonical, want)
		}
		code, _, got := d.post(t, "/v1/sagas/parcel/p-4", token, body)
		wantStatus(t, "start through the API", code, got, http.StatusAccepted)
		c, err := client.New(kgo.SeedBrokers(brokers...))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Start(ctx, parcelSaga, "p-4", parcel{ID: "p-4 <&>", Weight: 2}); err != nil {
			t.Fatalf("the same start with package client: %v", err)
		}
		waitStatus(t, d, token, "p-4", "running")
	})

	t.Run("get and ETag", func(t *testing.T) {
		code, hdr, body := d.get(t, "/v1/sagas/parcel/p-1", token, nil)
		wantStatus(t, "get", code, body, http.StatusOK)
		var v struct {
			SagaID    string          `json:"saga_id"`
			Type      string          `json:"type"`
			Status    string          `json:"status"`
			Step      string          `json:"step"`
			StepIndex int             `json:"step_index"`
			Attempt   int             `json:"attempt"`
			Deadline  *time.Time      `json:"deadline"`
			Version   int64           `json:"version"`
			Data      json.RawMessage `json:"data"`
			CreatedAt time.Time       `json:"created_at"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatal(err)
		}
		if v.SagaID != "p-1" || v.Type != "parcel" || v.Status != "running" || v.Step != "ship" || v.StepIndex != 1 ||
			v.Attempt != 1 || v.Deadline == nil || v.Version < 1 || string(v.Data) != start || v.CreatedAt.IsZero() {
			t.Errorf("saga %s: want p-1 of parcel, running step ship (1), attempt 1 with a deadline, data %s", body, start)
		}
		etag := hdr.Get("ETag")
		if want := `"` + strconv.FormatInt(v.Version, 10) + `"`; etag != want {
			t.Errorf("ETag %q, want %q", etag, want)
		}
		for _, inm := range []string{etag, "W/" + etag, `"0", ` + etag, "*"} {
			code, hdr, body := d.get(t, "/v1/sagas/parcel/p-1", token, map[string]string{"If-None-Match": inm})
			wantStatus(t, "If-None-Match "+inm, code, body, http.StatusNotModified)
			if len(body) != 0 || hdr.Get("ETag") != etag {
				t.Errorf("304: body %q, ETag %q; want none and %q", body, hdr.Get("ETag"), etag)
			}
		}
		code, _, body = d.get(t, "/v1/sagas/parcel/p-1", token, map[string]string{"If-None-Match": `"0"`})
		wantStatus(t, "If-None-Match of another version", code, body, http.StatusOK)
		// The reader token reads.
		code, _, body = d.get(t, "/v1/sagas/parcel/p-1", readerToken, nil)
		wantStatus(t, "get with read:parcel", code, body, http.StatusOK)
	})

	t.Run("compensate", func(t *testing.T) {
		_, hdr, _ := d.get(t, "/v1/sagas/parcel/p-1", token, nil)
		etag := hdr.Get("ETag")
		tp := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
		code, _, body := d.do(t, http.MethodPost, "/v1/sagas/parcel/p-1/compensate", token, strings.NewReader(`{"reason":"customer cancelled"}`),
			map[string]string{"Content-Type": "application/json", "traceparent": tp})
		wantStatus(t, "compensate", code, body, http.StatusAccepted)
		v := waitStatus(t, d, token, "p-1", "compensated")
		if !strings.Contains(v, "customer cancelled") {
			t.Errorf("compensated saga %s does not give the reason", v)
		}
		code, _, body = d.get(t, "/v1/sagas/parcel/p-1", token, map[string]string{"If-None-Match": etag})
		wantStatus(t, "If-None-Match of the running saga's version", code, body, http.StatusOK)
		// Audited, in the request's transaction, by the token's name:
		// the token of line 3 in the one-token-a-line format.
		audits := auditRecords(t, brokers, "parcel", 1, 30*time.Second)
		if len(audits) != 1 {
			t.Fatalf("audit records: got %d, want 1", len(audits))
		}
		a := audits[0]
		if a.Action != message.AuditCompensate || a.SagaType != "parcel" || a.SagaID != "p-1" || a.By != "line-3" ||
			a.Note != "customer cancelled" || a.Tool != "apid-api" || a.Inbox != "saga.parcel.inbox" || a.Partition == nil ||
			*a.Partition != message.HomePartition("p-1", 3) || a.Run == "" {
			t.Errorf("audit record %+v: want a saga-compensate of parcel/p-1 by line-3, tool apid-api, note customer cancelled", a)
		}
		// Now that it has ended: 409 up front, with or without a body,
		// and nothing more is written.
		code, _, body = d.do(t, http.MethodPost, "/v1/sagas/parcel/p-1/compensate", token, nil, nil)
		wantStatus(t, "compensate without a body, of an ended saga", code, body, http.StatusConflict)
		if msg := errorOf(t, body); msg != "saga parcel/p-1 has ended (compensated): there is nothing to compensate" {
			t.Errorf("409 error %q", msg)
		}
		if n := len(auditRecords(t, brokers, "parcel", 2, 2*time.Second)); n != 1 {
			t.Errorf("audit records after a refused compensate: %d, want 1", n)
		}
	})

	t.Run("503", func(t *testing.T) {
		failProduce.Store(true)
		began := time.Now()
		code, hdr, body := d.post(t, "/v1/sagas/parcel/p-3", token, `{"id":"p-3","weight":1}`)
		failProduce.Store(false)
		wantStatus(t, "start while Kafka refuses", code, body, http.StatusServiceUnavailable)
		if ra := hdr.Get("Retry-After"); ra != "2" {
			t.Errorf("Retry-After %q, want 2", ra)
		}
		if took := time.Since(began); took > 3*time.Second {
			t.Errorf("the 503 took %v, want about --api-produce-timeout (1s)", took)
		}
		noInternals(t, "start while Kafka refuses", body)
		if msg := errorOf(t, body); msg != "Kafka did not store the start request in time; retry with the same body after Retry-After" {
			t.Errorf("503 error %q", msg)
		}
		failProduce.Store(true)
		code, hdr, body = d.post(t, "/v1/sagas/parcel/p-4/compensate", token, ``)
		failProduce.Store(false)
		wantStatus(t, "compensate while Kafka refuses", code, body, http.StatusServiceUnavailable)
		if hdr.Get("Retry-After") == "" {
			t.Error("no Retry-After")
		}
		noInternals(t, "compensate while Kafka refuses", body)
		// The client retries after Retry-After (kgo may still be backing
		// off from the refusals for a moment): one saga.
		for try := 1; ; try++ {
			time.Sleep(2 * time.Second)
			code, _, body = d.post(t, "/v1/sagas/parcel/p-3", token, `{"id":"p-3","weight":1}`)
			if code != http.StatusServiceUnavailable || try == 5 {
				break
			}
		}
		wantStatus(t, "start retried", code, body, http.StatusAccepted)
		waitStatus(t, d, token, "p-3", "running")
		// The refused compensation was not written: p-4 runs on.
		waitStatus(t, d, token, "p-4", "running")
		if n := len(auditRecords(t, brokers, "parcel", 2, 2*time.Second)); n != 1 {
			t.Errorf("audit records after a compensation Kafka refused: %d, want 1", n)
		}
		// Retried once Kafka is back, it is stored (by a new
		// transactional client: the failed one was closed), once.
		for try := 1; ; try++ {
			code, _, body = d.post(t, "/v1/sagas/parcel/p-4/compensate", token, `{"reason":"retried"}`)
			if code != http.StatusServiceUnavailable || try == 5 {
				break
			}
			time.Sleep(2 * time.Second)
		}
		wantStatus(t, "compensate retried", code, body, http.StatusAccepted)
		waitStatus(t, d, token, "p-4", "compensated")
		if a := auditRecords(t, brokers, "parcel", 3, 2*time.Second); len(a) != 2 || a[1].SagaID != "p-4" || a[1].Note != "retried" {
			t.Errorf("audit records after the retried compensation: %+v, want a second one, for p-4", a)
		}
	})

	t.Run("token file reloaded", func(t *testing.T) {
		// Each wait from an address of its own, polling every 200ms:
		// its polls fail until the file is read again (within a
		// second), and ten failures back an address off.
		c := d.from("127.0.0.40")
		writeFile(t, tokenFile, token2+"\nshort\n")
		waitForEvery(t, "the new token to be accepted", 200*time.Millisecond, func() bool {
			code, _, _ := c.get(t, "/v1/sagas/parcel/p-1", token2, nil)
			return code == http.StatusOK
		})
		code, _, body := c.get(t, "/v1/sagas/parcel/p-1", token, nil)
		wantStatus(t, "the removed token", code, body, http.StatusUnauthorized)
		if !strings.Contains(d.stderr.String(), `"msg":"HTTP API token file: line skipped: the token is 5 bytes long, shorter than the minimum of 32`) {
			t.Error("the short token of the reloaded file is not logged as skipped")
		}
		if strings.Contains(d.stderr.String(), token2) {
			t.Error("the log holds a token")
		}
		if err := os.Remove(tokenFile); err != nil {
			t.Fatal(err)
		}
		c = d.from("127.0.0.41")
		waitForEvery(t, "a deleted token file to revoke every token", 200*time.Millisecond, func() bool {
			code, _, _ := c.get(t, "/v1/sagas/parcel/p-1", token2, nil)
			return code == http.StatusUnauthorized
		})
		c = d.from("127.0.0.42")
		writeFile(t, tokenFile, token+"\n"+token2+"\n")
		waitForEvery(t, "the restored tokens", 200*time.Millisecond, func() bool {
			code, _, _ := c.get(t, "/v1/sagas/parcel/p-1", token, nil)
			return code == http.StatusOK
		})
	})

	t.Run("wait", func(t *testing.T) { testWait(t, d, token) })
	// The token file holds token on its first line now.
	t.Run("resume", func(t *testing.T) { testResume(t, d, brokers, token, "line-1") })

	// p-1 was started three times and asked for a conflicting start once,
	// p-4 started through the API and again with package client: one
	// SagaStarted each, one terminal event for p-1 and p-4 (compensated
	// once each), and nothing dead-lettered (neither the compensate
	// requests for an unknown or an ended saga, refused up front).
	h := readHistory(t, brokers, "parcel", 30*time.Second, func(h history) bool {
		return h.terminal["p-1"] > 0 && h.started["p-3"] > 0 && h.terminal["p-4"] > 0
	})
	if h.started["p-1"] != 1 || h.terminal["p-1"] != 1 || h.started["p-3"] != 1 || h.started["p-4"] != 1 || h.terminal["p-4"] != 1 {
		t.Errorf("p-1: %d SagaStarted, %d terminal events; p-3: %d SagaStarted; p-4: %d SagaStarted, %d terminal events; want 1, 1, 1, 1 and 1",
			h.started["p-1"], h.terminal["p-1"], h.started["p-3"], h.started["p-4"], h.terminal["p-4"])
	}
	if len(h.dead) > 0 {
		t.Errorf("dead letters for %q, want none", h.dead)
	}

	t.Run("redis down", func(t *testing.T) {
		rs.Kill()
		code, hdr, body := d.get(t, "/v1/sagas/parcel/p-1", token, nil)
		wantStatus(t, "get without Redis", code, body, http.StatusServiceUnavailable)
		if hdr.Get("Retry-After") == "" {
			t.Error("no Retry-After")
		}
		if msg := errorOf(t, body); msg != "the saga store is unavailable; retry later" {
			t.Errorf("503 error %q", msg)
		}
		noInternals(t, "get without Redis", body)
		// A compensate request needs the view: 503, nothing produced.
		code, _, body = d.post(t, "/v1/sagas/parcel/p-3/compensate", token, `{"reason":"r"}`)
		wantStatus(t, "compensate without Redis", code, body, http.StatusServiceUnavailable)
		noInternals(t, "compensate without Redis", body)
		code, _, body = d.post(t, "/v1/sagas/note/held-1/resume", token, `{"reason":"r"}`)
		wantStatus(t, "resume without Redis", code, body, http.StatusServiceUnavailable)
		noInternals(t, "resume without Redis", body)
		// A start does not need the view: the engine dedupes.
		code, _, body = d.post(t, "/v1/sagas/note/n-1", token, `{"id":"n-1"}`)
		wantStatus(t, "start without Redis", code, body, http.StatusAccepted)
	})

	// The contract: what the handlers and the router answered is what
	// the document says.
	_, _, doc := d.get(t, "/v1/openapi.json", "", nil)
	got, want := d.routes(t), documented(t, doc)
	for _, r := range got {
		if !slices.Contains(want, r) {
			t.Errorf("the API answered %s, which daemon/openapi.json does not document", r)
		}
	}
	for _, r := range want {
		if !slices.Contains(got, r) {
			t.Errorf("daemon/openapi.json documents %s, which no request of this test got", r)
		}
	}
	t.Logf("statuses answered and documented: %d", len(got))
}

// waitStatus waits until the API reads saga id of type parcel in status,
// and returns its JSON.
func waitStatus(t *testing.T, d *apiDaemon, token, id, status string) string {
	t.Helper()
	var last string
	waitFor(t, "saga "+id+" "+status, func() bool {
		code, _, body := d.get(t, "/v1/sagas/parcel/"+id, token, nil)
		last = string(body)
		return code == http.StatusOK && strings.Contains(last, `"status":"`+status+`"`)
	})
	return last
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitForEvery(t, what, 50*time.Millisecond, cond)
}

// waitForEvery waits until cond holds, asking every interval, for at most
// 30 seconds.
func waitForEvery(t *testing.T, what string, interval time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(interval)
	}
}

// TestAPITLS serves the API over TLS: a client that trusts the CA gets its
// answers, a plain-HTTP one does not. It runs without authentication, and
// checks that a cross-site form post cannot start a saga then either.
func TestAPITLS(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	// A cleanup, not a defer: it runs after those of the daemons, which
	// stop faster with their Kafka still there.
	t.Cleanup(cluster.Close)
	ca := tlstest.NewCA(t)
	pair := ca.Issue(t, "localhost", "127.0.0.1")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: ca.Pool()}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	d := startAPIDaemon(t, cluster.ListenAddrs(), redistest.Start(t), client, "--api-insecure-no-auth", "--api-tls-cert", pair.CertFile, "--api-tls-key", pair.KeyFile)
	code, _, body := d.post(t, "/v1/sagas/note/n-tls", "", `{"id":"n-tls"}`)
	if code != http.StatusAccepted {
		t.Fatalf("start over TLS: %d %s, want 202", code, body)
	}
	// Without authentication, what a web page's form can send (no CORS
	// preflight: form-urlencoded, multipart or text/plain) starts
	// nothing.
	for _, ct := range []string{"application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=b"} {
		code, _, body := d.do(t, http.MethodPost, "/v1/sagas/note/n-form", "", strings.NewReader(`{"id":"n-form"}`), map[string]string{"Content-Type": ct})
		if code != http.StatusUnsupportedMediaType {
			t.Errorf("a cross-site form post (%s): %d %s, want 415", ct, code, body)
		}
	}
	if code, _, body := d.get(t, "/v1/sagas/note/n-form", "", nil); code != http.StatusNotFound {
		t.Errorf("the saga of the form posts: %d %s, want 404", code, body)
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	resp, err := plain.Get(strings.Replace(d.base, "https://", "http://", 1) + "/v1/openapi.json")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the TLS port: %d, want an error or 400", resp.StatusCode)
		}
	}
}

// TestAPIKafkaOutage is the outage of issue 11: 1,000 starts from
// concurrent clients while Kafka (kfake, persisting in a data directory)
// is closed for 10 seconds and reopened on its data. Every answer is 202,
// 503 or 429 (more requests wait for Kafka at once than the API's
// --api-max-in-flight, 64, admits); every 202 becomes exactly one saga;
// clients that retry their 503s and 429s after Retry-After lose nothing:
// each of the 1,000 ids has one SagaStarted and one terminal event, and
// nothing is dead-lettered.
func TestAPIKafkaOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("a 10-second Kafka outage")
	}
	dir := t.TempDir()
	addr := freeAddr(t)
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	open := func() *kfake.Cluster {
		var c *kfake.Cluster
		var err error
		// The port may take a moment to be free again.
		for range 50 {
			if c, err = kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dir)); err == nil {
				return c
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("open kfake on port %d, %s: %v", port, dir, err)
		return nil
	}
	cluster := open()
	var mu sync.Mutex
	closeCluster := func() {
		mu.Lock()
		defer mu.Unlock()
		if cluster != nil {
			cluster.Close()
			cluster = nil
		}
	}
	t.Cleanup(closeCluster) // after the daemons' cleanups
	brokers := []string{addr}
	redisAddr := redistest.Start(t)
	// The API runs in a daemon of its own (--engine=false), as an API
	// Deployment would: an engine whose transaction cannot end exits (kgo:
	// no error of End is retryable) and is restarted, here by the test.
	d := startAPIDaemon(t, brokers, redisAddr, nil, "--engine=false", "--api-insecure-no-auth", "--api-produce-timeout", "2s")
	// The engine's daemon, restarted a second after it exits, as
	// Kubernetes would (it exits 1 at once while Kafka is unreachable).
	var engMu sync.Mutex
	engines := []*apiDaemon{runDaemon(t, brokers, redisAddr, "--metrics-addr", "")}
	lastEngine := func() (*apiDaemon, int) {
		engMu.Lock()
		defer engMu.Unlock()
		return engines[len(engines)-1], len(engines) - 1
	}
	stopSupervisor, supervised := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(supervised)
		for {
			e, _ := lastEngine()
			select {
			case <-stopSupervisor:
				return
			case code := <-e.done:
				e.done <- code
			}
			select {
			case <-stopSupervisor:
				return
			case <-time.After(time.Second):
			}
			next := runDaemon(t, brokers, redisAddr, "--metrics-addr", "")
			engMu.Lock()
			engines = append(engines, next)
			engMu.Unlock()
		}
	}()
	defer func() {
		close(stopSupervisor)
		<-supervised
	}()

	const (
		n           = 1000
		spread      = 14 * time.Second // the starts' first tries are spread over this
		outageStart = 2 * time.Second
		outage      = 10 * time.Second
	)
	type result struct {
		first, tries int
		err          string
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	began := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * spread / n)
			id := fmt.Sprintf("n-%04d", i)
			body := fmt.Sprintf(`{"id":%q}`, id)
			deadline := time.Now().Add(2 * time.Minute)
			r := &results[i]
			for {
				code, hdr, resp := d.post(t, "/v1/sagas/note/"+id, "", body)
				r.tries++
				if r.first == 0 {
					r.first = code
				}
				switch {
				case code == http.StatusAccepted:
					return
				case code != http.StatusServiceUnavailable && code != http.StatusTooManyRequests:
					r.err = fmt.Sprintf("try %d: %d %s", r.tries, code, resp)
					return
				case time.Now().After(deadline):
					r.err = fmt.Sprintf("still %d after two minutes", code)
					return
				}
				wait, _ := strconv.Atoi(hdr.Get("Retry-After"))
				time.Sleep(time.Duration(max(wait, 1)) * time.Second)
			}
		}()
	}
	time.Sleep(outageStart)
	closeCluster()
	t.Logf("Kafka closed at %v", time.Since(began).Round(time.Millisecond))
	time.Sleep(outage)
	mu.Lock()
	cluster = open()
	mu.Unlock()
	t.Logf("Kafka reopened on its data directory at %v", time.Since(began).Round(time.Millisecond))
	wg.Wait()
	if code := d.exited(); code >= 0 {
		t.Fatalf("the API's daemon exited with %d during the outage:\n%s", code, d.stderr)
	}
	t.Logf("all clients answered 202 at %v", time.Since(began).Round(time.Millisecond))

	firsts := map[int]int{}
	tries := 0
	for i, r := range results {
		firsts[r.first]++
		tries += r.tries
		if r.err != "" {
			t.Errorf("n-%04d: %s", i, r.err)
		}
	}
	codes := make([]int, 0, len(firsts))
	for c := range firsts {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	for _, c := range codes {
		if c != http.StatusAccepted && c != http.StatusServiceUnavailable && c != http.StatusTooManyRequests {
			t.Errorf("%d first tries answered %d, want only 202, 503 and 429", firsts[c], c)
		}
	}
	t.Logf("first tries: %d × 202, %d × 503, %d × 429 (of %d); %d requests in all", firsts[202], firsts[503], firsts[429], n, tries)

	h := readHistory(t, brokers, "note", 2*time.Minute, func(h history) bool { return len(h.terminal) == n })
	missing, dup := 0, 0
	for i := range n {
		id := fmt.Sprintf("n-%04d", i)
		switch {
		case h.started[id] == 0 || h.terminal[id] == 0:
			missing++
			if missing <= 10 {
				t.Errorf("%s (first try %d): %d SagaStarted, %d terminal events; want one each", id, results[i].first, h.started[id], h.terminal[id])
			}
		case h.started[id] > 1 || h.terminal[id] > 1:
			dup++
			t.Errorf("%s: %d SagaStarted, %d terminal events; want one each", id, h.started[id], h.terminal[id])
		}
	}
	if len(h.events) != n {
		t.Errorf("events for %d sagas, want %d", len(h.events), n)
	}
	if len(h.dead) > 0 {
		t.Errorf("%d dead letters (%q…), want none", len(h.dead), h.dead[:min(len(h.dead), 5)])
	}
	t.Logf("sagas: %d started once and ended once, %d missing, %d twice", n-missing-dup, missing, dup)
	eng, restarts := lastEngine()
	t.Logf("the engine's daemon was restarted %d times", restarts)
	if t.Failed() {
		t.Logf("the engine's daemon (exit status %d, -1: running):\n%s", eng.exited(), tail(eng.stderr.String(), 40))
	}
	t.Logf("start records in the inbox: %d for %d ids (the extra ones are 503s that Kafka stored after all, dropped by the engine)", inboxStarts(t, brokers, "note"), n)
}

// inboxStarts counts the start requests on saga.<typ>.inbox.
func inboxStarts(t *testing.T, brokers []string, typ string) int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(message.Inbox(typ)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	n := 0
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return n
		}
		fs.EachRecord(func(r *kgo.Record) {
			for _, h := range r.Headers {
				if h.Key == message.HeaderMessageType && string(h.Value) == message.TypeStartSaga {
					n++
				}
			}
		})
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
