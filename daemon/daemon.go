// Package daemon is the runtime of a saga program: a user's main hands it
// saga definitions and participant handlers, and gets everything sagad does.
//
//	func main() {
//		daemon.Main(
//			daemon.Name("tripd"),
//			daemon.BuildSaga(func(_ context.Context, env *daemon.Env) (*saga.Definition, error) {
//				return trip.New(trip.NewStore(env.Redis())), nil
//			}),
//			daemon.BuildParticipant(trip.Hotel, func(_ context.Context, env *daemon.Env) (participant.Handler, error) {
//				return trip.NewHotel(env.ParticipantsRedis()), nil
//			}),
//		)
//	}
//
// The daemon parses its flags, each with a KSAGA_* environment twin (the
// flag wins; "<name> -help" lists them), and logs with log/slog (JSON, or
// text on a terminal). With --kafka-brokers and --redis-addr it connects to
// real services, creates the topics of every saga type and participant that
// do not exist yet and checks those that do (package topic), runs one engine
// per saga type and the participants that --participants selects, serves
// /metrics, /healthz and /readyz on --metrics-addr and, with --api-addr, the
// HTTP API that starts sagas (see api.go and openapi.json), with
// --console-addr the web console (package console, console.go), and runs until
// SIGINT or SIGTERM, when every engine and participant finishes or aborts
// its current transaction; with --outbox-relay it also relays the outboxes
// (package outbox) of every saga type to their inboxes. With neither
// --kafka-brokers nor --redis-addr it runs the embedded mode: an in-process
// Kafka (kfake, persisted in --data-dir) and Redis (miniredis), every
// participant, and the Demo if there is one; --require-config (images set
// it) refuses that instead.
//
// Exit status: 0 after a clean shutdown or a finished demo; 1 when Kafka or
// Redis cannot be reached, existing topics do not fit, or an engine or
// participant stops on its own (fenced, say: the instance should restart);
// 2 for invalid flags.
//
// /metrics serves, besides the Go and process collectors, the engine
// metrics of package metrics for every saga type (labelled saga=<type>),
// ksaga_redis_round_trips_total{client} (engine, participants, and the
// clients of Env.NewRedis; labelled with the first saga type), and the
// Kafka clients' kprom metrics labelled client=engine (engine-<type> with
// several saga types), client=<participant> or client=api; with --api-addr,
// ksaga_api_requests_total{method,route,code}. With engines it also serves
// ksaga_redis_evicted_keys_total and ksaga_redis_maxmemory_policy_safe for
// the engines' Redis, and logs at start whether that Redis may evict saga
// states (an ERROR line for an allkeys-* maxmemory-policy, a WARN one when
// CONFIG GET is refused). /readyz is 200 while every engine is ready
// (joined its group, restored its partitions, its last use of Redis and
// Kafka did not fail) and Redis answers PING within a second;
// ksaga_engine_ready reports the same check per engine.
//
// The package knows no saga type: cmd/sagad runs the order saga on it, and
// examples/trip the trip saga.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/conn"
	"github.com/ksaga/ksaga/logs"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/metrics"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/topic"
	"github.com/ksaga/ksaga/tracing"
)

// Exit statuses of Run.
const (
	ExitOK    = 0
	ExitError = 1 // a dependency is unreachable, an engine or participant stopped, the demo failed
	ExitUsage = 2 // invalid flags or environment
)

// DefaultGCPercent is the garbage collector's target (GOGC) that TuneGC
// sets. At Go's default of 100 the engine spent about a fifth of its CPU
// collecting; at 300 it spends 5-18% less CPU per saga for a heap up to
// three times as large (docs/PERFORMANCE.md). GOMEMLIMIT still bounds it:
// the collector works harder as the heap nears the limit.
const DefaultGCPercent = 300

// TuneGC sets the garbage collector's target to DefaultGCPercent unless the
// environment sets GOGC. Main calls it; a main of your own that calls Run
// may too. It is process-wide.
func TuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(DefaultGCPercent)
	}
}

// Main runs the daemon as the process: with os.Args, the environment, and a
// context cancelled by SIGINT or SIGTERM, after TuneGC. It calls os.Exit
// with Run's exit status and does not return.
func Main(opts ...Opt) {
	TuneGC()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Run(ctx, os.Args[1:], opts...)
	stop()
	os.Exit(code)
}

// Run is the daemon without the process around it: it parses args, runs
// until ctx is cancelled (a graceful shutdown, exit status 0) or something
// fails, and returns the exit status (ExitOK, ExitError, ExitUsage). It
// returns only once every goroutine it started has ended and every client
// it made is closed.
func Run(ctx context.Context, args []string, opts ...Opt) int {
	o := &options{name: "ksaga", stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	for _, opt := range opts {
		opt.apply(o)
	}
	shutdown := &shutdownFlags{}
	o.flags = append([]func(*flag.FlagSet){shutdown.register}, o.flags...)
	o.validators = append([]func(*Config) error{shutdown.validate}, o.validators...)
	// Two loggers and failf share stderr: serialize their writes.
	stderr := &lockedWriter{w: o.stderr}
	if err := o.check(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", o.name, err)
		return ExitError
	}
	cfg, err := o.parseConfig(args, o.getenv)
	if errors.Is(err, flag.ErrHelp) {
		o.usage(o.stdout)
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", o.name, err)
		return ExitUsage
	}
	if cfg.Embedded() {
		// A demo on a laptop: ":9090" means the loopback, not every
		// interface.
		cfg.MetricsAddr, cfg.API.Addr = loopback(cfg.MetricsAddr), loopback(cfg.API.Addr)
		cfg.Console.Addr = loopback(cfg.Console.Addr)
	}
	log := newLogger(cfg.LogFormat, cfg.LogLevel, stderr)
	// The engines, the participants and kfake log at warn in the embedded
	// mode, so that a demo's output stays readable, unless a level was
	// asked for.
	compLog := log
	if cfg.Embedded() && !cfg.logLevelSet {
		compLog = newLogger(cfg.LogFormat, max(cfg.LogLevel, slog.LevelWarn), stderr)
	}
	// go-redis logs connection failures itself; send them through slog.
	// SetLogger is process-wide (and atomic).
	redis.SetLogger(redisLogger{compLog})
	a := &app{o: o, cfg: cfg, log: log, compLog: compLog, stderr: stderr, drainFor: shutdown.drain}
	return a.run(ctx)
}

// check rejects registrations that cannot work: programming errors.
func (o *options) check() error {
	seen := make(map[string]bool)
	for _, p := range o.parts {
		switch {
		case p.name == "" || p.name == "all" || p.name == "none" || strings.ContainsAny(p.name, ", "):
			return fmt.Errorf("participant name %q is not usable (not empty, all or none, no commas or spaces)", p.name)
		case seen[p.name]:
			return fmt.Errorf("participant %s is registered twice", p.name)
		case p.build == nil:
			return fmt.Errorf("participant %s has no handler", p.name)
		}
		seen[p.name] = true
	}
	for _, s := range o.sagas {
		if s.build == nil {
			return errors.New("a saga is registered without a definition")
		}
	}
	if len(o.sagas) == 0 && len(o.parts) == 0 {
		return errors.New("nothing to run: register a saga (Saga, BuildSaga) or a participant (Participant, BuildParticipant)")
	}
	return nil
}

// app is one run of a daemon.
type app struct {
	o            *options
	cfg          *Config
	log, compLog *slog.Logger
	stderr       io.Writer
	tracer       *tracing.Tracer
	// drainFor is --shutdown-drain as it applies; draining is set once the
	// drain has begun (see drain).
	drainFor time.Duration
	draining atomic.Bool
	// sagaOpts are the orchestrator options of each saga type, in the
	// order of the definitions newServices gets; hosted are the older
	// versions of each (orchestrator.Host).
	sagaOpts [][]orchestrator.Opt
	hosted   map[string][]*saga.Definition
	startOn  map[string]int // the version new sagas start on, when not the newest
}

// failf reports an error that ends the daemon and returns ExitError.
// It goes through the logger, so that under --log-format json the fatal
// line is JSON too.
func (a *app) failf(format string, args ...any) int {
	a.log.Error(fmt.Sprintf(format, args...))
	return ExitError
}

// Env is what a daemon is connected to. Builders (BuildSaga,
// BuildParticipant) get it before the engines and participants start, a
// Demo once they run. Its methods are safe for concurrent use.
type Env struct {
	// Config is the daemon's configuration.
	Config *Config
	// Brokers are the Kafka seed brokers: --kafka-brokers, or the embedded
	// Kafka's.
	Brokers []string
	// Logger is the daemon's logger.
	Logger *slog.Logger
	// Registry is what /metrics serves: register metrics of your own there.
	Registry *prometheus.Registry
	// Stdout is where a demo prints.
	Stdout io.Writer

	rdb, partsRdb redis.UniversalClient
	kafkaOpts     []kgo.Opt
	redisOpts     func(*redis.UniversalOptions) error
	svc           *services
	metrics       map[string]*metrics.Metrics
	// redisAddr is the embedded Redis's address.
	redisAddr string

	mu      sync.Mutex
	closers []func() error
	// waits run after the closers: they wait for goroutines that a
	// closed client ends.
	waits []func()
	// clients are the Redis clients to count round trips of, until rm
	// exists; then new clients are hooked at once.
	clients []namedRedis
	rm      *metrics.Redis
}

type namedRedis struct {
	name string
	rdb  redis.UniversalClient
}

// Redis returns the engines' Redis client (--redis-addr, or the embedded
// Redis). Saga code may keep its own data there, under keys of its own.
func (e *Env) Redis() redis.UniversalClient { return e.rdb }

// ParticipantsRedis returns the Redis client of the participants run in this
// process: on --participants-redis-addr, else on the address of Redis(),
// but a client of its own, counted as
// ksaga_redis_round_trips_total{client="participants"}.
func (e *Env) ParticipantsRedis() redis.UniversalClient { return e.partsRdb }

// NewRedis returns a Redis client for addrs (several: Redis Cluster), made
// like the daemon's own (RedisSetup) and counted in
// ksaga_redis_round_trips_total{client=name}. The daemon closes it when it
// stops. It does not connect.
func (e *Env) NewRedis(name string, addrs []string) (redis.UniversalClient, error) {
	opts := &redis.UniversalOptions{Addrs: addrs}
	if e.redisOpts != nil {
		if err := e.redisOpts(opts); err != nil {
			return nil, err
		}
	}
	rdb := redis.NewUniversalClient(opts)
	e.track(name, rdb)
	return rdb, nil
}

// track closes rdb when the daemon stops and counts its round trips.
func (e *Env) track(name string, rdb redis.UniversalClient) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closers = append(e.closers, rdb.Close)
	if e.rm != nil {
		rdb.AddHook(e.rm.Hook(name))
		return
	}
	e.clients = append(e.clients, namedRedis{name, rdb})
}

// KafkaOpts returns the seed brokers and the options the daemon makes its
// own Kafka clients with (TLS, SASL, hooks), for clients of your own, such
// as client.New's.
func (e *Env) KafkaOpts() []kgo.Opt {
	return append([]kgo.Opt{kgo.SeedBrokers(e.Brokers...)}, e.kafkaOpts...)
}

// Ready reports whether every engine has joined its group and restored its
// partitions. It is meaningful once the engines run (in a Demo).
func (e *Env) Ready() bool { return e.svc != nil && e.svc.ready() }

// Done returns a channel that is closed when an engine or a participant has
// stopped on its own; Err says why. A Demo should give up then.
func (e *Env) Done() <-chan struct{} { return e.svc.failed }

// Err returns why an engine or participant stopped on its own, or nil.
func (e *Env) Err() error {
	select {
	case <-e.svc.failed:
		return e.svc.err
	default:
		return nil
	}
}

// Metrics returns the engine metrics of saga type sagaType (package
// metrics), or nil for a type the daemon does not run.
func (e *Env) Metrics(sagaType string) *metrics.Metrics { return e.metrics[sagaType] }

func (e *Env) close() {
	e.mu.Lock()
	closers, waits := e.closers, e.waits
	e.closers, e.waits = nil, nil
	e.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		_ = closers[i]()
	}
	for _, wait := range waits {
		wait()
	}
}

// afterClose runs wait when the daemon stops, once its clients are closed.
func (e *Env) afterClose(wait func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.waits = append(e.waits, wait)
}

// shutdownTimeout bounds the HTTP server's shutdown.
const shutdownTimeout = 5 * time.Second

// Timeouts of the checks at start.
const (
	kafkaPingTimeout = 10 * time.Second
	redisPingTimeout = 5 * time.Second
	setupTimeout     = 30 * time.Second
)

// run runs the daemon: embedded or against real services.
func (a *app) run(ctx context.Context) int {
	c := a.cfg
	env := &Env{Config: c, Logger: a.log, Stdout: a.o.stdout, Registry: newRegistry(), svc: newServices(),
		metrics: make(map[string]*metrics.Metrics)}
	defer env.close()
	env.kafkaOpts = append(slices.Clone(a.o.kafkaOpts), kgo.WithLogger(logs.Kafka(a.compLog)))
	tr, shutdownTracing, terr := tracing.FromEnv(ctx, a.o.getenv, a.o.name, "")
	if terr != nil {
		return a.failf("%v", terr)
	}
	defer shutdownTracing(context.WithoutCancel(ctx))
	a.tracer = tr
	tracing.LogTo(a.compLog)

	if c.Embedded() {
		stop, code := a.startEmbedded(env)
		if stop == nil {
			return code
		}
		defer stop()
	} else {
		secure, err := c.Kafka.Opts()
		if err != nil {
			return a.failf("%v", err)
		}
		env.kafkaOpts = append(env.kafkaOpts, secure...)
		for _, w := range append(c.Kafka.Warnings(), c.Redis.Warnings()...) {
			a.log.Warn(w)
		}
		for _, setup := range a.o.kafkaSetup {
			opts, err := setup(c)
			if err != nil {
				return a.failf("%v", err)
			}
			env.kafkaOpts = append(env.kafkaOpts, opts...)
		}
		env.redisOpts = func(opts *redis.UniversalOptions) error {
			if err := c.Redis.Apply(opts); err != nil {
				return err
			}
			for _, setup := range a.o.redisSetup {
				if err := setup(c, opts); err != nil {
					return err
				}
			}
			return nil
		}
		env.Brokers = c.KafkaBrokers
		if env.rdb, err = env.NewRedis("engine", c.RedisAddrs); err != nil {
			return a.failf("%v", err)
		}
		// The participants get a client of their own, on the engine's
		// Redis when --participants-redis-addr is not set, so that
		// ksaga_redis_round_trips_total counts their calls apart.
		env.partsRdb = env.rdb
		if len(c.Participants) > 0 || len(c.ParticipantsRedisAddrs) > 0 {
			if env.partsRdb, err = env.NewRedis("participants", c.participantsRedisAddrs()); err != nil {
				return a.failf("%v", err)
			}
		}
	}

	// One client for the admin requests and the consumer lag's reads.
	kcl, err := kgo.NewClient(env.KafkaOpts()...)
	if err != nil {
		return a.failf("kafka admin client: %v", err)
	}
	defer kcl.Close()
	adm := kadm.NewClient(kcl)
	if !c.Embedded() {
		if code, ok := a.ping(ctx, env, adm); !ok {
			return code
		}
	}

	// Several versions of one saga type run in one engine: the newest
	// starts new sagas, the others (orchestrator.Host) run theirs to the
	// end.
	defs := make([]*saga.Definition, 0, len(a.o.sagas))
	a.hosted = make(map[string][]*saga.Definition)
	a.startOn = make(map[string]int)
	for i, s := range a.o.sagas {
		built, err := s.build(ctx, env)
		switch {
		case ctx.Err() != nil:
			return ExitOK // interrupted while starting
		case err != nil:
			return a.failf("build saga #%d: %v", i+1, err)
		case built.Start == nil || slices.Contains(built.Hosted, nil):
			return a.failf("build saga #%d: no definition", i+1)
		}
		for _, def := range append([]*saga.Definition{built.Start}, built.Hosted...) {
			if code := a.addSaga(&defs, def, s.opts); code != 0 {
				return code
			}
		}
		if len(built.Hosted) > 0 {
			a.startOn[built.Start.Name()] = built.Start.Version()
		}
	}
	if err := a.registerMetrics(env, defs); err != nil {
		return a.failf("%v", err)
	}

	setupCtx := ctx
	if c.Embedded() {
		var cancel context.CancelFunc
		setupCtx, cancel = context.WithTimeout(ctx, setupTimeout)
		defer cancel()
	}
	spec := topic.Spec{Partitions: c.Partitions, ReplicationFactor: c.ReplicationFactor, DLTRetention: c.DLTRetention}
	var ts []topic.Topic
	for _, def := range defs {
		ts = append(ts, topic.OfSaga(def, spec)...)
	}
	for _, p := range a.o.parts {
		ts = append(ts, topic.OfParticipant(p.name, spec)...)
	}
	if err := topic.Create(setupCtx, adm, spec, ts, a.compLog); err != nil {
		if ctx.Err() != nil {
			return ExitOK
		}
		if c.Embedded() {
			return a.failf("embedded Kafka: %v", err)
		}
		return a.failf("%v", err)
	}

	if code, ok := a.newServices(ctx, env, defs); !ok {
		return code
	}
	svc := env.svc
	ready := newReadiness(svc, env.rdb)
	env.afterClose(ready.close)
	if err := a.watch(ctx, env, kcl, ready); err != nil {
		svc.stop()
		return a.failf("%v", err)
	}
	stopHTTP, err := a.startHTTP(env.Registry, a.readyUnlessDraining(ready.check))
	if err != nil {
		svc.stop()
		return a.failf("%v", err)
	}
	stopAPI, err := a.startAPI(ctx, env, defs)
	if err != nil {
		stopHTTP()
		svc.stop()
		if ctx.Err() != nil {
			return ExitOK // interrupted while starting
		}
		return a.failf("%v", err)
	}
	stopConsole, err := a.startConsole(ctx, env, defs)
	if err != nil {
		stopAPI()
		stopHTTP()
		svc.stop()
		if ctx.Err() != nil {
			return ExitOK
		}
		return a.failf("%v", err)
	}
	stopOutbox, err := a.startOutbox(ctx, env, defs)
	if err != nil {
		stopConsole()
		stopAPI()
		stopHTTP()
		svc.stop()
		if ctx.Err() != nil {
			return ExitOK
		}
		return a.failf("%v", err)
	}
	// The engines and participants run until svc.stop, through the drain
	// that follows the end of ctx.
	svc.start(context.WithoutCancel(ctx))
	if c.Embedded() && a.o.demo != nil {
		code := a.runDemo(ctx, env)
		if code == ExitOK && c.Serve && ctx.Err() == nil {
			a.serving(env)
			if code = a.wait(ctx, svc); code == ExitOK {
				a.drain(svc)
				a.log.Info("shutting down: finishing the current transactions")
			}
		}
		stopOutbox()
		stopConsole()
		stopAPI()
		svc.stop()
		stopHTTP()
		return code
	}
	if c.Embedded() {
		a.serving(env)
	} else {
		var sagaNames []string
		for _, d := range defs {
			sagaNames = append(sagaNames, fmt.Sprintf("%s v%d", d.Name(), d.Version()))
			for _, old := range a.hosted[d.Name()] {
				sagaNames = append(sagaNames, fmt.Sprintf("%s v%d", old.Name(), old.Version()))
			}
		}
		a.log.Info(a.o.name+" running", "sagas", strings.Join(sagaNames, ","), "brokers", strings.Join(c.KafkaBrokers, ","),
			"transactional_id", c.TransactionalID, "participants", participantList(c.Participants), "engine", c.Engine)
	}
	code := a.wait(ctx, svc)
	if code == ExitOK {
		a.drain(svc)
		a.log.Info("shutting down: finishing the current transactions")
	}
	stopOutbox()
	stopConsole()
	stopAPI()
	svc.stop()
	stopHTTP()
	a.log.Info(a.o.name + " stopped")
	return code
}

// participantsRedisAddrs is the Redis of the participants run in this
// process: --participants-redis-addr, else --redis-addr.
func (c *Config) participantsRedisAddrs() []string {
	if len(c.ParticipantsRedisAddrs) > 0 {
		return c.ParticipantsRedisAddrs
	}
	return c.RedisAddrs
}

// ping checks that Kafka and the Redis the daemon needs answer.
func (a *app) ping(ctx context.Context, env *Env, adm *kadm.Client) (int, bool) {
	c := a.cfg
	fail := func(format string, args ...any) (int, bool) {
		if ctx.Err() != nil {
			return ExitOK, false // interrupted while starting
		}
		return a.failf(format, args...), false
	}
	if err := pingKafka(ctx, adm); err != nil {
		return fail("cannot reach Kafka at %s: %v; %s", strings.Join(c.KafkaBrokers, ","), err, kafkaHint(err))
	}
	if err := pingRedis(ctx, env.rdb); err != nil {
		return fail("cannot reach Redis at %s: %v; %s", strings.Join(c.RedisAddrs, ","), err, redisHint(err, "--redis-addr"))
	}
	if len(c.ParticipantsRedisAddrs) > 0 && len(c.Participants) > 0 {
		if err := pingRedis(ctx, env.partsRdb); err != nil {
			return fail("cannot reach Redis at %s: %v; %s", strings.Join(c.ParticipantsRedisAddrs, ","), err, redisHint(err, "--participants-redis-addr"))
		}
	}
	return 0, true
}

// addSaga adds def, registered with opts, to defs: a new saga type, or
// another version of one in defs (the newest stays in defs, the others
// are hosted beside it). It returns a non-zero exit code when def's
// version is there already.
func (a *app) addSaga(defs *[]*saga.Definition, def *saga.Definition, opts []orchestrator.Opt) int {
	j := slices.IndexFunc(*defs, func(d *saga.Definition) bool { return d.Name() == def.Name() })
	if j < 0 {
		*defs = append(*defs, def)
		a.sagaOpts = append(a.sagaOpts, opts)
		return 0
	}
	name, newest := def.Name(), (*defs)[j]
	for _, d := range append(slices.Clone(a.hosted[name]), newest) {
		if d.Version() == def.Version() {
			return a.failf("saga %s version %d is registered twice (give each version of a saga its own number: saga.Definition.WithVersion)", name, def.Version())
		}
	}
	if def.Version() > newest.Version() {
		def, (*defs)[j] = newest, def
	}
	a.hosted[name] = append(a.hosted[name], def)
	a.sagaOpts[j] = append(a.sagaOpts[j], opts...)
	return 0
}

// registerMetrics registers the engine metrics of every saga type and the
// Redis round trips of the daemon's clients.
func (a *app) registerMetrics(env *Env, defs []*saga.Definition) error {
	for _, def := range defs {
		m, err := metrics.New(env.Registry, def.Name())
		if err != nil {
			return err
		}
		m.InitSteps(def.Steps())
		env.metrics[def.Name()] = m
	}
	if len(defs) == 0 {
		return nil
	}
	rm, err := metrics.NewRedis(env.Registry, defs[0].Name())
	if err != nil {
		return err
	}
	env.mu.Lock()
	defer env.mu.Unlock()
	for _, c := range env.clients {
		c.rdb.AddHook(rm.Hook(c.name))
	}
	env.clients, env.rm = nil, rm
	return nil
}

// newServices builds the engines and the participants chosen by the
// configuration into env.svc. Nothing connects until start.
func (a *app) newServices(ctx context.Context, env *Env, defs []*saga.Definition) (int, bool) {
	c, svc := a.cfg, env.svc
	fail := func(format string, args ...any) (int, bool) {
		svc.stop()
		if ctx.Err() != nil {
			return ExitOK, false
		}
		return a.failf(format, args...), false
	}
	base := append(slices.Clone(env.kafkaOpts), kgo.SessionTimeout(c.SessionTimeout))
	if c.Engine {
		for i, def := range defs {
			txnID, group, client := c.TransactionalID, c.Group, "engine"
			if len(defs) > 1 {
				txnID, client = txnID+"-"+def.Name(), client+"-"+def.Name()
				if group != "" {
					group += "-" + def.Name()
				}
			}
			if group == "" {
				group = "ksaga-" + def.Name()
			}
			opts := []orchestrator.Opt{
				orchestrator.Brokers(env.Brokers...),
				orchestrator.Redis(env.rdb),
				orchestrator.TransactionalID(txnID),
				orchestrator.Group(group),
				orchestrator.Logger(a.compLog),
				orchestrator.MaxPollRecords(c.MaxPollRecords),
				orchestrator.TransactionInterval(c.TxnInterval),
				orchestrator.Retention(c.Retention),
				orchestrator.History(c.History),
				orchestrator.Hooks(env.metrics[def.Name()], a.tracer),
				orchestrator.KafkaOpts(append(slices.Clone(base), metrics.Kafka(env.Registry, def.Name(), client))...),
			}
			if c.RedisTimeout > 0 {
				opts = append(opts, orchestrator.RedisTimeout(c.RedisTimeout))
			}
			if c.StaticMembership {
				opts = append(opts, orchestrator.StaticMembership())
			}
			if older := a.hosted[def.Name()]; len(older) > 0 {
				opts = append(opts, orchestrator.Host(older...))
			}
			if v := a.startOn[def.Name()]; v != 0 {
				opts = append(opts, orchestrator.StartOn(v))
			}
			opts = append(append(opts, a.o.engineOpts...), a.sagaOpts[i]...)
			eng, err := orchestrator.New(def, opts...)
			if err != nil {
				return fail("%v", err)
			}
			svc.engines = append(svc.engines, &namedEngine{def.Name(), eng})
		}
	}
	firstSaga := ""
	if len(defs) > 0 {
		firstSaga = defs[0].Name()
	}
	for _, p := range a.o.parts {
		if !slices.Contains(c.Participants, p.name) {
			continue
		}
		h, err := p.build(ctx, env)
		if err == nil && h == nil {
			err = errors.New("no handler")
		}
		if err != nil {
			return fail("participant %s: %v", p.name, err)
		}
		opts := []participant.Opt{
			participant.TransactionalID(c.TransactionalID + "-" + p.name),
			participant.SessionTimeout(c.SessionTimeout),
			participant.TransactionInterval(c.TxnInterval),
			participant.Brokers(env.Brokers...),
			participant.Logger(a.compLog),
			participant.KafkaOpts(append(slices.Clone(base), metrics.Kafka(env.Registry, firstSaga, p.name))...),
			participant.Trace(a.tracer),
		}
		if c.StaticMembership {
			opts = append(opts, participant.StaticMembership())
		}
		opts = append(append(opts, a.o.partOpts...), p.opts...)
		pt, err := participant.New(p.name, h, opts...)
		if err != nil {
			return fail("participant %s: %v", p.name, err)
		}
		svc.parts = append(svc.parts, &namedParticipant{p.name, pt})
	}
	return 0, true
}

// wait blocks until ctx is cancelled (ExitOK: the caller drains, then
// stops) or a service stops on its own (ExitError: the instance should
// restart, e.g. after being fenced).
func (a *app) wait(ctx context.Context, svc *services) int {
	select {
	case <-ctx.Done():
		return ExitOK
	case <-svc.failed:
		return a.failf("%v; stopping (restart the instance)", svc.err)
	}
}

// runDemo runs the Demo and turns its end into an exit status.
func (a *app) runDemo(ctx context.Context, env *Env) int {
	if err := a.o.demo(ctx, env); err != nil {
		return a.failf("%v", err)
	}
	return ExitOK
}

// serving says where the embedded mode serves.
func (a *app) serving(env *Env) {
	line := fmt.Sprintf("\nserving until interrupted (Ctrl-C): Kafka at %s, Redis at %s", env.Brokers[0], env.redisAddr)
	if addr := env.Config.MetricsAddr; addr != "" {
		line += fmt.Sprintf(", metrics at %s/metrics", addr)
	}
	fmt.Fprintln(a.o.stdout, line)
}

// participantList lists names for a log line.
func participantList(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// kafkaHint says what to check after a failed connection to Kafka.
func kafkaHint(err error) string {
	switch conn.KindOf(err) {
	case conn.KindLogin:
		return "check the Kafka credentials and SASL mechanism (--kafka-sasl-mechanism, --kafka-sasl-username, --kafka-sasl-password)"
	case conn.KindCertificate:
		return "check the Kafka TLS settings (--kafka-tls-ca, --kafka-tls-server-name, --kafka-tls-cert)"
	case conn.KindMismatch:
		return "check whether the listener wants TLS or SASL (--kafka-tls, --kafka-sasl-mechanism)"
	}
	switch {
	case errors.Is(err, kerr.SaslAuthenticationFailed), errors.Is(err, kerr.IllegalSaslState), errors.Is(err, kerr.UnsupportedSaslMechanism):
		return "check the Kafka credentials and SASL mechanism"
	case errors.Is(err, kerr.ClusterAuthorizationFailed), errors.Is(err, kerr.TopicAuthorizationFailed):
		return "check the Kafka user's ACLs"
	}
	return "check --kafka-brokers (and TLS, if the listener needs it)"
}

// redisHint says what to check after a failed connection to Redis.
func redisHint(err error, flag string) string {
	if conn.KindOf(err) == conn.KindCertificate {
		return "check the Redis TLS settings (--redis-tls-ca, --redis-tls-server-name, --redis-tls-cert)"
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "WRONGPASS"), strings.Contains(msg, "NOAUTH"), strings.Contains(msg, "NOPERM"):
		return "check the Redis username and password"
	}
	return "check " + flag
}

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

// newRegistry returns the registry /metrics serves, with the Go runtime and
// process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// watch registers the metrics that read the engines, their Redis and the
// groups: in-flight sagas and readiness (from ready, as /readyz), Redis
// evictions, consumer lag, build info.
func (a *app) watch(ctx context.Context, env *Env, kcl *kgo.Client, ready *readiness) error {
	lag, err := metrics.NewLag(env.Registry, kcl)
	if err != nil {
		return err
	}
	for _, e := range env.svc.engines {
		if err := metrics.WatchEngine(env.Registry, e.saga, ready.engine(e)); err != nil {
			return err
		}
		lag.Watch(e.eng.Group(), message.Inbox(e.saga))
	}
	if len(env.svc.engines) > 0 {
		if err := a.watchRedis(ctx, env); err != nil {
			return err
		}
	}
	for _, p := range env.svc.parts {
		lag.Watch("ksaga-participant-"+p.name, message.Commands(p.name))
	}
	return metrics.RegisterBuildInfo(env.Registry, "")
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
		return slog.New(tracing.LogHandler(slog.NewTextHandler(w, opts)))
	}
	return slog.New(tracing.LogHandler(slog.NewJSONHandler(w, opts)))
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
