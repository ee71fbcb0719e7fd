package sim

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// batcher runs the scripts of concurrent callers in shared pipelines, as a
// database's group commit does: a caller that finds nothing on its way
// sends at once; callers that come while a pipeline is on its way queue
// for the next one, which leaves as soon as the first returns. The engine
// runs up to 16 sagas of a batch at once, so their local steps cost about
// one round trip together instead of one each, and no caller waits for a
// timer.
type batcher struct {
	rdb redis.UniversalClient

	mu      sync.Mutex
	queue   []*scriptCall
	sending bool
}

// scriptCall is one caller's script and, once done is closed, its result.
type scriptCall struct {
	script *redis.Script
	keys   []string
	args   []any
	res    any
	err    error
	done   chan struct{}
}

// batchTimeout bounds one pipeline. A caller stops waiting when its own
// ctx ends; its write may still land, as an abandoned call's would.
const batchTimeout = 5 * time.Second

// run runs script as script.Run would, in the next pipeline.
func (b *batcher) run(ctx context.Context, script *redis.Script, keys []string, args ...any) (any, error) {
	c := &scriptCall{script: script, keys: keys, args: args, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, c)
	if !b.sending {
		b.sending = true
		go b.send()
	}
	b.mu.Unlock()
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// send sends the queue, one pipeline at a time, until it is empty.
func (b *batcher) send() {
	for {
		b.mu.Lock()
		q := b.queue
		b.queue = nil
		if len(q) == 0 {
			b.sending = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.exec(q)
	}
}

// exec runs q in one pipeline of EVALSHAs. When Redis does not know a
// script (the first use, a restart, a failover), exec loads it and runs the
// calls that needed it again, in a second pipeline.
func (b *batcher) exec(q []*scriptCall) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	for try := 0; len(q) > 0; try++ {
		pipe := b.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(q))
		for i, c := range q {
			cmds[i] = c.script.EvalSha(ctx, pipe, c.keys, c.args...)
		}
		_, _ = pipe.Exec(ctx) // each command's error is its caller's
		var again []*scriptCall
		loaded := make(map[*redis.Script]error)
		for i, c := range q {
			c.res, c.err = cmds[i].Result()
			if try == 0 && c.err != nil && redis.HasErrorPrefix(c.err, "NOSCRIPT") {
				err, ok := loaded[c.script]
				if !ok {
					err = c.script.Load(ctx, b.rdb).Err()
					loaded[c.script] = err
				}
				if err == nil {
					again = append(again, c)
					continue
				}
			}
			close(c.done)
		}
		q = again
	}
}
