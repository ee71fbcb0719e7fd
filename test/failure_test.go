package test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ksaga/ksaga/compensation"
	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

func TestBusinessFailures(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100, "sku-scarce": 1})
	e.startParticipants()
	eng := e.startEngine(nil)
	defer eng.stop(t)

	declined := newOrder("declined")
	declined.AmountCents = sim.DefaultPaymentLimitCents + 1
	scarce := newOrder("scarce")
	scarce.Items = []order.Item{{SKU: "sku-1", Qty: 3}, {SKU: "sku-scarce", Qty: 2}}
	undeliverable := newOrder("undeliverable")
	undeliverable.ShipTo.Country = "XX"
	for _, o := range []order.Order{declined, scarce, undeliverable} {
		e.start(o)
	}
	sagas := []string{"declined", "scarce", "undeliverable"}
	evs := e.waitTerminal(sagas, 60*time.Second)

	tests := []struct {
		id       string
		reason   string
		payment  string // status of ksaga:sim:payment:<id>, "" for none
		shipment string
	}{
		{"declined", order.ReasonPaymentDeclined, "", ""},
		// Stock and payment are reserved in parallel: the payment was
		// authorized while the stock was refused, and is cancelled.
		{"scarce", order.ReasonOutOfStock, "cancelled", ""},
		{"undeliverable", order.ReasonUndeliverable, "cancelled", ""},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			if got := terminal(evs[tt.id]); got != message.EventSagaCompensated {
				t.Fatalf("ended %s, want %s; events %+v", got, message.EventSagaCompensated, evs[tt.id])
			}
			last := evs[tt.id][len(evs[tt.id])-1]
			if last.Reason != tt.reason {
				t.Errorf("reason %q, want %q", last.Reason, tt.reason)
			}
			if got := e.hash("ksaga:sim:payment:" + tt.id)["status"]; got != tt.payment {
				t.Errorf("payment status %q, want %q", got, tt.payment)
			}
			if got := e.hash("ksaga:sim:shipment:" + tt.id)["status"]; got != tt.shipment {
				t.Errorf("shipment status %q, want %q", got, tt.shipment)
			}
			if got := e.hash("ksaga:sim:order:" + tt.id); len(got) != 0 {
				t.Errorf("order record %v, want none", got)
			}
		})
	}
	// Every reservation was released: all stock is back.
	if got := e.stock("sku-1"); got != 100 {
		t.Errorf("stock of sku-1 is %d, want 100 (all released)", got)
	}
	if got := e.stock("sku-scarce"); got != 1 {
		t.Errorf("stock of sku-scarce is %d, want 1 (nothing held)", got)
	}
}

// flakyStore is an orders store whose Complete fails while down is set.
type flakyStore struct {
	next  *sim.OrderStore
	down  atomic.Bool
	calls atomic.Int32
}

func (s *flakyStore) Complete(ctx context.Context, o *order.Order) error {
	s.calls.Add(1)
	if s.down.Load() {
		return errors.New("orders database unavailable")
	}
	return s.next.Complete(ctx, o)
}

func (s *flakyStore) Cancel(ctx context.Context, o *order.Order) error {
	if s.down.Load() {
		return errors.New("orders database unavailable")
	}
	return s.next.Cancel(ctx, o)
}

// TestOrdersStoreOutage is write-up 003: the order cannot be recorded after
// the payment. The record is tried three times (the count survives engine
// restarts), then dead-lettered while the saga cancels the payment and
// releases the stock.
func TestOrdersStoreOutage(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 10})
	e.startParticipants()
	store := &flakyStore{next: sim.NewOrderStore(e.sim)}
	store.down.Store(true)
	def := order.New(store)

	e.start(newOrder("o-003"))
	for attempt := int32(1); attempt <= 2; attempt++ {
		eng := e.startEngine(def)
		waitFor(t, 60*time.Second, func() bool { return e.attemptsCounted() >= int(attempt) })
		// Restart between attempts: the count must survive it.
		eng.stop(t)
		if got := store.calls.Load(); got != attempt {
			t.Fatalf("after engine %d: %d calls to the store, want %d", attempt, got, attempt)
		}
	}
	// The third engine makes the last attempt, then dead-letters the record
	// and starts the compensation in one transaction. That transaction
	// fails its first commit: none of it may become visible, and the retry
	// must produce each record once.
	var injected atomic.Bool
	e.cluster.ControlKey(int16(kmsg.TxnOffsetCommit), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		req := kreq.(*kmsg.TxnOffsetCommitRequest)
		if req.TransactionalID != "engine-0" || !injected.CompareAndSwap(false, true) {
			return nil, nil, false
		}
		resp := req.ResponseKind().(*kmsg.TxnOffsetCommitResponse)
		resp.SetVersion(req.GetVersion())
		for _, rt := range req.Topics {
			st := kmsg.NewTxnOffsetCommitResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewTxnOffsetCommitResponseTopicPartition()
				sp.Partition, sp.ErrorCode = rp.Partition, kerr.UnknownServerError.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	eng := e.startEngine(def)
	defer eng.stop(t)
	// The compensation undoes complete-order first (an attempt may have
	// written before it failed): that waits, retried, until the orders
	// database is back.
	waitFor(t, 60*time.Second, func() bool { return len(e.readAll(message.DLT(order.Name), 100*time.Millisecond)) == 1 })
	store.down.Store(false)
	evs := e.waitTerminal([]string{"o-003"}, 60*time.Second)
	if !injected.Load() {
		t.Fatal("the commit failure was not injected")
	}
	e.assertOnce(evs, "o-003")
	if got := terminal(evs["o-003"]); got != message.EventSagaCompensated {
		t.Fatalf("saga ended %s, want %s; events %+v", got, message.EventSagaCompensated, evs["o-003"])
	}
	if got := store.calls.Load(); got != 3 {
		t.Errorf("store called %d times, want 3", got)
	}

	dead := e.readAll(message.DLT(order.Name), 300*time.Millisecond)
	if len(dead) != 1 {
		t.Fatalf("%d DLQ records, want 1", len(dead))
	}
	info, err := dlq.Parse(dead[0])
	if err != nil {
		t.Fatal(err)
	}
	if info.Topic != message.Inbox(order.Name) || info.Attempts != 3 || info.Reason != orchestrator.ReasonExhausted ||
		info.Group != "ksaga-order" || !strings.Contains(info.ErrorMessage, "orders database unavailable") {
		t.Errorf("DLQ info %+v, want inbox topic, 3 attempts, reason %s, group ksaga-order, the store's error", info, orchestrator.ReasonExhausted)
	}
	if header(dead[0], message.HeaderMessageType) != message.TypeReply || string(dead[0].Key) != "o-003" {
		t.Errorf("DLQ record is not the original reply: key %q headers %v", dead[0].Key, dead[0].Headers)
	}
	for _, h := range []string{dlq.HeaderOriginalPartition, dlq.HeaderOriginalOffset} {
		if v := header(dead[0], h); len(v) != map[string]int{dlq.HeaderOriginalPartition: 4, dlq.HeaderOriginalOffset: 8}[h] {
			t.Errorf("header %s has %d bytes", h, len(v))
		}
	}
	if got := int64(binary.BigEndian.Uint64([]byte(header(dead[0], dlq.HeaderOriginalOffset)))); got != info.Offset {
		t.Errorf("offset header %d, parsed %d", got, info.Offset)
	}
	if got := e.hash("ksaga:sim:payment:o-003")["status"]; got != "cancelled" {
		t.Errorf("payment %q, want cancelled", got)
	}
	if got := e.stock("sku-1"); got != 10 {
		t.Errorf("stock %d, want 10 (released)", got)
	}
	if got := e.hash("ksaga:sim:order:o-003")["status"]; got != "cancelled" {
		t.Errorf("order status %q, want cancelled", got)
	}
	// The attempt counter is forgotten once the record is dead-lettered.
	waitFor(t, 10*time.Second, func() bool { return e.attemptsCounted() == 0 })
}

// attemptsCounted returns the highest durable attempt count in Redis.
func (e *env) attemptsCounted() int {
	keys, _ := e.eng.Keys(context.Background(), "ksaga:{order:*}:attempts:*").Result()
	best := 0
	for _, k := range keys {
		vals, _ := e.eng.HGetAll(context.Background(), k).Result()
		for _, v := range vals {
			n := 0
			for _, c := range v {
				if c < '0' || c > '9' {
					break
				}
				n = n*10 + int(c-'0')
			}
			best = max(best, n)
		}
	}
	return best
}

// assertOnce fails the test when a saga emitted an event (type and step)
// twice, or when any command (message id and attempt) was sent twice.
func (e *env) assertOnce(evs map[string][]message.Event, sagaIDs ...string) {
	e.t.Helper()
	for _, id := range sagaIDs {
		seen := make(map[string]int)
		for _, ev := range evs[id] {
			seen[ev.Type+" "+ev.Step]++
		}
		for k, n := range seen {
			if n != 1 {
				e.t.Errorf("saga %s: event %s emitted %d times, want 1", id, k, n)
			}
		}
	}
	for _, p := range order.Participants {
		for id, n := range e.commands(p) {
			if n != 1 {
				e.t.Errorf("command %s sent %d times, want 1", id, n)
			}
		}
	}
}

func waitFor(t testing.TB, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// blockingHook blocks the first after-commit call until released: the
// engine has committed to Kafka but not yet written Redis.
type blockingHook struct {
	once    sync.Once
	blocked chan struct{}
	release chan struct{}
}

func (h *blockingHook) AfterCommit(context.Context, *orchestrator.Batch) {
	first := false
	h.once.Do(func() { first = true })
	if first {
		close(h.blocked)
		<-h.release
	}
}

// TestCrashBetweenCommitAndRedis is write-up 000: the engine commits to
// Kafka and dies before writing Redis. The restarted engine continues from
// the committed state with no duplicate command or event, and the old
// instance, woken up late, cannot overwrite the newer Redis state.
func TestCrashBetweenCommitAndRedis(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 10})
	hook := &blockingHook{blocked: make(chan struct{}), release: make(chan struct{})}
	zombie := e.startEngine(nil, orchestrator.Hooks(hook))

	e.start(newOrder("o-000"))
	<-hook.blocked // committed: SagaStarted, ReserveInventory, state v1
	if st, _ := e.redisState("o-000"); st != nil {
		t.Fatalf("redis has the state before the after-commit write: %+v", st)
	}
	// The instance dies: its Kafka client goes away without a word to
	// Redis.
	zombie.eng.Client().Close()

	e.startParticipants()
	eng := e.startEngine(nil) // same transactional id: fences the zombie
	defer eng.stop(t)
	evs := e.waitTerminal([]string{"o-000"}, 60*time.Second)
	if got := terminal(evs["o-000"]); got != message.EventSagaCompleted {
		t.Fatalf("saga ended %s, want completed; events %+v", got, evs["o-000"])
	}
	e.waitRedis([]string{"o-000"}, 10*time.Second)
	final, _ := e.redisState("o-000")

	// The zombie wakes up and tries to write its old state.
	close(hook.release)
	select {
	case <-zombie.done:
	case <-time.After(30 * time.Second):
		t.Fatal("zombie did not stop")
	}
	zombie.eng.Close()
	if st, _ := e.redisState("o-000"); st == nil || st.Version != final.Version || !st.Terminal() {
		t.Errorf("after the zombie woke: redis state %+v, want version %d terminal", st, final.Version)
	}

	e.assertOnce(evs, "o-000")
	if got := e.stock("sku-1"); got != 8 {
		t.Errorf("stock %d, want 8", got)
	}
}

// TestRedisFlushed empties the engine's Redis while sagas are in flight:
// nothing is lost and Redis is rebuilt from the state topic.
func TestRedisFlushed(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 10000})
	e.startParticipants()
	eng := e.startEngine(nil)
	defer eng.stop(t)

	sagas := ids("f", 300)
	for i, id := range sagas {
		e.start(newOrder(id))
		if i%100 == 99 {
			time.Sleep(100 * time.Millisecond)
			if err := e.eng.FlushAll(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	evs := e.waitTerminal(sagas, 90*time.Second)
	for _, id := range sagas {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Errorf("saga %s ended %s, want completed", id, got)
		}
	}
	// Redis converges to the last state record of every saga.
	last := make(map[string]orchestrator.State)
	for _, r := range e.readAll(message.State(order.Name), 300*time.Millisecond) {
		var st orchestrator.State
		if err := json.Unmarshal(r.Value, &st); err != nil {
			t.Fatal(err)
		}
		last[st.ID] = st
	}
	waitFor(t, 30*time.Second, func() bool {
		for _, id := range sagas {
			st, err := e.redisState(id)
			if err != nil || st == nil || st.Version != last[id].Version {
				return false
			}
		}
		return true
	})
}

// TestPoisonInputs sends records that no retry can fix. Each goes to the DLQ
// with its reason, and the sagas after them complete.
func TestPoisonInputs(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 1000})
	e.startParticipants()
	eng := e.startEngine(nil)
	defer eng.stop(t)

	e.start(newOrder("p-done"))
	e.waitTerminal([]string{"p-done"}, 60*time.Second)

	inbox := message.Inbox(order.Name)
	hdr := func(kv ...string) []kgo.RecordHeader {
		var hs []kgo.RecordHeader
		for i := 0; i < len(kv); i += 2 {
			hs = append(hs, kgo.RecordHeader{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return hs
	}
	different := newOrder("p-done")
	different.AmountCents++
	differentValue, _ := json.Marshal(different)
	validValue, _ := json.Marshal(newOrder("p-json"))
	poison := []struct {
		name   string
		rec    *kgo.Record
		reason string
	}{
		{"not JSON", &kgo.Record{Key: []byte("p-json"), Value: []byte("{not json"), Headers: hdr(message.HeaderMessageType, message.TypeStartSaga)}, orchestrator.ReasonUndecodable},
		{"invalid UTF-8", &kgo.Record{Key: []byte("p-utf8"), Value: []byte("\xff\xfe"), Headers: hdr(message.HeaderMessageType, message.TypeStartSaga)}, orchestrator.ReasonUndecodable},
		{"unknown message type", &kgo.Record{Key: []byte("p-type"), Value: validValue, Headers: hdr(message.HeaderMessageType, "Frobnicate")}, orchestrator.ReasonUnknownType},
		{"missing saga id", &kgo.Record{Value: validValue, Headers: hdr(message.HeaderMessageType, message.TypeStartSaga)}, orchestrator.ReasonMissingSagaID},
		{"reply for an unknown saga", &kgo.Record{Key: []byte("p-ghost"), Value: []byte(`{}`), Headers: hdr(message.HeaderMessageType, message.TypeReply, message.HeaderInReplyTo, "p-ghost/reserve-inventory/do", message.HeaderOutcome, "success")}, orchestrator.ReasonUnknownSaga},
		{"reply for a step not waited on", &kgo.Record{Key: []byte("p-done"), Value: []byte(`{}`), Headers: hdr(message.HeaderMessageType, message.TypeReply, message.HeaderInReplyTo, "p-done/complete-order/do", message.HeaderOutcome, "success")}, orchestrator.ReasonNotWaiting},
		{"start reusing an id with another payload", &kgo.Record{Key: []byte("p-done"), Value: differentValue, Headers: hdr(message.HeaderMessageType, message.TypeStartSaga)}, orchestrator.ReasonConflictingStart},
		{"negative amount", &kgo.Record{Key: []byte("p-neg"), Value: []byte(`{"order_id":"p-neg","customer_id":"c","amount_cents":-1,"currency":"USD","items":[{"sku":"sku-1","qty":1}],"ship_to":{"country":"DE"}}`), Headers: hdr(message.HeaderMessageType, message.TypeStartSaga)}, orchestrator.ReasonInvalid},
		{"oversized header", &kgo.Record{Key: []byte("p-hdr"), Value: validValue, Headers: hdr(message.HeaderMessageType, message.TypeStartSaga, "x-junk", strings.Repeat("j", 100<<10))}, orchestrator.ReasonTooLarge},
		{"1 MiB value", &kgo.Record{Key: []byte("p-big"), Value: []byte(`"` + strings.Repeat("x", 1<<20) + `"`), Headers: hdr(message.HeaderMessageType, message.TypeStartSaga)}, orchestrator.ReasonTooLarge},
	}
	for _, p := range poison {
		p.rec.Topic = inbox
		e.produce(p.rec)
	}
	// The same ids, and others on every partition, still work.
	after := []string{"p-json", "p-utf8", "p-type", "p-ghost", "p-neg", "p-big", "p-hdr", "a-1", "a-2", "a-3", "a-4", "a-5", "a-6"}
	for _, id := range after {
		e.start(newOrder(id))
	}
	evs := e.waitTerminal(after, 60*time.Second)
	for _, id := range append(after, "p-done") {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Errorf("saga %s ended %s, want completed", id, got)
		}
	}
	dead := e.readAll(message.DLT(order.Name), 300*time.Millisecond)
	byReason := make(map[string]int)
	for _, r := range dead {
		byReason[header(r, dlq.HeaderReason)]++
	}
	want := make(map[string]int)
	for _, p := range poison {
		want[p.reason]++
	}
	for reason, n := range want {
		if byReason[reason] != n {
			t.Errorf("DLQ has %d records with reason %s, want %d", byReason[reason], reason, n)
		}
	}
	for _, r := range dead {
		if header(r, dlq.HeaderReason) == orchestrator.ReasonTooLarge && string(r.Key) == "p-big" {
			if got := header(r, orchestrator.HeaderValueTruncated); got != "1048578" || len(r.Value) != 512<<10 {
				t.Errorf("oversized DLQ record: %d value bytes, truncated header %q; want 524288 and 1048578", len(r.Value), got)
			}
		}
	}
	if len(dead) != len(poison) {
		t.Errorf("DLQ has %d records, want %d: %v", len(dead), len(poison), byReason)
	}
}

// quickOrder is the order saga with short deadlines, so that timeouts fire
// within a test.
func quickOrder(e *env) *saga.Definition {
	store := sim.NewOrderStore(e.sim)
	cmd := func(participant, typ string) func(context.Context, *order.Order) (saga.Command, error) {
		return func(_ context.Context, o *order.Order) (saga.Command, error) {
			return saga.Command{Participant: participant, Type: typ, Payload: o}, nil
		}
	}
	const d = 300 * time.Millisecond
	return saga.New(order.Name,
		saga.Step[order.Order]{Name: order.StepReserveInventory, Do: cmd(order.Inventory, order.ReserveInventory), Undo: cmd(order.Inventory, order.ReleaseInventory), ReplyTimeout: d},
		saga.Step[order.Order]{Name: order.StepAuthorizePayment, Do: cmd(order.Payment, order.AuthorizePayment), Undo: cmd(order.Payment, order.CancelPayment), ReplyTimeout: d},
		saga.Step[order.Order]{Name: order.StepScheduleShipping, Do: cmd(order.Shipping, order.ScheduleShipment), Undo: cmd(order.Shipping, order.CancelShipment), ReplyTimeout: d},
		saga.Step[order.Order]{Name: order.StepCompleteOrder, Local: store.Complete, UndoLocal: store.Cancel},
	)
}

// TestDeadlineResend: a participant that is down when its command is sent
// gets it again (same message id) when the deadline passes, and acts once.
func TestDeadlineResend(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 10})
	e.startParticipants(order.Inventory, order.Payment)
	eng := e.startEngine(quickOrder(e), orchestrator.Compensation(compensation.Policy{MaxAttempts: 2, Deadline: 300 * time.Millisecond}))
	defer eng.stop(t)

	e.waitParticipants(order.Inventory, order.Payment)

	e.start(newOrder("late"))
	// Wait for the first re-send, then bring shipping up.
	waitFor(t, 30*time.Second, func() bool { return e.commands(order.Shipping)["late/schedule-shipping/do attempt 2"] > 0 })
	if n := e.commands(order.Shipping)["late/schedule-shipping/do attempt 2"]; n != 1 {
		t.Fatalf("schedule-shipping attempt 2 sent %d times, want once", n)
	}
	e.startParticipants(order.Shipping)
	evs := e.waitTerminal([]string{"late"}, 30*time.Second)
	if got := terminal(evs["late"]); got != message.EventSagaCompleted {
		t.Fatalf("saga ended %s, want completed; events %+v", got, evs["late"])
	}
	if got := e.hash("ksaga:sim:shipment:late")["status"]; got != "scheduled" {
		t.Errorf("shipment %q, want scheduled", got)
	}
	if got := e.stock("sku-1"); got != 8 {
		t.Errorf("stock %d, want 8 (reserved once)", got)
	}
}

// TestCompensationGivesUp: a participant that never answers exhausts its
// step, then its compensation: the saga ends SagaFailed and is
// dead-lettered for a human.
func TestCompensationGivesUp(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 10})
	e.startParticipants(order.Inventory, order.Payment)
	eng := e.startEngine(quickOrder(e), orchestrator.Compensation(compensation.Policy{MaxAttempts: 2, Deadline: 300 * time.Millisecond}))
	defer eng.stop(t)
	e.waitParticipants(order.Inventory, order.Payment)

	e.start(newOrder("lost"))
	evs := e.waitTerminal([]string{"lost"}, 30*time.Second)
	if got := terminal(evs["lost"]); got != message.EventSagaFailed {
		t.Fatalf("saga ended %s, want %s; events %+v", got, message.EventSagaFailed, evs["lost"])
	}
	cmds := e.commands(order.Shipping)
	for _, want := range []string{"lost/schedule-shipping/do attempt 1", "lost/schedule-shipping/do attempt 3", "lost/schedule-shipping/undo attempt 2"} {
		if cmds[want] != 1 {
			t.Errorf("shipping commands %v, want one %q", cmds, want)
		}
	}
	dead := e.readAll(message.DLT(order.Name), 300*time.Millisecond)
	if len(dead) != 1 || header(dead[0], dlq.HeaderReason) != orchestrator.ReasonCompensation {
		t.Errorf("DLQ %d records (reason %q), want 1 with reason %s", len(dead), header(dead[0], dlq.HeaderReason), orchestrator.ReasonCompensation)
	}
}

// Bad input keyed by a running saga is dead-lettered and leaves the saga as
// it was: it completes as if the input had never come.
func TestPoisonKeyedByRunningSaga(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 1000})
	eng := e.startEngine(nil)
	defer eng.stop(t)

	// No participant runs yet: the saga waits on reserve-inventory.
	o := newOrder("live")
	e.start(o)
	waitFor(t, 30*time.Second, func() bool { return len(e.events()["live"]) > 0 })

	hdr := func(kv ...string) []kgo.RecordHeader {
		var hs []kgo.RecordHeader
		for i := 0; i < len(kv); i += 2 {
			hs = append(hs, kgo.RecordHeader{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return hs
	}
	different := o
	different.AmountCents++
	differentValue, _ := json.Marshal(different)
	badUTF8 := o
	badUTF8.CustomerID = "c-\xff"
	badUTF8Value, _ := json.Marshal(badUTF8)
	badUTF8Value = bytes.ReplaceAll(badUTF8Value, []byte(`\ufffd`), []byte("\xff"))
	poison := []struct {
		rec    *kgo.Record
		reason string
	}{
		{&kgo.Record{Value: []byte(`{}`), Headers: hdr(message.HeaderMessageType, "Frobnicate")}, orchestrator.ReasonUnknownType},
		{&kgo.Record{Value: []byte(`{}`), Headers: hdr(message.HeaderMessageType, message.TypeReply, message.HeaderInReplyTo, "live/complete-order/do", message.HeaderOutcome, "failure")}, orchestrator.ReasonNotWaiting},
		{&kgo.Record{Value: differentValue, Headers: hdr(message.HeaderMessageType, message.TypeStartSaga)}, orchestrator.ReasonConflictingStart},
		{&kgo.Record{Value: badUTF8Value, Headers: hdr(message.HeaderMessageType, message.TypeStartSaga)}, orchestrator.ReasonUndecodable},
	}
	for _, p := range poison {
		p.rec.Topic, p.rec.Key = message.Inbox(order.Name), []byte("live")
		e.produce(p.rec)
	}
	var dead []*kgo.Record
	waitFor(t, 30*time.Second, func() bool {
		dead = e.readAll(message.DLT(order.Name), 300*time.Millisecond)
		return len(dead) >= len(poison)
	})
	for i, p := range poison {
		if got := header(dead[i], dlq.HeaderReason); got != p.reason {
			t.Errorf("dead letter %d: reason %q, want %q", i, got, p.reason)
		}
	}

	e.startParticipants()
	evs := e.waitTerminal([]string{"live"}, 60*time.Second)
	if got := terminal(evs["live"]); got != message.EventSagaCompleted {
		t.Fatalf("saga ended %s after bad input keyed by it, want %s", got, message.EventSagaCompleted)
	}
	e.assertOnce(evs, "live")
}

// lagHook records what the engine reports of Redis's lag.
type lagHook struct {
	mu       sync.Mutex
	failures int
	last     int
}

func (h *lagHook) OnRedisLag(pending int, oldest time.Time, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.last = pending
	if err != nil {
		h.failures++
	}
	if pending > 0 && oldest.IsZero() {
		panic("states pending for Redis with no commit time")
	}
}

// TestRedisRefusesWrites makes the engine's Redis refuse every write (as a
// primary that lost its replicas does with min-replicas-to-write) while
// sagas run. The engine goes on from memory: every saga completes once,
// the states wait in memory and are reported pending, and once Redis takes
// writes again it holds every saga's last state.
func TestRedisRefusesWrites(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100000})
	e.startParticipants()
	hook := &lagHook{}
	eng := e.startEngine(nil, orchestrator.Hooks(hook))
	defer eng.stop(t)

	warm := ids("warm", 5)
	for _, id := range warm {
		e.start(newOrder(id))
	}
	e.waitTerminal(warm, 30*time.Second)
	e.waitRedis(warm, 30*time.Second)

	ctx := context.Background()
	if err := e.eng.ConfigSet(ctx, "min-replicas-to-write", "1").Err(); err != nil {
		t.Fatal(err)
	}
	refused := ids("refused", 30)
	for _, id := range refused {
		e.start(newOrder(id))
	}
	evs := e.waitTerminal(refused, 60*time.Second)
	// The engine does not wait for Redis: the sagas may end before a
	// write has failed.
	deadline := time.Now().Add(10 * time.Second)
	for {
		hook.mu.Lock()
		failures, last := hook.failures, hook.last
		hook.mu.Unlock()
		if failures > 0 && last > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Redis refused writes but the engine reported %d failed writes and %d pending states", failures, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, id := range refused {
		if st, err := e.redisState(id); err != nil || (st != nil && st.Terminal()) {
			t.Fatalf("saga %s: Redis holds %v (err %v) while refusing writes", id, st, err)
		}
	}
	if err := e.eng.ConfigSet(ctx, "min-replicas-to-write", "0").Err(); err != nil {
		t.Fatal(err)
	}
	e.waitRedis(append(warm, refused...), 30*time.Second)
	e.assertOnce(evs, refused...)
	for _, id := range refused {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Errorf("saga %s ended %s, want %s", id, got, message.EventSagaCompleted)
		}
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		hook.mu.Lock()
		last := hook.last
		hook.mu.Unlock()
		if last == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the engine still reports %d states pending for Redis", last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cutConn fails every read while cut is set, closing the connection: the
// responses that were on their way are lost.
type cutConn struct {
	net.Conn
	cut *atomic.Bool
}

func (c *cutConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.cut.Load() {
		c.Conn.Close()
		return 0, errors.New("connection cut")
	}
	return n, err
}

// TestCommitOutcomeUnknown loses the outcome of the engine's commits: in one
// case the broker never sees them (the connection drops on the way), in the
// other it commits and the answer is lost (the network is cut as the broker
// answers), and every retry of the commit is dropped until the engine gives
// up on it. The engine aborts, rebuilds its partitions from the state topic
// (memory may lack a transaction that did commit) and goes on in the same
// process: every saga completes once, with nothing dead-lettered.
func TestCommitOutcomeUnknown(t *testing.T) {
	for _, committed := range []bool{false, true} {
		t.Run(fmt.Sprintf("committed=%v", committed), func(t *testing.T) {
			e := newEnv(t)
			e.seed(map[string]int64{"sku-1": 100000})
			e.startParticipants()
			var cut, recovered atomic.Bool
			var commits atomic.Int32
			e.cluster.ControlKey(kmsg.EndTxn.Int16(), func(kr kmsg.Request) (kmsg.Response, error, bool) {
				e.cluster.KeepControl()
				req := kr.(*kmsg.EndTxnRequest)
				if req.TransactionalID != "engine-0" || !req.Commit || recovered.Load() {
					return nil, nil, false
				}
				if commits.Add(1) == 3 && committed {
					// This one commits; its answer is lost.
					cut.Store(true)
					time.AfterFunc(200*time.Millisecond, func() { cut.Store(false) })
					return nil, nil, false
				}
				if commits.Load() < 3 {
					return nil, nil, false // the first commits go through
				}
				return nil, errors.New("connection cut"), true
			})
			e.cluster.ControlKey(kmsg.InitProducerID.Int16(), func(kr kmsg.Request) (kmsg.Response, error, bool) {
				e.cluster.KeepControl()
				if id := kr.(*kmsg.InitProducerIDRequest).TransactionalID; id != nil && *id == "engine-0" && commits.Load() >= 3 {
					recovered.Store(true) // the abort after the lost commit
				}
				return nil, nil, false
			})
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &cutConn{Conn: c, cut: &cut}, nil
			}
			eng := e.startEngine(nil, orchestrator.KafkaOpts(append(fastKafka, kgo.RequestRetries(1), kgo.Dialer(dial))...))
			defer eng.stop(t) // fails the test if Run returned an error

			sagas := ids("unknown", 20)
			for _, id := range sagas {
				e.start(newOrder(id))
			}
			evs := e.waitTerminal(sagas, 60*time.Second)
			if !recovered.Load() {
				t.Fatal("the engine never gave up on a commit: the test proves nothing")
			}
			e.assertOnce(evs, sagas...)
			for _, id := range sagas {
				if got := terminal(evs[id]); got != message.EventSagaCompleted {
					t.Errorf("saga %s ended %s, want %s", id, got, message.EventSagaCompleted)
				}
			}
			if dead := e.readAll(message.DLT(order.Name), 300*time.Millisecond); len(dead) != 0 {
				t.Errorf("%d records dead-lettered (first: %s), want none", len(dead), header(dead[0], dlq.HeaderReason))
			}
			e.waitRedis(sagas, 30*time.Second)
		})
	}
}

// TestRedisUnreadableAtTakeover has an idle engine take over the partitions
// of one that left while Redis refuses reads (an ACL change, a failover
// under way): it cannot restore them, and the poll that brought the
// assignment may also have brought the records waiting on them. Those
// records must be consumed again once the restore succeeds, not skipped:
// every saga started meanwhile ends, once.
func TestRedisUnreadableAtTakeover(t *testing.T) {
	e := newEnv(t)
	e.seed(map[string]int64{"sku-1": 100000})
	e.startParticipants()
	a := e.startEngine(nil)
	defer a.stop(t)
	b := e.startEngine(nil, orchestrator.TransactionalID("engine-1"))
	warm := ids("warm", 20)
	for _, id := range warm {
		e.start(newOrder(id))
	}
	e.waitTerminal(warm, 30*time.Second)
	owned := e.assigned(b.eng)
	if len(owned) == 0 || len(owned) == partitions {
		t.Fatalf("engine b owns partitions %v of %d; want some, not all", owned, partitions)
	}

	ctx := context.Background()
	if err := e.eng.Do(ctx, "ACL", "SETUSER", "default", "-@read").Err(); err != nil {
		t.Fatal(err)
	}
	// Starts for b's partitions only: b cannot load them and leaves them
	// uncommitted, a stays idle in its poll until it takes them over.
	var late []string
	for i := 0; len(late) < 30; i++ {
		id := fmt.Sprintf("late-%d", i)
		if slices.Contains(owned, message.HomePartition(id, partitions)) {
			late = append(late, id)
			e.start(newOrder(id))
		}
	}
	time.Sleep(500 * time.Millisecond)
	b.stop(t)
	time.Sleep(3 * time.Second) // a takes b's partitions over and fails to restore them
	if err := e.eng.Do(ctx, "ACL", "SETUSER", "default", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	evs := e.waitTerminal(late, 30*time.Second)
	for _, id := range late {
		if got := terminal(evs[id]); got != message.EventSagaCompleted {
			t.Errorf("saga %s: terminal event %q, want one %s", id, got, message.EventSagaCompleted)
		}
	}
}
