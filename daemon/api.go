package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga"
)

// The HTTP API (--api-addr) starts sagas, reads their state and asks them to
// compensate, for callers without a Kafka client:
//
//	POST /v1/sagas/{type}/{id}             start: 202 once the request is stored in Kafka
//	GET  /v1/sagas/{type}/{id}             the saga's state from the Redis view; ETag = version
//	POST /v1/sagas/{type}/{id}/compensate  ask the saga to compensate: 202 once stored
//	GET  /v1/openapi.json                  the OpenAPI 3 document of all this (no token needed)
//
// openapi.json is the contract; api_test.go checks that the handlers answer
// exactly the statuses it documents.
//
// A start is the same record package client produces: key = id, on the
// saga's home partition, header ksaga-message-type StartSaga, message id
// start-<id>, the JSON body as the value. The API answers 202 only after
// Kafka acknowledged it (acks=all, idempotent producer), and 503 with
// Retry-After when Kafka does not within --api-produce-timeout: a 202 is
// never an unstored request, a 503 may be a stored one, and retrying it is
// safe.
//
// Idempotence. The engine recognises a start it has handled by the SHA-256
// of its value, and drops a second one with the same value. So that a retry
// whose JSON is written differently (key order, spaces, escapes) is still
// the same start, the API stores the body in canonical form
// (message.Canonical: keys sorted, no insignificant space, numbers as
// written), the form package client and the outboxes write: a start made
// through any of them and retried through another is the same start. A
// body that has no canonical form (an object with a key twice, invalid
// UTF-8) is answered 400. Before producing, it looks the
// saga up in the Redis view: when the saga is there, the same data answers
// 202 again without producing and other data 409. When the saga is not in
// the view yet (its start is still in the inbox, or the view lags, or Redis
// is down), the API produces; a duplicate is then dropped by the engine, and
// a conflicting start is dead-lettered by it (reason conflicting-start) while
// the caller got 202. Each saga is started once whatever the retries.

//go:embed openapi.json
var openAPIDoc []byte

// Limits of request bodies and ids.
const (
	// apiMaxStartBytes is the engine's default limit of an inbox value
	// (orchestrator.MaxValueBytes): a larger start would be dead-lettered.
	apiMaxStartBytes = 256 << 10
	// apiMaxCompensateBytes bounds a compensate request's body; its
	// reason travels in a header.
	apiMaxCompensateBytes = 16 << 10
	// apiMaxIDBytes bounds a saga id, which travels in the key and a
	// header of every record of the saga.
	apiMaxIDBytes = 1024
	// apiRetryAfter is the Retry-After of a 503, in seconds.
	apiRetryAfter = "2"
	// apiRedisTimeout bounds a read of the Redis view.
	apiRedisTimeout = 2 * time.Second
)

// apiSaga is a saga type the API serves.
type apiSaga struct {
	def *saga.Definition
	// partitions is the inbox's partition count, which places a saga's
	// home partition and Redis key. It never changes.
	partitions int32
}

// api is the HTTP API's handlers.
type api struct {
	sagas map[string]apiSaga
	rdb   redis.UniversalClient
	kc    *kgo.Client
	// tokens is nil with --api-insecure-no-auth.
	tokens   *tokenSet
	timeout  time.Duration
	log      *slog.Logger
	requests *prometheus.CounterVec
}

// newAPIRequests registers ksaga_api_requests_total{method,route,code}.
func newAPIRequests(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ksaga_api_requests_total",
		Help: "HTTP API requests answered, by method, route (the OpenAPI path; unmatched for others) and status code.",
	}, []string{"method", "route", "code"})
	if err := reg.Register(c); err != nil {
		return nil, err
	}
	return c, nil
}

// handler returns the API's routes.
func (a *api) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /v1/sagas/{type}/{id}", a.authed(a.start))
	mux.Handle("GET /v1/sagas/{type}/{id}", a.authed(a.get))
	mux.Handle("POST /v1/sagas/{type}/{id}/compensate", a.authed(a.compensate))
	mux.HandleFunc("GET /v1/openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPIDoc)
	})
	return a.counted(mux)
}

// counted counts every answer in ksaga_api_requests_total.
func (a *api) counted(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		mux.ServeHTTP(sw, r)
		// The mux set r.Pattern ("POST /v1/sagas/{type}/{id}") when a
		// route matched.
		method, route, ok := strings.Cut(r.Pattern, " ")
		if !ok {
			method, route = r.Method, "unmatched"
			if !slices.Contains([]string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodHead}, method) {
				method = "other"
			}
		}
		a.requests.WithLabelValues(method, route, strconv.Itoa(sw.code)).Inc()
	})
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

// authed checks the request's bearer token, unless the API runs without
// authentication.
func (a *api) authed(h http.HandlerFunc) http.Handler {
	if a.tokens == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := bearer(r)
		switch {
		case !ok:
			w.Header().Set("WWW-Authenticate", `Bearer realm="ksaga"`)
			writeError(w, http.StatusUnauthorized, "missing bearer token: send Authorization: Bearer <token>")
		case !a.tokens.valid(token):
			w.Header().Set("WWW-Authenticate", `Bearer realm="ksaga", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "invalid bearer token")
		default:
			h(w, r)
		}
	})
}

// apiError is the body of every answer that is not a success.
type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, apiError{Error: msg})
}

// unavailable answers 503 with Retry-After.
func unavailable(w http.ResponseWriter, msg string) {
	w.Header().Set("Retry-After", apiRetryAfter)
	writeError(w, http.StatusServiceUnavailable, msg)
}

// target resolves the request's saga type and id, or answers 404 (an
// unknown type) or 400 (an id that cannot be a key).
func (a *api) target(w http.ResponseWriter, r *http.Request) (apiSaga, string, bool) {
	typ, id := r.PathValue("type"), r.PathValue("id")
	s, ok := a.sagas[typ]
	if !ok {
		names := make([]string, 0, len(a.sagas))
		for n := range a.sagas {
			names = append(names, n)
		}
		slices.Sort(names)
		writeError(w, http.StatusNotFound, fmt.Sprintf("unknown saga type %q (this daemon runs %s)", typ, strings.Join(names, ", ")))
		return s, "", false
	}
	switch {
	case !utf8.ValidString(id):
		writeError(w, http.StatusBadRequest, "the saga id is not valid UTF-8")
		return s, "", false
	case len(id) > apiMaxIDBytes:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("the saga id is %d bytes long, the limit is %d", len(id), apiMaxIDBytes))
		return s, "", false
	}
	return s, id, true
}

// readBody reads a request body of at most limit bytes, or answers 413.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	tooLarge := func() ([]byte, bool) {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes", limit))
		return nil, false
	}
	if r.ContentLength > limit {
		return tooLarge()
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tl *http.MaxBytesError
	switch {
	case errors.As(err, &tl):
		return tooLarge()
	case err != nil:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("cannot read the body: %v", err))
		return nil, false
	}
	return b, true
}

// accepted is the answer to a stored start or compensate request.
type accepted struct {
	SagaID string `json:"saga_id"`
	Type   string `json:"type"`
	Status string `json:"status"`
}

// start handles POST /v1/sagas/{type}/{id}.
func (a *api) start(w http.ResponseWriter, r *http.Request) {
	s, id, ok := a.target(w, r)
	if !ok {
		return
	}
	body, ok := readBody(w, r, apiMaxStartBytes)
	if !ok {
		return
	}
	value, err := message.Canonical(body)
	var dup *message.DuplicateKeyError
	switch {
	case errors.As(err, &dup):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("the body has the key %q twice in one object (at offset %d): keys must be unique", dup.Key, dup.Offset))
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("the body is not one JSON value: %v", err))
		return
	}
	if len(value) > apiMaxStartBytes {
		// Possible only when canonicalizing grew it (a raw U+2028 or
		// U+2029 is escaped, from 3 bytes to 6).
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is larger than %d bytes", apiMaxStartBytes))
		return
	}
	// The engine decodes the stored value so: what passes here passes
	// there.
	if _, err := s.def.Decode(value); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ok202 := accepted{SagaID: id, Type: s.def.Name(), Status: "accepted"}
	st, _, err := a.load(r.Context(), s, id)
	switch {
	case err != nil:
		// The view is a courtesy here: the engine dedupes starts
		// itself. Go on without it.
		a.log.Warn("HTTP API: cannot read the Redis view before a start; producing it anyway", "saga", s.def.Name(), "id", id, "err", err)
	case st != nil && sameStart(st, value):
		a.acceptedAt(w, r, ok202)
		return
	case st != nil:
		writeError(w, http.StatusConflict, fmt.Sprintf("saga %s/%s was started with other data (it is %s); a saga id starts one saga", s.def.Name(), id, st.Status))
		return
	}
	rec := a.record(r, s, id, message.TypeStartSaga, "start-"+id, value, "")
	if err := a.produce(r.Context(), rec); err != nil {
		a.log.Warn("HTTP API: start not stored in Kafka", "saga", s.def.Name(), "id", id, "err", err)
		unavailable(w, "Kafka did not store the start request: "+err.Error()+"; retry with the same body")
		return
	}
	a.acceptedAt(w, r, ok202)
}

func (a *api) acceptedAt(w http.ResponseWriter, r *http.Request, v accepted) {
	w.Header().Set("Location", "/v1/sagas/"+url.PathEscape(v.Type)+"/"+url.PathEscape(v.SagaID))
	writeJSON(w, http.StatusAccepted, v)
}

// sameStart reports whether value, in canonical form, starts the saga that
// st is: the same bytes (a start made through this API, package client or
// an outbox), or the same JSON value written otherwise (a Kafka record
// written by hand, or by a client older than message.Canonical).
func sameStart(st *orchestrator.State, value []byte) bool {
	sum := sha256.Sum256(value)
	if st.StartHash == hex.EncodeToString(sum[:]) {
		return true
	}
	stored, err := message.Canonical(st.Data)
	return err == nil && bytes.Equal(stored, value)
}

// compensateRequest is the optional body of POST .../compensate.
type compensateRequest struct {
	Reason string `json:"reason"`
}

// compensate handles POST /v1/sagas/{type}/{id}/compensate.
func (a *api) compensate(w http.ResponseWriter, r *http.Request) {
	s, id, ok := a.target(w, r)
	if !ok {
		return
	}
	body, ok := readBody(w, r, apiMaxCompensateBytes)
	if !ok {
		return
	}
	var req compensateRequest
	if len(bytes.TrimSpace(body)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf(`the body is not {"reason": "..."}: %v`, err))
			return
		}
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			writeError(w, http.StatusBadRequest, "the body has data after its JSON object")
			return
		}
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	rec := a.record(r, s, id, message.TypeCompensate, "compensate-"+id+"-"+hex.EncodeToString(b[:]), nil, req.Reason)
	if err := a.produce(r.Context(), rec); err != nil {
		a.log.Warn("HTTP API: compensate request not stored in Kafka", "saga", s.def.Name(), "id", id, "err", err)
		unavailable(w, "Kafka did not store the compensate request: "+err.Error())
		return
	}
	writeJSON(w, http.StatusAccepted, accepted{SagaID: id, Type: s.def.Name(), Status: "accepted"})
}

// sagaView is the answer to GET /v1/sagas/{type}/{id}.
type sagaView struct {
	SagaID string `json:"saga_id"`
	Type   string `json:"type"`
	// Status is running, compensating, completed, compensated or failed.
	Status string `json:"status"`
	// Step is the current step (while compensating: the one that
	// failed), StepIndex its index.
	Step      string `json:"step"`
	StepIndex int    `json:"step_index"`
	// Undoing is the step being compensated; Undone those compensated.
	Undoing string   `json:"undoing,omitempty"`
	Undone  []string `json:"undone,omitempty"`
	// Attempt counts the sends of the command the saga waits on,
	// Deadline is when the current one times out.
	Attempt  int        `json:"attempt,omitempty"`
	Deadline *time.Time `json:"deadline,omitempty"`
	Reason   string     `json:"reason,omitempty"`
	// UndoFailures counts the failed tries of the current compensation;
	// LastError is the last error of a local step's UndoLocal.
	UndoFailures int    `json:"undo_failures,omitempty"`
	LastError    string `json:"last_error,omitempty"`
	// Version grows by one with every change; it is the ETag.
	Version   int64           `json:"version"`
	CreatedAt time.Time       `json:"created_at"`
	UpdatedAt time.Time       `json:"updated_at"`
	Data      json.RawMessage `json:"data"`
}

// get handles GET /v1/sagas/{type}/{id}.
func (a *api) get(w http.ResponseWriter, r *http.Request) {
	s, id, ok := a.target(w, r)
	if !ok {
		return
	}
	st, version, err := a.load(r.Context(), s, id)
	switch {
	case err != nil:
		a.log.Warn("HTTP API: cannot read the Redis view", "saga", s.def.Name(), "id", id, "err", err)
		unavailable(w, "cannot read the saga's state from Redis: "+err.Error())
		return
	case st == nil:
		writeError(w, http.StatusNotFound, fmt.Sprintf("saga %s/%s not found: no such saga, or its start request is not handled yet", s.def.Name(), id))
		return
	}
	etag := `"` + strconv.FormatInt(version, 10) + `"`
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "no-cache")
	if etagMatch(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	steps := s.def.Steps()
	name := func(i int) string {
		if i >= 0 && i < len(steps) {
			return steps[i].Name
		}
		return ""
	}
	v := sagaView{SagaID: st.ID, Type: s.def.Name(), Status: st.Status, Step: name(st.Step), StepIndex: st.Step,
		Undoing: name(st.Undoing), Attempt: st.Attempt, Reason: st.Reason, UndoFailures: st.UndoFailures, LastError: st.LastError, Version: version,
		CreatedAt: st.Created, UpdatedAt: st.Updated, Data: st.Data}
	for _, i := range st.Undone {
		v.Undone = append(v.Undone, name(i))
	}
	if st.Deadline > 0 {
		d := time.UnixMilli(st.Deadline).UTC()
		v.Deadline = &d
	}
	writeJSON(w, http.StatusOK, v)
}

// etagMatch reports whether an If-None-Match header matches etag (weak
// comparison, as RFC 9110 asks for If-None-Match).
func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}

// load reads a saga's state and version from the Redis view; a saga the
// view does not have is nil and no error.
func (a *api) load(ctx context.Context, s apiSaga, id string) (*orchestrator.State, int64, error) {
	key := orchestrator.StateKey(s.def.Name(), message.HomePartition(id, s.partitions), id)
	ctx, cancel := context.WithTimeout(ctx, apiRedisTimeout)
	defer cancel()
	vals, err := a.rdb.HMGet(ctx, key, "version", "state").Result()
	if err != nil {
		return nil, 0, fmt.Errorf("HMGET %s: %w", key, err)
	}
	raw, ok := vals[1].(string)
	if !ok {
		return nil, 0, nil
	}
	var st orchestrator.State
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		return nil, 0, fmt.Errorf("the state at %s is not the engine's JSON: %w", key, err)
	}
	version := st.Version
	if v, ok := vals[0].(string); ok {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			version = n
		}
	}
	return &st, version, nil
}

// record builds an inbox record as package client does, with the caller's
// W3C trace context when the request carries one.
func (a *api) record(r *http.Request, s apiSaga, id, typ, msgID string, value []byte, reason string) *kgo.Record {
	hdr := func(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }
	rec := &kgo.Record{
		Topic: message.Inbox(s.def.Name()), Partition: message.HomePartition(id, s.partitions), Key: []byte(id), Value: value,
		Headers: []kgo.RecordHeader{
			hdr(message.HeaderSagaID, id),
			hdr(message.HeaderSagaType, s.def.Name()),
			hdr(message.HeaderMessageType, typ),
			hdr(message.HeaderMessageID, msgID),
		},
	}
	if reason != "" {
		rec.Headers = append(rec.Headers, hdr(message.HeaderReason, reason))
	}
	// The engine checks the traceparent's shape itself; bound the sizes.
	if tp := r.Header.Get("traceparent"); len(tp) == 55 {
		rec.Headers = append(rec.Headers, hdr(message.HeaderTraceParent, tp))
		if ts := r.Header.Get("tracestate"); ts != "" && len(ts) <= 512 {
			rec.Headers = append(rec.Headers, hdr(message.HeaderTraceState, ts))
		}
	}
	return rec
}

// errNoAck is the error of a produce that Kafka did not acknowledge in time.
var errNoAck = errors.New("no acknowledgement from Kafka in time")

// produce produces rec and waits for Kafka's acknowledgement (acks=all) at
// most a.timeout. A nil error means the record is stored; an error leaves
// it unknown (the record may still be written later).
func (a *api) produce(ctx context.Context, rec *kgo.Record) error {
	// Not the request's context: a caller that hangs up must not cancel
	// the batch its record shares with other callers' records (kgo fails
	// a batch by its first record's context).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.timeout)
	defer cancel()
	done := make(chan error, 1)
	a.kc.Produce(ctx, rec, func(_ *kgo.Record, err error) { done <- err })
	select {
	case err := <-done:
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w (%v)", errNoAck, a.timeout)
		}
		return err
	case <-ctx.Done():
		// kgo may hold the record longer (it is in flight and cannot be
		// failed safely): answer now; the promise's send does not block.
		return fmt.Errorf("%w (%v)", errNoAck, a.timeout)
	}
}
