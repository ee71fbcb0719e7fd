package daemon

import (
	"crypto/sha256"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ksaga/ksaga/internal/tlstest"
)

// TestAPIFlags checks the --api-* flags: what they configure, and that a
// mistake exits 2 with one line naming the flag, before connecting.
func TestAPIFlags(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("secret-token\n"), 0o600); err != nil {
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
				want: APIConfig{Addr: ":8080", TokenFile: tokens, ProduceTimeout: defaultProduceTimeout},
			},
			{
				name: "from the environment, with TLS",
				env: map[string]string{"KSAGA_API_ADDR": ":8443", "KSAGA_API_INSECURE_NO_AUTH": "true",
					"KSAGA_API_TLS_CERT": pair.CertFile, "KSAGA_API_TLS_KEY": pair.KeyFile, "KSAGA_API_PRODUCE_TIMEOUT": "2s"},
				want: APIConfig{Addr: ":8443", InsecureNoAuth: true, TLSCert: pair.CertFile, TLSKey: pair.KeyFile, ProduceTimeout: 2 * time.Second},
			},
			{
				// An optional Secret that does not exist yet: 401 until
				// it does.
				name: "token file not there yet",
				args: []string{"--api-addr", ":8080", "--api-token-file", filepath.Join(dir, "later")},
				want: APIConfig{Addr: ":8080", TokenFile: filepath.Join(dir, "later"), ProduceTimeout: defaultProduceTimeout},
			},
			{
				name: "API only: no engine, no participant",
				args: append(slices.Clone(real), "--engine=false", "--api-addr", ":8080", "--api-token-file", tokens),
				want: APIConfig{Addr: ":8080", TokenFile: tokens, ProduceTimeout: defaultProduceTimeout},
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

func TestParseTokens(t *testing.T) {
	sums, skipped := parseTokens([]byte("# tokens of the API\n\n  abc-DEF_012.~+/==  \r\nhas space\n#abc\nnot:b64\nxyz\n"))
	want := [][sha256.Size]byte{sha256.Sum256([]byte("abc-DEF_012.~+/==")), sha256.Sum256([]byte("xyz"))}
	if !slices.Equal(sums, want) {
		t.Errorf("got %d sums, want those of abc-DEF_012.~+/== and xyz", len(sums))
	}
	if !slices.Equal(skipped, []int{4, 6}) {
		t.Errorf("skipped lines %v, want [4 6]", skipped)
	}
}

func TestTokenSetReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ts := newTokenSet(path, log)
	if ts.valid("a") || ts.valid("") {
		t.Fatal("a missing file accepts a token")
	}
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		ts.load()
	}
	write("aaaa\nbbbb\n")
	for tok, want := range map[string]bool{"aaaa": true, "bbbb": true, "aaa": false, "aaaab": false, "": false, "# x": false} {
		if got := ts.valid(tok); got != want {
			t.Errorf("valid(%q) = %v, want %v", tok, got, want)
		}
	}
	write("bbbb\n")
	if ts.valid("aaaa") || !ts.valid("bbbb") {
		t.Error("a token removed from the file is still valid, or the one kept is not")
	}
	if err := os.Chmod(path, 0); err == nil && os.Getuid() != 0 {
		ts.load()
		if !ts.valid("bbbb") {
			t.Error("an unreadable file revoked the tokens; want them kept")
		}
		_ = os.Chmod(path, 0o600)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	ts.load()
	if ts.valid("bbbb") {
		t.Error("a deleted file left its tokens valid")
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
