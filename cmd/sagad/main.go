// Command sagad runs the ksaga order saga: the engine and, optionally, the
// reference participants (coupon, inventory, payment, shipping). It is a thin main
// over package daemon, which does the flags, the logging, the topics, the
// HTTP server and the shutdown.
//
// With no flags it is a one-command demo: it starts an in-process Kafka
// (kfake, persisted under --data-dir) and Redis (miniredis), creates the
// topics, runs the engine and all participants, sends --demo-orders orders,
// prints progress every second and a summary, and exits.
//
//	go run ./cmd/sagad
//
// With --kafka-brokers and --redis-addr it runs against real services until
// SIGTERM or SIGINT:
//
//	sagad --kafka-brokers kafka-0:9092,kafka-1:9092 --redis-addr redis:6379 \
//		--transactional-id "$POD_NAME" --participants none
//
// Every flag has a KSAGA_* environment twin (sagad -help lists them). The
// HTTP server on --metrics-addr serves /metrics (the engine's ksaga_*
// metrics, see package metrics, and the Kafka clients' kprom metrics),
// /healthz and /readyz.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

func main() {
	daemon.TuneGC()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// redisPingTimeout bounds the check of the orders store's Redis at start.
const redisPingTimeout = 5 * time.Second

// Exit codes, as package daemon returns them.
const (
	exitOK    = daemon.ExitOK
	exitError = daemon.ExitError
	exitUsage = daemon.ExitUsage
)

// run is sagad without the process around it: it returns the exit code.
// Cancelling ctx shuts sagad down gracefully.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	s := &sagad{}
	opts := []daemon.Opt{
		daemon.Name("sagad"),
		daemon.About("sagad runs the ksaga order saga: the engine and, optionally, its reference participants."),
		daemon.Output(stdout, stderr),
		daemon.Getenv(getenv),
		daemon.Flags(s.flags),
		daemon.Validate(s.validate),
		daemon.BuildSagaVersions(s.buildOrder, s.hooks()),
		daemon.Demo(s.demo),
	}
	for _, name := range order.Participants {
		opts = append(opts, daemon.BuildParticipant(name, s.handler(name)))
	}
	return daemon.Run(ctx, args, opts...)
}

// sagad holds the flags of its own (the order saga's) and, in embedded
// mode, the demo's tracker.
type sagad struct {
	ordersRedisAddr string
	paymentLimit    int64
	demoOrders      int
	chaosFaults     bool
	orderVersions   string
	orderStart      int

	versions         []int // --order-versions, parsed
	ordersRedisAddrs []string
	// demoHook forwards the engine's after-commit hook to the demo's
	// tracker, which exists in embedded mode only.
	demoHook demoHook
}

func (s *sagad) flags(fs *flag.FlagSet) {
	fs.StringVar(&s.ordersRedisAddr, "orders-redis-addr", "", "Redis `addresses` of the orders store, the saga's last step (real services only; default: --redis-addr); point it elsewhere to simulate an orders-database outage")
	fs.Int64Var(&s.paymentLimit, "payment-limit-cents", sim.DefaultPaymentLimitCents, "largest amount the payment participant authorizes, in `cents`")
	fs.IntVar(&s.demoOrders, "demo-orders", 2000, "`orders` the demo sends (embedded mode only)")
	fs.StringVar(&s.orderVersions, "order-versions", "1,2,3", "`versions` of the order saga to host: new sagas start on the highest (or --order-start-version), the others' sagas run to their end (1: without the coupon step, 2: with it, 3: more attempts to cancel a payment); drop a version once ksaga_sagas_by_version shows none of its sagas")
	fs.IntVar(&s.orderStart, "order-start-version", 0, "`version` of the order saga new sagas start on, one of --order-versions (default: the highest); a deploy of a new version to several instances first hosts it everywhere, then starts on it")
	registerChaosFlag(fs, &s.chaosFaults)
}

// validate checks sagad's own flags, after the daemon's.
func (s *sagad) validate(c *daemon.Config) error {
	s.versions = nil
	for _, part := range strings.Split(s.orderVersions, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil || v < order.V1 || v > order.Newest || slices.Contains(s.versions, v) {
			return fmt.Errorf("%s %q: want a comma-separated list of distinct versions of the order saga, from %d to %d (e.g. 1,2,3 or 3)", c.Flag("order-versions"), s.orderVersions, order.V1, order.Newest)
		}
		s.versions = append(s.versions, v)
	}
	if s.orderStart != 0 && !slices.Contains(s.versions, s.orderStart) {
		return fmt.Errorf("%s %d: not one of %s %s", c.Flag("order-start-version"), s.orderStart, c.Flag("order-versions"), s.orderVersions)
	}
	s.ordersRedisAddrs = nil
	for _, part := range strings.Split(s.ordersRedisAddr, ",") {
		if part = strings.TrimSpace(part); part != "" {
			s.ordersRedisAddrs = append(s.ordersRedisAddrs, part)
		}
	}
	switch {
	case c.IsSet("orders-redis-addr") && len(s.ordersRedisAddrs) == 0:
		return fmt.Errorf("%s is empty: want host:port[,host:port…]", c.Flag("orders-redis-addr"))
	case c.Embedded() && c.IsSet("orders-redis-addr"):
		return fmt.Errorf("%s applies only with --kafka-brokers and --redis-addr (the embedded demo has its own single-broker Kafka and Redis)", c.Flag("orders-redis-addr"))
	case !c.Embedded() && c.IsSet("demo-orders"):
		return fmt.Errorf("%s applies only to the embedded demo; drop it when --kafka-brokers and --redis-addr are set", c.Flag("demo-orders"))
	case s.paymentLimit < 1:
		return fmt.Errorf("%s: must be at least 1, got %d", c.Flag("payment-limit-cents"), s.paymentLimit)
	case s.demoOrders < 0:
		return fmt.Errorf("%s: must be 0 or more, got %d", c.Flag("demo-orders"), s.demoOrders)
	}
	if ledgers, flag := c.ParticipantsRedisAddrs, "participants-redis-addr"; len(c.Participants) > 0 {
		if len(ledgers) == 0 {
			ledgers, flag = c.RedisAddrs, "redis-addr"
		}
		if len(ledgers) > 1 {
			return fmt.Errorf("%s: the reference participants need a single Redis node (their scripts touch several keys of one order), but %s lists %d addresses; give --participants-redis-addr one address",
				c.Flag("participants"), c.Flag(flag), len(ledgers))
		}
	}
	if !c.Embedded() {
		s.demoOrders = 0 // the demo flags do not apply
	}
	return nil
}

// buildOrder builds the order saga on the orders store: --orders-redis-addr,
// else the engine's Redis. In embedded mode it also makes the demo's
// tracker.
func (s *sagad) buildOrder(ctx context.Context, env *daemon.Env) (daemon.SagaVersions, error) {
	rdb := env.Redis()
	if len(s.ordersRedisAddrs) > 0 {
		var err error
		if rdb, err = env.NewRedis("orders", s.ordersRedisAddrs); err != nil {
			return daemon.SagaVersions{}, err
		}
		if env.Config.Engine {
			// The orders store is a dependency of one step, not of the
			// engine: while it is down that step fails and is retried.
			pctx, cancel := context.WithTimeout(ctx, redisPingTimeout)
			err := rdb.Ping(pctx).Err()
			cancel()
			if err != nil && ctx.Err() == nil {
				env.Logger.Warn("the orders store's Redis does not answer; the complete-order step will retry", "addr", strings.Join(s.ordersRedisAddrs, ","), "err", err)
			}
		}
	}
	if env.Config.Embedded() {
		s.demoHook.set(newTracker(newDemoPlan(s.demoOrders, s.paymentLimit)))
	}
	defs, err := order.Versions(ordersStore(s.chaosFaults, rdb, env.Logger), s.versions...)
	if err != nil {
		return daemon.SagaVersions{}, err
	}
	// New sagas start on --order-start-version, else the highest.
	start := slices.IndexFunc(defs, func(d *saga.Definition) bool { return d.Version() == s.orderStart })
	if start < 0 {
		start = slices.IndexFunc(defs, func(d *saga.Definition) bool { return d.Version() == slices.Max(s.versions) })
	}
	first := defs[start]
	return daemon.SagaVersions{Start: first, Hosted: slices.Delete(defs, start, start+1)}, nil
}

// handler builds the reference participant name on the participants' Redis.
func (s *sagad) handler(name string) daemon.HandlerBuilder {
	return func(_ context.Context, env *daemon.Env) (participant.Handler, error) {
		return sim.Handlers(env.ParticipantsRedis(), s.paymentLimit)[name], nil
	}
}

// ordersStore returns the store of the saga's complete-order step on rdb,
// wrapped with the chaos suite's fault hooks when chaos is set
// (--chaos-faults, which the production build does not have).
func ordersStore(chaos bool, rdb redis.UniversalClient, log *slog.Logger) order.Store {
	var s order.Store = sim.NewOrderStore(rdb)
	if chaos {
		s = withChaos(s, rdb, log)
	}
	return s
}
