package main

import (
	"context"
	"strings"
	"testing"

	"github.com/ksaga/ksaga/conn"
	"github.com/ksaga/ksaga/saga/order"
)

// allParticipants are the reference participants sagad runs.
var allParticipants = order.Participants

// TestFlagErrors checks sagad's own flags (the daemon checks its own): an
// invalid one exits 2 with one line that says what to fix, before
// connecting to anything.
func TestFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string // the whole of stderr
	}{
		{
			name: "participants on Redis Cluster",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r1:6379,r2:6379", "--participants", "payment"},
			want: `--participants: the reference participants need a single Redis node (their scripts touch several keys of one order), but --redis-addr lists 2 addresses; give --participants-redis-addr one address`,
		},
		{
			name: "demo flag with real services",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--demo-orders", "10"},
			want: `--demo-orders applies only to the embedded demo; drop it when --kafka-brokers and --redis-addr are set`,
		},
		{
			name: "orders redis in the embedded demo",
			args: []string{"--orders-redis-addr", "o:6379"},
			want: `--orders-redis-addr applies only with --kafka-brokers and --redis-addr (the embedded demo has its own single-broker Kafka and Redis)`,
		},
		{
			name: "empty orders redis",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--orders-redis-addr", " , "},
			want: `--orders-redis-addr is empty: want host:port[,host:port…]`,
		},
		{
			name: "payment limit",
			args: []string{"--payment-limit-cents", "-5"},
			want: `--payment-limit-cents: must be at least 1, got -5`,
		},
		{
			name: "demo orders from the environment",
			env:  map[string]string{"KSAGA_DEMO_ORDERS": "-1"},
			want: `KSAGA_DEMO_ORDERS: must be 0 or more, got -1`,
		},
		{
			name: "flag that is not a number",
			args: []string{"--demo-orders", "many"},
			want: `invalid value "many" for flag -demo-orders: parse error (sagad -help lists the flags)`,
		},
		{
			name: "unknown participant",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--participants", "invntory"},
			want: `--participants: unknown participant "invntory" (want coupon, inventory, payment, shipping, all or none)`,
		},
		{
			name: "require-config",
			env:  map[string]string{"KSAGA_REQUIRE_CONFIG": "true", "KSAGA_REDIS_ADDR": "r:6379"},
			want: `KSAGA_REQUIRE_CONFIG is set, so sagad does not start its embedded demo: set --kafka-brokers (or KSAGA_KAFKA_BROKERS)`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errs syncBuffer
			code := run(context.Background(), tc.args, func(k string) string { return tc.env[k] }, &out, &errs)
			if want := "sagad: " + tc.want + "\n"; code != exitUsage || errs.String() != want {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errs.String(), exitUsage, want)
			}
		})
	}
}

// TestUsage checks that -help lists sagad's flags with the daemon's, each
// with its environment twin.
func TestUsage(t *testing.T) {
	var out syncBuffer
	if code := run(context.Background(), []string{"-help"}, noEnv, &out, &syncBuffer{}); code != exitOK {
		t.Fatalf("-help: exit %d, want 0", code)
	}
	for _, f := range []string{"kafka-brokers", "orders-redis-addr", "payment-limit-cents", "demo-orders", "chaos-faults", "require-config", "participants"} {
		if !strings.Contains(out.String(), "--"+f) || !strings.Contains(out.String(), "$"+conn.EnvName(f)) {
			t.Errorf("-help does not list --%s [$%s]:\n%s", f, conn.EnvName(f), out.String())
		}
	}
	if !strings.HasPrefix(out.String(), "sagad runs the ksaga order saga") {
		t.Errorf("-help does not start with what sagad runs:\n%s", out.String())
	}
}
