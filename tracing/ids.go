package tracing

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"sync"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// IDGenerator returns the span id generator that ksaga's spans need: random
// ids, like the SDK's own, except for spans whose ids the tracer chose
// earlier and stored with the saga (the saga span and the step spans, which
// are emitted when they end, in a later transaction, possibly on another
// instance). NewProvider installs it; a provider built by hand needs
// sdktrace.WithIDGenerator(tracing.IDGenerator()), or New refuses it.
func IDGenerator() sdktrace.IDGenerator {
	var seed [32]byte
	_, _ = crand.Read(seed[:])
	return &idGenerator{rng: rand.New(rand.NewChaCha8(seed))}
}

type idGenerator struct {
	mu  sync.Mutex
	rng *rand.Rand
}

// presetKey is the context key of ids chosen in advance.
type presetKey struct{}

type preset struct {
	trace trace.TraceID
	span  trace.SpanID
}

// withIDs makes the span started with ctx get these ids.
func withIDs(ctx context.Context, t trace.TraceID, s trace.SpanID) context.Context {
	return context.WithValue(ctx, presetKey{}, preset{t, s})
}

func (g *idGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if p, ok := ctx.Value(presetKey{}).(preset); ok {
		return p.trace, p.span
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var t trace.TraceID
	var s trace.SpanID
	for !t.IsValid() {
		binary.NativeEndian.PutUint64(t[:8], g.rng.Uint64())
		binary.NativeEndian.PutUint64(t[8:], g.rng.Uint64())
	}
	for !s.IsValid() {
		binary.NativeEndian.PutUint64(s[:], g.rng.Uint64())
	}
	return t, s
}

func (g *idGenerator) NewSpanID(ctx context.Context, traceID trace.TraceID) trace.SpanID {
	if p, ok := ctx.Value(presetKey{}).(preset); ok && p.trace == traceID {
		return p.span
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var s trace.SpanID
	for !s.IsValid() {
		binary.NativeEndian.PutUint64(s[:], g.rng.Uint64())
	}
	return s
}

// SagaTraceID returns the trace id of a saga whose start request came
// without a trace context: a hash of its type and id, so that every attempt
// at starting it (retries, a redrive from the dead-letter topic) lands in
// one trace, and an operator can compute it from the saga id.
func SagaTraceID(sagaType, sagaID string) trace.TraceID {
	sum := sha256.Sum256([]byte("ksaga-trace\x00" + sagaType + "\x00" + sagaID))
	var t trace.TraceID
	copy(t[:], sum[:])
	if !t.IsValid() {
		t[15] = 1
	}
	return t
}

// sagaSpanID returns the span id of a saga's span in trace t: a hash, so
// that the retries of a start request, and its redrive, share it.
func sagaSpanID(t trace.TraceID, sagaType, sagaID string) trace.SpanID {
	sum := sha256.Sum256(append(append([]byte("ksaga-saga\x00"), t[:]...), "\x00"+sagaType+"\x00"+sagaID...))
	var s trace.SpanID
	copy(s[:], sum[:])
	if !s.IsValid() {
		s[7] = 1
	}
	return s
}
