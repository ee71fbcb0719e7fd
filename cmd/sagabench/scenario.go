package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/ksaga/ksaga/internal/ctxtime"
)

// row is one line of the table.
type row struct {
	name  string
	sagas int
	// rate is the offered rate in sagas/s; 0 offered all at once.
	rate        float64
	elapsed     time.Duration
	sagasPerSec float64
	inboxPerSec float64
	ratio       float64 // inboxPerSec over the bare loop's
	txnPerSec   float64
	recsPerTxn  float64
	p50, p99    time.Duration
	max         time.Duration
	peakRSS     uint64
	// redisRT and ordersRT are Redis round trips per committed
	// transaction: the engine's own client, and the orders store's (the
	// saga's local complete-order step).
	redisRT, ordersRT float64
	// phases is the mean time of a committed engine transaction in each
	// of its phases (ksaga_transaction_phase_seconds), in seconds.
	phases  [len(phaseNames)]float64
	aborted float64
	cpu     cpuUse
	// hops splits the sagas' time between the engine and the
	// participants; nil when it could not be read.
	hops *hops
	bare bool
	// engineOnly is the backlog row: no sagas/s or latencies.
	engineOnly bool
	warnings   []string
}

// output is what engines produced: records and uncompressed bytes per
// topic (kprom's ksaga_kafka_produce_*_total{client="engine"}) for the inbox
// records they consumed.
type output struct {
	inbox   float64
	records map[string]float64
	bytes   map[string]float64
}

func (o *output) add(before, after metricSet) {
	if o.records == nil {
		o.records, o.bytes = make(map[string]float64), make(map[string]float64)
	}
	o.inbox += after.sum("ksaga_inbox_records_total") - before.sum("ksaga_inbox_records_total")
	for topic, v := range after.byLabel("ksaga_kafka_produce_records_total", "topic", "client", "engine") {
		o.records[topic] += v - before.sum("ksaga_kafka_produce_records_total", "client", "engine", "topic", topic)
	}
	for topic, v := range after.byLabel("ksaga_kafka_produce_bytes_total", "topic", "client", "engine") {
		o.bytes[topic] += v - before.sum("ksaga_kafka_produce_bytes_total", "client", "engine", "topic", topic)
	}
}

// cpuUse is the CPU each process used during a scenario, in cores (CPU
// seconds per second).
type cpuUse struct {
	engine, parts, redis, bench float64
	ok                          bool
}

// cpuClock samples the CPU time of every process of the run.
type cpuClock struct {
	at                         time.Time
	engine, parts, redis, self time.Duration
	ok                         bool
}

func (b *bench) cpuNow() cpuClock {
	c := cpuClock{at: time.Now(), ok: true}
	read := func(ch *child) time.Duration {
		if ch == nil {
			return 0
		}
		d, err := cpuTime(ch.pid())
		if err != nil {
			c.ok = false
		}
		return d
	}
	c.engine, c.parts, c.redis = read(b.engine), read(b.parts), read(b.redisSrv)
	self, err := cpuTime(os.Getpid())
	c.self, c.ok = self, c.ok && err == nil
	return c
}

func (c cpuClock) since(from cpuClock) cpuUse {
	wall := c.at.Sub(from.at).Seconds()
	if wall <= 0 || !c.ok || !from.ok {
		return cpuUse{}
	}
	f := func(a, b time.Duration) float64 { return (a - b).Seconds() / wall }
	return cpuUse{engine: f(c.engine, from.engine), parts: f(c.parts, from.parts), redis: f(c.redis, from.redis), bench: f(c.self, from.self), ok: true}
}

// scenarios runs the four scenarios and the bare loop, and returns the
// table's rows: the bare loop first.
func (b *bench) scenarios(ctx context.Context) ([]row, error) {
	n := b.cfg.sagas
	var rows []row
	for i, l := range []*load{
		{name: "full speed, 0% failures", n: n, keepLatencies: true},
		{name: "full speed, 10% failures", n: n, failEvery: 10, keepLatencies: true},
	} {
		r, err := b.scenario(ctx, l, profileTag(b.cfg, i == 0, "full-speed"))
		if err != nil {
			return rows, err
		}
		rows = append(rows, r)
	}
	rate := b.cfg.rate
	if rate == 0 {
		rate = max(rows[0].sagasPerSec, rows[1].sagasPerSec) / 2
	}
	for i, l := range []*load{
		{name: fmt.Sprintf("%.0f/s, 0%% failures", rate), n: n, rate: rate, keepLatencies: true},
		{name: fmt.Sprintf("%.0f/s, 10%% failures", rate), n: n, rate: rate, failEvery: 10, keepLatencies: true},
	} {
		r, err := b.scenario(ctx, l, profileTag(b.cfg, i == 0, "fixed-rate"))
		if err != nil {
			return rows, err
		}
		rows = append(rows, r)
	}
	alone, err := b.backlog(ctx)
	if err != nil {
		return rows, err
	}
	rows = append(rows, alone)
	bare, err := b.bareLoop(ctx)
	if err != nil {
		return rows, err
	}
	for i := range rows {
		rows[i].ratio = rows[i].inboxPerSec / bare.inboxPerSec
	}
	return append([]row{bare}, rows...), nil
}

// profileTag names the profiles of a scenario: tag when profiling is on
// and the scenario is profiled, else "".
func profileTag(c config, profiled bool, tag string) string {
	if c.profileDir == "" || !profiled {
		return ""
	}
	return tag
}

// scenario runs one load through a freshly started engine, profiling it
// when profile (the profiles' file name prefix) is set.
func (b *bench) scenario(ctx context.Context, l *load, profile string) (row, error) {
	b.loads++
	l.prefix = b.prefix()
	if b.loads > 1 {
		if err := b.restartEngine(ctx, false); err != nil {
			return row{}, err
		}
	}
	b.logf("%s: %d sagas", l.name, l.n)
	before, err := b.engine.scrape(ctx)
	if err != nil {
		return row{}, err
	}
	t, err := b.newTracker(ctx, l)
	if err != nil {
		return row{}, err
	}
	defer t.close()
	mark, markErr := b.markHops(ctx)
	var prof *profiler
	if profile != "" {
		prof = b.startProfiles(ctx, profile)
	}
	cpu0 := b.cpuNow()
	o := b.startOffer(ctx, l, t)
	err = b.wait(ctx, t, o)
	o.stop()
	if err != nil {
		if prof != nil {
			_ = prof.wait()
		}
		return row{}, err
	}
	cpu := b.cpuNow().since(cpu0)
	after, err := b.engine.scrape(ctx)
	if err != nil {
		return row{}, err
	}
	mem, memErr := readMemory(b.engine.pid())
	if prof != nil {
		err := prof.wait()
		if err == nil {
			err = b.saveAllocs(ctx, profile)
		}
		if err != nil {
			b.logf("profiles: %v", err)
		} else {
			b.logf("profiles written to %s/%s.*", b.cfg.profileDir, profile)
		}
	}
	res := t.result()
	warnings, err := res.check(l)
	if err != nil {
		return row{}, err
	}
	b.engineOutput.add(before, after)

	d := func(name string, match ...string) float64 {
		return after.sum(name, match...) - before.sum(name, match...)
	}
	secs := res.elapsed.Seconds()
	committed := d("ksaga_transactions_total", "result", "committed")
	r := row{
		name: l.name, sagas: l.n, rate: l.rate, elapsed: res.elapsed,
		sagasPerSec: float64(l.n) / secs,
		inboxPerSec: d("ksaga_inbox_records_total") / secs,
		txnPerSec:   committed / secs,
		p50:         res.p50, p99: res.p99, max: res.max,
		aborted:  d("ksaga_transactions_total", "result", "aborted"),
		cpu:      cpu,
		warnings: warnings,
	}
	if committed > 0 {
		r.recsPerTxn = d("ksaga_inbox_records_total") / committed
		r.redisRT = d("ksaga_redis_round_trips_total", "client", "engine") / committed
		r.ordersRT = d("ksaga_redis_round_trips_total", "client", "orders") / committed
		r.phases = meanPhases(d, committed)
	}
	if memErr == nil {
		r.peakRSS = mem.hwm
	}
	if markErr == nil {
		r.hops, markErr = b.readHops(ctx, mark, l.prefix)
	}
	if markErr != nil {
		b.logf("%s: cannot split the sagas' time into hops: %v", l.name, markErr)
	}
	b.logf("%s: %.0f sagas/s, p99 %v, engine peak RSS %s", l.name, r.sagasPerSec, r.p99.Round(time.Millisecond), mib(r.peakRSS))
	return r, nil
}

// phaseNames are the phases of ksaga_transaction_phase_seconds, in order.
var phaseNames = [...]string{"preload", "handle", "flush", "commit"}

// meanPhases returns the mean time per committed transaction of each phase,
// from d, the change of a metric over the scenario.
func meanPhases(d func(name string, match ...string) float64, committed float64) [len(phaseNames)]float64 {
	var out [len(phaseNames)]float64
	for i, p := range phaseNames {
		out[i] = d("ksaga_transaction_phase_seconds_sum", "phase", p) / committed
	}
	return out
}

// offering is a load being offered by its own goroutine.
type offering struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func (b *bench) startOffer(ctx context.Context, l *load, t *tracker) *offering {
	ctx, cancel := context.WithCancel(ctx)
	o := &offering{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		o.err = b.offer(ctx, l, t)
	}()
	return o
}

// stop cancels the offering if it is still running and waits for it.
func (o *offering) stop() {
	o.cancel()
	<-o.done
}

// prefix returns the saga id prefix of the next load: unique per run and
// load.
func (b *bench) prefix() string { return fmt.Sprintf("b%s-%d-", b.runID, b.loads) }

// profiler collects profiles in the background.
type profiler struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func (p *profiler) fail(err error) {
	p.mu.Lock()
	p.errs = append(p.errs, err)
	p.mu.Unlock()
}

// wait waits for the profiles and returns their errors.
func (p *profiler) wait() error {
	p.wg.Wait()
	return errors.Join(p.errs...)
}

// startProfiles takes CPU profiles of the engine, the participants and
// sagabench itself (kfake and the load) for --profile-seconds, and an
// execution trace of the engine, in the background.
func (b *bench) startProfiles(ctx context.Context, tag string) *profiler {
	p := &profiler{}
	dir := b.cfg.profileDir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.fail(fmt.Errorf("--profile-dir: %w", err))
		return p
	}
	secs := b.cfg.profileSeconds
	timeout := time.Duration(secs)*time.Second + 30*time.Second
	for _, c := range []*child{b.engine, b.parts} {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			path := fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs)
			if err := c.fetch(ctx, path, filepath.Join(dir, tag+"."+c.name+".cpu.pprof"), timeout); err != nil {
				p.fail(err)
			}
		}()
	}
	// An execution trace shows where the engine waits (go tool trace
	// -pprof=net, sync, syscall); a short one suffices and stays small.
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		path := fmt.Sprintf("/debug/pprof/trace?seconds=%d", min(secs, 3))
		if err := b.engine.fetch(ctx, path, filepath.Join(dir, tag+".engine.trace"), timeout); err != nil {
			p.fail(err)
		}
	}()
	f, err := os.Create(filepath.Join(dir, tag+".sagabench.cpu.pprof"))
	if err != nil {
		p.fail(err)
		return p
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		p.fail(fmt.Errorf("profile sagabench: %w", err))
		return p
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		ctxtime.Sleep(ctx, time.Duration(secs)*time.Second)
		pprof.StopCPUProfile()
		f.Close()
	}()
	return p
}

// saveAllocs saves the engine's and the participants' allocation and heap
// profiles. Allocations count from the process's start: the scenario's for
// the engine, the run's for the participants.
func (b *bench) saveAllocs(ctx context.Context, tag string) error {
	for _, c := range []*child{b.engine, b.parts} {
		for _, p := range []string{"allocs", "heap"} {
			file := filepath.Join(b.cfg.profileDir, tag+"."+c.name+"."+p+".pprof")
			if err := c.fetch(ctx, "/debug/pprof/"+p, file, 30*time.Second); err != nil {
				return err
			}
		}
	}
	return nil
}
