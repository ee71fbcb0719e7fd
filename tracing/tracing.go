// Package tracing traces sagas with OpenTelemetry: one trace per saga, W3C
// trace context in the traceparent and tracestate headers of every record the
// engine and the participants produce.
//
//	tr, shutdown, err := tracing.FromEnv(ctx, os.Getenv, "sagad", version) // OTEL_* variables; off: contexts pass through
//	if err != nil {
//		return err
//	}
//	defer shutdown(context.Background())
//	eng, err := orchestrator.New(def, …, orchestrator.Hooks(tr))
//	p, err := participant.New("inventory", h, …, participant.Trace(tr))
//	log := slog.New(tracing.LogHandler(slog.NewJSONHandler(os.Stderr, nil)))
//
// The spans of a saga (names in quotes):
//
//	"saga order"                   the saga's life: from its start request to its terminal event
//	├── "step reserve-inventory"   one attempt of a participant step: from its command to its reply or deadline
//	│   └── "handle ReserveInventory"   the participant handling the command (participant runtime)
//	├── "local complete-order"     one attempt of a local step (including attempts whose transaction aborted)
//	├── "compensate reserve-inventory"  one attempt of a compensation (a command, or a local UndoLocal)
//	└── …
//
//	"ksaga transaction"            one engine transaction (a trace of its own), linked to the
//	                               records it handled; the spans it ended link back to it
//
// A span cannot stay open across transactions and processes, so the saga
// span and the step spans are emitted when they end, with the start time
// and the ids chosen when they began, which the engine keeps in the saga's
// State (State.Trace, State.StepTrace). Their children are exported before
// them; tracing backends assemble a trace by its ids, so the tree is whole
// once the saga ends. A saga that never ends has no saga span: its steps
// show under a missing parent. Spans that end are emitted only once their
// transaction committed, so an aborted transaction emits none of them
// twice; local step spans are emitted for every attempt, since every
// attempt ran.
//
// A saga's trace is the trace of its start request's traceparent; a start
// request without one gets the trace SagaTraceID(type, id). The saga span's
// id is derived from the trace and the saga, so the retries of a start
// request and its redrive from the dead-letter topic share one trace and
// one saga span.
//
// franz-go's kotel plugin is not used: its produce hook starts a span per
// record and rewrites the record's traceparent to it, so commands would no
// longer carry the step span the engine stored, and its consume hook opens a
// span per fetched record, again at every re-fetch after an aborted
// transaction. Do not add kotel's tracer to the engine's or a participant's
// client.
package tracing

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/participant"
	sagadef "github.com/ksaga/ksaga/saga"
)

// ScopeName is the instrumentation scope of ksaga's spans.
const ScopeName = "github.com/ksaga/ksaga"

// Attribute keys of ksaga's spans.
const (
	AttrSagaID   = attribute.Key("ksaga.saga.id")
	AttrSagaType = attribute.Key("ksaga.saga.type")
	AttrStep     = attribute.Key("ksaga.step")
	AttrAttempt  = attribute.Key("ksaga.step.attempt")
	AttrOutcome  = attribute.Key("ksaga.outcome")
	AttrReason   = attribute.Key("ksaga.reason")
	AttrRecords  = attribute.Key("ksaga.records")
	AttrResult   = attribute.Key("ksaga.transaction.result")
	AttrLink     = attribute.Key("ksaga.link")
)

var (
	_ orchestrator.HookTrace = (*Tracer)(nil)
	_ participant.Tracer     = (*Tracer)(nil)
)

// Tracer traces the engine (orchestrator.Hooks) and participants
// (participant.Trace) through a TracerProvider. Its methods are safe for
// concurrent use.
type Tracer struct {
	tr      trace.Tracer
	enabled bool
	prop    propagation.TraceContext
}

// ErrIDGenerator is returned by New for an SDK TracerProvider that was not
// built with IDGenerator.
var ErrIDGenerator = errors.New("tracing: the TracerProvider does not use tracing.IDGenerator; build it with tracing.NewProvider or sdktrace.WithIDGenerator(tracing.IDGenerator())")

// New returns a Tracer that creates its spans with tp. With a nil tp it
// creates none, but still carries trace contexts through: a saga keeps the
// context its start request came with, on every record it causes, and log
// lines (LogHandler) show it. New fails when tp is an SDK provider that was
// not built with IDGenerator (see ErrIDGenerator).
func New(tp trace.TracerProvider) (*Tracer, error) {
	t := &Tracer{}
	if tp == nil {
		t.tr = noop.NewTracerProvider().Tracer(ScopeName)
		return t, nil
	}
	t.tr, t.enabled = tp.Tracer(ScopeName), true
	// The span of the probe is never ended, so never exported.
	want := trace.SpanID{'k', 's', 'a', 'g', 'a', 0, 0, 1}
	_, sp := t.tr.Start(withIDs(context.Background(), trace.TraceID{'k', 's', 'a', 'g', 'a', 1}, want), "probe", trace.WithNewRoot())
	if sc := sp.SpanContext(); sc.IsValid() && sc.SpanID() != want {
		return nil, ErrIDGenerator
	}
	if !sp.SpanContext().IsValid() {
		t.enabled = false // a no-op provider
	}
	return t, nil
}

// txnKey is the context key of the current transaction.
type txnKey struct{}

type txn struct {
	span trace.Span
	mu   sync.Mutex
	// topic is the inbox of the first record handled.
	topic string
}

// TraceTransaction starts the span of an engine transaction. Its end
// emits the spans that the committed changes ended.
func (t *Tracer) TraceTransaction(ctx context.Context, b *orchestrator.Batch) (context.Context, func(bool)) {
	ctx, span := t.tr.Start(ctx, "ksaga transaction", trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.system", "kafka"), attribute.String("messaging.operation.type", "process")))
	x := &txn{span: span}
	ctx = context.WithValue(ctx, txnKey{}, x)
	return ctx, func(committed bool) {
		result := "aborted"
		if committed {
			result = "committed"
			t.emitChanges(span.SpanContext(), b.Changes)
		} else {
			span.SetStatus(codes.Error, "aborted")
		}
		span.SetAttributes(AttrRecords.Int(b.Records), AttrResult.String(result),
			attribute.Int("ksaga.events", len(b.Events)), attribute.Int("ksaga.dead_lettered", len(b.DeadLettered)),
			attribute.Int("ksaga.timeouts", b.Timeouts))
		if x.topic != "" {
			span.SetAttributes(attribute.String("messaging.destination.name", x.topic))
		}
		span.End()
	}
}

// TraceRecord returns the context to handle r with, whose span is the saga's
// (so that local steps and log lines belong to the saga's trace), and the
// saga's trace context. It links the transaction to the record.
func (t *Tracer) TraceRecord(ctx context.Context, r *kgo.Record, st *orchestrator.State) (context.Context, *orchestrator.TraceContext) {
	own := orchestrator.HeaderTrace(r)
	x, _ := ctx.Value(txnKey{}).(*txn)
	var tc *orchestrator.TraceContext
	switch {
	case st != nil && st.Trace != nil:
		tc = st.Trace
	case t.enabled && (st != nil || header(r, message.HeaderMessageType) == message.TypeStartSaga):
		// A new saga, or one started before tracing was on.
		var parent trace.SpanContext
		if st == nil {
			parent = t.spanContext(own)
		}
		tc = t.sagaContext(ctx, parent, sagaType(r, st), string(r.Key))
	case st != nil:
	case own != nil:
		tc = own
	case x != nil:
		tc = t.format(x.span.SpanContext(), "", "", 0)
	}
	if x != nil {
		x.mu.Lock()
		if x.topic == "" {
			x.topic = r.Topic
		}
		x.mu.Unlock()
		link := own
		if link == nil {
			link = tc
		}
		if sc := t.spanContext(link); sc.IsValid() {
			x.span.AddLink(trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{
				attribute.String("messaging.kafka.message.key", string(r.Key)),
				attribute.Int64("messaging.kafka.offset", r.Offset),
				attribute.Int("messaging.destination.partition.id", int(r.Partition)),
			}})
		}
	}
	if sc := t.spanContext(tc); sc.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
	} else {
		// Not the transaction's span: saga code's spans must not join it.
		ctx = trace.ContextWithSpanContext(ctx, trace.SpanContext{})
	}
	return ctx, tc
}

// sagaContext returns the trace context of a new saga: a child of parent
// (the start request's context) or a root in SagaTraceID's trace, with a
// span id derived from the trace and the saga.
func (t *Tracer) sagaContext(ctx context.Context, parent trace.SpanContext, typ, id string) *orchestrator.TraceContext {
	name := "saga " + typ
	if parent.IsValid() && parent.SpanID() == sagaSpanID(parent.TraceID(), typ, id) {
		// The start request carries the saga's own context: it is a redrive
		// of one that was dead-lettered before the saga began.
		return t.format(parent, "", name, 0)
	}
	tid := SagaTraceID(typ, id)
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal)}
	var from string
	if parent.IsValid() {
		tid, from = parent.TraceID(), parent.SpanID().String()
		ctx = trace.ContextWithRemoteSpanContext(ctx, parent)
	} else {
		opts = append(opts, trace.WithNewRoot())
	}
	// Started for its ids and the sampler's decision, never ended: the span
	// is emitted when the saga ends.
	_, sp := t.tr.Start(withIDs(ctx, tid, sagaSpanID(tid, typ, id)), name, opts...)
	return t.format(sp.SpanContext(), from, name, 0)
}

// TraceChange gives the command the change sent a span of its own, a
// child of the saga's.
func (t *Tracer) TraceChange(ctx context.Context, c *orchestrator.Change) {
	next := c.Next
	next.StepTrace = nil
	if c.Sent == nil || !t.enabled {
		return
	}
	saga := t.spanContext(next.Trace)
	if !saga.IsValid() {
		return
	}
	name := "step " + c.Sent.Step
	if c.Sent.Undo {
		name = "compensate " + c.Sent.Step
	}
	_, sp := t.tr.Start(trace.ContextWithRemoteSpanContext(ctx, saga), name, trace.WithSpanKind(trace.SpanKindProducer))
	next.StepTrace = t.format(sp.SpanContext(), saga.SpanID().String(), name, time.Now().UnixNano())
}

// TraceLocal starts the span of one attempt of a local step or
// compensation, a child of the saga's span.
func (t *Tracer) TraceLocal(ctx context.Context, step string, undo bool) (context.Context, func(error)) {
	name := "local " + step
	if undo {
		name = "compensate " + step
	}
	attrs := []attribute.KeyValue{AttrStep.String(step)}
	if info, ok := sagadef.InfoFrom(ctx); ok {
		attrs = append(attrs, AttrSagaID.String(info.SagaID), AttrSagaType.String(info.Type))
	}
	ctx, sp := t.tr.Start(ctx, name, trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(attrs...))
	return ctx, func(err error) {
		if err != nil {
			sp.RecordError(err)
			sp.SetStatus(codes.Error, err.Error())
		}
		sp.End()
	}
}

// TraceRequest starts the span of a participant's handling of a command, a
// child of the step attempt that sent it.
func (t *Tracer) TraceRequest(ctx context.Context, req participant.Request) func(message.Reply, error) (string, string) {
	if sc := t.spanContext(orchestrator.HeaderTrace(req.Record)); sc.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, sc)
	} else {
		ctx = trace.ContextWithSpanContext(ctx, trace.SpanContext{})
	}
	_, sp := t.tr.Start(ctx, "handle "+req.Type, trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
		attribute.String("messaging.system", "kafka"),
		attribute.String("messaging.destination.name", req.Record.Topic),
		attribute.String("messaging.message.id", req.MessageID),
		AttrSagaID.String(req.SagaID), AttrSagaType.String(req.SagaType), AttrStep.String(req.Step),
		AttrAttempt.Int(req.Attempt)))
	return func(reply message.Reply, err error) (string, string) {
		switch {
		case err != nil:
			sp.RecordError(err)
			sp.SetStatus(codes.Error, err.Error())
		case reply.Outcome == message.OutcomeFailure:
			sp.SetAttributes(AttrOutcome.String(reply.Outcome), AttrReason.String(reply.Reason))
			sp.SetStatus(codes.Error, reply.Reason)
		default:
			sp.SetAttributes(AttrOutcome.String(reply.Outcome))
		}
		sp.End()
		tc := t.format(sp.SpanContext(), "", "", 0)
		if tc == nil {
			return "", ""
		}
		return tc.Parent, tc.State
	}
}

// emitChanges emits the spans that committed changes ended: the step
// attempt a change answered or timed out, and the saga span of a saga that
// ended.
func (t *Tracer) emitChanges(txn trace.SpanContext, changes []orchestrator.Change) {
	if !t.enabled {
		return
	}
	txnLink := trace.Link{SpanContext: txn, Attributes: []attribute.KeyValue{AttrLink.String("transaction")}}
	for i := range changes {
		c := &changes[i]
		next, prev := c.Next, c.Prev
		if prev != nil && prev.StepTrace != nil && (next.StepTrace == nil || next.StepTrace.Parent != prev.StepTrace.Parent) {
			t.emitStep(c, txnLink)
		}
		if next.Terminal() && next.Trace != nil && (prev == nil || !prev.Terminal()) {
			t.emitSaga(c, txnLink)
		}
	}
}

func (t *Tracer) emitStep(c *orchestrator.Change, txnLink trace.Link) {
	prev, next := c.Prev, c.Next
	st := prev.StepTrace
	sc := t.spanContext(st)
	if !sc.IsValid() {
		return
	}
	attrs := []attribute.KeyValue{
		AttrSagaID.String(prev.ID), AttrSagaType.String(prev.Type), AttrAttempt.Int(prev.Attempt),
		attribute.String("messaging.message.id", prev.Waiting),
	}
	if s, ok := strings.CutPrefix(st.Name, "step "); ok {
		attrs = append(attrs, AttrStep.String(s))
	} else if s, ok := strings.CutPrefix(st.Name, "compensate "); ok {
		attrs = append(attrs, AttrStep.String(s))
	}
	code, desc := codes.Unset, ""
	switch header(c.Record, message.HeaderMessageType) {
	case message.TypeReply:
		outcome := header(c.Record, message.HeaderOutcome)
		attrs = append(attrs, AttrOutcome.String(outcome))
		if outcome == message.OutcomeFailure {
			code, desc = codes.Error, header(c.Record, message.HeaderReason)
			attrs = append(attrs, AttrReason.String(desc))
		}
	case message.TypeTimeout:
		code, desc = codes.Error, "no reply before the deadline"
	default:
		for _, ev := range c.Events {
			if ev.Type == message.EventStepFailed {
				code, desc = codes.Error, ev.Reason
			}
		}
	}
	links := []trace.Link{txnLink}
	if rc := t.spanContext(orchestrator.HeaderTrace(c.Record)); rc.IsValid() && rc.SpanID() != sc.SpanID() {
		links = append(links, trace.Link{SpanContext: rc, Attributes: []attribute.KeyValue{AttrLink.String("answered-by")}})
	}
	t.emit(endedSpan{parent: t.spanContext(prev.Trace), sc: sc, name: st.Name, kind: trace.SpanKindProducer,
		start: time.Unix(0, st.Start), end: next.Updated, attrs: attrs, links: links, code: code, desc: desc})
}

func (t *Tracer) emitSaga(c *orchestrator.Change, txnLink trace.Link) {
	next := c.Next
	sc := t.spanContext(next.Trace)
	if !sc.IsValid() {
		return
	}
	var parent trace.SpanContext
	if id, err := trace.SpanIDFromHex(next.Trace.ParentSpanID); err == nil {
		parent = trace.NewSpanContext(trace.SpanContextConfig{TraceID: sc.TraceID(), SpanID: id, TraceFlags: sc.TraceFlags(), TraceState: sc.TraceState(), Remote: true})
	}
	attrs := []attribute.KeyValue{AttrSagaID.String(next.ID), AttrSagaType.String(next.Type), AttrOutcome.String(next.Status),
		attribute.Int64("ksaga.saga.version", next.Version)}
	code, desc := codes.Unset, ""
	if next.Reason != "" {
		attrs = append(attrs, AttrReason.String(next.Reason))
	}
	if next.Status == message.StatusFailed {
		code, desc = codes.Error, next.Reason
	}
	name := next.Trace.Name
	if name == "" {
		name = "saga " + next.Type
	}
	t.emit(endedSpan{parent: parent, sc: sc, name: name, kind: trace.SpanKindInternal,
		start: next.Created, end: next.Updated, attrs: attrs, links: []trace.Link{txnLink}, code: code, desc: desc})
}

// endedSpan is a span that ended in a committed change: emit records it
// after the fact.
type endedSpan struct {
	// parent is the span's parent; the span is a root when it is invalid.
	parent trace.SpanContext
	// sc holds the span's own trace and span ids.
	sc         trace.SpanContext
	name       string
	kind       trace.SpanKind
	start, end time.Time
	attrs      []attribute.KeyValue
	links      []trace.Link
	// code and desc are the span's status; codes.Unset leaves it unset.
	code codes.Code
	desc string
}

// emit emits s as a finished span.
func (t *Tracer) emit(s endedSpan) {
	ctx := context.Background()
	opts := []trace.SpanStartOption{trace.WithTimestamp(s.start), trace.WithSpanKind(s.kind), trace.WithAttributes(s.attrs...), trace.WithLinks(s.links...)}
	if s.parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, s.parent)
	} else {
		opts = append(opts, trace.WithNewRoot())
	}
	_, sp := t.tr.Start(withIDs(ctx, s.sc.TraceID(), s.sc.SpanID()), s.name, opts...)
	if s.code != codes.Unset {
		sp.SetStatus(s.code, s.desc)
	}
	end := s.end
	if end.Before(s.start) {
		end = s.start
	}
	sp.End(trace.WithTimestamp(end))
}

// spanContext parses a trace context; the zero SpanContext when tc is nil
// or malformed.
func (t *Tracer) spanContext(tc *orchestrator.TraceContext) trace.SpanContext {
	if tc == nil {
		return trace.SpanContext{}
	}
	carrier := propagation.MapCarrier{"traceparent": tc.Parent}
	if tc.State != "" {
		carrier["tracestate"] = tc.State
	}
	return trace.SpanContextFromContext(t.prop.Extract(context.Background(), carrier))
}

// format returns sc as a trace context; nil when sc is invalid.
func (t *Tracer) format(sc trace.SpanContext, parentSpanID, name string, start int64) *orchestrator.TraceContext {
	if !sc.IsValid() {
		return nil
	}
	carrier := propagation.MapCarrier{}
	t.prop.Inject(trace.ContextWithSpanContext(context.Background(), sc), carrier)
	return &orchestrator.TraceContext{Parent: carrier["traceparent"], State: carrier["tracestate"], ParentSpanID: parentSpanID, Name: name, Start: start}
}

// sagaType returns the saga type of an inbox record: its state's, its
// header's, or the one its topic (saga.<type>.inbox) names.
func sagaType(r *kgo.Record, st *orchestrator.State) string {
	if st != nil && st.Type != "" {
		return st.Type
	}
	if v := header(r, message.HeaderSagaType); v != "" {
		return v
	}
	return strings.TrimSuffix(strings.TrimPrefix(r.Topic, "saga."), ".inbox")
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
