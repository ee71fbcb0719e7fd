package test

import (
	"testing"
	"time"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
)

// TestStartRetryInAnotherKeyOrder starts a saga, then retries its start
// request with the same data written another way: keys in another order,
// spaces, an escaped character (as kcat, another language's client or the
// HTTP API write it). The retry is a duplicate, dropped; a start with other
// data is a conflict, dead-lettered; a value with a key twice is refused.
func TestStartRetryInAnotherKeyOrder(t *testing.T) {
	e := newEnv(t)
	eng := e.startEngine(nil)
	defer eng.stop(t)

	first := startRecord(newOrder("k-1"))
	retry := startRecord(newOrder("k-1"))
	retry.Value = []byte(`{ "ship_to": {"city":"Berlin","country":"DE"}, "items":[{"qty":2,"sku":"sku-1"}],
		"currency":"US\u0044", "amount_cents":4599, "customer_id":"c-k-1", "order_id":"k-1" }`)
	conflict := startRecord(newOrder("k-1"))
	conflict.Value = []byte(`{"order_id":"k-1","customer_id":"c-k-1","amount_cents":4600,"currency":"USD","items":[{"sku":"sku-1","qty":2}],"ship_to":{"country":"DE","city":"Berlin"}}`)
	twice := startRecord(newOrder("k-2"))
	twice.Value = []byte(`{"order_id":"k-2","order_id":"k-3","customer_id":"c","amount_cents":1,"currency":"USD","items":[{"sku":"sku-1","qty":1}],"ship_to":{"country":"DE","city":"Berlin"}}`)
	e.produce(first, retry, conflict, twice)

	var reasons map[string]string
	for deadline := time.Now().Add(30 * time.Second); ; {
		reasons = map[string]string{}
		for _, r := range e.readAll(message.DLT(order.Name), 300*time.Millisecond) {
			reasons[string(r.Key)] += header(r, dlq.HeaderReason) + " "
		}
		if len(reasons) >= 2 || time.Now().After(deadline) {
			break
		}
	}
	want := map[string]string{"k-1": "conflicting-start ", "k-2": "undecodable "}
	for id, w := range want {
		if reasons[id] != w {
			t.Errorf("saga %s dead-lettered as %q, want %q", id, reasons[id], w)
		}
	}
	started := 0
	for _, ev := range e.events()["k-1"] {
		if ev.Type == message.EventSagaStarted {
			started++
		}
	}
	if started != 1 {
		t.Errorf("saga k-1 started %d times, want once", started)
	}
}
