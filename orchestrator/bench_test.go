package orchestrator

import (
	"context"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
)

// BenchmarkSagaTransitions measures decode → transition → encode for one
// whole order saga (a start and three replies), the engine's per-record CPU
// work without I/O.
func BenchmarkSagaTransitions(b *testing.B) {
	m, _ := newTestMachine(nil)
	e := &Engine{def: m.def, m: m, inbox: message.Inbox("order"), events: message.Events("order")}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		out, err := m.apply(ctx, nil, nil, &input{typ: message.TypeStartSaga, sagaID: "o-1", value: startValue})
		if err != nil {
			b.Fatal(err)
		}
		for range 3 {
			st := out.state
			for _, c := range out.commands {
				_ = e.commandRecord(st, c)
			}
			for _, ev := range out.events {
				_ = e.eventRecord(ev, st.Trace)
			}
			if _, err := st.appendJSON(nil); err != nil {
				b.Fatal(err)
			}
			out, err = m.apply(ctx, st, out.data, &input{typ: message.TypeReply, sagaID: "o-1", inReplyTo: st.Waiting, outcome: message.OutcomeSuccess})
			if err != nil {
				b.Fatal(err)
			}
		}
		if out.state.Status != message.StatusCompleted {
			b.Fatalf("saga %s, want completed", out.state.Status)
		}
	}
}

// BenchmarkDecodeRecord measures reading an inbox record's headers.
func BenchmarkDecodeRecord(b *testing.B) {
	e := &Engine{cfg: config{maxValue: 256 << 10}}
	r := &kgo.Record{Key: []byte("o-1"), Value: []byte(`{}`), Headers: []kgo.RecordHeader{
		{Key: message.HeaderMessageType, Value: []byte(message.TypeReply)},
		{Key: message.HeaderMessageID, Value: []byte("o-1/reserve-inventory/do/reply")},
		{Key: message.HeaderInReplyTo, Value: []byte("o-1/reserve-inventory/do")},
		{Key: message.HeaderStepAttempt, Value: []byte("1")},
		{Key: message.HeaderOutcome, Value: []byte("success")},
	}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.decode(r); err != nil {
			b.Fatal(err)
		}
	}
}
