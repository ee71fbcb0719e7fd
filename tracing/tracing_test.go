package tracing_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/tracing"
)

// Trip is the data of the test saga.
type Trip struct {
	ID string `json:"id"`
	// Decline makes the card participant decline the charge.
	Decline bool `json:"decline,omitempty"`
}

const sagaType = "trip"

// world is one test's Kafka, Redis, tracer and in-memory exporter.
type world struct {
	t       *testing.T
	brokers []string
	rdb     redis.UniversalClient
	client  *kgo.Client
	exp     *tracetest.InMemoryExporter
	tr      *tracing.Tracer
}

var fastKafka = []kgo.Opt{
	kgo.SessionTimeout(6 * time.Second),
	kgo.HeartbeatInterval(500 * time.Millisecond),
	kgo.RebalanceTimeout(6 * time.Second),
	kgo.FetchMaxWait(100 * time.Millisecond),
}

func newWorld(t *testing.T) *world {
	t.Helper()
	topics := []string{
		message.Inbox(sagaType), message.State(sagaType), message.Events(sagaType), message.DLT(sagaType),
		message.Commands("hotel"), message.Commands("card"), message.Commands("hotel") + "-dlt", message.Commands("card") + "-dlt",
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, topics...),
		kfake.BrokerConfigs(map[string]string{"transaction.max.timeout.ms": "900000"}))
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	t.Cleanup(func() { rdb.Close() })
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	exp := tracetest.NewInMemoryExporter()
	tp := tracing.NewProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	tr, err := tracing.New(tp)
	if err != nil {
		t.Fatal(err)
	}
	return &world{t: t, brokers: c.ListenAddrs(), rdb: rdb, client: cl, exp: exp, tr: tr}
}

func testLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("KSAGA_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(tracing.LogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
}

// tripSaga is book-hotel → charge-card → confirm, with confirm failing
// while failConfirm is set. A deadline, when set, is charge-card's.
func tripSaga(failConfirm *atomic.Bool, deadline time.Duration) *saga.Definition {
	return saga.New(sagaType,
		saga.Step[Trip]{Name: "book-hotel",
			Do: func(_ context.Context, t *Trip) (saga.Command, error) {
				return saga.Command{Participant: "hotel", Type: "BookRoom", Payload: t}, nil
			},
			Undo: func(_ context.Context, t *Trip) (saga.Command, error) {
				return saga.Command{Participant: "hotel", Type: "CancelRoom", Payload: t}, nil
			}},
		saga.Step[Trip]{Name: "charge-card", ReplyTimeout: deadline, Retry: retry.Policy{MaxAttempts: 2},
			Do: func(_ context.Context, t *Trip) (saga.Command, error) {
				return saga.Command{Participant: "card", Type: "Charge", Payload: t}, nil
			}},
		saga.Step[Trip]{Name: "confirm", Retry: retry.Policy{MaxAttempts: 2, InitialInterval: 10 * time.Millisecond, Jitter: -1},
			Local: func(context.Context, *Trip) error {
				if failConfirm != nil && failConfirm.Load() {
					return errors.New("confirmations are down")
				}
				return nil
			}},
	)
}

// localFirstSaga starts with a local step, failing while fail is set: its
// start request is dead-lettered before the saga exists.
func localFirstSaga(fail *atomic.Bool) *saga.Definition {
	return saga.New(sagaType,
		saga.Step[Trip]{Name: "reserve", Retry: retry.Policy{MaxAttempts: 2, InitialInterval: 10 * time.Millisecond, Jitter: -1},
			Local: func(context.Context, *Trip) error {
				if fail.Load() {
					return errors.New("reservations are down")
				}
				return nil
			}},
		saga.Step[Trip]{Name: "book-hotel",
			Do: func(_ context.Context, t *Trip) (saga.Command, error) {
				return saga.Command{Participant: "hotel", Type: "BookRoom", Payload: t}, nil
			}},
	)
}

func (w *world) startEngine(def *saga.Definition) *orchestrator.Engine {
	w.t.Helper()
	eng, err := orchestrator.New(def,
		orchestrator.Brokers(w.brokers...),
		orchestrator.Redis(w.rdb),
		orchestrator.TransactionalID("engine-0"),
		orchestrator.Logger(testLogger()),
		orchestrator.Hooks(w.tr),
		orchestrator.Retry(retry.Policy{MaxAttempts: 2, InitialInterval: 10 * time.Millisecond, Jitter: -1}),
		orchestrator.InfraBackoff(retry.Policy{InitialInterval: 50 * time.Millisecond, MaxInterval: 500 * time.Millisecond}),
		orchestrator.KafkaOpts(fastKafka...),
	)
	if err != nil {
		w.t.Fatalf("orchestrator.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	w.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			w.t.Errorf("engine: %v", err)
		}
		eng.Close()
	})
	return eng
}

// startParticipant runs a participant that answers every command with
// success, except Charge of a trip with Decline set. The first attempt of a
// Charge waits for gate to close, when gate is set.
func (w *world) startParticipant(name string, gate chan struct{}) {
	w.t.Helper()
	h := participant.HandlerFunc(func(_ context.Context, reqs []participant.Request) ([]message.Reply, error) {
		out := make([]message.Reply, len(reqs))
		for i, r := range reqs {
			if gate != nil && r.Type == "Charge" && r.Attempt == 1 {
				select {
				case <-gate:
				case <-time.After(30 * time.Second):
				}
			}
			var trip Trip
			_ = json.Unmarshal(r.Payload, &trip)
			out[i] = message.Reply{Outcome: message.OutcomeSuccess}
			if r.Type == "Charge" && trip.Decline {
				out[i] = message.Reply{Outcome: message.OutcomeFailure, Reason: "CARD_DECLINED"}
			}
		}
		return out, nil
	})
	p, err := participant.New(name, h,
		participant.Brokers(w.brokers...),
		participant.TransactionalID("participant-"+name),
		participant.Logger(testLogger()),
		participant.Trace(w.tr),
		participant.KafkaOpts(fastKafka...),
		participant.Backoff(retry.Policy{InitialInterval: 10 * time.Millisecond}))
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	w.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			w.t.Errorf("participant %s: %v", name, err)
		}
		p.Close()
	})
}

func (w *world) produce(rs ...*kgo.Record) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.client.ProduceSync(ctx, rs...).FirstErr(); err != nil {
		w.t.Fatalf("produce: %v", err)
	}
}

// start sends a start request, with the client's trace context when
// traceparent is set.
func (w *world) start(trip Trip, traceparent string) {
	w.t.Helper()
	v, _ := json.Marshal(trip)
	hs := []kgo.RecordHeader{
		{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
		{Key: message.HeaderMessageID, Value: []byte("start-" + trip.ID)},
	}
	if traceparent != "" {
		hs = append(hs, kgo.RecordHeader{Key: message.HeaderTraceParent, Value: []byte(traceparent)},
			kgo.RecordHeader{Key: message.HeaderTraceState, Value: []byte("client=1")})
	}
	w.produce(&kgo.Record{Topic: message.Inbox(sagaType), Key: []byte(trip.ID), Value: v, Headers: hs})
}

// readAll reads a topic with read_committed until it is idle.
func (w *world) readAll(topic string) []*kgo.Record {
	w.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(w.brokers...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		w.t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r); n++ })
		if n == 0 {
			return out
		}
	}
}

// waitSaga waits for the saga span of id and returns it.
func (w *world) waitSaga(id string, timeout time.Duration) tracetest.SpanStub {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, s := range w.exp.GetSpans() {
			if s.Name == "saga "+sagaType && attr(s, "ksaga.saga.id") == id {
				return s
			}
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("no saga span for %s after %v; spans:\n%s", id, timeout, names(w.exp.GetSpans()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tree prints the spans of trace tid as an indented tree: each span's name,
// its status and outcome, its children ordered by start time. A span whose
// parent is not in the trace is printed at the top with "(parent missing)".
func tree(spans tracetest.SpanStubs, tid trace.TraceID) string {
	byParent := make(map[trace.SpanID][]tracetest.SpanStub)
	ids := make(map[trace.SpanID]bool)
	for _, s := range spans {
		if s.SpanContext.TraceID() == tid {
			ids[s.SpanContext.SpanID()] = true
		}
	}
	var roots []tracetest.SpanStub
	for _, s := range spans {
		if s.SpanContext.TraceID() != tid {
			continue
		}
		if p := s.Parent.SpanID(); s.Parent.IsValid() && ids[p] {
			byParent[p] = append(byParent[p], s)
		} else {
			roots = append(roots, s)
		}
	}
	order := func(ss []tracetest.SpanStub) {
		slices.SortStableFunc(ss, func(a, b tracetest.SpanStub) int {
			if c := a.StartTime.Compare(b.StartTime); c != 0 {
				return c
			}
			return strings.Compare(a.Name, b.Name)
		})
	}
	var b strings.Builder
	var walk func(s tracetest.SpanStub, depth int)
	walk = func(s tracetest.SpanStub, depth int) {
		b.WriteString(strings.Repeat("  ", depth) + s.Name)
		if a := attr(s, "ksaga.step.attempt"); a != "" && a != "0" && !strings.HasPrefix(s.Name, "handle") {
			b.WriteString(" #" + a)
		}
		if o := attr(s, "ksaga.outcome"); o != "" {
			b.WriteString(" outcome=" + o)
		}
		if s.Status.Code.String() == "Error" {
			b.WriteString(" ERROR(" + s.Status.Description + ")")
		}
		if depth == 0 && s.Parent.IsValid() {
			b.WriteString(" (parent missing)")
		}
		b.WriteString("\n")
		kids := byParent[s.SpanContext.SpanID()]
		order(kids)
		for _, k := range kids {
			walk(k, depth+1)
		}
	}
	order(roots)
	for _, r := range roots {
		walk(r, 0)
	}
	return b.String()
}

func attr(s tracetest.SpanStub, key string) string {
	for _, a := range s.Attributes {
		if string(a.Key) == key {
			return a.Value.Emit()
		}
	}
	return ""
}

func names(ss tracetest.SpanStubs) string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Name+" "+s.SpanContext.TraceID().String())
	}
	return strings.Join(out, "\n")
}

// checkHeaders fails the test unless every record of the topics that
// belongs to saga id carries a traceparent of trace tid, and no tracestate
// header unless it has a value (an empty one is the same as none).
func (w *world) checkHeaders(id string, tid trace.TraceID, topics ...string) {
	w.t.Helper()
	for _, topic := range topics {
		n := 0
		for _, r := range w.readAll(topic) {
			// Start requests come from the test, not from ksaga.
			if string(r.Key) != id || (topic == message.Inbox(sagaType) && header(r, message.HeaderMessageType) == message.TypeStartSaga) {
				continue
			}
			n++
			var parent, state string
			var hasState bool
			for _, h := range r.Headers {
				switch h.Key {
				case message.HeaderTraceParent:
					parent = string(h.Value)
				case message.HeaderTraceState:
					state, hasState = string(h.Value), true
				}
			}
			typ := header(r, message.HeaderMessageType)
			if !strings.Contains(parent, tid.String()) || (hasState && state == "") {
				w.t.Errorf("%s record %d (%s) of saga %s: traceparent %q tracestate %q (present %v), want trace %s and no empty tracestate",
					topic, r.Offset, typ, id, parent, state, hasState, tid)
			}
		}
		if n == 0 {
			w.t.Errorf("no record of saga %s on %s", id, topic)
		}
	}
}

// checkLinked fails the test unless some transaction span links to trace tid.
func (w *world) checkLinked(tid trace.TraceID) {
	w.t.Helper()
	for _, s := range w.exp.GetSpans() {
		if s.Name != "ksaga transaction" {
			continue
		}
		for _, l := range s.Links {
			if l.SpanContext.TraceID() == tid {
				return
			}
		}
	}
	w.t.Errorf("no transaction span links to trace %s", tid)
}

func TestCompletedSaga(t *testing.T) {
	w := newWorld(t)
	w.startParticipant("hotel", nil)
	w.startParticipant("card", nil)
	w.startEngine(tripSaga(nil, 0))
	// The client's own span: the saga joins its trace.
	client := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	w.start(Trip{ID: "t-ok"}, client)
	s := w.waitSaga("t-ok", 30*time.Second)
	tid := s.SpanContext.TraceID()
	if tid.String() != "0af7651916cd43dd8448eb211c80319c" {
		t.Errorf("saga trace %s, want the client's", tid)
	}
	if got := s.Parent.SpanID().String(); got != "b7ad6b7169203331" {
		t.Errorf("saga span's parent %s, want the client's span", got)
	}
	got := tree(w.exp.GetSpans(), tid)
	want := `saga trip outcome=completed (parent missing)
  step book-hotel #1 outcome=success
    handle BookRoom outcome=success
  step charge-card #1 outcome=success
    handle Charge outcome=success
  local confirm
`
	if got != want {
		t.Errorf("span tree:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("span tree of a completed saga:\n%s", got)
	w.checkHeaders("t-ok", tid, message.Commands("hotel"), message.Commands("card"), message.Events(sagaType), message.State(sagaType), message.Inbox(sagaType))
	w.checkLinked(tid)
}

func TestCompensatedSaga(t *testing.T) {
	w := newWorld(t)
	w.startParticipant("hotel", nil)
	w.startParticipant("card", nil)
	w.startEngine(tripSaga(nil, 0))
	w.start(Trip{ID: "t-declined", Decline: true}, "")
	s := w.waitSaga("t-declined", 30*time.Second)
	tid := s.SpanContext.TraceID()
	if tid != tracing.SagaTraceID(sagaType, "t-declined") {
		t.Errorf("saga trace %s, want SagaTraceID %s", tid, tracing.SagaTraceID(sagaType, "t-declined"))
	}
	got := tree(w.exp.GetSpans(), tid)
	want := `saga trip outcome=compensated
  step book-hotel #1 outcome=success
    handle BookRoom outcome=success
  step charge-card #1 outcome=failure ERROR(CARD_DECLINED)
    handle Charge outcome=failure ERROR(CARD_DECLINED)
  compensate book-hotel #1 outcome=success
    handle CancelRoom outcome=success
`
	if got != want {
		t.Errorf("span tree:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("span tree of a compensated saga:\n%s", got)
	w.checkHeaders("t-declined", tid, message.Commands("hotel"), message.Commands("card"), message.Events(sagaType), message.State(sagaType), message.Inbox(sagaType))
	w.checkLinked(tid)
}

func TestDeadline(t *testing.T) {
	w := newWorld(t)
	w.startParticipant("hotel", nil)
	// The card participant answers the first charge once it timed out and
	// was re-sent.
	gate := make(chan struct{})
	w.startParticipant("card", gate)
	eng := w.startEngine(tripSaga(nil, 2*time.Second))
	w.start(Trip{ID: "t-late"}, "")
	deadline := time.Now().Add(30 * time.Second)
	for len(w.readAll(message.Commands("card"))) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the charge was not re-sent after its deadline")
		}
	}
	// The saga waits on charge-card: the in-flight index says so.
	var charge orchestrator.StepFlight
	for _, f := range eng.InFlight() {
		if f.Step == "charge-card" && !f.Compensating {
			charge = f
		}
	}
	if charge.Sagas != 1 || charge.Oldest.IsZero() || time.Since(charge.Oldest) < 2*time.Second || charge.Budget != 4*time.Second {
		t.Errorf("in flight at charge-card: %+v, want 1 saga there for 2s or more, budget 4s", charge)
	}
	close(gate)
	s := w.waitSaga("t-late", 30*time.Second)
	tid := s.SpanContext.TraceID()
	got := tree(w.exp.GetSpans(), tid)
	// Both sends carry the same message id: the reply to the first answers
	// the second attempt, the reply to the second is dropped as stale.
	want := `saga trip outcome=completed
  step book-hotel #1 outcome=success
    handle BookRoom outcome=success
  step charge-card #1 ERROR(no reply before the deadline)
    handle Charge outcome=success
  step charge-card #2 outcome=success
    handle Charge outcome=success
  local confirm
`
	if got != want {
		t.Errorf("span tree:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("span tree of a saga that hit a deadline:\n%s", got)
	for _, f := range eng.InFlight() {
		if f.Sagas != 0 {
			t.Errorf("in flight after the saga ended: %+v", f)
		}
	}
	// The timeout record continues the saga's trace.
	w.checkHeaders("t-late", tid, message.Inbox(sagaType), message.Commands("card"), message.Events(sagaType))
	timeouts := 0
	for _, r := range w.readAll(message.Inbox(sagaType)) {
		if header(r, message.HeaderMessageType) == message.TypeTimeout && string(r.Key) == "t-late" {
			timeouts++
		}
	}
	if timeouts == 0 {
		t.Error("no Timeout record on the inbox")
	}
}

func TestRedrivenFromDLQ(t *testing.T) {
	w := newWorld(t)
	w.startParticipant("hotel", nil)
	var fail atomic.Bool
	fail.Store(true)
	w.startEngine(localFirstSaga(&fail))
	w.start(Trip{ID: "t-redrive"}, "")
	tid := tracing.SagaTraceID(sagaType, "t-redrive")

	var dead []*kgo.Record
	deadline := time.Now().Add(30 * time.Second)
	for len(dead) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the start request was not dead-lettered")
		}
		dead = w.readAll(message.DLT(sagaType))
	}
	w.checkHeaders("t-redrive", tid, message.DLT(sagaType))
	// Fix the cause, then redrive as sagactl does: the original, with its
	// headers, to its original topic and partition.
	fail.Store(false)
	info, err := dlq.Parse(dead[0])
	if err != nil {
		t.Fatal(err)
	}
	hs := append(slices.Clone(info.Original.Headers), kgo.RecordHeader{Key: message.HeaderRedriveOf,
		Value: []byte(strconv.Itoa(int(dead[0].Partition)) + ":" + strconv.FormatInt(dead[0].Offset, 10))})
	w.produce(&kgo.Record{Topic: info.Topic, Partition: info.Partition, Key: info.Original.Key, Value: info.Original.Value, Headers: hs})

	s := w.waitSaga("t-redrive", 30*time.Second)
	if s.SpanContext.TraceID() != tid {
		t.Errorf("saga trace %s, want %s", s.SpanContext.TraceID(), tid)
	}
	got := tree(w.exp.GetSpans(), tid)
	// The attempts before the dead letter and the redriven start share the
	// saga's trace and span.
	want := `saga trip outcome=completed
  local reserve ERROR(reservations are down)
  local reserve ERROR(reservations are down)
  local reserve
  step book-hotel #1 outcome=success
    handle BookRoom outcome=success
`
	if got != want {
		t.Errorf("span tree:\n%s\nwant:\n%s", got, want)
	}
	t.Logf("span tree of a saga redriven from the DLQ:\n%s", got)
	w.checkHeaders("t-redrive", tid, message.Commands("hotel"), message.Events(sagaType), message.State(sagaType))
}

func TestFromEnv(t *testing.T) {
	tests := []struct {
		env     map[string]string
		on      bool
		wantErr bool
	}{
		{nil, false, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, true, false},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, true, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, false, false},
		{map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, false, false},
		{map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, false, true},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, false, true},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			getenv := func(k string) string { return tt.env[k] }
			tp, err := tracing.ProviderFromEnv(context.Background(), getenv, "sagad", "test")
			if (err != nil) != tt.wantErr {
				t.Fatalf("err %v, want error %v", err, tt.wantErr)
			}
			if (tp != nil) != tt.on {
				t.Fatalf("provider %v, want on %v", tp, tt.on)
			}
			if tp != nil {
				if _, err := tracing.New(tp); err != nil {
					t.Errorf("New: %v", err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				_ = tp.Shutdown(ctx)
			}
			tr, shutdown, err := tracing.FromEnv(context.Background(), getenv, "sagad", "test")
			if (err != nil) != tt.wantErr || (err == nil && (tr == nil || shutdown == nil)) {
				t.Fatalf("FromEnv = %v, %v, want a Tracer or error %v", tr, err, tt.wantErr)
			}
			if shutdown != nil {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				_ = shutdown(ctx)
			}
		})
	}
}

func TestNewRefusesForeignProvider(t *testing.T) {
	if _, err := tracing.New(sdktrace.NewTracerProvider()); !errors.Is(err, tracing.ErrIDGenerator) {
		t.Fatalf("New with a provider without IDGenerator: %v, want ErrIDGenerator", err)
	}
	if tr, err := tracing.New(nil); err != nil || tr == nil {
		t.Fatalf("New(nil) = %v, %v", tr, err)
	}
}

func TestLogHandler(t *testing.T) {
	var mu sync.Mutex
	var b strings.Builder
	log := slog.New(tracing.LogHandler(slog.NewJSONHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return b.Write(p)
	}), nil))).With("saga", "trip")
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled,
	})
	log.InfoContext(trace.ContextWithSpanContext(context.Background(), sc), "dead-lettered")
	log.Info("no span")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2", len(lines))
	}
	var first, second map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal([]byte(lines[1]), &second)
	if first["trace_id"] != sc.TraceID().String() || first["span_id"] != sc.SpanID().String() || first["saga"] != "trip" {
		t.Errorf("line %s: want trace_id, span_id and saga", lines[0])
	}
	if _, ok := second["trace_id"]; ok {
		t.Errorf("line %s: a trace_id without a span", lines[1])
	}
}

func TestLogTo(t *testing.T) {
	prev := otel.GetErrorHandler()
	t.Cleanup(func() { otel.SetErrorHandler(prev) })
	var mu sync.Mutex
	var b strings.Builder
	tracing.LogTo(slog.New(slog.NewJSONHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return b.Write(p)
	}), nil)))
	otel.Handle(errors.New("traces export: connection refused"))
	mu.Lock()
	defer mu.Unlock()
	var line map[string]any
	if err := json.Unmarshal([]byte(b.String()), &line); err != nil {
		t.Fatalf("otel's error was not logged as one JSON line: %q", b.String())
	}
	if line["level"] != "WARN" || line["component"] != "otel" || line["err"] != "traces export: connection refused" {
		t.Errorf("line %v: want level WARN, component otel and the error", line)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
