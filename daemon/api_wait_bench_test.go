//go:build unix

package daemon_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/saga"
)

// slowSaga's one step sends a command to the courier, whom no benchmark
// runs, and waits ten minutes for the reply: its sagas run, with no timer
// due, for as long as a benchmark measures them.
var slowSaga = saga.New("slow", saga.Step[note]{Name: "deliver", Do: func(_ context.Context, n *note) (saga.Command, error) {
	return saga.Command{Participant: "courier", Type: "Deliver", Payload: n}, nil
}, ReplyTimeout: 10 * time.Minute})

// BenchmarkAPIWaiters measures what requests waiting for an outcome
// (GET ?wait=60s) cost the daemon: 1 and 1,000 of them, on as many running
// sagas, sent over raw connections (no goroutine on the caller's side, and
// a few hundred bytes of connection each in the same heap). It reports,
// per waiter, the heap and the goroutine stacks the process holds more
// than before they came (after a GC) and the goroutines, and the CPU time
// the whole process (daemon, engine, kfake and Redis client) spends a
// second while they wait idle, without and with them:
//
//	go test ./daemon/ -run '^$' -bench APIWaiters -benchtime 1x
//
// The setup (a daemon on kfake and a redis-server, the sagas started) is
// not part of the figures; b.N does not apply (run it with -benchtime 1x).
func BenchmarkAPIWaiters(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprintf("waiters=%d", n), func(b *testing.B) { benchWaiters(b, n) })
	}
}

func benchWaiters(b *testing.B, n int) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cluster.Close)
	rs := redistest.StartServer(b)
	api, metricsAddr := freeAddr(b), freeAddr(b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- daemon.Run(ctx, []string{
			"--kafka-brokers", strings.Join(cluster.ListenAddrs(), ","), "--redis-addr", rs.Addr, "--participants", "none",
			"--replication-factor", "1", "--partitions", "3", "--metrics-addr", metricsAddr,
			"--transactional-id", "bench-0", "--session-timeout", "6s", "--log-level", "warn", "--api-addr", api, "--api-insecure-no-auth",
			"--api-max-waiters", fmt.Sprint(n + 1), "--shutdown-drain", "0",
		}, daemon.Name("benchd"), daemon.Saga(slowSaga), daemon.Participant("courier", echoHandler), daemon.Output(io.Discard, io.Discard))
	}()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	base, m := "http://"+api, &apiDaemon{metrics: metricsAddr}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	status := func(method, path, body string) int {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return 0
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	until := func(what string, cond func() bool) {
		for deadline := time.Now().Add(2 * time.Minute); !cond(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				b.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	until("the daemon to be ready", func() bool {
		resp, err := http.Get("http://" + metricsAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK && status(http.MethodGet, "/v1/openapi.json", "") == http.StatusOK
	})
	// n running sagas, started 8 at a time.
	ids := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ids {
				id := fmt.Sprintf("s-%d", i)
				if code := status(http.MethodPost, "/v1/sagas/slow/"+id, `{"id":"`+id+`"}`); code != http.StatusAccepted {
					b.Errorf("start %s: %d", id, code)
				}
			}
		}()
	}
	for i := range n {
		ids <- i
	}
	close(ids)
	wg.Wait()
	for i := range n {
		until("saga s-"+fmt.Sprint(i)+" in the view", func() bool {
			return status(http.MethodGet, fmt.Sprintf("/v1/sagas/slow/s-%d", i), "") == http.StatusOK
		})
	}
	// The first wait starts the saga type's reader: a cost once per
	// type, not per waiter.
	if code := status(http.MethodGet, "/v1/sagas/slow/s-0?wait=100ms", ""); code != http.StatusAccepted {
		b.Fatalf("a first wait: %d, want 202", code)
	}
	hc.CloseIdleConnections()
	http.DefaultClient.CloseIdleConnections()
	time.Sleep(time.Second)

	const window = 5 * time.Second
	heap0, stack0, g0 := settled()
	idle0 := cpuPerSecond(window)

	// In batches of 32, each waiting before the next comes: a request
	// holds one of --api-max-in-flight (64) until it begins to wait, and
	// those past it would be answered 429.
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", api)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		if _, err := fmt.Fprintf(c, "GET /v1/sagas/slow/s-%d?wait=60s HTTP/1.1\r\nHost: bench\r\n\r\n", i); err != nil {
			b.Fatal(err)
		}
		conns[i] = c
		if i%32 == 31 || i == n-1 {
			until(fmt.Sprintf("%d waiters", i+1), func() bool { return scrapeValue(b, m, "ksaga_api_waiters") == float64(i+1) })
		}
	}
	http.DefaultClient.CloseIdleConnections() // scrapeValue's
	time.Sleep(100 * time.Millisecond)
	heap1, stack1, g1 := settled()
	idle1 := cpuPerSecond(window)
	if w := scrapeValue(b, m, "ksaga_api_waiters"); w != float64(n) {
		b.Errorf("ksaga_api_waiters %v after the window, want %d: a wait ended early", w, n)
	}
	b.ReportMetric(float64(heap1-heap0)/float64(n), "heap-B/waiter")
	b.ReportMetric(float64(stack1-stack0)/float64(n), "stack-B/waiter")
	b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/waiter")
	b.ReportMetric(idle0.Seconds()*1000, "idle-cpu-ms/s-before")
	b.ReportMetric(idle1.Seconds()*1000, "idle-cpu-ms/s-waiting")
	b.Logf("%d waiters: heap %+d B, stacks %+d B, goroutines %+d; process CPU %v/s idle before, %v/s while they wait",
		n, int64(heap1-heap0), int64(stack1-stack0), g1-g0, idle0.Round(time.Microsecond), idle1.Round(time.Microsecond))

	// Each still waits, and gets its 202 when the daemon stops.
	cancel()
	<-done
	done <- 0
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			b.Errorf("waiter %d when the daemon stopped: %v %v, want 202", i, resp, err)
			break
		}
		resp.Body.Close()
	}
}

// settled returns the heap in use, the goroutine stacks and the goroutines
// after a GC.
func settled() (heap, stack uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64(), s[1].Value.Uint64(), runtime.NumGoroutine()
}

// cpuPerSecond returns the CPU time (user and system) the process spends a
// second over window.
func cpuPerSecond(window time.Duration) time.Duration {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	began, c0 := time.Now(), cpu()
	time.Sleep(window)
	return time.Duration(float64(cpu()-c0) / time.Since(began).Seconds())
}
