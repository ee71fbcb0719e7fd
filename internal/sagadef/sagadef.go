// Package sagadef is the implementation behind package saga: the types a
// saga author uses (package saga aliases them) and the calls the engine
// makes into a definition (Do, Undo, Skip, RunLocal, RunUndoLocal,
// OnReply, DecodeStored, MigrateStored, CheckID), which a saga author has
// no use for. The engine reaches a *saga.Definition's through Of.
package sagadef

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ksaga/ksaga/compensation"
	"github.com/ksaga/ksaga/retry"
)

// DefaultReplyTimeout is how long the engine waits for a participant's
// reply to one attempt of a step whose ReplyTimeout is zero.
const DefaultReplyTimeout = 30 * time.Second

// DefaultCallTimeout bounds each call into a step's code (Do, Undo, Local,
// UndoLocal) whose CallTimeout is zero, and each call of a data type's
// Validate.
// It is well under the engine's transaction timeout (10s by default), so a
// call that hangs is counted as a failed attempt before the transaction
// expires.
const DefaultCallTimeout = 3 * time.Second

// Command is what a participant step asks of its participant. The engine
// produces it to the topic "<Participant>.commands", keyed by the saga id.
type Command struct {
	// Participant names the participant; its topic is Participant+".commands".
	Participant string
	// Type is the command's message type, e.g. "ReserveInventory".
	Type string
	// Payload is encoded as JSON into the record's value.
	Payload any
}

// Step is one step of a saga over data of type T. Exactly one of Do and Local
// is set. The engine calls Do, Undo and Local for different sagas
// concurrently, never for the same saga at once: they must be safe for
// concurrent use, and each call may use its data freely.
type Step[T any] struct {
	// Name identifies the step in headers, events and state. It must be
	// unique within the saga and match [a-z0-9][a-z0-9-]*.
	Name string
	// Do builds the command of a participant step. The saga waits for the
	// participant's reply: success moves to the next step, failure
	// compensates the steps done so far.
	Do func(ctx context.Context, data *T) (Command, error)
	// Undo builds the command that compensates Do. Nil means the step needs
	// no compensation.
	Undo func(ctx context.Context, data *T) (Command, error)
	// Local runs a step in the engine, while it handles the record that
	// made the step current. It runs at least once and must be idempotent:
	// an attempt whose transaction aborts is run again. An error aborts the
	// transaction and the record is retried under Retry; an error marked
	// with retry.Permanent, or the last attempt, dead-letters the record
	// and compensates the saga.
	//
	// ctx carries the attempt's Key (see KeyFrom): pass it to the store the
	// step writes to, so that the write is idempotent across redeliveries
	// and a late write of an older attempt can be refused.
	Local func(ctx context.Context, data *T) error
	// UndoLocal compensates a Local step. The engine calls it when the
	// saga compensates after the step succeeded, and also when the step's
	// outcome is unknown: its attempts ran out, and an attempt whose
	// transaction aborted may have left its effect behind. It must be
	// idempotent and must succeed when the step never ran. An error is
	// retried with backoff (see compensation.Policy), then the saga ends
	// SagaFailed. Nil means the step needs no compensation. ctx carries a
	// Key whose Fence is higher than that of any attempt of Local.
	UndoLocal func(ctx context.Context, data *T) error
	// CallTimeout bounds each call of Do, Undo, Local, UndoLocal, Skip and
	// OnReply: a call into the step's code, in the engine. A call that has
	// not returned by then is abandoned (its goroutine is left to finish
	// on its own; its ctx is cancelled) and counts as a failed attempt, as
	// an error and a panic do. Zero means DefaultCallTimeout. It is not
	// how long a participant may take: that is ReplyTimeout.
	CallTimeout time.Duration
	// Retry bounds the attempts of the step: for a Local step the
	// processing attempts of its record, for a Do step the sends of its
	// command that get no reply before ReplyTimeout (re-sent with the same
	// message id, so participants dedupe). The zero value means three
	// attempts, the first included.
	Retry retry.Policy
	// ReplyTimeout is how long one attempt of a Do step waits for its
	// participant's reply before it is sent again (Retry) or, with its
	// attempts spent, the saga compensates or parks. Zero means
	// DefaultReplyTimeout.
	ReplyTimeout time.Duration
	// Compensation bounds the attempts of the step's compensation (Undo,
	// UndoLocal) and how long each waits for its reply. Zero fields take
	// the engine's policy (orchestrator.Compensation).
	Compensation compensation.Policy
	// Skip, when set, says whether the saga passes over this step for its
	// data: a skipped step runs nothing (no command, no Local call), writes
	// no event and is never compensated. Nil means the step always runs.
	// The engine calls it whenever it needs the answer (when the step is
	// reached, when a compensation is planned, when a reply names the
	// step), so it must depend on data alone and be quick. Like the other
	// calls into saga code it runs under CallTimeout with a recover; its error
	// or panic fails the step as a Local step's error does.
	Skip func(data *T) bool
	// OnReply, when set, reads the participant's reply to Do (success or
	// failure) before the saga moves on, and may fold what the reply
	// carries into data: the engine then stores the changed data with the
	// saga's state, in the same transaction, so that later steps,
	// compensations (an Undo that names the payment's authorization id)
	// and the terminal event see it. It runs under CallTimeout with a
	// recover; its error is a failed attempt of the reply's record, as a
	// Local step's is. OnSuccess builds one from a typed function.
	OnReply func(ctx context.Context, data *T, reply Reply) error
	// Park, when set, parks the saga when the step's attempts run out (a
	// Do step's sends that got no reply, a Local step's processing
	// attempts) instead of compensating it: the saga stays where it is,
	// visible (status parked, a SagaParked event) and alerted, until an
	// operator resumes it (the step is run or sent again with fresh
	// attempts, same message id) or compensates it. A participant's late
	// reply resumes it too. A failure reply still compensates: it is an
	// answer, not silence. Use it where compensating is worse than waiting
	// (write-up 004: a coupon service down for five minutes).
	Park bool
	// Group, when set, makes the step a member of a parallel group: the
	// consecutive Do steps with the same Group send their commands in one
	// transaction and wait for all the replies; the saga moves on when
	// every member succeeded. When one fails (a failure reply, no reply
	// after its attempts), the others still in flight are awaited, then
	// the members that succeeded (or whose outcome is unknown) and the
	// steps before the group are compensated, each once, last first. Each
	// member has its own events. A member may not be Local or Park. It must
	// match [a-z0-9][a-z0-9-]*.
	Group string
}

// Reply is a participant's answer to a step's command, as OnReply sees it.
type Reply struct {
	// Success reports whether the participant carried the command out.
	Success bool
	// Reason is the failure code, such as PAYMENT_DECLINED; empty on
	// success.
	Reason string
	// Data is what the participant returned with its answer, as JSON
	// (participant.SuccessWith); empty for none.
	Data []byte
}

// Decode decodes the reply's data into v. A reply without data leaves v
// as it is.
func (r Reply) Decode(v any) error {
	if len(r.Data) == 0 {
		return nil
	}
	return json.Unmarshal(r.Data, v)
}

// OnSuccess returns an OnReply that decodes a successful reply's data into
// an R and hands it to fn with the saga's data; a failure reply is passed
// over. Data that does not decode into R is an error (a failed attempt).
//
//	saga.Step[Order]{Name: "authorize-payment", Do: authorize, Undo: cancel,
//		OnReply: saga.OnSuccess(func(o *Order, a Authorization) { o.AuthorizationID = a.ID })}
func OnSuccess[T, R any](fn func(data *T, result R)) func(context.Context, *T, Reply) error {
	return func(_ context.Context, data *T, reply Reply) error {
		if !reply.Success {
			return nil
		}
		var r R
		if err := reply.Decode(&r); err != nil {
			return fmt.Errorf("reply data: %w", err)
		}
		fn(data, r)
		return nil
	}
}

// Identified is implemented by saga data that names its own saga id (an
// order's order_id). The engine refuses a start request whose key differs
// from it: the data of another saga would otherwise run under this id.
type Identified interface {
	SagaID() string
}

// Info describes the saga that a call into saga code serves. The engine
// puts it in the ctx of every call into a step's code (Do, Undo, Local,
// UndoLocal, OnReply); read it with InfoFrom. Skip and Validate, which see
// only the data, get none.
type Info struct {
	// SagaID and Type name the saga; Step is the step being run or
	// compensated.
	SagaID, Type, Step string
	// Attempt counts the sends of the step's command (Do, Undo) or the
	// failed tries of a compensation before this one (UndoLocal, Undo);
	// 1 for a first send.
	Attempt int
	// Compensating is set for Undo and UndoLocal.
	Compensating bool
	// Started is when the saga started.
	Started time.Time
}

type infoCtx struct{}

// WithInfo returns ctx carrying i. The engine calls it; tests of saga code
// may too.
func WithInfo(ctx context.Context, i Info) context.Context {
	return context.WithValue(ctx, infoCtx{}, i)
}

// InfoFrom returns the Info of the saga that ctx's call serves.
func InfoFrom(ctx context.Context) (Info, bool) {
	i, ok := ctx.Value(infoCtx{}).(Info)
	return i, ok
}

// StepInfo describes a step to the engine.
type StepInfo struct {
	Name  string
	Local bool
	// Optional is set when the step has a Skip.
	Optional bool
	// Undoable is set when the step has a compensation: Undo for a
	// participant step, UndoLocal for a Local one.
	Undoable bool
	// OnReply is set when the step reads its replies (Step.OnReply).
	OnReply bool
	// Park is set when the step parks the saga when its attempts run out
	// (Step.Park).
	Park bool
	// Group names the step's parallel group (Step.Group), "" for none.
	Group string
	Retry retry.Policy
	// Deadline is Step.ReplyTimeout and Timeout Step.CallTimeout, with
	// their defaults applied.
	Deadline time.Duration
	Timeout  time.Duration
	// Compensation is Step.Compensation, zero fields left for the engine.
	Compensation compensation.Policy
}

// Key identifies one attempt of a step for the code it calls. The engine
// puts it in the ctx of Local and UndoLocal; read it with KeyFrom.
type Key struct {
	SagaID string
	Step   string
	// Fence grows with every change of the saga: an attempt that is
	// redelivered (its transaction aborted) gets the same Fence again, a
	// later attempt or the step's UndoLocal a higher one. A store that
	// keeps the highest Fence it has seen per saga and refuses lower ones
	// cannot be overwritten by a stale attempt (a fenced engine instance).
	Fence int64
}

// String returns "<saga id>/<step>/<fence>", usable as an idempotency key.
func (k Key) String() string { return fmt.Sprintf("%s/%s/%d", k.SagaID, k.Step, k.Fence) }

type keyCtx struct{}

// WithKey returns ctx carrying k. The engine calls it; tests of saga code
// may too.
func WithKey(ctx context.Context, k Key) context.Context {
	return context.WithValue(ctx, keyCtx{}, k)
}

// KeyFrom returns the Key of the attempt that ctx belongs to.
func KeyFrom(ctx context.Context) (Key, bool) {
	k, ok := ctx.Value(keyCtx{}).(Key)
	return k, ok
}

// ErrTimeout is wrapped by the error of a call into saga code that did not
// return within its step's CallTimeout.
var ErrTimeout = errors.New("saga code did not return in time")

// PanicError is the error of a call into saga code that panicked.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("saga code panicked: %v", e.Value) }

// Unwrap returns the *Definition behind a *saga.Definition; package saga
// sets it (it cannot be imported from here).
var Unwrap func(any) *Definition

// Of returns the definition behind d, a *saga.Definition, or nil.
func Of(d any) *Definition {
	if Unwrap == nil {
		return nil
	}
	return Unwrap(d)
}

// Definition is a validated saga, ready for the engine. It is immutable and
// safe for concurrent use.
type Definition struct {
	name    string
	version int // 0 means 1
	adopts  map[int]adoption
	steps   []StepInfo
	newData func() any
	do      []func(context.Context, any) (Command, error)
	undo    []func(context.Context, any) (Command, error)
	local   []func(context.Context, any) error
	// undoLocal compensates local steps.
	undoLocal []func(context.Context, any) error
	skip      []func(any) bool
	onReply   []func(context.Context, any, Reply) error
}

// Validator is implemented by saga data that checks itself. Decode calls it
// after decoding a start request; its error is permanent.
type Validator interface {
	Validate() error
}

// nameRE is the rule for the name of a saga type, a step and a step's
// group: they become parts of topic names, Kafka headers and Redis keys.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// ValidName reports whether name is a valid name for a saga type (New's
// rule, also for step and group names): lower-case letters, digits and
// '-', starting with a letter or digit. Tools that take a saga type from a
// user (sagactl, the HTTP API's token scopes) check it with ValidName.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// New defines a saga named name over data of type T. It panics when the
// definition is invalid (no steps, a bad or repeated name, a step with both
// or neither of Do and Local, an Undo on a Local step): that is a programming
// error, found at package initialization.
func New[T any](name string, steps ...Step[T]) *Definition {
	d, err := build(name, steps)
	if err != nil {
		panic(err)
	}
	return d
}

func build[T any](name string, steps []Step[T]) (*Definition, error) {
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("saga name %q must match %s", name, nameRE)
	}
	if len(steps) == 0 {
		return nil, fmt.Errorf("saga %s has no steps", name)
	}
	d := &Definition{name: name, newData: func() any { return new(T) }}
	seen := make(map[string]bool, len(steps))
	groups := make(map[string]bool)
	for i, s := range steps {
		switch {
		case !nameRE.MatchString(s.Name):
			return nil, fmt.Errorf("saga %s step %d: name %q must match %s", name, i, s.Name, nameRE)
		case seen[s.Name]:
			return nil, fmt.Errorf("saga %s: step name %q is used twice", name, s.Name)
		case (s.Do == nil) == (s.Local == nil):
			return nil, fmt.Errorf("saga %s step %s: set exactly one of Do and Local", name, s.Name)
		case s.Local != nil && s.Undo != nil:
			return nil, fmt.Errorf("saga %s step %s: a Local step is undone by UndoLocal, not Undo", name, s.Name)
		case s.Do != nil && s.UndoLocal != nil:
			return nil, fmt.Errorf("saga %s step %s: a Do step is undone by Undo, not UndoLocal", name, s.Name)
		case s.Local != nil && s.OnReply != nil:
			return nil, fmt.Errorf("saga %s step %s: a Local step gets no reply; OnReply is for Do steps", name, s.Name)
		case s.Group != "" && !nameRE.MatchString(s.Group):
			return nil, fmt.Errorf("saga %s step %s: group %q must match %s", name, s.Name, s.Group, nameRE)
		case s.Group != "" && (s.Local != nil || s.Park):
			return nil, fmt.Errorf("saga %s step %s: a member of parallel group %s must be a Do step that does not Park", name, s.Name, s.Group)
		case s.Group != "" && groups[s.Group] && (i == 0 || steps[i-1].Group != s.Group):
			return nil, fmt.Errorf("saga %s step %s: the members of parallel group %s must be consecutive", name, s.Name, s.Group)
		case s.CallTimeout < 0 || s.ReplyTimeout < 0:
			return nil, fmt.Errorf("saga %s step %s: CallTimeout and ReplyTimeout must not be negative", name, s.Name)
		case s.Compensation.MaxAttempts < 0 || s.Compensation.Deadline < 0:
			return nil, fmt.Errorf("saga %s step %s: Compensation's fields must not be negative", name, s.Name)
		}
		seen[s.Name] = true
		if s.Group != "" {
			groups[s.Group] = true
		}
		info := StepInfo{Name: s.Name, Local: s.Local != nil, Optional: s.Skip != nil, Undoable: s.Undo != nil || s.UndoLocal != nil,
			OnReply: s.OnReply != nil, Park: s.Park, Group: s.Group, Retry: s.Retry, Deadline: s.ReplyTimeout, Timeout: s.CallTimeout,
			Compensation: s.Compensation}
		if info.Deadline <= 0 {
			info.Deadline = DefaultReplyTimeout
		}
		if info.Timeout <= 0 {
			info.Timeout = DefaultCallTimeout
		}
		d.steps = append(d.steps, info)
		d.do = append(d.do, typed(s.Do))
		d.undo = append(d.undo, typed(s.Undo))
		d.local = append(d.local, typedLocal(s.Local))
		d.undoLocal = append(d.undoLocal, typedLocal(s.UndoLocal))
		d.skip = append(d.skip, typedSkip(s.Skip))
		d.onReply = append(d.onReply, typedReply(s.OnReply))
	}
	return d, nil
}

func typedLocal[T any](fn func(context.Context, *T) error) func(context.Context, any) error {
	if fn == nil {
		return nil
	}
	return func(ctx context.Context, data any) error { return fn(ctx, data.(*T)) }
}

func typedReply[T any](fn func(context.Context, *T, Reply) error) func(context.Context, any, Reply) error {
	if fn == nil {
		return nil
	}
	return func(ctx context.Context, data any, r Reply) error { return fn(ctx, data.(*T), r) }
}

func typedSkip[T any](fn func(*T) bool) func(any) bool {
	if fn == nil {
		return nil
	}
	return func(data any) bool { return fn(data.(*T)) }
}

func typed[T any](fn func(context.Context, *T) (Command, error)) func(context.Context, any) (Command, error) {
	if fn == nil {
		return nil
	}
	return func(ctx context.Context, data any) (Command, error) { return fn(ctx, data.(*T)) }
}

// Name returns the saga type's name, as in the topic saga.<name>.inbox.
func (d *Definition) Name() string { return d.name }

// Steps returns the saga's steps in order. The caller must not modify it.
func (d *Definition) Steps() []StepInfo { return d.steps }

// ErrInvalidData is wrapped by every error of Decode and DecodeStored.
var ErrInvalidData = errors.New("invalid saga data")

// Decode decodes a start request's data from JSON and validates it. Unknown
// fields are rejected. Every error it returns wraps ErrInvalidData and is
// permanent (retry.IsPermanent): retrying cannot fix the input. A Validate
// that panics or does not return within DefaultCallTimeout is such an error too.
func (d *Definition) Decode(value []byte) (any, error) {
	data, err := d.decode(value, true)
	if err != nil {
		return nil, err
	}
	if v, ok := data.(Validator); ok {
		err := callPure(context.Background(), DefaultCallTimeout, v.Validate)
		if err != nil {
			return nil, retry.Permanent(fmt.Errorf("%w: %s: %w", ErrInvalidData, d.name, err))
		}
	}
	return data, nil
}

// DecodeStored decodes the data of a saga that has already started, as the
// engine stored it. It is lenient where Decode is strict, so that a saga's
// data type can evolve while sagas are in flight: unknown fields (a field
// that was removed from the type) are ignored and Validate is not run again
// (a rule that became stricter). A value that no longer decodes at all (a
// field whose type changed) is an error wrapping ErrInvalidData; the engine
// dead-letters the records of such a saga instead of stalling.
func (d *Definition) DecodeStored(value []byte) (any, error) {
	return d.decode(value, false)
}

func (d *Definition) decode(value []byte, strict bool) (data any, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = retry.Permanent(fmt.Errorf("%w: %s: %w", ErrInvalidData, d.name, &PanicError{Value: v, Stack: debug.Stack()}))
		}
	}()
	data = d.newData()
	dec := json.NewDecoder(bytes.NewReader(value))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(data); err != nil {
		return nil, retry.Permanent(fmt.Errorf("%w: %s: %w", ErrInvalidData, d.name, err))
	}
	if dec.More() {
		return nil, retry.Permanent(fmt.Errorf("%w: %s: trailing data after the JSON value", ErrInvalidData, d.name))
	}
	return data, nil
}

// Call runs fn with a ctx that expires after timeout, and turns a panic of
// fn into a *PanicError and a call that outlives timeout into an error
// wrapping ErrTimeout. A call that does not return is abandoned: its
// goroutine runs on until fn returns. The engine runs every call into saga
// code through it; timeout <= 0 means DefaultCallTimeout.
func Call(ctx context.Context, timeout time.Duration, fn func(context.Context) error) error {
	if timeout <= 0 {
		timeout = DefaultCallTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return call(ctx, timeout, false, fn)
}

// callPure is Call for saga code that takes no ctx (Skip, Validate): it
// needs no ctx of its own, only a bound on the wait. It gives up, as Call
// does, when ctx is done.
func callPure(ctx context.Context, timeout time.Duration, fn func() error) error {
	return call(ctx, timeout, true, func(context.Context) error { return fn() })
}

// call runs fn(ctx) on a parked goroutine and waits for it until ctx is
// done or, when timed, for at most timeout. Goroutines are reused: a call
// into saga code, several per saga, costs neither a goroutine's start nor
// the growth of a fresh stack.
func call(ctx context.Context, timeout time.Duration, timed bool, fn func(context.Context) error) error {
	j := jobs.Get().(*job)
	j.ctx, j.fn = ctx, fn
	var w *caller
	select {
	case w = <-idle:
	default:
		w = &caller{jobs: make(chan *job, 1)}
		go w.run()
	}
	w.jobs <- j
	var expired <-chan time.Time
	if timed {
		if j.timer == nil {
			j.timer = time.NewTimer(timeout)
		} else {
			j.timer.Reset(timeout)
		}
		expired = j.timer.C
	}
	select {
	case err := <-j.done:
		return j.finish(err)
	case <-expired:
	case <-ctx.Done():
	}
	// fn may have returned at the same moment: prefer its answer.
	select {
	case err := <-j.done:
		return j.finish(err)
	default:
	}
	// The job is abandoned with its goroutine, which still owns it: it is
	// not put back in the pool.
	return fmt.Errorf("%w (%s)", ErrTimeout, timeout)
}

// job is one call into saga code. The caller owns it until it hands it to
// a goroutine and again once it has read done; an abandoned job belongs to
// its goroutine for good.
type job struct {
	ctx   context.Context
	fn    func(context.Context) error
	done  chan error
	timer *time.Timer
}

// finish puts j, whose call returned err, back in the pool.
func (j *job) finish(err error) error {
	if j.timer != nil {
		j.timer.Stop()
	}
	j.ctx, j.fn = nil, nil
	jobs.Put(j)
	return err
}

var jobs = sync.Pool{New: func() any { return &job{done: make(chan error, 1)} }}

// caller is a goroutine that runs calls into saga code one after another.
// Between calls it parks in idle; when idle is full it exits.
type caller struct{ jobs chan *job }

// idle holds the parked callers: enough for the engine's parallel sagas and
// the participants' handlers, a bound on the goroutines kept.
var idle = make(chan *caller, 256)

func (w *caller) run() {
	for j := range w.jobs {
		j.done <- safely(j.ctx, j.fn)
		select {
		case idle <- w:
		default:
			return
		}
	}
}

// safely runs fn, turning its panic into a *PanicError.
func safely(ctx context.Context, fn func(context.Context) error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return fn(ctx)
}

// Do builds the command of participant step i for data, which must come
// from Decode or DecodeStored, within the step's CallTimeout (see Call).
func (d *Definition) Do(ctx context.Context, i int, data any) (Command, error) {
	return callCommand(ctx, d.steps[i].Timeout, d.do[i], data)
}

// callCommand runs a command builder through Call. The command is read
// only when the call returned: an abandoned call may still finish later and
// must not write anything the caller reads.
func callCommand(ctx context.Context, timeout time.Duration, fn func(context.Context, any) (Command, error), data any) (Command, error) {
	var out atomic.Pointer[Command]
	err := Call(ctx, timeout, func(ctx context.Context) error {
		c, err := fn(ctx, data)
		if err == nil {
			out.Store(&c)
		}
		return err
	})
	if err != nil {
		return Command{}, err
	}
	return *out.Load(), nil
}

// Undo builds the compensation command of participant step i for data
// within the step's CallTimeout. Call it only for a step that is not Local and
// whose StepInfo.Undoable is true.
func (d *Definition) Undo(ctx context.Context, i int, data any) (Command, error) {
	return callCommand(ctx, d.steps[i].Timeout, d.undo[i], data)
}

// Skip reports whether step i is skipped for data (Step.Skip), within the
// step's CallTimeout (see Call). It returns false at once for a step without
// Skip. An error is a panic or a call that outlived the CallTimeout.
func (d *Definition) Skip(ctx context.Context, i int, data any) (bool, error) {
	if d.skip[i] == nil {
		return false, nil
	}
	// An abandoned call may still finish after Call returned: it must not
	// write a variable the caller reads.
	var skip atomic.Bool
	err := callPure(ctx, d.steps[i].Timeout, func() error {
		skip.Store(d.skip[i](data))
		return nil
	})
	return err == nil && skip.Load(), err
}

// RunLocal runs local step i for data within the step's CallTimeout, with k in
// its ctx.
func (d *Definition) RunLocal(ctx context.Context, i int, data any, k Key) error {
	return Call(WithKey(ctx, k), d.steps[i].Timeout, func(ctx context.Context) error { return d.local[i](ctx, data) })
}

// RunUndoLocal runs the UndoLocal of local step i within the step's
// CallTimeout, with k in its ctx. Call it only for a Local step whose
// StepInfo.Undoable is true.
func (d *Definition) RunUndoLocal(ctx context.Context, i int, data any, k Key) error {
	return Call(WithKey(ctx, k), d.steps[i].Timeout, func(ctx context.Context) error { return d.undoLocal[i](ctx, data) })
}

// OnReply runs the OnReply of participant step i for data and reply within
// the step's CallTimeout, with info in its ctx. It does nothing for a step
// without OnReply. data may be changed by it.
func (d *Definition) OnReply(ctx context.Context, i int, data any, reply Reply, info Info) error {
	if d.onReply[i] == nil {
		return nil
	}
	return Call(WithInfo(ctx, info), d.steps[i].Timeout, func(ctx context.Context) error { return d.onReply[i](ctx, data, reply) })
}

// CheckID reports an error when data names a saga id (Identified) other
// than id. The error wraps ErrInvalidData and is permanent.
func (d *Definition) CheckID(data any, id string) error {
	if v, ok := data.(Identified); ok {
		if got := v.SagaID(); got != id {
			return retry.Permanent(fmt.Errorf("%w: %s: the data names saga %q, but the start request is for %q", ErrInvalidData, d.name, got, id))
		}
	}
	return nil
}
