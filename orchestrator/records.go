package orchestrator

import (
	"strconv"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
)

// maxHeaderBytes bounds the headers of an inbox record.
const maxHeaderBytes = 64 << 10

// decode reads an inbox record's headers. Its errors are permanent.
func (e *Engine) decode(r *kgo.Record) (*input, error) {
	in := &input{value: r.Value}
	var sagaID, attempt string
	for _, h := range r.Headers {
		switch h.Key {
		case message.HeaderMessageType:
			in.typ = string(h.Value)
		case message.HeaderMessageID:
			in.msgID = string(h.Value)
		case message.HeaderSagaID:
			sagaID = string(h.Value)
		case message.HeaderInReplyTo:
			in.inReplyTo = string(h.Value)
		case message.HeaderStepAttempt:
			attempt = string(h.Value)
		case message.HeaderOutcome:
			in.outcome = string(h.Value)
		case message.HeaderReason:
			in.reason = string(h.Value)
		}
	}
	in.sagaID = string(r.Key)
	if !utf8.Valid(r.Key) {
		// The id is stored as a string: with the bad bytes replaced it
		// would no longer match the key.
		return nil, inputErr(ReasonMissingSagaID, "the key is not valid UTF-8; the key must be the saga id")
	}
	headerBytes := 0
	for _, h := range r.Headers {
		headerBytes += len(h.Key) + len(h.Value)
	}
	switch {
	case headerBytes > maxHeaderBytes:
		return nil, inputErr(ReasonTooLarge, "headers are %d bytes, the limit is %d", headerBytes, maxHeaderBytes)
	case len(r.Value) > e.cfg.maxValue:
		return nil, inputErr(ReasonTooLarge, "value is %d bytes, the limit is %d", len(r.Value), e.cfg.maxValue)
	case in.sagaID == "":
		return nil, inputErr(ReasonMissingSagaID, "the record has no key; the key must be the saga id")
	case sagaID != "" && sagaID != in.sagaID:
		return nil, inputErr(ReasonMissingSagaID, "header %s %q differs from the key %q", message.HeaderSagaID, sagaID, in.sagaID)
	case in.typ == "":
		return nil, inputErr(ReasonUnknownType, "header %s is missing", message.HeaderMessageType)
	}
	if attempt != "" {
		n, err := strconv.Atoi(attempt)
		if err != nil {
			return nil, inputErr(ReasonUndecodable, "header %s %q is not a number", message.HeaderStepAttempt, attempt)
		}
		in.attempt = n
	}
	if in.typ == message.TypeStartSaga {
		// The canonical form is what the saga stores and what tells a
		// redelivered start from a conflicting one, whoever wrote it
		// (client, HTTP API, outbox, kcat with its keys in any order).
		// It refuses what encoding/json would fix silently: invalid
		// UTF-8, a key twice.
		data, err := message.Canonical(r.Value)
		if err != nil {
			return nil, inputErr(ReasonUndecodable, "start request value: %v", err)
		}
		in.data = data
	}
	if in.typ == message.TypeReply && in.inReplyTo == "" {
		return nil, inputErr(ReasonUndecodable, "reply has no %s header", message.HeaderInReplyTo)
	}
	return in, nil
}

// The record builders below put a record's key and header values in one
// allocation (see packed): a transition writes three records, each with up
// to nine headers.

func (e *Engine) commandRecord(st *State, c command) *kgo.Record {
	tc := st.Trace
	if st.StepTrace != nil {
		tc = st.StepTrace
	}
	attempt := strconv.Itoa(c.attempt)
	p := newPacked(len(st.ID)+len(st.Type)+len(c.msgType)+len(c.msgID)+len(c.step)+len(attempt)+len(e.inbox)+traceLen(tc), 9)
	id := p.value(message.HeaderSagaID, st.ID)
	p.value(message.HeaderSagaType, st.Type)
	p.value(message.HeaderMessageType, c.msgType)
	p.value(message.HeaderMessageID, c.msgID)
	p.value(message.HeaderStep, c.step)
	p.value(message.HeaderStepAttempt, attempt)
	p.value(message.HeaderReplyTo, e.inbox)
	p.trace(tc)
	return &kgo.Record{Topic: c.topic, Key: id, Value: c.value, Headers: p.headers}
}

func (e *Engine) eventRecord(ev message.Event, tc *TraceContext) *kgo.Record {
	value, _ := appendEventJSON(make([]byte, 0, 256), &ev) // an Event always encodes
	p := newPacked(len(ev.SagaID)+len(ev.SagaType)+len(ev.Type)+traceLen(tc), 5)
	id := p.value(message.HeaderSagaID, ev.SagaID)
	p.value(message.HeaderSagaType, ev.SagaType)
	p.value(message.HeaderMessageType, ev.Type)
	p.trace(tc)
	return &kgo.Record{Topic: e.events, Key: id, Value: value, Headers: p.headers}
}

// stateRecord is the record of st, encoded as raw, on inbox partition p's
// state partition.
func (e *Engine) stateRecord(st *State, p int32, raw []byte) *kgo.Record {
	pk := newPacked(len(st.ID)+traceLen(st.Trace), 2)
	key := pk.str(st.ID)
	pk.trace(st.Trace)
	return &kgo.Record{Topic: e.stateTopic, Partition: p, Key: key, Value: raw, Headers: pk.headers}
}

// packed builds a record's headers with their values in one buffer.
type packed struct {
	buf     []byte
	headers []kgo.RecordHeader
}

func newPacked(size, headers int) *packed {
	return &packed{buf: make([]byte, 0, size), headers: make([]kgo.RecordHeader, 0, headers)}
}

// str appends s to the buffer and returns its bytes.
func (p *packed) str(s string) []byte {
	start := len(p.buf)
	p.buf = append(p.buf, s...)
	return p.buf[start:len(p.buf):len(p.buf)]
}

// value adds header key with value v and returns the value's bytes.
func (p *packed) value(key, v string) []byte {
	b := p.str(v)
	p.headers = append(p.headers, kgo.RecordHeader{Key: key, Value: b})
	return b
}

// trace adds the traceparent and tracestate headers of tc, when set.
func (p *packed) trace(tc *TraceContext) {
	if tc != nil {
		p.value(message.HeaderTraceParent, tc.Parent)
		if tc.State != "" {
			// An empty tracestate is the same as none (W3C trace
			// context): no header.
			p.value(message.HeaderTraceState, tc.State)
		}
	}
}

func traceLen(tc *TraceContext) int {
	if tc == nil {
		return 0
	}
	return len(tc.Parent) + len(tc.State)
}

func (e *Engine) timeoutRecord(t timer) *kgo.Record {
	id := t.sagaID + "/timeout/" + strconv.FormatInt(t.deadline, 10)
	hs := []kgo.RecordHeader{
		{Key: message.HeaderSagaID, Value: []byte(t.sagaID)},
		{Key: message.HeaderSagaType, Value: []byte(e.def.Name())},
		{Key: message.HeaderMessageType, Value: []byte(message.TypeTimeout)},
		{Key: message.HeaderMessageID, Value: []byte(id)},
	}
	if t.waiting != "" {
		hs = append(hs,
			kgo.RecordHeader{Key: message.HeaderInReplyTo, Value: []byte(t.waiting)},
			kgo.RecordHeader{Key: message.HeaderStepAttempt, Value: []byte(strconv.Itoa(t.attempt))})
	}
	rec := &kgo.Record{Topic: e.inbox, Partition: t.partition, Key: []byte(t.sagaID), Headers: hs}
	// A deadline continues its saga's trace. A deadline read back from
	// Redis's index for a saga not in memory has none; handling its
	// Timeout loads the saga, whose records carry it again.
	if ent, ok := e.sagas[t.sagaID]; ok {
		setTrace(rec, ent.state.Trace)
	}
	return rec
}
