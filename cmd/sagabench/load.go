package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/ctxtime"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// load is the sagas of one scenario: ids <prefix><i> for i in [0, n).
type load struct {
	name   string
	prefix string
	n      int
	// rate is the offered rate in sagas/s; 0 offers them all at once.
	rate float64
	// inFlight, when positive, offers a saga only while fewer than
	// inFlight have not ended (a closed loop; rate is ignored).
	inFlight int
	// failEvery declines the payment of every failEvery-th saga (0: none).
	failEvery int
	// keepLatencies keeps every saga's latency, for percentiles.
	keepLatencies bool
	// progress, when set, adds to the progress lines.
	progress func() string
}

// declined reports whether saga i's payment is declined.
func (l *load) declined(i int) bool { return l.failEvery > 0 && i%l.failEvery == l.failEvery-1 }

// failing returns how many sagas are declined.
func (l *load) failing() int {
	if l.failEvery == 0 {
		return 0
	}
	return l.n / l.failEvery
}

// withCoupon reports whether saga i carries a coupon: one in ten, half of
// them among the sagas that are declined in a failure scenario, whose
// coupon is then released by the compensation.
func withCoupon(i int) bool { return i%20 == 9 || i%20 == 14 }

// couponCode is the coupon of the benchmark's coupon orders; its limit
// (couponLimit) never runs out, so they complete like the others.
const (
	couponCode  = "bench-coupon"
	couponLimit = 1 << 50
)

// startRecord returns saga i's start request: one or two items of plentiful
// stock, shipped to a deliverable country, with an amount over the payment
// limit when the saga is to fail, and for one in ten a coupon (withCoupon)
// with a customer of its own, so that it is issued.
func (l *load) startRecord(i int) *kgo.Record {
	id := l.prefix + strconv.Itoa(i)
	amount := int64(100 + (i*7919)%50_000)
	if l.declined(i) {
		amount = sim.DefaultPaymentLimitCents + 1 + int64(i%1000)
	}
	o := order.Order{
		OrderID: id, CustomerID: "c-" + strconv.Itoa(i%500), AmountCents: amount, Currency: "EUR",
		Items:  []order.Item{{SKU: skus[i%len(skus)], Qty: 1 + int64(i%3)}},
		ShipTo: order.Address{Country: "DE", City: "Berlin"},
	}
	if i%4 == 0 {
		o.Items = append(o.Items, order.Item{SKU: skus[(i+1)%len(skus)], Qty: 1})
	}
	if withCoupon(i) {
		o.Coupon, o.CustomerID = couponCode, "coupon-"+id
	}
	v, _ := json.Marshal(o) // an Order always encodes
	return &kgo.Record{
		Topic: message.Inbox(order.Name), Key: []byte(id), Value: v,
		Headers: []kgo.RecordHeader{
			{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
			{Key: message.HeaderMessageID, Value: []byte("start-" + id)},
		},
	}
}

// tracker reads saga.order.events (read_committed) and records when each
// saga of a load ends.
type tracker struct {
	l      *load
	client *kgo.Client
	cancel context.CancelFunc
	done   chan struct{}
	// changed is signalled (without blocking) when a saga ends.
	changed chan struct{}

	mu        sync.Mutex
	offered   []int64 // Unix ns when saga i was offered; 0: not yet
	endAt     []int64 // Unix ns when saga i's terminal event was read
	ends      []uint8 // terminal events seen per saga
	latencies []time.Duration
	ended     int
	completed int
	// compensated counts SagaCompensated events by reason.
	compensated map[string]int
	failed      int
	duplicates  int
	firstOffer  time.Time
	lastEnd     time.Time
	offeredN    int
}

// newTracker starts reading saga.order.events from its current end.
func (b *bench) newTracker(ctx context.Context, l *load) (*tracker, error) {
	topic := message.Events(order.Name)
	ends, err := b.adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("list the end offsets of %s: %w", topic, err)
	}
	if err := ends.Error(); err != nil {
		return nil, fmt.Errorf("list the end offsets of %s: %w", topic, err)
	}
	parts := make(map[int32]kgo.Offset)
	ends.Each(func(o kadm.ListedOffset) { parts[o.Partition] = kgo.NewOffset().At(o.Offset) })
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(b.brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: parts}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(100*time.Millisecond),
	)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	t := &tracker{
		l: l, client: cl, cancel: cancel, done: make(chan struct{}), changed: make(chan struct{}, 1),
		offered: make([]int64, l.n), endAt: make([]int64, l.n), ends: make([]uint8, l.n), compensated: make(map[string]int),
	}
	if l.keepLatencies {
		t.latencies = make([]time.Duration, 0, l.n)
	}
	go t.run(ctx)
	return t, nil
}

func (t *tracker) run(ctx context.Context) {
	defer close(t.done)
	for {
		fs := t.client.PollFetches(ctx)
		if ctx.Err() != nil || fs.IsClientClosed() {
			return
		}
		now := time.Now()
		t.mu.Lock()
		ended := t.ended
		fs.EachRecord(func(r *kgo.Record) {
			var typ, reason string
			for _, h := range r.Headers {
				if h.Key == message.HeaderMessageType {
					typ = string(h.Value)
				}
			}
			if !message.Terminal(typ) {
				return
			}
			rest, ok := strings.CutPrefix(string(r.Key), t.l.prefix)
			if !ok {
				return
			}
			i, err := strconv.Atoi(rest)
			if err != nil || i < 0 || i >= t.l.n {
				return
			}
			if t.ends[i]++; t.ends[i] > 1 {
				t.duplicates++
				return
			}
			t.ended++
			t.lastEnd = now
			t.endAt[i] = now.UnixNano()
			if t.latencies != nil && t.offered[i] != 0 {
				t.latencies = append(t.latencies, now.Sub(time.Unix(0, t.offered[i])))
			}
			switch typ {
			case message.EventSagaCompleted:
				t.completed++
			case message.EventSagaCompensated:
				var ev message.Event
				if json.Unmarshal(r.Value, &ev) == nil {
					reason = ev.Reason
				}
				t.compensated[reason]++
			default:
				t.failed++
			}
		})
		changed := t.ended != ended
		t.mu.Unlock()
		if changed {
			select {
			case t.changed <- struct{}{}:
			default:
			}
		}
	}
}

// close stops the tracker and waits for it.
func (t *tracker) close() {
	t.cancel()
	<-t.done
	t.client.Close()
}

// offered records that saga i was offered at at.
func (t *tracker) offer(i int, at time.Time) {
	t.mu.Lock()
	t.offered[i] = at.UnixNano()
	if t.offeredN == 0 {
		t.firstOffer = at
	}
	t.offeredN++
	t.mu.Unlock()
}

// snapshot returns how many sagas were offered and have ended.
func (t *tracker) snapshot() (offered, ended int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.offeredN, t.ended
}

// offer produces the load's start requests: all at once, at l.rate, or
// keeping l.inFlight in flight. It returns once every record is
// acknowledged; a record that could not be produced fails the run.
func (b *bench) offer(ctx context.Context, l *load, t *tracker) error {
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	start := time.Now()
	for i := range l.n {
		at := time.Now()
		switch {
		case l.inFlight > 0:
			for {
				offered, ended := t.snapshot()
				if offered-ended < l.inFlight {
					break
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-t.changed:
				case <-time.After(100 * time.Millisecond):
				}
			}
			at = time.Now()
		case l.rate > 0:
			// Latency counts from the scheduled time, so that a sender that
			// falls behind does not hide the delay (coordinated omission).
			at = start.Add(time.Duration(float64(i) / l.rate * float64(time.Second)))
			if d := time.Until(at); d > 0 {
				ctxtime.Sleep(ctx, d)
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if p := failed.Load(); p != nil {
			return *p
		}
		t.offer(i, at)
		wg.Add(1)
		b.producer.Produce(ctx, l.startRecord(i), func(r *kgo.Record, err error) {
			defer wg.Done()
			if err != nil {
				err = fmt.Errorf("produce the start of saga %s: %w", r.Key, err)
				failed.CompareAndSwap(nil, &err)
			}
		})
	}
	wg.Wait()
	if p := failed.Load(); p != nil {
		return *p
	}
	return nil
}

// wait waits until every saga of the load has ended, failing when none ends
// for --stall-timeout or a child process exits. It prints progress every
// progressPeriod.
func (b *bench) wait(ctx context.Context, t *tracker, o *offering) error {
	lastEnded, lastChange, lastLog := -1, time.Now(), time.Now()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		select {
		case <-o.done:
			if o.err != nil {
				return o.err
			}
		default:
		}
		if err := b.alive(); err != nil {
			return err
		}
		offered, ended := t.snapshot()
		if ended >= t.l.n {
			return nil
		}
		if ended != lastEnded {
			lastEnded, lastChange = ended, time.Now()
		}
		if time.Since(lastChange) > b.cfg.stallTimeout && offered > ended {
			return fmt.Errorf("%s: no saga ended for %v (%d of %d ended; %d offered); see the logs of the engine and the participants",
				t.l.name, b.cfg.stallTimeout, ended, t.l.n, offered)
		}
		if time.Since(lastLog) >= progressPeriod {
			lastLog = time.Now()
			extra := ""
			if t.l.progress != nil {
				extra = "; " + t.l.progress()
			}
			b.logf("%s: %d of %d sagas ended%s", t.l.name, ended, t.l.n, extra)
		}
	}
}

// result is what a tracker saw.
type result struct {
	n, completed, failed, duplicates int
	compensated                      map[string]int
	elapsed                          time.Duration // first offer to last end
	p50, p99, max                    time.Duration
}

func (t *tracker) result() result {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := result{
		n: t.l.n, completed: t.completed, failed: t.failed, duplicates: t.duplicates,
		compensated: make(map[string]int), elapsed: t.lastEnd.Sub(t.firstOffer),
	}
	for k, v := range t.compensated {
		r.compensated[k] = v
	}
	if len(t.latencies) > 0 {
		ls := slices.Clone(t.latencies)
		slices.Sort(ls)
		r.p50, r.p99, r.max = quantile(ls, 0.50), quantile(ls, 0.99), ls[len(ls)-1]
	}
	return r
}

// quantile returns the q-quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	i := int(float64(len(sorted))*q+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// check reports outcomes that the load does not explain: duplicate terminal
// events and SagaFailed are errors; other differences are returned as
// warnings.
func (r result) check(l *load) (warnings []string, err error) {
	switch {
	case r.duplicates > 0:
		return nil, fmt.Errorf("%s: %d sagas ended more than once (a terminal event appeared twice): exactly-once is broken", l.name, r.duplicates)
	case r.failed > 0:
		return nil, fmt.Errorf("%s: %d sagas ended SagaFailed; want none (see the engine's log)", l.name, r.failed)
	}
	compensated := 0
	for reason, n := range r.compensated {
		compensated += n
		if reason != order.ReasonPaymentDeclined {
			warnings = append(warnings, fmt.Sprintf("%s: %d sagas compensated for %q", l.name, n, reason))
		}
	}
	if compensated != l.failing() {
		warnings = append(warnings, fmt.Sprintf("%s: %d sagas compensated, want %d", l.name, compensated, l.failing()))
	}
	return warnings, nil
}
