package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/chaos/check/localfirst"
	"github.com/ksaga/ksaga/internal/ctxtime"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// Times around the load.
const (
	// faultLead is the load's time before the first fault.
	faultLead = 5 * time.Second
	// redisSettle lets the engines write their last states to Redis
	// after the drain, before the checker reads it.
	redisSettle = 3 * time.Second
	// checkIdle is the checker's idle time: the topics must be quiet this
	// long before it reads them to the end.
	checkIdle = 2 * time.Second
	// markerTimeout is the least time to wait for the poison records
	// sent after the drain to reach the DLQ.
	markerTimeout = 60 * time.Second
	// deadlineMargin is added to the longest step deadline in the wait
	// after the drain (see harness.chaos).
	deadlineMargin = 5 * time.Second
)

// maxDeadline is the longest step deadline of the order saga and the
// local-first saga: a timer set by the time every saga ended fires at the
// latest this long after.
func maxDeadline() time.Duration {
	var d time.Duration
	steps := slices.Concat(order.New(sim.NewOrderStore(nil)).Steps(), localfirst.New(localfirst.NewStore(nil, false, nil)).Steps())
	for _, s := range steps {
		d = max(d, s.Deadline)
	}
	return d
}

// result is what a run found, for the summary.
type result struct {
	plan          *plan
	rate          float64
	faults        map[string]int
	drained       bool
	missing       []string // sagas with no terminal event
	missingMarker []string // poison records not dead-lettered
	outage        int      // complete sagas turned outage
	dupReplies    int
	report        string
	checkOK       bool
	checkRan      bool
	anomalies     int
	firstAnomaly  []string
	crashLines    []string
	elapsed       time.Duration
	// panics and hangs count the complete-order calls that panicked and
	// hung on purpose; localPanics and localHangs the hold-funds calls of
	// the local-first saga.
	panics, hangs           int
	localPanics, localHangs int
	// tombstones, expired and deletedAfter are the checker's count of the
	// state topics' tombstones, of the sagas they deleted, and the least
	// and most time from a saga's end to its tombstone.
	tombstones, expired int
	deletedAfter        [2]time.Duration
	// view is the size of the engine's Redis view after the check; viewErr
	// says why it could not be read.
	view    viewSize
	viewErr error
}

// run runs one chaos run and writes its log and summary to stdout. It
// returns an error when the run could not be carried out, a saga did not
// end, the checker found an anomaly or a process crashed. Cancelling ctx
// stops the run; every process it started is stopped before run returns.
func run(ctx context.Context, cfg config, stdout io.Writer) (err error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	h := &harness{cfg: cfg, start: time.Now(), out: stdout}
	tempWork := cfg.WorkDir == ""
	if tempWork {
		if h.work, err = os.MkdirTemp("", "sagachaos-"); err != nil {
			return err
		}
	} else {
		h.work = cfg.WorkDir
		if err := os.MkdirAll(h.work, 0o755); err != nil {
			return err
		}
		if entries, _ := os.ReadDir(h.work); len(entries) > 0 {
			return fmt.Errorf("--work-dir %s is not empty: the broker's data and the logs of an earlier run would mix with this one", h.work)
		}
	}
	h.logf("sagachaos: work dir %s (logs, faults.log, expectations.jsonl, report.txt)", h.work)
	defer func() {
		if err == nil && tempWork && !cfg.Keep {
			os.RemoveAll(h.work)
			return
		}
		h.logf("work dir kept: %s", h.work)
	}()
	if h.faultLog, err = os.Create(filepath.Join(h.work, "faults.log")); err != nil {
		return err
	}
	defer h.faultLog.Close()

	h.bin = cfg.BinDir
	if h.bin == "" {
		h.bin = filepath.Join(h.work, "bin")
		if err := h.build(ctx, h.bin); err != nil {
			return err
		}
	}
	defer h.tearDown()
	if err := h.setUp(ctx); err != nil {
		return err
	}
	if h.track, err = newTracker([]string{h.kafkaAddr}); err != nil {
		return err
	}
	// One producer per partitioner, each with franz-go's default batch
	// size (under the broker's 1 MB limit), as a client of another team
	// would have.
	h.producers = make(map[string]*kgo.Client)
	for _, via := range partitionerNames {
		cl, err := kgo.NewClient(kgo.SeedBrokers(h.kafkaAddr), kgo.RecordPartitioner(newPartitioner(via)), kgo.ProducerLinger(5*time.Millisecond))
		if err != nil {
			return err
		}
		h.producers[via] = cl
	}

	res, err := h.chaos(ctx)
	if res != nil {
		res.crashLines = h.scanLogs()
		res.hangs, res.localHangs = h.countHangs()
		res.elapsed = time.Since(h.start)
		h.summary(res)
	}
	if err != nil {
		return err
	}
	var problems []string
	if !res.drained {
		problems = append(problems, fmt.Sprintf("%d sagas did not end within --drain-timeout %v and %d poison records were not dead-lettered", len(res.missing), cfg.DrainTimeout, len(res.missingMarker)))
	}
	if res.checkRan && !res.checkOK {
		// The first anomalies go in the error: it is the last thing a
		// CI log shows, and the report may be cut from the middle.
		problems = append(problems, fmt.Sprintf("the checker found %d anomalies (report.txt in the work dir has them all); the first: %s",
			res.anomalies, strings.Join(res.firstAnomaly, "; ")))
	}
	if len(res.crashLines) > 0 || h.crashes() > 0 {
		problems = append(problems, fmt.Sprintf("%d process crashes", max(len(res.crashLines), h.crashes())))
	}
	// A fault that did nothing tested nothing.
	if res.faults[faultSagaPanic] > 0 && res.panics == 0 {
		problems = append(problems, fmt.Sprintf("%d saga-panic faults made no complete-order panic: the engines do not read %s (sagad --chaos-faults)", res.faults[faultSagaPanic], chaosPanicKey))
	}
	if res.faults[faultLocalStepHang] > 0 && res.hangs == 0 {
		problems = append(problems, fmt.Sprintf("%d local-step-hang faults made no complete-order hang: no engine logged %q (sagad --chaos-faults reads %s)", res.faults[faultLocalStepHang], hangLogLine, chaosHangKey))
	}
	if res.faults[faultSagaPanic] > 0 && res.localPanics == 0 {
		problems = append(problems, fmt.Sprintf("%d saga-panic faults made no hold-funds panic: the local-first saga's daemons do not read %s (localsaga --chaos-faults)", res.faults[faultSagaPanic], localfirst.PanicKey))
	}
	if res.faults[faultLocalStepHang] > 0 && res.localHangs == 0 {
		problems = append(problems, fmt.Sprintf("%d local-step-hang faults made no hold-funds hang: no local-first daemon logged %q (localsaga --chaos-faults reads %s)", res.faults[faultLocalStepHang], localfirst.HangLog, localfirst.HangKey))
	}
	if as := h.anomalies(); len(as) > 0 {
		problems = append(problems, fmt.Sprintf("%d anomalies found while the run ran (faults.log has them): the first: %s", len(as), strings.Join(as[:min(5, len(as))], "; ")))
	}
	if n := res.faults[faultRollbackCatchup]; n >= catchupMustLand && h.stat(faultRollbackCatchup, statLanded) == 0 {
		problems = append(problems, fmt.Sprintf("%d redis-rollback-catchup faults, but no rollback landed while a batch was read: no engine logged %s or %s", n, logBatchReread, logCatchupReread))
	}
	if n := h.cfg.counts()[faultCouponPark]; n > 0 && h.stat(faultCouponPark, statParked) == 0 {
		problems = append(problems, fmt.Sprintf("%d coupon-park faults scheduled (%d injected), but no saga parked: the coupon participant was not silent past reserve-coupon's attempts, or the engine did not park", n, res.faults[faultCouponPark]))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// crashes counts the exits of the processes that were crashes.
func (h *harness) crashes() int {
	n := 0
	for _, p := range h.procs {
		_, _, c := p.summary()
		n += c
	}
	return n
}

// chaos runs the load and the faults, drains, and runs the checker.
func (h *harness) chaos(ctx context.Context) (*result, error) {
	cfg := h.cfg
	rng := rand.New(rand.NewPCG(uint64(cfg.Seed), 0x5eed))
	p := newPlan(cfg.Sagas, rng, recentIDs(cfg))
	h.plan = p
	res := &result{plan: p}
	if err := sim.SeedCoupons(ctx, h.simRdb, p.coupons); err != nil {
		return res, err
	}
	h.logf("seeded coupons: %v (and %s unknown)", p.coupons, couponUnknown)

	faults, need := schedule(cfg.counts(), cfg.FaultSpacing, rng)
	p.addSurges(cfg.counts()[faultRollbackCatchup]*catchupRollbacks+cfg.counts()[faultRedisEvict], rng)
	p.addParkSurges(cfg.counts()[faultCouponPark], rng)
	rate := cfg.Rate
	load := time.Duration(float64(len(p.recs)) / rate * float64(time.Second))
	if want := faultLead + need; len(faults) > 0 && load < want {
		rate = float64(len(p.recs)) / want.Seconds()
		h.logf("lowering the rate from %.0f/s to %.1f/s so that the %d faults (%.0fs of schedule) fall during the load", cfg.Rate, rate, len(faults), need.Seconds())
		load = want
	}
	res.rate = rate
	stretch(faults, need, load, faultLead)
	h.logf("load: %d orders, %d poison records, %d duplicate starts: %d records at %.1f/s (%.0fs); seed %d",
		len(p.sagas), p.kinds[kindPoison], p.dupSends, len(p.recs), rate, load.Seconds(), cfg.Seed)
	h.logf("fault schedule (from the start of the load):\n%s", formatSchedule(faults))
	h.faultf("schedule: %d faults over %.0fs of load", len(faults), load.Seconds())

	loadCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	faultsDone := make(chan map[string]int, 1)
	go func() { faultsDone <- h.runFaults(loadCtx, faults, start) }()
	loadErr := h.sendLoad(loadCtx, p, rate)
	if loadErr != nil {
		cancel()
	}
	res.faults = <-faultsDone
	h.countInjected()
	if loadErr == nil {
		loadErr = h.sendSurges(ctx)
	}
	if loadErr != nil {
		return res, fmt.Errorf("load: %w", loadErr)
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	h.logf("load and faults done; draining (at most %v)", cfg.DrainTimeout)

	deadline := time.Now().Add(cfg.DrainTimeout)
	res.drained = h.drain(ctx, p, deadline, res)
	// settle is when a step deadline set before every saga ended has
	// passed: an engine that still kept a saga it no longer owns (a stale
	// owner) would have fired its timer by then, and its events (a
	// second terminal event) would be in the topics the checker reads.
	settle := time.Now().Add(maxDeadline() + deadlineMargin)
	if res.drained {
		post := h.postLoad(ctx, p, rng, res)
		res.drained = h.drainMarkers(ctx, p, post, max(time.Until(deadline), markerTimeout), res)
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	res.panics, res.localPanics = h.finalPanics(ctx)
	res.outage = h.markOutages(p)
	h.logPoisonOnSagas(p)
	if err := h.writeExpectations(p); err != nil {
		return res, err
	}
	if !res.drained {
		h.logf("the drain did not complete; running the checker anyway")
		ctxtime.Sleep(ctx, redisSettle)
	} else {
		wait := max(time.Until(settle), redisSettle)
		h.logf("waiting %.0fs, past the longest step deadline (%v) after the last saga ended, so that a stale owner's timer would fire before the check", wait.Seconds(), maxDeadline())
		ctxtime.Sleep(ctx, wait)
	}
	h.logf("running chaos/check on %d expectations", len(p.exps))
	t := time.Now()
	rep, err := h.check(ctx, p)
	if err != nil {
		return res, fmt.Errorf("chaos/check: %w", err)
	}
	res.checkRan, res.checkOK, res.report, res.anomalies, res.firstAnomaly = true, rep.ok, rep.text, rep.anomalies, rep.first
	res.tombstones, res.expired, res.deletedAfter = rep.tombstones, rep.expired, rep.deletedAfter
	res.view, res.viewErr = h.readViewSize(ctx)
	if err := os.WriteFile(filepath.Join(h.work, "report.txt"), []byte(rep.full), 0o644); err != nil {
		h.logf("writing report.txt: %v", err)
	}
	h.logf("chaos/check took %.1fs", time.Since(t).Seconds())
	return res, nil
}

// recentIDs is how far back the load's records keyed by an earlier saga
// reach (newPlan's recent): 100 ids when --retention is given, so that
// most of them come before config.resendWindow has passed, and any
// otherwise, as they did before there was a retention (the same seed
// makes the same load).
func recentIDs(cfg config) int {
	if cfg.RetentionSet && cfg.Retention > 0 {
		return 100
	}
	return 0
}

// sagasEnded returns how many sagas of the load have ended so far, and how
// many have not.
func (h *harness) sagasEnded() (ended, pending int) {
	n, missing := h.track.ended(h.plan.ids)
	return n, len(missing)
}

// sagaTypes returns the saga types whose engines the run runs.
func (h *harness) sagaTypes() []string { return []string{order.Name, localfirst.Name} }

// drain waits until every saga of p has a terminal event or deadline
// passes.
func (h *harness) drain(ctx context.Context, p *plan, deadline time.Time, res *result) bool {
	last := time.Now()
	for {
		n, missing := h.track.ended(p.ids)
		if len(missing) == 0 {
			h.logf("drain: all %d sagas ended", n)
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			res.missing = missing
			h.logf("drain: %d sagas have no terminal event, e.g. %s", len(missing), strings.Join(missing[:min(10, len(missing))], ", "))
			return false
		}
		if time.Since(last) >= 5*time.Second {
			last = time.Now()
			ev, dead := h.track.counts()
			h.logf("drain: %d/%d sagas ended (%d events, %d dead letters read)", n, len(p.ids), ev, dead)
		}
		ctxtime.Sleep(ctx, 250*time.Millisecond)
	}
}

// postLoad sends what must come after sagas ended: duplicate replies for a
// sample of completed sagas, replies for a step they never waited on, and
// one sentinel poison record per inbox partition, whose dead-letter copy
// proves that the partition processed everything before it. It returns the
// markers of the poison records it sent.
func (h *harness) postLoad(ctx context.Context, p *plan, rng *rand.Rand, res *result) []string {
	// Only sagas that ended within the resend window: an older one may
	// have been deleted by the time its reply comes, and the reply would
	// then be dead-lettered unknown-saga.
	var completed []string
	old, window := 0, h.cfg.resendWindow()
	for _, id := range p.ids {
		if e := p.sagas[id]; e.Kind == kindComplete && slices.Equal(h.track.terminalOf(id), []string{message.EventSagaCompleted}) {
			if window > 0 && time.Since(h.track.endedAt(id)) > window {
				old++
				continue
			}
			completed = append(completed, id)
		}
	}
	if old > 0 {
		h.logf("post-load replies go to none of the %d completed sagas that ended more than %v ago (half the retention %v): they may have been deleted", old, window, h.cfg.retention())
	}
	rng.Shuffle(len(completed), func(i, j int) { completed[i], completed[j] = completed[j], completed[i] })
	s := newSender(h.producers)
	nDup := min(len(completed), max(5, len(completed)/50))
	for _, id := range completed[:nDup] {
		p.sagas[id].Kind = kindDupReply
		r := replyRecord(id, order.StepReserveInventory, id+"/"+order.StepReserveInventory+"/do", message.OutcomeSuccess)
		p.add(r, kindDupReply)
		s.send(ctx, r, viaMurmur2)
	}
	res.dupReplies = nDup
	var markers []string
	poison := func(key, variant, reason string, r *kgo.Record) {
		marker := fmt.Sprintf("poison-post-%03d-%s", len(markers), variant)
		r.Headers = append(r.Headers, hdr(headerMarker, marker))
		p.exps = append(p.exps, &expectation{ID: key, Kind: kindPoison, Poison: reason, Marker: marker, Variant: variant})
		p.add(r, kindPoison)
		p.variants[variant]++
		markers = append(markers, marker)
		s.send(ctx, r, viaMurmur2)
	}
	rest := completed[nDup:]
	for _, id := range rest[:min(3, len(rest))] {
		poison(id, "reply-step-not-waited-on", orchestrator.ReasonNotWaiting,
			replyRecord(id, order.StepCompleteOrder, id+"/"+order.StepCompleteOrder+"/do", message.OutcomeSuccess))
	}
	covered := make(map[int32]bool)
	for i := 0; len(covered) < partitions && i < 10_000; i++ {
		key := fmt.Sprintf("sentinel-%d", i)
		q := message.HomePartition(key, partitions)
		if covered[q] {
			continue
		}
		covered[q] = true
		poison(key, "sentinel-reply-unknown-saga", orchestrator.ReasonUnknownSaga,
			replyRecord(key, order.StepReserveInventory, key+"/"+order.StepReserveInventory+"/do", message.OutcomeSuccess))
	}
	if err := s.wait(); err != nil {
		h.logf("post-load records: %v", err)
	}
	h.logf("sent %d duplicate replies to completed sagas, %d replies to steps they never waited on, %d partition sentinels",
		nDup, min(3, len(rest)), len(covered))
	return markers
}

// drainMarkers waits until every poison record of p has been
// dead-lettered.
func (h *harness) drainMarkers(ctx context.Context, p *plan, post []string, timeout time.Duration, res *result) bool {
	var all []string
	for _, e := range p.exps {
		if e.Kind == kindPoison {
			all = append(all, e.Marker)
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		n, missing := h.track.markers(all)
		if len(missing) == 0 {
			h.logf("drain: all %d poison records dead-lettered (%d sent after the drain)", n, len(post))
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			res.missingMarker = missing
			h.logf("drain: %d poison records were not dead-lettered: %s", len(missing), strings.Join(missing[:min(20, len(missing))], ", "))
			return false
		}
		ctxtime.Sleep(ctx, 250*time.Millisecond)
	}
}

// markOutages turns orders that should have completed (complete,
// dup-start, compensate and coupon orders) but ended compensated because their
// complete-order step ran out of retries and was dead-lettered (the orders
// store was down, hung or panicked) into outage sagas. It returns how many.
func (h *harness) markOutages(p *plan) int {
	n := 0
	for _, id := range p.ids {
		e := p.sagas[id]
		if (e.Kind != kindComplete && e.Kind != kindDupStart && e.Kind != kindCompensate && e.Kind != kindCoupon) || !slices.Equal(h.track.terminalOf(id), []string{message.EventSagaCompensated}) {
			continue
		}
		for _, d := range h.track.dlqOf(id) {
			if d.reason == orchestrator.ReasonExhausted && (strings.Contains(d.err, "complete order") || strings.Contains(d.err, order.StepCompleteOrder)) {
				e.Kind = kindOutage
				n++
				break
			}
		}
	}
	if n > 0 {
		h.logf("%d sagas that should have completed ended compensated after their complete-order step ran out of retries (orders-store outage, hang or panic): expected outage", n)
	}
	l := 0
	for _, id := range p.ids {
		e := p.sagas[id]
		if e.Transfer == nil {
			continue
		}
		for _, d := range h.track.dlqOf(id) {
			if d.reason == orchestrator.ReasonExhausted {
				h.logf("transfer %s (%s) ran out of attempts of its Local first step: %s; it ended %v", id, e.Kind, d.err, h.track.terminalOf(id))
				e.Kind = kindLocalOutage
				l++
				break
			}
		}
	}
	if l > 0 {
		h.logf("%d transfers of the local-first saga ran out of attempts of their Local first step (holds' Redis down, hang or panic): expected local-outage", l)
	}
	return n + l
}

// writeExpectations writes every expectation to expectations.jsonl.
func (h *harness) writeExpectations(p *plan) error {
	f, err := os.Create(filepath.Join(h.work, "expectations.jsonl"))
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, e := range p.exps {
		if err := enc.Encode(e); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// logPoisonOnSagas logs how the sagas that poison records were keyed by
// ended (a poison record must not change a valid saga's outcome), and any
// saga that a poison record started.
func (h *harness) logPoisonOnSagas(p *plan) {
	for _, e := range p.exps {
		if e.Kind != kindPoison || e.ID == "" || e.Skipped {
			continue
		}
		end := h.track.terminalOf(e.ID)
		if s, ok := p.sagas[e.ID]; ok {
			h.logf("poison %s (%s) was keyed by saga %s (%s), which ended %v", e.Marker, e.Poison, e.ID, s.Kind, end)
		} else if len(end) > 0 {
			h.logf("poison %s (%s) STARTED saga %s, which ended %v", e.Marker, e.Poison, e.ID, end)
		}
	}
}
