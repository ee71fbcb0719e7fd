package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
	ktopic "github.com/ksaga/ksaga/topic"
)

// errNotConfirmed means the operator answered no to the confirmation.
var errNotConfirmed = errors.New("not confirmed")

// clock is the time source of a redrive: its rate limit waits on it.
// The zero value is the real clock.
type clock struct {
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
}

func (c clock) Now() time.Time {
	if c.now == nil {
		return time.Now()
	}
	return c.now()
}

// Sleep waits for d, or until ctx is done (it then returns ctx.Err()).
func (c clock) Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	if c.sleep != nil {
		return c.sleep(ctx, d)
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

// redriveOptions are the options of dlq redrive.
type redriveOptions struct {
	sagaType string
	// kafka are the clients' TLS and SASL options (conn.Kafka.Opts).
	kafka []kgo.Opt
	// filters select the records to redrive.
	filters filters
	// limit is the most records to redrive, oldest first; 0: all.
	limit int
	// maxRedrives skips a record whose original was redriven that many
	// times already (each time it failed again); 0: no limit.
	maxRedrives int
	// rate is the most records redriven per second; 0: no limit.
	rate float64
	// dryRun prints what would be done and changes nothing.
	dryRun bool
	// yes skips the confirmation.
	yes bool
	// by and note are who redrives and why, for the audit record.
	by, note string
	output   string
	// timeout bounds the first request to Kafka.
	timeout time.Duration
	// idle is how long to wait for a record before giving up on the rest
	// of a partition; 0 means defaultIdle.
	idle time.Duration
	// batch bounds the records of one transaction; 0 means defaultBatch.
	// With a rate, a transaction holds at most a second's worth.
	batch int
	clock clock
}

// redriveResult is what a redrive did, or would do in a dry run; dlq
// redrive -o json prints it.
type redriveResult struct {
	DryRun bool   `json:"dry_run"`
	Run    string `json:"run,omitempty"`
	// Redriven are the records redriven (to be redriven, in a dry run),
	// oldest first.
	Redriven []auditEntry `json:"redriven"`
	// AlreadyRedriven counts the records an earlier run redrove.
	AlreadyRedriven int `json:"already_redriven"`
	// NotMatching counts the records the filters leave out.
	NotMatching int `json:"not_matching"`
	// OverLimit counts the records that matched but --limit left.
	OverLimit int `json:"over_limit"`
	// OverMaxRedrives counts the records that matched but whose original
	// was redriven --max-redrives times already.
	OverMaxRedrives int `json:"over_max_redrives"`
	// Invalid counts records that are not dead-letter records.
	Invalid int `json:"invalid"`
	// Missing counts records selected but gone when their turn came
	// (deleted by retention meanwhile).
	Missing int `json:"missing,omitempty"`
	// Audit are the audit records written, one per transaction.
	Audit []auditRecord `json:"audit"`
	// Incomplete is set when a read stopped before the end offsets.
	Incomplete bool `json:"incomplete,omitempty"`
}

// redriveDLQ re-produces the originals of the records of
// saga.<type>.inbox-dlt that match opt.filters and were never redriven, up
// to the end offsets taken when it starts, oldest first, at most opt.limit
// of them, at most opt.rate a second.
//
// Every transaction holds redriven records and one audit record on
// saga.<type>.audit that names their DLT offsets, by whom and why: the
// records and their audit commit together or not at all. The audit is the
// redrive history: a run skips every offset an audit record names, so no
// dead-letter record is redriven twice, even when a run dies midway. Runs
// of one saga type share a transactional id (redriveGroup): a run fences
// every earlier one before it reads the audit topic, so two concurrent runs
// cannot both redrive a record. A sagactl older than the audit topic
// recorded its redrives as the committed offsets of the consumer group of
// that name: the records below them count as redriven too.
//
// An error stops the run; what was committed stays committed and audited
// (run again to continue). It returns errNotConfirmed when the operator
// answers no, and an error wrapping errNoTopic when the topic does not
// exist.
func redriveDLQ(ctx context.Context, brokers []string, st streams, opt redriveOptions) (redriveResult, error) {
	res := redriveResult{DryRun: opt.dryRun, Redriven: []auditEntry{}, Audit: []auditRecord{}}
	timeout := orDefault(opt.timeout, defaultTimeout)
	idle := orDefault(opt.idle, defaultIdle)
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

	var tx *kgo.Client
	var auditParts int32
	if !opt.dryRun {
		if auditParts, err = ensureAudit(ctx, adm, opt.sagaType, st.errw); err != nil {
			return res, err
		}
		tx, err = kgo.NewClient(append(clientOpts(brokers, opt.kafka, timeout),
			kgo.TransactionalID(redriveGroup(opt.sagaType)),
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
		// A dry run does not fence: it must not stop a real run.
		if _, _, err := tx.ProducerID(ctx); err != nil {
			return res, fmt.Errorf("register the transactional id %s: %w", redriveGroup(opt.sagaType), err)
		}
	}

	v, err := loadDLQ(ctx, brokers, opt.kafka, adm, opt.sagaType, spans, timeout, idle)
	if err != nil {
		return res, err
	}
	res.Incomplete = v.idled
	if !opt.dryRun {
		// Redriving without the whole history could redrive twice.
		switch {
		case v.legacyErr != nil:
			return res, fmt.Errorf("cannot read the offsets of group %s, which hold the redrives of sagactl before the audit topic: %w", redriveGroup(opt.sagaType), v.legacyErr)
		case v.audit.idled:
			return res, fmt.Errorf("cannot read %s to its end (no record for %s): its history decides what was redriven; try again", v.audit.topic, idle)
		}
	}

	var sel []*dlqEntry
	for _, e := range v.all {
		switch {
		case e.Invalid != "":
			res.Invalid++
		case e.redriven:
			res.AlreadyRedriven++
		case !opt.filters.match(e):
			res.NotMatching++
		case opt.maxRedrives > 0 && e.RedriveCount >= opt.maxRedrives:
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
	if opt.limit > 0 && len(sel) > opt.limit {
		res.OverLimit = len(sel) - opt.limit
		sel = sel[:opt.limit]
	}

	if len(sel) == 0 || opt.dryRun {
		for _, e := range sel {
			res.Redriven = append(res.Redriven, redrivenEntry(e))
			if opt.output == outTable {
				fmt.Fprintln(st.out, redriveLine("would redrive", e))
			}
		}
		return res, finishRedrive(st, opt, topic, res, nil)
	}

	if !opt.yes {
		q := fmt.Sprintf("Redrive %s of %s (%s) as %s, note %q?", plural(len(sel), "record"), topic, reasonCounts(sel), opt.by, opt.note)
		if !confirm(ctx, st, q) {
			return res, fmt.Errorf("%w: nothing was redriven", errNotConfirmed)
		}
	}

	res.Run = newRun(opt.clock.Now())
	err = redriveSelected(ctx, brokers, st, opt, tx, auditParts, topic, sel, &res)
	return res, finishRedrive(st, opt, topic, res, err)
}

// redriveSelected redrives sel, reading them again from the DLT, in
// transactions of at most opt.batch records and one audit record each.
func redriveSelected(ctx context.Context, brokers []string, st streams, opt redriveOptions, tx *kgo.Client, auditParts int32,
	topic string, sel []*dlqEntry, res *redriveResult) error {
	want := make(map[pos]*dlqEntry, len(sel))
	order := make(map[pos]int, len(sel))
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
	batch := opt.batch
	if batch <= 0 {
		batch = defaultBatch
	}
	if opt.rate > 0 {
		batch = min(batch, max(1, int(opt.rate)))
	}

	bar := newProgress(st, "redrive", len(sel))
	defer bar.clear()
	start, sent := opt.clock.Now(), 0
	var recs []*kgo.Record
	var ents []*dlqEntry

	commit := func() error {
		// Oldest first within a transaction, as selected; the records of
		// one DLT partition keep their order either way.
		idx := make([]int, len(ents))
		for i := range idx {
			idx[i] = i
		}
		sort.SliceStable(idx, func(i, j int) bool { return order[ents[idx[i]].pos] < order[ents[idx[j]].pos] })
		sortedRecs, sortedEnts := make([]*kgo.Record, len(idx)), make([]*dlqEntry, len(idx))
		for i, k := range idx {
			sortedRecs[i], sortedEnts[i] = recs[k], ents[k]
		}
		recs, ents = sortedRecs, sortedEnts
		a := newAuditRecord(message.AuditRedrive, opt.sagaType, res.Run, opt.by, opt.note, opt.clock.Now())
		a.DLT, a.Count, a.Filters = topic, len(ents), opt.filters.audit(opt.limit)
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
				perr = cmpOr(perr, err)
				mu.Unlock()
			}
		}
		var werr error
		for _, r := range recs {
			if opt.rate > 0 {
				due := start.Add(time.Duration(float64(sent) / opt.rate * float64(time.Second)))
				if werr = opt.clock.Sleep(ctx, due.Sub(opt.clock.Now())); werr != nil {
					break
				}
			}
			tx.Produce(ctx, r, promise)
			sent++
		}
		if werr == nil {
			tx.Produce(ctx, ar, promise)
			werr = tx.Flush(ctx)
		}
		mu.Lock()
		werr = cmpOr(werr, perr, ctx.Err())
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
		if opt.output == outTable {
			bar.clear()
			for _, e := range ents {
				fmt.Fprintln(st.out, redriveLine("redriven", e))
			}
		}
		bar.add(len(ents))
		recs, ents = recs[:0], ents[:0]
		return nil
	}

	var cerr error
	idled, err := scan(ctx, brokers, opt.kafka, opt.timeout, topic, spans, orDefault(opt.idle, defaultIdle), func(r *kgo.Record) bool {
		p := pos{r.Partition, r.Offset}
		e, ok := want[p]
		if !ok {
			return true
		}
		delete(want, p)
		info, err := dlq.Parse(r)
		if err != nil {
			return true // parsed before: cannot happen
		}
		recs, ents = append(recs, redriveRecord(r, info)), append(ents, e)
		if len(recs) >= batch {
			cerr = commit()
		}
		return cerr == nil
	})
	if err == nil && cerr == nil && len(recs) > 0 {
		cerr = commit()
	}
	if err = cmpOr(cerr, err); err != nil {
		return err
	}
	res.Missing = len(want)
	res.Incomplete = res.Incomplete || idled
	slices.SortStableFunc(res.Redriven, func(a, b auditEntry) int { return order[posOf(a)] - order[posOf(b)] })
	return nil
}

// finishRedrive prints the outcome of a redrive, or of a dry run, and
// returns err. The summary goes to stderr; -o json and yaml print res.
func finishRedrive(st streams, opt redriveOptions, topic string, res redriveResult, err error) error {
	if opt.output != outTable {
		if werr := writeData(st.out, opt.output, res); werr != nil && err == nil {
			err = werr
		}
	}
	w := st.errw
	skipped := fmt.Sprintf("%d already redriven, %d not matching the filters, %d invalid", res.AlreadyRedriven, res.NotMatching, res.Invalid)
	if res.OverLimit > 0 {
		skipped += fmt.Sprintf(", %d more left by --limit %d", res.OverLimit, opt.limit)
	}
	if res.OverMaxRedrives > 0 {
		skipped += fmt.Sprintf(", %d redriven %d times already and failing each time (--max-redrives %d; 0 lifts it)", res.OverMaxRedrives, opt.maxRedrives, opt.maxRedrives)
	}
	switch {
	case opt.dryRun:
		fmt.Fprintf(w, "dry run: would redrive %s of %s; %s; nothing was produced or committed\n", plural(len(res.Redriven), "record"), topic, skipped)
	case len(res.Redriven) == 0 && err == nil:
		fmt.Fprintf(w, "nothing to redrive in %s: %s\n", topic, skipped)
	default:
		fmt.Fprintf(w, "redriven %s of %s in %s, run %s, audited in %s; %s\n",
			plural(len(res.Redriven), "record"), topic, plural(len(res.Audit), "transaction"), res.Run, ktopic.Audit(opt.sagaType), skipped)
	}
	if res.Missing > 0 {
		fmt.Fprintf(w, "%d selected records were gone when their turn came (deleted by retention?)\n", res.Missing)
	}
	if res.Incomplete {
		fmt.Fprintf(w, "stopped before the end offsets of %s taken at start (no record for %s): run again to continue\n", topic, orDefault(opt.idle, defaultIdle))
	}
	if err != nil && len(res.Redriven) > 0 {
		fmt.Fprintf(w, "stopped by an error after %d records, which are committed and audited: run again to redrive the rest\n", len(res.Redriven))
	}
	return err
}

// fenced explains an error of a transaction fenced by another run.
func fenced(err error) error {
	if errors.Is(err, kerr.ProducerFenced) || errors.Is(err, kerr.InvalidProducerEpoch) {
		return fmt.Errorf("another sagactl dlq redrive of this saga type started and fenced this one: %w", err)
	}
	return err
}

// redrivenEntry is the audit entry of redriving e.
func redrivenEntry(e *dlqEntry) auditEntry {
	return auditEntry{Partition: e.Partition, Offset: e.Offset, SagaID: e.SagaID, MessageType: e.MessageType, Reason: e.Reason,
		To: e.Original.Topic + "/" + strconv.Itoa(int(e.Original.Partition))}
}

// redriveLine is the line of dlq redrive about e.
func redriveLine(what string, e *dlqEntry) string {
	return fmt.Sprintf("%s %s %s -> %s/%d %s (%s)", what, e.DLT, printable(e.SagaID), e.Original.Topic, e.Original.Partition,
		printable(e.MessageType), printable(e.Reason))
}

// reasonCounts says how many of es have each reason: "retries-exhausted: 3, invalid: 1".
func reasonCounts(es []*dlqEntry) string {
	n := make(map[string]int)
	var reasons []string
	for _, e := range es {
		if n[e.Reason] == 0 {
			reasons = append(reasons, e.Reason)
		}
		n[e.Reason]++
	}
	slices.Sort(reasons)
	parts := make([]string, len(reasons))
	for i, r := range reasons {
		parts[i] = fmt.Sprintf("%s: %d", printable(r), n[r])
	}
	return strings.Join(parts, ", ")
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
	headers = append(headers, kgo.RecordHeader{Key: headerRedriveOf, Value: []byte(pos{r.Partition, r.Offset}.String())})
	return &kgo.Record{Topic: info.Topic, Partition: info.Partition, Key: o.Key, Value: o.Value, Headers: headers}
}

// cmpOr returns the first of errs that is not nil.
func cmpOr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
