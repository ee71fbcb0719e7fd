package main

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/internal/kfaketest"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestRunTopicMismatch runs sagad against a Kafka whose state topic is not
// compacted: it must exit 1 at once with the one message, not retry.
func TestRunTopicMismatch(t *testing.T) {
	c, adm := kfaketest.NewAdmin(t, 1)
	state := message.State(order.Name)
	if _, err := adm.CreateTopic(context.Background(), 6, 1, nil, state); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code, _, errs := runSagad(ctx, t, "--kafka-brokers", c.ListenAddrs()[0], "--redis-addr", redistest.Start(t),
		"--replication-factor", "1", "--metrics-addr", "", "--log-format", "json", "--log-level", "warn")
	want := `"level":"ERROR","msg":"topic saga.order.state has cleanup.policy=delete, want compact: `
	if code != exitError || !strings.Contains(errs, want) || strings.Count(errs, "\n") != 1 {
		t.Errorf("exit %d, stderr %q; want %d and one line starting %q", code, errs, exitError, want)
	}
}
