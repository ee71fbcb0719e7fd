package metrics

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/internal/redistest"
)

func TestRedisRoundTrips(t *testing.T) {
	reg := prometheus.NewRegistry()
	rm, err := NewRedis(reg, "order")
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	// One connection, used for a command and a pipeline before counting:
	// its handshakes (HELLO, CLIENT SETINFO) cost round trips of their
	// own, which are counted too.
	rdb := redis.NewClient(&redis.Options{Addr: redistest.Start(t), PoolSize: 1})
	defer rdb.Close()
	rdb.AddHook(rm.Hook("engine"))
	ctx := context.Background()
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error { return p.Ping(ctx).Err() }); err != nil {
		t.Fatal(err)
	}
	trips := rm.trips.WithLabelValues("engine")
	base := testutil.ToFloat64(trips)

	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for range 10 {
			p.Incr(ctx, "n")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// An empty pipeline sends nothing.
	if _, err := rdb.Pipeline().Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(trips) - base; got != 2 {
		t.Errorf("round trips: got %v, want 2 (one command, one pipeline)", got)
	}

	if _, err := NewRedis(reg, "order"); err == nil {
		t.Error("NewRedis registered the same metric twice: got nil error, want one")
	}
}
