package order_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/ksaga/ksaga/internal/sagadef"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
)

// recorder is an order.Store that records its calls.
type recorder struct{ calls []string }

func (r *recorder) Complete(ctx context.Context, o *order.Order) error {
	k, _ := saga.KeyFrom(ctx)
	r.calls = append(r.calls, "complete "+o.OrderID+" "+k.String())
	return nil
}

func (r *recorder) Cancel(ctx context.Context, o *order.Order) error {
	k, _ := saga.KeyFrom(ctx)
	r.calls = append(r.calls, "cancel "+o.OrderID+" "+k.String())
	return nil
}

// TestCompleteOrderIsUndone checks that complete-order is a local step
// compensated by the store's Cancel, and that both get the attempt's Key.
func TestCompleteOrderIsUndone(t *testing.T) {
	store := &recorder{}
	def := order.New(store)
	steps := def.Steps()
	last := len(steps) - 1
	if s := steps[last]; s.Name != order.StepCompleteOrder || !s.Local || !s.Undoable {
		t.Fatalf("last step: got %+v, want %s, Local and Undoable", s, order.StepCompleteOrder)
	}
	data, err := def.Decode([]byte(`{"order_id":"o-1","customer_id":"c-1","amount_cents":4599,"currency":"USD","items":[{"sku":"sku-1","qty":2}]}`))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	ctx := context.Background()
	if err := sagadef.Of(def).RunLocal(ctx, last, data, saga.Key{SagaID: "o-1", Step: order.StepCompleteOrder, Fence: 4}); err != nil {
		t.Fatalf("RunLocal: %v", err)
	}
	if err := sagadef.Of(def).RunUndoLocal(ctx, last, data, saga.Key{SagaID: "o-1", Step: order.StepCompleteOrder, Fence: 7}); err != nil {
		t.Fatalf("RunUndoLocal: %v", err)
	}
	want := []string{"complete o-1 o-1/complete-order/4", "cancel o-1 o-1/complete-order/7"}
	if !slices.Equal(store.calls, want) {
		t.Errorf("store calls: got %q, want %q", store.calls, want)
	}
}

// TestCouponStep checks that reserve-coupon comes first, is undone by
// ReleaseCoupon, and is skipped for an order without a coupon.
func TestCouponStep(t *testing.T) {
	def := order.New(&recorder{})
	first := def.Steps()[0]
	if first.Name != order.StepReserveCoupon || first.Local || !first.Undoable || !first.Optional {
		t.Fatalf("first step: got %+v, want %s, a participant step, undoable and optional", first, order.StepReserveCoupon)
	}
	if second := def.Steps()[1]; second.Name != order.StepReserveInventory {
		t.Errorf("second step: got %s, want %s", second.Name, order.StepReserveInventory)
	}
	ctx := context.Background()
	base := `"customer_id":"c-1","amount_cents":4599,"currency":"USD","items":[{"sku":"sku-1","qty":2}]`
	for _, tt := range []struct {
		value string
		skip  bool
	}{
		{`{"order_id":"o-1",` + base + `}`, true},
		{`{"order_id":"o-2",` + base + `,"coupon":""}`, true},
		{`{"order_id":"o-3",` + base + `,"coupon":"SPRING-26"}`, false},
	} {
		data, err := def.Decode([]byte(tt.value))
		if err != nil {
			t.Fatalf("Decode(%s): %v", tt.value, err)
		}
		if skip, err := sagadef.Of(def).Skip(ctx, 0, data); skip != tt.skip || err != nil {
			t.Errorf("Skip of %s = %v, %v; want %v", tt.value, skip, err, tt.skip)
		}
		if tt.skip {
			continue
		}
		for _, c := range []struct {
			do   func(context.Context, int, any) (saga.Command, error)
			want string
		}{{sagadef.Of(def).Do, order.ReserveCoupon}, {sagadef.Of(def).Undo, order.ReleaseCoupon}} {
			cmd, err := c.do(ctx, 0, data)
			want := order.CouponCommand{OrderID: "o-3", CustomerID: "c-1", Code: "SPRING-26"}
			if err != nil || cmd.Participant != order.Coupon || cmd.Type != c.want || cmd.Payload != want {
				t.Errorf("command: got %+v, %v; want %s to %s with %+v", cmd, err, c.want, order.Coupon, want)
			}
		}
	}
}

func TestValidateCoupon(t *testing.T) {
	for _, tt := range []struct {
		code string
		ok   bool
	}{
		{"", true},
		{"SPRING", true},
		{"spring-2026_v1.2", true},
		{strings.Repeat("a", order.MaxCouponLen), true},
		{strings.Repeat("a", order.MaxCouponLen+1), false},
		{"-SPRING", false},
		{"SPR:ING", false},
		{"SPR ING", false},
		{"SPRÏNG", false},
	} {
		o := order.Order{OrderID: "o-1", CustomerID: "c-1", AmountCents: 1, Currency: "USD",
			Items: []order.Item{{SKU: "s", Qty: 1}}, Coupon: tt.code}
		if err := o.Validate(); (err == nil) != tt.ok {
			t.Errorf("Validate with coupon %q: got %v, want ok=%v", tt.code, err, tt.ok)
		}
	}
}
