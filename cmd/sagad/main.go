// Command sagad runs the ksaga order saga: the engine and, optionally, the
// reference participants (inventory, payment, shipping).
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
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"

	"github.com/ksaga/ksaga/metrics"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // a dependency is unreachable, the engine failed, the demo stalled
	exitUsage = 2 // invalid flags or environment
)

// run is sagad without the process around it: it returns the exit code.
// Cancelling ctx shuts sagad down gracefully.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		usage(stdout)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "sagad: %v\n", err)
		return exitUsage
	}
	// Two loggers and failf share stderr: serialize their writes.
	stderr = &lockedWriter{w: stderr}
	log := newLogger(cfg.logFormat, cfg.logLevel, stderr)
	// The engine, the participants and kfake log at warn in embedded mode,
	// so that the demo's output stays readable, unless a level was asked
	// for.
	compLog := log
	if cfg.embedded() && !cfg.logLevelSet {
		compLog = newLogger(cfg.logFormat, max(cfg.logLevel, slog.LevelWarn), stderr)
	}
	// go-redis logs connection failures itself; send them through slog.
	// SetLogger is process-wide (and atomic).
	redis.SetLogger(redisLogger{compLog})
	a := &app{cfg: cfg, log: log, compLog: compLog, stdout: stdout, stderr: stderr}
	if cfg.embedded() {
		return a.runEmbedded(ctx)
	}
	return a.runReal(ctx)
}

// app is one run of sagad.
type app struct {
	cfg            config
	log, compLog   *slog.Logger
	stdout, stderr io.Writer
}

// failf reports an error that ends sagad and returns exitError.
func (a *app) failf(format string, args ...any) int {
	fmt.Fprintf(a.stderr, "sagad: "+format+"\n", args...)
	return exitError
}

func newLogger(format string, level slog.Level, w io.Writer) *slog.Logger {
	if format == "" {
		format = "json"
		if isTerminal(w) {
			format = "text"
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// redisLogger sends go-redis's own logs (pool dial failures) to slog.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(ctx context.Context, format string, args ...any) {
	l.log.WarnContext(ctx, fmt.Sprintf(format, args...), "component", "redis")
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// isTerminal reports whether w is a character device, such as a terminal.
func isTerminal(w io.Writer) bool {
	if l, ok := w.(*lockedWriter); ok {
		w = l.w
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// newRedis returns a client for addrs: one address is a single node,
// several are a Redis Cluster.
func newRedis(addrs []string) redis.UniversalClient {
	return redis.NewUniversalClient(&redis.UniversalOptions{Addrs: addrs})
}

// newRegistry returns the registry /metrics serves, with the Go runtime and
// process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// countRedisRoundTrips counts the round trips of sagad's Redis clients as
// ksaga_redis_round_trips_total{client}: engine (--redis-addr), orders
// (--orders-redis-addr) and participants (--participants-redis-addr). A
// client shared with the engine's is counted as the engine's.
func countRedisRoundTrips(reg prometheus.Registerer, rdb, ordersRdb, simRdb redis.UniversalClient) error {
	rm, err := metrics.NewRedis(reg, order.Name)
	if err != nil {
		return err
	}
	rdb.AddHook(rm.Hook("engine"))
	if ordersRdb != rdb {
		ordersRdb.AddHook(rm.Hook("orders"))
	}
	if simRdb != rdb && simRdb != ordersRdb {
		simRdb.AddHook(rm.Hook("participants"))
	}
	return nil
}

// kafkaMetrics returns kgo hooks exporting a client's metrics as ksaga_*
// with the label client=<name>: the engine and each participant share one
// registry, so their series differ by that label. Besides kprom's default
// bytes, the produce and fetch metrics count records, batches and
// compressed bytes per topic (sagabench derives the engine's output mix
// from them).
func kafkaMetrics(reg prometheus.Registerer, name string) kgo.Opt {
	return kgo.WithHooks(kprom.NewMetrics("ksaga", kprom.Registerer(reg),
		kprom.WithStaticLabel(prometheus.Labels{"client": name}),
		kprom.FetchAndProduceDetail(kprom.ByNode, kprom.ByTopic, kprom.Records, kprom.Batches, kprom.UncompressedBytes, kprom.CompressedBytes)))
}

// services are the engine and the participants of one sagad process.
type services struct {
	eng   *orchestrator.Engine
	parts []*namedParticipant

	cancel context.CancelFunc
	wg     sync.WaitGroup
	// failed receives the first unexpected end of a Run.
	failed chan error
	once   sync.Once
}

type namedParticipant struct {
	name string
	p    *participant.Participant
}

// serviceDeps are what the services are built on.
type serviceDeps struct {
	brokers    []string
	rdb        redis.UniversalClient // the engine's
	ordersRdb  redis.UniversalClient // the orders store
	simRdb     redis.UniversalClient // the participants' ledgers
	reg        prometheus.Registerer
	hooks      []orchestrator.Hook
	kafkaOpts  []kgo.Opt // for every client (tests, the embedded demo)
	engineOpts []orchestrator.Opt
}

// newServices builds the engine and the participants chosen by cfg. Nothing
// connects until start.
func newServices(cfg config, log *slog.Logger, d serviceDeps) (*services, error) {
	engOpts := []orchestrator.Opt{
		orchestrator.Brokers(d.brokers...),
		orchestrator.Redis(d.rdb),
		orchestrator.TransactionalID(cfg.txnID),
		orchestrator.Group(cfg.group),
		orchestrator.Logger(log),
		orchestrator.MaxPollRecords(cfg.maxPoll),
		orchestrator.Hooks(d.hooks...),
		orchestrator.KafkaOpts(append(cloneOpts(d.kafkaOpts), kafkaMetrics(d.reg, "engine"))...),
	}
	if cfg.static {
		engOpts = append(engOpts, orchestrator.StaticMembership())
	}
	s := &services{failed: make(chan error, 1+len(cfg.participants))}
	if !cfg.noEngine {
		eng, err := orchestrator.New(order.New(ordersStore(cfg, d.ordersRdb, log)), append(engOpts, d.engineOpts...)...)
		if err != nil {
			return nil, err
		}
		s.eng = eng
	}
	handlers := sim.Handlers(d.simRdb, cfg.paymentLimit)
	for _, name := range cfg.participants {
		p, err := participant.New(name, handlers[name], append(participantOpts(cfg, name),
			participant.Brokers(d.brokers...),
			participant.Logger(log),
			participant.KafkaOpts(append(cloneOpts(d.kafkaOpts), kafkaMetrics(d.reg, name))...),
		)...)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("participant %s: %w", name, err)
		}
		s.parts = append(s.parts, &namedParticipant{name, p})
	}
	return s, nil
}

// ordersStore returns the store of the saga's complete-order step on rdb,
// wrapped with the chaos suite's fault hooks when --chaos-faults is set.
func ordersStore(cfg config, rdb redis.UniversalClient, log *slog.Logger) order.Store {
	var s order.Store = sim.NewOrderStore(rdb)
	if cfg.chaosFaults {
		log.Warn("chaos faults enabled (--chaos-faults): complete-order obeys " + chaosHangKey + " and " + chaosPanicKey + "; tests only")
		s = &chaosStore{Store: s, rdb: rdb, log: log}
	}
	return s
}

// participantOpts are the options of participant name that come from cfg:
// its transactional id "<--transactional-id>-<name>", which is also its
// static instance id with --static-membership, and the session timeout.
// A participant restarted after a crash then takes its predecessor's place
// in the group and aborts its open transaction at once, as the engine does.
func participantOpts(cfg config, name string) []participant.Opt {
	opts := []participant.Opt{
		participant.TransactionalID(cfg.txnID + "-" + name),
		participant.SessionTimeout(cfg.sessionTimeout),
	}
	if cfg.static {
		opts = append(opts, participant.StaticMembership())
	}
	return opts
}

// cloneOpts returns a copy of opts, so that appends do not share its array.
func cloneOpts(opts []kgo.Opt) []kgo.Opt { return append([]kgo.Opt(nil), opts...) }

// start runs the engine and the participants in goroutines until stop.
// A Run that returns before stop is reported on s.failed.
func (s *services) start(ctx context.Context) {
	ctx, s.cancel = context.WithCancel(ctx)
	runOne := func(what string, run func(context.Context) error) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			err := run(ctx)
			if ctx.Err() != nil {
				return // stopping
			}
			if err == nil {
				err = errors.New("stopped unexpectedly")
			}
			s.failed <- fmt.Errorf("%s: %w", what, err)
		}()
	}
	if s.eng != nil {
		runOne("engine", s.eng.Run)
	}
	for _, np := range s.parts {
		runOne("participant "+np.name, np.p.Run)
	}
}

// stop cancels the Runs, waits for them to return (each finishes or aborts
// its current transaction) and closes the Kafka clients. It is safe to call
// more than once.
func (s *services) stop() {
	s.once.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
		s.wg.Wait()
		s.close()
	})
}

func (s *services) close() {
	for _, np := range s.parts {
		np.p.Close()
	}
	if s.eng != nil {
		s.eng.Close()
	}
}

// participantNames lists names for a log line.
func participantNames(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// shutdownTimeout bounds the HTTP server's shutdown.
const shutdownTimeout = 5 * time.Second

// runReal runs the engine and the chosen participants against real Kafka
// and Redis until ctx is cancelled or one of them fails.
func (a *app) runReal(ctx context.Context) int {
	c := a.cfg
	rdb := newRedis(c.redisAddrs)
	defer rdb.Close()
	ordersRdb, simRdb := rdb, rdb
	if len(c.ordersRedisAddrs) > 0 {
		ordersRdb = newRedis(c.ordersRedisAddrs)
		defer ordersRdb.Close()
	}
	if len(c.participantsRedisAddrs) > 0 {
		simRdb = newRedis(c.participantsRedisAddrs)
		defer simRdb.Close()
	}

	adm, err := kadm.NewOptClient(kgo.SeedBrokers(c.kafkaBrokers...))
	if err != nil {
		return a.failf("kafka admin client: %v", err)
	}
	defer adm.Close()
	if err := pingKafka(ctx, adm); err != nil {
		if ctx.Err() != nil {
			return exitOK // interrupted while starting
		}
		return a.failf("cannot reach Kafka at %s: %v; check --kafka-brokers", strings.Join(c.kafkaBrokers, ","), err)
	}
	if err := pingRedis(ctx, rdb); err != nil {
		if ctx.Err() != nil {
			return exitOK
		}
		return a.failf("cannot reach Redis at %s: %v; check --redis-addr", strings.Join(c.redisAddrs, ","), err)
	}
	if simRdb != rdb && len(c.participants) > 0 {
		if err := pingRedis(ctx, simRdb); err != nil {
			if ctx.Err() != nil {
				return exitOK
			}
			return a.failf("cannot reach Redis at %s: %v; check --participants-redis-addr", strings.Join(c.participantsRedisAddrs, ","), err)
		}
	}
	if ordersRdb != rdb && !c.noEngine {
		// The orders store is a dependency of one step, not of the engine:
		// while it is down that step fails and is retried.
		if err := pingRedis(ctx, ordersRdb); err != nil {
			a.log.Warn("the orders store's Redis does not answer; the complete-order step will retry", "addr", strings.Join(c.ordersRedisAddrs, ","), "err", err)
		}
	}
	if err := createTopics(ctx, adm, c.topicSpec(), a.log); err != nil {
		if ctx.Err() != nil {
			return exitOK
		}
		return a.failf("%v", err)
	}

	reg := newRegistry()
	m, err := metrics.New(reg, order.Name)
	if err != nil {
		return a.failf("%v", err)
	}
	if err := countRedisRoundTrips(reg, rdb, ordersRdb, simRdb); err != nil {
		return a.failf("%v", err)
	}
	svc, err := newServices(c, a.compLog, serviceDeps{
		brokers: c.kafkaBrokers, rdb: rdb, ordersRdb: ordersRdb, simRdb: simRdb, reg: reg, hooks: []orchestrator.Hook{m},
		kafkaOpts: []kgo.Opt{kgo.SessionTimeout(c.sessionTimeout)},
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
	a.log.Info("sagad running", "saga", order.Name, "brokers", strings.Join(c.kafkaBrokers, ","),
		"transactional_id", c.txnID, "group", c.group, "participants", participantNames(c.participants))
	code := a.wait(ctx, svc)
	svc.stop()
	stopHTTP()
	a.log.Info("sagad stopped")
	return code
}

// wait blocks until ctx is cancelled (exitOK) or a service stops on its own
// (exitError: the instance should restart, e.g. after being fenced).
func (a *app) wait(ctx context.Context, svc *services) int {
	select {
	case <-ctx.Done():
		a.log.Info("shutting down: finishing the current transactions")
		return exitOK
	case err := <-svc.failed:
		return a.failf("%v; stopping (restart the instance)", err)
	}
}

// Timeouts of the checks at start.
const (
	kafkaPingTimeout = 10 * time.Second
	redisPingTimeout = 5 * time.Second
)

func pingKafka(ctx context.Context, adm *kadm.Client) error {
	ctx, cancel := context.WithTimeout(ctx, kafkaPingTimeout)
	defer cancel()
	m, err := adm.BrokerMetadata(ctx)
	if err != nil {
		return err
	}
	if len(m.Brokers) == 0 {
		return errors.New("the cluster reports no brokers")
	}
	return nil
}

func pingRedis(ctx context.Context, rdb redis.UniversalClient) error {
	ctx, cancel := context.WithTimeout(ctx, redisPingTimeout)
	defer cancel()
	return rdb.Ping(ctx).Err()
}
