package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
)

var (
	inbox = message.Inbox("order")
	dlt   = message.DLT("order")
)

// newCluster starts an in-process Kafka with the order saga's inbox (one
// partition) and dead-letter topic (two, to exercise the partition loop).
func newCluster(t *testing.T) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, inbox), kfake.SeedTopics(2, dlt))
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// deadLetter describes one record dead-lettered by the engine.
type deadLetter struct {
	dltPartition int32
	src          *kgo.Record
	failure      dlq.Failure
}

var (
	failedAt   = time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	longError  = "orders store: dial tcp 10.0.0.7:6379: connect: connection refused " + strings.Repeat("(and more) ", 20)
	testLetter = []deadLetter{
		{0, &kgo.Record{
			Topic: inbox, Partition: 0, Offset: 10, Timestamp: time.UnixMilli(1000),
			Key: []byte("o-1"), Value: []byte(`{"order_id":`),
			Headers: []kgo.RecordHeader{
				{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
				{Key: message.HeaderMessageID, Value: []byte("m-1")},
			},
		}, dlq.Failure{Group: "ksaga-order", Err: errors.New("unexpected end of JSON input"), Reason: "undecodable", Attempts: 1, First: failedAt, Last: failedAt}},
		{1, &kgo.Record{
			Topic: inbox, Partition: 0, Offset: 11, Timestamp: time.UnixMilli(2000),
			Key: []byte("o-2"), Value: []byte(`{"order_id":"o-2"}`),
			Headers: []kgo.RecordHeader{
				{Key: message.HeaderMessageType, Value: []byte(message.TypeTimeout)},
				{Key: message.HeaderMessageID, Value: []byte("m-2")},
				{Key: message.HeaderStep, Value: []byte("complete-order")},
			},
		}, dlq.Failure{Group: "ksaga-order", Err: errors.New(longError), Reason: "retries-exhausted", Attempts: 3, First: failedAt, Last: failedAt.Add(time.Minute)}},
		{0, &kgo.Record{
			Topic: inbox, Partition: 0, Offset: 12, Timestamp: time.UnixMilli(3000),
			Key: []byte("o-3"), Value: []byte(`{"order_id":"o-3"}`),
			Headers: []kgo.RecordHeader{
				{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
				{Key: message.HeaderMessageID, Value: []byte("m-3")},
			},
		}, dlq.Failure{Group: "ksaga-order", Err: errors.New("validate: no items"), Reason: "undecodable", Attempts: 1, First: failedAt, Last: failedAt}},
	}
)

// produceTxn produces recs in one transaction, committed or aborted, as the
// engine writes its dead letters.
func produceTxn(t *testing.T, brokers []string, commit bool, recs ...*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.TransactionalID(fmt.Sprintf("test-%d", time.Now().UnixNano())),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := testContext(t)
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
		t.Fatalf("end transaction: %v", err)
	}
}

// writeDeadLetters writes dls to the DLT as the engine would, plus an
// aborted transaction in the middle, which no command may show or redrive.
func writeDeadLetters(t *testing.T, brokers []string, dls []deadLetter) {
	t.Helper()
	for i, d := range dls {
		r := dlq.New(d.src, dlt, d.failure)
		r.Partition = d.dltPartition
		produceTxn(t, brokers, true, r)
		if i == 0 {
			aborted := dlq.New(&kgo.Record{Topic: inbox, Key: []byte("aborted")}, dlt, dlq.Failure{Reason: "aborted"})
			aborted.Partition = d.dltPartition
			produceTxn(t, brokers, false, aborted)
		}
	}
}

// consumeAll reads topic from the start (read_committed) until want records
// arrived.
func consumeAll(t *testing.T, brokers []string, topic string, want int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []*kgo.Record
	for len(got) < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consume %s: got %d records, want %d", topic, len(got), want)
		}
		got = append(got, fs.Records()...)
	}
	// Anything more would be a duplicate: give it a moment to show up.
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	got = append(got, cl.PollFetches(short).Records()...)
	return got
}

func TestListDLQ(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)

	tests := []struct {
		name      string
		limit     int
		wantRows  int
		wantFinal string
	}{
		{"all", 0, 3, "3 records of saga.order.inbox-dlt"},
		{"limit", 2, 2, "2 records of saga.order.inbox-dlt (stopped at --limit 2)"},
		{"limit above the count", 10, 3, "3 records of saga.order.inbox-dlt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			res, err := listDLQ(testContext(t), brokers, &out, listOptions{sagaType: "order", limit: tt.limit, timeout: 5 * time.Second})
			if err != nil {
				t.Fatalf("listDLQ: %v", err)
			}
			lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
			if got, want := len(lines), tt.wantRows+2; got != want {
				t.Fatalf("output: got %d lines, want %d:\n%s", got, want, out.String())
			}
			if res.records != tt.wantRows {
				t.Errorf("records: got %d, want %d", res.records, tt.wantRows)
			}
			if got := strings.Fields(lines[0]); !slices.Equal(got[:3], []string{"DLT", "ORIGINAL", "SAGA"}) {
				t.Errorf("header: got %q, want it to start with DLT ORIGINAL SAGA", lines[0])
			}
			if got := lines[len(lines)-1]; got != tt.wantFinal {
				t.Errorf("last line: got %q, want %q", got, tt.wantFinal)
			}
			if tt.limit == 0 {
				checkListRows(t, lines[1:len(lines)-1], "pending")
			}
		})
	}
}

// checkListRows checks one dlq list row per testLetter, in any order
// across DLT partitions.
func checkListRows(t *testing.T, rows []string, state string) {
	t.Helper()
	// DLT offsets: partition 0 holds o-1 at 0 (marker 1), the aborted
	// record at 2 (marker 3), o-3 at 4; partition 1 holds o-2 at 0.
	want := map[string][]string{
		"o-1": {"0/0", "saga.order.inbox/0/10", "o-1", "StartSaga", "undecodable", "1", "2025-03-01T10:00:00Z", state, "unexpected", "end", "of", "JSON", "input"},
		"o-2": {"1/0", "saga.order.inbox/0/11", "o-2", "Timeout", "retries-exhausted", "3", "2025-03-01T10:01:00Z", state},
		"o-3": {"0/4", "saga.order.inbox/0/12", "o-3", "StartSaga", "undecodable", "1", "2025-03-01T10:00:00Z", state, "validate:", "no", "items"},
	}
	seen := map[string]bool{}
	for _, row := range rows {
		f := strings.Fields(row)
		if len(f) < 3 {
			t.Errorf("row %q: too few columns", row)
			continue
		}
		w, ok := want[f[2]]
		if !ok {
			t.Errorf("row %q: unexpected saga id %q", row, f[2])
			continue
		}
		seen[f[2]] = true
		if f[2] == "o-2" {
			// The long error is cut to maxErrorWidth runes.
			i := strings.Index(row, "orders store:")
			if i < 0 {
				t.Errorf("row %q: got no error message, want one starting with %q", row, "orders store:")
				continue
			}
			msg := row[i:]
			if n := utf8.RuneCountInString(msg); n != maxErrorWidth || !strings.HasSuffix(msg, "…") {
				t.Errorf("error column: got %q (%d runes), want %d runes ending in …", msg, n, maxErrorWidth)
			}
			f = f[:len(w)]
		}
		if !slices.Equal(f, w) {
			t.Errorf("row for %s: got %q, want %q", f[2], f, w)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("rows: got saga ids %v, want o-1, o-2 and o-3", seen)
	}
}

func TestRedriveDLQ(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	ctx := testContext(t)

	// A dry run changes nothing.
	var out bytes.Buffer
	res, err := redriveDLQ(ctx, brokers, &out, redriveOptions{sagaType: "order", dryRun: true, timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	if res.redriven != 3 || res.skipped != 0 {
		t.Errorf("dry run: got redriven %d skipped %d, want 3 and 0\n%s", res.redriven, res.skipped, out.String())
	}

	out.Reset()
	res, err = redriveDLQ(ctx, brokers, &out, redriveOptions{sagaType: "order", timeout: 5 * time.Second, batch: 2})
	if err != nil {
		t.Fatalf("redrive: %v\n%s", err, out.String())
	}
	if res != (redriveResult{redriven: 3}) {
		t.Errorf("redrive: got %+v, want 3 redriven\n%s", res, out.String())
	}
	if !strings.Contains(out.String(), "redriven 3, skipped 0, invalid 0\n") {
		t.Errorf("output: got\n%s\nwant a line %q", out.String(), "redriven 3, skipped 0, invalid 0")
	}

	got := consumeAll(t, brokers, inbox, 3)
	if len(got) != 3 {
		t.Fatalf("inbox: got %d records, want 3 (no duplicates)", len(got))
	}
	wantRedriveOf := map[string]string{"o-1": "0:0", "o-2": "1:0", "o-3": "0:4"}
	for _, r := range got {
		key := string(r.Key)
		var src *kgo.Record
		for _, d := range testLetter {
			if string(d.src.Key) == key {
				src = d.src
			}
		}
		if src == nil {
			t.Errorf("inbox: unexpected record with key %q", key)
			continue
		}
		if r.Partition != src.Partition {
			t.Errorf("%s: partition: got %d, want %d", key, r.Partition, src.Partition)
		}
		if !bytes.Equal(r.Value, src.Value) {
			t.Errorf("%s: value: got %q, want %q", key, r.Value, src.Value)
		}
		var orig []kgo.RecordHeader
		redriveOf := ""
		for _, h := range r.Headers {
			switch {
			case strings.HasPrefix(h.Key, "kafka_dlt-"), h.Key == dlq.HeaderAttempts, h.Key == dlq.HeaderFirstFailure,
				h.Key == dlq.HeaderLastFailure, h.Key == dlq.HeaderReason:
				t.Errorf("%s: got dead-letter header %s, want none", key, h.Key)
			case h.Key == headerRedriveOf:
				redriveOf = string(h.Value)
			default:
				orig = append(orig, h)
			}
		}
		if redriveOf != wantRedriveOf[key] {
			t.Errorf("%s: %s: got %q, want %q", key, headerRedriveOf, redriveOf, wantRedriveOf[key])
		}
		if !slices.EqualFunc(orig, src.Headers, func(a, b kgo.RecordHeader) bool { return a.Key == b.Key && bytes.Equal(a.Value, b.Value) }) {
			t.Errorf("%s: headers: got %v, want %v", key, orig, src.Headers)
		}
	}

	// The group's offsets are committed: a second run has nothing to do,
	// and dlq list shows the records as handled.
	out.Reset()
	res, err = redriveDLQ(ctx, brokers, &out, redriveOptions{sagaType: "order", timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("second redrive: %v", err)
	}
	if res != (redriveResult{}) {
		t.Errorf("second redrive: got %+v, want nothing redriven\n%s", res, out.String())
	}
	out.Reset()
	if _, err := listDLQ(ctx, brokers, &out, listOptions{sagaType: "order", timeout: 5 * time.Second}); err != nil {
		t.Fatalf("listDLQ: %v", err)
	}
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	checkListRows(t, lines[1:len(lines)-1], "handled")

	// A new dead letter: the next run redrives it alone.
	writeDeadLetters(t, brokers, []deadLetter{{1, &kgo.Record{Topic: inbox, Offset: 13, Key: []byte("o-4"), Value: []byte(`{}`)}, dlq.Failure{Reason: "undecodable"}}})
	out.Reset()
	res, err = redriveDLQ(ctx, brokers, &out, redriveOptions{sagaType: "order", timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("third redrive: %v", err)
	}
	if res != (redriveResult{redriven: 1}) {
		t.Errorf("third redrive: got %+v, want 1 redriven\n%s", res, out.String())
	}
	if got := consumeAll(t, brokers, inbox, 4); len(got) != 4 || string(got[3].Key) != "o-4" {
		t.Errorf("inbox after the third run: got %d records, want 4, the last o-4", len(got))
	}
}

func TestRedriveDLQReason(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	ctx := testContext(t)

	var out bytes.Buffer
	res, err := redriveDLQ(ctx, brokers, &out, redriveOptions{sagaType: "order", reason: "undecodable", timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("redrive: %v\n%s", err, out.String())
	}
	if res != (redriveResult{redriven: 2, skipped: 1}) {
		t.Errorf("redrive --reason undecodable: got %+v, want 2 redriven, 1 skipped\n%s", res, out.String())
	}
	got := consumeAll(t, brokers, inbox, 2)
	var keys []string
	for _, r := range got {
		keys = append(keys, string(r.Key))
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"o-1", "o-3"}) {
		t.Errorf("inbox: got keys %v, want [o-1 o-3]", keys)
	}

	// The skipped record is still there for a run without --reason.
	out.Reset()
	res, err = redriveDLQ(ctx, brokers, &out, redriveOptions{sagaType: "order", timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("second redrive: %v", err)
	}
	if res != (redriveResult{redriven: 1}) {
		t.Errorf("second redrive: got %+v, want 1 redriven\n%s", res, out.String())
	}
	if got := consumeAll(t, brokers, inbox, 3); len(got) != 3 || string(got[2].Key) != "o-2" {
		t.Errorf("inbox: got %d records, want 3, the last o-2", len(got))
	}
}

// TestRedrivePartitionStopsAtEnd has the end offset fall inside a poll: the
// records past it must be neither redriven nor committed.
func TestRedrivePartitionStopsAtEnd(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	ctx := testContext(t)

	sess, err := newRedriveSession(brokers, nil, "order", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Partition 0 holds o-1 at 0, markers at 1 and 3, an aborted record at
	// 2 and o-3 at 4. An end of 4 makes the first poll (4 records: 0, 1, 3
	// and 4) reach past it.
	sess.Client().PauseFetchPartitions(map[string][]int32{dlt: {1}})
	var out bytes.Buffer
	var res redriveResult
	idled, err := redrivePartition(ctx, sess, &out, dlt, 0, span{0, 4}, 500, 5*time.Second, "", &res)
	sess.Close()
	if err != nil || idled {
		t.Fatalf("redrivePartition: got idled %v, error %v, want false, nil", idled, err)
	}
	if res != (redriveResult{redriven: 1}) {
		t.Errorf("redrivePartition: got %+v, want 1 redriven (o-1)\n%s", res, out.String())
	}

	// o-3, past that end, is still to be redriven, with o-2.
	out.Reset()
	res, err = redriveDLQ(ctx, brokers, &out, redriveOptions{sagaType: "order", timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("redrive: %v", err)
	}
	if res != (redriveResult{redriven: 2}) {
		t.Errorf("redrive: got %+v, want 2 redriven (o-2, o-3)\n%s", res, out.String())
	}
	got := consumeAll(t, brokers, inbox, 3)
	var keys []string
	for _, r := range got {
		keys = append(keys, string(r.Key))
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"o-1", "o-2", "o-3"}) {
		t.Errorf("inbox: got keys %v, want [o-1 o-2 o-3]", keys)
	}
}

func TestDLQMissingTopic(t *testing.T) {
	brokers := newCluster(t)
	ctx := testContext(t)
	var out bytes.Buffer
	if _, err := listDLQ(ctx, brokers, &out, listOptions{sagaType: "nosuch", timeout: 5 * time.Second}); !errors.Is(err, errNoTopic) {
		t.Errorf("list: got error %v, want errNoTopic", err)
	}
	if _, err := redriveDLQ(ctx, brokers, &out, redriveOptions{sagaType: "nosuch", timeout: 5 * time.Second}); !errors.Is(err, errNoTopic) {
		t.Errorf("redrive: got error %v, want errNoTopic", err)
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// silentAddr returns a loopback address that accepts connections and never
// answers.
func silentAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	return ln.Addr().String()
}

func TestUnreachableBroker(t *testing.T) {
	tests := []struct {
		name    string
		addr    string
		wantMsg string
	}{
		{"connection refused", closedAddr(t), "connection refused"},
		{"no answer", silentAddr(t), "did not answer within 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, cmd := range [][]string{{"dlq", "list"}, {"dlq", "redrive"}} {
				start := time.Now()
				var stdout, stderr bytes.Buffer
				args := append(cmd, "--saga", "order", "--kafka-brokers", tt.addr, "--timeout", "1s")
				code := run(testContext(t), args, func(string) string { return "" }, &stdout, &stderr)
				if code != exitError {
					t.Errorf("%s: exit code: got %d, want %d", cmd, code, exitError)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("%s: took %s, want about the 1s timeout at most", cmd, d)
				}
				msg := stderr.String()
				for _, want := range []string{tt.addr, tt.wantMsg, "check --kafka-brokers"} {
					if !strings.Contains(msg, want) {
						t.Errorf("%s: stderr: got %q, want it to mention %q", cmd, msg, want)
					}
				}
			}
		})
	}
}

func TestGetSaga(t *testing.T) {
	addr := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := testContext(t)
	// With 6 inbox partitions, o-1 and o-404 live on partition 0.
	if err := rdb.HSet(ctx, "ksaga:{order:0}:state:o-1", "version", "7", "state", `{"id":"o-1","status":"running","step":2}`).Err(); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	if err := getSaga(ctx, rdb, &out, getOptions{sagaType: "order", id: "o-1", partitions: 6}); err != nil {
		t.Fatalf("getSaga: %v", err)
	}
	want := `saga order/o-1 version 7 (Redis key ksaga:{order:0}:state:o-1)
{
  "id": "o-1",
  "status": "running",
  "step": 2
}
`
	if out.String() != want {
		t.Errorf("output: got\n%s\nwant\n%s", out.String(), want)
	}

	if err := getSaga(ctx, rdb, &out, getOptions{sagaType: "order", id: "o-404", partitions: 6}); !errors.Is(err, errSagaNotFound) {
		t.Errorf("missing saga: got error %v, want errSagaNotFound", err)
	}

	var stdout, stderr bytes.Buffer
	code := run(ctx, []string{"saga", "get", "o-404", "--saga", "order", "--partitions", "6"}, func(k string) string {
		if k == "KSAGA_REDIS_ADDR" {
			return addr
		}
		return ""
	}, &stdout, &stderr)
	if code != exitError {
		t.Errorf("run saga get of a missing saga: got exit code %d, want %d", code, exitError)
	}
	if !strings.Contains(stderr.String(), "ksaga:{order:0}:state:o-404") {
		t.Errorf("stderr: got %q, want it to name the key", stderr.String())
	}
}

func TestParseArgs(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	none := env()
	tests := []struct {
		name    string
		args    []string
		getenv  func(string) string
		want    invocation // compared on command, brokers, redisAddrs and options
		wantErr []string   // substrings of the error; nil: no error
	}{
		{
			name:    "missing --kafka-brokers",
			args:    []string{"dlq", "list", "--saga", "order"},
			getenv:  none,
			wantErr: []string{"--kafka-brokers", "KSAGA_KAFKA_BROKERS", "host:port"},
		},
		{
			name:    "empty KSAGA_KAFKA_BROKERS",
			args:    []string{"dlq", "redrive", "--saga", "order"},
			getenv:  env("KSAGA_KAFKA_BROKERS", " , "),
			wantErr: []string{"KSAGA_KAFKA_BROKERS is empty"},
		},
		{
			name:   "brokers from the environment",
			args:   []string{"dlq", "list", "--saga", "order", "--limit", "5"},
			getenv: env("KSAGA_KAFKA_BROKERS", "k1:9092, k2:9092"),
			want: invocation{command: cmdDLQList, brokers: []string{"k1:9092", "k2:9092"},
				list: listOptions{sagaType: "order", limit: 5, timeout: defaultTimeout}},
		},
		{
			name:   "flag wins over the environment, global flag before the command",
			args:   []string{"--kafka-brokers", "flag:9092", "dlq", "redrive", "--saga", "order", "--reason", "undecodable", "--dry-run"},
			getenv: env("KSAGA_KAFKA_BROKERS", "env:9092"),
			want: invocation{command: cmdDLQRedrive, brokers: []string{"flag:9092"},
				redrive: redriveOptions{sagaType: "order", reason: "undecodable", dryRun: true, timeout: defaultTimeout}},
		},
		{
			name:   "saga get with the id before the flags",
			args:   []string{"saga", "get", "o-1", "--saga", "order", "--redis-addr", "r:6379", "--timeout", "3s", "--partitions", "6"},
			getenv: none,
			want: invocation{command: cmdSagaGet, redisAddrs: []string{"r:6379"},
				get: getOptions{sagaType: "order", id: "o-1", redisAddrs: []string{"r:6379"}, timeout: 3 * time.Second, partitions: 6}},
		},
		{
			name:   "saga get with an id that looks like a flag after --",
			args:   []string{"saga", "get", "--saga", "order", "--redis-addr", "r:6379", "--kafka-brokers", "k:9092", "--", "-x"},
			getenv: none,
			want: invocation{command: cmdSagaGet, redisAddrs: []string{"r:6379"}, brokers: []string{"k:9092"},
				get: getOptions{sagaType: "order", id: "-x", redisAddrs: []string{"r:6379"}, timeout: defaultTimeout}},
		},
		{"saga get without a partition count", []string{"saga", "get", "--saga", "order", "--redis-addr", "r:6379", "o-1"}, none, invocation{}, []string{"--partitions N", "--kafka-brokers"}},
		{"missing --redis-addr", []string{"saga", "get", "--saga", "order", "o-1"}, none, invocation{}, []string{"--redis-addr", "KSAGA_REDIS_ADDR"}},
		{"missing saga id", []string{"saga", "get", "--saga", "order", "--redis-addr", "r:6379"}, none, invocation{}, []string{"missing saga id"}},
		{"two saga ids", []string{"saga", "get", "--saga", "order", "--redis-addr", "r:6379", "a", "b"}, none, invocation{}, []string{"want one saga id"}},
		{"missing --saga", []string{"dlq", "list", "--kafka-brokers", "k:9092"}, none, invocation{}, []string{"--saga is required", "--saga order"}},
		{"bad --saga", []string{"dlq", "list", "--saga", "or der", "--kafka-brokers", "k:9092"}, none, invocation{}, []string{"--saga", "letters"}},
		{"negative --limit", []string{"dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092", "--limit", "-1"}, none, invocation{}, []string{"--limit"}},
		{"unknown flag", []string{"dlq", "list", "--saga", "order", "--nope"}, none, invocation{}, []string{"-nope", "sagactl dlq list -help"}},
		{"flag of another command", []string{"dlq", "list", "--saga", "order", "--dry-run"}, none, invocation{}, []string{"-dry-run", "sagactl dlq list -help"}},
		{"no command", nil, none, invocation{}, []string{"missing command", "dlq list"}},
		{"unknown command", []string{"dlx", "list"}, none, invocation{}, []string{`unknown command "dlx"`}},
		{"unknown subcommand", []string{"dlq", "purge"}, none, invocation{}, []string{`unknown subcommand "purge"`, "list, redrive"}},
		{"missing subcommand", []string{"saga"}, none, invocation{}, []string{"missing subcommand", "get"}},
		{"stray argument", []string{"dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092", "extra"}, none, invocation{}, []string{`unexpected argument "extra"`}},
		{"bad --timeout", []string{"dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092", "--timeout", "0s"}, none, invocation{}, []string{"--timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseArgs(tt.args, tt.getenv)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("got no error, want one mentioning %q", tt.wantErr)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error: got %q, want it to mention %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			if got.command != tt.want.command || !slices.Equal(got.brokers, tt.want.brokers) || !slices.Equal(got.redisAddrs, tt.want.redisAddrs) {
				t.Errorf("got command %q brokers %q redis %q, want %q %q %q",
					got.command, got.brokers, got.redisAddrs, tt.want.command, tt.want.brokers, tt.want.redisAddrs)
			}
			switch got.command {
			case cmdDLQList:
				if got.list.kafka = nil; !reflect.DeepEqual(got.list, tt.want.list) {
					t.Errorf("list options: got %+v, want %+v", got.list, tt.want.list)
				}
			case cmdDLQRedrive:
				if got.redrive.kafka = nil; !reflect.DeepEqual(got.redrive, tt.want.redrive) {
					t.Errorf("redrive options: got %+v, want %+v", got.redrive, tt.want.redrive)
				}
			case cmdSagaGet:
				g, w := got.get, tt.want.get
				if g.sagaType != w.sagaType || g.id != w.id || g.timeout != w.timeout || !slices.Equal(g.redisAddrs, w.redisAddrs) {
					t.Errorf("get options: got %+v, want %+v", g, w)
				}
			}
		})
	}
}

func TestHelp(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"-h"}, "sagactl is the ksaga operator CLI"},
		{[]string{"help"}, "sagactl is the ksaga operator CLI"},
		{[]string{"dlq", "-help"}, "sagactl is the ksaga operator CLI"},
		{[]string{"help", "dlq", "redrive"}, "Usage: sagactl dlq redrive"},
		{[]string{"dlq", "list", "-h"}, "Usage: sagactl dlq list"},
		{[]string{"saga", "get", "--help"}, "Usage: sagactl saga get"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := parseArgs(tt.args, func(string) string { return "" })
			if !errors.Is(err, flag.ErrHelp) {
				t.Fatalf("parseArgs: got error %v, want flag.ErrHelp", err)
			}
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), tt.args, func(string) string { return "" }, &stdout, &stderr); code != exitOK {
				t.Errorf("exit code: got %d, want %d", code, exitOK)
			}
			if !strings.Contains(stdout.String(), tt.want) {
				t.Errorf("stdout: got\n%s\nwant it to contain %q", stdout.String(), tt.want)
			}
			if !strings.Contains(stdout.String(), "--kafka-brokers") {
				t.Errorf("stdout: got\n%s\nwant it to list --kafka-brokers", stdout.String())
			}
		})
	}
}

func TestRunUsageError(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"dlq", "list", "--saga", "order"}, func(string) string { return "" }, &stdout, &stderr)
	if code != exitUsage {
		t.Errorf("exit code: got %d, want %d", code, exitUsage)
	}
	if got := stderr.String(); !strings.Contains(got, "--kafka-brokers") || !strings.Contains(got, "KSAGA_KAFKA_BROKERS") {
		t.Errorf("stderr: got %q, want it to say to set --kafka-brokers or KSAGA_KAFKA_BROKERS", got)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout: got %q, want nothing", stdout.String())
	}
}

func TestShorten(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"", 10, "-"},
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"one too many", 11, "one too ma…"},
		{"multi\nline\t error", 80, "multi line error"},
		{"ünïcödé ünïcödé", 8, "ünïcödé…"},
	}
	for _, tt := range tests {
		if got := shorten(tt.in, tt.n); got != tt.want {
			t.Errorf("shorten(%q, %d): got %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
