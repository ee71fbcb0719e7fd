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
)

// Lag exports the consumer lag of consumer groups, read from Kafka at
// scrape time:
//
//	ksaga_consumer_lag{group,topic,partition}               the last stable offset minus the group's committed offset (from the start offset when it has none)
//	ksaga_consumer_committed_offset{group,topic,partition}  the group's committed offset (-1: none)
//	ksaga_consumer_lag_errors_total{group}                  scrapes that could not read a group's lag
//
// The lag counts offsets, not records: every Kafka transaction ends with a
// marker that takes an offset and is never consumed, so a partition that a
// transactional producer writes (replies, timeouts) shows a lag of one or a
// few when fully consumed. Alert on lag that grows, or on a committed
// offset that stands still while the lag is well above zero.
//
// Every instance that watches a group reports the same series (their pod
// labels differ): aggregate them with max by (group, topic, partition).
// Its methods are safe for concurrent use.
type Lag struct {
	adm     *kadm.Client
	timeout time.Duration
	ttl     time.Duration

	lag, committed *prometheus.Desc
	errs           *prometheus.CounterVec

	mu     sync.Mutex
	groups map[string]string // group -> topic
	cached []prometheus.Metric
	at     time.Time
}

// NewLag returns a Lag that reads offsets with adm, registered with reg.
// Watch adds the groups to report. A scrape reads Kafka at most once per
// 5 seconds (later scrapes reuse the result) and waits at most 5 seconds;
// a group whose offsets cannot be read has no lag series in that scrape
// and counts an error. It fails when reg or adm is nil, or reg already
// holds these metrics.
func NewLag(reg prometheus.Registerer, adm *kadm.Client) (*Lag, error) {
	if reg == nil || adm == nil {
		return nil, errors.New("metrics: nil Registerer or admin client")
	}
	l := &Lag{adm: adm, timeout: 5 * time.Second, ttl: 5 * time.Second, groups: make(map[string]string),
		lag: prometheus.NewDesc("ksaga_consumer_lag",
			"Offsets of a partition that the consumer group has not consumed yet: the last stable offset minus the committed offset. Transaction markers count, so a fully consumed partition written in transactions shows one or a few.",
			[]string{"group", "topic", "partition"}, nil),
		committed: prometheus.NewDesc("ksaga_consumer_committed_offset",
			"The consumer group's committed offset of a partition (-1 when it has none).",
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
	}
	return out, nil
}
