package conn_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/conn"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/internal/tlstest"
)

// redisUsers are the server's users: the default user's --requirepass
// password, an ACL user with every right and one that may only GET.
var redisUsers = []string{
	"--requirepass", "default-secret",
	"--user", "alice", "on", ">alice-secret", "~*", "&*", "+@all",
	"--user", "reader", "on", ">reader-secret", "~*", "+get", "+hello", "+ping", "+client",
}

// hgetall connects with r, runs HGETALL on a new client and returns the
// error and the connections the server accepted meanwhile, read through
// admin.
func hgetall(t *testing.T, addr string, r conn.Redis, admin *redis.Client) (int, error) {
	t.Helper()
	o := &redis.UniversalOptions{Addrs: []string{addr}, DialTimeout: 5 * time.Second}
	if err := r.Apply(o); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	before := acceptedConns(t, admin)
	rdb := redis.NewUniversalClient(o)
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := rdb.HGetAll(ctx, "ksaga:conn-test").Err()
	return acceptedConns(t, admin) - before, err
}

// acceptedConns returns the server's total_connections_received. The
// admin client keeps its one connection, so only the first call counts it.
func acceptedConns(t *testing.T, admin *redis.Client) int {
	t.Helper()
	if admin == nil {
		return 0
	}
	info, err := admin.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatalf("INFO: %v", err)
	}
	for line := range strings.SplitSeq(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "total_connections_received:"); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	t.Fatalf("INFO stats has no total_connections_received:\n%s", info)
	return 0
}

// TestRedisAuth proves that the default user's password and an ACL user
// log in, from flags' values or a password file, and that a wrong password
// (WRONGPASS), none (NOAUTH) or a missing right (NOPERM) are auth errors
// after one connection: no retry storm.
func TestRedisAuth(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{Args: redisUsers})
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr, Username: "alice", Password: "alice-secret", PoolSize: 1})
	t.Cleanup(func() { admin.Close() })

	tests := []struct {
		name     string
		r        conn.Redis
		wantErr  string // "" for success
		wantKind conn.Kind
	}{
		{"requirepass", conn.Redis{Password: "default-secret"}, "", conn.KindNone},
		{"ACL user", conn.Redis{Username: "alice", Password: "alice-secret"}, "", conn.KindNone},
		{"ACL user, password file", conn.Redis{Username: "alice", PasswordFile: writeFile(t, "alice-secret\r\n")}, "", conn.KindNone},
		{"wrong password", conn.Redis{Username: "alice", Password: "nope"}, "WRONGPASS", conn.KindLogin},
		{"unknown user", conn.Redis{Username: "mallory", Password: "alice-secret"}, "WRONGPASS", conn.KindLogin},
		{"wrong requirepass", conn.Redis{Password: "nope"}, "WRONGPASS", conn.KindLogin},
		{"no password", conn.Redis{}, "NOAUTH", conn.KindLogin},
		{"no right", conn.Redis{Username: "reader", Password: "reader-secret"}, "NOPERM", conn.KindPermission},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			conns, err := hgetall(t, srv.Addr, tt.r, admin)
			if conns != 1 {
				t.Errorf("connections: got %d, want 1 (no retries)", conns)
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("HGETALL: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("HGETALL: got error %v, want %s", err, tt.wantErr)
			}
			if got := conn.KindOf(err); got != tt.wantKind {
				t.Errorf("KindOf(%v): got %d, want %d", err, got, tt.wantKind)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("failed after %s, want at once", took)
			}
		})
	}
}

// TestRedisPasswordFileRotation proves the password file is read for every
// new connection: a rotated Secret needs no restart.
func TestRedisPasswordFileRotation(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{Args: redisUsers})
	file := writeFile(t, "alice-secret\n")
	o := &redis.UniversalOptions{Addrs: []string{srv.Addr}}
	if err := (conn.Redis{Username: "alice", PasswordFile: file}).Apply(o); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	rdb := redis.NewUniversalClient(o)
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	if err := rdb.Do(ctx, "ACL", "SETUSER", "alice", "resetpass", ">rotated").Err(); err != nil {
		t.Fatalf("ACL SETUSER: %v", err)
	}
	if err := os.WriteFile(file, []byte("rotated\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// ACL SETUSER ... resetpass closes alice's connections: the next
	// command dials again and must read the new password.
	if err := rdb.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after the rotation: %v", err)
	}
}

// TestRedisTLS proves TLS with a client certificate works, and that a
// wrong CA or a missing client certificate fail at once with an error
// naming the certificate problem.
func TestRedisTLS(t *testing.T) {
	ca := tlstest.NewCA(t)
	otherCA := tlstest.NewCA(t)
	srvPair := ca.Issue(t, "redis", "127.0.0.1", "redis.test")
	client := ca.Issue(t, "client")
	mutual := redistest.StartWith(t, redistest.Options{
		Args: []string{"--user", "alice", "on", ">alice-secret", "~*", "&*", "+@all"},
		TLS:  redistest.TLS{CertFile: srvPair.CertFile, KeyFile: srvPair.KeyFile, CAFile: ca.File},
	})
	serverOnly := redistest.StartWith(t, redistest.Options{
		TLS: redistest.TLS{CertFile: srvPair.CertFile, KeyFile: srvPair.KeyFile, CAFile: ca.File, AuthClients: "no"},
	})

	tests := []struct {
		name    string
		addr    string
		r       conn.Redis
		wantErr string // "" for success; else a KindCertificate error, unless WRONGPASS
	}{
		{"client certificate and ACL user", mutual.Addr, conn.Redis{CAFile: ca.File, CertFile: client.CertFile, KeyFile: client.KeyFile, Username: "alice", Password: "alice-secret"}, ""},
		{"server name", mutual.Addr, conn.Redis{CAFile: ca.File, CertFile: client.CertFile, KeyFile: client.KeyFile, ServerName: "redis.test", Username: "alice", Password: "alice-secret"}, ""},
		{"server certificate only", serverOnly.Addr, conn.Redis{TLS: true, CAFile: ca.File}, ""},
		{"wrong CA", serverOnly.Addr, conn.Redis{CAFile: otherCA.File}, "certificate signed by unknown authority"},
		{"wrong server name", serverOnly.Addr, conn.Redis{CAFile: ca.File, ServerName: "other.test"}, "certificate is valid for redis.test, not other.test"},
		{"no client certificate", mutual.Addr, conn.Redis{CAFile: ca.File, Username: "alice", Password: "alice-secret"}, "tls: certificate required"},
		{"ACL user over TLS, wrong password", mutual.Addr, conn.Redis{CAFile: ca.File, CertFile: client.CertFile, KeyFile: client.KeyFile, Username: "alice", Password: "nope"}, "WRONGPASS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := hgetall(t, tt.addr, tt.r, nil)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("HGETALL: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("HGETALL: got error %v, want one containing %q", err, tt.wantErr)
			}
			want := conn.KindCertificate
			if tt.wantErr == "WRONGPASS" {
				want = conn.KindLogin
			}
			if got := conn.KindOf(err); got != want {
				t.Errorf("KindOf(%v): got %d, want %d", err, got, want)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("failed after %s, want at once", took)
			}
		})
	}
}
