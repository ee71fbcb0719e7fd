package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/committed"
)

// Redis is a view that can lose single keys while keeping the checkpoint
// that vouches for them: an allkeys-* eviction policy under maxmemory, a
// partial restore, an operator's DEL. A start request that then found no
// state would start a saga that already ran. So the engine keeps, for each
// partition it owns, an index of every saga the state topic holds (the
// truth), built when the partition is assigned and kept in step with each
// commit: a saga that Redis does not return but the index knows is read
// back from the state topic, at the offset the index gives, and written to
// Redis again. The index also carries what retention and deadlines need, so
// that neither depends on a Redis key that can be lost.

// sagaIndex is the index of one partition's sagas.
type sagaIndex struct {
	sagas map[string]indexEntry
	// unrunnable says why the engine cannot run a saga's state
	// (versions.unrunnable); the first such reason is kept in example.
	unrunnable func(*State) string
	example    string
	// ended holds ended sagas in the order they ended, for retention;
	// entries whose saga changed or left since are skipped when popped.
	ended []expiring
	head  int
}

// indexEntry is what the index keeps of one saga.
type indexEntry struct {
	// offset is that of the saga's last state record.
	offset int64
	// ended is when the saga ended (Unix ms), 0 while it runs.
	ended int64
	// deadline is the saga's current deadline (Unix ms), 0 for none.
	deadline int64
	// version is the definition version the saga runs on; bad is set
	// when the engine cannot run it (see versions.unrunnable).
	version int32
	bad     bool
}

// expiring is an ended saga in the retention queue.
type expiring struct {
	id    string
	ended int64
}

func newSagaIndex(unrunnable func(*State) string) *sagaIndex {
	return &sagaIndex{sagas: make(map[string]indexEntry), unrunnable: unrunnable}
}

// set records st, the state at offset, or removes the saga for a tombstone.
func (x *sagaIndex) set(id string, offset int64, st *State, deleted bool) {
	if deleted {
		delete(x.sagas, id)
		return
	}
	ent := indexEntry{offset: offset, version: int32(st.OnVersion())}
	if st.Terminal() {
		ent.ended = st.Updated.UnixMilli()
		if prev, ok := x.sagas[id]; !ok || prev.ended != ent.ended {
			x.ended = append(x.ended, expiring{id: id, ended: ent.ended})
		}
	} else {
		ent.deadline = st.Deadline
		if x.unrunnable != nil {
			if why := x.unrunnable(st); why != "" {
				ent.bad = true
				if x.example == "" {
					x.example = "saga " + id + ": " + why
				}
			}
		}
	}
	x.sagas[id] = ent
}

// sortEnded orders the retention queue by time once the index is built
// (the state topic's order is commit order, close to it but not the same
// across instances' clocks).
func (x *sagaIndex) sortEnded() {
	x.ended = x.ended[x.head:]
	x.head = 0
	slices.SortStableFunc(x.ended, func(a, b expiring) int { return int(a.ended - b.ended) })
}

// expired pops, at most max, the sagas that ended at or before cutoff (Unix
// ms) and are still in the index as they ended.
func (x *sagaIndex) expired(cutoff int64, max int) []string {
	var out []string
	for x.head < len(x.ended) && len(out) < max {
		ex := x.ended[x.head]
		if ex.ended > cutoff {
			break
		}
		x.ended[x.head] = expiring{}
		x.head++
		if ent, ok := x.sagas[ex.id]; ok && ent.ended == ex.ended {
			out = append(out, ex.id)
		}
	}
	if x.head > 1024 && x.head > len(x.ended)/2 {
		x.ended = slices.Clip(x.ended[x.head:])
		x.head = 0
	}
	return out
}

// readState reads partition p of the state topic from offset from (-1: its
// start) to end with read_committed and calls fn with each record that is
// not a control record. Records of a transaction that has no marker are
// not committed and never delivered; readState checks for them when it
// makes no progress.
func (e *Engine) readState(ctx context.Context, p int32, from, end int64, fn func(*kgo.Record)) error {
	if from >= end {
		return nil
	}
	at := kgo.NewOffset().At(from)
	if from < 0 {
		at = kgo.NewOffset().AtStart()
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(e.cfg.brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{e.stateTopic: {p: at}}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
	)
	if err != nil {
		return err
	}
	defer cl.Close()
	last := max(from, 0) - 1
	idle, checked := time.Now(), false
	for last+1 < end {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		fetches := cl.PollFetches(pctx)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := fetches.Err0(); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("read state partition %d: %w", p, err)
		}
		n := 0
		fetches.EachRecord(func(r *kgo.Record) {
			n++
			if r.Offset >= end {
				last = max(last, r.Offset)
				return
			}
			last = max(last, r.Offset)
			if !r.Attrs.IsControl() {
				fn(r)
			}
		})
		if n > 0 {
			idle, checked = time.Now(), false
			continue
		}
		if !checked && time.Since(idle) > 2*time.Second {
			// Records with no transaction marker (left by a broker that
			// crashed mid-transaction) are never delivered: if that is all
			// the rest holds, the partition is read.
			checked = true
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			unmarked, err := committed.OnlyUnmarked(cctx, []kgo.Opt{kgo.SeedBrokers(e.cfg.brokers...)}, e.stateTopic, p, last+1, end)
			cancel()
			if err != nil {
				return fmt.Errorf("read state partition %d: %w", p, err)
			}
			if unmarked {
				e.log.Warn("state records with no transaction marker skipped", "partition", p, "from", last+1, "to", end)
				return nil
			}
		}
		if time.Since(idle) > 30*time.Second {
			return fmt.Errorf("read state partition %d: no progress at offset %d of %d for 30s", p, last+1, end)
		}
	}
	return nil
}

// indexHead is the part of a state record the index reads.
type indexHead struct {
	Status            string    `json:"status"`
	Deadline          int64     `json:"deadline_ms"`
	Updated           time.Time `json:"updated_at"`
	DefinitionVersion int       `json:"definition_version"`
	Step              int       `json:"step"`
	StepName          string    `json:"step_name"`
	Undoing           int       `json:"undoing"`
	UndoingName       string    `json:"undoing_step"`
}

// scanIndex indexes partition p of the state topic from its start up to
// offset to (not included): the part that restore does not replay.
func (e *Engine) scanIndex(ctx context.Context, p int32, to int64) (*sagaIndex, error) {
	x := newSagaIndex(e.vs.unrunnable)
	var bad int
	err := e.readState(ctx, p, -1, to, func(r *kgo.Record) {
		id := string(r.Key)
		if r.Value == nil {
			x.set(id, r.Offset, nil, true)
			return
		}
		var h indexHead
		if err := json.Unmarshal(r.Value, &h); err != nil {
			bad++
			return
		}
		st := State{Status: h.Status, Deadline: h.Deadline, Updated: h.Updated, DefinitionVersion: h.DefinitionVersion,
			Step: h.Step, StepName: h.StepName, Undoing: h.Undoing, UndoingName: h.UndoingName}
		x.set(id, r.Offset, &st, false)
	})
	if bad > 0 {
		e.log.Error("skipping undecodable state records", "partition", p, "count", bad)
	}
	return x, err
}

// readBack reads from the state topic the states of partition p's sagas that
// Redis lost, at the offsets the index gives. It returns them by saga id.
func (e *Engine) readBack(ctx context.Context, p int32, ids []string, x *sagaIndex) (map[string]write, error) {
	want := make(map[int64]string, len(ids))
	offsets := make([]int64, 0, len(ids))
	for _, id := range ids {
		if ent, ok := x.sagas[id]; ok {
			want[ent.offset] = id
			offsets = append(offsets, ent.offset)
		}
	}
	slices.Sort(offsets)
	out := make(map[string]write, len(offsets))
	// Offsets close together are read in one pass, far ones each from
	// where it is.
	const gap = 256
	for i := 0; i < len(offsets); {
		j := i + 1
		for j < len(offsets) && offsets[j]-offsets[j-1] <= gap {
			j++
		}
		var derr error
		err := e.readState(ctx, p, offsets[i], offsets[j-1]+1, func(r *kgo.Record) {
			id, ok := want[r.Offset]
			if !ok || string(r.Key) != id || r.Value == nil {
				return
			}
			st := new(State)
			if err := json.Unmarshal(r.Value, st); err != nil {
				derr = fmt.Errorf("decode state of saga %s at offset %d: %w", id, r.Offset, err)
				return
			}
			out[id] = write{partition: p, offset: r.Offset, state: st, raw: r.Value}
		})
		if err = errors.Join(err, derr); err != nil {
			return nil, err
		}
		i = j
	}
	return out, nil
}
