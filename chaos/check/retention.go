package check

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/ksaga/ksaga/message"
)

// InvRetention is the invariant that an ended saga leaves the state topic
// and the Redis view after the engines' retention, and only then
// (orchestrator.Retention): each tombstone on a saga's state topic comes
// after its terminal state record, at least the retention after the
// saga ended (by the state's updated_at and the tombstone's timestamp,
// within ClockSlack); no state record follows it (the saga never comes
// back); the saga had exactly one terminal event; and Redis no longer
// holds its key. With a retention of 0 there must be no tombstone at all.
const InvRetention = "retention"

// ClockSlack is how much earlier than the retention a tombstone may be
// timestamped: the state's updated_at and the tombstone's timestamp come
// from the clocks of the engines that wrote them.
const ClockSlack = 2 * time.Second

// Tombstone is a record with no value on a saga's state topic: the engine
// deleted the ended saga after the retention.
type Tombstone struct {
	Partition int32
	Offset    int64
	// At is the record's timestamp: when the engine produced it.
	At time.Time
	// Deleted is the state it deleted: the highest version among the
	// saga's state records before it (since the tombstone before, if
	// any). Nil when there is none: never written, or compacted away.
	Deleted []byte
	// Followed counts the state records after it, up to the next
	// tombstone: the saga came back after it was deleted.
	Followed int
}

func (t Tombstone) where() string { return fmt.Sprintf("%d@%d", t.Partition, t.Offset) }

// addState adds a committed record of a state topic, in log order: a
// tombstone when value is nil.
func (d *Data) addState(id string, partition int32, offset int64, at time.Time, value []byte) {
	if !slices.Contains(d.StatePartitions[id], partition) {
		d.StatePartitions[id] = append(d.StatePartitions[id], partition)
	}
	if value == nil {
		if d.Tombstones == nil {
			d.Tombstones = make(map[string][]Tombstone)
		}
		d.Tombstones[id] = append(d.Tombstones[id], Tombstone{Partition: partition, Offset: offset, At: at, Deleted: d.States[id]})
		delete(d.States, id)
		return
	}
	if ts := d.Tombstones[id]; len(ts) > 0 {
		ts[len(ts)-1].Followed++
	}
	// The highest version wins: transactions are released at their
	// markers, not in the order of their records. A tombstone starts
	// over: a saga started again after it counts from version 1.
	if prev, ok := d.States[id]; !ok || version(value) >= version(prev) {
		d.States[id] = value
	}
}

// expired returns the tombstone of a saga whose last state record is one.
func (a *analysis) expired(id string) (Tombstone, bool) {
	ts := a.d.Tombstones[id]
	if len(ts) == 0 || ts[len(ts)-1].Followed > 0 {
		return Tombstone{}, false
	}
	return ts[len(ts)-1], true
}

// retention checks every tombstone of the state topics (InvRetention).
func (a *analysis) retention() {
	for _, id := range slices.Sorted(maps.Keys(a.d.Tombstones)) {
		ts := a.d.Tombstones[id]
		for _, t := range ts {
			a.rep.Checked[InvRetention]++
			a.rep.Tombstones++
			if a.d.Retention <= 0 {
				a.fail(InvRetention, id, "tombstone at %s, but the engines keep ended sagas forever (retention 0)", t.where())
			}
			if t.Followed > 0 {
				a.fail(InvRetention, id, "%d state records after its tombstone at %s: the saga came back after it was deleted", t.Followed, t.where())
			}
			a.deletedAfterRetention(id, t)
		}
		t, ok := a.expired(id)
		if !ok {
			continue
		}
		a.rep.Expired++
		if n := a.terminals(id); n != 1 {
			a.fail(InvRetention, id, "deleted by its tombstone at %s with %d terminal events, want exactly one", t.where(), n)
		}
		if r, ok := a.d.Redis[id]; ok {
			a.fail(InvRetention, id, "Redis still holds its state (key %s, version %s) after its tombstone at %s", r.Key, r.Version, t.where())
		}
		for _, r := range a.d.RedisDuplicates[id] {
			a.fail(InvRetention, id, "Redis still holds its state (key %s, version %s) after its tombstone at %s", r.Key, r.Version, t.where())
		}
	}
}

// deletedAfterRetention checks that tombstone t of saga id deleted it
// once it had ended, at least the retention later.
func (a *analysis) deletedAfterRetention(id string, t Tombstone) {
	var ended time.Time
	if t.Deleted != nil {
		st, err := decodeState(t.Deleted)
		if err != nil {
			a.fail(InvRetention, id, "the state its tombstone at %s deleted does not decode: %v", t.where(), err)
			return
		}
		if !st.Terminal() {
			a.fail(InvRetention, id, "tombstone at %s deleted the saga while it was %s at version %d: a tombstone must come after the terminal state record", t.where(), st.Status, st.Version)
			return
		}
		ended = st.Updated
	} else {
		// Compaction removed the states before it: the terminal event
		// tells when the saga ended.
		for _, ev := range a.d.Events[id] {
			if message.Terminal(ev.Type) {
				ended = ev.At
				break
			}
		}
		if ended.IsZero() {
			a.fail(InvRetention, id, "tombstone at %s, but no state record or terminal event before it says the saga ended", t.where())
			return
		}
	}
	after := t.At.Sub(ended)
	if a.d.Retention > 0 && after < a.d.Retention-ClockSlack {
		a.fail(InvRetention, id, "deleted %v after it ended (at %s; tombstone at %s written at %s), before the retention %v",
			after.Round(time.Millisecond), ended.Format(time.RFC3339Nano), t.where(), t.At.Format(time.RFC3339Nano), a.d.Retention)
	}
	if a.timed == 0 || after < a.rep.DeletedAfter[0] {
		a.rep.DeletedAfter[0] = after
	}
	a.rep.DeletedAfter[1] = max(a.rep.DeletedAfter[1], after)
	a.timed++
}

// terminals counts the terminal events of saga id.
func (a *analysis) terminals(id string) int {
	n := 0
	for _, ev := range a.d.Events[id] {
		if message.Terminal(ev.Type) {
			n++
		}
	}
	return n
}

// finalState returns the last state of saga id: its last state record, or
// for an expired saga the state its tombstone deleted (nil when compacted
// away).
func (a *analysis) finalState(id string) ([]byte, bool) {
	if b, ok := a.d.States[id]; ok {
		return b, true
	}
	if t, ok := a.expired(id); ok && t.Deleted != nil {
		return t.Deleted, true
	}
	return nil, false
}
