package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/ksaga/ksaga/internal/ctxtime"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
)

// Targets of docs/PERFORMANCE.md that the extra runs check.
const (
	rssTarget     = 256 << 20
	restartTarget = 5 * time.Second
	// restartLead is how long the steady load runs before the kill.
	restartLead = 2 * time.Second
	// restartTail is how long it goes on after the kill.
	restartTail = 10 * time.Second
)

// rssRun runs --rss-sagas sagas through one engine, --rss-in-flight at a
// time, and reports the engine's memory at the end.
func (b *bench) rssRun(ctx context.Context) error {
	if err := b.restartEngine(ctx, false); err != nil {
		return err
	}
	b.loads++
	l := &load{name: "rss", prefix: b.prefix(), n: b.cfg.rssSagas, inFlight: b.cfg.rssInFlight}
	l.progress = func() string {
		m, err := readMemory(b.engine.pid())
		if err != nil {
			return ""
		}
		return "engine VmRSS " + mib(m.rss)
	}
	b.logf("rss: %d sagas, at most %d in flight", l.n, l.inFlight)
	t, err := b.newTracker(ctx, l)
	if err != nil {
		return err
	}
	defer t.close()
	o := b.startOffer(ctx, l, t)
	err = b.wait(ctx, t, o)
	o.stop()
	if err != nil {
		return err
	}
	res := t.result()
	if _, err := res.check(l); err != nil {
		return err
	}
	mem, err := readMemory(b.engine.pid())
	if err != nil {
		return fmt.Errorf("read the engine's memory: %w", err)
	}
	ms, err := b.engine.scrape(ctx)
	if err != nil {
		return err
	}
	verdict := "met"
	if mem.rss >= rssTarget || mem.hwm >= rssTarget {
		verdict = "NOT met"
	}
	fmt.Fprintf(b.out, "RSS after %s sagas (%s in flight at most, %s sagas/s): engine VmRSS %s, VmHWM (peak) %s, Go heap in use %s; target < %s: %s\n",
		count(float64(l.n)), count(float64(l.inFlight)), count(float64(l.n)/res.elapsed.Seconds()),
		mib(mem.rss), mib(mem.hwm), mib(uint64(ms.sum("go_memstats_heap_inuse_bytes"))), mib(rssTarget), verdict)
	if self, err := readMemory(os.Getpid()); err == nil {
		fmt.Fprintf(b.out, "  (for scale: sagabench with kfake VmRSS %s, redis used_memory %s)\n", mib(self.rss), b.redisMemory(ctx))
	}
	fmt.Fprintln(b.out)
	return nil
}

// redisMemory returns Redis's used_memory_human.
func (b *bench) redisMemory(ctx context.Context) string {
	info, err := b.rdb.Info(ctx, "memory").Result()
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory_human:"); ok {
			return v
		}
	}
	return "?"
}

// restartRun puts --restart-sagas sagas in the state topic through an
// engine (with static membership unless --restart-static=false), then runs
// a steady load, SIGKILLs the engine during it, starts a new one at once and
// reports how long until it is ready and until a saga offered after the
// kill has ended.
func (b *bench) restartRun(ctx context.Context) error {
	static := b.cfg.restartStatic
	if err := b.restartEngine(ctx, static); err != nil {
		return err
	}
	b.loads++
	fill := &load{name: "restart: fill", prefix: b.prefix(), n: b.cfg.restartSagas}
	b.logf("%s: %d sagas at full speed", fill.name, fill.n)
	t, err := b.newTracker(ctx, fill)
	if err != nil {
		return err
	}
	o := b.startOffer(ctx, fill, t)
	err = b.wait(ctx, t, o)
	o.stop()
	t.close()
	if err != nil {
		return err
	}
	res := t.result()
	if _, err := res.check(fill); err != nil {
		return err
	}
	b.logf("%s: %.0f sagas/s", fill.name, float64(fill.n)/res.elapsed.Seconds())

	b.loads++
	rate := b.cfg.restartRate
	steady := &load{name: "restart: steady load", prefix: b.prefix(), rate: rate,
		n: int(rate * (restartLead + restartTail).Seconds()), keepLatencies: true}
	t, err = b.newTracker(ctx, steady)
	if err != nil {
		return err
	}
	defer t.close()
	b.logf("%s: %.0f sagas/s; SIGKILL of the engine after %v", steady.name, rate, restartLead)
	o = b.startOffer(ctx, steady, t)
	defer o.stop()
	ctxtime.Sleep(ctx, restartLead)
	if ctx.Err() != nil {
		return ctx.Err()
	}

	b.engine.kill()
	killed := time.Now()
	b.engine = nil
	eng, err := b.spawnEngine(static)
	if err != nil {
		return err
	}
	b.engine = eng
	readyAt, err := eng.waitReady(ctx, readyTimeout)
	if err != nil {
		return err
	}
	b.logf("restart: ready %v after the SIGKILL", readyAt.Sub(killed).Round(time.Millisecond))
	if err := b.wait(ctx, t, o); err != nil {
		return err
	}
	sres := t.result()
	if _, err := sres.check(steady); err != nil {
		return err
	}
	firstEnd, ok := t.firstEndOfferedAfter(killed)
	if !ok {
		return fmt.Errorf("restart: no saga offered after the kill ended")
	}
	ready, processing := readyAt.Sub(killed), firstEnd.Sub(killed)
	verdict := "met"
	if ready > restartTarget || processing > restartTarget {
		verdict = "NOT met"
	}
	records := b.stateRecords(ctx)
	membership := "static membership"
	if !static {
		membership = "dynamic membership"
	}
	fmt.Fprintf(b.out, "Restart after SIGKILL (%s sagas just put through, %s in %s; %s): ready (/readyz 200) after %s, first saga offered after the kill ended %s after it; target within %v: %s\n",
		count(float64(fill.n)), records, message.State(order.Name), membership, dur(ready), dur(processing), restartTarget, verdict)
	fmt.Fprintf(b.out, "  steady load of %.0f sagas/s across the kill: p50 %s, p99 %s, max %s; every saga ended once\n\n", rate, dur(sres.p50), dur(sres.p99), dur(sres.max))
	return nil
}

// stateRecords returns the number of offsets in the state topic (records
// and transaction markers), as text.
func (b *bench) stateRecords(ctx context.Context) string {
	topic := message.State(order.Name)
	starts, err1 := b.adm.ListStartOffsets(ctx, topic)
	ends, err2 := b.adm.ListEndOffsets(ctx, topic)
	if err1 != nil || err2 != nil {
		return "?"
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) {
		if s, ok := starts.Lookup(topic, o.Partition); ok {
			n += o.Offset - s.Offset
		}
	})
	return count(float64(n)) + " offsets"
}

// firstEndOfferedAfter returns when the first saga offered at or after at
// ended.
func (t *tracker) firstEndOfferedAfter(at time.Time) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var first int64
	for i, o := range t.offered {
		if o >= at.UnixNano() && t.endAt[i] != 0 && (first == 0 || t.endAt[i] < first) {
			first = t.endAt[i]
		}
	}
	return time.Unix(0, first), first != 0
}
