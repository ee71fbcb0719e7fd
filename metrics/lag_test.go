package metrics

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestLagAndKafka(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, "in"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	reg := prometheus.NewRegistry()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic("in"),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), Kafka(reg, "order", "engine"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	for i := range 5 {
		if err := cl.ProduceSync(ctx, &kgo.Record{Partition: int32(i % 2), Value: []byte("x")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	adm := kadm.NewClient(cl)
	// The group consumed 2 of partition 0's 3 records; nothing of partition 1's 2.
	os := make(kadm.Offsets)
	os.Add(kadm.Offset{Topic: "in", Partition: 0, At: 2, LeaderEpoch: -1})
	if _, err := adm.CommitOffsets(ctx, "g", os); err != nil {
		t.Fatal(err)
	}
	lag, err := NewLag(reg, adm)
	if err != nil {
		t.Fatal(err)
	}
	lag.Watch("g", "in")
	lag.Watch("missing-topic-group", "nope")
	want := `
# HELP ksaga_consumer_committed_offset The consumer group's committed offset of a partition (-1 when it has none).
# TYPE ksaga_consumer_committed_offset gauge
ksaga_consumer_committed_offset{group="g",partition="0",topic="in"} 2
ksaga_consumer_committed_offset{group="g",partition="1",topic="in"} -1
# HELP ksaga_consumer_lag Offsets of a partition that the consumer group has not consumed yet: the last stable offset minus the committed offset. Transaction markers count, so a fully consumed partition written in transactions shows one or a few.
# TYPE ksaga_consumer_lag gauge
ksaga_consumer_lag{group="g",partition="0",topic="in"} 1
ksaga_consumer_lag{group="g",partition="1",topic="in"} 2
# HELP ksaga_consumer_lag_errors_total Scrapes that could not read a consumer group's lag from Kafka.
# TYPE ksaga_consumer_lag_errors_total counter
ksaga_consumer_lag_errors_total{group="g"} 0
ksaga_consumer_lag_errors_total{group="missing-topic-group"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ksaga_consumer_lag", "ksaga_consumer_committed_offset", "ksaga_consumer_lag_errors_total"); err != nil {
		t.Error(err)
	}
	// A second scrape within the cache's life reads Kafka no more.
	lag.mu.Lock()
	at := lag.at
	lag.mu.Unlock()
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
	lag.mu.Lock()
	if !lag.at.Equal(at) {
		t.Error("a second scrape within 5s read Kafka again")
	}
	lag.mu.Unlock()

	// The Kafka client's metrics: ksaga_kafka_* with saga and client.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		name := mf.GetName()
		if strings.HasPrefix(name, "ksaga_kafka_buffered_") && strings.HasSuffix(name, "_total") && mf.GetType().String() == "GAUGE" {
			t.Errorf("%s: a gauge named like a counter was not left out", name)
		}
		if name != "ksaga_kafka_produce_records_total" {
			continue
		}
		found = true
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["saga"] != "order" || labels["client"] != "engine" {
				t.Errorf("ksaga_kafka_produce_records_total labels %v, want saga=order client=engine", labels)
			}
		}
	}
	if !found {
		t.Error("no ksaga_kafka_produce_records_total")
	}
	if lint, err := testutil.GatherAndLint(reg); err != nil || len(lint) > 0 {
		for _, p := range lint {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}
