package check

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/chaos/check/localfirst"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
)

// partitions is the inbox's partition count in the runs of these tests.
const partitions = 6

// home returns the home partition of id.
func home(id string) int32 { return message.HomePartition(id, partitions) }

// elsewhere returns a partition that is not id's home.
func elsewhere(id string) int32 { return (home(id) + 1) % partitions }

// run is a consistent run: a completed order, a declined one (deleted
// after the retention), an undeliverable one, an outage, an order
// compensated on request, coupon orders (one that got the last coupon of
// its code, one refused because the code ran out, one of an unknown code,
// and a declined one whose coupon was given back), coupon orders that
// parked (one resumed by a Resume that completed, one compensated while
// parked, one resumed by its late reply that was refused), a poison record
// and a stray reply that landed off its home partition and was moved
// there. Each terminal event carries the order with what the replies added
// (withData).
func run(t *testing.T) ([]Expectation, Initial, *Data) {
	t.Helper()
	ord := func(id string, amount int64, qty int64) *order.Order {
		return &order.Order{OrderID: id, AmountCents: amount, Items: []order.Item{{SKU: "sku-1", Qty: qty}}}
	}
	exp := []Expectation{
		{ID: "o-1", Kind: KindComplete, Order: ord("o-1", 500, 2)},
		{ID: "o-2", Kind: KindDeclined, Order: ord("o-2", 900000, 1)},
		{ID: "o-3", Kind: KindUndeliverable, Order: ord("o-3", 700, 1)},
		{ID: "o-4", Kind: KindOutage, Order: ord("o-4", 300, 3)},
		{ID: "o-5", Kind: KindCompensate, Order: ord("o-5", 400, 1)},
		{ID: "o-6", Kind: KindCoupon, Order: coupon(ord("o-6", 100, 1), "c-6", "C1")},
		{ID: "o-7", Kind: KindCoupon, Order: coupon(ord("o-7", 100, 1), "c-7", "C1")},
		{ID: "o-8", Kind: KindCouponUnknown, Order: coupon(ord("o-8", 100, 1), "c-8", "NOPE")},
		{ID: "o-9", Kind: KindDeclined, Order: coupon(ord("o-9", 900000, 1), "c-9", "C1")},
		{ID: "l-1", Kind: KindLocalComplete, Transfer: &localfirst.Transfer{TransferID: "l-1", Account: "a-1", AmountCents: 70}},
		{ID: "l-2", Kind: KindLocalRefused, Transfer: &localfirst.Transfer{TransferID: "l-2", Account: "a-1", AmountCents: 20, Refuse: true}},
		{ID: "l-3", Kind: KindLocalOutage, Transfer: &localfirst.Transfer{TransferID: "l-3", Account: "a-2", AmountCents: 30}},
		{ID: "l-4", Kind: KindLocalCompensate, Transfer: &localfirst.Transfer{TransferID: "l-4", Account: "a-2", AmountCents: 40}},
		{ID: "o-10", Kind: KindCoupon, Order: coupon(ord("o-10", 200, 1), "c-10", "C2"), Resumed: true},
		{ID: "o-11", Kind: KindParkCompensate, Order: coupon(ord("o-11", 200, 1), "c-11", "C2")},
		{ID: "o-12", Kind: KindCoupon, Order: coupon(ord("o-12", 200, 1), "c-12", "C2")},
		{ID: "p-1", Kind: KindPoison, Poison: orchestrator.ReasonUndecodable, Marker: "m-1"},
		{ID: "s-1", Kind: KindPoison, Poison: orchestrator.ReasonUnknownSaga, Marker: "m-2",
			Landed: &Landing{Partition: elsewhere("s-1"), Offset: 17}},
	}
	d := &Data{
		Partitions: partitions,
		Events:     make(map[string][]message.Event), States: make(map[string][]byte),
		StatePartitions: make(map[string][]int32),
		Redis:           make(map[string]RedisState), Commands: make(map[CommandKey]int),
		Stock:        map[string]int64{"sku-1": 96},
		Reservations: make(map[string]map[string]string),
		Payments:     make(map[string]map[string]string),
		Shipments:    make(map[string]map[string]string),
		Orders:       make(map[string]map[string]string),
		Coupons: map[string]CouponLedger{
			"C1": {Limit: 1, HasLimit: true, Issued: 1, Customers: []string{"c-6"}},
			"C2": {Limit: 1, HasLimit: true, Issued: 1, Customers: []string{"c-10"}},
		},
		CouponClaims: make(map[string]map[string]string),
		Holds:        make(map[string]map[string]string),
		Held:         map[string]int64{"a-1": 70, "a-2": 0},
		Approvals:    make(map[string]map[string]string),
	}
	end := func(id string, story ...string) {
		evs, st := tell(t, id, story...)
		d.Events[id] = evs
		d.States[id] = st
		d.StatePartitions[id] = []int32{home(id)}
		d.Redis[id] = RedisState{Key: orchestrator.StateKey("order", home(id), id), Partition: home(id), Version: fmt.Sprint(version(st)), State: st}
		d.Commands[CommandKey{"inventory.commands", id, id + "/reserve-inventory/do", "1"}] = 1
	}
	const (
		coup, inv, pay, ship, done = order.StepReserveCoupon, order.StepReserveInventory, order.StepAuthorizePayment, order.StepScheduleShipping, order.StepCompleteOrder
	)
	end("o-1", "+"+inv, "+"+pay, "+"+ship, "+"+done, message.EventSagaCompleted)
	d.Reservations["o-1"] = map[string]string{"status": "reserved", "item:sku-1": "2"}
	d.Payments["o-1"] = map[string]string{"status": "authorized", "amount_cents": "500", "authorization_id": "auth-o-1"}
	d.Shipments["o-1"] = map[string]string{"status": "scheduled", "tracking_number": "trk-o-1"}
	d.Orders["o-1"] = map[string]string{"status": "completed", "amount_cents": "500", "fence": "7"}
	end("o-2", "+"+inv, "x"+pay+" "+order.ReasonPaymentDeclined, "!"+order.ReasonPaymentDeclined, "~"+inv, message.EventSagaCompensated)
	d.Reservations["o-2"] = map[string]string{"status": "released", "item:sku-1": "1"}
	d.Retention = time.Hour
	expire(t, d, "o-2", d.Retention+time.Second)
	end("o-3", "+"+pay, "+"+inv, "x"+ship+" "+order.ReasonUndeliverable, "!"+order.ReasonUndeliverable, "~"+pay, "~"+inv, message.EventSagaCompensated)
	d.Reservations["o-3"] = map[string]string{"status": "released", "item:sku-1": "1"}
	d.Payments["o-3"] = map[string]string{"status": "cancelled", "amount_cents": "700", "authorization_id": "auth-o-3", "cancelled_authorization_id": "auth-o-3"}
	end("o-4", "+"+inv, "+"+pay, "+"+ship, "x"+done+" "+orchestrator.ReasonExhausted, "!"+orchestrator.ReasonExhausted,
		"~"+done, "~"+ship, "~"+pay, "~"+inv, message.EventSagaCompensated)
	d.Reservations["o-4"] = map[string]string{"status": "released", "item:sku-1": "3"}
	d.Payments["o-4"] = map[string]string{"status": "cancelled", "amount_cents": "300", "authorization_id": "auth-o-4", "cancelled_authorization_id": "auth-o-4"}
	d.Shipments["o-4"] = map[string]string{"status": "cancelled", "tracking_number": "trk-o-4"}
	d.Orders["o-4"] = map[string]string{"status": "cancelled", "fence": "9"}
	end("o-5", "+"+inv, "x"+pay+" compensation requested: "+CompensateReason, "!compensation requested: "+CompensateReason,
		"~"+pay, "~"+inv, message.EventSagaCompensated)
	d.Reservations["o-5"] = map[string]string{"status": "released", "item:sku-1": "1"}
	end("o-6", "+"+coup, "+"+inv, "+"+pay, "+"+ship, "+"+done, message.EventSagaCompleted)
	d.CouponClaims["o-6"] = map[string]string{"status": "issued", "code": "C1", "customer_id": "c-6"}
	d.Reservations["o-6"] = map[string]string{"status": "reserved", "item:sku-1": "1"}
	d.Payments["o-6"] = map[string]string{"status": "authorized", "amount_cents": "100", "authorization_id": "auth-o-6"}
	d.Shipments["o-6"] = map[string]string{"status": "scheduled", "tracking_number": "trk-o-6"}
	d.Orders["o-6"] = map[string]string{"status": "completed", "amount_cents": "100", "fence": "9"}
	refused := func(id, reason string) {
		end(id, "x"+coup+" "+reason, "!"+reason, message.EventSagaCompensated)
	}
	refused("o-7", order.ReasonCouponExhausted)
	refused("o-8", order.ReasonCouponUnknown)
	end("o-9", "+"+coup, "+"+inv, "x"+pay+" "+order.ReasonPaymentDeclined, "!"+order.ReasonPaymentDeclined, "~"+inv, "~"+coup, message.EventSagaCompensated)
	d.CouponClaims["o-9"] = map[string]string{"status": "released", "code": "C1", "customer_id": "c-9"}
	d.Reservations["o-9"] = map[string]string{"status": "released", "item:sku-1": "1"}
	// o-10 parked at reserve-coupon and was resumed: its coupon command
	// went out again from attempt 1, with the same message id.
	end("o-10", "P"+coup+" no reply after 3 attempts", "R"+coup+" resumed: "+ResumeReason, "+"+coup, "+"+inv, "+"+pay, "+"+ship, "+"+done, message.EventSagaCompleted)
	d.Commands[CommandKey{"coupon.commands", "o-10", "o-10/reserve-coupon/do", "1"}] = 2
	d.CouponClaims["o-10"] = map[string]string{"status": "issued", "code": "C2", "customer_id": "c-10"}
	d.Reservations["o-10"] = map[string]string{"status": "reserved", "item:sku-1": "1"}
	d.Payments["o-10"] = map[string]string{"status": "authorized", "amount_cents": "200", "authorization_id": "auth-o-10"}
	d.Shipments["o-10"] = map[string]string{"status": "scheduled", "tracking_number": "trk-o-10"}
	d.Orders["o-10"] = map[string]string{"status": "completed", "amount_cents": "200", "fence": "12"}
	// o-11 parked and was compensated: its coupon, issued when the
	// coupon participant came back, was given back.
	end("o-11", "P"+coup+" no reply after 3 attempts", "x"+coup+" compensation requested: "+ParkCompensateReason,
		"!compensation requested: "+ParkCompensateReason, "~"+coup, message.EventSagaCompensated)
	d.CouponClaims["o-11"] = map[string]string{"status": "released", "code": "C2", "customer_id": "c-11"}
	// o-12 parked, and its late reply refused it.
	end("o-12", "P"+coup+" no reply after 3 attempts", "R"+coup+" "+ReplyArrivedReason, "x"+coup+" "+order.ReasonCouponExhausted,
		"!"+order.ReasonCouponExhausted, message.EventSagaCompensated)
	const hold, approve = localfirst.StepHold, localfirst.StepApprove
	end("l-1", "+"+hold, "+"+approve, message.EventSagaCompleted)
	d.Holds["l-1"] = map[string]string{"status": "held", "amount_cents": "70", "account": "a-1", "fence": "1", "applies": "1"}
	d.Approvals["l-1"] = map[string]string{"status": "approved"}
	end("l-2", "+"+hold, "x"+approve+" "+localfirst.ReasonRefused, "!"+localfirst.ReasonRefused, "~"+hold, message.EventSagaCompensated)
	d.Holds["l-2"] = map[string]string{"status": "released", "amount_cents": "20", "account": "a-1", "fence": "4", "applies": "1"}
	// l-3's hold-funds hung on every attempt: its start is dead-lettered
	// (below), no saga was started and no hold stands.
	end("l-4", "+"+hold, "x"+approve+" compensation requested: "+CompensateReason, "!compensation requested: "+CompensateReason,
		"~"+approve, "~"+hold, message.EventSagaCompensated)
	d.Holds["l-4"] = map[string]string{"status": "released", "amount_cents": "40", "account": "a-2", "fence": "5", "applies": "1"}
	d.Approvals["l-4"] = map[string]string{"status": "withdrawn"}
	d.DeadLetters = []DeadLetter{
		{Key: "p-1", Reason: orchestrator.ReasonUndecodable, Marker: "m-1"},
		{Key: "o-4", Reason: orchestrator.ReasonExhausted, Exception: "complete order: connection refused"},
		{Key: "s-1", Reason: orchestrator.ReasonUnknownSaga, Marker: "m-2", ForwardedFrom: fmt.Sprintf("%d/17", elsewhere("s-1"))},
		{Key: "l-3", Reason: orchestrator.ReasonExhausted, Exception: "step hold-funds: saga code did not return in time (3s)"},
	}
	withData(t, exp, d)
	return exp, Initial{Stock: map[string]int64{"sku-1": 100}, Coupons: map[string]int64{"C1": 1, "C2": 1}}, d
}

// withData puts in the terminal event of each order of d the order it
// started with and what its replies added: the authorization id its
// payment holds, and the tracking number its shipment holds, as the engine
// folds them in.
func withData(t *testing.T, exp []Expectation, d *Data) {
	t.Helper()
	for _, e := range exp {
		if e.Order == nil {
			continue
		}
		o := *e.Order
		o.AuthorizationID, o.TrackingNumber = d.Payments[e.ID]["authorization_id"], d.Shipments[e.ID]["tracking_number"]
		b, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		for i, ev := range d.Events[e.ID] {
			if message.Terminal(ev.Type) {
				d.Events[e.ID][i].Data = b
			}
		}
	}
}

// tell returns the events of saga id told by story, one version each, and
// its last state. A story is a list of "+step" (StepSucceeded), "xstep
// reason" (StepFailed), "!reason" (CompensationStarted), "~step"
// (StepCompensated), "Pstep reason" (SagaParked), "Rstep reason"
// (SagaResumed) and a terminal event type, which names the step whose
// compensation was given up as "SagaFailed step".
func tell(t *testing.T, id string, story ...string) ([]message.Event, []byte) {
	t.Helper()
	evs := []message.Event{{SagaID: id, Type: message.EventSagaStarted, State: message.StatusRunning, Version: 1}}
	st := orchestrator.State{ID: id, Status: message.StatusRunning, Undoing: -1}
	for i, s := range story {
		ev := message.Event{SagaID: id, Version: int64(i + 2), State: st.Status}
		switch s[0] {
		case '+':
			ev.Type, ev.Step = message.EventStepSucceeded, s[1:]
		case 'x':
			ev.Type = message.EventStepFailed
			ev.Step, ev.Reason, _ = strings.Cut(s[1:], " ")
		case '!':
			st.Status = message.StatusCompensating
			ev.Type, ev.Reason, ev.State = message.EventCompensationStarted, s[1:], st.Status
		case 'P':
			st.Status = message.StatusParked
			ev.Type, ev.State = message.EventSagaParked, st.Status
			ev.Step, ev.Reason, _ = strings.Cut(s[1:], " ")
		case 'R':
			st.Status = message.StatusRunning
			ev.Type, ev.State = message.EventSagaResumed, st.Status
			ev.Step, ev.Reason, _ = strings.Cut(s[1:], " ")
		case '~':
			ev.Type, ev.Step = message.EventStepCompensated, s[1:]
			i := slices.Index(orderSteps, s[1:])
			if i < 0 {
				i = slices.Index(localSteps, s[1:])
			}
			st.Undone = append(st.Undone, i)
		default:
			ev.Type, ev.Step, _ = strings.Cut(s, " ")
			st.Status = statusOf[ev.Type]
			ev.State = st.Status
		}
		evs = append(evs, ev)
	}
	st.Version = evs[len(evs)-1].Version
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return evs, b
}

// ended is when the sagas that expire in these tests ended.
var ended = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

// expire deletes saga id of d after it ended (at ended): a tombstone
// written after that deletes its last state record, and its Redis key
// goes.
func expire(t *testing.T, d *Data, id string, after time.Duration) {
	t.Helper()
	var st orchestrator.State
	if err := json.Unmarshal(d.States[id], &st); err != nil {
		t.Fatal(err)
	}
	st.Updated = ended
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	delete(d.States, id)
	d.addState(id, home(id), 10, ended.Add(-time.Second), b)
	d.addState(id, home(id), 11, ended.Add(after), nil)
	delete(d.Redis, id)
}

// coupon gives o a coupon of code, for customer.
func coupon(o *order.Order, customer, code string) *order.Order {
	o.CustomerID, o.Coupon = customer, code
	return o
}

func TestConsistentRunPasses(t *testing.T) {
	exp, initial, d := run(t)
	rep := Analyze(exp, initial, d)
	if !rep.OK() {
		t.Fatalf("a consistent run has anomalies:\n%s", rep)
	}
	for _, inv := range invariants {
		if rep.Checked[inv] == 0 {
			t.Errorf("invariant %s checked nothing", inv)
		}
	}
	if got := rep.Outcomes[message.EventSagaCompleted]; got != 4 {
		t.Errorf("report counts %d completed sagas, want 4", got)
	}
}

// Each way a run can break exactly-once or lose data is reported under its
// invariant, naming the saga.
func TestAnomalies(t *testing.T) {
	state := func(id string, version int64, status string) []byte {
		b, _ := json.Marshal(orchestrator.State{ID: id, Version: version, Status: status})
		return b
	}
	cases := []struct {
		name   string
		break_ func(exp []Expectation, d *Data) []Expectation
		inv    string
		id     string
	}{
		{"no terminal event", func(e []Expectation, d *Data) []Expectation {
			d.Events["o-2"] = d.Events["o-2"][:1]
			return e
		}, InvTerminal, "o-2"},
		{"two terminal events", func(e []Expectation, d *Data) []Expectation {
			d.Events["o-1"] = append(d.Events["o-1"], message.Event{SagaID: "o-1", Type: message.EventSagaCompleted, Version: 6})
			return e
		}, InvTerminal, "o-1"},
		{"wrong outcome", func(e []Expectation, d *Data) []Expectation {
			e[0].Kind = KindDeclined
			return e
		}, InvTerminal, "o-1"},
		{"event committed twice", func(e []Expectation, d *Data) []Expectation {
			d.Events["o-3"] = append(d.Events["o-3"], d.Events["o-3"][0])
			return e
		}, InvDuplicate, "o-3"},
		{"command committed twice", func(e []Expectation, d *Data) []Expectation {
			d.Commands[CommandKey{"inventory.commands", "o-1", "o-1/reserve-inventory/do", "1"}] = 2
			return e
		}, InvDuplicate, "o-1"},
		{"saga still running", func(e []Expectation, d *Data) []Expectation {
			d.States["o-3"] = state("o-3", 6, message.StatusCompensating)
			r := d.Redis["o-3"]
			r.Version, r.State = "6", d.States["o-3"]
			d.Redis["o-3"] = r
			return e
		}, InvState, "o-3"},
		{"no state record", func(e []Expectation, d *Data) []Expectation {
			delete(d.States, "o-3")
			delete(d.Redis, "o-3")
			return e
		}, InvState, "o-3"},
		{"redis holds an older state", func(e []Expectation, d *Data) []Expectation {
			r := d.Redis["o-1"]
			r.Version, r.State = "4", state("o-1", 4, message.StatusRunning)
			d.Redis["o-1"] = r
			return e
		}, InvRedis, "o-1"},
		{"redis lost a state", func(e []Expectation, d *Data) []Expectation {
			delete(d.Redis, "o-4")
			return e
		}, InvRedis, "o-4"},
		{"stock taken twice", func(e []Expectation, d *Data) []Expectation {
			d.Stock["sku-1"] = 95
			return e
		}, InvStock, "sku-1"},
		{"stock not released", func(e []Expectation, d *Data) []Expectation {
			d.Reservations["o-2"]["status"] = "reserved"
			return e
		}, InvStock, "o-2"},
		{"payment not cancelled", func(e []Expectation, d *Data) []Expectation {
			d.Payments["o-3"]["status"] = "authorized"
			return e
		}, InvPayments, "o-3"},
		{"payment of the wrong amount", func(e []Expectation, d *Data) []Expectation {
			d.Payments["o-1"]["amount_cents"] = "1000"
			return e
		}, InvPayments, "o-1"},
		{"shipment of a compensated order", func(e []Expectation, d *Data) []Expectation {
			d.Shipments["o-2"] = map[string]string{"status": "scheduled"}
			return e
		}, InvShipments, "o-2"},
		{"no shipment for a completed order", func(e []Expectation, d *Data) []Expectation {
			delete(d.Shipments, "o-1")
			return e
		}, InvShipments, "o-1"},
		{"poison record not dead-lettered", func(e []Expectation, d *Data) []Expectation {
			d.DeadLetters = d.DeadLetters[1:]
			return e
		}, InvDLQ, "m-1"},
		{"poison record dead-lettered twice", func(e []Expectation, d *Data) []Expectation {
			d.DeadLetters = append(d.DeadLetters, d.DeadLetters[0])
			return e
		}, InvDLQ, "m-1"},
		{"poison record with the wrong reason", func(e []Expectation, d *Data) []Expectation {
			d.DeadLetters[0].Reason = orchestrator.ReasonUnknownType
			return e
		}, InvDLQ, "m-1"},
		{"valid record dead-lettered", func(e []Expectation, d *Data) []Expectation {
			d.DeadLetters = append(d.DeadLetters, DeadLetter{Key: "o-1", Reason: orchestrator.ReasonExhausted})
			return e
		}, InvDLQ, "o-1"},
		{"outage order not dead-lettered", func(e []Expectation, d *Data) []Expectation {
			d.DeadLetters = d.DeadLetters[:1]
			return e
		}, InvDLQ, "o-4"},
		{"participant dead letter", func(e []Expectation, d *Data) []Expectation {
			d.ParticipantDeadLetters = []DeadLetter{{Key: "o-1", Reason: "undecodable"}}
			return e
		}, InvDLQ, "o-1"},
		{"poison started a saga", func(e []Expectation, d *Data) []Expectation {
			d.Events["p-1"] = []message.Event{{SagaID: "p-1", Type: message.EventSagaStarted, Version: 1}}
			return e
		}, InvStray, "p-1"},
		{"poison caused a payment", func(e []Expectation, d *Data) []Expectation {
			d.Payments["p-1"] = map[string]string{"status": "authorized", "amount_cents": "1"}
			return e
		}, InvStray, "p-1"},
		{"redis holds a state under two keys", func(e []Expectation, d *Data) []Expectation {
			r := d.Redis["o-1"]
			r.Key, r.Partition = orchestrator.StateKey("order", elsewhere("o-1"), "o-1"), elsewhere("o-1")
			d.RedisDuplicates = map[string][]RedisState{"o-1": {r}}
			return e
		}, InvRedis, "o-1"},
		{"state record off its home partition", func(e []Expectation, d *Data) []Expectation {
			d.StatePartitions["o-2"] = append(d.StatePartitions["o-2"], elsewhere("o-2"))
			return e
		}, InvHome, "o-2"},
		{"redis key tagged with another partition", func(e []Expectation, d *Data) []Expectation {
			r := d.Redis["o-3"]
			r.Key, r.Partition = orchestrator.StateKey("order", elsewhere("o-3"), "o-3"), elsewhere("o-3")
			d.Redis["o-3"] = r
			return e
		}, InvHome, "o-3"},
		{"stray record handled where it landed", func(e []Expectation, d *Data) []Expectation {
			d.DeadLetters[2].ForwardedFrom = ""
			return e
		}, InvHome, "m-2"},
		{"record forwarded from its home partition", func(e []Expectation, d *Data) []Expectation {
			e[len(e)-1].Landed.Partition = home("s-1")
			return e
		}, InvHome, "m-2"},
		{"completed order missing from the orders store", func(e []Expectation, d *Data) []Expectation {
			delete(d.Orders, "o-1")
			return e
		}, InvOrders, "o-1"},
		{"late complete-order after the saga was compensated", func(e []Expectation, d *Data) []Expectation {
			d.Orders["o-4"]["status"] = "completed"
			return e
		}, InvOrders, "o-4"},
		{"orders store with the wrong amount", func(e []Expectation, d *Data) []Expectation {
			d.Orders["o-1"]["amount_cents"] = "501"
			return e
		}, InvOrders, "o-1"},
		{"poison completed an order", func(e []Expectation, d *Data) []Expectation {
			d.Orders["p-1"] = map[string]string{"status": "completed"}
			return e
		}, InvStray, "p-1"},
		{"compensate order compensated without the request", func(e []Expectation, d *Data) []Expectation {
			for i := range d.Events["o-5"] {
				d.Events["o-5"][i].Reason = ""
			}
			return e
		}, InvTerminal, "o-5"},
		{"compensate order completed after applying the request", func(e []Expectation, d *Data) []Expectation {
			evs := d.Events["o-5"]
			evs[len(evs)-1].Type = message.EventSagaCompleted
			return e
		}, InvTerminal, "o-5"},
		{"more coupons issued than the limit", func(e []Expectation, d *Data) []Expectation {
			d.Coupons["C1"] = CouponLedger{Limit: 1, HasLimit: true, Issued: 2, Customers: []string{"c-6", "c-7"}}
			d.CouponClaims["o-7"] = map[string]string{"status": "issued", "code": "C1", "customer_id": "c-7"}
			return e
		}, InvCoupons, "C1"},
		{"issued count off the completed orders", func(e []Expectation, d *Data) []Expectation {
			l := d.Coupons["C1"]
			l.Issued = 0
			d.Coupons["C1"] = l
			return e
		}, InvCoupons, "C1"},
		{"customer set holds a customer who holds no coupon", func(e []Expectation, d *Data) []Expectation {
			l := d.Coupons["C1"]
			l.Customers = append(l.Customers, "c-9")
			d.Coupons["C1"] = l
			return e
		}, InvCoupons, "C1"},
		{"customer missing from the set", func(e []Expectation, d *Data) []Expectation {
			l := d.Coupons["C1"]
			l.Customers = nil
			d.Coupons["C1"] = l
			return e
		}, InvCoupons, "C1"},
		{"one customer holds the coupon twice", func(e []Expectation, d *Data) []Expectation {
			e[6].Order.CustomerID = "c-6"
			d.Events["o-7"] = []message.Event{{SagaID: "o-7", Type: message.EventSagaStarted, Version: 1}, {SagaID: "o-7", Type: message.EventSagaCompleted, Version: 5}}
			d.CouponClaims["o-7"] = map[string]string{"status": "issued", "code": "C1", "customer_id": "c-6"}
			return e
		}, InvCoupons, "C1"},
		{"limit key changed", func(e []Expectation, d *Data) []Expectation {
			l := d.Coupons["C1"]
			l.Limit = 5
			d.Coupons["C1"] = l
			return e
		}, InvCoupons, "C1"},
		{"coupon of a compensated order not released", func(e []Expectation, d *Data) []Expectation {
			d.CouponClaims["o-9"]["status"] = "issued"
			return e
		}, InvCoupons, "o-9"},
		{"completed coupon order without its claim", func(e []Expectation, d *Data) []Expectation {
			delete(d.CouponClaims, "o-6")
			return e
		}, InvCoupons, "o-6"},
		{"order without a coupon touched the coupon ledger", func(e []Expectation, d *Data) []Expectation {
			d.CouponClaims["o-1"] = map[string]string{"status": "released"}
			return e
		}, InvCoupons, "o-1"},
		{"coupon order compensated for another reason", func(e []Expectation, d *Data) []Expectation {
			d.Events["o-7"][1].Reason = order.ReasonOutOfStock
			return e
		}, InvTerminal, "o-7"},
		{"unknown coupon issued", func(e []Expectation, d *Data) []Expectation {
			d.Events["o-8"] = d.Events["o-8"][:1]
			d.Events["o-8"] = append(d.Events["o-8"], message.Event{SagaID: "o-8", Type: message.EventSagaCompleted, Version: 5})
			return e
		}, InvTerminal, "o-8"},
		{"hold of a refused transfer stands", func(e []Expectation, d *Data) []Expectation {
			d.Holds["l-2"]["status"] = "held"
			d.Held["a-1"] += 20
			return e
		}, InvLocal, "l-2"},
		{"hold taken twice", func(e []Expectation, d *Data) []Expectation {
			d.Holds["l-1"]["applies"] = "2"
			return e
		}, InvLocal, "l-1"},
		{"account total off its completed transfers", func(e []Expectation, d *Data) []Expectation {
			d.Held["a-1"] = 140
			return e
		}, InvLocal, "a-1"},
		{"late hold of a transfer whose start was dead-lettered", func(e []Expectation, d *Data) []Expectation {
			d.Holds["l-3"] = map[string]string{"status": "held", "amount_cents": "30", "account": "a-2", "fence": "1", "applies": "1"}
			d.Held["a-2"] = 30
			return e
		}, InvLocal, "l-3"},
		{"local-first start lost without a dead letter", func(e []Expectation, d *Data) []Expectation {
			d.DeadLetters = d.DeadLetters[:len(d.DeadLetters)-1]
			return e
		}, InvDLQ, "l-3"},
		{"completed transfer not approved", func(e []Expectation, d *Data) []Expectation {
			delete(d.Approvals, "l-1")
			return e
		}, InvLocal, "l-1"},
		{"refused transfer compensated for another reason", func(e []Expectation, d *Data) []Expectation {
			d.Events["l-2"][2].Reason = "no reply after 3 attempts"
			return e
		}, InvTerminal, "l-2"},
		{"transfer completed after its Local step gave up", func(e []Expectation, d *Data) []Expectation {
			e[9].Kind = KindLocalOutage
			return e
		}, InvTerminal, "l-1"},
		{"resumed command sent more often than its resumes allow", func(e []Expectation, d *Data) []Expectation {
			d.Commands[CommandKey{"coupon.commands", "o-10", "o-10/reserve-coupon/do", "1"}] = 3
			return e
		}, InvDuplicate, "o-10"},
		{"saga ended while parked", func(e []Expectation, d *Data) []Expectation {
			evs := d.Events["o-12"]
			d.Events["o-12"] = append(evs[:2:2], evs[len(evs)-1])
			return e
		}, InvPark, "o-12"},
		{"Resume sent while parked but not taken", func(e []Expectation, d *Data) []Expectation {
			d.Events["o-10"][2].Reason = ReplyArrivedReason
			return e
		}, InvPark, "o-10"},
		{"parked saga compensated for another reason", func(e []Expectation, d *Data) []Expectation {
			d.Events["o-11"][2].Reason = "compensation requested: ops"
			return e
		}, InvPark, "o-11"},
		{"park-compensate order completed", func(e []Expectation, d *Data) []Expectation {
			evs := d.Events["o-11"]
			evs[len(evs)-1].Type = message.EventSagaCompleted
			return e
		}, InvTerminal, "o-11"},
		{"terminal event without data", func(e []Expectation, d *Data) []Expectation {
			evs := d.Events["o-1"]
			evs[len(evs)-1].Data = nil
			return e
		}, InvData, "o-1"},
		{"completed order names another authorization", func(e []Expectation, d *Data) []Expectation {
			d.Payments["o-6"]["authorization_id"] = "auth-o-1"
			return e
		}, InvData, "o-6"},
		{"completed order without its tracking number", func(e []Expectation, d *Data) []Expectation {
			evs := d.Events["o-10"]
			evs[len(evs)-1].Data = []byte(strings.Replace(string(evs[len(evs)-1].Data), "trk-o-10", "", 1))
			return e
		}, InvData, "o-10"},
		{"terminal data of another order", func(e []Expectation, d *Data) []Expectation {
			evs := d.Events["o-3"]
			evs[len(evs)-1].Data = d.Events["o-4"][len(d.Events["o-4"])-1].Data
			return e
		}, InvData, "o-3"},
		{"payment cancelled under another authorization", func(e []Expectation, d *Data) []Expectation {
			d.Payments["o-4"]["cancelled_authorization_id"] = "auth-o-3"
			return e
		}, InvData, "o-4"},
		{"payment cancelled without naming the saga's authorization", func(e []Expectation, d *Data) []Expectation {
			delete(d.Payments["o-3"], "cancelled_authorization_id")
			return e
		}, InvData, "o-3"},
		{"poison claimed a coupon", func(e []Expectation, d *Data) []Expectation {
			d.CouponClaims["p-1"] = map[string]string{"status": "issued", "code": "C1", "customer_id": "c-1"}
			return e
		}, InvStray, "p-1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			exp, initial, d := run(t)
			exp = c.break_(exp, d)
			rep := Analyze(exp, initial, d)
			found := false
			for _, a := range rep.Anomalies {
				if a.Invariant == c.inv && a.ID == c.id {
					found = true
				}
			}
			if !found {
				t.Fatalf("want a %s anomaly about %s; report:\n%s", c.inv, c.id, rep)
			}
			if !strings.Contains(rep.String(), fmt.Sprintf("%s: %s:", c.inv, c.id)) {
				t.Errorf("the report does not list the anomaly:\n%s", rep)
			}
		})
	}
}

func TestParseStateKey(t *testing.T) {
	cases := []struct {
		key  string
		id   string
		part int32
	}{
		{orchestrator.StateKey("order", 3, "o-1"), "o-1", 3},
		{orchestrator.StateKey("order", 0, "id:with:state:colons"), "id:with:state:colons", 0},
		{"ksaga:{trip:2}:state:o-1", "o-1", -1},
		{"ksaga:order:state:o-1", "ksaga:order:state:o-1", -1},
	}
	for _, c := range cases {
		id, p := parseStateKey("order", c.key)
		if id != c.id || p != c.part {
			t.Errorf("parseStateKey(%q) = %q, %d; want %q, %d", c.key, id, p, c.id, c.part)
		}
	}
}

// The history rule accepts every story the engine tells and names what is
// wrong with one it cannot tell.
func TestHistory(t *testing.T) {
	const (
		coup, inv, pay, ship, done = order.StepReserveCoupon, order.StepReserveInventory, order.StepAuthorizePayment, order.StepScheduleShipping, order.StepCompleteOrder
	)
	completed := []string{"+" + inv, "+" + pay, "+" + ship, "+" + done, message.EventSagaCompleted}
	declined := []string{"+" + inv, "x" + pay + " " + order.ReasonPaymentDeclined, "!" + order.ReasonPaymentDeclined, "~" + inv, message.EventSagaCompensated}
	cases := []struct {
		name  string
		story []string
		// stands lists the steps whose effect stands; nil: exactly those
		// that succeeded and were not compensated.
		stands []string
		change func(h *history)
		// want is a part of the problem reported; empty: none.
		want string
	}{
		{name: "completed", story: completed},
		{name: "refused and compensated", story: declined},
		{name: "running", story: []string{"+" + inv}},
		{name: "no reply: the step is undone too", story: []string{"+" + inv, "x" + pay + " no reply after 3 attempts", "!no reply after 3 attempts",
			"~" + pay, "~" + inv, message.EventSagaCompensated}},
		{name: "local step out of retries: its undo runs", story: []string{"+" + inv, "+" + pay, "+" + ship, "x" + done + " " + orchestrator.ReasonExhausted,
			"!" + orchestrator.ReasonExhausted, "~" + done, "~" + ship, "~" + pay, "~" + inv, message.EventSagaCompensated}},
		{name: "compensation requested while a step waits", story: []string{"+" + inv, "x" + pay + " compensation requested: ops", "!compensation requested: ops",
			"~" + pay, "~" + inv, message.EventSagaCompensated}},
		{name: "compensation given up: that step is not checked", story: []string{"+" + inv, "+" + pay, "x" + ship + " " + order.ReasonUndeliverable,
			"!" + order.ReasonUndeliverable, message.EventSagaFailed + " " + pay}, stands: []string{inv}},

		{name: "effect of a completed saga missing", story: completed, stands: []string{inv, pay, ship},
			want: "step complete-order succeeded and was not compensated, but its effect is not in its ledger"},
		{name: "effect stands after its compensation", story: declined, stands: []string{inv},
			want: "step reserve-inventory was compensated but its effect stands"},
		{name: "effect of a step that never succeeded", story: declined, stands: []string{pay},
			want: "step authorize-payment never succeeded but its effect stands"},
		{name: "compensated without succeeding or failing", story: []string{"+" + inv, "!ops", "~" + pay, "~" + inv, message.EventSagaCompensated},
			want: "step authorize-payment compensated, but it neither succeeded nor failed before"},
		{name: "refused step compensated", story: []string{"+" + inv, "x" + pay + " " + order.ReasonPaymentDeclined, "!" + order.ReasonPaymentDeclined,
			"~" + pay, "~" + inv, message.EventSagaCompensated},
			want: "its participant refused it (PAYMENT_DECLINED)"},
		{name: "step ran twice", story: []string{"+" + inv, "+" + inv, "+" + pay, "+" + ship, "+" + done, message.EventSagaCompleted},
			want: "step reserve-inventory succeeded twice"},
		{name: "step succeeded after the compensation started", story: []string{"+" + inv, "x" + pay + " " + order.ReasonPaymentDeclined,
			"!" + order.ReasonPaymentDeclined, "+" + pay, "~" + pay, "~" + inv, message.EventSagaCompensated}, stands: []string{},
			want: "step authorize-payment succeeded (version 5) after the compensation started"},
		{name: "undone first first", story: []string{"+" + inv, "+" + pay, "x" + ship + " " + order.ReasonUndeliverable, "!" + order.ReasonUndeliverable,
			"~" + inv, "~" + pay, message.EventSagaCompensated},
			want: "step authorize-payment compensated after step reserve-inventory: steps are undone last first"},
		{name: "compensated twice", story: []string{"+" + inv, "x" + pay + " " + order.ReasonPaymentDeclined, "!" + order.ReasonPaymentDeclined,
			"~" + inv, "~" + inv, message.EventSagaCompensated},
			want: "step reserve-inventory compensated twice"},
		{name: "compensated before the compensation started", story: []string{"+" + inv, "x" + pay + " " + order.ReasonPaymentDeclined, "~" + inv,
			"!" + order.ReasonPaymentDeclined, message.EventSagaCompensated},
			want: "step reserve-inventory compensated (version 4) before any CompensationStarted"},
		{name: "compensated saga without CompensationStarted", story: []string{"+" + inv, "x" + pay + " " + order.ReasonPaymentDeclined, message.EventSagaCompensated},
			stands: []string{inv}, want: "SagaCompensated without a CompensationStarted"},
		{name: "completed after the compensation started", story: []string{"+" + inv, "!ops", message.EventSagaCompleted},
			want: "SagaCompleted after the compensation started"},
		{name: "no SagaStarted first", story: completed, change: func(h *history) { h.events = h.events[1:] },
			want: "the first event is StepSucceeded, want SagaStarted"},
		{name: "two SagaStarted", story: completed, change: func(h *history) { h.events = append(h.events[:1], h.events...) },
			want: "a second SagaStarted"},
		{name: "version goes down", story: completed, change: func(h *history) { h.events[2].Version = 1 },
			want: "StepSucceeded of authorize-payment (version 1) comes after version 2"},
		{name: "event after the terminal one", story: completed, change: func(h *history) {
			h.events = append(h.events, message.Event{Type: message.EventStepSucceeded, Step: done, Version: 7})
		}, want: "StepSucceeded of complete-order comes after the terminal SagaCompleted"},
		{name: "step the saga does not have", story: completed, change: func(h *history) { h.events[1].Step = "reserve-unicorn" },
			stands: []string{pay, ship, done}, want: "names a step the saga does not have"},
		{name: "state record ends otherwise", story: completed, change: func(h *history) { h.state.Status = message.StatusCompensated },
			want: "replaying the events ends completed at version 6, but the last state record is compensated at version 6"},
		{name: "redis view at another version", story: completed, change: func(h *history) { h.redis.Version = 5 },
			want: "but the Redis view is completed at version 5"},
		{name: "state undid other steps", story: declined, change: func(h *history) { h.state.Undone = []int{2} },
			want: "the events compensate [reserve-inventory], the last state record lists [authorize-payment] as undone"},
		{name: "terminal event carries another state", story: completed, change: func(h *history) { h.events[5].State = message.StatusRunning },
			want: `SagaCompleted carries state "running", want "completed"`},

		// reserve-inventory and authorize-payment are a parallel group:
		// their replies come in either order, a member's reply may come
		// after the other member failed, and the members are undone last
		// first.
		{name: "group: payment answers first", story: []string{"+" + pay, "+" + inv, "+" + ship, "+" + done, message.EventSagaCompleted}},
		{name: "group: payment refused, inventory awaited then undone", story: []string{"x" + pay + " " + order.ReasonPaymentDeclined, "+" + inv,
			"!" + order.ReasonPaymentDeclined, "~" + inv, message.EventSagaCompensated}},
		{name: "group: inventory refused, payment awaited then undone", story: []string{"x" + inv + " " + order.ReasonOutOfStock, "+" + pay,
			"!" + order.ReasonOutOfStock, "~" + pay, message.EventSagaCompensated}},
		{name: "group: a Compensate fails the member in flight", story: []string{"+" + pay, "x" + inv + " compensation requested: ops",
			"!compensation requested: ops", "~" + pay, "~" + inv, message.EventSagaCompensated}},
		{name: "group: both members refused, nothing undone", story: []string{"x" + pay + " " + order.ReasonPaymentDeclined, "x" + inv + " " + order.ReasonOutOfStock,
			"!" + order.ReasonPaymentDeclined, message.EventSagaCompensated}},
		{name: "group: member succeeds after the compensation started", story: []string{"x" + pay + " " + order.ReasonPaymentDeclined,
			"!" + order.ReasonPaymentDeclined, "+" + inv, "~" + inv, message.EventSagaCompensated}, stands: []string{},
			want: "step reserve-inventory succeeded (version 4) after the compensation started"},

		// The history a state keeps is the events.
		{name: "history kept", story: completed, change: func(h *history) { h.state.History = historyOf(h.events) }},
		{name: "history kept, the oldest dropped", story: completed, change: func(h *history) {
			all := historyOf(h.events)
			h.state.History, h.state.HistoryDropped = append(all[:1:1], all[3:]...), 2
		}},
		{name: "history misses an event", story: completed, change: func(h *history) { h.redis.History = historyOf(h.events)[:5] },
			want: "the history the Redis view keeps is not the events: 5 entries for 6 events"},
		{name: "history differs", story: declined, change: func(h *history) {
			h.state.History = historyOf(h.events)
			h.state.History[2].Step = order.StepScheduleShipping
		}, want: "the history the last state record keeps is not the events: entry 2"},

		// A parked saga's events do not change the story.
		{name: "parked, resumed, completed", story: []string{"P" + coup + " no reply after 3 attempts", "R" + coup + " resumed: ops", "+" + coup,
			"+" + inv, "+" + pay, "+" + ship, "+" + done, message.EventSagaCompleted}},
		{name: "parked, compensated", story: []string{"P" + coup + " no reply after 3 attempts", "x" + coup + " compensation requested: ops",
			"!compensation requested: ops", "~" + coup, message.EventSagaCompensated}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			evs, raw := tell(t, "o-1", c.story...)
			stands := make(map[string]bool)
			if c.stands == nil {
				for _, ev := range evs {
					switch ev.Type {
					case message.EventStepSucceeded:
						stands[ev.Step] = true
					case message.EventStepCompensated:
						stands[ev.Step] = false
					}
				}
			}
			for _, s := range c.stands {
				stands[s] = true
			}
			h := history{steps: orderSteps, events: evs, state: stateOrNil(raw), redis: stateOrNil(raw),
				effect: func(step string) (bool, bool) { return stands[step], step != order.StepReserveCoupon }}
			if c.change != nil {
				c.change(&h)
			}
			got := h.problems()
			switch {
			case c.want == "" && len(got) > 0:
				t.Fatalf("got problems %q, want none", got)
			case c.want != "" && !slices.ContainsFunc(got, func(p string) bool { return strings.Contains(p, c.want) }):
				t.Fatalf("got problems %q, want one with %q", got, c.want)
			}
		})
	}
}

// A run whose histories break the rule reports it under history, naming
// the saga.
func TestHistoryInAnalyze(t *testing.T) {
	exp, initial, d := run(t)
	d.Events["o-2"] = slices.Insert(d.Events["o-2"], 3, message.Event{SagaID: "o-2", Type: message.EventStepCompensated, Step: order.StepAuthorizePayment, Version: 4})
	rep := Analyze(exp, initial, d)
	if !slices.ContainsFunc(rep.Anomalies, func(a Anomaly) bool {
		return a.Invariant == InvHistory && a.ID == "o-2" && strings.Contains(a.Detail, "refused")
	}) {
		t.Fatalf("want a history anomaly about o-2's refused payment being compensated; report:\n%s", rep)
	}
}

// A saga deleted after the retention passes when it had ended long enough
// before its tombstone, and each way the deletion can go wrong is reported
// under retention, naming the saga.
func TestRetention(t *testing.T) {
	const retention = time.Hour
	// o-2 has ended; its state record is at offset 10, its tombstone at
	// 11 (see expire), written an hour and a second after it ended.
	cases := []struct {
		name   string
		change func(d *Data)
		// want are parts of the retention anomalies about o-2, one each,
		// with {p} for its home partition; none: the run passes.
		want []string
	}{
		{name: "expired and fine", change: func(d *Data) {}},
		{name: "expired within the clock slack", change: func(d *Data) {
			d.Tombstones["o-2"][0].At = ended.Add(retention - ClockSlack/2)
		}},
		{name: "states compacted away: the terminal event tells when it ended", change: func(d *Data) {
			d.Tombstones["o-2"][0].Deleted = nil
			evs := d.Events["o-2"]
			evs[len(evs)-1].At = ended
		}},
		{name: "tombstone before the terminal state", change: func(d *Data) {
			var st orchestrator.State
			json.Unmarshal(d.Tombstones["o-2"][0].Deleted, &st)
			final := d.Tombstones["o-2"][0].Deleted
			st.Status, st.Version = message.StatusCompensating, st.Version-1
			running, _ := json.Marshal(st)
			delete(d.Tombstones, "o-2")
			d.addState("o-2", home("o-2"), 10, ended.Add(-time.Second), running)
			d.addState("o-2", home("o-2"), 11, ended.Add(retention+time.Second), nil)
			d.addState("o-2", home("o-2"), 12, ended, final)
			d.Redis["o-2"] = RedisState{Key: orchestrator.StateKey("order", home("o-2"), "o-2"), Partition: home("o-2"), Version: fmt.Sprint(version(final)), State: final}
		}, want: []string{
			"1 state records after its tombstone at {p}@11: the saga came back after it was deleted",
			"tombstone at {p}@11 deleted the saga while it was compensating at version 5",
		}},
		{name: "key still in Redis after the tombstone", change: func(d *Data) {
			final := d.Tombstones["o-2"][0].Deleted
			d.Redis["o-2"] = RedisState{Key: orchestrator.StateKey("order", home("o-2"), "o-2"), Partition: home("o-2"), Version: "6", State: final}
		}, want: []string{"Redis still holds its state (key ksaga:{order:{p}}:state:o-2, version 6) after its tombstone at {p}@11"}},
		{name: "expired too early", change: func(d *Data) {
			d.Tombstones["o-2"][0].At = ended.Add(retention / 2)
		}, want: []string{"deleted 30m0s after it ended (at 2026-12-01T10:00:00Z; tombstone at {p}@11 written at 2026-12-01T10:30:00Z), before the retention 1h0m0s"}},
		{name: "compacted and expired too early", change: func(d *Data) {
			d.Tombstones["o-2"][0].Deleted = nil
			evs := d.Events["o-2"]
			evs[len(evs)-1].At = ended.Add(retention / 2)
		}, want: []string{"deleted 30m1s after it ended"}},
		{name: "deleted though the engines keep sagas forever", change: func(d *Data) {
			d.Retention = 0
		}, want: []string{"tombstone at {p}@11, but the engines keep ended sagas forever (retention 0)"}},
		{name: "deleted after two terminal events", change: func(d *Data) {
			d.Events["o-2"] = append(d.Events["o-2"], message.Event{SagaID: "o-2", Type: message.EventSagaCompleted, Version: 7})
		}, want: []string{"deleted by its tombstone at {p}@11 with 2 terminal events, want exactly one"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			exp, initial, d := run(t)
			c.change(d)
			rep := Analyze(exp, initial, d)
			var got []string
			for _, a := range rep.Anomalies {
				if a.Invariant == InvRetention && a.ID == "o-2" {
					got = append(got, a.Detail)
				}
			}
			if len(c.want) == 0 && !rep.OK() {
				t.Fatalf("got anomalies, want none:\n%s", rep)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %d retention anomalies about o-2 %q, want %d %q; report:\n%s", len(got), got, len(c.want), c.want, rep)
			}
			for i, w := range c.want {
				if w = strings.ReplaceAll(w, "{p}", fmt.Sprint(home("o-2"))); !strings.Contains(got[i], w) {
					t.Errorf("got anomaly %q, want one with %q", got[i], w)
				}
			}
			if rep.Tombstones != 1 {
				t.Errorf("got %d tombstones in the report, want 1", rep.Tombstones)
			}
		})
	}
}

// Read keeps a saga's last state, or, when its last record is a tombstone,
// what the tombstone deleted; a saga started again after its tombstone
// counts its versions from 1.
func TestAddState(t *testing.T) {
	state := func(v int64) []byte { return []byte(fmt.Sprintf(`{"version":%d}`, v)) }
	at := ended
	cases := []struct {
		name string
		recs [][]byte // in log order, from offset 0; nil is a tombstone
		// want is the last state; deleted the versions the tombstones
		// deleted, followed how many states came after each.
		want     []byte
		deleted  []int64
		followed []int
	}{
		{name: "states", recs: [][]byte{state(1), state(3), state(2)}, want: state(3)},
		{name: "expired", recs: [][]byte{state(1), state(2), nil}, deleted: []int64{2}, followed: []int{0}},
		{name: "started again", recs: [][]byte{state(1), state(5), nil, state(1), state(2)}, want: state(2), deleted: []int64{5}, followed: []int{2}},
		{name: "tombstone with nothing before", recs: [][]byte{nil}, deleted: []int64{-1}, followed: []int{0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := &Data{States: make(map[string][]byte), StatePartitions: make(map[string][]int32)}
			for i, r := range c.recs {
				d.addState("o-1", 3, int64(i), at, r)
			}
			if got := d.States["o-1"]; string(got) != string(c.want) {
				t.Errorf("got last state %s, want %s", got, c.want)
			}
			ts := d.Tombstones["o-1"]
			if len(ts) != len(c.deleted) {
				t.Fatalf("got %d tombstones, want %d", len(ts), len(c.deleted))
			}
			for i, tb := range ts {
				v := int64(-1)
				if tb.Deleted != nil {
					v = version(tb.Deleted)
				}
				if v != c.deleted[i] || tb.Followed != c.followed[i] {
					t.Errorf("tombstone %d deleted version %d and was followed by %d states, want %d and %d", i, v, tb.Followed, c.deleted[i], c.followed[i])
				}
			}
			if !slices.Equal(d.StatePartitions["o-1"], []int32{3}) {
				t.Errorf("got state partitions %v, want [3]", d.StatePartitions["o-1"])
			}
		})
	}
}

// historyOf is the history a state keeps of evs.
func historyOf(evs []message.Event) []orchestrator.HistoryEntry {
	out := make([]orchestrator.HistoryEntry, len(evs))
	for i, ev := range evs {
		out[i] = orchestrator.HistoryEntry{Type: ev.Type, Step: ev.Step, Reason: ev.Reason, Version: ev.Version, At: ev.At}
	}
	return out
}
