package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Fault kinds.
const (
	faultSigkillEngine       = "sigkill-engine"
	faultSigkillParticipants = "sigkill-participants"
	faultRedisFlushall       = "redis-flushall"
	faultRedisRestart        = "redis-restart"
	faultBrokerRestart       = "broker-restart"
	faultSigstopEngine       = "sigstop-engine"
	faultInjectEndTxn        = "inject-endtxn"
	faultInjectTxnOffset     = "inject-txnoffsetcommit"
	faultInjectProduce       = "inject-produce"
	faultOrdersOutage        = "orders-outage"
)

// faultKinds lists every fault kind in the order of the summary.
var faultKinds = []string{
	faultSigkillEngine, faultSigkillParticipants, faultRedisFlushall, faultRedisRestart,
	faultBrokerRestart, faultSigstopEngine, faultInjectEndTxn, faultInjectTxnOffset,
	faultInjectProduce, faultOrdersOutage,
}

// faultDurations is how long each fault keeps its target down.
var faultDurations = map[string]time.Duration{
	faultSigkillEngine:       restartAfter,
	faultSigkillParticipants: restartAfter,
	faultRedisFlushall:       0,
	faultRedisRestart:        restartAfter,
	faultBrokerRestart:       restartAfter,
	faultSigstopEngine:       sigstopFor,
	faultInjectEndTxn:        0,
	faultInjectTxnOffset:     0,
	faultInjectProduce:       0,
	faultOrdersOutage:        ordersOutageFor,
}

const (
	// restartAfter is how long a killed process stays down.
	restartAfter = time.Second
	// ordersOutageFor is how long the orders store is down. It is longer
	// than the ~3s one might pick: the engine takes about 2s from one
	// failed attempt of a record to the next (abort, backoff, re-consume),
	// so in a 3s or 5s outage no record used up its three attempts and the
	// retries-exhausted path went untested.
	ordersOutageFor = 8 * time.Second
	// injectCount is the number of requests each injection faults.
	injectCount = 2
)

// kfakeKeys maps the inject-* kinds to kfaked's request names.
var kfakeKeys = map[string]string{
	faultInjectEndTxn:    "EndTxn",
	faultInjectTxnOffset: "TxnOffsetCommit",
	faultInjectProduce:   "Produce",
}

// shortSchedule is the CI schedule.
var shortSchedule = map[string]int{
	faultSigkillEngine: 2, faultSigkillParticipants: 1, faultRedisFlushall: 1, faultBrokerRestart: 1,
	faultRedisRestart: 1, faultInjectEndTxn: 1, faultInjectTxnOffset: 1, faultInjectProduce: 1,
	faultOrdersOutage: 1,
}

// counts returns how many faults of each kind the run injects.
func (c config) counts() map[string]int {
	if c.Faults != nil {
		return c.Faults
	}
	m := make(map[string]int)
	if c.Short {
		for k, n := range shortSchedule {
			m[k] = n
		}
		if c.WithSigstop {
			m[faultSigstopEngine] = 1
		}
		return m
	}
	for _, k := range faultKinds {
		m[k] = c.FaultsPerKind
	}
	return m
}

// fault is one scheduled fault.
type fault struct {
	kind string
	// n numbers the faults of one kind from 0: it picks the target engine
	// and the injection mode.
	n  int
	at time.Duration // from the start of the load
}

// slot is the time a fault of kind k takes in the schedule: its own
// duration and the time to recover, at least spacing.
func slot(k string, spacing time.Duration) time.Duration {
	return max(spacing, faultDurations[k]+spacing/2)
}

// schedule orders the faults so that each kind is spread evenly, and
// returns them with the least load duration that fits them: lead before the
// first fault and tail after the last one's slot.
func schedule(counts map[string]int, spacing time.Duration, rng *rand.Rand) ([]fault, time.Duration) {
	type item struct {
		f   fault
		pos float64
		tie float64
	}
	var items []item
	for _, k := range faultKinds {
		for i := range counts[k] {
			items = append(items, item{f: fault{kind: k, n: i}, pos: (float64(i) + 0.5) / float64(counts[k]), tie: rng.Float64()})
		}
	}
	sort.Slice(items, func(a, b int) bool {
		if items[a].pos != items[b].pos {
			return items[a].pos < items[b].pos
		}
		return items[a].tie < items[b].tie
	})
	fs := make([]fault, len(items))
	var at time.Duration
	for i, it := range items {
		fs[i] = it.f
		fs[i].at = at
		at += slot(it.f.kind, spacing)
	}
	return fs, at
}

// stretch spreads fs over a load of length load, keeping lead before the
// first fault, when the load is longer than the schedule needs.
func stretch(fs []fault, need, load, lead time.Duration) {
	if need <= 0 || load <= need+lead {
		for i := range fs {
			fs[i].at += lead
		}
		return
	}
	f := float64(load-lead) / float64(need)
	for i := range fs {
		fs[i].at = lead + time.Duration(float64(fs[i].at)*f)
	}
}

// runFaults injects fs, each at its time after start, one after the other.
// It returns the number of faults injected per kind.
func (h *harness) runFaults(ctx context.Context, fs []fault, start time.Time) map[string]int {
	done := make(map[string]int)
	for _, f := range fs {
		wait := time.Until(start.Add(f.at))
		if wait > 0 {
			select {
			case <-ctx.Done():
				return done
			case <-time.After(wait):
			}
		} else if wait < -time.Second {
			h.logf("fault %s #%d runs %.1fs late", f.kind, f.n+1, -wait.Seconds())
		}
		if err := h.inject(ctx, f); err != nil {
			h.faultf("%s #%d FAILED: %v", f.kind, f.n+1, err)
			continue
		}
		done[f.kind]++
	}
	return done
}

// inject runs one fault to its end (the target is back up).
func (h *harness) inject(ctx context.Context, f fault) error {
	switch f.kind {
	case faultSigkillEngine:
		return h.killRestart(ctx, h.engines[f.n%2], restartAfter)
	case faultSigkillParticipants:
		return h.killRestart(ctx, h.parts, restartAfter)
	case faultRedisFlushall:
		h.faultf("%s: FLUSHALL on the engine's redis %s", f.kind, h.redisAddr[redisEngine])
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return h.engRdb.FlushAll(cctx).Err()
	case faultRedisRestart:
		return h.redisDown(ctx, f.kind, redisEngine, restartAfter)
	case faultOrdersOutage:
		return h.redisDown(ctx, f.kind, redisOrders, ordersOutageFor)
	case faultBrokerRestart:
		p := h.kfaked
		h.countInjected()
		if h.cfg.BrokerSigkill {
			h.faultf("%s: SIGKILL kfaked (pid %d); restart in %v with the same data dir and ports", f.kind, p.pid(), restartAfter)
			if err := p.kill(); err != nil {
				return err
			}
		} else {
			h.faultf("%s: SIGTERM kfaked (pid %d); restart in %v with the same data dir and ports", f.kind, p.pid(), restartAfter)
			if err := p.term(10 * time.Second); err != nil {
				return err
			}
		}
		sleep(ctx, restartAfter)
		if err := h.startKafka(ctx); err != nil {
			return err
		}
		h.faultf("%s: kfaked is back (pid %d)", f.kind, p.pid())
		return nil
	case faultSigstopEngine:
		p := h.engines[f.n%2]
		h.faultf("%s: SIGSTOP %s (pid %d) for %v (session timeout %v, transaction timeout 10s)", f.kind, p.name, p.pid(), sigstopFor, sessionTimeout)
		if err := p.signal(syscall.SIGSTOP); err != nil {
			return err
		}
		sleep(ctx, sigstopFor)
		if err := p.signal(syscall.SIGCONT); err != nil {
			return err
		}
		h.faultf("%s: SIGCONT %s (pid %d): it must find itself fenced", f.kind, p.name, p.pid())
		return nil
	case faultInjectEndTxn, faultInjectTxnOffset, faultInjectProduce:
		mode := "drop"
		if f.n%2 == 1 {
			mode = "error"
		}
		key := kfakeKeys[f.kind]
		h.faultf("%s: kfaked faults the next %d %s requests (mode %s)", f.kind, injectCount, key, mode)
		q := url.Values{"key": {key}, "count": {fmt.Sprint(injectCount)}, "mode": {mode}}
		resp, err := httpClient.Post("http://"+h.controlAddr+"/fault?"+q.Encode(), "text/plain", nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("kfaked /fault: %s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		return nil
	}
	return fmt.Errorf("unknown fault kind %q", f.kind)
}

// killRestart SIGKILLs p and starts it again after down.
func (h *harness) killRestart(ctx context.Context, p *proc, down time.Duration) error {
	h.faultf("sigkill-%s: SIGKILL %s (pid %d); restart in %v", kindTarget(p), p.name, p.pid(), down)
	if err := p.kill(); err != nil {
		return err
	}
	sleep(ctx, down)
	if err := p.restart(); err != nil {
		return err
	}
	h.faultf("sigkill-%s: restarted %s (pid %d)", kindTarget(p), p.name, p.pid())
	return nil
}

func kindTarget(p *proc) string {
	if strings.HasPrefix(p.name, "engine") {
		return "engine"
	}
	return p.name
}

// redisDown kills redis i and restarts it, empty, on the same port after
// down.
func (h *harness) redisDown(ctx context.Context, kind string, i int, down time.Duration) error {
	p := h.redis[i]
	h.faultf("%s: SIGKILL %s %s (pid %d); restart it empty in %v", kind, p.name, h.redisAddr[i], p.pid(), down)
	if err := p.kill(); err != nil {
		return err
	}
	sleep(ctx, down)
	if err := h.startRedis(ctx, i); err != nil {
		return err
	}
	h.faultf("%s: %s is back, empty (pid %d)", kind, p.name, p.pid())
	return nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// formatSchedule lists fs for the log.
func formatSchedule(fs []fault) string {
	var b strings.Builder
	for _, f := range fs {
		fmt.Fprintf(&b, "  +%6.1fs  %s #%d\n", f.at.Seconds(), f.kind, f.n+1)
	}
	return b.String()
}

// sortedKinds returns the kinds of m that have a count, in faultKinds order.
func sortedKinds(m map[string]int) []string {
	var ks []string
	for _, k := range faultKinds {
		if m[k] > 0 {
			ks = append(ks, k)
		}
	}
	for k := range m {
		if !slices.Contains(faultKinds, k) {
			ks = append(ks, k)
		}
	}
	return ks
}

// countInjected adds the faults kfaked has injected since it started to
// h.injected. Call it before kfaked is killed and at the end of the run.
func (h *harness) countInjected() {
	resp, err := httpClient.Get("http://" + h.controlAddr + "/faults")
	if err != nil {
		h.logf("kfaked /faults: %v", err)
		return
	}
	defer resp.Body.Close()
	var m map[string]int
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		h.logf("kfaked /faults: %v", err)
		return
	}
	h.outMu.Lock()
	defer h.outMu.Unlock()
	if h.injected == nil {
		h.injected = make(map[string]int)
	}
	for k, n := range m {
		h.injected[k] += n
	}
}
