package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHTTP(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "ksaga_test_total", Help: "A test counter."})
	reg.MustRegister(c)
	c.Inc()
	var ready atomic.Bool
	srv := httptest.NewServer(newMux(reg, func(context.Context) error {
		if !ready.Load() {
			return errors.New("engine not ready: joining the consumer group")
		}
		return nil
	}))
	defer srv.Close()

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	for _, tc := range []struct {
		path     string
		code     int
		contains string
	}{
		{"/healthz", http.StatusOK, "ok"},
		{"/readyz", http.StatusServiceUnavailable, "engine not ready: joining the consumer group"},
		{"/metrics", http.StatusOK, "ksaga_test_total 1"},
	} {
		code, body := get(tc.path)
		if code != tc.code || !strings.Contains(body, tc.contains) {
			t.Errorf("GET %s: got %d %q, want %d containing %q", tc.path, code, body, tc.code, tc.contains)
		}
	}
	ready.Store(true)
	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Errorf("GET /readyz when ready: got %d, want 200", code)
	}
}

// TestPprof checks the profiles of --pprof: off by default; with it, the
// command line hides passwords and the profiles are bounded.
func TestPprof(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	ready := func(context.Context) error { return nil }
	get := func(t *testing.T, srv *httptest.Server, path string) (int, string) {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	t.Run("off by default", func(t *testing.T) {
		var c Config
		o := &options{name: "d"}
		if err := o.newFlagSet(&c).Parse(nil); err != nil {
			t.Fatal(err)
		}
		a := &app{cfg: &Config{Pprof: c.Pprof}, log: quiet}
		srv := httptest.NewServer(a.metricsHandler(prometheus.NewRegistry(), ready))
		defer srv.Close()
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/profile?seconds=1"} {
			if code, _ := get(t, srv, path); code != http.StatusNotFound {
				t.Errorf("GET %s without --pprof: got %d, want 404", path, code)
			}
		}
	})

	a := &app{cfg: &Config{Pprof: true}, log: quiet}
	srv := httptest.NewServer(a.metricsHandler(prometheus.NewRegistry(), ready))
	defer srv.Close()
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap?debug=1", "/debug/pprof/goroutine?debug=1"} {
		if code, _ := get(t, srv, path); code != http.StatusOK {
			t.Errorf("GET %s: got %d, want 200", path, code)
		}
	}

	t.Run("cmdline", func(t *testing.T) {
		args := os.Args
		defer func() { os.Args = args }()
		os.Args = []string{"sagad", "--redis-password", "hunter2-secret", "--kafka-sasl-password=sasl-secret",
			"-api-token", "tok-secret", "--redis-password-file", "/etc/ksaga/credentials/redis-password",
			"--outbox-postgres-dsn", "postgres://ksaga:pg-secret@db:5432/shop", "--redis-addr", "r:6379"}
		code, body := get(t, srv, "/debug/pprof/cmdline")
		if code != http.StatusOK {
			t.Fatalf("GET /debug/pprof/cmdline: got %d", code)
		}
		for _, secret := range []string{"hunter2", "sasl-secret", "tok-secret", "pg-secret"} {
			if strings.Contains(body, secret) {
				t.Errorf("/debug/pprof/cmdline shows %q: %q", secret, body)
			}
		}
		for _, kept := range []string{"--redis-password\x00REDACTED", "/etc/ksaga/credentials/redis-password", "--redis-addr\x00r:6379", "ksaga:REDACTED@db"} {
			if !strings.Contains(body, kept) {
				t.Errorf("/debug/pprof/cmdline %q: want %q in it", body, kept)
			}
		}
	})

	t.Run("bounded", func(t *testing.T) {
		for _, path := range []string{"/debug/pprof/profile?seconds=3600", "/debug/pprof/profile?seconds=61",
			"/debug/pprof/profile?seconds=0", "/debug/pprof/profile?seconds=x", "/debug/pprof/trace?seconds=3600"} {
			if code, body := get(t, srv, path); code != http.StatusBadRequest || !strings.Contains(body, "at most 60") {
				t.Errorf("GET %s: got %d %q, want 400 saying at most 60", path, code, body)
			}
		}
		start := time.Now()
		code, body := get(t, srv, "/debug/pprof/profile?seconds=0.2")
		if code != http.StatusOK || len(body) == 0 {
			t.Errorf("GET /debug/pprof/profile?seconds=0.2: got %d and %d bytes, want 200 and a profile", code, len(body))
		}
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Errorf("the 0.2s profile took %v", d)
		}
	})
}

// TestRedactArgs checks what /debug/pprof/cmdline hides.
func TestRedactArgs(t *testing.T) {
	for _, tc := range []struct{ args, want []string }{
		{[]string{"sagad"}, []string{"sagad"}},
		{[]string{"sagad", "--redis-password", "pw", "--redis-addr", "r:1"}, []string{"sagad", "--redis-password", "REDACTED", "--redis-addr", "r:1"}},
		{[]string{"sagad", "-kafka-sasl-password=pw"}, []string{"sagad", "-kafka-sasl-password=REDACTED"}},
		{[]string{"sagad", "--api-token", "t", "--client-secret=s"}, []string{"sagad", "--api-token", "REDACTED", "--client-secret=REDACTED"}},
		{[]string{"sagad", "--redis-password-file", "/f", "--api-token-file=/t"}, []string{"sagad", "--redis-password-file", "/f", "--api-token-file=/t"}},
		{[]string{"sagad", "--outbox-postgres-dsn=postgres://u:pw@db/x?sslmode=require"}, []string{"sagad", "--outbox-postgres-dsn=postgres://u:REDACTED@db/x?sslmode=require"}},
		{[]string{"sagad", "--dsn", "host=db password=pw user=u"}, []string{"sagad", "--dsn", "host=db password=REDACTED user=u"}},
		{[]string{"sagad", "redis://:pw@r:6379"}, []string{"sagad", "redis://:REDACTED@r:6379"}},
		{[]string{"sagad", "--", "--redis-password", "x"}, []string{"sagad", "--", "--redis-password", "x"}},
		{[]string{"sagad", "--redis-password"}, []string{"sagad", "--redis-password"}},
	} {
		if got := redactArgs(tc.args); !slices.Equal(got, tc.want) {
			t.Errorf("redactArgs(%q): got %q, want %q", tc.args, got, tc.want)
		}
	}
}

// TestMetricsServerTimeouts checks that the metrics server closes idle
// keep-alive connections, requests that are slow to arrive and answers that
// are slow to leave, with the timeouts shortened; and that the real ones
// are set.
func TestMetricsServerTimeouts(t *testing.T) {
	for name, d := range map[string]time.Duration{"read header": metricsTimeouts.ReadHeader, "read": metricsTimeouts.Read,
		"write": metricsTimeouts.Write, "idle": metricsTimeouts.Idle} {
		if d <= 0 || d > 2*time.Minute {
			t.Errorf("metricsTimeouts %s = %v, want above 0 and at most 2m", name, d)
		}
	}
	if metricsTimeouts.Idle <= 30*time.Second {
		t.Errorf("metricsTimeouts idle = %v: a 30s scrape would need a new connection each time", metricsTimeouts.Idle)
	}

	short := serverTimeouts{ReadHeader: 300 * time.Millisecond, Read: 300 * time.Millisecond, Write: 300 * time.Millisecond, Idle: 300 * time.Millisecond}
	mux := newMux(prometheus.NewRegistry(), func(context.Context) error { return nil })
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, _ *http.Request) {
		time.Sleep(3 * short.Write)
		fmt.Fprintln(w, "late")
	})
	srv := newServer(mux, short)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	// closed reports whether the server closes conn within 2s (reading
	// what it sends until then).
	closed := func(conn net.Conn) bool {
		_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := io.Copy(io.Discard, conn)
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
	dial := func(t *testing.T) net.Conn {
		t.Helper()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}

	t.Run("idle keep-alive", func(t *testing.T) {
		conn := dial(t)
		fmt.Fprint(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /healthz: %v %v", resp, err)
		}
		start := time.Now()
		if !closed(conn) {
			t.Error("an idle keep-alive connection is still open after 2s")
		}
		if d := time.Since(start); d < short.Idle/2 {
			t.Errorf("closed after %v, before the idle timeout %v", d, short.Idle)
		}
	})
	t.Run("slow headers", func(t *testing.T) {
		conn := dial(t)
		fmt.Fprint(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
		if !closed(conn) {
			t.Error("a request whose headers never end is still open after 2s")
		}
	})
	t.Run("slow body", func(t *testing.T) {
		conn := dial(t)
		fmt.Fprint(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12")
		if !closed(conn) {
			t.Error("a request whose body never ends is still open after 2s")
		}
	})
	t.Run("slow answer", func(t *testing.T) {
		conn := dial(t)
		fmt.Fprint(conn, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
		if _, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
			t.Error("an answer written after the write timeout arrived")
		}
	})
}
