package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
)

// headerRedriveOf is set on every record sagactl redrives to the
// "<partition>:<offset>" of the dead-letter record it came from. A redriven
// record that fails again is dead-lettered with it, which links the two.
const headerRedriveOf = message.HeaderRedriveOf

// redriveGroup returns the consumer group of dlq redrive runs for a saga
// type. It is also their transactional id, so a second run started while one
// is in progress fences the first: they never both commit.
func redriveGroup(sagaType string) string { return "ksaga-sagactl-redrive-" + sagaType }

const (
	// defaultIdle is how long a read waits for the next record before it
	// concludes that the rest up to the end offsets is invisible (records of
	// aborted transactions) and stops.
	defaultIdle = 10 * time.Second
	// defaultBatch bounds the records of one redrive transaction.
	defaultBatch = 500
	// maxErrorWidth is how much of an error message dlq list prints.
	maxErrorWidth = 80
)

// errNoTopic means the dead-letter topic does not exist.
var errNoTopic = errors.New("topic does not exist")

// span is the offsets [from, to) of one partition that a command works on.
type span struct{ from, to int64 }

// clientOpts are the options of every Kafka client of sagactl: sec (TLS
// and SASL, from conn.Kafka.Opts) and these. Fetches wait at most half a
// second for data: a redrive moves from partition to partition, and a long
// fetch of a paused partition would hold the next one back (kgo's default
// wait is five seconds).
func clientOpts(brokers []string, sec []kgo.Opt, timeout time.Duration) []kgo.Opt {
	return append(slices.Clip(sec),
		kgo.SeedBrokers(brokers...),
		kgo.ClientID("sagactl"),
		kgo.DialTimeout(orDefault(timeout, defaultTimeout)),
		kgo.FetchMaxWait(500*time.Millisecond),
	)
}

// newAdminClient returns the client of a command's first requests. Its
// request timeout overhead is timeout too: a broker that accepts the
// connection but does not answer holds the connection's ApiVersions
// handshake, which a request's context does not bound.
func newAdminClient(brokers []string, sec []kgo.Opt, timeout time.Duration) (*kgo.Client, error) {
	return kgo.NewClient(append(clientOpts(brokers, sec, timeout), kgo.RequestTimeoutOverhead(orDefault(timeout, defaultTimeout)))...)
}

// dltSpans returns, for each partition of topic, the span from the log start
// offset, or group's committed offset when it is further (group may be
// empty), to the last stable offset: the end that a read_committed consumer
// can reach now. The first request is bounded by timeout.
func dltSpans(ctx context.Context, adm *kadm.Client, brokers []string, topic, group string, timeout time.Duration) (map[int32]span, error) {
	firstCtx, cancel := context.WithTimeout(ctx, timeout)
	ends, err := adm.ListCommittedOffsets(firstCtx, topic)
	cancel()
	if err != nil {
		return nil, firstRequestError(ctx, "Kafka", brokers, "kafka-brokers", timeout, fmt.Errorf("list end offsets of %s: %w", topic, err))
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
	var committed kadm.OffsetResponses
	if group != "" {
		if committed, err = fetchStableOffsets(ctx, adm, group, topic); err != nil {
			return nil, err
		}
	}
	spans := make(map[int32]span, len(ends[topic]))
	for p, end := range ends[topic] {
		s := span{from: 0, to: end.Offset}
		if start, ok := starts.Lookup(topic, p); ok && start.Offset > 0 {
			s.from = start.Offset
		}
		if c, ok := committed.Lookup(topic, p); ok && c.At > s.from {
			s.from = c.At
		}
		spans[p] = s
	}
	return spans, nil
}

func listedError(l kadm.ListedOffsets, topic string) error {
	ps := l[topic]
	if bad, ok := ps[-1]; len(ps) == 0 || (ok && errors.Is(bad.Err, kerr.UnknownTopicOrPartition)) {
		return fmt.Errorf("%w: %s (check --saga; sagad creates the topic when it starts)", errNoTopic, topic)
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
// is read, fn returns false, or no record arrives for idle (the rest of a
// span is then invisible: records of aborted transactions). It reports
// whether it stopped for idle.
func scan(ctx context.Context, brokers []string, sec []kgo.Opt, timeout time.Duration, topic string, spans map[int32]span, idle time.Duration, fn func(*kgo.Record) bool) (idled bool, err error) {
	offsets := make(map[int32]kgo.Offset)
	for p, s := range spans {
		if s.from < s.to {
			offsets[p] = kgo.NewOffset().At(s.from)
		}
	}
	if len(offsets) == 0 {
		return false, nil
	}
	cl, err := kgo.NewClient(append(clientOpts(brokers, sec, timeout),
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
		pollCtx, cancel := context.WithTimeout(ctx, idle)
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

// listOptions are the options of dlq list.
type listOptions struct {
	sagaType string
	// kafka are the clients' TLS and SASL options (conn.Kafka.Opts).
	kafka []kgo.Opt
	// limit is the most records to print; 0 prints all.
	limit int
	// timeout bounds the first request to Kafka.
	timeout time.Duration
	// idle is how long to wait for a record before giving up on the rest;
	// 0 means defaultIdle.
	idle time.Duration
}

// listResult counts what dlq list printed.
type listResult struct {
	records int
	// invalid counts records without the dead-letter headers.
	invalid int
	// limited is set when the listing stopped at the limit.
	limited bool
	// idled is set when the listing stopped before the end offsets.
	idled bool
}

// listDLQ prints the records of saga.<type>.inbox-dlt from the beginning up
// to the end offsets taken when it starts, one line each. The STATE column
// says whether a redrive run has handled the record already. It returns an
// error wrapping errNoTopic when the topic does not exist.
func listDLQ(ctx context.Context, brokers []string, w io.Writer, opt listOptions) (listResult, error) {
	var res listResult
	topic := message.DLT(opt.sagaType)
	cl, err := newAdminClient(brokers, opt.kafka, opt.timeout)
	if err != nil {
		return res, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	spans, err := dltSpans(ctx, adm, brokers, topic, "", opt.timeout)
	if err != nil {
		return res, err
	}
	group := redriveGroup(opt.sagaType)
	redriven, gerr := adm.FetchOffsetsForTopics(ctx, group, topic)
	if errors.Is(gerr, kerr.GroupIDNotFound) {
		gerr = nil // no redrive has run yet
	}
	state := func(r *kgo.Record) string {
		if gerr != nil {
			return "?"
		}
		if o, ok := redriven.Lookup(topic, r.Partition); ok && r.Offset < o.At {
			return "handled"
		}
		return "pending"
	}

	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	header := false
	res.idled, err = scan(ctx, brokers, opt.kafka, opt.timeout, topic, spans, orDefault(opt.idle, defaultIdle), func(r *kgo.Record) bool {
		if !header {
			fmt.Fprintln(tw, "DLT\tORIGINAL\tSAGA ID\tMESSAGE\tREASON\tATTEMPTS\tLAST FAILURE\tSTATE\tERROR")
			header = true
		}
		info, err := dlq.Parse(r)
		if err != nil {
			res.invalid++
			fmt.Fprintf(tw, "%d/%d\t-\t%s\t-\t-\t-\t-\t%s\t%s\n", r.Partition, r.Offset, printable(string(r.Key)), state(r), shorten(err.Error(), maxErrorWidth))
		} else {
			fmt.Fprintf(tw, "%d/%d\t%s/%d/%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n",
				r.Partition, r.Offset, info.Topic, info.Partition, info.Offset,
				printable(string(r.Key)), printable(headerValue(info.Original, message.HeaderMessageType)),
				printable(info.Reason), info.Attempts, formatTime(info.Last), state(r),
				shorten(info.ErrorMessage, maxErrorWidth))
		}
		res.records++
		if res.records%1000 == 0 {
			tw.Flush() // bound the memory of a long listing; columns may shift
		}
		if opt.limit > 0 && res.records >= opt.limit {
			res.limited = true
			return false
		}
		return true
	})
	tw.Flush()
	if err != nil {
		return res, err
	}
	switch {
	case res.records == 0 && !res.idled:
		fmt.Fprintf(w, "no dead-letter records in %s\n", topic)
		return res, nil
	case res.limited:
		fmt.Fprintf(w, "%d records of %s (stopped at --limit %d)\n", res.records, topic, opt.limit)
	case res.idled:
		fmt.Fprintf(w, "%d records of %s; stopped: no record for %s before the end offsets taken at start (the rest may be aborted records)\n",
			res.records, topic, orDefault(opt.idle, defaultIdle))
	default:
		fmt.Fprintf(w, "%d records of %s\n", res.records, topic)
	}
	if gerr != nil {
		fmt.Fprintf(w, "STATE unknown: cannot read the offsets of group %s: %v\n", group, gerr)
	}
	if res.invalid > 0 {
		fmt.Fprintf(w, "%d of them are not dead-letter records (no kafka_dlt-original-* headers); redrive skips them\n", res.invalid)
	}
	return res, nil
}

// redriveOptions are the options of dlq redrive.
type redriveOptions struct {
	sagaType string
	// kafka are the clients' TLS and SASL options (conn.Kafka.Opts).
	kafka []kgo.Opt
	// reason, when set, restricts the redrive to records dead-lettered for
	// it; the others are moved to the end of their DLT partition.
	reason string
	// dryRun prints what would be done and changes nothing.
	dryRun bool
	// timeout bounds the first request to Kafka.
	timeout time.Duration
	// idle is how long to wait for a record before giving up on the rest
	// of a partition; 0 means defaultIdle.
	idle time.Duration
	// batch bounds the records of one transaction; 0 means defaultBatch.
	batch int
}

// redriveResult counts what a redrive did (or, for a dry run, would do).
type redriveResult struct {
	redriven int
	// skipped counts records of another reason than --reason, moved to
	// the end of their DLT partition.
	skipped int
	// invalid counts records without the dead-letter headers: they are
	// skipped for good.
	invalid int
	// idled is set when a partition was left before its end offset.
	idled bool
}

// redriveDLQ re-produces the originals of the records of saga.<type>.inbox-dlt
// after the position of the group ksaga-sagactl-redrive-<type>, up to the end
// offsets taken when it starts. See the package doc.
//
// Each batch is one transaction of a GroupTransactSession: the redriven
// records, the copies of skipped records and the group's DLT offsets commit
// together or not at all, so every DLT record is redriven at most once even
// if a run dies. A batch aborted by a rebalance is retried; any other error
// stops the run and is returned (what was committed stays committed: run
// again to continue). It returns an error wrapping errNoTopic when the topic
// does not exist.
func redriveDLQ(ctx context.Context, brokers []string, w io.Writer, opt redriveOptions) (redriveResult, error) {
	var res redriveResult
	topic := message.DLT(opt.sagaType)
	group := redriveGroup(opt.sagaType)
	idle := orDefault(opt.idle, defaultIdle)

	cl, err := newAdminClient(brokers, opt.kafka, opt.timeout)
	if err != nil {
		return res, err
	}
	spans, err := dltSpans(ctx, kadm.NewClient(cl), brokers, topic, group, opt.timeout)
	cl.Close()
	if err != nil {
		return res, err
	}
	var pending, all []int32
	for p, s := range spans {
		all = append(all, p)
		if s.from < s.to {
			pending = append(pending, p)
		}
	}
	slices.Sort(pending)
	if len(pending) == 0 {
		fmt.Fprintf(w, "nothing to redrive: group %s is at the end of %s\n", group, topic)
		return res, nil
	}
	if opt.dryRun {
		return dryRun(ctx, brokers, w, topic, spans, opt)
	}

	sess, err := newRedriveSession(brokers, opt.kafka, opt.sagaType, opt.timeout)
	if err != nil {
		return res, err
	}
	defer sess.Close()
	sc := sess.Client()

	batch := opt.batch
	if batch <= 0 {
		batch = defaultBatch
	}
	// The partitions are redriven one at a time, with the others paused,
	// so that a poll of at most end-position records cannot reach past
	// the end offset: every record polled in a group transact session is
	// committed with the transaction, redriven or not.
	sc.PauseFetchPartitions(map[string][]int32{topic: all})
	for _, p := range pending {
		sc.ResumeFetchPartitions(map[string][]int32{topic: {p}})
		idled, err := redrivePartition(ctx, sess, w, topic, p, spans[p], batch, idle, opt.reason, &res)
		if err != nil {
			return res, err
		}
		res.idled = res.idled || idled
		sc.PauseFetchPartitions(map[string][]int32{topic: {p}})
	}

	fmt.Fprintf(w, "redriven %d, skipped %d, invalid %d\n", res.redriven, res.skipped, res.invalid)
	if res.idled {
		fmt.Fprintf(w, "stopped before the end offsets taken at start in some partitions (no record for %s); run again to continue\n", idle)
	} else {
		fmt.Fprintf(w, "group %s is at the end offsets of %s taken at start\n", group, topic)
	}
	return res, nil
}

// newRedriveSession returns the transact session of a redrive run: the
// group and transactional id redriveGroup(sagaType), consuming the DLT
// read_committed with its transaction markers.
func newRedriveSession(brokers []string, sec []kgo.Opt, sagaType string, timeout time.Duration) (*kgo.GroupTransactSession, error) {
	group := redriveGroup(sagaType)
	return kgo.NewGroupTransactSession(append(clientOpts(brokers, sec, timeout),
		kgo.TransactionalID(group),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(message.DLT(sagaType)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Markers count as records, so the records polled from a partition
		// have consecutive offsets unless an aborted transaction left a gap.
		kgo.KeepControlRecords(),
		// A redriven record goes back to the partition it was consumed
		// from: the one its saga id maps to.
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
	)...)
}

// redrivePartition redrives partition p of topic from the session's position
// up to s.to, adding to res what it committed.
func redrivePartition(ctx context.Context, sess *kgo.GroupTransactSession, w io.Writer, topic string, p int32, s span, batch int, idle time.Duration, reason string, res *redriveResult) (idled bool, err error) {
	pos, limit := s.from, batch
	for pos < s.to {
		n := int(min(int64(limit), s.to-pos))
		pollCtx, cancel := context.WithTimeout(ctx, idle)
		fetches := sess.PollRecords(pollCtx, n)
		cancel()
		if err := ctx.Err(); err != nil {
			return false, err
		}
		if err := pollError(fetches); err != nil {
			return false, err
		}
		recs := fetches.Records()
		if len(recs) == 0 {
			if pollCtx.Err() != nil {
				return true, nil
			}
			continue
		}

		// Records of an aborted transaction are invisible, so n records can
		// reach past the end. Give such a poll back (an aborted transaction
		// rewinds the session to the committed offsets) and poll fewer.
		inRange, stray := 0, false
		for _, r := range recs {
			if r.Topic != topic || r.Partition != p || r.Offset >= s.to {
				stray = true
			} else {
				inRange++
			}
		}
		if stray {
			// No transaction is open: End only rewinds the session.
			if _, err := endSession(ctx, sess, kgo.TryAbort); err != nil {
				return false, err
			}
			if inRange == 0 {
				return false, nil // only invisible records are left before the end
			}
			limit = inRange
			continue
		}

		var out []*kgo.Record
		var lines []string
		var b redriveResult
		for _, r := range recs {
			if r.Attrs.IsControl() {
				continue
			}
			info, err := dlq.Parse(r)
			switch {
			case err != nil:
				b.invalid++
				lines = append(lines, fmt.Sprintf("invalid  %d/%d %s: %v", r.Partition, r.Offset, printable(string(r.Key)), err))
			case reason != "" && info.Reason != reason:
				b.skipped++
				out = append(out, &kgo.Record{Topic: topic, Partition: r.Partition, Key: r.Key, Value: r.Value, Headers: r.Headers})
				lines = append(lines, fmt.Sprintf("skipped  %d/%d %s: reason %s (moved to the end of the partition)", r.Partition, r.Offset, printable(string(r.Key)), printable(info.Reason)))
			default:
				b.redriven++
				out = append(out, redriveRecord(r, info))
				lines = append(lines, fmt.Sprintf("redriven %d/%d %s -> %s/%d %s (%s)", r.Partition, r.Offset, printable(string(r.Key)),
					info.Topic, info.Partition, printable(headerValue(info.Original, message.HeaderMessageType)), printable(info.Reason)))
			}
		}

		if err := sess.Begin(); err != nil {
			return false, fmt.Errorf("begin transaction: %w", err)
		}
		var produceErr error
		if len(out) > 0 {
			produceErr = sess.ProduceSync(ctx, out...).FirstErr()
		}
		if produceErr != nil || ctx.Err() != nil {
			if _, err := endSession(ctx, sess, kgo.TryAbort); err != nil {
				return false, errors.Join(produceErr, err)
			}
			if produceErr != nil {
				return false, fmt.Errorf("produce (the batch was aborted): %w", produceErr)
			}
			return false, ctx.Err()
		}
		committed, err := endSession(ctx, sess, kgo.TryCommit)
		if err != nil {
			return false, err
		}
		if !committed {
			// A rebalance aborted the batch and rewound the session to the
			// committed offsets: poll again.
			limit = batch
			continue
		}
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
		res.redriven += b.redriven
		res.skipped += b.skipped
		res.invalid += b.invalid
		pos = recs[len(recs)-1].Offset + 1
		limit = batch
	}
	return false, nil
}

// endSession ends the session's transaction; with none open, End only
// rewinds the session to the committed offsets when commit is TryAbort. It uses a context that outlives
// ctx by a bounded time, so that an interrupted run still aborts cleanly.
func endSession(ctx context.Context, sess *kgo.GroupTransactSession, commit kgo.TransactionEndTry) (bool, error) {
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	committed, err := sess.End(endCtx, commit)
	if err != nil {
		return false, fmt.Errorf("end transaction (is another sagactl dlq redrive running for this saga type?): %w", err)
	}
	return committed, nil
}

// redriveRecord returns the record that redrives dead-letter record r: the
// original key, value and headers, to the original topic and partition,
// with ksaga-redrive-of set to r's partition and offset.
func redriveRecord(r *kgo.Record, info dlq.Info) *kgo.Record {
	o := info.Original
	headers := make([]kgo.RecordHeader, 0, len(o.Headers)+1)
	for _, h := range o.Headers {
		if h.Key != headerRedriveOf {
			headers = append(headers, h)
		}
	}
	headers = append(headers, kgo.RecordHeader{
		Key:   headerRedriveOf,
		Value: []byte(strconv.Itoa(int(r.Partition)) + ":" + strconv.FormatInt(r.Offset, 10)),
	})
	return &kgo.Record{Topic: info.Topic, Partition: info.Partition, Key: o.Key, Value: o.Value, Headers: headers}
}

// dryRun prints what redriveDLQ would do with the spans.
func dryRun(ctx context.Context, brokers []string, w io.Writer, topic string, spans map[int32]span, opt redriveOptions) (redriveResult, error) {
	var res redriveResult
	idled, err := scan(ctx, brokers, opt.kafka, opt.timeout, topic, spans, orDefault(opt.idle, defaultIdle), func(r *kgo.Record) bool {
		info, err := dlq.Parse(r)
		switch {
		case err != nil:
			res.invalid++
			fmt.Fprintf(w, "would skip (invalid)  %d/%d %s: %v\n", r.Partition, r.Offset, printable(string(r.Key)), err)
		case opt.reason != "" && info.Reason != opt.reason:
			res.skipped++
			fmt.Fprintf(w, "would skip            %d/%d %s: reason %s\n", r.Partition, r.Offset, printable(string(r.Key)), printable(info.Reason))
		default:
			res.redriven++
			fmt.Fprintf(w, "would redrive         %d/%d %s -> %s/%d %s (%s)\n", r.Partition, r.Offset, printable(string(r.Key)),
				info.Topic, info.Partition, printable(headerValue(info.Original, message.HeaderMessageType)), printable(info.Reason))
		}
		return true
	})
	if err != nil {
		return res, err
	}
	res.idled = idled
	fmt.Fprintf(w, "dry run: would redrive %d, skip %d, skip %d invalid; nothing was produced or committed\n", res.redriven, res.skipped, res.invalid)
	return res, nil
}

func headerValue(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// printable makes s safe for one tab-separated column: "-" when empty,
// control characters and whitespace runs as one space.
func printable(s string) string {
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }), " ")
	if s == "" {
		return "-"
	}
	return s
}

// shorten returns printable(s), cut to at most n runes with a trailing "…".
func shorten(s string, n int) string {
	s = printable(s)
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
