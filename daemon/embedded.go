//go:build !ksaga_production

// The embedded mode pulls in an in-process Kafka (kfake) and Redis
// (miniredis, with its Lua interpreter): test code a production image does
// without. The production build (go build -tags ksaga_production, as make
// image does) leaves this file out, and embedded_off.go stands in for it.

package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
)

// startEmbedded starts an in-process Kafka (kfake, persisted under
// --data-dir) and Redis (miniredis, in memory) and points env at them. Redis
// starts empty on every run; the engines rebuild their view from the
// persisted state topics. The data directory is locked first (see
// lockDataDir) and until stop: a daemon whose directory another holds
// exits before it starts Kafka. It returns what stops them, or nil and the
// exit status when they cannot start.
func (a *app) startEmbedded(env *Env) (stop func(), code int) {
	c := a.cfg
	lock, err := lockDataDir(c.DataDir, a.o.programName(), time.Now())
	var inUse *dataDirInUseError
	switch {
	case errors.As(err, &inUse):
		return nil, a.failf("%v", err)
	case err != nil:
		return nil, a.failf("--data-dir: %v", err)
	}
	cluster, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.DataDir(c.DataDir),
		kfake.WithLogger(kfakeLogger{a.compLog}),
	)
	if err != nil {
		lock.release()
		return nil, a.failf("cannot start the embedded Kafka in %s: %v; remove that directory or choose another --data-dir", c.DataDir, err)
	}
	mr, err := miniredis.Run()
	if err != nil {
		cluster.Close()
		lock.release()
		return nil, a.failf("cannot start the embedded Redis: %v", err)
	}
	env.Brokers = cluster.ListenAddrs()
	env.redisAddr = mr.Addr()
	env.rdb = redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{mr.Addr()}})
	env.track("engine", env.rdb)
	// The participants' own client, counted apart (see run).
	env.partsRdb = redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{mr.Addr()}})
	env.track("participants", env.partsRdb)
	a.log.Info("embedded Kafka and Redis started", "kafka", env.Brokers, "data_dir", c.DataDir, "redis", mr.Addr())
	return func() {
		// The engines and participants have stopped; env closes its Redis
		// client afterwards, which is harmless.
		mr.Close()
		cluster.Close() // which writes the data directory last
		lock.release()
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
