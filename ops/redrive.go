package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
)

// ErrNotConfirmed is what a Confirm hook returns to say no: nothing is
// sent. Any other error of the hook stops the action the same way.
var ErrNotConfirmed = errors.New("not confirmed")

// Clock is the time source of a redrive: its rate limit waits on it. The
// zero value is the real clock.
type Clock struct {
	NowFunc   func() time.Time
	SleepFunc func(ctx context.Context, d time.Duration) error
}

// Now returns the time.
func (c Clock) Now() time.Time {
	if c.NowFunc == nil {
		return time.Now()
	}
	return c.NowFunc()
}

// Sleep waits for d, or until ctx is done (it then returns ctx.Err()).
func (c Clock) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	if c.SleepFunc != nil {
		return c.SleepFunc(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Selection picks the dead letters a redrive sends back: those that match
// Filter and were never redriven, oldest first. The zero value selects
// every pending record.
type Selection struct {
	Filter
	// Limit is the most records to redrive, oldest first; 0: all.
	Limit int
	// MaxRedrives skips a record whose original was redriven that many
	// times already, failing each time; 0: no limit (sagactl's default
	// is 3, as the engine gives a record three attempts).
	MaxRedrives int
}

// RedriveRequest is a redrive to do: which records, who and why.
type RedriveRequest struct {
	SagaType string
	Selection
	// By and Note are who redrives and why, for the audit record. By must
	// pass audit.ValidName.
	By, Note string
	// Tool names the program in the audit record (audit.Record.Tool);
	// "" means "ksaga-ops".
	Tool string
	// Rate is the most records redriven per second; 0: no limit. A
	// transaction then holds at most a second's worth.
	Rate float64
	// Batch bounds the records of one transaction; 0 means 500.
	Batch int
	Clock Clock

	// Confirm, when not nil, is called with the records selected, once
	// they are known and before anything is produced; an error (e.g.
	// ErrNotConfirmed, or a console's "the selection changed since the
	// preview") stops the redrive with nothing sent. It is not called when
	// nothing is selected.
	Confirm func(selected []audit.Entry) error
	// Committed, when not nil, is called after each transaction commits,
	// with its audit record (whose Records are the records it redrove).
	Committed func(audit.Record)
	// TopicCreated, when not nil, is called if the redrive creates the
	// audit topic.
	TopicCreated TopicCreated
}

// RedriveResult is what a redrive did, or would do in a preview.
type RedriveResult struct {
	DryRun bool   `json:"dry_run"`
	Run    string `json:"run,omitempty"`
	// Redriven are the records redriven (to be redriven, in a preview),
	// oldest first.
	Redriven []audit.Entry `json:"redriven"`
	// AlreadyRedriven counts the records an earlier run redrove.
	AlreadyRedriven int `json:"already_redriven"`
	// NotMatching counts the records the filter leaves out.
	NotMatching int `json:"not_matching"`
	// OverLimit counts the records that matched but Limit left.
	OverLimit int `json:"over_limit"`
	// OverMaxRedrives counts the records that matched but whose original
	// was redriven MaxRedrives times already.
	OverMaxRedrives int `json:"over_max_redrives"`
	// Invalid counts records that are not dead-letter records.
	Invalid int `json:"invalid"`
	// Missing counts records selected but gone when their turn came
	// (deleted by retention meanwhile).
	Missing int `json:"missing,omitempty"`
	// Audit are the audit records written, one per transaction.
	Audit []audit.Record `json:"audit"`
	// Incomplete is set when a read stopped before the end offsets.
	Incomplete bool `json:"incomplete,omitempty"`
}

// defaultBatch bounds the records of one redrive transaction.
const defaultBatch = 500

// PreviewRedrive says what Redrive would do with sel now, per record, and
// changes nothing: it does not fence a running redrive either. Its result
// has DryRun set and no Run or Audit.
func PreviewRedrive(ctx context.Context, k Kafka, sagaType string, sel Selection) (RedriveResult, error) {
	return redrive(ctx, k, RedriveRequest{SagaType: sagaType, Selection: sel}, true)
}

// Redrive re-produces the original of each record of
// saga.<type>.inbox-dlt that r selects (the same key, value and headers,
// without the dead-letter headers, plus message.HeaderRedriveOf:
// "<dlt-partition>:<dlt-offset>") to its original topic and partition, up
// to the end offsets taken when it starts, oldest first.
//
// Every transaction holds redriven records and one audit record on
// saga.<type>.audit that names their DLT offsets, by whom and why: the
// records and their audit commit together or not at all. The audit is the
// redrive history: a run skips every offset an audit record names, so no
// dead-letter record is redriven twice, even when a run dies midway. Runs
// of one saga type share a transactional id (RedriveGroup): a run fences
// every earlier one before it reads the audit topic, so two concurrent runs
// cannot both redrive a record.
//
// An error stops the run; what was committed stays committed and audited
// (the result says what), and a new run continues. Cancelling ctx aborts
// the open transaction. A dead-letter topic that does not exist is an error
// wrapping ErrNoTopic; r.Confirm's error is returned wrapped.
func Redrive(ctx context.Context, k Kafka, r RedriveRequest) (RedriveResult, error) {
	return redrive(ctx, k, r, false)
}

func redrive(ctx context.Context, k Kafka, r RedriveRequest, dryRun bool) (RedriveResult, error) {
	res := RedriveResult{DryRun: dryRun, Redriven: []audit.Entry{}, Audit: []audit.Record{}}
	topic := message.DLT(r.SagaType)
	if !dryRun {
		if err := audit.ValidName(r.By); err != nil {
			return res, fmt.Errorf("redrive: by: %w", err)
		}
	}

	cl, err := k.newAdminClient()
	if err != nil {
		return res, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	spans, err := topicSpans(ctx, k, adm, topic)
	if err != nil {
		return res, err
	}

	var tx *kgo.Client
	var auditParts int32
	if !dryRun {
		if auditParts, err = ensureAudit(ctx, adm, r.SagaType, r.TopicCreated); err != nil {
			return res, err
		}
		tx, err = kgo.NewClient(append(k.clientOpts(),
			kgo.TransactionalID(RedriveGroup(r.SagaType)),
			// A redriven record goes back to the partition it was consumed
			// from; the audit record to its key's partition.
			kgo.RecordPartitioner(kgo.ManualPartitioner()),
		)...)
		if err != nil {
			return res, err
		}
		defer tx.Close()
		// Registering the transactional id fences any other run and
		// completes its open transaction, so the audit read next holds
		// every redrive committed before, and the other run none after.
		// A preview does not fence: it must not stop a real run.
		if _, _, err := tx.ProducerID(ctx); err != nil {
			return res, fmt.Errorf("register the transactional id %s: %w", RedriveGroup(r.SagaType), err)
		}
	}

	v, err := loadDeadLetters(ctx, k, adm, r.SagaType, spans)
	if err != nil {
		return res, err
	}
	res.Incomplete = v.Incomplete
	if !dryRun {
		// Redriving without the whole history could redrive twice.
		switch {
		case v.LegacyErr != nil:
			return res, fmt.Errorf("cannot read the offsets of group %s, which hold the redrives of sagactl before the audit topic: %w", RedriveGroup(r.SagaType), v.LegacyErr)
		case v.audit.Incomplete:
			return res, fmt.Errorf("cannot read %s to its end (no record for %s): its history decides what was redriven; try again", v.audit.Topic, k.idle())
		}
	}

	var sel []*DeadLetter
	for _, e := range v.all {
		switch {
		case e.Invalid != "":
			res.Invalid++
		case e.redriven:
			res.AlreadyRedriven++
		case !r.Filter.Match(e):
			res.NotMatching++
		case r.MaxRedrives > 0 && e.RedriveCount >= r.MaxRedrives:
			res.OverMaxRedrives++
		default:
			sel = append(sel, e)
		}
	}
	sort.SliceStable(sel, func(i, j int) bool {
		a, b := sel[i], sel[j]
		if !a.Timestamp.Equal(b.Timestamp) {
			return a.Timestamp.Before(b.Timestamp)
		}
		if a.Partition != b.Partition {
			return a.Partition < b.Partition
		}
		return a.Offset < b.Offset
	})
	if r.Limit > 0 && len(sel) > r.Limit {
		res.OverLimit = len(sel) - r.Limit
		sel = sel[:r.Limit]
	}

	if len(sel) == 0 || dryRun {
		for _, e := range sel {
			res.Redriven = append(res.Redriven, redrivenEntry(e))
		}
		return res, nil
	}

	if r.Confirm != nil {
		entries := make([]audit.Entry, len(sel))
		for i, e := range sel {
			entries[i] = redrivenEntry(e)
		}
		if err := r.Confirm(entries); err != nil {
			return res, fmt.Errorf("%w: nothing was redriven", err)
		}
	}

	res.Run = audit.NewRun(r.Clock.Now())
	err = redriveSelected(ctx, k, r, tx, auditParts, topic, sel, &res)
	return res, err
}

// redriveSelected redrives sel, reading them again from the DLT, in
// transactions of at most r.Batch records and one audit record each.
func redriveSelected(ctx context.Context, k Kafka, r RedriveRequest, tx *kgo.Client, auditParts int32,
	topic string, sel []*DeadLetter, res *RedriveResult) error {
	want := make(map[Position]*DeadLetter, len(sel))
	order := make(map[Position]int, len(sel))
	spans := make(map[int32]span)
	for i, e := range sel {
		order[e.pos] = i
		want[e.pos] = e
		s, ok := spans[e.Partition]
		if !ok {
			s = span{e.Offset, e.Offset + 1}
		}
		s.from, s.to = min(s.from, e.Offset), max(s.to, e.Offset+1)
		spans[e.Partition] = s
	}
	batch := r.Batch
	if batch <= 0 {
		batch = defaultBatch
	}
	if r.Rate > 0 {
		batch = min(batch, max(1, int(r.Rate)))
	}
	tool := r.Tool
	if tool == "" {
		tool = "ksaga-ops"
	}

	start, sent := r.Clock.Now(), 0
	var recs []*kgo.Record
	var ents []*DeadLetter

	commit := func() error {
		// Oldest first within a transaction, as selected; the records of
		// one DLT partition keep their order either way.
		idx := make([]int, len(ents))
		for i := range idx {
			idx[i] = i
		}
		sort.SliceStable(idx, func(i, j int) bool { return order[ents[idx[i]].pos] < order[ents[idx[j]].pos] })
		sortedRecs, sortedEnts := make([]*kgo.Record, len(idx)), make([]*DeadLetter, len(idx))
		for i, k := range idx {
			sortedRecs[i], sortedEnts[i] = recs[k], ents[k]
		}
		recs, ents = sortedRecs, sortedEnts
		a := audit.New(message.AuditRedrive, r.SagaType, res.Run, r.By, r.Note, tool, r.Clock.Now())
		a.DLT, a.Count, a.Filters = topic, len(ents), r.Selection.audit()
		for _, e := range ents {
			a.Records = append(a.Records, redrivenEntry(e))
		}
		ar, err := a.KafkaRecord(res.Run, auditParts)
		if err != nil {
			return err
		}
		if err := tx.BeginTransaction(); err != nil {
			return fmt.Errorf("begin transaction: %w", err)
		}
		var mu sync.Mutex
		var perr error
		promise := func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				perr = cmp.Or(perr, err)
				mu.Unlock()
			}
		}
		var werr error
		for _, rec := range recs {
			if r.Rate > 0 {
				due := start.Add(time.Duration(float64(sent) / r.Rate * float64(time.Second)))
				if werr = r.Clock.Sleep(ctx, due.Sub(r.Clock.Now())); werr != nil {
					break
				}
			}
			tx.Produce(ctx, rec, promise)
			sent++
		}
		if werr == nil {
			tx.Produce(ctx, ar, promise)
			werr = tx.Flush(ctx)
		}
		mu.Lock()
		werr = cmp.Or(werr, perr, ctx.Err())
		mu.Unlock()
		// End with a context that outlives ctx by a bounded time, so that
		// an interrupted run still aborts cleanly.
		endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if werr != nil {
			aerr := tx.AbortBufferedRecords(endCtx)
			if aerr == nil {
				aerr = tx.EndTransaction(endCtx, kgo.TryAbort)
			}
			if aerr != nil {
				return fmt.Errorf("produce: %w (and abort: %w)", werr, fenced(aerr))
			}
			return fmt.Errorf("produce (the transaction was aborted): %w", fenced(werr))
		}
		if err := tx.EndTransaction(endCtx, kgo.TryCommit); err != nil {
			return fmt.Errorf("commit: %w", fenced(err))
		}
		res.Redriven = append(res.Redriven, a.Records...)
		res.Audit = append(res.Audit, a)
		if r.Committed != nil {
			r.Committed(a)
		}
		recs, ents = recs[:0], ents[:0]
		return nil
	}

	var cerr error
	idled, err := scan(ctx, k, topic, spans, func(rec *kgo.Record) bool {
		p := Position{rec.Partition, rec.Offset}
		e, ok := want[p]
		if !ok {
			return true
		}
		delete(want, p)
		info, err := dlq.Parse(rec)
		if err != nil {
			return true // parsed before: cannot happen
		}
		recs, ents = append(recs, redriveRecord(rec, info)), append(ents, e)
		if len(recs) >= batch {
			cerr = commit()
		}
		return cerr == nil
	})
	if err == nil && cerr == nil && len(recs) > 0 {
		cerr = commit()
	}
	if err = cmp.Or(cerr, err); err != nil {
		return err
	}
	res.Missing = len(want)
	res.Incomplete = res.Incomplete || idled
	slices.SortStableFunc(res.Redriven, func(a, b audit.Entry) int {
		return order[Position{a.Partition, a.Offset}] - order[Position{b.Partition, b.Offset}]
	})
	return nil
}

// audit returns the filters of s as the audit record names them.
func (s Selection) audit() *audit.Filters {
	f := s.Filter
	a := &audit.Filters{Reason: f.Reason, SagaID: f.SagaID, Limit: s.Limit}
	if !f.Since.IsZero() {
		a.Since = &f.Since
	}
	if !f.Until.IsZero() {
		a.Until = &f.Until
	}
	if *a == (audit.Filters{}) {
		return nil
	}
	return a
}

// fenced explains an error of a transaction fenced by another run.
func fenced(err error) error {
	if errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) {
		return fmt.Errorf("another redrive of this saga type started and fenced this one: %w", err)
	}
	return err
}

// redrivenEntry is the audit entry of redriving e.
func redrivenEntry(e *DeadLetter) audit.Entry {
	return audit.Entry{Partition: e.Partition, Offset: e.Offset, SagaID: e.SagaID, MessageType: e.MessageType, Reason: e.Reason,
		To: e.Original.Topic + "/" + strconv.Itoa(int(e.Original.Partition))}
}

// redriveRecord returns the record that redrives dead-letter record r: the
// original key, value and headers, to the original topic and partition,
// with message.HeaderRedriveOf set to r's partition and offset.
func redriveRecord(r *kgo.Record, info dlq.Info) *kgo.Record {
	o := info.Original
	headers := make([]kgo.RecordHeader, 0, len(o.Headers)+1)
	for _, h := range o.Headers {
		if h.Key != message.HeaderRedriveOf {
			headers = append(headers, h)
		}
	}
	headers = append(headers, kgo.RecordHeader{Key: message.HeaderRedriveOf, Value: []byte(Position{r.Partition, r.Offset}.String())})
	return &kgo.Record{Topic: info.Topic, Partition: info.Partition, Key: o.Key, Value: o.Value, Headers: headers}
}
