package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/chaos/check/localfirst"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// harness is one chaos run: its processes, its clients and its log.
type harness struct {
	cfg   config
	start time.Time
	work  string
	bin   string

	outMu    sync.Mutex
	out      io.Writer
	faultLog *os.File

	kafkaAddr, controlAddr string
	kfaked                 *proc
	// redis are the engine's (R1), the participants' ledgers (R2) and the
	// orders store (R3).
	redis      [3]*proc
	redisAddr  [3]string
	engines    [2]*proc
	engineHTTP [2]string
	parts      *proc
	partsHTTP  string
	procs      []*proc

	// producers are the load's producers, one per partitioner.
	producers map[string]*kgo.Client
	engRdb    *redis.Client
	simRdb    *redis.Client
	ordRdb    *redis.Client
	track     *tracker
	// injected counts the requests kfaked faulted, by request name
	// (guarded by outMu).
	injected map[string]int
	// panics counts the complete-order calls that the saga-panic faults
	// made panic, localPanics the hold-funds calls (guarded by outMu).
	panics, localPanics int
	// stats counts what the faults that aim at a window found, by kind
	// and stat (guarded by outMu; see tally).
	stats map[string]map[string]int
	// runAnomalies are the anomalies the run found while it ran (guarded
	// by outMu; see anomalyf).
	runAnomalies []string
	// locals are the daemons of the local-first saga.
	locals []*proc
	// plan is the run's load, once made.
	plan *plan
	// deploys counts the rolling deploys so far (guarded by outMu).
	deploys int
}

// Indexes of harness.redis.
const (
	redisEngine = iota
	redisSim
	redisOrders
)

var redisNames = [3]string{"redis-engine", "redis-participants", "redis-orders"}

// The transactional ids and group of the processes.
const (
	partitions = 6
	// sessionTimeout is the engines' and participants' group session
	// timeout; the engine's transaction timeout is 10s. A SIGSTOP must
	// outlast both so that the stopped instance is fenced.
	sessionTimeout = 6 * time.Second
	sigstopFor     = 16 * time.Second
	// engineTxnTimeout is the engines' Kafka transaction timeout: sagad
	// runs with the engine's default (orchestrator.TransactionTimeout).
	engineTxnTimeout = 10 * time.Second
)

// initialStock is what the participants' ledger holds at start: plenty of
// the skus that orders buy, and less sku-scarce than any out-of-stock order
// asks for, so that those orders fail and never take any.
var initialStock = map[string]int64{
	"sku-1": 1_000_000_000, "sku-2": 1_000_000_000, "sku-3": 1_000_000_000,
	"sku-4": 1_000_000_000, "sku-5": 1_000_000_000,
	skuScarce: scarceStock,
}

const (
	skuScarce   = "sku-scarce"
	scarceStock = 5
)

// logf prints a line with the run's elapsed time.
func (h *harness) logf(format string, args ...any) {
	h.outMu.Lock()
	defer h.outMu.Unlock()
	fmt.Fprintf(h.out, "[%8.3fs] %s\n", time.Since(h.start).Seconds(), fmt.Sprintf(format, args...))
}

// faultf logs a fault with its wall-clock time to stdout and faults.log.
func (h *harness) faultf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	h.logf("FAULT %s", msg)
	h.outMu.Lock()
	defer h.outMu.Unlock()
	if h.faultLog != nil {
		fmt.Fprintf(h.faultLog, "%s +%.3fs %s\n", time.Now().Format(time.RFC3339Nano), time.Since(h.start).Seconds(), msg)
	}
}

// printf prints without a timestamp (reports, tables).
func (h *harness) printf(format string, args ...any) {
	h.outMu.Lock()
	defer h.outMu.Unlock()
	fmt.Fprintf(h.out, format, args...)
}

// moduleRoot returns the directory of the go.mod of the current module.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the ksaga module: run sagachaos from the repository (or give --bin-dir)")
	}
	return filepath.Dir(gomod), nil
}

// programs are the programs the run starts, by binary name, with their
// packages.
var programs = []struct{ name, pkg string }{
	{"sagad", "./cmd/sagad"}, {"kfaked", "./cmd/kfaked"}, {"localsaga", "./cmd/sagachaos/localsaga"},
}

// build compiles the programs into dir.
func (h *harness) build(ctx context.Context, dir string) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	for _, prog := range programs {
		name := prog.name
		t := time.Now()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, name), prog.pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", prog.pkg, err, out)
		}
		h.logf("built %s in %.1fs", name, time.Since(t).Seconds())
	}
	return nil
}

// freeAddrs returns n distinct loopback addresses whose ports are free now.
// The listeners stay open until all n are picked: closed one by one, the
// kernel may hand out the same port twice, and two processes of the run
// would then fight for it.
func freeAddrs(n int) ([]string, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	addrs := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

func (h *harness) newProc(name, path string, supervise bool, args ...string) *proc {
	p := &proc{name: name, path: path, args: args, logPath: filepath.Join(h.work, name+".log"), supervise: supervise, h: h}
	h.procs = append(h.procs, p)
	return p
}

// setUp starts every process and waits until the sagads are ready.
func (h *harness) setUp(ctx context.Context) error {
	redisBin, err := exec.LookPath("redis-server")
	if err != nil {
		return fmt.Errorf("redis-server not found (apt-get install redis-server, or ./scripts/test-deps.sh): %w", err)
	}
	addrs, err := freeAddrs(11)
	if err != nil {
		return fmt.Errorf("find free ports: %w", err)
	}
	h.kafkaAddr, h.controlAddr = addrs[0], addrs[1]
	for i := range h.redis {
		h.redisAddr[i] = addrs[2+i]
		_, port, _ := net.SplitHostPort(h.redisAddr[i])
		dir := h.redisDir(i)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		args := []string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--dir", dir, "--loglevel", "warning"}
		switch i {
		case redisEngine:
			// redis-rollback restores a snapshot with DEBUG RELOAD.
			args = append(args, "--appendonly", "no", "--enable-debug-command", "local")
		case redisOrders:
			// The orders store is the order database: what it
			// acknowledged survives its outages (SIGKILL), so that the
			// checker can hold it to the sagas' outcomes.
			args = append(args, "--appendonly", "yes", "--appendfsync", "always")
		default:
			args = append(args, "--appendonly", "no")
		}
		h.redis[i] = h.newProc(redisNames[i], redisBin, true, args...)
		if err := h.startRedis(ctx, i); err != nil {
			return err
		}
	}
	h.logf("redis: engine %s, participants %s, orders store %s", h.redisAddr[0], h.redisAddr[1], h.redisAddr[2])

	dataDir := filepath.Join(h.work, "kafka-data")
	h.kfaked = h.newProc("kfaked", filepath.Join(h.bin, "kfaked"), true,
		"--listen", h.kafkaAddr, "--data-dir", dataDir, "--control", h.controlAddr)
	if err := h.startKafka(ctx); err != nil {
		return err
	}
	h.logf("kfaked: kafka %s, control http://%s, data %s", h.kafkaAddr, h.controlAddr, dataDir)

	h.engRdb = redis.NewClient(&redis.Options{Addr: h.redisAddr[redisEngine], MaxRetries: -1})
	h.simRdb = redis.NewClient(&redis.Options{Addr: h.redisAddr[redisSim]})
	h.ordRdb = redis.NewClient(&redis.Options{Addr: h.redisAddr[redisOrders]})
	if err := sim.SeedStock(ctx, h.simRdb, initialStock); err != nil {
		return err
	}
	h.logf("seeded stock: %v", initialStock)

	common := []string{
		"--kafka-brokers", h.kafkaAddr, "--session-timeout", sessionTimeout.String(),
		"--partitions", fmt.Sprint(partitions), "--replication-factor", "1", "--log-format", "json",
	}
	sagad := filepath.Join(h.bin, "sagad")
	for i := range h.engines {
		h.engineHTTP[i] = addrs[5+i]
		name := fmt.Sprintf("engine-%d", i+1)
		h.engines[i] = h.newProc(name, sagad, true, append(append(slicesClone(common), h.engineFlags()...),
			"--participants", "none", "--transactional-id", "chaos-"+name, "--chaos-faults",
			"--order-versions", orderBuilds[0].versions,
			"--metrics-addr", h.engineHTTP[i],
			"--redis-addr", h.redisAddr[redisEngine], "--orders-redis-addr", h.redisAddr[redisOrders])...)
	}
	h.engines[0].sagad, h.engines[1].sagad = true, true
	h.partsHTTP = addrs[7]
	// The participants join their groups as static members, as a
	// StatefulSet runs them: a participant restarted after a SIGKILL takes
	// its place back at once. As dynamic members, the crash-loop's five
	// dead members of each group, some of them killed in the middle of a
	// join, held every rebalance until the 60s rebalance timeout, and the
	// sagas stood still for about a minute. The engines stay dynamic, so
	// that their kills and stops still move partitions.
	h.parts = h.newProc("participants", sagad, true, append(slicesClone(common),
		"--engine=false", "--participants", "all", "--transactional-id", "chaos-participants", "--static-membership",
		"--metrics-addr", h.partsHTTP,
		"--redis-addr", h.redisAddr[redisSim], "--participants-redis-addr", h.redisAddr[redisSim])...)
	h.parts.sagad = true

	// The first engine creates the topics alone; then the rest join.
	if err := h.engines[0].start(); err != nil {
		return err
	}
	if err := h.waitReady(ctx, h.engines[0], h.engineHTTP[0], 90*time.Second); err != nil {
		return err
	}
	for _, p := range []*proc{h.engines[1], h.parts} {
		if err := p.start(); err != nil {
			return err
		}
	}
	if err := h.waitReady(ctx, h.parts, h.partsHTTP, 90*time.Second); err != nil {
		return err
	}
	// Both engines must be ready at once: the second one's join moves
	// partitions away from the first, which restores them again.
	if err := poll(ctx, 90*time.Second, 100*time.Millisecond, func() error {
		for i, e := range h.engines {
			if !ready(h.engineHTTP[i]) {
				return fmt.Errorf("%s is not ready (see %s)", e.name, e.logPath)
			}
		}
		return nil
	}, "the engines did not become ready"); err != nil {
		return err
	}
	h.logf("sagad ready: engine-1 (pid %d) http://%s, engine-2 (pid %d) http://%s, participants (pid %d) http://%s",
		h.engines[0].pid(), h.engineHTTP[0], h.engines[1].pid(), h.engineHTTP[1], h.parts.pid(), h.partsHTTP)
	if err := h.startLocals(ctx, common, addrs[9:11]); err != nil {
		return err
	}
	return h.checkSizeLimit(ctx)
}

// startLocals starts the two daemons of the local-first saga
// (cmd/sagachaos/localsaga), each an engine and an approver participant,
// on the engine's Redis (its state view), the participants' Redis (the
// approvals) and the orders store (the holds, which stand for a service's
// database as the orders do), and waits until both are ready. The first
// creates the topics alone.
func (h *harness) startLocals(ctx context.Context, common, httpAddrs []string) error {
	bin := filepath.Join(h.bin, "localsaga")
	h.locals = make([]*proc, len(httpAddrs))
	for i, addr := range httpAddrs {
		name := fmt.Sprintf("local-%d", i+1)
		h.locals[i] = h.newProc(name, bin, true, append(append(slicesClone(common), h.engineFlags()...),
			"--participants", "all", "--transactional-id", "chaos-"+name, "--chaos-faults", "--metrics-addr", addr,
			"--redis-addr", h.redisAddr[redisEngine], "--participants-redis-addr", h.redisAddr[redisSim],
			"--holds-redis-addr", h.redisAddr[redisOrders])...)
		h.locals[i].sagad = true
		if err := h.locals[i].start(); err != nil {
			return err
		}
		if err := h.waitReady(ctx, h.locals[i], addr, 90*time.Second); err != nil {
			return err
		}
	}
	if err := poll(ctx, 90*time.Second, 100*time.Millisecond, func() error {
		for i, p := range h.locals {
			if !ready(httpAddrs[i]) {
				return fmt.Errorf("%s is not ready (see %s)", p.name, p.logPath)
			}
		}
		return nil
	}, "the local-first saga's daemons did not become ready"); err != nil {
		return err
	}
	h.logf("localsaga ready: local-1 (pid %d) http://%s, local-2 (pid %d) http://%s", h.locals[0].pid(), httpAddrs[0], h.locals[1].pid(), httpAddrs[1])
	return nil
}

// engineFlags are the flags of the processes that run an engine (the
// sagads and the local-first saga's daemons) beyond the common ones: the
// retention, when --retention is given.
func (h *harness) engineFlags() []string {
	if !h.cfg.RetentionSet {
		return nil
	}
	return []string{"--retention", h.cfg.Retention.String()}
}

// brokerMaxMessageBytes is Kafka's default message.max.bytes: the largest
// record batch a broker takes. The large orders of the load must meet it.
const brokerMaxMessageBytes = 1048588

// checkSizeLimit makes sure that neither the broker nor a topic of the run
// takes batches larger than Kafka's default, so that the large orders test
// the limit a default Kafka has.
func (h *harness) checkSizeLimit(ctx context.Context) error {
	adm, err := kadm.NewOptClient(kgo.SeedBrokers(h.kafkaAddr))
	if err != nil {
		return err
	}
	defer adm.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	limit := func(rc kadm.ResourceConfig, key string) (int, bool) {
		for _, c := range rc.Configs {
			if c.Key == key && c.Value != nil {
				n, err := strconv.Atoi(*c.Value)
				return n, err == nil
			}
		}
		return 0, false
	}
	brokers, err := adm.DescribeBrokerConfigs(cctx)
	if err != nil {
		return fmt.Errorf("describe broker configs: %w", err)
	}
	for _, rc := range brokers {
		if rc.Err != nil {
			return fmt.Errorf("describe broker configs: %w", rc.Err)
		}
		if n, ok := limit(rc, "message.max.bytes"); !ok || n != brokerMaxMessageBytes {
			return fmt.Errorf("broker %s: message.max.bytes is %d (found: %v), want Kafka's default %d: the large orders must meet a default broker's limit", rc.Name, n, ok, brokerMaxMessageBytes)
		}
	}
	topics, err := adm.ListTopics(cctx)
	if err != nil {
		return fmt.Errorf("list topics: %w", err)
	}
	configs, err := adm.DescribeTopicConfigs(cctx, topics.Names()...)
	if err != nil {
		return fmt.Errorf("describe topic configs: %w", err)
	}
	for _, rc := range configs {
		if rc.Err != nil {
			return fmt.Errorf("describe topic configs: %w", rc.Err)
		}
		if n, ok := limit(rc, "max.message.bytes"); ok && n > brokerMaxMessageBytes {
			return fmt.Errorf("topic %s: max.message.bytes is %d, more than Kafka's default %d", rc.Name, n, brokerMaxMessageBytes)
		}
	}
	h.logf("broker and topics take record batches of at most %d bytes (Kafka's default)", brokerMaxMessageBytes)
	return nil
}

// redisDir is the working directory of redis i.
func (h *harness) redisDir(i int) string { return filepath.Join(h.work, redisNames[i]) }

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// startRedis starts redis i and waits until it answers PING.
func (h *harness) startRedis(ctx context.Context, i int) error {
	if err := h.redis[i].restart(); err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: h.redisAddr[i], MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer rdb.Close()
	return poll(ctx, 10*time.Second, 20*time.Millisecond, func() error {
		return rdb.Ping(ctx).Err()
	}, fmt.Sprintf("%s on %s did not answer PING; see %s", redisNames[i], h.redisAddr[i], h.redis[i].logPath))
}

// startKafka starts kfaked and waits until it answers a metadata request
// and its control endpoint answers.
func (h *harness) startKafka(ctx context.Context) error {
	if err := h.kfaked.restart(); err != nil {
		return err
	}
	adm, err := kadm.NewOptClient(kgo.SeedBrokers(h.kafkaAddr), kgo.RetryTimeout(time.Second))
	if err != nil {
		return err
	}
	defer adm.Close()
	return poll(ctx, 30*time.Second, 50*time.Millisecond, func() error {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if _, err := adm.BrokerMetadata(cctx); err != nil {
			return err
		}
		resp, err := http.Get("http://" + h.controlAddr + "/faults")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	}, "kfaked did not come up; see "+h.kfaked.logPath)
}

// waitReady polls a sagad's /readyz.
func (h *harness) waitReady(ctx context.Context, p *proc, addr string, timeout time.Duration) error {
	return poll(ctx, timeout, 100*time.Millisecond, func() error {
		if !ready(addr) {
			return errors.New("not ready")
		}
		return nil
	}, fmt.Sprintf("%s is not ready (http://%s/readyz); see %s", p.name, addr, p.logPath))
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

func ready(addr string) bool {
	resp, err := httpClient.Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// poll calls f until it returns nil, ctx ends or timeout passes.
func poll(ctx context.Context, timeout, every time.Duration, f func() error, what string) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (after %v: %v)", what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

// tearDown stops every process: the sagads first (SIGTERM, SIGKILL after
// 10s), then the broker and the Redis servers.
func (h *harness) tearDown() {
	if h.track != nil {
		h.track.close()
	}
	for _, cl := range h.producers {
		cl.Close()
	}
	for _, c := range []*redis.Client{h.engRdb, h.simRdb, h.ordRdb} {
		if c != nil {
			c.Close()
		}
	}
	var wg sync.WaitGroup
	for _, p := range append([]*proc{h.engines[0], h.engines[1], h.parts}, h.locals...) {
		if p != nil {
			wg.Add(1)
			go func() { defer wg.Done(); p.stop(10 * time.Second) }()
		}
	}
	wg.Wait()
	for _, p := range h.procs {
		p.stop(10 * time.Second)
	}
}

// hangLogLine is what sagad --chaos-faults logs when it makes a
// complete-order hang (cmd/sagad/chaos.go).
const hangLogLine = "chaos: complete-order hangs"

// countHangs returns how many complete-order calls the engines made hang,
// and how many hold-funds calls the local-first saga's daemons did, from
// their logs.
func (h *harness) countHangs() (orders, local int) {
	count := func(ps []*proc, needle string) int {
		n := 0
		for _, p := range ps {
			f, err := os.Open(p.logPath)
			if err != nil {
				continue
			}
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 1<<20), 16<<20)
			for sc.Scan() {
				if strings.Contains(sc.Text(), needle) {
					n++
				}
			}
			f.Close()
		}
		return n
	}
	return count(h.engines[:], hangLogLine), count(h.locals, localfirst.HangLog)
}

// scanLogs returns the lines of the sagad logs that show a crash: a Go
// panic, a fatal runtime error or a data race.
func (h *harness) scanLogs() []string {
	var found []string
	for _, p := range h.procs {
		f, err := os.Open(p.logPath)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		n := 0
		for sc.Scan() {
			n++
			line := sc.Text()
			if strings.HasPrefix(line, "panic:") || strings.HasPrefix(line, "fatal error:") || strings.Contains(line, "WARNING: DATA RACE") {
				found = append(found, fmt.Sprintf("%s:%d: %s", p.logPath, n, line))
			}
		}
		f.Close()
	}
	return found
}
