// Command sagactl is the ksaga operator CLI: it lists and redrives a saga
// type's dead-letter topic and shows a saga's state.
//
//	sagactl dlq list    --saga order [--limit N]
//	sagactl dlq redrive --saga order [--reason R] [--dry-run]
//	sagactl saga get    --saga order ID
//
// dlq list reads saga.<type>.inbox-dlt from the beginning up to the end
// offsets taken when it starts (read_committed) and prints one line per
// dead-letter record: where it is in the DLT, where it came from, its saga
// id, message type, dead-letter reason, attempts, last failure and error.
//
// dlq redrive re-produces the original of each dead-letter record (the same
// key, value and headers, without the dead-letter headers, plus
// ksaga-redrive-of: "<dlt-partition>:<dlt-offset>") to its original topic and
// partition. Each batch is one Kafka transaction that also commits the DLT
// offsets of the consumer group ksaga-sagactl-redrive-<type>, so a run picks
// up where the previous one stopped and no DLT record is redriven twice. A
// run stops at the end offsets taken when it starts. With --reason it
// redrives only the records dead-lettered for that reason; each of the others
// is copied, in the same transaction, to the end of its DLT partition, so a
// later run still finds it. --dry-run prints what a run would do and changes
// nothing.
//
// saga get prints the saga's state as the engine last wrote it to Redis
// (hash ksaga:<type>:state:<id>, fields version and state). Redis is a view
// that may lag Kafka by the last few transactions.
//
// Global flags, accepted before or after the command: --kafka-brokers
// (KSAGA_KAFKA_BROKERS; required by the dlq commands), --redis-addr
// (KSAGA_REDIS_ADDR; required by saga get) and --timeout, how long to wait
// for Kafka or Redis to answer the first request (default 10s); and the
// connection flags of package conn, each with its KSAGA_* twin: --kafka-tls,
// --kafka-tls-ca, --kafka-tls-cert, --kafka-tls-key, --kafka-tls-server-name,
// --kafka-sasl-mechanism, --kafka-sasl-username, --kafka-sasl-password,
// --kafka-sasl-password-file, --redis-username, --redis-password,
// --redis-password-file, --redis-tls, --redis-tls-ca, --redis-tls-cert,
// --redis-tls-key, --redis-tls-server-name. A flag wins over its twin. What
// conn finds allowed but risky (SASL or a Redis password without TLS) is
// printed to stderr as "sagactl: warning: ...". A refused login, a missing
// ACL or a certificate that does not verify stops the command at once with
// one line on stderr that says what to check, and exit status 1.
//
// Exit status: 0 on success, 1 when the work failed (unreachable broker,
// refused login, a missing topic or saga), 2 for invalid flags or
// arguments (a connection flag naming a file that cannot be read
// included).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/conn"
)

func main() {
	// go-redis logs every failed dial to stderr; sagactl reports the
	// error once, with what to check.
	redis.SetLogger(quietLogger{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the command failed: Kafka or Redis unreachable, no such topic or saga
	exitUsage = 2 // invalid flags or arguments
)

// defaultTimeout bounds the first request to Kafka or Redis, so that an
// unreachable address fails fast instead of retrying forever.
const defaultTimeout = 10 * time.Second

// run is sagactl without the process around it: it returns the exit code.
// Cancelling ctx stops the command; a redrive aborts its open transaction.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	inv, err := parseArgs(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		usage(stdout, inv.command)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "sagactl: %v\n", err)
		return exitUsage
	}
	for _, w := range inv.warnings {
		fmt.Fprintf(stderr, "sagactl: warning: %s\n", w)
	}
	switch inv.command {
	case cmdDLQList:
		_, err = listDLQ(ctx, inv.brokers, stdout, inv.list)
	case cmdDLQRedrive:
		_, err = redriveDLQ(ctx, inv.brokers, stdout, inv.redrive)
	case cmdSagaGet:
		if inv.get.partitions == 0 {
			if inv.get.partitions, err = inboxPartitions(ctx, inv.brokers, inv.kafka, inv.get.sagaType, inv.get.timeout); err != nil {
				break
			}
		}
		opts := &redis.UniversalOptions{
			Addrs:       inv.redisAddrs,
			DialTimeout: inv.get.timeout,
			// Let the request's context bound reads and writes too, so
			// that --timeout holds for a Redis that accepts and is silent.
			ContextTimeoutEnabled: true,
		}
		if err = inv.redis.Apply(opts); err != nil {
			break
		}
		rdb := redis.NewUniversalClient(opts)
		err = getSaga(ctx, rdb, stdout, inv.get)
		if cerr := rdb.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close redis client: %w", cerr)
		}
	}
	if err != nil {
		if _, hinted := errors.AsType[*refusedError](err); conn.IsAuthError(err) && !hinted {
			// Not a first request: a dlq command's later request, to Kafka.
			err = &refusedError{service: "Kafka", err: err}
		}
		fmt.Fprintf(stderr, "sagactl %s: %v\n", inv.command, err)
		return exitError
	}
	return exitOK
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

// firstRequestError explains an error of the first request to a service at
// addrs: it almost always means a wrong address or a service that is down,
// and the operator should learn which flag to check.
func firstRequestError(ctx context.Context, service string, addrs []string, flagName string, timeout time.Duration, err error) error {
	if ctx.Err() != nil {
		return err
	}
	if conn.IsAuthError(err) {
		return &refusedError{service: service, err: fmt.Errorf("%s at %s: %w", service, strings.Join(addrs, ","), err)}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s at %s did not answer within %s: check --%s and that %s is up: %w",
			service, strings.Join(addrs, ","), timeout, flagName, service, err)
	}
	return fmt.Errorf("%s at %s: %w (check --%s and that %s is up)", service, strings.Join(addrs, ","), err, flagName, service)
}
