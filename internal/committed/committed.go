// Package committed finds the end of a partition for a read_committed
// reader.
//
// A read_committed reader knows it has read a partition to its end when it
// sees the record (or the transaction marker, with kgo.KeepControlRecords)
// just before the end offset. Kafka writes a marker for every transaction
// it ends, but a broker that crashed mid-transaction can leave records with
// no marker behind while the last stable offset moves past them (kfake
// restarted from its data directory does). Readers never see those records
// (they are not committed), and a reader that waits for them waits forever.
// OnlyUnmarked tells that case apart from a slow fetch.
package committed

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"
)

// OnlyUnmarked reports whether offsets from up to end of a partition hold
// no transaction marker: then none of their records was committed, and a
// read_committed reader that has seen everything before from has reached
// the end. It reads the range read_uncommitted with a client of its own,
// made with opts (seed brokers and the like).
func OnlyUnmarked(ctx context.Context, opts []kgo.Opt, topic string, p int32, from, end int64) (bool, error) {
	if from >= end {
		return true, nil
	}
	cl, err := kgo.NewClient(append(opts,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {p: kgo.NewOffset().At(from)}}),
		kgo.FetchIsolationLevel(kgo.ReadUncommitted()),
		kgo.KeepControlRecords(),
	)...)
	if err != nil {
		return false, err
	}
	defer cl.Close()
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return false, err
		}
		if err := fs.Err0(); err != nil {
			return false, fmt.Errorf("read %s/%d from %d: %w", topic, p, from, err)
		}
		marker, done := false, false
		fs.EachRecord(func(r *kgo.Record) {
			if r.Offset >= end {
				done = true
				return
			}
			if r.Attrs.IsControl() {
				marker = true
			}
			if r.Offset+1 >= end {
				done = true
			}
		})
		if marker {
			return false, nil
		}
		if done {
			return true, nil
		}
	}
}
