package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/ctxtime"
	"github.com/ksaga/ksaga/internal/inbox"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/retry"
)

// Defaults of a Relay.
const (
	DefaultBatchSize    = 500
	DefaultPollInterval = 200 * time.Millisecond
	DefaultClaimIdle    = 30 * time.Second
	// transactionTimeout is the Kafka transaction timeout, as the
	// engine's; a batch's records must be flushed within it.
	transactionTimeout = 10 * time.Second
	// statsInterval is how often the outbox's size and age are read.
	statsInterval = time.Second
)

// RelayOpt configures a Relay.
type RelayOpt interface{ applyRelay(*relayConfig) }

type relayOptFunc func(*relayConfig)

func (f relayOptFunc) applyRelay(c *relayConfig) { f(c) }

type relayConfig struct {
	brokers   []string
	kafkaOpts []kgo.Opt
	txnID     string
	logger    *slog.Logger
	batch     int
	poll      time.Duration
	claimIdle time.Duration
	backoff   retry.Policy
	reg       prometheus.Registerer
}

// Brokers sets the Kafka seed brokers. Required.
func Brokers(addrs ...string) RelayOpt {
	return relayOptFunc(func(c *relayConfig) { c.brokers = addrs })
}

// KafkaOpts adds options to the relay's Kafka client, after its own: TLS,
// SASL, hooks. Options that change its partitioner or its transactions
// break the relay.
func KafkaOpts(opts ...kgo.Opt) RelayOpt {
	return relayOptFunc(func(c *relayConfig) { c.kafkaOpts = append(c.kafkaOpts, opts...) })
}

// TransactionalID sets the relay's Kafka transactional id, which is also
// its consumer name in the Redis stream's group. It must be stable per
// relay instance (a restarted relay fences its dead predecessor and takes
// over its unacknowledged entries at once) and unique across the relays of
// a saga type and store (two live relays with one id fence each other).
// The default is "ksaga-outbox-<store>-<saga type>-<hostname>".
func TransactionalID(id string) RelayOpt {
	return relayOptFunc(func(c *relayConfig) { c.txnID = id })
}

// Logger sets the logger. The default is slog.Default().
func Logger(l *slog.Logger) RelayOpt { return relayOptFunc(func(c *relayConfig) { c.logger = l }) }

// BatchSize bounds the entries relayed in one Kafka transaction. The
// default is DefaultBatchSize.
func BatchSize(n int) RelayOpt { return relayOptFunc(func(c *relayConfig) { c.batch = n }) }

// PollInterval is how long a relay waits for new entries before it looks
// again: the wait of a blocking stream read (Redis), the pause between
// polls of an empty table (PostgreSQL). The default is DefaultPollInterval.
func PollInterval(d time.Duration) RelayOpt {
	return relayOptFunc(func(c *relayConfig) { c.poll = d })
}

// ClaimIdle is how long a Redis entry delivered to another relay may stay
// unacknowledged before this relay takes it over: that relay died, or is
// stuck. The default is DefaultClaimIdle; it must exceed the longest round
// of a live relay (a Kafka transaction, well under 30s), or live relays
// relay each other's entries (harmless: duplicates are dropped, but
// wasteful).
func ClaimIdle(d time.Duration) RelayOpt {
	return relayOptFunc(func(c *relayConfig) { c.claimIdle = d })
}

// Backoff sets the waits between failed rounds (Kafka, Redis or PostgreSQL
// unavailable); only its intervals count, a relay never gives up. The zero
// value waits 200ms, then longer, up to 5s.
func Backoff(p retry.Policy) RelayOpt { return relayOptFunc(func(c *relayConfig) { c.backoff = p }) }

// Registerer registers the relay's metrics (see the package documentation)
// with reg, labelled with its saga type and store.
func Registerer(reg prometheus.Registerer) RelayOpt {
	return relayOptFunc(func(c *relayConfig) { c.reg = reg })
}

// entry is one start request of an outbox.
type entry struct {
	ref    string // the stream id, or the row id
	sagaID string
	data   []byte
}

// batch is what one round of a relay reads from its outbox.
type batch interface {
	// list returns the entries to relay.
	list() []entry
	// size counts what done removes: list, and what needs no relaying.
	size() int
	// done removes the batch from the outbox, after the Kafka commit.
	done(ctx context.Context) error
	// release gives the batch back, to be relayed again.
	release(ctx context.Context)
}

// source is the relay's side of an outbox.
type source interface {
	kind() string
	fetch(ctx context.Context, n int) (batch, error)
	// stats returns the entries waiting and the age of the oldest.
	stats(ctx context.Context) (int64, time.Duration, error)
}

// Relay moves the start requests of one saga type from an outbox to
// saga.<type>.inbox. Each round reads up to BatchSize entries, produces
// them in one Kafka transaction to the sagas' home partitions, and removes
// them from the outbox once the transaction has committed: a Redis relay
// acknowledges (XACK) and deletes (XDEL) them in one MULTI; a PostgreSQL
// relay deletes the rows it locked (SELECT … FOR UPDATE SKIP LOCKED) and
// commits. A relay that dies before the removal leaves the entries to be
// relayed again (by itself once restarted, by another relay after
// ClaimIdle for Redis, by any relay at once for PostgreSQL): the engine
// drops the second start of a saga with the same payload.
//
// Several relays of one outbox may run at once: PostgreSQL relays lock
// disjoint rows, Redis relays share the stream through a consumer group
// (RelayGroup). While Kafka, Redis or PostgreSQL is unavailable a relay
// retries with backoff, forever; it stops on its own only when its
// transactional id is fenced (another relay took it) or Kafka refuses it
// access.
//
// Throughput: one Kafka transaction per round, so up to BatchSize entries
// per commit round trip: TestRelay drains a backlog of 1,000 entries in
// about 0.1s on kfake (some 8,000 a second, Redis or PostgreSQL). So the
// outbox holds only what is not relayed yet: a few entries while Kafka is
// up; while it is down, what the services wrote since.
type Relay struct {
	src      source
	sagaType string
	cfg      relayConfig
	log      *slog.Logger
	clOpts   []kgo.Opt
	// idle is the pause after a round that found less than a batch
	// (PostgreSQL); Redis waits in its blocking read instead.
	idle time.Duration

	// cl and parts are used by Run only (and Close, after Run).
	cl    *kgo.Client
	parts int32

	pending  atomic.Int64
	oldestAt atomic.Int64 // unix nanoseconds, when pending > 0
	relayed  atomic.Uint64
	errs     atomic.Uint64

	running   atomic.Bool
	done      chan struct{}
	closeOnce sync.Once

	// afterCommit, when set (tests), runs between a round's Kafka commit
	// and the removal of its entries.
	afterCommit func(n int)
}

// Relay returns a relay of the stream's entries. Run runs it.
func (s *Stream) Relay(opts ...RelayOpt) (*Relay, error) {
	cfg := newRelayConfig(opts)
	src := &redisSource{s: s, claimIdle: cfg.claimIdle, block: cfg.poll, own: true}
	r, err := newRelay(src, s.sagaType, cfg)
	if err != nil {
		return nil, err
	}
	src.consumer = r.cfg.txnID
	return r, nil
}

// Relay returns a relay of the table's rows of saga type sagaType, read and
// deleted through pool. Run runs it.
func (o *Table) Relay(pool *pgxpool.Pool, sagaType string, opts ...RelayOpt) (*Relay, error) {
	if o.err != nil {
		return nil, o.err
	}
	if pool == nil {
		return nil, errors.New("outbox: nil pool")
	}
	cfg := newRelayConfig(opts)
	r, err := newRelay(&pgSource{o: o, pool: pool, sagaType: sagaType}, sagaType, cfg)
	if err != nil {
		return nil, err
	}
	r.idle = cfg.poll
	return r, nil
}

func newRelayConfig(opts []RelayOpt) relayConfig {
	c := relayConfig{batch: DefaultBatchSize, poll: DefaultPollInterval, claimIdle: DefaultClaimIdle}
	for _, o := range opts {
		o.applyRelay(&c)
	}
	return c
}

func newRelay(src source, sagaType string, cfg relayConfig) (*Relay, error) {
	switch {
	case sagaType == "":
		return nil, errors.New("outbox: relay: empty saga type")
	case len(cfg.brokers) == 0:
		return nil, errors.New("outbox: relay: no Kafka brokers (Brokers)")
	case cfg.batch < 1:
		return nil, fmt.Errorf("outbox: relay: batch size %d: want at least 1", cfg.batch)
	case cfg.poll <= 0:
		return nil, fmt.Errorf("outbox: relay: poll interval %v: want more than 0", cfg.poll)
	case cfg.claimIdle <= 0:
		return nil, fmt.Errorf("outbox: relay: claim idle %v: want more than 0", cfg.claimIdle)
	}
	if cfg.txnID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			return nil, fmt.Errorf("outbox: relay: no TransactionalID and no hostname (%v)", err)
		}
		cfg.txnID = "ksaga-outbox-" + src.kind() + "-" + sagaType + "-" + host
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	r := &Relay{
		src: src, sagaType: sagaType, cfg: cfg, done: make(chan struct{}),
		log: cfg.logger.With("saga", sagaType, "outbox", src.kind()),
	}
	r.clOpts = append([]kgo.Opt{
		kgo.SeedBrokers(cfg.brokers...),
		kgo.TransactionalID(cfg.txnID),
		kgo.TransactionTimeout(transactionTimeout),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
	}, cfg.kafkaOpts...)
	cl, err := kgo.NewClient(r.clOpts...)
	if err != nil {
		return nil, fmt.Errorf("outbox: relay: kafka client: %w", err)
	}
	r.cl = cl
	if cfg.reg != nil {
		if err := r.register(cfg.reg); err != nil {
			cl.Close()
			return nil, err
		}
	}
	return r, nil
}

// Stats are a relay's view of its outbox.
type Stats struct {
	// Pending is the number of entries in the outbox, as last read
	// (every second).
	Pending int64
	// OldestAge is the age of the oldest of them; zero when there is none.
	OldestAge time.Duration
	// Relayed counts the entries whose Kafka transaction committed;
	// Errors the failed rounds.
	Relayed, Errors uint64
}

// Stats returns the relay's counts. It is safe to call at any time.
func (r *Relay) Stats() Stats {
	s := Stats{Pending: r.pending.Load(), Relayed: r.relayed.Load(), Errors: r.errs.Load()}
	if s.Pending > 0 {
		s.OldestAge = max(time.Since(time.Unix(0, r.oldestAt.Load())), 0)
	}
	return s
}

func (r *Relay) register(reg prometheus.Registerer) error {
	labels := prometheus.Labels{"saga": r.sagaType, "store": r.src.kind()}
	cs := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ksaga_outbox_pending_entries", ConstLabels: labels,
			Help: "Start requests waiting in the outbox (read every second by the relay).",
		}, func() float64 { return float64(r.Stats().Pending) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ksaga_outbox_oldest_age_seconds", ConstLabels: labels,
			Help: "Age of the oldest start request waiting in the outbox; 0 when it is empty.",
		}, func() float64 { return r.Stats().OldestAge.Seconds() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ksaga_outbox_relayed_total", ConstLabels: labels,
			Help: "Start requests the relay produced in committed Kafka transactions.",
		}, func() float64 { return float64(r.relayed.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "ksaga_outbox_relay_errors_total", ConstLabels: labels,
			Help: "Relay rounds that failed (Kafka, Redis or PostgreSQL unavailable) and were retried.",
		}, func() float64 { return float64(r.errs.Load()) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("outbox: register metrics of the %s %s relay: %w", r.sagaType, r.src.kind(), err)
		}
	}
	return nil
}

// errFatal marks errors on which Run gives up.
var errFatal = errors.New("fatal")

// Run relays until ctx is cancelled, then aborts the current Kafka
// transaction if it has not committed yet and returns nil. It returns an
// error when the relay cannot go on: its transactional id was fenced by
// another relay, or Kafka refuses it access (ACLs); the caller should exit
// and let the instance restart. Run may be called once.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("outbox: Run called twice")
	}
	defer close(r.done)
	var wg sync.WaitGroup
	watchCtx, stop := context.WithCancel(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.watch(watchCtx)
	}()
	defer func() {
		stop()
		wg.Wait()
	}()
	r.log.Info("outbox relay running", "transactional_id", r.cfg.txnID, "batch", r.cfg.batch)
	failures := 0
	for ctx.Err() == nil {
		n, err := r.round(ctx)
		switch {
		case err == nil:
			failures = 0
			if n < r.cfg.batch && r.idle > 0 {
				ctxtime.Sleep(ctx, r.idle)
			}
		case ctx.Err() != nil:
		case errors.Is(err, errFatal):
			return fmt.Errorf("outbox: %s %s relay: %w", r.sagaType, r.src.kind(), err)
		default:
			failures++
			r.errs.Add(1)
			wait := r.cfg.backoff.Backoff(failures + 1)
			r.log.Warn("outbox relay round failed; retrying", "err", err, "wait", wait)
			ctxtime.Sleep(ctx, wait)
		}
	}
	return nil
}

// Close waits for Run to return (cancel its context first), then closes
// the Kafka client. It closes neither the Redis client nor the pool. It is
// safe to call more than once.
func (r *Relay) Close() {
	r.closeOnce.Do(func() {
		if r.running.Load() {
			<-r.done
		}
		r.cl.Close()
	})
}

// round relays one batch and returns how many entries it took off the
// outbox.
func (r *Relay) round(ctx context.Context) (int, error) {
	b, err := r.src.fetch(ctx, r.cfg.batch)
	if err != nil {
		return 0, err
	}
	if b.size() == 0 {
		b.release(ctx)
		return 0, nil
	}
	es := b.list()
	if len(es) > 0 {
		if err := r.send(ctx, es); err != nil {
			b.release(ctx)
			return 0, err
		}
		r.relayed.Add(uint64(len(es)))
		if r.afterCommit != nil {
			r.afterCommit(len(es))
		}
	}
	// The entries are in Kafka: remove them even when ctx is cancelled,
	// or a restart relays them again.
	doneCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := b.done(doneCtx); err != nil {
		return 0, fmt.Errorf("%w (the %d entries relayed will be relayed again, and dropped by the engine as duplicates)", err, len(es))
	}
	return b.size(), nil
}

// send produces es in one Kafka transaction and commits it.
func (r *Relay) send(ctx context.Context, es []entry) error {
	n, err := r.partitions(ctx)
	if err != nil {
		return err
	}
	if err := r.cl.BeginTransaction(); err != nil {
		r.reset()
		return fmt.Errorf("begin transaction: %w", err)
	}
	// A round that cannot flush within the transaction timeout gives up
	// and starts over: Kafka is down, or too slow.
	pctx, cancel := context.WithTimeout(ctx, transactionTimeout)
	defer cancel()
	var mu sync.Mutex
	var produceErr error
	for _, e := range es {
		r.cl.Produce(pctx, r.record(e, n), func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				if produceErr == nil {
					produceErr = err
				}
				mu.Unlock()
			}
		})
	}
	err = r.cl.Flush(pctx)
	mu.Lock()
	if err == nil {
		err = produceErr
	}
	mu.Unlock()
	if err != nil {
		r.abort()
		return classify(fmt.Errorf("produce %d start requests to %s: %w", len(es), message.Inbox(r.sagaType), err))
	}
	// The commit gets a context of its own: a commit cut short by a
	// shutdown leaves its outcome unknown.
	endCtx, endCancel := context.WithTimeout(context.WithoutCancel(ctx), transactionTimeout)
	defer endCancel()
	if err := r.cl.EndTransaction(endCtx, kgo.TryCommit); err != nil {
		// Committed or not, the entries stay in the outbox: relayed again
		// if it did commit, they are dropped as duplicates.
		r.abort()
		return classify(fmt.Errorf("commit the transaction: %w", err))
	}
	return nil
}

// classify marks the errors no retry can fix.
func classify(err error) error {
	switch {
	case errors.Is(err, kerr.ProducerFenced):
		return fmt.Errorf("%w: another relay took over the transactional id: %w", errFatal, err)
	case errors.Is(err, kerr.TransactionalIDAuthorizationFailed), errors.Is(err, kerr.ClusterAuthorizationFailed),
		errors.Is(err, kerr.TopicAuthorizationFailed):
		return fmt.Errorf("%w: %w", errFatal, err)
	}
	return err
}

// abort ends a failed transaction. When that fails too, the client is
// replaced: the new one registers the transactional id again, which
// aborts whatever the old one left open on the broker.
func (r *Relay) abort() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.cl.AbortBufferedRecords(ctx); err != nil {
		r.reset()
		return
	}
	if err := r.cl.EndTransaction(ctx, kgo.TryAbort); err != nil {
		r.reset()
	}
}

// reset replaces the Kafka client.
func (r *Relay) reset() {
	r.cl.Close()
	cl, err := kgo.NewClient(r.clOpts...)
	if err != nil {
		// The same options made the first client.
		panic(fmt.Sprintf("outbox: kafka client: %v", err))
	}
	r.cl = cl
}

// record returns the start request of e: what client.Start produces. Its
// value is e's data in canonical form (message.Canonical): Encode wrote it
// so, but a script of the caller's may have written its own JSON, or an
// entry may be older than Encode's canonical form. Data that has none
// (not JSON, a key twice) is relayed as it is, for the engine to
// dead-letter: an entry that the relay held back would stay for ever.
func (r *Relay) record(e entry, n int32) *kgo.Record {
	value, err := message.Canonical(e.data)
	if err != nil {
		value = e.data
	}
	return inbox.Start(r.sagaType, e.sagaID, n, value)
}

// partitions returns the inbox's partition count, asked once: it never
// changes (message.HomePartition).
func (r *Relay) partitions(ctx context.Context) (int32, error) {
	if r.parts > 0 {
		return r.parts, nil
	}
	topic := message.Inbox(r.sagaType)
	mctx, cancel := context.WithTimeout(ctx, transactionTimeout)
	defer cancel()
	n, err := inbox.Partitions(mctx, r.cl, topic)
	var kerrErr *kerr.Error
	switch {
	case errors.Is(err, inbox.ErrNoPartitions):
		return 0, fmt.Errorf("read the partitions of %s: the broker reports none (the daemon of saga type %s creates the topic)", topic, r.sagaType)
	case errors.As(err, &kerrErr):
		return 0, classify(fmt.Errorf("read the partitions of %s (the daemon of saga type %s creates it): %w", topic, r.sagaType, err))
	case err != nil:
		return 0, fmt.Errorf("read the partitions of %s: %w", topic, err)
	}
	r.parts = n
	return n, nil
}

// watch reads the outbox's size and age every statsInterval until ctx is
// cancelled. A failed read keeps the last values: the age goes on growing.
func (r *Relay) watch(ctx context.Context) {
	t := time.NewTicker(statsInterval)
	defer t.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, statsInterval)
		n, age, err := r.src.stats(sctx)
		cancel()
		if err == nil {
			r.oldestAt.Store(time.Now().Add(-age).UnixNano())
			r.pending.Store(n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
