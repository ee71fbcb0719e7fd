package conn_test

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/conn"
	"github.com/ksaga/ksaga/internal/tlstest"
)

// TestInvalid proves that each mistake gets an error naming the flag (and
// the file) to fix.
func TestInvalid(t *testing.T) {
	ca := tlstest.NewCA(t)
	pair := ca.Issue(t, "client")
	other := ca.Issue(t, "other")
	missing := filepath.Join(t.TempDir(), "missing.pem")
	notPEM := writeFile(t, "not a certificate\n")
	empty := writeFile(t, "\n")

	kafka := []struct {
		name string
		k    conn.Kafka
		want string
	}{
		{"cert without key", conn.Kafka{CertFile: pair.CertFile}, "--kafka-tls-cert is set but --kafka-tls-key is not: a client certificate needs its private key"},
		{"key without cert", conn.Kafka{KeyFile: pair.KeyFile}, "--kafka-tls-key is set but --kafka-tls-cert is not"},
		{"missing CA file", conn.Kafka{CAFile: missing}, "--kafka-tls-ca: read the CA file: open " + missing + ": no such file or directory"},
		{"CA file without PEM", conn.Kafka{CAFile: notPEM}, "--kafka-tls-ca " + notPEM + ": no PEM certificate in the file"},
		{"missing cert file", conn.Kafka{CertFile: missing, KeyFile: pair.KeyFile}, "--kafka-tls-cert: stat " + missing + ": no such file or directory"},
		{"key of another cert", conn.Kafka{CertFile: pair.CertFile, KeyFile: other.KeyFile}, "private key does not match public key"},
		{"unknown mechanism", conn.Kafka{SASLMechanism: "GSSAPI", Username: "u", Password: "p"}, `--kafka-sasl-mechanism "GSSAPI": unknown mechanism: want PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or AWS_MSK_IAM`},
		{"username without mechanism", conn.Kafka{Username: "u"}, "--kafka-sasl-username is set but --kafka-sasl-mechanism is not"},
		{"password file without mechanism", conn.Kafka{PasswordFile: empty}, "--kafka-sasl-password-file is set but --kafka-sasl-mechanism is not"},
		{"mechanism without username", conn.Kafka{SASLMechanism: "PLAIN", Password: "p"}, "--kafka-sasl-mechanism PLAIN needs --kafka-sasl-username"},
		{"mechanism without password", conn.Kafka{SASLMechanism: "SCRAM-SHA-512", Username: "u"}, "--kafka-sasl-mechanism SCRAM-SHA-512 needs --kafka-sasl-password or --kafka-sasl-password-file"},
		{"two passwords", conn.Kafka{SASLMechanism: "PLAIN", Username: "u", Password: "p", PasswordFile: empty}, "both --kafka-sasl-password (KSAGA_KAFKA_SASL_PASSWORD) and --kafka-sasl-password-file (KSAGA_KAFKA_SASL_PASSWORD_FILE) are set: use one"},
		{"empty password file", conn.Kafka{SASLMechanism: "PLAIN", Username: "u", PasswordFile: empty}, "--kafka-sasl-password-file " + empty + ": the file is empty"},
		{"missing password file", conn.Kafka{SASLMechanism: "PLAIN", Username: "u", PasswordFile: missing}, "--kafka-sasl-password-file: open " + missing},
		{"MSK IAM with a username", conn.Kafka{SASLMechanism: "AWS_MSK_IAM", Username: "u"}, "--kafka-sasl-mechanism AWS_MSK_IAM takes its credentials from AWS_ACCESS_KEY_ID"},
	}
	for _, tt := range kafka {
		t.Run("kafka "+tt.name, func(t *testing.T) {
			_, err := tt.k.Opts()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Opts: got error %v, want one containing %q", err, tt.want)
			}
		})
	}

	redisCases := []struct {
		name string
		r    conn.Redis
		want string
	}{
		{"cert without key", conn.Redis{CertFile: pair.CertFile}, "--redis-tls-cert is set but --redis-tls-key is not"},
		{"missing CA file", conn.Redis{TLS: true, CAFile: missing}, "--redis-tls-ca: read the CA file: open " + missing},
		{"username without password", conn.Redis{Username: "alice"}, "--redis-username is set but no password: set --redis-password or --redis-password-file"},
		{"two passwords", conn.Redis{Password: "p", PasswordFile: empty}, "both --redis-password (KSAGA_REDIS_PASSWORD) and --redis-password-file (KSAGA_REDIS_PASSWORD_FILE) are set"},
		{"missing password file", conn.Redis{PasswordFile: missing}, "--redis-password-file: open " + missing},
	}
	for _, tt := range redisCases {
		t.Run("redis "+tt.name, func(t *testing.T) {
			err := tt.r.Apply(&redis.UniversalOptions{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Apply: got error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestMSKIAMNeedsCredentials proves AWS_MSK_IAM checks the environment
// when the options are built, not at the first login.
func TestMSKIAMNeedsCredentials(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	_, err := conn.Kafka{TLS: true, SASLMechanism: "aws_msk_iam"}.Opts()
	want := "AWS_MSK_IAM needs AWS credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Opts: got error %v, want one containing %q", err, want)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	if _, err := (conn.Kafka{TLS: true, SASLMechanism: "AWS_MSK_IAM"}).Opts(); err != nil {
		t.Fatalf("Opts with credentials: %v", err)
	}
}

// TestZeroValues proves the zero values change nothing: no kgo options, and
// go-redis options left as they were.
func TestZeroValues(t *testing.T) {
	opts, err := conn.Kafka{}.Opts()
	if err != nil || len(opts) != 0 {
		t.Errorf("Kafka{}.Opts: got %d options, %v; want none", len(opts), err)
	}
	o := redis.UniversalOptions{Addrs: []string{"r:6379"}, Username: "kept", Password: "kept"}
	if err := (conn.Redis{}).Apply(&o); err != nil {
		t.Fatalf("Redis{}.Apply: %v", err)
	}
	if o.Username != "kept" || o.Password != "kept" || o.TLSConfig != nil || o.CredentialsProviderContext != nil {
		t.Errorf("Redis{}.Apply changed the options: %+v", o)
	}
	if w := append(conn.Kafka{}.Warnings(), conn.Redis{}.Warnings()...); len(w) != 0 {
		t.Errorf("Warnings of the zero values: got %q, want none", w)
	}
}

func TestWarnings(t *testing.T) {
	tests := []struct {
		name string
		got  []string
		want string // "" for none
	}{
		{"PLAIN without TLS", conn.Kafka{SASLMechanism: "PLAIN", Username: "u", Password: "p"}.Warnings(), "--kafka-sasl-mechanism PLAIN without --kafka-tls: the password crosses the network in clear text"},
		{"SCRAM without TLS", conn.Kafka{SASLMechanism: "scram-sha-256"}.Warnings(), "--kafka-sasl-mechanism SCRAM-SHA-256 without --kafka-tls: the password is not sent"},
		{"MSK IAM without TLS", conn.Kafka{SASLMechanism: "AWS_MSK_IAM"}.Warnings(), "Amazon MSK accepts IAM logins on its TLS listener only"},
		{"PLAIN with a CA file", conn.Kafka{SASLMechanism: "PLAIN", CAFile: "ca.pem"}.Warnings(), ""},
		{"Redis password without TLS", conn.Redis{Password: "p"}.Warnings(), "--redis-password without --redis-tls"},
		{"Redis password with TLS", conn.Redis{PasswordFile: "f", TLS: true}.Warnings(), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			switch {
			case tt.want == "" && len(tt.got) != 0:
				t.Errorf("got %q, want none", tt.got)
			case tt.want != "" && (len(tt.got) != 1 || !strings.Contains(tt.got[0], tt.want)):
				t.Errorf("got %q, want one containing %q", tt.got, tt.want)
			}
		})
	}
}

// TestFlags proves every flag is defined with its field, that FromEnv fills
// the flags not given from their KSAGA_* twins, and that a flag wins.
func TestFlags(t *testing.T) {
	var k conn.Kafka
	var r conn.Redis
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.String("kafka-brokers", "", "not conn's: FromEnv leaves it alone")
	k.RegisterFlags(fs)
	r.RegisterFlags(fs)

	var defined []string
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name != "kafka-brokers" {
			defined = append(defined, f.Name)
		}
	})
	want := conn.FlagNames()
	slices.Sort(want)
	if !slices.Equal(defined, want) {
		t.Errorf("flags: got %q, want %q", defined, want)
	}

	if err := fs.Parse([]string{"--kafka-sasl-username", "flag-user", "--redis-tls=false"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"KSAGA_KAFKA_BROKERS":            "env-brokers",
		"KSAGA_KAFKA_TLS":                "true",
		"KSAGA_KAFKA_TLS_CA":             "/etc/ksaga/kafka/ca.crt",
		"KSAGA_KAFKA_SASL_MECHANISM":     "SCRAM-SHA-512",
		"KSAGA_KAFKA_SASL_USERNAME":      "env-user",
		"KSAGA_KAFKA_SASL_PASSWORD_FILE": "/etc/ksaga/kafka/password",
		"KSAGA_REDIS_USERNAME":           "ksaga",
		"KSAGA_REDIS_PASSWORD":           "redis-secret",
		"KSAGA_REDIS_TLS":                "true",
		"KSAGA_REDIS_TLS_SERVER_NAME":    "redis.internal",
	}
	if err := conn.FromEnv(fs, func(k string) string { return env[k] }); err != nil {
		t.Fatalf("FromEnv: %v", err)
	}
	wantK := conn.Kafka{TLS: true, CAFile: "/etc/ksaga/kafka/ca.crt", SASLMechanism: "SCRAM-SHA-512",
		Username: "flag-user", PasswordFile: "/etc/ksaga/kafka/password"}
	if k != wantK {
		t.Errorf("Kafka: got %+v, want %+v", k, wantK)
	}
	wantR := conn.Redis{Username: "ksaga", Password: "redis-secret", TLS: false, ServerName: "redis.internal"}
	if r != wantR {
		t.Errorf("Redis: got %+v, want %+v", r, wantR)
	}
	if got := fs.Lookup("kafka-brokers").Value.String(); got != "" {
		t.Errorf("--kafka-brokers: got %q, want it left alone", got)
	}

	err := conn.FromEnv(flag.NewFlagSet("x", flag.ContinueOnError), func(string) string { return "x" })
	if err != nil {
		t.Errorf("FromEnv on a flag set without conn's flags: %v", err)
	}
	fs2 := flag.NewFlagSet("test", flag.ContinueOnError)
	new(conn.Kafka).RegisterFlags(fs2)
	err = conn.FromEnv(fs2, func(k string) string {
		if k == "KSAGA_KAFKA_TLS" {
			return "yes"
		}
		return ""
	})
	if want := `KSAGA_KAFKA_TLS="yes": --kafka-tls wants true or false`; err == nil || err.Error() != want {
		t.Errorf("FromEnv: got error %v, want %q", err, want)
	}
}

func TestEnvName(t *testing.T) {
	if got, want := conn.EnvName("kafka-sasl-password-file"), "KSAGA_KAFKA_SASL_PASSWORD_FILE"; got != want {
		t.Errorf("EnvName: got %q, want %q", got, want)
	}
}

// TestIsAuthError proves errors that retrying can fix are not auth errors.
func TestIsAuthError(t *testing.T) {
	for _, err := range []error{nil, io.EOF, os.ErrDeadlineExceeded, redis.Nil} {
		if conn.IsAuthError(err) {
			t.Errorf("IsAuthError(%v): got true, want false", err)
		}
	}
}
