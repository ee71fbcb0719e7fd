// Package sim holds the reference participants of the order saga (coupon,
// inventory, payment, shipping) and its order store, with their ledgers in
// Redis so that a checker can verify conservation laws from outside.
//
//	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
//	_ = sim.SeedStock(ctx, rdb, map[string]int64{"sku-1": 10})
//	_ = sim.SeedCoupons(ctx, rdb, map[string]int64{"SPRING": 500})
//	for name, h := range sim.Handlers(rdb, sim.DefaultPaymentLimitCents) {
//		p, err := participant.New(name, h, participant.Brokers("localhost:9092"))
//		// … go p.Run(ctx); defer p.Close()
//	}
//	def := order.New(sim.NewOrderStore(rdb))
//
// The Redis keys are an external contract (DESIGN.md, "Participants"):
//
//	ksaga:sim:coupon:<code>:limit         integer: how many coupons of the code may be
//	                                      issued (missing: the code is unknown)
//	ksaga:sim:coupon:<code>:issued        integer: how many are issued now (missing = 0)
//	ksaga:sim:coupon:<code>:customers     set: the customers who hold one now
//	ksaga:sim:coupon-claim:<order_id>     hash: status issued|released, code, customer_id
//	ksaga:sim:stock:<sku>                 integer units in stock (missing = 0)
//	ksaga:sim:reservation:<order_id>      hash: status reserved|released, item:<sku> = qty
//	ksaga:sim:payment:<order_id>          hash: status authorized|cancelled, amount_cents
//	ksaga:sim:shipment:<order_id>         hash: status scheduled|cancelled, country, city
//	ksaga:sim:order:<order_id>            hash: status completed|cancelled, fence (the highest
//	                                      seen), amount_cents and customer_id once completed
//	ksaga:sim:dedupe:<participant>:<saga type>:<msg id>
//	                                      the stored reply JSON, expiring after DedupeTTL
//
// Every command's effect and its dedupe record are written by one Lua script,
// so an effect happens exactly once per message id (of its saga type: two
// saga types may use the same ids), and Handle sends a whole batch in one
// pipelined round trip. Each effect also happens at most once per order: a
// second ReserveInventory for a reserved order succeeds without
// taking more, and a compensation that arrives before its action (a re-ordered
// or late command) leaves a tombstone that refuses the action with
// ReasonCancelled.
//
// The scripts touch several keys of one order that share no hash tag (the key
// names are fixed by the contract), so the participants need a single Redis
// node, or a Sentinel-managed one, not Redis Cluster.
package sim

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
)

// DefaultPaymentLimitCents is the largest amount the payment participant
// authorizes unless told otherwise.
const DefaultPaymentLimitCents = 100000

// DedupeTTL is how long a participant remembers the reply to a message id.
const DedupeTTL = 7 * 24 * time.Hour

// Failure reasons of the reference participants, besides order's own.
const (
	// ReasonCancelled refuses an action whose compensation already ran
	// for the same order (a late or re-ordered command).
	ReasonCancelled = "CANCELLED"
	// ReasonBadCommand answers a command of an unknown type or with an
	// undecodable or invalid payload.
	ReasonBadCommand = "BAD_COMMAND"
)

// Key prefixes; see the package documentation.
const (
	keyCoupon      = "ksaga:sim:coupon:"
	keyCouponClaim = "ksaga:sim:coupon-claim:"
	keyStock       = "ksaga:sim:stock:"
	keyReservation = "ksaga:sim:reservation:"
	keyPayment     = "ksaga:sim:payment:"
	keyShipment    = "ksaga:sim:shipment:"
	keyOrder       = "ksaga:sim:order:"
	keyDedupe      = "ksaga:sim:dedupe:"
)

// CouponLimitKey returns the Redis key of the limit of coupon code.
func CouponLimitKey(code string) string { return keyCoupon + code + ":limit" }

// CouponIssuedKey returns the Redis key of the count of coupons of code
// issued.
func CouponIssuedKey(code string) string { return keyCoupon + code + ":issued" }

// CouponCustomersKey returns the Redis key of the set of customers who hold
// a coupon of code.
func CouponCustomersKey(code string) string { return keyCoupon + code + ":customers" }

// CouponClaimKey returns the Redis key of the coupon claim of an order.
func CouponClaimKey(orderID string) string { return keyCouponClaim + orderID }

// StockKey returns the Redis key of the stock of sku.
func StockKey(sku string) string { return keyStock + sku }

// ReservationKey returns the Redis key of the inventory reservation of an order.
func ReservationKey(orderID string) string { return keyReservation + orderID }

// PaymentKey returns the Redis key of the payment of an order.
func PaymentKey(orderID string) string { return keyPayment + orderID }

// ShipmentKey returns the Redis key of the shipment of an order.
func ShipmentKey(orderID string) string { return keyShipment + orderID }

// AuthorizationID is the authorization id the payment participant gives an
// order's payment, kept in its hash as authorization_id.
func AuthorizationID(orderID string) string { return "auth-" + orderID }

// TrackingNumber is the tracking number the shipping participant gives an
// order's shipment, kept in its hash as tracking_number.
func TrackingNumber(orderID string) string { return "trk-" + orderID }

// OrderKey returns the Redis key of a completed order.
func OrderKey(orderID string) string { return keyOrder + orderID }

// DedupeKey returns the Redis key holding participant's reply to message id
// msgID of a saga of type sagaType (participant.Request.SagaType). Message
// ids are unique within a saga type only, so the type is part of the key.
func DedupeKey(participant, sagaType, msgID string) string {
	return keyDedupe + participant + ":" + sagaType + ":" + msgID
}

// Every script takes KEYS[1] = the dedupe key and ARGV[1] = its TTL in
// seconds. It returns the stored reply when the message was handled before;
// otherwise it performs the effect, sets the local reply, stores it and
// returns it. A reply is the JSON {"outcome":…,"reason":…}.
const (
	luaHead = `
local done = redis.call('GET', KEYS[1])
if done then return done end
local function failure(reason) return '{"outcome":"failure","reason":"' .. reason .. '"}' end
local success = '{"outcome":"success"}'
-- successWith is success with data for the saga (a Lua table).
local function successWith(data) return cjson.encode({outcome = 'success', data = data}) end
local reply
-- integer reads a stock key (missing = 0). A value that is not an integer
-- raises an error before the script writes anything: Redis does not roll
-- back the writes of a script that fails halfway.
local function integer(key)
  local v = redis.call('GET', key)
  if not v then return 0 end
  if not string.match(v, '^-?%d+$') then
    return error({err = 'ERR ' .. key .. ' holds ' .. v .. ', want an integer'})
  end
  return tonumber(v)
end
`
	luaTail = `
redis.call('SET', KEYS[1], reply, 'EX', ARGV[1])
return reply
`
)

// scriptRecord stores the reply ARGV[2] as is: for commands that have no
// effect (BAD_COMMAND).
var scriptRecord = redis.NewScript(luaHead + `reply = ARGV[2]` + luaTail)

// scriptReserve reserves all items of an order or none.
// KEYS[2] = reservation, KEYS[3..] = stock keys; ARGV[2..] = the quantities
// (aligned with KEYS[3..]), then the skus in the same order.
var scriptReserve = redis.NewScript(luaHead + `
local status = redis.call('HGET', KEYS[2], 'status')
local n = #KEYS - 2
if status == 'released' then
  reply = failure('` + ReasonCancelled + `')
elseif status == 'reserved' then
  reply = success
else
  for i = 1, n do
    local have = integer(KEYS[2 + i])
    if have < tonumber(ARGV[1 + i]) then
      reply = failure('` + order.ReasonOutOfStock + `')
      break
    end
  end
  if not reply then
    local fields = {'status', 'reserved'}
    for i = 1, n do
      redis.call('DECRBY', KEYS[2 + i], ARGV[1 + i])
      fields[#fields + 1] = 'item:' .. ARGV[1 + n + i]
      fields[#fields + 1] = ARGV[1 + i]
    end
    redis.call('HSET', KEYS[2], unpack(fields))
    reply = success
  end
end
` + luaTail)

// scriptRelease puts back what the order reserved, once; with no
// reservation it leaves a released tombstone. KEYS[2] = reservation;
// ARGV[2] = the stock key prefix. The stock keys come from the reservation
// itself, so they are not in KEYS: see the package documentation on Cluster.
var scriptRelease = redis.NewScript(luaHead + `
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'reserved' then
  local h = redis.call('HGETALL', KEYS[2])
  local back = {}
  for i = 1, #h, 2 do
    local sku = string.match(h[i], '^item:(.*)$')
    if sku then
      integer(ARGV[2] .. sku) -- check them all before the first write
      back[#back + 1] = {ARGV[2] .. sku, h[i + 1]}
    end
  end
  for _, kv in ipairs(back) do redis.call('INCRBY', kv[1], kv[2]) end
  redis.call('HSET', KEYS[2], 'status', 'released')
elseif not status then
  redis.call('HSET', KEYS[2], 'status', 'released')
end
reply = success
` + luaTail)

// scriptAuthorize authorizes a payment and returns its authorization id
// ("auth-<order id>"). KEYS[2] = payment; ARGV[2] = amount, ARGV[3] = limit,
// ARGV[4] = the authorization id.
var scriptAuthorize = redis.NewScript(luaHead + `
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'cancelled' then
  reply = failure('` + ReasonCancelled + `')
elseif status == 'authorized' then
  reply = successWith({authorization_id = redis.call('HGET', KEYS[2], 'authorization_id') or ARGV[4]})
elseif tonumber(ARGV[2]) > tonumber(ARGV[3]) then
  reply = failure('` + order.ReasonPaymentDeclined + `')
else
  redis.call('HSET', KEYS[2], 'status', 'authorized', 'amount_cents', ARGV[2], 'authorization_id', ARGV[4])
  reply = successWith({authorization_id = ARGV[4]})
end
` + luaTail)

// scriptCancelPayment cancels a payment, or leaves a cancelled tombstone.
// KEYS[2] = payment; ARGV[2] = the authorization id the saga names (empty
// when it has none), kept as cancelled_authorization_id.
var scriptCancelPayment = redis.NewScript(luaHead + `
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'authorized' then
  redis.call('HSET', KEYS[2], 'status', 'cancelled')
elseif not status then
  redis.call('HSET', KEYS[2], 'status', 'cancelled', 'amount_cents', '0')
end
if ARGV[2] ~= '' and (status == 'authorized' or not status) then
  redis.call('HSET', KEYS[2], 'cancelled_authorization_id', ARGV[2])
end
reply = success
` + luaTail)

// scriptSchedule schedules a shipment and returns its tracking number
// ("trk-<order id>"). KEYS[2] = shipment; ARGV[2] = country, ARGV[3] =
// city, ARGV[4] = the tracking number.
var scriptSchedule = redis.NewScript(luaHead + `
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'cancelled' then
  reply = failure('` + ReasonCancelled + `')
elseif status == 'scheduled' then
  reply = successWith({tracking_number = redis.call('HGET', KEYS[2], 'tracking_number') or ARGV[4]})
elseif ARGV[2] == '' or ARGV[2] == 'XX' then
  reply = failure('` + order.ReasonUndeliverable + `')
else
  redis.call('HSET', KEYS[2], 'status', 'scheduled', 'country', ARGV[2], 'city', ARGV[3], 'tracking_number', ARGV[4])
  reply = successWith({tracking_number = ARGV[4]})
end
` + luaTail)

// scriptCancelShipment cancels a shipment, or leaves a cancelled tombstone.
// KEYS[2] = shipment.
var scriptCancelShipment = redis.NewScript(luaHead + `
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'scheduled' then
  redis.call('HSET', KEYS[2], 'status', 'cancelled')
elseif not status then
  redis.call('HSET', KEYS[2], 'status', 'cancelled')
end
reply = success
` + luaTail)

// scriptIssueCoupon issues a coupon to an order: the first-come admission
// of write-up 004 (Redis INCR for the count, SADD for one per customer)
// made one atomic step with the order's claim and the dedupe record, so
// that the count, the customers and the claims always agree. KEYS[2] =
// claim, KEYS[3] = limit, KEYS[4] = issued, KEYS[5] = customers; ARGV[2] =
// customer, ARGV[3] = code. A claim already issued is success (the order
// holds it); a released one refuses a late issue with ReasonCancelled.
// Failures write nothing but the dedupe record.
var scriptIssueCoupon = redis.NewScript(luaHead + `
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'released' then
  reply = failure('` + ReasonCancelled + `')
elseif status == 'issued' then
  reply = success
elseif not redis.call('GET', KEYS[3]) then
  reply = failure('` + order.ReasonCouponUnknown + `')
else
  local limit = integer(KEYS[3])
  local issued = integer(KEYS[4])
  if redis.call('SISMEMBER', KEYS[5], ARGV[2]) == 1 then
    reply = failure('` + order.ReasonCouponAlreadyUsed + `')
  elseif issued >= limit then
    reply = failure('` + order.ReasonCouponExhausted + `')
  else
    redis.call('INCR', KEYS[4])
    redis.call('SADD', KEYS[5], ARGV[2])
    redis.call('HSET', KEYS[2], 'status', 'issued', 'code', ARGV[3], 'customer_id', ARGV[2])
    reply = success
  end
end
` + luaTail)

// scriptReleaseCoupon gives back the coupon an order holds, once: the count
// goes down and the customer leaves the set. With no claim it leaves a
// released tombstone, so that a late issue is refused. KEYS[2] = claim;
// ARGV[2] = the coupon key prefix. The code and the customer come from the
// claim itself, so the count and set keys are not in KEYS: see the package
// documentation on Cluster.
var scriptReleaseCoupon = redis.NewScript(luaHead + `
local claim = redis.call('HMGET', KEYS[2], 'status', 'code', 'customer_id')
if claim[1] == 'issued' then
  local issued = ARGV[2] .. claim[2] .. ':issued'
  integer(issued) -- check before the first write
  redis.call('DECR', issued)
  redis.call('SREM', ARGV[2] .. claim[2] .. ':customers', claim[3])
  redis.call('HSET', KEYS[2], 'status', 'released')
elseif not claim[1] then
  redis.call('HSET', KEYS[2], 'status', 'released')
end
reply = success
` + luaTail)

var allScripts = []*redis.Script{
	scriptRecord, scriptReserve, scriptRelease, scriptAuthorize,
	scriptCancelPayment, scriptSchedule, scriptCancelShipment,
	scriptIssueCoupon, scriptReleaseCoupon,
}

// call is one script invocation; keys and args exclude the dedupe key and
// its TTL, which every script takes first. A call without a script has no
// effect and replies reply, or BAD_COMMAND when reply is empty, without
// touching Redis.
type call struct {
	script *redis.Script
	keys   []string
	args   []any
	reply  string
}

const successReply = `{"outcome":"success"}`

const badCommandReply = `{"outcome":"failure","reason":"` + ReasonBadCommand + `"}`

// bad is the call that stores a BAD_COMMAND reply.
func bad() call { return call{script: scriptRecord, args: []any{badCommandReply}} }

// handler runs each command as one script call, a batch in one pipeline.
type handler struct {
	name string // the participant name, in the dedupe key
	rdb  redis.UniversalClient
	plan func(participant.Request) call
}

var _ participant.Handler = (*handler)(nil)

// Handle implements participant.Handler. Its error is a Redis error: the
// batch is retried, and the commands that did run answer from their dedupe
// records then.
func (h *handler) Handle(ctx context.Context, cmds []participant.Request) ([]message.Reply, error) {
	calls := make([]call, len(cmds))
	for i, c := range cmds {
		if c.MessageID == "" {
			// Without a message id there is nothing to dedupe on: refuse
			// it without an effect (participant.Participant never passes
			// one).
			continue
		}
		calls[i] = h.plan(c)
	}
	results, err := h.exec(ctx, cmds, calls)
	if isNoScript(err) {
		// A new or restarted Redis (or SCRIPT FLUSH). Nothing ran for the
		// commands that got NOSCRIPT, and those that did run answer from
		// their dedupe records, so the whole pipeline can run again.
		for _, s := range allScripts {
			if err := s.Load(ctx, h.rdb).Err(); err != nil {
				return nil, fmt.Errorf("%s: load script: %w", h.name, err)
			}
		}
		results, err = h.exec(ctx, cmds, calls)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", h.name, err)
	}
	replies := make([]message.Reply, len(results))
	for i, r := range results {
		var v struct {
			Outcome string          `json:"outcome"`
			Reason  string          `json:"reason"`
			Data    json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal([]byte(r), &v); err != nil {
			return nil, fmt.Errorf("%s: stored reply %q of message %s: %w", h.name, r, cmds[i].MessageID, err)
		}
		replies[i] = message.Reply{Outcome: v.Outcome, Reason: v.Reason, Data: string(v.Data)}
	}
	return replies, nil
}

func (h *handler) exec(ctx context.Context, cmds []participant.Request, calls []call) ([]string, error) {
	ttl := int64(DedupeTTL / time.Second)
	pipe := h.rdb.Pipeline()
	out := make([]*redis.Cmd, len(calls))
	for i, c := range calls {
		if c.script == nil {
			continue
		}
		keys := append([]string{DedupeKey(h.name, cmds[i].SagaType, cmds[i].MessageID)}, c.keys...)
		args := append([]any{ttl}, c.args...)
		out[i] = c.script.EvalSha(ctx, pipe, keys, args...)
	}
	if pipe.Len() > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			for _, c := range out {
				if c != nil && isNoScript(c.Err()) {
					return nil, c.Err()
				}
			}
			return nil, err
		}
	}
	results := make([]string, len(out))
	for i, c := range out {
		if c == nil {
			results[i] = cmp.Or(calls[i].reply, badCommandReply)
			continue
		}
		s, err := c.Text()
		if err != nil {
			return nil, fmt.Errorf("message %s: %w", cmds[i].MessageID, err)
		}
		results[i] = s
	}
	return results, nil
}

func isNoScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }

// decode decodes a command payload; ok is false when it is not valid JSON
// of type T or fails check.
func decode[T any](payload []byte, check func(*T) bool) (T, bool) {
	var v T
	if err := json.Unmarshal(payload, &v); err != nil {
		return v, false
	}
	return v, check(&v)
}

// NewInventory returns the inventory participant's handler. ReserveInventory
// takes all the order's items from the stock keys or none (failing with
// order.ReasonOutOfStock); ReleaseInventory puts back exactly what the
// order's reservation took. See the package documentation for the keys.
func NewInventory(rdb redis.UniversalClient) participant.Handler {
	return &handler{name: order.Inventory, rdb: rdb, plan: planInventory}
}

func planInventory(c participant.Request) call {
	cmd, ok := decode(c.Payload, func(v *order.InventoryCommand) bool { return v.OrderID != "" })
	if !ok {
		return bad()
	}
	switch c.Type {
	case order.ReserveInventory:
		// Sum repeated skus, in a fixed order, so the script sees one
		// quantity per stock key.
		qty := make(map[string]int64, len(cmd.Items))
		for _, it := range cmd.Items {
			if it.SKU == "" || it.Qty <= 0 {
				return bad()
			}
			qty[it.SKU] += it.Qty
		}
		if len(qty) == 0 {
			return bad()
		}
		skus := make([]string, 0, len(qty))
		for s := range qty {
			skus = append(skus, s)
		}
		sort.Strings(skus)
		keys := []string{ReservationKey(cmd.OrderID)}
		args := make([]any, 0, 2*len(skus))
		for _, s := range skus {
			keys = append(keys, StockKey(s))
			args = append(args, qty[s])
		}
		for _, s := range skus {
			args = append(args, s)
		}
		return call{script: scriptReserve, keys: keys, args: args}
	case order.ReleaseInventory:
		return call{script: scriptRelease, keys: []string{ReservationKey(cmd.OrderID)}, args: []any{keyStock}}
	}
	return bad()
}

// NewCoupon returns the coupon participant's handler. ReserveCoupon issues
// a coupon of the command's code to the order: it fails with
// order.ReasonCouponUnknown when the code has no limit key,
// order.ReasonCouponAlreadyUsed when the customer holds one already and
// order.ReasonCouponExhausted when the limit is reached. ReleaseCoupon gives
// back what the order's claim holds. A command whose code is empty (an
// order without a coupon; the saga skips the step for those, so it sends
// none) is answered success without touching Redis at all.
func NewCoupon(rdb redis.UniversalClient) participant.Handler {
	return &handler{name: order.Coupon, rdb: rdb, plan: planCoupon}
}

func planCoupon(c participant.Request) call {
	cmd, ok := decode(c.Payload, func(v *order.CouponCommand) bool { return v.OrderID != "" })
	if !ok {
		return bad()
	}
	switch c.Type {
	case order.ReserveCoupon:
		if cmd.Code == "" {
			return call{reply: successReply}
		}
		if cmd.CustomerID == "" {
			return bad()
		}
		return call{script: scriptIssueCoupon, keys: []string{
			CouponClaimKey(cmd.OrderID), CouponLimitKey(cmd.Code), CouponIssuedKey(cmd.Code), CouponCustomersKey(cmd.Code),
		}, args: []any{cmd.CustomerID, cmd.Code}}
	case order.ReleaseCoupon:
		if cmd.Code == "" {
			return call{reply: successReply}
		}
		return call{script: scriptReleaseCoupon, keys: []string{CouponClaimKey(cmd.OrderID)}, args: []any{keyCoupon}}
	}
	return bad()
}

// NewPayment returns the payment participant's handler. AuthorizePayment
// fails with order.ReasonPaymentDeclined, writing nothing, when the amount
// exceeds limitCents; zero or less means DefaultPaymentLimitCents.
// CancelPayment cancels an authorized payment, keeping its amount.
func NewPayment(rdb redis.UniversalClient, limitCents int64) participant.Handler {
	if limitCents <= 0 {
		limitCents = DefaultPaymentLimitCents
	}
	return &handler{name: order.Payment, rdb: rdb, plan: func(c participant.Request) call {
		cmd, ok := decode(c.Payload, func(v *order.PaymentCommand) bool { return v.OrderID != "" })
		if !ok {
			return bad()
		}
		key := []string{PaymentKey(cmd.OrderID)}
		switch c.Type {
		case order.AuthorizePayment:
			if cmd.AmountCents <= 0 {
				return bad()
			}
			return call{script: scriptAuthorize, keys: key, args: []any{cmd.AmountCents, limitCents, AuthorizationID(cmd.OrderID)}}
		case order.CancelPayment:
			return call{script: scriptCancelPayment, keys: key, args: []any{cmd.AuthorizationID}}
		}
		return bad()
	}}
}

// NewShipping returns the shipping participant's handler. ScheduleShipment
// fails with order.ReasonUndeliverable when the country is empty or "XX";
// CancelShipment cancels a scheduled shipment.
func NewShipping(rdb redis.UniversalClient) participant.Handler {
	return &handler{name: order.Shipping, rdb: rdb, plan: func(c participant.Request) call {
		cmd, ok := decode(c.Payload, func(v *order.ShippingCommand) bool { return v.OrderID != "" })
		if !ok {
			return bad()
		}
		key := []string{ShipmentKey(cmd.OrderID)}
		switch c.Type {
		case order.ScheduleShipment:
			return call{script: scriptSchedule, keys: key, args: []any{cmd.ShipTo.Country, cmd.ShipTo.City, TrackingNumber(cmd.OrderID)}}
		case order.CancelShipment:
			return call{script: scriptCancelShipment, keys: key}
		}
		return bad()
	}}
}

// Handlers returns the four participants' handlers keyed by participant
// name (order.Coupon, order.Inventory, order.Payment, order.Shipping), for
// participant.New.
func Handlers(rdb redis.UniversalClient, limitCents int64) map[string]participant.Handler {
	return map[string]participant.Handler{
		order.Coupon:    NewCoupon(rdb),
		order.Inventory: NewInventory(rdb),
		order.Payment:   NewPayment(rdb, limitCents),
		order.Shipping:  NewShipping(rdb),
	}
}

// SeedStock sets the stock of each sku, overwriting what was there. It is
// not atomic across skus; seed before orders flow.
func SeedStock(ctx context.Context, rdb redis.UniversalClient, stock map[string]int64) error {
	if len(stock) == 0 {
		return nil
	}
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for sku, n := range stock {
			p.Set(ctx, StockKey(sku), strconv.FormatInt(n, 10), 0)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("seed stock: %w", err)
	}
	return nil
}

// SeedCoupons sets the limit of each coupon code, overwriting the limit that
// was there and leaving what was issued as it is: a code may be raised or
// lowered while orders flow (lowering it below the issued count stops
// issuing, it takes nothing back). A code with no limit is unknown to the
// coupon participant.
func SeedCoupons(ctx context.Context, rdb redis.UniversalClient, limits map[string]int64) error {
	if len(limits) == 0 {
		return nil
	}
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for code, n := range limits {
			p.Set(ctx, CouponLimitKey(code), strconv.FormatInt(n, 10), 0)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("seed coupons: %w", err)
	}
	return nil
}

// OrderStore records completed and cancelled orders in Redis: it is the
// order saga's complete-order step and its compensation. Give it its own
// client to simulate an outage of the order database apart from the
// engine's Redis. Each write is one script on one key, so the client may be
// a Redis Cluster.
//
// Both writes are fenced by the saga.Key in their ctx: the hash keeps the
// highest Fence it has seen (field fence), and a write with a lower one is
// refused with ErrStale. A late Complete of an older attempt therefore
// cannot bring back an order that was cancelled, nor overwrite a newer one.
type OrderStore struct {
	rdb   redis.UniversalClient
	batch *batcher
}

var _ order.Store = (*OrderStore)(nil)

// NewOrderStore returns an OrderStore writing to rdb.
// Concurrent writes share pipelines (see batcher).
func NewOrderStore(rdb redis.UniversalClient) *OrderStore {
	return &OrderStore{rdb: rdb, batch: &batcher{rdb: rdb}}
}

// ErrStale is wrapped by the error of a write whose Fence is lower than one
// the order's record has seen: it comes from an older attempt, and a newer
// attempt or the order's cancellation has been recorded since. The error is
// permanent (retry.IsPermanent).
var ErrStale = errors.New("a newer write of this order was recorded")

// Both scripts take KEYS[1] = the order and ARGV[1] = the write's fence.
// They return {1} when they wrote, or {0, stored status, stored fence}
// when the stored fence is higher.
const luaFence = `
local fence = tonumber(ARGV[1])
local stored = redis.call('HMGET', KEYS[1], 'status', 'fence')
local seen = tonumber(stored[2])
if seen and seen > fence then
  return {0, stored[1] or '', stored[2]}
end
`

// scriptComplete records a completed order. ARGV[2] = amount_cents, ARGV[3]
// = customer_id.
var scriptComplete = redis.NewScript(luaFence + `
redis.call('HSET', KEYS[1], 'status', 'completed', 'amount_cents', ARGV[2], 'customer_id', ARGV[3], 'fence', ARGV[1])
return {1}
`)

// scriptCancel records a cancelled order, keeping what Complete wrote.
var scriptCancel = redis.NewScript(luaFence + `
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'fence', ARGV[1])
return {1}
`)

// Complete records o as completed in the hash ksaga:sim:order:<order_id>
// (status, amount_cents, customer_id, fence), unless the hash has seen a
// higher fence than that of ctx's saga.Key (ErrStale). It is idempotent. A
// Redis error is returned as is, to be retried; an order without an id or a
// ctx without a saga.Key is a permanent error (retry.IsPermanent).
func (s *OrderStore) Complete(ctx context.Context, o *order.Order) error {
	if o == nil || o.OrderID == "" {
		return retry.Permanent(errors.New("complete order: order id is required"))
	}
	return s.write(ctx, "complete", o.OrderID, scriptComplete, o.AmountCents, o.CustomerID)
}

// Cancel records o as cancelled in the hash ksaga:sim:order:<order_id>
// (status cancelled, fence), also when it was never completed, so that a
// late Complete with a lower fence is refused. It keeps the amount and
// customer of a completed order. It is idempotent: a Cancel that finds a
// higher fence on an order that is cancelled already succeeds; on one that
// is not, it fails with ErrStale. Errors are as for Complete.
func (s *OrderStore) Cancel(ctx context.Context, o *order.Order) error {
	if o == nil || o.OrderID == "" {
		return retry.Permanent(errors.New("cancel order: order id is required"))
	}
	err := s.write(ctx, "cancel", o.OrderID, scriptCancel)
	var st *staleError
	if errors.As(err, &st) && st.status == "cancelled" {
		return nil
	}
	return err
}

// staleError is the error of a refused write.
type staleError struct {
	op, orderID, status, seen string
	fence                     int64
}

func (e *staleError) Error() string {
	return fmt.Sprintf("%s order %s at fence %d: the order is %s at fence %s: %v", e.op, e.orderID, e.fence, e.status, e.seen, ErrStale)
}

func (e *staleError) Unwrap() error { return ErrStale }

// write runs script on the order's key with ctx's fence and args.
func (s *OrderStore) write(ctx context.Context, op, orderID string, script *redis.Script, args ...any) error {
	k, ok := saga.KeyFrom(ctx)
	if !ok {
		return retry.Permanent(fmt.Errorf("%s order %s: no saga.Key in ctx: the engine passes one to the step", op, orderID))
	}
	v, err := s.batch.run(ctx, script, []string{OrderKey(orderID)}, append([]any{k.Fence}, args...)...)
	if err != nil {
		return fmt.Errorf("%s order %s: %w", op, orderID, err)
	}
	res, _ := v.([]any)
	if len(res) == 3 && res[0] == int64(0) {
		status, _ := res[1].(string)
		seen, _ := res[2].(string)
		return retry.Permanent(&staleError{op: op, orderID: orderID, status: status, seen: seen, fence: k.Fence})
	}
	return nil
}
