package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
)

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func noEnv(string) string { return "" }

// runSagad runs sagad in-process and returns its exit code and output.
func runSagad(ctx context.Context, t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errs syncBuffer
	code = run(ctx, args, noEnv, &out, &errs)
	return code, out.String(), errs.String()
}

// summaryCount reads a row of the demo summary.
func summaryCount(t *testing.T, out, row string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(row) + `\s+(\d+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("summary has no %q row:\n%s", row, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func TestEmbeddedDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the embedded demo")
	}
	dir := t.TempDir()
	// The second run reuses the first one's Kafka data: the engine
	// rebuilds the (new, empty) Redis from the persisted state topic, and
	// the new run's order ids do not collide with the old ones.
	for i, orders := range []int{60, 30} {
		t.Run(fmt.Sprintf("run %d", i+1), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			code, out, errs := runSagad(ctx, t, "--demo-orders", strconv.Itoa(orders), "--data-dir", dir, "--metrics-addr", "")
			if code != exitOK {
				t.Fatalf("exit code %d, want 0\nstdout:\n%s\nstderr:\n%s", code, out, errs)
			}
			sent := summaryCount(t, out, "orders sent")
			completed := summaryCount(t, out, "completed")
			compensated := summaryCount(t, out, "compensated")
			failed := summaryCount(t, out, "failed")
			dead := summaryCount(t, out, "dead-lettered")
			if sent != orders {
				t.Errorf("orders sent: got %d, want %d", sent, orders)
			}
			if got := completed + compensated + failed; got != orders {
				t.Errorf("completed %d + compensated %d + failed %d = %d, want the %d valid orders", completed, compensated, failed, got, orders)
			}
			if dead < 1 {
				t.Errorf("dead-lettered: got %d, want at least the poison record", dead)
			}
			// Each tenth order is declined, and each tenth undeliverable.
			for _, row := range []string{"  payment declined", "  undeliverable"} {
				if got := summaryCount(t, out, row); got != orders/10 {
					t.Errorf("%s: got %d, want %d", strings.TrimSpace(row), got, orders/10)
				}
			}
			if failed != 0 {
				t.Errorf("failed: got %d, want 0", failed)
			}
			// Each tenth order races for half as many coupons as there
			// are such orders: they run out.
			m := regexp.MustCompile(`(?m)^  coupons issued\s+(\d+)/(\d+)$`).FindStringSubmatch(out)
			if m == nil || m[1] != m[2] || m[1] != strconv.Itoa(orders/20) {
				t.Errorf("coupons issued: got %q, want all %d of them", m, orders/20)
			}
			if got := summaryCount(t, out, "  coupons exhausted"); got == 0 {
				t.Errorf("coupons exhausted: got %d, want some", got)
			}
			if !strings.Contains(out, "ledger check                     ok") {
				t.Errorf("ledger check not ok:\n%s", out)
			}
		})
	}
}

func TestRunUsage(t *testing.T) {
	code, out, _ := runSagad(context.Background(), t, "-help")
	if code != exitOK || !strings.Contains(out, "KSAGA_KAFKA_BROKERS") {
		t.Errorf("-help: exit %d, output %q; want 0 and the flags", code, out)
	}
	code, _, errs := runSagad(context.Background(), t, "--participants", "invntory", "--kafka-brokers", "k:9092", "--redis-addr", "r:6379")
	want := `sagad: --participants: unknown participant "invntory" (want coupon, inventory, payment, shipping, all or none)` + "\n"
	if code != exitUsage || errs != want {
		t.Errorf("bad participant: exit %d, stderr %q; want %d and %q", code, errs, exitUsage, want)
	}
}

func TestRunUnreachable(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	redisAddr := redistest.Start(t)
	for _, tc := range []struct {
		name, kafka, redis, want string
	}{
		{"kafka", "127.0.0.1:1", redisAddr, `"level":"ERROR","msg":"cannot reach Kafka at 127.0.0.1:1: `},
		{"redis", cluster.ListenAddrs()[0], "127.0.0.1:1", `"level":"ERROR","msg":"cannot reach Redis at 127.0.0.1:1: `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := runSagad(context.Background(), t, "--kafka-brokers", tc.kafka, "--redis-addr", tc.redis, "--metrics-addr", "", "--log-format", "json")
			if code != exitError || !strings.Contains(errs, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errs, exitError, tc.want)
			}
		})
	}
}

// TestRealServices runs sagad against kfake and a real redis-server, as it
// runs in production: it creates the topics, runs sagas to their end and
// shuts down cleanly when its context is cancelled.
func TestRealServices(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	redisAddr := redistest.Start(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{
			"--kafka-brokers", brokers[0], "--redis-addr", redisAddr, "--participants", "all",
			"--replication-factor", "1", "--partitions", "3", "--metrics-addr", "", "--transactional-id", "test-0",
		}, noEnv, &out, &errs)
	}()

	adm, err := kadm.NewOptClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer adm.Close()
	inbox, state := message.Inbox(order.Name), message.State(order.Name)
	deadline := time.Now().Add(30 * time.Second)
	for {
		tds, err := adm.ListTopics(ctx, inbox, state)
		if err == nil && tds.Has(inbox) && tds.Has(state) && tds.Error() == nil {
			break
		}
		select {
		case code := <-done:
			t.Fatalf("sagad exited with %d before creating the topics\n%s", code, errs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("topics not created after 30s\n%s", errs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	rcs, err := adm.DescribeTopicConfigs(ctx, state)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := rcs.On(state, nil)
	if err != nil {
		t.Fatal(err)
	}
	policy := ""
	for _, c := range rc.Configs {
		if c.Key == "cleanup.policy" {
			policy = c.MaybeValue()
		}
	}
	if policy != "compact" {
		t.Errorf("%s cleanup.policy: got %q, want compact", state, policy)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(message.Events(order.Name)), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	p := newDemoPlan(10, 100000)
	if err := cl.ProduceSync(ctx, p.records()...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	terminal := make(map[string]string)
	waitCtx, waitCancel := context.WithTimeout(ctx, time.Minute)
	defer waitCancel()
	for len(terminal) < len(p.orders) && waitCtx.Err() == nil {
		cl.PollFetches(waitCtx).EachRecord(func(r *kgo.Record) {
			var ev message.Event
			if err := json.Unmarshal(r.Value, &ev); err == nil && message.Terminal(ev.Type) {
				terminal[ev.SagaID] = ev.Type
			}
		})
	}
	if len(terminal) != len(p.orders) {
		t.Fatalf("%d of %d sagas ended within a minute\n%s", len(terminal), len(p.orders), errs.String())
	}

	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("exit code after cancel: got %d, want 0\n%s", code, errs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sagad did not stop within 30s of its context being cancelled")
	}
	if !strings.Contains(errs.String(), "sagad stopped") {
		t.Errorf("no shutdown log:\n%s", errs.String())
	}
}

// TestParticipantsJoinStatic runs sagad's participants with
// --static-membership and --session-timeout: each must join its group as a
// static member named "<transactional id>-<name>" with that session
// timeout, so that a restart after a crash takes its predecessor's place at
// once.
func TestParticipantsJoinStatic(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	type join struct {
		instanceID string
		session    int32
	}
	var mu sync.Mutex
	joins := make(map[string]join) // by group
	cluster.ControlKey(kmsg.JoinGroup.Int16(), func(kr kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		req := kr.(*kmsg.JoinGroupRequest)
		mu.Lock()
		defer mu.Unlock()
		j := join{session: req.SessionTimeoutMillis}
		if req.InstanceID != nil {
			j.instanceID = *req.InstanceID
		}
		joins[req.Group] = j
		return nil, nil, false
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var errs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{
			"--kafka-brokers", cluster.ListenAddrs()[0], "--redis-addr", redistest.Start(t), "--engine=false",
			"--participants", "all", "--static-membership", "--session-timeout", "7s",
			"--replication-factor", "1", "--metrics-addr", "", "--transactional-id", "test-0",
		}, noEnv, io.Discard, &errs)
	}()
	want := map[string]join{}
	for _, p := range allParticipants {
		want["ksaga-participant-"+p] = join{instanceID: "test-0-" + p, session: 7000}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		got := maps.Clone(joins)
		mu.Unlock()
		if reflect.DeepEqual(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("joins after 20s: got %+v, want %+v\n%s", got, want, errs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != exitOK {
		t.Errorf("exit code after cancel: got %d, want 0\n%s", code, errs.String())
	}
}
