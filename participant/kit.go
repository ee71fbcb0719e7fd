package participant

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/ksaga/ksaga/message"
)

// Command is the former name of Request.
//
// Deprecated: use Request. Command clashed with saga.Command, which a saga
// step returns; the two are the two ends of one message.
type Command = Request

// Reply is what a participant answers to a request: message.Reply, so that
// a handler needs no other import. Build it with Success and Failure.
type Reply = message.Reply

// Success returns the reply of a request whose effect happened (or had
// happened already): the saga moves on.
func Success() Reply { return Reply{Outcome: message.OutcomeSuccess} }

// Failure returns the reply of a request that cannot be carried out, with a
// short machine-readable reason such as "NO_ROOMS": the saga compensates the
// steps it completed. The reason goes to the ksaga-reason header and the
// saga's events.
func Failure(reason string) Reply { return Reply{Outcome: message.OutcomeFailure, Reason: reason} }

// SuccessWith returns the reply of a request whose effect happened, with
// data for the saga: a result such as a payment's authorization id, which
// the step reads (saga.Step.OnReply, saga.OnSuccess) and may keep in the
// saga's data for later steps and compensations. data is encoded as JSON;
// an error is one of encoding.
func SuccessWith(data any) (Reply, error) {
	b, err := json.Marshal(data)
	if err != nil {
		return Reply{}, fmt.Errorf("encode reply data: %w", err)
	}
	return Reply{Outcome: message.OutcomeSuccess, Data: string(b)}, nil
}

// FailureWith is Failure with details for the saga, encoded as JSON (see
// SuccessWith).
func FailureWith(reason string, details any) (Reply, error) {
	b, err := json.Marshal(details)
	if err != nil {
		return Reply{}, fmt.Errorf("encode reply details: %w", err)
	}
	return Reply{Outcome: message.OutcomeFailure, Reason: reason, Data: string(b)}, nil
}

// ReasonBadCommand is the failure reason Routes replies to a request it
// cannot understand: an unknown command type, or a payload that does not
// decode or fails its Validate.
const ReasonBadCommand = "BAD_COMMAND"

type requestKey struct{}

// WithRequest returns ctx carrying req. Routes calls it before each of its
// functions; Script.Run reads it back. A Handler of its own that calls
// Script.Run must call it too.
func WithRequest(ctx context.Context, req Request) context.Context {
	return context.WithValue(ctx, requestKey{}, req)
}

// RequestFrom returns the Request that ctx carries (see WithRequest).
func RequestFrom(ctx context.Context) (Request, bool) {
	req, ok := ctx.Value(requestKey{}).(Request)
	return req, ok
}

// Func handles one request. Its error aborts the whole batch's transaction,
// which is then retried, so it must be safe to call again with the same
// request: give its effect a dedupe record (Script does), and answer a
// request it cannot understand with a Failure, not an error.
type Func func(ctx context.Context, req Request) (Reply, error)

// Typed adapts a function of a command's decoded payload to a Func. The
// payload is decoded from JSON into a new T, leniently (unknown fields are
// ignored, so the saga may add fields first). A payload that does not decode,
// or whose T implements Validate() error and fails it, is answered with
// Failure(ReasonBadCommand) without calling fn. fn's ctx carries the Request
// (RequestFrom), which Script.Run needs.
func Typed[T any](fn func(ctx context.Context, cmd *T) (Reply, error)) Func {
	return func(ctx context.Context, req Request) (Reply, error) {
		cmd := new(T)
		if err := json.Unmarshal(req.Payload, cmd); err != nil {
			return Failure(ReasonBadCommand), nil
		}
		if v, ok := any(cmd).(interface{ Validate() error }); ok && v.Validate() != nil {
			return Failure(ReasonBadCommand), nil
		}
		return fn(ctx, cmd)
	}
}

// Routes is a Handler that hands each request to the Func registered for its
// command type (Request.Type), one request at a time, in order, with the
// request in ctx (RequestFrom). A request of a type it has no Func for is
// answered with Failure(ReasonBadCommand).
//
//	h := participant.Routes{
//		"BookRoom":   participant.Typed(book),
//		"CancelRoom": participant.Typed(cancel),
//	}
//
// Every request costs its Func's own round trips; a Handler that pipelines
// a whole batch (see package saga/order/sim) is faster under load.
type Routes map[string]Func

var _ Handler = Routes(nil)

// Handle implements Handler. Its error is the first error of a Func; the
// requests handled before it in the batch are handled again when the batch
// is retried, so their Funcs must dedupe.
func (r Routes) Handle(ctx context.Context, reqs []Request) ([]Reply, error) {
	replies := make([]Reply, len(reqs))
	for i, req := range reqs {
		fn, ok := r[req.Type]
		if !ok {
			replies[i] = Failure(ReasonBadCommand)
			continue
		}
		reply, err := fn(WithRequest(ctx, req), req)
		if err != nil {
			return nil, err
		}
		replies[i] = reply
	}
	return replies, nil
}
