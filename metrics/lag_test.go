package metrics

import (
	"context"
	"strings"
	"testing"
	"time"

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
	lag, err := NewLag(reg, cl)
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

// TestLagSeconds checks ksaga_consumer_lag_seconds against partitions whose
// offset lag is made of transaction markers, an aborted transaction, or
// records that wait, and that a partition is fetched again only when
// something changed.
func TestLagSeconds(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "in"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	now := time.Now().Truncate(time.Millisecond)
	ago := func(s int) time.Time { return now.Add(-time.Duration(s) * time.Second) }

	txn, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic("in"),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.TransactionalID("lag-test"))
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Close()
	// inTxn produces records to partition p in one transaction, committed
	// or aborted.
	inTxn := func(p int32, commit bool, stamps ...time.Time) {
		t.Helper()
		if err := txn.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for _, ts := range stamps {
			if err := txn.ProduceSync(ctx, &kgo.Record{Partition: p, Value: []byte("x"), Timestamp: ts}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		if err := txn.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic("in"),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	// Partition 0: two records consumed; only their marker is left.
	inTxn(0, true, ago(100), ago(100))
	// Partition 1: a record consumed, then one that has waited 90s.
	inTxn(1, true, ago(200))
	inTxn(1, true, ago(90))
	// Partition 2: a record consumed, then an aborted transaction.
	inTxn(2, true, ago(200))
	inTxn(2, false, ago(80), ago(80))
	// Partition 3: records outside transactions, never consumed (no
	// committed offset): the first has waited 30s.
	for _, s := range []int{30, 20, 10} {
		if err := cl.ProduceSync(ctx, &kgo.Record{Partition: 3, Value: []byte("x"), Timestamp: ago(s)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	commit := func(at map[int32]int64) {
		t.Helper()
		os := make(kadm.Offsets)
		for p, o := range at {
			os.Add(kadm.Offset{Topic: "in", Partition: p, At: o, LeaderEpoch: -1})
		}
		if _, err := kadm.NewClient(cl).CommitOffsets(ctx, "g", os); err != nil {
			t.Fatal(err)
		}
	}
	commit(map[int32]int64{0: 2, 1: 1, 2: 1})

	reg := prometheus.NewRegistry()
	lag, err := NewLag(reg, cl)
	if err != nil {
		t.Fatal(err)
	}
	lag.ttl, lag.now = 0, func() time.Time { return now }
	lag.Watch("g", "in")
	check := func(when, want string) {
		t.Helper()
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ksaga_consumer_lag", "ksaga_consumer_lag_seconds", "ksaga_consumer_lag_errors_total"); err != nil {
			t.Errorf("%s: %v", when, err)
		}
	}
	const help = `
# HELP ksaga_consumer_lag Offsets of a partition that the consumer group has not consumed yet: the last stable offset minus the committed offset. Transaction markers count, so a fully consumed partition written in transactions shows one or a few.
# TYPE ksaga_consumer_lag gauge
# HELP ksaga_consumer_lag_errors_total Scrapes that could not read a consumer group's lag from Kafka.
# TYPE ksaga_consumer_lag_errors_total counter
ksaga_consumer_lag_errors_total{group="g"} 0
# HELP ksaga_consumer_lag_seconds How long the first record that the consumer group has not consumed yet has waited: now minus its timestamp (0 when no record waits; transaction markers and aborted records do not count).
# TYPE ksaga_consumer_lag_seconds gauge
`
	check("first scrape", help+`
ksaga_consumer_lag{group="g",partition="0",topic="in"} 1
ksaga_consumer_lag{group="g",partition="1",topic="in"} 3
ksaga_consumer_lag{group="g",partition="2",topic="in"} 4
ksaga_consumer_lag{group="g",partition="3",topic="in"} 3
ksaga_consumer_lag_seconds{group="g",partition="0",topic="in"} 0
ksaga_consumer_lag_seconds{group="g",partition="1",topic="in"} 90
ksaga_consumer_lag_seconds{group="g",partition="2",topic="in"} 0
ksaga_consumer_lag_seconds{group="g",partition="3",topic="in"} 30
`)
	fetches := func() int {
		lag.mu.Lock()
		defer lag.mu.Unlock()
		return lag.fetches
	}
	first := fetches()
	if first == 0 {
		t.Fatal("first scrape: no fetch, want one per partition with an offset lag")
	}

	// Nothing changed: the next scrape reads offsets only.
	now = now.Add(10 * time.Second)
	check("nothing changed, 10s later", help+`
ksaga_consumer_lag{group="g",partition="0",topic="in"} 1
ksaga_consumer_lag{group="g",partition="1",topic="in"} 3
ksaga_consumer_lag{group="g",partition="2",topic="in"} 4
ksaga_consumer_lag{group="g",partition="3",topic="in"} 3
ksaga_consumer_lag_seconds{group="g",partition="0",topic="in"} 0
ksaga_consumer_lag_seconds{group="g",partition="1",topic="in"} 100
ksaga_consumer_lag_seconds{group="g",partition="2",topic="in"} 0
ksaga_consumer_lag_seconds{group="g",partition="3",topic="in"} 40
`)
	if got := fetches(); got != first {
		t.Errorf("fetches after a scrape where nothing changed: got %d, want %d", got, first)
	}

	// A record arrives behind partition 0's marker; partition 1's record
	// and partition 3's first two are consumed.
	inTxn(0, true, ago(5))
	commit(map[int32]int64{1: 3, 3: 2})
	check("a record arrived on 0, 1 and 3 consumed", help+`
ksaga_consumer_lag{group="g",partition="0",topic="in"} 3
ksaga_consumer_lag{group="g",partition="1",topic="in"} 1
ksaga_consumer_lag{group="g",partition="2",topic="in"} 4
ksaga_consumer_lag{group="g",partition="3",topic="in"} 1
ksaga_consumer_lag_seconds{group="g",partition="0",topic="in"} 5
ksaga_consumer_lag_seconds{group="g",partition="1",topic="in"} 0
ksaga_consumer_lag_seconds{group="g",partition="2",topic="in"} 0
ksaga_consumer_lag_seconds{group="g",partition="3",topic="in"} 20
`)
	if got := fetches(); got <= first {
		t.Errorf("fetches after new records: got %d, want more than %d", got, first)
	}
}
