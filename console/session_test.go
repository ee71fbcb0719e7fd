package console

import (
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestSessionsExpire(t *testing.T) {
	now := time.Unix(1000, 0)
	s := newSessions(time.Hour, func() time.Time { return now })
	ss := s.create(sha256.Sum256([]byte("t")))
	if len(ss.id) < 40 || ss.csrf == ss.id {
		t.Fatalf("session id %q, csrf %q: want 32 random bytes each", ss.id, ss.csrf)
	}
	if s.get(ss.id) != ss {
		t.Fatal("a new session is not found")
	}
	now = now.Add(time.Hour)
	if s.get(ss.id) != nil {
		t.Error("a session is found after its expiry")
	}
	if len(s.m) != 0 {
		t.Error("an expired session is kept")
	}
}

func TestSameOrigin(t *testing.T) {
	for _, c := range []struct {
		name string
		hdr  map[string]string
		want bool
	}{
		{"no header (not a browser)", nil, true},
		{"same origin", map[string]string{"Origin": "http://console.example:8081", "Sec-Fetch-Site": "same-origin"}, true},
		{"another host", map[string]string{"Origin": "http://evil.example"}, false},
		{"another port", map[string]string{"Origin": "http://console.example:9999"}, false},
		{"another scheme", map[string]string{"Origin": "https://console.example:8081"}, false},
		{"null origin", map[string]string{"Origin": "null"}, false},
		{"same site, other origin", map[string]string{"Sec-Fetch-Site": "same-site"}, false},
		{"cross site", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "http://console.example:8081"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "http://console.example:8081/logout", nil)
			for k, v := range c.hdr {
				r.Header.Set(k, v)
			}
			if got := sameOrigin(r); got != c.want {
				t.Errorf("got %v, want %v", got, c.want)
			}
		})
	}
}

func TestSafeNext(t *testing.T) {
	for in, want := range map[string]string{
		"/sagas/order/o-1": "/sagas/order/o-1", "": "/", "https://evil.example/": "/", "//evil.example/": "/",
		"/\\evil.example": "/", "/login?next=/x": "/", "sagas": "/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCheckNote(t *testing.T) {
	for _, c := range []struct {
		note string
		ok   bool
	}{
		{"customer cancelled, INC-7", true},
		{"tab\tok", true},
		{"", false},
		{strings.Repeat("x", 1025), false},
		{"line\nbreak", false},
		{"esc\x1b[31m", false},
		{"bidi \u202e", false},
	} {
		if err := checkNote(c.note); (err == nil) != c.ok {
			t.Errorf("checkNote(%q) = %v, want ok %v", c.note, err, c.ok)
		}
	}
}

func TestSecureHeaders(t *testing.T) {
	rec := httptest.NewRecorder()
	secure(http.NotFoundHandler()).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	csp := rec.Header().Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'self'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q has no %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("Content-Security-Policy %q allows something unsafe", csp)
	}
	if rec.Header().Get("X-Content-Type-Options") != "nosniff" || rec.Header().Get("X-Frame-Options") != "DENY" {
		t.Errorf("headers %v", rec.Header())
	}
}
