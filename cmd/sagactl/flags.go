package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/conn"
)

// Commands, as the user types them.
const (
	cmdDLQList    = "dlq list"
	cmdDLQRedrive = "dlq redrive"
	cmdSagaGet    = "saga get"
)

var commands = []string{cmdDLQList, cmdDLQRedrive, cmdSagaGet}

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
	list     listOptions
	redrive  redriveOptions
	get      getOptions
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
		switch rest[0] {
		case "dlq", "saga":
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
		if rest[0] == "dlq" || rest[0] == "saga" {
			return inv, fmt.Errorf("%s: unknown subcommand %q: want one of %s (sagactl -help shows usage)", rest[0], rest[1], subcommands(rest[0]))
		}
		return inv, fmt.Errorf("unknown command %q: want one of %s (sagactl -help shows usage)", rest[0], strings.Join(commands, ", "))
	}
	pos, err := parseInterspersed(fs, rest[2:])
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

	// Validate, in the order a user would fix things.
	sagaType := c.sagaType
	if sagaType == "" {
		return inv, fmt.Errorf("%s: --saga is required: the saga type, e.g. --saga order", name)
	}
	if !sagaTypeRE.MatchString(sagaType) {
		return inv, fmt.Errorf("%s: --saga %q: a saga type is letters, digits, '_' and '-' only", name, sagaType)
	}
	if g.timeout <= 0 {
		return inv, fmt.Errorf("%s: --timeout must be positive, got %s", name, g.timeout)
	}
	inv.brokers = splitList(g.kafkaBrokers)
	inv.redisAddrs = splitList(g.redisAddr)
	switch name {
	case cmdDLQList, cmdDLQRedrive:
		if len(pos) > 0 {
			return inv, fmt.Errorf("%s: unexpected argument %q: the command takes flags only (sagactl %s -help lists them)", name, pos[0], name)
		}
		if len(inv.brokers) == 0 {
			if set["kafka-brokers"] || getenv("KSAGA_KAFKA_BROKERS") != "" {
				return inv, fmt.Errorf("%s: %s is empty: want the Kafka seed brokers, host:port[,host:port…]", name, how("kafka-brokers"))
			}
			return inv, fmt.Errorf("%s: Kafka brokers are not set: pass --kafka-brokers host:port[,host:port…] or set KSAGA_KAFKA_BROKERS", name)
		}
	case cmdSagaGet:
		switch {
		case len(pos) == 0:
			return inv, fmt.Errorf("%s: missing saga id: sagactl saga get --saga %s ID", name, sagaType)
		case len(pos) > 1:
			return inv, fmt.Errorf("%s: got %d arguments (%s), want one saga id", name, len(pos), strings.Join(pos, " "))
		case pos[0] == "":
			return inv, fmt.Errorf("%s: the saga id is empty", name)
		}
		if len(inv.redisAddrs) == 0 {
			if set["redis-addr"] || getenv("KSAGA_REDIS_ADDR") != "" {
				return inv, fmt.Errorf("%s: %s is empty: want the Redis address, host:port[,host:port…]", name, how("redis-addr"))
			}
			return inv, fmt.Errorf("%s: Redis is not set: pass --redis-addr host:port or set KSAGA_REDIS_ADDR", name)
		}
		if c.parts < 0 || (c.parts == 0 && len(inv.brokers) == 0) {
			return inv, fmt.Errorf("%s: the inbox's partition count is not known: pass --kafka-brokers host:port (it is read from Kafka) or --partitions N (the partition count of saga.%s.inbox)", name, sagaType)
		}
	}
	if c.limit < 0 {
		return inv, fmt.Errorf("%s: --limit must be 0 (all) or more, got %d", name, c.limit)
	}
	// The connection flags of the services the command talks to: read
	// their files now, so that a wrong path is a usage error.
	usesKafka := name != cmdSagaGet || c.parts == 0
	if usesKafka {
		if inv.kafka, err = g.kafka.Opts(); err != nil {
			return inv, fmt.Errorf("%s: %w", name, err)
		}
		inv.kafkaConn = g.kafka
		inv.warnings = append(inv.warnings, g.kafka.Warnings()...)
	}
	if name == cmdSagaGet {
		if err := g.redis.Apply(&redis.UniversalOptions{}); err != nil {
			return inv, fmt.Errorf("%s: %w", name, err)
		}
		inv.redis = g.redis
		inv.warnings = append(inv.warnings, g.redis.Warnings()...)
	}
	inv.list = listOptions{sagaType: sagaType, kafka: inv.kafka, limit: c.limit, timeout: g.timeout}
	inv.redrive = redriveOptions{sagaType: sagaType, kafka: inv.kafka, reason: c.reason, dryRun: c.dryRun, timeout: g.timeout}
	inv.get = getOptions{sagaType: sagaType, id: firstOr(pos, ""), redisAddrs: inv.redisAddrs, timeout: g.timeout, partitions: int32(c.parts)}
	return inv, nil
}

// cmdFlags are the flags of one command.
type cmdFlags struct {
	sagaType string
	reason   string
	limit    int
	dryRun   bool
	parts    int
}

// defineCommandFlags defines the flags of command name on fs. It reports
// false for an unknown command.
func defineCommandFlags(fs *flag.FlagSet, name string, c *cmdFlags) bool {
	switch name {
	case cmdDLQList:
		fs.StringVar(&c.sagaType, "saga", "", "saga `type` whose dead-letter topic to list, e.g. order (required)")
		fs.IntVar(&c.limit, "limit", 0, "print at most `N` records; 0 prints all")
	case cmdDLQRedrive:
		fs.StringVar(&c.sagaType, "saga", "", "saga `type` whose dead-letter topic to redrive, e.g. order (required)")
		fs.StringVar(&c.reason, "reason", "", "redrive only records dead-lettered for this `reason`; the others are moved to the end of the DLT for a later run")
		fs.BoolVar(&c.dryRun, "dry-run", false, "print what would be redriven; produce and commit nothing")
	case cmdSagaGet:
		fs.StringVar(&c.sagaType, "saga", "", "saga `type`, e.g. order (required)")
		fs.IntVar(&c.parts, "partitions", 0, "partition `count` of saga.TYPE.inbox, which places the saga's Redis key; read from Kafka when --kafka-brokers is set")
	default:
		return false
	}
	return true
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

// usage writes the help of command, or the general help when command is
// not one sagactl knows.
func usage(w io.Writer, command string) {
	switch command {
	case cmdDLQList:
		fmt.Fprint(w, `Usage: sagactl dlq list --saga TYPE [--limit N]

Reads saga.TYPE.inbox-dlt from the beginning up to the end offsets taken at start (read_committed)
and prints one line per dead-letter record: its partition/offset in the DLT, the original
topic/partition/offset, the saga id, the message type, the reason, the attempts, the last failure
and the error message (shortened). It exits when it reaches those end offsets.

Flags:
`)
	case cmdDLQRedrive:
		fmt.Fprint(w, `Usage: sagactl dlq redrive --saga TYPE [--reason R] [--dry-run]

Re-produces the original of each record of saga.TYPE.inbox-dlt (same key, value and headers,
without the dead-letter headers, plus ksaga-redrive-of: "<dlt-partition>:<dlt-offset>") to its
original topic and partition. Each batch is a Kafka transaction that also commits the DLT offsets
of the consumer group ksaga-sagactl-redrive-TYPE: a run continues where the previous one stopped,
and no DLT record is redriven twice. The run stops at the end offsets taken when it starts.

With --reason, records dead-lettered for another reason are skipped: each is copied, in the same
transaction, to the end of its DLT partition, where a later run finds it. Records that are not
dead-letter records at all are skipped for good. Try --dry-run first; it changes nothing.

Flags:
`)
	case cmdSagaGet:
		fmt.Fprint(w, `Usage: sagactl saga get --saga TYPE [--partitions N | --kafka-brokers B] ID

Prints the state of saga ID as the engine last wrote it to Redis (hash ksaga:{TYPE:P}:state:ID,
where P is the saga's home partition, fields version and state). Redis may lag Kafka by the last few transactions. Exits 1 if there is no such
saga.

Flags:
`)
	default:
		fmt.Fprint(w, `sagactl is the ksaga operator CLI.

Usage:
  sagactl [global flags] dlq list    --saga TYPE [--limit N]            list the dead-letter topic
  sagactl [global flags] dlq redrive --saga TYPE [--reason R] [--dry-run]
                                                                        re-produce dead letters
  sagactl [global flags] saga get    --saga TYPE ID                     print a saga's state
  sagactl help COMMAND                                                  help on one command

Global flags may also come after the command. The dlq commands need --kafka-brokers, saga get
needs --redis-addr; each can come from its environment variable instead, shown in brackets.
The --kafka-tls*, --kafka-sasl-*, --redis-username, --redis-password* and --redis-tls* flags
connect to a Kafka or Redis that wants TLS or a login; a refused login or certificate exits 1 at
once with one line that says what was refused.

Global flags:
`)
		fs := newFlagSet("sagactl")
		addGlobals(fs, &globals{timeout: defaultTimeout})
		printFlags(w, fs, false)
		fmt.Fprint(w, `
Exit status: 0 on success, 1 when the command failed (Kafka or Redis unreachable or refusing the
login, no such topic or saga), 2 for invalid flags or arguments.
`)
		return
	}
	fs := newFlagSet("sagactl " + command)
	defineCommandFlags(fs, command, &cmdFlags{})
	addGlobals(fs, &globals{timeout: defaultTimeout})
	printFlags(w, fs, true)
	fmt.Fprint(w, "\nThe connection flags (--kafka-tls*, --kafka-sasl-*, --redis-username, --redis-password*,\n--redis-tls*) are global flags too: sagactl -help lists them.\n")
}

// printFlags prints the flags of fs, each connection flag with its
// environment twin; skipConn leaves the connection flags out.
func printFlags(w io.Writer, fs *flag.FlagSet, skipConn bool) {
	isConn := make(map[string]bool)
	for _, name := range conn.FlagNames() {
		isConn[name] = true
	}
	fs.VisitAll(func(f *flag.Flag) {
		if isConn[f.Name] && skipConn {
			return
		}
		arg, help := flag.UnquoteUsage(f)
		if isConn[f.Name] {
			help += " [$" + conn.EnvName(f.Name) + "]"
		}
		line := "  --" + f.Name
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
