package console

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/ksaga/ksaga/message"
)

// Kinds of timeline rows.
const (
	rowEvent      = "event"
	rowDeadLetter = "dead-letter"
	rowOperator   = "operator"
)

// row is one line of a saga's timeline.
type row struct {
	At   time.Time
	Kind string
	// Type is the event type, the dead letter's reason or the audit
	// action.
	Type    string
	Step    string
	Attempt int
	Reason  string
	// Reply is the data the step's reply carried, as indented JSON text.
	Reply string
	// Took is the time since the saga's previous event: how long the
	// step the event ends took.
	Took time.Duration
	// Link is the page of a dead letter.
	Link string
	// By and Note are who acted and why; Detail says more.
	By, Note, Detail string
	Version          int64
}

// timeline is a saga's timeline and where its events come from.
type timeline struct {
	Rows []row
	// FromHistory is set when the events come from the saga's state (the
	// engine's bounded history); otherwise from the latest events the
	// console keeps (Limits.Events), which may miss the older ones.
	FromHistory bool
	// Dropped counts events the engine's history left out.
	Dropped int
	// EventsMissing is set when the saga's events are neither in its
	// state nor in the console's recent events.
	EventsMissing bool
}

// buildTimeline merges the saga's events (from its state, else the events
// index), its dead letters and the audit records that name it, oldest
// first.
func (c *Console) buildTimeline(t *sagaType, id string, s *viewState) timeline {
	var tl timeline
	var evs []row
	if s != nil && len(s.History) > 0 {
		tl.FromHistory, tl.Dropped = true, s.HistoryDropped
		for _, h := range s.History {
			evs = append(evs, row{At: h.At, Kind: rowEvent, Type: h.Type, Step: h.Step, Attempt: h.Attempt, Reason: h.Reason,
				Reply: prettyJSON(h.Reply), Version: h.Version})
		}
	} else {
		for _, e := range t.events.forSaga(id) {
			evs = append(evs, row{At: e.At, Kind: rowEvent, Type: e.Type, Step: e.Step, Reason: e.Reason, Version: e.Version})
		}
		tl.EventsMissing = len(evs) == 0
	}
	for i := 1; i < len(evs); i++ {
		evs[i].Took = evs[i].At.Sub(evs[i-1].At)
	}
	rows := evs
	for _, d := range t.dlq.forSaga(id) {
		r := row{At: d.At, Kind: rowDeadLetter, Type: d.Reason, Step: d.Step, Link: "/dlq/" + t.name + "/" + d.pos.String(),
			Detail: d.MessageType}
		if d.Info.Attempts > 0 {
			r.Attempt = d.Info.Attempts
		}
		r.Reason = d.Info.ErrorMessage
		if d.RedriveOf != "" {
			r.Detail += ", redrive of " + d.RedriveOf
		}
		rows = append(rows, r)
	}
	for _, a := range t.audit.forSaga(id) {
		rec := a.Record
		r := row{At: rec.At, Kind: rowOperator, Type: rec.Action, By: rec.By, Note: rec.Note, Detail: "with " + rec.Tool + ", run " + rec.Run}
		if rec.Action == message.AuditRedrive {
			var which []string
			for _, e := range rec.Records {
				if e.SagaID == id {
					which = append(which, e.MessageType+" from "+rec.DLT+" "+pos{e.Partition, e.Offset}.String()+" to "+e.To)
				}
			}
			r.Detail = "redrove " + strings.Join(which, "; ") + " " + r.Detail
		}
		rows = append(rows, r)
	}
	slices.SortStableFunc(rows, func(a, b row) int { return a.At.Compare(b.At) })
	tl.Rows = rows
	return tl
}

// prettyJSON indents JSON for a <pre>, with the \u003c, \u003e and
// \u0026 that Go's encoder writes for <, > and & shown as those
// characters: the template escapes them, so they show as what the saga's
// data holds and never as markup. Other bytes are returned as they are.
func prettyJSON(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return string(b)
	}
	return unescapeHTML(out.Bytes())
}

// unescapeHTML replaces the escapes \u003c, \u003e and \u0026 of valid
// JSON with <, > and &, leaving every other escape as it is.
func unescapeHTML(b []byte) string {
	if !bytes.Contains(b, []byte(`\u00`)) {
		return string(b)
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' || i+1 >= len(b) {
			out = append(out, b[i])
			continue
		}
		if b[i+1] == 'u' && i+6 <= len(b) {
			switch string(b[i+2 : i+6]) {
			case "003c", "003C":
				out, i = append(out, '<'), i+5
				continue
			case "003e", "003E":
				out, i = append(out, '>'), i+5
				continue
			case "0026":
				out, i = append(out, '&'), i+5
				continue
			}
		}
		out, i = append(out, b[i], b[i+1]), i+1
	}
	return string(out)
}
