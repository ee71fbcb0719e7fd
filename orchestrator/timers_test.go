package orchestrator

import (
	"testing"
)

// TestTimersOnePerSaga: arming a saga again replaces its deadline, a saga
// that ends or leaves takes it along, and deadlines pop in order.
func TestTimersOnePerSaga(t *testing.T) {
	var ts timers
	for i, id := range []string{"a", "b", "c", "d"} {
		ts.add(timer{deadline: int64(100 + i), sagaID: id, partition: int32(i % 2)})
	}
	ts.add(timer{deadline: 50, sagaID: "c", partition: 0}) // c's next step: earlier
	ts.add(timer{deadline: 500, sagaID: "a", partition: 0})
	ts.remove("b")
	if got := ts.len(); got != 3 {
		t.Fatalf("%d timers, want 3 (one per saga left)", got)
	}
	var order []string
	for ts.len() > 0 {
		order = append(order, ts.pop().sagaID)
	}
	if got := order; len(got) != 3 || got[0] != "c" || got[1] != "d" || got[2] != "a" {
		t.Errorf("popped %v, want [c d a]", got)
	}
	for i := range 10 {
		ts.add(timer{deadline: int64(i), sagaID: string(rune('a' + i)), partition: int32(i % 2)})
	}
	ts.removePartition(1)
	for ts.len() > 0 {
		if x := ts.pop(); x.partition != 0 {
			t.Errorf("timer of saga %s of partition 1 left after removePartition", x.sagaID)
		}
	}
}
