package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// allParticipants are the reference participants sagad can run, in the
// order they are started.
var allParticipants = []string{order.Inventory, order.Payment, order.Shipping}

// config is sagad's validated configuration.
type config struct {
	// kafkaBrokers and redisAddrs are both set (real services) or both
	// empty (the embedded demo).
	kafkaBrokers []string
	redisAddrs   []string
	// ordersRedisAddrs is the Redis of the orders store (the saga's local
	// last step) and participantsRedisAddrs that of the participants'
	// ledgers; empty means redisAddrs.
	ordersRedisAddrs       []string
	participantsRedisAddrs []string
	participants           []string
	txnID                  string
	group                  string
	partitions             int
	replicationFactor      int
	metricsAddr            string
	// logFormat is "json", "text", or "" to pick by whether stderr is a
	// terminal.
	logFormat    string
	logLevel     slog.Level
	logLevelSet  bool
	paymentLimit int64
	maxPoll      int
	dataDir      string
	demoOrders   int
	serve        bool
	static       bool
	// noEngine runs only the participants.
	noEngine bool
	// sessionTimeout is the group session timeout of every Kafka client.
	sessionTimeout time.Duration
	// pprof serves /debug/pprof/ on metricsAddr.
	pprof bool
	// dltRetention is the retention of the dead-letter topics sagad
	// creates; zero keeps their records until they are deleted.
	dltRetention time.Duration
	// chaosFaults wraps the orders store with the chaos suite's fault
	// hooks (see chaosStore). Tests only.
	chaosFaults bool
}

// topicSpec is how sagad creates its topics.
func (c config) topicSpec() topicSpec {
	return topicSpec{partitions: c.partitions, replicationFactor: c.replicationFactor, dltRetention: c.dltRetention}
}

// embedded reports whether sagad runs its own Kafka and Redis.
func (c config) embedded() bool { return len(c.kafkaBrokers) == 0 }

// flagValues holds the flags as given, before validation.
type flagValues struct {
	kafkaBrokers, redisAddr, ordersRedisAddr, participants  string
	participantsRedisAddr                                   string
	txnID, group, metricsAddr, logFormat, logLevel, dataDir string
	partitions, replicationFactor, maxPoll, demoOrders      int
	paymentLimit                                            int64
	serve, static, engine, pprof, chaosFaults               bool
	sessionTimeout, dltRetention                            time.Duration
}

// embeddedOnly tags flags of the embedded demo.
const embeddedOnly = " (embedded mode only)"

func newFlagSet(v *flagValues) *flag.FlagSet {
	fs := flag.NewFlagSet("sagad", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&v.kafkaBrokers, "kafka-brokers", "", "Kafka seed `brokers`, comma-separated host:port. Set it and --redis-addr to use real services; set neither to run the embedded demo")
	fs.StringVar(&v.redisAddr, "redis-addr", "", "Redis `addresses` of the engine's state view, comma-separated (several: Redis Cluster)")
	fs.StringVar(&v.ordersRedisAddr, "orders-redis-addr", "", "Redis `addresses` of the orders store, the saga's last step (real services only; default: --redis-addr); point it elsewhere to simulate an orders-database outage")
	fs.StringVar(&v.participantsRedisAddr, "participants-redis-addr", "", "Redis `address` of the participants' ledgers, one node (real services only; default: --redis-addr)")
	fs.StringVar(&v.participants, "participants", "", "reference participants to run in this process: a comma `list` of inventory, payment, shipping, or all, or none (default none with real services, all in embedded mode)")
	fs.StringVar(&v.txnID, "transactional-id", "", "Kafka transactional `id` of the engine, stable per instance (a StatefulSet pod name); participants use <id>-<name> (default: the hostname)")
	fs.StringVar(&v.group, "group", "ksaga-order", "Kafka consumer `group` of the engine")
	fs.IntVar(&v.partitions, "partitions", 6, "`partitions` of the topics sagad creates; never change it for existing topics")
	fs.IntVar(&v.replicationFactor, "replication-factor", 0, "replication `factor` of the topics sagad creates (default 3 with real Kafka, 1 embedded)")
	fs.StringVar(&v.metricsAddr, "metrics-addr", ":9090", "`address` of the HTTP server for /metrics, /healthz and /readyz; empty disables it")
	fs.StringVar(&v.logFormat, "log-format", "", "log `format`: json or text (default text when stderr is a terminal, else json)")
	fs.StringVar(&v.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.Int64Var(&v.paymentLimit, "payment-limit-cents", sim.DefaultPaymentLimitCents, "largest amount the payment participant authorizes, in `cents`")
	fs.IntVar(&v.maxPoll, "max-poll-records", 1000, "most inbox `records` in one engine transaction")
	fs.StringVar(&v.dataDir, "data-dir", "", "`directory` where the embedded Kafka keeps its data across runs (embedded mode only; default $TMPDIR/ksaga-demo)")
	fs.IntVar(&v.demoOrders, "demo-orders", 2000, "`orders` the demo sends"+embeddedOnly)
	fs.BoolVar(&v.serve, "serve", false, "keep running after the demo instead of exiting"+embeddedOnly)
	fs.DurationVar(&v.sessionTimeout, "session-timeout", 45*time.Second, "consumer group session `timeout` of the engine and the participants: how long a silent instance keeps its partitions")
	fs.BoolVar(&v.engine, "engine", true, "run the saga engine; --engine=false runs only the --participants (real services only)")
	fs.BoolVar(&v.pprof, "pprof", false, "also serve Go's profiles (/debug/pprof/) on --metrics-addr; do not expose them publicly")
	fs.BoolVar(&v.static, "static-membership", false, "join the groups as a static member named by the transactional id (the engine by --transactional-id, each participant by <id>-<name>), so a restarted instance gets its partitions back at once (a StatefulSet); a stopped one keeps them until its session times out")
	fs.DurationVar(&v.dltRetention, "dlt-retention", 0, "retention of the dead-letter topics sagad creates (saga.order.inbox-dlt, <participant>.commands-dlt), a `duration` such as 720h; 0 keeps dead letters until they are deleted")
	fs.BoolVar(&v.chaosFaults, "chaos-faults", false, "TESTS ONLY: before each complete-order, obey the fault keys ksaga:chaos:fault:hang and ksaga:chaos:fault:panic on the orders Redis (the chaos suite sets them); never set it in production")
	return fs
}

// envName returns the environment twin of a flag: KSAGA_KAFKA_BROKERS for
// kafka-brokers.
func envName(flagName string) string {
	return "KSAGA_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseConfig parses the command line, then fills each flag not given on it
// from its KSAGA_* environment twin (when that is non-empty), and validates
// the result. It returns flag.ErrHelp for -h and -help; every other error
// says what to fix.
func parseConfig(args []string, getenv func(string) string) (config, error) {
	var v flagValues
	fs := newFlagSet(&v)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return config{}, err
		}
		return config{}, fmt.Errorf("%w (sagad -help lists the flags)", err)
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q: sagad takes flags only (sagad -help lists them)", fs.Arg(0))
	}
	// set records the flags given, and how: "--name" or "KSAGA_NAME", so
	// that errors name what the user actually wrote.
	set := make(map[string]string)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = "--" + f.Name })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if _, ok := set[f.Name]; ok || envErr != nil {
			return
		}
		env := envName(f.Name)
		val := getenv(env)
		if val == "" {
			return
		}
		if err := fs.Set(f.Name, val); err != nil {
			want := "an integer"
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				want = "true or false"
			}
			if g, ok := f.Value.(flag.Getter); ok {
				if _, ok := g.Get().(time.Duration); ok {
					want = "a duration such as 30s or 720h"
				}
			}
			envErr = fmt.Errorf("%s=%q: --%s wants %s", env, val, f.Name, want)
			return
		}
		set[f.Name] = env
	})
	if envErr != nil {
		return config{}, envErr
	}
	return v.validate(set)
}

// splitList splits a comma-separated list, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func (v *flagValues) validate(set map[string]string) (config, error) {
	name := func(flag string) string {
		if how, ok := set[flag]; ok {
			return how
		}
		return "--" + flag
	}
	c := config{
		kafkaBrokers:           splitList(v.kafkaBrokers),
		redisAddrs:             splitList(v.redisAddr),
		ordersRedisAddrs:       splitList(v.ordersRedisAddr),
		participantsRedisAddrs: splitList(v.participantsRedisAddr),
		txnID:                  strings.TrimSpace(v.txnID),
		group:                  strings.TrimSpace(v.group),
		partitions:             v.partitions,
		metricsAddr:            v.metricsAddr,
		paymentLimit:           v.paymentLimit,
		maxPoll:                v.maxPoll,
		dataDir:                v.dataDir,
		demoOrders:             v.demoOrders,
		serve:                  v.serve,
		static:                 v.static,
		noEngine:               !v.engine,
		sessionTimeout:         v.sessionTimeout,
		pprof:                  v.pprof,
		dltRetention:           v.dltRetention,
		chaosFaults:            v.chaosFaults,
	}
	for _, f := range []struct {
		flag string
		list []string
	}{{"kafka-brokers", c.kafkaBrokers}, {"redis-addr", c.redisAddrs}, {"orders-redis-addr", c.ordersRedisAddrs}, {"participants-redis-addr", c.participantsRedisAddrs}} {
		if _, ok := set[f.flag]; ok && len(f.list) == 0 {
			return c, fmt.Errorf("%s is empty: want host:port[,host:port…]", name(f.flag))
		}
	}
	switch {
	case len(c.kafkaBrokers) > 0 && len(c.redisAddrs) == 0:
		return c, fmt.Errorf("%s is set but --redis-addr is not: set both to use real Kafka and Redis, or neither for the embedded demo", name("kafka-brokers"))
	case len(c.kafkaBrokers) == 0 && len(c.redisAddrs) > 0:
		return c, fmt.Errorf("%s is set but --kafka-brokers is not: set both to use real Kafka and Redis, or neither for the embedded demo", name("redis-addr"))
	}
	if c.embedded() {
		for _, f := range []string{"orders-redis-addr", "participants-redis-addr", "replication-factor"} {
			if _, ok := set[f]; ok {
				return c, fmt.Errorf("%s applies only with --kafka-brokers and --redis-addr (the embedded demo has its own single-broker Kafka and Redis)", name(f))
			}
		}
	} else {
		for _, f := range []string{"data-dir", "demo-orders", "serve"} {
			if _, ok := set[f]; ok {
				return c, fmt.Errorf("%s applies only to the embedded demo; drop it when --kafka-brokers and --redis-addr are set", name(f))
			}
		}
	}

	ps, err := parseParticipants(v.participants)
	if err != nil {
		return c, fmt.Errorf("%s: %w", name("participants"), err)
	}
	_, given := set["participants"]
	switch {
	case !given && c.embedded():
		ps = allParticipants
	case c.embedded() && len(ps) != len(allParticipants):
		return c, fmt.Errorf("%s: the embedded demo runs all participants; choose participants only with --kafka-brokers and --redis-addr", name("participants"))
	}
	c.participants = ps
	switch {
	case c.sessionTimeout < time.Second:
		return c, fmt.Errorf("%s %v is too short: want at least 1s (brokers usually require 6s or more)", name("session-timeout"), c.sessionTimeout)
	case c.dltRetention < 0:
		return c, fmt.Errorf("%s %v is negative: want a duration, or 0 to keep dead letters until they are deleted", name("dlt-retention"), c.dltRetention)
	case c.dltRetention > 0 && c.dltRetention < time.Millisecond:
		return c, fmt.Errorf("%s %v is under Kafka's unit of 1ms: want a duration such as 720h, or 0 to keep dead letters until they are deleted", name("dlt-retention"), c.dltRetention)
	case c.noEngine && c.embedded():
		return c, fmt.Errorf("%s applies only with --kafka-brokers and --redis-addr (the embedded demo runs the engine)", name("engine"))
	case c.noEngine && len(ps) == 0:
		return c, fmt.Errorf("%s leaves nothing to run: name the participants to run with --participants", name("engine"))
	}
	if ledgers, flag := c.participantsRedisAddrs, "participants-redis-addr"; len(ps) > 0 {
		if len(ledgers) == 0 {
			ledgers, flag = c.redisAddrs, "redis-addr"
		}
		if len(ledgers) > 1 {
			return c, fmt.Errorf("%s: the reference participants need a single Redis node (their scripts touch several keys of one order), but %s lists %d addresses; give --participants-redis-addr one address", name("participants"), name(flag), len(ledgers))
		}
	}

	if c.txnID == "" {
		if _, ok := set["transactional-id"]; ok {
			return c, fmt.Errorf("%s is empty: want a stable id per instance, such as the pod name", name("transactional-id"))
		}
		host, err := os.Hostname()
		if err != nil || host == "" {
			return c, fmt.Errorf("--transactional-id is not set and the hostname is unavailable (%v): set --transactional-id", err)
		}
		c.txnID = host
	}
	if c.group == "" {
		return c, fmt.Errorf("%s is empty: want a consumer group name", name("group"))
	}
	if c.partitions < 1 {
		return c, fmt.Errorf("%s: must be at least 1, got %d", name("partitions"), c.partitions)
	}
	c.replicationFactor = v.replicationFactor
	switch _, ok := set["replication-factor"]; {
	case !ok && c.embedded():
		c.replicationFactor = 1
	case !ok:
		c.replicationFactor = 3
	case c.replicationFactor < 1 || c.replicationFactor > 32767:
		return c, fmt.Errorf("%s: must be between 1 and 32767, got %d", name("replication-factor"), c.replicationFactor)
	}
	if c.pprof && c.metricsAddr == "" {
		return c, fmt.Errorf("%s needs an HTTP server: set --metrics-addr", name("pprof"))
	}
	if c.metricsAddr != "" {
		if err := checkListenAddr(c.metricsAddr); err != nil {
			return c, fmt.Errorf("%s %q: %w (use host:port or :port, or \"\" to disable)", name("metrics-addr"), c.metricsAddr, err)
		}
	}
	switch f := strings.ToLower(v.logFormat); f {
	case "", "json", "text":
		c.logFormat = f
	default:
		return c, fmt.Errorf("%s: unknown format %q (want json or text)", name("log-format"), v.logFormat)
	}
	switch l := strings.ToLower(v.logLevel); l {
	case "debug":
		c.logLevel = slog.LevelDebug
	case "info":
		c.logLevel = slog.LevelInfo
	case "warn", "warning":
		c.logLevel = slog.LevelWarn
	case "error":
		c.logLevel = slog.LevelError
	default:
		return c, fmt.Errorf("%s: unknown level %q (want debug, info, warn or error)", name("log-level"), v.logLevel)
	}
	_, c.logLevelSet = set["log-level"]
	if c.paymentLimit < 1 {
		return c, fmt.Errorf("%s: must be at least 1, got %d", name("payment-limit-cents"), c.paymentLimit)
	}
	if c.maxPoll < 1 {
		return c, fmt.Errorf("%s: must be at least 1, got %d", name("max-poll-records"), c.maxPoll)
	}
	if c.demoOrders < 0 {
		return c, fmt.Errorf("%s: must be 0 or more, got %d", name("demo-orders"), c.demoOrders)
	}
	switch {
	case !c.embedded():
		c.demoOrders = 0 // the demo flags do not apply
	case c.dataDir == "":
		c.dataDir = filepath.Join(os.TempDir(), "ksaga-demo")
	}
	return c, nil
}

// parseParticipants parses --participants: names, "all" or "none".
func parseParticipants(s string) ([]string, error) {
	want := "want inventory, payment, shipping, all or none"
	names := splitList(s)
	var out []string
	for _, n := range names {
		switch n = strings.ToLower(n); {
		case n == "all" || n == "none":
			if len(names) > 1 {
				return nil, fmt.Errorf("%q cannot be combined with other names (%s)", n, want)
			}
			if n == "all" {
				return allParticipants, nil
			}
			return nil, nil
		case !slices.Contains(allParticipants, n):
			return nil, fmt.Errorf("unknown participant %q (%s)", n, want)
		case !slices.Contains(out, n):
			out = append(out, n)
		}
	}
	// Start them in a fixed order, whatever order they were given in.
	slices.SortFunc(out, func(a, b string) int {
		return slices.Index(allParticipants, a) - slices.Index(allParticipants, b)
	})
	return out, nil
}

func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("not a host:port address")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

// usage writes the -help text.
func usage(w io.Writer) {
	fmt.Fprint(w, `sagad runs the ksaga order saga: the engine and, optionally, its reference participants.

Usage:
  sagad                                         embedded demo: in-process Kafka (kfake) and Redis
                                                (miniredis), all participants, a demo load, a summary
  sagad --kafka-brokers B --redis-addr R [...]  real services: the engine (and --participants), until
                                                SIGTERM or SIGINT

Every flag can also be set by its KSAGA_* environment variable, shown in brackets; a flag given on
the command line wins over its variable.

Flags:
`)
	var v flagValues
	fs := newFlagSet(&v)
	fs.VisitAll(func(f *flag.Flag) {
		arg, help := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if arg != "" {
			line += " " + arg
		}
		fmt.Fprintf(w, "%-38s [$%s]\n", line, envName(f.Name))
		def := ""
		switch {
		case strings.Contains(help, "(default"):
		case f.DefValue == "" || f.DefValue == "false":
		default:
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "        %s%s\n", help, def)
	})
	fmt.Fprint(w, `
Exit status: 0 after a clean shutdown (or a finished demo), 1 when a dependency is unreachable or
the engine stops, 2 for invalid flags.
`)
}
