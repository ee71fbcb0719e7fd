package metrics

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Values of ksaga_redis_maxmemory_policy_safe.
const (
	// PolicySafe: noeviction or a volatile-* policy, which evicts only
	// keys with a TTL (the engine sets none on its saga states).
	PolicySafe = 1
	// PolicyUnsafe: an allkeys-* policy, which may evict saga states,
	// checkpoints and attempt counts once Redis reaches maxmemory.
	PolicyUnsafe = 0
	// PolicyUnknown: the policy could not be read (CONFIG is renamed,
	// disabled or not allowed to the user, as on many managed services),
	// or Redis has not answered yet.
	PolicyUnknown = -1
)

// ErrConfigRefused means that Redis refused CONFIG GET: the command is
// renamed or disabled (as on many managed Redis services) or the user may
// not run it.
var ErrConfigRefused = errors.New("CONFIG is disabled on this server")

// RedisServer exports what a Redis server says about keeping keys, for
// the Redis that holds the engines' view:
//
//	ksaga_redis_evicted_keys_total     keys Redis evicted (INFO stats evicted_keys; summed over the primaries of a cluster)
//	ksaga_redis_maxmemory_policy_safe  1 for noeviction or volatile-*, 0 for allkeys-*, -1 when CONFIG GET is refused
//
// A scrape runs INFO stats, and CONFIG GET maxmemory-policy when the policy
// it has is older than a minute, waiting at most half a second: a Redis
// that does not answer in time (down, hung, failing over) leaves the last
// values read, and a read that outlasts the scrape goes on in the
// background, one at a time, until the client's own timeouts end it.
// Before the first answer the counter reads 0 and the policy -1. A Redis
// restart resets evicted_keys, which Prometheus's rate() and increase()
// treat as a counter reset.
//
// Its methods are safe for concurrent use.
type RedisServer struct {
	rdb      redis.UniversalClient
	timeout  time.Duration // how long a scrape waits for Redis
	interval time.Duration // how often the policy is read again
	now      func() time.Time

	evicted, policy *prometheus.Desc

	wg sync.WaitGroup
	// mu guards the fields below. reading is non-nil while a read runs,
	// and closed when it ends.
	mu          sync.Mutex
	reading     chan struct{}
	evictedKeys int64
	policyName  string
	policyErr   error
	policyAt    time.Time // when Redis last answered CONFIG GET (zero: never)
}

// WatchRedis registers with reg the metrics of the Redis server (or
// cluster) behind rdb, labelled saga=sagaType, and reads them once,
// waiting for the answer until ctx is done, so that Policy has a value
// when Redis answers. A Redis that does not answer is no error: the
// metrics keep their initial values until it does. It fails when reg or
// rdb is nil, or reg already holds these metrics. Close waits for a read
// still running.
func WatchRedis(ctx context.Context, reg prometheus.Registerer, sagaType string, rdb redis.UniversalClient) (*RedisServer, error) {
	return watchRedis(ctx, reg, sagaType, rdb, 500*time.Millisecond, time.Minute, time.Now)
}

func watchRedis(ctx context.Context, reg prometheus.Registerer, sagaType string, rdb redis.UniversalClient,
	timeout, interval time.Duration, now func() time.Time) (*RedisServer, error) {
	if reg == nil || rdb == nil {
		return nil, errors.New("metrics: nil Registerer or Redis client")
	}
	if sagaType == "" {
		return nil, errors.New("metrics: empty saga type")
	}
	labels := prometheus.Labels{"saga": sagaType}
	s := &RedisServer{rdb: rdb, timeout: timeout, interval: interval, now: now,
		policyErr: errors.New("redis has not answered CONFIG GET maxmemory-policy yet"),
		evicted: prometheus.NewDesc("ksaga_redis_evicted_keys_total",
			"Keys the engines' Redis evicted to stay under maxmemory (INFO stats evicted_keys, summed over the primaries of a cluster): saga states, checkpoints or attempt counts it lost, which the engine reads back from the state topic. The last value read when Redis does not answer.",
			nil, labels),
		policy: prometheus.NewDesc("ksaga_redis_maxmemory_policy_safe",
			"Whether the engines' Redis keeps saga states when it reaches maxmemory: 1 for maxmemory-policy noeviction or volatile-*, 0 for allkeys-* (it may evict them), -1 when CONFIG GET is refused or has not been answered yet. Read at start and about once a minute.",
			nil, labels),
	}
	if err := reg.Register(s); err != nil {
		return nil, fmt.Errorf("metrics: register redis server of saga %s: %w", sagaType, err)
	}
	done := s.read()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return s, nil
}

// Policy returns the last maxmemory-policy Redis answered (on a cluster,
// an allkeys-* policy of any primary before a safe one), or why there is
// none: an error that wraps ErrConfigRefused when CONFIG GET is refused,
// another when Redis has not answered it yet.
func (s *RedisServer) Policy() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.policyName, s.policyErr
}

// Close waits for a read still running; it does not close the client.
// Closing the client first ends a read that waits on a hung Redis.
func (s *RedisServer) Close() { s.wg.Wait() }

func (s *RedisServer) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.evicted
	ch <- s.policy
}

func (s *RedisServer) Collect(ch chan<- prometheus.Metric) {
	t := time.NewTimer(s.timeout)
	select {
	case <-s.read():
	case <-t.C:
	}
	t.Stop()
	s.mu.Lock()
	evicted, safety := s.evictedKeys, PolicyUnknown
	if s.policyErr == nil {
		safety = PolicySafety(s.policyName)
	}
	s.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(s.evicted, prometheus.CounterValue, float64(evicted))
	ch <- prometheus.MustNewConstMetric(s.policy, prometheus.GaugeValue, float64(safety))
}

// PolicySafety returns the value of ksaga_redis_maxmemory_policy_safe for
// a maxmemory-policy: PolicySafe, PolicyUnsafe, or PolicyUnknown for a
// policy it does not know.
func PolicySafety(policy string) int {
	switch {
	case policy == "noeviction", strings.HasPrefix(policy, "volatile-"):
		return PolicySafe
	case strings.HasPrefix(policy, "allkeys-"):
		return PolicyUnsafe
	}
	return PolicyUnknown
}

// read starts a read of the server unless one runs, and returns a channel
// closed when the running read ends.
//
// The read runs in a goroutine of its own because go-redis bounds a
// command by the client's read timeout and retries, not by a context,
// unless the client was made with ContextTimeoutEnabled: against a hung
// Redis a command can take several seconds, and a scrape must not wait
// for it. Only one read runs at a time, so a hung Redis costs one
// goroutine, not one per scrape.
func (s *RedisServer) read() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reading != nil {
		return s.reading
	}
	done := make(chan struct{})
	s.reading = done
	withPolicy := s.policyAt.IsZero() || s.now().Sub(s.policyAt) >= s.interval
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(done)
		// For clients that honour contexts; others stop at their own
		// timeouts.
		ctx, cancel := context.WithTimeout(context.Background(), 10*s.timeout)
		defer cancel()
		r := readServer(ctx, s.rdb, withPolicy)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.reading = nil
		if r.evictedErr == nil {
			s.evictedKeys = r.evicted
		}
		switch {
		case withPolicy && r.answered:
			s.policyName, s.policyErr, s.policyAt = r.policy, r.policyErr, s.now()
		case withPolicy && s.policyAt.IsZero() && r.failure != nil:
			s.policyErr = fmt.Errorf("redis did not answer CONFIG GET maxmemory-policy: %w", r.failure)
		}
	}()
	return done
}

// reading is what one read of the server found.
type reading struct {
	evicted    int64
	evictedErr error
	// answered reports whether every server answered CONFIG GET, with
	// the policy or a refusal (policyErr wraps ErrConfigRefused).
	answered  bool
	policy    string
	policyErr error
	// failure is why a server did not answer CONFIG GET.
	failure error
}

// readServer runs INFO stats and, when withPolicy, CONFIG GET
// maxmemory-policy on every primary behind rdb.
func readServer(ctx context.Context, rdb redis.UniversalClient, withPolicy bool) reading {
	var (
		mu       sync.Mutex
		r        = reading{answered: withPolicy}
		policies []string
		refusal  error
	)
	node := func(ctx context.Context, c redis.Cmdable) error {
		info, err := c.Info(ctx, "stats").Result()
		var n int64
		if err == nil {
			n, err = evictedKeys(info)
		}
		var policy string
		var perr error
		if withPolicy {
			policy, perr = maxmemoryPolicy(ctx, c)
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			r.evictedErr = err
		}
		r.evicted += n
		switch {
		case !withPolicy:
		case perr == nil:
			policies = append(policies, policy)
		case errors.Is(perr, ErrConfigRefused):
			refusal = perr
		default:
			r.answered, r.failure = false, perr
		}
		return nil
	}
	var err error
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		err = c.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return node(ctx, c) })
	case *redis.Ring:
		err = c.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error { return node(ctx, c) })
	default:
		err = node(ctx, rdb)
	}
	if err != nil { // no node was asked: the cluster's layout is unknown
		r.evictedErr, r.answered, r.failure = err, false, err
	}
	if !r.answered {
		return r
	}
	for _, p := range policies {
		if PolicySafety(p) == PolicyUnsafe {
			r.policy = p
			return r
		}
	}
	if refusal != nil {
		r.policyErr = refusal
		return r
	}
	if len(policies) == 0 {
		r.answered, r.failure = false, errors.New("no Redis server to ask")
		return r
	}
	r.policy = policies[0]
	return r
}

// maxmemoryPolicy runs CONFIG GET maxmemory-policy on one server. An
// error that Redis answers (rather than a connection that fails) is a
// refusal, except the transient ones of a server that is loading, busy or
// failing over.
func maxmemoryPolicy(ctx context.Context, c redis.Cmdable) (string, error) {
	m, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
	if err != nil {
		var rerr redis.Error
		if errors.As(err, &rerr) && !transient(err) {
			return "", fmt.Errorf("%v: %w", err, ErrConfigRefused)
		}
		return "", err
	}
	p, ok := m["maxmemory-policy"]
	if !ok {
		return "", fmt.Errorf("CONFIG GET maxmemory-policy answered %v: %w", m, ErrConfigRefused)
	}
	return p, nil
}

// transient reports whether a Redis error reply says "try again later".
func transient(err error) bool {
	for _, p := range []string{"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK", "NOREPLICAS"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// evictedKeys returns the evicted_keys field of an INFO stats reply, 0
// when the reply has none (an embedded Redis that never evicts).
func evictedKeys(info string) (int64, error) {
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "evicted_keys:")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("INFO stats: evicted_keys %q: %w", v, err)
		}
		return n, nil
	}
	return 0, nil
}
