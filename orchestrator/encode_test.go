package orchestrator

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/ksaga/ksaga/message"
)

// TestAppendJSONMatchesEncodingJSON: the hand-written encoders give the
// bytes encoding/json gives, for plain and awkward values alike.
func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 123456789, time.UTC)
	states := []*State{
		{ID: "o-1", Type: "order", Version: 1, Status: message.StatusRunning, Undoing: -1, StartHash: "ab",
			Data: json.RawMessage(`{"a":1}`), Created: now, Updated: now},
		{ID: "o-<2>&\"x\"\n\u2028é\xff", Type: "order", Version: 7, Status: message.StatusCompensating, Step: 3, Undoing: 2,
			Plan: []int{1, 0}, Undone: []int{3}, Waiting: "o-2/x/undo-1", Attempt: 2, Deadline: 1234567890123,
			StepStarted: 99, UndoFailures: 1, UndoSends: 2, StartID: "s", StartHash: "h", Group: []Member{{Step: 1, Waiting: "o-1/pay/do", Attempt: 2, Deadline: 9}, {Step: 2, Waiting: "o-1/ship/do", Attempt: 1, Deadline: 7, Outcome: "success"}},
			Reason: "no reply after 3 attempts", LastError: "dial tcp: <refused> \"x\"",
			Data:    json.RawMessage(`{"items":[{"sku":"a","qty":1}],"ship_to":{"city":"Zürich"}}`),
			Created: now.Add(-time.Hour).In(time.FixedZone("x", 3600)), Updated: now,
			Trace:             &TraceContext{Parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", State: "k=v"},
			DefinitionVersion: 2, StepName: "ship", UndoingName: "pay <x>",
			History: []HistoryEntry{{Type: message.EventSagaStarted, Version: 1, At: now},
				{Type: message.EventStepSucceeded, Step: "pay", Version: 4, At: now, Attempt: 2, Reply: json.RawMessage(`{"authorization_id":"a-\u003c1\u003e"}`)},
				{Type: message.EventStepFailed, Step: "ship", Reason: "UNDELIVERABLE & \"x\"", Version: 6, At: now.Add(time.Second)}},
			HistoryDropped: 3, StepTrace: &TraceContext{Parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203332-01"}},
		{ID: "o-3", Undoing: -1},
	}
	for _, st := range states {
		want, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		got, err := st.appendJSON(nil)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("appendJSON\n got %s\nwant %s", got, want)
		}
	}
	for _, ev := range []message.Event{
		{SagaID: "o-1", SagaType: "order", Type: message.EventSagaStarted, State: message.StatusRunning, Version: 1, At: now},
		{SagaID: "o-<1>", SagaType: "order", Type: message.EventStepFailed, State: message.StatusCompensating, Step: "pay", Version: 3, At: now, Reason: "PAYMENT_DECLINED & more"},
	} {
		want, _ := json.Marshal(ev)
		got, err := appendEventJSON(nil, &ev)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("appendEventJSON\n got %s\nwant %s", got, want)
		}
	}
}
