// Package dlq builds and parses dead-letter records. A dead-letter record
// keeps the original key, value and headers and adds Spring Kafka's
// kafka_dlt-* headers, so tools that understand Spring's DLT read ksaga's too.
//
//	rec := dlq.New(src, message.DLT("order"), dlq.Failure{
//		Group: "ksaga-order", Err: err, Reason: "exhausted", Attempts: 3,
//		First: first, Last: time.Now(),
//	})
//	back, err := dlq.Parse(rec) // back.Topic, back.Partition, back.Offset, …
package dlq

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Header names added to a dead-letter record.
const (
	HeaderOriginalTopic         = "kafka_dlt-original-topic"
	HeaderOriginalPartition     = "kafka_dlt-original-partition" // int32 big-endian
	HeaderOriginalOffset        = "kafka_dlt-original-offset"    // int64 big-endian
	HeaderOriginalTimestamp     = "kafka_dlt-original-timestamp" // int64 big-endian, Unix ms
	HeaderOriginalConsumerGroup = "kafka_dlt-original-consumer-group"
	HeaderExceptionFQCN         = "kafka_dlt-exception-fqcn"
	HeaderExceptionMessage      = "kafka_dlt-exception-message"
	HeaderAttempts              = "ksaga-attempts"
	HeaderFirstFailure          = "ksaga-first-failure" // RFC 3339, UTC
	HeaderLastFailure           = "ksaga-last-failure"  // RFC 3339, UTC
	// HeaderReason is a short machine-readable code of why the record was
	// dead-lettered, such as "undecodable" or "retries-exhausted". It is not
	// message.HeaderReason, which a failure reply carries itself.
	HeaderReason = "ksaga-dlt-reason"
)

// Dead-letter reasons of the engine (HeaderReason, Info.Reason): why an
// inbox record was dead-lettered. A saga author's tests compare them.
const (
	ReasonUndecodable      = "undecodable"            // not JSON, not UTF-8, a header that does not parse
	ReasonMissingSagaID    = "missing-saga-id"        // no key, or a saga id header that differs from it
	ReasonUnknownType      = "unknown-message-type"   // a message type the engine does not know
	ReasonUnknownSaga      = "unknown-saga"           // a reply, Compensate or Resume for a saga that does not exist
	ReasonNotWaiting       = "not-waiting-on-step"    // a reply to a command the saga never sent
	ReasonConflictingStart = "conflicting-start"      // a start that reuses a saga id with other data
	ReasonTooLarge         = "value-too-large"        // a record, or what handling it writes, over the limits
	ReasonInvalid          = "invalid"                // data that fails Decode, Validate or names another saga id
	ReasonExhausted        = "retries-exhausted"      // a record whose processing attempts ran out
	ReasonPermanent        = "permanent-error"        // a record whose processing failed with retry.Permanent
	ReasonCompensation     = "compensation-exhausted" // a compensation that could not be completed (SagaFailed)
)

// MaxExceptionMessage bounds the exception message header, so an error that
// quotes a huge value cannot make the dead-letter record too large.
const MaxExceptionMessage = 4096

// Failure says why a record is dead-lettered.
type Failure struct {
	// Group is the consumer group that failed the record.
	Group string
	// Err is the last error; its Go type goes to the exception-fqcn header.
	Err error
	// Reason is a short code for metrics and operators.
	Reason string
	// Attempts counts the processing attempts, the first included.
	Attempts int
	// First and Last are the times of the first and last failure.
	First, Last time.Time
}

// New returns the dead-letter record of src for topic dlt, keyed as src.
// The caller produces it; New does not modify src.
func New(src *kgo.Record, dlt string, f Failure) *kgo.Record {
	headers := make([]kgo.RecordHeader, 0, len(src.Headers)+11)
	for _, h := range src.Headers {
		if !isDLQHeader(h.Key) {
			headers = append(headers, h)
		}
	}
	msg, fqcn := "", ""
	if f.Err != nil {
		msg, fqcn = f.Err.Error(), errorType(f.Err)
	}
	if len(msg) > MaxExceptionMessage {
		cut := MaxExceptionMessage
		for cut > 0 && !utf8.RuneStart(msg[cut]) {
			cut-- // do not split a character
		}
		msg = msg[:cut]
	}
	headers = append(headers,
		kgo.RecordHeader{Key: HeaderOriginalTopic, Value: []byte(src.Topic)},
		kgo.RecordHeader{Key: HeaderOriginalPartition, Value: binary.BigEndian.AppendUint32(nil, uint32(src.Partition))},
		kgo.RecordHeader{Key: HeaderOriginalOffset, Value: binary.BigEndian.AppendUint64(nil, uint64(src.Offset))},
		kgo.RecordHeader{Key: HeaderOriginalTimestamp, Value: binary.BigEndian.AppendUint64(nil, uint64(src.Timestamp.UnixMilli()))},
		kgo.RecordHeader{Key: HeaderOriginalConsumerGroup, Value: []byte(f.Group)},
		kgo.RecordHeader{Key: HeaderExceptionFQCN, Value: []byte(fqcn)},
		kgo.RecordHeader{Key: HeaderExceptionMessage, Value: []byte(msg)},
		kgo.RecordHeader{Key: HeaderAttempts, Value: []byte(strconv.Itoa(f.Attempts))},
		kgo.RecordHeader{Key: HeaderFirstFailure, Value: []byte(f.First.UTC().Format(time.RFC3339Nano))},
		kgo.RecordHeader{Key: HeaderLastFailure, Value: []byte(f.Last.UTC().Format(time.RFC3339Nano))},
		kgo.RecordHeader{Key: HeaderReason, Value: []byte(f.Reason)},
	)
	return &kgo.Record{Topic: dlt, Key: src.Key, Value: src.Value, Headers: headers}
}

// errorType names the Go type of the innermost wrapped error that is not a
// plain fmt wrapper, e.g. "*json.SyntaxError".
func errorType(err error) string {
	name := fmt.Sprintf("%T", err)
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return name
		}
		err = next
		if t := fmt.Sprintf("%T", err); t != "*fmt.wrapError" && t != "*fmt.wrapErrors" && t != "*errors.errorString" {
			name = t
		}
	}
}

func isDLQHeader(key string) bool {
	if strings.HasPrefix(key, "kafka_dlt-") {
		return true
	}
	switch key {
	case HeaderAttempts, HeaderFirstFailure, HeaderLastFailure, HeaderReason:
		return true
	}
	return false
}

// Info is what Parse reads back from a dead-letter record.
type Info struct {
	Topic        string
	Partition    int32
	Offset       int64
	Timestamp    time.Time
	Group        string
	ErrorType    string
	ErrorMessage string
	Reason       string
	Attempts     int
	First, Last  time.Time
	// Original is the record as it was on its original topic: the same key,
	// value and headers, without the dead-letter headers.
	Original *kgo.Record
}

// ErrNotDLQ is returned by Parse for a record without the dead-letter headers.
var ErrNotDLQ = errors.New("not a dead-letter record")

// Parse reads a dead-letter record. It returns an error wrapping ErrNotDLQ
// when a required header is missing or malformed.
func Parse(r *kgo.Record) (Info, error) {
	var info Info
	const topic, partition, offset = 1, 2, 4
	seen := 0
	orig := &kgo.Record{Key: r.Key, Value: r.Value}
	for _, h := range r.Headers {
		switch h.Key {
		case HeaderOriginalTopic:
			info.Topic, seen = string(h.Value), seen|topic
		case HeaderOriginalPartition:
			if len(h.Value) != 4 {
				return Info{}, fmt.Errorf("%w: %s is %d bytes, want 4", ErrNotDLQ, h.Key, len(h.Value))
			}
			info.Partition, seen = int32(binary.BigEndian.Uint32(h.Value)), seen|partition
		case HeaderOriginalOffset:
			if len(h.Value) != 8 {
				return Info{}, fmt.Errorf("%w: %s is %d bytes, want 8", ErrNotDLQ, h.Key, len(h.Value))
			}
			info.Offset, seen = int64(binary.BigEndian.Uint64(h.Value)), seen|offset
		case HeaderOriginalTimestamp:
			if len(h.Value) == 8 {
				info.Timestamp = time.UnixMilli(int64(binary.BigEndian.Uint64(h.Value)))
			}
		case HeaderOriginalConsumerGroup:
			info.Group = string(h.Value)
		case HeaderExceptionFQCN:
			info.ErrorType = string(h.Value)
		case HeaderExceptionMessage:
			info.ErrorMessage = string(h.Value)
		case HeaderReason:
			info.Reason = string(h.Value)
		case HeaderAttempts:
			info.Attempts, _ = strconv.Atoi(string(h.Value))
		case HeaderFirstFailure:
			info.First, _ = time.Parse(time.RFC3339Nano, string(h.Value))
		case HeaderLastFailure:
			info.Last, _ = time.Parse(time.RFC3339Nano, string(h.Value))
		default:
			orig.Headers = append(orig.Headers, h)
		}
	}
	if seen != topic|partition|offset {
		return Info{}, fmt.Errorf("%w: original topic, partition and offset headers are required", ErrNotDLQ)
	}
	orig.Topic = info.Topic
	info.Original = orig
	return info, nil
}
