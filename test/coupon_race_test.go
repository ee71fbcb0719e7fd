package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/chaos/check"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// couponRace is the size of a coupon race.
type couponRace struct {
	orders, customers int
	coupons           int64
	// load is how long the orders are spread over; the kills fall in it.
	load time.Duration
}

// race is the race of write-up 004 with the issue's figures. It takes
// about 35 seconds.
var race = couponRace{orders: 5000, customers: 2000, coupons: 500, load: 20 * time.Second}

const raceCode = "FIRST-COME"

// TestCouponRace is write-up 004's first-come coupon event under crashes:
// orders from fewer customers than orders race for fewer coupons of one
// code than customers, while the engines and the participants are
// SIGKILLed (mid-transaction: the load never stops) and restarted. One in
// ten orders is declined by the payment and one in twenty undeliverable,
// after the coupon step, so that their coupons must be given back.
//
// It runs the real processes: kfaked, two engines and the participants as
// sagad processes (built by the test), and redis-servers. Then it checks
// what the issue asks: never more issued than the limit; the issued count
// equal to the completed orders holding the coupon and to the customer
// set; no customer twice; every claim of an order that did not complete
// released; and it runs chaos/check over everything (exactly-once of every
// effect, the Redis view, the DLQ).
//
// The race: 5,000 orders from 2,000 customers for 500 coupons, five kill
// rounds (seven SIGKILLs) while the coupons are being issued. Set
// KSAGA_TEST_LOGS to a directory to keep the processes' logs there.
func TestCouponRace(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes and kills them")
	}
	rc := race
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	bin := buildBinaries(t, "sagad", "kfaked")
	began := time.Now()

	kafka := freeAddr(t)
	broker := newProc(t, "kfaked", filepath.Join(bin, "kfaked"), "--listen", kafka, "--control", "")
	broker.start()
	engRedis, simRedis := redistest.Start(t), redistest.Start(t)
	simRdb := redis.NewClient(&redis.Options{Addr: simRedis})
	defer simRdb.Close()

	common := []string{"--kafka-brokers", kafka, "--session-timeout", "6s", "--partitions", "6",
		"--replication-factor", "1", "--log-format", "json"}
	// Every process joins its groups as a static member, as a StatefulSet
	// runs them: a restarted one takes its partitions back at once, with
	// no rebalance. (As dynamic members, two engines SIGKILLed together
	// left dead members that kfake's group waited out for the 60s
	// rebalance timeout, again and again while the restarted engines'
	// JoinGroups timed out: minutes without a saga moving. The chaos suite
	// moves partitions between dynamic engines, one kill at a time.)
	var engines [2]*proc
	var engineHTTP [2]string
	for i := range engines {
		engineHTTP[i] = freeAddr(t)
		engines[i] = newProc(t, fmt.Sprintf("engine-%d", i+1), filepath.Join(bin, "sagad"), append(slices.Clone(common),
			"--participants", "none", "--transactional-id", fmt.Sprintf("race-engine-%d", i+1), "--static-membership",
			"--metrics-addr", engineHTTP[i], "--redis-addr", engRedis, "--orders-redis-addr", simRedis)...)
	}
	partsHTTP := freeAddr(t)
	parts := newProc(t, "participants", filepath.Join(bin, "sagad"), append(slices.Clone(common),
		"--engine=false", "--participants", "all", "--transactional-id", "race-participants", "--static-membership",
		"--metrics-addr", partsHTTP, "--redis-addr", simRedis)...)
	// The first engine creates the topics.
	engines[0].start()
	waitReady(ctx, t, engines[0], engineHTTP[0], 90*time.Second)
	engines[1].start()
	parts.start()
	waitReady(ctx, t, parts, partsHTTP, 90*time.Second)
	waitReady(ctx, t, engines[1], engineHTTP[1], 90*time.Second)

	stock := map[string]int64{"sku-1": 1 << 40, "sku-2": 1 << 40}
	if err := sim.SeedStock(ctx, simRdb, stock); err != nil {
		t.Fatal(err)
	}
	if err := sim.SeedCoupons(ctx, simRdb, map[string]int64{raceCode: rc.coupons}); err != nil {
		t.Fatal(err)
	}

	orders, exps := raceOrders(rc)
	track := newEndTracker(t, kafka)
	producer, err := kgo.NewClient(kgo.SeedBrokers(kafka), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()

	// The kills, from the start of the load: each process down for a
	// moment, two engines at once once, all while coupons are issued (see
	// sendAt).
	type kill struct {
		at    time.Duration
		procs []*proc
		down  time.Duration
	}
	step := rc.load * 3 / 40
	kills := []kill{
		{1 * step, []*proc{parts}, 500 * time.Millisecond},
		{2 * step, []*proc{engines[0]}, time.Second},
		{3 * step, []*proc{engines[1], parts}, time.Second},
		{4 * step, []*proc{engines[0], engines[1]}, 2 * time.Second},
		{5 * step, []*proc{parts}, 200 * time.Millisecond},
	}
	start := time.Now()
	var lastKill time.Duration
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, k := range kills {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(start.Add(k.at))):
			}
			var names []string
			for _, p := range k.procs {
				names = append(names, p.String())
				p.kill()
			}
			lastKill = time.Since(start)
			t.Logf("[%5.1fs] SIGKILL %s; restart in %v", lastKill.Seconds(), strings.Join(names, ", "), k.down)
			time.Sleep(k.down)
			for _, p := range k.procs {
				p.start()
			}
		}
	}()
	var sendErr error
	var sendMu sync.Mutex
	for i, o := range orders {
		if d := time.Until(start.Add(sendAt(i, len(orders), rc.load))); d > 0 {
			time.Sleep(d)
		}
		v, _ := json.Marshal(o)
		producer.Produce(ctx, &kgo.Record{Topic: message.Inbox(order.Name), Key: []byte(o.OrderID), Value: v, Headers: []kgo.RecordHeader{
			{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
			{Key: message.HeaderMessageID, Value: []byte("start-" + o.OrderID)},
		}}, func(_ *kgo.Record, err error) {
			if err != nil {
				sendMu.Lock()
				if sendErr == nil {
					sendErr = err
				}
				sendMu.Unlock()
			}
		})
	}
	if err := producer.Flush(ctx); err != nil {
		t.Fatalf("flush the orders: %v", err)
	}
	if sendErr != nil {
		t.Fatalf("send the orders: %v", sendErr)
	}
	wg.Wait()
	t.Logf("[%5.1fs] %d orders sent; %d kills done", time.Since(start).Seconds(), len(orders), len(kills))

	ids := make([]string, len(orders))
	for i, o := range orders {
		ids[i] = o.OrderID
	}
	missing := track.wait(ctx, ids, 4*time.Minute)
	if dir := os.Getenv("KSAGA_TEST_LOGS"); dir != "" {
		for _, p := range append(engines[:], parts, broker) {
			if b, err := os.ReadFile(p.logPath); err == nil {
				_ = os.WriteFile(filepath.Join(dir, p.name+".log"), b, 0o644)
			}
		}
	}
	if len(missing) > 0 {
		for _, p := range append(engines[:], parts) {
			t.Logf("%s log:\n%s", p.name, p.logTail(20))
		}
		t.Fatalf("%d of %d sagas have no terminal event, e.g. %s", len(missing), len(ids), strings.Join(missing[:min(10, len(missing))], ", "))
	}
	t.Logf("[%5.1fs] all %d sagas ended", time.Since(start).Seconds(), len(ids))
	for _, p := range append(engines[:], parts, broker) {
		if p.exited() {
			t.Errorf("%s exited on its own:\n%s", p.name, p.logTail(30))
		}
	}
	// The engines write their last states to Redis after the commit.
	time.Sleep(3 * time.Second)

	fig := raceFigures(ctx, t, simRdb, orders, track)
	t.Logf("%d orders from %d customers for %d coupons of %s, %d SIGKILLs (the last at %.1fs): %d completed (holding a coupon, the last at %.1fs), "+
		"%d refused %s, %d refused %s, %d compensated after the coupon was issued (declined, undeliverable); "+
		"issued %d, customer set %d, claims released %d; %.1fs from the first order to the last end, %.1fs in all",
		len(orders), rc.customers, rc.coupons, raceCode, killCount(engines[:], parts), lastKill.Seconds(),
		fig.completed, track.lastCompleted().Sub(start).Seconds(),
		fig.reasons[order.ReasonCouponExhausted], order.ReasonCouponExhausted,
		fig.reasons[order.ReasonCouponAlreadyUsed], order.ReasonCouponAlreadyUsed, fig.releasedAfterIssue,
		fig.issued, fig.customers, fig.released, track.lastEnd().Sub(start).Seconds(), time.Since(began).Seconds())

	// The issue's assertions.
	if fig.issued > rc.coupons {
		t.Errorf("issued %d coupons, more than the %d there are", fig.issued, rc.coupons)
	}
	if fig.issued != int64(fig.completed) || int64(fig.customers) != fig.issued {
		t.Errorf("issued count %d, customer set %d, completed orders holding the coupon %d: want all equal", fig.issued, fig.customers, fig.completed)
	}
	for _, p := range fig.problems {
		t.Error(p)
	}
	if fig.issued == 0 || fig.reasons[order.ReasonCouponExhausted] == 0 || fig.reasons[order.ReasonCouponAlreadyUsed] == 0 || fig.releasedAfterIssue == 0 {
		t.Errorf("the race did not race: %d issued, %d exhausted, %d already used, %d given back",
			fig.issued, fig.reasons[order.ReasonCouponExhausted], fig.reasons[order.ReasonCouponAlreadyUsed], fig.releasedAfterIssue)
	}

	// Everything else chaos/check knows: one terminal event per saga, no
	// command or event twice, stock and payments conserved, the Redis
	// view, no dead letter.
	rep, err := check.Run(ctx, check.Config{
		Brokers: []string{kafka}, EngineRedis: engRedis, SimRedis: simRedis, OrdersRedis: simRedis,
		SagaType: order.Name, InitialStock: stock, InitialCoupons: map[string]int64{raceCode: rc.coupons},
		Expect: exps,
	})
	if err != nil {
		t.Fatalf("chaos/check: %v", err)
	}
	if !rep.OK() {
		t.Errorf("chaos/check:\n%s", rep)
	} else {
		n := 0
		for _, c := range rep.Checked {
			n += c
		}
		t.Logf("chaos/check: no anomalies (%d checks, %d of them on the coupon ledger)", n, rep.Checked[check.InvCoupons])
	}
}

// sendAt is when order i of n is sent in a load of duration d: the first
// quarter of the orders, among which the coupons run out, over the first
// three quarters of the time, when the kills fall; the rest after.
func sendAt(i, n int, d time.Duration) time.Duration {
	first := max(1, n/4)
	if i < first {
		return time.Duration(i) * (d * 3 / 4) / time.Duration(first)
	}
	return d*3/4 + time.Duration(i-first)*(d/4)/time.Duration(max(1, n-first))
}

func killCount(ps []*proc, more ...*proc) int {
	n := 0
	for _, p := range append(ps, more...) {
		p.mu.Lock()
		n += p.kills
		p.mu.Unlock()
	}
	return n
}

// raceOrders returns the orders of a race, each for the coupon, and what
// they must come to.
func raceOrders(rc couponRace) ([]order.Order, []check.Expectation) {
	rng := rand.New(rand.NewPCG(4, 4))
	var orders []order.Order
	var exps []check.Expectation
	for i := range rc.orders {
		o := order.Order{
			OrderID: fmt.Sprintf("race-%05d", i), CustomerID: fmt.Sprintf("c-%04d", rng.IntN(rc.customers)),
			AmountCents: 100 + rng.Int64N(50_000), Currency: "EUR", Coupon: raceCode,
			Items:  []order.Item{{SKU: fmt.Sprintf("sku-%d", 1+i%2), Qty: 1 + rng.Int64N(3)}},
			ShipTo: order.Address{Country: "DE", City: "Berlin"},
		}
		kind := check.KindCoupon
		switch {
		case i%10 == 3:
			o.AmountCents, kind = sim.DefaultPaymentLimitCents+1, check.KindDeclined
		case i%20 == 7:
			o.ShipTo, kind = order.Address{Country: "XX"}, check.KindUndeliverable
		}
		orders = append(orders, o)
		exps = append(exps, check.Expectation{ID: o.OrderID, Kind: kind})
	}
	for i := range exps {
		exps[i].Order = &orders[i]
	}
	return orders, exps
}

// figures is what a race left in the coupon ledger.
type figures struct {
	issued             int64
	customers          int
	completed          int
	released           int
	releasedAfterIssue int
	// reasons counts the compensated sagas by reason.
	reasons  map[string]int
	problems []string
}

// raceFigures reads the coupon ledger and checks it against the outcomes.
func raceFigures(ctx context.Context, t *testing.T, rdb *redis.Client, orders []order.Order, track *endTracker) figures {
	t.Helper()
	f := figures{reasons: make(map[string]int)}
	issued, err := rdb.Get(ctx, sim.CouponIssuedKey(raceCode)).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	customers, err := rdb.SMembers(ctx, sim.CouponCustomersKey(raceCode)).Result()
	if err != nil {
		t.Fatal(err)
	}
	f.issued, f.customers = issued, len(customers)
	inSet := make(map[string]bool, len(customers))
	for _, c := range customers {
		inSet[c] = true
	}
	claims := make([]*redis.MapStringStringCmd, len(orders))
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, o := range orders {
			claims[i] = p.HGetAll(ctx, sim.CouponClaimKey(o.OrderID))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	holder := make(map[string]string) // customer → completed order holding the coupon
	for i, o := range orders {
		claim := claims[i].Val()
		end, reason := track.end(o.OrderID)
		switch end {
		case message.EventSagaCompleted:
			f.completed++
			if claim["status"] != "issued" || claim["customer_id"] != o.CustomerID {
				f.problems = append(f.problems, fmt.Sprintf("order %s completed but its claim is %v", o.OrderID, claim))
			}
			if other, ok := holder[o.CustomerID]; ok {
				f.problems = append(f.problems, fmt.Sprintf("customer %s holds the coupon twice: orders %s and %s", o.CustomerID, other, o.OrderID))
			}
			holder[o.CustomerID] = o.OrderID
			if !inSet[o.CustomerID] {
				f.problems = append(f.problems, fmt.Sprintf("customer %s holds the coupon (order %s) but is not in the customer set", o.CustomerID, o.OrderID))
			}
		default:
			f.reasons[reason]++
			switch claim["status"] {
			case "":
			case "released":
				f.released++
				if claim["code"] != "" {
					f.releasedAfterIssue++ // it was issued, then given back
				}
			default:
				f.problems = append(f.problems, fmt.Sprintf("order %s ended %s (%s) but its claim is %v, not released", o.OrderID, end, reason, claim))
			}
		}
	}
	return f
}

// endTracker reads saga.order.events (read_committed) and keeps each
// saga's terminal events.
type endTracker struct {
	cl   *kgo.Client
	done chan struct{}

	mu   sync.Mutex
	ends map[string][]message.Event
	last time.Time
	// lastDone is when the last SagaCompleted was read.
	lastDone time.Time
}

func newEndTracker(t *testing.T, broker string) *endTracker {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics(message.Events(order.Name)),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	tr := &endTracker{cl: cl, done: make(chan struct{}), ends: make(map[string][]message.Event)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		defer close(tr.done)
		for {
			fs := cl.PollFetches(ctx)
			if ctx.Err() != nil || fs.IsClientClosed() {
				return
			}
			fs.EachRecord(func(r *kgo.Record) {
				var ev message.Event
				if json.Unmarshal(r.Value, &ev) != nil || !message.Terminal(ev.Type) {
					return
				}
				tr.mu.Lock()
				tr.ends[ev.SagaID] = append(tr.ends[ev.SagaID], ev)
				tr.last = time.Now()
				if ev.Type == message.EventSagaCompleted {
					tr.lastDone = tr.last
				}
				tr.mu.Unlock()
			})
		}
	}()
	t.Cleanup(func() { cancel(); <-tr.done; cl.Close() })
	return tr
}

// wait waits until every id has a terminal event and returns those that
// have none when timeout passes.
func (tr *endTracker) wait(ctx context.Context, ids []string, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		var missing []string
		tr.mu.Lock()
		for _, id := range ids {
			if len(tr.ends[id]) == 0 {
				missing = append(missing, id)
			}
		}
		tr.mu.Unlock()
		if len(missing) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return missing
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// end returns the saga's terminal event and its reason.
func (tr *endTracker) end(id string) (string, string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.ends[id]) == 0 {
		return "", ""
	}
	ev := tr.ends[id][0]
	return ev.Type, ev.Reason
}

func (tr *endTracker) lastCompleted() time.Time {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.lastDone
}

func (tr *endTracker) lastEnd() time.Time {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.last
}
