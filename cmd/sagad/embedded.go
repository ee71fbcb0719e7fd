package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/metrics"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// runEmbedded starts an in-process Kafka (kfake, persisted under
// --data-dir) and Redis (miniredis, in memory), runs the engine and all
// participants on them, and runs the demo load. Redis starts empty on every
// run; the engine rebuilds its view from the persisted state topic.
func (a *app) runEmbedded(ctx context.Context) int {
	c := a.cfg
	if err := os.MkdirAll(c.dataDir, 0o755); err != nil {
		return a.failf("--data-dir: %v", err)
	}
	cluster, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.DataDir(c.dataDir),
		kfake.WithLogger(kfakeLogger{a.compLog}),
	)
	if err != nil {
		return a.failf("cannot start the embedded Kafka in %s: %v; remove that directory or choose another --data-dir", c.dataDir, err)
	}
	defer cluster.Close()
	mr, err := miniredis.Run()
	if err != nil {
		return a.failf("cannot start the embedded Redis: %v", err)
	}
	defer mr.Close()
	brokers := cluster.ListenAddrs()
	rdb := newRedis([]string{mr.Addr()})
	defer rdb.Close()
	a.log.Info("embedded Kafka and Redis started", "kafka", brokers, "data_dir", c.dataDir, "redis", mr.Addr())

	adm, err := kadm.NewOptClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return a.failf("kafka admin client: %v", err)
	}
	defer adm.Close()
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := createTopics(setupCtx, adm, c.topicSpec(), a.compLog); err != nil {
		if ctx.Err() != nil {
			return exitOK // interrupted while starting
		}
		return a.failf("embedded Kafka: %v", err)
	}

	plan := newDemoPlan(c.demoOrders, c.paymentLimit)
	if err := sim.SeedStock(setupCtx, rdb, plan.stock()); err != nil {
		return a.failf("embedded Redis: %v", err)
	}

	reg := newRegistry()
	m, err := metrics.New(reg, order.Name)
	if err != nil {
		return a.failf("%v", err)
	}
	if err := countRedisRoundTrips(reg, rdb, rdb, rdb); err != nil {
		return a.failf("%v", err)
	}
	tr := newTracker(plan)
	svc, err := newServices(c, a.compLog, serviceDeps{
		brokers: brokers, rdb: rdb, ordersRdb: rdb, simRdb: rdb, reg: reg, hooks: []orchestrator.Hook{m, tr},
	})
	if err != nil {
		return a.failf("%v", err)
	}
	stopHTTP, err := a.startHTTP(reg, engineReady(svc.eng, rdb))
	if err != nil {
		svc.stop()
		return a.failf("%v", err)
	}
	svc.start(ctx)

	code := a.demo(ctx, svc, brokers, rdb, m, tr)
	if code == exitOK && c.serve && ctx.Err() == nil {
		fmt.Fprintf(a.stdout, "\nserving until interrupted (Ctrl-C): Kafka at %s, Redis at %s", brokers[0], mr.Addr())
		if c.metricsAddr != "" {
			fmt.Fprintf(a.stdout, ", metrics at %s/metrics", c.metricsAddr)
		}
		fmt.Fprintln(a.stdout)
		code = a.wait(ctx, svc)
	}
	svc.stop()
	stopHTTP()
	return code
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
