package orchestrator

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ksaga/ksaga/compensation"
	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/internal/sagadef"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
)

// InputError is a record that no retry can fix: it is dead-lettered with
// Reason at once. It is permanent (retry.IsPermanent).
type InputError struct {
	Reason string
	Err    error
}

func (e *InputError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *InputError) Unwrap() error { return e.Err }

func inputErr(reason, format string, args ...any) error {
	return retry.Permanent(&InputError{Reason: reason, Err: fmt.Errorf(format, args...)})
}

// Dead-letter reasons: the dlq package's, where saga authors look for them.
const (
	ReasonUndecodable      = dlq.ReasonUndecodable
	ReasonMissingSagaID    = dlq.ReasonMissingSagaID
	ReasonUnknownType      = dlq.ReasonUnknownType
	ReasonUnknownSaga      = dlq.ReasonUnknownSaga
	ReasonNotWaiting       = dlq.ReasonNotWaiting
	ReasonConflictingStart = dlq.ReasonConflictingStart
	ReasonTooLarge         = dlq.ReasonTooLarge
	ReasonInvalid          = dlq.ReasonInvalid
	ReasonExhausted        = dlq.ReasonExhausted
	ReasonPermanent        = dlq.ReasonPermanent
	ReasonCompensation     = dlq.ReasonCompensation
)

// Drop reasons: messages that are recognised and ignored.
const (
	DropDuplicateStart = "duplicate-start"
	DropStaleReply     = "stale-reply"
	DropStaleTimeout   = "stale-timeout"
	DropEnded          = "saga-ended"
	DropNotParked      = "not-parked"
)

// input is a decoded inbox record.
type input struct {
	typ       string
	sagaID    string
	msgID     string
	inReplyTo string
	attempt   int
	outcome   string
	reason    string
	value     []byte
	// data is a start request's value, compacted (see compact).
	data json.RawMessage
	// trace is the trace context of the record's saga (see
	// Engine.traceRecord): a saga it starts gets it.
	trace *TraceContext
}

// command is a participant command to produce.
type command struct {
	topic, msgType, msgID, step string
	attempt                     int
	value                       []byte
}

// outcome is what applying one input produced.
type outcome struct {
	state    *State
	data     any
	commands []command
	events   []message.Event
	// drop, when set, says the input was a duplicate or stale and changed
	// nothing.
	drop string
	// giveUp, when set, dead-letters the input with this reason although
	// it was applied: the saga ended SagaFailed.
	giveUp string
	// undoFailed names the local step whose UndoLocal failed (its error
	// is the state's LastError).
	undoFailed string
	// reply is the reply being applied, for the history.
	reply *replyOf
}

// maxLastError bounds State.LastError.
const maxLastError = 1024

// truncate returns s cut to at most n bytes, on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// machine applies inbox messages to saga state. It holds no state of its own.
type machine struct {
	def     *sagadef.Definition
	version int // def.Version()
	steps   []saga.StepInfo
	// history bounds State.History (History).
	history int
	undo    []compensation.Step
	comp    compensation.Policy
	now     func() time.Time
	// trace, when set, traces local steps and compensations
	// (HookTrace.TraceLocal).
	trace func(ctx context.Context, step string, undo bool) (context.Context, func(error))
}

func newMachine(def *sagadef.Definition, comp compensation.Policy, now func() time.Time) *machine {
	m := &machine{def: def, version: def.Version(), steps: def.Steps(), comp: comp, now: now, history: DefaultHistory}
	for _, s := range m.steps {
		m.undo = append(m.undo, compensation.Step{Undoable: s.Undoable})
	}
	return m
}

// apply applies in to st (nil for an unknown saga) and data (st's decoded
// data). It never modifies st: the new state is in the outcome. A returned
// error wrapping *InputError is permanent; any other error is a processing
// failure (a local step failed) that the engine retries.
func (m *machine) apply(ctx context.Context, st *State, data any, in *input) (*outcome, error) {
	switch in.typ {
	case message.TypeStartSaga:
		return m.start(ctx, st, in)
	case message.TypeReply:
		return m.reply(ctx, st, data, in)
	case message.TypeTimeout:
		return m.timeout(ctx, st, data, in)
	case message.TypeCompensate:
		return m.compensate(ctx, st, data, in)
	case message.TypeResume:
		return m.resume(ctx, st, data, in)
	}
	return nil, inputErr(ReasonUnknownType, "message type %q is not one of StartSaga, Reply, Timeout, Compensate, Resume", in.typ)
}

func (m *machine) start(ctx context.Context, st *State, in *input) (*outcome, error) {
	canonical := in.data
	if canonical == nil { // not through Engine.decode, which canonicalizes it
		var err error
		if canonical, err = message.Canonical(in.value); err != nil {
			return nil, retry.Permanent(&InputError{Reason: ReasonInvalid, Err: err})
		}
		in.data = canonical
	}
	hash := startHash(canonical)
	if st != nil {
		// A saga started before starts were canonicalized kept the hash
		// of the value as it came.
		if st.StartHash == hash || st.StartHash == startHash(in.value) {
			return &outcome{drop: DropDuplicateStart}, nil
		}
		return nil, inputErr(ReasonConflictingStart, "saga %s already started with a different payload", in.sagaID)
	}
	out, err := m.begin(in, hash)
	if err != nil {
		return nil, err
	}
	return out, m.advance(ctx, out, 0)
}

// begin returns the first state of the saga that in starts, with its
// SagaStarted event.
func (m *machine) begin(in *input, hash string) (*outcome, error) {
	data, err := m.def.Decode(in.value)
	if err == nil {
		err = m.def.CheckID(data, in.sagaID)
	}
	if err != nil {
		return nil, retry.Permanent(&InputError{Reason: ReasonInvalid, Err: err})
	}
	stored := in.data
	now := m.now()
	next := &State{
		ID: in.sagaID, Type: m.def.Name(), Status: message.StatusRunning, Undoing: -1,
		StartID: in.msgID, StartHash: hash, Data: stored,
		Created: now, Updated: now,
	}
	out := &outcome{state: next, data: data}
	m.event(out, message.EventSagaStarted, "", "")
	return out, nil
}

// startHash identifies a start request's value (see State.StartHash).
func startHash(value []byte) string {
	sum := sha256.Sum256(value)
	return hex.EncodeToString(sum[:])
}

// advance makes step i current: it runs local steps until it reaches a
// participant step (and sends its command) or the end of the saga. Steps
// that the saga's data skips (saga.Step.Skip) are passed over without an
// event.
func (m *machine) advance(ctx context.Context, out *outcome, i int) error {
	st := out.state
	for ; i < len(m.steps); i++ {
		step := m.steps[i]
		skip, err := m.def.Skip(ctx, i, out.data)
		if err != nil {
			return &StepError{Step: step.Name, Index: i, Retry: step.Retry, Err: fmt.Errorf("skip: %w", err)}
		}
		if skip {
			continue
		}
		if step.Group != "" {
			sent, err := m.sendGroup(ctx, out, i)
			if err != nil || sent {
				return err
			}
			i = m.groupEnd(i) - 1 // every member skipped
			continue
		}
		st.Step, st.StepStarted = i, m.now().UnixMilli()
		if !step.Local {
			cmd, err := m.def.Do(m.info(ctx, st, i, 1, false), i, out.data)
			if err == nil {
				err = m.send(out, cmd, commandID(st.ID, step.Name, "do"), 1, step.Deadline)
			}
			if err != nil {
				return &StepError{Step: step.Name, Index: i, Retry: step.Retry, Err: fmt.Errorf("build command: %w", err)}
			}
			return nil
		}
		key := saga.Key{SagaID: st.ID, Step: step.Name, Fence: st.Version}
		lctx, end := m.traceLocal(m.info(ctx, st, i, 1, false), step.Name, false)
		err = m.def.RunLocal(lctx, i, out.data, key)
		end(err)
		if err != nil {
			return &StepError{Step: step.Name, Index: i, Retry: step.Retry, Err: err}
		}
		m.event(out, message.EventStepSucceeded, step.Name, "")
	}
	st.Status, st.Waiting, st.Attempt, st.Deadline = message.StatusCompleted, "", 0, 0
	m.event(out, message.EventSagaCompleted, "", "")
	return nil
}

// StepError is the failure of a call into a step's code: a local step's
// error, a panic or a call that outlived the step's Timeout. The engine
// retries the record under Retry, the step's policy; when the attempts run
// out, step Index is the one reported as failed.
type StepError struct {
	Step  string
	Index int
	Retry retry.Policy
	Err   error
}

func (e *StepError) Error() string { return "step " + e.Step + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

func (m *machine) send(out *outcome, cmd saga.Command, id string, attempt int, deadline time.Duration) error {
	st := out.state
	if err := m.appendCommand(out, cmd, id, m.steps[stepOf(st)].Name, attempt); err != nil {
		return err
	}
	st.Waiting, st.Attempt = id, attempt
	st.Deadline = m.now().Add(deadline).UnixMilli()
	return nil
}

// appendCommand adds cmd, with message id id, of step step, to out's
// commands.
func (m *machine) appendCommand(out *outcome, cmd saga.Command, id, step string, attempt int) error {
	value, err := json.Marshal(cmd.Payload)
	if err != nil {
		return fmt.Errorf("encode command %s: %w", cmd.Type, err)
	}
	out.commands = append(out.commands, command{
		topic: message.Commands(cmd.Participant), msgType: cmd.Type, msgID: id,
		step: step, attempt: attempt, value: value,
	})
	return nil
}

// stepOf returns the step the saga is working on: the one being undone
// while compensating.
func stepOf(st *State) int {
	if st.Undoing >= 0 {
		return st.Undoing
	}
	return st.Step
}

func commandID(sagaID, step, kind string) string { return sagaID + "/" + step + "/" + kind }

func (m *machine) reply(ctx context.Context, st *State, data any, in *input) (*outcome, error) {
	if st == nil {
		return nil, inputErr(ReasonUnknownSaga, "reply %s for saga %s, which does not exist", in.msgID, in.sagaID)
	}
	if len(st.Group) > 0 && st.Status == message.StatusRunning {
		return m.groupReply(ctx, st, data, in)
	}
	if st.Terminal() || in.inReplyTo != st.Waiting {
		if m.sent(ctx, st, data, in.inReplyTo) {
			return &outcome{drop: DropStaleReply}, nil
		}
		return nil, inputErr(ReasonNotWaiting, "reply to %q, but saga %s waits on %q", in.inReplyTo, st.ID, st.Waiting)
	}
	if in.outcome != message.OutcomeSuccess && in.outcome != message.OutcomeFailure {
		return nil, inputErr(ReasonInvalid, "reply outcome %q is neither success nor failure", in.outcome)
	}
	out := m.next(st, data)
	next := out.state
	i := stepOf(next)
	name := m.steps[i].Name
	m.noteReply(out, i, next.Attempt, in)
	if next.Status == message.StatusParked {
		// The participant answered after all: the saga goes on from its
		// answer.
		next.Status = message.StatusRunning
		m.event(out, message.EventSagaResumed, name, "the step's reply arrived")
	}
	if next.Status == message.StatusRunning && m.steps[i].OnReply {
		if err := m.onReply(ctx, out, i, in); err != nil {
			return nil, err
		}
	}
	switch {
	case next.Status == message.StatusRunning && in.outcome == message.OutcomeSuccess:
		m.event(out, message.EventStepSucceeded, name, "")
		return out, m.advance(ctx, out, i+1)
	case next.Status == message.StatusRunning:
		m.event(out, message.EventStepFailed, name, in.reason)
		return out, m.startCompensation(ctx, out, i, compensation.NotApplied, in.reason)
	case in.outcome == message.OutcomeSuccess:
		m.event(out, message.EventStepCompensated, name, "")
		next.Undone = append(next.Undone, i)
		return out, m.nextUndo(ctx, out)
	default:
		// A compensation failed. It is sent again when the backoff below
		// expires (through the Timeout path), with a fresh message id so the
		// participant acts again rather than repeating its stored answer.
		if m.compOf(i).GiveUp(next.UndoSends) {
			m.fail(out, fmt.Sprintf("compensation of %s failed %d times, last: %s", name, next.UndoSends, in.reason))
			return out, nil
		}
		next.UndoFailures++
		next.Deadline = m.now().Add(undoBackoff.Backoff(next.UndoSends + 1)).UnixMilli()
		return out, nil
	}
}

// onReply runs step i's OnReply for the reply in, and keeps the data it
// leaves in the saga's state. OnReply works on a copy of the data, so that
// a transaction that aborts leaves the saga in memory as it was.
func (m *machine) onReply(ctx context.Context, out *outcome, i int, in *input) error {
	st, step := out.state, m.steps[i]
	var v struct {
		Data json.RawMessage `json:"data"`
	}
	if len(in.value) > 0 {
		if err := json.Unmarshal(in.value, &v); err != nil {
			return inputErr(ReasonUndecodable, "reply %s for step %s: value is not a reply: %v", in.msgID, step.Name, err)
		}
	}
	data, err := m.def.DecodeStored(st.Data)
	if err != nil {
		return &StepError{Step: step.Name, Index: i, Retry: step.Retry, Err: err}
	}
	reply := saga.Reply{Success: in.outcome == message.OutcomeSuccess, Reason: in.reason, Data: v.Data}
	if err := m.def.OnReply(ctx, i, data, reply, m.infoOf(st, i, st.Attempt, false)); err != nil {
		return &StepError{Step: step.Name, Index: i, Retry: step.Retry, Err: fmt.Errorf("reply: %w", err)}
	}
	enc, err := json.Marshal(data)
	if err != nil {
		return &StepError{Step: step.Name, Index: i, Retry: step.Retry, Err: fmt.Errorf("encode data after its reply: %w", err)}
	}
	st.Data, out.data = enc, data
	return nil
}

// sent reports whether id names a command that the saga has sent before.
// data is the saga's data: a step it skips sent nothing.
func (m *machine) sent(ctx context.Context, st *State, data any, id string) bool {
	rest, ok := strings.CutPrefix(id, st.ID+"/")
	if !ok {
		return false
	}
	name, kind, ok := strings.Cut(rest, "/")
	if !ok {
		return false
	}
	i := slices.IndexFunc(m.steps, func(s saga.StepInfo) bool { return s.Name == name })
	switch {
	case i < 0:
		return false
	case kind == "do":
		return i <= st.Step && !m.steps[i].Local && !m.skipped(ctx, i, data)
	case strings.HasPrefix(kind, "undo"):
		return i == st.Undoing || slices.Contains(st.Undone, i)
	}
	return false
}

func (m *machine) timeout(ctx context.Context, st *State, data any, in *input) (*outcome, error) {
	// A timeout names the send it times out; one read back from Redis's
	// deadline index names none and counts if the deadline has passed.
	if st == nil || st.Terminal() || st.Status == message.StatusParked {
		return &outcome{drop: DropStaleTimeout}, nil
	}
	current := in.inReplyTo == st.Waiting && in.attempt == st.Attempt
	if in.inReplyTo == "" {
		current = st.Deadline > 0 && st.Deadline <= m.now().UnixMilli()
	}
	if !current {
		return &outcome{drop: DropStaleTimeout}, nil
	}
	out := m.next(st, data)
	next := out.state
	if len(next.Group) > 0 && next.Status == message.StatusRunning {
		return out, m.groupTimeout(ctx, out)
	}
	i := stepOf(next)
	step := m.steps[i]
	if next.Status == message.StatusRunning {
		if !step.Retry.Exhausted(next.Attempt) {
			cmd, err := m.def.Do(m.info(ctx, next, i, next.Attempt+1, false), i, out.data)
			if err != nil {
				return nil, &StepError{Step: step.Name, Index: i, Retry: step.Retry, Err: fmt.Errorf("build command: %w", err)}
			}
			return out, m.send(out, cmd, next.Waiting, next.Attempt+1, step.Deadline)
		}
		reason := fmt.Sprintf("no reply after %d attempts", next.Attempt)
		if step.Park {
			m.park(out, i, reason)
			return out, nil
		}
		m.event(out, message.EventStepFailed, step.Name, reason)
		return out, m.startCompensation(ctx, out, i, compensation.OutcomeUnknown, reason)
	}
	if step.Local {
		return out, m.undoLocal(ctx, out, i)
	}
	if m.compOf(i).GiveUp(next.UndoSends) {
		m.fail(out, fmt.Sprintf("compensation of %s got no success after %d attempts", step.Name, next.UndoSends))
		return out, nil
	}
	return out, m.sendUndo(ctx, out, i, next.Attempt+1)
}

// traceLocal starts the span of a local step or compensation, when a
// tracer is registered.
func (m *machine) traceLocal(ctx context.Context, step string, undo bool) (context.Context, func(error)) {
	if m.trace == nil {
		return ctx, func(error) {}
	}
	return m.trace(ctx, step, undo)
}

// next starts an outcome from a copy of st with the version bumped.
func (m *machine) next(st *State, data any) *outcome {
	next := st.clone()
	next.Version++
	next.Updated = m.now()
	return &outcome{state: next, data: data}
}

func (m *machine) event(out *outcome, typ, step, reason string) {
	st := out.state
	if st.Version == 0 {
		st.Version = 1
	}
	ev := message.Event{
		SagaID: st.ID, SagaType: st.Type, Type: typ, State: st.Status, Step: step,
		Version: st.Version, At: m.now().UTC(), Reason: reason,
	}
	if message.Terminal(typ) {
		// The saga's data as it ended; the state's Data is final by now
		// (replies are folded in before the saga moves on).
		ev.Data = st.Data
	}
	out.events = append(out.events, ev)
	h := HistoryEntry{Type: typ, Step: step, Reason: reason, Version: st.Version, At: ev.At}
	if step != "" && out.reply != nil && out.reply.step == step {
		h.Attempt, h.Reply = out.reply.attempt, out.reply.data
	}
	if m.history == 0 {
		return
	}
	st.History = append(st.History, h)
	if len(st.History) > m.history {
		// The first entry (SagaStarted) stays; the oldest after it go.
		st.History = slices.Delete(st.History, 1, 2)
		st.HistoryDropped++
	}
}

// maxHistoryReply bounds the reply data a history entry keeps.
const maxHistoryReply = 1024

// replyOf is what the history keeps of a reply to step: its attempt and
// its data, when small enough.
type replyOf struct {
	step    string
	attempt int
	data    json.RawMessage
}

// noteReply remembers in's reply to step i, sent attempt times, for the
// history entry of the event it leads to.
func (m *machine) noteReply(out *outcome, i, attempt int, in *input) {
	r := &replyOf{step: m.steps[i].Name, attempt: attempt}
	if data := replyData(in.value); len(data) > 0 && len(data) <= maxHistoryReply {
		r.data = data
	}
	out.reply = r
}

// replyData returns the data of a reply's value, compacted and with HTML
// characters escaped as encoding/json leaves them; nil for none or a value
// that is not a reply.
func replyData(value []byte) json.RawMessage {
	if len(value) == 0 {
		return nil
	}
	var v struct {
		Data json.RawMessage `json:"data"`
	}
	if json.Unmarshal(value, &v) != nil || len(v.Data) == 0 || string(v.Data) == "null" {
		return nil
	}
	var b, esc bytes.Buffer
	if json.Compact(&b, v.Data) != nil {
		return nil
	}
	json.HTMLEscape(&esc, b.Bytes())
	return esc.Bytes()
}

// stamp records in st the definition version it runs on and the names of
// its steps, for the engine's checks and for operators.
func (m *machine) stamp(st *State) {
	st.DefinitionVersion = m.version
	st.StepName, st.UndoingName = "", ""
	if st.Step >= 0 && st.Step < len(m.steps) {
		st.StepName = m.steps[st.Step].Name
	}
	if st.Undoing >= 0 && st.Undoing < len(m.steps) {
		st.UndoingName = m.steps[st.Undoing].Name
	}
}

// compOf is the compensation policy of step i: its own
// (saga.Step.Compensation), the engine's where it leaves a field zero.
func (m *machine) compOf(i int) compensation.Policy {
	p := m.comp
	if i >= 0 && i < len(m.steps) {
		own := m.steps[i].Compensation
		if own.MaxAttempts > 0 {
			p.MaxAttempts = own.MaxAttempts
		}
		if own.Deadline > 0 {
			p.Deadline = own.Deadline
		}
	}
	return p
}

// info returns ctx carrying the saga.Info of a call into step i's code.
func (m *machine) info(ctx context.Context, st *State, i, attempt int, compensating bool) context.Context {
	return saga.WithInfo(ctx, m.infoOf(st, i, attempt, compensating))
}

// infoOf is the saga.Info of a call into step i's code.
func (m *machine) infoOf(st *State, i, attempt int, compensating bool) saga.Info {
	return saga.Info{SagaID: st.ID, Type: st.Type, Step: m.steps[i].Name,
		Attempt: attempt, Compensating: compensating, Started: st.Created}
}

// errInfra marks failures of the engine's own dependencies (Redis): they are
// retried without counting against the record, since the record is not at
// fault.
var errInfra = errors.New("engine dependency unavailable")
