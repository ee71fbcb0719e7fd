package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/chaos/check/localfirst"
	"github.com/ksaga/ksaga/internal/ctxtime"
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
	faultRedisRollback       = "redis-rollback"
	faultLocalStepHang       = "local-step-hang"
	faultSagaPanic           = "saga-panic"
	faultCrashLoop           = "crash-loop"
	faultUnreadableTakeover  = "redis-unreadable-takeover"
	faultRollbackCatchup     = "redis-rollback-catchup"
	faultRedisEvict          = "redis-evict"
	faultRedisHang           = "redis-hang"
	faultCouponPark          = "coupon-park"
	faultRollingDeploy       = "rolling-deploy"
)

// faultKinds lists every fault kind in the order of the summary.
var faultKinds = []string{
	faultSigkillEngine, faultSigkillParticipants, faultRedisFlushall, faultRedisRestart,
	faultBrokerRestart, faultSigstopEngine, faultInjectEndTxn, faultInjectTxnOffset,
	faultInjectProduce, faultOrdersOutage, faultRedisRollback, faultLocalStepHang, faultSagaPanic,
	faultCrashLoop, faultUnreadableTakeover, faultRollbackCatchup, faultRedisEvict, faultRedisHang, faultCouponPark,
	faultRollingDeploy,
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
	faultRedisRollback:       rollbackAfter,
	faultLocalStepHang:       hangKeyFor,
	faultSagaPanic:           0,
	faultCrashLoop:           crashLoopFor,
	faultUnreadableTakeover:  unreadableFor,
	faultRollbackCatchup:     catchupFor,
	faultRedisEvict:          evictFor,
	faultRedisHang:           redisHangFor + 5*time.Second,
	faultCouponPark:          couponParkFor,
	faultRollingDeploy:       rollingDeployFor,
}

const (
	// rollingDeployFor is about how long a rolling deploy of both engines
	// takes: each is stopped, restarted and waited for.
	rollingDeployFor = 20 * time.Second
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
	// rollbackAfter is how long after its snapshot the engine's Redis is
	// rolled back to it: the states, checkpoints, deadlines and attempt
	// counts the engines wrote meanwhile are lost at once.
	rollbackAfter = 5 * time.Second
	// hangKeyFor is how long the hang key lives: every complete-order
	// called meanwhile hangs for hangFor. An attempt is abandoned after
	// the step's 3s timeout and the next one comes about 2s later, so an
	// order that reaches complete-order in the first seconds of the window
	// hangs on all three attempts: it is dead-lettered and compensated
	// (Cancel), and the late writes of its abandoned attempts meet a
	// cancelled order. A key of a few seconds only hangs first attempts,
	// whose retries then succeed.
	hangKeyFor = 12 * time.Second
	// hangFor is how long a hung complete-order sleeps, ignoring its
	// context: past the step's 3s timeout and the engine's 10s
	// transaction timeout, so that its late write meets a saga that moved
	// on.
	hangFor = 15 * time.Second
	// panicCount is how many complete-order calls panic after a
	// saga-panic fault.
	panicCount = 3
	// crashLoopKills SIGKILLs of the participants, crashLoopEvery apart,
	// each restarted at once, make a crash-loop of crashLoopFor.
	crashLoopKills = 5
	crashLoopEvery = time.Second
	crashLoopFor   = crashLoopKills * crashLoopEvery
	// unreadableFor is how long the engine's Redis refuses reads in a
	// redis-unreadable-takeover: the engine left running fails to restore
	// the partitions it took over until then.
	unreadableFor = 5 * time.Second
)

// Keys that sagad --chaos-faults reads on the orders store's Redis before
// each complete-order.
const (
	// chaosHangKey holds the milliseconds a complete-order sleeps,
	// ignoring its context.
	chaosHangKey = "ksaga:chaos:fault:hang"
	// chaosPanicKey is a counter: each complete-order DECRs it and panics
	// while the result is >= 0.
	chaosPanicKey = "ksaga:chaos:fault:panic"
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
	faultOrdersOutage: 1, faultRedisRollback: 1, faultLocalStepHang: 1, faultSagaPanic: 1, faultCrashLoop: 1,
	faultUnreadableTakeover: 1, faultRollbackCatchup: 1, faultRedisEvict: 1, faultRedisHang: 1, faultCouponPark: 1,
	faultRollingDeploy: 3,
}

// couponParkShare is the share of --faults-per-kind that the long run
// injects of coupon-park (at least one): each keeps the coupon participant
// silent for couponParkFor, about a minute and a half, during which no other
// fault runs.
const couponParkShare = 5

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
	m[faultCouponPark] = min(c.FaultsPerKind, max(1, c.FaultsPerKind/couponParkShare))
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
	case faultRedisRollback:
		return h.redisRollback(ctx, f.kind)
	case faultLocalStepHang:
		h.faultf("%s: SET %s and %s %d PX %d on the orders store's redis %s: every complete-order, and every hold-funds (the local-first saga's Local first step), in the next %v sleeps %v ignoring its context (step timeout 3s, transaction timeout 10s)",
			f.kind, chaosHangKey, localfirst.HangKey, hangFor.Milliseconds(), hangKeyFor.Milliseconds(), h.redisAddr[redisOrders], hangKeyFor, hangFor)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		for _, key := range []string{chaosHangKey, localfirst.HangKey} {
			if err := h.ordRdb.Do(cctx, "SET", key, hangFor.Milliseconds(), "PX", hangKeyFor.Milliseconds()).Err(); err != nil {
				return err
			}
		}
		ctxtime.Sleep(ctx, hangKeyFor)
		return nil
	case faultSagaPanic:
		h.faultf("%s: SET %s and %s %d on the orders store's redis %s: the next %d complete-order calls, and the next %d hold-funds calls, panic",
			f.kind, chaosPanicKey, localfirst.PanicKey, panicCount, h.redisAddr[redisOrders], panicCount, panicCount)
		return h.armPanics(ctx)
	case faultCrashLoop:
		return h.crashLoop(ctx, f.kind, h.parts)
	case faultUnreadableTakeover:
		return h.unreadableTakeover(ctx, f)
	case faultRollbackCatchup:
		return h.rollbackCatchup(ctx, f.kind, rand.New(rand.NewPCG(uint64(h.cfg.Seed), uint64(f.n))))
	case faultRedisEvict:
		return h.redisEvict(ctx, f.kind, rand.New(rand.NewPCG(uint64(h.cfg.Seed), uint64(f.n))))
	case faultRedisHang:
		return h.redisHang(ctx, f.kind)
	case faultCouponPark:
		return h.couponPark(ctx, f.kind)
	case faultRollingDeploy:
		return h.rollingDeploy(ctx, f.kind)
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
		ctxtime.Sleep(ctx, restartAfter)
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
		ctxtime.Sleep(ctx, sigstopFor)
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
	ctxtime.Sleep(ctx, down)
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

// redisDown kills redis i and restarts it on the same port after down.
// The engine's Redis comes back empty (its snapshot from a redis-rollback
// is removed first); the orders store comes back with everything it
// acknowledged (append-only file, fsync always), as an order database
// does.
func (h *harness) redisDown(ctx context.Context, kind string, i int, down time.Duration) error {
	p := h.redis[i]
	what := "empty"
	if i == redisOrders {
		what = "with its data (AOF)"
	}
	h.faultf("%s: SIGKILL %s %s (pid %d); restart it %s in %v", kind, p.name, h.redisAddr[i], p.pid(), what, down)
	if err := p.kill(); err != nil {
		return err
	}
	if i == redisEngine {
		if err := os.Remove(filepath.Join(h.redisDir(i), "dump.rdb")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	ctxtime.Sleep(ctx, down)
	if err := h.startRedis(ctx, i); err != nil {
		return err
	}
	h.faultf("%s: %s is back, %s (pid %d)", kind, p.name, what, p.pid())
	return nil
}

// unreadableTakeover makes the engine's Redis refuse reads (ACL SETUSER
// default -@read: an ACL change, or a failover under way, as a client sees
// it) and stops one engine with SIGTERM, so that the other takes its
// partitions over at once and cannot restore them: the poll that brings the
// assignment may bring their records too, and those must be consumed again
// rather than skipped. After unreadableFor, Redis is readable again and the
// stopped engine starts.
func (h *harness) unreadableTakeover(ctx context.Context, f fault) error {
	p := h.engines[f.n%2]
	h.faultf("%s: ACL SETUSER default -@read on the engine's redis %s; SIGTERM %s (pid %d), the other engine takes its partitions over; readable again and %s restarted in %v",
		f.kind, h.redisAddr[redisEngine], p.name, p.pid(), p.name, unreadableFor)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := h.engRdb.Do(cctx, "ACL", "SETUSER", "default", "-@read").Err(); err != nil {
		return err
	}
	termErr := p.term(30 * time.Second)
	ctxtime.Sleep(ctx, unreadableFor)
	// Readable again even when the run is ending: the checks read it.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer rcancel()
	if err := h.engRdb.Do(rctx, "ACL", "SETUSER", "default", "+@all").Err(); err != nil {
		return err
	}
	if termErr != nil {
		return termErr
	}
	if err := p.restart(); err != nil {
		return err
	}
	h.faultf("%s: the engine's redis is readable again; restarted %s (pid %d)", f.kind, p.name, p.pid())
	return nil
}

// redisRollback takes a snapshot of the engine's Redis (SAVE), lets the
// engines write for rollbackAfter, then restores the snapshot in place
// (DEBUG RELOAD NOSAVE loads dump.rdb without saving first): Redis goes
// back in time by rollbackAfter, as after a failover to a lagging replica
// or a restart from an older snapshot. Every key of a partition goes back
// together: states, checkpoint, deadlines, attempt counts.
func (h *harness) redisRollback(ctx context.Context, kind string) error {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	before, err := h.engRdb.DBSize(cctx).Result()
	if err != nil {
		return err
	}
	if err := h.engRdb.Save(cctx).Err(); err != nil {
		return fmt.Errorf("SAVE: %w", err)
	}
	h.faultf("%s: SAVE on the engine's redis %s (%d keys); roll it back to this snapshot in %v", kind, h.redisAddr[redisEngine], before, rollbackAfter)
	ctxtime.Sleep(ctx, rollbackAfter)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	cctx, cancel = context.WithTimeout(ctx, time.Minute)
	defer cancel()
	grown, err := h.engRdb.DBSize(cctx).Result()
	if err != nil {
		return err
	}
	if err := h.engRdb.Do(cctx, "DEBUG", "RELOAD", "NOSAVE").Err(); err != nil {
		return fmt.Errorf("DEBUG RELOAD NOSAVE: %w", err)
	}
	after, err := h.engRdb.DBSize(cctx).Result()
	if err != nil {
		return err
	}
	h.faultf("%s: DEBUG RELOAD NOSAVE on the engine's redis: %d keys -> %d keys, back %v in time", kind, grown, after, rollbackAfter)
	return nil
}

// panicCounters are the panic counters on the orders store's Redis: the
// order saga's complete-order (sagad) and the local-first saga's hold-funds
// (localsaga).
var panicCounters = []string{chaosPanicKey, localfirst.PanicKey}

// armPanics sets the panic counters and counts the panics that the
// counters they replace have caused.
func (h *harness) armPanics(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, key := range panicCounters {
		prev, err := h.ordRdb.SetArgs(cctx, key, panicCount, redis.SetArgs{Get: true}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		h.countPanics(key, prev, err == nil)
	}
	return nil
}

// countPanics adds the panics caused by counter key, now at v (if it
// exists), to h.panics or h.localPanics: each call DECRs it and panics
// while the result is >= 0, so a counter armed at panicCount and now at v
// caused panicCount - max(v, 0) of them.
func (h *harness) countPanics(key, v string, exists bool) {
	h.outMu.Lock()
	defer h.outMu.Unlock()
	if !exists {
		return
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return
	}
	if key == localfirst.PanicKey {
		h.localPanics += panicCount - max(n, 0)
	} else {
		h.panics += panicCount - max(n, 0)
	}
}

// finalPanics counts the panics of the last saga-panic fault and returns
// the totals of complete-order and hold-funds.
func (h *harness) finalPanics(ctx context.Context) (orders, local int) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, key := range panicCounters {
		v, err := h.ordRdb.GetDel(cctx, key).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			h.logf("read %s: %v", key, err)
		}
		h.countPanics(key, v, err == nil)
	}
	h.outMu.Lock()
	defer h.outMu.Unlock()
	return h.panics, h.localPanics
}

// crashLoop SIGKILLs p crashLoopKills times, crashLoopEvery apart, and
// restarts it at once after each kill: it barely gets to join its group
// before it dies again.
func (h *harness) crashLoop(ctx context.Context, kind string, p *proc) error {
	h.faultf("%s: %d SIGKILLs of %s within %v, each restarted at once", kind, crashLoopKills, p.name, crashLoopFor)
	start := time.Now()
	for i := range crashLoopKills {
		ctxtime.Sleep(ctx, time.Until(start.Add(time.Duration(i)*crashLoopEvery)))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		pid := p.pid()
		if err := p.kill(); err != nil {
			return err
		}
		if err := p.restart(); err != nil {
			return err
		}
		h.faultf("%s: SIGKILL %d/%d of %s (pid %d); restarted (pid %d)", kind, i+1, crashLoopKills, p.name, pid, p.pid())
	}
	ctxtime.Sleep(ctx, time.Until(start.Add(crashLoopFor)))
	return nil
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
