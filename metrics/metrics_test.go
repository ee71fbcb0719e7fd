package metrics

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga"
)

func newMetrics(t *testing.T) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := New(reg, "order")
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return m, reg
}

func ev(id, typ string) message.Event {
	return message.Event{SagaID: id, SagaType: "order", Type: typ}
}

// batch is a committed transaction: two sagas started, one completed, one
// compensated, one failed, a poison record dead-lettered, a duplicate dropped,
// three calls of UndoLocal failed.
func batch() *orchestrator.Batch {
	return &orchestrator.Batch{
		Records: 7,
		Events: []message.Event{
			ev("o-1", message.EventSagaStarted),
			ev("o-2", message.EventSagaStarted),
			ev("o-1", message.EventStepSucceeded),
			ev("o-1", message.EventSagaCompleted),
			ev("o-3", message.EventSagaCompensated),
			ev("o-4", message.EventSagaFailed),
		},
		StepLatencies: []orchestrator.StepLatency{
			// Binary fractions of a second, so the sum below is exact.
			{Step: "reserve-inventory", Duration: time.Second / 256},
			{Step: "reserve-inventory", Duration: time.Second / 32},
			{Step: "authorize-payment", Duration: 2 * time.Second},
		},
		DeadLettered:      []string{orchestrator.ReasonUndecodable},
		Dropped:           []string{orchestrator.DropDuplicateStart, orchestrator.DropStaleReply, orchestrator.DropStaleReply},
		Timeouts:          2,
		UndoLocalFailures: []string{"complete-order", "release-hold", "complete-order"},
		Phases:            orchestrator.Phases{Preload: time.Second / 512, Handle: time.Second / 64, Flush: time.Second / 128, Commit: time.Second / 256},
	}
}

func TestAfterCommit(t *testing.T) {
	m, reg := newMetrics(t)
	ctx := context.Background()
	m.AfterCommit(ctx, batch())
	m.AfterCompletion(ctx, batch(), true)

	for _, tc := range []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"started", m.started, 2},
		{"completed", m.finished.WithLabelValues(OutcomeCompleted), 1},
		{"compensated", m.finished.WithLabelValues(OutcomeCompensated), 1},
		{"failed", m.finished.WithLabelValues(OutcomeFailed), 1},
		{"inbox records", m.inbox, 7},
		{"timeouts", m.timeouts, 2},
		{"dlq undecodable", m.dlq.WithLabelValues(orchestrator.ReasonUndecodable), 1},
		{"dropped duplicate", m.dropped.WithLabelValues(orchestrator.DropDuplicateStart), 1},
		{"dropped stale", m.dropped.WithLabelValues(orchestrator.DropStaleReply), 2},
		{"undo local failures complete-order", m.undoFailures.WithLabelValues("complete-order"), 2},
		{"undo local failures release-hold", m.undoFailures.WithLabelValues("release-hold"), 1},
		{"committed", m.transactions.WithLabelValues(ResultCommitted), 1},
		{"aborted", m.transactions.WithLabelValues(ResultAborted), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := testutil.ToFloat64(tc.c); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}

	// One observation per phase, in seconds.
	phases := map[string]float64{PhasePreload: 1.0 / 512, PhaseHandle: 1.0 / 64, PhaseFlush: 1.0 / 128, PhaseCommit: 1.0 / 256}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, mf := range mfs {
		if mf.GetName() != "ksaga_transaction_phase_seconds" {
			continue
		}
		for _, s := range mf.GetMetric() {
			var phase string
			for _, l := range s.GetLabel() {
				if l.GetName() == "phase" {
					phase = l.GetValue()
				}
			}
			h := s.GetHistogram()
			if h.GetSampleCount() != 1 || h.GetSampleSum() != phases[phase] {
				t.Errorf("transaction_phase_seconds{phase=%q}: %d observations, sum %v; want 1, %v", phase, h.GetSampleCount(), h.GetSampleSum(), phases[phase])
			}
			seen++
		}
	}
	if seen != len(phases) {
		t.Errorf("transaction_phase_seconds: %d series, want %d", seen, len(phases))
	}

	// One histogram series per step.
	if got := testutil.CollectAndCount(m.steps); got != 2 {
		t.Errorf("step_duration_seconds series: got %d, want 2", got)
	}
	if got := testutil.CollectAndCount(m.undoFailures); got != 2 {
		t.Errorf("undo_local_failures_total series: got %d, want 2 (one per step)", got)
	}
	want := `
# HELP ksaga_step_duration_seconds How long a step or compensation took, from its start to its success, failure or compensation.
# TYPE ksaga_step_duration_seconds histogram
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="0.001"} 0
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="0.0025"} 0
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="0.005"} 0
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="0.01"} 0
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="0.025"} 0
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="0.05"} 0
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="0.1"} 0
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="0.25"} 0
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="0.5"} 0
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="1"} 0
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="2.5"} 1
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="5"} 1
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="10"} 1
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="30"} 1
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="60"} 1
ksaga_step_duration_seconds_bucket{saga="order",step="authorize-payment",le="+Inf"} 1
ksaga_step_duration_seconds_sum{saga="order",step="authorize-payment"} 2
ksaga_step_duration_seconds_count{saga="order",step="authorize-payment"} 1
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="0.001"} 0
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="0.0025"} 0
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="0.005"} 1
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="0.01"} 1
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="0.025"} 1
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="0.05"} 2
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="0.1"} 2
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="0.25"} 2
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="0.5"} 2
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="1"} 2
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="2.5"} 2
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="5"} 2
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="10"} 2
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="30"} 2
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="60"} 2
ksaga_step_duration_seconds_bucket{saga="order",step="reserve-inventory",le="+Inf"} 2
ksaga_step_duration_seconds_sum{saga="order",step="reserve-inventory"} 0.03515625
ksaga_step_duration_seconds_count{saga="order",step="reserve-inventory"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ksaga_step_duration_seconds"); err != nil {
		t.Error(err)
	}

	got := m.Snapshot()
	wantSnap := Snapshot{Started: 2, Completed: 1, Compensated: 1, Failed: 1, DeadLettered: 1, InboxRecords: 7, Committed: 1}
	if got != wantSnap {
		t.Errorf("Snapshot: got %+v, want %+v", got, wantSnap)
	}
	if got.Finished() != 3 {
		t.Errorf("Finished: got %d, want 3", got.Finished())
	}
}

func TestInitSteps(t *testing.T) {
	m, _ := newMetrics(t)
	m.InitSteps([]saga.StepInfo{
		{Name: "reserve-inventory", Undoable: true},
		{Name: "schedule-shipping"},
		{Name: "complete-order", Local: true, Undoable: true},
		{Name: "notify", Local: true},
	})
	want := `
# HELP ksaga_undo_local_failures_total Failed calls of a local step's UndoLocal, by step; each is retried after a backoff.
# TYPE ksaga_undo_local_failures_total counter
ksaga_undo_local_failures_total{saga="order",step="complete-order"} 0
`
	if err := testutil.CollectAndCompare(m.undoFailures, strings.NewReader(want)); err != nil {
		t.Errorf("only the local step with an UndoLocal, at 0: %v", err)
	}
}

func TestAbortedTransactionCountsNoSagas(t *testing.T) {
	m, _ := newMetrics(t)
	// The engine calls only AfterCompletion for an aborted transaction: its
	// events never happened.
	m.AfterCompletion(context.Background(), batch(), false)
	if got := testutil.ToFloat64(m.transactions.WithLabelValues(ResultAborted)); got != 1 {
		t.Errorf("aborted transactions: got %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.started); got != 0 {
		t.Errorf("started: got %v, want 0", got)
	}
	if got, want := m.Snapshot(), (Snapshot{Aborted: 1}); got != want {
		t.Errorf("Snapshot: got %+v, want %+v", got, want)
	}
}

func TestRetryAndRedisLag(t *testing.T) {
	m, reg := newMetrics(t)
	m.OnRetry(nil, 1, errors.New("boom"))
	m.OnRetry(nil, 2, errors.New("boom"))
	m.OnRedisLag(12, time.Now(), errors.New("connection refused"))
	// A failed read: nothing waits for Redis, and it still counts.
	m.OnRedisLag(0, time.Time{}, errors.New("i/o timeout"))
	m.OnRedisLag(5, time.Now(), nil)
	if got := testutil.ToFloat64(m.retries); got != 2 {
		t.Errorf("retries: got %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.redisErrors); got != 2 {
		t.Errorf("redis errors: got %v, want 2 (a failed write, a failed read)", got)
	}
	want := `
# HELP ksaga_redis_pending_states Committed saga states not yet written to Redis (held in memory until Redis acknowledges them).
# TYPE ksaga_redis_pending_states gauge
ksaga_redis_pending_states{saga="order"} 5
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ksaga_redis_pending_states"); err != nil {
		t.Error(err)
	}
}

func TestRegistration(t *testing.T) {
	m, reg := newMetrics(t)
	// Every metric is registered with the saga label, and the outcome and
	// result series exist before anything happened.
	n, err := testutil.GatherAndCount(reg)
	if err != nil {
		t.Fatal(err)
	}
	// started, inbox, retries, timeouts, forwarded, redis errors,
	// pending, redis lag: 1 each; finished: 3 outcomes; transactions: 2
	// results; transaction phases: 4; every dead-letter and drop reason.
	// Only the step histogram and the UndoLocal failures (by step) have no
	// series yet.
	if want := 8 + 3 + 2 + 4 + len(orchestrator.DeadLetterReasons()) + len(orchestrator.DropReasons()); n != want {
		t.Errorf("series at start: got %d, want %d", n, want)
	}
	// A dead letter of any reason, the first after a start included,
	// moves a series that exists at 0, so increase() sees it.
	for _, r := range orchestrator.DeadLetterReasons() {
		if got := testutil.ToFloat64(m.dlq.WithLabelValues(r)); got != 0 {
			t.Errorf("dlq %s at start: got %v, want 0", r, got)
		}
	}
	if len(orchestrator.DeadLetterReasons()) != 11 {
		t.Errorf("DeadLetterReasons lists %d reasons, want the 11 Reason* constants", len(orchestrator.DeadLetterReasons()))
	}
	if lint, err := testutil.GatherAndLint(reg); err != nil || len(lint) > 0 {
		t.Errorf("lint: %v %v", lint, err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			found := false
			for _, l := range mt.GetLabel() {
				if l.GetName() == "saga" && l.GetValue() == "order" {
					found = true
				}
			}
			if !found {
				t.Errorf("%s has no label saga=\"order\"", mf.GetName())
			}
		}
	}

	if _, err := New(reg, "order"); err == nil {
		t.Error("New twice on one registry for one saga type: got nil error, want a registration error")
	}
	if _, err := New(reg, "payment"); err != nil {
		t.Errorf("New for a second saga type on the same registry: %v", err)
	}
	if _, err := New(nil, "order"); err == nil {
		t.Error("New(nil): got nil error")
	}
}

func TestSnapshotConcurrent(t *testing.T) {
	m, _ := newMetrics(t)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range 100 {
			m.AfterCommit(context.Background(), batch())
			m.AfterCompletion(context.Background(), batch(), true)
		}
	}()
	go func() {
		defer wg.Done()
		for range 100 {
			_ = m.Snapshot()
		}
	}()
	wg.Wait()
	if got := m.Snapshot(); got.Started != 200 || got.Committed != 100 {
		t.Errorf("Snapshot: got started %d committed %d, want 200 and 100", got.Started, got.Committed)
	}
}

func TestRedisLagSeconds(t *testing.T) {
	m, reg := newMetrics(t)
	now := time.Unix(1000, 0)
	m.now = func() time.Time { return now }
	lag := func() string {
		return `
# HELP ksaga_redis_lag_seconds How long Redis has been behind the committed saga states: the age of the oldest state not yet written to Redis (0: up to date).
# TYPE ksaga_redis_lag_seconds gauge
ksaga_redis_lag_seconds{saga="order"} `
	}
	check := func(want string) {
		t.Helper()
		if err := testutil.GatherAndCompare(reg, strings.NewReader(lag()+want+"\n"), "ksaga_redis_lag_seconds"); err != nil {
			t.Error(err)
		}
	}
	check("0")
	m.OnRedisLag(3, now, errors.New("refused")) // behind since 1000
	now = now.Add(40 * time.Second)
	m.OnRedisLag(9, now.Add(-40*time.Second), errors.New("refused")) // still behind since 1000
	now = now.Add(20 * time.Second)
	check("60")
	// Under load a few states are always on their way: the lag is the
	// age of the oldest, not how long some have been pending.
	m.OnRedisLag(4, now.Add(-2*time.Millisecond), nil)
	check("0.002")
	m.OnRedisLag(0, time.Time{}, nil)
	check("0")
}
