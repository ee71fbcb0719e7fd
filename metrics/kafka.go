package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
)

// Kafka returns the kgo option that exports a Kafka client's kprom metrics
// as ksaga_kafka_* with the constant labels saga=sagaType and client=client
// (engine, or the participant's name). Clients of one registry must differ
// in these labels; a participant that serves every saga type of a process
// takes the process's first one. Besides kprom's defaults, produce and
// fetch are counted in records, batches and uncompressed and compressed
// bytes per node and topic. kprom's two gauges named like counters
// (buffered_fetch_records_total, buffered_produce_records_total) are left
// out, so the exposition passes promtool check metrics. The metrics are
// registered when the client is created and unregistered when it is
// closed; kprom panics when a client with the same labels is open on reg
// already.
func Kafka(reg prometheus.Registerer, sagaType, client string) kgo.Opt {
	return kgo.WithHooks(kprom.NewMetrics("ksaga", kprom.Subsystem("kafka"), kprom.Registerer(skipping{reg}),
		kprom.WithStaticLabel(prometheus.Labels{"saga": sagaType, "client": client}),
		kprom.FetchAndProduceDetail(kprom.ByNode, kprom.ByTopic, kprom.Records, kprom.Batches, kprom.UncompressedBytes, kprom.CompressedBytes)))
}

// skipping registers every collector but kprom's misnamed gauges.
type skipping struct{ prometheus.Registerer }

func (r skipping) Register(c prometheus.Collector) error {
	if misnamed(c) {
		return nil
	}
	return r.Registerer.Register(c)
}

func (r skipping) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// misnamed reports whether c describes a gauge whose name ends in _total.
func misnamed(c prometheus.Collector) bool {
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	bad := false
	for d := range ch {
		s := d.String()
		if strings.Contains(s, `"ksaga_kafka_buffered_fetch_records_total"`) || strings.Contains(s, `"ksaga_kafka_buffered_produce_records_total"`) {
			bad = true
		}
	}
	return bad
}
