package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
)

// A saga's end-to-end time is a chain of hops between processes, each ending
// when the next process produces its answer:
//
//   - an engine hop runs from an inbox record produced (a start, or a
//     participant's reply) to the engine's first record produced for it (an
//     event or a command). It holds the rest of the producer's transaction,
//     the fetch, the wait for the engine's transaction under way, and the
//     engine's own work up to that record.
//   - a participant hop runs from the engine's last record before a reply to
//     the reply produced: the same, on the participant's side.
//
// The hops are read after the scenario from the records' timestamps (set
// when each was produced, in milliseconds), so that reading them does not
// load the machine while it is measured.

// hopTopics are the topics whose records make up the hops.
func hopTopics() []string {
	ts := []string{message.Inbox(order.Name), message.Events(order.Name)}
	for _, p := range order.Participants {
		ts = append(ts, message.Commands(p))
	}
	return ts
}

// hopMark is where the hop topics ended before a scenario.
type hopMark map[string]map[int32]int64

// markHops returns the end of the hop topics, read before a scenario.
func (b *bench) markHops(ctx context.Context) (hopMark, error) {
	ends, err := b.adm.ListEndOffsets(ctx, hopTopics()...)
	if err != nil {
		return nil, err
	}
	if err := ends.Error(); err != nil {
		return nil, err
	}
	m := make(hopMark)
	ends.Each(func(o kadm.ListedOffset) {
		if m[o.Topic] == nil {
			m[o.Topic] = make(map[int32]int64)
		}
		m[o.Topic][o.Partition] = o.Offset
	})
	return m, nil
}

// hops is a scenario's hops: per kind, the time of every hop.
type hops struct {
	sagas        int
	engine, part []time.Duration // every hop
	total        time.Duration   // first record to last, summed over sagas
}

// readHops reads the records of the sagas whose ids start with prefix,
// produced since from, and splits each saga's time into its hops.
func (b *bench) readHops(ctx context.Context, from hopMark, prefix string) (*hops, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	// The last stable offsets: every record before them is committed or
	// aborted, and the markers are kept so that the end is seen.
	ends, err := b.adm.ListCommittedOffsets(ctx, hopTopics()...)
	if err != nil {
		return nil, err
	}
	if err := ends.Error(); err != nil {
		return nil, err
	}
	consume := make(map[string]map[int32]kgo.Offset)
	left := make(map[string]map[int32]int64) // the offset still to reach
	ends.Each(func(o kadm.ListedOffset) {
		start := from[o.Topic][o.Partition]
		if o.Offset <= start {
			return
		}
		if consume[o.Topic] == nil {
			consume[o.Topic], left[o.Topic] = make(map[int32]kgo.Offset), make(map[int32]int64)
		}
		consume[o.Topic][o.Partition] = kgo.NewOffset().At(start)
		left[o.Topic][o.Partition] = o.Offset - 1
	})
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(b.brokers...),
		kgo.ConsumePartitions(consume),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
	)
	if err != nil {
		return nil, err
	}
	defer cl.Close()

	bySaga := make(map[string][]point)
	inbox := message.Inbox(order.Name)
	remaining := 0
	for _, ps := range left {
		remaining += len(ps)
	}
	for remaining > 0 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("read the scenario's records: %w", err)
		}
		fs.EachError(func(t string, p int32, err error) {
			if err != nil {
				b.logf("hops: fetch %s/%d: %v", t, p, err)
			}
		})
		fs.EachRecord(func(r *kgo.Record) {
			if last, ok := left[r.Topic][r.Partition]; ok && r.Offset >= last {
				delete(left[r.Topic], r.Partition)
				remaining--
			}
			if r.Attrs.IsControl() || !strings.HasPrefix(string(r.Key), prefix) {
				return
			}
			id := string(r.Key)
			bySaga[id] = append(bySaga[id], point{at: r.Timestamp, engine: r.Topic != inbox})
		})
	}

	h := &hops{}
	for _, pts := range bySaga {
		h.add(pts)
	}
	return h, nil
}

// point is one record of a saga.
type point struct {
	at     time.Time
	engine bool // produced by the engine; else an inbox record
}

// add splits one saga's records into its hops. A saga whose first record
// is not an inbox record was not seen from its start and is left out.
func (h *hops) add(pts []point) {
	slices.SortStableFunc(pts, func(a, b point) int { return a.at.Compare(b.at) })
	// Records of the same millisecond are put in the order of the chain:
	// what follows an inbox record is the engine's answer, what follows
	// the engine's record is a reply (and a saga starts with an inbox
	// record).
	for i := 0; i < len(pts); {
		j := i + 1
		for j < len(pts) && pts[j].at.Equal(pts[i].at) {
			j++
		}
		after := i == 0 || pts[i-1].engine // what comes next is of the other kind
		run := pts[i:j]
		slices.SortStableFunc(run, func(a, b point) int {
			switch {
			case a.engine == b.engine:
				return 0
			case a.engine != after:
				return -1
			}
			return 1
		})
		i = j
	}
	if len(pts) < 2 || pts[0].engine {
		return
	}
	h.sagas++
	h.total += pts[len(pts)-1].at.Sub(pts[0].at)
	waiting := pts[0].at // the first inbox record not answered yet
	for i := 1; i < len(pts); i++ {
		prev, p := pts[i-1], pts[i]
		switch {
		case p.engine && !prev.engine:
			d := p.at.Sub(waiting)
			h.engine = append(h.engine, d)
		case !p.engine && prev.engine:
			d := p.at.Sub(prev.at)
			h.part = append(h.part, d)
			waiting = p.at
		}
	}
}

// hopTable is the table of where the sagas' time goes, one line per
// scenario that has hops.
func hopTable(rows []row) [][]string {
	cells := [][]string{{"scenario", "saga ms", "engine hops", "ms", "share", "hop p50", "hop p99", "participant hops", "ms", "share", "hop p50", "hop p99"}}
	for _, r := range rows {
		h := r.hops
		if h == nil || h.sagas == 0 {
			continue
		}
		n := float64(h.sagas)
		total := h.total.Seconds() * 1e3 / n
		half := func(ds []time.Duration) []string {
			if len(ds) == 0 {
				return []string{"0", "-", "-", "-", "-"}
			}
			slices.Sort(ds)
			var sum time.Duration
			for _, d := range ds {
				sum += d
			}
			ms := sum.Seconds() * 1e3 / n
			return []string{fmt.Sprintf("%.1f", float64(len(ds))/n), fmt.Sprintf("%.1f", ms), fmt.Sprintf("%.0f%%", 100*ms/total),
				msOf(ds[len(ds)/2]), msOf(ds[len(ds)*99/100])}
		}
		line := append([]string{r.name, fmt.Sprintf("%.1f", total)}, half(h.engine)...)
		cells = append(cells, append(line, half(h.part)...))
	}
	return cells
}

// msOf formats a hop: timestamps have a resolution of a millisecond.
func msOf(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }
