package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	kaudit "github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/ops"
)

// auditRecord and auditEntry are package audit's: the one
// schema of saga.<type>.audit, which the HTTP API writes too.
type (
	auditRecord = kaudit.Record
	auditEntry  = kaudit.Entry
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
func (p pos) String() string { return p.toOps().String() }

func (p pos) toOps() ops.Position { return ops.Position{Partition: p.partition, Offset: p.offset} }

// parsePos parses "<partition>:<offset>" (or "<partition>/<offset>").
func parsePos(s string) (pos, error) {
	p, err := ops.ParsePosition(s)
	return pos{p.Partition, p.Offset}, err
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
	l, err := ops.ListAudit(ctx, kafkaOf(brokers, opt.kafka, opt.timeout, opt.idle), opt.sagaType)
	if err != nil {
		return nil, err
	}
	out := []auditRecord{}
	redrives, redriven, compensates := 0, 0, 0
	for _, a := range l.Records {
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
	case l.Missing:
		fmt.Fprintf(st.errw, "no topic %s: nothing was audited yet\n", l.Topic)
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
		fmt.Fprintf(st.errw, "%s of %s%s: %s\n", plural(len(out), "audit record"), l.Topic, limitNote(len(shown), len(out)), strings.Join(what, ", "))
	}
	if l.Invalid > 0 {
		fmt.Fprintf(st.errw, "%d records of %s are not audit records (skipped)\n", l.Invalid, l.Topic)
	}
	if l.Incomplete {
		fmt.Fprintf(st.errw, "stopped before the end offsets of %s: no record for %s (the rest may be aborted records)\n", l.Topic, orDefault(opt.idle, defaultIdle))
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
