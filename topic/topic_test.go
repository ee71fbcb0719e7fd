package topic_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/ksaga/ksaga/internal/kfaketest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/topic"
)

// topicConfig returns a topic's config key as the broker reports it.
func topicConfig(t *testing.T, adm *kadm.Client, topic, key string) string {
	t.Helper()
	rcs, err := adm.DescribeTopicConfigs(context.Background(), topic)
	if err != nil {
		t.Fatalf("describe configs of %s: %v", topic, err)
	}
	rc, err := rcs.On(topic, nil)
	if err != nil || rc.Err != nil {
		t.Fatalf("describe configs of %s: %v %v", topic, err, rc.Err)
	}
	for _, c := range rc.Configs {
		if c.Key == key {
			return c.MaybeValue()
		}
	}
	return ""
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestCreateTopicsConfigs creates the topics on an empty cluster and checks
// each one's configs: compacted state, dead letters kept forever or for
// --dlt-retention, and min.insync.replicas=2 from replication factor 3 on.
func TestCreateTopicsConfigs(t *testing.T) {
	inbox, state, dlt := message.Inbox("order"), message.State("order"), message.DLT("order")
	audit := topic.Audit("order")
	cmdsDLT := topic.CommandsDLT("payment")
	tests := []struct {
		name string
		spec topic.Spec
		want map[string]map[string]string // topic → key → value
	}{
		{
			name: "one replica, dead letters kept forever",
			spec: topic.Spec{Partitions: 3, ReplicationFactor: 1},
			want: map[string]map[string]string{
				inbox:   {"cleanup.policy": "delete", "min.insync.replicas": "1"},
				state:   {"cleanup.policy": "compact", "min.insync.replicas": "1"},
				dlt:     {"retention.ms": "-1", "min.insync.replicas": "1"},
				audit:   {"retention.ms": "-1", "min.insync.replicas": "1"},
				cmdsDLT: {"retention.ms": "-1"},
			},
		},
		{
			name: "three replicas, dead letters kept 30 days",
			spec: topic.Spec{Partitions: 3, ReplicationFactor: 3, DLTRetention: 720 * time.Hour},
			want: map[string]map[string]string{
				inbox:                        {"cleanup.policy": "delete", "min.insync.replicas": "2"},
				state:                        {"cleanup.policy": "compact", "min.insync.replicas": "2"},
				dlt:                          {"retention.ms": "2592000000", "min.insync.replicas": "2"},
				audit:                        {"retention.ms": "-1", "min.insync.replicas": "2"},
				cmdsDLT:                      {"retention.ms": "2592000000", "min.insync.replicas": "2"},
				message.Commands("shipping"): {"min.insync.replicas": "2", "retention.ms": "604800000"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, adm := kfaketest.NewAdmin(t, 3)
			if err := topic.Create(context.Background(), adm, tt.spec, orderTopics(tt.spec), discard); err != nil {
				t.Fatalf("Create: %v", err)
			}
			for topic, kv := range tt.want {
				for k, v := range kv {
					if got := topicConfig(t, adm, topic, k); got != v {
						t.Errorf("%s %s: got %q, want %q", topic, k, got, v)
					}
				}
			}
		})
	}
}

// TestCreateTopicsChecksExisting creates mismatching topics first: Create
// must refuse them with one message that says what to fix, and create
// nothing when the mismatch is found before.
func TestCreateTopicsChecksExisting(t *testing.T) {
	inbox, state := message.Inbox("order"), message.State("order")
	compact := map[string]*string{"cleanup.policy": ptr("compact")}
	type existing struct {
		name       string
		partitions int32
		configs    map[string]*string
	}
	tests := []struct {
		name     string
		existing []existing
		want     string
	}{
		{
			name:     "inbox and state differ",
			existing: []existing{{inbox, 6, nil}, {state, 3, compact}},
			want: "topic saga.order.inbox has 6 partitions but saga.order.state has 3: they must match, since the engine writes " +
				"each saga's state to the state partition numbered like its inbox partition; delete the topic that was created with " +
				"the wrong count and restart with --partitions set to the other's (never add partitions to either topic: that moves sagas in flight)",
		},
		{
			name:     "state exists with another count than --partitions",
			existing: []existing{{state, 4, compact}},
			want: "topic saga.order.state has 4 partitions but saga.order.inbox does not exist and --partitions is 3: they must match, " +
				"since the engine writes each saga's state to the state partition numbered like its inbox partition; restart with --partitions 4",
		},
		{
			name:     "state not compacted",
			existing: []existing{{inbox, 3, nil}, {state, 3, nil}},
			want: "topic saga.order.state has cleanup.policy=delete, want compact: the engine restores each saga from its latest state, " +
				"which time-based retention deletes; fix it with: kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics " +
				"--entity-name saga.order.state --add-config cleanup.policy=compact",
		},
		{
			name:     "state compacted and deleted",
			existing: []existing{{state, 3, map[string]*string{"cleanup.policy": ptr("compact,delete")}}},
			want: "topic saga.order.state has cleanup.policy=compact,delete, want compact: the engine restores each saga from its latest state, " +
				"which time-based retention deletes; fix it with: kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics " +
				"--entity-name saga.order.state --add-config cleanup.policy=compact",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, adm := kfaketest.NewAdmin(t, 1)
			ctx := context.Background()
			for _, tp := range tt.existing {
				if _, err := adm.CreateTopic(ctx, tp.partitions, 1, tp.configs, tp.name); err != nil {
					t.Fatalf("create %s: %v", tp.name, err)
				}
			}
			spec := topic.Spec{Partitions: 3, ReplicationFactor: 1}
			err := topic.Create(ctx, adm, spec, orderTopics(spec), discard)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Create:\n got %v\nwant %s", err, tt.want)
			}
			tds, err := adm.ListTopics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := len(tds), len(tt.existing); got != want {
				t.Errorf("topics after the refusal: got %v, want only the %d that existed", tds.Names(), want)
			}
		})
	}
}

func ptr(s string) *string { return &s }

// orderTopics are the topics of the order saga and its participants.
func orderTopics(spec topic.Spec) []topic.Topic {
	ts := topic.OfSagaType("order", spec)
	for _, p := range []string{"inventory", "payment", "shipping"} {
		ts = append(ts, topic.OfParticipant(p, spec)...)
	}
	return ts
}

// TestOfSagaTypeNames pins the topics of a saga type and their order: the
// audit topic of sagactl comes last, kept for ever whatever the dead
// letters' retention.
func TestOfSagaTypeNames(t *testing.T) {
	ts := topic.OfSagaType("order", topic.Spec{Partitions: 3, ReplicationFactor: 1, DLTRetention: time.Hour})
	var names []string
	for _, tp := range ts {
		names = append(names, tp.Name)
	}
	want := []string{"saga.order.inbox", "saga.order.state", "saga.order.events", "saga.order.inbox-dlt", "saga.order.audit"}
	if !slices.Equal(names, want) {
		t.Fatalf("topics: got %v, want %v", names, want)
	}
	if got := ts[4].Configs["retention.ms"]; got != "-1" {
		t.Errorf("audit retention.ms: got %q, want -1", got)
	}
	if got := topic.Audit("order"); got != want[4] {
		t.Errorf("Audit: got %q, want %q", got, want[4])
	}
}
