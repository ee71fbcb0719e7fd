package orchestrator

import (
	"context"
	"fmt"
	"slices"

	"github.com/ksaga/ksaga/compensation"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
)

// A parallel group (saga.Step.Group) is a run of Do steps whose commands go
// out in one transaction. The state keeps one Member per step sent, with
// its command's message id, attempt and deadline; each reply or timeout is
// handled for its member, in the saga's own order like every other message.
// When all members succeeded the saga moves on. When one failed, the others
// still in flight are awaited (their replies or deadlines), so that each
// member's outcome is known, and then the members that succeeded or whose
// outcome is unknown are compensated, with the steps before the group, each
// once, last first.

// groupEnd returns the index after the last member of the group that step i
// starts, or i+1 when i is not in a group.
func (m *machine) groupEnd(i int) int {
	g := m.steps[i].Group
	if g == "" {
		return i + 1
	}
	j := i + 1
	for j < len(m.steps) && m.steps[j].Group == g {
		j++
	}
	return j
}

// sendGroup sends the commands of the members of the group that starts at
// step i which the saga's data does not skip. It reports false when it
// skips them all.
func (m *machine) sendGroup(ctx context.Context, out *outcome, i int) (bool, error) {
	st := out.state
	end := m.groupEnd(i)
	var members []Member
	for j := i; j < end; j++ {
		skip, err := m.def.Skip(ctx, j, out.data)
		if err != nil {
			return false, &StepError{Step: m.steps[j].Name, Index: j, Retry: m.steps[j].Retry, Err: fmt.Errorf("skip: %w", err)}
		}
		if skip {
			continue
		}
		cmd, err := m.def.Do(m.info(ctx, st, j, 1, false), j, out.data)
		if err == nil {
			err = m.sendMember(out, cmd, j, 1)
		}
		if err != nil {
			return false, &StepError{Step: m.steps[j].Name, Index: j, Retry: m.steps[j].Retry, Err: fmt.Errorf("build command: %w", err)}
		}
		members = append(members, Member{Step: j, Waiting: commandID(st.ID, m.steps[j].Name, "do"), Attempt: 1,
			Deadline: m.now().Add(m.steps[j].Deadline).UnixMilli()})
	}
	if len(members) == 0 {
		return false, nil
	}
	st.Group, st.Step, st.StepStarted = members, end-1, m.now().UnixMilli()
	groupWaiting(st)
	return true, nil
}

// sendMember appends the command of member step j, attempt attempt, to out.
func (m *machine) sendMember(out *outcome, cmd saga.Command, j, attempt int) error {
	return m.appendCommand(out, cmd, commandID(out.state.ID, m.steps[j].Name, "do"), m.steps[j].Name, attempt)
}

// groupWaiting points the saga's Waiting, Attempt and Deadline at the
// member in flight whose deadline comes first: its deadline is the saga's
// timer, and a Timeout names it.
func groupWaiting(st *State) {
	st.Waiting, st.Attempt, st.Deadline = "", 0, 0
	for _, mem := range st.Group {
		if mem.Outcome == "" && (st.Deadline == 0 || mem.Deadline < st.Deadline) {
			st.Waiting, st.Attempt, st.Deadline = mem.Waiting, mem.Attempt, mem.Deadline
		}
	}
}

// member returns the index in st.Group of the member in flight whose
// command has message id id, or -1.
func member(st *State, id string) int {
	return slices.IndexFunc(st.Group, func(mem Member) bool { return mem.Outcome == "" && mem.Waiting == id })
}

// groupReply applies a reply to a member of the group the saga waits on.
func (m *machine) groupReply(ctx context.Context, st *State, data any, in *input) (*outcome, error) {
	k := member(st, in.inReplyTo)
	if k < 0 {
		if m.sent(ctx, st, data, in.inReplyTo) {
			return &outcome{drop: DropStaleReply}, nil
		}
		return nil, inputErr(ReasonNotWaiting, "reply to %q, but saga %s waits on none of its group with that id", in.inReplyTo, st.ID)
	}
	if in.outcome != message.OutcomeSuccess && in.outcome != message.OutcomeFailure {
		return nil, inputErr(ReasonInvalid, "reply outcome %q is neither success nor failure", in.outcome)
	}
	out := m.next(st, data)
	next := out.state
	j := next.Group[k].Step
	m.noteReply(out, j, next.Group[k].Attempt, in)
	if m.steps[j].OnReply {
		if err := m.onReply(ctx, out, j, in); err != nil {
			return nil, err
		}
	}
	if in.outcome == message.OutcomeSuccess {
		next.Group[k].Outcome = memberSuccess
		m.event(out, message.EventStepSucceeded, m.steps[j].Name, "")
	} else {
		next.Group[k].Outcome = memberFailure
		m.event(out, message.EventStepFailed, m.steps[j].Name, in.reason)
		if next.Reason == "" {
			next.Reason = in.reason
		}
	}
	return out, m.groupProgress(ctx, out)
}

// groupTimeout applies a Timeout to the member it names (the saga's
// Waiting: the member whose deadline comes first): its command is sent
// again, or, when its attempts ran out, its outcome is unknown.
func (m *machine) groupTimeout(ctx context.Context, out *outcome) error {
	next := out.state
	k := member(next, next.Waiting)
	if k < 0 {
		return nil
	}
	mem := &next.Group[k]
	step := m.steps[mem.Step]
	if !step.Retry.Exhausted(mem.Attempt) {
		cmd, err := m.def.Do(m.info(ctx, next, mem.Step, mem.Attempt+1, false), mem.Step, out.data)
		if err != nil {
			return &StepError{Step: step.Name, Index: mem.Step, Retry: step.Retry, Err: fmt.Errorf("build command: %w", err)}
		}
		mem.Attempt++
		mem.Deadline = m.now().Add(step.Deadline).UnixMilli()
		if err := m.sendMember(out, cmd, mem.Step, mem.Attempt); err != nil {
			return err
		}
		groupWaiting(next)
		return nil
	}
	reason := fmt.Sprintf("no reply after %d attempts", mem.Attempt)
	mem.Outcome = memberUnknown
	m.event(out, message.EventStepFailed, step.Name, reason)
	if next.Reason == "" {
		next.Reason = reason
	}
	return m.groupProgress(ctx, out)
}

// groupProgress moves the saga on once no member is in flight: to the step
// after the group when every member succeeded, else to compensation.
func (m *machine) groupProgress(ctx context.Context, out *outcome) error {
	st := out.state
	groupWaiting(st)
	if st.Waiting != "" {
		return nil // members in flight
	}
	if !slices.ContainsFunc(st.Group, func(mem Member) bool { return mem.Outcome != memberSuccess }) {
		st.Group = nil
		return m.advance(ctx, out, st.Step+1)
	}
	return m.compensateGroup(ctx, out, st.Reason)
}

// compensateGroup compensates a saga whose parallel group failed or that is
// asked to compensate (a Compensate message, a record whose attempts ran
// out) while the group is in flight. A member still in flight has an
// unknown outcome: it fails with reason (a StepFailed, so that its
// compensation follows its failure in the history). The members that
// succeeded or whose outcome is unknown are undone, last first, then the
// steps before the group; a member that failed is not: it had no effect.
func (m *machine) compensateGroup(ctx context.Context, out *outcome, reason string) error {
	st := out.state
	members := st.Group
	st.Group = nil
	var undo []int
	for k := range members {
		mem := &members[k]
		if mem.Outcome == "" {
			mem.Outcome = memberUnknown
			m.event(out, message.EventStepFailed, m.steps[mem.Step].Name, reason)
		}
		if mem.Outcome != memberFailure && m.steps[mem.Step].Undoable {
			undo = append(undo, mem.Step)
		}
	}
	// Step stays the group's last member while the saga compensates: a
	// late reply to any member is then recognised as one to a command
	// the saga sent (stale), not dead-lettered.
	failed := members[len(members)-1].Step
	slices.Reverse(undo)
	first := members[0].Step
	for first > 0 && m.steps[first-1].Group != "" && m.steps[first-1].Group == m.steps[first].Group {
		first--
	}
	st.Status, st.Step, st.Reason, st.Waiting, st.Attempt, st.Deadline = message.StatusCompensating, failed, reason, "", 0, 0
	st.Plan = append(undo, m.plan(ctx, out, first, compensation.NotApplied)...)
	m.event(out, message.EventCompensationStarted, "", reason)
	return m.nextUndo(ctx, out)
}
