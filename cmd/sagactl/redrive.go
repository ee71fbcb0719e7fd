package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/ops"
	ktopic "github.com/ksaga/ksaga/topic"
)

// errNotConfirmed means the operator answered no to the confirmation.
var errNotConfirmed = ops.ErrNotConfirmed

// clock is the time source of a redrive: its rate limit waits on it.
// The zero value is the real clock.
type clock struct {
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
}

func (c clock) Now() time.Time { return c.toOps().Now() }

func (c clock) toOps() ops.Clock { return ops.Clock{NowFunc: c.now, SleepFunc: c.sleep} }

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
type redriveResult = ops.RedriveResult

// redriveDLQ re-produces the originals of the records of
// saga.<type>.inbox-dlt that match opt.filters and were never redriven, up
// to the end offsets taken when it starts, oldest first, at most opt.limit
// of them, at most opt.rate a second, with an audit record in each
// transaction (ops.Redrive); --dry-run is ops.PreviewRedrive.
//
// It asks for confirmation unless opt.yes, and prints each record redriven
// and, on stderr, a summary and a progress bar. An error stops the run;
// what was committed stays committed and audited (run again to continue).
// It returns an error wrapping errNotConfirmed when the operator answers
// no, and an error wrapping errNoTopic when the topic does not exist.
func redriveDLQ(ctx context.Context, brokers []string, st streams, opt redriveOptions) (redriveResult, error) {
	k := kafkaOf(brokers, opt.kafka, opt.timeout, opt.idle)
	topic := message.DLT(opt.sagaType)
	sel := ops.Selection{Filter: opt.filters.toOps(), Limit: opt.limit, MaxRedrives: opt.maxRedrives}
	if opt.dryRun {
		res, err := ops.PreviewRedrive(ctx, k, opt.sagaType, sel)
		if err != nil {
			return res, err
		}
		if opt.output == outTable {
			for _, e := range res.Redriven {
				fmt.Fprintln(st.out, redriveLine("would redrive", e))
			}
		}
		return res, finishRedrive(st, opt, topic, res, nil)
	}
	bar := newProgress(st, "redrive", 0)
	defer bar.clear()
	res, err := ops.Redrive(ctx, k, ops.RedriveRequest{SagaType: opt.sagaType, Selection: sel, By: opt.by, Note: opt.note, Tool: "sagactl",
		Rate: opt.rate, Batch: opt.batch, Clock: opt.clock.toOps(),
		TopicCreated: topicCreated(st),
		Confirm: func(sel []auditEntry) error {
			if !opt.yes {
				q := fmt.Sprintf("Redrive %s of %s (%s) as %s, note %q?", plural(len(sel), "record"), topic, reasonCounts(sel), opt.by, opt.note)
				if !confirm(ctx, st, q) {
					return errNotConfirmed
				}
			}
			bar = newProgress(st, "redrive", len(sel))
			return nil
		},
		Committed: func(a auditRecord) {
			if opt.output == outTable {
				bar.clear()
				for _, e := range a.Records {
					fmt.Fprintln(st.out, redriveLine("redriven", e))
				}
			}
			bar.add(len(a.Records))
		},
	})
	if err != nil && res.Run == "" {
		// Nothing was redriven: no summary.
		return res, err
	}
	return res, finishRedrive(st, opt, topic, res, err)
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

// redriveLine is the line of dlq redrive about e.
func redriveLine(what string, e auditEntry) string {
	return fmt.Sprintf("%s %s %s -> %s %s (%s)", what, posOf(e), printable(e.SagaID), e.To, printable(e.MessageType), printable(e.Reason))
}

// reasonCounts says how many of es have each reason: "retries-exhausted: 3, invalid: 1".
func reasonCounts(es []auditEntry) string {
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
