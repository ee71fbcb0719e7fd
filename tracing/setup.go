package tracing

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/go-logr/logr"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// NewProvider returns an SDK TracerProvider with opts and IDGenerator (which
// the saga and step spans need). Tests pass an in-memory exporter:
//
//	exp := tracetest.NewInMemoryExporter()
//	tp := tracing.NewProvider(sdktrace.WithSyncer(exp))
func NewProvider(opts ...sdktrace.TracerProviderOption) *sdktrace.TracerProvider {
	return sdktrace.NewTracerProvider(append(opts, sdktrace.WithIDGenerator(IDGenerator()))...)
}

// FromEnv returns the Tracer of a program configured by the standard
// OpenTelemetry environment variables (see ProviderFromEnv), and the
// function that flushes its spans and stops the exporter, to call before
// the program exits. When they do not turn tracing on, the Tracer exports
// nothing but still carries trace contexts through (see New), and shutdown
// does nothing.
func FromEnv(ctx context.Context, getenv func(string) string, service, version string) (_ *Tracer, shutdown func(context.Context) error, _ error) {
	tp, err := ProviderFromEnv(ctx, getenv, service, version)
	if err != nil {
		return nil, nil, err
	}
	if tp == nil {
		t, err := New(nil)
		return t, func(context.Context) error { return nil }, err
	}
	t, err := New(tp)
	if err != nil {
		_ = tp.Shutdown(ctx)
		return nil, nil, err
	}
	return t, tp.Shutdown, nil
}

// ProviderFromEnv returns a TracerProvider that exports spans over OTLP as the
// standard OpenTelemetry environment variables say, or nil when they do not
// turn tracing on. Tracing is on when OTEL_TRACES_EXPORTER is "otlp", or
// when it is unset and OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set; OTEL_SDK_DISABLED=true and
// OTEL_TRACES_EXPORTER=none turn it off. The protocol is
// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL:
// "http/protobuf" (the default) or "grpc". The exporters read the other
// OTEL_EXPORTER_OTLP_* variables (endpoint, headers, timeout, TLS,
// compression), the SDK reads OTEL_TRACES_SAMPLER(_ARG) and OTEL_BSP_*, and
// the resource takes OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, with
// service (when OTEL_SERVICE_NAME is unset) and version as defaults.
//
// getenv reads the variables that decide whether tracing is on (os.Getenv in
// production); the exporters read the process environment. FromEnv fails
// on an exporter or protocol it does not know. Call Shutdown on the
// provider before exiting: it flushes the spans not yet exported.
func ProviderFromEnv(ctx context.Context, getenv func(string) string, service, version string) (*sdktrace.TracerProvider, error) {
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return nil, nil
	}
	switch exp := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); exp {
	case "none":
		return nil, nil
	case "":
		if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return nil, nil
		}
	case "otlp":
	default:
		return nil, fmt.Errorf("tracing: OTEL_TRACES_EXPORTER %q is not supported: use otlp or none", exp)
	}
	protocol := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var exporter sdktrace.SpanExporter
	var err error
	switch protocol {
	case "", "http/protobuf":
		exporter, err = otlptracehttp.New(ctx)
	case "grpc":
		exporter, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("tracing: OTLP protocol %q is not supported: use http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	attrs := []attribute.KeyValue{attribute.String("service.version", version)}
	if getenv("OTEL_SERVICE_NAME") == "" {
		attrs = append(attrs, attribute.String("service.name", service))
	}
	// The attributes given here come first, so the environment's win.
	res, err := resource.New(ctx, resource.WithAttributes(attrs...), resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	return NewProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res)), nil
}

// LogHandler returns a slog.Handler that adds the trace_id and span_id of
// the span in a log record's context (as the engine's handling of a record
// and a saga's local steps have it) to what h writes. Log with the
// *Context methods (InfoContext, …) to pass the context.
func LogHandler(h slog.Handler) slog.Handler { return logHandler{h} }

type logHandler struct{ h slog.Handler }

func (l logHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return l.h.Enabled(ctx, level)
}

func (l logHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return l.h.Handle(ctx, r)
}

func (l logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return logHandler{l.h.WithAttrs(attrs)}
}
func (l logHandler) WithGroup(name string) slog.Handler { return logHandler{l.h.WithGroup(name)} }

// LogTo sends OpenTelemetry's own errors (a span export that failed) and
// its internal log lines to l, at warn with component=otel, instead of Go's
// standard logger: under --log-format json every line stays JSON. Like
// otel.SetErrorHandler, which it calls, it is process-wide.
func LogTo(l *slog.Logger) {
	l = l.With("component", "otel")
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		l.Warn("opentelemetry", "err", err)
	}))
	otel.SetLogger(logr.FromSlogHandler(atWarn{l.Handler()}))
}

// atWarn raises otel's internal log lines (logr's info level, V(0)) to
// warn: the SDK logs only what goes wrong at that level.
type atWarn struct{ h slog.Handler }

func (a atWarn) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= slog.LevelInfo && a.h.Enabled(ctx, max(level, slog.LevelWarn))
}

func (a atWarn) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelInfo {
		return nil // logr V(1) and above: debug
	}
	r.Level = max(r.Level, slog.LevelWarn)
	return a.h.Handle(ctx, r)
}

func (a atWarn) WithAttrs(attrs []slog.Attr) slog.Handler { return atWarn{a.h.WithAttrs(attrs)} }
func (a atWarn) WithGroup(name string) slog.Handler       { return atWarn{a.h.WithGroup(name)} }
