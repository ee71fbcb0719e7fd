package main

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/ksaga/ksaga/internal/ctxtime"
)

// backlog measures the engine alone at full speed, the number to hold
// against the bare loop: the end-to-end scenarios wait on the participants
// at every step, the bare loop on nothing. The participants are paused
// (SIGSTOP), and the engine too while n start requests are written; then the
// engine is continued and timed until it has consumed them all. Each start
// makes a state, an event and a command, the bare loop's kind of output.
// The participants are continued afterwards and the sagas let finish, so
// that the next scenario starts clean.
func (b *bench) backlog(ctx context.Context) (row, error) {
	l := &load{name: "engine alone, backlog of starts", n: b.cfg.sagas}
	b.loads++
	l.prefix = b.prefix()
	if err := b.restartEngine(ctx, false); err != nil {
		return row{}, err
	}
	b.logf("%s: %d sagas", l.name, l.n)
	t, err := b.newTracker(ctx, l)
	if err != nil {
		return row{}, err
	}
	defer t.close()
	before, err := b.engine.scrape(ctx)
	if err != nil {
		return row{}, err
	}
	if err := b.parts.signal(syscall.SIGSTOP); err != nil {
		return row{}, err
	}
	defer b.parts.signal(syscall.SIGCONT)
	if err := b.engine.signal(syscall.SIGSTOP); err != nil {
		return row{}, err
	}
	err = b.offer(ctx, l, t)
	if cerr := b.engine.signal(syscall.SIGCONT); err == nil {
		err = cerr
	}
	if err != nil {
		return row{}, err
	}
	cpu0 := b.cpuNow()
	start := time.Now()
	var after metricSet
	for {
		if after, err = b.engine.scrape(ctx); err != nil {
			return row{}, err
		}
		if after.sum("ksaga_inbox_records_total")-before.sum("ksaga_inbox_records_total") >= float64(l.n) {
			break
		}
		if time.Since(start) > b.cfg.stallTimeout {
			return row{}, fmt.Errorf("%s: the engine did not consume %d start requests within %v", l.name, l.n, b.cfg.stallTimeout)
		}
		if err := b.alive(); err != nil {
			return row{}, err
		}
		ctxtime.Sleep(ctx, 10*time.Millisecond)
	}
	elapsed := time.Since(start)
	cpu := b.cpuNow().since(cpu0)
	mem, memErr := readMemory(b.engine.pid())

	d := func(name string, match ...string) float64 {
		return after.sum(name, match...) - before.sum(name, match...)
	}
	committed := d("ksaga_transactions_total", "result", "committed")
	inbox := d("ksaga_inbox_records_total")
	r := row{
		name: l.name, sagas: l.n, elapsed: elapsed,
		inboxPerSec: inbox / elapsed.Seconds(),
		txnPerSec:   committed / elapsed.Seconds(),
		aborted:     d("ksaga_transactions_total", "result", "aborted"),
		cpu:         cpu,
		engineOnly:  true,
	}
	if committed > 0 {
		r.recsPerTxn = inbox / committed
		r.redisRT = d("ksaga_redis_round_trips_total", "client", "engine") / committed
		r.phases = meanPhases(d, committed)
	}
	if memErr == nil {
		r.peakRSS = mem.hwm
	}
	b.logf("%s: %.0f inbox records/s; letting the sagas finish", l.name, r.inboxPerSec)

	if err := b.parts.signal(syscall.SIGCONT); err != nil {
		return row{}, err
	}
	done := &offering{cancel: func() {}, done: make(chan struct{})}
	close(done.done)
	if err := b.wait(ctx, t, done); err != nil {
		return row{}, err
	}
	return r, nil
}

// signal sends sig to the child.
func (c *child) signal(sig syscall.Signal) error {
	if err := c.cmd.Process.Signal(sig); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("%v %s: %w", sig, c.name, err)
	}
	return nil
}
