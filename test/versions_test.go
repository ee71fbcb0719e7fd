package test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// TestRollingDeploy deploys version 2 of the order saga (the coupon step
// first) over running sagas of version 1, as a team would: a build that
// hosts only version 1 starts 2,000 orders while the participants are down
// (so that every one is in flight, waiting on its reserve group), is
// replaced with SIGTERM by a build that hosts versions 1 and 2, which
// starts 1,000 more and is SIGKILLed; a build that hosts only version 2
// then refuses to start (one line: which version, how many sagas); the
// 1-and-2 build comes back, the participants too, and every saga ends:
// each version-1 saga on version 1's steps (no coupon step, although its
// order names a coupon), each new one on version 2's, each with exactly one
// terminal event. Once they have, the version-2-only build starts and runs
// new orders.
func TestRollingDeploy(t *testing.T) {
	if testing.Short() {
		t.Skip("runs processes and kills them")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	bin := buildBinaries(t, "sagad", "kfaked")

	kafka := freeAddr(t)
	broker := newProc(t, "kfaked", filepath.Join(bin, "kfaked"), "--listen", kafka, "--control", "")
	broker.start()
	engRedis, simRedis := redistest.Start(t), redistest.Start(t)
	simRdb := redis.NewClient(&redis.Options{Addr: simRedis})
	defer simRdb.Close()
	engRdb := redis.NewClient(&redis.Options{Addr: engRedis})
	defer engRdb.Close()

	common := []string{"--kafka-brokers", kafka, "--session-timeout", "6s", "--partitions", "3",
		"--replication-factor", "1", "--log-format", "json"}
	engineHTTP := freeAddr(t)
	engine := func(name, versions string) *proc {
		return newProc(t, name, filepath.Join(bin, "sagad"), append(slices.Clone(common),
			"--participants", "none", "--transactional-id", "deploy-engine", "--static-membership",
			"--order-versions", versions,
			"--metrics-addr", engineHTTP, "--redis-addr", engRedis, "--orders-redis-addr", simRedis)...)
	}
	v1, v12, v2 := engine("engine-v1", "1"), engine("engine-v1-v2", "1,2"), engine("engine-v2", "2")
	partsHTTP := freeAddr(t)
	parts := newProc(t, "participants", filepath.Join(bin, "sagad"), append(slices.Clone(common),
		"--engine=false", "--participants", "all", "--transactional-id", "deploy-participants", "--static-membership",
		"--metrics-addr", partsHTTP, "--redis-addr", simRedis)...)

	v1.start()
	waitReady(ctx, t, v1, engineHTTP, 90*time.Second)
	if err := sim.SeedStock(ctx, simRdb, map[string]int64{"sku-1": 1 << 40}); err != nil {
		t.Fatal(err)
	}
	if err := sim.SeedCoupons(ctx, simRdb, map[string]int64{"WELCOME": 1 << 40}); err != nil {
		t.Fatal(err)
	}
	producer, err := kgo.NewClient(kgo.SeedBrokers(kafka), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	send := func(prefix string, n int) []string {
		t.Helper()
		ids := make([]string, n)
		rs := make([]*kgo.Record, n)
		for i := range n {
			o := newOrder(fmt.Sprintf("%s-%d", prefix, i))
			o.CustomerID, o.Coupon = "c-"+o.OrderID, "WELCOME"
			v, _ := json.Marshal(o)
			ids[i] = o.OrderID
			rs[i] = &kgo.Record{Topic: message.Inbox(order.Name), Key: []byte(o.OrderID), Value: v, Headers: []kgo.RecordHeader{
				{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
				{Key: message.HeaderMessageID, Value: []byte("start-" + o.OrderID)},
			}}
		}
		if err := producer.ProduceSync(ctx, rs...).FirstErr(); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	// running waits until the engine's Redis view holds every saga of ids
	// on version v.
	running := func(p *proc, ids []string, v int) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			n := 0
			for _, id := range ids {
				raw, err := engRdb.HGet(ctx, orchestrator.StateKey(order.Name, message.HomePartition(id, 3), id), "state").Bytes()
				var st orchestrator.State
				if err == nil && json.Unmarshal(raw, &st) == nil && st.OnVersion() == v {
					n++
				}
			}
			if n == len(ids) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d sagas are in the view on version %d after 60s:\n%s", n, len(ids), v, p.logTail(30))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	old := send("v1", 2000)
	running(v1, old, order.V1)
	t.Logf("2,000 orders started on version 1; SIGTERM the version-1 build, start the 1-and-2 build")
	v1.stop()
	v12.start()
	waitReady(ctx, t, v12, engineHTTP, 90*time.Second)
	fresh := send("v2", 1000)
	running(v12, fresh, order.V2)
	t.Logf("1,000 orders started on version 2; SIGKILL the 1-and-2 build, start the version-2-only build")
	v12.kill()

	v2.start()
	refused := waitExit(t, v2, 60*time.Second)
	if !strings.Contains(refused, "saga version not hosted") || !strings.Contains(refused, "on version 1") {
		t.Fatalf("the version-2-only build did not refuse the running version-1 sagas:\n%s", refused)
	}
	t.Logf("refused: %s", firstLine(refused, "saga version not hosted"))

	v12.start()
	parts.start()
	waitReady(ctx, t, v12, engineHTTP, 90*time.Second)
	all := append(slices.Clone(old), fresh...)
	events := waitEnded(ctx, t, kafka, all, 3*time.Minute)
	for _, id := range all {
		evs := events[id]
		var ends []string
		steps := map[string]bool{}
		for _, ev := range evs {
			if message.Terminal(ev.Type) {
				ends = append(ends, ev.Type)
			}
			if ev.Type == message.EventStepSucceeded {
				steps[ev.Step] = true
			}
		}
		if len(ends) != 1 || ends[0] != message.EventSagaCompleted {
			t.Fatalf("saga %s ended %v, want one SagaCompleted; events %+v", id, ends, evs)
		}
		wantCoupon := strings.HasPrefix(id, "v2-")
		if steps[order.StepReserveCoupon] != wantCoupon || !steps[order.StepCompleteOrder] {
			t.Fatalf("saga %s succeeded steps %v: version 2 reserves the coupon, version 1 does not", id, steps)
		}
	}
	issued, _ := simRdb.Get(ctx, "ksaga:sim:coupon:WELCOME:issued").Int()
	if issued != len(fresh) {
		t.Fatalf("%d coupons issued, want %d (one per version-2 order, none for version 1)", issued, len(fresh))
	}

	t.Logf("every saga ended on its version; the version-2-only build takes over")
	v12.stop()
	v2.start()
	waitReady(ctx, t, v2, engineHTTP, 90*time.Second)
	later := send("v2-later", 50)
	events = waitEnded(ctx, t, kafka, later, time.Minute)
	for _, id := range later {
		if got := terminal(events[id]); got != message.EventSagaCompleted {
			t.Fatalf("saga %s on the version-2-only build: %s", id, got)
		}
	}
}

// waitExit waits for p to exit on its own and returns its log.
func waitExit(t *testing.T, p *proc, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !p.exited() {
		if time.Now().After(deadline) {
			t.Fatalf("%s still runs after %v:\n%s", p.name, timeout, p.logTail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return p.logTail(40)
}

func firstLine(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// waitEnded reads saga.order.events until every saga of ids has a terminal
// event and returns every saga's events.
func waitEnded(ctx context.Context, t *testing.T, broker string, ids []string, timeout time.Duration) map[string][]message.Event {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.ConsumeTopics(message.Events(order.Name)),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	events := make(map[string][]message.Event)
	ended := make(map[string]bool)
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	deadline := time.Now().Add(timeout)
	for done := 0; done < len(ids); {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d sagas ended after %v", done, len(ids), timeout)
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		fs := cl.PollFetches(pctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			var ev message.Event
			if json.Unmarshal(r.Value, &ev) != nil {
				return
			}
			events[ev.SagaID] = append(events[ev.SagaID], ev)
			if message.Terminal(ev.Type) && want[ev.SagaID] && !ended[ev.SagaID] {
				ended[ev.SagaID] = true
				done++
			}
		})
	}
	// Anything committed after the last terminal event (a second one)
	// shows up within a moment.
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	cl.PollFetches(pctx).EachRecord(func(r *kgo.Record) {
		var ev message.Event
		if json.Unmarshal(r.Value, &ev) == nil {
			events[ev.SagaID] = append(events[ev.SagaID], ev)
		}
	})
	cancel()
	return events
}
