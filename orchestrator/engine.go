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
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/ctxtime"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
)

// Engine runs one saga type. Create it with New, run it with Run, stop it by
// cancelling Run's context, then Close.
type Engine struct {
	cfg    config
	def    *saga.Definition
	m      *machine
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
	repairing        *repair
	repaired         time.Time
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
	// bad is set when the stored data no longer decodes into the saga's
	// data type (the type changed incompatibly): every record of the saga
	// is dead-lettered with it.
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
	e := &Engine{
		cfg: cfg, def: def, log: cfg.logger.With("saga", def.Name()),
		m:     newMachine(def, cfg.comp, cfg.now),
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
			e.m.trace = t.TraceLocal
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
// current transaction (aborting it if it is not committed yet), leaves the
// group and returns nil. It returns an error when the Kafka transaction
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

// batch is the work of one transaction.
type batch struct {
	Batch
	overlay map[string]*entry // sagas changed in this batch
	loaded  map[string]*State // sagas read from Redis for this batch
	order   []string          // changed saga ids, in first-change order
	expired []expiry          // ended sagas deleted after their retention
	tombs   []*kgo.Record     // their tombstones, in the same order
	dead    []deadLetter
	// cleared lists records whose attempt counts go once committed.
	cleared []deadLetter
}

func (e *Engine) transact(runCtx context.Context, recs []*kgo.Record, due []timer, expired []expiry, stale bool) error {
	b := &batch{overlay: make(map[string]*entry), Batch: Batch{Records: len(recs)}, expired: expired}
	start := time.Now()
	phase := func(d *time.Duration) {
		now := time.Now()
		*d, start = now.Sub(start), now
	}
	// The preload's calls into Redis are bounded one by one
	// (RedisTimeout); a rebuild it runs is bounded by the transaction
	// timeout. Neither eats into the transaction's own time below.
	pctx, pcancel := context.WithTimeout(context.WithoutCancel(runCtx), e.cfg.txnTimeout)
	err := e.preload(pctx, b, recs)
	if err == nil && stale {
		var ok bool
		if recs, ok, err = e.catchUp(pctx, b, recs); err == nil && !ok {
			pcancel()
			e.rearm(due, b.expired)
			return e.rewind(runCtx) // consumed again by the next step
		}
		b.CaughtUp = len(recs) - b.Records
		b.Records = len(recs)
	}
	pcancel()
	phase(&b.Phases.Preload)
	if err != nil {
		e.rearm(due, b.expired)
		return errors.Join(err, e.rewind(runCtx))
	}
	// A transaction, once begun, is finished even when Run's context is
	// cancelled: abandoning it would leave it open on the broker, and the
	// next owner of its partitions would wait for the transaction timeout
	// before it could restore them.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(runCtx), e.cfg.txnTimeout)
	defer cancel()
	if err := e.sess.Begin(); err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	e.open = true
	e.began, e.full = time.Now(), b.Records >= e.cfg.maxPoll
	// Whatever happens next ends this transaction: the session then
	// reports revocations again.
	e.revoked = false
	committed := false
	if e.tracer != nil {
		var end func(bool)
		ctx, end = e.tracer.TraceTransaction(ctx, &b.Batch)
		defer func() { end(committed) }()
	}
	var produceErr atomic.Value
	produce := func(r *kgo.Record) {
		e.sess.Produce(ctx, r, func(r *kgo.Record, err error) {
			if err != nil {
				produceErr.CompareAndSwap(nil, fmt.Errorf("produce to %s: %w", r.Topic, err))
			}
		})
	}
	for _, t := range due {
		produce(e.timeoutRecord(t))
		b.Timeouts++
	}
	for _, x := range b.expired {
		// A tombstone: the saga leaves the state topic (compaction
		// removes it) and, once committed, the Redis view.
		tomb := &kgo.Record{Topic: e.stateTopic, Partition: x.p, Key: []byte(x.id)}
		produce(tomb)
		b.tombs = append(b.tombs, tomb)
		b.Expired++
	}

	failed, failErr := e.handleAll(ctx, b, recs, produce)
	if failed == nil {
		for _, id := range b.order {
			produce(b.overlay[id].rec)
		}
	}
	phase(&b.Phases.Handle)
	if failErr == nil {
		if err := e.sess.Client().Flush(ctx); err != nil {
			failErr = fmt.Errorf("%w: flush: %w", errInfra, err)
		} else if v := produceErr.Load(); v != nil {
			failErr = fmt.Errorf("%w: %w", errInfra, v.(error))
		}
		phase(&b.Phases.Flush)
	}
	// Ending the transaction and counting a failed attempt get a context
	// of their own: the work's may have expired (saga code that used its
	// whole timeout), and an abort or a count that fails on it would leave
	// the record's failure uncounted and retried forever.
	endCtx, endCancel := context.WithTimeout(context.WithoutCancel(runCtx), e.cfg.txnTimeout)
	defer endCancel()
	if failErr != nil {
		if err := e.abort(runCtx); err != nil {
			return err
		}
		e.afterCompletion(endCtx, b, false)
		e.rearm(due, b.expired)
		if failed != nil {
			return e.retryLater(endCtx, runCtx, failed, failErr)
		}
		return failErr
	}
	ok, err := e.sess.End(endCtx, kgo.TryCommit)
	phase(&b.Phases.Commit)
	if err != nil {
		return e.commitUnknown(endCtx, b, due, err)
	}
	e.open = false
	if !ok {
		e.log.Info("transaction aborted (a rebalance, or the broker refused the commit); re-consuming from committed offsets")
		e.afterCompletion(endCtx, b, false)
		e.rearm(due, b.expired)
		return nil
	}
	e.afterCommit(endCtx, b)
	committed = true
	e.down.Store(false)
	return nil
}

// commitUnknown recovers from a commit that failed with its outcome unknown
// (the broker went away, the request timed out). kgo keeps the session in
// the transaction and asks for a TryAbort, which fences whatever is still
// open broker-side: the transaction is then either committed or aborted
// for good, and the session re-consumes from the committed offsets. Memory
// may lack the transaction's states (it committed) or not: every owned
// partition is rebuilt from the state topic before the next transaction,
// as a restart would. When the abort fails too, the session cannot go on:
// Run returns the error and the instance restarts.
func (e *Engine) commitUnknown(ctx context.Context, b *batch, due []timer, err error) error {
	if _, aerr := e.sess.End(ctx, kgo.TryAbort); aerr != nil {
		return fmt.Errorf("end transaction: %w (the abort after it failed too: %w)", err, aerr)
	}
	e.open = false
	e.afterCompletion(ctx, b, false)
	e.rearm(due, b.expired)
	for p := range e.parts {
		e.stale[p] = true
	}
	e.log.Warn("the commit's outcome is unknown; aborted, rebuilding the partitions from the state topic", "err", err)
	return fmt.Errorf("%w: end transaction: %w", errInfra, err)
}

// rearm puts back timers whose Timeout messages were not committed, and
// expired sagas whose tombstones were not.
func (e *Engine) rearm(due []timer, expired []expiry) {
	e.requeueExpired(expired)
	for _, t := range due {
		e.timers.add(t)
	}
}

// rewind makes the session re-consume from the committed offsets: the
// polled records were not handled. It must succeed before the next poll,
// or the next commit would pass over them: see abort.
func (e *Engine) rewind(runCtx context.Context) error {
	e.revoked = false
	if !e.open {
		if err := e.sess.Begin(); err != nil {
			return fmt.Errorf("%w: begin transaction to rewind: %w", errInfra, err)
		}
		e.open = true
	}
	return e.abort(runCtx)
}

// abort ends the open transaction with an abort, which also sets the
// session back to the committed offsets. Each try gets a fresh context: one
// that a hung dependency let expire must not leave the transaction open (the
// next Begin would fail and end the engine) or the polled records consumed
// (the next commit would pass over them). When the tries fail, the
// transaction stays open and the loop's next step aborts it first.
func (e *Engine) abort(runCtx context.Context) error {
	var err error
	for try := 1; try <= 3; try++ {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(runCtx), e.cfg.txnTimeout)
		_, err = e.sess.End(ctx, kgo.TryAbort)
		cancel()
		if err == nil {
			e.open = false
			return nil
		}
		if runCtx.Err() != nil {
			break
		}
		ctxtime.Sleep(runCtx, e.cfg.infraBackoff.Backoff(try+1))
	}
	return fmt.Errorf("%w: abort transaction: %w", errInfra, err)
}

// preload reads from Redis, in one round trip, the sagas of the batch that
// are not in memory, each partition's with a check that Redis did not go
// back in time since the engine last wrote it. A partition that did is
// restored from the state topic first.
func (e *Engine) preload(ctx context.Context, b *batch, recs []*kgo.Record) error {
	seen := make(map[string]bool)
	byPart := make(map[int32]*read)
	var reads []read
	for _, r := range recs {
		part := e.parts[r.Partition]
		if part == nil {
			return fmt.Errorf("%w: partition %d is not restored", errInfra, r.Partition)
		}
		id := string(r.Key)
		if id == "" || seen[id] {
			continue
		}
		if _, off := e.misplaced(r); off {
			// Moved to its home partition, not handled here: its saga's
			// state lives under the home partition's keys and is loaded
			// with the record that is handled there, in a later batch
			// or further on in this one.
			continue
		}
		seen[id] = true
		if _, ok := e.sagas[id]; ok {
			continue
		}
		if _, ok := b.loaded[id]; ok {
			continue
		}
		rd := byPart[r.Partition]
		if rd == nil {
			rd = &read{p: r.Partition, expect: part.checkpoint}
			byPart[r.Partition] = rd
		}
		rd.ids = append(rd.ids, id)
	}
	if len(byPart) == 0 {
		return nil
	}
	for _, rd := range byPart {
		reads = append(reads, *rd)
	}
	got, err := e.store.get(ctx, reads)
	if err != nil {
		return err
	}
	if len(got.lost) > 0 {
		for _, p := range got.lost {
			e.lost[p] = true
		}
		if err := e.rebuildLost(ctx); err != nil {
			return fmt.Errorf("%w: %w", errInfra, err)
		}
		return e.preload(ctx, b, recs)
	}
	if err := e.readBackLost(ctx, b, reads, got.states); err != nil {
		return err
	}
	if b.loaded == nil {
		b.loaded = got.states
	} else {
		maps.Copy(b.loaded, got.states)
	}
	return nil
}

// readBackLost reads back from the state topic the sagas of reads that
// Redis did not return although the state topic holds them (Redis lost
// their keys: an eviction, a DEL), adds them to states and queues them to
// be written to Redis again.
func (e *Engine) readBackLost(ctx context.Context, b *batch, reads []read, states map[string]*State) error {
	for _, rd := range reads {
		part := e.parts[rd.p]
		var missing []string
		for _, id := range rd.ids {
			if _, ok := states[id]; ok {
				continue
			}
			if _, ok := part.index.sagas[id]; ok {
				missing = append(missing, id)
			}
		}
		if len(missing) == 0 {
			continue
		}
		back, err := e.readBack(ctx, rd.p, missing, part.index)
		if err != nil {
			return fmt.Errorf("%w: read back the states redis lost: %w", errInfra, err)
		}
		if len(back) < len(missing) {
			return fmt.Errorf("%w: read back %d of the %d states redis lost in partition %d", errInfra, len(back), len(missing), rd.p)
		}
		for id, w := range back {
			states[id] = w.state
			part.pending = append(part.pending, w)
		}
		e.notePending()
		b.ReadBack += len(back)
		e.log.Warn("redis lost saga states that the state topic holds; read them back", "partition", rd.p, "sagas", len(back), "first", missing[0])
	}
	return nil
}

// msgRebuiltMidBatch is logged when a batch is consumed again because a
// partition was rebuilt while it was read.
const msgRebuiltMidBatch = "a partition was rebuilt while a batch was read; consuming the batch again"

// catchUp adds to a batch the records committed while the last transaction
// ran. kgo keeps one fetch per broker buffered and sends the next only once
// the buffered one is polled: the records of a poll that found them waiting
// were fetched early in the last transaction, and those committed later are
// fetched only now. Without catchUp they would wait for the transaction
// after this one, and each hop through the engine would cost about one
// transaction more. The fetch that the poll started has usually come back
// during the preload, so catchUp takes it with a short wait, preloads its
// sagas and returns the batch with its records. It reports false when the
// batch must be consumed again: the poll brought an assignment change, to
// be applied first, or its preload rebuilt a partition (see below).
func (e *Engine) catchUp(ctx context.Context, b *batch, recs []*kgo.Record) ([]*kgo.Record, bool, error) {
	wctx, cancel := context.WithTimeout(ctx, catchUpWait)
	fetches := e.sess.PollRecords(wctx, e.cfg.maxPoll-len(recs))
	cancel()
	e.polled = time.Now()
	var more []*kgo.Record
	fetches.EachRecord(func(r *kgo.Record) { more = append(more, r) })
	if len(more) == 0 {
		return recs, true, nil
	}
	e.mu.Lock()
	changed := len(e.changes) > 0
	e.mu.Unlock()
	if changed {
		return recs, false, nil
	}
	rebuilds := e.rebuilds
	if err := e.preload(ctx, b, more); err != nil {
		return recs, true, err
	}
	if e.rebuilds != rebuilds {
		// The preload rebuilt a partition that Redis lost or took back
		// in time. A rebuild replaces the partition's sagas in memory
		// with a replay from Redis's checkpoint: sagas that the first
		// preload found in memory, and so did not load, may have left
		// it (a running saga whose state Redis holds, an ended one a
		// write taken in on the way let go). Their records would find
		// no saga. The batch is consumed again, with one preload over
		// all of it.
		e.log.Info(msgRebuiltMidBatch, "records", len(recs)+len(more))
		return recs, false, nil
	}
	return append(recs, more...), true, nil
}

// afterCommit moves the batch's states into memory, runs the after-commit
// hooks, brings Redis up to date and runs the after-completion hooks.
func (e *Engine) afterCommit(ctx context.Context, b *batch) {
	e.flightMu.Lock()
	for _, id := range b.order {
		ent := b.overlay[id]
		e.sagas[id] = ent
		part := e.parts[ent.partition]
		if part == nil { // revoked meanwhile: the new owner replays it
			delete(e.sagas, id)
			delete(e.flight, id)
			continue
		}
		e.fly(ent.partition, ent.state)
		e.notePending()
		part.pending = append(part.pending, write{partition: ent.partition, offset: ent.rec.Offset, state: ent.state, raw: ent.raw})
		part.index.set(id, ent.rec.Offset, ent.state, false)
		ent.rec = nil // kept in memory: only its offset was needed
		if st := ent.state; !st.Terminal() && st.Deadline > 0 {
			e.timers.add(timer{deadline: st.Deadline, sagaID: id, waiting: st.Waiting, attempt: st.Attempt, partition: ent.partition})
		} else {
			e.timers.remove(id)
		}
	}
	for i, x := range b.expired {
		e.forget(x, b.tombs[i].Offset)
	}
	e.flightMu.Unlock()
	for _, d := range append(b.dead, b.cleared...) {
		if part := e.parts[d.p]; part != nil {
			if _, ok := part.attempts[d.offset]; ok {
				part.cleared = append(part.cleared, d.offset)
			}
		}
	}
	for _, h := range e.cfg.hooks {
		if h, ok := h.(HookAfterCommit); ok {
			h.AfterCommit(ctx, &b.Batch)
		}
	}
	e.finishRedisWrite(false)
	e.startRedisWrite()
	e.afterCompletion(ctx, b, true)
}

func (e *Engine) afterCompletion(ctx context.Context, b *batch, committed bool) {
	for _, h := range e.cfg.hooks {
		if h, ok := h.(HookAfterCompletion); ok {
			h.AfterCompletion(ctx, &b.Batch, committed)
		}
	}
}
