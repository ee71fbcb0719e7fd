package logs_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/logs"
)

func TestKafka(t *testing.T) {
	var buf bytes.Buffer
	l := logs.Kafka(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if got := l.Level(); got != kgo.LogLevelWarn {
		t.Errorf("level %v, want warn", got)
	}
	l.Log(kgo.LogLevelInfo, "assigning partitions", "group", "g")
	l.Log(kgo.LogLevelWarn, "unable to open connection to broker", "addr", "127.0.0.1:1", "err", "refused")
	l.Log(kgo.LogLevelError, "fenced", "err", "producer fenced")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2 (warn and error):\n%s", len(lines), buf.String())
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatalf("line %q is not JSON: %v", lines[0], err)
	}
	if first["level"] != "WARN" || first["component"] != "kafka" || first["addr"] != "127.0.0.1:1" {
		t.Errorf("line %s: want level WARN, component kafka and the client's attributes", lines[0])
	}
	quiet := logs.Kafka(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError})))
	if got := quiet.Level(); got != kgo.LogLevelError {
		t.Errorf("level of an error logger %v, want error", got)
	}
}
