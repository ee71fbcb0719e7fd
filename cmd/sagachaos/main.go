// Command sagachaos proves the order saga exactly-once under crashes,
// outages and bad input, on one machine and without Docker. It runs kfaked
// (a kfake broker in its own process, with a data directory so that it can be
// restarted), three redis-servers (the engine's state view, the
// participants' ledgers, the orders store), two sagad engines in one
// consumer group and one sagad running the reference participants, each as
// a process of its own. It sends a load of orders with a known mix
// (completes, declines, out of stock, undeliverable, duplicate starts,
// duplicate replies, operator Compensates, large orders, poison records)
// through five partitioners (murmur2 as ksaga hashes, and CRC32, FNV-1a,
// random and round-robin as other clients do), injects faults on a schedule
// it logs (SIGKILL, crash-loops, SIGSTOP past the transaction timeout, Redis
// FLUSHALL, restarts and rollbacks to an older snapshot, rollbacks aimed at
// the engines' batch reads, keys deleted and evicted, a Redis that hangs
// past the transaction timeout, broker restarts, broker-injected errors, an
// orders-store outage, a hung and a panicking local step, a coupon
// participant silent until orders park, which are then resumed or
// compensated as an operator would), waits until every
// saga has ended and past the step deadlines, and runs chaos/check on the
// result. Some faults check as they run (a Redis hang must not stop an
// engine, and sagas must end again soon after it), and count how often they
// hit the window they aim at, from the engines' logs.
//
//	go run ./cmd/sagachaos --short     # CI: 2,000 sagas, one or two faults of each kind
//	go run ./cmd/sagachaos             # make chaos: 100,000 sagas, 20 faults of each kind
//	go run ./cmd/sagachaos --short --retention 30s   # ended sagas are deleted during the run
//
// It exits 0 only when every saga ended, the checker found no anomaly and no
// process crashed. The work directory (printed at start) keeps every
// process's log, faults.log and expectations.jsonl; it is removed after a
// run that passes unless --keep or --work-dir is given.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ksaga/ksaga/orchestrator"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sagachaos: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, cfg, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "sagachaos: %v\n", err)
		os.Exit(1)
	}
}

// config is one chaos run.
type config struct {
	// Short is the CI schedule: a few faults of each kind, no SIGSTOP
	// unless WithSigstop.
	Short bool
	// Sagas is the number of orders sent (poison records come on top).
	Sagas int
	// Rate is the most start requests per second. The harness lowers it
	// when the load would be too short to fit the fault schedule.
	Rate float64
	// FaultsPerKind is the number of faults of each kind in the long run.
	FaultsPerKind int
	// Faults, when set, is the schedule itself: how many faults of each
	// kind (see faultKinds). It overrides Short and FaultsPerKind.
	Faults map[string]int
	// WithSigstop adds sigstop-engine faults to the short schedule.
	WithSigstop bool
	// FaultSpacing is the least time between the starts of two faults.
	FaultSpacing time.Duration
	// DrainTimeout bounds the wait for every saga to end after the load.
	DrainTimeout time.Duration
	// WorkDir holds the logs and the data; empty means a new temp dir.
	WorkDir string
	// Keep keeps a temp WorkDir after a run that passed.
	Keep bool
	// BinDir holds prebuilt sagad, kfaked and localsaga; empty means build
	// them.
	BinDir string
	// Seed makes the load and the schedule reproducible.
	Seed int64
	// BrokerSigkill restarts the broker with SIGKILL instead of SIGTERM.
	// kfake does not recover every transaction that was open at a crash
	// (docs/RELIABILITY.md), so this tests kfake more than ksaga.
	BrokerSigkill bool
	// Retention, when RetentionSet, is the engines' retention (sagad
	// --retention): how long an ended saga stays in the view and on the
	// state topic. Unset, the engines keep their default (or
	// KSAGA_RETENTION from the environment).
	Retention    time.Duration
	RetentionSet bool
}

// retention returns the retention the engines run with: --retention, else
// KSAGA_RETENTION, which the sagads read from the environment they inherit,
// else their default. 0 keeps ended sagas forever.
func (c config) retention() time.Duration {
	if c.RetentionSet {
		return c.Retention
	}
	if v, ok := os.LookupEnv("KSAGA_RETENTION"); ok {
		if d, err := time.ParseDuration(strings.TrimSpace(v)); err == nil {
			return d
		}
	}
	return orchestrator.DefaultRetention
}

// resendWindow is how long after a saga's start the load still sends
// records keyed by it (a second start, a conflicting start, a Compensate,
// a poison record), and how recently a saga must have ended for the
// post-load replies to pick it: half the retention, 0 for no bound. An ended
// saga is deleted the retention after it ended, and its id is free again:
// a second start that came later would start a new saga with it, a reply
// or a Compensate would be dead-lettered unknown-saga, and neither is what
// the load expects. Half leaves the other half for the record to be
// handled, faults included.
func (c config) resendWindow() time.Duration { return c.retention() / 2 }

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("sagachaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.BoolVar(&c.Short, "short", false, "run the short (CI) schedule: 2,000 sagas and one or two faults of each kind, no SIGSTOP")
	fs.IntVar(&c.Sagas, "sagas", 0, "`orders` to send (default 2000 with --short, 100000 otherwise)")
	fs.Float64Var(&c.Rate, "rate", 500, "most start requests per `second`; lowered when the load would be shorter than the fault schedule")
	fs.IntVar(&c.FaultsPerKind, "faults-per-kind", 20, "`faults` of each kind in the long run")
	fs.BoolVar(&c.WithSigstop, "with-sigstop", false, "add a SIGSTOP fault to the --short schedule")
	fs.DurationVar(&c.FaultSpacing, "fault-spacing", 6*time.Second, "least `time` between two faults")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 3*time.Minute, "how long to wait for every saga to end after the load")
	fs.StringVar(&c.WorkDir, "work-dir", "", "`directory` for logs and data (default: a new temp dir, removed after a run that passes)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the temp work dir after a run that passes")
	fs.StringVar(&c.BinDir, "bin-dir", "", "`directory` holding prebuilt sagad, kfaked and localsaga (default: build them into the work dir)")
	fs.BoolVar(&c.BrokerSigkill, "broker-sigkill", false, "restart the broker with SIGKILL instead of SIGTERM (exposes kfake's crash recovery of open transactions; see docs/RELIABILITY.md)")
	fs.Int64Var(&c.Seed, "seed", 0, "random `seed` of the load and the schedule (default: the time)")
	fs.Func("retention", "how long an ended saga stays in the engines' Redis view and on the state topic, a `duration` passed to them as --retention; the checker holds each deletion to it and the load sends nothing for a saga started more than half of it before (default: the engines' default, 168h, or KSAGA_RETENTION; 0 keeps ended sagas forever)", func(v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("want a duration such as 30s or 168h")
		}
		c.Retention, c.RetentionSet = d, true
		return nil
	})
	fs.Func("faults", "the schedule itself: comma-separated `kind=count` pairs (kinds: "+strings.Join(faultKinds, ", ")+"); overrides --short and --faults-per-kind", func(v string) error {
		c.Faults = make(map[string]int)
		for _, kv := range strings.Split(v, ",") {
			if kv = strings.TrimSpace(kv); kv == "" {
				continue
			}
			k, n, ok := strings.Cut(kv, "=")
			count, err := strconv.Atoi(n)
			if !ok || err != nil {
				return fmt.Errorf("%q: want kind=count", kv)
			}
			c.Faults[k] = count
		}
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return c, c.validate()
}

// withDefaults fills the zero fields of c.
func (c config) withDefaults() config {
	if c.Sagas == 0 {
		c.Sagas = 100_000
		if c.Short {
			c.Sagas = 2000
		}
	}
	if c.Rate == 0 {
		c.Rate = 500
	}
	if c.FaultsPerKind == 0 {
		c.FaultsPerKind = 20
	}
	if c.FaultSpacing == 0 {
		c.FaultSpacing = 6 * time.Second
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 3 * time.Minute
	}
	if c.Seed == 0 {
		c.Seed = time.Now().UnixNano()
	}
	return c
}

func (c config) validate() error {
	switch {
	case c.Sagas < 0:
		return fmt.Errorf("--sagas %d: want a positive number", c.Sagas)
	case c.Sagas > 0 && c.Sagas < 100:
		return fmt.Errorf("--sagas %d: want at least 100, so that every kind of order and poison appears", c.Sagas)
	case c.Rate < 0:
		return fmt.Errorf("--rate %g: want a positive rate", c.Rate)
	case c.FaultsPerKind < 0:
		return fmt.Errorf("--faults-per-kind %d: want zero or more", c.FaultsPerKind)
	case c.DrainTimeout < 0:
		return fmt.Errorf("--drain-timeout %v: want a positive duration", c.DrainTimeout)
	case c.Retention < 0:
		return fmt.Errorf("--retention %v: want a duration such as 30s, or 0 to keep ended sagas forever", c.Retention)
	}
	for k, n := range c.Faults {
		if _, ok := faultDurations[k]; !ok {
			return fmt.Errorf("fault kind %q is not one of %v", k, faultKinds)
		}
		if n < 0 {
			return fmt.Errorf("fault kind %s: %d faults, want zero or more", k, n)
		}
	}
	return nil
}
