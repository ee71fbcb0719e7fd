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
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/saga"
)

// reloadInterval is how often the API checks its token file and TLS files
// for changes. Kubernetes updates a mounted Secret within a minute or so;
// a second more does not matter.
const reloadInterval = time.Second

// minTokenBytes is the shortest bearer token the API accepts: 32
// characters, e.g. 24 random bytes in base64, 192 bits.
const minTokenBytes = 32

// Actions a token may be allowed, as the token file names them.
const (
	actionStart      = "start"
	actionRead       = "read"
	actionCompensate = "compensate"
	// actionResume resumes parked sagas; a token allowed to compensate
	// is not allowed to resume unless it says so (resume sends a step's
	// command again, compensate undoes the steps).
	actionResume = "resume"
)

// principal is who a request's token says the caller is: the token's name
// (logged, and the by of the audit records it causes) and what it may do.
type principal struct {
	name string
	// scopes are what the token may do; nil means everything (a token of
	// the one-token-a-line format, and --api-insecure-no-auth).
	scopes []scope
}

// scope allows action on sagas of sagaType; "*" stands for any.
type scope struct{ action, sagaType string }

// anonymous is the principal of every request with --api-insecure-no-auth.
var anonymous = &principal{name: "anonymous"}

// may reports whether p may do action on sagas of sagaType.
func (p *principal) may(action, sagaType string) bool {
	if p.scopes == nil {
		return true
	}
	for _, s := range p.scopes {
		if (s.action == "*" || s.action == action) && (s.sagaType == "*" || s.sagaType == sagaType) {
			return true
		}
	}
	return false
}

// tokenEntry is one token of the file: its SHA-256 and its principal.
type tokenEntry struct {
	sum [sha256.Size]byte
	p   *principal
}

// tokenSet is the set of bearer tokens the API accepts, read from a file
// and read again when the file changes. It is safe for concurrent use.
//
// The tokens are kept as SHA-256 sums: a request's token is hashed and
// compared with every sum in constant time, so neither the comparison nor
// its length tells a caller how much of a token was right.
type tokenSet struct {
	path    string
	log     *slog.Logger
	entries atomic.Pointer[[]tokenEntry]

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
	t.entries.Store(&[]tokenEntry{})
	t.load()
	return t
}

// load reads the file and replaces the tokens when its content changed.
// When the file cannot be read, the tokens it had stay, except when it no
// longer exists: a deleted file (a deleted Secret) revokes them all. A line
// that is not a valid token is logged (by number, never its content) and
// skipped; the others are served.
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
			t.entries.Store(&[]tokenEntry{})
			t.last, t.loaded = nil, false
		}
		return
	}
	t.lastErr = ""
	if t.loaded && bytes.Equal(b, t.last) {
		return
	}
	entries, problems := parseTokens(b)
	t.entries.Store(&entries)
	t.last, t.loaded = b, true
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.p.name
	}
	switch {
	case len(entries) == 0:
		t.log.Warn("HTTP API token file has no valid token: every request gets 401", "file", t.path)
	default:
		t.log.Info("HTTP API tokens loaded", "file", t.path, "tokens", len(entries), "names", strings.Join(names, ","))
	}
	for _, p := range problems {
		t.log.Error("HTTP API token file: line skipped: "+p.reason, "file", t.path, "line", p.line)
	}
}

// tokenProblem is a line of the token file that is not a valid token.
type tokenProblem struct {
	line   int
	reason string
}

func (p tokenProblem) String() string { return fmt.Sprintf("line %d: %s", p.line, p.reason) }

// tokenFormat says what a line of the token file is, for error messages.
const tokenFormat = "a line is NAME TOKEN SCOPE... (SCOPE: ACTION:TYPE, ACTION start, read, compensate, resume or *, TYPE a saga type or *; * alone is every scope), or a TOKEN alone (every scope, named line-<number>)"

// parseTokens parses a token file. Blank lines and lines that start with
// # are skipped. Every other line is one token, in one of two formats:
//
//	NAME TOKEN SCOPE...   a named token, allowed the scopes listed
//	TOKEN                 a token of every scope, named line-<number>
//
// NAME follows audit.ValidName; TOKEN is an RFC 6750 b64token of at least
// minTokenBytes; a SCOPE is ACTION:TYPE, where ACTION is start, read,
// compensate, resume or *, and TYPE a saga type or *; * alone is *:*. The second
// format is the file of one token a line that the API read before names
// and scopes: each such token may do everything, and is named after its
// line, so its name changes when lines are added above it.
//
// A line that is neither, a token or a name seen on an earlier line, is
// returned as a problem, and skipped. Problems never quote the line: it
// may hold a token.
func parseTokens(b []byte) (entries []tokenEntry, problems []tokenProblem) {
	seenSum := map[[sha256.Size]byte]int{}
	seenName := map[string]int{}
	for i, line := range strings.Split(string(b), "\n") {
		n := i + 1
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		bad := func(format string, a ...any) { problems = append(problems, tokenProblem{n, fmt.Sprintf(format, a...)}) }
		fields := strings.Fields(line)
		var name, token string
		var scopes []scope
		switch len(fields) {
		case 1:
			name, token = "line-"+strconv.Itoa(n), fields[0]
		case 2:
			bad("two words; %s", tokenFormat)
			continue
		default:
			name, token = fields[0], fields[1]
			if audit.ValidName(name) != nil {
				bad("the name (first word) is not %s", audit.NameRule)
				continue
			}
			ok := true
			for j, f := range fields[2:] {
				sc, err := parseScope(f)
				if err != nil {
					bad("scope %d: %v", j+1, err)
					ok = false
					break
				}
				scopes = append(scopes, sc)
			}
			if !ok {
				continue
			}
		}
		switch {
		case !isToken(token):
			bad("the token is not one word of letters, digits and -._~+/= (RFC 6750); %s", tokenFormat)
			continue
		case len(token) < minTokenBytes:
			bad("the token is %d bytes long, shorter than the minimum of %d: make one with head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d =", len(token), minTokenBytes)
			continue
		}
		sum := sha256.Sum256([]byte(token))
		if first, ok := seenSum[sum]; ok {
			bad("the token of line %d again: a token has one name", first)
			continue
		}
		if first, ok := seenName[name]; ok {
			bad("the name of line %d again: names are what the audit records and logs say", first)
			continue
		}
		seenSum[sum], seenName[name] = n, n
		entries = append(entries, tokenEntry{sum: sum, p: &principal{name: name, scopes: scopes}})
	}
	return entries, problems
}

// parseScope parses ACTION:TYPE, or * for every scope.
func parseScope(s string) (scope, error) {
	if s == "*" {
		return scope{"*", "*"}, nil
	}
	action, typ, ok := strings.Cut(s, ":")
	if !ok {
		return scope{}, errors.New("not ACTION:TYPE, such as read:order or start:*")
	}
	switch action {
	case actionStart, actionRead, actionCompensate, actionResume, "*":
	default:
		return scope{}, errors.New("the action is not start, read, compensate, resume or *")
	}
	if typ != "*" && !saga.ValidName(typ) {
		return scope{}, errors.New("the saga type is not a saga type's name (lower-case letters, digits and -) or *")
	}
	return scope{action, typ}, nil
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

// lookup returns the principal of token, or nil when the set does not hold
// it. It compares token's sum with every sum, without an early exit or a
// branch on the outcome, in constant time.
func (t *tokenSet) lookup(token string) *principal {
	sum := sha256.Sum256([]byte(token))
	entries := *t.entries.Load()
	match := -1
	for i := range entries {
		eq := subtle.ConstantTimeCompare(sum[:], entries[i].sum[:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return nil
	}
	return entries[match].p
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

// The backoff after failed authentications: each 401 takes one of
// authFailBurst tokens of the caller's address, one comes back every
// authFailEvery; an address with none left is answered 429 with
// Retry-After, whatever its token, until one is back. So a caller can try
// about ten tokens at once and then one every five seconds.
const (
	authFailBurst = 10
	authFailEvery = 5 * time.Second
	// authBackoffAddrs bounds the addresses remembered; past it, those
	// whose bucket is full again are forgotten, and if that is not
	// enough, all (a flood from many addresses gets a fresh burst each).
	authBackoffAddrs = 10000
)

// authBackoff holds a token bucket of failed authentications per client
// address (IPv4 address, or IPv6 /64). It is safe for concurrent use.
type authBackoff struct {
	now func() time.Time
	log *slog.Logger

	mu      sync.Mutex
	buckets map[string]*failBucket
}

type failBucket struct {
	tokens float64
	at     time.Time
}

func newAuthBackoff(now func() time.Time, log *slog.Logger) *authBackoff {
	return &authBackoff{now: now, log: log, buckets: make(map[string]*failBucket)}
}

// refill returns b's tokens at now.
func (b *failBucket) refill(now time.Time) float64 {
	return min(authFailBurst, b.tokens+float64(now.Sub(b.at))/float64(authFailEvery))
}

// wait returns how long the address must wait before it may try again: 0
// when it may now.
func (l *authBackoff) wait(addr string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[addr]
	if !ok {
		return 0
	}
	tokens := b.refill(l.now())
	if tokens >= 1 {
		return 0
	}
	return time.Duration((1 - tokens) * float64(authFailEvery))
}

// failed takes a token from the address's bucket.
func (l *authBackoff) failed(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b, ok := l.buckets[addr]
	if !ok {
		if len(l.buckets) >= authBackoffAddrs {
			l.sweep(now)
		}
		b = &failBucket{tokens: authFailBurst, at: now}
		l.buckets[addr] = b
	}
	b.tokens, b.at = b.refill(now)-1, now
	if b.tokens < 1 && b.tokens >= 0 {
		l.log.Warn("HTTP API: too many requests with a missing or invalid bearer token from one address: answering 429 for a while",
			"client", addr, "failures", authFailBurst, "retry_after", authFailEvery.String())
	}
}

// sweep forgets the addresses whose bucket is full again, or all when
// there are still too many. l.mu is held.
func (l *authBackoff) sweep(now time.Time) {
	for a, b := range l.buckets {
		if b.refill(now) >= authFailBurst {
			delete(l.buckets, a)
		}
	}
	if len(l.buckets) >= authBackoffAddrs {
		clear(l.buckets)
	}
}

// clientAddr is the address a request came from, as the backoff counts
// it: the IP of RemoteAddr, an IPv6 address cut to its /64 (what one host
// usually has). Behind a proxy, that is the proxy's.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
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
