package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
)

// rollData is the data of the roll saga, which TestRollingAPIDrain starts
// through the HTTP API; no engine runs it.
type rollData struct {
	ID string `json:"id"`
}

var rollSaga = saga.New("roll", saga.Step[rollData]{Name: "noop", Local: func(context.Context, *rollData) error { return nil }})

// rollBackend is one API daemon behind the test's load balancer.
type rollBackend struct {
	name, api, metrics string
	args               []string
	brokers, redis     string

	ready   atomic.Bool // as the balancer last saw /readyz
	stopped atomic.Int64
	stderr  *syncBuffer
	cancel  context.CancelFunc
	done    chan int
}

// start runs the daemon (again) on the backend's addresses, and waits until
// its /readyz answers 200.
func (b *rollBackend) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel, b.done, b.stderr = cancel, make(chan int, 1), &syncBuffer{}
	b.stopped.Store(0)
	go func() {
		b.done <- daemon.Run(ctx, append([]string{
			"--kafka-brokers", b.brokers, "--redis-addr", b.redis, "--engine=false", "--participants", "none",
			"--replication-factor", "1", "--partitions", "3", "--metrics-addr", b.metrics,
			"--api-addr", b.api, "--api-insecure-no-auth", "--log-format", "json",
		}, b.args...), daemon.Name("rolld"), daemon.Saga(rollSaga), daemon.Output(io.Discard, b.stderr), env(nil))
	}()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		select {
		case code := <-b.done:
			t.Fatalf("%s exited with %d while starting:\n%s", b.name, code, b.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is not ready after a minute:\n%s", b.name, b.stderr)
		}
		if resp, err := http.Get("http://" + b.metrics + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
	}
}

// stop is SIGTERM: it cancels the daemon's context, and returns when the
// daemon has exited.
func (b *rollBackend) stop(t *testing.T) time.Time {
	t.Helper()
	sigterm := time.Now()
	b.stopped.Store(sigterm.UnixNano())
	b.cancel()
	select {
	case code := <-b.done:
		if code != daemon.ExitOK {
			t.Errorf("%s exited with %d after SIGTERM, want 0:\n%s", b.name, code, b.stderr)
		}
	case <-time.After(time.Minute):
		t.Fatalf("%s did not stop within a minute:\n%s", b.name, b.stderr)
	}
	return sigterm
}

// rollResult is one start request the load sent.
type rollResult struct {
	backend *rollBackend
	id      string
	sent    time.Time
	// afterSIGTERM is set when the request was sent after its backend's
	// SIGTERM.
	afterSIGTERM bool
	code         int
	err          error
}

// TestRollingAPIDrain rolls two API daemons, one after the other, the way a
// Deployment's rolling update does, while a load of start requests goes
// through a load balancer that sends only to the daemons whose /readyz
// answered 200 at its last look, a quarter of a second ago at most (a
// Service's endpoints lag the same way, by seconds). On SIGTERM a daemon
// must fail /readyz at once and go on serving the API for --shutdown-drain
// before it stops accepting: the test counts no refused connection, no
// error and no answer other than 202, and every start answered 202 on the
// inbox. It fails too when no request reached a daemon after its SIGTERM:
// then the drain was never put to the test.
func TestRollingAPIDrain(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers, redisAddr := cluster.ListenAddrs()[0], redistest.Start(t)
	const drain = 2 * time.Second
	const lookEvery = 250 * time.Millisecond

	var backends []*rollBackend
	for _, name := range []string{"api-a", "api-b"} {
		b := &rollBackend{name: name, api: loopbackAddr(t), metrics: loopbackAddr(t), brokers: brokers, redis: redisAddr,
			args: []string{"--shutdown-drain", drain.String()}}
		b.start(t)
		b.ready.Store(true)
		backends = append(backends, b)
		t.Cleanup(func() {
			if b.stopped.Load() == 0 {
				b.stop(t)
			}
		})
	}

	// The balancer's look at /readyz, as kubelet's probe and the endpoints
	// controller would.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		probe := &http.Client{Timeout: 200 * time.Millisecond}
		for ctx.Err() == nil {
			for _, b := range backends {
				ok := false
				if resp, err := probe.Get("http://" + b.metrics + "/readyz"); err == nil {
					resp.Body.Close()
					ok = resp.StatusCode == http.StatusOK
				}
				b.ready.Store(ok)
			}
			select {
			case <-ctx.Done():
			case <-time.After(lookEvery):
			}
		}
	}()

	// The load: workers that each send a start to a ready daemon, one
	// after the other, on keep-alive connections.
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	var mu sync.Mutex
	var results []rollResult
	var next atomic.Int64
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 1))
			for ctx.Err() == nil {
				var ready []*rollBackend
				for _, b := range backends {
					if b.ready.Load() {
						ready = append(ready, b)
					}
				}
				if len(ready) == 0 {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				b := ready[rnd.IntN(len(ready))]
				id := fmt.Sprintf("r-%d", next.Add(1))
				r := rollResult{backend: b, id: id, sent: time.Now()}
				r.afterSIGTERM = b.stopped.Load() != 0 && b.stopped.Load() <= r.sent.UnixNano()
				req, err := http.NewRequest(http.MethodPost, "http://"+b.api+"/v1/sagas/roll/"+id, strings.NewReader(`{"id":"`+id+`"}`))
				if err != nil {
					panic(err)
				}
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					r.code = resp.StatusCode
				}
				r.err = err
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			}
		}()
	}

	time.Sleep(500 * time.Millisecond)
	for _, b := range backends {
		sigterm := b.stop(t)
		if took := time.Since(sigterm); took < drain {
			t.Errorf("%s stopped %v after SIGTERM, before the %v drain ended", b.name, took, drain)
		}
		if !strings.Contains(b.stderr.String(), "the HTTP API serves until the drain ends") {
			t.Errorf("%s did not log its drain:\n%s", b.name, b.stderr)
		}
		b.start(t)
		for deadline := time.Now().Add(10 * time.Second); !b.ready.Load(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the balancer does not see %s ready again", b.name)
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	cancel()
	wg.Wait()

	var refused, failed, afterSIGTERM int
	accepted := make(map[string]bool)
	for _, r := range results {
		switch {
		case r.err != nil:
			failed++
			if errors.Is(r.err, syscall.ECONNREFUSED) {
				refused++
			}
			if failed <= 5 {
				t.Errorf("start %s to %s (after SIGTERM: %v): %v", r.id, r.backend.name, r.afterSIGTERM, r.err)
			}
		case r.code != http.StatusAccepted:
			failed++
			if failed <= 5 {
				t.Errorf("start %s to %s (after SIGTERM: %v): got %d, want 202", r.id, r.backend.name, r.afterSIGTERM, r.code)
			}
		default:
			accepted[r.id] = true
			if r.afterSIGTERM {
				afterSIGTERM++
			}
		}
	}
	t.Logf("%d starts: %d answered 202, %d of them by a daemon after its SIGTERM; %d failed, %d refused", len(results), len(accepted), afterSIGTERM, failed, refused)
	if refused != 0 || failed != 0 {
		t.Errorf("%d starts failed, %d of them with a refused connection: want none", failed, refused)
	}
	if afterSIGTERM == 0 {
		t.Fatal("no start reached a daemon after its SIGTERM: the drain was not exercised")
	}

	// Every 202 is a start on the inbox.
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ConsumeTopics(message.Inbox("roll")),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	onInbox := make(map[string]bool)
	waitCtx, waitCancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer waitCancel()
	for missing := len(accepted); missing > 0 && waitCtx.Err() == nil; {
		cl.PollFetches(waitCtx).EachRecord(func(r *kgo.Record) {
			id := string(r.Key)
			if accepted[id] && !onInbox[id] {
				onInbox[id] = true
				missing--
			}
		})
	}
	if lost := len(accepted) - len(onInbox); lost != 0 {
		t.Errorf("%d of the %d starts answered 202 are not on %s", lost, len(accepted), message.Inbox("roll"))
	}
}

// TestShutdownDrainFlag checks --shutdown-drain's errors: exit status 2 and
// one line that says what to fix.
func TestShutdownDrainFlag(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"without the API", []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--shutdown-drain", "15s"},
			"d: --shutdown-drain applies only with --api-addr (without the HTTP API there is nothing to drain)\n"},
		{"negative", []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--api-addr", ":0", "--api-insecure-no-auth", "--shutdown-drain", "-1s"},
			"d: --shutdown-drain -1s is negative: want a duration such as 15s, or 0 to stop at once\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr syncBuffer
			code := daemon.Run(context.Background(), tc.args, daemon.Name("d"), daemon.Saga(rollSaga), daemon.Output(io.Discard, &stderr), env(nil))
			if code != daemon.ExitUsage || stderr.String() != tc.want {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr.String(), daemon.ExitUsage, tc.want)
			}
		})
	}
	var help syncBuffer
	daemon.Run(context.Background(), []string{"-help"}, daemon.Name("d"), daemon.Saga(rollSaga), daemon.Output(&help, io.Discard), env(nil))
	if !strings.Contains(help.String(), "--shutdown-drain duration") || !strings.Contains(help.String(), "[$KSAGA_SHUTDOWN_DRAIN]") {
		t.Errorf("-help does not list --shutdown-drain:\n%s", help.String())
	}
}
