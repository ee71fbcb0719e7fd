package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/client"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// TestWaitForTheOutcome starts sagas and waits for their outcomes through
// the client: a completed order (its final data carries the tracking
// number), a compensated one (its reason), two started elsewhere and ended
// before the wait began (one before the client's reader of the events
// began, one after), and a wait that ends before the saga does. Many
// waits share one reader of saga.T.events.
func TestWaitForTheOutcome(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 10_000})
	stop := e.startParticipants()
	def := order.New(sim.NewOrderStore(e.sim))
	eng := e.startEngine(def)
	defer eng.stop(t)
	cl, err := client.New(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	run, err := cl.StartRun(ctx, def, "w-1", newOrder("w-1"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := run.Get(ctx)
	var done order.Order
	if err != nil || ev.Type != message.EventSagaCompleted || json.Unmarshal(ev.Data, &done) != nil || done.TrackingNumber != sim.TrackingNumber("w-1") {
		t.Fatalf("Get: %s %s (%v), want SagaCompleted with the tracking number", ev.Type, ev.Data, err)
	}
	declined := newOrder("w-2")
	declined.AmountCents = sim.DefaultPaymentLimitCents + 1
	run, err = cl.StartRun(ctx, def, "w-2", declined)
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := run.Get(ctx); err != nil || ev.Type != message.EventSagaCompensated || ev.Reason != order.ReasonPaymentDeclined {
		t.Errorf("Get: %s %q (%v), want SagaCompensated for %s", ev.Type, ev.Reason, err, order.ReasonPaymentDeclined)
	}

	// Started elsewhere, ended before the wait: found by looking back.
	e.start(newOrder("w-3"))
	e.waitTerminal([]string{"w-3"}, 30*time.Second)
	other, err := client.New(kgo.SeedBrokers(e.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if ev, err := other.GetRun(def, "w-3", time.Now().Add(-time.Minute)).Get(ctx); err != nil || ev.Type != message.EventSagaCompleted {
		t.Errorf("GetRun of an ended saga: %s (%v), want SagaCompleted", ev.Type, err)
	}
	// Again, now that other's reader runs: an end committed after the
	// reader began and before this wait is found by looking back up to
	// the topic's end now, not only up to where the reader began.
	e.start(newOrder("w-5"))
	e.waitTerminal([]string{"w-5"}, 30*time.Second)
	short5, cancel5 := context.WithTimeout(ctx, 10*time.Second)
	defer cancel5()
	if ev, err := other.GetRun(def, "w-5", time.Now().Add(-time.Minute)).Get(short5); err != nil || ev.Type != message.EventSagaCompleted {
		t.Errorf("GetRun of a saga that ended after the client's reader began: %s (%v), want SagaCompleted", ev.Type, err)
	}

	// A wait shorter than the saga: its participants are stopped.
	stop()
	run, err = cl.StartRun(ctx, def, "w-4", newOrder("w-4"))
	if err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if _, err := run.Get(short); !errors.Is(err, client.ErrStillRunning) {
		t.Errorf("Get of a running saga: %v, want ErrStillRunning", err)
	}

	// Many waits at once, on one reader, measured while none can end.
	const n = 200
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()
	runs := make([]*client.Run, n)
	for i := range runs {
		id := fmt.Sprintf("many-%d", i)
		if runs[i], err = cl.StartRun(ctx, def, id, newOrder(id)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ended := 0
	for _, r := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ev, err := r.Get(ctx); err == nil && ev.Type == message.EventSagaCompleted {
				mu.Lock()
				ended++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	t.Logf("%d waits: %d goroutines more (the %d waiting callers' own; the client reads with one consumer), heap +%d KiB",
		n, runtime.NumGoroutine()-goroutines, n, (int64(during.HeapAlloc)-int64(before.HeapAlloc))/1024)
	e.startParticipants()
	wg.Wait()
	if ended != n {
		t.Errorf("%d of %d waits saw SagaCompleted", ended, n)
	}
	if ev, err := run.Get(ctx); err != nil || ev.Type != message.EventSagaCompleted {
		t.Errorf("w-4 once its participants were back: %s (%v), want SagaCompleted", ev.Type, err)
	}
}
