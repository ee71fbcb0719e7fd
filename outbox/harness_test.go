package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/topic"
)

// order is the data of the test saga.
type order struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

func (o *order) Validate() error {
	if o.Amount < 0 {
		return errors.New("negative amount")
	}
	return nil
}

// testSaga has one local step that does nothing: a started saga completes
// at once, so SagaStarted and SagaCompleted count the starts.
var testSaga = saga.New("outboxtest", saga.Step[order]{Name: "noop", Local: func(context.Context, *order) error { return nil }})

// fastKafka makes group joins and fetches quick enough for tests.
var fastKafka = []kgo.Opt{
	kgo.SessionTimeout(6 * time.Second),
	kgo.HeartbeatInterval(500 * time.Millisecond),
	kgo.RebalanceTimeout(6 * time.Second),
	kgo.FetchMaxWait(100 * time.Millisecond),
}

// testLogger logs warnings and errors to the test's log until it ends.
func testLogger(t testing.TB) *slog.Logger {
	var mu sync.Mutex
	done := false
	t.Cleanup(func() { mu.Lock(); done = true; mu.Unlock() })
	return slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			t.Log(strings.TrimSpace(string(p)))
		}
		return len(p), nil
	}), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// kafka is a kfake broker on a fixed port that a test can stop and start
// again on its data directory: clients find it at the same address.
type kafka struct {
	t       testing.TB
	port    int
	dir     string
	cluster *kfake.Cluster
}

func startKafka(t testing.TB) *kafka {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	k := &kafka{t: t, port: port, dir: t.TempDir()}
	k.start()
	t.Cleanup(k.stop)
	return k
}

func (k *kafka) brokers() []string { return []string{fmt.Sprintf("127.0.0.1:%d", k.port)} }

func (k *kafka) start() {
	k.t.Helper()
	var err error
	for range 50 { // the port may linger for a moment after a stop
		k.cluster, err = kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(k.port), kfake.DataDir(k.dir))
		if err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	k.t.Fatalf("start kfake on port %d: %v", k.port, err)
}

func (k *kafka) stop() {
	if k.cluster != nil {
		k.cluster.Close()
		k.cluster = nil
	}
}

// createTopics creates the test saga's topics.
func createTopics(t testing.TB, brokers []string, partitions int) {
	t.Helper()
	adm, err := kadm.NewOptClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := topic.Spec{Partitions: partitions, ReplicationFactor: 1}
	if err := topic.Create(ctx, adm, spec, topic.OfSaga(testSaga, spec), slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
}

// runEngine runs the test saga's engine until the test ends. An engine
// that stops on its own (a broker that went away at a bad moment) is
// replaced, as a restarted pod would be; restarts counts them.
func runEngine(t testing.TB, brokers []string, rdb redis.UniversalClient) (restarts func() int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	n := 0
	done := make(chan struct{})
	log := testLogger(t)
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			eng, err := orchestrator.New(testSaga,
				orchestrator.Brokers(brokers...),
				orchestrator.Redis(rdb),
				orchestrator.TransactionalID("outboxtest-engine"),
				orchestrator.Logger(log),
				orchestrator.Retry(retry.Policy{InitialInterval: 10 * time.Millisecond}),
				orchestrator.InfraBackoff(retry.Policy{InitialInterval: 50 * time.Millisecond, MaxInterval: 500 * time.Millisecond}),
				orchestrator.KafkaOpts(fastKafka...),
			)
			if err != nil {
				t.Error(err)
				return
			}
			err = eng.Run(ctx)
			eng.Close()
			if ctx.Err() != nil {
				return
			}
			log.Warn("engine stopped; restarting it", "err", err)
			mu.Lock()
			n++
			mu.Unlock()
			time.Sleep(200 * time.Millisecond)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}

// watcher holds what watch read: the start requests on the inbox, the
// saga events and the dead letters, read_committed.
type watcher struct {
	mu      sync.Mutex
	starts  map[string]int // StartSaga records on the inbox, by saga id
	started map[string]int // SagaStarted events, by saga id
	ended   map[string]int // terminal events, by saga id
	endType map[string]string
	dead    []dlq.Info
}

// watch reads the test saga's inbox, events and dead letters until the
// test ends.
func watch(t testing.TB, brokers []string) *watcher {
	t.Helper()
	w := &watcher{starts: map[string]int{}, started: map[string]int{}, ended: map[string]int{}, endType: map[string]string{}}
	name := testSaga.Name()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(message.Inbox(name), message.Events(name), message.DLT(name)),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			fs := cl.PollFetches(ctx)
			if ctx.Err() != nil || fs.IsClientClosed() {
				return
			}
			w.mu.Lock()
			fs.EachRecord(func(r *kgo.Record) {
				switch r.Topic {
				case message.Inbox(name):
					for _, h := range r.Headers {
						if h.Key == message.HeaderMessageType && string(h.Value) == message.TypeStartSaga {
							w.starts[string(r.Key)]++
						}
					}
				case message.DLT(name):
					if info, err := dlq.Parse(r); err == nil {
						w.dead = append(w.dead, info)
					}
				default:
					var ev message.Event
					if json.Unmarshal(r.Value, &ev) != nil {
						return
					}
					switch {
					case ev.Type == message.EventSagaStarted:
						w.started[ev.SagaID]++
					case message.Terminal(ev.Type):
						w.ended[ev.SagaID]++
						w.endType[ev.SagaID] = ev.Type
					}
				}
			})
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		cl.Close()
	})
	return w
}

// waitEnded waits until n sagas have ended.
func (w *watcher) waitEnded(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		w.mu.Lock()
		got := len(w.ended)
		w.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sagas ended within %v, want %d; %s", got, timeout, n, w.missing())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// missing describes the sagas whose start reached the inbox but which did
// not end, and the dead letters, for a test that gave up waiting.
func (w *watcher) missing() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for id, n := range w.starts {
		if w.ended[id] == 0 {
			out = append(out, fmt.Sprintf("%s (%d start requests, %d SagaStarted)", id, n, w.started[id]))
		}
	}
	slices.Sort(out)
	if len(out) > 10 {
		out = append(out[:10], "...")
	}
	return fmt.Sprintf("%d start requests read from the inbox; not ended: [%s]; %d dead letters", len(w.starts), strings.Join(out, ", "), len(w.dead))
}

// check verifies that exactly the sagas ids started, each once, and
// completed, each once, with nothing dead-lettered. It returns the start
// requests that reached the inbox more than once.
func (w *watcher) check(t testing.TB, ids []string) (duplicates int) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
		switch {
		case w.starts[id] == 0:
			t.Errorf("saga %s: no start request reached the inbox", id)
		case w.started[id] != 1:
			t.Errorf("saga %s: %d SagaStarted events, want 1", id, w.started[id])
		case w.ended[id] != 1 || w.endType[id] != message.EventSagaCompleted:
			t.Errorf("saga %s: %d terminal events (last %s), want one SagaCompleted", id, w.ended[id], w.endType[id])
		}
		duplicates += max(w.starts[id]-1, 0)
	}
	for id := range w.started {
		if !want[id] {
			t.Errorf("saga %s started, but nobody wrote it", id)
		}
	}
	for _, d := range w.dead {
		t.Errorf("dead letter: %s: %s", d.Reason, d.ErrorMessage)
	}
	return duplicates
}

// TestMain runs the process as a relay instead of the tests when
// KSAGA_OUTBOX_TEST_RELAY is set: the proof tests start relays as
// processes of their own, to SIGKILL them.
func TestMain(m *testing.M) {
	if os.Getenv("KSAGA_OUTBOX_TEST_RELAY") != "" {
		os.Exit(relayMain())
	}
	os.Exit(m.Run())
}
