package daemon

import (
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/internal/tlstest"
)

// TestAPIFlags checks the --api-* flags: what they configure, and that a
// mistake exits 2 with one line naming the flag, before connecting.
func TestAPIFlags(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("ops "+testToken+" *\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	shortToken := filepath.Join(dir, "short")
	if err := os.WriteFile(shortToken, []byte("# tokens\nci "+testToken+" start:order\nsecret-token\nsupport "+testToken+"2 read:order\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badScope := filepath.Join(dir, "badscope")
	if err := os.WriteFile(badScope, []byte("ci "+testToken+" start:order delete:order\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pair := tlstest.NewCA(t).Issue(t, "localhost")
	real := []string{"--kafka-brokers", "k:9092", "--redis-addr", "r:6379"}

	t.Run("valid", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			args []string
			env  map[string]string
			want APIConfig
		}{
			{name: "off by default", want: APIConfig{}},
			{
				name: "token file",
				args: []string{"--api-addr", ":8080", "--api-token-file", tokens},
				want: APIConfig{Addr: ":8080", TokenFile: tokens, ProduceTimeout: defaultProduceTimeout, MaxInFlight: defaultMaxInFlight, MaxWait: defaultMaxWait, MaxWaiters: defaultMaxWaiters},
			},
			{
				name: "from the environment, with TLS",
				env: map[string]string{"KSAGA_API_ADDR": ":8443", "KSAGA_API_INSECURE_NO_AUTH": "true",
					"KSAGA_API_TLS_CERT": pair.CertFile, "KSAGA_API_TLS_KEY": pair.KeyFile, "KSAGA_API_PRODUCE_TIMEOUT": "2s", "KSAGA_API_MAX_IN_FLIGHT": "8"},
				want: APIConfig{Addr: ":8443", InsecureNoAuth: true, TLSCert: pair.CertFile, TLSKey: pair.KeyFile, ProduceTimeout: 2 * time.Second, MaxInFlight: 8, MaxWait: defaultMaxWait, MaxWaiters: defaultMaxWaiters},
			},
			{
				// An optional Secret that does not exist yet: 401 until
				// it does.
				name: "token file not there yet",
				args: []string{"--api-addr", ":8080", "--api-token-file", filepath.Join(dir, "later")},
				want: APIConfig{Addr: ":8080", TokenFile: filepath.Join(dir, "later"), ProduceTimeout: defaultProduceTimeout, MaxInFlight: defaultMaxInFlight, MaxWait: defaultMaxWait, MaxWaiters: defaultMaxWaiters},
			},
			{
				name: "API only: no engine, no participant",
				args: append(slices.Clone(real), "--engine=false", "--api-addr", ":8080", "--api-token-file", tokens),
				want: APIConfig{Addr: ":8080", TokenFile: tokens, ProduceTimeout: defaultProduceTimeout, MaxInFlight: defaultMaxInFlight, MaxWait: defaultMaxWait, MaxWaiters: defaultMaxWaiters},
			},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c, err := testOptions().parseConfig(tc.args, mapEnv(tc.env))
				if err != nil {
					t.Fatal(err)
				}
				if c.API != tc.want {
					t.Errorf("API config %+v, want %+v", c.API, tc.want)
				}
			})
		}
	})

	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{
			name: "no authentication chosen",
			args: []string{"--api-addr", ":8080"},
			want: `--api-addr needs --api-token-file (bearer tokens, one a line), or --api-insecure-no-auth to serve the API without authentication`,
		},
		{
			name: "no authentication chosen, from the environment",
			env:  map[string]string{"KSAGA_API_ADDR": ":8080"},
			want: `KSAGA_API_ADDR needs --api-token-file (bearer tokens, one a line), or --api-insecure-no-auth to serve the API without authentication`,
		},
		{
			name: "both",
			args: []string{"--api-addr", ":8080", "--api-token-file", tokens, "--api-insecure-no-auth"},
			want: `--api-token-file and --api-insecure-no-auth exclude each other: keep the token file to require bearer tokens`,
		},
		{
			name: "token file without the API",
			args: []string{"--api-token-file", tokens},
			want: `--api-token-file applies only with --api-addr (the HTTP API is off without it)`,
		},
		{
			name: "bad address",
			args: []string{"--api-addr", "8080", "--api-insecure-no-auth"},
			want: `--api-addr "8080": not a host:port address (use host:port or :port, or "" to disable the HTTP API)`,
		},
		{
			name: "token file in a directory that does not exist",
			args: []string{"--api-addr", ":8080", "--api-token-file", filepath.Join(dir, "nodir", "tokens")},
			want: `--api-token-file ` + filepath.Join(dir, "nodir", "tokens") + `: stat ` + filepath.Join(dir, "nodir") + `: no such file or directory`,
		},
		{
			name: "token file is a directory",
			args: []string{"--api-addr", ":8080", "--api-token-file", dir},
			want: `--api-token-file ` + dir + ` is a directory: want the file of the tokens`,
		},
		{
			name: "certificate without key",
			args: []string{"--api-addr", ":8080", "--api-insecure-no-auth", "--api-tls-cert", pair.CertFile},
			want: `--api-tls-cert and --api-tls-key go together: set both or neither`,
		},
		{
			name: "key that does not match",
			args: []string{"--api-addr", ":8080", "--api-insecure-no-auth", "--api-tls-cert", pair.CertFile, "--api-tls-key", pair.CertFile},
			want: `--api-tls-cert ` + pair.CertFile + `, --api-tls-key ` + pair.CertFile + `: tls: found a certificate rather than a key in the PEM for the private key`,
		},
		{
			name: "produce timeout",
			args: []string{"--api-addr", ":8080", "--api-insecure-no-auth", "--api-produce-timeout", "1ms"},
			want: `--api-produce-timeout 1ms is too short: want a duration such as 5s`,
		},
		{
			name: "max in flight",
			args: []string{"--api-addr", ":8080", "--api-insecure-no-auth", "--api-max-in-flight", "0"},
			want: `--api-max-in-flight 0: want 1 or more requests at once (default 64)`,
		},
		{
			name: "max wait too long",
			args: []string{"--api-addr", ":8080", "--api-insecure-no-auth", "--api-max-wait", "11m"},
			want: `--api-max-wait 11m0s: want a duration from 0 (no waiting) to 10m0s (default 1m0s)`,
		},
		{
			name: "max wait negative",
			args: []string{"--api-addr", ":8080", "--api-insecure-no-auth", "--api-max-wait", "-1s"},
			want: `--api-max-wait -1s: want a duration from 0 (no waiting) to 10m0s (default 1m0s)`,
		},
		{
			name: "max waiters",
			args: []string{"--api-addr", ":8080", "--api-insecure-no-auth", "--api-max-waiters", "0"},
			want: `--api-max-waiters 0: want 1 or more waiting requests at once (default 1024)`,
		},
		{
			name: "max wait without the API",
			args: []string{"--api-max-wait", "5s"},
			want: `--api-max-wait applies only with --api-addr (the HTTP API is off without it)`,
		},
		{
			name: "max in flight without the API",
			env:  map[string]string{"KSAGA_API_MAX_IN_FLIGHT": "8"},
			want: `KSAGA_API_MAX_IN_FLIGHT applies only with --api-addr (the HTTP API is off without it)`,
		},
		{
			// The line is named by its number, never quoted: it may
			// hold a token.
			name: "a short token",
			args: []string{"--api-addr", ":8080", "--api-token-file", shortToken},
			want: `--api-token-file ` + shortToken + `: line 3: the token is 12 bytes long, shorter than the minimum of 32: make one with head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d =`,
		},
		{
			name: "a scope that is not one",
			args: []string{"--api-addr", ":8080", "--api-token-file", badScope},
			want: `--api-token-file ` + badScope + `: line 1: scope 2: the action is not start, read, compensate, resume or *`,
		},
		{
			name: "engine off and nothing else",
			args: append(slices.Clone(real), "--engine=false"),
			want: `--engine leaves nothing to run: name the participants to run with --participants`,
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

// testToken is a token of the minimum length.
const testToken = "0123456789abcdefghijABCDEFGHIJ-_"

func TestParseTokens(t *testing.T) {
	long := func(c string) string { return strings.Repeat(c, 32) }
	file := strings.Join([]string{
		"# tokens of the API",   // 1
		"",                      // 2
		"  " + long("a") + "  ", // 3: the old format: line-3, every scope
		"ci-checkout " + long("b") + " start:order read:order",             // 4
		"support	" + long("c") + "	read:* compensate:order resume:order\r", // 5
		"ops " + long("d") + " *",                                          // 6
		"has space",                                                        // 7: two words
		"short " + strings.Repeat("e", 31) + " *",                          // 8: too short
		"bad:name " + long("f") + " *",                                     // 9: not a name
		"x " + long("g") + " start",                                        // 10: not ACTION:TYPE
		"x " + long("h") + " delete:order",                                 // 11: no such action
		"x " + long("i") + " start:Order",                                  // 12: not a saga type
		"again " + long("b") + " *",                                        // 13: the token of line 4
		"ops " + long("j") + " *",                                          // 14: the name of line 6
		"y not:b64:" + long("k") + " *",                                    // 15: not a b64token
		"#" + long("l"),                                                    // 16: a comment
	}, "\n")
	entries, problems := parseTokens([]byte(file))
	type got struct {
		name   string
		scopes []scope
	}
	var names []got
	for _, e := range entries {
		names = append(names, got{e.p.name, e.p.scopes})
	}
	want := []got{
		{"line-3", nil},
		{"ci-checkout", []scope{{"start", "order"}, {"read", "order"}}},
		{"support", []scope{{"read", "*"}, {"compensate", "order"}, {"resume", "order"}}},
		{"ops", []scope{{"*", "*"}}},
	}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("tokens: got %v, want %v", names, want)
	}
	if len(entries) == 4 && entries[1].sum != sha256.Sum256([]byte(long("b"))) {
		t.Error("the sum of ci-checkout's token is not the SHA-256 of its token")
	}
	wantProblems := []string{
		"line 7: two words",
		"line 8: the token is 31 bytes long, shorter than the minimum of 32",
		"line 9: the name (first word) is not 1 to 64 characters",
		"line 10: scope 1: not ACTION:TYPE",
		"line 11: scope 1: the action is not start, read, compensate, resume or *",
		"line 12: scope 1: the saga type is not a saga type's name",
		"line 13: the token of line 4 again",
		"line 14: the name of line 6 again",
		"line 15: the token is not one word of letters, digits and -._~+/=",
	}
	if len(problems) != len(wantProblems) {
		t.Fatalf("problems: got %d %v, want %d", len(problems), problems, len(wantProblems))
	}
	for i, p := range problems {
		if !strings.HasPrefix(p.String(), wantProblems[i]) {
			t.Errorf("problem %d: got %q, want it to start with %q", i, p, wantProblems[i])
		}
		for _, c := range "bcdefghijk" {
			if strings.Contains(p.String(), long(string(c))[:8]) {
				t.Errorf("problem %q quotes a token", p)
			}
		}
	}
}

func TestPrincipalMay(t *testing.T) {
	p := &principal{name: "p", scopes: []scope{{"start", "order"}, {"read", "*"}, {"*", "trip"}}}
	for _, tc := range []struct {
		action, sagaType string
		want             bool
	}{
		{"start", "order", true},
		{"read", "order", true},
		{"read", "parcel", true},
		{"compensate", "order", false},
		{"start", "parcel", false},
		{"compensate", "trip", true},
	} {
		if got := p.may(tc.action, tc.sagaType); got != tc.want {
			t.Errorf("may(%s, %s): got %v, want %v", tc.action, tc.sagaType, got, tc.want)
		}
		if !anonymous.may(tc.action, tc.sagaType) {
			t.Errorf("anonymous may not %s %s, want every scope", tc.action, tc.sagaType)
		}
	}
}

func TestTokenSetReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ts := newTokenSet(path, log)
	if ts.lookup(testToken) != nil || ts.lookup("") != nil {
		t.Fatal("a missing file accepts a token")
	}
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		ts.load()
	}
	a, b := strings.Repeat("a", 32), strings.Repeat("b", 32)
	name := func(tok string) string {
		if p := ts.lookup(tok); p != nil {
			return p.name
		}
		return ""
	}
	write(a + "\nbob " + b + " read:*\nshort\n")
	for tok, want := range map[string]string{a: "line-1", b: "bob", a[:31]: "", a + "a": "", "": "", "short": "", "# x": ""} {
		if got := name(tok); got != want {
			t.Errorf("lookup(%q): got %q, want %q", tok, got, want)
		}
	}
	write("bob " + b + " read:*\n")
	if name(a) != "" || name(b) != "bob" {
		t.Error("a token removed from the file is still valid, or the one kept is not")
	}
	if err := os.Chmod(path, 0); err == nil && os.Getuid() != 0 {
		ts.load()
		if name(b) != "bob" {
			t.Error("an unreadable file revoked the tokens; want them kept")
		}
		_ = os.Chmod(path, 0o600)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	ts.load()
	if name(b) != "" {
		t.Error("a deleted file left its tokens valid")
	}
}

// TestAuthBackoff takes the bucket of one address down to empty with
// failed authentications: it must wait, another address need not, and a
// token comes back every authFailEvery.
func TestAuthBackoff(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	b := newAuthBackoff(func() time.Time { return now }, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for i := range authFailBurst {
		if w := b.wait("10.0.0.1"); w != 0 {
			t.Fatalf("after %d failures: wait %v, want 0", i, w)
		}
		b.failed("10.0.0.1")
	}
	if w := b.wait("10.0.0.1"); w != authFailEvery {
		t.Errorf("after %d failures: wait %v, want %v", authFailBurst, w, authFailEvery)
	}
	if w := b.wait("10.0.0.2"); w != 0 {
		t.Errorf("another address: wait %v, want 0", w)
	}
	now = now.Add(authFailEvery / 2)
	if w := b.wait("10.0.0.1"); w != authFailEvery/2 {
		t.Errorf("half a refill later: wait %v, want %v", w, authFailEvery/2)
	}
	now = now.Add(authFailEvery / 2)
	if w := b.wait("10.0.0.1"); w != 0 {
		t.Errorf("a refill later: wait %v, want 0", w)
	}
	b.failed("10.0.0.1")
	if w := b.wait("10.0.0.1"); w != authFailEvery {
		t.Errorf("one more failure: wait %v, want %v", w, authFailEvery)
	}
}

func TestClientAddr(t *testing.T) {
	for remote, want := range map[string]string{
		"192.0.2.7:5555":             "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:443": "2001:db8:1:2::/64",
		"[::ffff:192.0.2.7]:80":      "192.0.2.7",
		"not an address":             "not an address",
	} {
		r, _ := http.NewRequest("GET", "/", nil)
		r.RemoteAddr = remote
		if got := clientAddr(r); got != want {
			t.Errorf("clientAddr(%q): got %q, want %q", remote, got, want)
		}
	}
}

func TestBearer(t *testing.T) {
	for h, want := range map[string]string{
		"Bearer abc":   "abc",
		"bearer  abc ": "abc",
		"Basic abc":    "",
		"Bearer":       "",
		"Bearer ":      "",
		"":             "",
		"Bearerabc":    "",
	} {
		r, _ := http.NewRequest("GET", "/", nil)
		r.Header.Set("Authorization", h)
		got, ok := bearer(r)
		if got != want || ok != (want != "") {
			t.Errorf("bearer(%q) = %q, %v; want %q", h, got, ok, want)
		}
	}
}

func TestETagMatch(t *testing.T) {
	for _, tc := range []struct {
		header string
		want   bool
	}{
		{`"7"`, true}, {`W/"7"`, true}, {`"1", "7"`, true}, {`*`, true},
		{`"8"`, false}, {``, false}, {`7`, false}, {`"17"`, false},
	} {
		if got := etagMatch(tc.header, `"7"`); got != tc.want {
			t.Errorf("etagMatch(%q, \"7\") = %v, want %v", tc.header, got, tc.want)
		}
	}
}
