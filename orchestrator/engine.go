// Package orchestrator runs sagas as a consume-transform-produce loop inside
// Kafka transactions.
//
//	eng, err := orchestrator.New(order.New(store),
//		orchestrator.Brokers("localhost:9092"),
//		orchestrator.Redis(rdb),
//		orchestrator.TransactionalID("sagad-0"),
//	)
//	if err != nil { … }
//	defer eng.Close()
//	err = eng.Run(ctx)
//
// For each polled batch of saga.T.inbox the engine begins a transaction,
// applies every record to its saga, produces the participant commands, the
// saga events and the new states (saga.T.state), and commits them together
// with the inbox offsets. After the commit it writes the states to Redis with
// a version compare-and-set and advances a per-partition checkpoint of the
// state topic. Kafka is the source of truth: on partition assignment the
// engine replays the state topic from the Redis checkpoint, so Redis may lag
// or be lost without losing a saga.
//
// Records whose processing fails are retried (the transaction aborts and
// they are re-delivered after a backoff), counted durably in Redis; when the
// attempts run out, or at once for permanent errors, the record goes to
// saga.T.inbox-dlt and its saga compensates, in one transaction.
//
// The engine exports no metrics itself: register hooks (HookAfterCommit, …)
// to observe it.
package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/ctxtime"
	"github.com/ksaga/ksaga/internal/sagadef"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
)

// Engine runs one saga type. Create it with New, run it with Run, stop it by
// cancelling Run's context, then Close.
type Engine struct {
	cfg    config
	def    *sagadef.Definition
	m      *machine // the newest version's: new sagas start on it
	vs     *versions
	store  *store
	sess   *kgo.GroupTransactSession
	log    *slog.Logger
	tracer HookTrace // nil: none registered

	inbox, stateTopic, events, dlt string
	// nparts is the partition count of the inbox (and of the state
	// topic), read at the start of Run: it maps a saga id to its home
	// partition.
	nparts int32
	limits *limits

	// changes is filled by the group callbacks (kgo's goroutines) and
	// drained by the loop.
	mu      sync.Mutex
	changes []assignment

	// Owned by the loop goroutine.
	workers *workers // started with the first batch of several sagas
	parts   map[int32]*partition
	sagas   map[string]*entry
	timers  timers

	redisChecked time.Time
	// swept is when the engine last looked for expired sagas, and
	// sweepFull whether that look found a full batch of them.
	swept     time.Time
	sweepFull bool
	// repairing is the repair pass of the Redis view in progress (nil:
	// none), repaired when the last one began; evicted is the evicted
	// key count Redis last reported (-1: not read yet), read at
	// evictionsChecked (see repair.go).
	repairing *repair
	repaired  time.Time
	// repairSoon asks for a pass as soon as none runs: a partition was
	// restored since the last one began.
	repairSoon       bool
	evicted          int64
	evictionsChecked time.Time
	// polled is when the last poll returned (see catchUp).
	polled time.Time
	// began is when the last transaction began, and full whether its
	// poll brought MaxPollRecords (see TransactionInterval).
	began time.Time
	full  bool
	// writing is the Redis write in progress (nil: none); pendingSince is
	// when the oldest state in the partitions' pending lists was
	// committed; lost marks partitions whose Redis view to rebuild (see
	// redis.go). stale marks partitions whose memory may be behind the
	// state topic (a commit whose outcome is unknown): they are rebuilt
	// before the next transaction.
	writing *redisWrite
	// rebuilds counts the partitions restored from the state topic: a
	// rebuild replaces a partition's sagas in memory (see catchUp).
	rebuilds     uint64
	pendingSince time.Time
	lost         map[int32]bool
	stale        map[int32]bool

	// flight indexes the running sagas of the owned partitions, for
	// InFlight: the loop writes it, InFlight reads it from other
	// goroutines.
	flightMu sync.Mutex
	flight   map[string]flying
	// revoked is set when a revocation was applied and no transaction
	// has ended since (see applyChanges).
	revoked bool
	// open is set while a transaction is begun and not ended (an end
	// that failed leaves it set: see abort).
	open bool
	// down is set while the engine's dependencies fail: its last attempt
	// to use Redis or Kafka failed, and none succeeded since.
	down atomic.Bool

	// joined is set once the group assigned this instance its partitions
	// (possibly none); ready once, in addition, they are restored.
	joined  atomic.Bool
	ready   atomic.Bool
	running atomic.Bool
	closed  chan struct{}
	once    sync.Once
	// stop cancels Run's context (Close).
	stopMu sync.Mutex
	stop   context.CancelFunc
}

type assignment struct {
	p        int32
	assigned bool
}

// partition is what the engine keeps for an inbox partition it owns.
type partition struct {
	// checkpoint is the last checkpoint known to be in Redis (0: none).
	checkpoint int64
	// pending holds committed states not yet acknowledged by Redis, in
	// state-topic order.
	pending []write
	// attempts holds the durable failure counts of its inbox records.
	attempts map[int64]attempt
	// cleared lists offsets whose counts can be forgotten.
	cleared []int64
	// index holds every saga of the partition's state topic (see
	// index.go).
	index *sagaIndex
}

// entry is a saga in memory.
type entry struct {
	state     *State
	data      any
	partition int32
	// raw is state encoded, once the batch that changed it is done.
	raw []byte
	// rec is the state record of raw, while its batch is not committed.
	rec *kgo.Record
	// m runs the saga: the machine of its definition version.
	m *machine
	// bad is set when the engine cannot run the saga: its stored data no
	// longer decodes into the saga's data type (the type changed
	// incompatibly), or its version is not hosted. Every record of the
	// saga is dead-lettered with it.
	bad error
}

// New returns an Engine for def. It validates the options and connects
// nothing until Run.
func New(def *saga.Definition, opts ...Opt) (*Engine, error) {
	if def == nil {
		return nil, errors.New("orchestrator: nil saga definition")
	}
	cfg, err := newConfig(def.Name(), opts)
	if err != nil {
		return nil, fmt.Errorf("orchestrator: %w", err)
	}
	hosted := make([]*sagadef.Definition, len(cfg.hosted))
	for i, h := range cfg.hosted {
		hosted[i] = sagadef.Of(h)
	}
	vs, err := newVersions(sagadef.Of(def), hosted, cfg.startOn, func(d *sagadef.Definition) *machine {
		m := newMachine(d, cfg.comp, cfg.now)
		if cfg.history != nil {
			m.history = *cfg.history
		}
		return m
	})
	if err != nil {
		return nil, fmt.Errorf("orchestrator: %w", err)
	}
	e := &Engine{
		cfg: cfg, def: sagadef.Of(def), log: cfg.logger.With("saga", def.Name()),
		m: vs.newest, vs: vs,
		store: &store{rdb: cfg.rdb, typ: def.Name(), group: cfg.group, timeout: cfg.redisTimeout},
		inbox: message.Inbox(def.Name()), stateTopic: message.State(def.Name()),
		events: message.Events(def.Name()), dlt: message.DLT(def.Name()),
		parts: make(map[int32]*partition), sagas: make(map[string]*entry),
		closed: make(chan struct{}), limits: newLimits(),
		flight: make(map[string]flying), lost: make(map[int32]bool), stale: make(map[int32]bool),
		evicted: -1, repaired: time.Now(),
	}
	for _, h := range cfg.hooks {
		if t, ok := h.(HookTrace); ok {
			e.tracer = t
			for _, m := range vs.all() {
				m.trace = t.TraceLocal
			}
			for _, m := range vs.adopters {
				m.trace = t.TraceLocal
			}
		}
	}
	kopts := []kgo.Opt{
		kgo.SeedBrokers(cfg.brokers...),
		kgo.ConsumerGroup(cfg.group),
		kgo.ConsumeTopics(e.inbox),
		kgo.TransactionalID(cfg.txnID),
		kgo.TransactionTimeout(cfg.txnTimeout),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.RequireStableFetchOffsets(),
		kgo.RecordPartitioner(partitioner(e.stateTopic, e.inbox)),
		// Batches stay within each topic's max.message.bytes, as the
		// broker reports it (see limits); until a topic is described,
		// within Kafka's default.
		kgo.ProducerBatchMaxBytesFn(e.limits.batchBytes),
		kgo.ProducerLinger(0),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			e.change(m[e.inbox], true)
			e.joined.Store(true)
		}),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) { e.change(m[e.inbox], false) }),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, m map[string][]int32) { e.change(m[e.inbox], false) }),
	}
	if cfg.static {
		kopts = append(kopts, kgo.InstanceID(cfg.txnID))
	}
	sess, err := kgo.NewGroupTransactSession(append(kopts, cfg.kafkaOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("orchestrator: kafka client: %w", err)
	}
	e.sess = sess
	return e, nil
}

// partitioner sends state and timeout records to the partition set on the
// record (the saga's inbox partition) and hashes the key for every other
// topic, as Kafka's default partitioner does.
func partitioner(manual ...string) kgo.Partitioner {
	byKey := kgo.StickyKeyPartitioner(nil)
	return kgo.BasicConsistentPartitioner(func(topic string) func(*kgo.Record, int) int {
		for _, t := range manual {
			if t == topic {
				return func(r *kgo.Record, _ int) int { return int(r.Partition) }
			}
		}
		tp := byKey.ForTopic(topic)
		return func(r *kgo.Record, n int) int { return tp.Partition(r, n) }
	})
}

func (e *Engine) change(ps []int32, assigned bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range ps {
		e.changes = append(e.changes, assignment{p, assigned})
	}
}

// Ready reports whether the engine has joined its group and restored the
// partitions it owns. It is false again while a newly assigned partition is
// being restored.
//
// It is also false while the engine's dependencies fail: from a failed
// attempt to use Redis or Kafka (a read, a write, a check, a transaction)
// until one succeeds.
func (e *Engine) Ready() bool { return e.ready.Load() && !e.down.Load() }

// Client returns the engine's Kafka client, for health checks and metrics
// plugins. Do not use it to produce or to manage transactions.
func (e *Engine) Client() *kgo.Client { return e.sess.Client() }

// Group returns the engine's consumer group, for lag metrics.
func (e *Engine) Group() string { return e.cfg.group }

// Run consumes and processes the inbox until ctx is cancelled, then ends the
// current transaction (aborting it if it is not committed yet), writes to
// Redis what it lacks and returns nil; Close leaves the group. It returns an error when the Kafka transaction
// state is fatal (the instance was fenced by a newer one with the same
// transactional id, or the client exhausted its retries): the caller should
// exit and let the instance restart. Run may be called once.
func (e *Engine) Run(ctx context.Context) error {
	if !e.running.CompareAndSwap(false, true) {
		return errors.New("orchestrator: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	e.stopMu.Lock()
	e.stop = cancel
	e.stopMu.Unlock()
	defer close(e.closed)
	defer func() {
		if e.workers != nil {
			e.workers.stop()
		}
	}()
	if err := e.store.load(ctx); err != nil {
		e.log.Warn("redis unavailable at start; will retry", "err", err)
	}
	if err := e.initProducer(ctx); err != nil {
		return err
	}
	if err := e.checkTopics(ctx); err != nil {
		return err
	}
	failures := 0 // consecutive infrastructure failures, for backoff
	for ctx.Err() == nil {
		err := e.step(ctx)
		switch {
		case err == nil:
			failures = 0
		case ctx.Err() != nil:
		case errors.Is(err, errInfra):
			e.down.Store(true)
			if errors.Is(err, errRedis) {
				e.reportRedisLag(err)
			}
			failures++
			wait := e.cfg.infraBackoff.Backoff(failures + 1)
			e.log.Warn("dependency unavailable; retrying", "err", err, "wait", wait)
			ctxtime.Sleep(ctx, wait)
		default:
			return err
		}
	}
	e.flushRedis()
	return nil
}

// initProducer registers the transactional id before the first partition is
// restored. That fences a dead predecessor with the same id and aborts the
// transaction it left open, so the restore need not wait for that
// transaction to time out.
func (e *Engine) initProducer(ctx context.Context) error {
	for failures := 1; ; failures++ {
		_, _, err := e.sess.Client().ProducerID(ctx)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, kerr.TransactionalIDAuthorizationFailed), errors.Is(err, kerr.ClusterAuthorizationFailed):
			return fmt.Errorf("orchestrator: init transactional id %s: %w", e.cfg.txnID, err)
		}
		wait := e.cfg.infraBackoff.Backoff(failures + 1)
		e.log.Warn("cannot register the transactional id; retrying", "err", err, "wait", wait)
		ctxtime.Sleep(ctx, wait)
	}
}

// Close stops Run, as cancelling its context does, waits for it to return,
// then leaves the group and closes the Kafka client. It does not close the
// Redis client. It is safe to call more than once.
func (e *Engine) Close() {
	e.once.Do(func() {
		if e.running.Load() {
			e.stopMu.Lock()
			stop := e.stop
			e.stopMu.Unlock()
			if stop != nil {
				stop()
			}
			<-e.closed
		}
		e.sess.Close()
	})
}

// step is one iteration of the loop: apply assignment changes, poll, run one
// transaction.
func (e *Engine) step(ctx context.Context) error {
	if ctx.Err() != nil {
		return nil
	}
	if e.open {
		// A transaction whose end failed: its records are consumed
		// again once it is aborted.
		if err := e.abort(ctx); err != nil {
			return err
		}
	}
	if err := e.applyChanges(ctx); err != nil {
		return err
	}
	e.maintainRedis(ctx)
	if err := e.rebuildStale(ctx); err != nil {
		return err
	}

	if wait := e.intervalWait(); wait > 0 {
		ctxtime.Sleep(ctx, wait)
	}
	if ctx.Err() != nil {
		return nil
	}
	pollCtx, cancel := context.WithTimeout(ctx, e.pollWait())
	pollStart := time.Now()
	fetches := e.sess.PollRecords(pollCtx, e.cfg.maxPoll)
	cancel()
	prevPoll := e.polled
	e.polled = time.Now()
	// Records that were waiting in the client when the poll began were
	// fetched early in the last transaction (see catchUp).
	buffered := e.polled.Sub(pollStart) < bufferedPoll && !prevPoll.IsZero() && pollStart.Sub(prevPoll) >= stalePoll
	if ctx.Err() != nil {
		return nil // the polled records were not handled; nothing commits them
	}
	if fetches.IsClientClosed() {
		return errors.New("orchestrator: the Kafka client was closed")
	}
	if err := fetches.Err0(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		e.log.Warn("poll", "err", err)
	}
	var recs []*kgo.Record
	fetches.EachRecord(func(r *kgo.Record) { recs = append(recs, r) })
	// Assignments seen during the poll are applied before any of their
	// records is handled. When one cannot be (its partition's restore
	// failed), the polled records are not handled either: the session
	// must consume them again, or the next commit would pass over them.
	if err := e.applyChanges(ctx); err != nil {
		if len(recs) > 0 {
			return errors.Join(err, e.rewind(ctx))
		}
		return err
	}
	due := e.dueTimers(e.cfg.now())
	expired := e.dueExpiries(e.cfg.now())
	if len(recs) == 0 && len(due) == 0 && len(expired) == 0 {
		if e.revoked {
			return e.rewind(ctx)
		}
		return nil
	}
	return e.transact(ctx, recs, due, expired, buffered && len(recs) > 0 && len(recs) < e.cfg.maxPoll)
}

const (
	// bufferedPoll is how long a poll that found its records waiting in
	// the client takes at most; one that waited for a fetch takes longer.
	bufferedPoll = 250 * time.Microsecond
	// stalePoll is how long after the last poll a fetch buffered since
	// then is likely to have missed records committed meanwhile.
	stalePoll = time.Millisecond
	// catchUpWait bounds catchUp's wait for the fetch that the poll
	// started: it usually came during the preload.
	catchUpWait = 200 * time.Microsecond
)

// intervalWait is how long to wait before polling so that transactions
// begin at most once per TransactionInterval; no longer than a poll may
// wait (see pollWait), and not at all after a full batch, which a backlog
// follows. Before the first transaction began is zero and nothing waits.
func (e *Engine) intervalWait() time.Duration {
	if e.cfg.txnInterval <= 0 || e.full {
		return 0
	}
	return min(e.cfg.txnInterval-time.Since(e.began), e.pollWait())
}

// pollWait bounds a poll so that deadlines fire on time.
func (e *Engine) pollWait() time.Duration {
	wait := e.cfg.maxPollWait
	if next, ok := e.timers.next(); ok {
		wait = min(wait, max(time.UnixMilli(next).Sub(e.cfg.now()), time.Millisecond))
	}
	return wait
}

// sleep waits d on the engine's clock, or until ctx ends. On the wall clock
// it is ctxtime.Sleep; on a clock a test moves (Clock) it looks at the clock
// every millisecond.
func (e *Engine) sleep(ctx context.Context, d time.Duration) {
	if e.cfg.clockSet {
		until := e.cfg.now().Add(d)
		for ctx.Err() == nil && e.cfg.now().Before(until) {
			ctxtime.Sleep(ctx, time.Millisecond)
		}
		return
	}
	ctxtime.Sleep(ctx, d)
}
