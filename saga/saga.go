// Package saga is the API a saga author imports: a saga is a list of typed
// steps, each either a command to a participant (with an optional
// compensation) or a local function, written as plain Go.
//
//	var Saga = saga.New("order",
//		saga.Step[Order]{Name: "reserve-inventory", Do: reserveInventory, Undo: releaseInventory},
//		saga.Step[Order]{Name: "authorize-payment", Do: authorizePayment, Undo: cancelPayment},
//		saga.Step[Order]{Name: "complete-order", Local: completeOrder,
//			Retry: retry.Policy{MaxAttempts: 3}},
//	)
//
// The package is pure: it knows nothing of Kafka or Redis. The engine
// (package orchestrator) runs a Definition inside Kafka transactions.
//
// A saga's name and its step names are stored in Kafka headers and Redis
// keys: renaming one orphans the sagas in flight.
package saga

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/ksaga/ksaga/retry"
)

// DefaultDeadline is how long the engine waits for a participant's reply to
// one attempt of a step whose Deadline is zero.
const DefaultDeadline = 30 * time.Second

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
	Local func(ctx context.Context, data *T) error
	// Retry bounds the attempts of the step: for a Local step the
	// processing attempts of its record, for a Do step the sends of its
	// command that get no reply before Deadline (re-sent with the same
	// message id, so participants dedupe). The zero value means three
	// attempts, the first included.
	Retry retry.Policy
	// Deadline is how long one attempt of a Do step waits for its reply.
	// Zero means DefaultDeadline.
	Deadline time.Duration
}

// StepInfo describes a step to the engine.
type StepInfo struct {
	Name     string
	Local    bool
	Undoable bool
	Retry    retry.Policy
	Deadline time.Duration
}

// Definition is a validated saga, ready for the engine. It is immutable and
// safe for concurrent use.
type Definition struct {
	name    string
	steps   []StepInfo
	newData func() any
	do      []func(context.Context, any) (Command, error)
	undo    []func(context.Context, any) (Command, error)
	local   []func(context.Context, any) error
}

// Validator is implemented by saga data that checks itself. Decode calls it
// after decoding a start request; its error is permanent.
type Validator interface {
	Validate() error
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

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
	for i, s := range steps {
		switch {
		case !nameRE.MatchString(s.Name):
			return nil, fmt.Errorf("saga %s step %d: name %q must match %s", name, i, s.Name, nameRE)
		case seen[s.Name]:
			return nil, fmt.Errorf("saga %s: step name %q is used twice", name, s.Name)
		case (s.Do == nil) == (s.Local == nil):
			return nil, fmt.Errorf("saga %s step %s: set exactly one of Do and Local", name, s.Name)
		case s.Local != nil && s.Undo != nil:
			return nil, fmt.Errorf("saga %s step %s: a Local step cannot have an Undo", name, s.Name)
		}
		seen[s.Name] = true
		info := StepInfo{Name: s.Name, Local: s.Local != nil, Undoable: s.Undo != nil, Retry: s.Retry, Deadline: s.Deadline}
		if info.Deadline <= 0 {
			info.Deadline = DefaultDeadline
		}
		d.steps = append(d.steps, info)
		d.do = append(d.do, typed(s.Do))
		d.undo = append(d.undo, typed(s.Undo))
		var local func(context.Context, any) error
		if s.Local != nil {
			fn := s.Local
			local = func(ctx context.Context, data any) error { return fn(ctx, data.(*T)) }
		}
		d.local = append(d.local, local)
	}
	return d, nil
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

// ErrInvalidData is wrapped by every error of Decode.
var ErrInvalidData = errors.New("invalid saga data")

// Decode decodes a saga's data from JSON and validates it. Unknown fields are
// rejected. Every error it returns wraps ErrInvalidData and is permanent
// (retry.IsPermanent): retrying cannot fix the input.
func (d *Definition) Decode(value []byte) (any, error) {
	data := d.newData()
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.DisallowUnknownFields()
	if err := dec.Decode(data); err != nil {
		return nil, retry.Permanent(fmt.Errorf("%w: %s: %w", ErrInvalidData, d.name, err))
	}
	if dec.More() {
		return nil, retry.Permanent(fmt.Errorf("%w: %s: trailing data after the JSON value", ErrInvalidData, d.name))
	}
	if v, ok := data.(Validator); ok {
		if err := v.Validate(); err != nil {
			return nil, retry.Permanent(fmt.Errorf("%w: %s: %w", ErrInvalidData, d.name, err))
		}
	}
	return data, nil
}

// Do builds the command of participant step i for data, which must come
// from Decode.
func (d *Definition) Do(ctx context.Context, i int, data any) (Command, error) {
	return d.do[i](ctx, data)
}

// Undo builds the compensation command of step i for data, which must come
// from Decode. Call it only for a step whose StepInfo.Undoable is true.
func (d *Definition) Undo(ctx context.Context, i int, data any) (Command, error) {
	return d.undo[i](ctx, data)
}

// RunLocal runs local step i for data, which must come from Decode.
func (d *Definition) RunLocal(ctx context.Context, i int, data any) error {
	return d.local[i](ctx, data)
}
