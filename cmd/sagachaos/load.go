package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/chaos/check"
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
)

// expectation is what one saga or one poison record must come to; it is
// written to expectations.jsonl and handed to chaos/check.
type expectation struct {
	ID     string       `json:"id"`
	Kind   string       `json:"kind"`
	Order  *order.Order `json:"order,omitempty"`
	Poison string       `json:"poison,omitempty"`
	Marker string       `json:"marker,omitempty"`
	// Variant names the kind of bad input of a poison record.
	Variant string `json:"variant,omitempty"`
}

// plan is the load: the records in send order and what each saga and
// poison record must come to.
type plan struct {
	recs []*kgo.Record
	exps []*expectation
	// sagas are the expectations of the orders (not poison), by id.
	sagas map[string]*expectation
	ids   []string // order ids in send order
	// kinds counts the records of each kind as sent, with the poison
	// variants and the duplicate start records.
	kinds    map[string]int
	variants map[string]int
	dupSends int
}

// The mix of orders, in percent.
var mix = []struct {
	kind   string
	weight int
}{
	{kindComplete, 65}, {kindDeclined, 10}, {kindOutOfStock, 10}, {kindUndeliverable, 10}, {kindDupStart, 5},
}

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
// records (every variant at least once), and the second copy of each
// duplicate start a little later in the stream.
func newPlan(n int, rng *rand.Rand) *plan {
	p := &plan{sagas: make(map[string]*expectation), kinds: make(map[string]int), variants: make(map[string]int)}
	variants := poisonVariants
	poisons := max(len(variants), n/100)
	every := max(1, n/poisons)
	// pending are the second copies of duplicate starts, each due once
	// the stream is at least at.
	type dup struct {
		at  int
		rec *kgo.Record
	}
	var pending []dup
	flush := func(all bool) {
		rest := pending[:0]
		for _, d := range pending {
			if all || len(p.recs) >= d.at {
				p.add(d.rec, "dup-start (second copy)")
				p.dupSends++
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
	sentPoison := 0
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
		e := &expectation{ID: id, Kind: kind, Order: &o}
		p.exps = append(p.exps, e)
		p.sagas[id] = e
		p.ids = append(p.ids, id)
		rec := startRecord(id, mustJSON(o))
		p.add(rec, kind)
		if kind == kindDupStart {
			pending = append(pending, dup{at: len(p.recs) + 1 + rng.IntN(300), rec: startRecord(id, rec.Value)})
		}
		flush(false)
		if (i+1)%every == 0 && sentPoison < poisons && i > 0 {
			v := variants[sentPoison%len(variants)]
			p.poison(v, sentPoison, rng)
			sentPoison++
		}
	}
	for sentPoison < poisons {
		p.poison(variants[sentPoison%len(variants)], sentPoison, rng)
		sentPoison++
	}
	flush(true)
	return p
}

func (p *plan) add(r *kgo.Record, kind string) {
	p.recs = append(p.recs, r)
	p.kinds[kind]++
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
	case kindDeclined:
		o.AmountCents = sim.DefaultPaymentLimitCents + 1 + rng.Int64N(10*sim.DefaultPaymentLimitCents)
	case kindOutOfStock:
		o.Items = append(o.Items, order.Item{SKU: skuScarce, Qty: scarceStock + 1 + rng.Int64N(10)})
	case kindUndeliverable:
		o.ShipTo = order.Address{Country: "XX", City: "Nowhere"}
	}
	return o
}

func hdr(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }

func inbox() string { return message.Inbox(order.Name) }

// startRecord is a start request, as a client sends it.
func startRecord(id string, value []byte) *kgo.Record {
	return &kgo.Record{Topic: inbox(), Key: []byte(id), Value: value, Headers: []kgo.RecordHeader{
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

// earlier returns the id of a complete order sent before, at least a few
// records back, or "" if there is none.
func (p *plan) earlier(rng *rand.Rand, kinds ...string) string {
	for range 100 {
		if len(p.ids) < 10 {
			return ""
		}
		id := p.ids[rng.IntN(len(p.ids)-5)]
		for _, k := range kinds {
			if p.sagas[id].Kind == k {
				return id
			}
		}
	}
	return ""
}

// latest returns the id of the latest order sent of the given kind, whose
// saga is most likely still running, or "".
func (p *plan) latest(kind string) string {
	for i := len(p.ids) - 1; i >= 0; i-- {
		if p.sagas[p.ids[i]].Kind == kind {
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

// sender produces records and remembers the first failure.
type sender struct {
	client *kgo.Client
	wg     sync.WaitGroup
	mu     sync.Mutex
	err    error
	failed int
	acked  int
}

func (s *sender) send(ctx context.Context, r *kgo.Record) {
	s.wg.Add(1)
	s.client.Produce(ctx, r, func(r *kgo.Record, err error) {
		defer s.wg.Done()
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			s.failed++
			if s.err == nil {
				s.err = fmt.Errorf("produce to %s (key %q): %w", r.Topic, r.Key, err)
			}
			return
		}
		s.acked++
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

// sendLoad sends p.recs at rate records per second and waits for them to
// be acknowledged.
func (h *harness) sendLoad(ctx context.Context, p *plan, rate float64) error {
	s := &sender{client: h.client}
	start := time.Now()
	lastLog := start
	for i, r := range p.recs {
		due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			sleep(ctx, d)
		}
		if ctx.Err() != nil {
			break
		}
		s.send(ctx, r)
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
