package daemon_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/internal/pgtest"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/outbox"
	"github.com/ksaga/ksaga/saga"
)

// entry is the data of the ledger saga: one local step that does nothing.
type entry struct {
	ID string `json:"id"`
}

var ledger = saga.New("ledger", saga.Step[entry]{Name: "book", Local: func(context.Context, *entry) error { return nil }})

// TestOutboxRelay runs a daemon with --outbox-relay redis,postgres: starts
// written to the Redis stream and to the PostgreSQL table in the callers'
// own transactions become sagas, and /metrics exports the outbox metrics.
func TestOutboxRelay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	redisAddr := redistest.Start(t)
	dsn := pgtest.Start(t)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	table := outbox.Postgres(outbox.Check(ledger))
	if err := table.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr})
	defer rdb.Close()
	stream := outbox.Redis(rdb, ledger.Name(), outbox.Check(ledger))

	// Written before the daemon runs: they wait in the outboxes.
	const n = 20
	for i := range n {
		id := fmt.Sprintf("r-%d", i)
		if err := stream.Start(ctx, id, entry{ID: id}, func(pipe redis.Pipeliner) error {
			pipe.Set(ctx, "books:{ledger}:"+id, "booked", 0)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		id = fmt.Sprintf("p-%d", i)
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return table.Add(ctx, tx, ledger.Name(), id, entry{ID: id}) }); err != nil {
			t.Fatal(err)
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	ln.Close()
	var stderr syncBuffer
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan int, 1)
	go func() {
		done <- daemon.Run(runCtx, []string{
			"--kafka-brokers", brokers[0], "--redis-addr", redisAddr, "--replication-factor", "1", "--partitions", "2",
			"--metrics-addr", metricsAddr, "--transactional-id", "test-0", "--session-timeout", "6s", "--log-format", "json",
			"--outbox-relay", "redis,postgres",
		}, daemon.Name("ledgerd"), daemon.Saga(ledger), daemon.Output(io.Discard, &stderr),
			env(map[string]string{"KSAGA_OUTBOX_POSTGRES_DSN": dsn}))
	}()
	defer func() {
		stop()
		if code := <-done; code != daemon.ExitOK {
			t.Errorf("exit status %d, want 0\n%s", code, stderr.String())
		}
	}()

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeTopics(message.Events(ledger.Name())), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	completed := make(map[string]int)
	for len(completed) < 2*n && ctx.Err() == nil {
		fs := cl.PollFetches(ctx)
		select {
		case code := <-done:
			t.Fatalf("the daemon stopped with exit status %d\n%s", code, stderr.String())
		default:
		}
		fs.EachRecord(func(r *kgo.Record) {
			var ev message.Event
			if json.Unmarshal(r.Value, &ev) == nil && ev.Type == message.EventSagaCompleted {
				completed[ev.SagaID]++
			}
		})
	}
	if len(completed) != 2*n {
		t.Fatalf("%d sagas completed, want %d\n%s", len(completed), 2*n, stderr.String())
	}

	// The outboxes empty, and the metrics say so (read every second).
	want := []string{
		`ksaga_outbox_relayed_total{saga="ledger",store="redis"} 20`,
		`ksaga_outbox_relayed_total{saga="ledger",store="postgres"} 20`,
		`ksaga_outbox_pending_entries{saga="ledger",store="redis"} 0`,
		`ksaga_outbox_pending_entries{saga="ledger",store="postgres"} 0`,
		`ksaga_outbox_oldest_age_seconds{saga="ledger",store="redis"} 0`,
		`ksaga_outbox_relay_errors_total{saga="ledger",store="postgres"}`,
	}
	var body string
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}
		missing := ""
		for _, w := range want {
			if !strings.Contains(body, w) {
				missing = w
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics has no %s\n%s", missing, grepLines(body, "ksaga_outbox"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	var rows int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM ksaga_outbox`).Scan(&rows); err != nil || rows != 0 {
		t.Errorf("outbox table: %d rows (%v), want 0", rows, err)
	}
	if got := rdb.XLen(ctx, outbox.RedisKey(ledger.Name())).Val(); got != 0 {
		t.Errorf("outbox stream: %d entries, want 0", got)
	}
}

// TestOutboxNoTable checks that a daemon told to relay a PostgreSQL outbox
// whose table does not exist says so and exits 1.
func TestOutboxNoTable(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	var stderr syncBuffer
	code := daemon.Run(context.Background(), []string{
		"--kafka-brokers", cluster.ListenAddrs()[0], "--redis-addr", redistest.Start(t), "--replication-factor", "1",
		"--metrics-addr", "", "--transactional-id", "test-0", "--log-format", "json",
		"--outbox-relay", "postgres", "--outbox-postgres-dsn", pgtest.Start(t),
	}, daemon.Name("ledgerd"), daemon.Saga(ledger), daemon.Output(io.Discard, &stderr), env(nil))
	if code != daemon.ExitError || !strings.Contains(stderr.String(), "the outbox table ksaga_outbox does not exist") {
		t.Errorf("exit status %d, want 1 with the missing table named\n%s", code, stderr.String())
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
