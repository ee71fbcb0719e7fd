package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// reloadInterval is how often the API checks its token file and TLS files
// for changes. Kubernetes updates a mounted Secret within a minute or so;
// a second more does not matter.
const reloadInterval = time.Second

// tokenSet is the set of bearer tokens the API accepts, read from a file
// and read again when the file changes. It is safe for concurrent use.
//
// The tokens are kept as SHA-256 sums: a request's token is hashed and
// compared with every sum in constant time, so neither the comparison nor
// its length tells a caller how much of a token was right.
type tokenSet struct {
	path string
	log  *slog.Logger
	sums atomic.Pointer[[][sha256.Size]byte]

	// Owned by load's caller (the reload goroutine, or the constructor).
	last    []byte
	lastErr string
	loaded  bool
}

// newTokenSet reads path once. A file that does not exist yet is no token
// (every request gets 401) and a warning; other errors too, since the file
// was readable when the flags were checked.
func newTokenSet(path string, log *slog.Logger) *tokenSet {
	t := &tokenSet{path: path, log: log}
	t.sums.Store(&[][sha256.Size]byte{})
	t.load()
	return t
}

// load reads the file and replaces the tokens when its content changed.
// When the file cannot be read, the tokens it had stay, except when it no
// longer exists: a deleted file (a deleted Secret) revokes them all.
func (t *tokenSet) load() {
	b, err := os.ReadFile(t.path)
	if err != nil {
		if msg := err.Error(); msg != t.lastErr {
			t.lastErr = msg
			if errors.Is(err, fs.ErrNotExist) {
				t.log.Warn("HTTP API token file does not exist: every request gets 401 until it does", "file", t.path)
			} else {
				t.log.Error("cannot read the HTTP API token file; keeping the tokens read before", "file", t.path, "err", err)
			}
		}
		if errors.Is(err, fs.ErrNotExist) {
			t.sums.Store(&[][sha256.Size]byte{})
			t.last, t.loaded = nil, false
		}
		return
	}
	t.lastErr = ""
	if t.loaded && bytes.Equal(b, t.last) {
		return
	}
	sums, skipped := parseTokens(b)
	t.sums.Store(&sums)
	t.last, t.loaded = b, true
	switch {
	case len(sums) == 0:
		t.log.Warn("HTTP API token file has no token: every request gets 401", "file", t.path)
	default:
		t.log.Info("HTTP API tokens loaded", "file", t.path, "tokens", len(sums))
	}
	for _, line := range skipped {
		t.log.Warn("HTTP API token file: line skipped, a token is one word of letters, digits and -._~+/= (the line is not logged)", "file", t.path, "line", line)
	}
}

// parseTokens parses a token file: one token a line; blank lines and lines
// that start with # are skipped. It returns the tokens' sums and the
// numbers of the lines that are not a token (RFC 6750's b64token).
func parseTokens(b []byte) (sums [][sha256.Size]byte, skipped []int) {
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case !isToken(line):
			skipped = append(skipped, i+1)
		default:
			sums = append(sums, sha256.Sum256([]byte(line)))
		}
	}
	return sums, skipped
}

// isToken reports whether s is an RFC 6750 b64token:
// 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
func isToken(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for _, c := range []byte(body) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/':
		default:
			return false
		}
	}
	return true
}

// valid reports whether token is one of the set's, comparing it with every
// token (no early exit) in constant time.
func (t *tokenSet) valid(token string) bool {
	sum := sha256.Sum256([]byte(token))
	ok := 0
	for _, s := range *t.sums.Load() {
		ok |= subtle.ConstantTimeCompare(sum[:], s[:])
	}
	return ok == 1
}

// bearer returns the token of an "Authorization: Bearer <token>" header, and
// whether the request had one.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// certReloader serves the API's TLS certificate, read again when its files
// change. It is safe for concurrent use.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	cert              atomic.Pointer[tls.Certificate]

	mu       sync.Mutex // guards stamp
	stamp    string
	lastFail string
}

func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	c := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	c.cert.Store(&cert)
	c.stamp = c.fileStamp()
	return c, nil
}

// fileStamp identifies the files' current versions: their sizes and
// modification times.
func (c *certReloader) fileStamp() string {
	var b strings.Builder
	for _, f := range []string{c.certFile, c.keyFile} {
		if fi, err := os.Stat(f); err == nil {
			fmt.Fprintf(&b, "%d/%d", fi.ModTime().UnixNano(), fi.Size())
		}
		b.WriteByte('|')
	}
	return b.String()
}

// load reads the pair again when the files changed. A pair that does not
// load (a half-written update) keeps the certificate served so far.
func (c *certReloader) load() {
	c.mu.Lock()
	defer c.mu.Unlock()
	stamp := c.fileStamp()
	if stamp == c.stamp {
		return
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		if err.Error() != c.lastFail {
			c.lastFail = err.Error()
			c.log.Error("cannot reload the HTTP API's TLS certificate; serving the previous one", "cert", c.certFile, "key", c.keyFile, "err", err)
		}
		return
	}
	c.stamp, c.lastFail = stamp, ""
	c.cert.Store(&cert)
	c.log.Info("HTTP API TLS certificate reloaded", "cert", c.certFile)
}

func (c *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cert.Load(), nil
}

// reload calls each of loads every interval until ctx is done.
func reload(ctx context.Context, interval time.Duration, loads ...func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, l := range loads {
				l()
			}
		}
	}
}
