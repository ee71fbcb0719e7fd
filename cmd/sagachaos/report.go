package main

import (
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ksaga/ksaga/chaos/check/localfirst"
)

// summary prints the checker's report and the summary table.
func (h *harness) summary(res *result) {
	if res.checkRan {
		h.printf("\n=== chaos/check report ===\n%s\n", strings.TrimRight(res.report, "\n"))
	}
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	p := res.plan
	kinds := make(map[string]int)
	for _, e := range p.exps {
		if e.Kind != kindPoison {
			kinds[e.Kind]++
		}
	}
	fmt.Fprintf(tw, "sagas sent\t%d\t(%d records at %.1f/s)\n", len(p.sagas), len(p.recs), res.rate)
	for _, k := range []string{kindComplete, kindCoupon, kindCouponUnknown, kindDeclined, kindOutOfStock, kindUndeliverable, kindOutage, kindDupStart, kindDupReply, kindCompensate, kindParkCompensate} {
		note := ""
		switch k {
		case kindComplete:
			note = fmt.Sprintf("%d of them large (a %d KiB ship_to.city), in %d bursts of %d sharing a home partition", p.large, largeField>>10, p.bursts, largeBurst)
			if len(p.surges) > 0 {
				note += fmt.Sprintf("; %d in %d surges of %d (redis-rollback-catchup, redis-evict)", len(p.surges)*surgeSize, len(p.surges), surgeSize)
			}
		case kindCoupon:
			note = fmt.Sprintf("race for the coupons %v (completed, or refused exhausted/already used)", p.coupons)
			if len(p.parkSurges) > 0 {
				resumed := 0
				for _, e := range p.exps {
					if e.Resumed {
						resumed++
					}
				}
				note += fmt.Sprintf("; %d in %d coupon-park surges of %d; %d sent a Resume while parked", len(p.parkSurges)*parkSurgeSize, len(p.parkSurges), parkSurgeSize, resumed)
			}
		case kindParkCompensate:
			note = "orders with a coupon that parked at reserve-coupon and were sent a Compensate while parked (coupon-park)"
		case kindCouponUnknown:
			note = "carry a coupon with no limit (refused unknown)"
		case kindDeclined, kindUndeliverable:
			n := 0
			for _, e := range p.exps {
				if e.Kind == k && e.Order != nil && e.Order.Coupon != "" {
					n++
				}
			}
			note = fmt.Sprintf("%d of them with a coupon, given back by the compensation", n)
		case kindCompensate:
			note = fmt.Sprintf("sent a Compensate soon after their start (%d sent)", p.compensates)
		case kindOutage:
			note = "complete orders compensated after complete-order ran out of retries (outage, hang, panic)"
		case kindDupStart:
			note = fmt.Sprintf("%d second copies sent, plus conflicting starts", p.dupSends)
		case kindDupReply:
			note = "completed sagas sent a stale reserve-inventory reply"
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\n", k, kinds[k], note)
	}
	fmt.Fprintf(tw, "local-first transfers\t%d\t(saga %s: Local first step %s, then %s)\n", p.transfers, localfirst.Name, localfirst.StepHold, localfirst.StepApprove)
	for _, k := range localKinds {
		note := ""
		switch k {
		case kindLocalRefused:
			note = "refused by the approver; the hold is released"
		case kindLocalCompensate:
			note = "sent a Compensate soon after their start"
		case kindLocalOutage:
			note = "hold-funds ran out of attempts (holds' Redis down, hang, panic); the start is dead-lettered"
		}
		fmt.Fprintf(tw, "  %s\t%d\t%s\n", k, kinds[k], note)
	}
	fmt.Fprintf(tw, "records by partitioner\t\t\n")
	for _, via := range partitionerNames {
		fmt.Fprintf(tw, "  %s\t%d\t\n", via, p.partitioners[via])
	}
	fmt.Fprintf(tw, "poison records\t%d\t\n", p.kinds[kindPoison])
	var vs []string
	for v := range p.variants {
		vs = append(vs, v)
	}
	sort.Strings(vs)
	reasons := make(map[string]string)
	for _, e := range p.exps {
		if e.Kind == kindPoison {
			reasons[e.Variant] = e.Poison
		}
	}
	for _, v := range vs {
		fmt.Fprintf(tw, "  %s\t%d\t-> %s\n", v, p.variants[v], reasons[v])
	}
	fmt.Fprintf(tw, "faults injected\t%d\t\n", sum(res.faults))
	counts := h.cfg.counts()
	for _, k := range sortedKinds(counts) {
		note := ""
		if st := h.statsOf(k); st != "" {
			note = "; " + st
		}
		fmt.Fprintf(tw, "  %s\t%d\tof %d scheduled%s\n", k, res.faults[k], counts[k], note)
	}
	h.outMu.Lock()
	var fired []string
	for k, n := range h.injected {
		fired = append(fired, fmt.Sprintf("%s %d", k, n))
	}
	h.outMu.Unlock()
	sort.Strings(fired)
	if len(fired) > 0 {
		fmt.Fprintf(tw, "  requests kfaked faulted\t\t%s\n", strings.Join(fired, ", "))
	}
	if counts[faultSagaPanic] > 0 {
		fmt.Fprintf(tw, "  complete-order panics\t%d\t(up to %d per saga-panic fault)\n", res.panics, panicCount)
		fmt.Fprintf(tw, "  hold-funds panics\t%d\t(the local-first saga's Local first step; up to %d per saga-panic fault)\n", res.localPanics, panicCount)
	}
	if counts[faultLocalStepHang] > 0 {
		fmt.Fprintf(tw, "  complete-order hangs\t%d\t(each call while a hang key lived, %v each)\n", res.hangs, hangFor)
		fmt.Fprintf(tw, "  hold-funds hangs\t%d\t(the local-first saga's Local first step, likewise)\n", res.localHangs)
	}
	restarts := 0
	for _, pr := range h.procs {
		r, _, _ := pr.summary()
		restarts += r
	}
	fmt.Fprintf(tw, "restarts on their own\t%d\t(besides the faults' own restarts)\n", restarts)
	for _, pr := range h.procs {
		r, fenced, crashes := pr.summary()
		if r > 0 {
			fmt.Fprintf(tw, "  %s\t%d\t%d after being fenced (expected), %d crashes\n", pr.name, r, fenced, crashes)
		}
	}
	retention := "(the engines' default or KSAGA_RETENTION"
	if h.cfg.RetentionSet {
		retention = "(--retention"
	}
	if h.cfg.retention() == 0 {
		retention += "; 0 keeps ended sagas forever)"
	} else {
		retention += fmt.Sprintf("; nothing sent for a saga started more than %v before", h.cfg.resendWindow())
		if n := sum(p.skipped); n > 0 {
			var what []string
			for _, k := range sortedKinds(p.skipped) {
				what = append(what, fmt.Sprintf("%d %s", p.skipped[k], k))
			}
			retention += fmt.Sprintf(": %s not sent", strings.Join(what, ", "))
		}
		retention += ")"
	}
	fmt.Fprintf(tw, "retention\t%v\t%s\n", h.cfg.retention(), retention)
	if res.checkRan {
		note := ""
		if res.tombstones > 0 {
			note = fmt.Sprintf("(%d sagas deleted, each %v to %v after it ended)", res.expired, res.deletedAfter[0].Round(time.Millisecond), res.deletedAfter[1].Round(time.Millisecond))
		}
		fmt.Fprintf(tw, "tombstones on the state topics\t%d\t%s\n", res.tombstones, note)
		if res.viewErr != nil {
			fmt.Fprintf(tw, "engine redis at the end\t\tnot read: %v\n", res.viewErr)
		} else {
			fmt.Fprintf(tw, "engine redis at the end\t\t%s\n", res.view.String(h.sagaTypes()))
		}
	}
	drain := "complete"
	if !res.drained {
		drain = fmt.Sprintf("INCOMPLETE: %d sagas without a terminal event, %d poison records not dead-lettered", len(res.missing), len(res.missingMarker))
	}
	fmt.Fprintf(tw, "drain\t%s\t\n", drain)
	anomalies := "checker did not run"
	if res.checkRan {
		anomalies = fmt.Sprint(res.anomalies)
	}
	fmt.Fprintf(tw, "anomalies\t%s\t\n", anomalies)
	fmt.Fprintf(tw, "crash lines in logs\t%d\t\n", len(res.crashLines))
	as := h.anomalies()
	fmt.Fprintf(tw, "anomalies while running\t%d\t(found by the faults themselves)\n", len(as))
	fmt.Fprintf(tw, "elapsed\t%s\t\n", res.elapsed.Round(100_000_000))
	tw.Flush()
	h.printf("\n=== sagachaos summary ===\n%s", b.String())
	for _, l := range res.crashLines[:min(20, len(res.crashLines))] {
		h.printf("  %s\n", l)
	}
	for _, a := range as[:min(20, len(as))] {
		h.printf("  ANOMALY %s\n", a)
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
