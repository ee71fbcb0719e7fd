package orchestrator

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/compensation"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
)

// Opt configures an Engine.
type Opt interface{ apply(*config) }

type opt func(*config)

func (o opt) apply(c *config) { o(c) }

type config struct {
	brokers      []string
	rdb          redis.UniversalClient
	txnID        string
	group        string
	logger       *slog.Logger
	hooks        []Hook
	hosted       []*saga.Definition
	history      *int
	startOn      int
	kafkaOpts    []kgo.Opt
	retry        retry.Policy
	comp         compensation.Policy
	maxPoll      int
	now          func() time.Time
	maxValue     int
	txnTimeout   time.Duration
	infraBackoff retry.Policy
	static       bool
	txnInterval  time.Duration
	redisTimeout time.Duration
	retention    time.Duration
	retentionSet bool
	maxPollWait  time.Duration
	clockSet     bool
}

// Brokers sets the Kafka seed brokers. Required.
func Brokers(addrs ...string) Opt { return opt(func(c *config) { c.brokers = addrs }) }

// Redis sets the Redis client that holds the saga state view, checkpoints
// and attempt counters. Required. Close it after the Engine.
func Redis(rdb redis.UniversalClient) Opt { return opt(func(c *config) { c.rdb = rdb }) }

// TransactionalID sets the Kafka transactional id. It must be stable per
// instance (the StatefulSet pod name) so that a restarted instance fences
// its zombie. The default is "ksaga-<saga>-<hostname>".
func TransactionalID(id string) Opt { return opt(func(c *config) { c.txnID = id }) }

// Group sets the consumer group. The default is "ksaga-<saga>".
func Group(g string) Opt { return opt(func(c *config) { c.group = g }) }

// Logger sets the logger. The default is slog.Default().
func Logger(l *slog.Logger) Opt { return opt(func(c *config) { c.logger = l }) }

// Hooks registers hooks: values that implement one or more of the Hook*
// interfaces. New fails on a value that implements none.
func Hooks(hs ...Hook) Opt { return opt(func(c *config) { c.hooks = append(c.hooks, hs...) }) }

// KafkaOpts adds options to the engine's Kafka client (after the engine's
// own, so they win).
func KafkaOpts(opts ...kgo.Opt) Opt {
	return opt(func(c *config) { c.kafkaOpts = append(c.kafkaOpts, opts...) })
}

// Retry sets the policy of inbox records whose processing fails outside a
// local step (a local step's own policy applies to its failures). The zero
// value is three attempts, the first included.
func Retry(p retry.Policy) Opt { return opt(func(c *config) { c.retry = p }) }

// Compensation sets how compensations are retried and when the engine gives
// up on one.
func Compensation(p compensation.Policy) Opt { return opt(func(c *config) { c.comp = p }) }

// MaxPollRecords bounds the records handled in one transaction. The default
// is 1000.
func MaxPollRecords(n int) Opt { return opt(func(c *config) { c.maxPoll = n }) }

// Clock sets the engine's clock, for tests. The default is time.Now.
// Deadlines, undo backoffs, retention and the waits between a failed
// processing attempt and the next are measured on it, so a test can move
// time forward (package sagatest's Clock); pair it with MaxPollWait so
// that the engine looks at the clock often.
func Clock(now func() time.Time) Opt { return opt(func(c *config) { c.now, c.clockSet = now, true }) }

// MaxPollWait bounds how long the engine waits for records before it looks
// at its deadlines again. The default is 1s; a test that moves a Clock
// forward sets a few milliseconds.
func MaxPollWait(d time.Duration) Opt { return opt(func(c *config) { c.maxPollWait = d }) }

// MaxValueBytes bounds the value of an inbox record; larger records are
// dead-lettered unread. The default is 256 KiB.
func MaxValueBytes(n int) Opt { return opt(func(c *config) { c.maxValue = n }) }

// TransactionTimeout sets the Kafka transaction timeout, which bounds one
// batch's work. When an instance dies with a transaction open, the next owner
// of its partitions waits up to this long before it can restore them. The
// default is 10s.
func TransactionTimeout(d time.Duration) Opt { return opt(func(c *config) { c.txnTimeout = d }) }

// DefaultRetention is how long an ended saga stays in the Redis view and
// the state topic when no Retention is set.
const DefaultRetention = 7 * 24 * time.Hour

// Retention sets how long an ended saga stays in the Redis view and the
// state topic, from when it ended. Within it, a start request for the saga's
// id is a duplicate (dropped) or a conflict (dead-lettered); after it, the
// saga is deleted (a tombstone on the state topic, in a transaction) and its
// id may start a new saga. 0 keeps ended sagas forever: the view then grows
// with every saga. The default is DefaultRetention (7 days).
func Retention(d time.Duration) Opt {
	return opt(func(c *config) { c.retention, c.retentionSet = d, true })
}

// History sets how many of its events each saga's state keeps
// (State.History), from 0 (none: the smallest state records) to
// MaxHistory. The default is DefaultHistory.
func History(n int) Opt { return opt(func(c *config) { c.history = &n }) }

// RedisTimeout bounds each call the engine makes into Redis, whatever the
// client's own timeouts: a Redis that hangs (a stopped process, a stuck
// failover) then costs a retry after a backoff, never a stalled loop or an
// expired transaction. It must be shorter than the transaction timeout. The
// default is 5s, or a third of the transaction timeout when that is shorter.
func RedisTimeout(d time.Duration) Opt { return opt(func(c *config) { c.redisTimeout = d }) }

// InfraBackoff sets the backoff while a dependency of the engine itself
// (Redis) is down. The default starts at 200ms and caps at 5s.
func InfraBackoff(p retry.Policy) Opt { return opt(func(c *config) { c.infraBackoff = p }) }

// StaticMembership joins the consumer group as a static member whose
// instance id is the transactional id (KIP-345). A restarted instance gets
// its partitions back at once, without a rebalance and without waiting for
// its old session to time out; but an instance that stops for good keeps its
// partitions until the session timeout, as static members do not leave the
// group. Use it with stable ids (a StatefulSet) and a session timeout longer
// than a restart.
func StaticMembership() Opt { return opt(func(c *config) { c.static = true }) }

// TransactionInterval sets the least time from the beginning of one
// transaction to the beginning of the next, unless the last one was full
// (MaxPollRecords): the records that come meanwhile join the next one. A
// transaction costs the engine, the broker and Redis about as much CPU with
// one record as with a hundred, so at low rates an interval of a few
// milliseconds saves much of the engine's CPU, for up to the interval more
// per hop of a saga. The default, 0, begins a transaction as soon as
// records are there: the lowest latency. It plays the part of Kafka
// Streams' commit.interval.ms. Deadlines are not delayed by it.
func TransactionInterval(d time.Duration) Opt { return opt(func(c *config) { c.txnInterval = d }) }

func newConfig(sagaName string, opts []Opt) (config, error) {
	c := config{maxPoll: 1000, now: time.Now, maxValue: 256 << 10, txnTimeout: 10 * time.Second}
	for _, o := range opts {
		o.apply(&c)
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	if c.group == "" {
		c.group = "ksaga-" + sagaName
	}
	if c.txnID == "" {
		host, err := os.Hostname()
		if err != nil {
			return c, errors.New("no transactional id: set one with TransactionalID (the hostname is unavailable)")
		}
		c.txnID = "ksaga-" + sagaName + "-" + host
	}
	switch {
	case len(c.brokers) == 0:
		return c, errors.New("no Kafka brokers: set them with Brokers")
	case c.rdb == nil:
		return c, errors.New("no Redis client: set one with Redis")
	case c.maxPoll <= 0:
		return c, errors.New("MaxPollRecords must be positive")
	case c.txnInterval < 0:
		return c, errors.New("TransactionInterval must not be negative")
	case c.redisTimeout < 0 || (c.redisTimeout > 0 && c.redisTimeout >= c.txnTimeout):
		return c, fmt.Errorf("RedisTimeout %v must be positive and shorter than the transaction timeout %v", c.redisTimeout, c.txnTimeout)
	}
	if c.maxPollWait <= 0 {
		c.maxPollWait = time.Second
	}
	if c.history != nil && (*c.history < 0 || *c.history > MaxHistory) {
		return c, fmt.Errorf("History %d: want 0 (none) up to %d", *c.history, MaxHistory)
	}
	if c.retention < 0 {
		return c, fmt.Errorf("Retention %v is negative: want a duration, or 0 to keep ended sagas forever", c.retention)
	}
	if !c.retentionSet {
		c.retention = DefaultRetention
	}
	if c.redisTimeout == 0 {
		c.redisTimeout = min(5*time.Second, c.txnTimeout/3)
	}
	tracers := 0
	for _, h := range c.hooks {
		if !isHook(h) {
			return c, errors.New("a registered hook implements none of the Hook interfaces")
		}
		if _, ok := h.(HookTrace); ok {
			tracers++
		}
	}
	if tracers > 1 {
		return c, errors.New("more than one registered hook implements HookTrace")
	}
	return c, nil
}
