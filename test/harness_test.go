package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

const partitions = 3

// env is one test's world: a kfake cluster, a Redis for the engine and one
// for the participants and the orders store.
type env struct {
	t                  testing.TB
	cluster            *kfake.Cluster
	brokers            []string
	engRedis, simRedis *redistest.Server
	eng, sim           redis.UniversalClient
	client             *kgo.Client
}

func newEnv(t testing.TB) *env {
	t.Helper()
	topics := []string{message.Inbox(order.Name), message.State(order.Name), message.Events(order.Name), message.DLT(order.Name)}
	for _, p := range order.Participants {
		topics = append(topics, message.Commands(p), message.Commands(p)+"-dlt")
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topics...),
		kfake.BrokerConfigs(map[string]string{"transaction.max.timeout.ms": "900000"}))
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	e := &env{t: t, cluster: c, brokers: c.ListenAddrs()}
	e.engRedis = redistest.StartServer(t)
	e.simRedis = redistest.StartServer(t)
	e.eng = redis.NewClient(&redis.Options{Addr: e.engRedis.Addr})
	e.sim = redis.NewClient(&redis.Options{Addr: e.simRedis.Addr})
	t.Cleanup(func() { e.eng.Close(); e.sim.Close() })
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ProducerBatchMaxBytes(4<<20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	e.client = cl
	return e
}

func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("KSAGA_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("test", t.Name())
}

// fastKafka makes group rebalances and fencing quick enough for tests.
var fastKafka = []kgo.Opt{
	kgo.SessionTimeout(6 * time.Second),
	kgo.HeartbeatInterval(500 * time.Millisecond),
	kgo.RebalanceTimeout(6 * time.Second),
	kgo.FetchMaxWait(100 * time.Millisecond),
}

// running is an engine running in its own goroutine.
type running struct {
	eng    *orchestrator.Engine
	cancel context.CancelFunc
	done   chan error
}

// stop cancels the engine and waits for Run to return.
func (r *running) stop(t testing.TB) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("engine Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("engine did not stop within 30s")
	}
	r.eng.Close()
}

// startEngine runs the order saga with def (nil: the reference one, with
// the Redis orders store).
func (e *env) startEngine(def *saga.Definition, opts ...orchestrator.Opt) *running {
	e.t.Helper()
	if def == nil {
		def = order.New(sim.NewOrderStore(e.sim))
	}
	base := []orchestrator.Opt{
		orchestrator.Brokers(e.brokers...),
		orchestrator.Redis(e.eng),
		orchestrator.TransactionalID("engine-0"),
		orchestrator.Logger(testLogger(e.t)),
		orchestrator.Retry(retry.Policy{InitialInterval: 10 * time.Millisecond, Jitter: -1}),
		orchestrator.InfraBackoff(retry.Policy{InitialInterval: 50 * time.Millisecond, MaxInterval: 500 * time.Millisecond}),
		orchestrator.KafkaOpts(fastKafka...),
	}
	eng, err := orchestrator.New(def, append(base, opts...)...)
	if err != nil {
		e.t.Fatalf("orchestrator.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{eng: eng, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- eng.Run(ctx) }()
	return r
}

// startParticipants runs the reference participants (all of them, or
// those named) until the test ends.
func (e *env) startParticipants(names ...string) (stop func()) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for name, h := range sim.Handlers(e.sim, sim.DefaultPaymentLimitCents) {
		if len(names) > 0 && !slices.Contains(names, name) {
			continue
		}
		p, err := participant.New(name, h,
			participant.Brokers(e.brokers...),
			participant.TransactionalID("participant-"+name),
			participant.Logger(testLogger(e.t)),
			participant.KafkaOpts(fastKafka...),
			participant.Backoff(retry.Policy{InitialInterval: 10 * time.Millisecond}))
		if err != nil {
			e.t.Fatalf("participant.New(%s): %v", name, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Run(ctx); err != nil {
				e.t.Errorf("participant %s: %v", name, err)
			}
			p.Close()
		}()
	}
	stop = sync.OnceFunc(func() { cancel(); wg.Wait() })
	e.t.Cleanup(stop)
	return stop
}

func (e *env) seed(stock map[string]int64) {
	e.t.Helper()
	if err := sim.SeedStock(context.Background(), e.sim, stock); err != nil {
		e.t.Fatal(err)
	}
}

// newOrder returns a valid order that completes with enough stock.
func newOrder(id string) order.Order {
	return order.Order{
		OrderID: id, CustomerID: "c-" + id, AmountCents: 4599, Currency: "USD",
		Items:  []order.Item{{SKU: "sku-1", Qty: 2}},
		ShipTo: order.Address{Country: "DE", City: "Berlin"},
	}
}

// start produces a start request for o.
func (e *env) start(o order.Order) {
	e.t.Helper()
	e.produce(startRecord(o))
}

// startRecord is the start request of o.
func startRecord(o order.Order) *kgo.Record {
	v, _ := json.Marshal(o)
	return &kgo.Record{Topic: message.Inbox(order.Name), Key: []byte(o.OrderID), Value: v,
		Headers: []kgo.RecordHeader{
			{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
			{Key: message.HeaderMessageID, Value: []byte("start-" + o.OrderID)},
		}}
}

func (e *env) produce(rs ...*kgo.Record) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.client.ProduceSync(ctx, rs...).FirstErr(); err != nil {
		e.t.Fatalf("produce: %v", err)
	}
}

// readAll reads a topic with read_committed until it has been idle for
// idle.
func (e *env) readAll(topic string, idle time.Duration) []*kgo.Record {
	e.t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		e.t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for {
		ctx, cancel := context.WithTimeout(context.Background(), idle)
		fs := cl.PollFetches(ctx)
		cancel()
		n := 0
		fs.EachRecord(func(r *kgo.Record) { out = append(out, r); n++ })
		if n == 0 {
			return out
		}
	}
}

// events returns the saga events, per saga id, in order.
func (e *env) events() map[string][]message.Event {
	e.t.Helper()
	out := make(map[string][]message.Event)
	for _, r := range e.readAll(message.Events(order.Name), 500*time.Millisecond) {
		var ev message.Event
		if err := json.Unmarshal(r.Value, &ev); err != nil {
			e.t.Fatalf("undecodable event: %v", err)
		}
		out[ev.SagaID] = append(out[ev.SagaID], ev)
	}
	return out
}

// waitTerminal waits until every id has a terminal event and returns the
// events of all sagas. It fails the test after timeout.
func (e *env) waitTerminal(ids []string, timeout time.Duration) map[string][]message.Event {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		evs := e.events()
		missing := 0
		for _, id := range ids {
			if terminal(evs[id]) == "" {
				missing++
			}
		}
		if missing == 0 {
			return evs
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d of %d sagas have no terminal event after %v", missing, len(ids), timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// terminal returns the saga's terminal event type, "" if none, and
// "MULTIPLE" if more than one.
func terminal(evs []message.Event) string {
	got := ""
	for _, ev := range evs {
		if message.Terminal(ev.Type) {
			if got != "" {
				return "MULTIPLE"
			}
			got = ev.Type
		}
	}
	return got
}

// commands returns the commands sent to a participant, by message id.
func (e *env) commands(participant string) map[string]int {
	out := make(map[string]int)
	for _, r := range e.readAll(message.Commands(participant), 300*time.Millisecond) {
		out[header(r, message.HeaderMessageID)+" attempt "+header(r, message.HeaderStepAttempt)]++
	}
	return out
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// redisState returns the saga's state as stored in the engine's Redis.
func (e *env) redisState(id string) (*orchestrator.State, error) {
	raw, err := e.eng.HGet(context.Background(), orchestrator.StateKey(order.Name, message.HomePartition(id, partitions), id), "state").Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st := new(orchestrator.State)
	return st, json.Unmarshal(raw, st)
}

// waitRedis waits until Redis holds a terminal state for every id.
func (e *env) waitRedis(ids []string, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for _, id := range ids {
		for {
			st, err := e.redisState(id)
			if err == nil && st != nil && st.Terminal() {
				break
			}
			if time.Now().After(deadline) {
				e.t.Fatalf("saga %s: redis state %+v (err %v), want a terminal one", id, st, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return out
}

func (e *env) stock(sku string) int64 {
	n, err := e.sim.Get(context.Background(), "ksaga:sim:stock:"+sku).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) hash(key string) map[string]string {
	m, err := e.sim.HGetAll(context.Background(), key).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

// waitParticipants waits until the consumer group of each named participant
// is stable with its command partitions assigned: a test whose steps have
// short deadlines must not count a participant's first join against them.
func (e *env) waitParticipants(names ...string) {
	e.t.Helper()
	adm := kadm.NewClient(e.client)
	waitFor(e.t, 30*time.Second, func() bool {
		for _, name := range names {
			group := "ksaga-participant-" + name
			groups, err := adm.DescribeGroups(context.Background(), group)
			if err != nil || groups[group].State != "Stable" {
				return false
			}
			assigned := 0
			for _, m := range groups[group].Members {
				if c, ok := m.Assigned.AsConsumer(); ok {
					for _, t := range c.Topics {
						assigned += len(t.Partitions)
					}
				}
			}
			if assigned == 0 {
				return false
			}
		}
		return true
	})
}

// assigned returns the inbox partitions that the group assigns to eng.
func (e *env) assigned(eng *orchestrator.Engine) []int32 {
	e.t.Helper()
	member, _ := eng.Client().GroupMetadata()
	groups, err := kadm.NewClient(e.client).DescribeGroups(context.Background(), eng.Group())
	if err != nil {
		e.t.Fatalf("describe group %s: %v", eng.Group(), err)
	}
	for _, m := range groups[eng.Group()].Members {
		if m.MemberID != member {
			continue
		}
		c, ok := m.Assigned.AsConsumer()
		if !ok {
			e.t.Fatalf("member %s of group %s has no consumer assignment", member, eng.Group())
		}
		for _, t := range c.Topics {
			if t.Topic == message.Inbox(order.Name) {
				return t.Partitions
			}
		}
	}
	return nil
}
