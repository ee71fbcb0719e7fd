package metrics

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Lag exports the consumer lag of consumer groups, read from Kafka at
// scrape time:
//
//	ksaga_consumer_lag{group,topic,partition}               the last stable offset minus the group's committed offset (from the start offset when it has none)
//	ksaga_consumer_committed_offset{group,topic,partition}  the group's committed offset (-1: none)
//	ksaga_consumer_lag_seconds{group,topic,partition}       how long the first record after the committed offset has waited (0: none waits)
//	ksaga_consumer_lag_errors_total{group}                  scrapes that could not read a group's lag
//
// The lag counts offsets, not records: every Kafka transaction ends with a
// marker that takes an offset and is never consumed, so a partition that a
// transactional producer writes (replies, timeouts) shows a lag of one or a
// few when fully consumed. Alert on lag that grows; to tell a partition
// where a record waits from one that holds only markers, whatever the
// count, use ksaga_consumer_lag_seconds: the age (now minus its timestamp)
// of the first record the group has yet to consume, read_committed, markers
// and aborted records skipped. To find it the Lag fetches the partition
// from the committed offset, at most once per committed offset: a
// partition whose committed offset stands still costs no more reads once
// its first waiting record is known. A partition it could not read has no
// such series in that scrape, and counts an error.
//
// Every instance that watches a group reports the same series (their pod
// labels differ): aggregate them with max by (group, topic, partition).
// Its methods are safe for concurrent use.
type Lag struct {
	cl      *kgo.Client
	adm     *kadm.Client
	timeout time.Duration
	ttl     time.Duration
	now     func() time.Time

	lag, committed, age *prometheus.Desc
	errs                *prometheus.CounterVec

	mu     sync.Mutex
	groups map[string]string // group -> topic
	cached []prometheus.Metric
	at     time.Time
	// waits holds, per group and partition, what is known of the first
	// record after the committed offset; fetches counts the Fetch
	// requests sent to find it (for tests).
	waits   map[waitKey]*waiting
	fetches int
}

// waitKey names a partition consumed by a group.
type waitKey struct {
	group, topic string
	partition    int32
}

// waiting is what a Lag knows of the first record a group has to consume
// in a partition. The log below the last stable offset does not change, so
// it stays true as long as the committed offset (from) does.
type waiting struct {
	from int64
	// scanned: the offsets [from, scanned) hold no record to consume,
	// only transaction markers and aborted records.
	scanned int64
	// at is the timestamp of the first record at or after from, once
	// found (zero until then).
	at time.Time
}

// NewLag returns a Lag that reads offsets and records with cl, registered
// with reg. Watch adds the groups to report. A scrape reads Kafka at most
// once per 5 seconds (later scrapes reuse the result) and waits at most 5
// seconds; a group whose offsets cannot be read has no lag series in that
// scrape and counts an error. The Lag does not close cl. It fails when reg
// or cl is nil, or reg already holds these metrics.
func NewLag(reg prometheus.Registerer, cl *kgo.Client) (*Lag, error) {
	if reg == nil || cl == nil {
		return nil, errors.New("metrics: nil Registerer or Kafka client")
	}
	l := &Lag{cl: cl, adm: kadm.NewClient(cl), timeout: 5 * time.Second, ttl: 5 * time.Second, now: time.Now,
		groups: make(map[string]string), waits: make(map[waitKey]*waiting),
		lag: prometheus.NewDesc("ksaga_consumer_lag",
			"Offsets of a partition that the consumer group has not consumed yet: the last stable offset minus the committed offset. Transaction markers count, so a fully consumed partition written in transactions shows one or a few.",
			[]string{"group", "topic", "partition"}, nil),
		committed: prometheus.NewDesc("ksaga_consumer_committed_offset",
			"The consumer group's committed offset of a partition (-1 when it has none).",
			[]string{"group", "topic", "partition"}, nil),
		age: prometheus.NewDesc("ksaga_consumer_lag_seconds",
			"How long the first record that the consumer group has not consumed yet has waited: now minus its timestamp (0 when no record waits; transaction markers and aborted records do not count).",
			[]string{"group", "topic", "partition"}, nil),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ksaga", Name: "consumer_lag_errors_total",
			Help: "Scrapes that could not read a consumer group's lag from Kafka."}, []string{"group"}),
	}
	if err := reg.Register(l); err != nil {
		return nil, fmt.Errorf("metrics: register consumer lag: %w", err)
	}
	return l, nil
}

// Watch adds consumer group group, which consumes topic, to the report.
func (l *Lag) Watch(group, topic string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.groups[group] = topic
	l.errs.WithLabelValues(group)
	l.at = time.Time{}
}

func (l *Lag) Describe(ch chan<- *prometheus.Desc) {
	ch <- l.lag
	ch <- l.committed
	ch <- l.age
	l.errs.Describe(ch)
}

func (l *Lag) Collect(ch chan<- prometheus.Metric) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.at) >= l.ttl {
		ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
		l.cached = l.cached[:0]
		for group, topic := range l.groups {
			ms, err := l.read(ctx, group, topic)
			if err != nil {
				l.errs.WithLabelValues(group).Inc()
				continue
			}
			l.cached = append(l.cached, ms...)
		}
		cancel()
		l.at = time.Now()
	}
	for _, m := range l.cached {
		ch <- m
	}
	l.errs.Collect(ch)
}

// read returns the lag metrics of one group.
func (l *Lag) read(ctx context.Context, group, topic string) ([]prometheus.Metric, error) {
	ends, err := l.adm.ListCommittedOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	if err := ends.Error(); err != nil {
		return nil, err
	}
	starts, err := l.adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	offsets, err := l.adm.FetchOffsetsForTopics(ctx, group, topic)
	if err != nil {
		return nil, err
	}
	var out []prometheus.Metric
	var failed error
	var meta *kadm.TopicDetail // read once, when a partition needs a fetch
	now := l.now()
	for p, end := range ends[topic] {
		committed := int64(-1)
		from := starts[topic][p].Offset
		if o, ok := offsets.Lookup(topic, p); ok && o.Err == nil && o.At >= 0 {
			committed, from = o.At, o.At
		}
		part := strconv.Itoa(int(p))
		out = append(out,
			prometheus.MustNewConstMetric(l.lag, prometheus.GaugeValue, float64(max(0, end.Offset-from)), group, topic, part),
			prometheus.MustNewConstMetric(l.committed, prometheus.GaugeValue, float64(committed), group, topic, part))

		key := waitKey{group, topic, p}
		w := l.waits[key]
		if w == nil || w.from != from {
			w = &waiting{from: from, scanned: from}
			l.waits[key] = w
		}
		if w.at.IsZero() && w.scanned < end.Offset {
			if meta == nil && failed == nil {
				md, err := l.adm.Metadata(ctx, topic)
				if err == nil {
					err = md.Topics[topic].Err
				}
				if err != nil {
					failed = err
				} else {
					td := md.Topics[topic]
					meta = &td
				}
			}
			if meta == nil {
				continue // no leaders known: no age this scrape
			}
			if err := l.scan(ctx, meta, p, w, end.Offset); err != nil {
				failed = err
				continue
			}
		}
		age := 0.0
		if !w.at.IsZero() {
			age = max(0, now.Sub(w.at).Seconds())
		}
		out = append(out, prometheus.MustNewConstMetric(l.age, prometheus.GaugeValue, age, group, topic, part))
	}
	if failed != nil {
		// The offsets are reported; the partitions whose first waiting
		// record could not be read are not, and the scrape counts an
		// error.
		l.errs.WithLabelValues(group).Inc()
	}
	return out, nil
}

// maxScanRounds bounds the fetches of one partition in one scrape: each
// skips at least a batch of markers or aborted records.
const maxScanRounds = 8

// scan fetches partition p of meta's topic from w.scanned, read_committed,
// until it finds the first record to consume below end (w.at) or learns
// that there is none (w.scanned = end).
func (l *Lag) scan(ctx context.Context, meta *kadm.TopicDetail, p int32, w *waiting, end int64) error {
	pd, ok := meta.Partitions[p]
	if !ok || pd.Leader < 0 {
		return fmt.Errorf("partition %s/%d has no leader", meta.Topic, p)
	}
	for range maxScanRounds {
		req := kmsg.NewPtrFetchRequest()
		req.ReplicaID = -1
		req.MaxWaitMillis = 0
		req.MinBytes = 1
		req.MaxBytes = scanMaxBytes
		req.IsolationLevel = 1 // read_committed
		req.SessionEpoch = -1  // no fetch session
		rt := kmsg.NewFetchRequestTopic()
		rt.Topic, rt.TopicID = meta.Topic, meta.ID
		rp := kmsg.NewFetchRequestTopicPartition()
		rp.Partition, rp.FetchOffset, rp.PartitionMaxBytes = p, w.scanned, scanMaxBytes
		rt.Partitions = append(rt.Partitions, rp)
		req.Topics = append(req.Topics, rt)
		l.fetches++
		raw, err := l.cl.Broker(int(pd.Leader)).Request(ctx, req)
		if err != nil {
			return err
		}
		resp := raw.(*kmsg.FetchResponse)
		if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
			return err
		}
		if len(resp.Topics) != 1 || len(resp.Topics[0].Partitions) != 1 {
			return fmt.Errorf("fetch of %s/%d: the answer holds %d topics", meta.Topic, p, len(resp.Topics))
		}
		// Markers are kept, so that the scan knows how far it got; kgo
		// drops the records of aborted transactions.
		fp, next := kgo.ProcessFetchPartition(kgo.ProcessFetchPartitionOpts{
			KeepControlRecords: true, Offset: w.scanned, IsolationLevel: kgo.ReadCommitted(),
			Topic: meta.Topic, Partition: p,
		}, &resp.Topics[0].Partitions[0], kgo.DefaultDecompressor(), nil)
		if fp.Err != nil {
			return fmt.Errorf("fetch of %s/%d at %d: %w", meta.Topic, p, w.scanned, fp.Err)
		}
		for _, r := range fp.Records {
			switch {
			case r.Offset >= end:
				w.scanned = end
				return nil
			case r.Attrs.IsControl():
				w.scanned = r.Offset + 1
			default:
				w.at = r.Timestamp
				return nil
			}
		}
		switch {
		case next >= end:
			w.scanned = end
			return nil
		case next > w.scanned:
			w.scanned = next
		case len(fp.Records) == 0:
			return fmt.Errorf("fetch of %s/%d at %d returned nothing below the last stable offset %d", meta.Topic, p, w.scanned, end)
		}
	}
	return fmt.Errorf("fetch of %s/%d: no record to consume found from %d after %d fetches", meta.Topic, p, w.from, maxScanRounds)
}

// scanMaxBytes bounds what a fetch of scan returns. A broker returns at
// least one whole batch, whatever its size.
const scanMaxBytes = 64 << 10
