package dlq_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
)

// dltHeaders are the headers New adds, each of which must appear exactly once.
var dltHeaders = []string{
	dlq.HeaderOriginalTopic,
	dlq.HeaderOriginalPartition,
	dlq.HeaderOriginalOffset,
	dlq.HeaderOriginalTimestamp,
	dlq.HeaderOriginalConsumerGroup,
	dlq.HeaderExceptionFQCN,
	dlq.HeaderExceptionMessage,
	dlq.HeaderAttempts,
	dlq.HeaderFirstFailure,
	dlq.HeaderLastFailure,
	dlq.HeaderReason,
}

// syntaxError returns the *json.SyntaxError that encoding/json itself makes.
func syntaxError(t testing.TB) error {
	t.Helper()
	var v any
	err := json.Unmarshal([]byte(`{"order_id":`), &v)
	var se *json.SyntaxError
	if !errors.As(err, &se) {
		t.Fatalf("json.Unmarshal of truncated JSON: got %T (%v), want *json.SyntaxError", err, err)
	}
	return err
}

// headerValues returns the values of every header named key, in order.
func headerValues(r *kgo.Record, key string) [][]byte {
	var out [][]byte
	for _, h := range r.Headers {
		if h.Key == key {
			out = append(out, h.Value)
		}
	}
	return out
}

// header returns the only value of the header named key, failing the test
// when it is missing or repeated.
func header(t *testing.T, r *kgo.Record, key string) []byte {
	t.Helper()
	vs := headerValues(r, key)
	if len(vs) != 1 {
		t.Fatalf("header %s: got %d values, want 1", key, len(vs))
	}
	return vs[0]
}

func cloneHeaders(hs []kgo.RecordHeader) []kgo.RecordHeader {
	out := make([]kgo.RecordHeader, len(hs))
	for i, h := range hs {
		out[i] = kgo.RecordHeader{Key: h.Key, Value: bytes.Clone(h.Value)}
	}
	return out
}

// fmtHeaders formats headers as key=value pairs for failure messages.
func fmtHeaders(hs []kgo.RecordHeader) string {
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = fmt.Sprintf("%s=%q", h.Key, h.Value)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func equalHeaders(a, b []kgo.RecordHeader) bool {
	return slices.EqualFunc(a, b, func(x, y kgo.RecordHeader) bool {
		return x.Key == y.Key && bytes.Equal(x.Value, y.Value)
	})
}

func TestNewParseRoundTrip(t *testing.T) {
	first := time.Date(2025, 3, 1, 10, 0, 0, 123456789, time.FixedZone("CET", 3600))
	last := first.Add(7*time.Second + 42*time.Nanosecond)
	// Kafka timestamps are milliseconds.
	ts := time.UnixMilli(1740819600123)

	tests := []struct {
		name     string
		src      *kgo.Record
		failure  dlq.Failure
		wantType string
		wantMsg  string
	}{
		{
			name: "start request with a wrapped json syntax error",
			src: &kgo.Record{
				Topic: message.Inbox("order"), Partition: 3, Offset: 4711, Timestamp: ts,
				Key:   []byte("o-1"),
				Value: []byte(`{"order_id":`),
				Headers: []kgo.RecordHeader{
					{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
					{Key: message.HeaderMessageID, Value: []byte("m-1")},
					{Key: message.HeaderTraceParent, Value: []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")},
				},
			},
			failure: dlq.Failure{
				Group: "ksaga-order", Err: fmt.Errorf("decode start request: %w", syntaxError(t)),
				Reason: "undecodable", Attempts: 1, First: first, Last: first,
			},
			wantType: "*json.SyntaxError",
			wantMsg:  "decode start request: unexpected end of JSON input",
		},
		{
			name: "exhausted retries of a plain error",
			src: &kgo.Record{
				Topic: message.Inbox("order"), Partition: 0, Offset: 0, Timestamp: ts,
				Key:   []byte("o-2"),
				Value: []byte(`{"order_id":"o-2"}`),
				Headers: []kgo.RecordHeader{
					{Key: message.HeaderMessageType, Value: []byte(message.TypeTimeout)},
					{Key: message.HeaderStep, Value: []byte("complete-order")},
				},
			},
			failure: dlq.Failure{
				Group: "ksaga-order", Err: errors.New("orders store: connection refused"),
				Reason: "retries-exhausted", Attempts: 3, First: first, Last: last,
			},
			wantType: "*errors.errorString",
			wantMsg:  "orders store: connection refused",
		},
		{
			name: "largest partition and offset, no headers, nil key",
			src: &kgo.Record{
				Topic: "saga.trip.inbox", Partition: math.MaxInt32, Offset: math.MaxInt64 - 1, Timestamp: ts,
				Value: []byte("not json"),
			},
			failure: dlq.Failure{
				Group: "ksaga-trip", Err: fmt.Errorf("a: %w", fmt.Errorf("b: %w", syntaxError(t))),
				Reason: "undecodable", Attempts: 1, First: first, Last: first,
			},
			wantType: "*json.SyntaxError",
			wantMsg:  "a: b: unexpected end of JSON input",
		},
		{
			name: "nil error",
			src: &kgo.Record{
				Topic: message.Inbox("order"), Partition: 1, Offset: 9, Timestamp: ts,
				Key: []byte("o-3"), Value: []byte(`{}`),
				Headers: []kgo.RecordHeader{{Key: message.HeaderMessageType, Value: []byte(message.TypeReply)}},
			},
			failure:  dlq.Failure{Group: "g", Reason: "manual", Attempts: 0, First: first, Last: last},
			wantType: "",
			wantMsg:  "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srcHeaders := cloneHeaders(tt.src.Headers)
			dlt := message.DLT("order")

			rec := dlq.New(tt.src, dlt, tt.failure)

			if !equalHeaders(tt.src.Headers, srcHeaders) {
				t.Errorf("New modified src headers: got %s, want %s", fmtHeaders(tt.src.Headers), fmtHeaders(srcHeaders))
			}
			if rec.Topic != dlt {
				t.Errorf("topic: got %q, want %q", rec.Topic, dlt)
			}
			if !bytes.Equal(rec.Key, tt.src.Key) {
				t.Errorf("key: got %q, want %q", rec.Key, tt.src.Key)
			}
			if !bytes.Equal(rec.Value, tt.src.Value) {
				t.Errorf("value: got %q, want %q", rec.Value, tt.src.Value)
			}
			// The original headers come first, unchanged and in order.
			if n := len(tt.src.Headers); len(rec.Headers) < n || !equalHeaders(rec.Headers[:n], tt.src.Headers) {
				t.Errorf("headers: got %s, want them to start with %s", fmtHeaders(rec.Headers), fmtHeaders(tt.src.Headers))
			}
			if got, want := len(rec.Headers), len(tt.src.Headers)+len(dltHeaders); got != want {
				t.Errorf("header count: got %d, want %d", got, want)
			}

			// The raw encodings that Spring's tools rely on.
			raw := []struct {
				key  string
				want []byte
			}{
				{dlq.HeaderOriginalTopic, []byte(tt.src.Topic)},
				{dlq.HeaderOriginalPartition, binary.BigEndian.AppendUint32(nil, uint32(tt.src.Partition))},
				{dlq.HeaderOriginalOffset, binary.BigEndian.AppendUint64(nil, uint64(tt.src.Offset))},
				{dlq.HeaderOriginalTimestamp, binary.BigEndian.AppendUint64(nil, uint64(tt.src.Timestamp.UnixMilli()))},
				{dlq.HeaderOriginalConsumerGroup, []byte(tt.failure.Group)},
				{dlq.HeaderExceptionFQCN, []byte(tt.wantType)},
				{dlq.HeaderExceptionMessage, []byte(tt.wantMsg)},
				{dlq.HeaderAttempts, []byte(strconv.Itoa(tt.failure.Attempts))},
				{dlq.HeaderFirstFailure, []byte(tt.failure.First.UTC().Format(time.RFC3339Nano))},
				{dlq.HeaderLastFailure, []byte(tt.failure.Last.UTC().Format(time.RFC3339Nano))},
				{dlq.HeaderReason, []byte(tt.failure.Reason)},
			}
			for _, h := range raw {
				if got := header(t, rec, h.key); !bytes.Equal(got, h.want) {
					t.Errorf("header %s: got %x (%q), want %x (%q)", h.key, got, got, h.want, h.want)
				}
			}
			if got := header(t, rec, dlq.HeaderOriginalPartition); len(got) != 4 {
				t.Errorf("partition header: got %d bytes, want 4 (int32)", len(got))
			}
			for _, key := range []string{dlq.HeaderOriginalOffset, dlq.HeaderOriginalTimestamp} {
				if got := header(t, rec, key); len(got) != 8 {
					t.Errorf("%s: got %d bytes, want 8 (int64)", key, len(got))
				}
			}

			info, err := dlq.Parse(rec)
			if err != nil {
				t.Fatalf("Parse: got error %v, want nil", err)
			}
			if info.Topic != tt.src.Topic {
				t.Errorf("Topic: got %q, want %q", info.Topic, tt.src.Topic)
			}
			if info.Partition != tt.src.Partition {
				t.Errorf("Partition: got %d, want %d", info.Partition, tt.src.Partition)
			}
			if info.Offset != tt.src.Offset {
				t.Errorf("Offset: got %d, want %d", info.Offset, tt.src.Offset)
			}
			if !info.Timestamp.Equal(tt.src.Timestamp) {
				t.Errorf("Timestamp: got %v, want %v", info.Timestamp, tt.src.Timestamp)
			}
			if info.Group != tt.failure.Group {
				t.Errorf("Group: got %q, want %q", info.Group, tt.failure.Group)
			}
			if info.ErrorType != tt.wantType {
				t.Errorf("ErrorType: got %q, want %q", info.ErrorType, tt.wantType)
			}
			if info.ErrorMessage != tt.wantMsg {
				t.Errorf("ErrorMessage: got %q, want %q", info.ErrorMessage, tt.wantMsg)
			}
			if info.Reason != tt.failure.Reason {
				t.Errorf("Reason: got %q, want %q", info.Reason, tt.failure.Reason)
			}
			if info.Attempts != tt.failure.Attempts {
				t.Errorf("Attempts: got %d, want %d", info.Attempts, tt.failure.Attempts)
			}
			if !info.First.Equal(tt.failure.First) {
				t.Errorf("First: got %v, want %v", info.First, tt.failure.First)
			}
			if !info.Last.Equal(tt.failure.Last) {
				t.Errorf("Last: got %v, want %v", info.Last, tt.failure.Last)
			}

			orig := info.Original
			if orig == nil {
				t.Fatal("Original: got nil, want the original record")
			}
			if orig.Topic != tt.src.Topic {
				t.Errorf("Original.Topic: got %q, want %q", orig.Topic, tt.src.Topic)
			}
			if !bytes.Equal(orig.Key, tt.src.Key) {
				t.Errorf("Original.Key: got %q, want %q", orig.Key, tt.src.Key)
			}
			if !bytes.Equal(orig.Value, tt.src.Value) {
				t.Errorf("Original.Value: got %q, want %q", orig.Value, tt.src.Value)
			}
			if !equalHeaders(orig.Headers, tt.src.Headers) {
				t.Errorf("Original.Headers: got %s, want %s", fmtHeaders(orig.Headers), fmtHeaders(tt.src.Headers))
			}
		})
	}
}

// TestNewOriginalReasonHeader: a failure reply carries its own
// ksaga-reason (PAYMENT_DECLINED…); dead-lettering it must keep that header
// for a redrive, apart from the dead-letter reason.
func TestNewOriginalReasonHeader(t *testing.T) {
	src := &kgo.Record{
		Topic: message.Inbox("order"), Partition: 2, Offset: 17, Timestamp: time.UnixMilli(1),
		Key:   []byte("o-1"),
		Value: []byte(`{}`),
		Headers: []kgo.RecordHeader{
			{Key: message.HeaderMessageType, Value: []byte(message.TypeReply)},
			{Key: message.HeaderOutcome, Value: []byte(message.OutcomeFailure)},
			{Key: message.HeaderReason, Value: []byte("PAYMENT_DECLINED")},
		},
	}
	info, err := dlq.Parse(dlq.New(src, message.DLT("order"), dlq.Failure{Reason: "retries-exhausted", Attempts: 3}))
	if err != nil {
		t.Fatalf("Parse: got error %v, want nil", err)
	}
	if !equalHeaders(info.Original.Headers, src.Headers) {
		t.Errorf("Original.Headers: got %s, want %s", fmtHeaders(info.Original.Headers), fmtHeaders(src.Headers))
	}
	if info.Reason != "retries-exhausted" {
		t.Errorf("Reason: got %q, want retries-exhausted", info.Reason)
	}
}

func TestNewReDeadLetter(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	src := &kgo.Record{
		Topic: message.Inbox("order"), Partition: 1, Offset: 5, Timestamp: time.UnixMilli(1000),
		Key: []byte("o-1"), Value: []byte(`{"order_id":"o-1"}`),
		Headers: []kgo.RecordHeader{
			{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
			{Key: message.HeaderMessageID, Value: []byte("m-1")},
		},
	}
	first := dlq.New(src, message.DLT("order"), dlq.Failure{
		Group: "ksaga-order", Err: errors.New("first"), Reason: "undecodable", Attempts: 1, First: t0, Last: t0,
	})
	// As consumed from the dead-letter topic.
	first.Partition, first.Offset, first.Timestamp = 0, 99, time.UnixMilli(2000)

	tests := []struct {
		name string
		in   *kgo.Record
	}{
		{"record from the dead-letter topic", first},
		{"dead-lettered twice", dlq.New(first, "elsewhere", dlq.Failure{Reason: "x", Attempts: 9})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			again := dlq.New(tt.in, message.DLT("order"), dlq.Failure{
				Group: "sagactl", Err: errors.New("second"), Reason: "retries-exhausted", Attempts: 3,
				First: t0.Add(time.Minute), Last: t0.Add(2 * time.Minute),
			})
			for _, key := range dltHeaders {
				if n := len(headerValues(again, key)); n != 1 {
					t.Errorf("header %s: got %d values, want 1", key, n)
				}
			}
			if got, want := len(again.Headers), len(src.Headers)+len(dltHeaders); got != want {
				t.Errorf("header count: got %d, want %d", got, want)
			}
			info, err := dlq.Parse(again)
			if err != nil {
				t.Fatalf("Parse: got error %v, want nil", err)
			}
			// The newest failure wins.
			if info.Topic != tt.in.Topic || info.Partition != tt.in.Partition || info.Offset != tt.in.Offset {
				t.Errorf("original: got %s/%d/%d, want %s/%d/%d",
					info.Topic, info.Partition, info.Offset, tt.in.Topic, tt.in.Partition, tt.in.Offset)
			}
			if info.Reason != "retries-exhausted" || info.Attempts != 3 || info.ErrorMessage != "second" || info.Group != "sagactl" {
				t.Errorf("failure: got reason %q attempts %d message %q group %q, want retries-exhausted 3 second sagactl",
					info.Reason, info.Attempts, info.ErrorMessage, info.Group)
			}
			if !equalHeaders(info.Original.Headers, src.Headers) {
				t.Errorf("Original.Headers: got %s, want %s", fmtHeaders(info.Original.Headers), fmtHeaders(src.Headers))
			}
		})
	}
}

func TestNewTruncatesExceptionMessage(t *testing.T) {
	tests := []struct {
		name    string
		msgLen  int
		wantLen int
	}{
		{"short", 10, 10},
		{"exactly the limit", dlq.MaxExceptionMessage, dlq.MaxExceptionMessage},
		{"one over the limit", dlq.MaxExceptionMessage + 1, dlq.MaxExceptionMessage},
		{"huge", 1 << 20, dlq.MaxExceptionMessage},
	}
	src := &kgo.Record{Topic: message.Inbox("order"), Key: []byte("o-1")}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := strings.Repeat("x", tt.msgLen)
			rec := dlq.New(src, message.DLT("order"), dlq.Failure{Err: errors.New(msg)})
			got := header(t, rec, dlq.HeaderExceptionMessage)
			if len(got) != tt.wantLen {
				t.Errorf("exception message: got %d bytes, want %d", len(got), tt.wantLen)
			}
			if !strings.HasPrefix(msg, string(got)) {
				t.Errorf("exception message: got a value that is not a prefix of the error message")
			}
			info, err := dlq.Parse(rec)
			if err != nil {
				t.Fatalf("Parse: got error %v, want nil", err)
			}
			if len(info.ErrorMessage) != tt.wantLen {
				t.Errorf("Parse: ErrorMessage is %d bytes, want %d", len(info.ErrorMessage), tt.wantLen)
			}
		})
	}
}

func TestParseNotDLQ(t *testing.T) {
	valid := dlq.New(&kgo.Record{Topic: message.Inbox("order"), Partition: 1, Offset: 2, Key: []byte("o-1")},
		message.DLT("order"), dlq.Failure{Reason: "undecodable"})
	without := func(key string) *kgo.Record {
		r := *valid
		r.Headers = slices.DeleteFunc(slices.Clone(valid.Headers), func(h kgo.RecordHeader) bool { return h.Key == key })
		return &r
	}
	with := func(key string, v []byte) *kgo.Record {
		r := *valid
		r.Headers = slices.Clone(valid.Headers)
		for i := range r.Headers {
			if r.Headers[i].Key == key {
				r.Headers[i].Value = v
			}
		}
		return &r
	}
	tests := []struct {
		name string
		rec  *kgo.Record
	}{
		{"plain inbox record", &kgo.Record{
			Topic: message.Inbox("order"), Key: []byte("o-1"), Value: []byte(`{}`),
			Headers: []kgo.RecordHeader{{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)}},
		}},
		{"no headers at all", &kgo.Record{Topic: message.DLT("order"), Key: []byte("o-1")}},
		{"missing original topic", without(dlq.HeaderOriginalTopic)},
		{"missing original partition", without(dlq.HeaderOriginalPartition)},
		{"missing original offset", without(dlq.HeaderOriginalOffset)},
		{"partition as a string", with(dlq.HeaderOriginalPartition, []byte("1"))},
		{"partition as int64", with(dlq.HeaderOriginalPartition, binary.BigEndian.AppendUint64(nil, 1))},
		{"offset as int32", with(dlq.HeaderOriginalOffset, binary.BigEndian.AppendUint32(nil, 2))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := dlq.Parse(tt.rec)
			if !errors.Is(err, dlq.ErrNotDLQ) {
				t.Fatalf("Parse: got error %v, want one wrapping ErrNotDLQ", err)
			}
			if info.Original != nil {
				t.Errorf("Original: got %v, want nil on error", info.Original)
			}
		})
	}
}

func BenchmarkNew(b *testing.B) {
	src := &kgo.Record{
		Topic: message.Inbox("order"), Partition: 3, Offset: 4711, Timestamp: time.UnixMilli(1740819600123),
		Key:   []byte("o-1"),
		Value: []byte(`{"order_id":"o-1","customer_id":"c-1","amount_cents":4599,"currency":"USD","items":[{"sku":"sku-1","qty":2}],"ship_to":{"country":"DE","city":"Berlin"}}`),
		Headers: []kgo.RecordHeader{
			{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
			{Key: message.HeaderMessageID, Value: []byte("m-1")},
			{Key: message.HeaderTraceParent, Value: []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")},
		},
	}
	now := time.Now()
	f := dlq.Failure{
		Group: "ksaga-order", Err: fmt.Errorf("decode start request: %w", syntaxError(b)),
		Reason: "undecodable", Attempts: 3, First: now, Last: now,
	}
	dlt := message.DLT("order")
	b.ReportAllocs()
	for b.Loop() {
		_ = dlq.New(src, dlt, f)
	}
}
