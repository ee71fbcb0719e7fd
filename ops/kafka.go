package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
)

// Kafka says how to reach Kafka. An action makes the clients it needs from
// it and closes them before it returns: a redrive reads topics from fixed
// offsets and produces under a transactional id that fences other runs of
// the same saga type, which a client made elsewhere cannot be switched to.
type Kafka struct {
	// Brokers are the seed brokers, host:port.
	Brokers []string
	// Opts are added to every client: TLS and SASL (conn.Kafka.Opts), a
	// logger, a kgo.ClientID (default ksaga-ops). Seed brokers and
	// transactional ids are set by ops.
	Opts []kgo.Opt
	// Timeout bounds the first request, so that an unreachable broker
	// fails fast instead of being retried for ever; 0 means 10s.
	Timeout time.Duration
	// Idle is how long a read of a topic waits for the next record before
	// it concludes that the rest up to the end offsets taken at its start
	// is invisible (records of aborted transactions) and stops; 0 means
	// 10s. The result then says it is incomplete.
	Idle time.Duration
}

// DefaultTimeout is Kafka.Timeout when it is 0, and the timeout of the
// Redis requests of GetSaga, ListSagas, Compensate and Resume.
const DefaultTimeout = 10 * time.Second

// defaultIdle is Kafka.Idle when it is 0.
const defaultIdle = 10 * time.Second

func (k Kafka) timeout() time.Duration { return orDefault(k.Timeout, DefaultTimeout) }
func (k Kafka) idle() time.Duration    { return orDefault(k.Idle, defaultIdle) }

// clientOpts are the options of every Kafka client of ops: k.Opts and
// these. Fetches wait at most half a second for data: a redrive moves from
// partition to partition, and a long fetch of a paused partition would
// hold the next one back (kgo's default wait is five seconds).
func (k Kafka) clientOpts() []kgo.Opt {
	// The client id comes first, so that one in k.Opts wins.
	opts := append([]kgo.Opt{kgo.ClientID("ksaga-ops")}, k.Opts...)
	return append(slices.Clip(opts),
		kgo.SeedBrokers(k.Brokers...),
		kgo.DialTimeout(k.timeout()),
		kgo.FetchMaxWait(500*time.Millisecond),
	)
}

// newAdminClient returns the client of an action's first requests. Its
// request timeout overhead is k's timeout too: a broker that accepts the
// connection but does not answer holds the connection's ApiVersions
// handshake, which a request's context does not bound.
func (k Kafka) newAdminClient() (*kgo.Client, error) {
	return kgo.NewClient(append(k.clientOpts(), kgo.RequestTimeoutOverhead(k.timeout()))...)
}

// ConnError is an error of the first request to Kafka or Redis: almost
// always a wrong address, a service that is down, or a refused login
// (conn.IsAuthError tells). Its message names the service and its
// addresses; the caller knows which setting the operator should check.
type ConnError struct {
	// Service is "Kafka" or "Redis".
	Service string
	Addrs   []string
	// Timeout is set when the service did not answer within it.
	Timeout time.Duration
	Err     error
}

func (e *ConnError) Error() string {
	if e.Timeout > 0 {
		return fmt.Sprintf("%s at %s did not answer within %s: %v", e.Service, strings.Join(e.Addrs, ","), e.Timeout, e.Err)
	}
	return fmt.Sprintf("%s at %s: %v", e.Service, strings.Join(e.Addrs, ","), e.Err)
}

func (e *ConnError) Unwrap() error { return e.Err }

// connError wraps err, an error of the first request to service at addrs,
// in a ConnError; an error of a cancelled ctx stays as it is.
func connError(ctx context.Context, service string, addrs []string, timeout time.Duration, err error) error {
	if ctx.Err() != nil {
		return err
	}
	ce := &ConnError{Service: service, Addrs: addrs, Err: err}
	if errors.Is(err, context.DeadlineExceeded) {
		ce.Timeout = timeout
	}
	return ce
}

// ErrNoTopic means a topic of the saga type does not exist: a wrong saga
// type, or a sagad that never started with it (it creates the topics).
var ErrNoTopic = errors.New("topic does not exist")

// span is the offsets [from, to) of one partition that an action reads.
type span struct{ from, to int64 }

// topicSpans returns, for each partition of topic, the span from the log
// start offset to the last stable offset: the end that a read_committed
// consumer can reach now. It returns an error wrapping ErrNoTopic when the
// topic does not exist. Its first request is bounded by k's timeout.
func topicSpans(ctx context.Context, k Kafka, adm *kadm.Client, topic string) (map[int32]span, error) {
	firstCtx, cancel := context.WithTimeout(ctx, k.timeout())
	ends, err := adm.ListCommittedOffsets(firstCtx, topic)
	cancel()
	if err != nil {
		return nil, connError(ctx, "Kafka", k.Brokers, k.timeout(), fmt.Errorf("list end offsets of %s: %w", topic, err))
	}
	if err := listedError(ends, topic); err != nil {
		return nil, err
	}
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("list start offsets of %s: %w", topic, err)
	}
	if err := listedError(starts, topic); err != nil {
		return nil, err
	}
	spans := make(map[int32]span, len(ends[topic]))
	for p, end := range ends[topic] {
		s := span{from: 0, to: end.Offset}
		if start, ok := starts.Lookup(topic, p); ok && start.Offset > 0 {
			s.from = start.Offset
		}
		spans[p] = s
	}
	return spans, nil
}

// noTopic returns an error wrapping ErrNoTopic for topic.
func noTopic(topic string) error {
	return fmt.Errorf("%w: %s (check the saga type; sagad creates the topic when it starts)", ErrNoTopic, topic)
}

func listedError(l kadm.ListedOffsets, topic string) error {
	ps := l[topic]
	if bad, ok := ps[-1]; len(ps) == 0 || (ok && errors.Is(bad.Err, kerr.UnknownTopicOrPartition)) {
		return noTopic(topic)
	}
	if err := l.Error(); err != nil {
		return fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	return nil
}

// fetchStableOffsets returns group's committed offsets for topic, waiting
// while a transaction that commits some of them is still open (an earlier
// redrive that died mid-batch: its transaction times out, or the next run's
// session aborts it).
func fetchStableOffsets(ctx context.Context, adm *kadm.Client, group, topic string) (kadm.OffsetResponses, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		offs, err := adm.FetchOffsetsForTopics(kadm.RequireStable(ctx), group, topic)
		if err == nil || errors.Is(err, kerr.GroupIDNotFound) {
			// Some brokers answer GROUP_ID_NOT_FOUND for a group that never
			// committed; others answer -1 offsets. Both mean "from the start".
			return offs, nil
		}
		if !errors.Is(err, kerr.UnstableOffsetCommit) || time.Now().After(deadline) {
			return nil, fmt.Errorf("fetch offsets of group %s: %w", group, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// pollError returns the first error of fetches that is worth stopping for:
// not the poll context's own expiry, and not kgo's data-loss notice (records
// deleted by retention before they were read).
func pollError(fetches kgo.Fetches) error {
	for _, fe := range fetches.Errors() {
		var loss *kgo.ErrDataLoss
		if errors.Is(fe.Err, context.DeadlineExceeded) || errors.Is(fe.Err, context.Canceled) || errors.As(fe.Err, &loss) {
			continue
		}
		return fmt.Errorf("fetch %s partition %d: %w", fe.Topic, fe.Partition, fe.Err)
	}
	return nil
}

// scan reads the spans of topic (read_committed) and calls fn for each data
// record in them, partition by partition in offset order, until every span
// is read, fn returns false, or no record arrives for k's idle time (the
// rest of a span is then invisible: records of aborted transactions). It
// reports whether it stopped for idle.
func scan(ctx context.Context, k Kafka, topic string, spans map[int32]span, fn func(*kgo.Record) bool) (idled bool, err error) {
	offsets := make(map[int32]kgo.Offset)
	for p, s := range spans {
		if s.from < s.to {
			offsets[p] = kgo.NewOffset().At(s.from)
		}
	}
	if len(offsets) == 0 {
		return false, nil
	}
	cl, err := kgo.NewClient(append(k.clientOpts(),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Control records (transaction markers) tell how far a partition
		// has been read even when its last records are markers.
		kgo.KeepControlRecords(),
	)...)
	if err != nil {
		return false, err
	}
	defer cl.Close()

	for len(offsets) > 0 {
		pollCtx, cancel := context.WithTimeout(ctx, k.idle())
		fetches := cl.PollFetches(pollCtx)
		cancel()
		if err := ctx.Err(); err != nil {
			return false, err
		}
		if err := pollError(fetches); err != nil {
			return false, err
		}
		if fetches.NumRecords() == 0 && pollCtx.Err() != nil {
			return true, nil
		}
		var done []int32
		for it := fetches.RecordIter(); !it.Done(); {
			r := it.Next()
			if _, reading := offsets[r.Partition]; !reading || r.Topic != topic {
				continue
			}
			end := spans[r.Partition].to
			if r.Offset+1 >= end {
				delete(offsets, r.Partition)
				done = append(done, r.Partition)
			}
			if r.Offset >= end || r.Attrs.IsControl() {
				continue
			}
			if !fn(r) {
				return false, nil
			}
		}
		if len(done) > 0 {
			cl.PauseFetchPartitions(map[string][]int32{topic: done})
		}
	}
	return false, nil
}

// InboxPartitions returns the partition count of saga.<sagaType>.inbox,
// which places a saga's Redis keys (its home partition). A topic that does
// not exist is an error wrapping ErrNoTopic.
func InboxPartitions(ctx context.Context, k Kafka, sagaType string) (int32, error) {
	cl, err := k.newAdminClient()
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	return inboxPartitions(ctx, k, kadm.NewClient(cl), sagaType)
}

func inboxPartitions(ctx context.Context, k Kafka, adm *kadm.Client, sagaType string) (int32, error) {
	inbox := message.Inbox(sagaType)
	reqCtx, cancel := context.WithTimeout(ctx, k.timeout())
	defer cancel()
	tds, err := adm.ListTopics(reqCtx, inbox)
	if err != nil {
		return 0, connError(ctx, "Kafka", k.Brokers, k.timeout(), fmt.Errorf("describe %s: %w", inbox, err))
	}
	td, ok := tds[inbox]
	if ok && td.Err != nil && !errors.Is(td.Err, kerr.UnknownTopicOrPartition) {
		return 0, connError(ctx, "Kafka", k.Brokers, k.timeout(), fmt.Errorf("describe %s: %w", inbox, td.Err))
	}
	if !ok || td.Err != nil || len(td.Partitions) == 0 {
		return 0, noTopic(inbox)
	}
	return int32(len(td.Partitions)), nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// SagaTypes returns the saga types whose inbox (saga.<type>.inbox) the
// cluster has, sorted. It asks once, bounded by k's timeout: a shell's
// completion calls it and must not hang without a broker.
func SagaTypes(ctx context.Context, k Kafka) ([]string, error) {
	cl, err := k.newAdminClient()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	reqCtx, cancel := context.WithTimeout(ctx, k.timeout())
	defer cancel()
	tds, err := kadm.NewClient(cl).ListTopics(reqCtx)
	if err != nil {
		return nil, connError(ctx, "Kafka", k.Brokers, k.timeout(), fmt.Errorf("list topics: %w", err))
	}
	var out []string
	for _, name := range tds.Names() {
		if t, ok := strings.CutPrefix(name, "saga."); ok {
			if t, ok = strings.CutSuffix(t, ".inbox"); ok && t != "" && !strings.Contains(t, ".") {
				out = append(out, t)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}
