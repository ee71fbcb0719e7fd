//go:build unix

package daemon_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/internal/redistest"
)

// TestReadyAgreesWithGauge runs a daemon against kfake and a redis-server
// (maxmemory-policy allkeys-lru), then stops Redis (SIGSTOP: a hung
// server), lets it go on, kills it and starts another on its port: at each
// stage /readyz and ksaga_engine_ready say the same thing, and neither
// waits long on a Redis that does not answer.
func TestReadyAgreesWithGauge(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	srv := redistest.StartWith(t, redistest.Options{Args: []string{"--maxmemory-policy", "allkeys-lru"}})
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
	go func() {
		done <- daemon.Run(ctx, []string{
			"--kafka-brokers", cluster.ListenAddrs()[0], "--redis-addr", srv.Addr,
			"--replication-factor", "1", "--partitions", "2", "--metrics-addr", metricsAddr,
			"--transactional-id", "ready-0", "--session-timeout", "6s", "--log-format", "json",
		}, daemon.Name("readyd"), daemon.Saga(echoSaga("alpha")), daemon.Output(io.Discard, &stderr), env(nil))
	}()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != daemon.ExitOK {
				t.Errorf("exit status: got %d, want 0\n%s", code, stderr.String())
			}
		case <-time.After(30 * time.Second):
			t.Error("the daemon did not stop within 30s of its context being cancelled")
		}
	}()

	// probe returns what /readyz answers and what ksaga_engine_ready
	// reads, and fails the test when either takes more than 3s.
	probe := func() (readyz int, gauge string) {
		t.Helper()
		client := &http.Client{Timeout: 10 * time.Second}
		start := time.Now()
		resp, err := client.Get("http://" + metricsAddr + "/readyz")
		if err != nil {
			return 0, ""
		}
		resp.Body.Close()
		readyz = resp.StatusCode
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("GET /readyz took %v, want at most a second or so", took)
		}
		start = time.Now()
		resp, err = client.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			return readyz, ""
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), `ksaga_engine_ready{saga="alpha"} `); ok {
				gauge = v
			}
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("GET /metrics took %v, want at most a second or so", took)
		}
		return readyz, gauge
	}
	// await waits until /readyz and the gauge both say ready (or both
	// not), then checks that they still agree a moment later.
	await := func(stage string, ready bool) {
		t.Helper()
		wantCode, wantGauge := http.StatusServiceUnavailable, "0"
		if ready {
			wantCode, wantGauge = http.StatusOK, "1"
		}
		var code int
		var gauge string
		for deadline := time.Now().Add(45 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if code, gauge = probe(); code == wantCode && gauge == wantGauge {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: /readyz %d and ksaga_engine_ready %q after 45s, want %d and %s\n%s",
					stage, code, gauge, wantCode, wantGauge, stderr.String())
			}
		}
		if code, gauge = probe(); code != wantCode || gauge != wantGauge {
			t.Errorf("%s, a moment later: got /readyz %d and ksaga_engine_ready %q, want %d and %s", stage, code, gauge, wantCode, wantGauge)
		}
	}

	await("started", true)
	if !strings.Contains(stderr.String(), `"level":"ERROR","msg":"redis maxmemory-policy is allkeys-lru: Redis may evict saga states`) {
		t.Errorf("no ERROR line about the allkeys-lru policy at start:\n%s", stderr.String())
	}

	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	pid := redisPID(t, rdb)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := func() { _ = syscall.Kill(pid, syscall.SIGCONT) }
	t.Cleanup(cont) // a stopped server cannot be killed cleanly
	await("redis stopped (SIGSTOP)", false)
	cont()
	await("redis going on (SIGCONT)", true)

	srv.Kill()
	await("redis killed", false)
	restart(t, srv.Addr)
	await("redis started again", true)
}

// redisPID returns the process id of the server behind rdb.
func redisPID(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			pid, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return pid
		}
	}
	t.Fatalf("INFO server has no process_id: %s", info)
	return 0
}

// restart starts a redis-server on addr, whose last server was killed,
// and stops it when the test ends.
func restart(t *testing.T, addr string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command("redis-server", "--port", port, "--bind", host, "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	for deadline := time.Now().Add(10 * time.Second); rdb.Ping(context.Background()).Err() != nil; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(fmt.Sprintf("redis-server on %s did not come back within 10s", addr))
		}
	}
}
