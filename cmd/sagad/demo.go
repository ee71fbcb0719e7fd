package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/metrics"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// The demo's stock: plenty of the common skus, little of scarceSKU, so that
// most orders for it run out.
const (
	scarceSKU   = "sku-scarce"
	plentyStock = 1_000_000_000
)

var commonSKUs = []string{"sku-1", "sku-2", "sku-3", "sku-4", "sku-5", "sku-6"}

// Kinds of demo orders, by how they are meant to end.
const (
	kindComplete      = "complete"
	kindCoupon        = "coupon"        // carries the first-come coupon; about half get it
	kindDeclined      = "declined"      // amount above the payment limit
	kindScarce        = "scarce"        // buys scarceSKU; most run out of stock
	kindUndeliverable = "undeliverable" // ships to country XX
)

var destinations = []order.Address{
	{Country: "DE", City: "Berlin"}, {Country: "FR", City: "Lyon"}, {Country: "US", City: "Austin"},
	{Country: "JP", City: "Osaka"}, {Country: "BR", City: "Recife"}, {Country: "NL", City: "Utrecht"},
}

// demoPlan is the load of one demo run.
type demoPlan struct {
	runID       string
	orders      []order.Order
	kinds       []string
	scarceStock int64
	// first is the first-come coupon code (limit firstLimit), which the
	// coupon orders race for; welcome the code that every other declined
	// order carries, with a coupon for each, so that the compensation
	// gives it back. Both are unique per run.
	first, welcome          string
	firstLimit, welcomeSent int64
}

// newDemoPlan plans n orders: ~60% that complete, ~10% with the first-come
// coupon (the customers of half of them get it; the rest fail
// COUPON_EXHAUSTED or COUPON_ALREADY_USED), ~10% declined (every other one
// with the welcome coupon, issued then released), ~10% for the scarce sku,
// ~10% undeliverable. Order ids are unique per run (o-<run id>-<n>), and so
// are the coupon codes, so runs on one --data-dir do not collide.
func newDemoPlan(n int, paymentLimit int64) *demoPlan {
	var id [4]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails
	p := &demoPlan{runID: hex.EncodeToString(id[:])}
	p.first, p.welcome = "FIRST-"+p.runID, "WELCOME-"+p.runID
	rnd := mrand.New(mrand.NewPCG(uint64(n), uint64(paymentLimit)))
	scarce, coupons := 0, 0
	for i := range n {
		kind := kindComplete
		switch i % 10 {
		case 1:
			kind = kindCoupon
		case 3:
			kind = kindDeclined
		case 6:
			kind = kindScarce
		case 9:
			kind = kindUndeliverable
		}
		o := order.Order{
			OrderID:     fmt.Sprintf("o-%s-%d", p.runID, i+1),
			CustomerID:  fmt.Sprintf("c-%d", 1+rnd.IntN(500)),
			AmountCents: 100 + rnd.Int64N(min(paymentLimit, 50_000)),
			Currency:    []string{"EUR", "USD", "GBP"}[rnd.IntN(3)],
			Items:       []order.Item{{SKU: commonSKUs[rnd.IntN(len(commonSKUs))], Qty: 1 + rnd.Int64N(3)}},
			ShipTo:      destinations[rnd.IntN(len(destinations))],
		}
		switch kind {
		case kindCoupon:
			o.Coupon = p.first
			coupons++
		case kindDeclined:
			o.AmountCents = min(paymentLimit+1+rnd.Int64N(100_000), order.MaxAmountCents)
			if i%20 == 3 {
				// A customer of its own, so that the coupon is issued
				// (and given back when the payment is declined).
				o.Coupon, o.CustomerID = p.welcome, fmt.Sprintf("c-welcome-%d", i+1)
				p.welcomeSent++
			}
		case kindScarce:
			// Reserving is all or nothing: the common item is not taken
			// when the scarce one is short.
			o.Items = append(o.Items, order.Item{SKU: scarceSKU, Qty: 1})
			scarce++
		case kindUndeliverable:
			o.ShipTo = order.Address{Country: "XX", City: "Nowhere"}
		}
		p.orders = append(p.orders, o)
		p.kinds = append(p.kinds, kind)
	}
	p.scarceStock = int64(max(1, scarce/5))
	p.firstLimit = int64(max(1, coupons/2))
	return p
}

// coupons returns the coupon limits to seed before the run.
func (p *demoPlan) coupons() map[string]int64 {
	return map[string]int64{p.first: p.firstLimit, p.welcome: max(1, p.welcomeSent)}
}

// prefix is what the saga ids of this run start with.
func (p *demoPlan) prefix() string { return "o-" + p.runID + "-" }

// stock returns the stock to seed before the run.
func (p *demoPlan) stock() map[string]int64 {
	s := map[string]int64{scarceSKU: p.scarceStock}
	for _, sku := range commonSKUs {
		s[sku] = plentyStock
	}
	return s
}

// records returns the start requests, then one poison record: a start
// request whose value is not JSON, which the engine dead-letters.
func (p *demoPlan) records() []*kgo.Record {
	start := func(key string, value []byte, msgID string) *kgo.Record {
		return &kgo.Record{
			Topic: message.Inbox(order.Name), Key: []byte(key), Value: value,
			Headers: []kgo.RecordHeader{
				{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
				{Key: message.HeaderMessageID, Value: []byte(msgID)},
			},
		}
	}
	rs := make([]*kgo.Record, 0, len(p.orders)+1)
	for _, o := range p.orders {
		v, _ := json.Marshal(o) // an Order always encodes
		rs = append(rs, start(o.OrderID, v, "start-"+o.OrderID))
	}
	poison := p.prefix() + "poison"
	return append(rs, start(poison, []byte("{this is not JSON"), "start-"+poison))
}

// tracker follows the sagas of one demo run through the engine's
// after-commit hook, so that the summary counts this run's orders only
// (sagas left over from an earlier run on the same --data-dir also finish
// here).
type tracker struct {
	p      *demoPlan
	prefix string
	want   int

	mu           sync.Mutex
	completed    map[string]bool
	compensated  map[string]string // saga id → reason
	failed       map[string]string
	deadLettered int
	// foreign counts events of sagas from earlier runs, which resume when
	// a run is interrupted and the next one uses the same --data-dir.
	foreign int
	doneAt  time.Time
	done    chan struct{}
}

var (
	_ orchestrator.HookAfterCommit = (*tracker)(nil)
	_ orchestrator.HookAfterCommit = (*demoHook)(nil)
)

// demoHook is the engine hook of the demo's tracker, which sagad makes only
// in embedded mode, when it builds the saga; until then, and with real
// services, it does nothing.
type demoHook struct{ t atomic.Pointer[tracker] }

func (h *demoHook) set(t *tracker) { h.t.Store(t) }

// AfterCommit calls the tracker's.
func (h *demoHook) AfterCommit(ctx context.Context, b *orchestrator.Batch) {
	if t := h.t.Load(); t != nil {
		t.AfterCommit(ctx, b)
	}
}

// hooks registers demoHook with the engine.
func (s *sagad) hooks() orchestrator.Opt { return orchestrator.Hooks(&s.demoHook) }

func newTracker(p *demoPlan) *tracker {
	return &tracker{
		p: p, prefix: p.prefix(), want: len(p.orders),
		completed: make(map[string]bool), compensated: make(map[string]string), failed: make(map[string]string),
		done: make(chan struct{}),
	}
}

// AfterCommit counts the terminal events of this run's sagas and the
// dead-lettered records. It closes t.done once every order has finished and
// the poison record is dead-lettered.
func (t *tracker) AfterCommit(_ context.Context, b *orchestrator.Batch) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ev := range b.Events {
		if !strings.HasPrefix(ev.SagaID, t.prefix) {
			t.foreign++
			continue
		}
		switch ev.Type {
		case message.EventSagaCompleted:
			t.completed[ev.SagaID] = true
		case message.EventSagaCompensated:
			t.compensated[ev.SagaID] = ev.Reason
		case message.EventSagaFailed:
			t.failed[ev.SagaID] = ev.Reason
		}
	}
	t.deadLettered += len(b.DeadLettered)
	if t.doneAt.IsZero() && t.finishedLocked() >= t.want && t.deadLettered > 0 {
		t.doneAt = time.Now()
		close(t.done)
	}
}

func (t *tracker) finishedLocked() int { return len(t.completed) + len(t.compensated) + len(t.failed) }

// demoResult is what the summary reports.
type demoResult struct {
	runID        string
	sent         int
	completed    int
	compensated  int
	reasons      map[string]int
	failed       int
	deadLettered int
	elapsed      time.Duration
	ledger       ledgerCheck
}

func (t *tracker) result(sent int, elapsed time.Duration) demoResult {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := demoResult{
		sent: sent, completed: len(t.completed), compensated: len(t.compensated), failed: len(t.failed),
		deadLettered: t.deadLettered, elapsed: elapsed, reasons: make(map[string]int),
	}
	for _, reason := range t.compensated {
		r.reasons[reason]++
	}
	return r
}

// Demo bounds.
const (
	readyTimeout = time.Minute
	produceChunk = 500
)

// demoTimeout bounds the wait for a demo of n orders.
func demoTimeout(n int) time.Duration { return 2*time.Minute + time.Duration(n/100)*time.Second }

// demo waits for the engine, seeds the stock, sends the plan's orders and
// the poison record, prints a progress line every second until every order
// has finished, then a summary. It fails when the services fail, the demo
// stalls or the ledgers disagree with the outcomes.
func (s *sagad) demo(ctx context.Context, env *daemon.Env) error {
	tr := s.demoHook.t.Load()
	plan, rdb, m, out := tr.p, env.Redis(), env.Metrics(order.Name), env.Stdout
	if len(plan.orders) == 0 {
		fmt.Fprintln(out, "no demo orders (--demo-orders 0)")
		return nil
	}
	fmt.Fprintf(out, "ksaga demo (run %s): embedded Kafka at %s, data in %s\n", plan.runID, env.Brokers[0], env.Config.DataDir)

	// Wait for the engine to join its group and restore its partitions,
	// so that the throughput measures the sagas, not the start-up.
	waitStart := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	for !env.Ready() {
		select {
		case <-ctx.Done():
			return nil
		case <-env.Done():
			return env.Err()
		case <-tick.C:
		}
		if time.Since(waitStart) > readyTimeout {
			tick.Stop()
			return fmt.Errorf("demo: the engine was not ready after %s (joining its consumer group on the embedded Kafka); rerun with --log-level debug", readyTimeout)
		}
	}
	tick.Stop()

	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err := sim.SeedStock(setupCtx, rdb, plan.stock())
	if err == nil {
		err = sim.SeedCoupons(setupCtx, rdb, plan.coupons())
	}
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("embedded Redis: %w", err)
	}
	cl, err := kgo.NewClient(append(env.KafkaOpts(), kgo.ProducerBatchMaxBytes(4<<20))...)
	if err != nil {
		return fmt.Errorf("demo producer: %w", err)
	}
	defer cl.Close()
	recs := plan.records()
	fmt.Fprintf(out, "sending %d orders (~60%% complete, ~10%% racing for %d coupons %s, ~10%% payment declined (half of them holding a coupon %s), ~10%% short of %s, ~10%% undeliverable) and 1 poison record\n",
		len(plan.orders), plan.firstLimit, plan.first, plan.welcome, scarceSKU)
	start := time.Now()
	for chunk := range slices.Chunk(recs, produceChunk) {
		if err := cl.ProduceSync(ctx, chunk...).FirstErr(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("demo: send orders: %w", err)
		}
	}

	limit := demoTimeout(len(plan.orders))
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	progress := time.NewTicker(time.Second)
	defer progress.Stop()
	last, lastAt := m.Snapshot(), start
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(out, "interrupted; the sagas in flight resume on the next run with the same --data-dir")
			r := tr.result(len(plan.orders), time.Since(start))
			r.runID = plan.runID
			r.print(out)
			return nil
		case <-env.Done():
			return env.Err()
		case <-deadline.C:
			r := tr.result(len(plan.orders), time.Since(start))
			return fmt.Errorf("demo stalled: %d of %d sagas finished, %d records dead-lettered after %s; rerun with --log-level debug to see why",
				r.completed+r.compensated+r.failed, len(plan.orders), r.deadLettered, limit)
		case now := <-progress.C:
			s := m.Snapshot()
			rate := float64(s.Finished()-last.Finished()) / now.Sub(lastAt).Seconds()
			printProgress(out, now.Sub(start), s, rate)
			last, lastAt = s, now
		case <-tr.done:
			r := tr.result(len(plan.orders), tr.doneAt.Sub(start))
			r.runID = plan.runID
			printProgress(out, time.Since(start), m.Snapshot(), -1)
			checkCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			r.ledger = checkLedgers(checkCtx, rdb, plan, tr)
			cancel()
			r.print(out)
			if !r.ledger.ok() {
				return fmt.Errorf("demo: the ledgers disagree with the saga outcomes: %s", strings.Join(r.ledger.problems, "; "))
			}
			return nil
		}
	}
}

func printProgress(w io.Writer, elapsed time.Duration, s metrics.Snapshot, rate float64) {
	line := fmt.Sprintf("[%5.1fs] started %6d | completed %6d | compensated %6d | failed %3d | dead-lettered %3d",
		elapsed.Seconds(), s.Started, s.Completed, s.Compensated, s.Failed, s.DeadLettered)
	if rate >= 0 {
		line += fmt.Sprintf(" | %6.0f sagas/s", rate)
	}
	fmt.Fprintln(w, line)
}

// reasonLabels names the reference participants' failure reasons.
var reasonLabels = map[string]string{
	order.ReasonPaymentDeclined:   "payment declined",
	order.ReasonOutOfStock:        "out of stock",
	order.ReasonUndeliverable:     "undeliverable",
	order.ReasonCouponExhausted:   "coupons exhausted",
	order.ReasonCouponAlreadyUsed: "coupon already used",
	order.ReasonCouponUnknown:     "coupon unknown",
}

func (r demoResult) print(w io.Writer) {
	row := func(name string, value any) { fmt.Fprintf(w, "  %-24s %10v\n", name, value) }
	fmt.Fprintf(w, "\nksaga demo summary (run %s)\n", r.runID)
	row("orders sent", r.sent)
	row("completed", r.completed)
	row("compensated", r.compensated)
	type kv struct {
		reason string
		n      int
	}
	var rs []kv
	for reason, n := range r.reasons {
		rs = append(rs, kv{reason, n})
	}
	slices.SortFunc(rs, func(a, b kv) int { return cmp.Or(b.n-a.n, strings.Compare(a.reason, b.reason)) })
	for _, x := range rs {
		label := reasonLabels[x.reason]
		if label == "" {
			label = x.reason
		}
		row("  "+label, x.n)
	}
	row("failed", r.failed)
	row("dead-lettered", r.deadLettered)
	if r.ledger.couponLimit > 0 {
		row("coupons issued", fmt.Sprintf("%d/%d", r.ledger.couponsIssued, r.ledger.couponLimit))
	}
	row("elapsed", r.elapsed.Round(time.Millisecond))
	if secs := r.elapsed.Seconds(); secs > 0 {
		row("sagas/s", strconv.FormatFloat(float64(r.completed+r.compensated+r.failed)/secs, 'f', 0, 64))
	}
	if r.ledger.checked > 0 {
		status := "ok"
		if !r.ledger.ok() {
			status = fmt.Sprintf("%d problems", len(r.ledger.problems))
		}
		row("ledger check", status)
		stock := fmt.Sprintf("stock of %d skus conserved", r.ledger.skus)
		if r.ledger.stockSkipped {
			stock = "stock not checked: sagas of an earlier, interrupted run took some"
		}
		fmt.Fprintf(w, "    (%d orders against their reservation, payment, shipment and order records and %d against their coupon claims; %s;\n",
			r.ledger.checked, r.ledger.couponOrders, stock)
		fmt.Fprintf(w, "    coupon counts and customer sets equal to the completed orders that hold them, none over its limit)\n")
	}
}

// ledgerCheck is the result of checkLedgers.
type ledgerCheck struct {
	checked      int
	skus         int
	stockSkipped bool
	// couponOrders counts the orders with a coupon checked against their
	// claims; couponsIssued is the first-come code's issued count at the
	// end, couponLimit its limit.
	couponOrders               int
	couponsIssued, couponLimit int64
	problems                   []string
}

func (l ledgerCheck) ok() bool { return len(l.problems) == 0 }

// maxProblems bounds the problems a ledger check reports.
const maxProblems = 5

// checkLedgers verifies the participants' Redis ledgers against the saga
// outcomes: a completed order has its stock reserved, its payment
// authorized, its shipment scheduled and its order recorded; a compensated
// one has none of these (its order record is missing, or cancelled when
// complete-order ran out of attempts); and each sku's stock is the seeded stock minus the
// completed orders' quantities (every effect happened once, every undo put
// it back once). For the coupons: a completed order with a coupon holds its
// claim, any other order's claim is released or absent, and each code's
// issued count and customer set are exactly the completed orders holding
// it (so none is over its limit, no customer holds two).
func checkLedgers(ctx context.Context, rdb redis.UniversalClient, p *demoPlan, t *tracker) ledgerCheck {
	t.mu.Lock()
	completed := maps.Clone(t.completed)
	foreign := t.foreign
	t.mu.Unlock()
	var lc ledgerCheck
	problem := func(format string, args ...any) {
		if len(lc.problems) < maxProblems {
			lc.problems = append(lc.problems, fmt.Sprintf(format, args...))
		}
	}
	type statuses struct{ reservation, payment, shipment, order, claim *redis.StringCmd }
	type couponLedger struct {
		issued    *redis.StringCmd
		customers *redis.StringSliceCmd
	}
	got := make([]statuses, len(p.orders))
	stock := make(map[string]*redis.StringCmd)
	coupons := make(map[string]couponLedger)
	_, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, o := range p.orders {
			got[i] = statuses{
				reservation: pipe.HGet(ctx, sim.ReservationKey(o.OrderID), "status"),
				payment:     pipe.HGet(ctx, sim.PaymentKey(o.OrderID), "status"),
				shipment:    pipe.HGet(ctx, sim.ShipmentKey(o.OrderID), "status"),
				order:       pipe.HGet(ctx, sim.OrderKey(o.OrderID), "status"),
				claim:       pipe.HGet(ctx, sim.CouponClaimKey(o.OrderID), "status"),
			}
		}
		for sku := range p.stock() {
			stock[sku] = pipe.Get(ctx, sim.StockKey(sku))
		}
		for code := range p.coupons() {
			coupons[code] = couponLedger{pipe.Get(ctx, sim.CouponIssuedKey(code)), pipe.SMembers(ctx, sim.CouponCustomersKey(code))}
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		problem("read the ledgers: %v", err)
		return lc
	}
	want := p.stock()
	holders := make(map[string]map[string]int) // code → customer → completed orders holding it
	for i, o := range p.orders {
		lc.checked++
		s := got[i]
		if o.Coupon != "" {
			lc.couponOrders++
			claim := s.claim.Val()
			switch {
			case completed[o.OrderID] && claim != "issued":
				problem("completed order %s with coupon %s: claim %q, want issued", o.OrderID, o.Coupon, claim)
			case completed[o.OrderID]:
				if holders[o.Coupon] == nil {
					holders[o.Coupon] = make(map[string]int)
				}
				holders[o.Coupon][o.CustomerID]++
			case claim != "" && claim != "released":
				problem("compensated order %s with coupon %s: claim %q, want released or none", o.OrderID, o.Coupon, claim)
			}
		} else if claim := s.claim.Val(); claim != "" {
			problem("order %s has no coupon but a coupon claim %q", o.OrderID, claim)
		}
		have := [4]string{s.reservation.Val(), s.payment.Val(), s.shipment.Val(), s.order.Val()}
		if completed[o.OrderID] {
			if have != [4]string{"reserved", "authorized", "scheduled", "completed"} {
				problem("completed order %s: reservation %q, payment %q, shipment %q, order %q", o.OrderID, have[0], have[1], have[2], have[3])
			}
			for _, it := range o.Items {
				want[it.SKU] -= it.Qty
			}
			continue
		}
		if have[0] == "reserved" || have[1] == "authorized" || have[2] == "scheduled" || (have[3] != "" && have[3] != "cancelled") {
			problem("compensated order %s: reservation %q, payment %q, shipment %q, order %q", o.OrderID, have[0], have[1], have[2], have[3])
		}
	}
	limits := p.coupons()
	for _, code := range slices.Sorted(maps.Keys(coupons)) {
		c := coupons[code]
		issued, err := c.issued.Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			problem("coupon %s: issued count: %v", code, err)
			continue
		}
		held := 0
		for customer, n := range holders[code] {
			held += n
			if n > 1 {
				problem("coupon %s: customer %s holds it through %d completed orders", code, customer, n)
			}
			if !slices.Contains(c.customers.Val(), customer) {
				problem("coupon %s: customer %s holds it but is not in its customer set", code, customer)
			}
		}
		switch {
		case issued > limits[code]:
			problem("coupon %s: %d issued, over its limit %d", code, issued, limits[code])
		case issued != int64(held) || len(c.customers.Val()) != held:
			problem("coupon %s: %d issued and %d customers in its set, but %d completed orders hold it", code, issued, len(c.customers.Val()), held)
		}
		if code == p.first {
			lc.couponsIssued, lc.couponLimit = issued, limits[code]
		}
	}
	if foreign > 0 {
		// Sagas of an earlier run took stock from this run's seed too.
		lc.stockSkipped = true
		return lc
	}
	for sku, cmd := range stock {
		lc.skus++
		n, err := cmd.Int64()
		if err != nil {
			problem("stock of %s: %v", sku, err)
			continue
		}
		if n != want[sku] {
			problem("stock of %s is %d, want %d", sku, n, want[sku])
		}
	}
	return lc
}
