package pgdedupe_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ksaga/ksaga/internal/pgtest"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/participant/pgdedupe"
)

// db is one PostgreSQL server for the package's tests and examples: each
// test uses participant names or tables of its own, so that they do not see
// each other's rows.
var db struct {
	once sync.Once
	srv  *pgtest.Server
	pool *pgxpool.Pool
	err  error
}

// dsn starts the server once and returns its DSN.
func dsn() (string, error) {
	db.once.Do(func() {
		db.srv, db.err = pgtest.Run()
		if db.err != nil {
			return
		}
		cfg, err := pgxpool.ParseConfig(db.srv.DSN)
		if err != nil {
			db.err = err
			return
		}
		cfg.MaxConns = 40
		db.pool, db.err = pgxpool.NewWithConfig(context.Background(), cfg)
	})
	if db.err != nil {
		return "", fmt.Errorf("pgtest: %w", db.err)
	}
	return db.srv.DSN, nil
}

// pool returns a pool of the tests' server.
func pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	if _, err := dsn(); err != nil {
		t.Fatal(err)
	}
	return db.pool
}

// TestMain stops the server once the tests ran; the binary exits with
// m.Run's code when TestMain returns.
func TestMain(m *testing.M) {
	m.Run()
	if db.pool != nil {
		db.pool.Close()
	}
	if db.srv != nil {
		db.srv.Stop()
	}
}

// unique returns name with a suffix of its own: tests run again (-count)
// on the same server must not find the rows of their earlier runs.
func unique(name string) string { return fmt.Sprintf("%s-%d", name, names.Add(1)) }

var names atomic.Int64

// newTable returns a migrated dedupe table of participant name.
func newTable(t testing.TB, name string, opts ...pgdedupe.Opt) *pgdedupe.Table {
	t.Helper()
	tbl, err := pgdedupe.New(pool(t), name, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := tbl.Migrate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return tbl
}

func request(sagaID, msgID string) participant.Request {
	return participant.Request{SagaID: sagaID, SagaType: "trip", Type: "BookRoom", MessageID: msgID, ReplyTo: "saga.trip.inbox"}
}

// ledger is an effect that is not idempotent by itself: it adds a row to
// table test_ledger each time it runs, and counts its calls.
type ledger struct {
	name  string
	calls atomic.Int64
}

func newLedger(t testing.TB) *ledger {
	t.Helper()
	_, err := pool(t).Exec(context.Background(), `CREATE TABLE IF NOT EXISTS test_ledger (
		id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, ledger text NOT NULL, saga_id text NOT NULL)`)
	if err != nil {
		t.Fatal(err)
	}
	return &ledger{name: unique(t.Name())}
}

func (l *ledger) effect(reply participant.Reply) pgdedupe.Effect {
	return func(ctx context.Context, tx pgx.Tx) (participant.Reply, error) {
		l.calls.Add(1)
		req, _ := participant.RequestFrom(ctx)
		_, err := tx.Exec(ctx, `INSERT INTO test_ledger (ledger, saga_id) VALUES ($1, $2)`, l.name, req.SagaID)
		return reply, err
	}
}

// rows returns how many rows the ledger holds for sagaID.
func (l *ledger) rows(t testing.TB, sagaID string) int {
	t.Helper()
	var n int
	err := pool(t).QueryRow(context.Background(), `SELECT count(*) FROM test_ledger WHERE ledger = $1 AND saga_id = $2`, l.name, sagaID).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func do(t testing.TB, tbl *pgdedupe.Table, req participant.Request, effect pgdedupe.Effect) participant.Reply {
	t.Helper()
	reply, err := tbl.Do(context.Background(), req, effect)
	if err != nil {
		t.Fatalf("Do(%s): %v", req.MessageID, err)
	}
	return reply
}

func encode(t testing.TB, r participant.Reply) string {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// storedRow returns the reply column of the row of (participant, sagaType,
// msgID) as text, or "" when there is no row.
func storedRow(t testing.TB, table, name, sagaType, msgID string) string {
	t.Helper()
	var raw string
	err := pool(t).QueryRow(context.Background(), `SELECT reply::text FROM `+table+` WHERE participant = $1 AND saga_type = $2 AND message_id = $3`,
		name, sagaType, msgID).Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestDo covers the deliveries of one command in turn: each case delivers
// it twice with the effects given, and checks the replies, the effect's
// calls and the ledger.
func TestDo(t *testing.T) {
	success, noRooms := encode(t, participant.Success()), encode(t, participant.Failure("NO_ROOMS"))
	// withData has every field of the reply set.
	withData, err := participant.FailureWith("NO_ROOMS", map[string]string{"waitlist": "W-7"})
	if err != nil {
		t.Fatal(err)
	}
	failing := func(context.Context, pgx.Tx) (participant.Reply, error) {
		return participant.Reply{}, errors.New("database of the hotel chain unreachable")
	}
	tests := []struct {
		name string
		// first and second are the outcomes of the two deliveries'
		// effects: a reply, or an error when fails is set.
		first, second           participant.Reply
		firstFails, secondFails bool
		// want: the replies of the two deliveries ("error" for an error),
		// the effect's calls and the ledger's rows.
		want1, want2 string
		calls, rows  int
	}{
		{
			name: "success is stored and repeated", first: participant.Success(), second: participant.Failure("SHOULD_NOT_RUN"),
			want1: success, want2: success, calls: 1, rows: 1,
		},
		{
			name: "failure is stored and repeated", first: participant.Failure("NO_ROOMS"), second: participant.Success(),
			want1: noRooms, want2: noRooms, calls: 1, rows: 1,
		},
		{
			name: "every field of the reply is stored", first: withData, second: participant.Success(),
			want1: encode(t, withData), want2: encode(t, withData), calls: 1, rows: 1,
		},
		{
			name: "an error stores nothing: the next delivery acts", firstFails: true, second: participant.Success(),
			want1: "error", want2: success, calls: 1, rows: 1,
		},
		{
			name: "a reply without an outcome stores nothing", first: participant.Reply{}, second: participant.Failure("NO_ROOMS"),
			want1: "error", want2: noRooms, calls: 2, rows: 1,
		},
		{
			name: "errors twice: nothing stored", firstFails: true, secondFails: true,
			want1: "error", want2: "error", calls: 0, rows: 0,
		},
	}
	name := unique("hotel-do")
	tbl := newTable(t, name)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLedger(t)
			req := request(fmt.Sprintf("t-%d", i), fmt.Sprintf("t-%d/book-hotel/do", i))
			var got []string
			for _, d := range []struct {
				reply participant.Reply
				fails bool
			}{{tt.first, tt.firstFails}, {tt.second, tt.secondFails}} {
				effect := l.effect(d.reply)
				if d.fails {
					effect = failing
				}
				reply, err := tbl.Do(context.Background(), req, effect)
				if err != nil {
					t.Logf("error: %v", err)
					got = append(got, "error")
					continue
				}
				got = append(got, encode(t, reply))
			}
			if got[0] != tt.want1 || got[1] != tt.want2 {
				t.Errorf("got replies %s and %s, want %s and %s", got[0], got[1], tt.want1, tt.want2)
			}
			if n := int(l.calls.Load()); n != tt.calls {
				t.Errorf("got %d calls of the effect, want %d", n, tt.calls)
			}
			if n := l.rows(t, req.SagaID); n != tt.rows {
				t.Errorf("got %d ledger rows, want %d", n, tt.rows)
			}
			// The row holds the whole reply as message.Reply encodes to
			// JSON, so a field it gains is stored too.
			stored := storedRow(t, pgdedupe.DefaultTable, name, req.SagaType, req.MessageID)
			if want := got[1]; want == "error" && stored != "" {
				t.Errorf("got stored reply %s, want no row", stored)
			} else if want != "error" && stored != want {
				t.Errorf("got stored reply %s, want %s", stored, want)
			}
		})
	}
}

// TestDoRollsBackTheEffect checks that an effect's writes are undone with
// its error: no half-done effect stays behind without its dedupe row.
func TestDoRollsBackTheEffect(t *testing.T) {
	name := unique("hotel-rollback")
	tbl := newTable(t, name)
	l := newLedger(t)
	req := request("t-1", "t-1/book-hotel/do")
	_, err := tbl.Do(context.Background(), req, func(ctx context.Context, tx pgx.Tx) (participant.Reply, error) {
		if _, err := l.effect(participant.Success())(ctx, tx); err != nil {
			return participant.Reply{}, err
		}
		return participant.Reply{}, errors.New("card service timed out")
	})
	if err == nil || !strings.Contains(err.Error(), "card service timed out") {
		t.Fatalf("got error %v, want the effect's", err)
	}
	if n := l.rows(t, req.SagaID); n != 0 {
		t.Errorf("got %d ledger rows after the effect's error, want 0", n)
	}
	if s := storedRow(t, pgdedupe.DefaultTable, name, req.SagaType, req.MessageID); s != "" {
		t.Errorf("got stored reply %s after the effect's error, want no row", s)
	}
}

// TestKey checks what makes two commands different: the message id, the
// saga type and the participant. Each of these deliveries acts.
func TestKey(t *testing.T) {
	hotel := newTable(t, unique("hotel-key"))
	spa := newTable(t, unique("spa-key"))
	l := newLedger(t)
	reqs := []struct {
		tbl *pgdedupe.Table
		req participant.Request
	}{
		{hotel, request("t-1", "m-1")},
		{hotel, request("t-1", "m-2")}, // another message id
		{hotel, participant.Request{SagaID: "t-1", SagaType: "cruise", MessageID: "m-1"}}, // another saga type
		{spa, request("t-1", "m-1")}, // another participant, same table
	}
	for _, r := range reqs {
		do(t, r.tbl, r.req, l.effect(participant.Success()))
	}
	for _, r := range reqs { // and again: nothing more
		do(t, r.tbl, r.req, l.effect(participant.Success()))
	}
	if n := l.rows(t, "t-1"); n != len(reqs) {
		t.Errorf("got %d effects, want %d: one per command", n, len(reqs))
	}
}

// waiting returns how many of the database's sessions wait for a lock.
func waiting(t testing.TB) int {
	t.Helper()
	var n int
	err := pool(t).QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// race delivers req to n concurrent Do calls on tbl. The first delivery's
// effect is hold, which runs inside its transaction until release is
// closed; race closes it only once the other n-1 deliveries are seen
// waiting for that transaction's row lock in PostgreSQL, so the race is
// replayed every time, not just hoped for. next is every other delivery's
// effect. race returns when all deliveries have returned.
func race(t *testing.T, tbl *pgdedupe.Table, req participant.Request, n int, hold, next pgdedupe.Effect) ([]participant.Reply, []error) {
	t.Helper()
	started, release := make(chan struct{}), make(chan struct{})
	first := func(ctx context.Context, tx pgx.Tx) (participant.Reply, error) {
		close(started)
		<-release
		return hold(ctx, tx)
	}
	replies := make([]participant.Reply, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	// The deferred calls run in reverse: release (whatever happened), then
	// wait, so a failed check below never leaves a delivery hanging.
	defer wg.Wait()
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	wg.Go(func() { replies[0], errs[0] = tbl.Do(context.Background(), req, first) })
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the first delivery's effect did not start")
	}
	for i := 1; i < n; i++ {
		wg.Go(func() { replies[i], errs[i] = tbl.Do(context.Background(), req, next) })
	}
	deadline := time.Now().Add(10 * time.Second)
	for waiting(t) < n-1 {
		if time.Now().After(deadline) {
			t.Fatalf("got %d deliveries waiting for the first one's row, want %d", waiting(t), n-1)
		}
		time.Sleep(5 * time.Millisecond)
	}
	releaseOnce.Do(func() { close(release) })
	wg.Wait()
	return replies, errs
}

// TestConcurrentDeliveries replays several instances (a zombie and its
// successor, say) delivering one command at once: the deliveries that
// come while the first one's effect runs wait for its transaction, then
// return its reply without acting.
func TestConcurrentDeliveries(t *testing.T) {
	tbl := newTable(t, unique("hotel-concurrent"))
	l := newLedger(t)
	const n = 8
	req := request("t-1", "t-1/book-hotel/do")
	replies, errs := race(t, tbl, req, n, l.effect(participant.Failure("NO_ROOMS")), l.effect(participant.Success()))
	for i := range n {
		if errs[i] != nil {
			t.Errorf("delivery %d: %v", i, errs[i])
			continue
		}
		if got, want := encode(t, replies[i]), encode(t, participant.Failure("NO_ROOMS")); got != want {
			t.Errorf("delivery %d: got reply %s, want %s", i, got, want)
		}
	}
	if got := l.calls.Load(); got != 1 {
		t.Errorf("got %d calls of the effect, want 1", got)
	}
	if got := l.rows(t, req.SagaID); got != 1 {
		t.Errorf("got %d ledger rows, want 1", got)
	}
}

// TestConcurrentDeliveryAfterRollback replays a delivery that waits for
// another whose effect then fails: the waiting one finds no row and acts
// itself, once.
func TestConcurrentDeliveryAfterRollback(t *testing.T) {
	tbl := newTable(t, unique("hotel-concurrent-rollback"))
	l := newLedger(t)
	req := request("t-1", "t-1/book-hotel/do")
	fail := func(context.Context, pgx.Tx) (participant.Reply, error) {
		return participant.Reply{}, errors.New("lost the connection to the booking engine")
	}
	replies, errs := race(t, tbl, req, 2, fail, l.effect(participant.Success()))
	if errs[0] == nil {
		t.Errorf("first delivery: got reply %s, want its effect's error", encode(t, replies[0]))
	}
	if errs[1] != nil {
		t.Fatalf("second delivery: %v", errs[1])
	}
	if got, want := encode(t, replies[1]), encode(t, participant.Success()); got != want {
		t.Errorf("second delivery: got reply %s, want %s", got, want)
	}
	if got := l.rows(t, req.SagaID); got != 1 {
		t.Errorf("got %d ledger rows, want 1", got)
	}
}

// TestConcurrentSerializable checks what TxOptions documents: under
// REPEATABLE READ a delivery that waited for another fails with a
// serialization error instead of reading its reply, and its retry reads it.
func TestConcurrentSerializable(t *testing.T) {
	tbl := newTable(t, unique("hotel-repeatable-read"), pgdedupe.TxOptions(pgx.TxOptions{IsoLevel: pgx.RepeatableRead}))
	l := newLedger(t)
	req := request("t-1", "t-1/book-hotel/do")
	replies, errs := race(t, tbl, req, 2, l.effect(participant.Success()), l.effect(participant.Success()))
	if errs[0] != nil {
		t.Fatalf("first delivery: %v", errs[0])
	}
	var pgErr *pgconn.PgError
	if !errors.As(errs[1], &pgErr) || pgErr.Code != "40001" {
		t.Errorf("second delivery: got reply %s and error %v, want a serialization failure (40001)", encode(t, replies[1]), errs[1])
	}
	retry := do(t, tbl, req, l.effect(participant.Failure("SHOULD_NOT_RUN")))
	if got, want := encode(t, retry), encode(t, replies[0]); got != want {
		t.Errorf("retry: got reply %s, want %s", got, want)
	}
	if got := l.rows(t, req.SagaID); got != 1 {
		t.Errorf("got %d ledger rows, want 1", got)
	}
}
