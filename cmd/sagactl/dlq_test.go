package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
)

const testTimeout = 5 * time.Second

// listedRecord is a row of dlq list -o json, decoded as a script would.
type listedRecord struct {
	DLT       string `json:"dlt"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
	State     string `json:"state"`
	SagaID    string `json:"saga_id"`
	Message   string `json:"message_type"`
	Reason    string `json:"reason"`
	Attempts  int    `json:"attempts"`
	Original  struct {
		Topic     string `json:"topic"`
		Partition int32  `json:"partition"`
		Offset    int64  `json:"offset"`
	} `json:"original"`
	LastFailure  time.Time `json:"last_failure"`
	Error        string    `json:"error"`
	RedriveOf    string    `json:"redrive_of"`
	DeadLetters  int       `json:"dead_letters"`
	Earlier      []string  `json:"earlier"`
	RedriveCount int       `json:"redrive_count"`
	Redrives     []struct {
		DLT   string    `json:"dlt"`
		At    time.Time `json:"at"`
		By    string    `json:"by"`
		Note  string    `json:"note"`
		Run   string    `json:"run"`
		Group string    `json:"group"`
	} `json:"redrives"`
}

// listJSON runs dlq list -o json through run, as a script would, and
// decodes its stdout with encoding/json.
func listJSON(t *testing.T, brokers []string, extra ...string) []listedRecord {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args := append([]string{"dlq", "list", "--saga", "order", "--kafka-brokers", strings.Join(brokers, ","), "-o", "json", "--timeout", "5s"}, extra...)
	if code := run(testContext(t), args, envOf(), &stdout, &stderr); code != exitOK {
		t.Fatalf("dlq list: exit code %d, stderr %s", code, stderr.String())
	}
	var got []listedRecord
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("dlq list -o json: stdout does not parse: %v\n%s", err, stdout.String())
	}
	return got
}

func ids(recs []listedRecord) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.SagaID)
	}
	return out
}

// endOffsets returns the sum of topic's end offsets: it grows with every
// record and transaction marker written.
func endOffsets(t *testing.T, brokers []string, topic string) int64 {
	t.Helper()
	adm, err := kadm.NewOptClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ends, err := adm.ListEndOffsets(testContext(t), topic)
	if err != nil {
		t.Fatalf("list end offsets of %s: %v", topic, err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

// auditRecords reads the audit topic, expecting want records.
func auditRecords(t *testing.T, brokers []string, want int) []auditRecord {
	t.Helper()
	var out []auditRecord
	for _, r := range consumeAll(t, brokers, audit, want) {
		var a auditRecord
		if err := json.Unmarshal(r.Value, &a); err != nil {
			t.Fatalf("audit record at %d/%d: %v: %s", r.Partition, r.Offset, err, r.Value)
		}
		if got := headerValue(r, message.HeaderAuditAction); got != a.Action {
			t.Errorf("audit record: header %s: got %q, want %q", message.HeaderAuditAction, got, a.Action)
		}
		out = append(out, a)
	}
	return out
}

func TestListDLQ(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	ctx := testContext(t)

	t.Run("table", func(t *testing.T) {
		var io testIO
		if _, err := listDLQ(ctx, brokers, io.streams(), listOptions{sagaType: "order", output: outTable, timeout: testTimeout}); err != nil {
			t.Fatalf("listDLQ: %v", err)
		}
		lines := strings.Split(strings.TrimRight(io.out.String(), "\n"), "\n")
		if len(lines) != 4 {
			t.Fatalf("stdout: got %d lines, want a header and 3 rows:\n%s", len(lines), io.out.String())
		}
		if got := strings.Fields(lines[0]); !slices.Equal(got[:4], []string{"DLT", "ORIGINAL", "SAGA-ID", "MESSAGE"}) {
			t.Errorf("header: got %q", lines[0])
		}
		// Oldest first. DLT offsets: partition 0 holds o-1 at 0 (marker 1),
		// the aborted record at 2 (marker 3), o-3 at 4; partition 1 o-2 at 0.
		want := [][]string{
			{"0:0", "0/10", "o-1", "StartSaga", "undecodable", "1", "1", "0", "pending"},
			{"1:0", "0/11", "o-2", "Timeout", "retries-exhausted", "3", "1", "0", "pending"},
			{"0:4", "0/12", "o-3", "StartSaga", "undecodable", "1", "1", "0", "pending"},
		}
		for i, w := range want {
			f := strings.Fields(lines[i+1])
			if len(f) < len(w)+2 || !slices.Equal(f[:len(w)], w) {
				t.Errorf("row %d: got %q, want it to start with %q", i, f, w)
			}
		}
		if !strings.HasSuffix(lines[1], "unexpected end of JSON input") {
			t.Errorf("row of o-1: got %q, want the error at the end", lines[1])
		}
		// The long error is cut to maxErrorWidth runes.
		if i := strings.Index(lines[2], "orders store:"); i < 0 {
			t.Errorf("row of o-2: got %q, want its error", lines[2])
		} else if msg := lines[2][i:]; utf8.RuneCountInString(msg) != maxErrorWidth || !strings.HasSuffix(msg, "…") {
			t.Errorf("error column: got %q, want %d runes ending in …", msg, maxErrorWidth)
		}
		wantSummary := "3 records of saga.order.inbox-dlt: 3 pending, 0 redriven, 0 invalid; 0 redrives; the topic holds 3 dead letters (redrive history: saga.order.audit)\n"
		if io.err.String() != wantSummary {
			t.Errorf("stderr: got %q, want %q", io.err.String(), wantSummary)
		}
	})

	t.Run("json", func(t *testing.T) {
		got := listJSON(t, brokers)
		if !slices.Equal(ids(got), []string{"o-1", "o-2", "o-3"}) {
			t.Fatalf("saga ids: got %v, want [o-1 o-2 o-3]", ids(got))
		}
		r := got[1]
		if r.DLT != "1:0" || r.Partition != 1 || r.Offset != 0 || r.State != statePending || r.Message != "Timeout" ||
			r.Reason != "retries-exhausted" || r.Attempts != 3 || r.Original.Topic != inbox || r.Original.Offset != 11 ||
			!r.LastFailure.Equal(failedAt.Add(time.Minute)) || r.Error != longError || r.DeadLetters != 1 || r.RedriveCount != 0 || r.Redrives == nil {
			t.Errorf("o-2: got %+v", r)
		}
	})

	t.Run("limit", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		code := run(ctx, []string{"dlq", "list", "--saga", "order", "--kafka-brokers", brokers[0], "--limit", "2", "-o", "json"}, envOf(), &stdout, &stderr)
		var got []listedRecord
		if err := json.Unmarshal(stdout.Bytes(), &got); code != exitOK || err != nil {
			t.Fatalf("exit code %d, decode %v", code, err)
		}
		if !slices.Equal(ids(got), []string{"o-1", "o-2"}) {
			t.Errorf("--limit 2: got %v, want the two oldest", ids(got))
		}
		if !strings.Contains(stderr.String(), "3 records of saga.order.inbox-dlt (showing the first 2: --limit)") {
			t.Errorf("stderr: got %q, want it to say the list was cut", stderr.String())
		}
	})

	t.Run("yaml", func(t *testing.T) {
		var io testIO
		if _, err := listDLQ(ctx, brokers, io.streams(), listOptions{sagaType: "order", output: outYAML, limit: 1, timeout: testTimeout}); err != nil {
			t.Fatalf("listDLQ: %v", err)
		}
		for _, want := range []string{"- dlt: \"0:0\"\n  partition: 0\n  offset: 0\n", "  saga_id: o-1\n", "  original:\n    topic: saga.order.inbox\n", "  redrives: []\n"} {
			if !strings.Contains(io.out.String(), want) {
				t.Errorf("yaml: got\n%s\nwant it to contain %q", io.out.String(), want)
			}
		}
	})

	t.Run("filters", func(t *testing.T) {
		tests := []struct {
			args []string
			want []string
		}{
			{[]string{"--reason", "undecodable"}, []string{"o-1", "o-3"}},
			{[]string{"--saga-id", "o-2"}, []string{"o-2"}},
			{[]string{"--since", deadLetteredAt(1).Format(time.RFC3339)}, []string{"o-2", "o-3"}},
			{[]string{"--until", deadLetteredAt(1).Format(time.RFC3339)}, []string{"o-1"}},
			{[]string{"--since", deadLetteredAt(1).Format(time.RFC3339), "--until", deadLetteredAt(2).Format(time.RFC3339)}, []string{"o-2"}},
			{[]string{"--reason", "undecodable", "--since", deadLetteredAt(1).Format(time.RFC3339)}, []string{"o-3"}},
			{[]string{"--state", "redriven"}, nil},
			{[]string{"--state", "pending", "--saga-id", "o-3"}, []string{"o-3"}},
		}
		for _, tt := range tests {
			if got := ids(listJSON(t, brokers, tt.args...)); !slices.Equal(got, tt.want) {
				t.Errorf("%s: got %v, want %v", tt.args, got, tt.want)
			}
		}
	})
}

// redrive runs redriveDLQ with --yes, as alice, with opt's other fields.
func redrive(t *testing.T, brokers []string, opt redriveOptions) (redriveResult, *testIO) {
	t.Helper()
	var io testIO
	opt.sagaType, opt.yes, opt.by = "order", true, "alice"
	if opt.note == "" {
		opt.note = "orders db back, INC-7"
	}
	if opt.output == "" {
		opt.output = outTable
	}
	opt.timeout = testTimeout
	res, err := redriveDLQ(testContext(t), brokers, io.streams(), opt)
	if err != nil {
		t.Fatalf("redrive: %v\nstdout:\n%s\nstderr:\n%s", err, io.out.String(), io.err.String())
	}
	return res, &io
}

func positions(es []auditEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, posOf(e).String())
	}
	return out
}

func TestRedriveDryRunChangesNothing(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	dltEnd := endOffsets(t, brokers, dlt)

	res, io := redrive(t, brokers, redriveOptions{dryRun: true})
	if got := positions(res.Redriven); !slices.Equal(got, []string{"0:0", "1:0", "0:4"}) || len(res.Audit) != 0 {
		t.Errorf("dry run: got %v and %d audit records, want [0:0 1:0 0:4] and none", got, len(res.Audit))
	}
	wantOut := "would redrive 0:0 o-1 -> saga.order.inbox/0 StartSaga (undecodable)\n" +
		"would redrive 1:0 o-2 -> saga.order.inbox/0 Timeout (retries-exhausted)\n" +
		"would redrive 0:4 o-3 -> saga.order.inbox/0 StartSaga (undecodable)\n"
	if io.out.String() != wantOut {
		t.Errorf("stdout:\ngot\n%s\nwant\n%s", io.out.String(), wantOut)
	}
	if !strings.Contains(io.err.String(), "dry run: would redrive 3 records of saga.order.inbox-dlt; 0 already redriven") {
		t.Errorf("stderr: got %q", io.err.String())
	}
	for topic, want := range map[string]int64{inbox: 0, audit: 0, dlt: dltEnd} {
		if got := endOffsets(t, brokers, topic); got != want {
			t.Errorf("%s: end offsets sum to %d after the dry run, want %d", topic, got, want)
		}
	}
	if got := listJSON(t, brokers); len(got) != 3 || got[0].State != statePending || got[2].State != statePending {
		t.Errorf("dlq list after the dry run: got %+v, want 3 pending", got)
	}

	// -o json prints the plan alone on stdout.
	res, io = redrive(t, brokers, redriveOptions{dryRun: true, limit: 1, output: outJSON})
	var plan redriveResult
	if err := json.Unmarshal(io.out.Bytes(), &plan); err != nil {
		t.Fatalf("dry run -o json: %v\n%s", err, io.out.String())
	}
	if !plan.DryRun || len(plan.Redriven) != 1 || plan.Redriven[0].SagaID != "o-1" || plan.OverLimit != 2 {
		t.Errorf("dry run -o json: got %+v", plan)
	}
}

func TestRedriveLimitAuditAndSecondRun(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	dltEnd := endOffsets(t, brokers, dlt)

	// --limit 2 redrives exactly the two oldest, in one transaction with
	// one audit record.
	res, io := redrive(t, brokers, redriveOptions{limit: 2})
	if got := positions(res.Redriven); !slices.Equal(got, []string{"0:0", "1:0"}) || res.OverLimit != 1 || len(res.Audit) != 1 {
		t.Fatalf("--limit 2: got %v, over limit %d, %d audit records; want [0:0 1:0], 1, 1", got, res.OverLimit, len(res.Audit))
	}
	if want := "redriven 0:0 o-1 -> saga.order.inbox/0 StartSaga (undecodable)\nredriven 1:0 o-2 -> saga.order.inbox/0 Timeout (retries-exhausted)\n"; io.out.String() != want {
		t.Errorf("stdout: got\n%s\nwant\n%s", io.out.String(), want)
	}
	if !strings.Contains(io.err.String(), "redriven 2 records of saga.order.inbox-dlt in 1 transaction, run "+res.Run+", audited in saga.order.audit; 0 already redriven, 0 not matching the filters, 0 invalid, 1 more left by --limit 2") {
		t.Errorf("stderr: got %q", io.err.String())
	}
	checkInbox(t, brokers, map[string]string{"o-1": "0:0", "o-2": "1:0"})
	audits := auditRecords(t, brokers, 1)
	if len(audits) != 1 {
		t.Fatalf("audit records: got %d, want 1", len(audits))
	}
	a := audits[0]
	if a.Action != message.AuditRedrive || a.SagaType != "order" || a.By != "alice" || a.Note != "orders db back, INC-7" || a.Run != res.Run ||
		a.Tool != "sagactl" || a.DLT != dlt || a.Count != 2 || a.Filters == nil || a.Filters.Limit != 2 || time.Since(a.At) > time.Minute {
		t.Errorf("audit record: got %+v", a)
	}
	if got := positions(a.Records); !slices.Equal(got, []string{"0:0", "1:0"}) || a.Records[1].SagaID != "o-2" || a.Records[1].To != inbox+"/0" {
		t.Errorf("audit record entries: got %+v, want 0:0 and 1:0", a.Records)
	}

	// A second run skips them: it redrives the third alone.
	res, _ = redrive(t, brokers, redriveOptions{})
	if got := positions(res.Redriven); !slices.Equal(got, []string{"0:4"}) || res.AlreadyRedriven != 2 || len(res.Audit) != 1 {
		t.Fatalf("second run: got %v, already redriven %d, %d audit records; want [0:4], 2, 1", got, res.AlreadyRedriven, len(res.Audit))
	}
	checkInbox(t, brokers, map[string]string{"o-1": "0:0", "o-2": "1:0", "o-3": "0:4"})

	// A third has nothing to do, and writes nothing.
	auditEnd := endOffsets(t, brokers, audit)
	res, io = redrive(t, brokers, redriveOptions{})
	if len(res.Redriven) != 0 || res.AlreadyRedriven != 3 || len(res.Audit) != 0 {
		t.Errorf("third run: got %+v, want nothing redriven, 3 already redriven", res)
	}
	if !strings.HasPrefix(io.err.String(), "nothing to redrive in saga.order.inbox-dlt: 3 already redriven") {
		t.Errorf("third run: stderr %q", io.err.String())
	}
	if got := endOffsets(t, brokers, audit); got != auditEnd {
		t.Errorf("audit end offsets: got %d after a run with nothing to do, want %d", got, auditEnd)
	}
	if got := endOffsets(t, brokers, dlt); got != dltEnd {
		t.Errorf("dlt end offsets: got %d, want %d: a redrive never writes to the DLT", got, dltEnd)
	}

	// dlq list shows each record redriven once, with who and why.
	for _, r := range listJSON(t, brokers) {
		if r.State != stateRedriven || r.RedriveCount != 1 || len(r.Redrives) != 1 || r.Redrives[0].By != "alice" ||
			r.Redrives[0].Note != "orders db back, INC-7" || r.Redrives[0].DLT != r.DLT || r.Redrives[0].At.IsZero() {
			t.Errorf("dlq list after the redrives: %s: got %+v", r.SagaID, r)
		}
	}
}

// checkInbox checks that the inbox holds exactly one redriven record per
// saga id of want, each the original of its dead letter, with
// ksaga-redrive-of set to want's value.
func checkInbox(t *testing.T, brokers []string, want map[string]string) {
	t.Helper()
	got := consumeAll(t, brokers, inbox, len(want))
	if len(got) != len(want) {
		t.Fatalf("inbox: got %d records, want %d (no duplicates)", len(got), len(want))
	}
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
		if r.Partition != src.Partition || !bytes.Equal(r.Value, src.Value) {
			t.Errorf("%s: got partition %d value %q, want %d %q", key, r.Partition, r.Value, src.Partition, src.Value)
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
		if redriveOf != want[key] {
			t.Errorf("%s: %s: got %q, want %q", key, headerRedriveOf, redriveOf, want[key])
		}
		if !slices.EqualFunc(orig, src.Headers, func(a, b kgo.RecordHeader) bool { return a.Key == b.Key && bytes.Equal(a.Value, b.Value) }) {
			t.Errorf("%s: headers: got %v, want %v", key, orig, src.Headers)
		}
	}
}

// TestRedriveDeadLetteredAgain redrives a record that fails again: its new
// dead letter carries ksaga-redrive-of, and dlq list shows one record with
// two dead letters and one redrive, pending, instead of two pending rows.
func TestRedriveDeadLetteredAgain(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter[:1])
	redrive(t, brokers, redriveOptions{})

	// The engine fails the redriven record again and dead-letters it,
	// headers copied.
	back := consumeAll(t, brokers, inbox, 1)[0]
	again := dlq.New(back, dlt, dlq.Failure{Group: "ksaga-order", Err: errors.New("still broken"), Reason: "retries-exhausted", Attempts: 3, First: failedAt, Last: failedAt})
	again.Partition, again.Timestamp = 1, deadLetteredAt(5)
	produceTxn(t, brokers, true, again)

	got := listJSON(t, brokers)
	if len(got) != 1 {
		t.Fatalf("dlq list: got %d rows (%v), want one for the original", len(got), ids(got))
	}
	r := got[0]
	if r.DLT != "1:0" || r.SagaID != "o-1" || r.State != statePending || r.DeadLetters != 2 || !slices.Equal(r.Earlier, []string{"0:0"}) ||
		r.RedriveOf != "0:0" || r.RedriveCount != 1 || r.Redrives[0].DLT != "0:0" || r.Reason != "retries-exhausted" || r.Attempts != 3 {
		t.Errorf("dlq list: got %+v, want 1:0 pending, 2 dead letters (0:0 earlier), 1 redrive (of 0:0)", r)
	}
	var io testIO
	if _, err := listDLQ(testContext(t), brokers, io.streams(), listOptions{sagaType: "order", output: outTable, timeout: testTimeout}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(io.out.String(), "\n"), "\n")
	if len(lines) != 2 || !slices.Equal(strings.Fields(lines[1])[:9], []string{"1:0", "0/0", "o-1", "StartSaga", "retries-exhausted", "3", "2", "1", "pending"}) {
		t.Errorf("table: got\n%s\nwant one row: 1:0 ... DEAD-LETTERED 2 REDRIVES 1 pending", io.out.String())
	}
	if want := "1 record of saga.order.inbox-dlt: 1 pending, 0 redriven, 0 invalid; 1 redrive; the topic holds 2 dead letters"; !strings.HasPrefix(io.err.String(), want) {
		t.Errorf("stderr: got %q, want %q…", io.err.String(), want)
	}

	// Redriven again: the new dead letter only.
	res, _ := redrive(t, brokers, redriveOptions{})
	if got := positions(res.Redriven); !slices.Equal(got, []string{"1:0"}) || res.AlreadyRedriven != 1 {
		t.Errorf("second redrive: got %v, already %d; want [1:0], 1", got, res.AlreadyRedriven)
	}
	r = listJSON(t, brokers)[0]
	if r.State != stateRedriven || r.RedriveCount != 2 || r.Redrives[1].DLT != "1:0" {
		t.Errorf("dlq list: got %+v, want redriven twice", r)
	}
	if recs := consumeAll(t, brokers, inbox, 2); headerValue(recs[1], headerRedriveOf) != "1:0" {
		t.Errorf("second redrive: %s: got %q, want 1:0", headerRedriveOf, headerValue(recs[1], headerRedriveOf))
	}

	// The dead letter of a record redriven from one that is gone still
	// counts that one.
	orphan := dlq.New(&kgo.Record{Topic: inbox, Offset: 40, Key: []byte("o-9"), Value: []byte(`{}`),
		Headers: []kgo.RecordHeader{{Key: headerRedriveOf, Value: []byte("0:99")}}}, dlt, dlq.Failure{Reason: "invalid"})
	orphan.Timestamp = deadLetteredAt(6)
	produceTxn(t, brokers, true, orphan)
	r = listJSON(t, brokers, "--saga-id", "o-9")[0]
	if r.DeadLetters != 2 || !slices.Equal(r.Earlier, []string{"0:99"}) || r.RedriveOf != "0:99" || r.State != statePending {
		t.Errorf("dead letter of a record redriven from a deleted one: got %+v, want 2 dead letters, 0:99 earlier", r)
	}
}

func TestRedriveConfirmation(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	ctx := testContext(t)
	args := []string{"dlq", "redrive", "--saga", "order", "--kafka-brokers", brokers[0], "--note", "db back", "--as", "alice", "--timeout", "5s"}

	// Not a terminal, no --yes: a usage error, nothing redriven.
	var stdout, stderr bytes.Buffer
	if code := run(ctx, args, envOf(), &stdout, &stderr); code != exitUsage {
		t.Errorf("without --yes, stdin not a terminal: exit code %d, want %d", code, exitUsage)
	}
	if want := "sagactl: dlq redrive: stdin is not a terminal, so sagactl cannot ask for confirmation: pass --yes to go ahead without asking (--dry-run shows what it would do)\n"; stderr.String() != want {
		t.Errorf("stderr: got %q, want %q", stderr.String(), want)
	}

	// A terminal that answers no.
	io := testIO{in: "n\n", terminal: true}
	if code := runStreams(ctx, args, envOf(), io.streams()); code != exitError {
		t.Errorf("answered no: exit code %d, want %d", code, exitError)
	}
	if want := `Redrive 3 records of saga.order.inbox-dlt (retries-exhausted: 1, undecodable: 2) as alice, note "db back"? [y/N] `; !strings.HasPrefix(io.err.String(), want) ||
		!strings.Contains(io.err.String(), "not confirmed: nothing was redriven") {
		t.Errorf("stderr: got %q, want the question and not confirmed", io.err.String())
	}
	if got := endOffsets(t, brokers, inbox) + endOffsets(t, brokers, audit); got != 0 {
		t.Errorf("inbox and audit: end offsets sum to %d, want 0: nothing may be written", got)
	}

	// Yes.
	io = testIO{in: "yes\n", terminal: true}
	if code := runStreams(ctx, args, envOf(), io.streams()); code != exitOK {
		t.Fatalf("answered yes: exit code %d, stderr %s", code, io.err.String())
	}
	checkInbox(t, brokers, map[string]string{"o-1": "0:0", "o-2": "1:0", "o-3": "0:4"})

	// --yes on a pipe.
	writeDeadLetters(t, brokers, []deadLetter{{1, &kgo.Record{Topic: inbox, Offset: 13, Key: []byte("o-4"), Value: []byte(`{}`)}, dlq.Failure{Reason: "undecodable"}}})
	stdout.Reset()
	stderr.Reset()
	if code := run(ctx, append(args, "--yes", "-o", "json"), envOf(), &stdout, &stderr); code != exitOK {
		t.Fatalf("--yes: exit code %d, stderr %s", code, stderr.String())
	}
	var res redriveResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || len(res.Redriven) != 1 || res.Redriven[0].SagaID != "o-4" || len(res.Audit) != 1 {
		t.Errorf("--yes -o json: got %+v (%v), want o-4 redriven with one audit record\n%s", res, err, stdout.String())
	}
}

// TestRedriveRate paces a redrive at 2 records a second on a fake clock:
// the third record goes a second after the first, and a transaction holds
// a second's worth (two records), so two audit records are written.
func TestRedriveRate(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	now := failedAt
	var slept time.Duration
	c := clock{
		now: func() time.Time { return now },
		sleep: func(_ context.Context, d time.Duration) error {
			slept += d
			now = now.Add(d)
			return nil
		},
	}
	res, _ := redrive(t, brokers, redriveOptions{rate: 2, clock: c})
	if len(res.Redriven) != 3 || len(res.Audit) != 2 || len(res.Audit[0].Records) != 2 || res.Audit[0].Run != res.Audit[1].Run {
		t.Errorf("got %d redriven in %d audit records %+v, want 3 in 2 (2+1) of one run", len(res.Redriven), len(res.Audit), res.Audit)
	}
	if slept != time.Second {
		t.Errorf("waited %s, want 1s (records at 0, 0.5s and 1s)", slept)
	}
	if got := auditRecords(t, brokers, 2); len(got) != 2 {
		t.Errorf("audit records: got %d, want 2", len(got))
	}
}

// TestRedriveReason redrives one reason: the others stay where they are,
// pending, for a later run.
func TestRedriveReason(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	dltEnd := endOffsets(t, brokers, dlt)

	res, _ := redrive(t, brokers, redriveOptions{filters: filters{reason: "undecodable"}})
	if got := positions(res.Redriven); !slices.Equal(got, []string{"0:0", "0:4"}) || res.NotMatching != 1 {
		t.Errorf("--reason undecodable: got %v, not matching %d; want [0:0 0:4], 1", got, res.NotMatching)
	}
	if a := res.Audit[0]; a.Filters == nil || a.Filters.Reason != "undecodable" {
		t.Errorf("audit record filters: got %+v", a.Filters)
	}
	if got := endOffsets(t, brokers, dlt); got != dltEnd {
		t.Errorf("dlt end offsets: got %d, want %d: records of other reasons stay where they are", got, dltEnd)
	}
	if got := listJSON(t, brokers, "--state", "pending"); !slices.Equal(ids(got), []string{"o-2"}) {
		t.Errorf("pending after the redrive: got %v, want [o-2]", ids(got))
	}
	res, _ = redrive(t, brokers, redriveOptions{filters: filters{sagaID: "o-2"}})
	if got := positions(res.Redriven); !slices.Equal(got, []string{"1:0"}) || res.AlreadyRedriven != 2 {
		t.Errorf("--saga-id o-2: got %v, already %d; want [1:0], 2", got, res.AlreadyRedriven)
	}
	checkInbox(t, brokers, map[string]string{"o-1": "0:0", "o-2": "1:0", "o-3": "0:4"})
}

// TestRedriveCreatesAuditTopic runs against topics made by a sagad older
// than the audit topic.
func TestRedriveCreatesAuditTopic(t *testing.T) {
	brokers := newClusterWith(t, kfake.SeedTopics(1, inbox), kfake.SeedTopics(2, dlt))
	writeDeadLetters(t, brokers, testLetter)
	var stdout, stderr bytes.Buffer
	run(testContext(t), []string{"dlq", "list", "--saga", "order", "--kafka-brokers", brokers[0]}, envOf(), &stdout, &stderr)
	if !strings.Contains(stderr.String(), "(no topic saga.order.audit yet: no audited redrive)") {
		t.Errorf("dlq list without an audit topic: stderr %q", stderr.String())
	}
	res, io := redrive(t, brokers, redriveOptions{limit: 1})
	if !strings.HasPrefix(io.err.String(), "sagactl: created topic saga.order.audit (2 partitions, replication factor 1, kept for ever)") {
		t.Errorf("stderr: got %q, want it to say it created the audit topic", io.err.String())
	}
	if got := auditRecords(t, brokers, 1); len(got) != 1 || got[0].Run != res.Run {
		t.Errorf("audit records: got %+v, want the run's", got)
	}
}

// TestRedriveLegacyGroupOffsets counts the records below the committed
// offsets of the group of a sagactl older than the audit topic as redriven.
func TestRedriveLegacyGroupOffsets(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	adm, err := kadm.NewOptClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	var offs kadm.Offsets
	offs.Add(kadm.Offset{Topic: dlt, Partition: 0, At: 2, LeaderEpoch: -1})
	if _, err := adm.CommitOffsets(testContext(t), redriveGroup("order"), offs); err != nil {
		t.Fatalf("commit the old group's offsets: %v", err)
	}
	got := listJSON(t, brokers)
	if got[0].SagaID != "o-1" || got[0].State != stateRedriven || len(got[0].Redrives) != 1 || got[0].Redrives[0].Group != redriveGroup("order") {
		t.Errorf("o-1: got %+v, want redriven by the old group", got[0])
	}
	res, _ := redrive(t, brokers, redriveOptions{})
	if got := positions(res.Redriven); !slices.Equal(got, []string{"1:0", "0:4"}) || res.AlreadyRedriven != 1 {
		t.Errorf("redrive: got %v, already %d; want [1:0 0:4], 1", got, res.AlreadyRedriven)
	}
}

// TestRedriveFencesEarlierRun has a run start while another holds an open
// transaction with the shared transactional id: the new run fences it, and
// the old one can no longer commit.
func TestRedriveFencesEarlierRun(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter[:1])
	ctx := testContext(t)
	old, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.TransactionalID(redriveGroup("order")), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := old.ProduceSync(ctx, &kgo.Record{Topic: inbox, Key: []byte("o-1"), Value: []byte("from the fenced run")}).FirstErr(); err != nil {
		t.Fatalf("produce in the old run: %v", err)
	}
	redrive(t, brokers, redriveOptions{})
	if err := old.EndTransaction(ctx, kgo.TryCommit); err == nil {
		t.Errorf("old run: commit succeeded, want it fenced")
	}
	got := consumeAll(t, brokers, inbox, 1)
	if len(got) != 1 || headerValue(got[0], headerRedriveOf) != "0:0" {
		t.Errorf("inbox: got %d records, want only the new run's", len(got))
	}
}

func TestShowDLQ(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	redrive(t, brokers, redriveOptions{limit: 1})
	ctx := testContext(t)

	var stdout, stderr bytes.Buffer
	if code := run(ctx, []string{"dlq", "show", "0:0", "--saga", "order", "--kafka-brokers", brokers[0], "-o", "json"}, envOf(), &stdout, &stderr); code != exitOK {
		t.Fatalf("dlq show: exit code %d, stderr %s", code, stderr.String())
	}
	var got struct {
		listedRecord
		Key     string `json:"key"`
		Value   string `json:"value"`
		Headers []struct {
			Key      string          `json:"key"`
			Value    json.RawMessage `json:"value"`
			Encoding string          `json:"encoding"`
			Time     *time.Time      `json:"time"`
		} `json:"headers"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("dlq show -o json: %v\n%s", err, stdout.String())
	}
	if got.DLT != "0:0" || got.Key != "o-1" || got.Value != `{"order_id":` || got.State != stateRedriven || got.RedriveCount != 1 || got.Redrives[0].By != "alice" {
		t.Errorf("dlq show: got %+v", got)
	}
	want := map[string]string{
		message.HeaderMessageType:       `"StartSaga"`,
		dlq.HeaderOriginalTopic:         `"saga.order.inbox"`,
		dlq.HeaderOriginalPartition:     `0 int32`,
		dlq.HeaderOriginalOffset:        `10 int64`,
		dlq.HeaderOriginalTimestamp:     `1000 int64 1970-01-01T00:00:01Z`,
		dlq.HeaderOriginalConsumerGroup: `"ksaga-order"`,
		dlq.HeaderReason:                `"undecodable"`,
		dlq.HeaderAttempts:              `"1"`,
	}
	seen := 0
	for _, h := range got.Headers {
		w, ok := want[h.Key]
		if !ok {
			continue
		}
		seen++
		g := string(h.Value)
		if h.Encoding != "" {
			g += " " + h.Encoding
		}
		if h.Time != nil {
			g += " " + h.Time.Format(time.RFC3339)
		}
		if g != w {
			t.Errorf("header %s: got %s, want %s", h.Key, g, w)
		}
	}
	if seen != len(want) {
		t.Errorf("headers: got %+v, want %d of them decoded", got.Headers, len(want))
	}

	// The table form, as kubectl describe.
	var io testIO
	if _, err := showDLQ(ctx, brokers, io.streams(), showOptions{sagaType: "order", at: pos{1, 0}, output: outTable, timeout: testTimeout}); err != nil {
		t.Fatalf("dlq show 1:0: %v", err)
	}
	for _, want := range []string{"DLT:           saga.order.inbox-dlt 1:0\n", "State:         pending\n", "Saga ID:       o-2\n",
		"  kafka_dlt-original-offset:         11 (int64)\n", "  kafka_dlt-original-timestamp:      2000 (int64, 1970-01-01T00:00:02Z)\n",
		"Key: o-2\nValue: {\"order_id\":\"o-2\"}\n"} {
		if !strings.Contains(io.out.String(), want) {
			t.Errorf("dlq show 1:0:\n%s\nwant it to contain %q", io.out.String(), want)
		}
	}

	for _, at := range []pos{{0, 1}, {0, 2}, {0, 99}, {5, 0}} {
		var io testIO
		if _, err := showDLQ(ctx, brokers, io.streams(), showOptions{sagaType: "order", at: at, output: outJSON, timeout: testTimeout, idle: time.Second}); !errors.Is(err, errNoRecord) {
			t.Errorf("dlq show %s: got error %v, want errNoRecord", at, err)
		}
	}
}

func TestAuditList(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	res, _ := redrive(t, brokers, redriveOptions{limit: 2})

	var stdout, stderr bytes.Buffer
	if code := run(testContext(t), []string{"audit", "list", "--saga", "order", "--kafka-brokers", brokers[0], "-o", "json"}, envOf(), &stdout, &stderr); code != exitOK {
		t.Fatalf("audit list: exit code %d, stderr %s", code, stderr.String())
	}
	var got []auditRecord
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil || len(got) != 1 || got[0].Run != res.Run || got[0].Count != 2 {
		t.Errorf("audit list -o json: got %+v (%v)", got, err)
	}
	if want := "1 audit record of saga.order.audit: 1 redrive transaction redrove 2 dead letters\n"; stderr.String() != want {
		t.Errorf("stderr: got %q, want %q", stderr.String(), want)
	}
	var io testIO
	if _, err := listAudit(testContext(t), brokers, io.streams(), auditListOptions{sagaType: "order", output: outTable, timeout: testTimeout}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(io.out.String(), "\n"), "\n")
	if len(lines) != 2 || !slices.Equal(strings.Fields(lines[1])[1:6], []string{"dlq-redrive", "alice", "2", "0:0", "1:0"}) {
		t.Errorf("audit list:\n%s", io.out.String())
	}
}

func TestDLQMissingTopic(t *testing.T) {
	brokers := newCluster(t)
	ctx := testContext(t)
	var io testIO
	if _, err := listDLQ(ctx, brokers, io.streams(), listOptions{sagaType: "nosuch", timeout: testTimeout}); !errors.Is(err, errNoTopic) {
		t.Errorf("list: got error %v, want errNoTopic", err)
	}
	if _, err := redriveDLQ(ctx, brokers, io.streams(), redriveOptions{sagaType: "nosuch", dryRun: true, timeout: testTimeout}); !errors.Is(err, errNoTopic) {
		t.Errorf("redrive: got error %v, want errNoTopic", err)
	}
	if _, err := showDLQ(ctx, brokers, io.streams(), showOptions{sagaType: "nosuch", timeout: testTimeout}); !errors.Is(err, errNoTopic) {
		t.Errorf("show: got error %v, want errNoTopic", err)
	}
}

// TestRedriveMaxRedrives redrives a record that fails every time: each
// redrive's dead letter is redriven by the next run until the original has
// been redriven --max-redrives times; then it stays in the DLQ, counted,
// and --max-redrives 0 lifts the limit.
func TestRedriveMaxRedrives(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter[:1])
	failAgain := func(n int) {
		t.Helper()
		back := consumeAll(t, brokers, inbox, n)[n-1]
		again := dlq.New(back, dlt, dlq.Failure{Group: "ksaga-order", Err: errors.New("still broken"), Reason: "retries-exhausted", Attempts: 3, First: failedAt, Last: failedAt})
		again.Timestamp = deadLetteredAt(10 + n)
		produceTxn(t, brokers, true, again)
	}
	for n := 1; n <= 2; n++ {
		res, _ := redrive(t, brokers, redriveOptions{maxRedrives: 2})
		if len(res.Redriven) != 1 || res.OverMaxRedrives != 0 {
			t.Fatalf("redrive %d: got %d redriven, %d over the limit; want 1, 0", n, len(res.Redriven), res.OverMaxRedrives)
		}
		failAgain(n)
	}
	res, _ := redrive(t, brokers, redriveOptions{maxRedrives: 2})
	if len(res.Redriven) != 0 || res.OverMaxRedrives != 1 {
		t.Errorf("third run with --max-redrives 2: got %d redriven, %d over the limit; want 0, 1", len(res.Redriven), res.OverMaxRedrives)
	}
	if r := listJSON(t, brokers)[0]; r.State != statePending || r.RedriveCount != 2 {
		t.Errorf("dlq list: got %+v, want pending, redriven twice", r)
	}
	res, _ = redrive(t, brokers, redriveOptions{})
	if len(res.Redriven) != 1 {
		t.Errorf("--max-redrives 0: got %d redriven, want 1", len(res.Redriven))
	}
}
