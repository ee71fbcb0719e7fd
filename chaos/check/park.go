package check

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ksaga/ksaga/chaos/check/localfirst"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// InvPark is the invariant that every parking of a saga (a step whose
// attempts ran out and that parks: saga.Step.Park) is resolved exactly once,
// by a SagaResumed or by a compensation, before the saga ends; the rules are
// those of parking.problems.
const InvPark = "parking"

// ReplyArrivedReason is the reason of the SagaResumed event the engine
// writes when the parked step's late reply resumes the saga. A SagaResumed
// for an operator's Resume has the reason "resumed" (and ": " and the
// Resume's reason).
const ReplyArrivedReason = "the step's reply arrived"

// The reasons of the Resume and Compensate messages cmd/sagachaos sends to
// the sagas its coupon-park fault parked (Expectation.Resumed,
// KindParkCompensate).
const (
	ResumeReason         = "chaos-resume"
	ParkCompensateReason = "chaos-park-compensate"
)

// parking is one saga's events as the parking rule sees them.
type parking struct {
	// parks are the names of the saga type's steps that park it.
	parks []string
	// events are the saga's committed events, in log order.
	events []message.Event
}

// resolution is how a parking ended.
type resolution struct {
	step string
	// by is message.EventSagaResumed or message.EventCompensationStarted.
	by string
	// reason is the SagaResumed's reason, or the reason of the StepFailed
	// that the compensation of the parked step starts from (a Compensate).
	reason string
}

// problems returns what is wrong with the parkings of p, one sentence
// each, and how each parking was resolved. The rules:
//
//  1. Only a step that parks (saga.Step.Park) parks the saga.
//  2. A parked saga stays where it is until its parking is resolved: the
//     next event is a SagaResumed of the parked step (a Resume, or its
//     late reply), or a StepFailed of that step right before a
//     CompensationStarted (a Compensate). Nothing else happens meanwhile,
//     a saga is not parked again while parked, and a SagaResumed comes
//     only while it is parked: each parking is resolved exactly once.
//  3. No saga ends while parked, and a saga that parked ends with exactly
//     one terminal event.
func (p parking) problems() ([]string, []resolution) {
	var out []string
	var done []resolution
	bad := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	parked := "" // the step the saga is parked at
	failed := "" // the reason of a StepFailed of the parked step, awaiting its CompensationStarted
	terminals, everParked := 0, false
	for _, ev := range p.events {
		if message.Terminal(ev.Type) {
			terminals++
		}
		if parked == "" {
			switch ev.Type {
			case message.EventSagaParked:
				everParked = true
				if !slices.Contains(p.parks, ev.Step) {
					bad("parked at step %q (version %d), which does not park (steps that park: %s)", ev.Step, ev.Version, strings.Join(p.parks, ", "))
				}
				parked = ev.Step
			case message.EventSagaResumed:
				bad("SagaResumed of %s (version %d, %q) while the saga was not parked: a parking resolved twice, or one never made", ev.Step, ev.Version, ev.Reason)
			}
			continue
		}
		switch {
		case failed != "" && ev.Type == message.EventCompensationStarted:
			done = append(done, resolution{step: parked, by: ev.Type, reason: failed})
			parked, failed = "", ""
		case failed != "":
			bad("%s (version %d) after the StepFailed of parked step %s, want %s", describe(ev), ev.Version, parked, message.EventCompensationStarted)
			parked, failed = "", ""
		case ev.Type == message.EventSagaResumed && ev.Step == parked:
			done = append(done, resolution{step: parked, by: ev.Type, reason: ev.Reason})
			parked = ""
		case ev.Type == message.EventStepFailed && ev.Step == parked:
			failed = ev.Reason
		case ev.Type == message.EventSagaParked:
			bad("parked again at %s (version %d) while parked at %s: the first parking was never resolved", ev.Step, ev.Version, parked)
			parked = ev.Step
		case message.Terminal(ev.Type):
			bad("ended %s (version %d) while parked at %s", ev.Type, ev.Version, parked)
			parked = ""
		default:
			bad("%s (version %d) while parked at %s", describe(ev), ev.Version, parked)
		}
	}
	switch {
	case !everParked:
	case parked != "" && terminals == 0:
		bad("parked at %s and never resumed or compensated", parked)
	case terminals != 1:
		bad("parked, then ended with %d terminal events, want 1", terminals)
	}
	return out, done
}

// parkSteps returns the names of the steps of def that park the saga.
func parkSteps(def *saga.Definition) []string {
	var names []string
	for _, s := range def.Steps() {
		if s.Park {
			names = append(names, s.Name)
		}
	}
	return names
}

var (
	orderParks = parkSteps(order.New(sim.NewOrderStore(nil)))
	localParks = parkSteps(localfirst.New(localfirst.NewStore(nil, false, nil)))
)

// parking checks the parking rule on every saga of the load that has
// events, and that the sagas the harness resumed or compensated while they
// were parked took its message: an Expectation.Resumed saga has a
// SagaResumed naming ResumeReason, a KindParkCompensate one a compensation
// that starts from a StepFailed naming ParkCompensateReason.
func (a *analysis) parking() {
	for _, id := range a.ids() {
		e, evs := a.sagas[id], a.d.Events[id]
		if len(evs) == 0 {
			continue // the terminal rule reports it
		}
		p := parking{parks: orderParks, events: evs}
		if e.Transfer != nil {
			p.parks = localParks
		}
		a.rep.Checked[InvPark]++
		problems, done := p.problems()
		for _, s := range problems {
			a.fail(InvPark, id, "%s", s)
		}
		if e.Resumed && !slices.ContainsFunc(done, func(r resolution) bool {
			return r.by == message.EventSagaResumed && strings.Contains(r.reason, ResumeReason)
		}) {
			a.fail(InvPark, id, "was sent a Resume (%q) while parked, but no SagaResumed names it (parkings resolved: %s)", ResumeReason, describeResolutions(done))
		}
		if e.Kind == KindParkCompensate && !slices.ContainsFunc(done, func(r resolution) bool {
			return r.by == message.EventCompensationStarted && strings.Contains(r.reason, ParkCompensateReason)
		}) {
			a.fail(InvPark, id, "was sent a Compensate (%q) while parked, but no compensation of its parked step names it (parkings resolved: %s)", ParkCompensateReason, describeResolutions(done))
		}
	}
}

func describeResolutions(rs []resolution) string {
	if len(rs) == 0 {
		return "none"
	}
	var parts []string
	for _, r := range rs {
		parts = append(parts, fmt.Sprintf("%s by %s %q", r.step, r.by, r.reason))
	}
	return strings.Join(parts, "; ")
}

// resends returns, per saga and step, how many times an operator's Resume
// sent the step's command again: its message id and attempt numbers are
// used once more each time (the no-duplicate rule allows that many
// repeats). A late reply that resumes a saga sends nothing.
func resends(events map[string][]message.Event) map[string]map[string]int {
	out := make(map[string]map[string]int)
	for _, id := range slices.Sorted(maps.Keys(events)) {
		for _, ev := range events[id] {
			if ev.Type != message.EventSagaResumed || ev.Reason == ReplyArrivedReason {
				continue
			}
			if out[id] == nil {
				out[id] = make(map[string]int)
			}
			out[id][ev.Step]++
		}
	}
	return out
}

// commandStep returns the step of a command's message id
// ("<saga id>/<step>/<kind>").
func commandStep(k CommandKey) string {
	rest, ok := strings.CutPrefix(k.MessageID, k.SagaID+"/")
	if !ok {
		return ""
	}
	step, _, _ := strings.Cut(rest, "/")
	return step
}
