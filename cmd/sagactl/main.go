// Command sagactl is the ksaga operator CLI: it lists, shows and redrives a
// saga type's dead letters, lists and shows sagas and asks one to
// compensate or resume, and lists what operators did. It is a command line
// over package ops, which a console or a user's program calls to act
// exactly as sagactl does.
//
//	sagactl dlq list        --saga order [--reason R] [--saga-id ID] [--since 2h] [--until T] [--state S] [--limit N]
//	sagactl dlq show        --saga order PARTITION:OFFSET
//	sagactl dlq redrive     --saga order --note WHY [filters] [--limit N] [--rate 50/s] [--dry-run] [--yes] [--as WHO]
//	sagactl saga get        --saga order ID
//	sagactl saga list       --saga order [--stuck] [--older-than 10m] [--status S] [--limit N]
//	sagactl saga compensate --saga order ID --note WHY [--dry-run] [--yes] [--as WHO]
//	sagactl saga resume     --saga order ID --note WHY [--dry-run] [--yes] [--as WHO]
//	sagactl audit list      --saga order [--action A] [--since 2h]
//	sagactl version
//	sagactl completion bash|zsh|fish|powershell
//
// The command line is github.com/spf13/cobra's, as kubectl's, helm's and
// the temporal CLI's: each command's --help is generated from its
// definition, and "sagactl completion SHELL" prints a completion script
// that completes commands, flags, the enumerated values of --reason
// (orchestrator.DeadLetterReasons), --state, --status, --action and -o,
// and --saga with the saga types whose saga.<type>.inbox the brokers have
// (asked for at most 2s: no brokers, no completion). Flags given with one
// dash (-saga order), as Go's flag package took them, still work.
//
// Every command takes -o table (the default), -o json or -o yaml. Data goes
// to stdout alone; summaries, notes, prompts, the progress bar and errors go
// to stderr, so "sagactl ... -o json | jq" always parses.
//
// dlq list reads saga.<type>.inbox-dlt from the beginning up to the end
// offsets taken when it starts (read_committed), and the redrive history on
// saga.<type>.audit. It prints one row per original record: a record that
// was redriven and dead-lettered again (its dead letter carries
// ksaga-redrive-of, copied from the redriven record) is one row with its
// dead letters and redrives counted, not one pending row per dead letter.
//
// dlq redrive re-produces the original of each matching dead-letter record
// that was never redriven (the same key, value and headers, without the
// dead-letter headers, plus ksaga-redrive-of: "<dlt-partition>:<dlt-offset>")
// to its original topic and partition. Each transaction also writes an audit
// record to saga.<type>.audit that names the DLT offsets it redrives, who
// (--as or $USER) and why (--note): the records and the audit commit
// together, and a later run skips every offset the audit names. Runs share
// the transactional id ksaga-sagactl-redrive-<type>, so a run fences every
// earlier one before it reads the audit: two runs never redrive one record.
// (sagactl before the audit topic committed its progress as the offsets of
// the consumer group of that name; the records below them count as
// redriven.) It asks for confirmation on a terminal, unless --yes, which is
// required when stdin is not a terminal. --dry-run changes nothing.
//
// saga get prints the saga's state as the engine last wrote it to Redis
// (hash ksaga:{<type>:<partition>}:state:<id>, fields version and state);
// its table has a DEF-VERSION column, the version of the saga's definition
// (state field definition_version; missing or 0 is 1; VERSION is the
// state's own), and a STEP-NAME column (step_name) when the state has them.
// Redis is a view that may lag Kafka by the last few transactions. saga list
// scans those keys; --stuck keeps the sagas that have not ended and have not
// changed for --older-than (default 10m). saga compensate reads the saga
// from the Redis view first and refuses (exit status 1, nothing sent) a
// saga the view does not have or that is not running; otherwise it sends
// the documented Compensate message to the saga's home partition and its
// audit record, in one transaction (package audit, which the HTTP API uses
// too); --dry-run prints them and sends nothing. --as (default $USER) is a
// name (audit.NameRule), not free text.
//
// Global flags, accepted before or after the command: --kafka-brokers
// (KSAGA_KAFKA_BROKERS; required by the dlq, audit, compensate and resume
// commands), --redis-addr (KSAGA_REDIS_ADDR; required by saga get, saga
// list, compensate and resume) and --timeout, how long to wait for Kafka or
// Redis to answer the first request (default 10s); and the connection
// flags of package conn, each with its KSAGA_* twin (conn.EnvName): --kafka-tls, --kafka-tls-ca, --kafka-tls-cert,
// --kafka-tls-key, --kafka-tls-server-name, --kafka-sasl-mechanism,
// --kafka-sasl-username, --kafka-sasl-password, --kafka-sasl-password-file,
// --redis-username, --redis-password, --redis-password-file, --redis-tls,
// --redis-tls-ca, --redis-tls-cert, --redis-tls-key, --redis-tls-server-name.
// A flag wins over its twin. What conn finds allowed but risky (SASL or a
// Redis password without TLS) is printed to stderr as "sagactl: warning:
// ...". A refused login, a missing ACL or a certificate that does not
// verify stops the command at once with one line on stderr that says what
// to check, and exit status 1.
//
// Exit status: 0 on success; 1 when the work failed (unreachable broker,
// refused login, a missing topic, saga or record, a confirmation answered
// no); 2 for invalid flags or arguments (a connection flag naming a file
// that cannot be read included, and a change without --yes when stdin is
// not a terminal).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/conn"
	"github.com/ksaga/ksaga/ops"
)

func main() {
	// go-redis logs every failed dial to stderr; sagactl reports the
	// error once, with what to check.
	redis.SetLogger(quietLogger{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runStreams(ctx, os.Args[1:], os.Getenv, osStreams())
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed: Kafka or Redis unreachable, no such topic or saga, not confirmed
	exitUsage = 2 // invalid flags or arguments
)

// defaultTimeout bounds the first request to Kafka or Redis, so that an
// unreachable address fails fast instead of retrying forever.
const defaultTimeout = 10 * time.Second

// run is runStreams with an empty stdin that is not a terminal.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	return runStreams(ctx, args, getenv, streams{in: strings.NewReader(""), out: stdout, errw: stderr})
}

// runStreams is sagactl without the process around it: it returns the exit
// code. Cancelling ctx stops the command; a redrive aborts its open
// transaction.
func runStreams(ctx context.Context, args []string, getenv func(string) string, st streams) int {
	c := &cli{getenv: getenv, st: st}
	c.exec = func(ctx context.Context, inv invocation) error { return c.run(ctx, inv) }
	err := c.execute(ctx, args)
	if err == nil {
		return exitOK
	}
	if re, ok := errors.AsType[*runError](err); ok {
		fmt.Fprintf(st.errw, "sagactl %s: %v\n", re.command, explain(re.err))
		return exitError
	}
	fmt.Fprintf(st.errw, "sagactl: %v\n", err)
	return exitUsage
}

// run runs the valid invocation inv. An error of the command line is
// returned as it is (exit status 2), an error of the work as a *runError.
func (c *cli) run(ctx context.Context, inv invocation) error {
	st := c.st
	if inv.confirms && !inv.yes && !st.inTerminal {
		hint := ""
		if inv.command == cmdDLQRedrive {
			hint = " (--dry-run shows what it would do)"
		}
		return &usageError{fmt.Errorf("%s: stdin is not a terminal, so sagactl cannot ask for confirmation: pass --yes to go ahead without asking%s",
			inv.command, hint)}
	}
	for _, w := range inv.warnings {
		fmt.Fprintf(st.errw, "sagactl: warning: %s\n", w)
	}
	var err error
	switch inv.command {
	case cmdDLQList:
		_, err = listDLQ(ctx, inv.brokers, st, inv.list)
	case cmdDLQShow:
		_, err = showDLQ(ctx, inv.brokers, st, inv.show)
	case cmdDLQRedrive:
		_, err = redriveDLQ(ctx, inv.brokers, st, inv.redrive)
	case cmdSagaCompensate, cmdSagaResume:
		err = withRedis(inv, func(rdb redis.UniversalClient) error {
			_, err := compensateSaga(ctx, inv.brokers, rdb, st, inv.compensate)
			return err
		})
	case cmdAuditList:
		_, err = listAudit(ctx, inv.brokers, st, inv.auditList)
	case cmdSagaGet:
		if inv.get.partitions == 0 {
			if inv.get.partitions, err = inboxPartitions(ctx, inv.brokers, inv.kafka, inv.get.sagaType, inv.get.timeout); err != nil {
				break
			}
		}
		err = withRedis(inv, func(rdb redis.UniversalClient) error { return getSaga(ctx, rdb, st.out, inv.get) })
	case cmdSagaList:
		err = withRedis(inv, func(rdb redis.UniversalClient) error {
			_, err := listSagas(ctx, rdb, st, inv.sagaList)
			return err
		})
	}
	if err != nil {
		return &runError{command: inv.command, err: err}
	}
	return nil
}

// withRedis runs fn with a client of the Redis of inv, and closes it.
func withRedis(inv invocation, fn func(redis.UniversalClient) error) error {
	opts := &redis.UniversalOptions{
		Addrs:       inv.redisAddrs,
		DialTimeout: inv.timeout,
		// Let the request's context bound reads and writes too, so
		// that --timeout holds for a Redis that accepts and is silent.
		ContextTimeoutEnabled: true,
	}
	if err := inv.redis.Apply(opts); err != nil {
		return err
	}
	rdb := redis.NewUniversalClient(opts)
	err := fn(rdb)
	if cerr := rdb.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close redis client: %w", cerr)
	}
	return err
}

// refusedError is an error of service that conn.IsAuthError recognises:
// a refused login, a missing ACL, a certificate that does not verify. Its
// message says which flags to check. sagactl stops at the first one:
// retrying would not help.
type refusedError struct {
	service string // "Kafka" or "Redis"
	err     error
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("%v (%s)", e.err, refusedHints[e.service][conn.KindOf(e.err)])
}

// refusedHints say what to check, by service and kind of refusal.
var refusedHints = map[string]map[conn.Kind]string{
	"Kafka": {
		conn.KindLogin:       "check --kafka-sasl-mechanism, --kafka-sasl-username and --kafka-sasl-password",
		conn.KindPermission:  "the user logged in but lacks a Kafka ACL for this: check --kafka-sasl-username, or ask for the ACL",
		conn.KindCertificate: "check --kafka-tls-ca, --kafka-tls-server-name, --kafka-tls-cert and --kafka-tls-key",
		conn.KindMismatch:    "check --kafka-tls and --kafka-sasl-mechanism against what the listener wants",
	},
	"Redis": {
		conn.KindLogin:       "check --redis-username and --redis-password",
		conn.KindPermission:  "the user logged in but its ACL rules forbid this command: check --redis-username, or its ACL rules",
		conn.KindCertificate: "check --redis-tls-ca, --redis-tls-server-name, --redis-tls-cert and --redis-tls-key",
		conn.KindMismatch:    "check --redis-tls against what the server wants",
	},
}

func (e *refusedError) Unwrap() error { return e.err }

// quietLogger drops go-redis's internal log lines.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// explain adds to err what the operator should check: for an error of
// the first request to Kafka or Redis (ops.ConnError), which flags; for a
// refused login, missing ACL or certificate that does not verify, which
// connection flags (refusedError).
func explain(err error) error {
	ce, first := errors.AsType[*ops.ConnError](err)
	switch {
	case conn.IsAuthError(err) && first:
		return &refusedError{service: ce.Service, err: err}
	case conn.IsAuthError(err):
		// Not a first request: a dlq command's later request, to Kafka.
		return &refusedError{service: "Kafka", err: err}
	case first:
		flagName := map[string]string{"Kafka": "kafka-brokers", "Redis": "redis-addr"}[ce.Service]
		return fmt.Errorf("%w (check --%s and that %s is up)", err, flagName, ce.Service)
	}
	return err
}
