package daemon

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// apiRoutes are the API's operations, as openapi.json names them: method
// and path. ksaga_api_requests_total's route label is the path.
const (
	routeSaga       = "/v1/sagas/{type}/{id}"
	routeCompensate = "/v1/sagas/{type}/{id}/compensate"
	routeResume     = "/v1/sagas/{type}/{id}/resume"
	routeOpenAPI    = "/v1/openapi.json"
	// routeUnmatched labels the answers to requests that match no
	// operation: 404 (another path) and 405 (another method).
	routeUnmatched = "unmatched"
)

// newAPIMetrics registers ksaga_api_requests_total{method,route,code},
// with the series alerts use created at zero, ksaga_api_in_flight and
// ksaga_api_in_flight_limit, and ksaga_api_waiters and
// ksaga_api_waiters_limit (the slots of --api-max-waiters).
func newAPIMetrics(reg prometheus.Registerer, inFlight, waiting chan struct{}) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ksaga_api_requests_total",
		Help: "HTTP API requests answered, by method, route (the OpenAPI path; unmatched for others) and status code.",
	}, []string{"method", "route", "code"})
	for _, op := range []struct {
		method, route string
		codes         []int
	}{
		{http.MethodPost, routeSaga, []int{202, 401, 429, 503}},
		{http.MethodGet, routeSaga, []int{200, 401, 429, 503}},
		{http.MethodPost, routeCompensate, []int{202, 401, 429, 503}},
		{http.MethodPost, routeResume, []int{202, 401, 429, 503}},
	} {
		for _, code := range op.codes {
			c.WithLabelValues(op.method, op.route, strconv.Itoa(code))
		}
	}
	cs := []prometheus.Collector{c,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ksaga_api_in_flight",
			Help: "HTTP API requests being served now; past ksaga_api_in_flight_limit they are answered 429.",
		}, func() float64 { return float64(len(inFlight)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ksaga_api_in_flight_limit",
			Help: "The HTTP API's --api-max-in-flight.",
		}, func() float64 { return float64(cap(inFlight)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ksaga_api_waiters",
			Help: "HTTP API requests waiting for a saga's outcome (?wait=) now; past ksaga_api_waiters_limit they are answered 429.",
		}, func() float64 { return float64(len(waiting)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ksaga_api_waiters_limit",
			Help: "The HTTP API's --api-max-waiters.",
		}, func() float64 { return float64(cap(waiting)) }),
	}
	for _, col := range cs {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// handler returns the API: its router, counting every answer.
func (a *api) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		method, route := a.route(sw, r)
		a.requests.WithLabelValues(method, route, strconv.Itoa(sw.code)).Inc()
	})
}

// route answers r and returns the method and route labels it is counted
// under. It parses the path itself rather than through http.ServeMux,
// which cleans paths and redirects, and answers 404 and 405 in plain text:
// a segment is unescaped after the path is split, so %2F is part of an id
// (and refused by checkID), never a separator.
func (a *api) route(w http.ResponseWriter, r *http.Request) (method, route string) {
	method = r.Method
	if !slices.Contains([]string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodHead, http.MethodOptions}, method) {
		method = "other"
	}
	path := r.URL.EscapedPath()
	var typSeg, idSeg string
	var allow []string
	if path == routeOpenAPI {
		route, allow = routeOpenAPI, []string{http.MethodGet}
	} else if rest, ok := strings.CutPrefix(path, "/v1/sagas/"); ok {
		parts := strings.Split(rest, "/")
		switch {
		case len(parts) == 2:
			route, allow = routeSaga, []string{http.MethodGet, http.MethodPost}
		case len(parts) == 3 && parts[2] == "compensate":
			route, allow = routeCompensate, []string{http.MethodPost}
		case len(parts) == 3 && parts[2] == "resume":
			route, allow = routeResume, []string{http.MethodPost}
		}
		if len(parts) >= 2 {
			typSeg, idSeg = parts[0], parts[1]
		}
	}
	switch {
	case route == "":
		writeError(w, http.StatusNotFound, "no such endpoint: the API serves "+routeSaga+" (GET, POST), "+routeCompensate+" (POST), "+routeResume+" (POST) and "+routeOpenAPI+" (GET)")
		return method, routeUnmatched
	case !slices.Contains(allow, r.Method):
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed on %s: use %s", method, route, strings.Join(allow, " or ")))
		return method, routeUnmatched
	case route == routeOpenAPI:
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPIDoc)
		return method, route
	}
	// At most cap(a.inFlight) requests at once: a request that finds
	// them all taken is answered at once rather than queued, so that
	// neither memory nor latency grows with the callers. A request that
	// waits for an outcome gives its slot back while it waits (release),
	// holding one of --api-max-waiters instead.
	var release func()
	select {
	case a.inFlight <- struct{}{}:
		held := true
		release = func() {
			if held {
				held = false
				<-a.inFlight
			}
		}
		defer release()
	default:
		w.Header().Set("Retry-After", apiBusyRetryAfter)
		// Answer before the body is read (net/http would otherwise
		// read it first, holding the answer back while the caller
		// sends it), then read what the caller sends, up to a start's
		// limit, into a shared scratch buffer: a connection closed with
		// a body unread is reset, and the caller may lose the answer.
		rc := http.NewResponseController(w)
		_ = rc.EnableFullDuplex()
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf("the API is serving as many requests as it may at once (%d): retry after %s s", cap(a.inFlight), apiBusyRetryAfter))
		_ = rc.Flush()
		if !strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
			// (A caller that waits for 100 Continue sends no body
			// after a final answer: there is nothing to read.)
			_, _ = io.CopyN(io.Discard, r.Body, apiMaxStartBytes+1)
		}
		return method, route
	}
	a.sagaRequest(w, r, route, typSeg, idSeg, release)
	return method, route
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	code  int
	wrote bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.code, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// sagaRequest serves a request of the routes under /v1/sagas, in the order
// a caller would fix its mistakes: who (401, or 429 after too many
// failures), the body's media type (415), the saga type (404), what the
// token may do (403), the id and ?wait= (400), a waiter's slot (429), then
// the operation's own checks. release gives the request's in-flight slot
// back (see route); it may be called more than once.
func (a *api) sagaRequest(w http.ResponseWriter, r *http.Request, route, typSeg, idSeg string, release func()) {
	p, ok := a.authenticate(w, r)
	if !ok {
		return
	}
	action := actionRead
	switch {
	case route == routeCompensate:
		action = actionCompensate
	case route == routeResume:
		action = actionResume
	case r.Method == http.MethodPost:
		action = actionStart
	}
	if r.Method == http.MethodPost {
		if err := checkContentType(r); err != nil {
			writeError(w, http.StatusUnsupportedMediaType, err.Error())
			return
		}
	}
	typ, err := url.PathUnescape(typSeg)
	s, known := a.sagas[typ]
	if err != nil || !known {
		names := make([]string, 0, len(a.sagas))
		for n := range a.sagas {
			names = append(names, n)
		}
		slices.Sort(names)
		writeError(w, http.StatusNotFound, fmt.Sprintf("unknown saga type %s (this daemon runs %s)", quoteShort(typ), strings.Join(names, ", ")))
		return
	}
	if !p.may(action, typ) {
		a.log.Warn("HTTP API: request refused: the token may not do this", "token", p.name, "action", action, "saga", typ)
		writeError(w, http.StatusForbidden, fmt.Sprintf("token %s may not %s sagas of type %s: its scopes in the token file do not include %s:%s", p.name, action, typ, action, typ))
		return
	}
	id, err := url.PathUnescape(idSeg)
	if err == nil {
		err = checkID(id)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	var pw *pending
	if route == routeSaga {
		if pw, ok = a.waits.begin(w, r, s, id, release); !ok {
			return
		}
		defer pw.end()
	}
	switch action {
	case actionStart:
		a.start(w, r, p, s, id, pw)
	case actionRead:
		a.get(w, r, s, id, pw)
	case actionCompensate, actionResume:
		a.operate(w, r, p, s, id, action == actionResume)
	}
}

// authenticate returns the principal of the request's bearer token, or
// answers 401 (no token, or one the file does not hold) or 429 (the
// caller's address failed too often lately). With --api-insecure-no-auth
// every request is anonymous.
func (a *api) authenticate(w http.ResponseWriter, r *http.Request) (*principal, bool) {
	if a.tokens == nil {
		return anonymous, true
	}
	addr := clientAddr(r)
	if wait := a.backoff.wait(addr); wait > 0 {
		secs := strconv.Itoa(int((wait + time.Second - 1) / time.Second))
		w.Header().Set("Retry-After", secs)
		writeError(w, http.StatusTooManyRequests, "too many requests from this address had a missing or invalid bearer token: retry after "+secs+" s with a valid one")
		return nil, false
	}
	token, ok := bearer(r)
	if !ok {
		a.backoff.failed(addr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="ksaga"`)
		writeError(w, http.StatusUnauthorized, "missing bearer token: send Authorization: Bearer <token>")
		return nil, false
	}
	p := a.tokens.lookup(token)
	if p == nil {
		a.backoff.failed(addr)
		w.Header().Set("WWW-Authenticate", `Bearer realm="ksaga", error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, "invalid bearer token")
		return nil, false
	}
	return p, true
}

// apiError is the body of every answer that is not a success.
type apiError struct {
	Error string `json:"error"`
}

// writeJSON answers code with v as JSON, with its Content-Length, so that
// the caller knows it has the whole answer even while the handler goes on
// (draining a body it refused).
func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"the answer could not be encoded"}`)
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, apiError{Error: msg})
}

// unavailable answers 503 with Retry-After. msg says what the caller can
// do; the cause (an address, Redis's or Kafka's error) is for the log.
func unavailable(w http.ResponseWriter, msg string) {
	w.Header().Set("Retry-After", apiRetryAfter)
	writeError(w, http.StatusServiceUnavailable, msg)
}
