package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/ops"
)

// headerRedriveOf is set on every record sagactl redrives to the
// "<partition>:<offset>" of the dead-letter record it came from. A redriven
// record that fails again is dead-lettered with it, which links the two.
const headerRedriveOf = message.HeaderRedriveOf

// redriveGroup returns the transactional id of dlq redrive runs for a saga
// type (ops.RedriveGroup).
func redriveGroup(sagaType string) string { return ops.RedriveGroup(sagaType) }

const (
	// defaultIdle is how long a read waits for the next record before it
	// concludes that the rest up to the end offsets is invisible (records of
	// aborted transactions) and stops.
	defaultIdle = 10 * time.Second
	// maxErrorWidth is how much of an error message dlq list prints.
	maxErrorWidth = 80
)

// errNoTopic means the dead-letter topic does not exist.
var errNoTopic = ops.ErrNoTopic

// kafkaOf returns how ops reaches the Kafka at brokers: sec are the TLS
// and SASL options (conn.Kafka.Opts), timeout bounds the first request,
// idle a read's wait for the next record.
func kafkaOf(brokers []string, sec []kgo.Opt, timeout, idle time.Duration) ops.Kafka {
	return ops.Kafka{Brokers: brokers, Opts: append(slices.Clip(sec), kgo.ClientID("sagactl")),
		Timeout: orDefault(timeout, defaultTimeout), Idle: orDefault(idle, defaultIdle)}
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

// toOps returns f as package ops says it.
func (f filters) toOps() ops.Filter {
	return ops.Filter{Reason: f.reason, SagaID: f.sagaID, Since: f.since, Until: f.until}
}

// States of a dead-letter record.
const (
	statePending  = ops.StatePending
	stateRedriven = ops.StateRedriven
	stateInvalid  = ops.StateInvalid
)

// dlqEntry is a dead-letter record as dlq list and dlq show report it.
type dlqEntry = ops.DeadLetter

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
	view    *ops.DeadLetters
}

// listDLQ prints one row per original record of saga.<type>.inbox-dlt, from
// the beginning up to the end offsets taken when it starts: the newest of
// its dead letters, with how often it was dead-lettered and redriven. It
// returns an error wrapping errNoTopic when the topic does not exist.
func listDLQ(ctx context.Context, brokers []string, st streams, opt listOptions) (listResult, error) {
	var res listResult
	topic := message.DLT(opt.sagaType)
	v, err := ops.ListDeadLetters(ctx, kafkaOf(brokers, opt.kafka, opt.timeout, opt.idle), opt.sagaType)
	if err != nil {
		return res, err
	}
	res.view = v
	counts := map[string]int{}
	redrives := 0
	res.shown = []*dlqEntry{}
	f := opt.filters.toOps()
	for _, e := range v.Originals {
		if !f.Match(e) || (opt.state != "" && e.State != opt.state) {
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
	if len(v.Originals) == 0 && !v.Incomplete {
		fmt.Fprintf(w, "no dead-letter records in %s\n", topic)
	} else {
		of := ""
		if res.matched != len(v.Originals) {
			of = fmt.Sprintf(" of %d", len(v.Originals))
		}
		noun := "records"
		if res.matched == 1 && of == "" {
			noun = "record"
		}
		fmt.Fprintf(w, "%d%s %s of %s%s: %d pending, %d redriven, %d invalid; %s; the topic holds %s",
			res.matched, of, noun, topic, limitNote(len(res.shown), res.matched), counts[statePending], counts[stateRedriven], counts[stateInvalid],
			plural(redrives, "redrive"), plural(v.Records, "dead letter"))
		if v.AuditMissing {
			fmt.Fprintf(w, " (no topic %s yet: no audited redrive)\n", v.AuditTopic)
		} else {
			fmt.Fprintf(w, " (redrive history: %s)\n", v.AuditTopic)
		}
	}
	if v.Incomplete {
		fmt.Fprintf(w, "stopped before the end offsets of %s taken at start: no record for %s (the rest may be aborted records)\n",
			topic, orDefault(opt.idle, defaultIdle))
	}
	if v.LegacyErr != nil {
		fmt.Fprintf(w, "cannot read the offsets of group %s (redrives of sagactl before the audit topic): %v\n", redriveGroup(opt.sagaType), v.LegacyErr)
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
type dlqRecord = ops.DeadLetterRecord

// showDLQ prints the dead-letter record at opt.at: every field, its
// headers decoded, its key and value, and its redrives.
func showDLQ(ctx context.Context, brokers []string, st streams, opt showOptions) (*dlqRecord, error) {
	out, err := ops.GetDeadLetter(ctx, kafkaOf(brokers, opt.kafka, opt.timeout, opt.idle), opt.sagaType, opt.at.toOps())
	if err != nil {
		return nil, err
	}
	if opt.output != outTable {
		return out, writeData(st.out, opt.output, out)
	}
	return out, printRecord(st.out, out)
}

// errNoRecord means dlq show found no record at the position given.
var errNoRecord = ops.ErrNoRecord

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
