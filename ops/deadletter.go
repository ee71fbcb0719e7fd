package ops

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
)

// RedriveGroup returns the transactional id of the redrives of a saga
// type, so that a second run started while one is in progress fences the
// first: they never both commit. A sagactl older than the audit topic
// committed its redrives as the offsets of the consumer group of that
// name: the records below them count as redriven.
func RedriveGroup(sagaType string) string { return "ksaga-sagactl-redrive-" + sagaType }

// Position is a record's place in a topic.
type Position struct {
	Partition int32
	Offset    int64
}

// String is "<partition>:<offset>", as message.HeaderRedriveOf and
// DeadLetter.DLT write it.
func (p Position) String() string {
	return strconv.Itoa(int(p.Partition)) + ":" + strconv.FormatInt(p.Offset, 10)
}

// ParsePosition parses "<partition>:<offset>" (or "<partition>/<offset>").
func ParsePosition(s string) (Position, error) {
	ps, offs, ok := strings.Cut(s, ":")
	if !ok {
		ps, offs, ok = strings.Cut(s, "/")
	}
	if !ok {
		return Position{}, fmt.Errorf("%q: want PARTITION:OFFSET, e.g. 0:42", s)
	}
	p, err1 := strconv.ParseInt(ps, 10, 32)
	o, err2 := strconv.ParseInt(offs, 10, 64)
	if err1 != nil || err2 != nil || p < 0 || o < 0 {
		return Position{}, fmt.Errorf("%q: want PARTITION:OFFSET, two numbers from 0, e.g. 0:42", s)
	}
	return Position{int32(p), o}, nil
}

// States of a dead-letter record (DeadLetter.State).
const (
	StatePending  = "pending"  // never redriven
	StateRedriven = "redriven" // redriven: it is back on the inbox
	StateInvalid  = "invalid"  // not a dead-letter record: never redriven
)

// Filter selects dead-letter records; the zero value selects all.
type Filter struct {
	// Reason is the dead-letter reason (dlq.Reason*,
	// orchestrator.DeadLetterReasons).
	Reason string
	// SagaID is the record's key.
	SagaID string
	// Since and Until bound when the record was dead-lettered (its
	// timestamp in the DLT): Since included, Until excluded. Zero: open.
	Since, Until time.Time
}

// Match reports whether f selects e.
func (f Filter) Match(e *DeadLetter) bool {
	return (f.Reason == "" || e.Reason == f.Reason) &&
		(f.SagaID == "" || e.SagaID == f.SagaID) &&
		(f.Since.IsZero() || !e.Timestamp.Before(f.Since)) &&
		(f.Until.IsZero() || e.Timestamp.Before(f.Until))
}

// DeadLetter is a record of saga.<type>.inbox-dlt. In ListDeadLetters it
// stands for the original record: the newest of its dead letters (a
// redriven record that fails again is dead-lettered again, with
// message.HeaderRedriveOf naming the dead letter it was redriven from),
// with the redrives of them all.
type DeadLetter struct {
	// DLT is "<partition>:<offset>" of the record in the dead-letter topic.
	DLT       string `json:"dlt"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
	// Timestamp is when the record was dead-lettered.
	Timestamp time.Time `json:"timestamp"`
	// State is StatePending, StateRedriven or StateInvalid.
	State       string  `json:"state"`
	SagaID      string  `json:"saga_id"`
	MessageType string  `json:"message_type,omitempty"`
	Reason      string  `json:"reason,omitempty"`
	Attempts    int     `json:"attempts"`
	Original    *Origin `json:"original,omitempty"`
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
	Redrives     []RedriveEvent `json:"redrives"`

	pos       Position
	redriveOf *Position
	prev      *DeadLetter // the dead letter this one was redriven from
	next      *DeadLetter // the dead letter of this one's redrive
	redriven  bool        // this very record was redriven
}

// Position returns where e is in the dead-letter topic.
func (e *DeadLetter) Position() Position { return e.pos }

// Origin is where a dead-letter record was consumed from.
type Origin struct {
	Topic     string    `json:"topic"`
	Partition int32     `json:"partition"`
	Offset    int64     `json:"offset"`
	Timestamp time.Time `json:"timestamp,omitzero"`
}

// RedriveEvent is one redrive of a dead-letter record.
type RedriveEvent struct {
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

// newDeadLetter parses dead-letter record r.
func newDeadLetter(r *kgo.Record) *DeadLetter {
	e := &DeadLetter{pos: Position{r.Partition, r.Offset}, Partition: r.Partition, Offset: r.Offset,
		Timestamp: r.Timestamp.UTC(), SagaID: string(r.Key), DeadLetters: 1, Redrives: []RedriveEvent{}}
	e.DLT = e.pos.String()
	if v := headerValue(r, message.HeaderRedriveOf); v != "" {
		if p, err := ParsePosition(v); err == nil {
			e.redriveOf, e.RedriveOf = &p, p.String()
		}
	}
	info, err := dlq.Parse(r)
	if err != nil {
		e.State, e.Invalid = StateInvalid, err.Error()
		return e
	}
	e.MessageType = headerValue(info.Original, message.HeaderMessageType)
	e.Reason, e.Attempts, e.Group = info.Reason, info.Attempts, info.Group
	e.Original = &Origin{Topic: info.Topic, Partition: info.Partition, Offset: info.Offset}
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

func headerValue(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// legacyOffsets returns, per DLT partition, the offset below which the
// consumer group of a sagactl older than the audit topic committed its
// redrives: those records count as redriven. It is nil when that group
// never committed.
func legacyOffsets(ctx context.Context, adm *kadm.Client, sagaType string) (map[int32]int64, error) {
	topic := message.DLT(sagaType)
	offs, err := fetchStableOffsets(ctx, adm, RedriveGroup(sagaType), topic)
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

// DeadLetters is a dead-letter topic read in full, with its redrive
// history: what ListDeadLetters returns.
type DeadLetters struct {
	// Topic is saga.<type>.inbox-dlt.
	Topic string
	// Originals holds one entry per original record, oldest first: the
	// newest of its dead letters.
	Originals []*DeadLetter
	// Records counts the dead letters read.
	Records int
	// AuditTopic is saga.<type>.audit, the redrive history;
	// AuditMissing is set when it does not exist (nothing was audited).
	AuditTopic   string
	AuditMissing bool
	// LegacyErr is why the offsets of the consumer group of a sagactl
	// older than the audit topic could not be read; the states then
	// ignore them.
	LegacyErr error
	// Incomplete is set when a read stopped before the end offsets taken
	// at its start (no record for Kafka.Idle).
	Incomplete bool

	all   []*DeadLetter
	audit *AuditLog
}

// ListDeadLetters reads saga.<sagaType>.inbox-dlt from its start to the
// end offsets taken when it starts (read_committed), the redrive history on
// saga.<sagaType>.audit and the offsets of the old redrive group, links
// each dead letter of a redriven record to the one it was redriven from,
// and returns one entry per original record, with its state and redrives.
// It changes nothing. A dead-letter topic that does not exist is an error
// wrapping ErrNoTopic; a Kafka that does not answer the first request a
// *ConnError.
func ListDeadLetters(ctx context.Context, k Kafka, sagaType string) (*DeadLetters, error) {
	cl, err := k.newAdminClient()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	spans, err := topicSpans(ctx, k, adm, message.DLT(sagaType))
	if err != nil {
		return nil, err
	}
	return loadDeadLetters(ctx, k, adm, sagaType, spans)
}

func loadDeadLetters(ctx context.Context, k Kafka, adm *kadm.Client, sagaType string, spans map[int32]span) (*DeadLetters, error) {
	v := &DeadLetters{Topic: message.DLT(sagaType)}
	var err error
	if v.audit, err = readAudit(ctx, k, adm, sagaType); err != nil {
		return nil, err
	}
	v.AuditTopic, v.AuditMissing = v.audit.Topic, v.audit.Missing
	legacy, lerr := legacyOffsets(ctx, adm, sagaType)
	if lerr != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		v.LegacyErr = lerr
	}
	v.Incomplete, err = scan(ctx, k, v.Topic, spans, func(r *kgo.Record) bool {
		v.all = append(v.all, newDeadLetter(r))
		return true
	})
	if err != nil {
		return nil, err
	}
	v.Records = len(v.all)

	byPos := make(map[Position]*DeadLetter, len(v.all))
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
		v.Originals = append(v.Originals, e)
		// The chain, oldest first; bounded in case headers make a loop.
		chain := []*DeadLetter{e}
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
				evs = []RedriveEvent{{DLT: c.DLT, Group: RedriveGroup(sagaType)}}
			}
			e.Redrives = append(e.Redrives, evs...)
		}
		e.RedriveCount = len(e.Redrives)
		switch {
		case e.Invalid != "":
		case e.redriven:
			e.State = StateRedriven
		default:
			e.State = StatePending
		}
	}
	slices.SortStableFunc(v.Originals, func(a, b *DeadLetter) int {
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

// DeadLetterRecord is one dead-letter record in full: GetDeadLetter's
// answer.
type DeadLetterRecord struct {
	*DeadLetter
	Topic string `json:"topic"`
	Key   string `json:"key"`
	// KeyEncoding and ValueEncoding are "base64" when the bytes are not
	// UTF-8 text, and empty otherwise.
	KeyEncoding   string   `json:"key_encoding,omitempty"`
	Value         string   `json:"value"`
	ValueEncoding string   `json:"value_encoding,omitempty"`
	Headers       []Header `json:"headers"`
}

// Header is a record header, decoded.
type Header struct {
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

// decodeHeaders decodes hs: Spring's binary headers as numbers.
func decodeHeaders(hs []kgo.RecordHeader) []Header {
	out := make([]Header, 0, len(hs))
	for _, h := range hs {
		hv := Header{Key: h.Key}
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

// ErrNoRecord means there is no dead-letter record at the position given.
var ErrNoRecord = errors.New("no such record")

// GetDeadLetter returns the record of saga.<sagaType>.inbox-dlt at at:
// every field, its headers decoded, its key and value, and its redrives.
// A position the topic does not hold (or that holds a transaction marker,
// or a record of an aborted transaction) is an error wrapping ErrNoRecord.
func GetDeadLetter(ctx context.Context, k Kafka, sagaType string, at Position) (*DeadLetterRecord, error) {
	topic := message.DLT(sagaType)
	cl, err := k.newAdminClient()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	spans, err := topicSpans(ctx, k, adm, topic)
	if err != nil {
		return nil, err
	}
	s, ok := spans[at.Partition]
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: %s has no partition %d (it has %d)", ErrNoRecord, topic, at.Partition, len(spans))
	case at.Offset < s.from || at.Offset >= s.to:
		return nil, fmt.Errorf("%w: no offset %d in %s partition %d, which holds offsets %d to %d", ErrNoRecord, at.Offset, topic, at.Partition, s.from, s.to-1)
	}
	var rec *kgo.Record
	_, err = scan(ctx, k, topic, map[int32]span{at.Partition: {at.Offset, at.Offset + 1}}, func(r *kgo.Record) bool {
		if r.Offset == at.Offset {
			rec = r
		}
		return false
	})
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, fmt.Errorf("%w: %s %s is a transaction marker or a record of an aborted transaction", ErrNoRecord, topic, at)
	}
	l, err := readAudit(ctx, k, adm, sagaType)
	if err != nil {
		return nil, err
	}
	e := newDeadLetter(rec)
	e.Redrives = l.events(e.pos)
	if len(e.Redrives) == 0 {
		if legacy, err := legacyOffsets(ctx, adm, sagaType); err == nil && e.Offset < legacy[e.Partition] {
			e.Redrives = []RedriveEvent{{DLT: e.DLT, Group: RedriveGroup(sagaType)}}
		}
	}
	e.RedriveCount = len(e.Redrives)
	if e.Invalid == "" {
		e.State = StatePending
		if e.RedriveCount > 0 {
			e.State = StateRedriven
		}
	}
	out := &DeadLetterRecord{DeadLetter: e, Topic: topic, Headers: decodeHeaders(rec.Headers)}
	out.Key, out.KeyEncoding = textOrBase64(rec.Key)
	out.Value, out.ValueEncoding = textOrBase64(rec.Value)
	return out, nil
}
