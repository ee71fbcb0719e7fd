package daemon

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/conn"
	"github.com/ksaga/ksaga/orchestrator"
)

// Config is a daemon's validated configuration: its flags, each filled from
// the command line or else from its KSAGA_* environment twin. Validate
// functions and builders read it; they must not modify it.
type Config struct {
	// KafkaBrokers and RedisAddrs are both set (real services) or both
	// empty (the embedded mode: an in-process Kafka and Redis).
	KafkaBrokers []string
	RedisAddrs   []string
	// ParticipantsRedisAddrs is the Redis of the participants run in this
	// process; empty means RedisAddrs.
	ParticipantsRedisAddrs []string
	// Participants are the registered participants to run in this process,
	// in registration order.
	Participants []string
	// Engine says whether the engines run (--engine).
	Engine bool
	// TransactionalID is stable per instance. An engine uses it as is when
	// the daemon runs one saga type, and "<id>-<saga type>" with several; a
	// participant uses "<id>-<participant>".
	TransactionalID string
	// Kafka and Redis are the secure connection settings (TLS, SASL, ACL
	// users) of the real services: the --kafka-tls*, --kafka-sasl-*,
	// --redis-username, --redis-password* and --redis-tls* flags.
	Kafka conn.Kafka
	Redis conn.Redis
	// Group is the engine's consumer group; empty means "ksaga-<saga type>".
	// With several saga types, each engine's group is "<Group>-<saga type>".
	Group             string
	Partitions        int
	ReplicationFactor int
	// DLTRetention is the retention of the dead-letter topics the daemon
	// creates; zero keeps their records until they are deleted.
	DLTRetention     time.Duration
	MaxPollRecords   int
	SessionTimeout   time.Duration
	StaticMembership bool
	// TxnInterval is the least time between the beginnings of two
	// transactions of the engine and of each participant (see
	// orchestrator.TransactionInterval); 0 begins one as soon as records
	// are there.
	TxnInterval time.Duration
	// Retention is how long an ended saga stays in the Redis view and the
	// state topic (see orchestrator.Retention); 0 keeps it forever.
	Retention time.Duration
	// History is how many of its events each saga's state keeps (see
	// orchestrator.History); 0 keeps none.
	History int
	// RedisTimeout bounds each call of the engine into Redis (see
	// orchestrator.RedisTimeout); 0 picks the engine's default.
	RedisTimeout time.Duration
	// MetricsAddr is the address of the HTTP server; empty disables it.
	MetricsAddr string
	Pprof       bool
	// API is the HTTP API's configuration (--api-*).
	API APIConfig
	// Outbox is the outbox relays' configuration (--outbox-*).
	Outbox OutboxConfig
	// Console is the web console's configuration (--console-*).
	Console ConsoleConfig
	// LogFormat is "json", "text", or "" to pick by whether stderr is a
	// terminal.
	LogFormat string
	LogLevel  slog.Level
	// DataDir is where the embedded Kafka keeps its data (embedded only):
	// --data-dir, by default $TMPDIR/ksaga-<program> (Name, else the
	// executable's name). The daemon locks it while it runs.
	DataDir string
	// Serve keeps the embedded mode running after its demo.
	Serve bool
	// RequireConfig refuses to start the embedded mode: a missing
	// KafkaBrokers or RedisAddrs is an error.
	RequireConfig bool

	logLevelSet bool
	// given records the flags set, and how: "--name" or "KSAGA_NAME", so
	// that errors name what the user actually wrote.
	given map[string]string
}

// Embedded reports whether the daemon runs its own in-process Kafka and
// Redis (no --kafka-brokers and no --redis-addr).
func (c *Config) Embedded() bool { return len(c.KafkaBrokers) == 0 }

// IsSet reports whether flag (a name without dashes, such as "redis-addr")
// was given on the command line or by its environment twin.
func (c *Config) IsSet(flag string) bool {
	_, ok := c.given[flag]
	return ok
}

// Flag names flag for an error message as the user gave it: "--flag" or
// "KSAGA_FLAG" (see conn.EnvName), or "--flag" when it was not given.
func (c *Config) Flag(flag string) string {
	if how, ok := c.given[flag]; ok {
		return how
	}
	return "--" + flag
}

// listFlag is a flag of comma-separated values (conn.SplitList): each
// use of the flag replaces the list.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = conn.SplitList(s); return nil }

// embeddedOnly tags flags of the embedded mode.
const embeddedOnly = " (embedded mode only)"

// newFlagSet returns the daemon's flags, each bound to the field of c it
// fills, and the user's (o.flags). Two flags are kept in fs as given:
// --participants and --log-level, which validate parses into Participants
// and LogLevel.
func (o *options) newFlagSet(c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet(o.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	parts := "a comma `list` of " + strings.Join(append(o.participantNames(), "all"), ", ") + ", or none"
	if len(o.parts) == 0 {
		parts = "none (no participant is registered)"
	}
	fs.Var((*listFlag)(&c.KafkaBrokers), "kafka-brokers", "Kafka seed `brokers`, comma-separated host:port. Set it and --redis-addr to use real services; set neither to run the embedded mode")
	fs.Var((*listFlag)(&c.RedisAddrs), "redis-addr", "Redis `addresses` of the engine's state view, comma-separated (several: Redis Cluster)")
	fs.Var((*listFlag)(&c.ParticipantsRedisAddrs), "participants-redis-addr", "Redis `address` of the participants run in this process (real services only; default: --redis-addr)")
	fs.String("participants", "", "participants to run in this process: "+parts+" (default none with real services, all in embedded mode)")
	fs.StringVar(&c.TransactionalID, "transactional-id", "", "Kafka transactional `id`, stable per instance (a StatefulSet pod name); participants use <id>-<name>, and with several saga types each engine <id>-<saga type> (default: the hostname)")
	fs.StringVar(&c.Group, "group", "", "Kafka consumer `group` of the engine (default ksaga-<saga type>; with several saga types, <group>-<saga type>)")
	fs.IntVar(&c.Partitions, "partitions", 6, "`partitions` of the topics "+o.name+" creates; never change it for existing topics")
	fs.IntVar(&c.ReplicationFactor, "replication-factor", 0, "replication `factor` of the topics "+o.name+" creates (default 3 with real Kafka, 1 embedded)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", ":9090", "`address` of the HTTP server for /metrics, /healthz and /readyz; an address with no host listens on every interface, or on 127.0.0.1 in the embedded demo; empty disables it")
	fs.StringVar(&c.LogFormat, "log-format", "", "log `format`: json or text (default text when stderr is a terminal, else json)")
	fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	fs.IntVar(&c.MaxPollRecords, "max-poll-records", 1000, "most inbox `records` in one engine transaction")
	fs.DurationVar(&c.TxnInterval, "txn-interval", 0, "least `time` between the beginnings of two transactions of the engine and of each participant, unless the last was full: a transaction costs about as much CPU with one record as with a hundred, so a few milliseconds save much of the CPU at low rates, for up to that much more per hop of a saga; 0 begins one as soon as records are there")
	fs.IntVar(&c.History, "history", orchestrator.DefaultHistory, "how many of its events each saga's state keeps, with attempts and reply data, for the console's timeline and sagactl saga get: the first and the latest `entries`; 0 keeps none (smaller state records: see docs/PERFORMANCE.md)")
	fs.DurationVar(&c.Retention, "retention", orchestrator.DefaultRetention, "how long an ended saga stays in the Redis view and on the state topic, a `duration` from when it ended: within it a start for its id is a duplicate (dropped) or a conflict (dead-lettered); after it the saga is deleted and its id may start a new saga; 0 keeps ended sagas forever (the view then grows with every saga)")
	fs.DurationVar(&c.RedisTimeout, "redis-timeout", 0, "bound on each call of the engine into Redis, a `duration` shorter than the transaction timeout (10s), whatever the client's own timeouts: a Redis that hangs then costs a retry, never a stalled partition; 0 picks 5s")
	fs.StringVar(&c.DataDir, "data-dir", "", "`directory` where the embedded Kafka keeps its data across runs, locked while "+o.programName()+" runs (embedded mode only; default $TMPDIR/"+o.dataDirName()+")")
	fs.BoolVar(&c.Serve, "serve", false, "keep running after the demo instead of exiting"+embeddedOnly)
	fs.DurationVar(&c.SessionTimeout, "session-timeout", 45*time.Second, "consumer group session `timeout` of the engine and the participants: how long a silent instance keeps its partitions")
	fs.BoolVar(&c.Engine, "engine", true, "run the saga engine; --engine=false runs only the --participants (real services only)")
	fs.BoolVar(&c.Pprof, "pprof", false, "also serve Go's profiles (/debug/pprof/) on --metrics-addr; do not expose them publicly")
	fs.BoolVar(&c.StaticMembership, "static-membership", false, "join the groups as a static member named by the transactional id (the engine by --transactional-id, each participant by <id>-<name>), so a restarted instance gets its partitions back at once (a StatefulSet); a stopped one keeps them until its session times out")
	fs.DurationVar(&c.DLTRetention, "dlt-retention", 0, "retention of the dead-letter topics "+o.name+" creates (saga.<type>.inbox-dlt, <participant>.commands-dlt), a `duration` such as 720h; 0 keeps dead letters until they are deleted")
	fs.BoolVar(&c.RequireConfig, "require-config", false, "refuse to start without --kafka-brokers and --redis-addr instead of running the embedded mode (images and manifests set it)")
	c.Kafka.RegisterFlags(fs)
	c.Redis.RegisterFlags(fs)
	c.API.register(fs)
	c.Outbox.register(fs)
	c.Console.register(fs)
	for _, f := range o.flags {
		f(fs)
	}
	return fs
}

// parseConfig parses the command line, then fills each flag not given on it
// from its KSAGA_* environment twin (when that is non-empty), and validates
// the result, first the daemon's flags, then with o.validators. It returns
// flag.ErrHelp for -h and -help; every other error says what to fix.
func (o *options) parseConfig(args []string, getenv func(string) string) (*Config, error) {
	c := new(Config)
	fs := o.newFlagSet(c)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w (%s -help lists the flags)", err, o.name)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: %s takes flags only (%s -help lists them)", fs.Arg(0), o.name, o.name)
	}
	set := make(map[string]string)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = "--" + f.Name })
	fromEnv, err := conn.ApplyEnv(conn.GoFlags(fs), getenv)
	if err != nil {
		return nil, err
	}
	maps.Copy(set, fromEnv)
	c.given = set
	if err := o.validate(c, fs); err != nil {
		return nil, err
	}
	for _, f := range o.validators {
		if err := f(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// validate checks the daemon's flags in c, as parsed by fs, and completes
// c: the defaults that depend on other flags, Participants and LogLevel
// from fs, and the names trimmed.
func (o *options) validate(c *Config, fs *flag.FlagSet) error {
	c.TransactionalID = strings.TrimSpace(c.TransactionalID)
	c.Group = strings.TrimSpace(c.Group)
	name, set := c.Flag, c.given
	for _, f := range []struct {
		flag string
		list []string
	}{{"kafka-brokers", c.KafkaBrokers}, {"redis-addr", c.RedisAddrs}, {"participants-redis-addr", c.ParticipantsRedisAddrs}} {
		if _, ok := set[f.flag]; ok && len(f.list) == 0 {
			return fmt.Errorf("%s is empty: want host:port[,host:port…]", name(f.flag))
		}
	}
	// Reading the certificates and password files here turns a wrong path
	// into a usage error naming its flag.
	if _, err := c.Kafka.Opts(); err != nil && len(c.KafkaBrokers) > 0 {
		return err
	}
	if err := c.Redis.Apply(&redis.UniversalOptions{}); err != nil && len(c.RedisAddrs) > 0 {
		return err
	}
	if c.RequireConfig {
		var missing []string
		for _, f := range []struct {
			flag string
			list []string
		}{{"kafka-brokers", c.KafkaBrokers}, {"redis-addr", c.RedisAddrs}} {
			if len(f.list) == 0 {
				missing = append(missing, "--"+f.flag+" (or "+conn.EnvName(f.flag)+")")
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%s is set, so %s does not start its embedded demo: set %s", name("require-config"), o.name, strings.Join(missing, " and "))
		}
	}
	switch {
	case len(c.KafkaBrokers) > 0 && len(c.RedisAddrs) == 0:
		return fmt.Errorf("%s is set but --redis-addr is not: set both to use real Kafka and Redis, or neither for the embedded demo", name("kafka-brokers"))
	case len(c.KafkaBrokers) == 0 && len(c.RedisAddrs) > 0:
		return fmt.Errorf("%s is set but --kafka-brokers is not: set both to use real Kafka and Redis, or neither for the embedded demo", name("redis-addr"))
	}
	if c.Embedded() {
		for _, f := range []string{"participants-redis-addr", "replication-factor"} {
			if _, ok := set[f]; ok {
				return fmt.Errorf("%s applies only with --kafka-brokers and --redis-addr (the embedded demo has its own single-broker Kafka and Redis)", name(f))
			}
		}
	} else {
		for _, f := range []string{"data-dir", "serve"} {
			if _, ok := set[f]; ok {
				return fmt.Errorf("%s applies only to the embedded demo; drop it when --kafka-brokers and --redis-addr are set", name(f))
			}
		}
	}

	all := o.participantNames()
	ps, err := parseParticipants(fs.Lookup("participants").Value.String(), all)
	if err != nil {
		return fmt.Errorf("%s: %w", name("participants"), err)
	}
	_, given := set["participants"]
	switch {
	case !given && c.Embedded():
		ps = all
	case c.Embedded() && len(ps) != len(all):
		return fmt.Errorf("%s: the embedded demo runs all participants; choose participants only with --kafka-brokers and --redis-addr", name("participants"))
	}
	c.Participants = ps
	switch {
	case c.SessionTimeout < time.Second:
		return fmt.Errorf("%s %v is too short: want at least 1s (brokers usually require 6s or more)", name("session-timeout"), c.SessionTimeout)
	case c.DLTRetention < 0:
		return fmt.Errorf("%s %v is negative: want a duration, or 0 to keep dead letters until they are deleted", name("dlt-retention"), c.DLTRetention)
	case c.DLTRetention > 0 && c.DLTRetention < time.Millisecond:
		return fmt.Errorf("%s %v is under Kafka's unit of 1ms: want a duration such as 720h, or 0 to keep dead letters until they are deleted", name("dlt-retention"), c.DLTRetention)
	case !c.Engine && c.Embedded():
		return fmt.Errorf("%s applies only with --kafka-brokers and --redis-addr (the embedded demo runs the engine)", name("engine"))
	case !c.Engine && len(ps) == 0 && len(c.Outbox.Relay) == 0 && c.API.Addr == "" && c.Console.Addr == "":
		return fmt.Errorf("%s leaves nothing to run: name the participants to run with --participants", name("engine"))
	}

	if c.TransactionalID == "" {
		if _, ok := set["transactional-id"]; ok {
			return fmt.Errorf("%s is empty: want a stable id per instance, such as the pod name", name("transactional-id"))
		}
		host, err := os.Hostname()
		if err != nil || host == "" {
			return fmt.Errorf("--transactional-id is not set and the hostname is unavailable (%v): set --transactional-id", err)
		}
		c.TransactionalID = host
	}
	if _, ok := set["group"]; ok && c.Group == "" {
		return fmt.Errorf("%s is empty: want a consumer group name", name("group"))
	}
	if c.Partitions < 1 {
		return fmt.Errorf("%s: must be at least 1, got %d", name("partitions"), c.Partitions)
	}
	switch _, ok := set["replication-factor"]; {
	case !ok && c.Embedded():
		c.ReplicationFactor = 1
	case !ok:
		c.ReplicationFactor = 3
	case c.ReplicationFactor < 1 || c.ReplicationFactor > 32767:
		return fmt.Errorf("%s: must be between 1 and 32767, got %d", name("replication-factor"), c.ReplicationFactor)
	}
	if c.Pprof && c.MetricsAddr == "" {
		return fmt.Errorf("%s needs an HTTP server: set --metrics-addr", name("pprof"))
	}
	if c.MetricsAddr != "" {
		if err := checkListenAddr(c.MetricsAddr); err != nil {
			return fmt.Errorf("%s %q: %w (use host:port or :port, or \"\" to disable)", name("metrics-addr"), c.MetricsAddr, err)
		}
	}
	switch f := strings.ToLower(c.LogFormat); f {
	case "", "json", "text":
		c.LogFormat = f
	default:
		return fmt.Errorf("%s: unknown format %q (want json or text)", name("log-format"), c.LogFormat)
	}
	logLevel := fs.Lookup("log-level").Value.String()
	switch l := strings.ToLower(logLevel); l {
	case "debug":
		c.LogLevel = slog.LevelDebug
	case "info":
		c.LogLevel = slog.LevelInfo
	case "warn", "warning":
		c.LogLevel = slog.LevelWarn
	case "error":
		c.LogLevel = slog.LevelError
	default:
		return fmt.Errorf("%s: unknown level %q (want debug, info, warn or error)", name("log-level"), logLevel)
	}
	_, c.logLevelSet = set["log-level"]
	if c.MaxPollRecords < 1 {
		return fmt.Errorf("%s: must be at least 1, got %d", name("max-poll-records"), c.MaxPollRecords)
	}
	if c.TxnInterval < 0 || c.TxnInterval > time.Second {
		return fmt.Errorf("%s %v: want 0 (none) up to 1s, such as 5ms", name("txn-interval"), c.TxnInterval)
	}
	if c.History < 0 || c.History > orchestrator.MaxHistory {
		return fmt.Errorf("%s %d: want 0 (none) up to %d entries", name("history"), c.History, orchestrator.MaxHistory)
	}
	if c.Retention < 0 {
		return fmt.Errorf("%s %v is negative: want a duration such as 168h, or 0 to keep ended sagas forever", name("retention"), c.Retention)
	}
	if c.RedisTimeout < 0 {
		return fmt.Errorf("%s %v is negative: want a duration such as 5s, shorter than the transaction timeout (10s)", name("redis-timeout"), c.RedisTimeout)
	}
	if err := c.API.validate(name, set); err != nil {
		return err
	}
	if err := c.Outbox.validate(name, set, c.Embedded()); err != nil {
		return err
	}
	if err := c.Console.validate(name, set, c.API); err != nil {
		return err
	}
	if c.Embedded() && c.DataDir == "" {
		c.DataDir = filepath.Join(os.TempDir(), o.dataDirName())
	}
	return nil
}

// programName is the program's name as the daemon's data directory and its
// lock name it: the name given with Name, or without one (Run's default,
// "ksaga"), the executable's base name.
func (o *options) programName() string {
	if o.name != "" && o.name != "ksaga" {
		return o.name
	}
	return strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe")
}

// dataDirName is the base name of --data-dir's default, in os.TempDir():
// "ksaga-<program>", one per program, so that two programs built on this
// package (sagad, tripd, yours) do not share one embedded Kafka's data. A
// character of the name that is not a letter, a digit, '.', '_' or '-' is
// '_' in it.
func (o *options) dataDirName() string {
	name := []byte(o.programName())
	for i, ch := range name {
		if !('a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' || '0' <= ch && ch <= '9' || ch == '.' || ch == '_' || ch == '-') {
			name[i] = '_'
		}
	}
	return "ksaga-" + string(name)
}

// parseParticipants parses --participants: names of all, "all" or "none".
// The result is in the order of all.
func parseParticipants(s string, all []string) ([]string, error) {
	want := "want " + strings.Join(append(slices.Clone(all), "all or none"), ", ")
	names := conn.SplitList(s)
	var out []string
	for _, n := range names {
		switch n = strings.ToLower(n); {
		case n == "all" || n == "none":
			if len(names) > 1 {
				return nil, fmt.Errorf("%q cannot be combined with other names (%s)", n, want)
			}
			if n == "all" {
				return slices.Clone(all), nil
			}
			return nil, nil
		case !slices.Contains(all, n):
			return nil, fmt.Errorf("unknown participant %q (%s)", n, want)
		case !slices.Contains(out, n):
			out = append(out, n)
		}
	}
	// Start them in a fixed order, whatever order they were given in.
	slices.SortFunc(out, func(a, b string) int { return slices.Index(all, a) - slices.Index(all, b) })
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
func (o *options) usage(w io.Writer) {
	about := o.about
	if about == "" {
		about = o.name + " runs sagas: their engines and, optionally, their participants."
	}
	fmt.Fprintf(w, `%s

Usage:
  %-44s embedded demo: in-process Kafka (kfake) and Redis
  %-44s (miniredis), all participants
  %-44s real services: the engines (and --participants),
  %-44s until SIGTERM or SIGINT

Every flag can also be set by its KSAGA_* environment variable, shown in brackets; a flag given on
the command line wins over its variable.

Flags:
`, strings.TrimSpace(about), o.name, "", o.name+" --kafka-brokers B --redis-addr R [...]", "")
	fs := o.newFlagSet(new(Config))
	fs.VisitAll(func(f *flag.Flag) {
		arg, help := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if arg != "" {
			line += " " + arg
		}
		fmt.Fprintf(w, "%-38s [$%s]\n", line, conn.EnvName(f.Name))
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
an engine or participant stops, 2 for invalid flags.
`)
}
