package check

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
	"github.com/ksaga/ksaga/saga/order/sim"
)

// InvHistory is the invariant that each saga's events on saga.T.events tell
// a story the engine can have told, and that replaying them gives the
// saga's final state and the effects its participants' ledgers show. The
// rules are those of history.problems.
const InvHistory = "history"

// refusalRE matches a participant's failure code (ksaga-reason on a failure
// reply, such as OUT_OF_STOCK): upper-case letters, digits and
// underscores. Every reason the engine writes itself is lower case
// ("no reply after 3 attempts", "compensation requested: …",
// orchestrator.ReasonExhausted and the other dead-letter reasons).
var refusalRE = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)

// refusal reports whether a StepFailed reason is a participant's refusal:
// the participant answered failure, so the step had no effect and is not
// undone (compensation.NotApplied).
func refusal(reason string) bool { return refusalRE.MatchString(reason) }

// history is one saga as the history rule sees it.
type history struct {
	// steps are the saga type's step names, in order.
	steps []string
	// events are the saga's committed events, in log order (one partition
	// of saga.T.events holds them all).
	events []message.Event
	// state is the saga's last state record (for a saga deleted after
	// the retention, the one its tombstone deleted); redis its state in
	// the engine's Redis. Either is nil when missing (the state and redis
	// invariants report that).
	state, redis *orchestrator.State
	// effect reports whether step's effect stands in the ledger the
	// checker reads, and false for ok when the step has no such ledger.
	// Nil: no step has one.
	effect func(step string) (stands, ok bool)
}

// problems returns what is wrong with h, one sentence each. The rules:
//
//  1. The first event is SagaStarted, the only one; versions never go down;
//     nothing follows the terminal event; every step an event names is a
//     step of the saga.
//  2. A step succeeds at most once and is compensated at most once. No step
//     succeeds and the saga does not complete once CompensationStarted
//     (at most one) has been written; StepCompensated and SagaCompensated
//     come only after it.
//  3. A StepCompensated for a step is preceded by a StepSucceeded of that
//     step, or by a StepFailed naming it whose outcome is unknown: the
//     engine undoes a step that did not succeed only when it may have
//     taken effect (compensation.OutcomeUnknown): a participant step with
//     no reply after its attempts, a step that was current when a
//     Compensate arrived, a step whose record ran out of retries or was
//     dead-lettered (a Local step whose attempts ran out may have left its
//     effect behind from an aborted attempt: its UndoLocal runs). A
//     StepFailed whose reason is a participant's refusal (refusal: an
//     upper-case failure code such as PAYMENT_DECLINED) says the step had
//     no effect (compensation.NotApplied): it must not be compensated.
//  4. Steps are compensated last first.
//  5. Replaying the events gives the final state: the terminal event's
//     status is the status of the last state record and of the Redis
//     view, at the same version, and the steps they list as undone are
//     the steps compensated, in the same order.
//  6. Once the saga has ended, a step's effect stands in its ledger exactly
//     when the step succeeded and was not compensated; after SagaFailed,
//     the step whose compensation was given up is not checked.
//  7. The history a state keeps (State.History, the console's timeline) is
//     the events, in order, each with its type, step, reason and version:
//     all of them, or the first and the latest when it dropped some
//     (HistoryDropped counts them). A state written with the history
//     turned off (--history 0) keeps none and is not checked.
func (h history) problems() []string {
	var out []string
	bad := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	if len(h.events) == 0 {
		return nil // the terminal rule reports a saga with no events
	}
	index := func(step string) int { return slices.Index(h.steps, step) }
	if t := h.events[0].Type; t != message.EventSagaStarted {
		bad("the first event is %s, want %s", t, message.EventSagaStarted)
	}
	var (
		succeeded   = make(map[string]int64) // step → version of its StepSucceeded
		failed      = make(map[string]string)
		compensated = make(map[string]bool)
		undone      []string // steps in the order they were compensated
		compStarted bool
		terminal    message.Event
		last        int64
	)
	for i, ev := range h.events {
		if ev.Version < last {
			bad("%s (version %d) comes after version %d", describe(ev), ev.Version, last)
		}
		last = max(last, ev.Version)
		if terminal.Type != "" {
			bad("%s comes after the terminal %s", describe(ev), terminal.Type)
		}
		switch ev.Type {
		case message.EventStepSucceeded, message.EventStepFailed, message.EventStepCompensated:
			if index(ev.Step) < 0 {
				bad("%s names a step the saga does not have (steps: %s)", describe(ev), strings.Join(h.steps, ", "))
				continue
			}
		}
		switch ev.Type {
		case message.EventSagaStarted:
			if i > 0 {
				bad("a second %s at version %d", ev.Type, ev.Version)
			}
		case message.EventStepSucceeded:
			if v, ok := succeeded[ev.Step]; ok {
				bad("step %s succeeded twice (versions %d and %d): it ran twice", ev.Step, v, ev.Version)
			} else {
				succeeded[ev.Step] = ev.Version
			}
			if compStarted {
				bad("step %s succeeded (version %d) after the compensation started", ev.Step, ev.Version)
			}
		case message.EventStepFailed:
			failed[ev.Step] = ev.Reason
		case message.EventCompensationStarted:
			if compStarted {
				bad("a second %s at version %d", ev.Type, ev.Version)
			}
			compStarted = true
		case message.EventStepCompensated:
			if compensated[ev.Step] {
				bad("step %s compensated twice", ev.Step)
			}
			if !compStarted {
				bad("step %s compensated (version %d) before any %s", ev.Step, ev.Version, message.EventCompensationStarted)
			}
			reason, hasFailed := failed[ev.Step]
			_, hasSucceeded := succeeded[ev.Step]
			switch {
			case hasSucceeded:
			case hasFailed && refusal(reason):
				bad("step %s compensated, but its participant refused it (%s): a refused step has no effect to undo", ev.Step, reason)
			case !hasFailed:
				bad("step %s compensated, but it neither succeeded nor failed before", ev.Step)
			}
			if n := len(undone); n > 0 && index(ev.Step) >= index(undone[n-1]) {
				bad("step %s compensated after step %s: steps are undone last first", ev.Step, undone[n-1])
			}
			compensated[ev.Step] = true
			undone = append(undone, ev.Step)
		case message.EventSagaCompleted:
			if compStarted {
				bad("%s after the compensation started", ev.Type)
			}
		case message.EventSagaCompensated:
			if !compStarted {
				bad("%s without a %s", ev.Type, message.EventCompensationStarted)
			}
		}
		if message.Terminal(ev.Type) && terminal.Type == "" {
			terminal = ev
		}
	}
	if terminal.Type == "" {
		return out // still running: the terminal rule reports it
	}
	want := statusOf[terminal.Type]
	if terminal.State != "" && terminal.State != want {
		bad("%s carries state %q, want %q", terminal.Type, terminal.State, want)
	}
	for _, v := range []struct {
		name string
		st   *orchestrator.State
	}{{"last state record", h.state}, {"Redis view", h.redis}} {
		if v.st == nil {
			continue
		}
		if v.st.Status != want || v.st.Version != terminal.Version {
			bad("replaying the events ends %s at version %d, but the %s is %s at version %d", want, terminal.Version, v.name, v.st.Status, v.st.Version)
		}
		var listed []string
		for _, i := range v.st.Undone {
			if i >= 0 && i < len(h.steps) {
				listed = append(listed, h.steps[i])
			} else {
				listed = append(listed, fmt.Sprintf("#%d", i))
			}
		}
		if !slices.Equal(listed, undone) {
			bad("the events compensate [%s], the %s lists [%s] as undone", strings.Join(undone, " "), v.name, strings.Join(listed, " "))
		}
		if d := historyDiff(v.st, h.events); d != "" {
			bad("the history the %s keeps is not the events: %s", v.name, d)
		}
	}
	if h.effect == nil {
		return out
	}
	givenUp := ""
	if terminal.Type == message.EventSagaFailed {
		givenUp = terminal.Step
	}
	for _, step := range h.steps {
		stands, ok := h.effect(step)
		if !ok || step == givenUp {
			continue
		}
		_, s := succeeded[step]
		switch net := s && !compensated[step]; {
		case stands && !net && compensated[step]:
			bad("step %s was compensated but its effect stands", step)
		case stands && !net:
			bad("step %s never succeeded but its effect stands", step)
		case !stands && net:
			bad("step %s succeeded and was not compensated, but its effect is not in its ledger", step)
		}
	}
	return out
}

// describe names an event in a problem.
func describe(ev message.Event) string {
	if ev.Step != "" {
		return ev.Type + " of " + ev.Step
	}
	return ev.Type
}

// orderSteps are the order saga's step names, in order.
var orderSteps = func() []string {
	var names []string
	for _, s := range order.New(sim.NewOrderStore(nil)).Steps() {
		names = append(names, s.Name)
	}
	return names
}()

// orderEffect reports whether a step of order id has its effect in the
// reference participants' ledgers and the orders store.
func (a *analysis) orderEffect(id string) func(step string) (bool, bool) {
	return func(step string) (bool, bool) {
		switch step {
		case order.StepReserveCoupon:
			return a.d.CouponClaims[id]["status"] == "issued", true
		case order.StepReserveInventory:
			return a.d.Reservations[id]["status"] == "reserved", true
		case order.StepAuthorizePayment:
			return a.d.Payments[id]["status"] == "authorized", true
		case order.StepScheduleShipping:
			return a.d.Shipments[id]["status"] == "scheduled", true
		case order.StepCompleteOrder:
			return a.d.Orders[id]["status"] == "completed", true
		}
		return false, false
	}
}

// history checks the history rule on every saga of the load that has
// events.
func (a *analysis) history() {
	for _, id := range a.ids() {
		evs := a.d.Events[id]
		if len(evs) == 0 {
			continue
		}
		a.rep.Checked[InvHistory]++
		steps, effect := a.stepsOf(id)
		final, _ := a.finalState(id)
		h := history{steps: steps, events: evs, state: stateOrNil(final), effect: effect}
		if r, ok := a.d.Redis[id]; ok {
			h.redis = stateOrNil(r.State)
		}
		for _, p := range h.problems() {
			a.fail(InvHistory, id, "%s", p)
		}
	}
}

// historyDiff says how st's history differs from the saga's events, "" if
// it does not (rule 7).
func historyDiff(st *orchestrator.State, evs []message.Event) string {
	hist := st.History
	if len(hist) == 0 && st.HistoryDropped == 0 {
		return ""
	}
	want := evs
	if st.HistoryDropped > 0 {
		if len(hist) == 0 || len(evs) != len(hist)+st.HistoryDropped {
			return fmt.Sprintf("%d entries and %d dropped for %d events", len(hist), st.HistoryDropped, len(evs))
		}
		want = append([]message.Event{evs[0]}, evs[len(evs)-len(hist)+1:]...)
	}
	if len(hist) != len(want) {
		return fmt.Sprintf("%d entries for %d events", len(hist), len(want))
	}
	for i, e := range hist {
		ev := want[i]
		if e.Type != ev.Type || e.Step != ev.Step || e.Reason != ev.Reason || e.Version != ev.Version {
			return fmt.Sprintf("entry %d is %s %s (version %d), the event %s (version %d)", i, e.Type, e.Step, e.Version, describe(ev), ev.Version)
		}
	}
	return ""
}

// stateOrNil decodes a state, or returns nil when there is none or it does
// not decode (the state rule reports that).
func stateOrNil(b []byte) *orchestrator.State {
	if len(b) == 0 {
		return nil
	}
	var st orchestrator.State
	if json.Unmarshal(b, &st) != nil {
		return nil
	}
	return &st
}
