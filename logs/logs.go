// Package logs connects the logs of ksaga's dependencies to log/slog.
//
//	log := slog.New(tracing.LogHandler(slog.NewJSONHandler(os.Stderr, nil)))
//	cl, err := kgo.NewClient(…, kgo.WithLogger(logs.Kafka(log)))
//
// franz-go's client logs through kgo.Logger; Kafka bridges it with
// franz-go's kslog plugin, at warn and above, so that every line of a
// process goes through the same handler (JSON under --log-format json).
package logs

import (
	"context"
	"log/slog"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"
)

// Kafka returns a kgo.Logger that writes a Kafka client's log lines at warn
// and above (connection failures, group errors, fencing) to l, with the
// attribute component=kafka, all at warn: the client returns its errors to
// its caller too, and the caller decides what is fatal and logs that once
// as an error. Its lower levels are very chatty: a client logs at info on
// every rebalance and metadata change. Pass it with kgo.WithLogger.
func Kafka(l *slog.Logger) kgo.Logger {
	return kslog.New(slog.New(atLeast{capped{l.Handler()}, slog.LevelWarn}).With("component", "kafka"))
}

// capped writes error records at warn.
type capped struct{ slog.Handler }

func (c capped) Handle(ctx context.Context, r slog.Record) error {
	if r.Level > slog.LevelWarn {
		r.Level = slog.LevelWarn
	}
	return c.Handler.Handle(ctx, r)
}

func (c capped) WithAttrs(attrs []slog.Attr) slog.Handler { return capped{c.Handler.WithAttrs(attrs)} }
func (c capped) WithGroup(name string) slog.Handler       { return capped{c.Handler.WithGroup(name)} }

// atLeast drops records below min.
type atLeast struct {
	h   slog.Handler
	min slog.Level
}

func (a atLeast) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= a.min && a.h.Enabled(ctx, level)
}

func (a atLeast) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < a.min {
		return nil
	}
	return a.h.Handle(ctx, r)
}

func (a atLeast) WithAttrs(attrs []slog.Attr) slog.Handler {
	return atLeast{a.h.WithAttrs(attrs), a.min}
}
func (a atLeast) WithGroup(name string) slog.Handler { return atLeast{a.h.WithGroup(name), a.min} }
