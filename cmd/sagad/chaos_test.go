//go:build !ksaga_production

package main

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/saga/order"
)

// countingStore is an order.Store that counts its calls.
type countingStore struct{ completes, cancels atomic.Int32 }

func (s *countingStore) Complete(context.Context, *order.Order) error {
	s.completes.Add(1)
	return nil
}

func (s *countingStore) Cancel(context.Context, *order.Order) error {
	s.cancels.Add(1)
	return nil
}

// TestChaosStore checks the contract with the chaos suite: the hang key
// makes Complete sleep its milliseconds whatever its ctx, and the panic key
// is decremented by each Complete, which panics when the result is 0 or
// more (a key set to N makes N panics).
func TestChaosStore(t *testing.T) {
	tests := []struct {
		name      string
		keys      map[string]string
		panics    []bool        // per Complete, in order
		minSleep  time.Duration // of the first Complete
		panicLeft string        // the panic key afterwards; "" = missing
	}{
		{name: "no keys", panics: []bool{false, false}},
		{name: "hang", keys: map[string]string{chaosHangKey: "300"}, panics: []bool{false}, minSleep: 300 * time.Millisecond},
		{name: "hang that is not a number", keys: map[string]string{chaosHangKey: "long"}, panics: []bool{false}},
		{name: "two panics", keys: map[string]string{chaosPanicKey: "2"}, panics: []bool{true, true, false, false}, panicLeft: "-2"},
		{name: "panic key at 0", keys: map[string]string{chaosPanicKey: "0"}, panics: []bool{false, false}, panicLeft: "-2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
			defer rdb.Close()
			for k, v := range tt.keys {
				if err := rdb.Set(context.Background(), k, v, 0).Err(); err != nil {
					t.Fatal(err)
				}
			}
			inner := &countingStore{}
			s := ordersStore(true, rdb, discard)
			cs, ok := s.(*chaosStore)
			if !ok {
				t.Fatalf("ordersStore with chaos faults: got %T, want *chaosStore", s)
			}
			cs.Store = inner
			wantCompletes := int32(0)
			for i, wantPanic := range tt.panics {
				// The hang must outlast the ctx's deadline.
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				start := time.Now()
				got := completePanics(ctx, s)
				cancel()
				if got != wantPanic {
					t.Errorf("Complete #%d panicked %v, want %v", i+1, got, wantPanic)
				}
				if !wantPanic {
					wantCompletes++
				}
				if i == 0 && time.Since(start) < tt.minSleep {
					t.Errorf("Complete #1 took %v, want at least %v", time.Since(start), tt.minSleep)
				}
			}
			if n := inner.completes.Load(); n != wantCompletes {
				t.Errorf("inner Complete calls: got %d, want %d", n, wantCompletes)
			}
			left, err := rdb.Get(context.Background(), chaosPanicKey).Result()
			if err == redis.Nil {
				left = ""
			}
			if left != tt.panicLeft {
				t.Errorf("%s afterwards: got %q, want %q", chaosPanicKey, left, tt.panicLeft)
			}
			if err := s.Cancel(context.Background(), &order.Order{OrderID: "o-1"}); err != nil || inner.cancels.Load() != 1 {
				t.Errorf("Cancel: got %v and %d inner calls, want nil and 1", err, inner.cancels.Load())
			}
		})
	}
}

// completePanics calls s.Complete and reports whether it panicked with
// chaosPanicValue.
func completePanics(ctx context.Context, s order.Store) (panicked bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != chaosPanicValue {
				panic(v)
			}
			panicked = true
		}
	}()
	_ = s.Complete(ctx, &order.Order{OrderID: "o-1"})
	return false
}

func TestOrdersStoreWithoutChaos(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	if s, ok := ordersStore(false, rdb, discard).(*chaosStore); ok {
		t.Errorf("ordersStore without --chaos-faults: got %T, want the plain store", s)
	}
}
