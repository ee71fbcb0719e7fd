package orchestrator

import (
	"container/heap"
	"time"
)

// timer is a saga deadline. waiting and attempt name the command whose reply
// is awaited; they are empty for deadlines read back from Redis.
type timer struct {
	deadline  int64
	sagaID    string
	waiting   string
	attempt   int
	partition int32
}

// timers holds at most one deadline per saga, its latest, in a min-heap
// indexed by saga id: arming a saga's next deadline replaces its last one,
// and a saga that ends or leaves takes its deadline with it. (A heap of
// every deadline ever armed held three per saga for the step deadline's
// length: memory that grew with throughput.)
type timers struct {
	h   timerHeap
	ids map[string]*timerEntry
}

type timerEntry struct {
	timer
	index int
}

type timerHeap []*timerEntry

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].deadline < h[j].deadline }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *timerHeap) Push(x any) {
	e := x.(*timerEntry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *timerHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

// add arms x, replacing the saga's deadline if it has one.
func (t *timers) add(x timer) {
	if t.ids == nil {
		t.ids = make(map[string]*timerEntry)
	}
	if e, ok := t.ids[x.sagaID]; ok {
		e.timer = x
		heap.Fix(&t.h, e.index)
		return
	}
	e := &timerEntry{timer: x}
	heap.Push(&t.h, e)
	t.ids[x.sagaID] = e
}

// remove disarms the saga's deadline, if it has one.
func (t *timers) remove(sagaID string) {
	if e, ok := t.ids[sagaID]; ok {
		heap.Remove(&t.h, e.index)
		delete(t.ids, sagaID)
	}
}

// removePartition disarms the deadlines of partition p's sagas.
func (t *timers) removePartition(p int32) {
	for id, e := range t.ids {
		if e.partition == p {
			heap.Remove(&t.h, e.index)
			delete(t.ids, id)
		}
	}
}

func (t *timers) len() int { return len(t.h) }

func (t *timers) next() (int64, bool) {
	if len(t.h) == 0 {
		return 0, false
	}
	return t.h[0].deadline, true
}

func (t *timers) pop() timer {
	e := heap.Pop(&t.h).(*timerEntry)
	delete(t.ids, e.sagaID)
	return e.timer
}

// maxTimeoutsPerBatch bounds the Timeout messages of one transaction.
const maxTimeoutsPerBatch = 1000

// due pops the timers that expired by now and are still current.
func (e *Engine) dueTimers(now time.Time) []timer {
	var out []timer
	ms := now.UnixMilli()
	for len(out) < maxTimeoutsPerBatch {
		if next, ok := e.timers.next(); !ok || next > ms {
			break
		}
		t := e.timers.pop()
		if e.parts[t.partition] == nil {
			continue
		}
		ent, ok := e.sagas[t.sagaID]
		switch {
		case ok:
			st := ent.state
			if st.Terminal() || st.Deadline != t.deadline || (t.waiting != "" && (st.Waiting != t.waiting || st.Attempt != t.attempt)) {
				continue
			}
		case t.waiting != "":
			// Armed from a state in memory that has left it: the saga
			// ended (or its partition was restored, which re-armed its
			// deadline from Redis).
			continue
		}
		out = append(out, t)
	}
	return out
}
