package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	kaudit "github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/topic"
)

// auditRecord, auditFilters and auditEntry are package audit's: the one
// schema of saga.<type>.audit, which the HTTP API writes too.
type (
	auditRecord  = kaudit.Record
	auditFilters = kaudit.Filters
	auditEntry   = kaudit.Entry
)

// posOf returns where e was in the DLT.
func posOf(e auditEntry) pos { return pos{e.Partition, e.Offset} }

// pos is a record's place in a topic: partition and offset.
type pos struct {
	partition int32
	offset    int64
}

// String is "<partition>:<offset>", as message.HeaderRedriveOf and dlq show
// write it.
func (p pos) String() string {
	return strconv.Itoa(int(p.partition)) + ":" + strconv.FormatInt(p.offset, 10)
}

// parsePos parses "<partition>:<offset>" (or "<partition>/<offset>").
func parsePos(s string) (pos, error) {
	ps, offs, ok := strings.Cut(s, ":")
	if !ok {
		ps, offs, ok = strings.Cut(s, "/")
	}
	if !ok {
		return pos{}, fmt.Errorf("%q: want PARTITION:OFFSET, e.g. 0:42", s)
	}
	p, err1 := strconv.ParseInt(ps, 10, 32)
	o, err2 := strconv.ParseInt(offs, 10, 64)
	if err1 != nil || err2 != nil || p < 0 || o < 0 {
		return pos{}, fmt.Errorf("%q: want PARTITION:OFFSET, two numbers from 0, e.g. 0:42", s)
	}
	return pos{int32(p), o}, nil
}

// redriveEvent is one redrive of a dead-letter record, as dlq list and dlq
// show report it.
type redriveEvent struct {
	// DLT is the dead-letter record that was redriven: the one listed, or
	// an earlier dead letter of the same original.
	DLT  string    `json:"dlt"`
	At   time.Time `json:"at,omitzero"`
	By   string    `json:"by,omitempty"`
	Note string    `json:"note,omitempty"`
	Run  string    `json:"run,omitempty"`
	// Group is set instead for a record that a sagactl older than the
	// audit topic redrove: it committed the offsets of this consumer group.
	Group string `json:"group,omitempty"`
}

// auditLog is what saga.<type>.audit holds.
type auditLog struct {
	topic   string
	records []auditRecord // in the order read; sorted by At
	// redriven maps each DLT record redriven to the records that say so
	// (indexes into records).
	redriven map[pos][]int
	// missing is set when the topic does not exist: no redrive was audited.
	missing bool
	// invalid counts records that are not audit records.
	invalid int
	// idled is set when the read stopped before the end offsets.
	idled bool
}

// events returns the redrives of the DLT record at p.
func (l *auditLog) events(p pos) []redriveEvent {
	var out []redriveEvent
	for _, i := range l.redriven[p] {
		r := &l.records[i]
		out = append(out, redriveEvent{DLT: p.String(), At: r.At, By: r.By, Note: r.Note, Run: r.Run})
	}
	return out
}

// readAudit reads saga.<type>.audit from its start to the end offsets taken
// when it starts (read_committed). A topic that does not exist is an empty
// log with missing set.
//
// A redrive reads it after its transactional producer has fenced any
// earlier run with the same transactional id: the coordinator completes
// that run's open transaction first, so every committed redrive is below
// the end offsets read here, and the fenced run can commit nothing more.
func readAudit(ctx context.Context, brokers []string, sec []kgo.Opt, adm *kadm.Client, sagaType string, timeout, idle time.Duration) (*auditLog, error) {
	l := &auditLog{topic: topic.Audit(sagaType), redriven: make(map[pos][]int)}
	spans, err := topicSpans(ctx, adm, brokers, l.topic, timeout)
	if errors.Is(err, errNoTopic) {
		l.missing = true
		return l, nil
	}
	if err != nil {
		return nil, err
	}
	l.idled, err = scan(ctx, brokers, sec, timeout, l.topic, spans, idle, func(r *kgo.Record) bool {
		var a auditRecord
		if err := json.Unmarshal(r.Value, &a); err != nil || a.Action == "" {
			l.invalid++
			return true
		}
		l.records = append(l.records, a)
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", l.topic, err)
	}
	slices.SortStableFunc(l.records, func(a, b auditRecord) int { return a.At.Compare(b.At) })
	for i, a := range l.records {
		if a.Action != message.AuditRedrive {
			continue
		}
		for _, e := range a.Records {
			l.redriven[posOf(e)] = append(l.redriven[posOf(e)], i)
		}
	}
	return l, nil
}

// ensureAudit returns the partition count of saga.<type>.audit. When the
// topic does not exist (a sagad older than the audit topic created the
// saga's topics), it creates it as sagad would (topic.OfSagaType), with
// the partition count and replication factor of the dead-letter topic,
// and says so on errw.
func ensureAudit(ctx context.Context, adm *kadm.Client, sagaType string, errw io.Writer) (int32, error) {
	name, dltName := topic.Audit(sagaType), message.DLT(sagaType)
	tds, err := adm.ListTopics(ctx, name, dltName)
	if err != nil {
		return 0, fmt.Errorf("describe %s: %w", name, err)
	}
	if td, ok := tds[name]; ok && td.Err == nil && len(td.Partitions) > 0 {
		return int32(len(td.Partitions)), nil
	}
	dltd, ok := tds[dltName]
	if !ok || dltd.Err != nil || len(dltd.Partitions) == 0 {
		return 0, fmt.Errorf("%w: %s (check --saga; sagad creates the topic when it starts)", errNoTopic, dltName)
	}
	spec := topic.Spec{Partitions: len(dltd.Partitions), ReplicationFactor: len(dltd.Partitions.Sorted()[0].Replicas)}
	var configs map[string]*string
	for _, t := range topic.OfSagaType(sagaType, spec) {
		if t.Name == name {
			configs = make(map[string]*string, len(t.Configs))
			for k, v := range t.Configs {
				configs[k] = &v
			}
		}
	}
	resp, err := adm.CreateTopic(ctx, int32(spec.Partitions), int16(spec.ReplicationFactor), configs, name)
	if err == nil {
		err = resp.Err
	}
	switch {
	case err == nil:
		fmt.Fprintf(errw, "sagactl: created topic %s (%d partitions, replication factor %d, kept for ever) for the audit records\n",
			name, spec.Partitions, spec.ReplicationFactor)
	case errors.Is(err, kerr.TopicAlreadyExists):
	default:
		return 0, fmt.Errorf("topic %s does not exist and cannot be created: %w (restart sagad, which creates it, or create it with %d partitions and retention.ms=-1)",
			name, err, spec.Partitions)
	}
	return int32(spec.Partitions), nil
}

// newRun returns a new run id (audit.NewRun).
func newRun(now time.Time) string { return kaudit.NewRun(now) }

// newAuditRecord returns an audit record of action, by whom and why, at now,
// written by sagactl.
func newAuditRecord(action, sagaType, run, by, note string, now time.Time) auditRecord {
	return kaudit.New(action, sagaType, run, by, note, "sagactl", now)
}

// target is what a was done to, short: the DLT offsets of a redrive
// ("0:3,5,9 1:4"), the saga of a compensate.
func target(a auditRecord) string {
	if a.SagaID != "" {
		return a.SagaID
	}
	byPart := make(map[int32][]string)
	var parts []int32
	for _, e := range a.Records {
		if _, ok := byPart[e.Partition]; !ok {
			parts = append(parts, e.Partition)
		}
		byPart[e.Partition] = append(byPart[e.Partition], strconv.FormatInt(e.Offset, 10))
	}
	slices.Sort(parts)
	var out []string
	for _, p := range parts {
		out = append(out, strconv.Itoa(int(p))+":"+strings.Join(byPart[p], ","))
	}
	return strings.Join(out, " ")
}

// auditListOptions are the options of audit list.
type auditListOptions struct {
	sagaType string
	kafka    []kgo.Opt
	// action keeps only the records of this action; "" keeps all.
	action  string
	since   time.Time
	until   time.Time
	limit   int
	output  string
	timeout time.Duration
	idle    time.Duration
}

// listAudit prints the records of saga.<type>.audit, oldest first.
func listAudit(ctx context.Context, brokers []string, st streams, opt auditListOptions) ([]auditRecord, error) {
	timeout := orDefault(opt.timeout, defaultTimeout)
	cl, err := newAdminClient(brokers, opt.kafka, timeout)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	l, err := readAudit(ctx, brokers, opt.kafka, kadm.NewClient(cl), opt.sagaType, timeout, orDefault(opt.idle, defaultIdle))
	if err != nil {
		return nil, err
	}
	out := []auditRecord{}
	redrives, redriven, compensates := 0, 0, 0
	for _, a := range l.records {
		if (opt.action != "" && a.Action != opt.action) || (!opt.since.IsZero() && a.At.Before(opt.since)) ||
			(!opt.until.IsZero() && !a.At.Before(opt.until)) {
			continue
		}
		switch a.Action {
		case message.AuditRedrive:
			redrives++
			redriven += len(a.Records)
		case message.AuditCompensate:
			compensates++
		}
		out = append(out, a)
	}
	shown := out
	if opt.limit > 0 && len(shown) > opt.limit {
		shown = shown[:opt.limit]
	}
	if opt.output != outTable {
		if err := writeData(st.out, opt.output, shown); err != nil {
			return nil, err
		}
	} else if len(shown) > 0 {
		t := newTable(st.out, "AT", "ACTION", "BY", "COUNT", "TARGET", "RUN", "NOTE")
		for _, a := range shown {
			count := "1"
			if a.Action == message.AuditRedrive {
				count = strconv.Itoa(len(a.Records))
			}
			t.row(formatTime(a.At), a.Action, a.By, count, shorten(target(a), 40), a.Run, shorten(a.Note, maxErrorWidth))
		}
		if err := t.flush(); err != nil {
			return nil, err
		}
	}
	switch {
	case l.missing:
		fmt.Fprintf(st.errw, "no topic %s: nothing was audited yet\n", l.topic)
	default:
		var what []string
		if redrives > 0 {
			what = append(what, fmt.Sprintf("%s redrove %s", plural(redrives, "redrive transaction"), plural(redriven, "dead letter")))
		}
		if compensates > 0 {
			what = append(what, plural(compensates, "compensate request"))
		}
		if len(what) == 0 {
			what = []string{"none"}
		}
		fmt.Fprintf(st.errw, "%s of %s%s: %s\n", plural(len(out), "audit record"), l.topic, limitNote(len(shown), len(out)), strings.Join(what, ", "))
	}
	if l.invalid > 0 {
		fmt.Fprintf(st.errw, "%d records of %s are not audit records (skipped)\n", l.invalid, l.topic)
	}
	if l.idled {
		fmt.Fprintf(st.errw, "stopped before the end offsets of %s: no record for %s (the rest may be aborted records)\n", l.topic, orDefault(opt.idle, defaultIdle))
	}
	return shown, nil
}

// limitNote says that only shown of all are shown.
func limitNote(shown, all int) string {
	if shown < all {
		return fmt.Sprintf(" (showing the first %d: --limit)", shown)
	}
	return ""
}
