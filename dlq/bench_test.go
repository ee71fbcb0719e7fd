package dlq_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
)

// The build of a dead-letter record is measured by BenchmarkNew in
// dlq_test.go; these cover its other paths.

// BenchmarkNewLongError measures building a dead-letter record whose error
// message is over MaxExceptionMessage and is cut, as when an error quotes a
// large value.
func BenchmarkNewLongError(b *testing.B) {
	src := &kgo.Record{
		Topic: message.Inbox("order"), Partition: 3, Offset: 4711, Timestamp: time.UnixMilli(1740819600123),
		Key: []byte("o-1"), Value: []byte(`{"order_id":"o-1"}`),
		Headers: []kgo.RecordHeader{{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)}},
	}
	now := time.Now()
	f := dlq.Failure{
		Group: "ksaga-order", Err: fmt.Errorf("validate %s: %w", strings.Repeat("é", 8<<10), syntaxError(b)),
		Reason: "invalid", Attempts: 1, First: now, Last: now,
	}
	dlt := message.DLT("order")
	b.ReportAllocs()
	for b.Loop() {
		_ = dlq.New(src, dlt, f)
	}
}

// BenchmarkParse measures reading a dead-letter record back, what sagactl
// does for each record it lists or redrives.
func BenchmarkParse(b *testing.B) {
	src := &kgo.Record{
		Topic: message.Inbox("order"), Partition: 3, Offset: 4711, Timestamp: time.UnixMilli(1740819600123),
		Key:   []byte("o-1"),
		Value: []byte(`{"order_id":"o-1","customer_id":"c-1","amount_cents":4599,"currency":"USD","items":[{"sku":"sku-1","qty":2}],"ship_to":{"country":"DE","city":"Berlin"}}`),
		Headers: []kgo.RecordHeader{
			{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
			{Key: message.HeaderMessageID, Value: []byte("m-1")},
		},
	}
	now := time.Now()
	r := dlq.New(src, message.DLT("order"), dlq.Failure{
		Group: "ksaga-order", Err: fmt.Errorf("decode start request: %w", syntaxError(b)),
		Reason: "undecodable", Attempts: 3, First: now, Last: now,
	})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := dlq.Parse(r); err != nil {
			b.Fatal(err)
		}
	}
}
