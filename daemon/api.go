package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/internal/inbox"
	"github.com/ksaga/ksaga/internal/sagadef"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga"
)

// The HTTP API (--api-addr) starts sagas, reads their state and asks them to
// compensate, for callers without a Kafka client:
//
//	POST /v1/sagas/{type}/{id}             start: 202 once the request is stored in Kafka
//	GET  /v1/sagas/{type}/{id}             the saga's state from the Redis view; ETag = version
//	POST /v1/sagas/{type}/{id}/compensate  ask a running saga to compensate: 202 once stored, audited
//	POST /v1/sagas/{type}/{id}/resume      ask a parked saga to go on: 202 once stored, audited
//	GET  /v1/openapi.json                  the OpenAPI 3 document of all this (no token needed)
//
// POST and GET /v1/sagas/{type}/{id} take ?wait=30s: the answer waits, at
// most that long, for the saga's end (api_wait.go).
//
// openapi.json is the contract; api_test.go checks that the handlers answer
// exactly the statuses it documents. Every answer is JSON, the router's own
// (404 for another path, 405 for another method) included; the API never
// redirects.
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
//
// Hostile input. Saga ids follow an allow-list (checkID); a body is read
// into one buffer of its length, canonicalized in one pass (which refuses
// duplicate keys and invalid UTF-8), checked for field names that match the
// data type's only when case is ignored (checkFieldNames; encoding/json
// would take "ORDER_ID" for order_id), and decoded into the saga's own data
// type (saga.Definition.Decode, as the engine will), never into a generic
// tree. At most --api-max-in-flight requests are served at once (429 past
// it), so the API's memory is bounded by that times a few bodies.
//
// Compensations and resumptions. A compensate or resume request reads the
// saga from the Redis view first: 404 when the view does not have it, 409
// when the engine would drop the request (a compensate for a saga neither
// running nor parked, a resume for one that is not parked), 503 when Redis
// does not answer, and nothing is produced then (the engine would
// dead-letter a message for an unknown saga, reason unknown-saga, and page
// the on-call). An accepted one is written with its audit record (package
// audit, as sagactl saga compensate and saga resume do), by the token's
// name, in one Kafka transaction.

//go:embed openapi.json
var openAPIDoc []byte

// Limits of request bodies and ids.
const (
	// apiMaxStartBytes is the engine's default limit of an inbox value
	// (orchestrator.MaxValueBytes): a larger start would be dead-lettered.
	apiMaxStartBytes = 256 << 10
	// apiMaxCompensateBytes bounds a compensate or resume request's
	// body; its reason travels in a header.
	apiMaxCompensateBytes = 16 << 10
	// apiMaxReasonBytes bounds a compensate or resume request's reason,
	// which goes into a header, the saga's state and events, and its
	// audit record.
	apiMaxReasonBytes = 1024
	// apiRetryAfter is the Retry-After of a 503, in seconds.
	apiRetryAfter = "2"
	// apiBusyRetryAfter is the Retry-After of a 429 past
	// --api-max-in-flight, in seconds.
	apiBusyRetryAfter = "1"
	// apiRedisTimeout bounds a read of the Redis view.
	apiRedisTimeout = 2 * time.Second
)

// apiSaga is a saga type the API serves.
type apiSaga struct {
	def *saga.Definition
	// partitions is the inbox's partition count, which places a saga's
	// home partition and Redis key. It never changes.
	partitions int32
	// auditPartitions is the partition count of saga.<type>.audit.
	auditPartitions int32
	// data is the saga's data type (T of saga.New[T]), whose JSON field
	// names a start's body must spell as the type does; nil when it
	// cannot be told.
	data reflect.Type
}

// api is the HTTP API's handlers.
type api struct {
	sagas map[string]apiSaga
	rdb   redis.UniversalClient
	kc    *kgo.Client
	// comp writes compensations and resumptions with their audit
	// records.
	comp *compensator
	// waits serves ?wait=.
	waits *waiters
	// tool is the audit records' Tool: "<daemon name>-api".
	tool string
	// tokens is nil with --api-insecure-no-auth.
	tokens  *tokenSet
	backoff *authBackoff
	// inFlight holds one element per request being served; its capacity
	// is --api-max-in-flight.
	inFlight chan struct{}
	timeout  time.Duration
	now      func() time.Time
	log      *slog.Logger
	requests *prometheus.CounterVec
}

// Answers of 503, which say nothing of the cause (logged instead).
const (
	msgStoreUnavailable = "the saga store is unavailable; retry later"
)

// accepted is the answer to a stored start or compensate request.
type accepted struct {
	SagaID string `json:"saga_id"`
	Type   string `json:"type"`
	Status string `json:"status"`
}

// start handles POST /v1/sagas/{type}/{id}; with pw, it waits for the
// saga's end before answering (api_wait.go).
func (a *api) start(w http.ResponseWriter, r *http.Request, p *principal, s apiSaga, id string, pw *pending) {
	body, ok := readBody(w, r, apiMaxStartBytes)
	if !ok {
		return
	}
	value, err := message.Canonical(body)
	body = nil // the canonical form replaces it: let the collector have it
	var dup *message.DuplicateKeyError
	switch {
	case errors.As(err, &dup):
		writeError(w, http.StatusBadRequest, fmt.Sprintf("the body has the key %s twice in one object (at offset %d): keys must be unique", quoteShort(dup.Key), dup.Offset))
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
	if err := checkFieldNames(value, s.data); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	// The engine decodes the stored value so, and checks that data that
	// names its saga id names this one: what passes here passes there.
	data, err := s.def.Decode(value)
	if err == nil {
		err = sagadef.Of(s.def).CheckID(data, id)
	}
	if err != nil {
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
		if pw != nil {
			a.awaitStart(w, r, s, pw, st, ok202)
			return
		}
		a.acceptedAt(w, r, ok202)
		return
	case st != nil:
		writeError(w, http.StatusConflict, fmt.Sprintf("saga %s/%s was started with other data (it is %s); a saga id starts one saga", s.def.Name(), id, st.Status))
		return
	}
	// The start request package client and the outbox relay produce too,
	// with the caller's W3C trace context when the request carries one.
	rec := inbox.Start(s.def.Name(), id, s.partitions, value)
	rec.Headers = append(rec.Headers, traceHeaders(r)...)
	if err := a.produce(r.Context(), rec); err != nil {
		a.log.Warn("HTTP API: start not stored in Kafka", "saga", s.def.Name(), "id", id, "token", p.name, "err", err)
		unavailable(w, "Kafka did not store the start request in time; retry with the same body after Retry-After")
		return
	}
	a.log.Debug("HTTP API: start stored", "saga", s.def.Name(), "id", id, "token", p.name)
	if pw != nil {
		a.awaitStart(w, r, s, pw, nil, ok202)
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

// compensateRequest is the optional body of POST .../compensate and
// .../resume.
type compensateRequest struct {
	Reason string `json:"reason"`
}

// operate handles POST /v1/sagas/{type}/{id}/compensate and, with resume
// set, POST .../resume: the same checks, and the same audited transaction
// (audit.NewCompensation) of a Compensate or a Resume message.
func (a *api) operate(w http.ResponseWriter, r *http.Request, p *principal, s apiSaga, id string, resume bool) {
	verb := "compensate"
	if resume {
		verb = "resume"
	}
	body, ok := readBody(w, r, apiMaxCompensateBytes)
	if !ok {
		return
	}
	var req compensateRequest
	if len(bytes.TrimSpace(body)) > 0 {
		canon, err := message.Canonical(body)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf(`the body is not {"reason": "..."}: %v`, err))
			return
		}
		dec := json.NewDecoder(bytes.NewReader(canon))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf(`the body is not {"reason": "..."}: %v`, err))
			return
		}
		if err := checkFieldNames(canon, reflect.TypeFor[compensateRequest]()); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	if err := checkReason(req.Reason); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	// Up front, from the view: the engine would dead-letter a message
	// for a saga it does not have (unknown-saga, which pages), and drop a
	// Compensate for a saga that is neither running nor parked, a Resume
	// for one that is not parked.
	st, _, err := a.load(r.Context(), s, id)
	switch {
	case err != nil:
		a.log.Warn("HTTP API: cannot read the Redis view before a "+verb+" request; refusing it", "saga", s.def.Name(), "id", id, "err", err)
		unavailable(w, msgStoreUnavailable)
		return
	case st == nil:
		writeError(w, http.StatusNotFound, notFound(s, id))
		return
	}
	if msg := refusal(s, id, st.Status, resume); msg != "" {
		writeError(w, http.StatusConflict, msg)
		return
	}
	comp, err := audit.NewCompensation(audit.Compensate{SagaType: s.def.Name(), SagaID: id, InboxPartitions: s.partitions, AuditPartitions: s.auditPartitions,
		By: p.name, Note: req.Reason, Tool: a.tool, At: a.now(), Headers: traceHeaders(r), Resume: resume})
	if err != nil {
		// Only a principal whose name is not valid, which parseTokens
		// does not let through.
		a.log.Error("HTTP API: cannot build the "+verb+" request", "saga", s.def.Name(), "id", id, "token", p.name, "err", err)
		unavailable(w, "the "+verb+" request cannot be built; retry later")
		return
	}
	if err := a.comp.write(r.Context(), comp.Request, comp.Audit); err != nil {
		a.log.Warn("HTTP API: "+verb+" request not stored in Kafka", "saga", s.def.Name(), "id", id, "token", p.name, "err", err)
		unavailable(w, "Kafka did not store the "+verb+" request in time; retry after Retry-After")
		return
	}
	a.log.Info("HTTP API: "+verb+" requested", "saga", s.def.Name(), "id", id, "token", p.name, "reason", req.Reason, "run", comp.Record.Run)
	writeJSON(w, http.StatusAccepted, accepted{SagaID: id, Type: s.def.Name(), Status: "accepted"})
}

// refusal says why the engine would drop a compensate (resume false) or
// resume request for a saga in status, or is empty when it would take it.
func refusal(s apiSaga, id, status string, resume bool) string {
	name := s.def.Name()
	switch {
	case resume && status == message.StatusParked,
		!resume && (status == message.StatusRunning || status == message.StatusParked):
		return ""
	case resume && (status == message.StatusRunning || status == message.StatusCompensating):
		return fmt.Sprintf("saga %s/%s is %s, not parked: there is nothing to resume", name, id, status)
	case resume:
		return fmt.Sprintf("saga %s/%s has ended (%s): there is nothing to resume", name, id, status)
	case status == message.StatusCompensating:
		return fmt.Sprintf("saga %s/%s is compensating already: nothing to do", name, id)
	default:
		return fmt.Sprintf("saga %s/%s has ended (%s): there is nothing to compensate", name, id, status)
	}
}

func notFound(s apiSaga, id string) string {
	return fmt.Sprintf("saga %s/%s not found: no such saga, or its start request is not handled yet", s.def.Name(), id)
}

// sagaView is the answer to GET /v1/sagas/{type}/{id}.
type sagaView struct {
	SagaID string `json:"saga_id"`
	Type   string `json:"type"`
	// Status is running, parked, compensating, completed, compensated or
	// failed.
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

// get handles GET /v1/sagas/{type}/{id}; with pw, it waits for the saga's
// end before answering (api_wait.go).
func (a *api) get(w http.ResponseWriter, r *http.Request, s apiSaga, id string, pw *pending) {
	st, version, err := a.load(r.Context(), s, id)
	switch {
	case err != nil:
		a.log.Warn("HTTP API: cannot read the Redis view", "saga", s.def.Name(), "id", id, "err", err)
		unavailable(w, msgStoreUnavailable)
		return
	case st == nil:
		writeError(w, http.StatusNotFound, notFound(s, id))
		return
	case pw != nil:
		a.awaitGet(w, r, s, pw, st, version)
		return
	}
	etag := `"` + strconv.FormatInt(version, 10) + `"`
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "no-cache")
	if etagMatch(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	writeJSON(w, http.StatusOK, viewOf(s, st, version))
}

// viewOf is st, of version, as GET answers it.
func viewOf(s apiSaga, st *orchestrator.State, version int64) sagaView {
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
	return v
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

// traceHeaders returns the request's W3C trace context as record headers.
// The engine checks the traceparent's shape itself; this bounds the sizes.
func traceHeaders(r *http.Request) []kgo.RecordHeader {
	var out []kgo.RecordHeader
	if tp := r.Header.Get("traceparent"); len(tp) == 55 {
		out = append(out, kgo.RecordHeader{Key: message.HeaderTraceParent, Value: []byte(tp)})
		if ts := r.Header.Get("tracestate"); ts != "" && len(ts) <= 512 {
			out = append(out, kgo.RecordHeader{Key: message.HeaderTraceState, Value: []byte(ts)})
		}
	}
	return out
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

// quoteShort quotes s for an error message, cut to 64 bytes: a path
// segment can be long and hostile, and %q escapes control characters.
func quoteShort(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "…"
	}
	return strconv.Quote(s)
}
