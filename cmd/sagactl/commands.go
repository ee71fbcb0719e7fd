package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// cli is one run of sagactl: its command tree, its streams and what the
// command line asked for.
type cli struct {
	getenv func(string) string
	st     streams
	g      globals
	// exec runs a valid invocation; nil only parses and validates
	// (parseArgs).
	exec func(ctx context.Context, inv invocation) error
	// inv is the invocation of the leaf command that ran; helped is set
	// when a help text was printed instead.
	inv    invocation
	helped bool
}

// usageError is an error of the command line: exit status 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// runError is an error of a command that ran: exit status 1.
type runError struct {
	command string
	err     error
}

func (e *runError) Error() string { return fmt.Sprintf("%s: %v", e.command, e.err) }
func (e *runError) Unwrap() error { return e.err }

// command describes one leaf command of sagactl: the help and flags
// cobra generates its parsing, help and completion from.
type command struct {
	name  string // e.g. "dlq list"
	use   string // after the name: arguments and the flags that matter
	short string
	long  string
	flags func(fs *pflag.FlagSet, c *cmdFlags)
}

// dlqFilters defines the flags that select dead letters.
func dlqFilters(what string) func(fs *pflag.FlagSet, c *cmdFlags) {
	return func(fs *pflag.FlagSet, c *cmdFlags) {
		fs.StringVar(&c.reason, "reason", "", what+" only records dead-lettered for this `reason`, e.g. retries-exhausted")
		fs.StringVar(&c.sagaID, "saga-id", "", what+" only the records of this saga `id` (the record key)")
		fs.StringVar(&c.since, "since", "", what+" only records dead-lettered at or after `when`: a duration ago (90m, 2h, 3d) or a time (RFC 3339, or 2006-01-02)")
		fs.StringVar(&c.until, "until", "", what+" only records dead-lettered before `when`, as for --since")
	}
}

// whoFlags defines the flags of a command that changes something.
func whoFlags(fs *pflag.FlagSet, c *cmdFlags) {
	fs.StringVar(&c.note, "note", "", "why, in `text`, for the audit record (required)")
	fs.StringVar(&c.as, "as", "", "who (a `name`: letters, digits, . _ @ -), for the audit record (default $USER)")
	fs.BoolVar(&c.yes, "yes", false, "do not ask for confirmation (required when stdin is not a terminal)")
}

// groups are the first words of the commands, with what they are about.
var groups = []struct{ name, short string }{
	{"dlq", "list, show and redrive a saga type's dead letters"},
	{"saga", "read sagas from the Redis view; compensate or resume one"},
	{"audit", "list what operators did"},
}

// commands are sagactl's leaf commands, in the order of the help.
var commands = []command{
	{
		name: cmdDLQList, use: "--saga TYPE [flags]", short: "list the dead-letter topic",
		long: `Reads saga.TYPE.inbox-dlt from the beginning up to the end offsets taken at start (read_committed)
and the redrive history on saga.TYPE.audit, and prints one row per original record, oldest first:
a record redriven and dead-lettered again is one row (its newest dead letter, at DLT), with
DEAD-LETTERED the number of its dead letters and REDRIVES the number of its redrives. STATE is
pending (never redriven), redriven (sent back to the inbox; if it fails again, its next dead letter
becomes the row) or invalid (not a dead-letter record). -o json prints an array with every field:
the history in "redrives" (who, when, why, which run), the earlier dead letters in "earlier".
The summary goes to stderr.`,
		flags: func(fs *pflag.FlagSet, c *cmdFlags) {
			dlqFilters("list")(fs, c)
			fs.StringVar(&c.state, "state", "", "list only records in this `state`: pending, redriven or invalid")
			fs.IntVar(&c.limit, "limit", 0, "print at most `N` records, oldest first; 0 prints all")
		},
	},
	{
		name: cmdDLQShow, use: "--saga TYPE PARTITION:OFFSET [flags]", short: "one dead letter, decoded",
		long: `Prints one record of saga.TYPE.inbox-dlt (as dlq list names it, e.g. 0:42): where it came from,
why it was dead-lettered, its redrives (from saga.TYPE.audit), its headers decoded (Spring's
kafka_dlt-original-partition as an int32, -offset and -timestamp as int64, big-endian), its key
and its value (base64 when not UTF-8 text).`,
	},
	{
		name: cmdDLQRedrive, use: "--saga TYPE --note WHY [flags]", short: "re-produce dead letters, audited",
		long: `Re-produces the original of each matching record of saga.TYPE.inbox-dlt that was never redriven
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
transaction; what was committed before stays committed and audited.`,
		flags: func(fs *pflag.FlagSet, c *cmdFlags) {
			dlqFilters("redrive")(fs, c)
			fs.IntVar(&c.limit, "limit", 0, "redrive at most `N` records, oldest first; 0 redrives all that match")
			fs.IntVar(&c.maxRedrives, "max-redrives", defaultMaxRedrives, "skip a record whose original was redriven `N` times already, failing each time; 0: no limit")
			fs.StringVar(&c.rate, "rate", "", "redrive at most `R` records per second: 50 or 50/s (or 600/m, 100/h); default: no limit")
			fs.BoolVar(&c.dryRun, "dry-run", false, "print what would be redriven; produce and commit nothing")
			whoFlags(fs, c)
		},
	},
	{
		name: cmdSagaGet, use: "--saga TYPE [--partitions N | --kafka-brokers B] ID [flags]", short: "a saga's state",
		long: `Prints the state of saga ID as the engine last wrote it to Redis (hash ksaga:{TYPE:P}:state:ID,
where P is the saga's home partition): -o table a summary row (with the version of the saga's
definition and the current step's name when the state has them), -o json and -o yaml the whole
state (waiting, attempt, deadline_ms, undone, data, trace...). Redis may lag Kafka by the last few
transactions. Exits 1 if there is no such saga.`,
		flags: func(fs *pflag.FlagSet, c *cmdFlags) {
			fs.IntVar(&c.parts, "partitions", 0, "partition `count` of saga.TYPE.inbox, which places the saga's Redis key; read from Kafka when --kafka-brokers is set")
		},
	},
	{
		name: cmdSagaList, use: "--saga TYPE [--stuck] [--older-than D] [flags]", short: "sagas in Redis, e.g. stuck ones",
		long: `Scans the Redis view (keys ksaga:{TYPE:*}:state:*, on every primary of a Redis Cluster) and prints
the sagas that match, the longest unchanged first. --stuck keeps the sagas that have not ended
(running or compensating) and whose updated_at is older than --older-than (default 10m): the
stuck-saga sweep of the KsagaSagaStuck runbook. Needs --redis-addr only.`,
		flags: func(fs *pflag.FlagSet, c *cmdFlags) {
			fs.BoolVar(&c.stuck, "stuck", false, "list only sagas that have not ended (running or compensating) and have not changed for --older-than (default 10m)")
			fs.DurationVar(&c.olderThan, "older-than", 0, "list only sagas whose updated_at is older than this `duration`, e.g. 10m")
			fs.StringVar(&c.status, "status", "", "list only sagas of this `status`: running, compensating, parked, completed, compensated or failed")
			fs.IntVar(&c.limit, "limit", 0, "print at most `N` sagas, the longest unchanged first; 0 prints all")
		},
	},
	{
		name: cmdSagaCompensate, use: "--saga TYPE ID --note WHY [flags]", short: "ask a saga to compensate, audited",
		long: `Reads saga ID from the Redis view first: a saga the view does not have (a wrong id, or one whose
start request is not handled yet) or that is not running (it has ended, or is compensating
already) is refused with exit status 1, and nothing is sent. Otherwise sends the documented
Compensate message (with --note as its reason) to the saga's home partition of saga.TYPE.inbox:
the saga stops and undoes its completed steps, last first; and, in the same Kafka transaction, an
audit record (who, why, when) to saga.TYPE.audit, as the HTTP API does for its compensations.
--dry-run checks the saga and prints both without sending them. --as (default $USER) is a name:
letters, digits and . _ @ -. Asks for confirmation as dlq redrive does. Needs --kafka-brokers and
--redis-addr.`,
		flags: compensateFlags,
	},
	{
		name: cmdSagaResume, use: "--saga TYPE ID --note WHY [flags]", short: "resume a parked saga, audited",
		long: `Resumes a parked saga: one whose step (declared with saga.Step.Park) ran out of attempts and
that waits for an operator instead of compensating. Reads saga ID from the Redis view first: a
saga that is not there or not parked is refused with exit status 1, and nothing is sent. Otherwise
sends a Resume message (with --note as its reason) to the saga's home partition of
saga.TYPE.inbox: the engine runs the step again, or sends its command again with fresh attempts
and the same message id; and, in the same Kafka transaction, an audit record to saga.TYPE.audit.
To give up on a parked saga instead, use saga compensate. --dry-run, --as and the confirmation
work as in saga compensate. Needs --kafka-brokers and --redis-addr.`,
		flags: compensateFlags,
	},
	{
		name: cmdAuditList, use: "--saga TYPE [flags]", short: "what operators did",
		long: `Prints the audit records of saga.TYPE.audit, oldest first: every dlq redrive transaction (the DLT
offsets it redrove), every saga compensate and saga resume, with who, when and why. The summary on
stderr counts the redrives.`,
		flags: func(fs *pflag.FlagSet, c *cmdFlags) {
			fs.StringVar(&c.action, "action", "", "list only records of this `action`: dlq-redrive, saga-compensate or saga-resume")
			fs.StringVar(&c.since, "since", "", "list only records at or after `when`: a duration ago (90m, 2h, 3d) or a time")
			fs.StringVar(&c.until, "until", "", "list only records before `when`, as for --since")
			fs.IntVar(&c.limit, "limit", 0, "print at most `N` records, oldest first; 0 prints all")
		},
	},
}

func compensateFlags(fs *pflag.FlagSet, c *cmdFlags) {
	fs.BoolVar(&c.dryRun, "dry-run", false, "check the saga and print the message and audit record that would be sent; send nothing")
	whoFlags(fs, c)
}

// rootLong is the general help's introduction.
const rootLong = `sagactl is the ksaga operator CLI: it lists, shows and redrives a saga type's dead letters, lists
and shows sagas and asks one to compensate or resume, and lists what operators did.

Every command takes -o table|json|yaml: json and yaml print the data alone on stdout (progress,
prompts, summaries and errors go to stderr), so "sagactl ... -o json | jq" works.

Global flags may also come after the command. The dlq, audit, saga compensate and saga resume
commands need --kafka-brokers; saga get, saga list, saga compensate and saga resume --redis-addr;
each can come from its environment variable instead, shown in brackets. The --kafka-tls*,
--kafka-sasl-*, --redis-username, --redis-password* and --redis-tls* flags connect to a Kafka or
Redis that wants TLS or a login; a refused login or certificate exits 1 at once with one line that
says what was refused.

Shell completion (commands, flags, saga types from the brokers' saga.*.inbox topics, dead-letter
reasons): sagactl completion bash|zsh|fish|powershell --help says how to install it.`

func init() {
	// Help lists the commands in the order of commands.
	cobra.EnableCommandSorting = false
}

// newRoot returns sagactl's command tree, whose commands run with c.
func (c *cli) newRoot() *cobra.Command {
	c.g = globals{timeout: defaultTimeout}
	root := &cobra.Command{
		Use:   "sagactl COMMAND",
		Short: "the ksaga operator CLI",
		Long:  rootLong,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			hint := ""
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				hint = ", did you mean " + strings.Join(s, " or ") + "?"
			}
			return &usageError{fmt.Errorf("unknown command %q: want one of %s%s (sagactl --help shows usage)", args[0], strings.Join(commandNames(), ", "), hint)}
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return &usageError{fmt.Errorf("missing command: want one of %s (sagactl --help shows usage)", strings.Join(commandNames(), ", "))}
		},
		SilenceErrors:              true,
		SilenceUsage:               true,
		SuggestionsMinimumDistance: 2,
		// The completion command's own help says how to install it.
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: false},
	}
	root.PersistentFlags().SortFlags = false
	addGlobals(root.PersistentFlags(), &c.g)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{fmt.Errorf("%s: %w (%s -help lists the flags)", strings.TrimPrefix(cmd.CommandPath(), "sagactl "), err, cmd.CommandPath())}
	})
	root.SetHelpFunc(func(cmd *cobra.Command, _ []string) {
		c.helped = true
		writeHelp(cmd.OutOrStdout(), cmd)
	})
	registerGlobalCompletions(root, c)

	for _, grp := range groups {
		g := &cobra.Command{
			Use:   grp.name + " COMMAND",
			Short: grp.short,
			Long:  "sagactl is the ksaga operator CLI; its " + grp.name + " commands " + grp.short + ".",
			RunE: func(cmd *cobra.Command, args []string) error {
				subs := subcommands(cmd)
				if len(args) == 0 {
					return &usageError{fmt.Errorf("%s: missing subcommand: want one of %s (sagactl --help shows usage)", cmd.Name(), subs)}
				}
				return &usageError{fmt.Errorf("%s: unknown subcommand %q: want one of %s (sagactl --help shows usage)", cmd.Name(), args[0], subs)}
			},
		}
		root.AddCommand(g)
		for _, def := range commands {
			group, sub, _ := strings.Cut(def.name, " ")
			if group != grp.name {
				continue
			}
			g.AddCommand(c.newLeaf(def, sub))
		}
	}
	root.AddCommand(c.newVersion())
	return root
}

// newLeaf returns the cobra command of def.
func (c *cli) newLeaf(def command, sub string) *cobra.Command {
	var cf cmdFlags
	cmd := &cobra.Command{
		Use:   sub + " " + def.use,
		Short: def.short,
		Long:  def.long,
		RunE: func(cmd *cobra.Command, args []string) error {
			set, err := applyEnv(cmd, c.getenv)
			if err != nil {
				return &usageError{err}
			}
			inv, err := validate(def.name, cf, c.g, set, args, c.getenv)
			if err != nil {
				return &usageError{err}
			}
			c.inv = inv
			if c.exec == nil {
				return nil
			}
			return c.exec(cmd.Context(), inv)
		},
		ValidArgsFunction: cobra.NoFileCompletions,
	}
	fs := cmd.Flags()
	fs.SortFlags = false
	fs.StringVar(&cf.sagaType, "saga", "", "saga `type`, e.g. order (required)")
	if def.flags != nil {
		def.flags(fs, &cf)
	}
	fs.StringVarP(&cf.output, "output", "o", outTable, "output `format`: table, json or yaml; json and yaml print the data alone on stdout")
	registerCompletions(cmd, c)
	return cmd
}

// commandNames returns the names of the leaf commands.
func commandNames() []string {
	out := make([]string, len(commands))
	for i, def := range commands {
		out[i] = def.name
	}
	return out
}

// isGroup reports whether name is the first word of commands.
func isGroup(name string) bool {
	return slices.ContainsFunc(groups, func(g struct{ name, short string }) bool { return g.name == name })
}

// subcommands lists the names of cmd's subcommands: "list, show, redrive".
func subcommands(cmd *cobra.Command) string {
	var out []string
	for _, def := range commands {
		if g, sub, _ := strings.Cut(def.name, " "); g == cmd.Name() {
			out = append(out, sub)
		}
	}
	return strings.Join(out, ", ")
}

// normalizeArgs rewrites the flags of args given with one dash (-saga
// order, -help), as Go's flag package and sagactl before cobra took them,
// to two: pflag reads -saga as -s -a -g -a. It leaves one-letter flags
// (-o, -h) and everything after "--" alone.
func normalizeArgs(root *cobra.Command, args []string) []string {
	long := map[string]bool{"help": true}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) { long[f.Name] = true })
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) { long[f.Name] = true })
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	out := slices.Clone(args)
	for i, a := range out {
		if a == "--" {
			break
		}
		if len(a) < 3 || a[0] != '-' || a[1] == '-' {
			continue
		}
		name, _, _ := strings.Cut(a[1:], "=")
		if long[name] {
			out[i] = "-" + a
		}
	}
	return out
}

// execute runs the command line args through the tree of c.
func (c *cli) execute(ctx context.Context, args []string) error {
	root := c.newRoot()
	root.SetArgs(normalizeArgs(root, args))
	root.SetIn(c.st.in)
	root.SetOut(c.st.out)
	root.SetErr(c.st.errw)
	return root.ExecuteContext(ctx)
}

// parseArgs parses and validates sagactl's command line as runStreams
// does, and runs nothing. It returns flag.ErrHelp when a help text was
// asked for.
func parseArgs(args []string, getenv func(string) string) (invocation, error) {
	c := &cli{getenv: getenv, st: streams{in: strings.NewReader(""), out: io.Discard, errw: io.Discard}}
	err := c.execute(context.Background(), args)
	if c.helped && err == nil {
		return c.inv, flag.ErrHelp
	}
	var ue *usageError
	if errors.As(err, &ue) {
		return c.inv, ue.err
	}
	return c.inv, err
}
