package conn_test

import (
	"context"
	"crypto/tls"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ksaga/ksaga/conn"
	"github.com/ksaga/ksaga/internal/tlstest"
)

const topic = "conn-test"

// secureCluster is a kfake broker that wants TLS and SASL, with a user per
// mechanism, and counts the SaslAuthenticate requests it gets.
type secureCluster struct {
	*kfake.Cluster
	ca    *tlstest.CA
	auths atomic.Int64
}

var users = map[string]struct{ user, pass string }{
	conn.PLAIN:       {"alice", "alice-secret"},
	conn.SCRAMSHA256: {"bob", "bob-secret"},
	conn.SCRAMSHA512: {"carol", "carol-secret"},
}

func newSecureCluster(t *testing.T, extra ...kfake.Opt) *secureCluster {
	t.Helper()
	ca := tlstest.NewCA(t)
	srv := ca.Issue(t, "broker", "127.0.0.1", "kafka.test")
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(1, topic), kfake.EnableSASL(),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{srv.Cert}, MinVersion: tls.VersionTLS12})}
	for m, u := range users {
		opts = append(opts, kfake.Superuser(m, u.user, u.pass))
	}
	c, err := kfake.NewCluster(append(opts, extra...)...)
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	sc := &secureCluster{Cluster: c, ca: ca}
	c.ControlKey(int16(kmsg.SASLAuthenticate), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		sc.auths.Add(1)
		return nil, nil, false
	})
	return sc
}

// roundTrip connects with k, asks for metadata, produces a record and
// reads it back. It returns the first error and how long it took.
func roundTrip(t *testing.T, brokers []string, k conn.Kafka) (time.Duration, error) {
	t.Helper()
	opts, err := k.Opts()
	if err != nil {
		t.Fatalf("Opts: %v", err)
	}
	cl, err := kgo.NewClient(append(opts, kgo.SeedBrokers(brokers...), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		t.Fatalf("new client: %v", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	// A request returns the client's error. A produce would not: kgo
	// keeps retrying buffered records until their context ends.
	if _, err := kmsg.NewPtrMetadataRequest().RequestWith(ctx, cl); err != nil {
		return time.Since(start), err
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("v")}).FirstErr(); err != nil {
		return time.Since(start), err
	}
	cl.AddConsumeTopics(topic)
	fs := cl.PollFetches(ctx)
	if err := fs.Err0(); err != nil {
		return time.Since(start), err
	}
	if fs.NumRecords() == 0 {
		t.Fatalf("poll: no record")
	}
	return time.Since(start), nil
}

// TestKafkaSASLOverTLS proves each mechanism logs in over TLS and moves
// data, and that a wrong password or user fails within seconds, with an
// error IsAuthError recognises, after a handful of logins: not a retry
// storm until the request's deadline.
func TestKafkaSASLOverTLS(t *testing.T) {
	c := newSecureCluster(t)
	brokers := c.ListenAddrs()
	for _, m := range []string{conn.PLAIN, conn.SCRAMSHA256, conn.SCRAMSHA512} {
		u := users[m]
		t.Run(m, func(t *testing.T) {
			k := conn.Kafka{CAFile: c.ca.File, SASLMechanism: m, Username: u.user, Password: u.pass}
			if _, err := roundTrip(t, brokers, k); err != nil {
				t.Fatalf("round trip: %v", err)
			}
			if w := k.Warnings(); len(w) != 0 {
				t.Errorf("Warnings: got %q, want none over TLS", w)
			}
		})
		t.Run(m+" lower case from a password file", func(t *testing.T) {
			file := writeFile(t, u.pass+"\n")
			k := conn.Kafka{TLS: true, CAFile: c.ca.File, SASLMechanism: strings.ToLower(m), Username: u.user, PasswordFile: file}
			if _, err := roundTrip(t, brokers, k); err != nil {
				t.Fatalf("round trip: %v", err)
			}
		})
		for _, bad := range []struct{ name, user, pass string }{
			{"wrong password", u.user, "nope"},
			{"unknown user", "mallory", u.pass},
		} {
			t.Run(m+" "+bad.name, func(t *testing.T) {
				before := c.auths.Load()
				k := conn.Kafka{CAFile: c.ca.File, SASLMechanism: m, Username: bad.user, Password: bad.pass}
				took, err := roundTrip(t, brokers, k)
				if err == nil {
					t.Fatal("round trip: got no error, want a failed login")
				}
				if got := conn.KindOf(err); got != conn.KindLogin {
					t.Errorf("KindOf(%v): got %d, want KindLogin", err, got)
				}
				if want := "SASL " + m + " login as user \"" + bad.user + "\" failed"; !strings.Contains(err.Error(), want) {
					t.Errorf("error: got %q, want it to contain %q", err, want)
				}
				if took > 10*time.Second {
					t.Errorf("failed after %s, want well under the 20s deadline", took)
				}
				// SCRAM takes two SaslAuthenticate requests per login, PLAIN
				// one. Without the guard, kgo logs in about 12 times in 20s.
				if n := c.auths.Load() - before; n > 2*3 {
					t.Errorf("SaslAuthenticate requests: got %d, want at most 6 (3 logins, no retry storm)", n)
				}
			})
		}
	}
}

// TestKafkaSASLRejectedByCode proves that a broker that answers
// SASL_AUTHENTICATION_FAILED, as Kafka does, fails the client at the first
// login.
func TestKafkaSASLRejectedByCode(t *testing.T) {
	c := newSecureCluster(t)
	var rejected atomic.Int64
	c.ControlKey(int16(kmsg.SASLAuthenticate), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		rejected.Add(1)
		resp := req.(*kmsg.SASLAuthenticateRequest).ResponseKind().(*kmsg.SASLAuthenticateResponse)
		resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
		msg := "Authentication failed: Invalid username or password"
		resp.ErrorMessage = &msg
		return resp, nil, true
	})
	u := users[conn.PLAIN]
	_, err := roundTrip(t, c.ListenAddrs(), conn.Kafka{CAFile: c.ca.File, SASLMechanism: conn.PLAIN, Username: u.user, Password: u.pass})
	if got := conn.KindOf(err); got != conn.KindLogin {
		t.Fatalf("KindOf(%v): got %d, want KindLogin", err, got)
	}
	if n := rejected.Load(); n != 1 {
		t.Errorf("logins: got %d, want 1 (SASL_AUTHENTICATION_FAILED is not retried)", n)
	}
}

// TestKafkaTLS proves that the CA file, the server name and the client
// certificate are used, and that a certificate problem fails fast with an
// error that says what is wrong with the certificate.
func TestKafkaTLS(t *testing.T) {
	ca := tlstest.NewCA(t)
	otherCA := tlstest.NewCA(t)
	srv := ca.Issue(t, "broker", "127.0.0.1")
	named := ca.Issue(t, "named-broker", "kafka.test")
	client := ca.Issue(t, "client")
	strangerClient := otherCA.Issue(t, "stranger")

	start := func(t *testing.T, cfg *tls.Config) []string {
		t.Helper()
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic), kfake.TLS(cfg))
		if err != nil {
			t.Fatalf("start kfake: %v", err)
		}
		t.Cleanup(c.Close)
		return c.ListenAddrs()
	}
	serverTLS := start(t, &tls.Config{Certificates: []tls.Certificate{srv.Cert}})
	namedTLS := start(t, &tls.Config{Certificates: []tls.Certificate{named.Cert}})
	mutualTLS := start(t, &tls.Config{Certificates: []tls.Certificate{srv.Cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool()})

	tests := []struct {
		name    string
		brokers []string
		k       conn.Kafka
		wantErr string // "" for success
	}{
		{"right CA", serverTLS, conn.Kafka{TLS: true, CAFile: ca.File}, ""},
		{"wrong CA", serverTLS, conn.Kafka{CAFile: otherCA.File}, "certificate signed by unknown authority"},
		{"system roots", serverTLS, conn.Kafka{TLS: true}, "certificate signed by unknown authority"},
		{"server name", namedTLS, conn.Kafka{CAFile: ca.File, ServerName: "kafka.test"}, ""},
		{"certificate for another name", namedTLS, conn.Kafka{CAFile: ca.File}, "cannot validate certificate for 127.0.0.1"},
		{"client certificate", mutualTLS, conn.Kafka{CAFile: ca.File, CertFile: client.CertFile, KeyFile: client.KeyFile}, ""},
		{"no client certificate", mutualTLS, conn.Kafka{CAFile: ca.File}, "certificate required"},
		// Go's client sends no certificate that the server's list of
		// acceptable CAs rules out.
		{"client certificate of another CA", mutualTLS, conn.Kafka{CAFile: ca.File, CertFile: strangerClient.CertFile, KeyFile: strangerClient.KeyFile}, "certificate required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			took, err := roundTrip(t, tt.brokers, tt.k)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("round trip: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("round trip: got error %v, want one containing %q", err, tt.wantErr)
			}
			if got := conn.KindOf(err); got != conn.KindCertificate {
				t.Errorf("KindOf(%v): got %d, want KindCertificate", err, got)
			}
			if took > 5*time.Second {
				t.Errorf("failed after %s, want at once", took)
			}
		})
	}
}

// TestKafkaMismatch proves that a client without the TLS or SASL the
// listener wants, or with SASL the listener does not have, fails at once
// with an auth error.
func TestKafkaMismatch(t *testing.T) {
	secure := newSecureCluster(t)
	plain, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(plain.Close)
	tests := []struct {
		name    string
		brokers []string
		k       conn.Kafka
		wantErr string
		want    conn.Kind
	}{
		{"no TLS", secure.ListenAddrs(), conn.Kafka{}, "is TLS missing?", conn.KindMismatch},
		{"no SASL", secure.ListenAddrs(), conn.Kafka{CAFile: secure.ca.File}, "is SASL missing?", conn.KindMismatch},
		{"SASL where there is none", plain.ListenAddrs(), conn.Kafka{SASLMechanism: conn.PLAIN, Username: "alice", Password: "pw"}, "or a listener without SASL", conn.KindLogin},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			took, err := roundTrip(t, tt.brokers, tt.k)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("round trip: got error %v, want one containing %q", err, tt.wantErr)
			}
			if got := conn.KindOf(err); got != tt.want {
				t.Errorf("KindOf(%v): got %d, want %d", err, got, tt.want)
			}
			if took > 5*time.Second {
				t.Errorf("failed after %s, want at once", took)
			}
		})
	}
}

// TestKafkaACL proves a user that logs in but lacks an ACL gets a
// KindPermission error at once.
func TestKafkaACL(t *testing.T) {
	c := newSecureCluster(t, kfake.EnableACLs(), kfake.User(conn.SCRAMSHA512, "nobody", "nobody-secret"))
	opts := mustOpts(t, conn.Kafka{CAFile: c.ca.File, SASLMechanism: conn.SCRAMSHA512, Username: "nobody", Password: "nobody-secret"})
	cl, err := kgo.NewClient(append(opts, kgo.SeedBrokers(c.ListenAddrs()...))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	err = cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("v")}).FirstErr()
	if got := conn.KindOf(err); got != conn.KindPermission {
		t.Fatalf("KindOf(%v): got %d, want KindPermission", err, got)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("failed after %s, want at once", took)
	}
}

func mustOpts(t *testing.T, k conn.Kafka) []kgo.Opt {
	t.Helper()
	opts, err := k.Opts()
	if err != nil {
		t.Fatalf("Opts: %v", err)
	}
	return opts
}
