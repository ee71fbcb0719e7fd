package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/chaos/check"
	"github.com/ksaga/ksaga/client"
	"github.com/ksaga/ksaga/compensation"
	"github.com/ksaga/ksaga/internal/ctxtime"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// The coupon-park fault silences the coupon participant past the attempts
// of reserve-coupon, a step that parks the saga when they run out
// (saga.Step.Park) instead of compensating it, so that orders with a coupon
// park; then it resumes or compensates each parked saga, as an operator
// would, and brings the participant back.
const (
	// parkSurgeSize coupon orders, sent over parkSurgeOver right after
	// the coupon participant stops (plan.parkSurges), make sure that
	// orders park whatever the load's rate.
	parkSurgeSize = 20
	parkSurgeOver = 200 * time.Millisecond
	// parkCompensateEvery: one parked saga in this many is sent a
	// Compensate, the others a Resume.
	parkCompensateEvery = 3
	// parkMargin is how long before a compensation sent to the coupon
	// participant when it stopped would give up the participant is back
	// at the latest (see couponWindow), and parkRestartFor how long
	// bringing it back takes at most.
	parkMargin     = 4 * time.Second
	parkRestartFor = 2 * time.Second
	// parkLateResume is how long after the participant is back a parking
	// that is still not resolved (a saga that parked after the view was
	// read: its late reply should resolve it) gets a Resume, and
	// parkResolveWithin how long until every parking must be resolved.
	parkLateResume    = 10 * time.Second
	parkResolveWithin = 30 * time.Second
)

// couponWindow returns how long the coupon participant must stay silent for
// a reserve-coupon sent right after it stopped to park its saga (parkAfter:
// the step's sends × its deadline), and how long it may stay silent at most
// (silentMax): a ReleaseCoupon sent right when it stopped (an order that
// failed after its coupon was issued) gets no answer for the compensation
// policy's sends × its reply deadline then, the engine gives the
// compensation up and the saga ends SagaFailed. sagad sets neither the
// deadlines nor the compensation policy: both are ksaga's defaults.
func couponWindow() (parkAfter, silentMax time.Duration) {
	for _, s := range order.New(sim.NewOrderStore(nil)).Steps() {
		if s.Name == order.StepReserveCoupon {
			parkAfter = time.Duration(s.Retry.Attempts()) * s.Deadline
		}
	}
	var comp compensation.Policy
	return parkAfter, time.Duration(comp.Attempts())*comp.ReplyDeadline() - parkMargin
}

// couponParkFor is how long a coupon-park keeps the coupon participant
// silent at most.
var couponParkFor = func() time.Duration { _, silent := couponWindow(); return silent }()

// withoutCoupon returns args (a participants' sagad's) with --participants
// naming every participant of the order saga but the coupon one.
func withoutCoupon(args []string) []string {
	var names []string
	for _, n := range order.Participants {
		if n != order.Coupon {
			names = append(names, n)
		}
	}
	out := slicesClone(args)
	if i := slices.Index(out, "--participants"); i >= 0 && i+1 < len(out) {
		out[i+1] = strings.Join(names, ",")
	}
	return out
}

// couponPark silences the coupon participant (the participants' process is
// restarted without it: the others stay up) and sends a surge of coupon
// orders, whose reserve-coupon then gets no reply: they park after
// parkAfter. Once they have, or as late as silentMax allows, it reads the
// parked order sagas from the engine's Redis view, sends one in
// parkCompensateEvery a Compensate and the others a Resume (package
// client), and restarts the participants' process with the coupon
// participant: the Resumes' coupon commands, sent again, are answered then,
// and so is the ReleaseCoupon of the compensated ones. Every saga that
// parked must have its parking resolved within parkResolveWithin of the
// participant's return (a saga that parked after the view was read is
// resolved by its late reply, or sent a Resume after parkLateResume);
// one that is not is an anomaly of the run. The fault counts the sagas
// that parked and how each parking was resolved; a run whose coupon-park
// faults parked none fails.
func (h *harness) couponPark(ctx context.Context, kind string) error {
	parkAfter, silentMax := couponWindow()
	p := h.parts
	all := p.argsNow()
	since := time.Now()
	without := withoutCoupon(all)
	h.faultf("%s: restart %s without the coupon participant for at most %v (%s): reserve-coupon parks its saga after %v of silence; a coupon's compensation would give up after %v",
		kind, p.name, silentMax, strings.Join(without[slices.Index(without, "--participants"):][:2], " "), parkAfter, silentMax+parkMargin)
	p.setArgs(without)
	back := false
	restore := func(ctx context.Context) error {
		back = true
		p.setArgs(all)
		if err := p.term(10 * time.Second); err != nil {
			return err
		}
		if err := p.restart(); err != nil {
			return err
		}
		return h.waitReady(ctx, p, h.partsHTTP, 90*time.Second)
	}
	defer func() {
		if !back {
			_ = restore(ctx)
		}
	}()
	if err := p.term(10 * time.Second); err != nil {
		return err
	}
	stopped := time.Now()
	var surge []string
	wait := func() error { return nil }
	if pl := h.plan; pl.parkSurged < len(pl.parkSurges) {
		recs := pl.parkSurges[pl.parkSurged]
		pl.parkSurged++
		for _, r := range recs {
			surge = append(surge, string(r.Key))
		}
		wait = h.sendOver(ctx, recs, parkSurgeOver)
	}
	if err := p.restart(); err != nil {
		return errors.Join(err, wait())
	}
	if err := errors.Join(h.waitReady(ctx, p, h.partsHTTP, 90*time.Second), wait()); err != nil {
		return err
	}
	h.faultf("%s: %s (pid %d) runs without the coupon participant; sent %d coupon orders: %s", kind, p.name, p.pid(), len(surge), strings.Join(surge, " "))

	// Wait for the surge to park, as long as the participant may stay
	// silent.
	until := stopped.Add(silentMax - parkRestartFor)
	for ctx.Err() == nil && time.Now().Before(until) {
		if time.Since(stopped) > parkAfter && h.allParked(surge, since) {
			break
		}
		ctxtime.Sleep(ctx, 250*time.Millisecond)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	parked, err := h.parkedOrders(ctx)
	if err != nil {
		return err
	}
	resumed, compensated, err := h.resolveParked(ctx, parked, true)
	if err != nil {
		return err
	}
	h.faultf("%s: %v after the coupon participant stopped, the engine's view holds %d parked orders: sent %d a Compensate (%q), %d a Resume (%q); restart %s with the coupon participant",
		kind, time.Since(stopped).Round(time.Millisecond), len(parked), len(compensated), check.ParkCompensateReason, len(resumed), check.ResumeReason, p.name)
	if err := restore(ctx); err != nil {
		return err
	}
	cameBack := time.Now()
	h.faultf("%s: %s is back with the coupon participant (pid %d), %v after it stopped", kind, p.name, p.pid(), cameBack.Sub(stopped).Round(time.Millisecond))

	sent := make(map[string]bool)
	for _, id := range slices.Concat(resumed, compensated) {
		sent[id] = true
	}
	lateResumed := false
	var open []string
	for {
		open = open[:0]
		for _, id := range h.track.parkedSince(since) {
			if _, ok := h.track.parking(id); !ok {
				open = append(open, id)
			}
		}
		if len(open) == 0 || ctx.Err() != nil || time.Since(cameBack) > parkResolveWithin {
			break
		}
		if !lateResumed && time.Since(cameBack) > parkLateResume {
			lateResumed = true
			var late []string
			for _, id := range open {
				if !sent[id] {
					late = append(late, id)
				}
			}
			if len(late) > 0 {
				// The participant is back: its late reply may resume
				// these before the Resume comes, which is then dropped.
				// Their expectations are left as they are.
				if _, _, err := h.resolveParked(ctx, late, false); err != nil {
					return err
				}
				h.faultf("%s: %d sagas still parked %v after the coupon participant came back, none sent anything: sent them a Resume: %s", kind, len(late), parkLateResume, strings.Join(late, " "))
			}
		}
		ctxtime.Sleep(ctx, 250*time.Millisecond)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	slices.Sort(open)
	for _, id := range open {
		what := "neither resumed nor compensated"
		switch {
		case slices.Contains(resumed, id):
			what = "sent a Resume while parked, but not resumed"
		case slices.Contains(compensated, id):
			what = "sent a Compensate while parked, but its compensation did not start"
		}
		h.anomalyf("%s: saga %s %s within %v of the coupon participant's return", kind, id, what, parkResolveWithin)
	}
	h.countParkings(kind, since, len(open))
	return nil
}

// allParked reports whether every saga of ids has parked since since.
func (h *harness) allParked(ids []string, since time.Time) bool {
	parked := h.track.parkedSince(since)
	for _, id := range ids {
		if !slices.Contains(parked, id) {
			return false
		}
	}
	return len(ids) > 0
}

// resolveParked sends one in parkCompensateEvery of ids a Compensate and
// the others a Resume when compensate is set, each a Resume otherwise, and
// returns those it sent each. With compensate (the coupon participant is
// still silent: nothing else can resolve their parkings first), it marks
// their expectations: kindParkCompensate, or Resumed.
func (h *harness) resolveParked(ctx context.Context, ids []string, compensate bool) (resumed, compensated []string, err error) {
	cl, err := client.New(kgo.SeedBrokers(h.kafkaAddr))
	if err != nil {
		return nil, nil, err
	}
	defer cl.Close()
	def := order.New(sim.NewOrderStore(nil))
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for i, id := range ids {
		e := h.plan.sagas[id]
		if compensate && i%parkCompensateEvery == parkCompensateEvery-1 {
			if err := cl.Compensate(cctx, def, id, check.ParkCompensateReason); err != nil {
				return resumed, compensated, err
			}
			compensated = append(compensated, id)
			if e != nil {
				e.Kind = kindParkCompensate
			}
			continue
		}
		if err := cl.Resume(cctx, def, id, check.ResumeReason); err != nil {
			return resumed, compensated, err
		}
		resumed = append(resumed, id)
		if e != nil && compensate {
			e.Resumed = true
		}
	}
	return resumed, compensated, nil
}

// parkedOrders returns the ids of the order sagas whose state in the
// engine's Redis view is parked, sorted.
func (h *harness) parkedOrders(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var keys []string
	it := h.engRdb.Scan(ctx, 0, orchestrator.StateKeyPattern(order.Name), 1000).Iterator()
	for it.Next(ctx) {
		keys = append(keys, it.Val())
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("SCAN: %w", err)
	}
	var ids []string
	for i := 0; i < len(keys); i += 500 {
		batch := keys[i:min(i+500, len(keys))]
		vals := make([]*redis.StringCmd, len(batch))
		_, err := h.engRdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j, k := range batch {
				vals[j] = p.HGet(ctx, k, "state")
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("HGET state: %w", err)
		}
		for j, v := range vals {
			var st struct {
				Status string `json:"status"`
			}
			if json.Unmarshal([]byte(v.Val()), &st) == nil && st.Status == message.StatusParked {
				ids = append(ids, idsOfKeys(batch[j : j+1])[0])
			}
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	return ids, nil
}

// countParkings tallies the sagas that parked since since and how each
// parking was resolved; unresolved is how many were not.
func (h *harness) countParkings(kind string, since time.Time, unresolved int) {
	parked := h.track.parkedSince(since)
	h.tally(kind, statParked, len(parked))
	for _, id := range parked {
		ev, ok := h.track.parking(id)
		switch {
		case !ok:
		case ev.typ == message.EventCompensationStarted:
			h.tally(kind, statParkCompensated, 1)
		case ev.reason == check.ReplyArrivedReason:
			h.tally(kind, statParkLateReply, 1)
		default:
			h.tally(kind, statParkResumed, 1)
		}
	}
	if unresolved > 0 {
		h.tally(kind, statParkUnresolved, unresolved)
	}
	h.faultf("%s: %d sagas parked; %s", kind, len(parked), h.statsOf(kind))
}
