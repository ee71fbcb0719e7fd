package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ksaga/ksaga/conn"
	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/internal/tlstest"
)

func TestMain(m *testing.M) {
	// As main does: go-redis would log every failed dial.
	redis.SetLogger(quietLogger{})
	os.Exit(m.Run())
}

// secureKafka is a kfake broker that wants TLS and SASL: admin is a
// SCRAM-SHA-256 superuser, nobody a user without ACLs. It counts the
// SaslAuthenticate requests it gets.
type secureKafka struct {
	brokers []string
	ca      *tlstest.CA
	logins  atomic.Int64
}

func newSecureKafka(t *testing.T) *secureKafka {
	t.Helper()
	ca := tlstest.NewCA(t)
	srv := ca.Issue(t, "broker", "127.0.0.1")
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, inbox), kfake.SeedTopics(2, dlt),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{srv.Cert}}),
		kfake.EnableSASL(), kfake.EnableACLs(), kfake.Superuser(conn.SCRAMSHA256, "admin", "admin-secret"),
		kfake.User(conn.SCRAMSHA256, "nobody", "nobody-secret"))
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	k := &secureKafka{brokers: c.ListenAddrs(), ca: ca}
	c.ControlKey(int16(kmsg.SASLAuthenticate), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		k.logins.Add(1)
		return nil, nil, false
	})
	return k
}

// admin returns a client of the superuser.
func (k *secureKafka) admin(t *testing.T) *kgo.Client {
	t.Helper()
	opts, err := conn.Kafka{CAFile: k.ca.File, SASLMechanism: conn.SCRAMSHA256, Username: "admin", Password: "admin-secret"}.Opts()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(append(opts, kgo.SeedBrokers(k.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// envOf returns a getenv of the pairs.
func envOf(kv ...string) func(string) string {
	return func(k string) string {
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i] == k {
				return kv[i+1]
			}
		}
		return ""
	}
}

// stderrLines returns the lines of stderr, without the warnings.
func stderrLines(stderr string) (errs, warnings []string) {
	for line := range strings.SplitSeq(strings.TrimRight(stderr, "\n"), "\n") {
		switch {
		case line == "":
		case strings.HasPrefix(line, "sagactl: warning: "):
			warnings = append(warnings, line)
		default:
			errs = append(errs, line)
		}
	}
	return errs, warnings
}

// TestSecureKafka proves the dlq commands connect with TLS and SCRAM from
// flags or their KSAGA_* twins, and that a wrong password, a wrong CA or a
// user without ACLs make them exit 1 at once with one line on stderr that
// says what was refused, after a few logins: no retry storm.
func TestSecureKafka(t *testing.T) {
	k := newSecureKafka(t)
	r := dlq.New(testLetter[0].src, dlt, testLetter[0].failure)
	if err := k.admin(t).ProduceSync(testContext(t), r).FirstErr(); err != nil {
		t.Fatalf("produce a dead letter: %v", err)
	}
	passwordFile := t.TempDir() + "/password"
	writeTestFile(t, passwordFile, "admin-secret\n")
	brokers := strings.Join(k.brokers, ",")
	otherCA := tlstest.NewCA(t)

	tests := []struct {
		name    string
		args    []string
		env     func(string) string
		wantOut string   // in stdout, on success
		wantErr []string // in the one error line; nil: success
	}{
		{
			name: "flags before and after the command",
			args: []string{"--kafka-tls-ca", k.ca.File, "--kafka-sasl-mechanism", "SCRAM-SHA-256", "dlq", "list", "--saga", "order",
				"--kafka-brokers", brokers, "--kafka-sasl-username", "admin", "--kafka-sasl-password-file", passwordFile},
			env:     envOf(),
			wantOut: "1 record of saga.order.inbox-dlt",
		},
		{
			name: "environment",
			args: []string{"dlq", "redrive", "--saga", "order", "--dry-run"},
			env: envOf("KSAGA_KAFKA_BROKERS", brokers, "KSAGA_KAFKA_TLS", "true", "KSAGA_KAFKA_TLS_CA", k.ca.File,
				"KSAGA_KAFKA_SASL_MECHANISM", "scram-sha-256", "KSAGA_KAFKA_SASL_USERNAME", "admin", "KSAGA_KAFKA_SASL_PASSWORD", "admin-secret"),
			wantOut: "dry run: would redrive 1",
		},
		{
			name: "flag wins over the environment",
			args: []string{"dlq", "list", "--saga", "order", "--kafka-sasl-password", "admin-secret"},
			env: envOf("KSAGA_KAFKA_BROKERS", brokers, "KSAGA_KAFKA_TLS_CA", k.ca.File, "KSAGA_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256",
				"KSAGA_KAFKA_SASL_USERNAME", "admin", "KSAGA_KAFKA_SASL_PASSWORD", "wrong"),
			wantOut: "1 record of saga.order.inbox-dlt",
		},
		{
			name: "wrong password",
			args: []string{"dlq", "list", "--saga", "order", "--kafka-brokers", brokers, "--kafka-tls-ca", k.ca.File,
				"--kafka-sasl-mechanism", "SCRAM-SHA-256", "--kafka-sasl-username", "admin", "--kafka-sasl-password", "wrong"},
			env: envOf(),
			wantErr: []string{"sagactl dlq list: Kafka at " + brokers + ": ", `SASL SCRAM-SHA-256 login as user "admin" failed`,
				"(check --kafka-sasl-mechanism, --kafka-sasl-username and --kafka-sasl-password)"},
		},
		{
			name: "wrong password, redrive",
			args: []string{"dlq", "redrive", "--dry-run", "--saga", "order", "--kafka-brokers", brokers, "--kafka-tls-ca", k.ca.File,
				"--kafka-sasl-mechanism", "SCRAM-SHA-256", "--kafka-sasl-username", "admin", "--kafka-sasl-password", "wrong"},
			env:     envOf(),
			wantErr: []string{"sagactl dlq redrive: Kafka at ", `SASL SCRAM-SHA-256 login as user "admin" failed`},
		},
		{
			name: "wrong CA",
			args: []string{"dlq", "list", "--saga", "order", "--kafka-brokers", brokers, "--kafka-tls-ca", otherCA.File,
				"--kafka-sasl-mechanism", "SCRAM-SHA-256", "--kafka-sasl-username", "admin", "--kafka-sasl-password", "admin-secret"},
			env:     envOf(),
			wantErr: []string{"sagactl dlq list: Kafka at ", "x509: certificate signed by unknown authority", "(check --kafka-tls-ca, --kafka-tls-server-name"},
		},
		{
			name: "user without ACLs",
			args: []string{"dlq", "list", "--saga", "order", "--kafka-brokers", brokers, "--kafka-tls-ca", k.ca.File,
				"--kafka-sasl-mechanism", "SCRAM-SHA-256", "--kafka-sasl-username", "nobody", "--kafka-sasl-password", "nobody-secret"},
			env:     envOf(),
			wantErr: []string{"sagactl dlq list: ", "TOPIC_AUTHORIZATION_FAILED", "lacks a Kafka ACL"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := k.logins.Load()
			start := time.Now()
			var stdout, stderr bytes.Buffer
			code := run(testContext(t), append(tt.args, "--timeout", "5s"), tt.env, &stdout, &stderr)
			errs, warnings := stderrLines(stderr.String())
			if len(warnings) > 0 {
				t.Errorf("warnings: got %q, want none (TLS is on)", warnings)
			}
			if tt.wantErr == nil {
				if code != exitOK || !strings.Contains(stdout.String()+stderr.String(), tt.wantOut) {
					t.Fatalf("exit code %d, stdout %q, stderr %q; want 0 and %q", code, stdout.String(), stderr.String(), tt.wantOut)
				}
				return
			}
			if code != exitError {
				t.Errorf("exit code: got %d, want %d", code, exitError)
			}
			if len(errs) != 1 {
				t.Fatalf("stderr: got %d lines, want 1:\n%s\nstdout:\n%s", len(errs), stderr.String(), stdout.String())
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(errs[0], want) {
					t.Errorf("stderr: got %q, want it to contain %q", errs[0], want)
				}
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("took %s, want well under the 5s --timeout", took)
			}
			// SCRAM takes two SaslAuthenticate requests per login.
			if n := k.logins.Load() - before; n > 2*4 {
				t.Errorf("SaslAuthenticate requests: got %d, want at most 8 (no retry storm)", n)
			}
		})
	}
}

// TestSecureRedis proves saga get logs in to a --requirepass redis-server
// and as an ACL user, over TLS with a client certificate too, and that a
// wrong password exits 1 with one error line after one connection.
func TestSecureRedis(t *testing.T) {
	ca := tlstest.NewCA(t)
	srvPair := ca.Issue(t, "redis", "127.0.0.1")
	client := ca.Issue(t, "client")
	users := []string{"--requirepass", "default-secret", "--user", "ksaga", "on", ">ksaga-secret", "~*", "&*", "+@all",
		"--user", "pinger", "on", ">pinger-secret", "+ping", "+hello", "+client"}
	plain := redistest.StartWith(t, redistest.Options{Args: users})
	secure := redistest.StartWith(t, redistest.Options{Args: users,
		TLS: redistest.TLS{CertFile: srvPair.CertFile, KeyFile: srvPair.KeyFile, CAFile: ca.File}})

	admin := redis.NewClient(&redis.Options{Addr: plain.Addr, Password: "default-secret", PoolSize: 1})
	t.Cleanup(func() { admin.Close() })
	tlsCfg := &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{client.Cert}}
	secureAdmin := redis.NewClient(&redis.Options{Addr: secure.Addr, Password: "default-secret", TLSConfig: tlsCfg})
	t.Cleanup(func() { secureAdmin.Close() })
	ctx := testContext(t)
	// With 6 inbox partitions, o-1 lives on partition 0.
	for _, c := range []*redis.Client{admin, secureAdmin} {
		if err := c.HSet(ctx, "ksaga:{order:0}:state:o-1", "version", "7", "state", `{"id":"o-1"}`).Err(); err != nil {
			t.Fatal(err)
		}
	}
	passwordFile := t.TempDir() + "/password"
	writeTestFile(t, passwordFile, "ksaga-secret\n")

	get := []string{"saga", "get", "o-1", "--saga", "order", "--partitions", "6"}
	tests := []struct {
		name         string
		args         []string
		env          func(string) string
		wantErr      []string // in the one error line; nil: success
		wantWarnings int
	}{
		{"requirepass", append(get, "--redis-addr", plain.Addr, "--redis-password", "default-secret"), envOf(), nil, 1},
		{"ACL user from the environment", get, envOf("KSAGA_REDIS_ADDR", plain.Addr, "KSAGA_REDIS_USERNAME", "ksaga", "KSAGA_REDIS_PASSWORD_FILE", passwordFile), nil, 1},
		{"TLS with a client certificate", append(get, "--redis-addr", secure.Addr, "--redis-username", "ksaga", "--redis-password", "ksaga-secret",
			"--redis-tls-ca", ca.File, "--redis-tls-cert", client.CertFile, "--redis-tls-key", client.KeyFile), envOf(), nil, 0},
		{"wrong password", append(get, "--redis-addr", plain.Addr, "--redis-password", "wrong"), envOf(), []string{
			"sagactl saga get: Redis at " + plain.Addr + ": HGETALL ksaga:{order:0}:state:o-1: WRONGPASS",
			"(check --redis-username and --redis-password)"}, 1},
		{"no password", append(get, "--redis-addr", plain.Addr), envOf(), []string{"NOAUTH"}, 0},
		{"user without the right", append(get, "--redis-addr", plain.Addr, "--redis-username", "pinger", "--redis-password", "pinger-secret"), envOf(),
			[]string{"NOPERM", "its ACL rules forbid this command"}, 1},
		{"wrong CA", append(get, "--redis-addr", secure.Addr, "--redis-tls-ca", tlstest.NewCA(t).File,
			"--redis-tls-cert", client.CertFile, "--redis-tls-key", client.KeyFile), envOf(), []string{"certificate signed by unknown authority", "(check --redis-tls-ca"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := connections(t, admin)
			var stdout, stderr bytes.Buffer
			code := run(ctx, tt.args, tt.env, &stdout, &stderr)
			errs, warnings := stderrLines(stderr.String())
			if len(warnings) != tt.wantWarnings {
				t.Errorf("warnings: got %q, want %d", warnings, tt.wantWarnings)
			}
			if tt.wantErr == nil {
				if code != exitOK || !strings.Contains(stdout.String(), "\no-1 ") {
					t.Fatalf("exit code %d, stdout %q, stderr %q; want 0 and the saga", code, stdout.String(), stderr.String())
				}
				return
			}
			if code != exitError {
				t.Errorf("exit code: got %d, want %d", code, exitError)
			}
			if len(errs) != 1 {
				t.Fatalf("stderr: got %d error lines, want 1:\n%s", len(errs), stderr.String())
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(errs[0], want) {
					t.Errorf("stderr: got %q, want it to contain %q", errs[0], want)
				}
			}
			if n := connections(t, admin) - before; n > 1 {
				t.Errorf("connections to the plain server: got %d, want at most 1 (no retries)", n)
			}
		})
	}
}

// connections returns the redis-server's total_connections_received.
func connections(t *testing.T, admin *redis.Client) int {
	t.Helper()
	stats, err := admin.InfoMap(context.Background(), "stats").Result()
	if err != nil {
		t.Fatalf("INFO: %v", err)
	}
	for _, section := range stats {
		if v, ok := section["total_connections_received"]; ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("INFO stats has no total_connections_received: %v", stats)
	return 0
}

func writeTestFile(t *testing.T, file, content string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestConnFlagErrors proves a mistake in the connection flags is a usage
// error (exit 2) naming the flag, and the file when there is one.
func TestConnFlagErrors(t *testing.T) {
	missing := t.TempDir() + "/missing.pem"
	tests := []struct {
		name string
		args []string
		env  func(string) string
		want string
	}{
		{"cert without key", []string{"dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092", "--kafka-tls-cert", "c.pem"}, envOf(),
			"sagactl: dlq list: --kafka-tls-cert is set but --kafka-tls-key is not"},
		{"unknown mechanism", []string{"--kafka-sasl-mechanism", "OAUTHBEARER", "dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092"}, envOf(),
			`--kafka-sasl-mechanism "OAUTHBEARER": unknown mechanism`},
		{"unreadable CA file", []string{"dlq", "redrive", "--saga", "order", "--kafka-brokers", "k:9092"}, envOf("KSAGA_KAFKA_TLS_CA", missing),
			"--kafka-tls-ca: read the CA file: open " + missing + ": no such file or directory"},
		{"bad boolean twin", []string{"dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092"}, envOf("KSAGA_KAFKA_TLS", "yes"),
			`KSAGA_KAFKA_TLS="yes": --kafka-tls wants true or false`},
		{"Redis user without password", []string{"saga", "get", "--saga", "order", "--redis-addr", "r:6379", "--partitions", "6", "--redis-username", "ksaga", "o-1"}, envOf(),
			"--redis-username is set but no password"},
		{"unreadable Redis password file", []string{"saga", "get", "--saga", "order", "--redis-addr", "r:6379", "--partitions", "6", "o-1"}, envOf("KSAGA_REDIS_PASSWORD_FILE", missing),
			"--redis-password-file: open " + missing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, tt.env, &stdout, &stderr)
			if code != exitUsage {
				t.Errorf("exit code: got %d, want %d", code, exitUsage)
			}
			if got := stderr.String(); !strings.Contains(got, tt.want) || strings.Count(got, "\n") != 1 {
				t.Errorf("stderr: got %q, want one line containing %q", got, tt.want)
			}
		})
	}
}

// TestConnWarning proves SASL without TLS runs, with a warning on stderr.
func TestConnWarning(t *testing.T) {
	inv, err := parseArgs([]string{"dlq", "list", "--saga", "order", "--kafka-brokers", "k:9092",
		"--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-username", "u", "--kafka-sasl-password", "p"}, envOf())
	if err != nil {
		t.Fatalf("parseArgs: %v", err)
	}
	if len(inv.warnings) != 1 || !strings.Contains(inv.warnings[0], "PLAIN without --kafka-tls") {
		t.Errorf("warnings: got %q, want one about PLAIN without TLS", inv.warnings)
	}
	want := conn.Kafka{SASLMechanism: "PLAIN", Username: "u", Password: "p"}
	if inv.kafkaConn != want || len(inv.kafka) == 0 || len(inv.list.kafka) != len(inv.kafka) {
		t.Errorf("got %+v with %d options (list: %d), want %+v with its options", inv.kafkaConn, len(inv.kafka), len(inv.list.kafka), want)
	}
}
