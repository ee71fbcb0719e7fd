package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// Names sagabench gives the engine and the participants.
const (
	engineGroup    = "sagabench-order"
	engineTxnID    = "sagabench-engine"
	partsTxnID     = "sagabench"
	readyTimeout   = 2 * time.Minute
	stopGrace      = 15 * time.Second
	progressPeriod = 10 * time.Second
)

// bench is one run of sagabench.
type bench struct {
	cfg      config
	out, log io.Writer
	logMu    sync.Mutex
	start    time.Time

	work     string
	ownWork  bool // work was created by this run
	runID    string
	brokers  []string
	redis    string
	cluster  *kfake.Cluster // nil with --kafka-brokers
	redisSrv *child         // nil with --redis-addr
	sagad    string
	adm      *kadm.Client
	rdb      *redis.Client
	producer *kgo.Client

	engine *child
	parts  *child
	// engineOutput adds up what the engines produced over the scenarios;
	// the bare loop copies its mix.
	engineOutput output
	bareOut      bareOutput
	// inboxStart are the inbox end offsets before the first saga: the bare
	// loop reads from there.
	inboxStart map[int32]int64
	// loads counts the loads run, for unique saga ids.
	loads int
}

// logf prints a progress line to the log writer.
func (b *bench) logf(format string, args ...any) {
	b.logMu.Lock()
	defer b.logMu.Unlock()
	fmt.Fprintf(b.log, "%7.1fs  %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) run(ctx context.Context) (err error) {
	b.start = time.Now()
	defer func() { b.tearDown(err) }()
	if err := b.setUp(ctx); err != nil {
		return err
	}
	m := machine()
	fmt.Fprintf(b.out, "sagabench: %s, %d CPUs (%s), kafka %s, redis %s\n\n", m.goVersion, m.cpus, m.model, b.kafkaName(), b.redisName())
	if b.cfg.sagas > 0 {
		rows, err := b.scenarios(ctx)
		if len(rows) > 0 {
			b.printTable(rows)
		}
		if err != nil {
			return err
		}
	}
	if b.cfg.rssSagas > 0 {
		if err := b.rssRun(ctx); err != nil {
			return err
		}
	}
	if b.cfg.restartSagas > 0 {
		if err := b.restartRun(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) kafkaName() string {
	if b.cluster != nil {
		return "kfake in-process (" + b.brokers[0] + ")"
	}
	return strings.Join(b.brokers, ",")
}

func (b *bench) redisName() string {
	if b.redisSrv != nil {
		return redisVersion() + " child (" + b.redis + ")"
	}
	return b.redis
}

// setUp starts Kafka and Redis (unless given), builds sagad and starts an
// engine, which creates the topics, and the participants.
func (b *bench) setUp(ctx context.Context) error {
	var id [4]byte
	_, _ = rand.Read(id[:])
	b.runID = hex.EncodeToString(id[:])
	b.work, b.ownWork = b.cfg.workDir, b.cfg.workDir == ""
	if b.ownWork {
		dir, err := os.MkdirTemp("", "sagabench-")
		if err != nil {
			return fmt.Errorf("create a work directory: %w", err)
		}
		b.work = dir
	} else if err := os.MkdirAll(b.work, 0o755); err != nil {
		return fmt.Errorf("--work-dir: %w", err)
	}

	if err := b.findSagad(ctx); err != nil {
		return err
	}
	if err := b.startKafka(); err != nil {
		return err
	}
	if err := b.startRedis(ctx); err != nil {
		return err
	}
	adm, err := kadm.NewOptClient(kgo.SeedBrokers(b.brokers...))
	if err != nil {
		return fmt.Errorf("kafka admin client: %w", err)
	}
	b.adm = adm
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := adm.BrokerMetadata(pingCtx); err != nil {
		return fmt.Errorf("cannot reach Kafka at %s: %w; check --kafka-brokers", strings.Join(b.brokers, ","), err)
	}
	if err := sim.SeedStock(ctx, b.rdb, stock()); err != nil {
		return err
	}
	if err := sim.SeedCoupons(ctx, b.rdb, map[string]int64{couponCode: couponLimit}); err != nil {
		return err
	}
	b.producer, err = kgo.NewClient(
		kgo.SeedBrokers(b.brokers...),
		kgo.ProducerLinger(0),
		kgo.MaxBufferedRecords(max(b.cfg.sagas, b.cfg.restartSagas, 10_000)),
	)
	if err != nil {
		return fmt.Errorf("kafka producer: %w", err)
	}

	// The first engine creates the topics; the participants need them.
	b.logf("starting the engine (its first start creates the topics)")
	if b.engine, err = b.startEngine(ctx, false); err != nil {
		return err
	}
	b.logf("starting the participants")
	if b.parts, err = b.startParticipants(ctx); err != nil {
		return err
	}
	ends, err := adm.ListEndOffsets(ctx, message.Inbox(order.Name))
	if err != nil {
		return fmt.Errorf("list inbox offsets: %w", err)
	}
	b.inboxStart = make(map[int32]int64)
	ends.Each(func(o kadm.ListedOffset) { b.inboxStart[o.Partition] = o.Offset })
	return nil
}

// findSagad builds sagad into the work directory, or finds it in --bin-dir.
func (b *bench) findSagad(ctx context.Context) error {
	if b.cfg.binDir != "" {
		b.sagad = filepath.Join(b.cfg.binDir, "sagad")
		if _, err := os.Stat(b.sagad); err != nil {
			return fmt.Errorf("--bin-dir: %w (build it with go build -o %s ./cmd/sagad)", err, b.sagad)
		}
		return nil
	}
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w (run sagabench from the ksaga repository, or give --bin-dir)", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return errors.New("not inside the ksaga module: run sagabench from the repository, or give --bin-dir")
	}
	b.sagad = filepath.Join(b.work, "sagad")
	b.logf("building sagad")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", b.sagad, "./cmd/sagad")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/sagad: %w\n%s", err, out)
	}
	return nil
}

func (b *bench) startKafka() error {
	if len(b.cfg.kafkaBrokers) > 0 {
		b.brokers = b.cfg.kafkaBrokers
		return nil
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		return fmt.Errorf("start kfake: %w", err)
	}
	b.cluster, b.brokers = c, c.ListenAddrs()
	return nil
}

func (b *bench) startRedis(ctx context.Context) error {
	b.redis = b.cfg.redisAddr
	if b.redis == "" {
		bin, err := exec.LookPath("redis-server")
		if err != nil {
			return fmt.Errorf("redis-server not found: run ./scripts/test-deps.sh (or apt-get install redis-server), or give --redis-addr: %w", err)
		}
		addr, err := freeAddr()
		if err != nil {
			return err
		}
		_, port, _ := strings.Cut(addr, ":")
		dir := filepath.Join(b.work, "redis")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		b.redisSrv, err = startChild(b.work, "redis", bin, "--port", port, "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir, "--loglevel", "warning")
		if err != nil {
			return err
		}
		b.redis = addr
	}
	b.rdb = redis.NewClient(&redis.Options{Addr: b.redis})
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := b.rdb.Ping(ctx).Err()
		if err == nil {
			return nil
		}
		if b.redisSrv != nil {
			if xerr := b.redisSrv.exited(); xerr != nil {
				return xerr
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("cannot reach Redis at %s: %w; check --redis-addr", b.redis, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sagadArgs are the flags every sagad child gets.
func (b *bench) sagadArgs(httpAddr string) []string {
	args := []string{
		"--kafka-brokers", strings.Join(b.brokers, ","), "--redis-addr", b.redis,
		"--partitions", fmt.Sprint(b.cfg.partitions), "--replication-factor", fmt.Sprint(b.cfg.replicationFactor),
		"--metrics-addr", httpAddr, "--log-format", "json", "--log-level", "warn",
	}
	if b.cfg.profileDir != "" {
		args = append(args, "--pprof")
	}
	return args
}

// startEngine starts an engine and waits until it is ready.
func (b *bench) startEngine(ctx context.Context, static bool) (*child, error) {
	c, err := b.spawnEngine(static)
	if err != nil {
		return nil, err
	}
	if _, err := c.waitReady(ctx, readyTimeout); err != nil {
		c.kill()
		return nil, err
	}
	return c, nil
}

// spawnEngine starts an engine. The orders store gets a Redis client of its
// own (same server), so that the engine's own round trips are counted
// apart.
func (b *bench) spawnEngine(static bool) (*child, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := append(b.sagadArgs(addr),
		"--participants", "none", "--transactional-id", engineTxnID, "--group", engineGroup,
		"--orders-redis-addr", b.redis, "--max-poll-records", fmt.Sprint(b.cfg.maxPoll))
	if static {
		args = append(args, "--static-membership")
	}
	c, err := startChild(b.work, "engine", b.sagad, args...)
	if err != nil {
		return nil, err
	}
	c.httpAddr = addr
	return c, nil
}

// restartEngine stops the running engine (SIGTERM: it finishes its
// transaction and leaves the group) and starts a new one.
func (b *bench) restartEngine(ctx context.Context, static bool) error {
	if b.engine != nil {
		b.engine.stop(stopGrace)
		b.engine = nil
	}
	var err error
	b.engine, err = b.startEngine(ctx, static)
	return err
}

func (b *bench) startParticipants(ctx context.Context) (*child, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := append(b.sagadArgs(addr), "--engine=false", "--participants", "all",
		"--transactional-id", partsTxnID, "--payment-limit-cents", fmt.Sprint(sim.DefaultPaymentLimitCents))
	c, err := startChild(b.work, "participants", b.sagad, args...)
	if err != nil {
		return nil, err
	}
	c.httpAddr = addr
	if _, err := c.waitReady(ctx, readyTimeout); err != nil {
		c.kill()
		return nil, err
	}
	return c, nil
}

// alive fails when a child process has exited.
func (b *bench) alive() error {
	for _, c := range []*child{b.engine, b.parts, b.redisSrv} {
		if c == nil {
			continue
		}
		if err := c.exited(); err != nil {
			return err
		}
	}
	return nil
}

// tearDown stops every process, and removes the work directory unless the
// run failed or the user chose it.
func (b *bench) tearDown(runErr error) {
	for _, c := range []*child{b.engine, b.parts} {
		if c != nil {
			c.stop(stopGrace)
		}
	}
	if b.producer != nil {
		b.producer.Close()
	}
	if b.adm != nil {
		b.adm.Close()
	}
	if b.rdb != nil {
		b.rdb.Close()
	}
	if b.redisSrv != nil {
		b.redisSrv.kill()
	}
	if b.cluster != nil {
		b.cluster.Close()
	}
	switch {
	case b.work == "":
	case runErr != nil || !b.ownWork:
		fmt.Fprintf(b.log, "sagabench: logs are in %s\n", b.work)
	default:
		_ = os.RemoveAll(b.work)
	}
}

// Stock is plentiful: no order runs out.
var skus = []string{"bench-sku-1", "bench-sku-2", "bench-sku-3", "bench-sku-4", "bench-sku-5", "bench-sku-6"}

func stock() map[string]int64 {
	m := make(map[string]int64, len(skus))
	for _, s := range skus {
		m[s] = 1 << 50
	}
	return m
}

// machineInfo describes the machine for the report.
type machineInfo struct {
	cpus      int
	model     string
	goVersion string
}

// redisVersion returns "redis-server X.Y.Z", or "redis-server".
func redisVersion() string {
	out, err := exec.Command("redis-server", "--version").Output()
	if err != nil {
		return "redis-server"
	}
	for _, f := range strings.Fields(string(out)) {
		if v, ok := strings.CutPrefix(f, "v="); ok {
			return "redis-server " + v
		}
	}
	return "redis-server"
}
