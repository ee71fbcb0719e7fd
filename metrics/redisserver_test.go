package metrics

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/internal/redistest"
)

// gauges gathers reg and returns the value of every sample without labels
// but saga, by metric name.
func gauges(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := make(map[string]float64)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				out[mf.GetName()] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[mf.GetName()] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}

const (
	evictedName = "ksaga_redis_evicted_keys_total"
	policyName  = "ksaga_redis_maxmemory_policy_safe"
)

func TestWatchRedisPolicy(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		want    float64
		policy  string
		refused bool
	}{
		{name: "noeviction", args: []string{"--maxmemory-policy", "noeviction"}, want: PolicySafe, policy: "noeviction"},
		{name: "volatile-lru", args: []string{"--maxmemory-policy", "volatile-lru"}, want: PolicySafe, policy: "volatile-lru"},
		{name: "allkeys-lru", args: []string{"--maxmemory-policy", "allkeys-lru"}, want: PolicyUnsafe, policy: "allkeys-lru"},
		{name: "allkeys-lfu", args: []string{"--maxmemory-policy", "allkeys-lfu"}, want: PolicyUnsafe, policy: "allkeys-lfu"},
		// As on managed services that rename or hide CONFIG.
		{name: "CONFIG renamed away", args: []string{"--rename-command", "CONFIG", ""}, want: PolicyUnknown, refused: true},
		{name: "CONFIG not allowed", args: []string{"--user", "default", "on", "nopass", "~*", "&*", "+@all", "-config"}, want: PolicyUnknown, refused: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.StartWith(t, redistest.Options{Args: tc.args})
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
			defer rdb.Close()
			reg := prometheus.NewRegistry()
			rs, err := WatchRedis(context.Background(), reg, "order", rdb)
			if err != nil {
				t.Fatal(err)
			}
			defer rs.Close()
			if got := gauges(t, reg)[policyName]; got != tc.want {
				t.Errorf("%s: got %v, want %v", policyName, got, tc.want)
			}
			policy, err := rs.Policy()
			if policy != tc.policy || errors.Is(err, ErrConfigRefused) != tc.refused {
				t.Errorf("Policy: got %q, %v; want %q, refused %v", policy, err, tc.policy, tc.refused)
			}
			if !tc.refused && err != nil {
				t.Errorf("Policy: got error %v, want none", err)
			}
			if got := gauges(t, reg)[evictedName]; got != 0 {
				t.Errorf("%s: got %v, want 0", evictedName, got)
			}
		})
	}
}

// TestWatchRedisEvictions fills a Redis with an allkeys-lru policy past its
// maxmemory: the counter reports the keys it evicted.
func TestWatchRedisEvictions(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	defer rdb.Close()
	reg := prometheus.NewRegistry()
	rs, err := watchRedis(context.Background(), reg, "order", rdb, 2*time.Second, 0, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	ctx := context.Background()
	if got := gauges(t, reg); got[evictedName] != 0 || got[policyName] != PolicySafe {
		t.Fatalf("before: got evicted %v, policy %v; want 0, 1", got[evictedName], got[policyName])
	}
	for _, kv := range [][2]string{{"maxmemory-policy", "allkeys-lru"}, {"maxmemory", "2mb"}} {
		if err := rdb.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	value := strings.Repeat("x", 1024)
	for i := range 4000 {
		if err := rdb.Set(ctx, fmt.Sprintf("ksaga:{order:0}:state:s-%d", i), value, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// No limit from here, so that the count stands still: INFO's own
	// reply could evict one key more.
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	info, err := rdb.Info(ctx, "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	want, err := evictedKeys(info)
	if err != nil || want == 0 {
		t.Fatalf("INFO stats evicted_keys: got %d, %v; want some: did the server evict?", want, err)
	}
	got := gauges(t, reg)
	if got[evictedName] != float64(want) {
		t.Errorf("%s: got %v, want %d", evictedName, got[evictedName], want)
	}
	// The policy is read again on this scrape (interval 0).
	if got[policyName] != PolicyUnsafe {
		t.Errorf("%s after CONFIG SET allkeys-lru: got %v, want 0", policyName, got[policyName])
	}
	if lint, err := testutil.GatherAndLint(reg); err != nil || len(lint) > 0 {
		t.Errorf("lint: %v %v", lint, err)
	}
	if _, err := WatchRedis(ctx, reg, "order", rdb); err == nil {
		t.Error("WatchRedis twice for one saga type: got nil error, want one")
	}
}

// TestWatchRedisRefresh reads the policy again only once the interval has
// passed.
func TestWatchRedisRefresh(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t)})
	defer rdb.Close()
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	reg := prometheus.NewRegistry()
	rs, err := watchRedis(context.Background(), reg, "order", rdb, 2*time.Second, time.Minute, clock)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	if err := rdb.ConfigSet(context.Background(), "maxmemory-policy", "allkeys-random").Err(); err != nil {
		t.Fatal(err)
	}
	if got := gauges(t, reg)[policyName]; got != PolicySafe {
		t.Errorf("%s within the interval: got %v, want 1 (the policy read at start)", policyName, got)
	}
	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	if got := gauges(t, reg)[policyName]; got != PolicyUnsafe {
		t.Errorf("%s once the interval passed: got %v, want 0", policyName, got)
	}
	if p, err := rs.Policy(); p != "allkeys-random" || err != nil {
		t.Errorf("Policy: got %q, %v; want allkeys-random", p, err)
	}
}

// TestWatchRedisUnresponsive stops (SIGSTOP) and then kills the server: a
// scrape returns within the timeout with the last values read.
func TestWatchRedisUnresponsive(t *testing.T) {
	srv := redistest.StartServer(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	defer rdb.Close()
	ctx := context.Background()
	for _, kv := range [][2]string{{"maxmemory-policy", "allkeys-lru"}, {"maxmemory", "2mb"}} {
		if err := rdb.ConfigSet(ctx, kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	value := strings.Repeat("x", 1024)
	for i := range 4000 {
		if err := rdb.Set(ctx, fmt.Sprintf("k-%d", i), value, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// No limit from here: a command's own memory (INFO's reply) would
	// otherwise evict one key more now and then.
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	const timeout = 200 * time.Millisecond
	rs, err := watchRedis(ctx, reg, "order", rdb, timeout, 0, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	before := gauges(t, reg)
	if before[evictedName] == 0 || before[policyName] != PolicyUnsafe {
		t.Fatalf("before: got evicted %v, policy %v; want some, 0", before[evictedName], before[policyName])
	}

	pid := redisPID(t, rdb)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	cont := sync.OnceFunc(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	defer cont()
	for i := range 3 {
		start := time.Now()
		got := gauges(t, reg)
		if took := time.Since(start); took > timeout+time.Second {
			t.Errorf("scrape %d of a hung Redis took %v, want about %v", i, took, timeout)
		}
		if got[evictedName] != before[evictedName] || got[policyName] != PolicyUnsafe {
			t.Errorf("scrape %d of a hung Redis: got evicted %v, policy %v; want the last values %v, 0",
				i, got[evictedName], got[policyName], before[evictedName])
		}
	}
	cont()
	srv.Kill()
	start := time.Now()
	got := gauges(t, reg)
	if took := time.Since(start); took > timeout+time.Second {
		t.Errorf("scrape of a stopped Redis took %v, want about %v", took, timeout)
	}
	if got[evictedName] != before[evictedName] || got[policyName] != PolicyUnsafe {
		t.Errorf("scrape of a stopped Redis: got evicted %v, policy %v; want the last values %v, 0",
			got[evictedName], got[policyName], before[evictedName])
	}
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

func TestPolicySafety(t *testing.T) {
	for _, tc := range []struct {
		policy string
		want   int
	}{
		{"noeviction", PolicySafe},
		{"volatile-lru", PolicySafe},
		{"volatile-lfu", PolicySafe},
		{"volatile-random", PolicySafe},
		{"volatile-ttl", PolicySafe},
		{"allkeys-lru", PolicyUnsafe},
		{"allkeys-lfu", PolicyUnsafe},
		{"allkeys-random", PolicyUnsafe},
		{"", PolicyUnknown},
		{"something-new", PolicyUnknown},
	} {
		if got := PolicySafety(tc.policy); got != tc.want {
			t.Errorf("PolicySafety(%q): got %d, want %d", tc.policy, got, tc.want)
		}
	}
}

func TestEvictedKeys(t *testing.T) {
	for _, tc := range []struct {
		info string
		want int64
		err  bool
	}{
		{"# Stats\r\ntotal_connections_received:3\r\nevicted_keys:42\r\nevicted_clients:0\r\n", 42, false},
		// miniredis (the embedded mode) has no such field.
		{"# Stats\r\ntotal_connections_received:3\r\n", 0, false},
		{"evicted_keys:many\r\n", 0, true},
	} {
		got, err := evictedKeys(tc.info)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("evictedKeys(%q): got %d, %v; want %d, error %v", tc.info, got, err, tc.want, tc.err)
		}
	}
}
