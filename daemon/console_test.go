package daemon

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ksaga/ksaga/internal/tlstest"
)

// TestConsoleFlags checks the --console-* flags: the token file and
// certificate default to the API's, and a mistake is an error naming the
// flag.
func TestConsoleFlags(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("ops "+testToken+" *\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("ops short *\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pair := tlstest.NewCA(t).Issue(t, "localhost")
	real := []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379"}
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want ConsoleConfig
	}{
		{name: "off by default"},
		{name: "own token file", args: []string{"--console-addr", ":8081", "--console-token-file", tokens},
			want: ConsoleConfig{Addr: ":8081", TokenFile: tokens}},
		{name: "the API's token file and certificate", args: []string{"--console-addr", ":8081", "--api-addr", ":8080", "--api-token-file", tokens,
			"--api-tls-cert", pair.CertFile, "--api-tls-key", pair.KeyFile},
			want: ConsoleConfig{Addr: ":8081", TokenFile: tokens, TLSCert: pair.CertFile, TLSKey: pair.KeyFile}},
		{name: "from the environment", env: map[string]string{"KSAGA_CONSOLE_ADDR": ":8081", "KSAGA_CONSOLE_TOKEN_FILE": tokens,
			"KSAGA_CONSOLE_TRACE_URL": "https://tempo.example/trace/{trace_id}"},
			want: ConsoleConfig{Addr: ":8081", TokenFile: tokens, TraceURL: "https://tempo.example/trace/{trace_id}"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := testOptions().parseConfig(append(real, tc.args...), mapEnv(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			if c.Console != tc.want {
				t.Errorf("got %+v, want %+v", c.Console, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no tokens", []string{"--console-addr", ":8081"}, "--console-addr needs --console-token-file or --api-token-file"},
		{"a bad token file", []string{"--console-addr", ":8081", "--console-token-file", bad}, "--console-token-file " + bad + ": line 1"},
		{"a trace URL without the id", []string{"--console-addr", ":8081", "--console-token-file", tokens, "--console-trace-url", "https://tempo.example/trace"}, "--console-trace-url"},
		{"a trace URL of another scheme", []string{"--console-addr", ":8081", "--console-token-file", tokens, "--console-trace-url", "javascript:alert({trace_id})"}, "want an http(s) URL"},
		{"a certificate without its key", []string{"--console-addr", ":8081", "--console-token-file", tokens, "--console-tls-cert", pair.CertFile}, "go together"},
		{"a console flag without the console", []string{"--console-token-file", tokens}, "--console-token-file applies only with --console-addr"},
		{"a bad address", []string{"--console-addr", "nope", "--console-token-file", tokens}, "--console-addr \"nope\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := testOptions().parseConfig(append(real, tc.args...), mapEnv(nil))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestConsoleTokens checks that the console finds a token's principal by
// its sum, with the token file's scopes.
func TestConsoleTokens(t *testing.T) {
	entries, problems := parseTokens([]byte("viewer " + testToken + " read:order\n"))
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	ts := &tokenSet{}
	ts.entries.Store(&entries)
	ct := consoleTokens{ts}
	p := ct.Lookup(sha256.Sum256([]byte(testToken)))
	switch {
	case p == nil:
		t.Fatal("the token is not found")
	case p.Name != "viewer" || !p.May("read", "order") || p.May("compensate", "order") || p.May("read", "trip"):
		t.Errorf("principal %s: may read order %v, compensate order %v, read trip %v; want viewer, true, false, false",
			p.Name, p.May("read", "order"), p.May("compensate", "order"), p.May("read", "trip"))
	}
	if ct.Lookup(sha256.Sum256([]byte(testToken+"x"))) != nil {
		t.Error("another token is found")
	}
}
