// Package metrics exports ksaga's Prometheus metrics: the engine's through
// its hooks and accessors, Redis round trips, consumer lag, the Kafka
// clients' and the build's.
//
//	reg := prometheus.NewRegistry()
//	m, err := metrics.New(reg, order.Name)
//	if err != nil {
//		return err
//	}
//	eng, err := orchestrator.New(def, …, orchestrator.Hooks(m),
//		orchestrator.KafkaOpts(metrics.Kafka(reg, order.Name, "engine")))
//	err = metrics.WatchEngine(reg, order.Name, eng)
//	err = metrics.RegisterBuildInfo(reg, version)
//	lag, err := metrics.NewLag(reg, eng.Client())
//	lag.Watch("ksaga-order", message.Inbox(order.Name))
//	rs, err := metrics.WatchRedis(ctx, reg, order.Name, rdb) // the engine's Redis
//	defer rs.Close()
//
// Every metric of New, NewRedis, WatchEngine and WatchRedis carries the constant label
// saga=<saga type>:
//
//	ksaga_sagas_started_total                    sagas started (SagaStarted events committed)
//	ksaga_sagas_finished_total{outcome}          sagas ended: completed, compensated or failed
//	ksaga_transactions_total{result}             engine transactions: committed or aborted
//	ksaga_transaction_phase_seconds{phase}       how long committed transactions spent in each phase
//	ksaga_inbox_records_total                    inbox records consumed in committed transactions
//	ksaga_retries_total                          failed processing attempts that will be retried
//	ksaga_dlq_records_total{reason}              inbox records dead-lettered, by reason
//	ksaga_dropped_messages_total{reason}         duplicate or stale inbox records dropped, by reason
//	ksaga_step_duration_seconds{step}            how long steps and compensations took
//	ksaga_timeouts_total                         Timeout messages produced for expired deadlines
//	ksaga_forwarded_records_total                inbox records moved to their saga's home partition
//	ksaga_undo_local_failures_total{step}        failed calls of a local step's UndoLocal (each retried after a backoff)
//	ksaga_redis_pending_states                   committed states not yet written to Redis
//	ksaga_redis_lag_seconds                      how long Redis has been behind the committed states (0: up to date)
//	ksaga_redis_errors_total                     failed Redis operations of the engine: reads and writes
//	ksaga_redis_round_trips_total{client}        Redis round trips (Redis hooks, see NewRedis)
//	ksaga_sagas_in_flight{step,phase}            running sagas of the owned partitions per step (WatchEngine)
//	ksaga_oldest_saga_age_seconds{step,phase}    how long the oldest of them has been in the step (WatchEngine)
//	ksaga_step_budget_seconds{step,phase}        how long a saga may stay in the step (WatchEngine)
//	ksaga_engine_ready                           1 while the engine is ready: joined, restored, Redis and Kafka answering (WatchEngine)
//	ksaga_sagas_by_version{version,current}       running sagas of the owned partitions per definition version (WatchEngine)
//	ksaga_redis_evicted_keys_total               keys the engines' Redis evicted (WatchRedis)
//	ksaga_redis_maxmemory_policy_safe            1: noeviction or volatile-*; 0: allkeys-*; -1: CONFIG refused (WatchRedis)
//
// and, without the saga label:
//
//	ksaga_consumer_lag{group,topic,partition}               offsets of a partition not consumed yet by a group (NewLag)
//	ksaga_consumer_committed_offset{group,topic,partition}  the group's committed offset (NewLag)
//	ksaga_consumer_lag_seconds{group,topic,partition}       how long the oldest record not consumed yet has waited (NewLag)
//	ksaga_consumer_lag_errors_total{group}                  failed lag reads (NewLag)
//	ksaga_build_info{version,goversion,revision}            always 1 (RegisterBuildInfo)
//	ksaga_kafka_*{saga,client}                              the Kafka clients' kprom metrics (Kafka)
//
// Every label value the metrics can take is created at zero when they are
// registered (dead-letter and drop reasons, outcomes, results, steps and
// phases; the steps of ksaga_undo_local_failures_total with InitSteps), so
// that rate() and increase() see the first event.
//
// The package depends on the engine, never the other way round: the engine
// knows only its hook interfaces and accessors.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga"
)

// Label values of ksaga_sagas_finished_total and ksaga_transactions_total.
const (
	OutcomeCompleted   = "completed"
	OutcomeCompensated = "compensated"
	OutcomeFailed      = "failed"

	ResultCommitted = "committed"
	ResultAborted   = "aborted"
)

// StepBuckets are the bounds, in seconds, of ksaga_step_duration_seconds:
// from a participant answering within a millisecond to a step that waits
// out a minute of deadlines.
var StepBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// PhaseBuckets are the bounds, in seconds, of
// ksaga_transaction_phase_seconds: from a sub-millisecond round trip to a
// transaction near its timeout.
var PhaseBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Label values of ksaga_transaction_phase_seconds (orchestrator.Phases).
const (
	PhasePreload = "preload"
	PhaseHandle  = "handle"
	PhaseFlush   = "flush"
	PhaseCommit  = "commit"
)

var (
	_ orchestrator.HookAfterCommit     = (*Metrics)(nil)
	_ orchestrator.HookAfterCompletion = (*Metrics)(nil)
	_ orchestrator.HookRetry           = (*Metrics)(nil)
	_ orchestrator.HookRedisLag        = (*Metrics)(nil)
)

// Metrics is a set of engine hooks that count what the engine does. Register
// it with orchestrator.Hooks. Its methods are safe for concurrent use.
type Metrics struct {
	started      prometheus.Counter
	finished     *prometheus.CounterVec
	transactions *prometheus.CounterVec
	phases       *prometheus.HistogramVec
	inbox        prometheus.Counter
	retries      prometheus.Counter
	dlq          *prometheus.CounterVec
	dropped      *prometheus.CounterVec
	steps        *prometheus.HistogramVec
	timeouts     prometheus.Counter
	forwarded    prometheus.Counter
	undoFailures *prometheus.CounterVec
	redisErrors  prometheus.Counter

	// pending is the last Redis lag the engine reported; the gauge reads
	// it rather than mirroring it. behind is when the oldest state not in
	// Redis was committed (Unix ns; 0 while up to date).
	pending atomic.Int64
	behind  atomic.Int64
	now     func() time.Time

	// mu guards snap. The engine calls the hooks from one goroutine;
	// Snapshot is called from others (a progress printer).
	mu   sync.Mutex
	snap Snapshot
}

// Snapshot is a copy of the counts, for progress lines and summaries that
// should not parse the Prometheus exposition.
type Snapshot struct {
	Started      int64
	Completed    int64
	Compensated  int64
	Failed       int64
	DeadLettered int64
	InboxRecords int64
	Committed    int64
	Aborted      int64
}

// Finished returns the number of sagas that ended, whatever the outcome.
func (s Snapshot) Finished() int64 { return s.Completed + s.Compensated + s.Failed }

// New returns the metrics of the saga type sagaType, registered with reg. It
// fails when reg is nil or already holds these metrics (for the same saga
// type). Register one Metrics per engine.
func New(reg prometheus.Registerer, sagaType string) (*Metrics, error) {
	if reg == nil {
		return nil, errors.New("metrics: nil Registerer")
	}
	if sagaType == "" {
		return nil, errors.New("metrics: empty saga type")
	}
	labels := prometheus.Labels{"saga": sagaType}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: "ksaga", Name: name, Help: help, ConstLabels: labels})
	}
	counterVec := func(name, help, label string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ksaga", Name: name, Help: help, ConstLabels: labels}, []string{label})
	}
	m := &Metrics{
		started:      counter("sagas_started_total", "Sagas started (SagaStarted events committed)."),
		finished:     counterVec("sagas_finished_total", "Sagas ended, by outcome: completed, compensated (failed and fully undone) or failed (a compensation could not be completed; needs a human).", "outcome"),
		transactions: counterVec("transactions_total", "Engine transactions, by result: committed or aborted.", "result"),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "ksaga", Name: "transaction_phase_seconds", ConstLabels: labels, Buckets: PhaseBuckets,
			Help: "How long committed engine transactions spent in each phase: preload (reading sagas from Redis), handle (applying the records), flush (waiting for the records to be written), commit (offsets and EndTxn).",
		}, []string{"phase"}),
		inbox:   counter("inbox_records_total", "Inbox records consumed in committed transactions."),
		retries: counter("retries_total", "Failed processing attempts of inbox records, whose transaction was aborted to retry them."),
		dlq:     counterVec("dlq_records_total", "Inbox records dead-lettered, by reason.", "reason"),
		dropped: counterVec("dropped_messages_total", "Duplicate or stale inbox records dropped, by reason.", "reason"),
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "ksaga", Name: "step_duration_seconds", ConstLabels: labels, Buckets: StepBuckets,
			Help: "How long a step or compensation took, from its start to its success, failure or compensation.",
		}, []string{"step"}),
		timeouts:     counter("timeouts_total", "Timeout messages produced for expired step deadlines."),
		forwarded:    counter("forwarded_records_total", "Inbox records that arrived off their saga's home partition and were moved there."),
		undoFailures: counterVec("undo_local_failures_total", "Failed calls of a local step's UndoLocal, by step; each is retried after a backoff.", "step"),
		redisErrors:  counter("redis_errors_total", "Failed Redis operations of the engine, reads and writes: loading sagas and checkpoints, writing committed states."),
	}
	m.now = time.Now
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "ksaga", Name: "redis_pending_states", ConstLabels: labels,
		Help: "Committed saga states not yet written to Redis (held in memory until Redis acknowledges them).",
	}, func() float64 { return float64(m.pending.Load()) })
	redisLag := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "ksaga", Name: "redis_lag_seconds", ConstLabels: labels,
		Help: "How long Redis has been behind the committed saga states: the age of the oldest state not yet written to Redis (0: up to date).",
	}, func() float64 {
		since := m.behind.Load()
		if since == 0 {
			return 0
		}
		return max(0, m.now().Sub(time.Unix(0, since)).Seconds())
	})

	// Known label values start at zero, so that rate() and alerts see the
	// series before the first event.
	for _, o := range []string{OutcomeCompleted, OutcomeCompensated, OutcomeFailed} {
		m.finished.WithLabelValues(o)
	}
	for _, r := range []string{ResultCommitted, ResultAborted} {
		m.transactions.WithLabelValues(r)
	}
	for _, p := range []string{PhasePreload, PhaseHandle, PhaseFlush, PhaseCommit} {
		m.phases.WithLabelValues(p)
	}
	for _, r := range orchestrator.DeadLetterReasons() {
		m.dlq.WithLabelValues(r)
	}
	for _, r := range orchestrator.DropReasons() {
		m.dropped.WithLabelValues(r)
	}

	for _, c := range []prometheus.Collector{
		m.started, m.finished, m.transactions, m.phases, m.inbox, m.retries, m.dlq,
		m.dropped, m.steps, m.timeouts, m.forwarded, m.undoFailures, m.redisErrors, pending, redisLag,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: register saga %s: %w", sagaType, err)
		}
	}
	return m, nil
}

// InitSteps creates at zero the series of the steps that New cannot know:
// ksaga_undo_local_failures_total{step} of every local step with an
// UndoLocal among steps (saga.Definition.Steps), so that increase() sees
// the first failure. Call it before the engine runs.
func (m *Metrics) InitSteps(steps []saga.StepInfo) {
	for _, s := range steps {
		if s.Local && s.Undoable {
			m.undoFailures.WithLabelValues(s.Name)
		}
	}
}

// AfterCommit counts what a committed transaction did: sagas started and
// finished, step durations, dead-letters, drops, failed UndoLocal calls,
// timeouts and records.
func (m *Metrics) AfterCommit(_ context.Context, b *orchestrator.Batch) {
	var started, completed, compensated, failed int64
	for _, ev := range b.Events {
		switch ev.Type {
		case message.EventSagaStarted:
			started++
		case message.EventSagaCompleted:
			completed++
		case message.EventSagaCompensated:
			compensated++
		case message.EventSagaFailed:
			failed++
		}
	}
	m.started.Add(float64(started))
	m.finished.WithLabelValues(OutcomeCompleted).Add(float64(completed))
	m.finished.WithLabelValues(OutcomeCompensated).Add(float64(compensated))
	m.finished.WithLabelValues(OutcomeFailed).Add(float64(failed))
	m.inbox.Add(float64(b.Records))
	m.timeouts.Add(float64(b.Timeouts))
	m.forwarded.Add(float64(b.Forwarded))
	m.phases.WithLabelValues(PhasePreload).Observe(b.Phases.Preload.Seconds())
	m.phases.WithLabelValues(PhaseHandle).Observe(b.Phases.Handle.Seconds())
	m.phases.WithLabelValues(PhaseFlush).Observe(b.Phases.Flush.Seconds())
	m.phases.WithLabelValues(PhaseCommit).Observe(b.Phases.Commit.Seconds())
	for _, s := range b.StepLatencies {
		m.steps.WithLabelValues(s.Step).Observe(s.Duration.Seconds())
	}
	for _, r := range b.DeadLettered {
		m.dlq.WithLabelValues(r).Inc()
	}
	for _, r := range b.Dropped {
		m.dropped.WithLabelValues(r).Inc()
	}
	for _, step := range b.UndoLocalFailures {
		m.undoFailures.WithLabelValues(step).Inc()
	}

	m.mu.Lock()
	m.snap.Started += started
	m.snap.Completed += completed
	m.snap.Compensated += compensated
	m.snap.Failed += failed
	m.snap.DeadLettered += int64(len(b.DeadLettered))
	m.snap.InboxRecords += int64(b.Records)
	m.mu.Unlock()
}

// AfterCompletion counts a transaction as committed or aborted.
func (m *Metrics) AfterCompletion(_ context.Context, _ *orchestrator.Batch, committed bool) {
	result := ResultAborted
	if committed {
		result = ResultCommitted
	}
	m.transactions.WithLabelValues(result).Inc()
	m.mu.Lock()
	if committed {
		m.snap.Committed++
	} else {
		m.snap.Aborted++
	}
	m.mu.Unlock()
}

// OnRetry counts a failed processing attempt.
func (m *Metrics) OnRetry(*kgo.Record, int, error) { m.retries.Inc() }

// OnRedisLag records the number of states waiting for Redis and the age of
// the oldest, and counts a failed Redis operation (a read or a write) when
// err is set.
func (m *Metrics) OnRedisLag(pending int, oldest time.Time, err error) {
	m.pending.Store(int64(pending))
	if pending == 0 || oldest.IsZero() {
		m.behind.Store(0)
	} else {
		m.behind.Store(oldest.UnixNano())
	}
	if err != nil {
		m.redisErrors.Inc()
	}
}

// Snapshot returns the counts so far.
func (m *Metrics) Snapshot() Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snap
}
