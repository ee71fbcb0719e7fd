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
// (package orchestrator) runs a Definition inside Kafka transactions; the
// calls it makes into a definition live behind internal/, so that what a
// saga author sees here is what a saga author writes. Test a step's code by
// calling its functions (they are plain Go), and a saga end to end with
// package sagatest.
//
// A saga's name and its step names are stored in Kafka headers and Redis
// keys: renaming one orphans the sagas in flight. Changing the steps of a
// saga that runs is a new version (Definition.WithVersion).
package saga

import (
	"context"

	"github.com/ksaga/ksaga/internal/sagadef"
)

// Step is one step of a saga over data of type T. Exactly one of Do and
// Local is set; the fields are documented on sagadef.Step:
//
//   - Name identifies the step in headers, events and state.
//   - Do builds a participant's command; the saga waits for its reply
//     (ReplyTimeout per attempt, Retry attempts). Undo builds the command
//     that compensates it. OnReply folds the reply's data into the saga's
//     data (OnSuccess).
//   - Local runs in the engine's own transaction, idempotent and fenced by
//     the Key in its ctx; UndoLocal compensates it.
//   - CallTimeout bounds each call into the step's code; Compensation is
//     the step's own compensation policy.
//   - Skip passes over the step for some data; Park parks the saga instead
//     of compensating when the attempts run out; Group makes consecutive
//     Do steps a parallel group.
type Step[T any] = sagadef.Step[T]

// Command is what a participant step asks of its participant. The engine
// produces it to the topic "<Participant>.commands", keyed by the saga id.
type Command = sagadef.Command

// Reply is a participant's answer to a step's command, as OnReply sees it.
type Reply = sagadef.Reply

// Info describes the saga that a call into saga code serves; read it with
// InfoFrom.
type Info = sagadef.Info

// Key identifies one attempt of a Local or UndoLocal call, with a Fence
// that grows with every change of the saga; read it with KeyFrom.
type Key = sagadef.Key

// StepInfo describes a step of a Definition (Definition.Steps).
type StepInfo = sagadef.StepInfo

// Identified is implemented by saga data that names its own saga id: the
// engine refuses a start request whose key differs from it.
type Identified = sagadef.Identified

// Validator is implemented by saga data that checks itself; its error
// rejects a start request for good.
type Validator = sagadef.Validator

// PanicError is the error of a call into saga code that panicked.
type PanicError = sagadef.PanicError

// Migration turns the stored data of a saga started on an older version
// into the data of the version that adopts it. Build one with Migrate.
type Migration = sagadef.Migration

// IncompatibleError says why a definition cannot take over the running
// sagas of another (Compatible): one line per rule it breaks.
type IncompatibleError = sagadef.IncompatibleError

// DefaultReplyTimeout is how long the engine waits for a participant's
// reply to one attempt of a step whose ReplyTimeout is zero.
const DefaultReplyTimeout = sagadef.DefaultReplyTimeout

// DefaultCallTimeout bounds each call into a step's code whose CallTimeout
// is zero, and each call of a data type's Validate.
const DefaultCallTimeout = sagadef.DefaultCallTimeout

var (
	// ErrTimeout is wrapped by the error of a call into saga code that did
	// not return within its step's CallTimeout.
	ErrTimeout = sagadef.ErrTimeout
	// ErrInvalidData is wrapped by the error of data that does not decode
	// or validate: such a start request is dead-lettered (reason invalid).
	ErrInvalidData = sagadef.ErrInvalidData
	// ErrVersionNotHosted is wrapped by the engine's error when the state
	// topic holds running sagas of a version it neither hosts nor adopts.
	ErrVersionNotHosted = sagadef.ErrVersionNotHosted
)

// Definition is a validated saga, ready for the engine. It is immutable and
// safe for concurrent use.
type Definition struct{ d *sagadef.Definition }

func init() {
	sagadef.Unwrap = func(v any) *sagadef.Definition {
		if d, ok := v.(*Definition); ok && d != nil {
			return d.d
		}
		return nil
	}
}

// New defines a saga named name over data of type T. It panics when the
// definition is invalid (no steps, a bad or repeated name, a step with both
// or neither of Do and Local, an Undo on a Local step): that is a
// programming error, found at package initialization.
func New[T any](name string, steps ...Step[T]) *Definition {
	return &Definition{sagadef.New(name, steps...)}
}

// Name returns the saga type's name, as in the topic saga.<name>.inbox.
func (d *Definition) Name() string { return d.d.Name() }

// Steps returns the saga's steps in order. The caller must not modify it.
func (d *Definition) Steps() []StepInfo { return d.d.Steps() }

// StepIndex returns the index of the step named name, or -1.
func (d *Definition) StepIndex(name string) int { return d.d.StepIndex(name) }

// Decode decodes a start request's data from JSON and validates it, as the
// engine does when a saga starts: unknown fields are rejected, Validate
// runs. Its errors wrap ErrInvalidData and are permanent (retry.IsPermanent).
// Use it to check in a test that a start request is accepted.
func (d *Definition) Decode(value []byte) (any, error) { return d.d.Decode(value) }

// Version returns the definition's version: 1 unless set by WithVersion.
// A saga runs to its end on the version it started with; the engine hosts
// the versions still in flight (orchestrator.Host).
func (d *Definition) Version() int { return d.d.Version() }

// WithVersion returns a copy of d numbered v (>= 1). It panics for v < 1.
func (d *Definition) WithVersion(v int) *Definition {
	return &Definition{d.d.WithVersion(v)}
}

// Adopts returns a copy of d that takes over the running sagas of old, an
// older version of the same saga type, so that the engine no longer needs
// to host old: their state moves to d (steps matched by name) and their
// data through migrate (nil: old's stored data decodes as d's data type),
// in the transaction that first changes each. It panics when d cannot take
// over old's sagas (Compatible says why).
func (d *Definition) Adopts(old *Definition, migrate Migration) *Definition {
	return &Definition{d.d.Adopts(old.d, migrate)}
}

// Compatible reports whether next can take over the running sagas of old
// (Adopts): same saga type and a higher version; no step of old removed or
// renamed; each keeps its kind (Do or Local), its compensation and its
// parallel group; the steps of old keep their order; steps are added only
// after the last step of old. Anything else may change. A change it
// refuses ships as a new version hosted beside the old one until the old
// one drains. sagatest.Compatible checks it in a test.
func Compatible(old, next *Definition) error { return sagadef.Compatible(old.d, next.d) }

// Migrate returns the Migration that decodes the stored data of the older
// version into an Old and hands it to fn, whose New is the adopting
// version's data type.
func Migrate[Old, New any](fn func(old *Old) (*New, error)) Migration {
	return sagadef.Migrate(fn)
}

// OnSuccess returns an OnReply that decodes a successful reply's data into
// an R and hands it to fn with the saga's data; a failure reply is passed
// over.
//
//	saga.Step[Order]{Name: "authorize-payment", Do: authorize, Undo: cancel,
//		OnReply: saga.OnSuccess(func(o *Order, a Authorization) { o.AuthorizationID = a.ID })}
func OnSuccess[T, R any](fn func(data *T, result R)) func(context.Context, *T, Reply) error {
	return sagadef.OnSuccess(fn)
}

// InfoFrom returns the Info of the saga that ctx's call serves.
func InfoFrom(ctx context.Context) (Info, bool) { return sagadef.InfoFrom(ctx) }

// WithInfo returns ctx carrying i, for a test that calls saga code.
func WithInfo(ctx context.Context, i Info) context.Context { return sagadef.WithInfo(ctx, i) }

// KeyFrom returns the Key of the attempt that ctx belongs to.
func KeyFrom(ctx context.Context) (Key, bool) { return sagadef.KeyFrom(ctx) }

// WithKey returns ctx carrying k, for a test that calls saga code.
func WithKey(ctx context.Context, k Key) context.Context { return sagadef.WithKey(ctx, k) }

// ValidName reports whether name is a valid name for a saga type, a step
// or a group: lower-case letters, digits and '-', starting with a letter
// or digit.
func ValidName(name string) bool { return sagadef.ValidName(name) }
