// Package committed tells which records of a partition are committed, from
// a read_uncommitted stream that keeps control records.
//
// A read_committed consumer cannot tell where a partition ends when the
// last records belong to a transaction that has no end marker: the broker
// hides them, and the consumer waits for offsets it will never see. Kafka
// writes an abort marker for every transaction it aborts, but a broker that
// crashed mid-transaction can leave records with no marker behind (kfake
// restarted from its data directory does). Reading read_uncommitted, every
// offset is seen, and Filter releases a transaction's records only when its
// commit marker comes.
package committed

import "github.com/twmb/franz-go/pkg/kgo"

// Filter holds the records of open transactions of one partition. Feed it
// every record of the partition in offset order, control records included
// (kgo.KeepControlRecords with kgo.ReadUncommitted).
type Filter struct {
	pending map[int64][]*kgo.Record // by producer id
	aborted int
}

// Add takes the next record. It calls emit with each record that is known
// committed: a record written outside a transaction at once, and the records
// of a transaction, in offset order, when its commit marker comes.
func (f *Filter) Add(r *kgo.Record, emit func(*kgo.Record)) {
	f.add(r, r.Attrs.IsControl(), r.Attrs.IsTransactional(), emit)
}

func (f *Filter) add(r *kgo.Record, control, txn bool, emit func(*kgo.Record)) {
	switch {
	case control:
		recs := f.pending[r.ProducerID]
		delete(f.pending, r.ProducerID)
		if !isCommit(r) {
			f.aborted += len(recs)
			return
		}
		for _, rec := range recs {
			emit(rec)
		}
	case txn:
		if f.pending == nil {
			f.pending = make(map[int64][]*kgo.Record)
		}
		f.pending[r.ProducerID] = append(f.pending[r.ProducerID], r)
	default:
		emit(r)
	}
}

// Open returns how many records wait for their transaction's marker.
func (f *Filter) Open() int {
	n := 0
	for _, recs := range f.pending {
		n += len(recs)
	}
	return n
}

// Aborted returns how many records were dropped by abort markers.
func (f *Filter) Aborted() int { return f.aborted }

// isCommit reports whether a control record is a commit marker. Its key is
// a version (int16) and a type (int16): 0 abort, 1 commit.
func isCommit(r *kgo.Record) bool {
	return len(r.Key) >= 4 && r.Key[2] == 0 && r.Key[3] == 1
}
