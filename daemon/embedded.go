package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
)

// startEmbedded starts an in-process Kafka (kfake, persisted under
// --data-dir) and Redis (miniredis, in memory) and points env at them. Redis
// starts empty on every run; the engines rebuild their view from the
// persisted state topics. It returns what stops them, or nil and the exit
// status when they cannot start.
func (a *app) startEmbedded(env *Env) (stop func(), code int) {
	c := a.cfg
	if err := os.MkdirAll(c.DataDir, 0o755); err != nil {
		return nil, a.failf("--data-dir: %v", err)
	}
	cluster, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.DataDir(c.DataDir),
		kfake.WithLogger(kfakeLogger{a.compLog}),
	)
	if err != nil {
		return nil, a.failf("cannot start the embedded Kafka in %s: %v; remove that directory or choose another --data-dir", c.DataDir, err)
	}
	mr, err := miniredis.Run()
	if err != nil {
		cluster.Close()
		return nil, a.failf("cannot start the embedded Redis: %v", err)
	}
	env.Brokers = cluster.ListenAddrs()
	env.redisAddr = mr.Addr()
	env.rdb = redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{mr.Addr()}})
	env.partsRdb = env.rdb
	env.track("engine", env.rdb)
	a.log.Info("embedded Kafka and Redis started", "kafka", env.Brokers, "data_dir", c.DataDir, "redis", mr.Addr())
	return func() {
		// The engines and participants have stopped; env closes its Redis
		// client afterwards, which is harmless.
		mr.Close()
		cluster.Close()
	}, ExitOK
}

// kfakeLogger sends kfake's logs to slog.
type kfakeLogger struct{ log *slog.Logger }

func (l kfakeLogger) Logf(level kfake.LogLevel, format string, args ...any) {
	var sl slog.Level
	switch level {
	case kfake.LogLevelNone:
		return
	case kfake.LogLevelError:
		sl = slog.LevelError
	case kfake.LogLevelWarn:
		sl = slog.LevelWarn
	case kfake.LogLevelInfo:
		sl = slog.LevelInfo
	default:
		sl = slog.LevelDebug
	}
	ctx := context.Background()
	if l.log.Enabled(ctx, sl) {
		l.log.Log(ctx, sl, fmt.Sprintf(format, args...), "component", "kfake")
	}
}
