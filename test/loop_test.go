package test

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
)

// TestCatchUpAfterRedisLost replays, in order, the race that made a saga run
// twice in a long chaos run: Redis loses everything while the engine is
// inside a transaction; the next poll brings a duplicate start of a saga
// that completed long ago, and its catch-up brings a record of another
// partition. The first preload finds the saga's partition lost, rebuilds
// it (the saga is back in memory, its last state waiting to be written)
// and so does not load the saga; the catch-up's preload finds the second
// partition lost and its rebuild takes that write in, which sends the
// ended saga out of memory. Handled then, the duplicate start would find
// no saga and run it again. The batch must be consumed again instead, and
// the saga must end once.
func TestCatchUpAfterRedisLost(t *testing.T) {
	e := newEnv(t)
	var (
		done    = onPartition("done", 0, 1)[0]  // completes before Redis is lost
		other   = onPartition("other", 1, 1)[0] // gives partition 1 a checkpoint
		late    = onPartition("late", 1, 1)[0]  // comes with the catch-up
		holding = onPartition("hold", 2, 1)[0]  // keeps the engine in a transaction
	)
	entered, release := make(chan struct{}), make(chan struct{})
	def := saga.New(order.Name, saga.Step[order.Order]{
		Name: "hold",
		Local: func(ctx context.Context, o *order.Order) error {
			if o.OrderID != holding {
				return nil
			}
			close(entered)
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
		CallTimeout: time.Minute,
	})
	logs := &logRecorder{Handler: testLogger(t).Handler(), msgs: new(messages)}
	eng := e.startEngine(def, orchestrator.Logger(slog.New(logs)))
	defer eng.stop(t)

	e.start(newOrder(done))
	e.start(newOrder(other))
	e.waitTerminal([]string{done, other}, 30*time.Second)
	e.waitRedis([]string{done, other}, 10*time.Second)
	// Let the engine take the write in, so that the completed saga leaves
	// its memory.
	time.Sleep(200 * time.Millisecond)

	e.start(newOrder(holding))
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the holding saga's step was not called within 30s")
	}
	if err := e.eng.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	// The duplicate is fetched while the transaction runs and waits in the
	// client; the later start is committed after that fetch and comes
	// with the next one, the catch-up's.
	e.start(newOrder(done))
	time.Sleep(300 * time.Millisecond)
	e.start(newOrder(late))
	time.Sleep(100 * time.Millisecond)
	close(release)

	evs := e.waitTerminal([]string{holding, late}, 30*time.Second)
	time.Sleep(500 * time.Millisecond) // a second run of done would end by now
	evs = e.events()
	for _, id := range []string{done, other, holding, late} {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Errorf("saga %s ended %s, want one %s; events %+v", id, got, message.EventSagaCompleted, evs[id])
		}
	}
	// The test is only worth its name if the race was replayed.
	if !logs.msgs.has("consuming the batch again") {
		t.Errorf("the engine never consumed a catch-up batch again: the race was not replayed; logged %q", logs.msgs.all())
	}
}

// logRecorder keeps the messages of every record logged at Info or above,
// and passes on those its Handler takes.
type logRecorder struct {
	slog.Handler
	msgs *messages
}

type messages struct {
	mu   sync.Mutex
	msgs []string
}

func (m *messages) has(part string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.ContainsFunc(m.msgs, func(s string) bool { return strings.Contains(s, part) })
}

func (m *messages) all() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.msgs)
}

func (l *logRecorder) Enabled(_ context.Context, level slog.Level) bool {
	return level >= slog.LevelInfo
}

func (l *logRecorder) Handle(ctx context.Context, r slog.Record) error {
	l.msgs.mu.Lock()
	l.msgs.msgs = append(l.msgs.msgs, r.Message)
	l.msgs.mu.Unlock()
	if !l.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return l.Handler.Handle(ctx, r)
}

func (l *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &logRecorder{Handler: l.Handler.WithAttrs(as), msgs: l.msgs}
}

func (l *logRecorder) WithGroup(name string) slog.Handler {
	return &logRecorder{Handler: l.Handler.WithGroup(name), msgs: l.msgs}
}

// committed counts the engine's committed transactions.
type committed struct{ n atomic.Int64 }

func (c *committed) AfterCommit(context.Context, *orchestrator.Batch) { c.n.Add(1) }

// TestTransactionInterval offers starts one at a time, every 5ms, to an
// engine with a 50ms TransactionInterval: it begins a transaction at most
// once per interval, and every saga still completes, once. Without the
// interval the same load takes about a transaction per start.
func TestTransactionInterval(t *testing.T) {
	e := newEnv(t)
	def := saga.New(order.Name, saga.Step[order.Order]{
		Name:  "record",
		Local: func(context.Context, *order.Order) error { return nil },
	})
	txns := &committed{}
	const interval = 50 * time.Millisecond
	eng := e.startEngine(def, orchestrator.Hooks(txns), orchestrator.TransactionInterval(interval))
	defer eng.stop(t)
	e.start(newOrder("warm"))
	e.waitTerminal([]string{"warm"}, 30*time.Second)

	sagas := ids("paced", 200)
	before := txns.n.Load()
	began := time.Now()
	for _, id := range sagas {
		e.start(newOrder(id))
		time.Sleep(5 * time.Millisecond)
	}
	evs := e.waitTerminal(sagas, 30*time.Second)
	elapsed := time.Since(began)
	for _, id := range sagas {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Errorf("saga %s ended %s, want one %s", id, got, message.EventSagaCompleted)
		}
	}
	n := txns.n.Load() - before
	if most := int64(elapsed/interval) + 2; n > most {
		t.Errorf("%d transactions in %v, want at most %d: one per %v", n, elapsed.Round(time.Millisecond), most, interval)
	}
	t.Logf("%d sagas in %d transactions over %v", len(sagas), n, elapsed.Round(time.Millisecond))
}
