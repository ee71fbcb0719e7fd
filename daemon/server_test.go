package daemon

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

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

func TestPprof(t *testing.T) {
	mux := newMux(prometheus.NewRegistry(), func(context.Context) error { return nil })
	servePprof(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap?debug=1", "/debug/pprof/cmdline"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: got %d, want 200", path, resp.StatusCode)
		}
	}
}
