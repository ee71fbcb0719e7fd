package audit_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/topic"
)

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"alice", true},
		{"bob@example.com", true},
		{"ci-checkout_2.0", true},
		{"line-3", true},
		{"A", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{"-alice", false},
		{".alice", false},
		{"alice smith", false},
		{"alice\nby: root", false},
		{"\x1b[2Jroot", false},
		{"alice\u202e", false},
		{`CORP\alice`, false},
		{"élise", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := audit.ValidName(tc.name)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidName(%q): got %v, want ok %v", tc.name, err, tc.ok)
			}
			if err != nil && !errors.Is(err, audit.ErrInvalidName) {
				t.Errorf("ValidName(%q): got %v, want it to wrap ErrInvalidName", tc.name, err)
			}
		})
	}
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func TestNewCompensation(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	c, err := audit.NewCompensation(audit.Compensate{SagaType: "order", SagaID: "o-7", InboxPartitions: 6, AuditPartitions: 4,
		By: "ci-checkout", Note: "customer cancelled", Tool: "sagad-api", At: at,
		Headers: []kgo.RecordHeader{{Key: message.HeaderTraceParent, Value: []byte("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")}}})
	if err != nil {
		t.Fatal(err)
	}
	req := c.Request
	if req.Topic != "saga.order.inbox" || req.Partition != message.HomePartition("o-7", 6) || string(req.Key) != "o-7" || req.Value != nil {
		t.Errorf("request: got topic %s partition %d key %s value %q, want saga.order.inbox, the home partition, o-7, none", req.Topic, req.Partition, req.Key, req.Value)
	}
	for k, want := range map[string]string{message.HeaderSagaID: "o-7", message.HeaderSagaType: "order", message.HeaderMessageType: message.TypeCompensate,
		message.HeaderReason: "customer cancelled", message.HeaderTraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"} {
		if got := header(req, k); got != want {
			t.Errorf("request header %s: got %q, want %q", k, got, want)
		}
	}
	if id := header(req, message.HeaderMessageID); !strings.HasPrefix(id, "compensate-o-7-") || len(id) != len("compensate-o-7-")+16 {
		t.Errorf("message id %q, want compensate-o-7-<16 hex digits>", id)
	}
	a := c.Audit
	if a.Topic != topic.Audit("order") || a.Partition != message.HomePartition("o-7", 4) || string(a.Key) != "o-7" ||
		header(a, message.HeaderAuditAction) != message.AuditCompensate || header(a, message.HeaderSagaID) != "o-7" {
		t.Errorf("audit record: got topic %s partition %d key %s headers %v", a.Topic, a.Partition, a.Key, a.Headers)
	}
	var r audit.Record
	if err := json.Unmarshal(a.Value, &r); err != nil {
		t.Fatal(err)
	}
	if r.Action != message.AuditCompensate || r.SagaType != "order" || r.SagaID != "o-7" || r.By != "ci-checkout" || r.Note != "customer cancelled" ||
		r.Tool != "sagad-api" || !r.At.Equal(at) || r.Inbox != "saga.order.inbox" || r.Partition == nil || *r.Partition != req.Partition ||
		!strings.HasPrefix(r.Run, "20260301T120000Z-") || r.Run != c.Record.Run {
		t.Errorf("audit record value: got %+v", r)
	}

	for _, tc := range []struct {
		name string
		c    audit.Compensate
		want string
	}{
		{"no id", audit.Compensate{SagaType: "order", InboxPartitions: 1, AuditPartitions: 1, By: "a"}, "needs a saga type and id"},
		{"no partitions", audit.Compensate{SagaType: "order", SagaID: "o-1", By: "a"}, "must be positive"},
		{"free text as by", audit.Compensate{SagaType: "order", SagaID: "o-1", InboxPartitions: 1, AuditPartitions: 1, By: "alice\nroot"}, "not a valid name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := audit.NewCompensation(tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestCommit writes a compensation with Commit on kfake and reads both
// records back with read_committed.
func TestCommit(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, message.Inbox("order")), kfake.SeedTopics(2, topic.Audit("order")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.TransactionalID("audit-test"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	comp, err := audit.NewCompensation(audit.Compensate{SagaType: "order", SagaID: "o-1", InboxPartitions: 3, AuditPartitions: 2, By: "alice", Tool: "test", At: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if err := audit.Commit(ctx, cl, 10*time.Second, comp.Request, comp.Audit); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	rd, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(message.Inbox("order"), topic.Audit("order")),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	got := map[string]int{}
	for len(got) < 2 && ctx.Err() == nil {
		rd.PollFetches(ctx).EachRecord(func(r *kgo.Record) { got[r.Topic]++ })
	}
	if got[message.Inbox("order")] != 1 || got[topic.Audit("order")] != 1 {
		t.Errorf("committed records by topic: got %v, want one on each", got)
	}
}
