// Package sagatest runs a saga with its participants on an in-process Kafka
// (kfake, with transactions) and a real redis-server (or miniredis), so that
// a saga's author tests it end to end in a few lines:
//
//	func TestTrip(t *testing.T) {
//		h := sagatest.New(t)
//		h.Participant(trip.Hotel, trip.NewHotel(h.Redis()))
//		h.Participant(trip.Card, trip.NewCard(h.Redis(), 100_000))
//		def := trip.New(trip.NewStore(h.Redis()))
//		h.Saga(def)
//		ev, err := h.Run(ctx, def, "t-1", trip.Trip{…})
//		if err != nil || ev.Type != message.EventSagaCompleted {
//			t.Fatalf("got %v %v, want %s", ev.Type, err, message.EventSagaCompleted)
//		}
//	}
//
// The Harness runs the same engine (package orchestrator) and participant
// runtime (package participant) as a daemon, with the topics a daemon
// creates (package topic), and group and retry timings short enough for
// tests. It reads every saga's events and dead letters, so a test can wait
// for a saga's end (Wait), look at its history (Events) and at what was
// dead-lettered (DeadLetters, WaitDeadLetter).
//
// New needs redis-server on the PATH (apt-get install redis-server), unless
// Miniredis or RedisAddr is given: tests that claim Redis behaviour (Lua
// scripts, expiry) should run on a real one.
package sagatest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/client"
	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/topic"
)

// DefaultWaitTimeout is how long Wait and WaitDeadLetter wait when their ctx
// has no deadline.
const DefaultWaitTimeout = 30 * time.Second

// Opt configures a Harness.
type Opt interface{ apply(*config) }

type optFunc func(*config)

func (f optFunc) apply(c *config) { f(c) }

type config struct {
	miniredis  bool
	redisAddr  string
	partitions int
	timeout    time.Duration
	logger     *slog.Logger
	clock      *Clock
}

// Miniredis runs the Harness on an in-process miniredis instead of a
// redis-server: nothing to install, but not every Redis behaviour.
func Miniredis() Opt { return optFunc(func(c *config) { c.miniredis = true }) }

// RedisAddr runs the Harness on the Redis at addr, which it neither starts
// nor stops. Tests that share it must not use the same saga ids.
func RedisAddr(addr string) Opt { return optFunc(func(c *config) { c.redisAddr = addr }) }

// Partitions sets the partitions of the topics the Harness creates. The
// default is 3.
func Partitions(n int) Opt { return optFunc(func(c *config) { c.partitions = n }) }

// WaitTimeout sets how long Wait and WaitDeadLetter wait when their ctx has no
// deadline. The default is DefaultWaitTimeout.
func WaitTimeout(d time.Duration) Opt { return optFunc(func(c *config) { c.timeout = d }) }

// FakeClock runs the Harness's engines on a clock that the test moves
// forward (Harness.Clock().Advance), starting at the wall clock's time:
// step deadlines, compensation backoffs, retention and the waits between a
// failed attempt and the next pass when the test says so. A test of a 30s
// deadline then takes milliseconds.
func FakeClock() Opt { return optFunc(func(c *config) { c.clock = &Clock{t: time.Now()} }) }

// Clock is a Harness's fake clock (FakeClock). It is safe for concurrent
// use.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d. The engines see it within a few
// milliseconds: deadlines that passed fire, backoffs that ended go on.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Logger sets the logger of the engines and participants. The default logs
// warnings and errors to the test's log (New) or discards them (Open).
func Logger(l *slog.Logger) Opt { return optFunc(func(c *config) { c.logger = l }) }

// Harness is a Kafka, a Redis, and the engines and participants registered
// with it. Its methods are safe for concurrent use.
type Harness struct {
	tb      testing.TB // New's test, failed by a registration error
	cfg     config
	cluster *kfake.Cluster
	brokers []string
	rdb     redis.UniversalClient
	client  *client.Client
	adm     *kadm.Client
	spec    topic.Spec
	stopLog func()
	stopRDB func()

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	closers []func()
	sagas   map[string]bool
	parts   map[string]bool
	events  map[string]map[string][]message.Event // by saga type and id
	dead    map[string][]dlq.Info                 // by saga type
	err     error                                 // the first unexpected end of a Run
	changed chan struct{}                         // closed and replaced on every change
}

// fastKafka makes group joins, rebalances and fetches quick enough for
// tests.
var fastKafka = []kgo.Opt{
	kgo.SessionTimeout(6 * time.Second),
	kgo.HeartbeatInterval(500 * time.Millisecond),
	kgo.RebalanceTimeout(6 * time.Second),
	kgo.FetchMaxWait(100 * time.Millisecond),
}

// New starts a Harness for test t and stops it when the test ends. It fails
// t when Kafka or Redis cannot start.
func New(t testing.TB, opts ...Opt) *Harness {
	t.Helper()
	var lh *testLog
	if !hasLogger(opts) {
		lh = &testLog{t: t, stopped: new(atomic.Bool)}
		opts = append([]Opt{Logger(slog.New(lh))}, opts...)
	}
	h, err := Open(opts...)
	if err != nil {
		t.Fatalf("sagatest: %v", err)
	}
	if lh != nil {
		h.stopLog = func() { lh.stopped.Store(true) }
	}
	h.tb = t
	t.Cleanup(h.Close)
	return h
}

// fail fails the test of a Harness made by New when err is not nil: a
// registration that failed must not be ignored.
func (h *Harness) fail(err error) error {
	if err != nil && h.tb != nil {
		h.tb.Helper()
		h.tb.Fatalf("%v", err)
	}
	return err
}

func hasLogger(opts []Opt) bool {
	var c config
	for _, o := range opts {
		o.apply(&c)
	}
	return c.logger != nil
}

// Open starts a Harness outside a test (an Example, a program of your
// own). Close it when done.
func Open(opts ...Opt) (*Harness, error) {
	cfg := config{partitions: 3, timeout: DefaultWaitTimeout}
	for _, o := range opts {
		o.apply(&cfg)
	}
	if cfg.partitions < 1 {
		return nil, fmt.Errorf("partitions must be at least 1, got %d", cfg.partitions)
	}
	if cfg.logger == nil {
		cfg.logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	h := &Harness{
		cfg: cfg, spec: topic.Spec{Partitions: cfg.partitions, ReplicationFactor: 1},
		sagas: make(map[string]bool), parts: make(map[string]bool),
		events: make(map[string]map[string][]message.Event), dead: make(map[string][]dlq.Info),
		changed: make(chan struct{}),
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			h.Close()
		}
	}()
	addr := cfg.redisAddr
	switch {
	case addr != "":
	case cfg.miniredis:
		mr, err := miniredis.Run()
		if err != nil {
			return nil, fmt.Errorf("start miniredis: %w", err)
		}
		addr, h.stopRDB = mr.Addr(), mr.Close
	default:
		s, err := redistest.Run()
		if err != nil {
			return nil, err
		}
		addr, h.stopRDB = s.Addr, s.Kill
	}
	h.rdb = redis.NewClient(&redis.Options{Addr: addr})
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		return nil, fmt.Errorf("start kfake: %w", err)
	}
	h.cluster, h.brokers = c, c.ListenAddrs()
	if h.adm, err = kadm.NewOptClient(kgo.SeedBrokers(h.brokers...)); err != nil {
		return nil, err
	}
	if h.client, err = client.New(kgo.SeedBrokers(h.brokers...)); err != nil {
		return nil, err
	}
	ok = true
	return h, nil
}

// Close stops the engines and participants (each finishes or aborts its
// current transaction), then Kafka and Redis. It is safe to call more than
// once.
func (h *Harness) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	closers := h.closers
	h.mu.Unlock()
	h.cancel()
	h.wg.Wait()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	if h.stopLog != nil {
		h.stopLog()
	}
	if h.client != nil {
		h.client.Close()
	}
	if h.adm != nil {
		h.adm.Close()
	}
	if h.cluster != nil {
		h.cluster.Close()
	}
	if h.rdb != nil {
		h.rdb.Close()
	}
	if h.stopRDB != nil {
		h.stopRDB()
	}
}

// Brokers returns the seed brokers of the Harness's Kafka.
func (h *Harness) Brokers() []string { return h.brokers }

// Cluster returns the Harness's kfake cluster, to inject broker errors
// (ControlKey) or faults.
func (h *Harness) Cluster() *kfake.Cluster { return h.cluster }

// Redis returns a client of the Harness's Redis, which the engines use too
// (under keys of their own): hand it to the stores and participants under
// test.
func (h *Harness) Redis() redis.UniversalClient { return h.rdb }

// Client returns the client that Start and Compensate use.
func (h *Harness) Client() *client.Client { return h.client }

// Clock returns the Harness's fake clock, or nil without FakeClock.
func (h *Harness) Clock() *Clock { return h.cfg.clock }

// Saga creates the topics of def's saga type and runs its engine until
// Close, with opts after the Harness's own. Register the participants its
// steps send commands to before starting sagas: their topics must exist
// when the engine sends the first command.
//
// With a Harness made by New, an error also fails the test (Fatalf).
func (h *Harness) Saga(def *saga.Definition, opts ...orchestrator.Opt) error {
	h.tbHelper()
	return h.fail(h.saga(def, opts...))
}

func (h *Harness) tbHelper() {
	if h.tb != nil {
		h.tb.Helper()
	}
}

func (h *Harness) saga(def *saga.Definition, opts ...orchestrator.Opt) error {
	name := def.Name()
	if err := h.register(h.sagas, "saga", name, topic.OfSaga(def, h.spec)); err != nil {
		return err
	}
	base := []orchestrator.Opt{
		orchestrator.Brokers(h.brokers...),
		orchestrator.Redis(h.rdb),
		orchestrator.TransactionalID("sagatest-" + name),
		orchestrator.Logger(h.cfg.logger),
		orchestrator.Retry(retry.Policy{InitialInterval: 10 * time.Millisecond}),
		orchestrator.InfraBackoff(retry.Policy{InitialInterval: 10 * time.Millisecond, MaxInterval: 200 * time.Millisecond}),
		orchestrator.KafkaOpts(fastKafka...),
	}
	if c := h.cfg.clock; c != nil {
		base = append(base, orchestrator.Clock(c.Now), orchestrator.MaxPollWait(5*time.Millisecond))
	}
	eng, err := orchestrator.New(def, append(base, opts...)...)
	if err != nil {
		return err
	}
	if err := h.read(name); err != nil {
		eng.Close()
		return err
	}
	h.run("engine of saga "+name, eng.Run, eng.Close)
	return nil
}

// Participant creates the topics of participant name and runs it with
// handler until Close, with opts after the Harness's own.
//
// With a Harness made by New, an error also fails the test (Fatalf).
func (h *Harness) Participant(name string, handler participant.Handler, opts ...participant.Opt) error {
	h.tbHelper()
	return h.fail(h.participant(name, handler, opts...))
}

func (h *Harness) participant(name string, handler participant.Handler, opts ...participant.Opt) error {
	if err := h.register(h.parts, "participant", name, topic.OfParticipant(name, h.spec)); err != nil {
		return err
	}
	base := []participant.Opt{
		participant.Brokers(h.brokers...),
		participant.TransactionalID("sagatest-participant-" + name),
		participant.Logger(h.cfg.logger),
		participant.Backoff(retry.Policy{InitialInterval: 10 * time.Millisecond, MaxInterval: 200 * time.Millisecond}),
		participant.KafkaOpts(fastKafka...),
	}
	p, err := participant.New(name, handler, append(base, opts...)...)
	if err != nil {
		return err
	}
	h.run("participant "+name, p.Run, p.Close)
	return nil
}

// register creates the topics of a saga type or participant seen for the
// first time.
func (h *Harness) register(seen map[string]bool, what, name string, ts []topic.Topic) error {
	h.mu.Lock()
	switch {
	case h.closed:
		h.mu.Unlock()
		return errors.New("sagatest: the harness is closed")
	case seen[name]:
		h.mu.Unlock()
		return fmt.Errorf("sagatest: %s %s is registered twice", what, name)
	}
	seen[name] = true
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(h.ctx, 30*time.Second)
	defer cancel()
	return topic.Create(ctx, h.adm, h.spec, ts, h.cfg.logger)
}

// run runs fn until Close, then calls closeFn. A Run that returns before
// Close is recorded: Wait returns its error.
func (h *Harness) run(what string, fn func(context.Context) error, closeFn func()) {
	h.mu.Lock()
	h.closers = append(h.closers, closeFn)
	h.mu.Unlock()
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		err := fn(h.ctx)
		if h.ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("stopped unexpectedly")
		}
		h.mu.Lock()
		if h.err == nil {
			h.err = fmt.Errorf("sagatest: %s: %w", what, err)
		}
		h.notifyLocked()
		h.mu.Unlock()
	}()
}

func (h *Harness) notifyLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// read follows the events and the dead letters of saga type name.
func (h *Harness) read(name string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.brokers...),
		kgo.ConsumeTopics(message.Events(name), message.DLT(name)),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.closers = append(h.closers, cl.Close)
	h.mu.Unlock()
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			fs := cl.PollFetches(h.ctx)
			if h.ctx.Err() != nil || fs.IsClientClosed() {
				return
			}
			h.mu.Lock()
			fs.EachRecord(func(r *kgo.Record) {
				if r.Topic == message.DLT(name) {
					if info, err := dlq.Parse(r); err == nil {
						h.dead[name] = append(h.dead[name], info)
					}
					return
				}
				var ev message.Event
				if json.Unmarshal(r.Value, &ev) != nil {
					return
				}
				if h.events[name] == nil {
					h.events[name] = make(map[string][]message.Event)
				}
				h.events[name][ev.SagaID] = append(h.events[name][ev.SagaID], ev)
			})
			h.notifyLocked()
			h.mu.Unlock()
		}
	}()
	return nil
}

// Start starts saga id of def's saga type with data, as client.Start does:
// data the engine would refuse is refused here.
func (h *Harness) Start(ctx context.Context, def *saga.Definition, id string, data any) error {
	return h.client.Start(ctx, def, id, data)
}

// StartRaw sends a start request whose value is sent as it is (client
// StartRaw): to test how the saga's engine treats bad input.
func (h *Harness) StartRaw(ctx context.Context, def *saga.Definition, id string, value []byte) error {
	return h.client.StartRaw(ctx, def.Name(), id, value)
}

// Compensate asks saga id of def's saga type to compensate (client
// Compensate).
func (h *Harness) Compensate(ctx context.Context, def *saga.Definition, id, reason string) error {
	return h.client.Compensate(ctx, def, id, reason)
}

// Run starts saga id with data and waits for its end: Start, then Wait.
func (h *Harness) Run(ctx context.Context, def *saga.Definition, id string, data any) (message.Event, error) {
	if err := h.Start(ctx, def, id, data); err != nil {
		return message.Event{}, err
	}
	return h.Wait(ctx, def, id)
}

// Wait waits for the terminal event of saga id of def's saga type
// (SagaCompleted, SagaCompensated or SagaFailed) and returns it. It fails
// when ctx ends first (or, without a deadline, after Timeout), and when an
// engine or participant stopped unexpectedly.
func (h *Harness) Wait(ctx context.Context, def *saga.Definition, id string) (message.Event, error) {
	var ev message.Event
	err := h.waitFor(ctx, func() bool {
		i := slices.IndexFunc(h.events[def.Name()][id], func(e message.Event) bool { return message.Terminal(e.Type) })
		if i >= 0 {
			ev = h.events[def.Name()][id][i]
		}
		return i >= 0
	}, func() string {
		return fmt.Sprintf("%s saga %s has not ended; its events: %s", def.Name(), id, eventTypes(h.events[def.Name()][id]))
	})
	return ev, err
}

// WaitDeadLetter waits for a record of saga id to reach def's saga type's
// dead-letter topic and returns it (the first one).
func (h *Harness) WaitDeadLetter(ctx context.Context, def *saga.Definition, id string) (dlq.Info, error) {
	var info dlq.Info
	err := h.waitFor(ctx, func() bool {
		i := slices.IndexFunc(h.dead[def.Name()], func(d dlq.Info) bool { return string(d.Original.Key) == id })
		if i >= 0 {
			info = h.dead[def.Name()][i]
		}
		return i >= 0
	}, func() string {
		return fmt.Sprintf("no record of %s saga %s was dead-lettered", def.Name(), id)
	})
	return info, err
}

// waitFor waits until done (called with h.mu held) is true.
func (h *Harness) waitFor(ctx context.Context, done func() bool, why func() string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.cfg.timeout)
		defer cancel()
	}
	for {
		h.mu.Lock()
		ok, err, changed := done(), h.err, h.changed
		msg := ""
		if !ok {
			msg = why()
		}
		h.mu.Unlock()
		switch {
		case ok:
			return nil
		case err != nil:
			return fmt.Errorf("%s: %w", msg, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sagatest: %s: %w", msg, ctx.Err())
		case <-changed:
		}
	}
}

// Events returns the events of saga id of def's saga type read so far, in
// order.
func (h *Harness) Events(def *saga.Definition, id string) []message.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.events[def.Name()][id])
}

// DeadLetters returns the records of def's saga type dead-lettered so far,
// in order.
func (h *Harness) DeadLetters(def *saga.Definition) []dlq.Info {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.dead[def.Name()])
}

func eventTypes(evs []message.Event) string {
	if len(evs) == 0 {
		return "none"
	}
	s := ""
	for i, ev := range evs {
		if i > 0 {
			s += ", "
		}
		s += ev.Type
		if ev.Step != "" {
			s += "(" + ev.Step + ")"
		}
	}
	return s
}

// testLog is a slog.Handler writing warnings and errors to a test's log,
// and nothing once the Harness is closed (a test's log panics after the
// test ends).
type testLog struct {
	t       testing.TB
	stopped *atomic.Bool // shared with the handlers made by WithAttrs
	attrs   []slog.Attr
}

func (l *testLog) Enabled(_ context.Context, level slog.Level) bool {
	return !l.stopped.Load() && (level >= slog.LevelWarn || os.Getenv("KSAGA_TEST_DEBUG") != "")
}

func (l *testLog) Handle(_ context.Context, r slog.Record) error {
	if l.stopped.Load() {
		return nil
	}
	msg := r.Level.String() + " " + r.Message
	for _, a := range l.attrs {
		msg += " " + a.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		msg += " " + a.String()
		return true
	})
	l.t.Log(msg)
	return nil
}

func (l *testLog) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &testLog{t: l.t, attrs: append(slices.Clone(l.attrs), attrs...), stopped: l.stopped}
}

func (l *testLog) WithGroup(string) slog.Handler { return l }
