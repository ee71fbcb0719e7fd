package test

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/compensation"
	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// quickCouponOrder is the order saga with short deadlines, so that a
// coupon participant that does not answer exhausts its step within a test.
func quickCouponOrder(store order.Store) *saga.Definition {
	const d = 300 * time.Millisecond
	coupon := func(typ string) func(context.Context, *order.Order) (saga.Command, error) {
		return func(_ context.Context, o *order.Order) (saga.Command, error) {
			return saga.Command{Participant: order.Coupon, Type: typ,
				Payload: order.CouponCommand{OrderID: o.OrderID, CustomerID: o.CustomerID, Code: o.Coupon}}, nil
		}
	}
	steps := []saga.Step[order.Order]{{Name: order.StepReserveCoupon, Do: coupon(order.ReserveCoupon), Undo: coupon(order.ReleaseCoupon),
		ReplyTimeout: d, Skip: func(o *order.Order) bool { return o.Coupon == "" }}}
	cmd := func(participant, typ string, payload func(*order.Order) any) func(context.Context, *order.Order) (saga.Command, error) {
		return func(_ context.Context, o *order.Order) (saga.Command, error) {
			return saga.Command{Participant: participant, Type: typ, Payload: payload(o)}, nil
		}
	}
	inv := func(o *order.Order) any { return order.InventoryCommand{OrderID: o.OrderID, Items: o.Items} }
	pay := func(o *order.Order) any {
		return order.PaymentCommand{OrderID: o.OrderID, CustomerID: o.CustomerID, AmountCents: o.AmountCents, Currency: o.Currency}
	}
	ship := func(o *order.Order) any {
		return order.ShippingCommand{OrderID: o.OrderID, ShipTo: o.ShipTo, Items: o.Items}
	}
	steps = append(steps,
		saga.Step[order.Order]{Name: order.StepReserveInventory, Do: cmd(order.Inventory, order.ReserveInventory, inv), Undo: cmd(order.Inventory, order.ReleaseInventory, inv), ReplyTimeout: d},
		saga.Step[order.Order]{Name: order.StepAuthorizePayment, Do: cmd(order.Payment, order.AuthorizePayment, pay), Undo: cmd(order.Payment, order.CancelPayment, pay), ReplyTimeout: d},
		saga.Step[order.Order]{Name: order.StepScheduleShipping, Do: cmd(order.Shipping, order.ScheduleShipment, ship), Undo: cmd(order.Shipping, order.CancelShipment, ship), ReplyTimeout: d},
		saga.Step[order.Order]{Name: order.StepCompleteOrder, Local: store.Complete, UndoLocal: store.Cancel},
	)
	return saga.New(order.Name, steps...)
}

func couponOrder(id, customer, code string) order.Order {
	o := newOrder(id)
	o.CustomerID, o.Coupon = customer, code
	return o
}

// couponState returns a code's issued count and customers, and an order's
// claim.
func (e *env) couponState(code, orderID string) (int64, []string, map[string]string) {
	e.t.Helper()
	ctx := context.Background()
	issued, _ := e.sim.Get(ctx, sim.CouponIssuedKey(code)).Int64()
	customers, err := e.sim.SMembers(ctx, sim.CouponCustomersKey(code)).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	slices.Sort(customers)
	return issued, customers, e.hash(sim.CouponClaimKey(orderID))
}

func hasEvent(evs []message.Event, typ string) bool {
	return slices.ContainsFunc(evs, func(ev message.Event) bool { return ev.Type == typ })
}

// TestCouponParticipantOutage is write-up 004's failed issuance with the
// coupon participant down. The command waits in coupon.commands and the
// saga re-sends it (same message id): a participant back within the step's
// attempts issues the coupon once and the order completes. One that stays
// down longer makes the saga compensate; the participant, back, runs the
// late issue and then the release queued behind it, so the coupon and the
// customer are free again and nothing is half-issued: the customer's next
// order gets it.
func TestCouponParticipantOutage(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100})
	if err := sim.SeedCoupons(context.Background(), e.sim, map[string]int64{"SPRING": 2}); err != nil {
		t.Fatal(err)
	}
	e.startParticipants(order.Inventory, order.Payment, order.Shipping)
	eng := e.startEngine(quickCouponOrder(sim.NewOrderStore(e.sim)),
		orchestrator.Compensation(compensation.Policy{MaxAttempts: 200, Deadline: 300 * time.Millisecond}))
	defer eng.stop(t)

	// Down for less than the step's three attempts: only a delay.
	e.start(couponOrder("brief", "c-2", "SPRING"))
	waitFor(t, 30*time.Second, func() bool { return e.commands(order.Coupon)["brief/reserve-coupon/do attempt 2"] == 1 })
	stop := e.startParticipants(order.Coupon)
	evs := e.waitTerminal([]string{"brief"}, 30*time.Second)
	if got := terminal(evs["brief"]); got != message.EventSagaCompleted {
		t.Fatalf("brief: ended %s, want completed; events %+v", got, evs["brief"])
	}
	stop()

	// Down for longer: the saga gives up on the step and compensates.
	e.start(couponOrder("late", "c-1", "SPRING"))
	waitFor(t, 30*time.Second, func() bool { return hasEvent(e.events()["late"], message.EventCompensationStarted) })
	e.startParticipants(order.Coupon)
	evs = e.waitTerminal([]string{"late"}, 60*time.Second)
	if got := terminal(evs["late"]); got != message.EventSagaCompensated {
		t.Fatalf("late: ended %s, want compensated; events %+v", got, evs["late"])
	}
	issued, customers, claim := e.couponState("SPRING", "late")
	if claim["status"] != "released" || issued != 1 || !slices.Equal(customers, []string{"c-2"}) {
		t.Errorf("after the late order compensated: claim %v, issued %d, customers %v; want released, 1, [c-2]", claim, issued, customers)
	}
	for _, n := range e.commands(order.Coupon) {
		if n != 1 {
			t.Errorf("coupon commands %v: each send once", e.commands(order.Coupon))
			break
		}
	}

	// The coupon went back to the pool: the customer's next order gets it,
	// and the one after it finds none left.
	e.start(couponOrder("again", "c-1", "SPRING"))
	e.start(couponOrder("over", "c-3", "SPRING"))
	evs = e.waitTerminal([]string{"again", "over"}, 30*time.Second)
	if got := terminal(evs["again"]); got != message.EventSagaCompleted {
		t.Errorf("again: ended %s, want completed", got)
	}
	if got, last := terminal(evs["over"]), evs["over"][len(evs["over"])-1]; got != message.EventSagaCompensated || last.Reason != order.ReasonCouponExhausted {
		t.Errorf("over: ended %s (%s), want compensated for %s", got, last.Reason, order.ReasonCouponExhausted)
	}
	issued, customers, _ = e.couponState("SPRING", "again")
	if issued != 2 || !slices.Equal(customers, []string{"c-1", "c-2"}) {
		t.Errorf("issued %d to %v, want 2 to [c-1 c-2]", issued, customers)
	}
}

// TestCouponOrderRedriven is the DLQ side of write-up 004: a coupon order
// whose last step (recording the order: the write-up's database write)
// fails three times is dead-lettered (retries-exhausted) while the saga
// compensates, which gives its coupon back. Redriving the dead letter as
// sagactl does once the database is back is safe: the saga has ended, the
// record is dropped as stale, nothing is issued or released twice. The
// customer's new order takes the coupon.
func TestCouponOrderRedriven(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100})
	if err := sim.SeedCoupons(context.Background(), e.sim, map[string]int64{"SPRING": 1}); err != nil {
		t.Fatal(err)
	}
	e.startParticipants()
	store := &flakyStore{next: sim.NewOrderStore(e.sim)}
	store.down.Store(true)
	eng := e.startEngine(order.New(store))
	defer eng.stop(t)

	e.start(couponOrder("db-1", "c-1", "SPRING"))
	var dead []*kgo.Record
	waitFor(t, 60*time.Second, func() bool {
		dead = e.readAll(message.DLT(order.Name), 100*time.Millisecond)
		return len(dead) == 1
	})
	store.down.Store(false)
	evs := e.waitTerminal([]string{"db-1"}, 60*time.Second)
	if got := terminal(evs["db-1"]); got != message.EventSagaCompensated {
		t.Fatalf("db-1: ended %s, want compensated; events %+v", got, evs["db-1"])
	}
	info, err := dlq.Parse(dead[0])
	if err != nil {
		t.Fatal(err)
	}
	if info.Reason != orchestrator.ReasonExhausted {
		t.Fatalf("dead letter reason %s, want %s", info.Reason, orchestrator.ReasonExhausted)
	}
	issued, customers, claim := e.couponState("SPRING", "db-1")
	if claim["status"] != "released" || issued != 0 || len(customers) != 0 {
		t.Fatalf("after the compensation: claim %v, issued %d, customers %v; want released, 0, none", claim, issued, customers)
	}

	// Redrive as sagactl dlq redrive does: the original record, to its
	// partition, marked with where it was dead-lettered.
	hs := append(slices.Clone(info.Original.Headers), kgo.RecordHeader{Key: message.HeaderRedriveOf,
		Value: []byte(strconv.Itoa(int(dead[0].Partition)) + ":" + strconv.FormatInt(dead[0].Offset, 10))})
	redriven := &kgo.Record{Topic: info.Topic, Partition: info.Partition, Key: info.Original.Key, Value: info.Original.Value, Headers: hs}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(context.Background(), redriven).FirstErr(); err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(cl)
	waitFor(t, 30*time.Second, func() bool {
		offs, err := adm.FetchOffsets(context.Background(), "ksaga-order")
		if err != nil {
			return false
		}
		o, ok := offs.Lookup(message.Inbox(order.Name), redriven.Partition)
		return ok && o.At > redriven.Offset
	})
	evs = e.events()
	if got := terminal(evs["db-1"]); got != message.EventSagaCompensated {
		t.Errorf("after the redrive db-1 ended %s, want still compensated", got)
	}
	if n := len(e.readAll(message.DLT(order.Name), 300*time.Millisecond)); n != 1 {
		t.Errorf("%d dead letters after the redrive, want still 1", n)
	}
	if got, _, claim := e.couponState("SPRING", "db-1"); got != 0 || claim["status"] != "released" {
		t.Errorf("after the redrive: issued %d, claim %v; want 0 and released", got, claim)
	}

	e.start(couponOrder("db-2", "c-1", "SPRING"))
	evs = e.waitTerminal([]string{"db-2"}, 30*time.Second)
	if got := terminal(evs["db-2"]); got != message.EventSagaCompleted {
		t.Fatalf("db-2: ended %s, want completed; events %+v", got, evs["db-2"])
	}
	if issued, customers, _ := e.couponState("SPRING", "db-2"); issued != 1 || !slices.Equal(customers, []string{"c-1"}) {
		t.Errorf("issued %d to %v, want 1 to [c-1]", issued, customers)
	}
}
