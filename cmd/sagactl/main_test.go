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

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/topic"
)

var (
	inbox = message.Inbox("order")
	dlt   = message.DLT("order")
	audit = topic.Audit("order")
)

// newCluster starts an in-process Kafka with the order saga's inbox (one
// partition), dead-letter topic (two, to exercise the partition loop) and
// audit topic (two).
func newCluster(t *testing.T) []string {
	t.Helper()
	return newClusterWith(t, kfake.SeedTopics(1, inbox), kfake.SeedTopics(2, dlt), kfake.SeedTopics(2, audit))
}

func newClusterWith(t *testing.T, opts ...kfake.Opt) []string {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)...)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// testIO is the standard streams of a command under test.
type testIO struct {
	out, err bytes.Buffer
	in       string
	terminal bool
}

func (b *testIO) streams() streams {
	return streams{in: strings.NewReader(b.in), out: &b.out, errw: &b.err, inTerminal: b.terminal}
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

// deadLetteredAt is when the i-th record of testLetter was dead-lettered:
// an hour apart, so that oldest first is testLetter's order.
func deadLetteredAt(i int) time.Time { return failedAt.Add(time.Duration(i+1) * time.Hour) }

// writeDeadLetters writes dls to the DLT as the engine would, dead-lettered
// at deadLetteredAt, plus an aborted transaction in the middle, which no
// command may show or redrive.
func writeDeadLetters(t *testing.T, brokers []string, dls []deadLetter) {
	t.Helper()
	for i, d := range dls {
		r := dlq.New(d.src, dlt, d.failure)
		r.Partition = d.dltPartition
		r.Timestamp = deadLetteredAt(i)
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
			for _, cmd := range [][]string{
				{"dlq", "list"}, {"dlq", "show", "0:0"}, {"dlq", "redrive", "--dry-run"},
				{"dlq", "redrive", "--yes", "--note", "n", "--as", "t"}, {"audit", "list"},
				{"saga", "compensate", "o-1", "--yes", "--note", "n", "--as", "t", "--redis-addr", closedAddr(t)},
			} {
				start := time.Now()
				var stdout, stderr bytes.Buffer
				args := append(slices.Clone(cmd), "--saga", "order", "--kafka-brokers", tt.addr, "--timeout", "1s")
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
			args:   []string{"dlq", "list", "--saga", "order", "--limit", "5", "-o", "json"},
			getenv: env("KSAGA_KAFKA_BROKERS", "k1:9092, k2:9092"),
			want: invocation{command: cmdDLQList, brokers: []string{"k1:9092", "k2:9092"},
				list: listOptions{sagaType: "order", limit: 5, output: outJSON, timeout: defaultTimeout}},
		},
		{
			name: "dlq list filters",
			args: []string{"dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092", "--reason", "invalid", "--saga-id", "o-1",
				"--since", "2025-03-01T10:00:00Z", "--until", "2025-03-02", "--state", "pending", "--output", "yaml"},
			getenv: none,
			want: invocation{command: cmdDLQList, brokers: []string{"k:9092"},
				list: listOptions{sagaType: "order", filters: filters{reason: "invalid", sagaID: "o-1", since: failedAt, until: failedAt.Add(14 * time.Hour)},
					state: "pending", output: outYAML, timeout: defaultTimeout}},
		},
		{
			name:   "flag wins over the environment, global flag before the command",
			args:   []string{"--kafka-brokers", "flag:9092", "dlq", "redrive", "--saga", "order", "--reason", "undecodable", "--dry-run"},
			getenv: env("KSAGA_KAFKA_BROKERS", "env:9092"),
			want: invocation{command: cmdDLQRedrive, brokers: []string{"flag:9092"},
				redrive: redriveOptions{sagaType: "order", filters: filters{reason: "undecodable"}, maxRedrives: defaultMaxRedrives, dryRun: true, output: outTable, timeout: defaultTimeout}},
		},
		{
			name:   "redrive: who from $USER, rate per minute",
			args:   []string{"dlq", "redrive", "--saga", "order", "--kafka-brokers", "k:9092", "--note", "db back", "--limit", "10", "--rate", "600/m", "--max-redrives", "0", "--yes"},
			getenv: env("USER", "alice"),
			want: invocation{command: cmdDLQRedrive, brokers: []string{"k:9092"}, confirms: true, yes: true,
				redrive: redriveOptions{sagaType: "order", limit: 10, rate: 10, yes: true, by: "alice", note: "db back", output: outTable, timeout: defaultTimeout}},
		},
		{
			name:   "redrive: --as wins over $USER",
			args:   []string{"dlq", "redrive", "--saga", "order", "--kafka-brokers", "k:9092", "--note", "n", "--as", "bob", "--rate", "50/s"},
			getenv: env("USER", "alice"),
			want: invocation{command: cmdDLQRedrive, brokers: []string{"k:9092"}, confirms: true,
				redrive: redriveOptions{sagaType: "order", maxRedrives: defaultMaxRedrives, rate: 50, by: "bob", note: "n", output: outTable, timeout: defaultTimeout}},
		},
		{
			name:   "dlq show",
			args:   []string{"dlq", "show", "1:42", "--saga", "order", "--kafka-brokers", "k:9092"},
			getenv: none,
			want: invocation{command: cmdDLQShow, brokers: []string{"k:9092"},
				show: showOptions{sagaType: "order", at: pos{1, 42}, output: outTable, timeout: defaultTimeout}},
		},
		{
			name:   "saga list --stuck: --older-than defaults to 10m",
			args:   []string{"saga", "list", "--saga", "order", "--redis-addr", "r:6379", "--stuck", "-o", "json"},
			getenv: none,
			want: invocation{command: cmdSagaList, redisAddrs: []string{"r:6379"},
				sagaList: sagaListOptions{sagaType: "order", redisAddrs: []string{"r:6379"}, stuck: true, olderThan: 10 * time.Minute, output: outJSON, timeout: defaultTimeout}},
		},
		{
			name:   "saga list --older-than",
			args:   []string{"saga", "list", "--saga", "order", "--redis-addr", "r:6379", "--stuck", "--older-than", "1h", "--status", "compensating"},
			getenv: none,
			want: invocation{command: cmdSagaList, redisAddrs: []string{"r:6379"},
				sagaList: sagaListOptions{sagaType: "order", redisAddrs: []string{"r:6379"}, stuck: true, olderThan: time.Hour, status: "compensating", output: outTable, timeout: defaultTimeout}},
		},
		{
			name:   "saga compensate",
			args:   []string{"saga", "compensate", "o-1", "--saga", "order", "--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--note", "customer called"},
			getenv: env("LOGNAME", "carol"),
			want: invocation{command: cmdSagaCompensate, brokers: []string{"k:9092"}, redisAddrs: []string{"r:6379"}, confirms: true,
				compensate: compensateOptions{sagaType: "order", id: "o-1", redisAddrs: []string{"r:6379"}, by: "carol", note: "customer called", output: outTable, timeout: defaultTimeout}},
		},
		{
			// A dry run sends nothing: no confirmation.
			name:   "saga compensate --dry-run",
			args:   []string{"saga", "compensate", "o-1", "--saga", "order", "--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--note", "n", "--as", "bob@example.com", "--dry-run"},
			getenv: none,
			want: invocation{command: cmdSagaCompensate, brokers: []string{"k:9092"}, redisAddrs: []string{"r:6379"},
				compensate: compensateOptions{sagaType: "order", id: "o-1", redisAddrs: []string{"r:6379"}, dryRun: true, by: "bob@example.com", note: "n", output: outTable, timeout: defaultTimeout}},
		},
		{
			name:   "audit list",
			args:   []string{"audit", "list", "--saga", "order", "--kafka-brokers", "k:9092", "--action", "redrive", "--since", "2025-03-01"},
			getenv: none,
			want: invocation{command: cmdAuditList, brokers: []string{"k:9092"},
				auditList: auditListOptions{sagaType: "order", action: message.AuditRedrive, since: failedAt.Add(-10 * time.Hour), output: outTable, timeout: defaultTimeout}},
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
		{"redrive without --note", []string{"dlq", "redrive", "--saga", "order", "--kafka-brokers", "k:9092"}, env("USER", "alice"), invocation{}, []string{"--note is required", "saga.order.audit"}},
		{"redrive without a user", []string{"dlq", "redrive", "--saga", "order", "--kafka-brokers", "k:9092", "--note", "n"}, none, invocation{}, []string{"$USER", "--as NAME"}},
		{"compensate without --note", []string{"saga", "compensate", "o-1", "--saga", "order", "--kafka-brokers", "k:9092", "--redis-addr", "r:6379"}, env("USER", "alice"), invocation{}, []string{"--note is required"}},
		{"compensate without --note, dry run", []string{"saga", "compensate", "o-1", "--saga", "order", "--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--dry-run"}, env("USER", "alice"), invocation{}, []string{"--note is required"}},
		{"compensate without Redis", []string{"saga", "compensate", "o-1", "--saga", "order", "--kafka-brokers", "k:9092", "--note", "n", "--as", "a"}, none, invocation{}, []string{"--redis-addr"}},
		{"compensate of a type no saga can have", []string{"saga", "compensate", "o-1", "--saga", "Order", "--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--note", "n", "--as", "a"}, none, invocation{}, []string{"lower-case"}},
		{"--as with a newline", []string{"saga", "compensate", "o-1", "--saga", "order", "--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--note", "n", "--as", "alice\nby: root"}, none, invocation{}, []string{`--as "alice\nby: root" is not a name`, "A-Z, a-z, 0-9"}},
		{"--as with an escape", []string{"dlq", "redrive", "--saga", "order", "--kafka-brokers", "k:9092", "--note", "n", "--as", "\x1b[2Jroot"}, none, invocation{}, []string{"is not a name"}},
		{"--as with a space", []string{"dlq", "redrive", "--saga", "order", "--kafka-brokers", "k:9092", "--note", "n", "--as", "Alice Smith"}, none, invocation{}, []string{"is not a name"}},
		{"$USER that is not a name", []string{"saga", "compensate", "o-1", "--saga", "order", "--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--note", "n"}, env("USER", `CORP\alice`), invocation{}, []string{"pass --as NAME"}},
		{"bad --rate", []string{"dlq", "redrive", "--saga", "order", "--kafka-brokers", "k:9092", "--dry-run", "--rate", "fast"}, none, invocation{}, []string{"--rate", "50/s"}},
		{"bad --rate unit", []string{"dlq", "redrive", "--saga", "order", "--kafka-brokers", "k:9092", "--dry-run", "--rate", "5/d"}, none, invocation{}, []string{"unknown unit"}},
		{"bad --since", []string{"dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092", "--since", "yesterday"}, none, invocation{}, []string{"--since", "duration ago"}},
		{"--since after --until", []string{"dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092", "--since", "1h", "--until", "2h"}, none, invocation{}, []string{"is not before --until"}},
		{"bad -o", []string{"dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092", "-o", "xml"}, none, invocation{}, []string{`-o "xml"`, "table, json or yaml"}},
		{"bad --state", []string{"dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092", "--state", "done"}, none, invocation{}, []string{"--state"}},
		{"dlq show without a position", []string{"dlq", "show", "--saga", "order", "--kafka-brokers", "k:9092"}, none, invocation{}, []string{"PARTITION:OFFSET"}},
		{"dlq show with a bad position", []string{"dlq", "show", "0-4", "--saga", "order", "--kafka-brokers", "k:9092"}, none, invocation{}, []string{"PARTITION:OFFSET"}},
		{"saga list without Redis", []string{"saga", "list", "--saga", "order", "--kafka-brokers", "k:9092"}, none, invocation{}, []string{"--redis-addr"}},
		{"bad --status", []string{"saga", "list", "--saga", "order", "--redis-addr", "r:6379", "--status", "stuck"}, none, invocation{}, []string{"--status"}},
		{"saga get without a partition count", []string{"saga", "get", "--saga", "order", "--redis-addr", "r:6379", "o-1"}, none, invocation{}, []string{"--partitions N", "--kafka-brokers"}},
		{"missing --redis-addr", []string{"saga", "get", "--saga", "order", "o-1"}, none, invocation{}, []string{"--redis-addr", "KSAGA_REDIS_ADDR"}},
		{"missing saga id", []string{"saga", "get", "--saga", "order", "--redis-addr", "r:6379"}, none, invocation{}, []string{"missing saga id"}},
		{"two saga ids", []string{"saga", "get", "--saga", "order", "--redis-addr", "r:6379", "a", "b"}, none, invocation{}, []string{"want one saga id"}},
		{"missing --saga", []string{"dlq", "list", "--kafka-brokers", "k:9092"}, none, invocation{}, []string{"--saga is required", "--saga order"}},
		{"bad --saga", []string{"dlq", "list", "--saga", "or der", "--kafka-brokers", "k:9092"}, none, invocation{}, []string{"--saga", "letters"}},
		{"negative --limit", []string{"dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092", "--limit", "-1"}, none, invocation{}, []string{"--limit"}},
		{"negative --max-redrives", []string{"dlq", "redrive", "--saga", "order", "--kafka-brokers", "k:9092", "--note", "n", "--max-redrives", "-1"}, none, invocation{}, []string{"--max-redrives must be 0 (no limit) or more"}},
		{"unknown flag", []string{"dlq", "list", "--saga", "order", "--nope"}, none, invocation{}, []string{"-nope", "sagactl dlq list -help"}},
		{"flag of another command", []string{"dlq", "list", "--saga", "order", "--dry-run"}, none, invocation{}, []string{"-dry-run", "sagactl dlq list -help"}},
		{"no command", nil, none, invocation{}, []string{"missing command", "dlq list"}},
		{"unknown command", []string{"dlx", "list"}, none, invocation{}, []string{`unknown command "dlx"`}},
		{"unknown subcommand", []string{"dlq", "purge"}, none, invocation{}, []string{`unknown subcommand "purge"`, "list, show, redrive"}},
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
			if got.confirms != tt.want.confirms || got.yes != tt.want.yes {
				t.Errorf("got confirms %v yes %v, want %v %v", got.confirms, got.yes, tt.want.confirms, tt.want.yes)
			}
			switch got.command {
			case cmdDLQList:
				if got.list.kafka = nil; !reflect.DeepEqual(got.list, tt.want.list) {
					t.Errorf("list options: got %+v, want %+v", got.list, tt.want.list)
				}
			case cmdDLQShow:
				if got.show.kafka = nil; !reflect.DeepEqual(got.show, tt.want.show) {
					t.Errorf("show options: got %+v, want %+v", got.show, tt.want.show)
				}
			case cmdDLQRedrive:
				if got.redrive.kafka = nil; !reflect.DeepEqual(got.redrive, tt.want.redrive) {
					t.Errorf("redrive options: got %+v, want %+v", got.redrive, tt.want.redrive)
				}
			case cmdSagaList:
				if !reflect.DeepEqual(got.sagaList, tt.want.sagaList) {
					t.Errorf("saga list options: got %+v, want %+v", got.sagaList, tt.want.sagaList)
				}
			case cmdSagaCompensate:
				if got.compensate.kafka = nil; !reflect.DeepEqual(got.compensate, tt.want.compensate) {
					t.Errorf("compensate options: got %+v, want %+v", got.compensate, tt.want.compensate)
				}
			case cmdAuditList:
				if got.auditList.kafka = nil; !reflect.DeepEqual(got.auditList, tt.want.auditList) {
					t.Errorf("audit list options: got %+v, want %+v", got.auditList, tt.want.auditList)
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
		{[]string{"saga", "list", "-h"}, "Usage: sagactl saga list"},
		{[]string{"help", "saga", "compensate"}, "Usage: sagactl saga compensate"},
		{[]string{"dlq", "show", "-h"}, "Usage: sagactl dlq show"},
		{[]string{"audit", "list", "-h"}, "Usage: sagactl audit list"},
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
			wants := []string{"--kafka-brokers", "Exit status: 0 on success; 1 when", "2 for invalid flags"}
			if strings.HasPrefix(tt.want, "Usage:") {
				wants = append(wants, "-o, --output")
			}
			for _, want := range wants {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("stdout: got\n%s\nwant it to contain %q", stdout.String(), want)
				}
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
