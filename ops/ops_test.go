package ops_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/ops"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/topic"
)

var (
	inbox    = message.Inbox("order")
	dltTopic = message.DLT("order")
	auditTop = topic.Audit("order")
	failedAt = time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newKafka starts an in-process Kafka with the order saga's inbox (three
// partitions) and dead-letter topic (two), and no audit topic: the first
// change creates it.
func newKafka(t *testing.T) ops.Kafka {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, inbox), kfake.SeedTopics(2, dltTopic))
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return ops.Kafka{Brokers: c.ListenAddrs(), Timeout: 5 * time.Second, Idle: 2 * time.Second}
}

// deadLetter writes the dead letter of a start request for saga id, with
// reason, to DLT partition p, committed as the engine writes it.
func deadLetter(t *testing.T, k ops.Kafka, p int32, id, reason string, at time.Time) {
	t.Helper()
	src := &kgo.Record{Topic: inbox, Partition: message.HomePartition(id, 3), Offset: 1, Key: []byte(id), Value: []byte(`{}`),
		Headers: []kgo.RecordHeader{{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)}}}
	r := dlq.New(src, dltTopic, dlq.Failure{Group: "ksaga-order", Err: errors.New("boom"), Reason: reason, Attempts: 3, First: at, Last: at})
	r.Partition, r.Timestamp = p, at
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(testContext(t), r).FirstErr(); err != nil {
		t.Fatalf("produce the dead letter: %v", err)
	}
}

// records returns the sum of topic's end offsets: 0 when nothing was
// ever written to it (or it does not exist).
func records(t *testing.T, k ops.Kafka, topic string) int64 {
	t.Helper()
	adm, err := kadm.NewOptClient(kgo.SeedBrokers(k.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	ends, err := adm.ListEndOffsets(testContext(t), topic)
	if err != nil {
		return 0
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += max(o.Offset, 0) })
	return n
}

func positions(es []audit.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, ops.Position{Partition: e.Partition, Offset: e.Offset}.String())
	}
	return out
}

func TestParsePosition(t *testing.T) {
	tests := []struct {
		in      string
		want    ops.Position
		str     string // want.String()
		wantErr bool
	}{
		{"0:42", ops.Position{Partition: 0, Offset: 42}, "0:42", false},
		{"3/7", ops.Position{Partition: 3, Offset: 7}, "3:7", false},
		{"1:-1", ops.Position{}, "", true},
		{"x:1", ops.Position{}, "", true},
		{"12", ops.Position{}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ops.ParsePosition(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("got %v, %v; want %v, error %t", got, err, tt.want, tt.wantErr)
			}
			if err == nil && got.String() != tt.str {
				t.Errorf("String: got %q, want %q", got.String(), tt.str)
			}
		})
	}
}

func TestFilterMatch(t *testing.T) {
	e := &ops.DeadLetter{SagaID: "o-1", Reason: dlq.ReasonExhausted, Timestamp: failedAt}
	tests := []struct {
		name string
		f    ops.Filter
		want bool
	}{
		{"zero value", ops.Filter{}, true},
		{"reason", ops.Filter{Reason: dlq.ReasonExhausted}, true},
		{"other reason", ops.Filter{Reason: dlq.ReasonUndecodable}, false},
		{"saga id", ops.Filter{SagaID: "o-2"}, false},
		{"since, included", ops.Filter{Since: failedAt}, true},
		{"until, excluded", ops.Filter{Until: failedAt}, false},
		{"window", ops.Filter{Since: failedAt.Add(-time.Hour), Until: failedAt.Add(time.Hour)}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.f.Match(e); got != tt.want {
				t.Errorf("got %t, want %t", got, tt.want)
			}
		})
	}
}

// TestRedriveHooks previews a redrive, then redrives what the preview
// showed, as a console would: a Confirm that says no sends nothing; one
// that says yes gets the previewed records, and Committed sees each
// transaction's audit record. A second run finds them redriven.
func TestRedriveHooks(t *testing.T) {
	k := newKafka(t)
	ctx := testContext(t)
	deadLetter(t, k, 0, "o-1", dlq.ReasonExhausted, failedAt)
	deadLetter(t, k, 1, "o-2", dlq.ReasonExhausted, failedAt.Add(time.Minute))
	deadLetter(t, k, 0, "o-3", dlq.ReasonUndecodable, failedAt.Add(2*time.Minute))
	sel := ops.Selection{Filter: ops.Filter{Reason: dlq.ReasonExhausted}, MaxRedrives: 3}

	preview, err := ops.PreviewRedrive(ctx, k, "order", sel)
	if err != nil {
		t.Fatalf("PreviewRedrive: %v", err)
	}
	if got := positions(preview.Redriven); !preview.DryRun || !slices.Equal(got, []string{"0:0", "1:0"}) || preview.NotMatching != 1 {
		t.Fatalf("preview: got %v (dry run %t, %d not matching), want [0:0 1:0], dry run, 1 not matching", got, preview.DryRun, preview.NotMatching)
	}
	if n := records(t, k, auditTop); n != 0 {
		t.Errorf("preview: the audit topic holds %d records, want none (a preview creates nothing)", n)
	}

	req := ops.RedriveRequest{SagaType: "order", Selection: sel, By: "alice", Note: "db back", Tool: "console",
		Confirm: func([]audit.Entry) error { return ops.ErrNotConfirmed }}
	if _, err := ops.Redrive(ctx, k, req); !errors.Is(err, ops.ErrNotConfirmed) {
		t.Fatalf("Redrive, not confirmed: got error %v, want ErrNotConfirmed", err)
	}
	if n := records(t, k, inbox); n != 0 {
		t.Fatalf("not confirmed: the inbox holds %d records, want none", n)
	}

	var confirmed []audit.Entry
	var committed []audit.Record
	req.Confirm = func(es []audit.Entry) error { confirmed = es; return nil }
	req.Committed = func(a audit.Record) { committed = append(committed, a) }
	res, err := ops.Redrive(ctx, k, req)
	if err != nil {
		t.Fatalf("Redrive: %v", err)
	}
	if !slices.Equal(positions(confirmed), positions(preview.Redriven)) || !slices.Equal(positions(res.Redriven), positions(preview.Redriven)) {
		t.Errorf("confirmed %v, redriven %v; want both the preview's %v", positions(confirmed), positions(res.Redriven), positions(preview.Redriven))
	}
	if len(committed) != 1 || len(res.Audit) != 1 || committed[0].Run != res.Run || committed[0].Tool != "console" || committed[0].By != "alice" {
		t.Errorf("committed %+v, want one audit record of run %s, by alice, tool console", committed, res.Run)
	}
	if n := records(t, k, inbox); n < 2 {
		t.Errorf("the inbox holds %d records, want the 2 redriven", n)
	}

	l, err := ops.ListDeadLetters(ctx, k, "order")
	if err != nil {
		t.Fatalf("ListDeadLetters: %v", err)
	}
	states := map[string]string{}
	for _, e := range l.Originals {
		states[e.SagaID] = e.State
	}
	if want := map[string]string{"o-1": ops.StateRedriven, "o-2": ops.StateRedriven, "o-3": ops.StatePending}; len(states) != 3 ||
		states["o-1"] != want["o-1"] || states["o-2"] != want["o-2"] || states["o-3"] != want["o-3"] {
		t.Errorf("states: got %v, want %v", states, want)
	}
	again, err := ops.PreviewRedrive(ctx, k, "order", sel)
	if err != nil || len(again.Redriven) != 0 || again.AlreadyRedriven != 2 {
		t.Errorf("second preview: got %d to redrive, %d already redriven (%v); want 0 and 2", len(again.Redriven), again.AlreadyRedriven, err)
	}
}

// TestRedriveNeedsAName refuses a redrive whose By is not a name, before
// it reads or writes anything.
func TestRedriveNeedsAName(t *testing.T) {
	k := newKafka(t)
	deadLetter(t, k, 0, "o-1", dlq.ReasonExhausted, failedAt)
	if _, err := ops.Redrive(testContext(t), k, ops.RedriveRequest{SagaType: "order", By: "alice smith", Note: "n"}); err == nil {
		t.Fatal("By with a space: got no error")
	}
	if n := records(t, k, inbox) + records(t, k, auditTop); n != 0 {
		t.Errorf("end offsets sum to %d, want nothing written", n)
	}
}

// putState writes a saga's state to Redis as the engine does, for an inbox
// of 3 partitions, with a field this version of orchestrator.State may
// not know.
func putState(t *testing.T, rdb redis.UniversalClient, id, status string) {
	t.Helper()
	b, err := json.Marshal(orchestrator.State{ID: id, Type: "order", Version: 3, Status: status, Step: 1, Undoing: -1, Updated: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	m["definition_version"] = 2
	b, _ = json.Marshal(m)
	key := orchestrator.StateKey("order", message.HomePartition(id, 3), id)
	if err := rdb.HSet(testContext(t), key, "version", 3, "state", b).Err(); err != nil {
		t.Fatal(err)
	}
}

// TestActions compensates and resumes sagas of the Redis view, refuses
// those in the wrong state or missing, and checks what each sends.
func TestActions(t *testing.T) {
	k := newKafka(t)
	ctx := testContext(t)
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	t.Cleanup(func() { rdb.Close() })
	r := ops.Redis{Client: rdb, Timeout: 5 * time.Second}
	putState(t, rdb, "o-run", message.StatusRunning)
	putState(t, rdb, "o-parked", message.StatusParked)
	putState(t, rdb, "o-done", message.StatusCompleted)

	sg, err := ops.GetSaga(ctx, r, "order", "o-run", 3)
	if err != nil {
		t.Fatalf("GetSaga: %v", err)
	}
	var raw struct {
		DefinitionVersion int `json:"definition_version"`
	}
	if err := json.Unmarshal(sg.Raw, &raw); err != nil || raw.DefinitionVersion != 2 || sg.State.Status != message.StatusRunning || sg.State.Version != 3 {
		t.Errorf("GetSaga: got %+v, definition_version %d; want running, version 3, the raw JSON with definition_version 2", sg.State, raw.DefinitionVersion)
	}
	l, err := ops.ListSagas(ctx, r, "order")
	if err != nil || len(l.Sagas) != 3 || l.Invalid != 0 {
		t.Errorf("ListSagas: got %d sagas, %d invalid (%v), want 3, 0", len(l.Sagas), l.Invalid, err)
	}

	act := func(id string) ops.Action {
		return ops.Action{SagaType: "order", SagaID: id, By: "alice", Note: "customer called"}
	}
	for _, tt := range []struct {
		name string
		do   func(context.Context, ops.Kafka, ops.Redis, ops.Action) (*ops.ActionResult, error)
		id   string
		want error
	}{
		{"compensate a saga that is not there", ops.Compensate, "o-404", ops.ErrSagaNotFound},
		{"compensate an ended saga", ops.Compensate, "o-done", ops.ErrSagaNotRunning},
		{"resume a running saga", ops.Resume, "o-run", ops.ErrSagaNotRunning},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.do(ctx, k, r, act(tt.id)); !errors.Is(err, tt.want) {
				t.Errorf("got error %v, want %v", err, tt.want)
			}
		})
	}
	dry := act("o-run")
	dry.DryRun = true
	res, err := ops.Compensate(ctx, k, r, dry)
	if err != nil || res.Sent || res.Compensation.Request.Partition != message.HomePartition("o-run", 3) {
		t.Fatalf("dry run: got %+v, %v; want the request for the home partition, not sent", res, err)
	}
	if n := records(t, k, inbox) + records(t, k, auditTop); n != 0 {
		t.Fatalf("after the refusals and the dry run: end offsets sum to %d, want nothing written", n)
	}

	var created string
	a := act("o-run")
	a.TopicCreated = func(name string, _, _ int) { created = name }
	if res, err = ops.Compensate(ctx, k, r, a); err != nil || !res.Sent || res.Compensation.Record.Action != message.AuditCompensate {
		t.Fatalf("Compensate: got %+v, %v; want sent, audited as %s", res, err, message.AuditCompensate)
	}
	if created != auditTop {
		t.Errorf("TopicCreated: got %q, want %q", created, auditTop)
	}
	if res, err = ops.Resume(ctx, k, r, act("o-parked")); err != nil || !res.Sent || res.Compensation.Record.Action != message.AuditResume {
		t.Fatalf("Resume: got %+v, %v; want sent, audited as %s", res, err, message.AuditResume)
	}
	if n := records(t, k, inbox); n < 2 {
		t.Errorf("the inbox holds %d records, want the Compensate and the Resume", n)
	}
	log, err := ops.ListAudit(ctx, k, "order")
	if err != nil || len(log.Records) != 2 || log.Records[0].SagaID != "o-run" || log.Records[1].Action != message.AuditResume {
		t.Errorf("ListAudit: got %+v (%v), want the compensate of o-run, then the resume", log, err)
	}
}

// TestConnError: a Kafka that does not answer is a *ConnError that says
// so, within the timeout.
func TestConnError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() }) // accepts into the backlog, never answers
	k := ops.Kafka{Brokers: []string{ln.Addr().String()}, Timeout: time.Second}
	start := time.Now()
	_, err = ops.ListDeadLetters(testContext(t), k, "order")
	var ce *ops.ConnError
	if !errors.As(err, &ce) || ce.Service != "Kafka" || ce.Timeout != time.Second {
		t.Fatalf("got error %v, want a *ConnError of Kafka after 1s", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %s, want about the 1s timeout", took)
	}
}
