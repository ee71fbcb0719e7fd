package orchestrator

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/ksaga/ksaga/compensation"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
)

// undoLocal runs the UndoLocal of local step i, due now. Its failure (an
// error, a panic, a call that outlived the step's Timeout) is counted in the
// state and retried after a backoff, like a compensation command that its
// participant failed; after the compensation policy's attempts the saga
// ends SagaFailed.
func (m *machine) undoLocal(ctx context.Context, out *outcome, i int) error {
	st := out.state
	name := m.steps[i].Name
	st.UndoSends++
	lctx, end := m.traceLocal(m.info(ctx, st, i, st.UndoSends, true), name, true)
	err := m.def.RunUndoLocal(lctx, i, out.data, saga.Key{SagaID: st.ID, Step: name, Fence: st.Version})
	end(err)
	if err == nil {
		m.event(out, message.EventStepCompensated, name, "")
		st.Undone = append(st.Undone, i)
		return m.nextUndo(ctx, out)
	}
	st.LastError = truncate(err.Error(), maxLastError)
	out.undoFailed = name
	if m.compOf(i).GiveUp(st.UndoSends) {
		m.fail(out, fmt.Sprintf("compensation of %s failed %d times, last: %v", name, st.UndoSends, err))
		return nil
	}
	st.UndoFailures++
	st.Waiting, st.Attempt = commandID(st.ID, name, "undo-local-"+strconv.Itoa(st.UndoFailures)), st.UndoSends+1
	st.Deadline = m.now().Add(undoBackoff.Backoff(st.UndoSends + 1)).UnixMilli()
	return nil
}

func (m *machine) compensate(ctx context.Context, st *State, data any, in *input) (*outcome, error) {
	if st == nil {
		return nil, inputErr(ReasonUnknownSaga, "compensate saga %s, which does not exist", in.sagaID)
	}
	if st.Status != message.StatusRunning && st.Status != message.StatusParked {
		return &outcome{drop: DropEnded}, nil
	}
	out := m.next(st, data)
	reason := "compensation requested"
	if in.reason != "" {
		reason += ": " + in.reason
	}
	if len(st.Group) > 0 && st.Status == message.StatusRunning {
		return out, m.compensateGroup(ctx, out, reason)
	}
	m.event(out, message.EventStepFailed, m.steps[st.Step].Name, reason)
	return out, m.startCompensation(ctx, out, st.Step, compensation.OutcomeUnknown, reason)
}

// park parks the saga at step i, whose attempts ran out for reason: it
// waits for a Resume or a Compensate, or for the step's late reply (its
// Waiting stays set), with no deadline.
func (m *machine) park(out *outcome, i int, reason string) {
	st := out.state
	st.Status, st.Step, st.Reason, st.Deadline = message.StatusParked, i, reason, 0
	if m.steps[i].Local {
		st.Waiting, st.Attempt = "", 0
	}
	m.event(out, message.EventSagaParked, m.steps[i].Name, reason)
}

// resume resumes a parked saga: its step is run again (a Local step, in
// this transaction) or sent again with fresh attempts and the same message
// id, so that a participant that acted but whose reply was lost answers
// with its stored reply.
func (m *machine) resume(ctx context.Context, st *State, data any, in *input) (*outcome, error) {
	if st == nil {
		return nil, inputErr(ReasonUnknownSaga, "resume saga %s, which does not exist", in.sagaID)
	}
	if st.Status != message.StatusParked {
		return &outcome{drop: DropNotParked}, nil
	}
	out := m.next(st, data)
	next := out.state
	i := next.Step
	step := m.steps[i]
	reason := "resumed"
	if in.reason != "" {
		reason += ": " + in.reason
	}
	next.Status, next.Reason, next.StepStarted = message.StatusRunning, "", m.now().UnixMilli()
	m.event(out, message.EventSagaResumed, step.Name, reason)
	if step.Local {
		return out, m.advance(ctx, out, i)
	}
	cmd, err := m.def.Do(m.info(ctx, next, i, 1, false), i, out.data)
	if err != nil {
		return nil, &StepError{Step: step.Name, Index: i, Retry: step.Retry, Err: fmt.Errorf("build command: %w", err)}
	}
	return out, m.send(out, cmd, commandID(next.ID, step.Name, "do"), 1, step.Deadline)
}

// Abort moves a saga to compensation after a processing failure of its
// current step was dead-lettered. It is the engine's path for exhausted and
// permanent failures.
// failed names the step whose code failed (a StepError's Index), or is -1
// when the record's failure is not a step's (the current step is then
// reported).
//
// in is the record whose failure ran out of attempts. When it is the
// successful reply that the saga waited on, its step did succeed: the
// history says so (StepSucceeded) before the step that failed after it, as
// do the local steps run in between, so that every step compensated
// succeeded first.
func (m *machine) abort(ctx context.Context, st *State, data any, in *input, reason string, failed int) (*outcome, error) {
	out := m.next(st, data)
	if len(st.Group) > 0 {
		// A record of a member (its reply's OnReply, its re-send) ran
		// out of attempts: the group cannot complete.
		return out, m.compensateGroup(ctx, out, reason)
	}
	if failed < st.Step || failed >= len(m.steps) {
		failed = st.Step
	}
	if failed > st.Step && st.Undoing < 0 && in.typ == message.TypeReply && in.inReplyTo == st.Waiting && in.outcome == message.OutcomeSuccess {
		m.event(out, message.EventStepSucceeded, m.steps[st.Step].Name, "")
		m.reached(ctx, out, st.Step+1, failed)
	}
	return out, m.failStep(ctx, out, failed, reason)
}

// abortStart starts the saga of a start request whose own transaction kept
// failing at step failed until its attempts ran out, and compensates it:
// the local steps before failed succeeded in the last attempt (their
// effects stand), and failed's own may have been made before its
// transaction aborted. Without a saga nothing could ever undo them. A step
// that parks (saga.Step.Park) parks the new saga instead. When neither
// applies (nothing to undo, no parking) abortStart returns a nil outcome
// and no saga starts, so that the dead-lettered start can be redriven once
// its cause is fixed.
func (m *machine) abortStart(ctx context.Context, in *input, reason string, failed int) (*outcome, error) {
	if failed < 0 || failed >= len(m.steps) {
		failed = 0
	}
	out, err := m.begin(in, startHash(in.data))
	if err != nil {
		return nil, err
	}
	plan := compensation.Plan(m.undo, failed, m.failedOutcome(failed))
	if !m.steps[failed].Park && !slices.ContainsFunc(plan, func(i int) bool { return !m.skipped(ctx, i, out.data) }) {
		return nil, nil
	}
	m.reached(ctx, out, 0, failed)
	return out, m.failStep(ctx, out, failed, reason)
}

// failedOutcome is what the engine knows of the effect of step i, whose
// code failed until its attempts ran out: a local step whose attempt
// aborted may have left its effect behind, unless it has nothing to undo; a
// participant step whose reply could not be handled may have had its
// effect too.
func (m *machine) failedOutcome(i int) compensation.Outcome {
	if step := m.steps[i]; step.Local && !step.Undoable {
		return compensation.NotApplied
	}
	return compensation.OutcomeUnknown
}

// reached records, as succeeded, the local steps from up to (not
// including) to that ran in the record's transaction: those the saga's data
// does not skip. Only local steps run between two participant steps.
func (m *machine) reached(ctx context.Context, out *outcome, from, to int) {
	for i := from; i < to; i++ {
		if m.steps[i].Local && !m.skipped(ctx, i, out.data) {
			m.event(out, message.EventStepSucceeded, m.steps[i].Name, "")
		}
	}
}

// failStep reports step failed as failed for reason and compensates, or
// parks the saga when the step says so (saga.Step.Park).
func (m *machine) failStep(ctx context.Context, out *outcome, failed int, reason string) error {
	step := m.steps[failed]
	if step.Park {
		m.park(out, failed, reason)
		return nil
	}
	m.event(out, message.EventStepFailed, step.Name, reason)
	return m.startCompensation(ctx, out, failed, m.failedOutcome(failed), reason)
}

func (m *machine) startCompensation(ctx context.Context, out *outcome, failed int, o compensation.Outcome, reason string) error {
	st := out.state
	st.Status, st.Step, st.Reason, st.Group = message.StatusCompensating, failed, reason, nil
	st.Plan = m.plan(ctx, out, failed, o)
	m.event(out, message.EventCompensationStarted, "", reason)
	return m.nextUndo(ctx, out)
}

// plan is the compensation plan of a failure at step failed whose outcome
// is o: the steps before it that the data does not skip and that have a
// compensation, last first, after failed itself when its effect may have
// happened.
func (m *machine) plan(ctx context.Context, out *outcome, failed int, o compensation.Outcome) []int {
	return slices.DeleteFunc(compensation.Plan(m.undo, failed, o), func(i int) bool { return m.skipped(ctx, i, out.data) })
}

// skipped reports whether data skips step i (saga.Step.Skip). When Skip
// fails (a panic, a call that outlives its Timeout), the step counts as not
// skipped: its compensation is then sent, which a participant answers as
// done for an effect it never made.
func (m *machine) skipped(ctx context.Context, i int, data any) bool {
	if !m.steps[i].Optional {
		return false
	}
	skip, err := m.def.Skip(ctx, i, data)
	return err == nil && skip
}

func (m *machine) nextUndo(ctx context.Context, out *outcome) error {
	st := out.state
	if len(st.Plan) == 0 {
		st.Status, st.Undoing, st.Waiting, st.Attempt, st.Deadline = message.StatusCompensated, -1, "", 0, 0
		m.event(out, message.EventSagaCompensated, "", st.Reason)
		return nil
	}
	st.Undoing, st.Plan, st.UndoFailures, st.UndoSends = st.Plan[0], st.Plan[1:], 0, 0
	st.StepStarted = m.now().UnixMilli()
	return m.sendUndo(ctx, out, st.Undoing, 1)
}

func (m *machine) sendUndo(ctx context.Context, out *outcome, i, attempt int) error {
	st := out.state
	if m.steps[i].Local {
		// A local step is undone by its UndoLocal, in a transaction of its
		// own: the deadline is due at once and its Timeout message runs
		// it. Its failures are then counted in the state (undoLocal)
		// rather than aborting the record that started the compensation.
		st.Waiting, st.Attempt, st.Deadline = commandID(st.ID, m.steps[i].Name, "undo-local"), attempt, m.now().UnixMilli()
		return nil
	}
	cmd, err := m.def.Undo(m.info(ctx, st, i, attempt, true), i, out.data)
	if err != nil {
		return &StepError{Step: m.steps[i].Name, Index: i, Retry: m.steps[i].Retry, Err: fmt.Errorf("build compensation: %w", err)}
	}
	st.UndoSends++
	kind := "undo"
	if st.UndoFailures > 0 {
		kind += "-" + strconv.Itoa(st.UndoFailures)
	}
	return m.send(out, cmd, commandID(st.ID, m.steps[i].Name, kind), attempt, m.compOf(i).ReplyDeadline())
}

// fail ends the saga as SagaFailed: a compensation could not be completed
// and a human must look.
func (m *machine) fail(out *outcome, reason string) {
	st := out.state
	st.Status, st.Reason, st.Waiting, st.Attempt, st.Deadline = message.StatusFailed, reason, "", 0, 0
	m.event(out, message.EventSagaFailed, m.steps[stepOf(st)].Name, reason)
	out.giveUp = ReasonCompensation
}

// undoBackoff spaces the sends of a compensation that its participant failed.
var undoBackoff = retry.Policy{InitialInterval: time.Second, MaxInterval: time.Minute}
