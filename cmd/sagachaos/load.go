package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/chaos/check"
	"github.com/ksaga/ksaga/chaos/check/localfirst"
	"github.com/ksaga/ksaga/internal/ctxtime"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// Expectation kinds, as chaos/check names them.
const (
	kindComplete      = check.KindComplete
	kindDeclined      = check.KindDeclined
	kindOutOfStock    = check.KindOutOfStock
	kindUndeliverable = check.KindUndeliverable
	kindOutage        = check.KindOutage
	kindPoison        = check.KindPoison
	kindDupStart      = check.KindDupStart
	kindDupReply      = check.KindDupReply
	kindCompensate    = check.KindCompensate
	kindCoupon        = check.KindCoupon
	kindCouponUnknown = check.KindCouponUnknown
	// kindParkCompensate is an order that the coupon-park fault
	// compensated while it was parked.
	kindParkCompensate = check.KindParkCompensate
	// The local-first saga's kinds (package localfirst).
	kindLocalComplete   = check.KindLocalComplete
	kindLocalRefused    = check.KindLocalRefused
	kindLocalCompensate = check.KindLocalCompensate
	kindLocalOutage     = check.KindLocalOutage
)

// localKinds are the local-first saga's kinds, in the summary's order.
var localKinds = []string{kindLocalComplete, kindLocalRefused, kindLocalCompensate, kindLocalOutage}

// expectation is what one saga or one poison record must come to; it is
// written to expectations.jsonl and handed to chaos/check.
type expectation struct {
	ID       string               `json:"id"`
	Kind     string               `json:"kind"`
	Order    *order.Order         `json:"order,omitempty"`
	Transfer *localfirst.Transfer `json:"transfer,omitempty"`
	Poison   string               `json:"poison,omitempty"`
	Marker   string               `json:"marker,omitempty"`
	// Variant names the kind of bad input of a poison record.
	Variant string `json:"variant,omitempty"`
	// Skipped marks a poison record that the load did not send: the saga
	// it was keyed by had started more than config.resendWindow before.
	Skipped bool `json:"skipped,omitempty"`
	// Via names the partitioner that the saga's start request (or the
	// poison record) was produced with.
	Via string `json:"via,omitempty"`
	// Large marks an order with a field of largeField bytes.
	Large bool `json:"large,omitempty"`
	// Landed is where a stray record sent through a foreign partitioner
	// landed: its dead-letter copy must say it was forwarded from there.
	Landed *check.Landing `json:"landed,omitempty"`
	// Resumed marks an order that the coupon-park fault sent a Resume
	// while it was parked (check.Expectation.Resumed).
	Resumed bool `json:"resumed,omitempty"`
}

// plan is the load: the records in send order and what each saga and
// poison record must come to.
type plan struct {
	recs []*kgo.Record
	// via is the partitioner of each record of recs.
	via []string
	// after maps the index of a record in recs to the index of the record
	// whose acknowledgement it waits for: a Compensate is sent only once
	// its saga's start request is durable, else it could overtake the
	// start (it lands on another partition) and find no saga.
	after map[int]int
	// landing are the records whose landing partition and offset are kept
	// in their expectation when acknowledged.
	landing map[*kgo.Record]*expectation
	exps    []*expectation
	// sagas are the expectations of the orders (not poison), by id.
	sagas map[string]*expectation
	ids   []string // order ids in send order
	// kinds counts the records of each kind as sent, with the poison
	// variants and the duplicate start records.
	kinds    map[string]int
	variants map[string]int
	dupSends int
	// partitioners counts the records sent through each partitioner.
	partitioners map[string]int
	// large counts the large orders, bursts their bursts.
	large, bursts int
	// compensates counts the Compensate records.
	compensates int
	// transfers counts the local-first saga's transfers.
	transfers int
	// rotate counts the records of each use that rotates over the
	// partitioners.
	rotate map[string]int
	// coupons are the coupon limits to seed, by code (couponLimits).
	coupons map[string]int64
	// surges are batches of start requests kept apart from recs: the
	// redis-rollback-catchup faults send one each right before a
	// rollback, so that the engines are reading batches when it lands,
	// and redis-evict one before it deletes the keys of running sagas
	// (see harness.surge). surged counts those sent.
	surges [][]*kgo.Record
	surged int
	// parkSurges are batches of coupon orders kept apart from recs: each
	// coupon-park fault sends one right after it stops the coupon
	// participant, so that orders park (see harness.couponPark).
	// parkSurged counts those sent.
	parkSurges [][]*kgo.Record
	parkSurged int
	// recent, when not 0, is how many ids back the records keyed by an
	// earlier saga reach, and how many records later a duplicate start's
	// second copy comes at most (see newPlan).
	recent int
	// startOf is the index in recs of each saga's first start request;
	// reuses maps the index of every later record keyed by a saga of the
	// load (a second start, a conflicting start, a Compensate, a poison
	// record) to it. sendLoad sends such a record only within
	// config.resendWindow of that start; skipped counts those it did not
	// send, by what they are.
	startOf map[string]int
	reuses  map[int]int
	skipped map[string]int
}

// surgeSize orders make one surge, sent over surgeOver.
const (
	surgeSize = 100
	surgeOver = 500 * time.Millisecond
)

// addSurges adds k surges of surgeSize complete orders, sent through
// murmur2, to p.
func (p *plan) addSurges(k int, rng *rand.Rand) {
	for b := range k {
		var recs []*kgo.Record
		for i := range surgeSize {
			id := fmt.Sprintf("o-surge-%03d-%03d", b, i)
			o := newOrder(id, kindComplete, rng)
			e := &expectation{ID: id, Kind: kindComplete, Order: &o, Via: viaMurmur2}
			p.exps = append(p.exps, e)
			p.sagas[id] = e
			p.ids = append(p.ids, id)
			recs = append(recs, startRecord(id, mustJSON(o)))
		}
		p.surges = append(p.surges, recs)
	}
}

// addParkSurges adds k surges of parkSurgeSize coupon orders, sent through
// murmur2, to p.
func (p *plan) addParkSurges(k int, rng *rand.Rand) {
	for b := range k {
		var recs []*kgo.Record
		for i := range parkSurgeSize {
			id := fmt.Sprintf("o-park-%02d-%03d", b, i)
			o := newOrder(id, kindCoupon, rng)
			e := &expectation{ID: id, Kind: kindCoupon, Order: &o, Via: viaMurmur2}
			p.exps = append(p.exps, e)
			p.sagas[id] = e
			p.ids = append(p.ids, id)
			recs = append(recs, startRecord(id, mustJSON(o)))
		}
		p.parkSurges = append(p.parkSurges, recs)
	}
}

// The mix of orders, in percent. Besides the coupon orders, half of the
// declined and undeliverable orders carry a coupon (couponCodes): it is
// issued, or refused, and given back by their compensation.
var mix = []struct {
	kind   string
	weight int
}{
	{kindComplete, 54}, {kindCoupon, 8}, {kindCouponUnknown, 1}, {kindDeclined, 10}, {kindOutOfStock, 10},
	{kindUndeliverable, 10}, {kindDupStart, 5}, {kindCompensate, 2},
}

// localMix is the mix of the local-first saga's transfers, in percent.
var localMix = []struct {
	kind   string
	weight int
}{
	{kindLocalComplete, 70}, {kindLocalRefused, 15}, {kindLocalCompensate, 15},
}

// localEvery is one transfer of the local-first saga per this many orders.
const localEvery = 10

// couponCodes are the coupon codes of the load, whose limits
// (couponLimits) are small so that they run out during the run; the
// customers (500 of them) collide, so that some orders are refused
// COUPON_ALREADY_USED. couponUnknown is a code with no limit.
var couponCodes = []string{"CHAOS-A", "CHAOS-B", "CHAOS-C"}

const couponUnknown = "CHAOS-NONE"

// couponLimits returns the limits of couponCodes for a load of n orders,
// which has about n/10 orders holding a coupon at some time.
func couponLimits(n int) map[string]int64 {
	return map[string]int64{"CHAOS-A": int64(max(5, n/50)), "CHAOS-B": int64(max(3, n/200)), "CHAOS-C": 5}
}

// The share of start requests that go through franz-go's murmur2, in
// percent; the rest are spread evenly over the foreign partitioners.
const murmur2Share = 40

// Large orders: bursts of largeBurst orders whose saga ids share a home
// partition, each with a ship_to.city of largeField bytes, so that the
// engine meets several of them in one batch and its records for one
// partition add up to more than the broker's 1 MB limit (message.max.bytes
// 1048588, Kafka's default, which kfaked keeps). The inbox takes values up
// to 256 KiB.
const (
	largeField = 190 << 10
	largeBurst = 6
)

// compensateReason is the ksaga-reason of the load's Compensate records;
// the engine names it in the compensation's events.
const compensateReason = check.CompensateReason

// poisonVariant is a kind of bad input and the dead-letter reason it must
// get.
type poisonVariant struct {
	name   string
	reason string
}

var poisonVariants = []poisonVariant{
	{"not-json", orchestrator.ReasonUndecodable},
	{"unknown-message-type", orchestrator.ReasonUnknownType},
	{"missing-key", orchestrator.ReasonMissingSagaID},
	{"empty-key", orchestrator.ReasonMissingSagaID},
	{"saga-id-header-mismatch", orchestrator.ReasonMissingSagaID},
	{"reply-unknown-saga", orchestrator.ReasonUnknownSaga},
	{"reply-without-in-reply-to", orchestrator.ReasonUndecodable},
	{"invalid-utf8", orchestrator.ReasonUndecodable},
	{"oversized-value", orchestrator.ReasonTooLarge},
	{"oversized-header", orchestrator.ReasonTooLarge},
	{"negative-amount", orchestrator.ReasonInvalid},
	{"absurd-amount", orchestrator.ReasonInvalid},
	{"conflicting-start", orchestrator.ReasonConflictingStart},
	{"invalid-utf8-in-json", orchestrator.ReasonUndecodable},
	{"unknown-message-type-live-saga", orchestrator.ReasonUnknownType},
	{"reply-stale-step-live-saga", orchestrator.ReasonNotWaiting},
}

// Sizes of the oversized poison records: over the engine's 256 KiB value
// and 64 KiB header limits.
const (
	oversizedValue  = 300 << 10
	oversizedHeader = 100 << 10
)

// newPlan builds the load of n orders: the mix above, about 1% poison
// records (every variant at least once), the second copy of each duplicate
// start and the Compensate of each compensate order a little later in the
// stream, stray replies for unknown sagas through every foreign
// partitioner, and bursts of large orders on top of the n. With recent
// (not 0), the records keyed by an earlier saga pick one of the last
// recent ids, and a second copy comes at most recent records after the
// first: with a short retention, an older saga may have been deleted by
// the time they come (config.resendWindow).
func newPlan(n int, rng *rand.Rand, recent int) *plan {
	p := &plan{
		sagas: make(map[string]*expectation), kinds: make(map[string]int), variants: make(map[string]int),
		after: make(map[int]int), landing: make(map[*kgo.Record]*expectation),
		partitioners: make(map[string]int), rotate: make(map[string]int),
		coupons: couponLimits(n), recent: recent,
		startOf: make(map[string]int), reuses: make(map[int]int), skipped: make(map[string]int),
	}
	dupGap := 300
	if recent > 0 {
		dupGap = min(dupGap, recent)
	}
	variants := poisonVariants
	poisons := max(len(variants), n/100)
	every := max(1, n/poisons)
	strays := max(2*len(foreignPartitioners), n/500)
	strayEvery := max(1, n/strays)
	bursts := min(20, max(2, n/600))
	burstEvery := max(1, n/bursts)
	// pending are records due once the stream is at least at: the second
	// copies of duplicate starts and the Compensates.
	type due struct {
		at    int
		rec   *kgo.Record
		kind  string
		via   string
		after int // index in p.recs of the record it waits for, or -1
	}
	var pending []due
	flush := func(all bool) {
		rest := pending[:0]
		for _, d := range pending {
			if all || len(p.recs) >= d.at {
				p.addVia(d.rec, d.kind, d.via)
				if d.after >= 0 {
					p.after[len(p.recs)-1] = d.after
				}
				if d.kind == kindDupStart+" (second copy)" {
					p.dupSends++
				}
			} else {
				rest = append(rest, d)
			}
		}
		pending = rest
	}
	total := 0
	for _, m := range mix {
		total += m.weight
	}
	sentPoison, sentStray := 0, 0
	for i := range n {
		id := fmt.Sprintf("o-%06d", i)
		w, kind := rng.IntN(total), ""
		for _, m := range mix {
			if w < m.weight {
				kind = m.kind
				break
			}
			w -= m.weight
		}
		o := newOrder(id, kind, rng)
		via := pickVia(rng)
		if kind == kindCompensate {
			// The Compensate, not the start, goes through the foreign
			// partitioners: it must find the saga (see plan.after).
			via = viaMurmur2
		}
		e := &expectation{ID: id, Kind: kind, Order: &o, Via: via}
		p.exps = append(p.exps, e)
		p.sagas[id] = e
		p.ids = append(p.ids, id)
		rec := startRecord(id, mustJSON(o))
		p.addVia(rec, kind, via)
		switch kind {
		case kindDupStart:
			pending = append(pending, due{at: len(p.recs) + 1 + rng.IntN(dupGap), rec: startRecord(id, rec.Value),
				kind: kindDupStart + " (second copy)", via: p.next("dup-start", partitionerNames), after: -1})
		case kindCompensate:
			pending = append(pending, due{at: len(p.recs) + rng.IntN(20), rec: compensateRecord(id),
				kind: "compensate", via: p.next("compensate", partitionerNames), after: len(p.recs) - 1})
			p.compensates++
		}
		flush(false)
		if (i+1)%every == 0 && sentPoison < poisons && i > 0 {
			v := variants[sentPoison%len(variants)]
			p.poison(v, sentPoison, rng)
			sentPoison++
		}
		if (i+1)%strayEvery == strayEvery/2 && sentStray < strays {
			p.stray(sentStray)
			sentStray++
		}
		if (i+1)%burstEvery == burstEvery/2 && p.bursts < bursts {
			p.largeBurst(rng)
		}
		if i%localEvery == localEvery/2 {
			if c := p.transfer(rng); c != nil {
				pending = append(pending, due{at: len(p.recs) + rng.IntN(20), rec: c,
					kind: "compensate", via: p.next("compensate", partitionerNames), after: len(p.recs) - 1})
			}
		}
	}
	for sentPoison < poisons {
		p.poison(variants[sentPoison%len(variants)], sentPoison, rng)
		sentPoison++
	}
	for sentStray < strays {
		p.stray(sentStray)
		sentStray++
	}
	for p.bursts < bursts {
		p.largeBurst(rng)
	}
	flush(true)
	return p
}

// pickVia picks the partitioner of a start request.
func pickVia(rng *rand.Rand) string {
	if rng.IntN(100) < murmur2Share {
		return viaMurmur2
	}
	return foreignPartitioners[rng.IntN(len(foreignPartitioners))]
}

// next returns the next of names for use, in turn.
func (p *plan) next(use string, names []string) string {
	v := names[p.rotate[use]%len(names)]
	p.rotate[use]++
	return v
}

// stray adds stray record number k: a reply for a saga that does not
// exist, through the next foreign partitioner. It must be moved to its
// home partition and dead-lettered there (unknown-saga), once.
func (p *plan) stray(k int) {
	via := p.next("stray", foreignPartitioners)
	key := fmt.Sprintf("s-%05d", k)
	marker := fmt.Sprintf("stray-%05d-%s", k, via)
	r := replyRecord(key, order.StepReserveInventory, key+"/"+order.StepReserveInventory+"/do", message.OutcomeSuccess)
	r.Headers = append(r.Headers, hdr(headerMarker, marker))
	e := &expectation{ID: key, Kind: kindPoison, Poison: orchestrator.ReasonUnknownSaga, Marker: marker,
		Variant: "stray-reply-unknown-saga via " + via, Via: via}
	p.exps = append(p.exps, e)
	p.landing[r] = e
	p.addVia(r, kindPoison, via)
	p.variants[e.Variant]++
}

// largeBurst adds a burst of largeBurst large complete orders whose ids
// share a home partition. Even bursts go through murmur2, so they land on
// that partition together; odd ones through the foreign partitioners, so
// the engine moves them there.
func (p *plan) largeBurst(rng *rand.Rand) {
	b := p.bursts
	p.bursts++
	home := int32(b % partitions)
	city := strings.Repeat("Llanfairpwllgwyngyll", largeField/20+1)[:largeField]
	for k, added := 0, 0; added < largeBurst; k++ {
		id := fmt.Sprintf("o-large-%02d-%03d", b, k)
		if message.HomePartition(id, partitions) != home {
			continue
		}
		added++
		o := newOrder(id, kindComplete, rng)
		o.ShipTo.City = city
		via := viaMurmur2
		if b%2 == 1 {
			via = p.next("large", foreignPartitioners)
		}
		e := &expectation{ID: id, Kind: kindComplete, Order: &o, Via: via, Large: true}
		p.exps = append(p.exps, e)
		p.sagas[id] = e
		p.ids = append(p.ids, id)
		p.addVia(startRecord(id, mustJSON(o)), kindComplete, via)
		p.large++
	}
}

// transfer adds a transfer of the local-first saga, of a kind picked from
// localMix. For a local-compensate transfer it returns the Compensate to
// send once its start is acknowledged; its start goes through murmur2, the
// others' through any partitioner.
func (p *plan) transfer(rng *rand.Rand) *kgo.Record {
	id := fmt.Sprintf("l-%06d", p.transfers)
	p.transfers++
	total := 0
	for _, m := range localMix {
		total += m.weight
	}
	w, kind := rng.IntN(total), ""
	for _, m := range localMix {
		if w < m.weight {
			kind = m.kind
			break
		}
		w -= m.weight
	}
	t := localfirst.Transfer{TransferID: id, Account: fmt.Sprintf("acct-%d", rng.IntN(10)), AmountCents: 1 + rng.Int64N(10_000), Refuse: kind == kindLocalRefused}
	via := pickVia(rng)
	if kind == kindLocalCompensate {
		via = viaMurmur2
	}
	e := &expectation{ID: id, Kind: kind, Transfer: &t, Via: via}
	p.exps = append(p.exps, e)
	p.sagas[id] = e
	p.ids = append(p.ids, id)
	p.addVia(startRecordOf(localfirst.Name, id, mustJSON(t)), kind, via)
	if kind == kindLocalCompensate {
		return compensateRecordOf(localfirst.Name, id)
	}
	return nil
}

// add adds a record sent through murmur2.
func (p *plan) add(r *kgo.Record, kind string) { p.addVia(r, kind, viaMurmur2) }

func (p *plan) addVia(r *kgo.Record, kind, via string) {
	if id := string(r.Key); p.sagas[id] != nil {
		if first, ok := p.startOf[id]; ok {
			p.reuses[len(p.recs)] = first
		} else if header(r, message.HeaderMessageType) == message.TypeStartSaga {
			p.startOf[id] = len(p.recs)
		}
	}
	p.recs = append(p.recs, r)
	p.via = append(p.via, via)
	p.kinds[kind]++
	p.partitioners[via]++
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// newOrder returns an order of the given kind.
func newOrder(id, kind string, rng *rand.Rand) order.Order {
	o := order.Order{
		OrderID: id, CustomerID: "c-" + strconv.Itoa(rng.IntN(500)), Currency: "EUR",
		AmountCents: 100 + rng.Int64N(sim.DefaultPaymentLimitCents-100),
		ShipTo:      order.Address{Country: "DE", City: "Berlin"},
	}
	for range 1 + rng.IntN(3) {
		o.Items = append(o.Items, order.Item{SKU: fmt.Sprintf("sku-%d", 1+rng.IntN(5)), Qty: 1 + rng.Int64N(3)})
	}
	switch kind {
	case kindCoupon:
		o.Coupon = couponCodes[rng.IntN(len(couponCodes))]
	case kindCouponUnknown:
		o.Coupon = couponUnknown
	case kindDeclined:
		o.AmountCents = sim.DefaultPaymentLimitCents + 1 + rng.Int64N(10*sim.DefaultPaymentLimitCents)
	case kindOutOfStock:
		o.Items = append(o.Items, order.Item{SKU: skuScarce, Qty: scarceStock + 1 + rng.Int64N(10)})
	case kindUndeliverable:
		o.ShipTo = order.Address{Country: "XX", City: "Nowhere"}
	}
	if (kind == kindDeclined || kind == kindUndeliverable) && rng.IntN(2) == 0 {
		o.Coupon = couponCodes[rng.IntN(len(couponCodes))]
	}
	return o
}

func hdr(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }

func inbox() string { return message.Inbox(order.Name) }

// startRecord is a start request of the order saga, as a client sends it.
func startRecord(id string, value []byte) *kgo.Record { return startRecordOf(order.Name, id, value) }

// startRecordOf is a start request of a saga of type sagaType.
func startRecordOf(sagaType, id string, value []byte) *kgo.Record {
	return &kgo.Record{Topic: message.Inbox(sagaType), Key: []byte(id), Value: value, Headers: []kgo.RecordHeader{
		hdr(message.HeaderMessageType, message.TypeStartSaga),
		hdr(message.HeaderMessageID, "start-"+id),
	}}
}

// replyRecord is a reply as a participant sends it, to command inReplyTo
// ("<saga id>/<step>/do").
func replyRecord(id, step, inReplyTo, outcome string) *kgo.Record {
	return &kgo.Record{Topic: inbox(), Key: []byte(id), Value: mustJSON(map[string]string{"outcome": outcome}), Headers: []kgo.RecordHeader{
		hdr(message.HeaderSagaID, id),
		hdr(message.HeaderSagaType, order.Name),
		hdr(message.HeaderMessageType, message.TypeReply),
		hdr(message.HeaderMessageID, inReplyTo+"/reply"),
		hdr(message.HeaderInReplyTo, inReplyTo),
		hdr(message.HeaderStep, step),
		hdr(message.HeaderStepAttempt, "1"),
		hdr(message.HeaderOutcome, outcome),
	}}
}

// compensateRecord is an operator's Compensate for order id.
func compensateRecord(id string) *kgo.Record { return compensateRecordOf(order.Name, id) }

// compensateRecordOf is an operator's Compensate for saga id of type
// sagaType.
func compensateRecordOf(sagaType, id string) *kgo.Record {
	return &kgo.Record{Topic: message.Inbox(sagaType), Key: []byte(id), Headers: []kgo.RecordHeader{
		hdr(message.HeaderSagaID, id),
		hdr(message.HeaderSagaType, sagaType),
		hdr(message.HeaderMessageType, message.TypeCompensate),
		hdr(message.HeaderMessageID, "compensate-"+id),
		hdr(message.HeaderReason, compensateReason),
	}}
}

// earlier returns the id of an order of one of kinds sent before, at least
// a few records back, or "" if there is none. Like latest, it picks only
// orders whose start went through murmur2: a record keyed by a live saga,
// sent through murmur2 as poison records are, then lands on the partition
// of the saga's start, after it, and finds the saga.
func (p *plan) earlier(rng *rand.Rand, kinds ...string) string {
	for range 100 {
		if len(p.ids) < 10 {
			return ""
		}
		from := 0
		if p.recent > 0 {
			from = max(0, len(p.ids)-p.recent)
		}
		id := p.ids[from+rng.IntN(len(p.ids)-5-from)]
		if e := p.sagas[id]; e.Via != viaMurmur2 || e.Large {
			continue
		}
		for _, k := range kinds {
			if p.sagas[id].Kind == k {
				return id
			}
		}
	}
	return ""
}

// latest returns the id of the latest order sent of the given kind through
// murmur2, whose saga is most likely still running, or "".
func (p *plan) latest(kind string) string {
	for i := len(p.ids) - 1; i >= 0; i-- {
		if e := p.sagas[p.ids[i]]; e.Kind == kind && e.Via == viaMurmur2 && !e.Large {
			return p.ids[i]
		}
	}
	return ""
}

// poison adds poison record number k of variant v.
func (p *plan) poison(v poisonVariant, k int, rng *rand.Rand) {
	key := fmt.Sprintf("p-%05d", k)
	marker := fmt.Sprintf("poison-%05d-%s", k, v.name)
	valid := mustJSON(newOrder(key, kindComplete, rng))
	var r *kgo.Record
	switch v.name {
	case "not-json":
		r = startRecord(key, []byte(`{"order_id": "`+key+`", this is not JSON`))
	case "unknown-message-type":
		r = startRecord(key, valid)
		r.Headers[0] = hdr(message.HeaderMessageType, "ChaosMonkey")
	case "missing-key":
		r = startRecord(key, valid)
		r.Key, key = nil, ""
	case "empty-key":
		r = startRecord(key, valid)
		r.Key, key = []byte{}, ""
	case "saga-id-header-mismatch":
		// The key names a live saga; the header names another one.
		if id := p.earlier(rng, kindComplete); id != "" {
			key = id
		}
		r = replyRecord(key, order.StepReserveInventory, key+"/"+order.StepReserveInventory+"/do", message.OutcomeSuccess)
		r.Headers[0] = hdr(message.HeaderSagaID, key+"-someone-else")
	case "reply-unknown-saga":
		r = replyRecord(key, order.StepReserveInventory, key+"/"+order.StepReserveInventory+"/do", message.OutcomeSuccess)
	case "reply-without-in-reply-to":
		// Keyed by a live saga: it must be dead-lettered without touching it.
		if id := p.earlier(rng, kindComplete); id != "" {
			key = id
		}
		r = replyRecord(key, order.StepReserveInventory, key+"/"+order.StepReserveInventory+"/do", message.OutcomeSuccess)
		r.Headers = deleteHeader(r.Headers, message.HeaderInReplyTo)
	case "invalid-utf8":
		r = startRecord(key, []byte("\xff\xfe\xfd invalid UTF-8 \xc3\x28 \xa0\xa1"))
	case "invalid-utf8-in-json":
		o := newOrder(key, kindComplete, rng)
		o.CustomerID = "c-\xff\xfe"
		r = startRecord(key, bytes.ReplaceAll(mustJSON(o), []byte(`c-\ufffd\ufffd`), []byte("c-\xff\xfe")))
	case "oversized-value":
		r = startRecord(key, bytes.Repeat([]byte("x"), oversizedValue))
	case "oversized-header":
		r = startRecord(key, valid)
		r.Headers = append(r.Headers, hdr("chaos-padding", string(bytes.Repeat([]byte("h"), oversizedHeader))))
	case "negative-amount":
		o := newOrder(key, kindComplete, rng)
		o.AmountCents = -4599
		r = startRecord(key, mustJSON(o))
	case "absurd-amount":
		o := newOrder(key, kindComplete, rng)
		o.AmountCents = 1_000_000_000_000_000
		r = startRecord(key, mustJSON(o))
	case "conflicting-start":
		// A start that reuses a live id with another payload. The saga
		// itself must be left as it is: its kind becomes dup-start.
		id := p.earlier(rng, kindComplete, kindDupStart)
		if id == "" {
			id = key
		} else {
			p.sagas[id].Kind = kindDupStart
		}
		o := *p.sagas[id].Order
		o.AmountCents++
		key = id
		r = startRecord(id, mustJSON(o))
	case "unknown-message-type-live-saga":
		if id := p.latest(kindComplete); id != "" {
			key = id
		}
		r = replyRecord(key, order.StepReserveInventory, key+"/"+order.StepReserveInventory+"/do", message.OutcomeSuccess)
		r.Headers = deleteHeader(r.Headers, message.HeaderMessageType)
		r.Headers = append(r.Headers, hdr(message.HeaderMessageType, "ChaosMonkey"))
	case "reply-stale-step-live-saga":
		if id := p.latest(kindComplete); id != "" {
			key = id
		}
		r = replyRecord(key, order.StepCompleteOrder, key+"/"+order.StepCompleteOrder+"/do", message.OutcomeSuccess)
	default:
		panic("unknown poison variant " + v.name)
	}
	r.Headers = append(r.Headers, hdr(headerMarker, marker))
	p.exps = append(p.exps, &expectation{ID: key, Kind: kindPoison, Poison: v.reason, Marker: marker, Variant: v.name})
	p.add(r, kindPoison)
	p.variants[v.name]++
}

func deleteHeader(hs []kgo.RecordHeader, key string) []kgo.RecordHeader {
	out := hs[:0]
	for _, h := range hs {
		if h.Key != key {
			out = append(out, h)
		}
	}
	return out
}

// sender produces records, each through the producer of its partitioner,
// and remembers the first failure.
type sender struct {
	producers map[string]*kgo.Client
	// landing, when set, receives the landing partition and offset of
	// its records.
	landing map[*kgo.Record]*expectation
	wg      sync.WaitGroup
	mu      sync.Mutex
	err     error
	failed  int
	acked   int
	// watched are closed when their record is acknowledged (or failed).
	watched map[*kgo.Record]chan struct{}
}

func newSender(producers map[string]*kgo.Client) *sender {
	return &sender{producers: producers, watched: make(map[*kgo.Record]chan struct{})}
}

// watch returns a channel that is closed when r, sent later, is
// acknowledged or fails.
func (s *sender) watch(r *kgo.Record) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, ok := s.watched[r]
	if !ok {
		ch = make(chan struct{})
		s.watched[r] = ch
	}
	return ch
}

func (s *sender) send(ctx context.Context, r *kgo.Record, via string) {
	cl := s.producers[via]
	if cl == nil {
		panic("no producer for partitioner " + via)
	}
	s.wg.Add(1)
	cl.Produce(ctx, r, func(r *kgo.Record, err error) {
		defer s.wg.Done()
		s.mu.Lock()
		defer s.mu.Unlock()
		if ch, ok := s.watched[r]; ok {
			close(ch)
			delete(s.watched, r)
		}
		if err != nil {
			s.failed++
			if s.err == nil {
				s.err = fmt.Errorf("produce to %s via %s (key %q): %w", r.Topic, via, r.Key, err)
			}
			return
		}
		s.acked++
		if e := s.landing[r]; e != nil {
			e.Landed = &check.Landing{Partition: r.Partition, Offset: r.Offset}
		}
	})
}

// wait waits for every record sent to be acknowledged or failed.
func (s *sender) wait() error {
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return fmt.Errorf("%d records were not written (a record that may or may not be on the inbox makes the expectations ambiguous): %w", s.failed, s.err)
	}
	return nil
}

// skip marks record i of reuses as not sent, and takes it out of what the
// load expects.
func (p *plan) skip(i int) {
	r := p.recs[i]
	what := "other"
	switch m := header(r, headerMarker); {
	case m != "":
		what = "poison"
		for _, e := range p.exps {
			if e.Marker == m {
				e.Skipped = true
			}
		}
	case header(r, message.HeaderMessageType) == message.TypeStartSaga:
		what = "second start"
		p.dupSends--
	case header(r, message.HeaderMessageType) == message.TypeCompensate:
		what = "Compensate"
		p.compensates--
	}
	p.skipped[what]++
}

// sendLoad sends p.recs at rate records per second and waits for them to
// be acknowledged. A record that waits for another (plan.after) is sent
// only once that one is acknowledged. A record keyed by a saga that
// started more than config.resendWindow before is not sent (plan.skip).
func (h *harness) sendLoad(ctx context.Context, p *plan, rate float64) error {
	s := newSender(h.producers)
	s.landing = p.landing
	waits := make(map[int]<-chan struct{})
	for _, dep := range p.after {
		if _, ok := waits[dep]; !ok {
			waits[dep] = s.watch(p.recs[dep])
		}
	}
	window := h.cfg.resendWindow()
	sentAt := make([]time.Time, len(p.recs))
	start := time.Now()
	lastLog := start
	for i, r := range p.recs {
		due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			ctxtime.Sleep(ctx, d)
		}
		if dep, ok := p.after[i]; ok {
			select {
			case <-waits[dep]:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		if first, ok := p.reuses[i]; ok && window > 0 && time.Since(sentAt[first]) > window {
			p.skip(i)
			continue
		}
		sentAt[i] = time.Now()
		s.send(ctx, r, p.via[i])
		if time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			n, _ := h.track.ended(p.ids)
			s.mu.Lock()
			acked := s.acked
			s.mu.Unlock()
			h.logf("load: %d/%d records sent, %d acknowledged, %d sagas ended", i+1, len(p.recs), acked, n)
		}
	}
	if err := s.wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h.logf("load: all %d records sent and acknowledged in %.1fs", len(p.recs), time.Since(start).Seconds())
	return nil
}
