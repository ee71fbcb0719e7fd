package outbox

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/internal/pgtest"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/retry"
)

// relayMain is the process a proof test starts as a relay (TestMain). It
// prints "committed <n>" on stdout after each Kafka commit, then waits
// KSAGA_OUTBOX_TEST_PAUSE before it removes the entries: the window in
// which a relay that dies leaves relayed entries behind, which the test
// kills it in.
func relayMain() int {
	env := os.Getenv
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	batch, _ := strconv.Atoi(env("KSAGA_OUTBOX_TEST_BATCH"))
	pause, _ := time.ParseDuration(env("KSAGA_OUTBOX_TEST_PAUSE"))
	opts := []RelayOpt{
		Brokers(strings.Split(env("KSAGA_OUTBOX_TEST_BROKERS"), ",")...),
		TransactionalID(env("KSAGA_OUTBOX_TEST_TXN")),
		BatchSize(batch), PollInterval(100 * time.Millisecond), Logger(log),
		Backoff(retry.Policy{InitialInterval: 100 * time.Millisecond, MaxInterval: time.Second}),
	}
	var r *Relay
	var err error
	addr := env("KSAGA_OUTBOX_TEST_ADDR")
	switch env("KSAGA_OUTBOX_TEST_RELAY") {
	case "redis":
		rdb := redis.NewClient(&redis.Options{Addr: addr})
		defer rdb.Close()
		r, err = Redis(rdb, testSaga.Name()).Relay(opts...)
	case "postgres":
		pool, perr := pgxpool.New(ctx, addr)
		if perr != nil {
			log.Error("pool", "err", perr)
			return 1
		}
		defer pool.Close()
		r, err = Postgres().Relay(pool, testSaga.Name(), opts...)
	}
	if err != nil {
		log.Error("relay", "err", err)
		return 1
	}
	r.afterCommit = func(n int) {
		fmt.Printf("committed %d\n", n)
		time.Sleep(pause)
	}
	err = r.Run(ctx)
	r.Close()
	if err != nil {
		log.Error("relay stopped", "err", err)
		return 1
	}
	return 0
}

// relayProc is a relay process.
type relayProc struct {
	cmd *exec.Cmd
	// commits receives n for each "committed n" the relay prints.
	commits chan int
	exited  chan struct{}
}

// startRelay starts a relay process of s with transactional id txnID; its
// log goes to logw.
func startRelay(t testing.TB, s store, brokers []string, logw *syncLog) *relayProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(s.env,
		"KSAGA_OUTBOX_TEST_BROKERS="+strings.Join(brokers, ","),
		"KSAGA_OUTBOX_TEST_TXN=proof-relay-"+s.name,
		"KSAGA_OUTBOX_TEST_BATCH=100",
		"KSAGA_OUTBOX_TEST_PAUSE=300ms")...)
	cmd.Stderr = logw
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &relayProc{cmd: cmd, commits: make(chan int, 1000), exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if n, ok := strings.CutPrefix(sc.Text(), "committed "); ok {
				v, _ := strconv.Atoi(n)
				p.commits <- v
			}
		}
		_ = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(p.kill)
	return p
}

// kill SIGKILLs the relay and waits for it to exit.
func (p *relayProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// syncLog collects the relays' logs, shown when the test fails.
type syncLog struct {
	buf strings.Builder
	ch  chan []byte
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.ch <- append([]byte(nil), p...)
	return len(p), nil
}

func newSyncLog(t testing.TB) *syncLog {
	l := &syncLog{ch: make(chan []byte, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for b := range l.ch {
			l.buf.Write(b)
		}
	}()
	t.Cleanup(func() {
		close(l.ch)
		<-done
		if t.Failed() {
			t.Logf("relay logs:\n%s", l.buf.String())
		}
	})
	return l
}

// TestProofRedis and TestProofPostgres are the proof of issue 11: 1,000
// business writes with their starts while Kafka is down for 20 s, the
// relay SIGKILLed twice while it relays (each time between a Kafka commit
// and the removal of the batch, so that the batch is relayed again), then
// exactly 1,000 sagas, each started once, and an empty outbox.
func TestProofRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 40s")
	}
	prove(t, redisStore(t, redistest.Start(t)))
}

func TestProofPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("takes 40s")
	}
	prove(t, postgresStore(t, pgtest.Start(t)))
}

func prove(t *testing.T, s store) {
	const (
		n      = 1000
		outage = 20 * time.Second
	)
	ctx := context.Background()
	k := startKafka(t)
	createTopics(t, k.brokers(), 3)
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	defer rdb.Close()
	restarts := runEngine(t, k.brokers(), rdb)
	w := watch(t, k.brokers())
	logs := newSyncLog(t)
	relay := startRelay(t, s, k.brokers(), logs)

	// Kafka goes down; the service goes on writing.
	k.stop()
	down := time.Now()
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("o-%04d", i)
		if err := s.write(ctx, ids[i], i); err != nil {
			t.Fatalf("write %s with Kafka down: %v", ids[i], err)
		}
		time.Sleep(time.Until(down.Add(time.Duration(i+1) * (outage - 2*time.Second) / n)))
	}
	wrote := time.Since(down)
	if got := mustCount(t, s.pending); got != n {
		t.Errorf("with Kafka down, %d entries in the outbox, want all %d", got, n)
	}
	time.Sleep(time.Until(down.Add(outage)))
	k.start()
	up := time.Now()
	t.Logf("%s: Kafka down for %v; %d business writes and starts in %v, all in the outbox", s.name,
		up.Sub(down).Round(100*time.Millisecond), n, wrote.Round(100*time.Millisecond))

	// Two kills, each right after a commit, before the batch is removed.
	relayed := 0
	for kill := 1; kill <= 2; kill++ {
		// A full batch: not the first entry or two that the relay took
		// before Kafka went down.
		var c int
		for c < 50 {
			select {
			case c = <-relay.commits:
				if c < 50 {
					relayed += c
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("the relay committed no full batch within 30s of Kafka's return (kill %d)", kill)
			}
		}
		relay.kill()
		relayed += c
		t.Logf("%s: relay SIGKILLed after committing a batch of %d, before removing it (%d relayed so far); restarted", s.name, c, relayed)
		relay = startRelay(t, s, k.brokers(), logs)
		if kill == 1 {
			// The second kill: once the new relay has relayed a few batches.
			for range 3 {
				select {
				case c := <-relay.commits:
					relayed += c
				case <-time.After(30 * time.Second):
					t.Fatal("the restarted relay committed nothing within 30s")
				}
			}
		}
	}

	w.waitEnded(t, n, 60*time.Second)
	ended := time.Since(up)
	waitEmpty(t, s, 10*time.Second)
	dup := w.check(t, ids)
	if dup == 0 {
		t.Error("no start request reached the inbox twice: the kills missed the window between commit and removal")
	}
	if got := mustCount(t, s.business); got != n {
		t.Errorf("%d business rows, want %d", got, n)
	}
	t.Logf("%s: %d sagas started once each and completed %v after Kafka's return; %d start requests relayed twice (dropped by the engine as duplicate starts); outbox empty; engine restarts: %d",
		s.name, n, ended.Round(100*time.Millisecond), dup, restarts())
}
