package console

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// tail is one consumer of one topic, with a client of its own and no
// consumer group: it reads from its start offset (the beginning, or a
// little before the end) and then follows the topic until Run's context
// ends. It reads committed records only, and keeps the control records
// that end transactions so that it knows how far it has read (an index is
// caught up with an end offset that a commit marker holds).
type tail struct {
	topic   string
	from    kgo.Offset
	add     func(*kgo.Record)
	advance func(p int32, next int64)
}

// run consumes until ctx is done. A failure to make the client is returned;
// fetch errors are logged and retried by the client.
func (t *tail) run(ctx context.Context, opts []kgo.Opt, log *slog.Logger) error {
	cl, err := kgo.NewClient(append(opts[:len(opts):len(opts)],
		kgo.ConsumeTopics(t.topic),
		kgo.ConsumeResetOffset(t.from),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
	)...)
	if err != nil {
		return err
	}
	defer cl.Close()
	var lastErr string
	for {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		fs.EachError(func(topic string, p int32, err error) {
			if errors.Is(err, context.Canceled) || err.Error() == lastErr {
				return
			}
			lastErr = err.Error()
			log.Warn("console: reading a topic for its index", "topic", topic, "partition", p, "err", err)
		})
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			var next int64 = -1
			for _, r := range p.Records {
				next = r.Offset + 1
				if r.Attrs.IsControl() {
					continue
				}
				t.add(r)
			}
			if next >= 0 && t.advance != nil {
				t.advance(p.Partition, next)
			}
		})
		if fs.Empty() {
			// PollFetches returns at once when the client is closing.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
}
