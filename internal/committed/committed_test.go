package committed

import (
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

type rec struct {
	r            *kgo.Record
	control, txn bool
}

func data(off, pid int64, txn bool) rec {
	return rec{r: &kgo.Record{Offset: off, ProducerID: pid}, txn: txn}
}

func marker(off, pid int64, commit bool) rec {
	r := &kgo.Record{Offset: off, ProducerID: pid, Key: []byte{0, 0, 0, 0}}
	if commit {
		r.Key[3] = 1
	}
	return rec{r: r, control: true, txn: true}
}

func TestFilter(t *testing.T) {
	var f Filter
	var got []int64
	emit := func(r *kgo.Record) { got = append(got, r.Offset) }
	for _, r := range []rec{
		data(0, 1, true), data(1, 2, true), data(2, 1, true), marker(3, 1, true), // producer 1 commits 0 and 2
		marker(4, 2, false),                  // producer 2 aborts 1
		data(5, 0, false),                    // outside a transaction
		data(6, 1, true), marker(7, 1, true), // commits 6
		data(8, 1, true), // no marker: never committed
	} {
		f.add(r.r, r.control, r.txn, emit)
	}
	if want := []int64{0, 2, 5, 6}; !slices.Equal(got, want) {
		t.Errorf("committed offsets %v, want %v", got, want)
	}
	if f.Aborted() != 1 || f.Open() != 1 {
		t.Errorf("aborted %d, open %d; want 1 and 1", f.Aborted(), f.Open())
	}
}
