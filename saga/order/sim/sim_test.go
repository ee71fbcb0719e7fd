package sim_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

func newRedis(t *testing.T) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func cmd(t *testing.T, typ, msgID string, payload any) participant.Request {
	t.Helper()
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatalf("encode payload: %v", err)
	}
	return participant.Request{Type: typ, MessageID: msgID, Payload: b, SagaID: "s", SagaType: order.Name}
}

func reserve(t *testing.T, msgID, orderID string, items ...order.Item) participant.Request {
	return cmd(t, order.ReserveInventory, msgID, order.InventoryCommand{OrderID: orderID, Items: items})
}

func release(t *testing.T, msgID, orderID string) participant.Request {
	return cmd(t, order.ReleaseInventory, msgID, order.InventoryCommand{OrderID: orderID})
}

func handle(t *testing.T, h participant.Handler, cmds ...participant.Request) []message.Reply {
	t.Helper()
	replies, err := h.Handle(context.Background(), cmds)
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if len(replies) != len(cmds) {
		t.Fatalf("got %d replies, want %d", len(replies), len(cmds))
	}
	return replies
}

var ok = message.Reply{Outcome: message.OutcomeSuccess}

func fail(reason string) message.Reply {
	return message.Reply{Outcome: message.OutcomeFailure, Reason: reason}
}

func seed(t *testing.T, rdb *redis.Client, stock map[string]int64) {
	t.Helper()
	if err := sim.SeedStock(context.Background(), rdb, stock); err != nil {
		t.Fatalf("SeedStock: %v", err)
	}
}

// wantStock checks the stock keys.
func wantStock(t *testing.T, rdb *redis.Client, want map[string]int64) {
	t.Helper()
	for sku, n := range want {
		got, err := rdb.Get(context.Background(), sim.StockKey(sku)).Int64()
		if err == redis.Nil {
			got, err = 0, nil
		}
		if err != nil {
			t.Fatalf("get stock %s: %v", sku, err)
		}
		if got != n {
			t.Errorf("stock %s: got %d, want %d", sku, got, n)
		}
	}
}

// wantHash checks a hash; a nil want means the key must not exist.
func wantHash(t *testing.T, rdb *redis.Client, key string, want map[string]string) {
	t.Helper()
	got, err := rdb.HGetAll(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("hgetall %s: %v", key, err)
	}
	if len(want) == 0 && len(got) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s: got %v, want %v", key, got, want)
	}
}

func wantReplies(t *testing.T, got []message.Reply, want ...message.Reply) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("replies: got %+v, want %+v", got, want)
	}
}

func TestReserveAllOrNothing(t *testing.T) {
	rdb := newRedis(t)
	inv := sim.NewInventory(rdb)
	seed(t, rdb, map[string]int64{"sku-a": 5, "sku-b": 1})

	tests := []struct {
		name    string
		cmd     participant.Request
		want    message.Reply
		stock   map[string]int64
		orderID string
		resv    map[string]string
	}{
		{
			name:    "one sku short takes nothing",
			cmd:     reserve(t, "m-1", "o-1", order.Item{SKU: "sku-a", Qty: 2}, order.Item{SKU: "sku-b", Qty: 2}),
			want:    fail(order.ReasonOutOfStock),
			stock:   map[string]int64{"sku-a": 5, "sku-b": 1},
			orderID: "o-1",
		},
		{
			name:    "missing sku is zero",
			cmd:     reserve(t, "m-2", "o-2", order.Item{SKU: "sku-a", Qty: 1}, order.Item{SKU: "sku-none", Qty: 1}),
			want:    fail(order.ReasonOutOfStock),
			stock:   map[string]int64{"sku-a": 5, "sku-b": 1, "sku-none": 0},
			orderID: "o-2",
		},
		{
			name:    "enough of each takes all",
			cmd:     reserve(t, "m-3", "o-3", order.Item{SKU: "sku-a", Qty: 2}, order.Item{SKU: "sku-b", Qty: 1}),
			want:    ok,
			stock:   map[string]int64{"sku-a": 3, "sku-b": 0},
			orderID: "o-3",
			resv:    map[string]string{"status": "reserved", "item:sku-a": "2", "item:sku-b": "1"},
		},
		{
			name:    "repeated sku is summed",
			cmd:     reserve(t, "m-4", "o-4", order.Item{SKU: "sku-a", Qty: 2}, order.Item{SKU: "sku-a", Qty: 2}),
			want:    fail(order.ReasonOutOfStock),
			stock:   map[string]int64{"sku-a": 3},
			orderID: "o-4",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantReplies(t, handle(t, inv, tt.cmd), tt.want)
			wantStock(t, rdb, tt.stock)
			wantHash(t, rdb, sim.ReservationKey(tt.orderID), tt.resv)
		})
	}
}

func TestReserveRedelivered(t *testing.T) {
	tests := []struct {
		name    string
		batches [][]string // message ids, per Handle call
	}{
		{"twice in two batches", [][]string{{"m-1"}, {"m-1"}}},
		{"twice in one batch", [][]string{{"m-1", "m-1"}}},
		{"three times", [][]string{{"m-1", "m-1"}, {"m-1"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb := newRedis(t)
			inv := sim.NewInventory(rdb)
			seed(t, rdb, map[string]int64{"sku-a": 10})
			for _, batch := range tt.batches {
				var cmds []participant.Request
				var want []message.Reply
				for _, id := range batch {
					cmds = append(cmds, reserve(t, id, "o-1", order.Item{SKU: "sku-a", Qty: 3}))
					want = append(want, ok)
				}
				wantReplies(t, handle(t, inv, cmds...), want...)
			}
			wantStock(t, rdb, map[string]int64{"sku-a": 7})
		})
	}
}

// A redelivered failure returns the stored failure even when it would now
// succeed: the reply never changes.
func TestRedeliveredFailureIsStored(t *testing.T) {
	rdb := newRedis(t)
	inv := sim.NewInventory(rdb)
	c := reserve(t, "m-1", "o-1", order.Item{SKU: "sku-a", Qty: 3})
	wantReplies(t, handle(t, inv, c), fail(order.ReasonOutOfStock))
	seed(t, rdb, map[string]int64{"sku-a": 10})
	wantReplies(t, handle(t, inv, c), fail(order.ReasonOutOfStock))
	wantStock(t, rdb, map[string]int64{"sku-a": 10})
}

// A second reservation of the same order under a new message id (the engine
// never sends one, but a bug or an operator might) takes nothing more.
func TestReserveOncePerOrder(t *testing.T) {
	rdb := newRedis(t)
	inv := sim.NewInventory(rdb)
	seed(t, rdb, map[string]int64{"sku-a": 10})
	wantReplies(t, handle(t, inv,
		reserve(t, "m-1", "o-1", order.Item{SKU: "sku-a", Qty: 3}),
		reserve(t, "m-2", "o-1", order.Item{SKU: "sku-a", Qty: 3}),
	), ok, ok)
	wantStock(t, rdb, map[string]int64{"sku-a": 7})
}

func TestReleaseRestoresOnce(t *testing.T) {
	rdb := newRedis(t)
	inv := sim.NewInventory(rdb)
	seed(t, rdb, map[string]int64{"sku-a": 5, "sku-b": 5})
	wantReplies(t, handle(t, inv,
		reserve(t, "m-1", "o-1", order.Item{SKU: "sku-a", Qty: 2}, order.Item{SKU: "sku-b", Qty: 5})), ok)
	wantStock(t, rdb, map[string]int64{"sku-a": 3, "sku-b": 0})

	// Redelivered in one batch and in the next, then a re-send under a new
	// id: the stock comes back once.
	wantReplies(t, handle(t, inv, release(t, "m-2", "o-1"), release(t, "m-2", "o-1")), ok, ok)
	wantReplies(t, handle(t, inv, release(t, "m-2", "o-1"), release(t, "m-3", "o-1")), ok, ok)
	wantStock(t, rdb, map[string]int64{"sku-a": 5, "sku-b": 5})
	wantHash(t, rdb, sim.ReservationKey("o-1"),
		map[string]string{"status": "released", "item:sku-a": "2", "item:sku-b": "5"})

	// A late reserve of the released order is refused.
	wantReplies(t, handle(t, inv, reserve(t, "m-4", "o-1", order.Item{SKU: "sku-a", Qty: 1})), fail(sim.ReasonCancelled))
	wantStock(t, rdb, map[string]int64{"sku-a": 5, "sku-b": 5})
}

func TestReleaseBeforeReserve(t *testing.T) {
	rdb := newRedis(t)
	inv := sim.NewInventory(rdb)
	seed(t, rdb, map[string]int64{"sku-a": 5})

	wantReplies(t, handle(t, inv, release(t, "m-2", "o-1")), ok)
	wantHash(t, rdb, sim.ReservationKey("o-1"), map[string]string{"status": "released"})
	wantStock(t, rdb, map[string]int64{"sku-a": 5})

	wantReplies(t, handle(t, inv, reserve(t, "m-1", "o-1", order.Item{SKU: "sku-a", Qty: 2})), fail(sim.ReasonCancelled))
	wantStock(t, rdb, map[string]int64{"sku-a": 5})
	wantHash(t, rdb, sim.ReservationKey("o-1"), map[string]string{"status": "released"})
}

// A stock key that is not an integer fails the batch (retried by the
// runtime) before anything is written.
func TestCorruptStockWritesNothing(t *testing.T) {
	rdb := newRedis(t)
	inv := sim.NewInventory(rdb)
	seed(t, rdb, map[string]int64{"sku-a": 5})
	if err := rdb.Set(context.Background(), sim.StockKey("sku-b"), "lots", 0).Err(); err != nil {
		t.Fatal(err)
	}
	c := reserve(t, "m-1", "o-1", order.Item{SKU: "sku-a", Qty: 1}, order.Item{SKU: "sku-b", Qty: 1})
	_, err := inv.Handle(context.Background(), []participant.Request{c})
	if err == nil || !strings.Contains(err.Error(), "want an integer") {
		t.Fatalf("Handle: got error %v, want one for a non-integer stock", err)
	}
	wantStock(t, rdb, map[string]int64{"sku-a": 5})
	if n, _ := rdb.Exists(context.Background(), sim.DedupeKey(order.Inventory, order.Name, "m-1"), sim.ReservationKey("o-1")).Result(); n != 0 {
		t.Errorf("keys written: got %d, want 0", n)
	}
}

func TestPayment(t *testing.T) {
	authorize := func(msgID, orderID string, cents int64) participant.Request {
		return cmd(t, order.AuthorizePayment, msgID, order.PaymentCommand{OrderID: orderID, CustomerID: "c-1", AmountCents: cents, Currency: "EUR"})
	}
	cancel := func(msgID, orderID string) participant.Request {
		return cmd(t, order.CancelPayment, msgID, order.PaymentCommand{OrderID: orderID})
	}
	cancelNamed := func(msgID, orderID, auth string) participant.Request {
		return cmd(t, order.CancelPayment, msgID, order.PaymentCommand{OrderID: orderID, AuthorizationID: auth})
	}
	authorized := message.Reply{Outcome: message.OutcomeSuccess, Data: `{"authorization_id":"auth-o-1"}`}
	tests := []struct {
		name  string
		limit int64
		steps [][]participant.Request
		want  []message.Reply // one per command, all steps flattened
		hash  map[string]string
	}{
		{
			name:  "over the limit declines and writes nothing",
			limit: 1000,
			steps: [][]participant.Request{{authorize("m-1", "o-1", 1001)}},
			want:  []message.Reply{fail(order.ReasonPaymentDeclined)},
		},
		{
			name:  "default limit",
			steps: [][]participant.Request{{authorize("m-1", "o-1", sim.DefaultPaymentLimitCents+1)}},
			want:  []message.Reply{fail(order.ReasonPaymentDeclined)},
		},
		{
			name:  "at the limit authorizes once",
			limit: 1000,
			steps: [][]participant.Request{{authorize("m-1", "o-1", 1000), authorize("m-1", "o-1", 1000)}, {authorize("m-1", "o-1", 1000)}},
			want:  []message.Reply{authorized, authorized, authorized},
			hash:  map[string]string{"status": "authorized", "amount_cents": "1000", "authorization_id": "auth-o-1"},
		},
		{
			name:  "cancel keeps the amount",
			steps: [][]participant.Request{{authorize("m-1", "o-1", 4599)}, {cancelNamed("m-2", "o-1", "auth-o-1"), cancelNamed("m-2", "o-1", "auth-o-1")}},
			want:  []message.Reply{authorized, ok, ok},
			hash:  map[string]string{"status": "cancelled", "amount_cents": "4599", "authorization_id": "auth-o-1", "cancelled_authorization_id": "auth-o-1"},
		},
		{
			name:  "cancel before authorize leaves a tombstone",
			steps: [][]participant.Request{{cancel("m-2", "o-1")}, {authorize("m-1", "o-1", 4599)}},
			want:  []message.Reply{ok, fail(sim.ReasonCancelled)},
			hash:  map[string]string{"status": "cancelled", "amount_cents": "0"},
		},
		{
			name:  "cancel after decline leaves a tombstone",
			limit: 1000,
			steps: [][]participant.Request{{authorize("m-1", "o-1", 5000), cancel("m-2", "o-1")}},
			want:  []message.Reply{fail(order.ReasonPaymentDeclined), ok},
			hash:  map[string]string{"status": "cancelled", "amount_cents": "0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb := newRedis(t)
			h := sim.NewPayment(rdb, tt.limit)
			var got []message.Reply
			for _, s := range tt.steps {
				got = append(got, handle(t, h, s...)...)
			}
			wantReplies(t, got, tt.want...)
			wantHash(t, rdb, sim.PaymentKey("o-1"), tt.hash)
		})
	}
}

// scheduled is the reply to a shipment scheduled for order o-1.
var scheduled = message.Reply{Outcome: message.OutcomeSuccess, Data: `{"tracking_number":"trk-o-1"}`}

func TestShipping(t *testing.T) {
	schedule := func(msgID, country, city string) participant.Request {
		return cmd(t, order.ScheduleShipment, msgID, order.ShippingCommand{OrderID: "o-1", ShipTo: order.Address{Country: country, City: city}})
	}
	cancel := func(msgID string) participant.Request {
		return cmd(t, order.CancelShipment, msgID, order.ShippingCommand{OrderID: "o-1"})
	}
	tests := []struct {
		name  string
		steps [][]participant.Request
		want  []message.Reply
		hash  map[string]string
	}{
		{
			name:  "XX is undeliverable",
			steps: [][]participant.Request{{schedule("m-1", "XX", "Nowhere")}},
			want:  []message.Reply{fail(order.ReasonUndeliverable)},
		},
		{
			name:  "empty country is undeliverable",
			steps: [][]participant.Request{{schedule("m-1", "", "Berlin")}},
			want:  []message.Reply{fail(order.ReasonUndeliverable)},
		},
		{
			name:  "schedules once",
			steps: [][]participant.Request{{schedule("m-1", "DE", "Berlin"), schedule("m-1", "DE", "Berlin")}},
			want:  []message.Reply{scheduled, scheduled},
			hash:  map[string]string{"status": "scheduled", "country": "DE", "city": "Berlin", "tracking_number": "trk-o-1"},
		},
		{
			name:  "cancel keeps the address",
			steps: [][]participant.Request{{schedule("m-1", "DE", "Berlin")}, {cancel("m-2")}},
			want:  []message.Reply{scheduled, ok},
			hash:  map[string]string{"status": "cancelled", "country": "DE", "city": "Berlin", "tracking_number": "trk-o-1"},
		},
		{
			name:  "cancel before schedule leaves a tombstone",
			steps: [][]participant.Request{{cancel("m-2")}, {schedule("m-1", "DE", "Berlin")}},
			want:  []message.Reply{ok, fail(sim.ReasonCancelled)},
			hash:  map[string]string{"status": "cancelled"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb := newRedis(t)
			h := sim.NewShipping(rdb)
			var got []message.Reply
			for _, s := range tt.steps {
				got = append(got, handle(t, h, s...)...)
			}
			wantReplies(t, got, tt.want...)
			wantHash(t, rdb, sim.ShipmentKey("o-1"), tt.hash)
		})
	}
}

func TestBadCommand(t *testing.T) {
	rdb := newRedis(t)
	hs := sim.Handlers(rdb, 0)
	tests := []struct {
		name        string
		participant string
		cmd         participant.Request
	}{
		{"unknown type", order.Inventory, cmd(t, "ShipEverything", "m-1", order.InventoryCommand{OrderID: "o-1"})},
		{"payload not JSON", order.Payment, participant.Request{Type: order.AuthorizePayment, MessageID: "m-2", Payload: []byte("{oops")}},
		{"no order id", order.Shipping, cmd(t, order.ScheduleShipment, "m-3", order.ShippingCommand{ShipTo: order.Address{Country: "DE"}})},
		{"no items", order.Inventory, cmd(t, order.ReserveInventory, "m-4", order.InventoryCommand{OrderID: "o-1"})},
		{"zero qty", order.Inventory, reserve(t, "m-5", "o-1", order.Item{SKU: "sku-a", Qty: 0})},
		{"no message id", order.Inventory, reserve(t, "", "o-1", order.Item{SKU: "sku-a", Qty: 1})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantReplies(t, handle(t, hs[tt.participant], tt.cmd), fail(sim.ReasonBadCommand))
			if tt.cmd.MessageID == "" {
				return
			}
			stored, err := rdb.Get(context.Background(), sim.DedupeKey(tt.participant, tt.cmd.SagaType, tt.cmd.MessageID)).Result()
			if err != nil {
				t.Fatalf("stored reply: %v", err)
			}
			if want := `{"outcome":"failure","reason":"BAD_COMMAND"}`; stored != want {
				t.Errorf("stored reply: got %s, want %s", stored, want)
			}
		})
	}
	if n, _ := rdb.Exists(context.Background(), sim.ReservationKey("o-1"), sim.ShipmentKey("")).Result(); n != 0 {
		t.Errorf("effect keys written: got %d, want 0", n)
	}
}

func TestHandlers(t *testing.T) {
	hs := sim.Handlers(newRedis(t), 0)
	for _, name := range order.Participants {
		if hs[name] == nil {
			t.Errorf("Handlers()[%q]: got nil, want a handler", name)
		}
	}
	if len(hs) != len(order.Participants) {
		t.Errorf("Handlers: got %d handlers, want %d", len(hs), len(order.Participants))
	}
}

// TestDedupeBySagaType sends two commands with the same message id from
// two saga types: message ids are unique per saga type only, so both must
// take effect, and each redelivery must answer from its own record.
func TestDedupeBySagaType(t *testing.T) {
	rdb := newRedis(t)
	inv := sim.NewInventory(rdb)
	seed(t, rdb, map[string]int64{"sku-a": 5})
	fromOrder := reserve(t, "m-1", "o-1", order.Item{SKU: "sku-a", Qty: 1})
	fromTrip := reserve(t, "m-1", "t-1", order.Item{SKU: "sku-a", Qty: 3})
	fromTrip.SagaType = "trip"
	wantReplies(t, handle(t, inv, fromOrder, fromTrip, fromOrder, fromTrip), ok, ok, ok, ok)
	wantStock(t, rdb, map[string]int64{"sku-a": 1})
	wantHash(t, rdb, sim.ReservationKey("t-1"), map[string]string{"status": "reserved", "item:sku-a": "3"})
	for _, typ := range []string{order.Name, "trip"} {
		if n, _ := rdb.Exists(context.Background(), sim.DedupeKey(order.Inventory, typ, "m-1")).Result(); n != 1 {
			t.Errorf("dedupe record of saga type %s: got %d keys, want 1", typ, n)
		}
	}
}

func TestDedupeRecordTTL(t *testing.T) {
	rdb := newRedis(t)
	handle(t, sim.NewShipping(rdb), cmd(t, order.CancelShipment, "m-1", order.ShippingCommand{OrderID: "o-1"}))
	ttl, err := rdb.TTL(context.Background(), sim.DedupeKey(order.Shipping, order.Name, "m-1")).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl < sim.DedupeTTL-time.Minute || ttl > sim.DedupeTTL {
		t.Errorf("dedupe TTL: got %v, want about %v", ttl, sim.DedupeTTL)
	}
}

// After SCRIPT FLUSH (a restarted Redis) the handler loads its scripts again.
func TestScriptFlush(t *testing.T) {
	rdb := newRedis(t)
	inv := sim.NewInventory(rdb)
	seed(t, rdb, map[string]int64{"sku-a": 5})
	wantReplies(t, handle(t, inv, reserve(t, "m-1", "o-1", order.Item{SKU: "sku-a", Qty: 1})), ok)
	if err := rdb.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	wantReplies(t, handle(t, inv,
		reserve(t, "m-1", "o-1", order.Item{SKU: "sku-a", Qty: 1}),
		reserve(t, "m-2", "o-2", order.Item{SKU: "sku-a", Qty: 1}),
	), ok, ok)
	wantStock(t, rdb, map[string]int64{"sku-a": 3})
}

// fenced returns a ctx carrying the saga.Key of an attempt of complete-order
// with the given fence.
func fenced(orderID string, fence int64) context.Context {
	return saga.WithKey(context.Background(), saga.Key{SagaID: orderID, Step: order.StepCompleteOrder, Fence: fence})
}

// TestOrderStoreFences runs sequences of Complete and Cancel with fences on
// one order and checks each result and the final record.
func TestOrderStoreFences(t *testing.T) {
	o := &order.Order{OrderID: "o-1", CustomerID: "c-1", AmountCents: 4599, Currency: "USD"}
	type write struct {
		cancel bool
		fence  int64
		stale  bool // the write fails with ErrStale
	}
	completed := func(fence string) map[string]string {
		return map[string]string{"status": "completed", "amount_cents": "4599", "customer_id": "c-1", "fence": fence}
	}
	tests := []struct {
		name   string
		writes []write
		want   map[string]string
	}{
		{
			name:   "complete is idempotent",
			writes: []write{{fence: 3}, {fence: 3}},
			want:   completed("3"),
		},
		{
			name:   "a later attempt completes",
			writes: []write{{fence: 3}, {fence: 5}},
			want:   completed("5"),
		},
		{
			name:   "an older attempt is refused",
			writes: []write{{fence: 5}, {fence: 3, stale: true}},
			want:   completed("5"),
		},
		{
			name:   "cancel after complete",
			writes: []write{{fence: 3}, {cancel: true, fence: 4}},
			want:   map[string]string{"status": "cancelled", "amount_cents": "4599", "customer_id": "c-1", "fence": "4"},
		},
		{
			name:   "a stale complete after cancel is refused",
			writes: []write{{fence: 3}, {cancel: true, fence: 4}, {fence: 3, stale: true}},
			want:   map[string]string{"status": "cancelled", "amount_cents": "4599", "customer_id": "c-1", "fence": "4"},
		},
		{
			name:   "cancel of a never completed order leaves a tombstone",
			writes: []write{{cancel: true, fence: 4}, {fence: 3, stale: true}},
			want:   map[string]string{"status": "cancelled", "fence": "4"},
		},
		{
			name:   "cancel is idempotent",
			writes: []write{{cancel: true, fence: 4}, {cancel: true, fence: 4}, {cancel: true, fence: 2}},
			want:   map[string]string{"status": "cancelled", "fence": "4"},
		},
		{
			name:   "a stale cancel of a newer completion is refused",
			writes: []write{{fence: 6}, {cancel: true, fence: 4, stale: true}},
			want:   completed("6"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb := newRedis(t)
			s := sim.NewOrderStore(rdb)
			for i, w := range tt.writes {
				op, do := "Complete", s.Complete
				if w.cancel {
					op, do = "Cancel", s.Cancel
				}
				err := do(fenced(o.OrderID, w.fence), o)
				switch {
				case w.stale && (!errors.Is(err, sim.ErrStale) || !retry.IsPermanent(err)):
					t.Errorf("write %d, %s at fence %d: got %v, want a permanent error wrapping ErrStale", i+1, op, w.fence, err)
				case !w.stale && err != nil:
					t.Errorf("write %d, %s at fence %d: got %v, want nil", i+1, op, w.fence, err)
				}
			}
			wantHash(t, rdb, sim.OrderKey(o.OrderID), tt.want)
		})
	}
}

func TestOrderStorePermanentErrors(t *testing.T) {
	rdb := newRedis(t)
	s := sim.NewOrderStore(rdb)
	o := &order.Order{OrderID: "o-1", CustomerID: "c-1", AmountCents: 4599, Currency: "USD"}
	tests := []struct {
		name string
		err  error
	}{
		{"complete without id", s.Complete(fenced("o-1", 1), &order.Order{})},
		{"cancel without id", s.Cancel(fenced("o-1", 1), &order.Order{})},
		{"complete without a key", s.Complete(context.Background(), o)},
		{"cancel without a key", s.Cancel(context.Background(), o)},
	}
	for _, tt := range tests {
		if !retry.IsPermanent(tt.err) {
			t.Errorf("%s: got %v, want a permanent error", tt.name, tt.err)
		}
	}
	wantHash(t, rdb, sim.OrderKey("o-1"), nil)
}

func TestOrderStoreRedisDown(t *testing.T) {
	srv := redistest.StartServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer rdb.Close()
	srv.Kill()
	err := sim.NewOrderStore(rdb).Complete(fenced("o-1", 1), &order.Order{OrderID: "o-1"})
	if err == nil || retry.IsPermanent(err) {
		t.Errorf("Complete with Redis down: got %v, want a retryable error", err)
	}
}

// TestParticipantEndToEnd runs the inventory participant on kfake: a
// ReserveInventory command gets its reply on saga.order.inbox and takes the
// stock once.
func TestParticipantEndToEnd(t *testing.T) {
	rdb := newRedis(t)
	seed(t, rdb, map[string]int64{"sku-1": 5})
	c, err := kfake.NewCluster(kfake.NumBrokers(1),
		kfake.SeedTopics(2, message.Commands(order.Inventory), message.Commands(order.Inventory)+"-dlt", message.Inbox(order.Name)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	p, err := participant.New(order.Inventory, sim.NewInventory(rdb),
		participant.Brokers(c.ListenAddrs()...),
		participant.TransactionalID("test-inventory"),
		participant.Logger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run: got %v, want nil", err)
		}
		p.Close()
	}()

	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...),
		kgo.ConsumeTopics(message.Inbox(order.Name)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	payload, _ := json.Marshal(order.InventoryCommand{OrderID: "o-1", Items: []order.Item{{SKU: "sku-1", Qty: 2}}})
	h := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	rec := &kgo.Record{
		Topic: message.Commands(order.Inventory),
		Key:   []byte("o-1"),
		Value: payload,
		Headers: []kgo.RecordHeader{
			h(message.HeaderSagaID, "o-1"),
			h(message.HeaderSagaType, order.Name),
			h(message.HeaderMessageType, order.ReserveInventory),
			h(message.HeaderMessageID, "o-1/reserve-inventory/1"),
			h(message.HeaderStep, order.StepReserveInventory),
			h(message.HeaderStepAttempt, "1"),
			h(message.HeaderReplyTo, message.Inbox(order.Name)),
		},
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer pcancel()
	// The same command twice, as a re-send after a deadline would be.
	if err := cl.ProduceSync(pctx, rec, rec).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}

	var replies []*kgo.Record
	for len(replies) < 2 && pctx.Err() == nil {
		replies = append(replies, cl.PollFetches(pctx).Records()...)
	}
	if len(replies) != 2 {
		t.Fatalf("got %d replies within 10s, want 2", len(replies))
	}
	for _, r := range replies {
		if string(r.Key) != "o-1" || string(r.Value) != `{"outcome":"success"}` {
			t.Errorf("reply: got key %s value %s, want o-1 {\"outcome\":\"success\"}", r.Key, r.Value)
		}
		for _, want := range []kgo.RecordHeader{
			h(message.HeaderMessageType, message.TypeReply),
			h(message.HeaderInReplyTo, "o-1/reserve-inventory/1"),
			h(message.HeaderOutcome, message.OutcomeSuccess),
			h(message.HeaderStep, order.StepReserveInventory),
		} {
			var got string
			for _, hd := range r.Headers {
				if hd.Key == want.Key {
					got = string(hd.Value)
				}
			}
			if got != string(want.Value) {
				t.Errorf("reply header %s: got %q, want %q", want.Key, got, want.Value)
			}
		}
	}
	wantStock(t, rdb, map[string]int64{"sku-1": 3})
}

// pipelineCounter counts the round trips a client makes.
type pipelineCounter struct{ single, pipelines atomic.Int64 }

func (h *pipelineCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, c redis.Cmder) error { h.single.Add(1); return next(ctx, c) }
}
func (h *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cs []redis.Cmder) error { h.pipelines.Add(1); return next(ctx, cs) }
}

// TestOrderStoreSharesRoundTrips completes 64 orders at once, as the
// engine's workers do: each is written once, with its own fence checked,
// in fewer round trips than orders; and after Redis forgot the scripts
// (SCRIPT FLUSH, as after a restart) the writes still go through.
func TestOrderStoreSharesRoundTrips(t *testing.T) {
	rdb := newRedis(t)
	hook := &pipelineCounter{}
	rdb.AddHook(hook)
	s := sim.NewOrderStore(rdb)
	const n = 64
	complete := func(prefix string, fence int64) []error {
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := fmt.Sprintf("%s-%d", prefix, i)
				errs[i] = s.Complete(fenced(id, fence), &order.Order{OrderID: id, AmountCents: int64(i), CustomerID: "c"})
			}()
		}
		wg.Wait()
		return errs
	}
	for i, err := range complete("o", 2) {
		if err != nil {
			t.Fatalf("Complete o-%d: %v", i, err)
		}
	}
	trips := hook.single.Load() + hook.pipelines.Load()
	for i := range n {
		wantHash(t, rdb, sim.OrderKey(fmt.Sprintf("o-%d", i)), map[string]string{
			"status": "completed", "amount_cents": strconv.Itoa(i), "customer_id": "c", "fence": "2"})
	}
	if trips >= n {
		t.Errorf("%d orders took %d round trips, want fewer", n, trips)
	}
	t.Logf("%d orders in %d round trips", n, trips)
	// An older attempt is refused, each on its own.
	for i, err := range complete("o", 1) {
		if !errors.Is(err, sim.ErrStale) {
			t.Errorf("Complete o-%d with a lower fence: got %v, want ErrStale", i, err)
		}
	}
	if err := rdb.ScriptFlush(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	for i, err := range complete("p", 1) {
		if err != nil {
			t.Fatalf("Complete p-%d after SCRIPT FLUSH: %v", i, err)
		}
	}
}
