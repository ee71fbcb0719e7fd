package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/ctxtime"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
)

// The faults of the engine's Redis that aim at the rare paths: a rollback
// while a batch is being read, keys lost one by one, a Redis that hangs.
const (
	// catchupRollbacks rollbacks of catchupAge each make one
	// redis-rollback-catchup fault. An engine meets a rollback at its next
	// read of a partition; the fault is after the reads that meet it while
	// a batch is being read, after the batch's first preload (the
	// catch-up's preload), a window of a few milliseconds per batch, so it
	// fires many times while the load keeps the engines' batches coming.
	catchupRollbacks = 10
	catchupAge       = 1200 * time.Millisecond
	// catchupSettle is the wait after the last rollback for the engines to
	// meet it before the fault counts what landed.
	catchupSettle = 2 * time.Second
	catchupFor    = catchupRollbacks*(catchupAge+300*time.Millisecond) + catchupSettle
	// catchupMustLand is the least number of redis-rollback-catchup
	// faults of a run of which at least one must land in the window (a
	// short run's one or two may miss it by chance).
	catchupMustLand = 5

	// evictDeletes is how many state keys of running sagas, and as many
	// of ended ones, a redis-evict DELs.
	evictDeletes = 10
	// evictMemoryShare is the maxmemory a redis-evict sets, as a share of
	// the memory Redis uses, for evictFor.
	evictMemoryShare = 0.6
	evictFor         = 6 * time.Second

	// redisHangFor is how long a redis-hang keeps the engine's Redis
	// stopped: past the engines' transaction timeout, so that a
	// transaction open when Redis stopped, waiting on it, expires.
	redisHangFor = engineTxnTimeout + 6*time.Second
	// resumeWithin is how soon after a redis-hang ends a saga must end
	// again.
	resumeWithin = 30 * time.Second
)

// Lines of the engines' logs (JSON, "msg" field) that the faults count.
const (
	// logBatchReread is logged each time a partition is rebuilt while a
	// batch is being read, after its first preload (in the catch-up): the
	// batch is consumed again.
	logBatchReread = `"msg":"a partition was rebuilt while a batch was read; consuming the batch again"`
	// logCatchupReread is what older engines logged for the same event,
	// only when the rebuild also took in a Redis write: counted too, so
	// that the fault can run against them.
	logCatchupReread = `"msg":"a partition rebuilt by the catch-up's preload took in a Redis write; consuming the batch again"`
	// logRebuild is logged when an engine finds that Redis lost data or
	// went back in time, and logRestored when a partition is restored
	// (a rebuild or an assignment).
	logRebuild  = `"msg":"redis lost data or went back in time; rebuilding its view from the state topic"`
	logRestored = `"msg":"partition restored"`
)

// rollbackCatchup rolls the engine's Redis back catchupRollbacks times, each
// time to a snapshot catchupAge old (SAVE, then DEBUG RELOAD NOSAVE as
// redis-rollback does), and counts from the engines' logs the rebuilds that
// landed while a batch was being read. A partition is rebuilt when an
// engine next reads it, which happens while a batch is read only when
// batches keep coming: each rollback lands in the middle of a surge of
// surgeSize orders (plan.surges), sent over surgeOver, on top of the load.
func (h *harness) rollbackCatchup(ctx context.Context, kind string, rng *rand.Rand) error {
	mark := h.engineLogMark()
	h.faultf("%s: %d rollbacks of the engine's redis %s, each to a snapshot %v old, each in the middle of a surge of %d orders: the engines meet a rollback on their next read of a partition, some while a batch is read",
		kind, catchupRollbacks, h.redisAddr[redisEngine], catchupAge, surgeSize)
	done, surged := 0, 0
	for i := range catchupRollbacks {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		n, err := h.engRdb.DBSize(cctx).Result()
		if err == nil && n == 0 {
			err = errors.New("the engine's redis is empty: no older non-empty snapshot to go back to")
		}
		if err == nil {
			err = h.engRdb.Save(cctx).Err()
		}
		cancel()
		if err != nil {
			return fmt.Errorf("rollback %d: SAVE: %w", i+1, err)
		}
		// The surge starts before the rollback and lasts past it.
		lead := surgeOver/4 + time.Duration(rng.Int64N(int64(surgeOver/2)))
		lead = min(lead, catchupAge)
		ctxtime.Sleep(ctx, catchupAge-lead)
		wait, sent := h.surge(ctx)
		surged += sent
		ctxtime.Sleep(ctx, lead)
		if ctx.Err() != nil {
			return errors.Join(ctx.Err(), wait())
		}
		cctx, cancel = context.WithTimeout(ctx, time.Minute)
		grown, _ := h.engRdb.DBSize(cctx).Result()
		err = h.engRdb.Do(cctx, "DEBUG", "RELOAD", "NOSAVE").Err()
		after, _ := h.engRdb.DBSize(cctx).Result()
		cancel()
		if werr := wait(); werr != nil {
			return fmt.Errorf("rollback %d: surge: %w", i+1, werr)
		}
		if err != nil {
			return fmt.Errorf("rollback %d: DEBUG RELOAD NOSAVE: %w", i+1, err)
		}
		done++
		h.logf("%s: rollback %d/%d, %v into a surge of %d orders: %d keys -> %d keys (snapshot of %d keys)", kind, i+1, catchupRollbacks, lead, sent, grown, after, n)
	}
	ctxtime.Sleep(ctx, catchupSettle)
	c := h.countSince(mark, logBatchReread, logCatchupReread, logRebuild, logRestored)
	landed := c[logBatchReread] + c[logCatchupReread]
	h.tally(kind, statRollbacks, done)
	h.tally(kind, statLanded, landed)
	h.tally(kind, statRebuilds, c[logRebuild])
	h.faultf("%s: %d rollbacks during surges of %d orders in all; the engines rebuilt a partition %d times, %d of them while a batch was read (landed in window), and restored %d partitions",
		kind, done, surged, c[logRebuild], landed, c[logRestored])
	return nil
}

// surge sends the plan's next surge over surgeOver, in the background, and
// returns a func that waits until it is acknowledged, and its size. With no
// surge left it sends nothing.
func (h *harness) surge(ctx context.Context) (wait func() error, n int) {
	p := h.plan
	if p.surged >= len(p.surges) {
		return func() error { return nil }, 0
	}
	recs := p.surges[p.surged]
	p.surged++
	return h.sendOver(ctx, recs, surgeOver), len(recs)
}

// sendOver sends recs through murmur2, spread evenly over over, in the
// background, and returns a func that waits until they are acknowledged.
func (h *harness) sendOver(ctx context.Context, recs []*kgo.Record, over time.Duration) (wait func() error) {
	s := newSender(h.producers)
	done := make(chan struct{})
	go func() {
		defer close(done)
		start := time.Now()
		for i, r := range recs {
			ctxtime.Sleep(ctx, time.Until(start.Add(over*time.Duration(i)/time.Duration(len(recs)))))
			if ctx.Err() != nil {
				return
			}
			s.send(ctx, r, viaMurmur2)
		}
	}()
	return func() error { <-done; return s.wait() }
}

// sendSurges sends the surges that no fault sent (a fault that failed
// early), so that every saga of the plan starts.
func (h *harness) sendSurges(ctx context.Context) error {
	n := 0
	for h.plan.surged < len(h.plan.surges) {
		wait, k := h.surge(ctx)
		if err := wait(); err != nil {
			return err
		}
		n += k
	}
	if n > 0 {
		h.logf("sent %d orders of surges that no redis-rollback-catchup fault sent", n)
	}
	n = 0
	for h.plan.parkSurged < len(h.plan.parkSurges) {
		recs := h.plan.parkSurges[h.plan.parkSurged]
		h.plan.parkSurged++
		if err := h.sendOver(ctx, recs, parkSurgeOver)(); err != nil {
			return err
		}
		n += len(recs)
	}
	if n > 0 {
		h.logf("sent %d coupon orders of surges that no coupon-park fault sent", n)
	}
	return ctx.Err()
}

// redisEvict loses keys of the engine's Redis the ways Redis loses them:
// it DELs the state keys of evictDeletes running and evictDeletes ended
// sagas, then, for evictFor, sets maxmemory to evictMemoryShare of the
// memory in use with maxmemory-policy allkeys-lru, so that Redis evicts
// keys as the engines write (states, checkpoints, deadlines, attempt
// counts alike), and restores both settings. The DELs come in the middle
// of a surge of orders (plan.surges): at the load's rate a saga runs for
// milliseconds, and few would be running otherwise.
func (h *harness) redisEvict(ctx context.Context, kind string, rng *rand.Rand) error {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	wait, surged := h.surge(ctx)
	ctxtime.Sleep(ctx, surgeOver/2)
	running, ended, err := h.sampleStates(cctx, rng)
	if err != nil {
		return errors.Join(err, wait())
	}
	keys := append(append([]string(nil), running...), ended...)
	var deleted int64
	if len(keys) > 0 {
		if deleted, err = h.engRdb.Del(cctx, keys...).Result(); err != nil {
			return errors.Join(fmt.Errorf("DEL: %w", err), wait())
		}
	}
	h.faultf("%s: DEL the state keys of %d running and %d ended sagas on the engine's redis %s (%d deleted), in a surge of %d orders: %s",
		kind, len(running), len(ended), h.redisAddr[redisEngine], deleted, surged, strings.Join(idsOfKeys(keys), " "))
	if err := wait(); err != nil {
		return fmt.Errorf("surge: %w", err)
	}
	h.tally(kind, statDeleted, int(deleted))

	used, err := infoInt(cctx, h.engRdb, "memory", "used_memory")
	if err != nil {
		return err
	}
	evicted0, err := infoInt(cctx, h.engRdb, "stats", "evicted_keys")
	if err != nil {
		return err
	}
	prev, err := h.engRdb.ConfigGet(cctx, "maxmemory*").Result()
	if err != nil {
		return fmt.Errorf("CONFIG GET: %w", err)
	}
	limit := int64(float64(used) * evictMemoryShare)
	h.faultf("%s: CONFIG SET maxmemory %d (%.0f%% of the %d bytes in use) maxmemory-policy allkeys-lru for %v (were %s and %s)",
		kind, limit, evictMemoryShare*100, used, evictFor, prev["maxmemory"], prev["maxmemory-policy"])
	// Restored even when the run is ending: the checks read this Redis.
	restore := func() error {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer rcancel()
		return h.engRdb.ConfigSet(rctx, "maxmemory", prev["maxmemory"]).Err()
	}
	if err := h.engRdb.ConfigSet(cctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		return fmt.Errorf("CONFIG SET maxmemory-policy: %w", err)
	}
	if err := h.engRdb.ConfigSet(cctx, "maxmemory", strconv.FormatInt(limit, 10)).Err(); err != nil {
		return errors.Join(fmt.Errorf("CONFIG SET maxmemory: %w", err), restore())
	}
	ctxtime.Sleep(ctx, evictFor)
	if err := restore(); err != nil {
		return fmt.Errorf("restore maxmemory: %w", err)
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer rcancel()
	if err := h.engRdb.ConfigSet(rctx, "maxmemory-policy", prev["maxmemory-policy"]).Err(); err != nil {
		return fmt.Errorf("restore maxmemory-policy: %w", err)
	}
	evicted1, err := infoInt(rctx, h.engRdb, "stats", "evicted_keys")
	if err != nil {
		return err
	}
	h.tally(kind, statEvicted, int(evicted1-evicted0))
	h.faultf("%s: maxmemory and its policy restored; Redis evicted %d keys meanwhile", kind, evicted1-evicted0)
	return nil
}

// sampleStates picks at random the state keys of up to evictDeletes
// running and evictDeletes ended sagas from the engine's Redis, by the
// status in their state field.
func (h *harness) sampleStates(ctx context.Context, rng *rand.Rand) (running, ended []string, err error) {
	var keys []string
	for _, t := range h.sagaTypes() {
		it := h.engRdb.Scan(ctx, 0, orchestrator.StateKeyPattern(t), 1000).Iterator()
		for it.Next(ctx) {
			keys = append(keys, it.Val())
		}
		if err := it.Err(); err != nil {
			return nil, nil, fmt.Errorf("SCAN: %w", err)
		}
	}
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	for i := 0; i < len(keys) && (len(running) < evictDeletes || len(ended) < evictDeletes); i += 100 {
		batch := keys[i:min(i+100, len(keys))]
		vals := make([]*redis.StringCmd, len(batch))
		_, err := h.engRdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j, k := range batch {
				vals[j] = p.HGet(ctx, k, "state")
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, nil, fmt.Errorf("HGET state: %w", err)
		}
		for j, v := range vals {
			var st struct {
				Status string `json:"status"`
			}
			if json.Unmarshal([]byte(v.Val()), &st) != nil {
				continue
			}
			switch st.Status {
			case message.StatusRunning, message.StatusCompensating:
				if len(running) < evictDeletes {
					running = append(running, batch[j])
				}
			default:
				if len(ended) < evictDeletes {
					ended = append(ended, batch[j])
				}
			}
		}
	}
	return running, ended, nil
}

// idsOfKeys returns the saga ids of state keys.
func idsOfKeys(keys []string) []string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		_, ids[i], _ = strings.Cut(k, "}:state:")
	}
	return ids
}

// infoInt reads an integer field of a section of INFO.
func infoInt(ctx context.Context, rdb *redis.Client, section, field string) (int64, error) {
	s, err := rdb.Info(ctx, section).Result()
	if err != nil {
		return 0, fmt.Errorf("INFO %s: %w", section, err)
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("INFO %s has no %s", section, field)
}

// redisHang SIGSTOPs the engine's Redis for redisHangFor, past the
// engines' transaction timeout, then SIGCONTs it, and holds the run to
// two things: no engine exits meanwhile (a dependency that hangs is waited
// for, not a reason to die), and sagas end again within resumeWithin of
// the SIGCONT. Either failing is an anomaly of the run.
func (h *harness) redisHang(ctx context.Context, kind string) error {
	p := h.redis[redisEngine]
	stop := time.Now()
	h.faultf("%s: SIGSTOP %s %s (pid %d) for %v (the engines' transaction timeout is %v)", kind, p.name, h.redisAddr[redisEngine], p.pid(), redisHangFor, engineTxnTimeout)
	if err := p.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	ctxtime.Sleep(ctx, redisHangFor)
	if err := p.signal(syscall.SIGCONT); err != nil {
		return err
	}
	cont := time.Now()
	ended0, pending := h.sagasEnded()
	h.faultf("%s: SIGCONT %s (pid %d); %d sagas ended so far, %d not yet: one must end (its terminal event's time after the SIGCONT) within %v",
		kind, p.name, p.pid(), ended0, pending, resumeWithin)
	resumed := time.Duration(-1)
	for time.Since(cont) < resumeWithin && ctx.Err() == nil {
		if at := h.track.lastEnded(); at.After(cont) {
			resumed = at.Sub(cont)
			break
		}
		ctxtime.Sleep(ctx, 100*time.Millisecond)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for _, e := range h.exitsBetween(h.engineProcs(), stop, time.Now()) {
		h.anomalyf("%s: %s exited while the engine's redis hung (%.1fs after the SIGSTOP): %s", kind, e.name, e.at.Sub(stop).Seconds(), e.status)
	}
	switch {
	case resumed >= 0:
		h.tally(kind, statResumedMs, int(resumed.Milliseconds()))
		h.faultf("%s: a saga ended %.1fs after the SIGCONT", kind, resumed.Seconds())
	case pending == 0:
		h.faultf("%s: every saga sent had ended by the SIGCONT: nothing to resume", kind)
	default:
		h.tally(kind, statNotResumed, 1)
		h.anomalyf("%s: no saga ended within %v of the SIGCONT of the engine's redis (%d sagas sent had not ended)", kind, resumeWithin, pending)
	}
	return nil
}
