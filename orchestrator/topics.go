package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/ctxtime"
)

// ErrTopics is wrapped by Run's error when the saga's topics are missing or
// do not fit together: retrying cannot fix that, an operator must.
var ErrTopics = errors.New("saga topics are not usable")

// checkTopics reads the partition counts of the inbox and the state topic,
// which must be equal (a saga's state lives on the partition of the state
// topic that matches its home partition of the inbox), and the record size
// limits of the topics the engine writes. A transient error is retried.
func (e *Engine) checkTopics(ctx context.Context) error {
	adm := kadm.NewClient(e.sess.Client())
	for failures := 1; ctx.Err() == nil; failures++ {
		err := e.readTopics(ctx, adm)
		if err == nil || errors.Is(err, ErrTopics) {
			return err
		}
		wait := e.cfg.infraBackoff.Backoff(failures + 1)
		e.log.Warn("cannot read the saga's topics; retrying", "err", err, "wait", wait)
		ctxtime.Sleep(ctx, wait)
	}
	return nil
}

func (e *Engine) readTopics(ctx context.Context, adm *kadm.Client) error {
	tds, err := adm.ListTopics(ctx, e.inbox, e.stateTopic)
	if err != nil {
		return err
	}
	counts := make(map[string]int32, 2)
	for _, t := range []string{e.inbox, e.stateTopic} {
		td, ok := tds[t]
		switch {
		case !ok || errors.Is(td.Err, kerr.UnknownTopicOrPartition):
			return fmt.Errorf("%w: topic %s does not exist: create it (sagad creates the saga's topics at start), with as many partitions as %s",
				ErrTopics, t, other(t, e.inbox, e.stateTopic))
		case td.Err != nil:
			return fmt.Errorf("describe topic %s: %w", t, td.Err)
		}
		counts[t] = int32(len(td.Partitions))
	}
	if counts[e.inbox] != counts[e.stateTopic] {
		return fmt.Errorf("%w: %s has %d partitions but %s has %d: a saga's state is kept on the partition of its home inbox partition, so both need the same count (recreate %s with %d partitions and an empty history, or move the sagas to a new saga type)",
			ErrTopics, e.inbox, counts[e.inbox], e.stateTopic, counts[e.stateTopic], e.stateTopic, counts[e.inbox])
	}
	e.nparts = counts[e.inbox]
	for _, t := range []string{e.inbox, e.stateTopic, e.events, e.dlt} {
		if err := e.limits.describe(ctx, adm, t); err != nil {
			e.log.Warn("cannot read the record size limit of a topic; assuming Kafka's default", "topic", t, "err", err)
		}
	}
	return nil
}

func other(t, a, b string) string {
	if t == a {
		return b
	}
	return a
}

// defaultMaxMessageBytes is Kafka's default max.message.bytes (1 MB plus
// the batch overhead). A topic whose limit is not known yet is assumed to
// have it.
const defaultMaxMessageBytes = 1048588

// recordOverhead bounds the bytes a record batch adds to one record: the
// batch header (61 bytes) and the record's own framing (varints, at most
// about 30 bytes), with room to spare.
const recordOverhead = 256

// limits holds the max.message.bytes of the topics the engine writes, as the
// broker reports them. Kafka refuses a record batch over it
// (MESSAGE_TOO_LARGE); the engine keeps every batch within it and
// dead-letters an input whose output would not fit even alone.
type limits struct {
	mu     sync.Mutex
	topics map[string]int
}

func newLimits() *limits { return &limits{topics: make(map[string]int)} }

// batchBytes is the client's per-topic batch cap (kgo calls it from its own
// goroutines when it first produces to a partition).
func (l *limits) batchBytes(topic string) int32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, ok := l.topics[topic]; ok {
		return int32(n)
	}
	return defaultMaxMessageBytes
}

// of returns the limit of topic, asking the broker the first time.
func (l *limits) of(ctx context.Context, cl *kgo.Client, topic string) int {
	l.mu.Lock()
	n, ok := l.topics[topic]
	l.mu.Unlock()
	if ok {
		return n
	}
	if err := l.describe(ctx, kadm.NewClient(cl), topic); err != nil {
		return defaultMaxMessageBytes
	}
	return int(l.batchBytes(topic))
}

// describe asks the broker for topic's max.message.bytes. A topic that
// does not exist yet is left unknown.
func (l *limits) describe(ctx context.Context, adm *kadm.Client, topic string) error {
	rcs, err := adm.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		return err
	}
	rc, err := rcs.On(topic, nil)
	if err != nil {
		return err
	}
	if rc.Err != nil {
		return rc.Err
	}
	for _, c := range rc.Configs {
		if c.Key != "max.message.bytes" || c.Value == nil {
			continue
		}
		n, err := strconv.Atoi(*c.Value)
		if err != nil || n < 1024 {
			return fmt.Errorf("topic %s: max.message.bytes %q is not usable", topic, *c.Value)
		}
		l.mu.Lock()
		l.topics[topic] = n
		l.mu.Unlock()
		return nil
	}
	return nil
}

// recordBytes returns what r weighs alone in a batch, close to how Kafka
// measures it against max.message.bytes.
func recordBytes(r *kgo.Record) int {
	n := len(r.Key) + len(r.Value) + recordOverhead
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value) + 10
	}
	return n
}

// fits reports whether r fits its topic's limit.
func (e *Engine) fits(ctx context.Context, r *kgo.Record) (bool, int, int) {
	limit := e.limits.of(ctx, e.sess.Client(), r.Topic)
	n := recordBytes(r)
	return n <= limit, n, limit
}
