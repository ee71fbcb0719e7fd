package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/internal/redistest"
)

// TestWatchRedis runs the daemon's Redis watch against real servers: the
// line it logs at start and the policy gauge, per maxmemory-policy.
func TestWatchRedis(t *testing.T) {
	for _, tc := range []struct {
		name       string
		args       []string
		embedded   bool
		level      string // "" for no line at info and above
		msg        string
		policySafe float64
	}{
		{name: "noeviction", args: []string{"--maxmemory-policy", "noeviction"}, policySafe: 1},
		{name: "volatile-lru", args: []string{"--maxmemory-policy", "volatile-lru"}, policySafe: 1},
		{name: "allkeys-lru", args: []string{"--maxmemory-policy", "allkeys-lru"}, level: "ERROR", policySafe: 0,
			msg: "redis maxmemory-policy is allkeys-lru: Redis may evict saga states; the engine stays correct by reading them back from the state topic, at a cost per lost key; set maxmemory-policy to noeviction"},
		{name: "CONFIG refused", args: []string{"--rename-command", "CONFIG", ""}, level: "WARN", policySafe: -1,
			msg: "cannot read redis maxmemory-policy (CONFIG is disabled on this server): make sure it is noeviction or volatile-*"},
		// The embedded Redis is miniredis, which never evicts: no line.
		{name: "embedded", args: []string{"--maxmemory-policy", "allkeys-lru"}, embedded: true, policySafe: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.StartWith(t, redistest.Options{Args: tc.args})
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
			var logs bytes.Buffer
			cfg := &Config{KafkaBrokers: []string{"127.0.0.1:9092"}}
			if tc.embedded {
				cfg = &Config{}
			}
			a := &app{cfg: cfg, log: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))}
			reg := prometheus.NewRegistry()
			env := &Env{Registry: reg, rdb: rdb, svc: &services{engines: []*namedEngine{{saga: "order"}}}}
			env.track("engine", rdb)
			defer env.close()
			if err := a.watchRedis(context.Background(), env); err != nil {
				t.Fatal(err)
			}

			var lines []map[string]any
			for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				if l == "" {
					continue
				}
				var m map[string]any
				if err := json.Unmarshal([]byte(l), &m); err != nil {
					t.Fatalf("log line is not JSON: %q", l)
				}
				lines = append(lines, m)
			}
			switch {
			case tc.level == "" && len(lines) != 0:
				t.Errorf("log: got %v, want no line", lines)
			case tc.level != "" && len(lines) != 1:
				t.Errorf("log: got %d lines %v, want one at %s", len(lines), lines, tc.level)
			case tc.level != "" && (lines[0]["level"] != tc.level || lines[0]["msg"] != tc.msg):
				t.Errorf("log: got %v %q, want %s %q", lines[0]["level"], lines[0]["msg"], tc.level, tc.msg)
			}

			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]float64{}
			for _, mf := range mfs {
				for _, m := range mf.GetMetric() {
					got[mf.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
			if v, ok := got["ksaga_redis_maxmemory_policy_safe"]; !ok || v != tc.policySafe {
				t.Errorf("ksaga_redis_maxmemory_policy_safe: got %v (exported %v), want %v", v, ok, tc.policySafe)
			}
			if v, ok := got["ksaga_redis_evicted_keys_total"]; !ok || v != 0 {
				t.Errorf("ksaga_redis_evicted_keys_total: got %v (exported %v), want 0", v, ok)
			}
		})
	}
}
