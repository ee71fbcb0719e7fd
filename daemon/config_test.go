package daemon

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/conn"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/participant"
)

func TestParseConfig(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skipf("no hostname: %v", err)
	}
	embedded := Config{
		Participants: allParticipants, TransactionalID: host, Partitions: 6, Engine: true,
		ReplicationFactor: 1, MetricsAddr: ":9090", LogLevel: slog.LevelInfo,
		MaxPollRecords: 1000, DataDir: filepath.Join(os.TempDir(), "ksaga-sagad"),
		SessionTimeout: 45 * time.Second, Retention: orchestrator.DefaultRetention, History: orchestrator.DefaultHistory,
	}
	real := Config{
		KafkaBrokers: []string{"k1:9092", "k2:9092"}, RedisAddrs: []string{"r:6379"}, Engine: true,
		TransactionalID: host, Partitions: 6, ReplicationFactor: 3, MetricsAddr: ":9090",
		LogLevel: slog.LevelInfo, MaxPollRecords: 1000, SessionTimeout: 45 * time.Second,
		Retention: orchestrator.DefaultRetention, History: orchestrator.DefaultHistory,
	}
	realArgs := []string{"--kafka-brokers", "k1:9092, k2:9092", "--redis-addr", "r:6379"}
	with := func(c Config, f func(*Config)) Config { f(&c); return c }

	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want Config
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
			want: with(real, func(c *Config) {
				c.Participants = []string{"inventory", "payment"}
				c.Partitions = 12
				c.LogLevel, c.logLevelSet = slog.LevelDebug, true
				c.MetricsAddr = "127.0.0.1:9100"
				c.TransactionalID = "sagad-0"
			}),
		},
		{
			name: "a flag wins over its variable",
			args: append(realArgs, "--partitions", "3", "--group", "g"),
			env:  map[string]string{"KSAGA_PARTITIONS": "12", "KSAGA_GROUP": "other", "KSAGA_MAX_POLL_RECORDS": "50"},
			want: with(real, func(c *Config) { c.Partitions, c.Group, c.MaxPollRecords = 3, "g", 50 }),
		},
		{
			name: "a transaction interval, from its variable",
			args: realArgs,
			env:  map[string]string{"KSAGA_TXN_INTERVAL": "5ms"},
			want: with(real, func(c *Config) { c.TxnInterval = 5 * time.Millisecond }),
		},
		{
			name: "a retention and a Redis timeout, from their variables",
			args: realArgs,
			env:  map[string]string{"KSAGA_RETENTION": "24h", "KSAGA_REDIS_TIMEOUT": "2s"},
			want: with(real, func(c *Config) { c.Retention, c.RedisTimeout = 24*time.Hour, 2*time.Second }),
		},
		{
			name: "all participants, replication factor",
			args: append(realArgs, "--participants", "all", "--replication-factor", "1"),
			want: with(real, func(c *Config) {
				c.Participants = allParticipants
				c.ReplicationFactor = 1
			}),
		},
		{
			name: "engine on Redis Cluster, participants on one node",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r1:6379,r2:6379", "--participants-redis-addr", "p:6379", "--participants", "all"},
			want: with(real, func(c *Config) {
				c.KafkaBrokers = []string{"k:9092"}
				c.RedisAddrs = []string{"r1:6379", "r2:6379"}
				c.ParticipantsRedisAddrs = []string{"p:6379"}
				c.Participants = allParticipants
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
			want: with(real, func(c *Config) { c.Participants = []string{"inventory", "shipping"} }),
		},
		{
			name: "embedded options",
			args: []string{"--data-dir", "/d", "--serve", "--metrics-addr", "", "--log-format", "text"},
			want: with(embedded, func(c *Config) {
				c.DataDir, c.Serve, c.MetricsAddr, c.LogFormat = "/d", true, "", "text"
			}),
		},
		{
			name: "boolean variable",
			env:  map[string]string{"KSAGA_SERVE": "true"},
			want: with(embedded, func(c *Config) { c.Serve = true }),
		},
		{
			name: "static participants, dead-letter retention",
			args: append(realArgs, "--participants", "all", "--static-membership", "--session-timeout", "6s"),
			env:  map[string]string{"KSAGA_DLT_RETENTION": "720h"},
			want: with(real, func(c *Config) {
				c.Participants = allParticipants
				c.StaticMembership, c.SessionTimeout, c.DLTRetention = true, 6*time.Second, 720*time.Hour
			}),
		},
		{
			name: "dead-letter retention 0 keeps them",
			args: []string{"--dlt-retention", "0"},
			want: embedded,
		},
		{
			name: "require-config with both set",
			args: realArgs,
			env:  map[string]string{"KSAGA_REQUIRE_CONFIG": "true"},
			want: with(real, func(c *Config) { c.RequireConfig = true }),
		},
		{
			name: "no engine, participants only",
			args: append(realArgs, "--engine=false", "--participants", "inventory"),
			want: with(real, func(c *Config) { c.Engine, c.Participants = false, []string{"inventory"} }),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := testOptions().parseConfig(tc.args, mapEnv(tc.env))
			if err != nil {
				t.Fatalf("parseConfig(%q): %v", tc.args, err)
			}
			got.given = nil
			if !reflect.DeepEqual(*got, tc.want) {
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
			name: "flag that is not a number",
			args: []string{"--partitions", "many"},
			want: `invalid value "many" for flag -partitions: parse error (sagad -help lists the flags)`,
		},
		{
			name: "require-config without anything",
			env:  map[string]string{"KSAGA_REQUIRE_CONFIG": "true"},
			want: `KSAGA_REQUIRE_CONFIG is set, so sagad does not start its embedded demo: set --kafka-brokers (or KSAGA_KAFKA_BROKERS) and --redis-addr (or KSAGA_REDIS_ADDR)`,
		},
		{
			name: "require-config without redis",
			args: []string{"--require-config", "--kafka-brokers", "k:9092"},
			want: `--require-config is set, so sagad does not start its embedded demo: set --redis-addr (or KSAGA_REDIS_ADDR)`,
		},
		{
			name: "a user's check",
			args: []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379", "--engine=false", "--participants", "payment"},
			want: `--participants: payment runs with the engine only`,
		},
		{
			name: "max poll records",
			args: []string{"--max-poll-records", "0"},
			want: `--max-poll-records: must be at least 1, got 0`,
		},
		{
			name: "negative transaction interval",
			args: []string{"--txn-interval", "-1ms"},
			want: `--txn-interval -1ms: want 0 (none) up to 1s, such as 5ms`,
		},
		{
			name: "negative retention",
			args: []string{"--retention", "-1h"},
			want: `--retention -1h0m0s is negative: want a duration such as 168h, or 0 to keep ended sagas forever`,
		},
		{
			name: "negative redis timeout",
			args: []string{"--redis-timeout", "-1s"},
			want: `--redis-timeout -1s is negative: want a duration such as 5s, shorter than the transaction timeout (10s)`,
		},
		{
			name: "transaction interval too long",
			args: []string{"--txn-interval", "2s"},
			want: `--txn-interval 2s: want 0 (none) up to 1s, such as 5ms`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := testOptions().parseConfig(tc.args, mapEnv(tc.env))
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
		if _, err := testOptions().parseConfig([]string{arg}, mapEnv(nil)); !errors.Is(err, flag.ErrHelp) {
			t.Errorf("parseConfig(%s): got %v, want flag.ErrHelp", arg, err)
		}
	}
}

// TestDefaultDataDir checks that each program gets a data directory of its
// own by default, named after it.
func TestDefaultDataDir(t *testing.T) {
	exe := strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe") // daemon.test
	for _, tc := range []struct {
		name, program, want string
	}{
		{"sagad", "sagad", "ksaga-sagad"},
		{"tripd", "tripd", "ksaga-tripd"},
		{"no Name", "", "ksaga-" + exe},
		{"Run's default name", "ksaga", "ksaga-" + exe},
		{"a name that is not a file name", "my app/v2", "ksaga-my_app_v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := testOptions()
			o.name = tc.program
			c, err := o.parseConfig(nil, mapEnv(nil))
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(os.TempDir(), tc.want); c.DataDir != want {
				t.Errorf("got --data-dir %s, want %s", c.DataDir, want)
			}
			var b strings.Builder
			o.usage(&b)
			if want := "default $TMPDIR/" + tc.want + ")"; !strings.Contains(b.String(), want) {
				t.Errorf("-help does not say %q:\n%s", want, b.String())
			}
		})
	}
}

// TestUsageListsEveryVariable checks that -help documents each flag and its
// environment twin.
func TestUsageListsEveryVariable(t *testing.T) {
	var b strings.Builder
	o := testOptions()
	o.usage(&b)
	o.newFlagSet(new(Config)).VisitAll(func(f *flag.Flag) {
		if !strings.Contains(b.String(), "--"+f.Name) || !strings.Contains(b.String(), "$"+conn.EnvName(f.Name)) {
			t.Errorf("usage does not list --%s [$%s]", f.Name, conn.EnvName(f.Name))
		}
	})
}

func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// allParticipants are the participants testOptions registers.
var allParticipants = []string{"inventory", "payment", "shipping"}

// testOptions are the options of a daemon named sagad with the order saga's
// participant names and one check of its own.
func testOptions() *options {
	o := &options{name: "sagad"}
	for _, n := range allParticipants {
		Participant(n, participant.HandlerFunc(nil)).apply(o)
	}
	Validate(func(c *Config) error {
		if slices.Contains(c.Participants, "payment") && !c.Engine {
			return fmt.Errorf("%s: payment runs with the engine only", c.Flag("participants"))
		}
		return nil
	}).apply(o)
	return o
}

// TestSeparateAPIConfig parses the settings of the API-only pods of
// deploy/overlays/separate-api (deployment.yaml's env over the ConfigMap's):
// no engine, no participants, the API on :8080, no transactional id given.
// scripts/deploycheck checks that the overlay still sets these.
func TestSeparateAPIConfig(t *testing.T) {
	env := map[string]string{
		"KSAGA_KAFKA_BROKERS": "k:9092", "KSAGA_REDIS_ADDR": "r:6379", "KSAGA_PARTICIPANTS": "none",
		"KSAGA_REQUIRE_CONFIG": "true", "KSAGA_ENGINE": "false", "KSAGA_API_ADDR": ":8080",
		// /etc/ksaga/api-tokens/tokens in the pod: its directory must exist.
		"KSAGA_API_TOKEN_FILE": filepath.Join(t.TempDir(), "tokens"),
	}
	c, err := testOptions().parseConfig(nil, mapEnv(env))
	if err != nil {
		t.Fatalf("parseConfig: %v", err)
	}
	if c.Engine || len(c.Participants) > 0 || c.API.Addr != ":8080" || c.API.TokenFile != env["KSAGA_API_TOKEN_FILE"] {
		t.Errorf("got engine %v, participants %v, API %+v: want the API alone", c.Engine, c.Participants, c.API)
	}
}
