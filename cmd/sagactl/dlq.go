package main

import (
	"context"
	"encoding/base64"
	"encoding/binary"
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

// topicSpans returns, for each partition of topic, the span from the log
// start offset to the last stable offset: the end that a read_committed
// consumer can reach now. It returns an error wrapping errNoTopic when the
// topic does not exist. Its first request is bounded by timeout.
func topicSpans(ctx context.Context, adm *kadm.Client, brokers []string, topic string, timeout time.Duration) (map[int32]span, error) {
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

// legacyOffsets returns, per DLT partition, the offset below which the
// consumer group of a sagactl older than the audit topic committed its
// redrives: those records count as redriven. It is nil when that group
// never committed.
func legacyOffsets(ctx context.Context, adm *kadm.Client, sagaType string) (map[int32]int64, error) {
	topic := message.DLT(sagaType)
	offs, err := fetchStableOffsets(ctx, adm, redriveGroup(sagaType), topic)
	if errors.Is(err, kerr.GroupAuthorizationFailed) {
		// A user without access to the group never redrove with it: the
		// old sagactl needed it to commit.
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out map[int32]int64
	for p, o := range offs[topic] {
		if o.Err == nil && o.At > 0 {
			if out == nil {
				out = make(map[int32]int64)
			}
			out[p] = o.At
		}
	}
	return out, nil
}

// filters select dead-letter records; the zero value selects all.
type filters struct {
	// reason is the dead-letter reason (ksaga-dlt-reason).
	reason string
	// sagaID is the record's key.
	sagaID string
	// since and until bound when the record was dead-lettered (its
	// timestamp in the DLT): since included, until excluded. Zero: open.
	since, until time.Time
}

func (f filters) match(e *dlqEntry) bool {
	return (f.reason == "" || e.Reason == f.reason) &&
		(f.sagaID == "" || e.SagaID == f.sagaID) &&
		(f.since.IsZero() || !e.Timestamp.Before(f.since)) &&
		(f.until.IsZero() || e.Timestamp.Before(f.until))
}

func (f filters) audit(limit int) *auditFilters {
	a := &auditFilters{Reason: f.reason, SagaID: f.sagaID, Limit: limit}
	if !f.since.IsZero() {
		a.Since = &f.since
	}
	if !f.until.IsZero() {
		a.Until = &f.until
	}
	if *a == (auditFilters{}) {
		return nil
	}
	return a
}

// States of a dead-letter record.
const (
	statePending  = "pending"  // never redriven
	stateRedriven = "redriven" // redriven: it is back on the inbox
	stateInvalid  = "invalid"  // not a dead-letter record: never redriven
)

// dlqEntry is a dead-letter record as dlq list and dlq show report it. In
// dlq list it stands for the original record: the newest of its dead
// letters (a redriven record that fails again is dead-lettered again, with
// message.HeaderRedriveOf naming the dead letter it was redriven from), with
// the redrives of them all.
type dlqEntry struct {
	// DLT is "<partition>:<offset>" of the record in the dead-letter topic.
	DLT       string `json:"dlt"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
	// Timestamp is when the record was dead-lettered.
	Timestamp time.Time `json:"timestamp"`
	// State is pending, redriven or invalid.
	State       string  `json:"state"`
	SagaID      string  `json:"saga_id"`
	MessageType string  `json:"message_type,omitempty"`
	Reason      string  `json:"reason,omitempty"`
	Attempts    int     `json:"attempts"`
	Original    *origin `json:"original,omitempty"`
	// Group is the consumer group that dead-lettered it.
	Group        string    `json:"group,omitempty"`
	FirstFailure time.Time `json:"first_failure,omitzero"`
	LastFailure  time.Time `json:"last_failure,omitzero"`
	ErrorType    string    `json:"error_type,omitempty"`
	Error        string    `json:"error,omitempty"`
	// Invalid says why an invalid record is not a dead-letter record.
	Invalid string `json:"invalid,omitempty"`
	// RedriveOf is the dead letter this record was redriven from, when it
	// is the dead letter of a redriven record.
	RedriveOf string `json:"redrive_of,omitempty"`
	// DeadLetters counts the dead letters of the original: 1, plus one per
	// redrive that failed again. Earlier lists the others, oldest first.
	DeadLetters int      `json:"dead_letters"`
	Earlier     []string `json:"earlier,omitempty"`
	// RedriveCount is len(Redrives): the redrives of the original, from
	// the audit topic.
	RedriveCount int            `json:"redrive_count"`
	Redrives     []redriveEvent `json:"redrives"`

	pos       pos
	redriveOf *pos
	prev      *dlqEntry // the dead letter this one was redriven from
	next      *dlqEntry // the dead letter of this one's redrive
	redriven  bool      // this very record was redriven
}

// origin is where a dead-letter record was consumed from.
type origin struct {
	Topic     string    `json:"topic"`
	Partition int32     `json:"partition"`
	Offset    int64     `json:"offset"`
	Timestamp time.Time `json:"timestamp,omitzero"`
}

// newEntry parses dead-letter record r.
func newEntry(r *kgo.Record) *dlqEntry {
	e := &dlqEntry{pos: pos{r.Partition, r.Offset}, Partition: r.Partition, Offset: r.Offset,
		Timestamp: r.Timestamp.UTC(), SagaID: string(r.Key), DeadLetters: 1, Redrives: []redriveEvent{}}
	e.DLT = e.pos.String()
	if v := headerValue(r, headerRedriveOf); v != "" {
		if p, err := parsePos(v); err == nil {
			e.redriveOf, e.RedriveOf = &p, p.String()
		}
	}
	info, err := dlq.Parse(r)
	if err != nil {
		e.State, e.Invalid = stateInvalid, err.Error()
		return e
	}
	e.MessageType = headerValue(info.Original, message.HeaderMessageType)
	e.Reason, e.Attempts, e.Group = info.Reason, info.Attempts, info.Group
	e.Original = &origin{Topic: info.Topic, Partition: info.Partition, Offset: info.Offset}
	if !info.Timestamp.IsZero() {
		e.Original.Timestamp = info.Timestamp.UTC()
	}
	e.FirstFailure, e.LastFailure = utcOrZero(info.First), utcOrZero(info.Last)
	e.ErrorType, e.Error = info.ErrorType, info.ErrorMessage
	return e
}

func utcOrZero(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

// dlqView is a dead-letter topic read in full, with its redrive history.
type dlqView struct {
	topic string
	// all are the records read, in the order read; heads are the newest
	// dead letter of each original, oldest first.
	all, heads []*dlqEntry
	audit      *auditLog
	// legacyErr is why the offsets of the old redrive group could not be
	// read; the states then ignore them.
	legacyErr error
	// idled is set when the read stopped before the end offsets.
	idled bool
}

// loadDLQ reads the spans of saga.<type>.inbox-dlt, the audit topic and the
// offsets of the old redrive group, links each dead letter of a redriven
// record to the one it was redriven from, and sets each record's state and
// redrive history.
func loadDLQ(ctx context.Context, brokers []string, sec []kgo.Opt, adm *kadm.Client, sagaType string, spans map[int32]span, timeout, idle time.Duration) (*dlqView, error) {
	v := &dlqView{topic: message.DLT(sagaType)}
	var err error
	if v.audit, err = readAudit(ctx, brokers, sec, adm, sagaType, timeout, idle); err != nil {
		return nil, err
	}
	legacy, lerr := legacyOffsets(ctx, adm, sagaType)
	if lerr != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		v.legacyErr = lerr
	}
	v.idled, err = scan(ctx, brokers, sec, timeout, v.topic, spans, idle, func(r *kgo.Record) bool {
		v.all = append(v.all, newEntry(r))
		return true
	})
	if err != nil {
		return nil, err
	}

	byPos := make(map[pos]*dlqEntry, len(v.all))
	for _, e := range v.all {
		byPos[e.pos] = e
	}
	for _, e := range v.all {
		if o, ok := legacy[e.Partition]; ok && e.Offset < o {
			e.redriven = true
		}
		if len(v.audit.redriven[e.pos]) > 0 {
			e.redriven = true
		}
		if e.redriveOf == nil {
			continue
		}
		if prev, ok := byPos[*e.redriveOf]; ok && prev != e {
			e.prev = prev
			if prev.next == nil || prev.next.Timestamp.Before(e.Timestamp) {
				prev.next = e
			}
		}
	}
	for _, e := range v.all {
		if e.next != nil {
			continue
		}
		v.heads = append(v.heads, e)
		// The chain, oldest first; bounded in case headers make a loop.
		chain := []*dlqEntry{e}
		for p := e.prev; p != nil && len(chain) <= len(v.all); p = p.prev {
			chain = append(chain, p)
		}
		slices.Reverse(chain)
		e.DeadLetters = len(chain)
		if first := chain[0]; first.prev == nil && first.redriveOf != nil {
			// Redriven from a dead letter that is gone (retention, or
			// before the spans read): it still counts, with its redrives.
			e.DeadLetters++
			e.Earlier = append(e.Earlier, first.RedriveOf)
			e.Redrives = append(e.Redrives, v.audit.events(*first.redriveOf)...)
		}
		for _, c := range chain {
			if c != e {
				e.Earlier = append(e.Earlier, c.DLT)
			}
			evs := v.audit.events(c.pos)
			if len(evs) == 0 && c.redriven {
				evs = []redriveEvent{{DLT: c.DLT, Group: redriveGroup(sagaType)}}
			}
			e.Redrives = append(e.Redrives, evs...)
		}
		e.RedriveCount = len(e.Redrives)
		switch {
		case e.Invalid != "":
		case e.redriven:
			e.State = stateRedriven
		default:
			e.State = statePending
		}
	}
	slices.SortStableFunc(v.heads, func(a, b *dlqEntry) int {
		if c := a.Timestamp.Compare(b.Timestamp); c != 0 {
			return c
		}
		if a.Partition != b.Partition {
			return int(a.Partition - b.Partition)
		}
		return int(a.Offset - b.Offset)
	})
	return v, nil
}

// listOptions are the options of dlq list.
type listOptions struct {
	sagaType string
	// kafka are the clients' TLS and SASL options (conn.Kafka.Opts).
	kafka   []kgo.Opt
	filters filters
	// state keeps only the records in this state; "" keeps all.
	state string
	// limit is the most records to print, oldest first; 0 prints all.
	limit  int
	output string
	// timeout bounds the first request to Kafka.
	timeout time.Duration
	// idle is how long to wait for a record before giving up on the rest;
	// 0 means defaultIdle.
	idle time.Duration
	now  func() time.Time
}

// listResult is what dlq list found.
type listResult struct {
	// shown are the records printed; matched counts those that match the
	// filters (shown is cut to --limit).
	shown   []*dlqEntry
	matched int
	view    *dlqView
}

// listDLQ prints one row per original record of saga.<type>.inbox-dlt, from
// the beginning up to the end offsets taken when it starts: the newest of
// its dead letters, with how often it was dead-lettered and redriven. It
// returns an error wrapping errNoTopic when the topic does not exist.
func listDLQ(ctx context.Context, brokers []string, st streams, opt listOptions) (listResult, error) {
	var res listResult
	timeout := orDefault(opt.timeout, defaultTimeout)
	topic := message.DLT(opt.sagaType)
	cl, err := newAdminClient(brokers, opt.kafka, timeout)
	if err != nil {
		return res, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	spans, err := topicSpans(ctx, adm, brokers, topic, timeout)
	if err != nil {
		return res, err
	}
	v, err := loadDLQ(ctx, brokers, opt.kafka, adm, opt.sagaType, spans, timeout, orDefault(opt.idle, defaultIdle))
	if err != nil {
		return res, err
	}
	res.view = v
	counts := map[string]int{}
	redrives := 0
	res.shown = []*dlqEntry{}
	for _, e := range v.heads {
		if !opt.filters.match(e) || (opt.state != "" && e.State != opt.state) {
			continue
		}
		res.matched++
		counts[e.State]++
		redrives += e.RedriveCount
		if opt.limit == 0 || len(res.shown) < opt.limit {
			res.shown = append(res.shown, e)
		}
	}

	if opt.output != outTable {
		if err := writeData(st.out, opt.output, res.shown); err != nil {
			return res, err
		}
	} else if len(res.shown) > 0 {
		now := time.Now()
		if opt.now != nil {
			now = opt.now()
		}
		inbox := message.Inbox(opt.sagaType)
		t := newTable(st.out, "DLT", "ORIGINAL", "SAGA-ID", "MESSAGE", "REASON", "ATTEMPTS", "DEAD-LETTERED", "REDRIVES", "STATE", "AGE", "ERROR")
		for _, e := range res.shown {
			orig, errText := "-", e.Error
			if e.Original != nil {
				orig = fmt.Sprintf("%d/%d", e.Original.Partition, e.Original.Offset)
				if e.Original.Topic != inbox {
					orig = e.Original.Topic + "/" + orig
				}
			}
			if e.Invalid != "" {
				errText = e.Invalid
			}
			t.row(e.DLT, orig, e.SagaID, e.MessageType, e.Reason, strconv.Itoa(e.Attempts), strconv.Itoa(e.DeadLetters),
				strconv.Itoa(e.RedriveCount), e.State, age(now, e.Timestamp), shorten(errText, maxErrorWidth))
		}
		if err := t.flush(); err != nil {
			return res, err
		}
	}

	// The summary and notes go to stderr: stdout holds the data alone.
	w := st.errw
	if len(v.heads) == 0 && !v.idled {
		fmt.Fprintf(w, "no dead-letter records in %s\n", topic)
	} else {
		of := ""
		if res.matched != len(v.heads) {
			of = fmt.Sprintf(" of %d", len(v.heads))
		}
		noun := "records"
		if res.matched == 1 && of == "" {
			noun = "record"
		}
		fmt.Fprintf(w, "%d%s %s of %s%s: %d pending, %d redriven, %d invalid; %s; the topic holds %s",
			res.matched, of, noun, topic, limitNote(len(res.shown), res.matched), counts[statePending], counts[stateRedriven], counts[stateInvalid],
			plural(redrives, "redrive"), plural(len(v.all), "dead letter"))
		if v.audit.missing {
			fmt.Fprintf(w, " (no topic %s yet: no audited redrive)\n", v.audit.topic)
		} else {
			fmt.Fprintf(w, " (redrive history: %s)\n", v.audit.topic)
		}
	}
	if v.idled {
		fmt.Fprintf(w, "stopped before the end offsets of %s taken at start: no record for %s (the rest may be aborted records)\n",
			topic, orDefault(opt.idle, defaultIdle))
	}
	if v.legacyErr != nil {
		fmt.Fprintf(w, "cannot read the offsets of group %s (redrives of sagactl before the audit topic): %v\n", redriveGroup(opt.sagaType), v.legacyErr)
	}
	if counts[stateInvalid] > 0 {
		fmt.Fprintf(w, "%d of them are not dead-letter records (no kafka_dlt-original-* headers); redrive skips them\n", counts[stateInvalid])
	}
	return res, nil
}

// showOptions are the options of dlq show.
type showOptions struct {
	sagaType string
	kafka    []kgo.Opt
	at       pos
	output   string
	timeout  time.Duration
	idle     time.Duration
}

// dlqRecord is one dead-letter record in full, as dlq show prints it.
type dlqRecord struct {
	*dlqEntry
	Topic string `json:"topic"`
	Key   string `json:"key"`
	// KeyEncoding and ValueEncoding are "base64" when the bytes are not
	// UTF-8 text, and empty otherwise.
	KeyEncoding   string       `json:"key_encoding,omitempty"`
	Value         string       `json:"value"`
	ValueEncoding string       `json:"value_encoding,omitempty"`
	Headers       []headerView `json:"headers"`
}

// headerView is a record header, decoded.
type headerView struct {
	Key string `json:"key"`
	// Value is the header's text; a number for Spring's binary headers
	// (kafka_dlt-original-partition, -offset, -timestamp); base64 for
	// other bytes that are not UTF-8 text.
	Value any `json:"value"`
	// Encoding is "int32" or "int64" (big-endian, as Spring writes them)
	// or "base64"; empty for text.
	Encoding string `json:"encoding,omitempty"`
	// Time is the value of a timestamp header (Unix milliseconds) as a time.
	Time *time.Time `json:"time,omitempty"`
}

// decodeHeaders decodes r's headers: Spring's binary headers as numbers.
func decodeHeaders(hs []kgo.RecordHeader) []headerView {
	out := make([]headerView, 0, len(hs))
	for _, h := range hs {
		hv := headerView{Key: h.Key}
		switch {
		case h.Key == dlq.HeaderOriginalPartition && len(h.Value) == 4:
			hv.Value, hv.Encoding = int32(binary.BigEndian.Uint32(h.Value)), "int32"
		case (h.Key == dlq.HeaderOriginalOffset || h.Key == dlq.HeaderOriginalTimestamp) && len(h.Value) == 8:
			n := int64(binary.BigEndian.Uint64(h.Value))
			hv.Value, hv.Encoding = n, "int64"
			if h.Key == dlq.HeaderOriginalTimestamp {
				t := time.UnixMilli(n).UTC()
				hv.Time = &t
			}
		default:
			hv.Value, hv.Encoding = textOrBase64(h.Value)
		}
		out = append(out, hv)
	}
	return out
}

// textOrBase64 returns b as text when it is UTF-8, else as base64.
func textOrBase64(b []byte) (string, string) {
	if utf8.Valid(b) {
		return string(b), ""
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}

// showDLQ prints the dead-letter record at opt.at: every field, its
// headers decoded, its key and value, and its redrives.
func showDLQ(ctx context.Context, brokers []string, st streams, opt showOptions) (*dlqRecord, error) {
	timeout := orDefault(opt.timeout, defaultTimeout)
	topic := message.DLT(opt.sagaType)
	cl, err := newAdminClient(brokers, opt.kafka, timeout)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	spans, err := topicSpans(ctx, adm, brokers, topic, timeout)
	if err != nil {
		return nil, err
	}
	s, ok := spans[opt.at.partition]
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: %s has no partition %d (it has %d)", errNoRecord, topic, opt.at.partition, len(spans))
	case opt.at.offset < s.from || opt.at.offset >= s.to:
		return nil, fmt.Errorf("%w: no offset %d in %s partition %d, which holds offsets %d to %d", errNoRecord, opt.at.offset, topic, opt.at.partition, s.from, s.to-1)
	}
	var rec *kgo.Record
	_, err = scan(ctx, brokers, opt.kafka, timeout, topic, map[int32]span{opt.at.partition: {opt.at.offset, opt.at.offset + 1}},
		orDefault(opt.idle, defaultIdle), func(r *kgo.Record) bool {
			if r.Offset == opt.at.offset {
				rec = r
			}
			return false
		})
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, fmt.Errorf("%w: %s %s is a transaction marker or a record of an aborted transaction", errNoRecord, topic, opt.at)
	}
	l, err := readAudit(ctx, brokers, opt.kafka, adm, opt.sagaType, timeout, orDefault(opt.idle, defaultIdle))
	if err != nil {
		return nil, err
	}
	e := newEntry(rec)
	e.Redrives = l.events(e.pos)
	if len(e.Redrives) == 0 {
		if legacy, err := legacyOffsets(ctx, adm, opt.sagaType); err == nil && e.Offset < legacy[e.Partition] {
			e.Redrives = []redriveEvent{{DLT: e.DLT, Group: redriveGroup(opt.sagaType)}}
		}
	}
	e.RedriveCount = len(e.Redrives)
	if e.Invalid == "" {
		e.State = statePending
		if e.RedriveCount > 0 {
			e.State = stateRedriven
		}
	}
	out := &dlqRecord{dlqEntry: e, Topic: topic, Headers: decodeHeaders(rec.Headers)}
	out.Key, out.KeyEncoding = textOrBase64(rec.Key)
	out.Value, out.ValueEncoding = textOrBase64(rec.Value)
	if opt.output != outTable {
		return out, writeData(st.out, opt.output, out)
	}
	return out, printRecord(st.out, out)
}

// errNoRecord means dlq show found no record at the position given.
var errNoRecord = errors.New("no such record")

// printRecord prints r as dlq show -o table does: one field a line, as
// kubectl describe does, then the headers, the key and the value.
func printRecord(w io.Writer, r *dlqRecord) error {
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	field := func(name, value string) {
		if value == "" {
			value = "-"
		}
		fmt.Fprintf(tw, "%s:\t%s\n", name, value)
	}
	field("DLT", fmt.Sprintf("%s %s", r.Topic, r.DLT))
	field("Dead-lettered", formatTime(r.Timestamp))
	field("State", r.State)
	if r.Invalid != "" {
		field("Invalid", r.Invalid)
	}
	field("Saga ID", quoteIfNeeded(r.Key))
	field("Message type", r.MessageType)
	if r.Original != nil {
		field("Original", fmt.Sprintf("%s partition %d offset %d, at %s", r.Original.Topic, r.Original.Partition, r.Original.Offset, formatTime(r.Original.Timestamp)))
	}
	field("Group", r.Group)
	field("Reason", r.Reason)
	field("Attempts", strconv.Itoa(r.Attempts))
	field("First failure", formatTime(r.FirstFailure))
	field("Last failure", formatTime(r.LastFailure))
	field("Error type", r.ErrorType)
	field("Error", quoteIfNeeded(r.Error))
	field("Redrive of", r.RedriveOf)
	field("Redrives", strconv.Itoa(r.RedriveCount))
	tw.Flush()
	for _, ev := range r.Redrives {
		if ev.Group != "" {
			fmt.Fprintf(w, "  %s redriven by a sagactl before the audit topic (group %s)\n", ev.DLT, ev.Group)
			continue
		}
		fmt.Fprintf(w, "  %s redriven %s by %s, run %s: %s\n", ev.DLT, formatTime(ev.At), quoteIfNeeded(ev.By), ev.Run, quoteIfNeeded(ev.Note))
	}
	fmt.Fprintln(w, "Headers:")
	tw = tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	for _, h := range r.Headers {
		v := fmt.Sprint(h.Value)
		switch {
		case h.Time != nil:
			v += fmt.Sprintf(" (%s, %s)", h.Encoding, formatTime(*h.Time))
		case h.Encoding == "base64":
			v += " (base64)"
		case h.Encoding != "":
			v += " (" + h.Encoding + ")"
		default:
			v = quoteIfNeeded(v)
		}
		fmt.Fprintf(tw, "  %s:\t%s\n", quoteIfNeeded(h.Key), v)
	}
	tw.Flush()
	key, value := quoteIfNeeded(r.Key), quoteIfNeeded(r.Value)
	if r.KeyEncoding != "" {
		key += " (" + r.KeyEncoding + ")"
	}
	if r.ValueEncoding != "" {
		value += " (" + r.ValueEncoding + ")"
	}
	_, err := fmt.Fprintf(w, "Key: %s\nValue: %s\n", key, value)
	return err
}

// quoteIfNeeded returns s as it is when it is printable on one line, and
// Go-quoted otherwise, so that no control character reaches the terminal.
func quoteIfNeeded(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) && r != ' ' {
			return strconv.Quote(s)
		}
	}
	return s
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
