package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ksaga/ksaga/internal/kfaketest"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
)

// putState writes a saga's state to Redis as the engine does, for an inbox
// of 6 partitions.
func putState(t *testing.T, rdb redis.UniversalClient, s orchestrator.State) {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	key := orchestrator.StateKey(s.Type, message.HomePartition(s.ID, 6), s.ID)
	if err := rdb.HSet(testContext(t), key, "version", s.Version, "state", b).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestGetSaga(t *testing.T) {
	addr := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := testContext(t)
	updated := time.Now().Add(-5 * time.Minute).UTC().Truncate(time.Millisecond)
	putState(t, rdb, orchestrator.State{ID: "o-1", Type: "order", Version: 7, Status: message.StatusRunning, Step: 2, Undoing: -1,
		Waiting: "o-1/schedule-shipping/1", Attempt: 1, Deadline: 1767225600000, Data: json.RawMessage(`{"order_id":"o-1"}`),
		Created: updated.Add(-time.Minute), Updated: updated})

	// -o json prints the state alone: a script pipes it to jq.
	var out bytes.Buffer
	if err := getSaga(ctx, rdb, &out, getOptions{sagaType: "order", id: "o-1", partitions: 6, output: outJSON}); err != nil {
		t.Fatalf("getSaga: %v", err)
	}
	var s orchestrator.State
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("saga get -o json: %v\n%s", err, out.String())
	}
	if s.ID != "o-1" || s.Version != 7 || s.Status != message.StatusRunning || s.Waiting != "o-1/schedule-shipping/1" || !s.Updated.Equal(updated) {
		t.Errorf("saga get -o json: got %+v", s)
	}

	out.Reset()
	if err := getSaga(ctx, rdb, &out, getOptions{sagaType: "order", id: "o-1", partitions: 6, output: outTable, now: func() time.Time { return updated.Add(5 * time.Minute) }}); err != nil {
		t.Fatalf("getSaga: %v", err)
	}
	want := "SAGA-ID  STATUS   STEP  UNDOING  ATTEMPT  DEADLINE              UPDATED  VERSION  REASON\n" +
		"o-1      running  2     -        1        2026-01-01T00:00:00Z  5m ago   7        -\n"
	if out.String() != want {
		t.Errorf("saga get:\ngot\n%s\nwant\n%s", out.String(), want)
	}

	out.Reset()
	if err := getSaga(ctx, rdb, &out, getOptions{sagaType: "order", id: "o-1", partitions: 6, output: outYAML}); err != nil {
		t.Fatalf("getSaga: %v", err)
	}
	if !strings.HasPrefix(out.String(), "saga_id: o-1\nsaga_type: order\nversion: 7\nstatus: running\n") {
		t.Errorf("saga get -o yaml:\n%s", out.String())
	}

	if err := getSaga(ctx, rdb, &out, getOptions{sagaType: "order", id: "o-404", partitions: 6}); !errors.Is(err, errSagaNotFound) {
		t.Errorf("missing saga: got error %v, want errSagaNotFound", err)
	}
	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"saga", "get", "o-404", "--saga", "order", "--partitions", "6"}, envOf("KSAGA_REDIS_ADDR", addr), &stdout, &stderr)
	if code != exitError {
		t.Errorf("run saga get of a missing saga: got exit code %d, want %d", code, exitError)
	}
	if !strings.Contains(stderr.String(), "ksaga:{order:0}:state:o-404") {
		t.Errorf("stderr: got %q, want it to name the key", stderr.String())
	}
}

// sagaIDs returns the saga ids of rows.
func sagaIDs(rows []sagaRow) []string {
	var out []string
	for _, r := range rows {
		out = append(out, r.SagaID)
	}
	return out
}

// TestListSagasStuck finds the sagas that have not ended and have not
// changed for 10 minutes, and not those that ended or moved recently, on
// one Redis and on a Redis Cluster (SCAN on every primary).
func TestListSagasStuck(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	states := []orchestrator.State{
		{ID: "o-stuck", Status: message.StatusRunning, Step: 1, Undoing: -1, Updated: now.Add(-time.Hour)},
		{ID: "o-undo", Status: message.StatusCompensating, Step: 2, Undoing: 1, Updated: now.Add(-30 * time.Minute), Reason: "PAYMENT_DECLINED"},
		{ID: "o-fresh", Status: message.StatusRunning, Step: 0, Undoing: -1, Updated: now.Add(-time.Minute), DefinitionVersion: 2},
		{ID: "o-done", Status: message.StatusCompleted, Step: 3, Undoing: -1, Updated: now.Add(-2 * time.Hour)},
		{ID: "o-failed", Status: message.StatusFailed, Step: 3, Undoing: -1, Updated: now.Add(-3 * time.Hour)},
	}
	servers := map[string]func(t *testing.T) (redis.UniversalClient, string){
		"redis": func(t *testing.T) (redis.UniversalClient, string) {
			addr := redistest.Start(t)
			return redis.NewClient(&redis.Options{Addr: addr}), addr
		},
		"cluster": func(t *testing.T) (redis.UniversalClient, string) {
			var addrs []string
			for _, s := range redistest.StartCluster(t, 3) {
				addrs = append(addrs, s.Addr)
			}
			return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs}), strings.Join(addrs, ",")
		},
	}
	for name, start := range servers {
		t.Run(name, func(t *testing.T) {
			rdb, addr := start(t)
			t.Cleanup(func() { rdb.Close() })
			for i, s := range states {
				s.Type, s.Version = "order", int64(i+1)
				putState(t, rdb, s)
			}
			// Another saga type's, and a key that holds no state.
			putState(t, rdb, orchestrator.State{ID: "t-1", Type: "trip", Status: message.StatusRunning, Updated: now.Add(-time.Hour)})
			if err := rdb.HSet(testContext(t), "ksaga:{order:5}:state:junk", "state", "not json").Err(); err != nil {
				t.Fatal(err)
			}

			var io testIO
			rows, err := listSagas(testContext(t), rdb, io.streams(), sagaListOptions{sagaType: "order", stuck: true, olderThan: 10 * time.Minute,
				output: outTable, timeout: testTimeout, now: func() time.Time { return now }})
			if err != nil {
				t.Fatalf("listSagas: %v", err)
			}
			if got := sagaIDs(rows); !slices.Equal(got, []string{"o-stuck", "o-undo"}) {
				t.Errorf("--stuck --older-than 10m: got %v, want [o-stuck o-undo]", got)
			}
			if want := "2 stuck sagas (not ended) unchanged for more than 10m0s of type order in Redis, of 5 scanned\n" +
				"not ended, by definition version: v1 2, v2 1\n" +
				"1 keys matching ksaga:{order:*}:state:* hold no readable state (skipped)\n"; io.err.String() != want {
				t.Errorf("stderr: got %q, want %q", io.err.String(), want)
			}
			lines := strings.Split(strings.TrimRight(io.out.String(), "\n"), "\n")
			if len(lines) != 3 || !strings.HasPrefix(lines[1], "o-stuck  running       1     -") || !strings.Contains(lines[1], "60m ago") ||
				!strings.Contains(lines[2], "PAYMENT_DECLINED") {
				t.Errorf("table:\n%s", io.out.String())
			}

			// Through run, as a script: stdout is JSON alone.
			var stdout, stderr bytes.Buffer
			code := run(testContext(t), []string{"saga", "list", "--saga", "order", "--redis-addr", addr, "--stuck", "--older-than", "45m", "-o", "json"},
				envOf(), &stdout, &stderr)
			var got []sagaRow
			if err := json.Unmarshal(stdout.Bytes(), &got); code != exitOK || err != nil {
				t.Fatalf("saga list -o json: exit code %d, %v\nstdout %s\nstderr %s", code, err, stdout.String(), stderr.String())
			}
			if len(got) != 1 || got[0].SagaID != "o-stuck" || got[0].Status != message.StatusRunning || got[0].Partition != message.HomePartition("o-stuck", 6) ||
				got[0].IdleSeconds < 3600 || got[0].RedisKey != orchestrator.StateKey("order", got[0].Partition, "o-stuck") {
				t.Errorf("saga list --stuck --older-than 45m -o json: got %+v, want o-stuck alone", got)
			}

			// Without --stuck, every saga, the longest unchanged first.
			rows, err = listSagas(testContext(t), rdb, io.streams(), sagaListOptions{sagaType: "order", output: outJSON, timeout: testTimeout})
			if err != nil {
				t.Fatal(err)
			}
			if got := sagaIDs(rows); !slices.Equal(got, []string{"o-failed", "o-done", "o-stuck", "o-undo", "o-fresh"}) {
				t.Errorf("saga list: got %v", got)
			}
		})
	}
}

// putStateIn writes a saga's state to Redis as the engine does, for an
// inbox of parts partitions.
func putStateIn(t *testing.T, rdb redis.UniversalClient, parts int32, s orchestrator.State) {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	key := orchestrator.StateKey(s.Type, message.HomePartition(s.ID, parts), s.ID)
	if err := rdb.HSet(testContext(t), key, "version", s.Version, "state", b).Err(); err != nil {
		t.Fatal(err)
	}
}

// compensateRedis starts a redis-server holding the view of the order
// sagas o-7 (running), o-done (completed), o-undone (compensated),
// o-undoing (compensating) and o-failed (failed), for an inbox of 3
// partitions.
func compensateRedis(t *testing.T) *redistest.Server {
	t.Helper()
	rs := redistest.StartServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	t.Cleanup(func() { rdb.Close() })
	for id, status := range map[string]string{"o-7": message.StatusRunning, "o-done": message.StatusCompleted,
		"o-undone": message.StatusCompensated, "o-undoing": message.StatusCompensating, "o-failed": message.StatusFailed,
		"o-parked": message.StatusParked} {
		putStateIn(t, rdb, 3, orchestrator.State{ID: id, Type: "order", Version: 3, Status: status, Step: 1, Undoing: -1, Updated: time.Now()})
	}
	return rs
}

func TestCompensateSaga(t *testing.T) {
	brokers := newClusterWith(t, kfake.SeedTopics(3, inbox), kfake.SeedTopics(2, dlt), kfake.SeedTopics(2, audit))
	rs := compensateRedis(t)
	ctx := testContext(t)
	args := []string{"saga", "compensate", "o-7", "--saga", "order", "--kafka-brokers", brokers[0], "--redis-addr", rs.Addr,
		"--note", "customer cancelled by phone", "--as", "alice"}

	// Not a terminal, no --yes: nothing is sent.
	var stdout, stderr bytes.Buffer
	if code := run(ctx, args, envOf(), &stdout, &stderr); code != exitUsage || !strings.Contains(stderr.String(), "pass --yes") {
		t.Errorf("without --yes: exit code %d, stderr %q; want %d and a hint", code, stderr.String(), exitUsage)
	}
	if n := endOffsets(t, brokers, inbox) + endOffsets(t, brokers, audit); n != 0 {
		t.Errorf("without --yes: end offsets sum to %d, want nothing written", n)
	}

	// --dry-run: no --yes needed, the records it would send, nothing sent.
	stdout.Reset()
	stderr.Reset()
	if code := run(ctx, append(args, "--dry-run"), envOf(), &stdout, &stderr); code != exitOK {
		t.Fatalf("--dry-run: exit code %d, stderr %s", code, stderr.String())
	}
	home := message.HomePartition("o-7", 3)
	wantOut := fmt.Sprintf("would send: Compensate to %s partition %d, key o-7, reason %q\n", inbox, home, "customer cancelled by phone")
	if !strings.HasPrefix(stdout.String(), wantOut) || !strings.Contains(stdout.String(), "would audit: saga-compensate on "+audit) ||
		!strings.Contains(stderr.String(), "dry run: saga order/o-7 is running (version 3, step 1); nothing was sent") {
		t.Errorf("--dry-run: stdout %q, stderr %q; want it to start with %q and say nothing was sent", stdout.String(), stderr.String(), wantOut)
	}
	if n := endOffsets(t, brokers, inbox) + endOffsets(t, brokers, audit); n != 0 {
		t.Errorf("--dry-run: end offsets sum to %d, want nothing written", n)
	}

	stdout.Reset()
	stderr.Reset()
	if code := run(ctx, append(args, "--yes", "-o", "json"), envOf(), &stdout, &stderr); code != exitOK {
		t.Fatalf("saga compensate: exit code %d, stderr %s", code, stderr.String())
	}
	var printed auditRecord
	if err := json.Unmarshal(stdout.Bytes(), &printed); err != nil {
		t.Fatalf("saga compensate -o json: %v\n%s", err, stdout.String())
	}
	recs := consumeAll(t, brokers, inbox, 1)
	if len(recs) != 1 {
		t.Fatalf("inbox: got %d records, want the Compensate message", len(recs))
	}
	r := recs[0]
	if r.Partition != home || string(r.Key) != "o-7" || headerValue(r, message.HeaderMessageType) != message.TypeCompensate ||
		headerValue(r, message.HeaderSagaID) != "o-7" || headerValue(r, message.HeaderReason) != "customer cancelled by phone" ||
		!strings.HasPrefix(headerValue(r, message.HeaderMessageID), "compensate-o-7-") {
		t.Errorf("Compensate message: got partition %d key %q headers %v, want partition %d", r.Partition, r.Key, r.Headers, home)
	}
	audits := auditRecords(t, brokers, 1)
	if len(audits) != 1 {
		t.Fatalf("audit records: got %d, want 1", len(audits))
	}
	a := audits[0]
	if a.Action != message.AuditCompensate || a.SagaID != "o-7" || a.By != "alice" || a.Note != "customer cancelled by phone" ||
		a.Inbox != inbox || a.Partition == nil || *a.Partition != home || a.Run != printed.Run || a.Tool != "sagactl" {
		t.Errorf("audit record: got %+v (printed %+v)", a, printed)
	}

	// audit list shows it.
	stdout.Reset()
	stderr.Reset()
	run(ctx, []string{"audit", "list", "--saga", "order", "--kafka-brokers", brokers[0], "--action", "compensate"}, envOf(), &stdout, &stderr)
	if lines := strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n"); len(lines) != 2 || !slices.Equal(strings.Fields(lines[1])[1:5], []string{"saga-compensate", "alice", "1", "o-7"}) {
		t.Errorf("audit list:\n%s", stdout.String())
	}
}

// TestCompensateSagaRefused asks unknown and finished sagas to compensate,
// with and without --dry-run, and once with Redis down: each is refused
// with exit status 1 and a message that says why, and nothing is written
// (rather than a request the engine would dead-letter as unknown-saga, or
// drop).
func TestCompensateSagaRefused(t *testing.T) {
	brokers := newClusterWith(t, kfake.SeedTopics(3, inbox), kfake.SeedTopics(2, dlt), kfake.SeedTopics(2, audit))
	rs := compensateRedis(t)
	down := closedAddr(t)
	for _, tc := range []struct {
		name, id, redis string
		dryRun          bool
		want            string
	}{
		{"unknown saga", "o-404", rs.Addr, false, "saga not found: Redis has no key ksaga:{order:"},
		{"unknown saga, dry run", "o-404", rs.Addr, true, "saga not found"},
		{"completed", "o-done", rs.Addr, false, "saga not running: saga order/o-done has ended (completed): nothing to compensate, nothing was sent"},
		{"compensated", "o-undone", rs.Addr, false, "has ended (compensated)"},
		{"failed", "o-failed", rs.Addr, true, "has ended (failed)"},
		{"compensating", "o-undoing", rs.Addr, false, "saga order/o-undoing is compensating already"},
		{"Redis down", "o-7", down, false, "Redis at " + down},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"saga", "compensate", tc.id, "--saga", "order", "--kafka-brokers", brokers[0], "--redis-addr", tc.redis,
				"--note", "n", "--as", "alice", "--yes", "--timeout", "2s"}
			if tc.dryRun {
				args = append(args, "--dry-run")
			}
			var stdout, stderr bytes.Buffer
			if code := run(testContext(t), args, envOf(), &stdout, &stderr); code != exitError {
				t.Errorf("exit code %d, want %d", code, exitError)
			}
			if !strings.Contains(stderr.String(), tc.want) || !strings.Contains(stderr.String(), "nothing was sent") {
				t.Errorf("stderr %q, want it to contain %q and say nothing was sent", stderr.String(), tc.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
	if n := endOffsets(t, brokers, inbox) + endOffsets(t, brokers, audit); n != 0 {
		t.Errorf("end offsets of the inbox and the audit topic sum to %d, want nothing written", n)
	}
}

// TestCompensateSagaAuditRefused makes the broker refuse every write to the
// audit topic: saga compensate fails, and the Compensate request, written
// in the same transaction, is not committed either — no compensation
// without its audit record.
func TestCompensateSagaAuditRefused(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, inbox), kfake.SeedTopics(2, dlt), kfake.SeedTopics(2, audit))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	adm, err := kadm.NewOptClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	tds, err := adm.ListTopics(testContext(t), audit)
	adm.Close()
	if err != nil {
		t.Fatal(err)
	}
	auditID := tds[audit].ID // Produce names topics by id since v13
	var refused atomic.Int32
	c.ControlKey(kmsg.Produce.Int16(), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := kr.(*kmsg.ProduceRequest)
		if !slices.ContainsFunc(req.Topics, func(rt kmsg.ProduceRequestTopic) bool { return rt.Topic == audit || rt.TopicID == auditID }) {
			return nil, nil, false
		}
		refused.Add(1)
		return kfaketest.ProduceError(req, kerr.TopicAuthorizationFailed.Code), nil, true
	})
	brokers := c.ListenAddrs()
	ctx := testContext(t)
	var stdout, stderr bytes.Buffer
	args := []string{"saga", "compensate", "o-7", "--saga", "order", "--kafka-brokers", brokers[0], "--redis-addr", compensateRedis(t).Addr,
		"--note", "n", "--as", "alice", "--yes"}
	if code := run(ctx, args, envOf(), &stdout, &stderr); code == exitOK || !strings.Contains(stderr.String(), "nothing was sent") {
		t.Errorf("saga compensate with the audit topic refused: exit code %d, stderr %q; want a failure that says nothing was sent", code, stderr.String())
	}
	if refused.Load() == 0 {
		t.Fatal("no write to the audit topic was refused: the test proves nothing")
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(inbox),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if n := cl.PollFetches(pctx).NumRecords(); n != 0 {
		t.Errorf("the inbox holds %d committed records, want none: the request went out without its audit record", n)
	}
}

// TestResumeSaga resumes a parked saga: a Resume message and its audit
// record, in one transaction; a saga that is not parked is refused and
// nothing is sent.
func TestResumeSaga(t *testing.T) {
	brokers := newClusterWith(t, kfake.SeedTopics(3, inbox), kfake.SeedTopics(2, dlt), kfake.SeedTopics(2, audit))
	rs := compensateRedis(t)
	ctx := testContext(t)
	resume := func(id string) (int, string) {
		var stdout, stderr bytes.Buffer
		code := run(ctx, []string{"saga", "resume", id, "--saga", "order", "--kafka-brokers", brokers[0], "--redis-addr", rs.Addr,
			"--note", "coupon service is back", "--as", "alice", "--yes"}, envOf(), &stdout, &stderr)
		return code, stderr.String()
	}
	if code, stderr := resume("o-7"); code != exitError || !strings.Contains(stderr, "saga order/o-7 is running, not parked") {
		t.Errorf("resume of a running saga: exit code %d, stderr %q; want %d and not parked", code, stderr, exitError)
	}
	if n := endOffsets(t, brokers, inbox) + endOffsets(t, brokers, audit); n != 0 {
		t.Fatalf("a refused resume wrote %d records, want none", n)
	}
	if code, stderr := resume("o-parked"); code != exitOK {
		t.Fatalf("resume: exit code %d, stderr %s", code, stderr)
	}
	recs := consumeAll(t, brokers, inbox, 1)
	if len(recs) != 1 || headerValue(recs[0], message.HeaderMessageType) != message.TypeResume ||
		headerValue(recs[0], message.HeaderReason) != "coupon service is back" || recs[0].Partition != message.HomePartition("o-parked", 3) {
		t.Fatalf("inbox: %d records, want one Resume on the saga's home partition", len(recs))
	}
	audits := consumeAll(t, brokers, audit, 1)
	if len(audits) != 1 || headerValue(audits[0], message.HeaderAuditAction) != message.AuditResume {
		t.Errorf("audit: %d records, want one %s", len(audits), message.AuditResume)
	}
}
