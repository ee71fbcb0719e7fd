package main

import (
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skipf("no hostname: %v", err)
	}
	embedded := config{
		participants: allParticipants, txnID: host, group: "ksaga-order", partitions: 6,
		replicationFactor: 1, metricsAddr: ":9090", logLevel: slog.LevelInfo, paymentLimit: 100000,
		maxPoll: 1000, dataDir: filepath.Join(os.TempDir(), "ksaga-demo"), demoOrders: 2000,
		sessionTimeout: 45 * time.Second,
	}
	real := config{
		kafkaBrokers: []string{"k1:9092", "k2:9092"}, redisAddrs: []string{"r:6379"},
		txnID: host, group: "ksaga-order", partitions: 6, replicationFactor: 3, metricsAddr: ":9090",
		logLevel: slog.LevelInfo, paymentLimit: 100000, maxPoll: 1000, sessionTimeout: 45 * time.Second,
	}
	realArgs := []string{"--kafka-brokers", "k1:9092, k2:9092", "--redis-addr", "r:6379"}
	with := func(c config, f func(*config)) config { f(&c); return c }

	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want config
	}{
		{name: "no flags is the embedded demo", want: embedded},
		{name: "real services", args: realArgs, want: real},
		{
			name: "environment twins",
			env: map[string]string{
				"KSAGA_KAFKA_BROKERS": "k1:9092,k2:9092", "KSAGA_REDIS_ADDR": "r:6379",
				"KSAGA_PARTICIPANTS": "payment,inventory", "KSAGA_PARTITIONS": "12", "KSAGA_LOG_LEVEL": "debug",
				"KSAGA_METRICS_ADDR": "127.0.0.1:9100", "KSAGA_TRANSACTIONAL_ID": "sagad-0",
			},
			want: with(real, func(c *config) {
				c.participants = []string{"inventory", "payment"}
				c.partitions = 12
				c.logLevel, c.logLevelSet = slog.LevelDebug, true
				c.metricsAddr = "127.0.0.1:9100"
				c.txnID = "sagad-0"
			}),
		},
		{
			name: "a flag wins over its variable",
			args: append(realArgs, "--partitions", "3", "--group", "g"),
			env:  map[string]string{"KSAGA_PARTITIONS": "12", "KSAGA_GROUP": "other", "KSAGA_MAX_POLL_RECORDS": "50"},
			want: with(real, func(c *config) { c.partitions, c.group, c.maxPoll = 3, "g", 50 }),
		},
		{
			name: "all participants, orders redis, replication factor",
			args: append(realArgs, "--participants", "all", "--orders-redis-addr", "o1:6379", "--replication-factor", "1"),
			want: with(real, func(c *config) {
				c.participants = allParticipants
				c.ordersRedisAddrs = []string{"o1:6379"}
				c.replicationFactor = 1
			}),
		},
		{
			name: "engine on Redis Cluster, participants on one node",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r1:6379,r2:6379", "--orders-redis-addr", "o:6379", "--participants-redis-addr", "p:6379", "--participants", "all"},
			want: with(real, func(c *config) {
				c.kafkaBrokers = []string{"k:9092"}
				c.redisAddrs = []string{"r1:6379", "r2:6379"}
				c.ordersRedisAddrs = []string{"o:6379"}
				c.participantsRedisAddrs = []string{"p:6379"}
				c.participants = allParticipants
			}),
		},
		{
			name: "none",
			args: append(realArgs, "--participants", "none"),
			want: real,
		},
		{
			name: "participants in a fixed order, once each",
			args: append(realArgs, "--participants", "shipping,Inventory,shipping"),
			want: with(real, func(c *config) { c.participants = []string{"inventory", "shipping"} }),
		},
		{
			name: "embedded options",
			args: []string{"--demo-orders", "60", "--data-dir", "/d", "--serve", "--metrics-addr", "", "--log-format", "text", "--payment-limit-cents", "500"},
			want: with(embedded, func(c *config) {
				c.demoOrders, c.dataDir, c.serve, c.metricsAddr, c.logFormat, c.paymentLimit = 60, "/d", true, "", "text", 500
			}),
		},
		{
			name: "boolean variable",
			env:  map[string]string{"KSAGA_SERVE": "true"},
			want: with(embedded, func(c *config) { c.serve = true }),
		},
		{
			name: "static participants, dead-letter retention, chaos faults",
			args: append(realArgs, "--participants", "all", "--static-membership", "--session-timeout", "6s", "--chaos-faults"),
			env:  map[string]string{"KSAGA_DLT_RETENTION": "720h"},
			want: with(real, func(c *config) {
				c.participants = allParticipants
				c.static, c.sessionTimeout, c.chaosFaults, c.dltRetention = true, 6*time.Second, true, 720*time.Hour
			}),
		},
		{
			name: "dead-letter retention 0 keeps them",
			args: []string{"--dlt-retention", "0"},
			env:  map[string]string{"KSAGA_CHAOS_FAULTS": "true"},
			want: with(embedded, func(c *config) { c.chaosFaults = true }),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseConfig(tc.args, mapEnv(tc.env))
			if err != nil {
				t.Fatalf("parseConfig(%q): %v", tc.args, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("parseConfig(%q):\n got %+v\nwant %+v", tc.args, got, tc.want)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string // the whole error message
	}{
		{
			name: "unknown participant",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--participants", "invntory"},
			want: `--participants: unknown participant "invntory" (want inventory, payment, shipping, all or none)`,
		},
		{
			name: "unknown participant from the environment",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379"},
			env:  map[string]string{"KSAGA_PARTICIPANTS": "payment,bank"},
			want: `KSAGA_PARTICIPANTS: unknown participant "bank" (want inventory, payment, shipping, all or none)`,
		},
		{
			name: "all combined with a name",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--participants", "all,payment"},
			want: `--participants: "all" cannot be combined with other names (want inventory, payment, shipping, all or none)`,
		},
		{
			name: "no engine and no participants",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--engine=false"},
			want: `--engine leaves nothing to run: name the participants to run with --participants`,
		},
		{
			name: "no engine in the embedded demo",
			args: []string{"--engine=false"},
			want: `--engine applies only with --kafka-brokers and --redis-addr (the embedded demo runs the engine)`,
		},
		{
			name: "embedded demo without participants",
			args: []string{"--participants", "none"},
			want: `--participants: the embedded demo runs all participants; choose participants only with --kafka-brokers and --redis-addr`,
		},
		{
			name: "participants on Redis Cluster",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r1:6379,r2:6379", "--participants", "payment"},
			want: `--participants: the reference participants need a single Redis node (their scripts touch several keys of one order), but --redis-addr lists 2 addresses; give --participants-redis-addr one address`,
		},
		{
			name: "no partitions",
			args: []string{"--partitions", "0"},
			want: `--partitions: must be at least 1, got 0`,
		},
		{
			name: "brokers without redis",
			args: []string{"--kafka-brokers", "k:9092"},
			want: `--kafka-brokers is set but --redis-addr is not: set both to use real Kafka and Redis, or neither for the embedded demo`,
		},
		{
			name: "redis without brokers, from the environment",
			env:  map[string]string{"KSAGA_REDIS_ADDR": "r:6379"},
			want: `KSAGA_REDIS_ADDR is set but --kafka-brokers is not: set both to use real Kafka and Redis, or neither for the embedded demo`,
		},
		{
			name: "empty broker list",
			args: []string{"--kafka-brokers", " , ", "--redis-addr", "r:6379"},
			want: `--kafka-brokers is empty: want host:port[,host:port…]`,
		},
		{
			name: "bad log level",
			args: []string{"--log-level", "verbose"},
			want: `--log-level: unknown level "verbose" (want debug, info, warn or error)`,
		},
		{
			name: "bad log format",
			env:  map[string]string{"KSAGA_LOG_FORMAT": "yaml"},
			want: `KSAGA_LOG_FORMAT: unknown format "yaml" (want json or text)`,
		},
		{
			name: "variable that is not a number",
			env:  map[string]string{"KSAGA_PARTITIONS": "six"},
			want: `KSAGA_PARTITIONS="six": --partitions wants an integer`,
		},
		{
			name: "boolean variable that is not a boolean",
			env:  map[string]string{"KSAGA_SERVE": "yes"},
			want: `KSAGA_SERVE="yes": --serve wants true or false`,
		},
		{
			name: "flag that is not a number",
			args: []string{"--demo-orders", "many"},
			want: `invalid value "many" for flag -demo-orders: parse error (sagad -help lists the flags)`,
		},
		{
			name: "unknown flag",
			args: []string{"--brokers", "k:9092"},
			want: `flag provided but not defined: -brokers (sagad -help lists the flags)`,
		},
		{
			name: "positional argument",
			args: []string{"demo"},
			want: `unexpected argument "demo": sagad takes flags only (sagad -help lists them)`,
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
			name: "pprof without an HTTP server",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--metrics-addr", "", "--pprof"},
			want: `--pprof needs an HTTP server: set --metrics-addr`,
		},
		{
			name: "replication factor out of range",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--replication-factor", "0"},
			want: `--replication-factor: must be between 1 and 32767, got 0`,
		},
		{
			name: "metrics address without a port",
			args: []string{"--metrics-addr", "9090"},
			want: `--metrics-addr "9090": not a host:port address (use host:port or :port, or "" to disable)`,
		},
		{
			name: "empty transactional id",
			args: []string{"--transactional-id", " "},
			want: `--transactional-id is empty: want a stable id per instance, such as the pod name`,
		},
		{
			name: "negative dead-letter retention",
			args: []string{"--dlt-retention", "-1h"},
			want: `--dlt-retention -1h0m0s is negative: want a duration, or 0 to keep dead letters until they are deleted`,
		},
		{
			name: "dead-letter retention under a millisecond",
			env:  map[string]string{"KSAGA_DLT_RETENTION": "10us"},
			want: `KSAGA_DLT_RETENTION 10µs is under Kafka's unit of 1ms: want a duration such as 720h, or 0 to keep dead letters until they are deleted`,
		},
		{
			name: "duration variable that is not a duration",
			env:  map[string]string{"KSAGA_DLT_RETENTION": "forever"},
			want: `KSAGA_DLT_RETENTION="forever": --dlt-retention wants a duration such as 30s or 720h`,
		},
		{
			name: "payment limit",
			args: []string{"--payment-limit-cents", "-5"},
			want: `--payment-limit-cents: must be at least 1, got -5`,
		},
		{
			name: "max poll records",
			args: []string{"--max-poll-records", "0"},
			want: `--max-poll-records: must be at least 1, got 0`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(tc.args, mapEnv(tc.env))
			if err == nil {
				t.Fatalf("parseConfig(%q): got nil error, want %q", tc.args, tc.want)
			}
			if err.Error() != tc.want {
				t.Errorf("parseConfig(%q):\n got %q\nwant %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestParseConfigHelp(t *testing.T) {
	for _, arg := range []string{"-h", "-help", "--help"} {
		if _, err := parseConfig([]string{arg}, mapEnv(nil)); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("parseConfig(%s): got %v, want flag.ErrHelp", arg, err)
		}
	}
}

// TestUsageListsEveryVariable checks that -help documents each flag and its
// environment twin.
func TestUsageListsEveryVariable(t *testing.T) {
	var b strings.Builder
	usage(&b)
	var v flagValues
	newFlagSet(&v).VisitAll(func(f *flag.Flag) {
		if !strings.Contains(b.String(), "--"+f.Name) || !strings.Contains(b.String(), "$"+envName(f.Name)) {
			t.Errorf("usage does not list --%s [$%s]", f.Name, envName(f.Name))
		}
	})
}

func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}
