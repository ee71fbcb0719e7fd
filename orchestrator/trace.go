package orchestrator

import (
	"context"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
)

// TraceContext is a W3C trace context, as the traceparent and tracestate
// headers carry it, and what a span that stays open across transactions
// needs to be emitted once it ends. The engine stores it in State and never
// changes one: a tracer replaces the pointer instead.
type TraceContext struct {
	// Parent is the traceparent: "00-<trace id>-<span id>-<flags>".
	Parent string `json:"traceparent"`
	// State is the tracestate; empty when there is none.
	State string `json:"tracestate,omitempty"`
	// ParentSpanID is the span id (16 hex digits) of the span's own
	// parent; empty for a root span.
	ParentSpanID string `json:"parent_span_id,omitempty"`
	// Name and Start (Unix ns) describe the span, for its emission when
	// it ends in a later transaction.
	Name  string `json:"name,omitempty"`
	Start int64  `json:"start_ns,omitempty"`
}

// HeaderTrace returns the trace context that r's traceparent and tracestate
// headers carry, or nil when r has no well-formed traceparent.
func HeaderTrace(r *kgo.Record) *TraceContext {
	var tc TraceContext
	for _, h := range r.Headers {
		switch h.Key {
		case message.HeaderTraceParent:
			tc.Parent = string(h.Value)
		case message.HeaderTraceState:
			tc.State = string(h.Value)
		}
	}
	if !validTraceParent(tc.Parent) {
		return nil
	}
	return &tc
}

// validTraceParent checks the shape of a version-00 traceparent:
// 00-<32 hex>-<16 hex>-<2 hex>, trace and span ids not all zero.
func validTraceParent(s string) bool {
	if len(s) != 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' || s[:2] != "00" {
		return false
	}
	zeroTrace, zeroSpan := true, true
	for i := 3; i < 55; i++ {
		if i == 35 || i == 52 {
			continue
		}
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
		if c != '0' && i < 35 {
			zeroTrace = false
		}
		if c != '0' && i > 35 && i < 52 {
			zeroSpan = false
		}
	}
	return !zeroTrace && !zeroSpan
}

// setTrace sets r's traceparent and tracestate headers to tc, replacing
// those it has. The tracestate header is written even when empty, so every
// record says what it carries.
func setTrace(r *kgo.Record, tc *TraceContext) {
	if tc == nil {
		return
	}
	hs := r.Headers[:0:0]
	for _, h := range r.Headers {
		if h.Key != message.HeaderTraceParent && h.Key != message.HeaderTraceState {
			hs = append(hs, h)
		}
	}
	hs = append(hs, kgo.RecordHeader{Key: message.HeaderTraceParent, Value: []byte(tc.Parent)})
	if tc.State != "" {
		hs = append(hs, kgo.RecordHeader{Key: message.HeaderTraceState, Value: []byte(tc.State)})
	}
	r.Headers = hs
}

// Change is one inbox record applied to its saga, as a committed Batch
// lists it and as HookTrace.TraceChange sees it.
type Change struct {
	// Record is the inbox record. Its headers carry its sender's trace
	// context (a reply: the participant's handling span).
	Record *kgo.Record
	// Prev is the saga's state before the record (nil: the record
	// started the saga); Next after it.
	Prev, Next *State
	// Events are the saga events the record produced.
	Events []message.Event
	// Sent is the command the record sent, if any.
	Sent *Sent
}

// Sent describes a command to a participant.
type Sent struct {
	// Topic is the participant's command topic, Type the command type.
	Topic, Type string
	// MessageID is the command's message id (kept across re-sends).
	MessageID string
	// Step names the step; Undo is set when the command compensates it.
	Step string
	Undo bool
	// Attempt counts the sends of this command, the first being 1.
	Attempt int
}

// HookTrace traces sagas (package tracing implements it with
// OpenTelemetry). The engine stores the trace contexts it returns in the
// saga's State, so a saga's trace continues across transactions, engine
// instances and deadlines, and writes them into the traceparent and
// tracestate headers of every record it produces. Register at most one.
//
// Unlike the other hooks, TraceRecord, TraceChange and TraceLocal are
// called from the goroutines that handle a batch's sagas in parallel: a
// HookTrace must be safe for concurrent use. It must not block.
type HookTrace interface {
	// TraceTransaction is called when a transaction begins, with the
	// Batch the engine fills as it goes. The context it returns is the
	// parent of every other call for this transaction. end is called
	// once the transaction is over: committed after the after-commit
	// hooks ran (b.Changes then lists what was committed), or aborted.
	TraceTransaction(ctx context.Context, b *Batch) (_ context.Context, end func(committed bool))
	// TraceRecord is called before inbox record r is handled; st is its
	// saga's state, nil when the saga does not exist. It returns the
	// context to handle r with (saga code runs with it) and the trace
	// context of the saga: st's, or for a start request the one the new
	// saga gets. Records that belong to no saga carry it too (a dead
	// letter of a record that names no saga).
	TraceRecord(ctx context.Context, r *kgo.Record, st *State) (context.Context, *TraceContext)
	// TraceChange is called when a record changed its saga, before the
	// records that the change produces are built: it may set
	// c.Next.StepTrace (the context the command carries), never
	// anything else. A change can still be dropped (its records do not fit
	// their topics): spans it ends are to be emitted from the committed
	// Batch's Changes.
	TraceChange(ctx context.Context, c *Change)
	// TraceLocal is called before a local step or compensation runs, with
	// the context TraceRecord returned; end is called with its result.
	TraceLocal(ctx context.Context, step string, undo bool) (_ context.Context, end func(error))
}

// traceRecord returns the context to handle r with and its saga's trace
// context. Without a tracer a saga keeps the context its start request
// came with.
func (e *Engine) traceRecord(ctx context.Context, r *kgo.Record, st *State) (context.Context, *TraceContext) {
	if e.tracer != nil {
		return e.tracer.TraceRecord(ctx, r, st)
	}
	if st != nil {
		return ctx, st.Trace
	}
	return ctx, HeaderTrace(r)
}

// deadLetterTrace returns the trace context of r's dead letter: its saga's
// when the saga exists; else none, keeping the one r has, so that a redrive
// continues where r came from; else tc.
func deadLetterTrace(r *kgo.Record, st *State, tc *TraceContext) *TraceContext {
	if st != nil && st.Trace != nil {
		return st.Trace
	}
	if HeaderTrace(r) != nil {
		return nil
	}
	return tc
}

// traceID returns the trace id of r's traceparent header ("" when it has
// none), for log lines about r that no span covers.
func traceID(r *kgo.Record) string {
	for _, h := range r.Headers {
		if h.Key == message.HeaderTraceParent {
			// version "-" trace-id "-" parent-id "-" flags
			if parts := strings.Split(string(h.Value), "-"); len(parts) == 4 && len(parts[1]) == 32 {
				return parts[1]
			}
		}
	}
	return ""
}
