package main

import (
	"cmp"
	"flag"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/twmb/franz-go/pkg/kgo"

	kaudit "github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/conn"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
)

// Commands, as the user types them.
const (
	cmdDLQList        = "dlq list"
	cmdDLQShow        = "dlq show"
	cmdDLQRedrive     = "dlq redrive"
	cmdSagaGet        = "saga get"
	cmdSagaList       = "saga list"
	cmdSagaCompensate = "saga compensate"
	cmdSagaResume     = "saga resume"
	cmdAuditList      = "audit list"
)

// invocation is a parsed and validated command line.
type invocation struct {
	// command is one of the cmd* constants.
	command    string
	brokers    []string
	redisAddrs []string
	// kafkaConn and redis are the connection flags of the services the
	// command talks to, validated; kafka are kafkaConn's kgo options.
	kafkaConn conn.Kafka
	kafka     []kgo.Opt
	redis     conn.Redis
	// warnings are what is allowed but probably wrong in the connection
	// flags (SASL without TLS), for stderr.
	warnings []string
	// timeout is --timeout.
	timeout time.Duration
	// confirms is set for a command that asks for confirmation unless
	// --yes is given; yes is --yes.
	confirms, yes bool

	list       listOptions
	show       showOptions
	redrive    redriveOptions
	get        getOptions
	sagaList   sagaListOptions
	compensate compensateOptions
	auditList  auditListOptions
}

// globals are the flags every command accepts, before or after its name.
type globals struct {
	kafkaBrokers string
	redisAddr    string
	timeout      time.Duration
	// kafka and redis are the secure connection flags (--kafka-tls*,
	// --kafka-sasl-*, --redis-username, --redis-password*, --redis-tls*).
	kafka conn.Kafka
	redis conn.Redis
}

// envTwins are the flags that have an environment variable, named by
// conn.EnvName (--kafka-brokers: KSAGA_KAFKA_BROKERS): the global
// addresses, then the connection flags of package conn. sagad reads the
// same variables. A flag given on the command line wins over its twin.
var envTwins = append([]string{"kafka-brokers", "redis-addr"}, conn.FlagNames()...)

// addGlobals defines the global flags on fs, bound to g, each flag with a
// twin naming it in its usage.
func addGlobals(fs *pflag.FlagSet, g *globals) {
	fs.StringVar(&g.kafkaBrokers, "kafka-brokers", "", "Kafka seed `brokers`, comma-separated host:port")
	fs.StringVar(&g.redisAddr, "redis-addr", "", "Redis `addresses`, comma-separated (several: Redis Cluster)")
	fs.DurationVar(&g.timeout, "timeout", defaultTimeout, "how long to wait for Kafka or Redis to answer the first request")
	// Package conn defines its flags on a flag.FlagSet, for sagad and
	// sagactl alike; pflag takes them over, bound to the same fields.
	gofs := flag.NewFlagSet("conn", flag.ContinueOnError)
	g.kafka.RegisterFlags(gofs)
	g.redis.RegisterFlags(gofs)
	fs.AddGoFlagSet(gofs)
	for _, name := range envTwins {
		f := fs.Lookup(name)
		f.Usage += " [$" + conn.EnvName(name) + "]"
	}
}

// applyEnv sets each twin flag of cmd not given on the command line from
// its environment variable (read with getenv), and returns the flags
// given on the command line.
func applyEnv(cmd *cobra.Command, getenv func(string) string) (given map[string]bool, err error) {
	fs := cmd.Flags()
	given = make(map[string]bool)
	fs.Visit(func(f *pflag.Flag) { given[f.Name] = true })
	var flags []conn.EnvFlag
	for _, name := range envTwins {
		if f := fs.Lookup(name); f != nil {
			flags = append(flags, conn.EnvFlag{Name: name, Given: given[name], Kind: f.Value.Type(), Set: func(v string) error { return fs.Set(name, v) }})
		}
	}
	if _, err := conn.ApplyEnv(flags, getenv); err != nil {
		return given, err
	}
	return given, nil
}

// validate checks the flags c and positional arguments posArgs of command
// name, given the global flags g (set: those given on the command line;
// the others may come from the environment, read with getenv), and returns
// the invocation. Every error says what to fix.
func validate(name string, c cmdFlags, g globals, set map[string]bool, posArgs []string, getenv func(string) string) (inv invocation, err error) {
	inv.command = name
	how := func(flagName string) string {
		if !set[flagName] {
			return conn.EnvName(flagName)
		}
		return "--" + flagName
	}
	usageErr := func(format string, a ...any) error {
		return fmt.Errorf("%s: %s", name, fmt.Sprintf(format, a...))
	}

	// Validate, in the order a user would fix things.
	sagaType := c.sagaType
	if sagaType == "" {
		return inv, usageErr("--saga is required: the saga type, e.g. --saga order")
	}
	if !saga.ValidName(sagaType) {
		return inv, usageErr("--saga %q is not a saga type's name: lower-case letters, digits and '-'", sagaType)
	}
	if g.timeout <= 0 {
		return inv, usageErr("--timeout must be positive, got %s", g.timeout)
	}
	inv.timeout = g.timeout
	switch c.output {
	case outTable, outJSON, outYAML:
	default:
		return inv, usageErr("-o %q: want table, json or yaml", c.output)
	}
	if c.limit < 0 {
		return inv, usageErr("--limit must be 0 (all) or more, got %d", c.limit)
	}
	if c.maxRedrives < 0 {
		return inv, usageErr("--max-redrives must be 0 (no limit) or more, got %d", c.maxRedrives)
	}
	inv.brokers = conn.SplitList(g.kafkaBrokers)
	inv.redisAddrs = conn.SplitList(g.redisAddr)

	// Positional arguments.
	var id string
	var at pos
	switch name {
	case cmdDLQShow:
		if len(posArgs) != 1 {
			return inv, usageErr("want one PARTITION:OFFSET of saga.%s.inbox-dlt (as dlq list shows them), got %d arguments", sagaType, len(posArgs))
		}
		if at, err = parsePos(posArgs[0]); err != nil {
			return inv, usageErr("%v", err)
		}
	case cmdSagaGet, cmdSagaCompensate, cmdSagaResume:
		switch {
		case len(posArgs) == 0:
			return inv, usageErr("missing saga id: sagactl %s --saga %s ID", name, sagaType)
		case len(posArgs) > 1:
			return inv, usageErr("got %d arguments (%s), want one saga id", len(posArgs), strings.Join(posArgs, " "))
		case posArgs[0] == "":
			return inv, usageErr("the saga id is empty")
		}
		id = posArgs[0]
	default:
		if len(posArgs) > 0 {
			return inv, usageErr("unexpected argument %q: the command takes flags only (sagactl %s -help lists them)", posArgs[0], name)
		}
	}

	// Filters and limits.
	now := time.Now()
	var f filters
	f.reason, f.sagaID = c.reason, c.sagaID
	if c.since != "" {
		if f.since, err = parseWhen(c.since, now); err != nil {
			return inv, usageErr("--since %v", err)
		}
	}
	if c.until != "" {
		if f.until, err = parseWhen(c.until, now); err != nil {
			return inv, usageErr("--until %v", err)
		}
	}
	if !f.since.IsZero() && !f.until.IsZero() && !f.since.Before(f.until) {
		return inv, usageErr("--since %s is not before --until %s", formatTime(f.since), formatTime(f.until))
	}
	var rate float64
	if c.rate != "" {
		if rate, err = parseRate(c.rate); err != nil {
			return inv, usageErr("--rate %v", err)
		}
	}
	switch c.state {
	case "", statePending, stateRedriven, stateInvalid:
	default:
		return inv, usageErr("--state %q: want pending, redriven or invalid", c.state)
	}
	switch c.status {
	case "", message.StatusRunning, message.StatusCompensating, message.StatusParked, message.StatusCompleted, message.StatusCompensated, message.StatusFailed:
	default:
		return inv, usageErr("--status %q: want running, compensating, parked, completed, compensated or failed", c.status)
	}
	if c.olderThan < 0 {
		return inv, usageErr("--older-than must not be negative, got %s", c.olderThan)
	}
	if c.stuck && !set["older-than"] {
		c.olderThan = defaultStuckAge
	}
	action := c.action
	switch action {
	case "", message.AuditRedrive, message.AuditCompensate, message.AuditResume:
	case "redrive":
		action = message.AuditRedrive
	case "compensate":
		action = message.AuditCompensate
	case "resume":
		action = message.AuditResume
	default:
		return inv, usageErr("--action %q: want %s, %s or %s", c.action, message.AuditRedrive, message.AuditCompensate, message.AuditResume)
	}

	// The services each command needs.
	usesKafka, usesRedis := true, false
	switch name {
	case cmdSagaGet:
		usesKafka, usesRedis = c.parts == 0, true
	case cmdSagaList:
		usesKafka, usesRedis = false, true
	case cmdSagaCompensate, cmdSagaResume:
		// The Redis view says whether the saga exists and runs.
		usesRedis = true
	}
	if usesRedis && len(inv.redisAddrs) == 0 {
		if set["redis-addr"] || getenv("KSAGA_REDIS_ADDR") != "" {
			return inv, usageErr("%s is empty: want the Redis address, host:port[,host:port…]", how("redis-addr"))
		}
		return inv, usageErr("Redis is not set: pass --redis-addr host:port or set KSAGA_REDIS_ADDR")
	}
	if name == cmdSagaGet && (c.parts < 0 || (c.parts == 0 && len(inv.brokers) == 0)) {
		return inv, usageErr("the inbox's partition count is not known: pass --kafka-brokers host:port (it is read from Kafka) or --partitions N (the partition count of saga.%s.inbox)", sagaType)
	}
	if usesKafka && name != cmdSagaGet && len(inv.brokers) == 0 {
		if set["kafka-brokers"] || getenv("KSAGA_KAFKA_BROKERS") != "" {
			return inv, usageErr("%s is empty: want the Kafka seed brokers, host:port[,host:port…]", how("kafka-brokers"))
		}
		return inv, usageErr("Kafka brokers are not set: pass --kafka-brokers host:port[,host:port…] or set KSAGA_KAFKA_BROKERS")
	}
	// The connection flags of the services the command talks to: read
	// their files now, so that a wrong path is a usage error.
	if usesKafka {
		if inv.kafka, err = g.kafka.Opts(); err != nil {
			return inv, fmt.Errorf("%s: %w", name, err)
		}
		inv.kafkaConn = g.kafka
		inv.warnings = append(inv.warnings, g.kafka.Warnings()...)
	}
	if usesRedis {
		if err := g.redis.Apply(&redis.UniversalOptions{}); err != nil {
			return inv, fmt.Errorf("%s: %w", name, err)
		}
		inv.redis = g.redis
		inv.warnings = append(inv.warnings, g.redis.Warnings()...)
	}

	// Who and why, for the audit record of what changes something.
	acts := name == cmdSagaCompensate || name == cmdSagaResume
	changes := (acts || name == cmdDLQRedrive) && !c.dryRun
	by := c.as
	if c.as != "" {
		if err := kaudit.ValidName(c.as); err != nil {
			return inv, usageErr("--as %q is not a name: want %s", c.as, kaudit.NameRule)
		}
	}
	if acts || changes {
		if strings.TrimSpace(c.note) == "" {
			return inv, usageErr("--note is required: say why, for the audit record on saga.%s.audit (e.g. --note \"orders db back, INC-123\")", sagaType)
		}
		if by == "" {
			by = cmp.Or(getenv("USER"), getenv("LOGNAME"))
		}
		if strings.TrimSpace(by) == "" {
			return inv, usageErr("cannot tell who you are for the audit record: $USER is not set; pass --as NAME")
		}
		if err := kaudit.ValidName(by); err != nil {
			return inv, usageErr("$USER %q is not a name for the audit record (%s): pass --as NAME", by, kaudit.NameRule)
		}
		inv.confirms, inv.yes = changes, c.yes
	}

	out := c.output
	inv.list = listOptions{sagaType: sagaType, kafka: inv.kafka, filters: f, state: c.state, limit: c.limit, output: out, timeout: g.timeout}
	inv.show = showOptions{sagaType: sagaType, kafka: inv.kafka, at: at, output: out, timeout: g.timeout}
	inv.redrive = redriveOptions{sagaType: sagaType, kafka: inv.kafka, filters: f, limit: c.limit, maxRedrives: c.maxRedrives, rate: rate, dryRun: c.dryRun,
		yes: c.yes, by: by, note: c.note, output: out, timeout: g.timeout}
	inv.get = getOptions{sagaType: sagaType, id: id, redisAddrs: inv.redisAddrs, timeout: g.timeout, partitions: int32(c.parts), output: out}
	inv.sagaList = sagaListOptions{sagaType: sagaType, redisAddrs: inv.redisAddrs, stuck: c.stuck, olderThan: c.olderThan,
		status: c.status, limit: c.limit, output: out, timeout: g.timeout}
	inv.compensate = compensateOptions{sagaType: sagaType, id: id, kafka: inv.kafka, redisAddrs: inv.redisAddrs, dryRun: c.dryRun, yes: c.yes,
		by: by, note: c.note, output: out, timeout: g.timeout, resume: name == cmdSagaResume}
	inv.auditList = auditListOptions{sagaType: sagaType, kafka: inv.kafka, action: action, since: f.since, until: f.until,
		limit: c.limit, output: out, timeout: g.timeout}
	return inv, nil
}

// defaultStuckAge is --older-than of saga list --stuck when not given.
const defaultStuckAge = 10 * time.Minute

// parseWhen parses a point in time: a duration ago (90s, 15m, 2h, 3d) or
// a time (RFC 3339, "2006-01-02T15:04:05" in UTC, or a day "2006-01-02").
func parseWhen(s string, now time.Time) (time.Time, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		if days, err := strconv.ParseFloat(n, 64); err == nil && days >= 0 {
			return now.Add(-time.Duration(days * 24 * float64(time.Hour))), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: a duration ago must not be negative", s)
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: want a duration ago (90m, 2h, 3d) or a time (2025-03-01T10:00:00Z, 2025-03-01)", s)
}

// parseRate parses --rate: records per second ("50", "50/s"), per minute
// ("600/m") or per hour ("100/h").
func parseRate(s string) (float64, error) {
	num, unit, _ := strings.Cut(s, "/")
	n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || n <= 0 || math.IsInf(n, 0) || math.IsNaN(n) {
		return 0, fmt.Errorf("%q: want a positive number of records per second, e.g. 50 or 50/s (or 600/m, 100/h)", s)
	}
	switch strings.TrimSpace(unit) {
	case "", "s", "sec", "second":
		return n, nil
	case "m", "min", "minute":
		return n / 60, nil
	case "h", "hour":
		return n / 3600, nil
	}
	return 0, fmt.Errorf("%q: unknown unit %q: want /s, /m or /h", s, unit)
}

// cmdFlags are the flags of one command.
type cmdFlags struct {
	sagaType string
	output   string
	reason   string
	sagaID   string
	since    string
	until    string
	state    string
	limit    int
	// maxRedrives is dlq redrive's --max-redrives.
	maxRedrives int
	rate        string
	dryRun      bool
	yes         bool
	as          string
	note        string
	parts       int
	stuck       bool
	olderThan   time.Duration
	status      string
	action      string
}

// defaultMaxRedrives is how many times dlq redrive sends a record that
// keeps failing before it leaves it in the DLQ, as the engine gives a
// record three attempts.
const defaultMaxRedrives = 3
