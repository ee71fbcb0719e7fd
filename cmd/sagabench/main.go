// Command sagabench measures the order saga's throughput, latency and
// memory, and compares the engine with a bare Kafka transaction loop on the
// same broker and Redis.
//
//	make bench                                  # go run ./cmd/sagabench
//	go run ./cmd/sagabench --sagas 2000         # a quick run
//	go run ./cmd/sagabench --sagas 0 --rss-sagas 1000000 --restart-sagas 100000
//
// In one run it starts an in-process Kafka (kfake) and a redis-server child
// on free ports (or uses --kafka-brokers and --redis-addr), builds sagad, and
// runs the engine (sagad --participants none) and the four reference
// participants (sagad --engine=false --participants all) as child processes.
// One order in ten carries a coupon (a code whose limit never runs out, a
// customer of its own), so it takes the saga's reserve-coupon step too.
// Then:
//
//  1. full speed: --sagas order sagas offered at once, with 0% and then 10%
//     business failures (payments declined: the amount is over the limit;
//     half of the coupon orders are among them, so their coupon is given
//     back);
//  2. fixed rate: the same at half the best full-speed rate (or --rate);
//  3. the bare loop: a kgo.GroupTransactSession loop that reads the inbox
//     records of those runs again and produces, per record, the engine's
//     measured mix of output records (count and size per topic), with one
//     pipelined Redis write per batch after each commit, and no saga logic;
//  4. optionally --rss-sagas sagas through one engine, reporting its memory
//     at the end, and --restart-sagas sagas in the state topic followed by a
//     SIGKILL of the engine and a restart, reporting how long until it is
//     ready and until a saga started after the kill completes.
//
// The engine restarts (SIGTERM) before each scenario, so its peak RSS
// (VmHWM) is that scenario's. It prints one table; the engine's figures come
// from its /metrics (transactions, inbox records, Redis round trips, kprom's
// produced records), saga latency from start request produced to terminal
// event read (read_committed) on saga.order.events.
//
// A run uses the topics saga.order.*, <participant>.commands and
// sagabench.bare.*, the consumer groups sagabench-order,
// ksaga-participant-<name> and sagabench-bare-<run>: point --kafka-brokers
// and --redis-addr at services of its own.
//
// Exit status: 0 after a run, 1 when it failed (a child process died, sagas
// stalled, a dependency is unreachable), 2 for invalid flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// config is sagabench's validated configuration.
type config struct {
	sagas int
	// rate is the offered rate of the fixed-rate scenarios; 0 means half
	// the best full-speed rate.
	rate              float64
	kafkaBrokers      []string // empty: in-process kfake
	redisAddr         string   // empty: a redis-server child
	partitions        int
	replicationFactor int
	maxPoll           int
	rssSagas          int
	rssInFlight       int
	restartSagas      int
	restartRate       float64
	restartStatic     bool
	profileDir        string
	profileSeconds    int
	binDir            string
	workDir           string
	stallTimeout      time.Duration
}

func newFlagSet(c *config, brokers, redisAddr *string) *flag.FlagSet {
	fs := flag.NewFlagSet("sagabench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.IntVar(&c.sagas, "sagas", 20_000, "order `sagas` per scenario; 0 skips the scenarios and the bare loop")
	fs.Float64Var(&c.rate, "rate", 0, "offered `rate` (sagas/s) of the fixed-rate scenarios (default: half the best full-speed rate)")
	fs.StringVar(brokers, "kafka-brokers", "", "Kafka seed `brokers` to use instead of an in-process kfake, comma-separated host:port")
	fs.StringVar(redisAddr, "redis-addr", "", "Redis `address` (host:port) to use instead of a redis-server child")
	fs.IntVar(&c.partitions, "partitions", 6, "`partitions` of the topics created")
	fs.IntVar(&c.replicationFactor, "replication-factor", 0, "replication `factor` of the topics created (default 1 with the in-process kfake, 3 with --kafka-brokers)")
	fs.IntVar(&c.maxPoll, "max-poll-records", 1000, "most inbox `records` per transaction, for the engine and the bare loop")
	fs.IntVar(&c.rssSagas, "rss-sagas", 0, "also run this many `sagas` through one engine and report its memory at the end (e.g. 1000000)")
	fs.IntVar(&c.rssInFlight, "rss-in-flight", 2000, "most `sagas` in flight during --rss-sagas")
	fs.IntVar(&c.restartSagas, "restart-sagas", 0, "also put this many `sagas` in the state topic, SIGKILL the engine, restart it and time its recovery (e.g. 100000)")
	fs.Float64Var(&c.restartRate, "restart-rate", 200, "offered `rate` (sagas/s) of the steady load across the --restart-sagas kill")
	fs.BoolVar(&c.restartStatic, "restart-static", true, "run the --restart-sagas engine with --static-membership; without it the killed engine keeps its partitions until its session times out (45s)")
	fs.StringVar(&c.profileDir, "profile-dir", "", "write CPU and allocation profiles of the engine, the participants and sagabench (with kfake), and an execution trace of the engine, during the first full-speed and the first fixed-rate scenario to this `directory`")
	fs.IntVar(&c.profileSeconds, "profile-seconds", 10, "`seconds` of CPU profile to take with --profile-dir")
	fs.StringVar(&c.binDir, "bin-dir", "", "`directory` holding a built sagad to use instead of building one")
	fs.StringVar(&c.workDir, "work-dir", "", "`directory` for the child processes' logs (default: a new temporary directory, removed after a successful run)")
	fs.DurationVar(&c.stallTimeout, "stall-timeout", time.Minute, "fail when no saga ends for this `long`")
	return fs
}

// parseFlags parses and validates the command line. It returns
// flag.ErrHelp for -h and -help; every other error says what to fix.
func parseFlags(args []string) (config, error) {
	var c config
	var brokers, redisAddr string
	fs := newFlagSet(&c, &brokers, &redisAddr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return c, err
		}
		return c, fmt.Errorf("%w (sagabench -help lists the flags)", err)
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q: sagabench takes flags only (sagabench -help lists them)", fs.Arg(0))
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	for _, b := range strings.Split(brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			c.kafkaBrokers = append(c.kafkaBrokers, b)
		}
	}
	c.redisAddr = strings.TrimSpace(redisAddr)
	switch {
	case set["kafka-brokers"] && len(c.kafkaBrokers) == 0:
		return c, errors.New("--kafka-brokers is empty: want host:port[,host:port…], or drop it to use an in-process kfake")
	case set["redis-addr"] && c.redisAddr == "":
		return c, errors.New("--redis-addr is empty: want host:port, or drop it to start a redis-server")
	case strings.Contains(c.redisAddr, ","):
		return c, fmt.Errorf("--redis-addr %q: want one host:port (the reference participants need a single Redis node)", c.redisAddr)
	}
	for _, a := range append([]string{c.redisAddr}, c.kafkaBrokers...) {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return c, fmt.Errorf("address %q: want host:port (%v)", a, err)
		}
	}

	switch {
	case c.sagas < 0:
		return c, fmt.Errorf("--sagas: must be 0 or more, got %d", c.sagas)
	case c.sagas > 0 && c.sagas < 10:
		return c, fmt.Errorf("--sagas %d is too few for a 10%% failure scenario: want 0 (skip the scenarios) or at least 10", c.sagas)
	case c.rate < 0:
		return c, fmt.Errorf("--rate: must be positive (or 0 for half the best full-speed rate), got %g", c.rate)
	case c.rate > 0 && c.sagas == 0:
		return c, errors.New("--rate applies to the scenarios, which --sagas 0 skips")
	case c.partitions < 1:
		return c, fmt.Errorf("--partitions: must be at least 1, got %d", c.partitions)
	case c.replicationFactor < 0 || c.replicationFactor > 32767:
		return c, fmt.Errorf("--replication-factor: must be between 1 and 32767, got %d", c.replicationFactor)
	case c.replicationFactor > 1 && len(c.kafkaBrokers) == 0:
		return c, fmt.Errorf("--replication-factor %d needs --kafka-brokers: the in-process kfake has one broker", c.replicationFactor)
	case c.maxPoll < 1:
		return c, fmt.Errorf("--max-poll-records: must be at least 1, got %d", c.maxPoll)
	case c.rssSagas < 0:
		return c, fmt.Errorf("--rss-sagas: must be 0 or more, got %d", c.rssSagas)
	case c.rssInFlight < 1:
		return c, fmt.Errorf("--rss-in-flight: must be at least 1, got %d", c.rssInFlight)
	case c.restartSagas < 0:
		return c, fmt.Errorf("--restart-sagas: must be 0 or more, got %d", c.restartSagas)
	case c.restartRate <= 0:
		return c, fmt.Errorf("--restart-rate: must be positive, got %g", c.restartRate)
	case c.profileSeconds < 1:
		return c, fmt.Errorf("--profile-seconds: must be at least 1, got %d", c.profileSeconds)
	case c.profileDir != "" && c.sagas == 0:
		return c, errors.New("--profile-dir profiles the scenarios, which --sagas 0 skips")
	case c.stallTimeout < time.Second:
		return c, fmt.Errorf("--stall-timeout %v is too short: want at least 1s", c.stallTimeout)
	case c.sagas == 0 && c.rssSagas == 0 && c.restartSagas == 0:
		return c, errors.New("nothing to do: --sagas 0 needs --rss-sagas or --restart-sagas")
	}
	if c.replicationFactor == 0 {
		c.replicationFactor = 1
		if len(c.kafkaBrokers) > 0 {
			c.replicationFactor = 3
		}
	}
	return c, nil
}

// run is sagabench without the process around it: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		usage(stdout)
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "sagabench: %v\n", err)
		return exitUsage
	}
	b := &bench{cfg: cfg, out: stdout, log: stderr}
	if err := b.run(ctx); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "sagabench: interrupted")
			return exitError
		}
		fmt.Fprintf(stderr, "sagabench: %v\n", err)
		return exitError
	}
	return exitOK
}

func usage(w io.Writer) {
	fmt.Fprint(w, `sagabench measures the order saga end to end (engine and participants as sagad processes) and a
bare Kafka transaction loop on the same broker and Redis, and prints one table.

Usage:
  sagabench [flags]

Flags:
`)
	var c config
	var s1, s2 string
	fs := newFlagSet(&c, &s1, &s2)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprint(w, `
Exit status: 0 after a run, 1 when the run failed, 2 for invalid flags.
`)
}
