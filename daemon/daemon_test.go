package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/client"
	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/saga"
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

func env(m map[string]string) daemon.Opt { return daemon.Getenv(func(k string) string { return m[k] }) }

// echo is a saga of one participant step: name's participant "<name>-echo"
// answers every command with success.
type echo struct {
	ID string `json:"id"`
}

func echoSaga(name string) *saga.Definition {
	return saga.New(name, saga.Step[echo]{Name: "echo", Do: func(_ context.Context, e *echo) (saga.Command, error) {
		return saga.Command{Participant: name + "-echo", Type: "Echo", Payload: e}, nil
	}})
}

var echoHandler = participant.HandlerFunc(func(_ context.Context, reqs []participant.Request) ([]participant.Reply, error) {
	replies := make([]participant.Reply, len(reqs))
	for i := range reqs {
		replies[i] = participant.Success()
	}
	return replies, nil
})

// TestTwoSagaTypes runs two saga types and their participants in one
// daemon against kfake and a redis-server: each engine gets its own group
// and transactional id, both sagas complete, /readyz turns 200, and the
// daemon shuts down cleanly when its context is cancelled.
func TestTwoSagaTypes(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	done := make(chan int, 1)
	alpha, beta := echoSaga("alpha"), echoSaga("beta")
	go func() {
		done <- daemon.Run(ctx, []string{
			"--kafka-brokers", brokers[0], "--redis-addr", redistest.Start(t), "--participants", "all",
			"--replication-factor", "1", "--partitions", "2", "--metrics-addr", metricsAddr,
			"--transactional-id", "test-0", "--session-timeout", "6s", "--log-format", "json",
		}, daemon.Name("twod"), daemon.Saga(alpha), daemon.Saga(beta),
			daemon.Participant("alpha-echo", echoHandler), daemon.Participant("beta-echo", echoHandler),
			daemon.Output(io.Discard, &stderr), env(nil))
	}()

	c, err := client.New(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitCtx, waitCancel := context.WithTimeout(ctx, time.Minute)
	defer waitCancel()
	for _, def := range []*saga.Definition{alpha, beta} {
		for {
			err := c.Start(waitCtx, def, "s-1", echo{ID: "s-1"})
			if err == nil {
				break
			}
			if !errors.Is(err, client.ErrNoInbox) || waitCtx.Err() != nil {
				t.Fatalf("start %s: %v\n%s", def.Name(), err, stderr.String())
			}
			time.Sleep(50 * time.Millisecond) // the daemon is creating the topics
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeTopics(message.Events("alpha"), message.Events("beta")))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ended := make(map[string]string)
	for len(ended) < 2 && waitCtx.Err() == nil {
		cl.PollFetches(waitCtx).EachRecord(func(r *kgo.Record) {
			var ev message.Event
			if json.Unmarshal(r.Value, &ev) == nil && message.Terminal(ev.Type) {
				ended[ev.SagaType] = ev.Type
			}
		})
	}
	if want := map[string]string{"alpha": message.EventSagaCompleted, "beta": message.EventSagaCompleted}; fmt.Sprint(ended) != fmt.Sprint(want) {
		t.Fatalf("terminal events: got %v, want %v\n%s", ended, want, stderr.String())
	}

	adm := kadm.NewClient(cl)
	groups, err := adm.ListGroups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"ksaga-alpha", "ksaga-beta", "ksaga-participant-alpha-echo", "ksaga-participant-beta-echo"} {
		if _, ok := groups[g]; !ok {
			t.Errorf("group %s does not exist; groups: %v", g, groups.Groups())
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + metricsAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz not 200 after 30s: %v %v", resp, err)
		}
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`ksaga_sagas_finished_total{outcome="completed",saga="alpha"} 1`, `ksaga_sagas_finished_total{outcome="completed",saga="beta"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics has no %s", want)
		}
	}

	cancel()
	select {
	case code := <-done:
		if code != daemon.ExitOK {
			t.Errorf("exit status after cancel: got %d, want 0\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the daemon did not stop within 30s of its context being cancelled")
	}
	if !strings.Contains(stderr.String(), `"msg":"twod stopped"`) {
		t.Errorf("no shutdown log:\n%s", stderr.String())
	}
}

// TestRequireConfig checks that --require-config refuses the embedded
// mode, naming what to set, with exit status 2.
func TestRequireConfig(t *testing.T) {
	var stderr syncBuffer
	code := daemon.Run(context.Background(), nil, daemon.Name("tripd"), daemon.Saga(echoSaga("alpha")),
		daemon.Output(io.Discard, &stderr), env(map[string]string{"KSAGA_REQUIRE_CONFIG": "true"}))
	want := "tripd: KSAGA_REQUIRE_CONFIG is set, so tripd does not start its embedded demo: set --kafka-brokers (or KSAGA_KAFKA_BROKERS) and --redis-addr (or KSAGA_REDIS_ADDR)\n"
	if code != daemon.ExitUsage || stderr.String() != want {
		t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), daemon.ExitUsage, want)
	}
}

// TestSetupErrors checks that KafkaSetup, RedisSetup and builder errors end
// the daemon with one line and exit status 1, before it runs anything.
func TestSetupErrors(t *testing.T) {
	real := []string{"--kafka-brokers", "127.0.0.1:1", "--redis-addr", "127.0.0.1:1", "--metrics-addr", ""}
	for _, tc := range []struct {
		name string
		args []string
		opt  daemon.Opt
		want string
	}{
		{"kafka setup", real, daemon.KafkaSetup(func(*daemon.Config) ([]kgo.Opt, error) {
			return nil, errors.New("read --kafka-tls-ca /x: no such file")
		}), "d: read --kafka-tls-ca /x: no such file\n"},
		{"redis setup", real, daemon.RedisSetup(func(_ *daemon.Config, o *redis.UniversalOptions) error {
			return errors.New("read --redis-tls-ca /y: no such file")
		}), "d: read --redis-tls-ca /y: no such file\n"},
		{"unreachable kafka", real, daemon.KafkaOpts(kgo.DialTimeout(100 * time.Millisecond)), "d: cannot reach Kafka at 127.0.0.1:1: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr syncBuffer
			code := daemon.Run(context.Background(), tc.args, daemon.Name("d"), daemon.Saga(echoSaga("alpha")), tc.opt,
				daemon.Output(io.Discard, &stderr), env(nil))
			msg := fatalLine(t, stderr.String())
			if code != daemon.ExitError || !strings.HasPrefix(msg, strings.TrimPrefix(tc.want, "d: ")[:len(tc.want)-len("d: ")-1]) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), daemon.ExitError, tc.want)
			}
		})
	}
}

// TestRegistrationErrors checks the programming errors Run refuses.
func TestRegistrationErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []daemon.Opt
		want string
	}{
		{"nothing", nil, "d: nothing to run: register a saga (Saga, BuildSaga) or a participant (Participant, BuildParticipant)\n"},
		{"participant twice", []daemon.Opt{daemon.Participant("p", echoHandler), daemon.Participant("p", echoHandler)}, "d: participant p is registered twice\n"},
		{"participant named all", []daemon.Opt{daemon.Participant("all", echoHandler)}, "d: participant name \"all\" is not usable (not empty, all or none, no commas or spaces)\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr syncBuffer
			code := daemon.Run(context.Background(), nil, append(tc.opts, daemon.Name("d"), daemon.Output(io.Discard, &stderr), env(nil))...)
			if code != daemon.ExitError || stderr.String() != tc.want {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), daemon.ExitError, tc.want)
			}
		})
	}
}

// fatalLine returns the message of the one ERROR line in a JSON log, and
// fails the test unless there is exactly one.
func fatalLine(t *testing.T, log string) string {
	t.Helper()
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var l struct{ Level, Msg string }
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Errorf("log line is not JSON: %q", line)
			continue
		}
		if l.Level == "ERROR" {
			msgs = append(msgs, l.Msg)
		}
	}
	if len(msgs) != 1 {
		t.Fatalf("got %d error lines, want 1: %q", len(msgs), log)
	}
	return msgs[0]
}

// TestWrongCredentials: a wrong Kafka or Redis password ends the daemon at
// once with one error line that says what to check, and exit status 1: no
// retry storm.
func TestWrongCredentials(t *testing.T) {
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", "carol", "carol-secret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	rs := redistest.StartWith(t, redistest.Options{Args: []string{"--requirepass", "redis-secret"}})
	base := []string{"--kafka-brokers", kc.ListenAddrs()[0], "--redis-addr", rs.Addr, "--metrics-addr", "",
		"--kafka-sasl-mechanism", "SCRAM-SHA-512", "--kafka-sasl-username", "carol"}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"kafka", []string{"--kafka-sasl-password", "wrong", "--redis-password", "redis-secret"}, []string{"cannot reach Kafka", "--kafka-sasl-password"}},
		{"redis", []string{"--kafka-sasl-password", "carol-secret", "--redis-password", "wrong"}, []string{"cannot reach Redis", "check the Redis username and password"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr syncBuffer
			start := time.Now()
			code := daemon.Run(context.Background(), append(append([]string{}, base...), tc.args...), daemon.Name("d"),
				daemon.Saga(echoSaga("alpha")), daemon.Output(io.Discard, &stderr), env(nil))
			if code != daemon.ExitError {
				t.Errorf("exit %d, want %d; stderr %q", code, daemon.ExitError, stderr.String())
			}
			msg := fatalLine(t, stderr.String())
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v to give up, want a few seconds at most", d)
			}
		})
	}
}
