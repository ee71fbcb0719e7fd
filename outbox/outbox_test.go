package outbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/internal/pgtest"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
)

// store is an outbox under test with the business data written beside
// it: the same tests run on Redis and PostgreSQL.
type store struct {
	name string
	// write writes business row id and its saga's start, together.
	write func(ctx context.Context, id string, amount int) error
	// pending counts the outbox's entries; business the business rows.
	pending, business func(ctx context.Context) (int64, error)
	// data returns the start request of saga id as the outbox holds it.
	data func(ctx context.Context, id string) ([]byte, error)
	// relay returns a relay of the outbox.
	relay func(opts ...RelayOpt) (*Relay, error)
	// env is the environment of a relay process (relayMain).
	env []string
}

// redisStore is the Redis outbox of the test saga on rdb at addr.
func redisStore(t testing.TB, addr string) store {
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	s := Redis(rdb, testSaga.Name(), Check(testSaga))
	const orders = "shop:{outboxtest}:orders"
	return store{
		name: "redis",
		write: func(ctx context.Context, id string, amount int) error {
			return s.Start(ctx, id, order{ID: id, Amount: amount}, func(pipe redis.Pipeliner) error {
				pipe.HSet(ctx, "shop:{outboxtest}:order:"+id, "amount", amount)
				pipe.SAdd(ctx, orders, id)
				return nil
			})
		},
		pending:  func(ctx context.Context) (int64, error) { return rdb.XLen(ctx, s.Key()).Result() },
		business: func(ctx context.Context) (int64, error) { return rdb.SCard(ctx, orders).Result() },
		data: func(ctx context.Context, id string) ([]byte, error) {
			msgs, err := rdb.XRange(ctx, s.Key(), "-", "+").Result()
			for _, m := range msgs {
				if m.Values[FieldSagaID] == id {
					data, _ := m.Values[FieldData].(string)
					return []byte(data), nil
				}
			}
			return nil, err
		},
		relay: func(opts ...RelayOpt) (*Relay, error) { return s.Relay(opts...) },
		env:   []string{"KSAGA_OUTBOX_TEST_RELAY=redis", "KSAGA_OUTBOX_TEST_ADDR=" + addr},
	}
}

// postgresStore is the PostgreSQL outbox of the test saga, with a table
// shop_orders as the business data.
func postgresStore(t testing.TB, dsn string) store {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	tbl := Postgres(Check(testSaga))
	if err := tbl.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS shop_orders (id text PRIMARY KEY, amount int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	count := func(table string) func(ctx context.Context) (int64, error) {
		return func(ctx context.Context) (int64, error) {
			var n int64
			err := pool.QueryRow(ctx, `SELECT count(*) FROM `+table).Scan(&n)
			return n, err
		}
	}
	return store{
		name: "postgres",
		write: func(ctx context.Context, id string, amount int) error {
			return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO shop_orders (id, amount) VALUES ($1, $2)`, id, amount); err != nil {
					return err
				}
				return tbl.Add(ctx, tx, testSaga.Name(), id, order{ID: id, Amount: amount})
			})
		},
		pending:  count(DefaultTable),
		business: count("shop_orders"),
		data: func(ctx context.Context, id string) ([]byte, error) {
			var data []byte
			err := pool.QueryRow(ctx, `SELECT data FROM `+DefaultTable+` WHERE saga_id = $1`, id).Scan(&data)
			return data, err
		},
		relay: func(opts ...RelayOpt) (*Relay, error) { return tbl.Relay(pool, testSaga.Name(), opts...) },
		env:   []string{"KSAGA_OUTBOX_TEST_RELAY=postgres", "KSAGA_OUTBOX_TEST_ADDR=" + dsn},
	}
}

// stores runs test for each kind of outbox, on a server of its own.
func stores(t *testing.T, test func(t *testing.T, s store)) {
	t.Run("redis", func(t *testing.T) { test(t, redisStore(t, redistest.Start(t))) })
	t.Run("postgres", func(t *testing.T) { test(t, postgresStore(t, pgtest.Start(t))) })
}

func mustCount(t testing.TB, f func(context.Context) (int64, error)) int64 {
	t.Helper()
	n, err := f(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitEmpty waits until the outbox is empty.
func waitEmpty(t testing.TB, s store, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n := mustCount(t, s.pending)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d entries still in the %s outbox after %v, want 0", n, s.name, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runRelay runs r until the test ends.
func runRelay(t testing.TB, r *Relay) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay: %v", err)
		}
		r.Close()
	})
}

var fastBackoff = Backoff(retry.Policy{InitialInterval: 20 * time.Millisecond, MaxInterval: 500 * time.Millisecond})

// TestWriteIsAtomic checks that the business write and the start are
// written together or not at all, and that a start the engine would refuse
// is refused before anything is written.
func TestWriteIsAtomic(t *testing.T) {
	stores(t, func(t *testing.T, s store) {
		ctx := context.Background()
		if err := s.write(ctx, "o-1", 10); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			id     string
			amount int
			want   error
		}{
			{"o-2", -1, saga.ErrInvalidData}, // the saga's Validate refuses it
			{"", 1, ErrInvalid},              // no id
		} {
			err := s.write(ctx, c.id, c.amount)
			if !errors.Is(err, c.want) || !errors.Is(err, ErrInvalid) {
				t.Errorf("write %q amount %d: got %v, want an error wrapping %v", c.id, c.amount, err, c.want)
			}
		}
		if _, err := Redis(nil, "outboxtest").Encode("o-\xff", order{}); !errors.Is(err, ErrInvalid) {
			t.Errorf("an id that is not UTF-8: got %v, want an error wrapping ErrInvalid", err)
		}
		if got, got2 := mustCount(t, s.pending), mustCount(t, s.business); got != 1 || got2 != 1 {
			t.Errorf("got %d outbox entries and %d business rows, want 1 and 1", got, got2)
		}
	})
}

// TestPostgresRollback checks that a start added in a transaction that
// rolls back is gone with it, and that the table keeps the request's bytes
// as written.
func TestPostgresRollback(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.Start(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	tbl := Postgres(TableName("public.starts"))
	if err := tbl.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	errRollback := errors.New("business rule says no")
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := tbl.Add(ctx, tx, "outboxtest", "o-1", order{ID: "o-1"}); err != nil {
			return err
		}
		return errRollback
	})
	if !errors.Is(err, errRollback) {
		t.Fatalf("got %v, want %v", err, errRollback)
	}
	// Kept as written, in canonical form: jsonb would have made it
	// {"id": "o-2", "amount": 7}, another payload for the engine's
	// duplicate check.
	raw := `{"amount":7,"id":"o-2"}`
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return tbl.Add(ctx, tx, "outboxtest", "o-2", order{ID: "o-2", Amount: 7})
	}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	var data []byte
	rows, _ := pool.Query(ctx, `SELECT saga_id, data FROM public.starts`)
	for rows.Next() {
		var id string
		if err := rows.Scan(&id, &data); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if fmt.Sprint(ids) != "[o-2]" || string(data) != raw {
		t.Errorf("got rows %v with data %s, want [o-2] with %s", ids, data, raw)
	}
	if err := Postgres(TableName("starts; DROP TABLE x")).Migrate(ctx, pool); err == nil || !strings.Contains(err.Error(), "table name") {
		t.Errorf("a table name that is not an identifier: got %v, want an error", err)
	}
}

// TestEntriesAreCanonical checks that the outboxes hold start requests in
// canonical form: the bytes message.Canonical gives for the same data
// written in any other order, which client.Start and the HTTP API write
// too (their tests hold them to the same value).
func TestEntriesAreCanonical(t *testing.T) {
	// other is how the test saga's data may arrive from elsewhere: keys
	// in another order, space, an escape.
	const other = `{ "id": "o-\u0031", "amount": 7 }`
	want, err := message.Canonical([]byte(other))
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != `{"amount":7,"id":"o-1"}` {
		t.Fatalf("message.Canonical: got %s, want {\"amount\":7,\"id\":\"o-1\"}", want)
	}
	stores(t, func(t *testing.T, s store) {
		ctx := context.Background()
		if err := s.write(ctx, "o-1", 7); err != nil {
			t.Fatal(err)
		}
		got, err := s.data(ctx, "o-1")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("the outbox holds %s, want %s", got, want)
		}
	})
	// What a Lua script appends.
	got, err := Redis(nil, testSaga.Name(), Check(testSaga)).Encode("o-1", order{ID: "o-1", Amount: 7})
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("Encode: got %s, %v, want %s", got, err, want)
	}
	if _, err := Redis(nil, "outboxtest").Encode("o-1", twiceKeyed{}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `duplicate key "n"`) {
		t.Errorf("Encode of JSON with a key twice: got %v, want ErrInvalid naming the key", err)
	}
}

// twiceKeyed writes a JSON object with a key twice.
type twiceKeyed struct{}

func (twiceKeyed) MarshalJSON() ([]byte, error) { return []byte(`{"n":1,"n":2}`), nil }

// TestRelayRecord checks the value of the record the relay produces for an
// entry: the entry's data in canonical form, or, when it has none, as it
// is, for the engine to dead-letter.
func TestRelayRecord(t *testing.T) {
	r := &Relay{sagaType: testSaga.Name()}
	for _, tc := range []struct {
		name, data, want string
	}{
		{"canonical", `{"amount":7,"id":"o-1"}`, `{"amount":7,"id":"o-1"}`},
		{"written by a script of its own", `{"id":"o-1", "amount":7}`, `{"amount":7,"id":"o-1"}`},
		{"a key twice", `{"id":"o-1","id":"o-2"}`, `{"id":"o-1","id":"o-2"}`},
		{"not JSON", `{"id":`, `{"id":`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := r.record(entry{sagaID: "o-1", data: []byte(tc.data)}, 3)
			if string(rec.Value) != tc.want {
				t.Errorf("got value %s, want %s", rec.Value, tc.want)
			}
			if want := message.HomePartition("o-1", 3); string(rec.Key) != "o-1" || rec.Partition != want {
				t.Errorf("got key %s on partition %d, want o-1 on %d", rec.Key, rec.Partition, want)
			}
		})
	}
}

// TestRelay relays starts written before and while the relay runs: each
// saga starts once and completes, the outbox empties, and the metrics say
// so.
func TestRelay(t *testing.T) {
	stores(t, func(t *testing.T, s store) {
		ctx := context.Background()
		k := startKafka(t)
		createTopics(t, k.brokers(), 3)
		rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
		defer rdb.Close()
		runEngine(t, k.brokers(), rdb)
		w := watch(t, k.brokers())

		const n = 2000
		var ids []string
		for i := range n / 2 {
			id := fmt.Sprintf("o-%04d", i)
			ids = append(ids, id)
			if err := s.write(ctx, id, i); err != nil {
				t.Fatal(err)
			}
		}
		reg := prometheus.NewRegistry()
		r, err := s.relay(Brokers(k.brokers()...), TransactionalID("relay-"+s.name), Registerer(reg),
			Logger(testLogger(t)), fastBackoff)
		if err != nil {
			t.Fatal(err)
		}
		// The backlog written before the relay ran: how fast it drains.
		start := time.Now()
		runRelay(t, r)
		waitEmpty(t, s, 30*time.Second)
		drained := time.Since(start)
		for i := n / 2; i < n; i++ {
			id := fmt.Sprintf("o-%04d", i)
			ids = append(ids, id)
			if err := s.write(ctx, id, i); err != nil {
				t.Fatal(err)
			}
		}
		w.waitEnded(t, n, time.Minute)
		waitEmpty(t, s, 10*time.Second)
		if dup := w.check(t, ids); dup != 0 {
			t.Errorf("%d start requests reached the inbox twice, want none (no relay died)", dup)
		}
		t.Logf("%s: relayed a backlog of %d entries in %v (%.0f/s); %d sagas completed", s.name, n/2, drained.Round(time.Millisecond),
			float64(n/2)/drained.Seconds(), n)

		time.Sleep(1100 * time.Millisecond) // a stats read after the last entry went
		for name, want := range map[string]float64{
			"ksaga_outbox_pending_entries":    0,
			"ksaga_outbox_oldest_age_seconds": 0,
			"ksaga_outbox_relayed_total":      n,
		} {
			if got := metric(t, reg, name); got != want {
				t.Errorf("%s: got %v, want %v", name, got, want)
			}
		}
	})
}

// metric returns the value of the metric name in reg (summed over its
// series), failing the test when there is none.
func metric(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var v float64
		for _, m := range mf.GetMetric() {
			v += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
		return v
	}
	t.Fatalf("metric %s is not registered", name)
	return 0
}

// TestOutboxAge checks that the age metric grows while the relay cannot
// reach Kafka, and the entries wait.
func TestOutboxAge(t *testing.T) {
	s := redisStore(t, redistest.Start(t))
	k := startKafka(t)
	createTopics(t, k.brokers(), 3)
	k.stop()
	if err := s.write(context.Background(), "o-1", 1); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, err := s.relay(Brokers(k.brokers()...), TransactionalID("relay-age"), Registerer(reg), Logger(testLogger(t)), fastBackoff)
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	time.Sleep(2500 * time.Millisecond)
	st := r.Stats()
	if st.Pending != 1 || st.OldestAge < 2*time.Second || st.Errors == 0 {
		t.Errorf("with Kafka down: got %+v, want 1 pending, at least 2s old, errors counted", st)
	}
	if age := metric(t, reg, "ksaga_outbox_oldest_age_seconds"); age < 2 {
		t.Errorf("ksaga_outbox_oldest_age_seconds: got %v, want at least 2", age)
	}
}

// TestRelaysAtOnce runs three relays of one outbox at once: they share the
// work, and no start reaches the inbox twice (PostgreSQL's SKIP LOCKED,
// Redis's consumer group).
func TestRelaysAtOnce(t *testing.T) {
	stores(t, func(t *testing.T, s store) {
		ctx := context.Background()
		k := startKafka(t)
		createTopics(t, k.brokers(), 3)
		rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
		defer rdb.Close()
		runEngine(t, k.brokers(), rdb)
		w := watch(t, k.brokers())
		var relays []*Relay
		for i := range 3 {
			r, err := s.relay(Brokers(k.brokers()...), TransactionalID(fmt.Sprintf("relay-%s-%d", s.name, i)),
				BatchSize(20), Logger(testLogger(t)), fastBackoff)
			if err != nil {
				t.Fatal(err)
			}
			relays = append(relays, r)
			runRelay(t, r)
		}
		const n = 600
		ids := make([]string, n)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := g; i < n; i += 4 {
					ids[i] = fmt.Sprintf("o-%04d", i)
					if err := s.write(ctx, ids[i], i); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		w.waitEnded(t, n, time.Minute)
		waitEmpty(t, s, 10*time.Second)
		if dup := w.check(t, ids); dup != 0 {
			t.Errorf("%d start requests reached the inbox twice, want none", dup)
		}
		var shares []uint64
		for _, r := range relays {
			shares = append(shares, r.Stats().Relayed)
		}
		t.Logf("%s: entries relayed by each relay: %v", s.name, shares)
	})
}

// TestRedisClaim checks that entries a dead relay took and never
// acknowledged are taken over by another relay once they have been idle
// for ClaimIdle.
func TestRedisClaim(t *testing.T) {
	addr := redistest.Start(t)
	s := redisStore(t, addr)
	ctx := context.Background()
	k := startKafka(t)
	createTopics(t, k.brokers(), 3)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	runEngine(t, k.brokers(), rdb)
	w := watch(t, k.brokers())
	for i := range 10 {
		if err := s.write(ctx, fmt.Sprintf("o-%d", i), i); err != nil {
			t.Fatal(err)
		}
	}
	// A relay that read the entries and died before relaying them.
	key := RedisKey(testSaga.Name())
	if err := rdb.XGroupCreateMkStream(ctx, key, RelayGroup, "0").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: RelayGroup, Consumer: "dead", Streams: []string{key, ">"}}).Err(); err != nil {
		t.Fatal(err)
	}
	r, err := s.relay(Brokers(k.brokers()...), TransactionalID("relay-live"), ClaimIdle(time.Second), Logger(testLogger(t)), fastBackoff)
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	w.waitEnded(t, 10, 30*time.Second)
	waitEmpty(t, s, 10*time.Second)
	var ids []string
	for i := range 10 {
		ids = append(ids, fmt.Sprintf("o-%d", i))
	}
	w.check(t, ids)
	if p := rdb.XPending(ctx, key, RelayGroup).Val(); p.Count != 0 {
		t.Errorf("%d entries still pending in the group, want 0", p.Count)
	}
}
