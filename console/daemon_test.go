package console_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
)

// parcel is the data of the parcel saga the console's tests run: weigh
// (local), label (the printer participant, which returns a label id, or
// fails TOO_HEAVY over 1000), hold (the warehouse participant, which no
// test runs, for parcels with Hold: they wait there), deliver (local; a
// weight of 13 makes it fail until its attempts run out, so the record is
// dead-lettered and the saga compensates). A parcel with Inspect waits
// for the inspector, which no test runs either, at a step that parks the
// saga after one attempt of 300ms. A weight of 0 or less is invalid (the
// start is dead-lettered).
type parcel struct {
	ID      string `json:"id"`
	Weight  int    `json:"weight"`
	Note    string `json:"note,omitempty"`
	Hold    bool   `json:"hold,omitempty"`
	Inspect bool   `json:"inspect,omitempty"`
	Label   string `json:"label,omitempty"`
}

func (p *parcel) Validate() error {
	if p.Weight <= 0 {
		return errors.New("weight must be positive")
	}
	return nil
}

type labelResult struct {
	Label string `json:"label"`
}

func printerCommand(typ string) func(context.Context, *parcel) (saga.Command, error) {
	return func(_ context.Context, p *parcel) (saga.Command, error) {
		return saga.Command{Participant: "printer", Type: typ, Payload: p}, nil
	}
}

var parcelSaga = saga.New("parcel",
	saga.Step[parcel]{Name: "weigh", Local: func(context.Context, *parcel) error { return nil },
		UndoLocal: func(context.Context, *parcel) error { return nil }},
	saga.Step[parcel]{Name: "label", Do: printerCommand("PrintLabel"), Undo: printerCommand("VoidLabel"),
		OnReply: saga.OnSuccess(func(p *parcel, r labelResult) { p.Label = r.Label })},
	saga.Step[parcel]{Name: "hold", Skip: func(p *parcel) bool { return !p.Hold }, ReplyTimeout: 10 * time.Minute,
		Do: func(_ context.Context, p *parcel) (saga.Command, error) {
			return saga.Command{Participant: "warehouse", Type: "Hold", Payload: p}, nil
		}},
	saga.Step[parcel]{Name: "inspect", Skip: func(p *parcel) bool { return !p.Inspect }, Park: true,
		ReplyTimeout: 300 * time.Millisecond, Retry: retry.Policy{MaxAttempts: 1},
		Do: func(_ context.Context, p *parcel) (saga.Command, error) {
			return saga.Command{Participant: "inspector", Type: "Inspect", Payload: p}, nil
		}},
	saga.Step[parcel]{Name: "deliver", Retry: retry.Policy{MaxAttempts: 2, InitialInterval: 20 * time.Millisecond},
		Local: func(_ context.Context, p *parcel) error {
			if p.Weight == 13 {
				return errors.New("the scale of the delivery van is broken")
			}
			return nil
		}},
)

// printer labels parcels up to 1000 and voids labels.
var printer = participant.HandlerFunc(func(_ context.Context, reqs []participant.Request) ([]participant.Reply, error) {
	replies := make([]participant.Reply, len(reqs))
	for i, r := range reqs {
		var p parcel
		if err := json.Unmarshal(r.Payload, &p); err != nil {
			replies[i] = participant.Failure("BAD_PAYLOAD")
			continue
		}
		switch {
		case r.Type == "VoidLabel":
			replies[i] = participant.Success()
		case p.Weight > 1000:
			replies[i], _ = participant.FailureWith("TOO_HEAVY", map[string]int{"max_weight": 1000})
		default:
			replies[i], _ = participant.SuccessWith(labelResult{Label: "L-" + p.ID})
		}
	}
	return replies, nil
})

var nobody = participant.HandlerFunc(func(context.Context, []participant.Request) ([]participant.Reply, error) {
	return nil, errors.New("the warehouse does not run in these tests")
})

// Tokens of the tests' token file.
const (
	adminToken  = "admin-token-0123456789abcdefghijklmnopqrstuv"
	viewerToken = "viewer-token-0123456789abcdefghijklmnopqrstu"
)

// consoleDaemon is a daemon running the parcel saga and the printer, with
// the console, on a kfake and a redis-server.
type consoleDaemon struct {
	base    string // http://localhost:<port>
	brokers []string
	rdb     *redis.Client
	stderr  *syncBuffer
	cancel  context.CancelFunc
	done    chan int
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// traceURL is the tests' --console-trace-url.
const traceURL = "https://tempo.example/trace/{trace_id}"

// startConsole runs the daemon until the test ends and waits until the
// console answers and the engine is ready.
func startConsole(t *testing.T) *consoleDaemon {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	redisAddr := redistest.Start(t)
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("admin "+adminToken+" *\nviewer "+viewerToken+" read:parcel\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port, metrics := freePort(t), "127.0.0.1:"+freePort(t)
	d := &consoleDaemon{base: "http://localhost:" + port, brokers: cluster.ListenAddrs(), stderr: &syncBuffer{}, done: make(chan int, 1),
		rdb: redis.NewClient(&redis.Options{Addr: redisAddr})}
	t.Cleanup(func() { d.rdb.Close() })
	var ctx context.Context
	ctx, d.cancel = context.WithCancel(context.Background())
	go func() {
		d.done <- daemon.Run(ctx, []string{
			"--kafka-brokers", strings.Join(d.brokers, ","), "--redis-addr", redisAddr, "--participants", "printer",
			"--replication-factor", "1", "--partitions", "3", "--metrics-addr", metrics,
			"--transactional-id", "console-0", "--session-timeout", "6s", "--log-format", "json",
			"--console-addr", "127.0.0.1:" + port, "--console-token-file", tokens, "--console-trace-url", traceURL,
		}, daemon.Name("parceld"), daemon.Saga(parcelSaga),
			daemon.Participant("printer", printer), daemon.Participant("warehouse", nobody), daemon.Participant("inspector", nobody),
			daemon.Output(io.Discard, d.stderr), daemon.Getenv(func(string) string { return "" }))
	}()
	t.Cleanup(func() {
		if t.Failed() {
			for _, line := range strings.Split(d.stderr.String(), "\n") {
				if strings.Contains(line, "console") {
					t.Log(line)
				}
			}
		}
		d.cancel()
		select {
		case <-d.done:
		case <-time.After(time.Minute):
			t.Errorf("the daemon did not stop within a minute")
		}
	})
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case code := <-d.done:
			d.done <- code
			t.Fatalf("daemon exited with %d while starting:\n%s", code, d.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the console and the engine are not ready after a minute:\n%s", d.stderr)
		}
		if ok(d.base+"/login") && ok("http://"+metrics+"/readyz") {
			return d
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func ok(url string) bool {
	resp, err := http.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// start produces the start request of parcel p, with a traceparent, as
// package client writes one (key, home partition, headers).
func (d *consoleDaemon) start(t *testing.T, ps ...parcel) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(d.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for i, p := range ps {
		v, _ := json.Marshal(p)
		v, err = message.Canonical(v)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, &kgo.Record{Topic: message.Inbox("parcel"), Partition: message.HomePartition(p.ID, 3), Key: []byte(p.ID), Value: v,
			Headers: []kgo.RecordHeader{
				{Key: message.HeaderSagaID, Value: []byte(p.ID)},
				{Key: message.HeaderSagaType, Value: []byte("parcel")},
				{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
				{Key: message.HeaderMessageID, Value: []byte("start-" + p.ID)},
				{Key: message.HeaderTraceParent, Value: []byte(fmt.Sprintf("00-%032x-%016x-01", 0xc0ffee00+i, 0xabc+i))},
			}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// reply produces a reply to a command that saga id never sent: the
// engine dead-letters it (unknown-saga, or not-waiting-on-step).
func (d *consoleDaemon) reply(t *testing.T, id string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(d.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := &kgo.Record{Topic: message.Inbox("parcel"), Partition: message.HomePartition(id, 3), Key: []byte(id), Value: []byte(`{"label":"L-?"}`),
		Headers: []kgo.RecordHeader{
			{Key: message.HeaderSagaID, Value: []byte(id)},
			{Key: message.HeaderSagaType, Value: []byte("parcel")},
			{Key: message.HeaderMessageType, Value: []byte(message.TypeReply)},
			{Key: message.HeaderMessageID, Value: []byte("reply-" + id)},
			{Key: message.HeaderInReplyTo, Value: []byte(id + "/label/do")},
			{Key: message.HeaderStep, Value: []byte("label")},
			{Key: message.HeaderOutcome, Value: []byte(message.OutcomeSuccess)},
		}}
	if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// state reads saga id from the Redis view: nil when it is not there.
func (d *consoleDaemon) state(t *testing.T, id string) *orchestrator.State {
	t.Helper()
	raw, err := d.rdb.HGet(context.Background(), orchestrator.StateKey("parcel", message.HomePartition(id, 3), id), "state").Bytes()
	if errors.Is(err, redis.Nil) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var s orchestrator.State
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	return &s
}

// stateJSON reads saga id's state as the view has it.
func (d *consoleDaemon) stateJSON(t *testing.T, id string) string {
	t.Helper()
	raw, _ := d.rdb.HGet(context.Background(), orchestrator.StateKey("parcel", message.HomePartition(id, 3), id), "state").Result()
	return raw
}

// waitStatus waits until the view has saga id with the status.
func (d *consoleDaemon) waitStatus(t *testing.T, id, status string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		s := d.state(t, id)
		if s != nil && s.Status == status {
			return
		}
		if time.Now().After(deadline) {
			got := "not in the view"
			if s != nil {
				got = s.Status + " at step " + s.StepName
			}
			t.Fatalf("saga %s is %s after %v, want %s\n%s", id, got, within, status, d.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// records reads topic from its start to its end (read_committed).
func (d *consoleDaemon) records(t *testing.T, topic string) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(d.brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r); n++ })
		if n == 0 {
			return out
		}
	}
}

// session logs in over plain HTTP, as a browser would, and returns the
// session cookie.
func (d *consoleDaemon) session(t *testing.T, token string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, d.base+"/login", strings.NewReader("token="+token+"&next=/"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", d.base)
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, c := range resp.Cookies() {
		if c.Name == "ksaga_console" {
			if !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteStrictMode {
				t.Errorf("session cookie %+v: want HttpOnly, Secure, SameSite=Strict", c)
			}
			if strings.Contains(c.Value, token) {
				t.Errorf("the session cookie holds the token")
			}
			return c.Value
		}
	}
	t.Fatalf("login answered %d without a session cookie", resp.StatusCode)
	return ""
}

var noRedirect = &http.Client{Timeout: time.Minute, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// do sends a request with the session cookie (Go's cookie jar would not
// send a Secure cookie over http) and returns the status and body.
func (d *consoleDaemon) do(t *testing.T, method, path, cookie, form string, hdr map[string]string) (int, string) {
	t.Helper()
	var body io.Reader
	if form != "" {
		body = strings.NewReader(form)
	}
	req, _ := http.NewRequest(method, d.base+path, body)
	if form != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: "ksaga_console", Value: cookie})
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf returns the CSRF token of a page's forms.
func csrf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in the page:\n%s", page)
	}
	return m[1]
}
