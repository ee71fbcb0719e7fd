package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	kaudit "github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/conn"
	"github.com/ksaga/ksaga/message"
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

var commands = []string{cmdDLQList, cmdDLQShow, cmdDLQRedrive, cmdSagaGet, cmdSagaList, cmdSagaCompensate, cmdSagaResume, cmdAuditList}

// isGroup reports whether name is the first word of commands.
func isGroup(name string) bool {
	for _, c := range commands {
		if g, _, _ := strings.Cut(c, " "); g == name {
			return true
		}
	}
	return false
}

// invocation is a parsed and validated command line.
type invocation struct {
	// command is one of the cmd* constants; on flag.ErrHelp it is the
	// command whose help was asked for, or "" for the general help.
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

// envTwins maps the global flags that have one to their environment
// variable. The connection flags have theirs too (conn.EnvName), filled by
// conn.FromEnv.
var envTwins = map[string]string{
	"kafka-brokers": "KSAGA_KAFKA_BROKERS",
	"redis-addr":    "KSAGA_REDIS_ADDR",
}

// addGlobals defines the global flags on fs, with the values already in g
// as defaults, so that flags given before the command survive the command's
// own flag set.
func addGlobals(fs *flag.FlagSet, g *globals) {
	fs.StringVar(&g.kafkaBrokers, "kafka-brokers", g.kafkaBrokers, "Kafka seed `brokers`, comma-separated host:port [$KSAGA_KAFKA_BROKERS]")
	fs.StringVar(&g.redisAddr, "redis-addr", g.redisAddr, "Redis `addresses`, comma-separated (several: Redis Cluster) [$KSAGA_REDIS_ADDR]")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "how long to wait for Kafka or Redis to answer the first request")
	g.kafka.RegisterFlags(fs)
	g.redis.RegisterFlags(fs)
}

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// sagaTypeRE is what a saga type may look like: it becomes part of topic
// names (saga.<type>.inbox-dlt) and Redis keys.
var sagaTypeRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// parseArgs parses sagactl's command line, fills the global flags not given
// on it from their environment twins (read with getenv), and validates the
// result. It returns flag.ErrHelp, with inv.command set to the command
// concerned, for -h, -help and "help"; every other error says what to fix.
func parseArgs(args []string, getenv func(string) string) (inv invocation, err error) {
	g := globals{timeout: defaultTimeout}
	set := make(map[string]bool)
	visit := func(f *flag.Flag) { set[f.Name] = true }

	top := newFlagSet("sagactl")
	addGlobals(top, &g)
	if err := top.Parse(args); err != nil {
		return inv, flagError(err, "sagactl -help")
	}
	top.Visit(visit)
	rest := top.Args()
	if len(rest) == 0 {
		return inv, fmt.Errorf("missing command: want one of %s (sagactl -help shows usage)", strings.Join(commands, ", "))
	}
	if rest[0] == "help" {
		if len(rest) > 1 {
			inv.command = strings.Join(rest[1:min(3, len(rest))], " ")
		}
		return inv, flag.ErrHelp
	}
	if len(rest) < 2 || rest[1] == "-h" || rest[1] == "-help" || rest[1] == "--help" {
		if isGroup(rest[0]) {
			if len(rest) < 2 {
				return inv, fmt.Errorf("%s: missing subcommand: want one of %s (sagactl -help shows usage)", rest[0], subcommands(rest[0]))
			}
			return inv, flag.ErrHelp
		}
	}
	name := rest[0]
	if len(rest) > 1 {
		name += " " + rest[1]
	}
	inv.command = name

	// The connection flags given before the command win over their
	// environment twins; those given after it are parsed next and win
	// over both.
	if err := conn.FromEnv(top, getenv); err != nil {
		return inv, err
	}
	fs := newFlagSet("sagactl " + name)
	addGlobals(fs, &g)
	var c cmdFlags
	if !defineCommandFlags(fs, name, &c) {
		if isGroup(rest[0]) {
			return inv, fmt.Errorf("%s: unknown subcommand %q: want one of %s (sagactl -help shows usage)", rest[0], rest[1], subcommands(rest[0]))
		}
		return inv, fmt.Errorf("unknown command %q: want one of %s (sagactl -help shows usage)", rest[0], strings.Join(commands, ", "))
	}
	posArgs, err := parseInterspersed(fs, rest[2:])
	if err != nil {
		return inv, flagError(err, "sagactl "+name+" -help")
	}
	fs.Visit(visit)

	for flagName, env := range envTwins {
		if set[flagName] {
			continue
		}
		if v := getenv(env); v != "" {
			if err := fs.Set(flagName, v); err != nil {
				return inv, fmt.Errorf("%s=%q: %v", env, v, err)
			}
		}
	}
	how := func(flagName string) string {
		if env, ok := envTwins[flagName]; ok && !set[flagName] {
			return env
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
	if !sagaTypeRE.MatchString(sagaType) {
		return inv, usageErr("--saga %q: a saga type is letters, digits, '_' and '-' only", sagaType)
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
	inv.brokers = splitList(g.kafkaBrokers)
	inv.redisAddrs = splitList(g.redisAddr)

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
		if acts && !sagaNameRE.MatchString(sagaType) {
			return inv, usageErr("--saga %q is not a saga type's name: lower-case letters, digits and '-'", sagaType)
		}
		if strings.TrimSpace(c.note) == "" {
			return inv, usageErr("--note is required: say why, for the audit record on saga.%s.audit (e.g. --note \"orders db back, INC-123\")", sagaType)
		}
		if by == "" {
			by = cmp(getenv("USER"), getenv("LOGNAME"))
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

// cmp returns the first of ss that is not empty.
func cmp(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

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

// defineCommandFlags defines the flags of command name on fs. It reports
// false for an unknown command.
func defineCommandFlags(fs *flag.FlagSet, name string, c *cmdFlags) bool {
	if !isCommand(name) {
		return false
	}
	fs.StringVar(&c.sagaType, "saga", "", "saga `type`, e.g. order (required)")
	fs.StringVar(&c.output, "output", outTable, "output `format`: table, json or yaml; json and yaml print the data alone on stdout")
	fs.StringVar(&c.output, "o", outTable, "short for --output")
	dlqFilters := func(what string) {
		fs.StringVar(&c.reason, "reason", "", what+" only records dead-lettered for this `reason`, e.g. retries-exhausted")
		fs.StringVar(&c.sagaID, "saga-id", "", what+" only the records of this saga `id` (the record key)")
		fs.StringVar(&c.since, "since", "", what+" only records dead-lettered at or after `when`: a duration ago (90m, 2h, 3d) or a time (RFC 3339, or 2006-01-02)")
		fs.StringVar(&c.until, "until", "", what+" only records dead-lettered before `when`, as for --since")
	}
	who := func() {
		fs.StringVar(&c.note, "note", "", "why, in `text`, for the audit record (required)")
		fs.StringVar(&c.as, "as", "", "who (a `name`: letters, digits, . _ @ -), for the audit record (default $USER)")
		fs.BoolVar(&c.yes, "yes", false, "do not ask for confirmation (required when stdin is not a terminal)")
	}
	switch name {
	case cmdDLQList:
		dlqFilters("list")
		fs.StringVar(&c.state, "state", "", "list only records in this `state`: pending, redriven or invalid")
		fs.IntVar(&c.limit, "limit", 0, "print at most `N` records, oldest first; 0 prints all")
	case cmdDLQRedrive:
		dlqFilters("redrive")
		fs.IntVar(&c.limit, "limit", 0, "redrive at most `N` records, oldest first; 0 redrives all that match")
		fs.IntVar(&c.maxRedrives, "max-redrives", defaultMaxRedrives, "skip a record whose original was redriven `N` times already, failing each time; 0: no limit")
		fs.StringVar(&c.rate, "rate", "", "redrive at most `R` records per second: 50 or 50/s (or 600/m, 100/h); default: no limit")
		fs.BoolVar(&c.dryRun, "dry-run", false, "print what would be redriven; produce and commit nothing")
		who()
	case cmdSagaGet:
		fs.IntVar(&c.parts, "partitions", 0, "partition `count` of saga.TYPE.inbox, which places the saga's Redis key; read from Kafka when --kafka-brokers is set")
	case cmdSagaList:
		fs.BoolVar(&c.stuck, "stuck", false, "list only sagas that have not ended (running or compensating) and have not changed for --older-than (default 10m)")
		fs.DurationVar(&c.olderThan, "older-than", 0, "list only sagas whose updated_at is older than this `duration`, e.g. 10m")
		fs.StringVar(&c.status, "status", "", "list only sagas of this `status`: running, compensating, parked, completed, compensated or failed")
		fs.IntVar(&c.limit, "limit", 0, "print at most `N` sagas, the longest unchanged first; 0 prints all")
	case cmdSagaCompensate, cmdSagaResume:
		fs.BoolVar(&c.dryRun, "dry-run", false, "check the saga and print the message and audit record that would be sent; send nothing")
		who()
	case cmdAuditList:
		fs.StringVar(&c.action, "action", "", "list only records of this `action`: dlq-redrive, saga-compensate or saga-resume")
		fs.StringVar(&c.since, "since", "", "list only records at or after `when`: a duration ago (90m, 2h, 3d) or a time")
		fs.StringVar(&c.until, "until", "", "list only records before `when`, as for --since")
		fs.IntVar(&c.limit, "limit", 0, "print at most `N` records, oldest first; 0 prints all")
	}
	return true
}

func isCommand(name string) bool {
	for _, c := range commands {
		if c == name {
			return true
		}
	}
	return false
}

// parseInterspersed parses flags that may come before, between or after the
// positional arguments ("saga get ID --saga order"), and returns the latter.
// Everything after "--" is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// flagError turns the flag package's error into one that says where the
// list of valid flags is.
func flagError(err error, helpCmd string) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w (%s lists the flags)", err, helpCmd)
}

func subcommands(group string) string {
	var out []string
	for _, c := range commands {
		if g, sub, _ := strings.Cut(c, " "); g == group {
			out = append(out, sub)
		}
	}
	return strings.Join(out, ", ")
}

// splitList splits a comma-separated list, dropping blanks.
func splitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func firstOr(s []string, def string) string {
	if len(s) == 0 {
		return def
	}
	return s[0]
}

// exitStatusHelp ends every help text.
const exitStatusHelp = `
Exit status: 0 on success; 1 when the command failed (Kafka or Redis unreachable or refusing the
login, no such topic, saga or record, a confirmation answered no); 2 for invalid flags or
arguments, including a change without --yes when stdin is not a terminal.
`

// usage writes the help of command, or the general help when command is
// not one sagactl knows.
func usage(w io.Writer, command string) {
	switch command {
	case cmdDLQList:
		fmt.Fprint(w, `Usage: sagactl dlq list --saga TYPE [--reason R] [--saga-id ID] [--since WHEN] [--until WHEN]
                       [--state pending|redriven|invalid] [--limit N] [-o table|json|yaml]

Reads saga.TYPE.inbox-dlt from the beginning up to the end offsets taken at start (read_committed)
and the redrive history on saga.TYPE.audit, and prints one row per original record, oldest first:
a record redriven and dead-lettered again is one row (its newest dead letter, at DLT), with
DEAD-LETTERED the number of its dead letters and REDRIVES the number of its redrives. STATE is
pending (never redriven), redriven (sent back to the inbox; if it fails again, its next dead letter
becomes the row) or invalid (not a dead-letter record). -o json prints an array with every field:
the history in "redrives" (who, when, why, which run), the earlier dead letters in "earlier".
The summary goes to stderr.

Flags:
`)
	case cmdDLQShow:
		fmt.Fprint(w, `Usage: sagactl dlq show --saga TYPE PARTITION:OFFSET [-o table|json|yaml]

Prints one record of saga.TYPE.inbox-dlt (as dlq list names it, e.g. 0:42): where it came from,
why it was dead-lettered, its redrives (from saga.TYPE.audit), its headers decoded (Spring's
kafka_dlt-original-partition as an int32, -offset and -timestamp as int64, big-endian), its key
and its value (base64 when not UTF-8 text).

Flags:
`)
	case cmdDLQRedrive:
		fmt.Fprint(w, `Usage: sagactl dlq redrive --saga TYPE --note WHY [--reason R] [--saga-id ID] [--since WHEN]
                          [--until WHEN] [--limit N] [--max-redrives N] [--rate R] [--dry-run] [--yes]
                          [--as WHO] [-o ...]

Re-produces the original of each matching record of saga.TYPE.inbox-dlt that was never redriven
(same key, value and headers, without the dead-letter headers, plus ksaga-redrive-of:
"<dlt-partition>:<dlt-offset>") to its original topic and partition, oldest first, up to the end
offsets taken at start. Each transaction holds the redriven records and one audit record on
saga.TYPE.audit: who (--as, default $USER), why (--note), when, the run id and the DLT offsets.
Those offsets are never redriven again: a second run skips them, and dlq list shows the history.
Runs of one saga type fence each other (a shared transactional id), so two cannot redrive the same
record. A redriven record that fails again is dead-lettered again, and can be redriven again, up to
--max-redrives times (default 3): a record that keeps failing is then left in the DLQ instead of
going round with every run (dlq list shows its redrives; --max-redrives 0 lifts the limit).

It asks for confirmation on a terminal; --yes skips the question, and is required when stdin is
not a terminal. Try --dry-run first: it lists what would be redriven and changes nothing. --limit
redrives the N oldest matching records; --rate paces them (a transaction then holds about a
second's worth). A long run on a terminal draws a progress bar on stderr. Ctrl-C aborts the open
transaction; what was committed before stays committed and audited.

Flags:
`)
	case cmdSagaGet:
		fmt.Fprint(w, `Usage: sagactl saga get --saga TYPE [--partitions N | --kafka-brokers B] ID [-o table|json|yaml]

Prints the state of saga ID as the engine last wrote it to Redis (hash ksaga:{TYPE:P}:state:ID,
where P is the saga's home partition): -o table a summary row, -o json and -o yaml the whole state
(waiting, attempt, deadline_ms, undone, data, trace...). Redis may lag Kafka by the last few
transactions. Exits 1 if there is no such saga.

Flags:
`)
	case cmdSagaList:
		fmt.Fprint(w, `Usage: sagactl saga list --saga TYPE [--stuck] [--older-than D] [--status S] [--limit N] [-o ...]

Scans the Redis view (keys ksaga:{TYPE:*}:state:*, on every primary of a Redis Cluster) and prints
the sagas that match, the longest unchanged first. --stuck keeps the sagas that have not ended
(running or compensating) and whose updated_at is older than --older-than (default 10m): the
stuck-saga sweep of the KsagaSagaStuck runbook. Needs --redis-addr only.

Flags:
`)
	case cmdSagaCompensate:
		fmt.Fprint(w, `Usage: sagactl saga compensate --saga TYPE ID --note WHY [--as WHO] [--dry-run] [--yes] [-o ...]

Reads saga ID from the Redis view first: a saga the view does not have (a wrong id, or one whose
start request is not handled yet) or that is not running (it has ended, or is compensating
already) is refused with exit status 1, and nothing is sent. Otherwise sends the documented
Compensate message (with --note as its reason) to the saga's home partition of saga.TYPE.inbox:
the saga stops and undoes its completed steps, last first; and, in the same Kafka transaction, an
audit record (who, why, when) to saga.TYPE.audit, as the HTTP API does for its compensations.
--dry-run checks the saga and prints both without sending them. --as (default $USER) is a name:
letters, digits and . _ @ -. Asks for confirmation as dlq redrive does. Needs --kafka-brokers and
--redis-addr.

Flags:
`)
	case cmdSagaResume:
		fmt.Fprint(w, `Usage: sagactl saga resume --saga TYPE ID --note WHY [--as WHO] [--dry-run] [--yes] [-o ...]

Resumes a parked saga: one whose step (declared with saga.Step.Park) ran out of attempts and
that waits for an operator instead of compensating. Reads saga ID from the Redis view first: a
saga that is not there or not parked is refused with exit status 1, and nothing is sent. Otherwise
sends a Resume message (with --note as its reason) to the saga's home partition of
saga.TYPE.inbox: the engine runs the step again, or sends its command again with fresh attempts
and the same message id; and, in the same Kafka transaction, an audit record to saga.TYPE.audit.
To give up on a parked saga instead, use saga compensate. --dry-run, --as and the confirmation
work as in saga compensate. Needs --kafka-brokers and --redis-addr.

Flags:
`)
	case cmdAuditList:
		fmt.Fprint(w, `Usage: sagactl audit list --saga TYPE [--action A] [--since WHEN] [--until WHEN] [--limit N] [-o ...]

Prints the audit records of saga.TYPE.audit, oldest first: every dlq redrive transaction (the DLT
offsets it redrove) and every saga compensate, with who, when and why. The summary on stderr
counts the redrives.

Flags:
`)
	default:
		fmt.Fprint(w, `sagactl is the ksaga operator CLI.

Usage:
  sagactl [global flags] dlq list        --saga TYPE [filters]          list the dead-letter topic
  sagactl [global flags] dlq show        --saga TYPE PARTITION:OFFSET   one dead letter, decoded
  sagactl [global flags] dlq redrive     --saga TYPE --note WHY [filters] [--limit N] [--rate R]
                                         [--dry-run] [--yes]            re-produce dead letters, audited
  sagactl [global flags] saga get        --saga TYPE ID                 a saga's state
  sagactl [global flags] saga list       --saga TYPE [--stuck] [--older-than D]
                                                                        sagas in Redis, e.g. stuck ones
  sagactl [global flags] saga compensate --saga TYPE ID --note WHY [--dry-run]
                                                                        ask a saga to compensate, audited
  sagactl [global flags] saga resume     --saga TYPE ID --note WHY [--dry-run]
                                                                        resume a parked saga, audited
  sagactl [global flags] audit list      --saga TYPE                    what operators did
  sagactl help COMMAND                                                  help on one command

Every command takes -o table|json|yaml: json and yaml print the data alone on stdout (progress,
prompts, summaries and errors go to stderr), so "sagactl ... -o json | jq" works.

Global flags may also come after the command. The dlq, audit and saga compensate commands need
--kafka-brokers, saga get, saga list and saga compensate --redis-addr; each can come from its environment variable
instead, shown in brackets. The --kafka-tls*, --kafka-sasl-*, --redis-username, --redis-password*
and --redis-tls* flags connect to a Kafka or Redis that wants TLS or a login; a refused login or
certificate exits 1 at once with one line that says what was refused.

Global flags:
`)
		fs := newFlagSet("sagactl")
		addGlobals(fs, &globals{timeout: defaultTimeout})
		printFlags(w, fs, false)
		fmt.Fprint(w, exitStatusHelp)
		return
	}
	fs := newFlagSet("sagactl " + command)
	defineCommandFlags(fs, command, &cmdFlags{})
	addGlobals(fs, &globals{timeout: defaultTimeout})
	printFlags(w, fs, true)
	fmt.Fprint(w, "\nThe connection flags (--kafka-tls*, --kafka-sasl-*, --redis-username, --redis-password*,\n--redis-tls*) are global flags too: sagactl -help lists them.\n")
	fmt.Fprint(w, exitStatusHelp)
}

// printFlags prints the flags of fs, each connection flag with its
// environment twin; skipConn leaves the connection flags out.
func printFlags(w io.Writer, fs *flag.FlagSet, skipConn bool) {
	isConn := make(map[string]bool)
	for _, name := range conn.FlagNames() {
		isConn[name] = true
	}
	fs.VisitAll(func(f *flag.Flag) {
		if (isConn[f.Name] && skipConn) || f.Name == "o" {
			return
		}
		arg, help := flag.UnquoteUsage(f)
		if isConn[f.Name] {
			help += " [$" + conn.EnvName(f.Name) + "]"
		}
		line := "  --" + f.Name
		if f.Name == "output" && fs.Lookup("o") != nil {
			line = "  -o, --output"
		}
		if arg != "" {
			line += " " + arg
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "%s\n        %s%s\n", line, help, def)
	})
}

// defaultMaxRedrives is how many times dlq redrive sends a record that
// keeps failing before it leaves it in the DLQ, as the engine gives a
// record three attempts.
const defaultMaxRedrives = 3
