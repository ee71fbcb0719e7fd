package daemon_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/daemon"
)

// TestEmbeddedLoopback runs the embedded mode with --metrics-addr and
// --api-addr given without a host: a demo on a laptop listens on the
// loopback, not on every interface. Its participants' Redis client is
// counted apart from the engine's, as with real services.
func TestEmbeddedLoopback(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- daemon.Run(ctx, []string{"--metrics-addr", ":0", "--api-addr", ":0", "--api-insecure-no-auth",
			"--data-dir", t.TempDir(), "--log-format", "json"},
			daemon.Name("loopd"), daemon.Saga(echoSaga("alpha")), daemon.Participant("alpha-echo", echoHandler),
			daemon.Output(io.Discard, &stderr), env(nil))
	}()
	// The addresses the two servers log once they listen.
	addrs := map[string]string{}
	for deadline := time.Now().Add(time.Minute); len(addrs) < 2; time.Sleep(20 * time.Millisecond) {
		select {
		case code := <-done:
			t.Fatalf("exited with %d:\n%s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no serving lines for /metrics and the API after a minute:\n%s", stderr.String())
		}
		for _, line := range strings.Split(stderr.String(), "\n") {
			var l struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Addr != "" && strings.HasPrefix(l.Msg, "serving") {
				addrs[l.Msg] = l.Addr
			}
		}
	}
	var metricsAddr string
	for msg, addr := range addrs {
		if host, _, err := net.SplitHostPort(addr); err != nil || host != "127.0.0.1" {
			t.Errorf("%s on %s, want the loopback 127.0.0.1", msg, addr)
		}
		if strings.Contains(msg, "/metrics") {
			metricsAddr = addr
		}
	}
	if _, ok := scrape(t, metricsAddr, `ksaga_redis_round_trips_total{client="participants",saga="alpha"}`); !ok {
		t.Error(`the embedded mode has no ksaga_redis_round_trips_total{client="participants"}: its participants share the engine's client`)
	}
	cancel()
	if code := <-done; code != daemon.ExitOK {
		t.Errorf("exit %d, want 0\n%s", code, stderr.String())
	}
}
