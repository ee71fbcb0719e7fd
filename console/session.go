package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Who may see and do what in the console is what the HTTP API's bearer
// tokens say: the user pastes a token once, on the login page; the console
// keeps its SHA-256 server-side, in a session, and gives the browser a
// cookie with the session's id only: 32 random bytes, HttpOnly, Secure,
// SameSite=Strict. Every request looks the token up again, so a token
// removed from the token file, or given other scopes, applies at once.
//
// Every POST carries the session's CSRF token in a hidden field, compared
// in constant time; a POST whose Origin is not the console's own, or whose
// Sec-Fetch-Site says another site sent it, is refused before that.

// Actions a scope may allow, as the token file names them. The console
// shows sagas of a type to read:<type>, compensates them and redrives
// their dead letters for compensate:<type> (the HTTP API has no redrive:
// redriving is acting on the sagas the dead letters name), and resumes
// them for resume:<type>.
const (
	ActionRead       = "read"
	ActionCompensate = "compensate"
	ActionResume     = "resume"
)

// Principal is who a token says the user is: its name (the by of the audit
// records of its actions) and what it may do.
type Principal struct {
	Name string
	// May reports whether the token may do action on sagas of sagaType;
	// nil means everything.
	May func(action, sagaType string) bool
}

func (p *Principal) may(action, sagaType string) bool {
	return p.May == nil || p.May(action, sagaType)
}

// Tokens finds the principal of a token. Lookup is given the token's
// SHA-256 and returns nil when no token has it; it must compare in
// constant time and be safe for concurrent use.
type Tokens interface {
	Lookup(sum [sha256.Size]byte) *Principal
}

// sessionCookie is the name of the session cookie.
const sessionCookie = "ksaga_console"

// maxSessions bounds the sessions kept; past it, the oldest goes.
const maxSessions = 10_000

type session struct {
	id      string
	sum     [sha256.Size]byte
	csrf    string
	expires time.Time
}

// sessions is the server-side session map. It is safe for concurrent use.
type sessions struct {
	ttl time.Duration
	now func() time.Time

	mu sync.Mutex
	m  map[string]*session
}

func newSessions(ttl time.Duration, now func() time.Time) *sessions {
	return &sessions{ttl: ttl, now: now, m: make(map[string]*session)}
}

// randomToken returns 32 random bytes in URL-safe base64.
func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// create starts a session for the token whose sum is sum.
func (s *sessions) create(sum [sha256.Size]byte) *session {
	now := s.now()
	ss := &session{id: randomToken(), sum: sum, csrf: randomToken(), expires: now.Add(s.ttl)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= maxSessions {
		var oldest *session
		for id, o := range s.m {
			if !o.expires.After(now) {
				delete(s.m, id)
			} else if oldest == nil || o.expires.Before(oldest.expires) {
				oldest = o
			}
		}
		if len(s.m) >= maxSessions && oldest != nil {
			delete(s.m, oldest.id)
		}
	}
	s.m[ss.id] = ss
	return ss
}

// get returns the session of id, nil when there is none or it expired.
func (s *sessions) get(id string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.m[id]
	if !ok {
		return nil
	}
	if !ss.expires.After(s.now()) {
		delete(s.m, id)
		return nil
	}
	return ss
}

func (s *sessions) delete(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
}

// setCookie gives the browser the session's id.
func (c *Console) setCookie(w http.ResponseWriter, ss *session) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: ss.id, Path: "/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode, Expires: ss.expires})
}

func clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
}

// user is the session and principal of a request.
type user struct {
	*Principal
	session *session
}

// userOf returns the request's user: nil without a valid session, or when
// its token is no longer in the token file.
func (c *Console) userOf(r *http.Request) *user {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil
	}
	ss := c.sessions.get(ck.Value)
	if ss == nil {
		return nil
	}
	p := c.cfg.Tokens.Lookup(ss.sum)
	if p == nil {
		c.sessions.delete(ss.id)
		return nil
	}
	return &user{Principal: p, session: ss}
}

// sameOrigin reports whether a state-changing request comes from the
// console's own pages: Sec-Fetch-Site, when the browser sends it, is
// same-origin, and Origin, when sent, is the console's own. A POST from a
// browser always carries one of them; a request with neither (curl) is
// judged by its CSRF token alone.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return u.Scheme == scheme && strings.EqualFold(u.Host, r.Host)
}

// checkCSRF reports whether a POST carries the session's CSRF token.
func checkCSRF(r *http.Request, ss *session) bool {
	got := r.PostFormValue("csrf")
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(ss.csrf)) == 1
}

// contentSecurityPolicy allows the console's own style sheet and nothing
// else to load or run: no script at all, inline or not, no frames, forms
// posting only to the console.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// secure sets the headers every answer carries.
func secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		// same-origin, not no-referrer: with no-referrer a browser sends
		// "Origin: null" on the console's own form posts.
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}
