package check

import (
	"fmt"
	"maps"
	"slices"

	"github.com/ksaga/ksaga/chaos/check/localfirst"
)

// Expectation kinds of the local-first saga (package localfirst), whose
// first step is a Local step.
const (
	// KindLocalComplete must end SagaCompleted.
	KindLocalComplete = "local-complete"
	// KindLocalRefused must end SagaCompensated after the approver
	// refused it (localfirst.ReasonRefused).
	KindLocalRefused = "local-refused"
	// KindLocalCompensate was sent a Compensate soon after its start, as
	// KindCompensate.
	KindLocalCompensate = "local-compensate"
	// KindLocalOutage is a transfer whose Local first step ran out of
	// attempts (the holds' Redis was down, the step hung or panicked):
	// its start request is dead-lettered (retries-exhausted) and it ends
	// with no saga at all, or SagaCompensated; either way its hold does
	// not stand.
	KindLocalOutage = "local-outage"
)

// InvLocal is the local-first saga's ledger invariant.
const InvLocal = "local-ledger"

// localSteps are the local-first saga's step names, in order.
var localSteps = func() []string {
	var names []string
	for _, s := range localfirst.New(localfirst.NewStore(nil, false, nil)).Steps() {
		names = append(names, s.Name)
	}
	return names
}()

// stepsOf returns the step names of a saga of the load and the effect of
// each in the ledgers the checker reads.
func (a *analysis) stepsOf(id string) ([]string, func(step string) (bool, bool)) {
	if a.sagas[id].Transfer != nil {
		return localSteps, a.localEffect(id)
	}
	return orderSteps, a.orderEffect(id)
}

// localEffect reports whether a step of transfer id stands in its ledger.
func (a *analysis) localEffect(id string) func(step string) (bool, bool) {
	return func(step string) (bool, bool) {
		switch step {
		case localfirst.StepHold:
			return a.d.Holds[id]["status"] == "held", true
		case localfirst.StepApprove:
			return a.d.Approvals[id]["status"] == "approved", true
		}
		return false, false
	}
}

// local checks the local-first saga's ledgers against the transfers'
// outcomes: a completed transfer's hold stands with its amount, taken once,
// and it is approved; any other transfer holds nothing and is not
// approved; each account's held total is the sum of its completed
// transfers.
func (a *analysis) local() {
	held := make(map[string]int64)
	accounts := maps.Clone(a.d.Held)
	if accounts == nil {
		accounts = make(map[string]int64)
	}
	for _, id := range a.ids() {
		t := a.sagas[id].Transfer
		if t == nil {
			continue
		}
		accounts[t.Account] += 0
		a.rep.Checked[InvLocal]++
		h, ap := a.d.Holds[id], a.d.Approvals[id]
		if n := parseInt(h["applies"]); n > 1 {
			a.fail(InvLocal, id, "the hold took the amount %d times", n)
		}
		if !a.completed(id) {
			if h != nil && h["status"] != "released" {
				a.fail(InvLocal, id, "transfer did not complete (%s) but its hold is %v", a.endOf(id), h)
			}
			if ap["status"] == "approved" {
				a.fail(InvLocal, id, "transfer did not complete (%s) but it is approved", a.endOf(id))
			}
			continue
		}
		held[t.Account] += t.AmountCents
		if h["status"] != "held" || h["amount_cents"] != fmt.Sprint(t.AmountCents) || h["applies"] != "1" {
			a.fail(InvLocal, id, "transfer of %d cents completed but its hold is %v", t.AmountCents, h)
		}
		if ap["status"] != "approved" {
			a.fail(InvLocal, id, "transfer completed but its approval is %v", ap)
		}
	}
	for _, acct := range slices.Sorted(maps.Keys(accounts)) {
		a.rep.Checked[InvLocal]++
		if got := a.d.Held[acct]; got != held[acct] {
			a.fail(InvLocal, acct, "%d cents held, but completed transfers hold %d", got, held[acct])
		}
	}
}
