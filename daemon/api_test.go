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

	"github.com/ksaga/ksaga/client"
	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/internal/kfaketest"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/internal/tlstest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
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

// note is the data of the note saga: one local step, so a note saga ends
// (SagaCompleted) in the transaction that starts it.
type note struct {
	ID string `json:"id"`
}

var noteSaga = saga.New("note", saga.Step[note]{Name: "write", Local: func(context.Context, *note) error { return nil }})

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t *testing.T) string {
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

func (d *apiDaemon) get(t *testing.T, path, token string, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	return d.do(t, http.MethodGet, path, token, nil, hdr)
}

func (d *apiDaemon) post(t *testing.T, path, token, body string) (int, http.Header, []byte) {
	t.Helper()
	return d.do(t, http.MethodPost, path, token, strings.NewReader(body), map[string]string{"Content-Type": "application/json"})
}

// routes returns the method, route and status of every answer the API
// counted in ksaga_api_requests_total, but the unmatched ones.
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
		if labels["route"] != "unmatched" {
			out = append(out, labels["method"]+" "+labels["route"]+" "+labels["code"])
		}
	}
	slices.Sort(out)
	return out
}

// documented returns the method, path and status of every response the
// OpenAPI document lists.
func documented(t *testing.T, doc []byte) []string {
	t.Helper()
	var d struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
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
	slices.Sort(out)
	return out
}

// failAPIProduces makes the broker answer NOT_ENOUGH_REPLICAS to every
// produce request outside a transaction (the API's; the engine's are
// transactional) while fail is set.
func failAPIProduces(cluster *kfake.Cluster, fail *atomic.Bool) {
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		pr := req.(*kmsg.ProduceRequest)
		if !fail.Load() || pr.TransactionID != nil {
			return nil, nil, false
		}
		return kfaketest.ProduceError(pr, kerr.NotEnoughReplicas.Code), nil, true
	})
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
// the retries, a 409 starts nothing, a 503 comes with Retry-After, the
// token file is read again when it changes), and finally that the statuses
// the handlers answered are exactly those the OpenAPI document lists.
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
	const token, token2 = "t0ken-one_0123456789", "t0ken-two_0123456789"
	writeFile(t, tokenFile, "# the API's tokens\n\n  "+token+"  \nnot a token\n")
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
		for _, tc := range []struct {
			name, auth, challenge string
		}{
			{"no token", "", `Bearer realm="ksaga"`},
			{"wrong token", "Bearer nope", `Bearer realm="ksaga", error="invalid_token"`},
			{"other scheme", "Basic " + token, `Bearer realm="ksaga"`},
			{"a comment of the file", "Bearer #", `Bearer realm="ksaga", error="invalid_token"`},
			{"a skipped line of the file", "Bearer not a token", `Bearer realm="ksaga", error="invalid_token"`},
		} {
			for _, r := range []struct{ method, path string }{
				{http.MethodPost, "/v1/sagas/parcel/p-1"}, {http.MethodGet, "/v1/sagas/parcel/p-1"},
				{http.MethodPost, "/v1/sagas/parcel/p-1/compensate"}, {http.MethodPost, "/v1/sagas/nosuch/p-1"},
			} {
				code, hdr, body := d.do(t, r.method, r.path, "", strings.NewReader(start), map[string]string{"Authorization": tc.auth})
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
			{"not JSON", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2",`, 400, "the body is not one JSON value"},
			{"two JSON values", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":1} {}`, 400, "data after the JSON value"},
			{"a key twice", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":1,"weight":2}`, 400, `the body has the key "weight" twice in one object (at offset 23): keys must be unique`},
			{"body not UTF-8", "POST", "/v1/sagas/parcel/p-2", "{\"id\":\"p-2\xff\",\"weight\":1}", 400, "the body is not one JSON value: invalid UTF-8 in a string at offset 10"},
			{"lone surrogate", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2\ud800","weight":1}`, 400, `lone UTF-16 surrogate \ud800`},
			{"empty body", "POST", "/v1/sagas/parcel/p-2", ``, 400, "the body is not one JSON value"},
			{"unknown field", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":1,"colour":"red"}`, 400, `json: unknown field "colour"`},
			{"wrong type", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":"heavy"}`, 400, "invalid saga data: parcel"},
			{"Validate fails", "POST", "/v1/sagas/parcel/p-2", `{"id":"p-2","weight":0}`, 400, "weight must be positive"},
			{"id not UTF-8", "POST", "/v1/sagas/parcel/%FF", start, 400, "not valid UTF-8"},
			{"id not UTF-8, get", "GET", "/v1/sagas/parcel/%FF", "", 400, "not valid UTF-8"},
			{"id too long", "POST", "/v1/sagas/parcel/" + strings.Repeat("i", 1025), start, 400, "the limit is 1024"},
			{"compensate body not JSON", "POST", "/v1/sagas/parcel/p-1/compensate", `reason`, 400, `the body is not {"reason": "..."}`},
			{"compensate unknown field", "POST", "/v1/sagas/parcel/p-1/compensate", `{"why":"x"}`, 400, `unknown field "why"`},
			{"start too large", "POST", "/v1/sagas/parcel/p-big", huge, 413, "larger than 262144 bytes"},
			{"compensate too large", "POST", "/v1/sagas/parcel/p-1/compensate", `{"reason":"` + strings.Repeat("r", 16<<10) + `"}`, 413, "larger than 16384 bytes"},
		} {
			var body io.Reader
			if tc.body != "" || tc.method == "POST" {
				body = strings.NewReader(tc.body)
			}
			code, _, got := d.do(t, tc.method, tc.path, token, body, nil)
			wantStatus(t, tc.name, code, got, tc.want)
			if msg := errorOf(t, got); !strings.Contains(msg, tc.reason) {
				t.Errorf("%s: error %q, want it to contain %q", tc.name, msg, tc.reason)
			}
		}
		// Without Content-Length, the limit applies while reading.
		code, _, got := d.do(t, "POST", "/v1/sagas/parcel/p-big", token, io.MultiReader(strings.NewReader(huge)), nil)
		wantStatus(t, "chunked start too large", code, got, 413)
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
	})

	t.Run("compensate", func(t *testing.T) {
		_, hdr, _ := d.get(t, "/v1/sagas/parcel/p-1", token, nil)
		etag := hdr.Get("ETag")
		code, _, body := d.post(t, "/v1/sagas/parcel/p-1/compensate", token, `{"reason":"customer cancelled"}`)
		wantStatus(t, "compensate", code, body, http.StatusAccepted)
		v := waitStatus(t, d, token, "p-1", "compensated")
		if !strings.Contains(v, "customer cancelled") {
			t.Errorf("compensated saga %s does not give the reason", v)
		}
		code, _, body = d.get(t, "/v1/sagas/parcel/p-1", token, map[string]string{"If-None-Match": etag})
		wantStatus(t, "If-None-Match of the running saga's version", code, body, http.StatusOK)
		// No body at all is a compensate request without a reason.
		code, _, body = d.do(t, http.MethodPost, "/v1/sagas/parcel/p-1/compensate", token, nil, nil)
		wantStatus(t, "compensate without a body", code, body, http.StatusAccepted)
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
		failProduce.Store(true)
		code, hdr, body = d.post(t, "/v1/sagas/parcel/p-1/compensate", token, ``)
		failProduce.Store(false)
		wantStatus(t, "compensate while Kafka refuses", code, body, http.StatusServiceUnavailable)
		if hdr.Get("Retry-After") == "" {
			t.Error("no Retry-After")
		}
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
	})

	t.Run("token file reloaded", func(t *testing.T) {
		writeFile(t, tokenFile, token2+"\n")
		waitFor(t, "the new token to be accepted", func() bool {
			code, _, _ := d.get(t, "/v1/sagas/parcel/p-1", token2, nil)
			return code == http.StatusOK
		})
		code, _, body := d.get(t, "/v1/sagas/parcel/p-1", token, nil)
		wantStatus(t, "the removed token", code, body, http.StatusUnauthorized)
		if err := os.Remove(tokenFile); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a deleted token file to revoke every token", func() bool {
			code, _, _ := d.get(t, "/v1/sagas/parcel/p-1", token2, nil)
			return code == http.StatusUnauthorized
		})
		writeFile(t, tokenFile, token+"\n"+token2+"\n")
		waitFor(t, "the restored tokens", func() bool {
			code, _, _ := d.get(t, "/v1/sagas/parcel/p-1", token, nil)
			return code == http.StatusOK
		})
	})

	// p-1 was started three times and asked for a conflicting start once,
	// p-4 started through the API and again with package client: one
	// SagaStarted each, one terminal event for p-1, and nothing
	// dead-lettered.
	h := readHistory(t, brokers, "parcel", 30*time.Second, func(h history) bool {
		return h.terminal["p-1"] > 0 && h.started["p-3"] > 0 && h.started["p-4"] > 0
	})
	if h.started["p-1"] != 1 || h.terminal["p-1"] != 1 || h.started["p-3"] != 1 || h.started["p-4"] != 1 {
		t.Errorf("p-1: %d SagaStarted, %d terminal events; p-3: %d SagaStarted; p-4: %d SagaStarted; want 1, 1, 1 and 1",
			h.started["p-1"], h.terminal["p-1"], h.started["p-3"], h.started["p-4"])
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
		// A start does not need the view: the engine dedupes.
		code, _, body = d.post(t, "/v1/sagas/note/n-1", token, `{"id":"n-1"}`)
		wantStatus(t, "start without Redis", code, body, http.StatusAccepted)
	})

	// The contract: what the handlers answered is what the document says.
	_, _, doc := d.get(t, "/v1/openapi.json", "", nil)
	got, want := d.routes(t), documented(t, doc)
	for _, r := range got {
		if !slices.Contains(want, r) {
			t.Errorf("the handlers answered %s, which daemon/openapi.json does not document", r)
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
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAPITLS serves the API over TLS: a client that trusts the CA gets its
// answers, a plain-HTTP one does not.
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
// is closed for 10 seconds and reopened on its data. Every answer is 202 or
// 503; every 202 becomes exactly one saga; clients that retry their 503s
// lose nothing: each of the 1,000 ids has one SagaStarted and one terminal
// event, and nothing is dead-lettered.
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
				case code != http.StatusServiceUnavailable:
					r.err = fmt.Sprintf("try %d: %d %s", r.tries, code, resp)
					return
				case time.Now().After(deadline):
					r.err = "still 503 after two minutes"
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
		if c != http.StatusAccepted && c != http.StatusServiceUnavailable {
			t.Errorf("%d first tries answered %d, want only 202 and 503", firsts[c], c)
		}
	}
	t.Logf("first tries: %d × 202, %d × 503 (of %d); %d requests in all", firsts[202], firsts[503], n, tries)

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
