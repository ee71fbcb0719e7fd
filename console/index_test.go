package console

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/message"
)

// deadLetterRecord returns the dead letter of a reply of saga id at DLT
// offset off.
func deadLetterRecord(id string, off int64, reason string, value []byte) *kgo.Record {
	src := &kgo.Record{Topic: "saga.t.inbox", Partition: 1, Offset: 100 + off, Key: []byte(id), Value: value, Timestamp: time.Unix(1000, 0),
		Headers: []kgo.RecordHeader{{Key: message.HeaderMessageType, Value: []byte(message.TypeReply)}, {Key: message.HeaderStep, Value: []byte("s")}}}
	r := dlq.New(src, "saga.t.inbox-dlt", dlq.Failure{Group: "g", Err: errors.New("boom"), Reason: reason, Attempts: 3,
		First: time.Unix(1001, 0), Last: time.Unix(1002, 0)})
	r.Partition, r.Offset, r.Timestamp = 0, off, time.Unix(1003, 0)
	return r
}

func TestDLQIndexBounded(t *testing.T) {
	x := newDLQIndex(Limits{DeadLetters: 3, PreviewBytes: 4}.withDefaults())
	for i := range 5 {
		reason := dlq.ReasonExhausted
		if i%2 == 1 {
			reason = dlq.ReasonInvalid
		}
		x.add(deadLetterRecord(fmt.Sprintf("s-%d", i%2), int64(i), reason, []byte(`{"long":"value"}`)))
	}
	rs, total, dropped := x.counts()
	if total != 3 || dropped != 2 {
		t.Errorf("counts: %d indexed, %d dropped; want 3 and 2", total, dropped)
	}
	if got := fmt.Sprint(rs); got != "[{retries-exhausted 2} {invalid 1}]" {
		t.Errorf("reasons %s, want [{retries-exhausted 2} {invalid 1}]", got)
	}
	if x.get(pos{0, 1}) != nil || x.get(pos{0, 4}) == nil {
		t.Error("the oldest dead letters are still indexed, or the newest is not")
	}
	if got := len(x.forSaga("s-0")); got != 2 {
		t.Errorf("s-0 has %d dead letters indexed, want 2 (offsets 2 and 4)", got)
	}
	d := x.get(pos{0, 4})
	if string(d.Value) != `{"lo` || d.Cut != 12 {
		t.Errorf("value %q cut %d, want the first 4 bytes and 12 cut", d.Value, d.Cut)
	}
	if d.SagaID != "s-0" || d.MessageType != message.TypeReply || d.Step != "s" || d.Info.Attempts != 3 || !d.At.Equal(time.Unix(1002, 0)) || d.Info.Original != nil {
		t.Errorf("decoded %+v", d)
	}
	page, n := x.page(dlq.ReasonExhausted, 0, 1)
	if n != 2 || len(page) != 1 || page[0].Offset != 4 {
		t.Errorf("page of retries-exhausted: %d of %d, first %+v; want the newest, offset 4, of 2", len(page), n, page)
	}
}

func TestAuditIndex(t *testing.T) {
	x := newAuditIndex(Limits{AuditRecords: 2}.withDefaults())
	add := func(off int64, r audit.Record) {
		b, _ := json.Marshal(r)
		x.add(&kgo.Record{Partition: 0, Offset: off, Value: b})
		x.advance(0, off+1)
	}
	add(0, audit.Record{Action: message.AuditRedrive, By: "a", Records: []audit.Entry{{Partition: 1, Offset: 7, SagaID: "s-1"}, {Partition: 1, Offset: 8, SagaID: "s-2"}}})
	add(1, audit.Record{Action: message.AuditCompensate, By: "b", SagaID: "s-1"})
	x.add(&kgo.Record{Offset: 2, Value: []byte("not json")})
	add(3, audit.Record{Action: message.AuditResume, By: "c", SagaID: "s-3"})
	if got := len(x.forSaga("s-1")); got != 1 {
		t.Errorf("s-1 has %d audit records, want 1 (the redrive left the index)", got)
	}
	if got := len(x.redrivesOf(pos{1, 8})); got != 1 {
		t.Errorf("dead letter 1:8 has %d redrives, want 1: a redrive is remembered after its record leaves the index", got)
	}
	if !x.caughtUp(map[int32]int64{0: 4}) || x.caughtUp(map[int32]int64{0: 5}) {
		t.Error("caughtUp does not follow the offsets read")
	}
	if l := x.latest(5); len(l) != 2 || l[0].Record.By != "c" {
		t.Errorf("latest: %d records, want 2, newest first", len(l))
	}
}

func TestEventIndexBounded(t *testing.T) {
	x := newEventIndex(Limits{Events: 8, Ended: 2}.withDefaults())
	for i := range 30 {
		typ := message.EventStepSucceeded
		if i%3 == 2 {
			typ = message.EventSagaCompleted
		}
		v, _ := json.Marshal(message.Event{SagaID: fmt.Sprintf("s-%d", i/3), Type: typ, State: "completed", Data: json.RawMessage(`{"x":1}`)})
		x.add(&kgo.Record{Offset: int64(i), Value: v})
	}
	if len(x.ring) > 9 || len(x.bySaga) > 4 {
		t.Errorf("%d events of %d sagas kept, want at most 9 of 4", len(x.ring), len(x.bySaga))
	}
	if got := x.forSaga("s-9"); len(got) != 3 || got[2].Type != message.EventSagaCompleted {
		t.Errorf("s-9 has %d events, want 3, the last SagaCompleted", len(got))
	}
	if len(x.forSaga("s-0")) != 0 {
		t.Error("s-0's events are still kept")
	}
	ended, n := x.endedPage("", 0, 10)
	if n != 2 || ended[0].SagaID != "s-9" {
		t.Errorf("ended: %d, first %s; want 2, s-9 first", n, ended[0].SagaID)
	}
}

func TestUnescapeHTML(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`{"a":"\u003cscript\u003e \u0026 x"}`, `{"a":"<script> & x"}`},
		{`{"a":"\\u003c"}`, `{"a":"\\u003c"}`},
		{`{"a":"\u2028\n\"\u003E"}`, `{"a":"\u2028\n\">"}`},
		{`plain`, `plain`},
	} {
		if got := unescapeHTML([]byte(c.in)); got != c.want {
			t.Errorf("unescapeHTML(%s) = %s, want %s", c.in, got, c.want)
		}
	}
}

func TestPredict(t *testing.T) {
	reply := &deadLetter{MessageType: message.TypeReply, Headers: [][2]string{{message.HeaderInReplyTo, "s/label/do"}}}
	running := &viewState{}
	running.Status, running.Waiting = message.StatusRunning, "s/label/do"
	other := &viewState{}
	other.Status, other.Waiting = message.StatusRunning, "s/hold/do"
	ended := &viewState{}
	ended.Status = message.StatusCompensated
	for _, c := range []struct {
		name string
		d    *deadLetter
		s    *viewState
		want string
	}{
		{"reply, no saga", reply, nil, "unknown-saga"},
		{"reply awaited", reply, running, "handles it now"},
		{"reply not awaited", reply, other, "no longer waits"},
		{"reply to an ended saga", reply, ended, "stale"},
		{"start of an existing saga", &deadLetter{MessageType: message.TypeStartSaga}, ended, "duplicate"},
		{"start", &deadLetter{MessageType: message.TypeStartSaga}, nil, "starts it"},
		{"compensate a running saga", &deadLetter{MessageType: message.TypeCompensate}, running, "starts its compensation"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := predict(c.d, c.s); !strings.Contains(got, c.want) {
				t.Errorf("got %q, want it to say %q", got, c.want)
			}
		})
	}
}
