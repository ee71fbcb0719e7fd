// Package check verifies a finished run of the order saga from outside: it
// reads every topic back with read_committed, reads the engine's Redis view
// and the reference participants' ledgers, and reports each way the run
// broke exactly-once or lost data.
//
// The invariants, each reported under its name:
//
//	terminal           every saga has exactly one terminal event, of the kind its order expects
//	no-duplicate       no event and no command (same message id and attempt) was committed twice,
//	                   but for the command of a parked step that a Resume sent again
//	state              the last state record of every saga is terminal and agrees with its event
//	redis              the engine's Redis holds exactly the last state record of every saga
//	home-partition     every saga's state records and Redis key are on its home partition
//	                   (message.HomePartition); a stray record that landed elsewhere was
//	                   moved there (its dead-letter copy says where it landed)
//	stock              initial - final = Σ quantities of completed orders, per SKU; reservations agree
//	payments           authorized - cancelled = Σ amounts of completed orders; one payment per order
//	shipments          a shipment exactly for each completed order
//	orders-store       an order is completed in the orders store exactly when its saga completed
//	coupons            per code: never more issued than its limit; the issued count, the number
//	                   of completed orders holding the coupon and the size of the customer set
//	                   are equal; no customer holds it twice; every claim of an order that did not
//	                   complete is released; an order without a coupon has no claim
//	dlq                each poison record dead-lettered once with its reason; nothing else but
//	                   the orders that ran out of retries; no participant dead letters
//	no-stray-saga      no saga, command or ledger entry for an id that is not a saga of the load
//	history            each saga's events tell a story the engine can tell (a step is compensated
//	                   only after it succeeded or failed with an unknown outcome, last first, …),
//	                   and replaying them gives its final state (status, version, steps undone)
//	                   and what the ledgers hold (an effect stands exactly when its step
//	                   succeeded and was not compensated); see history.problems
//	parking            a saga parks only at a step that parks; each parking is resolved exactly once,
//	                   by a SagaResumed or a compensation, before the saga ends; nothing else happens
//	                   while it is parked, and a saga that parked ends once (InvPark); the sagas the
//	                   harness resumed or compensated while parked took its message
//	terminal-data      the terminal event of every order carries its final data: the order it started
//	                   with, the authorization and tracking number its payment and shipment hold (a
//	                   completed order names both), and a cancelled payment's cancelled_authorization_id
//	                   is its own authorization (InvData)
//	local-ledger       the local-first saga (package localfirst): a hold stands, taken once, exactly
//	                   for each completed transfer, approved exactly then, and each account's held
//	                   total is the sum of its completed transfers
//
//	retention          a saga deleted from the state topic (a tombstone) had ended, exactly once,
//	                   at least the engines' retention before; it never comes back, and Redis no
//	                   longer holds it (InvRetention). The state, redis and history rules take
//	                   such a saga's last state from before its tombstone, and hold Redis only to
//	                   the sagas that were not deleted
//
// The checker is used by cmd/sagachaos; Analyze works on Data read by Read,
// so that the rules can be tested without a cluster.
package check

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ksaga/ksaga/chaos/check/localfirst"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
)

// Expectation kinds: what an order or a record of the load must come to.
const (
	// KindComplete, KindDupStart (its start sent twice, or also a
	// conflicting start) and KindDupReply (a stale reply sent after it
	// ended) must end SagaCompleted.
	KindComplete = "complete"
	KindDupStart = "dup-start"
	KindDupReply = "dup-reply"
	// KindDeclined, KindOutOfStock and KindUndeliverable must end
	// SagaCompensated after the participant's failure.
	KindDeclined      = "declined"
	KindOutOfStock    = "out-of-stock"
	KindUndeliverable = "undeliverable"
	// KindOutage is a complete order whose complete-order step ran out of
	// retries while the orders store was down: dead-lettered
	// (retries-exhausted) and SagaCompensated.
	KindOutage = "outage"
	// KindPoison is a bad record: it must be dead-lettered exactly once,
	// with the reason in Poison, found by its Marker header.
	KindPoison = "poison"
	// KindCoupon is a complete order that carries a coupon of a code with
	// a small limit: it must end SagaCompleted holding its coupon, or
	// SagaCompensated because the coupon participant refused it
	// (order.ReasonCouponExhausted or order.ReasonCouponAlreadyUsed).
	KindCoupon = "coupon"
	// KindCouponUnknown is an order whose coupon code has no limit: it
	// must end SagaCompensated for order.ReasonCouponUnknown.
	KindCouponUnknown = "coupon-unknown"
	// KindCompensate is an order that was sent a Compensate (with
	// ksaga-reason CompensateReason) soon after its start. If the
	// Compensate found it running, it must end SagaCompensated with an
	// event that names CompensateReason; if it had ended, the Compensate
	// is dropped and it must end SagaCompleted with no such event.
	KindCompensate = "compensate"
	// KindParkCompensate is an order that parked at reserve-coupon (its
	// coupon participant stayed silent) and was sent a Compensate (with
	// ksaga-reason ParkCompensateReason) while parked: it must end
	// SagaCompensated, its parking resolved by that compensation
	// (InvPark).
	KindParkCompensate = "park-compensate"
)

// CompensateReason is the ksaga-reason of the Compensate records of
// KindCompensate orders.
const CompensateReason = "chaos-compensate"

// HeaderMarker is the header that tags each poison record, so that its
// dead-letter copy can be found.
const HeaderMarker = "chaos-marker"

// Expectation is what one order or one poison record must come to.
type Expectation struct {
	// ID is the saga id (the order id); for a poison record, its key.
	ID   string
	Kind string
	// Order is the order of an order saga (not poison).
	Order *order.Order
	// Transfer is the transfer of a local-first saga (the Local* kinds).
	Transfer *localfirst.Transfer
	// Poison is the dead-letter reason a poison record must get.
	Poison string
	// Marker is the value of the poison record's HeaderMarker.
	Marker string
	// Resumed says the order was sent a Resume (with ksaga-reason
	// ResumeReason) while it was parked: a SagaResumed must name it
	// (InvPark). Its outcome is its Kind's.
	Resumed bool
	// Landed, when set, is where a poison record keyed by a saga id
	// landed on the inbox. If that is not the id's home partition, the
	// engine must move it there: its dead-letter copy must carry
	// message.HeaderForwardedFrom "<partition>/<offset>" of Landed. If it
	// is, the copy must carry no such header.
	Landed *Landing
}

// Landing is where a record was written.
type Landing struct {
	Partition int32 `json:"partition"`
	Offset    int64 `json:"offset"`
}

// outcome returns the terminal event an expectation kind must end with.
func outcome(kind string) (string, bool) {
	switch kind {
	case KindComplete, KindDupStart, KindDupReply:
		return message.EventSagaCompleted, true
	case KindDeclined, KindOutOfStock, KindUndeliverable, KindOutage, KindCouponUnknown, KindParkCompensate:
		return message.EventSagaCompensated, true
	case KindLocalComplete:
		return message.EventSagaCompleted, true
	case KindLocalOutage:
		return message.EventSagaCompensated, true
	}
	return "", false
}

// Invariant names, in report order.
const (
	InvTerminal    = "terminal"
	InvDuplicate   = "no-duplicate"
	InvState       = "state"
	InvRedis       = "redis"
	InvHome        = "home-partition"
	InvStock       = "stock"
	InvPayments    = "payments"
	InvShipments   = "shipments"
	InvOrders      = "orders-store"
	InvCoupons     = "coupons"
	InvDLQ         = "dlq"
	InvStray       = "no-stray-saga"
	invariantCount = 17
)

var invariants = [invariantCount]string{InvTerminal, InvDuplicate, InvState, InvRedis, InvHome, InvStock, InvPayments, InvShipments, InvOrders, InvCoupons, InvDLQ, InvStray, InvHistory, InvPark, InvData, InvLocal, InvRetention}

// Anomaly is one broken invariant.
type Anomaly struct {
	Invariant string
	// ID is the saga, SKU, marker or record the anomaly is about.
	ID     string
	Detail string
}

func (a Anomaly) String() string { return fmt.Sprintf("%s: %s: %s", a.Invariant, a.ID, a.Detail) }

// Report is what Analyze found.
type Report struct {
	// Checked counts the items each invariant was checked on.
	Checked map[string]int
	// Outcomes counts the sagas by terminal event.
	Outcomes map[string]int
	// Tombstones counts the tombstones read on the state topics, Expired
	// the sagas whose last state record is one (InvRetention).
	// DeletedAfter is the least and the most time from a saga's end to its
	// tombstone.
	Tombstones, Expired int
	DeletedAfter        [2]time.Duration
	// Versions counts the sagas by type and the version of the
	// definition their last state record names ("order v3").
	Versions  map[string]int
	Anomalies []Anomaly
	// Read describes what was read (records per topic, keys).
	Read string
}

// OK reports whether no invariant is broken.
func (r *Report) OK() bool { return len(r.Anomalies) == 0 }

// maxListed bounds the anomalies String lists.
const maxListed = 50

// String is the report as a table of invariants, then the first maxListed
// anomalies.
func (r *Report) String() string { return r.Text(maxListed) }

// Text is the report as a table of invariants, then the first limit
// anomalies; limit <= 0 lists them all.
func (r *Report) Text(limit int) string {
	if limit <= 0 {
		limit = len(r.Anomalies)
	}
	var b strings.Builder
	if r.Read != "" {
		fmt.Fprintf(&b, "read: %s\n", r.Read)
	}
	outs := slices.Sorted(maps.Keys(r.Outcomes))
	var parts []string
	for _, o := range outs {
		parts = append(parts, fmt.Sprintf("%s %d", o, r.Outcomes[o]))
	}
	fmt.Fprintf(&b, "outcomes: %s\n", strings.Join(parts, ", "))
	if len(r.Versions) > 0 {
		parts = parts[:0]
		for _, v := range slices.Sorted(maps.Keys(r.Versions)) {
			parts = append(parts, fmt.Sprintf("%s %d", v, r.Versions[v]))
		}
		fmt.Fprintf(&b, "sagas by definition version: %s\n", strings.Join(parts, ", "))
	}
	if r.Tombstones > 0 {
		fmt.Fprintf(&b, "retention: %d tombstones, %d sagas deleted, each %v to %v after it ended\n",
			r.Tombstones, r.Expired, r.DeletedAfter[0].Round(time.Millisecond), r.DeletedAfter[1].Round(time.Millisecond))
	}
	per := make(map[string]int)
	for _, a := range r.Anomalies {
		per[a.Invariant]++
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "invariant\tchecked\tanomalies\n")
	for _, inv := range invariants {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", inv, r.Checked[inv], per[inv])
	}
	tw.Flush()
	if len(r.Anomalies) == 0 {
		b.WriteString("no anomalies\n")
		return b.String()
	}
	fmt.Fprintf(&b, "%d anomalies", len(r.Anomalies))
	if len(r.Anomalies) > limit {
		fmt.Fprintf(&b, " (the first %d)", limit)
	}
	b.WriteString(":\n")
	for _, a := range r.Anomalies[:min(limit, len(r.Anomalies))] {
		fmt.Fprintf(&b, "  %s\n", a)
	}
	return b.String()
}

// Data is everything a run left behind, as Read gathers it.
type Data struct {
	// Partitions is the number of partitions of the saga's inbox (and
	// state) topic; zero skips the home-partition checks.
	Partitions int32
	// Events are the committed events of each saga, in log order.
	Events map[string][]message.Event
	// States is the last committed state record of each saga; a saga
	// whose last record is a tombstone has none.
	States map[string][]byte
	// Tombstones are the tombstones of each saga's state topic, in log
	// order: the engine deleted the saga after its retention.
	Tombstones map[string][]Tombstone
	// Retention is the engines' retention (Config.Retention); 0 keeps
	// ended sagas forever.
	Retention time.Duration
	// StatePartitions are the partitions of the state topic that hold
	// committed state records (tombstones included) of each saga.
	StatePartitions map[string][]int32
	// Redis is the engine's Redis view of each saga.
	Redis map[string]RedisState
	// RedisDuplicates are the states of a saga found under a second
	// (third, …) key.
	RedisDuplicates map[string][]RedisState
	// DeadLetters are the records of the saga's inbox dead-letter topic.
	DeadLetters []DeadLetter
	// ParticipantDeadLetters are the records of the participants'
	// "<name>.commands-dlt" topics.
	ParticipantDeadLetters []DeadLetter
	// Commands counts the committed commands by message id and attempt.
	Commands map[CommandKey]int
	// Ledgers are the reference participants' Redis ledgers.
	Stock        map[string]int64
	Reservations map[string]map[string]string
	Payments     map[string]map[string]string
	Shipments    map[string]map[string]string
	// Orders is the orders store: hash ksaga:sim:order:<order_id> of each
	// order that complete-order recorded.
	Orders map[string]map[string]string
	// Coupons is the coupon ledger of each code found in Redis (keys
	// ksaga:sim:coupon:<code>:limit, :issued, :customers).
	Coupons map[string]CouponLedger
	// CouponClaims is the hash ksaga:sim:coupon-claim:<order_id> of each
	// order that has one.
	CouponClaims map[string]map[string]string
	// Holds, Held and Approvals are the local-first saga's ledgers
	// (package localfirst): the hold of each transfer that has one, the
	// held total of each account, the approval of each transfer.
	Holds     map[string]map[string]string
	Held      map[string]int64
	Approvals map[string]map[string]string
}

// CouponLedger is one coupon code's keys.
type CouponLedger struct {
	// Limit is the limit key; HasLimit is false when it is missing.
	Limit    int64
	HasLimit bool
	// Issued is the issued count (missing = 0).
	Issued int64
	// Customers are the members of the customer set.
	Customers []string
}

// Initial is what the participants' ledgers held before the run.
type Initial struct {
	Stock map[string]int64
	// Coupons are the coupon limits seeded, by code.
	Coupons map[string]int64
}

// RedisState is a saga's hash in the engine's Redis.
type RedisState struct {
	// Key is the hash's key; Partition the partition in its hash tag
	// (ksaga:{<type>:<partition>}:state:<id>), -1 if it has none.
	Key       string
	Partition int32
	Version   string
	State     []byte
}

// DeadLetter is one record of a dead-letter topic.
type DeadLetter struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       string
	Reason    string
	Exception string
	Marker    string
	// ForwardedFrom is the record's message.HeaderForwardedFrom.
	ForwardedFrom string
}

func (d DeadLetter) where() string { return fmt.Sprintf("%s/%d@%d", d.Topic, d.Partition, d.Offset) }

// CommandKey identifies one send of a command.
type CommandKey struct {
	Topic, SagaID, MessageID, Attempt string
}

// Analyze checks d against the expectations and the initial ledgers.
func Analyze(expect []Expectation, initial Initial, d *Data) *Report {
	a := &analysis{
		rep:    &Report{Checked: make(map[string]int), Outcomes: make(map[string]int), Versions: make(map[string]int)},
		d:      d,
		sagas:  make(map[string]*Expectation),
		ended:  make(map[string]string),
		poison: make(map[string]*Expectation),
	}
	for i := range expect {
		e := &expect[i]
		if e.Kind == KindPoison {
			a.poison[e.Marker] = e
			continue
		}
		a.sagas[e.ID] = e
	}
	a.terminal()
	a.duplicates()
	a.states()
	a.redis()
	a.home()
	a.stock(initial.Stock)
	a.payments()
	a.shipments()
	a.orders()
	a.coupons(initial.Coupons)
	a.deadLetters()
	a.strays()
	a.history()
	a.parking()
	a.terminalData()
	a.local()
	a.retention()
	for _, raw := range d.States {
		if st, err := decodeState(raw); err == nil {
			a.rep.Versions[fmt.Sprintf("%s v%d", st.Type, st.OnVersion())]++
		}
	}
	return a.rep
}

type analysis struct {
	rep   *Report
	d     *Data
	sagas map[string]*Expectation
	// ended is the terminal event of each saga that has exactly one.
	ended  map[string]string
	poison map[string]*Expectation // by marker
	// timed counts the tombstones whose time after the saga's end is in
	// rep.DeletedAfter.
	timed int
}

func (a *analysis) fail(inv, id, format string, args ...any) {
	a.rep.Anomalies = append(a.rep.Anomalies, Anomaly{Invariant: inv, ID: id, Detail: fmt.Sprintf(format, args...)})
}

// ids returns the saga ids in order, so that the report is stable.
func (a *analysis) ids() []string { return slices.Sorted(maps.Keys(a.sagas)) }

// orderIDs returns the ids of the order sagas in order.
func (a *analysis) orderIDs() []string {
	var ids []string
	for _, id := range a.ids() {
		if a.sagas[id].Order != nil {
			ids = append(ids, id)
		}
	}
	return ids
}

func (a *analysis) completed(id string) bool { return a.ended[id] == message.EventSagaCompleted }

func (a *analysis) terminal() {
	for _, id := range a.ids() {
		a.rep.Checked[InvTerminal]++
		var ends []string
		for _, ev := range a.d.Events[id] {
			if message.Terminal(ev.Type) {
				ends = append(ends, ev.Type)
			}
		}
		switch len(ends) {
		case 0:
			if a.sagas[id].Kind == KindLocalOutage && len(a.d.Events[id]) == 0 {
				continue // its start was dead-lettered: no saga (the dlq rule checks the dead letter)
			}
			a.fail(InvTerminal, id, "no terminal event (%s saga, %d events)", a.sagas[id].Kind, len(a.d.Events[id]))
			continue
		case 1:
		default:
			a.fail(InvTerminal, id, "%d terminal events: %v", len(ends), ends)
		}
		a.ended[id] = ends[0]
		a.rep.Outcomes[ends[0]]++
		switch a.sagas[id].Kind {
		case KindCompensate, KindLocalCompensate:
			a.compensated(id, ends[0])
			continue
		case KindCoupon:
			if ends[0] != message.EventSagaCompleted {
				a.refused(id, ends[0], order.StepReserveCoupon, order.ReasonCouponExhausted, order.ReasonCouponAlreadyUsed)
			}
			continue
		case KindCouponUnknown:
			a.refused(id, ends[0], order.StepReserveCoupon, order.ReasonCouponUnknown)
			continue
		case KindLocalRefused:
			a.refused(id, ends[0], localfirst.StepApprove, localfirst.ReasonRefused)
			continue
		}
		want, ok := outcome(a.sagas[id].Kind)
		if !ok {
			a.fail(InvTerminal, id, "unknown expectation kind %q", a.sagas[id].Kind)
		} else if ends[0] != want {
			a.fail(InvTerminal, id, "%s order ended %s, want %s", a.sagas[id].Kind, ends[0], want)
		}
	}
}

// compensated checks the end of a KindCompensate order: compensated for
// the Compensate it was sent, or completed before the Compensate came.
func (a *analysis) compensated(id, end string) {
	requested := false
	for _, ev := range a.d.Events[id] {
		if strings.Contains(ev.Reason, CompensateReason) {
			requested = true
		}
	}
	switch {
	case end == message.EventSagaCompensated && !requested:
		a.fail(InvTerminal, id, "compensate order ended %s, but no event names the requested compensation (%q)", end, CompensateReason)
	case end != message.EventSagaCompensated && requested:
		a.fail(InvTerminal, id, "compensate order applied the requested compensation (%q) but ended %s", CompensateReason, end)
	case end != message.EventSagaCompensated && end != message.EventSagaCompleted:
		a.fail(InvTerminal, id, "compensate order ended %s, want %s or %s", end, message.EventSagaCompensated, message.EventSagaCompleted)
	}
}

// refused checks that a saga ended SagaCompensated because its step failed
// for one of reasons (its participant refused it).
func (a *analysis) refused(id, end, step string, reasons ...string) {
	got := ""
	for _, ev := range a.d.Events[id] {
		if ev.Type == message.EventStepFailed && ev.Step == step {
			got = ev.Reason
		}
	}
	if end != message.EventSagaCompensated || !slices.Contains(reasons, got) {
		a.fail(InvTerminal, id, "%s saga ended %s with %s failed for %q, want %s after %s",
			a.sagas[id].Kind, end, step, got, message.EventSagaCompensated, strings.Join(reasons, " or "))
	}
}

func (a *analysis) duplicates() {
	type evKey struct {
		typ, step string
		version   int64
	}
	for _, id := range slices.Sorted(maps.Keys(a.d.Events)) {
		seen := make(map[evKey]bool)
		for _, ev := range a.d.Events[id] {
			a.rep.Checked[InvDuplicate]++
			k := evKey{ev.Type, ev.Step, ev.Version}
			if seen[k] {
				a.fail(InvDuplicate, id, "event %s (step %q, version %d) committed twice", ev.Type, ev.Step, ev.Version)
			}
			seen[k] = true
		}
	}
	keys := slices.SortedFunc(maps.Keys(a.d.Commands), func(x, y CommandKey) int {
		return strings.Compare(x.Topic+x.MessageID+x.Attempt, y.Topic+y.MessageID+y.Attempt)
	})
	again := resends(a.d.Events)
	for _, k := range keys {
		a.rep.Checked[InvDuplicate]++
		// A Resume sends the parked step's command again with the same
		// message id, from attempt 1.
		if n, most := a.d.Commands[k], 1+again[k.SagaID][commandStep(k)]; n > most {
			a.fail(InvDuplicate, k.SagaID, "command %s attempt %s on %s committed %d times (%d resumes sent it again)", k.MessageID, k.Attempt, k.Topic, n, most-1)
		}
	}
}

// decodeState decodes a state record's value.
func decodeState(b []byte) (*orchestrator.State, error) {
	var st orchestrator.State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// statusOf maps a terminal event to the saga status it leaves.
var statusOf = map[string]string{
	message.EventSagaCompleted:   message.StatusCompleted,
	message.EventSagaCompensated: message.StatusCompensated,
	message.EventSagaFailed:      message.StatusFailed,
}

func (a *analysis) states() {
	for _, id := range a.ids() {
		a.rep.Checked[InvState]++
		b, ok := a.finalState(id)
		_, expired := a.expired(id)
		if !ok && a.sagas[id].Kind == KindLocalOutage && len(a.d.Events[id]) == 0 {
			continue // no saga: its start was dead-lettered
		}
		if !ok && expired {
			continue // its states were compacted away after its tombstone
		}
		if !ok {
			a.fail(InvState, id, "no state record")
			continue
		}
		st, err := decodeState(b)
		if err != nil {
			a.fail(InvState, id, "last state record does not decode: %v", err)
			continue
		}
		if !st.Terminal() && expired {
			continue // deleted while running: the retention rule reports it
		}
		if !st.Terminal() {
			a.fail(InvState, id, "still %s at step %d after the drain (version %d)", st.Status, st.Step, st.Version)
			continue
		}
		if ev, ok := a.ended[id]; ok && statusOf[ev] != st.Status {
			a.fail(InvState, id, "last state is %s but the terminal event is %s", st.Status, ev)
		}
	}
}

func (a *analysis) redis() {
	for _, id := range slices.Sorted(maps.Keys(a.d.States)) {
		a.rep.Checked[InvRedis]++
		want := a.d.States[id]
		got, ok := a.d.Redis[id]
		if !ok {
			a.fail(InvRedis, id, "no state in Redis; the last state record is %s", summarize(want))
			continue
		}
		if string(got.State) != string(want) {
			a.fail(InvRedis, id, "Redis holds version %s %s; the last state record is %s", got.Version, summarize(got.State), summarize(want))
			continue
		}
		if st, err := decodeState(want); err == nil && got.Version != fmt.Sprint(st.Version) {
			a.fail(InvRedis, id, "Redis version field %s, the state's version is %d", got.Version, st.Version)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(a.d.Redis)) {
		if _, ok := a.expired(id); ok {
			continue // the retention rule holds a deleted saga's key
		}
		if _, ok := a.d.States[id]; !ok {
			a.rep.Checked[InvRedis]++
			a.fail(InvRedis, id, "Redis holds a state (version %s) that no state record has", a.d.Redis[id].Version)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(a.d.RedisDuplicates)) {
		if _, ok := a.expired(id); ok {
			continue
		}
		a.rep.Checked[InvRedis]++
		keys := []string{a.d.Redis[id].Key}
		for _, r := range a.d.RedisDuplicates[id] {
			keys = append(keys, fmt.Sprintf("%s (version %s)", r.Key, r.Version))
		}
		a.fail(InvRedis, id, "Redis holds its state under %d keys: %s", len(keys), strings.Join(keys, ", "))
	}
}

// home checks that each saga lives on its home partition: its state
// records, its Redis key, and the dead-letter copy of a stray record that
// landed elsewhere, which must have been moved there.
func (a *analysis) home() {
	n := a.d.Partitions
	if n <= 0 {
		return
	}
	for _, id := range slices.Sorted(maps.Keys(a.d.StatePartitions)) {
		a.rep.Checked[InvHome]++
		home := message.HomePartition(id, n)
		for _, p := range a.d.StatePartitions[id] {
			if p != home {
				a.fail(InvHome, id, "state records on partition %d; its home partition is %d", p, home)
			}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(a.d.Redis)) {
		a.rep.Checked[InvHome]++
		if r, home := a.d.Redis[id], message.HomePartition(id, n); r.Partition != home {
			a.fail(InvHome, id, "Redis key %s is tagged with partition %d; its home partition is %d", r.Key, r.Partition, home)
		}
	}
	byMarker := make(map[string][]DeadLetter)
	for _, d := range a.d.DeadLetters {
		if d.Marker != "" {
			byMarker[d.Marker] = append(byMarker[d.Marker], d)
		}
	}
	for _, m := range slices.Sorted(maps.Keys(a.poison)) {
		e := a.poison[m]
		if e.Landed == nil || e.ID == "" || len(byMarker[m]) != 1 {
			continue // a missing or repeated copy is the dlq rule's
		}
		a.rep.Checked[InvHome]++
		got, home := byMarker[m][0].ForwardedFrom, message.HomePartition(e.ID, n)
		want := ""
		if e.Landed.Partition != home {
			want = fmt.Sprintf("%d/%d", e.Landed.Partition, e.Landed.Offset)
		}
		switch {
		case got != want && want == "":
			a.fail(InvHome, m, "record landed on its home partition %d but its dead-letter copy says it was forwarded from %q", home, got)
		case got != want:
			a.fail(InvHome, m, "record landed on partition %d (offset %d), its key's home partition is %d, but its dead-letter copy has %s %q, want %q: it was not moved home",
				e.Landed.Partition, e.Landed.Offset, home, message.HeaderForwardedFrom, got, want)
		}
	}
}

// summarize names a state by its version and status.
func summarize(b []byte) string {
	st, err := decodeState(b)
	if err != nil {
		return fmt.Sprintf("(undecodable: %v)", err)
	}
	return fmt.Sprintf("(version %d, %s)", st.Version, st.Status)
}

// stock checks conservation per SKU and that every completed order holds
// its reservation and no other order holds one.
func (a *analysis) stock(initial map[string]int64) {
	taken := make(map[string]int64)
	for _, id := range a.orderIDs() {
		o := a.sagas[id].Order
		res := a.d.Reservations[id]
		a.rep.Checked[InvStock]++
		if !a.completed(id) {
			if res != nil && res["status"] != "released" {
				a.fail(InvStock, id, "order did not complete (%s) but its reservation is %q", a.endOf(id), res["status"])
			}
			continue
		}
		want := make(map[string]int64)
		for _, it := range o.Items {
			taken[it.SKU] += it.Qty
			want[it.SKU] += it.Qty
		}
		if res == nil || res["status"] != "reserved" {
			a.fail(InvStock, id, "order completed but its reservation is %v", res)
			continue
		}
		for sku, q := range want {
			if got := res["item:"+sku]; got != fmt.Sprint(q) {
				a.fail(InvStock, id, "reservation holds %q of %s, the order %d", got, sku, q)
			}
		}
	}
	skus := make(map[string]bool)
	for s := range initial {
		skus[s] = true
	}
	for s := range a.d.Stock {
		skus[s] = true
	}
	for _, sku := range slices.Sorted(maps.Keys(skus)) {
		a.rep.Checked[InvStock]++
		if gone := initial[sku] - a.d.Stock[sku]; gone != taken[sku] {
			a.fail(InvStock, sku, "initial %d - final %d = %d, but completed orders took %d", initial[sku], a.d.Stock[sku], gone, taken[sku])
		}
	}
}

func (a *analysis) endOf(id string) string {
	if e, ok := a.ended[id]; ok {
		return e
	}
	return "no terminal event"
}

func (a *analysis) payments() {
	var authorized, completed int64
	for _, id := range a.orderIDs() {
		a.rep.Checked[InvPayments]++
		p := a.d.Payments[id]
		amount := a.sagas[id].Order.AmountCents
		if a.completed(id) {
			completed += amount
			if p == nil || p["status"] != "authorized" || p["amount_cents"] != fmt.Sprint(amount) {
				a.fail(InvPayments, id, "order of %d cents completed but its payment is %v", amount, p)
			}
		} else if p != nil && p["status"] != "cancelled" {
			a.fail(InvPayments, id, "order did not complete (%s) but its payment is %v", a.endOf(id), p)
		}
		if p != nil && p["status"] == "authorized" {
			authorized += parseInt(p["amount_cents"])
		}
	}
	a.rep.Checked[InvPayments]++
	if authorized != completed {
		a.fail(InvPayments, "total", "payments still authorized add up to %d cents, completed orders to %d", authorized, completed)
	}
}

func parseInt(s string) int64 {
	var n int64
	fmt.Sscan(s, &n)
	return n
}

func (a *analysis) shipments() {
	for _, id := range a.orderIDs() {
		a.rep.Checked[InvShipments]++
		s := a.d.Shipments[id]
		switch {
		case a.completed(id) && (s == nil || s["status"] != "scheduled"):
			a.fail(InvShipments, id, "order completed but its shipment is %v", s)
		case !a.completed(id) && s != nil && s["status"] == "scheduled":
			a.fail(InvShipments, id, "order did not complete (%s) but a shipment is scheduled", a.endOf(id))
		}
	}
}

// orders checks the orders store against the sagas' outcomes: an order is
// completed there exactly when its saga ended SagaCompleted. A
// complete-order that wrote after its saga gave up on it (a hung or
// abandoned attempt, a stale engine), or a compensation that did not undo
// it, leaves a completed order behind a compensated saga.
func (a *analysis) orders() {
	for _, id := range a.orderIDs() {
		a.rep.Checked[InvOrders]++
		o := a.d.Orders[id]
		done := o != nil && o["status"] == "completed"
		switch {
		case a.completed(id) && !done:
			a.fail(InvOrders, id, "saga completed but the orders store has %v", o)
		case !a.completed(id) && done:
			a.fail(InvOrders, id, "order is completed in the orders store but its saga ended %s", a.endOf(id))
		case done && o["amount_cents"] != "" && o["amount_cents"] != fmt.Sprint(a.sagas[id].Order.AmountCents):
			a.fail(InvOrders, id, "the orders store has amount_cents %s, the order %d", o["amount_cents"], a.sagas[id].Order.AmountCents)
		}
	}
}

// coupons checks the coupon ledger against the sagas' outcomes: per code,
// the count and the customer set are exactly the completed orders holding
// it, within its limit; the claims agree with the outcomes; and orders
// without a coupon left no trace in it.
func (a *analysis) coupons(limits map[string]int64) {
	// holders: code → customer → the completed orders holding it.
	holders := make(map[string]map[string][]string)
	for _, id := range a.orderIDs() {
		o, claim := a.sagas[id].Order, a.d.CouponClaims[id]
		if o == nil {
			continue
		}
		a.rep.Checked[InvCoupons]++
		switch {
		case o.Coupon == "":
			if claim != nil {
				a.fail(InvCoupons, id, "order has no coupon but a coupon claim %v", claim)
			}
		case a.completed(id):
			if claim["status"] != "issued" || claim["code"] != o.Coupon || claim["customer_id"] != o.CustomerID {
				a.fail(InvCoupons, id, "order completed with coupon %s for customer %s but its claim is %v", o.Coupon, o.CustomerID, claim)
			}
			if holders[o.Coupon] == nil {
				holders[o.Coupon] = make(map[string][]string)
			}
			holders[o.Coupon][o.CustomerID] = append(holders[o.Coupon][o.CustomerID], id)
		case claim != nil && claim["status"] != "released":
			a.fail(InvCoupons, id, "order did not complete (%s) but its claim of coupon %s is %v, not released", a.endOf(id), o.Coupon, claim)
		}
	}
	codes := make(map[string]bool)
	for _, m := range []map[string]bool{keys(limits), keys(a.d.Coupons), keys(holders)} {
		maps.Copy(codes, m)
	}
	for _, code := range slices.Sorted(maps.Keys(codes)) {
		a.rep.Checked[InvCoupons]++
		l, limit := a.d.Coupons[code], limits[code]
		if _, seeded := limits[code]; seeded && (!l.HasLimit || l.Limit != limit) {
			a.fail(InvCoupons, code, "limit key is %d (set: %v), but %d was seeded", l.Limit, l.HasLimit, limit)
		}
		held := 0
		for _, customer := range slices.Sorted(maps.Keys(holders[code])) {
			ids := holders[code][customer]
			held += len(ids)
			if len(ids) > 1 {
				a.fail(InvCoupons, code, "customer %s holds it twice: completed orders %s", customer, strings.Join(ids, ", "))
			}
			if !slices.Contains(l.Customers, customer) {
				a.fail(InvCoupons, code, "customer %s holds it (order %s) but is not in its customer set", customer, ids[0])
			}
		}
		for _, c := range slices.Sorted(slices.Values(l.Customers)) {
			if _, ok := holders[code][c]; !ok {
				a.fail(InvCoupons, code, "customer %s is in its customer set but no completed order holds it", c)
			}
		}
		if l.Issued > limit {
			a.fail(InvCoupons, code, "%d issued, more than its limit %d", l.Issued, limit)
		}
		if l.Issued != int64(held) || len(l.Customers) != held {
			a.fail(InvCoupons, code, "issued count %d, %d customers in its set, but %d completed orders hold it", l.Issued, len(l.Customers), held)
		}
	}
}

// keys returns the keys of m as a set.
func keys[V any](m map[string]V) map[string]bool {
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

func (a *analysis) deadLetters() {
	byMarker := make(map[string][]DeadLetter)
	exhausted := make(map[string]int)
	for _, d := range a.d.DeadLetters {
		a.rep.Checked[InvDLQ]++
		if d.Marker != "" {
			if _, ok := a.poison[d.Marker]; !ok {
				a.fail(InvDLQ, d.Marker, "dead letter %s carries a marker no poison record was sent with", d.where())
			}
			byMarker[d.Marker] = append(byMarker[d.Marker], d)
			continue
		}
		if e := a.sagas[d.Key]; e != nil && (e.Kind == KindOutage || e.Kind == KindLocalOutage) && d.Reason == orchestrator.ReasonExhausted {
			exhausted[d.Key]++
			continue
		}
		a.fail(InvDLQ, d.Key, "unexpected dead letter %s: reason %s: %s", d.where(), d.Reason, d.Exception)
	}
	for _, m := range slices.Sorted(maps.Keys(a.poison)) {
		a.rep.Checked[InvDLQ]++
		e, got := a.poison[m], byMarker[m]
		switch {
		case len(got) == 0:
			a.fail(InvDLQ, m, "poison record (key %q) is not in the dead-letter topic; want reason %s", e.ID, e.Poison)
		case len(got) > 1:
			a.fail(InvDLQ, m, "poison record dead-lettered %d times", len(got))
		case got[0].Reason != e.Poison:
			a.fail(InvDLQ, m, "dead-lettered with reason %q (%s), want %q", got[0].Reason, got[0].Exception, e.Poison)
		}
	}
	for _, id := range a.ids() {
		if k := a.sagas[id].Kind; k != KindOutage && k != KindLocalOutage {
			continue
		}
		a.rep.Checked[InvDLQ]++
		if n := exhausted[id]; n != 1 {
			a.fail(InvDLQ, id, "%s saga has %d retries-exhausted dead letters, want 1", a.sagas[id].Kind, n)
		}
	}
	for _, d := range a.d.ParticipantDeadLetters {
		a.rep.Checked[InvDLQ]++
		a.fail(InvDLQ, d.Key, "participant dead letter %s: reason %s: %s", d.where(), d.Reason, d.Exception)
	}
}

// strays reports sagas, commands and ledger entries of ids that are not
// orders of the load: a poison record must not start a saga or cause an
// effect.
func (a *analysis) strays() {
	seen := make(map[string]bool)
	stray := func(id, what string) {
		a.rep.Checked[InvStray]++
		if _, ok := a.sagas[id]; ok || seen[id+what] {
			return
		}
		seen[id+what] = true
		a.fail(InvStray, id, "%s for an id that is not an order of the load", what)
	}
	for _, id := range slices.Sorted(maps.Keys(a.d.Events)) {
		stray(id, "events")
	}
	for _, id := range slices.Sorted(maps.Keys(a.d.States)) {
		stray(id, "a state record")
	}
	for _, id := range slices.Sorted(maps.Keys(a.d.Tombstones)) {
		stray(id, "a tombstone")
	}
	for k := range a.d.Commands {
		stray(k.SagaID, "a command")
	}
	for _, l := range []struct {
		name string
		m    map[string]map[string]string
	}{{"a reservation", a.d.Reservations}, {"a payment", a.d.Payments}, {"a shipment", a.d.Shipments}, {"an orders-store entry", a.d.Orders},
		{"a coupon claim", a.d.CouponClaims}, {"a hold", a.d.Holds}, {"an approval", a.d.Approvals}} {
		for _, id := range slices.Sorted(maps.Keys(l.m)) {
			stray(id, l.name)
		}
	}
}

// Durations of Read.
const (
	// DefaultIdle is how long the topics must be quiet before Read reads
	// them to the end.
	DefaultIdle = 2 * time.Second
)
