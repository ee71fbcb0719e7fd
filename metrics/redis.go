package metrics

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Redis counts the round trips of Redis clients as
// ksaga_redis_round_trips_total{client}: one per command sent alone and one
// per pipeline or MULTI/EXEC block, whatever it holds. A script run with
// redis.Script.Run that meets NOSCRIPT counts twice (EVALSHA, then EVAL), as
// it costs two round trips. Retries inside go-redis are not counted apart,
// and on Redis Cluster a pipeline that spans nodes counts once. A new
// connection's handshake (HELLO, CLIENT SETINFO, …) is counted too.
//
//	rm, err := metrics.NewRedis(reg, order.Name)
//	rdb.AddHook(rm.Hook("engine"))
//
// Its hooks are safe for concurrent use.
type Redis struct {
	trips *prometheus.CounterVec
}

// NewRedis returns the Redis round-trip counter of the saga type sagaType,
// registered with reg. It fails when reg is nil or already holds it.
func NewRedis(reg prometheus.Registerer, sagaType string) (*Redis, error) {
	if reg == nil {
		return nil, errors.New("metrics: nil Registerer")
	}
	if sagaType == "" {
		return nil, errors.New("metrics: empty saga type")
	}
	r := &Redis{trips: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ksaga", Name: "redis_round_trips_total", ConstLabels: prometheus.Labels{"saga": sagaType},
		Help: "Redis round trips, by client: one per command sent alone, one per pipeline.",
	}, []string{"client"})}
	if err := reg.Register(r.trips); err != nil {
		return nil, fmt.Errorf("metrics: register redis round trips of saga %s: %w", sagaType, err)
	}
	return r, nil
}

// Hook returns a go-redis hook that counts the round trips of one client
// under the label client=name. Add it with AddHook before the client is
// shared between goroutines.
func (r *Redis) Hook(name string) redis.Hook {
	return redisHook{trips: r.trips.WithLabelValues(name)}
}

// redisHook counts each command or pipeline that reaches the network.
type redisHook struct{ trips prometheus.Counter }

var _ redis.Hook = redisHook{}

func (redisHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h redisHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.trips.Inc()
		return next(ctx, cmd)
	}
}

func (h redisHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 {
			h.trips.Inc()
		}
		return next(ctx, cmds)
	}
}
