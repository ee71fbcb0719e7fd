// Package compensation plans how a failed saga is undone and when the engine
// gives up on an undo that keeps failing.
//
//	plan := compensation.Plan(steps, failed, compensation.OutcomeUnknown)
//	// plan lists the steps to undo, last completed first.
//
// A compensation is retried until its participant confirms it; after
// Policy.MaxAttempts the saga ends SagaFailed and is dead-lettered for a human.
package compensation

import "time"

// Defaults of a zero Policy.
const (
	DefaultMaxAttempts = 10
	DefaultDeadline    = 10 * time.Second
)

// Policy bounds the attempts of one compensation command.
type Policy struct {
	// MaxAttempts is how many times an undo command is sent (the first
	// included) before the saga is given up as SagaFailed. Zero means
	// DefaultMaxAttempts.
	MaxAttempts int
	// Deadline is how long the engine waits for the reply to one attempt.
	// Zero means DefaultDeadline.
	Deadline time.Duration
}

// Attempts returns MaxAttempts with its default applied.
func (p Policy) Attempts() int {
	if p.MaxAttempts <= 0 {
		return DefaultMaxAttempts
	}
	return p.MaxAttempts
}

// GiveUp reports whether an undo that has been sent attempts times and still
// failed must be abandoned.
func (p Policy) GiveUp(attempts int) bool { return attempts >= p.Attempts() }

// ReplyDeadline returns Deadline with its default applied.
func (p Policy) ReplyDeadline() time.Duration {
	if p.Deadline <= 0 {
		return DefaultDeadline
	}
	return p.Deadline
}

// Outcome says what is known of the step that failed.
type Outcome int

const (
	// NotApplied: the failed step had no effect (its participant replied
	// failure, or a local step returned an error), so it is not undone.
	NotApplied Outcome = iota
	// OutcomeUnknown: the failed step may have taken effect (its command got
	// no reply before its attempts ran out), so it is undone as well.
	// Participants treat an undo of an effect they never made as done, and
	// refuse the effect if its command arrives after the undo.
	OutcomeUnknown
)

// Step is what the planner needs to know of a saga step.
type Step struct {
	// Undoable is true when the step has a compensation.
	Undoable bool
}

// Plan returns the indexes of the steps to undo, in the order to undo them,
// when step failed has failed: every undoable step before it, last first,
// and failed itself when its outcome is unknown.
func Plan(steps []Step, failed int, outcome Outcome) []int {
	last := failed - 1
	if outcome == OutcomeUnknown {
		last = failed
	}
	last = min(last, len(steps)-1)
	var plan []int
	for i := last; i >= 0; i-- {
		if steps[i].Undoable {
			plan = append(plan, i)
		}
	}
	return plan
}
