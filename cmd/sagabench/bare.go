package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
)

// The bare loop is the floor the engine is measured against: the engine's
// Kafka work without its saga logic. It is a GroupTransactSession with the
// engine's options that reads the inbox records of the scenarios again and,
// per record, produces the engine's mix of output records — per topic, the
// same records per inbox record and bytes per record, measured from the
// engines' kprom metrics — to sagabench.bare.<topic>, then after each
// commit writes the batch's "states" to Redis in one pipeline.

// bareTopicPrefix names the bare loop's output topics.
const bareTopicPrefix = "sagabench.bare."

// mixTopic is one output topic of the engine and its share of the output.
type mixTopic struct {
	topic    string // the engine's topic
	bare     string // the bare loop's copy
	perInbox float64
	// recordBytes is the mean uncompressed size of a record as kgo
	// serializes it in a batch.
	recordBytes float64
	headers     []kgo.RecordHeader
	// state records go to the inbox record's partition, as the engine's
	// states do, and are written to Redis after the commit.
	state bool
	acc   float64
}

// mix returns the engines' output per inbox record, by topic.
func (o *output) mix() []*mixTopic {
	var ts []*mixTopic
	for topic, n := range o.records {
		if n <= 0 || o.inbox <= 0 {
			continue
		}
		t := &mixTopic{
			topic: topic, bare: bareTopicPrefix + topic,
			perInbox: n / o.inbox, recordBytes: o.bytes[topic] / n,
			headers: headersLike(topic), state: topic == message.State(order.Name),
		}
		ts = append(ts, t)
	}
	slices.SortFunc(ts, func(a, b *mixTopic) int { return strings.Compare(a.topic, b.topic) })
	return ts
}

// headersLike returns headers shaped like those the engine puts on records
// of topic (names and typical value lengths).
func headersLike(topic string) []kgo.RecordHeader {
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	id := "b00000000-0-00000"
	switch {
	case strings.HasSuffix(topic, ".commands"):
		return []kgo.RecordHeader{
			h(message.HeaderSagaID, id), h(message.HeaderSagaType, order.Name),
			h(message.HeaderMessageType, order.ReserveInventory), h(message.HeaderMessageID, id+"/"+order.StepReserveInventory+"/do"),
			h(message.HeaderStep, order.StepReserveInventory), h(message.HeaderStepAttempt, "1"),
			h(message.HeaderReplyTo, message.Inbox(order.Name)),
		}
	case topic == message.Events(order.Name):
		return []kgo.RecordHeader{h(message.HeaderSagaID, id), h(message.HeaderSagaType, order.Name), h(message.HeaderMessageType, message.EventStepSucceeded)}
	case topic == message.Inbox(order.Name):
		return []kgo.RecordHeader{
			h(message.HeaderSagaID, id), h(message.HeaderSagaType, order.Name),
			h(message.HeaderMessageType, message.TypeTimeout), h(message.HeaderMessageID, id+"/timeout/1700000000000"),
		}
	}
	return nil
}

// filler is the value bytes of the bare loop's records: JSON like the
// engine's, so that compression treats both alike.
var filler = bytes.Repeat([]byte(`{"saga_id":"b1f2e3d4-1-12345","saga_type":"order","version":3,"status":"running","step":1,"undoing":-1,"waiting":"b1f2e3d4-1-12345/authorize-payment/do","attempt":1,"deadline_ms":1767225600000,"step_started_ms":1767225570000,"start_hash":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","data":{"order_id":"b1f2e3d4-1-12345","customer_id":"c-42","amount_cents":4599,"currency":"EUR","items":[{"sku":"bench-sku-1","qty":2}],"ship_to":{"country":"DE","city":"Berlin"}},"created_at":"2026-01-01T00:00:00.123456789Z","updated_at":"2026-01-01T00:00:00.234567891Z"}`), 64)

// varintLen is the length of n as a Kafka (zigzag) varint.
func varintLen(n int) int {
	z := uint64(n) << 1
	l := 1
	for z >= 0x80 {
		z >>= 7
		l++
	}
	return l
}

// valueLen returns the value length that makes a record with this key and
// t's headers serialize to about t.recordBytes, as kgo counts them (length
// prefix, attributes, timestamp and offset deltas, key, value, headers).
func (t *mixTopic) valueLen(keyLen int) int {
	fixed := 1 + 1 + 2 + varintLen(keyLen) + keyLen + varintLen(len(t.headers))
	for _, h := range t.headers {
		fixed += varintLen(len(h.Key)) + len(h.Key) + varintLen(len(h.Value)) + len(h.Value)
	}
	target := int(t.recordBytes + 0.5)
	for v := max(0, target-fixed-4); v <= target; v++ {
		body := fixed + varintLen(v) + v
		if varintLen(body)+body >= target {
			return min(v, len(filler))
		}
	}
	return 0
}

// produceCounter counts what a client produced, as kprom does.
type produceCounter struct {
	mu      sync.Mutex
	records map[string]float64
	bytes   map[string]float64
}

var _ kgo.HookProduceBatchWritten = (*produceCounter)(nil)

func (c *produceCounter) OnProduceBatchWritten(_ kgo.BrokerMetadata, topic string, _ int32, m kgo.ProduceBatchMetrics) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.records[topic] += float64(m.NumRecords)
	c.bytes[topic] += float64(m.UncompressedBytes)
}

// bareOutput is what the bare loop produced, for the report.
type bareOutput struct {
	inbox          float64
	records, bytes float64
}

// bareLoop runs the bare loop over the inbox records of the scenarios and
// returns its row.
func (b *bench) bareLoop(ctx context.Context) (row, error) {
	mix := b.engineOutput.mix()
	want := int64(b.engineOutput.inbox)
	if len(mix) == 0 || want == 0 {
		return row{}, errors.New("bare loop: the engines' metrics show no output to copy (no ksaga_kafka_produce_records_total{client=\"engine\"})")
	}
	// The engine is idle now; stop it so that it takes no CPU or memory.
	if b.engine != nil {
		b.engine.stop(stopGrace)
		b.engine = nil
	}
	if err := b.createBareTopics(ctx, mix); err != nil {
		return row{}, err
	}
	inbox := message.Inbox(order.Name)
	group := "sagabench-bare-" + b.runID
	offs := make(kadm.Offsets)
	for p, o := range b.inboxStart {
		offs.Add(kadm.Offset{Topic: inbox, Partition: p, At: o, LeaderEpoch: -1})
	}
	if len(offs) > 0 {
		if err := b.adm.CommitAllOffsets(ctx, group, offs); err != nil {
			return row{}, fmt.Errorf("bare loop: commit its start offsets: %w", err)
		}
	}
	var stateTopic string
	for _, t := range mix {
		if t.state {
			stateTopic = t.bare
		}
	}
	counter := &produceCounter{records: make(map[string]float64), bytes: make(map[string]float64)}
	sess, err := kgo.NewGroupTransactSession(
		kgo.SeedBrokers(b.brokers...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(inbox),
		kgo.TransactionalID(group),
		kgo.TransactionTimeout(10*time.Second),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.RequireStableFetchOffsets(),
		kgo.RecordPartitioner(manualPartitioner(stateTopic)),
		kgo.ProducerBatchMaxBytes(4<<20),
		kgo.ProducerLinger(0),
		kgo.WithHooks(counter),
	)
	if err != nil {
		return row{}, fmt.Errorf("bare loop: kafka client: %w", err)
	}
	defer sess.Close()

	b.logf("bare loop: %d inbox records", want)
	cpu0 := b.cpuNow()
	var (
		consumed, txns, trips int64
		first, last           time.Time
		lastLog               = time.Now()
		idleSince             = time.Now()
	)
	for consumed < want {
		if ctx.Err() != nil {
			return row{}, ctx.Err()
		}
		pollCtx, cancel := context.WithTimeout(ctx, time.Second)
		fetches := sess.PollRecords(pollCtx, b.cfg.maxPoll)
		cancel()
		recs := fetches.Records()
		if len(recs) == 0 {
			if time.Since(idleSince) > b.cfg.stallTimeout {
				return row{}, fmt.Errorf("bare loop: no inbox record for %v after %d of %d", b.cfg.stallTimeout, consumed, want)
			}
			continue
		}
		idleSince = time.Now()
		if first.IsZero() {
			first = time.Now()
		}
		committed, n, err := b.bareBatch(ctx, sess, mix, recs)
		if err != nil {
			return row{}, err
		}
		trips += n
		if committed {
			txns++
			consumed += int64(len(recs))
			last = time.Now()
		}
		if time.Since(lastLog) >= progressPeriod {
			lastLog = time.Now()
			b.logf("bare loop: %d of %d inbox records", consumed, want)
		}
	}
	cpu := b.cpuNow().since(cpu0)
	secs := last.Sub(first).Seconds()
	var out bareOutput
	out.inbox = float64(consumed)
	counter.mu.Lock()
	for topic, n := range counter.records {
		if strings.HasPrefix(topic, bareTopicPrefix) {
			out.records += n
			out.bytes += counter.bytes[topic]
		}
	}
	counter.mu.Unlock()
	b.bareOut = out
	r := row{
		name: "bare loop", bare: true, elapsed: last.Sub(first),
		inboxPerSec: float64(consumed) / secs, ratio: 1,
		txnPerSec: float64(txns) / secs, recsPerTxn: float64(consumed) / float64(txns),
		redisRT: float64(trips) / float64(txns), cpu: cpu,
	}
	b.logf("bare loop: %.0f inbox records/s", r.inboxPerSec)
	return r, nil
}

// bareBatch runs one transaction of the bare loop and, once committed, its
// Redis pipeline. It returns the Redis round trips made.
func (b *bench) bareBatch(ctx context.Context, sess *kgo.GroupTransactSession, mix []*mixTopic, recs []*kgo.Record) (bool, int64, error) {
	if err := sess.Begin(); err != nil {
		return false, 0, fmt.Errorf("bare loop: begin: %w", err)
	}
	var produceErr atomic.Pointer[error]
	var states []*kgo.Record
	for _, in := range recs {
		for _, t := range mix {
			t.acc += t.perInbox
			for ; t.acc >= 1; t.acc-- {
				r := &kgo.Record{Topic: t.bare, Key: in.Key, Value: filler[:t.valueLen(len(in.Key))], Headers: t.headers}
				if t.state {
					r.Partition = in.Partition
					states = append(states, r)
				}
				sess.Produce(ctx, r, func(_ *kgo.Record, err error) {
					if err != nil {
						produceErr.CompareAndSwap(nil, &err)
					}
				})
			}
		}
	}
	if err := sess.Client().Flush(ctx); err != nil {
		return false, 0, fmt.Errorf("bare loop: flush: %w", err)
	}
	if p := produceErr.Load(); p != nil {
		if _, err := sess.End(ctx, kgo.TryAbort); err != nil {
			return false, 0, fmt.Errorf("bare loop: abort: %w", err)
		}
		return false, 0, fmt.Errorf("bare loop: produce: %w", *p)
	}
	committed, err := sess.End(ctx, kgo.TryCommit)
	if err != nil {
		return false, 0, fmt.Errorf("bare loop: commit: %w", err)
	}
	if !committed || len(states) == 0 {
		return committed, 0, nil
	}
	// One pipelined round trip: the states, then each partition's
	// checkpoint.
	pipe := b.rdb.Pipeline()
	marks := make(map[int32]int64)
	for _, r := range states {
		pipe.HSet(ctx, "sagabench:bare:state:"+string(r.Key), "state", r.Value)
		marks[r.Partition] = max(marks[r.Partition], r.Offset+1)
	}
	for p, o := range marks {
		pipe.Set(ctx, "sagabench:bare:checkpoint:"+strconv.Itoa(int(p)), o, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return true, 1, fmt.Errorf("bare loop: redis: %w", err)
	}
	return true, 1, nil
}

// createBareTopics creates the bare loop's output topics (the state copy
// compacted), with the scenario topics' partitions.
func (b *bench) createBareTopics(ctx context.Context, mix []*mixTopic) error {
	compact := "compact"
	for _, t := range mix {
		var configs map[string]*string
		if t.state {
			configs = map[string]*string{"cleanup.policy": &compact}
		}
		resp, err := b.adm.CreateTopic(ctx, int32(b.cfg.partitions), int16(b.cfg.replicationFactor), configs, t.bare)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("bare loop: create topic %s: %w", t.bare, err)
		}
	}
	return nil
}

// manualPartitioner sends records of the topics named to the partition set
// on the record, and hashes the key elsewhere, as the engine's does.
func manualPartitioner(manual string) kgo.Partitioner {
	byKey := kgo.StickyKeyPartitioner(nil)
	return kgo.BasicConsistentPartitioner(func(topic string) func(*kgo.Record, int) int {
		if topic == manual {
			return func(r *kgo.Record, _ int) int { return int(r.Partition) }
		}
		tp := byKey.ForTopic(topic)
		return func(r *kgo.Record, n int) int { return tp.Partition(r, n) }
	})
}
