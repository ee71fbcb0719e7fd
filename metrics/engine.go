package metrics

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ksaga/ksaga/orchestrator"
)

// Phase label values of the in-flight metrics.
const (
	PhaseDo         = "do"
	PhaseCompensate = "compensate"
	// PhaseParked counts the sagas parked at a step (saga.Step.Park):
	// they wait for an operator, so their budget is 0.
	PhaseParked = "parked"
)

// Engine is what WatchEngine reads; *orchestrator.Engine implements it.
type Engine interface {
	InFlight() []orchestrator.StepFlight
	Ready() bool
}

var _ Engine = (*orchestrator.Engine)(nil)

// Versioned is an Engine that also counts its running sagas per definition
// version; *orchestrator.Engine is one. WatchEngine then registers
// ksaga_sagas_by_version too.
type Versioned interface {
	Versions() []orchestrator.VersionCount
}

var _ Versioned = (*orchestrator.Engine)(nil)

type versionCollector struct {
	eng  Versioned
	desc *prometheus.Desc
}

func (c *versionCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *versionCollector) Collect(ch chan<- prometheus.Metric) {
	for _, v := range c.eng.Versions() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(v.Sagas), strconv.Itoa(v.Version), strconv.FormatBool(v.Current))
	}
}

// WatchEngine registers with reg the metrics that read eng's state on each
// scrape (labelled saga=sagaType):
//
//	ksaga_sagas_in_flight{step,phase}          running sagas of the partitions eng owns, waiting on the step (phase do) or its compensation (phase compensate)
//	ksaga_oldest_saga_age_seconds{step,phase}  how long the oldest of them has been there (0: none)
//	ksaga_step_budget_seconds{step,phase}      how long a saga may be there before the engine acts on its own (orchestrator.StepFlight.Budget)
//	ksaga_engine_ready                         1 while eng.Ready() reports true, else 0
//	ksaga_sagas_by_version{version,current}     running sagas of the partitions eng owns per definition version (when eng is Versioned)
//
// Engine.Ready of an *orchestrator.Engine is true once it has joined its
// group and restored its partitions, and false again while its last use of
// Redis or Kafka failed. A caller whose readiness asks for more (sagad's
// /readyz also pings Redis) passes an Engine whose Ready answers that, so
// that the gauge and the probe agree.
//
// Every step a saga can wait on has its series from the start. It fails
// when reg is nil or already holds these metrics for sagaType.
func WatchEngine(reg prometheus.Registerer, sagaType string, eng Engine) error {
	return watchEngine(reg, sagaType, eng, time.Now)
}

func watchEngine(reg prometheus.Registerer, sagaType string, eng Engine, now func() time.Time) error {
	if reg == nil || eng == nil {
		return errors.New("metrics: nil Registerer or Engine")
	}
	if sagaType == "" {
		return errors.New("metrics: empty saga type")
	}
	labels := prometheus.Labels{"saga": sagaType}
	c := &engineCollector{eng: eng, now: now,
		inFlight: prometheus.NewDesc("ksaga_sagas_in_flight",
			"Running sagas of the partitions this instance owns, by the step they wait on (phase do) or compensate (phase compensate).",
			[]string{"step", "phase"}, labels),
		oldest: prometheus.NewDesc("ksaga_oldest_saga_age_seconds",
			"How long the oldest running saga has been in its step or compensation (0 when none is).",
			[]string{"step", "phase"}, labels),
		budget: prometheus.NewDesc("ksaga_step_budget_seconds",
			"How long a saga may stay in a step before the engine acts on its own: the step's deadline times its attempts (for a compensation, the compensation policy's attempts times its reply deadline and longest backoff). A saga older than this is stuck.",
			[]string{"step", "phase"}, labels),
	}
	ready := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "ksaga", Name: "engine_ready", ConstLabels: labels,
		Help: "1 while the engine is ready for traffic, else 0: it has joined its consumer group and restored the partitions it owns, and its last use of Redis and Kafka did not fail. In sagad it is what /readyz answers for the engine, which also asks that Redis answer PING.",
	}, func() float64 {
		if eng.Ready() {
			return 1
		}
		return 0
	})
	cols := []prometheus.Collector{c, ready}
	if v, ok := eng.(Versioned); ok {
		cols = append(cols, &versionCollector{eng: v, desc: prometheus.NewDesc("ksaga_sagas_by_version",
			"Running sagas of the partitions this instance owns, by the version of the saga's definition they run on (current=\"true\": the version new sagas start on). An older version may be removed from the build once it is at 0 on every instance.",
			[]string{"version", "current"}, labels)})
	}
	for _, col := range cols {
		if err := reg.Register(col); err != nil {
			return fmt.Errorf("metrics: register engine of saga %s: %w", sagaType, err)
		}
	}
	return nil
}

type engineCollector struct {
	eng                      Engine
	now                      func() time.Time
	inFlight, oldest, budget *prometheus.Desc
}

func (c *engineCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.inFlight
	ch <- c.oldest
	ch <- c.budget
}

func (c *engineCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	for _, f := range c.eng.InFlight() {
		phase := PhaseDo
		switch {
		case f.Parked:
			phase = PhaseParked
		case f.Compensating:
			phase = PhaseCompensate
		}
		age := 0.0
		if f.Sagas > 0 {
			age = max(0, now.Sub(f.Oldest).Seconds())
		}
		ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(f.Sagas), f.Step, phase)
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age, f.Step, phase)
		ch <- prometheus.MustNewConstMetric(c.budget, prometheus.GaugeValue, f.Budget.Seconds(), f.Step, phase)
	}
}
