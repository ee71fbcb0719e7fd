package main

import (
	"bytes"
	"context"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	c, err := parseFlags(nil)
	if err != nil {
		t.Fatalf("parseFlags(nil): %v", err)
	}
	if c.sagas != 20_000 || c.replicationFactor != 1 || c.partitions != 6 || c.kafkaBrokers != nil || c.redisAddr != "" {
		t.Errorf("defaults: got %+v, want 20000 sagas, replication factor 1, 6 partitions, in-process Kafka and Redis", c)
	}
	c, err = parseFlags([]string{"--kafka-brokers", "k1:9092, k2:9092", "--redis-addr", "r:6379", "--sagas", "0", "--restart-sagas", "100000"})
	if err != nil {
		t.Fatalf("parseFlags: %v", err)
	}
	if len(c.kafkaBrokers) != 2 || c.kafkaBrokers[1] != "k2:9092" || c.redisAddr != "r:6379" || c.replicationFactor != 3 {
		t.Errorf("external services: got brokers %q, redis %q, replication factor %d; want 2 brokers, r:6379, 3",
			c.kafkaBrokers, c.redisAddr, c.replicationFactor)
	}
}

func TestParseFlagsErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // the whole error message
	}{
		{[]string{"--sagas", "-1"}, "--sagas: must be 0 or more, got -1"},
		{[]string{"--sagas", "5"}, "--sagas 5 is too few for a 10% failure scenario: want 0 (skip the scenarios) or at least 10"},
		{[]string{"--sagas", "0"}, "nothing to do: --sagas 0 needs --rss-sagas or --restart-sagas"},
		{[]string{"--rate", "-3"}, "--rate: must be positive (or 0 for half the best full-speed rate), got -3"},
		{[]string{"--sagas", "0", "--rss-sagas", "10", "--rate", "100"}, "--rate applies to the scenarios, which --sagas 0 skips"},
		{[]string{"--kafka-brokers", ""}, "--kafka-brokers is empty: want host:port[,host:port…], or drop it to use an in-process kfake"},
		{[]string{"--kafka-brokers", "kafka"}, `address "kafka": want host:port (address kafka: missing port in address)`},
		{[]string{"--redis-addr", "a:1,b:2"}, `--redis-addr "a:1,b:2": want one host:port (the reference participants need a single Redis node)`},
		{[]string{"--replication-factor", "3"}, "--replication-factor 3 needs --kafka-brokers: the in-process kfake has one broker"},
		{[]string{"--partitions", "0"}, "--partitions: must be at least 1, got 0"},
		{[]string{"--max-poll-records", "0"}, "--max-poll-records: must be at least 1, got 0"},
		{[]string{"--rss-in-flight", "0"}, "--rss-in-flight: must be at least 1, got 0"},
		{[]string{"--restart-rate", "0"}, "--restart-rate: must be positive, got 0"},
		{[]string{"--sagas", "0", "--rss-sagas", "10", "--profile-dir", "p"}, "--profile-dir profiles the scenarios, which --sagas 0 skips"},
		{[]string{"--stall-timeout", "10ms"}, "--stall-timeout 10ms is too short: want at least 1s"},
		{[]string{"--sagas", "many"}, `invalid value "many" for flag -sagas: parse error (sagabench -help lists the flags)`},
		{[]string{"--bogus"}, "flag provided but not defined: -bogus (sagabench -help lists the flags)"},
		{[]string{"now"}, `unexpected argument "now": sagabench takes flags only (sagabench -help lists them)`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, err := parseFlags(tc.args)
			if err == nil || err.Error() != tc.want {
				t.Errorf("parseFlags(%q): got error %v, want %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestRunUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"--sagas", "3"}, &out, &errOut); code != exitUsage {
		t.Errorf("bad flag: got exit %d, want %d", code, exitUsage)
	}
	if !strings.HasPrefix(errOut.String(), "sagabench: --sagas 3 is too few") {
		t.Errorf("bad flag: got stderr %q, want the reason", errOut.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"-help"}, &out, &errOut); code != exitOK || !strings.Contains(out.String(), "-rss-sagas") {
		t.Errorf("-help: got exit %d and %q, want %d and the flags", code, out.String(), exitOK)
	}
}

func TestMetricsParse(t *testing.T) {
	ms, err := parseMetrics(strings.NewReader(`# HELP ksaga_transactions_total Engine transactions.
# TYPE ksaga_transactions_total counter
ksaga_transactions_total{result="aborted",saga="order"} 2
ksaga_transactions_total{result="committed",saga="order"} 1.5e+06
ksaga_kafka_produce_bytes_total{client="engine",node_id="0",topic="saga.order.events"} 300
ksaga_kafka_produce_bytes_total{client="engine",node_id="0",topic="saga.order.state"} 700
ksaga_kafka_produce_bytes_total{client="inventory",node_id="0",topic="saga.order.inbox"} 50
process_cpu_seconds_total 12.5
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := ms.sum("ksaga_transactions_total", "result", "committed"); got != 1.5e6 {
		t.Errorf("committed: got %v, want 1.5e6", got)
	}
	if got := ms.sum("process_cpu_seconds_total"); got != 12.5 {
		t.Errorf("cpu: got %v, want 12.5", got)
	}
	by := ms.byLabel("ksaga_kafka_produce_bytes_total", "topic", "client", "engine")
	if len(by) != 2 || by["saga.order.state"] != 700 {
		t.Errorf("engine bytes by topic: got %v, want events 300, state 700", by)
	}
}

func TestValueLen(t *testing.T) {
	for _, topic := range []string{"inventory.commands", "saga.order.events", "saga.order.state"} {
		mt := &mixTopic{topic: topic, recordBytes: 400, headers: headersLike(topic)}
		key := []byte("b1f2e3d4-1-12345")
		v := mt.valueLen(len(key))
		size := 1 + 1 + 2 + varintLen(len(key)) + len(key) + varintLen(v) + v + varintLen(len(mt.headers))
		for _, h := range mt.headers {
			size += varintLen(len(h.Key)) + len(h.Key) + varintLen(len(h.Value)) + len(h.Value)
		}
		size += varintLen(size)
		if size < 400 || size > 402 {
			t.Errorf("%s: a %d-byte value makes a %d-byte record, want 400", topic, v, size)
		}
	}
}

// TestBench runs a small benchmark end to end: kfake, a redis-server, sagad
// processes, the four scenarios, the bare loop, and the restart and memory
// runs.
func TestBench(t *testing.T) {
	if testing.Short() {
		t.Skip("builds sagad and runs processes")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not installed (./scripts/test-deps.sh)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, log bytes.Buffer
	code := run(ctx, []string{"--sagas", "100", "--rss-sagas", "200", "--restart-sagas", "100", "--restart-rate", "50", "--stall-timeout", "60s"}, &out, &log)
	if code != exitOK {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), log.String())
	}
	for _, want := range []string{"bare loop", "full speed, 0% failures", "full speed, 10% failures", "RSS after 200 sagas", "Restart after SIGKILL", "Where a saga's time goes"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "WARNING") {
		t.Errorf("output has warnings:\n%s", out.String())
	}
}

func TestHopsSplit(t *testing.T) {
	at := func(ms int) time.Time { return time.UnixMilli(int64(1000 + ms)) }
	var h hops
	// A start, the engine's event and command 20 ms later, a reply 5 ms
	// after the command, a duplicate of it, the terminal event 18 ms after
	// the first reply; listed out of order, as topics are read.
	h.add([]point{
		{at(25), false}, {at(20), true}, {at(0), false}, {at(43), true}, {at(20), true}, {at(30), false},
	})
	// A saga seen from the middle only: left out.
	h.add([]point{{at(5), true}, {at(9), false}})
	if h.sagas != 1 || h.total != 43*time.Millisecond {
		t.Fatalf("got %d sagas, %v in all; want 1 saga of 43ms", h.sagas, h.total)
	}
	if want := []time.Duration{20 * time.Millisecond, 18 * time.Millisecond}; !slices.Equal(h.engine, want) {
		t.Errorf("engine hops: got %v, want %v", h.engine, want)
	}
	if want := []time.Duration{5 * time.Millisecond}; !slices.Equal(h.part, want) {
		t.Errorf("participant hops: got %v, want %v", h.part, want)
	}
	// Records of the same millisecond are taken in the chain's order: a
	// saga starts with an inbox record, the engine answers an inbox
	// record, a reply follows the engine's record.
	for _, tc := range []struct {
		pts          []point
		engine, part []time.Duration
	}{
		{[]point{{at(0), true}, {at(0), false}, {at(5), false}, {at(8), true}}, []time.Duration{0, 3 * time.Millisecond}, []time.Duration{5 * time.Millisecond}},
		{[]point{{at(0), false}, {at(3), false}, {at(3), true}, {at(9), true}}, []time.Duration{3 * time.Millisecond, 6 * time.Millisecond}, []time.Duration{0}},
	} {
		var h hops
		h.add(tc.pts)
		if !slices.Equal(h.engine, tc.engine) || !slices.Equal(h.part, tc.part) {
			t.Errorf("%v: got engine hops %v and participant hops %v; want %v and %v", tc.pts, h.engine, h.part, tc.engine, tc.part)
		}
	}
}
