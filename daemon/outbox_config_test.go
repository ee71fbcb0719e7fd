package daemon

import (
	"reflect"
	"testing"
)

func TestOutboxConfig(t *testing.T) {
	real := []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379"}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want OutboxConfig
	}{
		{name: "off by default", args: real},
		{name: "redis on the engine's Redis", args: append(real, "--outbox-relay", "redis"), want: OutboxConfig{Relay: []string{"redis"}}},
		{
			name: "both, from the environment",
			args: real,
			env: map[string]string{"KSAGA_OUTBOX_RELAY": "redis, postgres", "KSAGA_OUTBOX_REDIS_ADDR": "o:6379",
				"KSAGA_OUTBOX_POSTGRES_DSN": "postgres://ksaga@db:5432/shop"},
			want: OutboxConfig{Relay: []string{"redis", "postgres"}, RedisAddrs: []string{"o:6379"}, PostgresDSN: "postgres://ksaga@db:5432/shop"},
		},
		{name: "embedded demo, its own Redis", args: []string{"--outbox-relay", "redis"}, want: OutboxConfig{Relay: []string{"redis"}}},
		{name: "relay only", args: append(real, "--engine=false", "--outbox-relay", "redis"), want: OutboxConfig{Relay: []string{"redis"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := testOptions().parseConfig(tc.args, mapEnv(tc.env))
			if err != nil {
				t.Fatalf("parseConfig(%q): %v", tc.args, err)
			}
			if !reflect.DeepEqual(got.Outbox, tc.want) {
				t.Errorf("parseConfig(%q): got %+v, want %+v", tc.args, got.Outbox, tc.want)
			}
		})
	}
}

func TestOutboxConfigErrors(t *testing.T) {
	real := []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379"}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{
			name: "unknown outbox",
			args: append(real, "--outbox-relay", "redis,mysql"),
			want: `--outbox-relay: unknown outbox "mysql" (want redis, postgres or redis,postgres)`,
		},
		{
			name: "postgres without a DSN",
			args: real,
			env:  map[string]string{"KSAGA_OUTBOX_RELAY": "postgres"},
			want: `KSAGA_OUTBOX_RELAY postgres needs --outbox-postgres-dsn (or KSAGA_OUTBOX_POSTGRES_DSN): the PostgreSQL that holds the outbox table`,
		},
		{
			name: "a DSN without postgres",
			args: append(real, "--outbox-relay", "redis", "--outbox-postgres-dsn", "postgres://db/shop"),
			want: `--outbox-postgres-dsn applies only with --outbox-relay postgres`,
		},
		{
			name: "a DSN that is not one, not echoed",
			args: append(real, "--outbox-relay", "postgres", "--outbox-postgres-dsn", "postgres://u:secret@db:notaport/shop"),
			want: `--outbox-postgres-dsn is not a valid PostgreSQL DSN or connection string (want postgres://user@host:5432/db?sslmode=require)`,
		},
		{
			name: "a Redis without redis",
			args: append(real, "--outbox-redis-addr", "o:6379"),
			want: `--outbox-redis-addr applies only with --outbox-relay redis`,
		},
		{
			name: "a Redis in the embedded demo",
			args: []string{"--outbox-relay", "redis", "--outbox-redis-addr", "o:6379"},
			want: `--outbox-redis-addr applies only with --kafka-brokers and --redis-addr (the embedded demo relays its own Redis)`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := testOptions().parseConfig(tc.args, mapEnv(tc.env))
			if err == nil || err.Error() != tc.want {
				t.Errorf("parseConfig(%q):\n got %v\nwant %s", tc.args, err, tc.want)
			}
		})
	}
}
