package order_test

import (
	"context"
	"slices"
	"testing"

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
	if err := def.RunLocal(ctx, last, data, saga.Key{SagaID: "o-1", Step: order.StepCompleteOrder, Fence: 4}); err != nil {
		t.Fatalf("RunLocal: %v", err)
	}
	if err := def.RunUndoLocal(ctx, last, data, saga.Key{SagaID: "o-1", Step: order.StepCompleteOrder, Fence: 7}); err != nil {
		t.Fatalf("RunUndoLocal: %v", err)
	}
	want := []string{"complete o-1 o-1/complete-order/4", "cancel o-1 o-1/complete-order/7"}
	if !slices.Equal(store.calls, want) {
		t.Errorf("store calls: got %q, want %q", store.calls, want)
	}
}
