package console

import (
	"encoding/json"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
)

// The console never reads a topic per request. For each saga type it keeps
// three in-memory indexes, each filled by one consumer that tails its topic
// (tail.go):
//
//   - dead letters of saga.<type>.inbox-dlt, read from the start;
//   - operator actions of saga.<type>.audit, read from the start;
//   - the latest events of saga.<type>.events, read from a little before
//     the end, for the list of recently ended sagas and for the timeline
//     of a saga whose state carries no history.
//
// Each is bounded (Limits): past its bound the oldest entries go, and the
// pages say how many went.

// Limits bound the console's in-memory indexes, per saga type. Zero values
// pick the defaults.
type Limits struct {
	// DeadLetters is the most dead letters indexed (default 50,000); each
	// keeps at most PreviewBytes of its value, its headers and about 300
	// bytes more: about 250 MiB at most with the defaults, far less with
	// small values.
	DeadLetters int
	// PreviewBytes is how much of a dead letter's value is kept for its
	// page (default 4 KiB); a redrive reads the record itself again.
	PreviewBytes int
	// AuditRecords is the most audit records indexed (default 50,000),
	// each a few hundred bytes and 100 bytes per record a redrive names.
	AuditRecords int
	// Events is the most recent events kept (default 100,000, about 250
	// bytes each); Ended the most recently ended sagas listed (default
	// 10,000).
	Events int
	Ended  int
	// Examine is the most sagas a filtered list or the stuck list reads
	// the state of for one page (default 5,000, read in pipelines of
	// 500): past it the page stops and says where the next one goes on.
	Examine int
}

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.DeadLetters, 50_000)
	def(&l.PreviewBytes, 4<<10)
	def(&l.AuditRecords, 50_000)
	def(&l.Events, 100_000)
	def(&l.Ended, 10_000)
	def(&l.Examine, 5_000)
	return l
}

// pos places a record in a partition.
type pos struct {
	Partition int32
	Offset    int64
}

func (p pos) String() string {
	return strconv.Itoa(int(p.Partition)) + ":" + strconv.FormatInt(p.Offset, 10)
}

// parsePos reads "P:O".
func parsePos(s string) (pos, bool) {
	ps, os, ok := strings.Cut(s, ":")
	if !ok {
		return pos{}, false
	}
	p, err1 := strconv.ParseInt(ps, 10, 32)
	o, err2 := strconv.ParseInt(os, 10, 64)
	if err1 != nil || err2 != nil || p < 0 || o < 0 {
		return pos{}, false
	}
	return pos{int32(p), o}, true
}

// deadLetter is one record of the dead-letter topic, decoded (dlq.Parse).
type deadLetter struct {
	pos
	SagaID      string
	MessageType string
	MessageID   string
	Step        string
	Reason      string
	Info        dlq.Info
	// Headers are the original record's headers, as text.
	Headers [][2]string
	// Value is the original value, cut to Limits.PreviewBytes; Cut says
	// how many bytes were cut.
	Value []byte
	Cut   int
	// RedriveOf is the DLT position of the dead letter whose redrive
	// this one is (ksaga-redrive-of), if any.
	RedriveOf string
	// Invalid is why the record is not a dead letter (dlq.Parse).
	Invalid string
	// At is its last failure (else Timestamp); Timestamp is when it was
	// dead-lettered (the record's timestamp in the DLT).
	At, Timestamp time.Time
}

// dlqIndex is the dead letters of one saga type. It is safe for
// concurrent use.
type dlqIndex struct {
	limits Limits

	mu      sync.RWMutex
	all     []*deadLetter // in the order read
	byPos   map[pos]*deadLetter
	bySaga  map[string][]*deadLetter
	reasons map[string]int
	dropped int
	next    map[int32]int64
}

func newDLQIndex(l Limits) *dlqIndex {
	return &dlqIndex{limits: l, byPos: map[pos]*deadLetter{}, bySaga: map[string][]*deadLetter{}, reasons: map[string]int{}, next: map[int32]int64{}}
}

// add indexes r.
func (x *dlqIndex) add(r *kgo.Record) {
	d := &deadLetter{pos: pos{r.Partition, r.Offset}, At: r.Timestamp, Timestamp: r.Timestamp}
	info, err := dlq.Parse(r)
	if err != nil {
		d.Invalid = err.Error()
		d.SagaID = string(r.Key)
	} else {
		d.Info, d.Reason = info, info.Reason
		d.SagaID = string(info.Original.Key)
		for _, h := range info.Original.Headers {
			switch h.Key {
			case message.HeaderSagaID:
				if d.SagaID == "" {
					d.SagaID = string(h.Value)
				}
			case message.HeaderMessageType:
				d.MessageType = string(h.Value)
			case message.HeaderMessageID:
				d.MessageID = string(h.Value)
			case message.HeaderStep:
				d.Step = string(h.Value)
			case message.HeaderRedriveOf:
				d.RedriveOf = string(h.Value)
			}
			d.Headers = append(d.Headers, [2]string{h.Key, string(h.Value)})
		}
		if !info.Last.IsZero() {
			d.At = info.Last
		}
		info.Original = nil // the value is kept below, cut
		d.Info = info
	}
	v := r.Value
	if len(v) > x.limits.PreviewBytes {
		d.Cut = len(v) - x.limits.PreviewBytes
		v = v[:x.limits.PreviewBytes]
	}
	d.Value = slices.Clone(v)

	x.mu.Lock()
	defer x.mu.Unlock()
	x.all = append(x.all, d)
	x.byPos[d.pos] = d
	x.bySaga[d.SagaID] = append(x.bySaga[d.SagaID], d)
	x.reasons[d.Reason]++
	for len(x.all) > x.limits.DeadLetters {
		old := x.all[0]
		x.all[0] = nil
		x.all = x.all[1:]
		delete(x.byPos, old.pos)
		x.reasons[old.Reason]--
		if x.reasons[old.Reason] == 0 {
			delete(x.reasons, old.Reason)
		}
		rest := slices.DeleteFunc(x.bySaga[old.SagaID], func(e *deadLetter) bool { return e == old })
		if len(rest) == 0 {
			delete(x.bySaga, old.SagaID)
		} else {
			x.bySaga[old.SagaID] = rest
		}
		x.dropped++
	}
}

func (x *dlqIndex) advance(p int32, next int64) {
	x.mu.Lock()
	x.next[p] = max(x.next[p], next)
	x.mu.Unlock()
}

func (x *dlqIndex) get(p pos) *deadLetter {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.byPos[p]
}

func (x *dlqIndex) forSaga(id string) []*deadLetter {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(x.bySaga[id])
}

// page returns the dead letters with reason (all when ""), newest first,
// from offset skip, at most n, and how many match.
func (x *dlqIndex) page(reason string, skip, n int) ([]*deadLetter, int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []*deadLetter
	total := 0
	for i := len(x.all) - 1; i >= 0; i-- {
		d := x.all[i]
		if reason != "" && d.Reason != reason {
			continue
		}
		if total >= skip && len(out) < n {
			out = append(out, d)
		}
		total++
	}
	return out, total
}

// reasonCount is a dead-letter reason and how many dead letters have it.
type reasonCount struct {
	Reason string
	Count  int
}

func (x *dlqIndex) counts() (rs []reasonCount, total, dropped int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for r, n := range x.reasons {
		rs = append(rs, reasonCount{r, n})
	}
	sort.Slice(rs, func(i, j int) bool {
		return rs[i].Count > rs[j].Count || rs[i].Count == rs[j].Count && rs[i].Reason < rs[j].Reason
	})
	return rs, len(x.all), x.dropped
}

// auditEntry is one audit record as the console shows it.
type auditEntry struct {
	pos
	Record audit.Record
}

// auditIndex is the operator actions of one saga type: by saga id, and the
// redrives by the dead letters they re-produced. It is safe for concurrent
// use.
type auditIndex struct {
	limits Limits

	mu       sync.RWMutex
	all      []*auditEntry
	bySaga   map[string][]*auditEntry
	redriven map[pos][]*auditEntry
	dropped  int
	next     map[int32]int64
}

func newAuditIndex(l Limits) *auditIndex {
	return &auditIndex{limits: l, bySaga: map[string][]*auditEntry{}, redriven: map[pos][]*auditEntry{}, next: map[int32]int64{}}
}

// sagasOf returns the saga ids an audit record names.
func sagasOf(r *audit.Record) []string {
	var ids []string
	if r.SagaID != "" {
		ids = append(ids, r.SagaID)
	}
	for _, e := range r.Records {
		if e.SagaID != "" && !slices.Contains(ids, e.SagaID) {
			ids = append(ids, e.SagaID)
		}
	}
	return ids
}

func (x *auditIndex) add(r *kgo.Record) {
	var rec audit.Record
	if err := json.Unmarshal(r.Value, &rec); err != nil {
		return // not an audit record: nothing to show
	}
	e := &auditEntry{pos: pos{r.Partition, r.Offset}, Record: rec}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.all = append(x.all, e)
	for _, id := range sagasOf(&rec) {
		x.bySaga[id] = append(x.bySaga[id], e)
	}
	for _, re := range rec.Records {
		p := pos{re.Partition, re.Offset}
		x.redriven[p] = append(x.redriven[p], e)
	}
	for len(x.all) > x.limits.AuditRecords {
		old := x.all[0]
		x.all[0] = nil
		x.all = x.all[1:]
		for _, id := range sagasOf(&old.Record) {
			rest := slices.DeleteFunc(x.bySaga[id], func(e *auditEntry) bool { return e == old })
			if len(rest) == 0 {
				delete(x.bySaga, id)
			} else {
				x.bySaga[id] = rest
			}
		}
		// The redrives stay known by position (a few bytes each): a
		// dead letter is never offered for a second redrive because
		// its audit record left the index.
		x.dropped++
	}
}

func (x *auditIndex) advance(p int32, next int64) {
	x.mu.Lock()
	x.next[p] = max(x.next[p], next)
	x.mu.Unlock()
}

// caughtUp reports whether the index has read every partition up to ends.
func (x *auditIndex) caughtUp(ends map[int32]int64) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for p, end := range ends {
		if x.next[p] < end {
			return false
		}
	}
	return true
}

func (x *auditIndex) forSaga(id string) []*auditEntry {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(x.bySaga[id])
}

func (x *auditIndex) redrivesOf(p pos) []*auditEntry {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(x.redriven[p])
}

// latest returns the newest audit records, at most n.
func (x *auditIndex) latest(n int) []*auditEntry {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []*auditEntry
	for i := len(x.all) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, x.all[i])
	}
	return out
}

// event is one record of saga.<type>.events, without the saga's data
// (which the terminal events carry): the fields message.Event has but
// Data, so that decoding skips it.
type event struct {
	pos
	SagaID  string    `json:"saga_id"`
	Type    string    `json:"type"`
	State   string    `json:"state"`
	Step    string    `json:"step,omitempty"`
	Version int64     `json:"version"`
	At      time.Time `json:"at"`
	Reason  string    `json:"reason,omitempty"`
}

// eventIndex is the latest events of one saga type, by saga id, and the
// sagas that ended most recently. It is safe for concurrent use.
type eventIndex struct {
	limits Limits

	mu      sync.RWMutex
	ring    []*event // the latest limits.Events, oldest first
	bySaga  map[string][]*event
	ended   []*event // the latest limits.Ended terminal events
	dropped int
}

func newEventIndex(l Limits) *eventIndex {
	return &eventIndex{limits: l, bySaga: map[string][]*event{}}
}

func (x *eventIndex) add(r *kgo.Record) {
	e := &event{pos: pos{r.Partition, r.Offset}}
	if err := json.Unmarshal(r.Value, e); err != nil || e.SagaID == "" {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.ring = append(x.ring, e)
	x.bySaga[e.SagaID] = append(x.bySaga[e.SagaID], e)
	if message.Terminal(e.Type) {
		x.ended = append(x.ended, e)
		if len(x.ended) > x.limits.Ended+x.limits.Ended/8 {
			// Copy down now and then rather than grow for ever.
			x.ended = slices.Clone(x.ended[len(x.ended)-x.limits.Ended:])
		}
	}
	if len(x.ring) > x.limits.Events+x.limits.Events/8 {
		cut := len(x.ring) - x.limits.Events
		for _, old := range x.ring[:cut] {
			rest := x.bySaga[old.SagaID]
			i := slices.Index(rest, old)
			if i >= 0 {
				rest = rest[i+1:]
			}
			if len(rest) == 0 {
				delete(x.bySaga, old.SagaID)
			} else {
				x.bySaga[old.SagaID] = rest
			}
		}
		x.ring = slices.Clone(x.ring[cut:])
		x.dropped += cut
	}
}

func (x *eventIndex) forSaga(id string) []*event {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(x.bySaga[id])
}

// parkedPage returns the sagas whose latest event the index holds is
// SagaParked, the most recently parked first, from skip, at most n, and
// how many there are. A saga parked before the events the index keeps is
// not among them.
func (x *eventIndex) parkedPage(skip, n int) ([]*event, int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []*event
	total := 0
	seen := make(map[string]bool)
	for i := len(x.ring) - 1; i >= 0; i-- {
		e := x.ring[i]
		if seen[e.SagaID] {
			continue
		}
		seen[e.SagaID] = true
		if e.Type != message.EventSagaParked {
			continue
		}
		if total >= skip && len(out) < n {
			out = append(out, e)
		}
		total++
	}
	return out, total
}

// endedPage returns the recently ended sagas with status (all when ""),
// newest first, from skip, at most n, and how many match.
func (x *eventIndex) endedPage(status string, skip, n int) ([]*event, int) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []*event
	total := 0
	for i := len(x.ended) - 1; i >= max(0, len(x.ended)-x.limits.Ended); i-- {
		e := x.ended[i]
		if status != "" && e.State != status {
			continue
		}
		if total >= skip && len(out) < n {
			out = append(out, e)
		}
		total++
	}
	return out, total
}
