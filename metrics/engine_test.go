package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ksaga/ksaga/orchestrator"
)

type fakeEngine struct {
	flights []orchestrator.StepFlight
	ready   bool
}

func (f *fakeEngine) InFlight() []orchestrator.StepFlight { return f.flights }
func (f *fakeEngine) Ready() bool                         { return f.ready }

func TestWatchEngine(t *testing.T) {
	reg := prometheus.NewRegistry()
	now := time.Unix(10_000, 0)
	eng := &fakeEngine{flights: []orchestrator.StepFlight{
		{Step: "reserve-inventory", Sagas: 3, Oldest: now.Add(-90 * time.Second), Budget: 90 * time.Second},
		{Step: "schedule-shipping", Budget: 90 * time.Second},
		{Step: "reserve-inventory", Compensating: true, Sagas: 1, Oldest: now.Add(-2 * time.Second), Budget: 700 * time.Second},
	}}
	if err := watchEngine(reg, "order", eng, func() time.Time { return now }); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP ksaga_engine_ready 1 while the engine is ready for traffic, else 0: it has joined its consumer group and restored the partitions it owns, and its last use of Redis and Kafka did not fail. In sagad it is what /readyz answers for the engine, which also asks that Redis answer PING.
# TYPE ksaga_engine_ready gauge
ksaga_engine_ready{saga="order"} 0
# HELP ksaga_oldest_saga_age_seconds How long the oldest running saga has been in its step or compensation (0 when none is).
# TYPE ksaga_oldest_saga_age_seconds gauge
ksaga_oldest_saga_age_seconds{phase="compensate",saga="order",step="reserve-inventory"} 2
ksaga_oldest_saga_age_seconds{phase="do",saga="order",step="reserve-inventory"} 90
ksaga_oldest_saga_age_seconds{phase="do",saga="order",step="schedule-shipping"} 0
# HELP ksaga_sagas_in_flight Running sagas of the partitions this instance owns, by the step they wait on (phase do) or compensate (phase compensate).
# TYPE ksaga_sagas_in_flight gauge
ksaga_sagas_in_flight{phase="compensate",saga="order",step="reserve-inventory"} 1
ksaga_sagas_in_flight{phase="do",saga="order",step="reserve-inventory"} 3
ksaga_sagas_in_flight{phase="do",saga="order",step="schedule-shipping"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ksaga_engine_ready", "ksaga_oldest_saga_age_seconds", "ksaga_sagas_in_flight"); err != nil {
		t.Error(err)
	}
	eng.ready = true
	want = `
# HELP ksaga_engine_ready 1 while the engine is ready for traffic, else 0: it has joined its consumer group and restored the partitions it owns, and its last use of Redis and Kafka did not fail. In sagad it is what /readyz answers for the engine, which also asks that Redis answer PING.
# TYPE ksaga_engine_ready gauge
ksaga_engine_ready{saga="order"} 1
# HELP ksaga_step_budget_seconds How long a saga may stay in a step before the engine acts on its own: the step's deadline times its attempts (for a compensation, the compensation policy's attempts times its reply deadline and longest backoff). A saga older than this is stuck.
# TYPE ksaga_step_budget_seconds gauge
ksaga_step_budget_seconds{phase="compensate",saga="order",step="reserve-inventory"} 700
ksaga_step_budget_seconds{phase="do",saga="order",step="reserve-inventory"} 90
ksaga_step_budget_seconds{phase="do",saga="order",step="schedule-shipping"} 90
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "ksaga_engine_ready", "ksaga_step_budget_seconds"); err != nil {
		t.Error(err)
	}
	if lint, err := testutil.GatherAndLint(reg); err != nil || len(lint) > 0 {
		t.Errorf("lint: %v %v", lint, err)
	}
	if err := WatchEngine(reg, "order", eng); err == nil {
		t.Error("WatchEngine twice for one saga type: got nil error")
	}
	if err := WatchEngine(reg, "trip", eng); err != nil {
		t.Errorf("WatchEngine for a second saga type: %v", err)
	}
}

func TestRegisterBuildInfo(t *testing.T) {
	reg := prometheus.NewRegistry()
	if err := RegisterBuildInfo(reg, "v1.2.3"); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || mfs[0].GetName() != "ksaga_build_info" {
		t.Fatalf("gathered %v, %v; want ksaga_build_info", mfs, err)
	}
	labels := map[string]string{}
	for _, l := range mfs[0].GetMetric()[0].GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["version"] != "v1.2.3" || !strings.HasPrefix(labels["goversion"], "go") || labels["revision"] == "" {
		t.Errorf("labels %v, want version v1.2.3, a goversion and a revision", labels)
	}
	if got := mfs[0].GetMetric()[0].GetGauge().GetValue(); got != 1 {
		t.Errorf("value %v, want 1", got)
	}
	if err := RegisterBuildInfo(reg, "v1.2.3"); err == nil {
		t.Error("RegisterBuildInfo twice: got nil error")
	}
}
