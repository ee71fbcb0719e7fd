package orchestrator

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/ksaga/ksaga/compensation"
	"github.com/ksaga/ksaga/internal/sagadef"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
)

// voucher is the data of a saga whose first step is optional.
type voucher struct {
	ID   string `json:"id"`
	Code string `json:"code"`
	// Bug makes the optional step's Skip panic.
	Bug bool `json:"bug"`
}

func newSkipMachine() *machine {
	cmd := func(typ string) func(context.Context, *voucher) (saga.Command, error) {
		return func(context.Context, *voucher) (saga.Command, error) {
			return saga.Command{Participant: "p", Type: typ}, nil
		}
	}
	def := saga.New("voucher",
		saga.Step[voucher]{Name: "redeem", Do: cmd("Redeem"), Undo: cmd("Unredeem"), Skip: func(v *voucher) bool {
			if v.Bug {
				panic("skip bug")
			}
			return v.Code == ""
		}},
		saga.Step[voucher]{Name: "pay", Do: cmd("Pay"), Undo: cmd("Refund")},
		saga.Step[voucher]{Name: "ship", Do: cmd("Ship")},
	)
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	return newMachine(sagadef.Of(def), compensation.Policy{MaxAttempts: 2}, c.now)
}

// TestMachineSkip: a skipped step sends nothing, writes no event, is not
// compensated, and a reply that names it is bad input; the same saga with
// the step not skipped runs and undoes it.
func TestMachineSkip(t *testing.T) {
	t.Run("skipped", func(t *testing.T) {
		r := &run{t: t, m: newSkipMachine()}
		out := r.must(&input{typ: message.TypeStartSaga, sagaID: "v-1", msgID: "m-1", value: []byte(`{"id":"v-1"}`)})
		if got, want := cmdTypes(out), []string{"Pay"}; !slices.Equal(got, want) {
			t.Fatalf("start sent %v, want %v", got, want)
		}
		if got, want := types(out), []string{message.EventSagaStarted}; !slices.Equal(got, want) {
			t.Errorf("start emitted %v, want %v", got, want)
		}
		if r.st.Step != 1 || r.st.Waiting != "v-1/pay/do" {
			t.Errorf("saga at step %d waiting on %q, want step 1 waiting on v-1/pay/do", r.st.Step, r.st.Waiting)
		}
		_, err := r.apply(&input{typ: message.TypeReply, sagaID: "v-1", inReplyTo: "v-1/redeem/do", outcome: message.OutcomeSuccess})
		var ie *InputError
		if !errors.As(err, &ie) || ie.Reason != ReasonNotWaiting {
			t.Errorf("reply to the skipped step: err %v, want %s", err, ReasonNotWaiting)
		}
		r.must(&input{typ: message.TypeReply, sagaID: "v-1", inReplyTo: r.st.Waiting, outcome: message.OutcomeSuccess})
		out = r.must(&input{typ: message.TypeReply, sagaID: "v-1", inReplyTo: r.st.Waiting, outcome: message.OutcomeFailure, reason: "NO_ROUTE"})
		if got, want := cmdTypes(out), []string{"Refund"}; !slices.Equal(got, want) {
			t.Fatalf("ship failure sent %v, want %v", got, want)
		}
		out = r.must(&input{typ: message.TypeReply, sagaID: "v-1", inReplyTo: r.st.Waiting, outcome: message.OutcomeSuccess})
		if got := cmdTypes(out); len(got) != 0 || r.st.Status != message.StatusCompensated {
			t.Errorf("after the refund: sent %v, status %s; want nothing more and compensated", got, r.st.Status)
		}
	})
	t.Run("not skipped", func(t *testing.T) {
		r := &run{t: t, m: newSkipMachine()}
		out := r.must(&input{typ: message.TypeStartSaga, sagaID: "v-2", msgID: "m-2", value: []byte(`{"id":"v-2","code":"SPRING"}`)})
		if got, want := cmdTypes(out), []string{"Redeem"}; !slices.Equal(got, want) {
			t.Fatalf("start sent %v, want %v", got, want)
		}
		r.must(&input{typ: message.TypeReply, sagaID: "v-2", inReplyTo: r.st.Waiting, outcome: message.OutcomeSuccess})
		out = r.must(&input{typ: message.TypeReply, sagaID: "v-2", inReplyTo: r.st.Waiting, outcome: message.OutcomeFailure, reason: "DECLINED"})
		if got, want := cmdTypes(out), []string{"Unredeem"}; !slices.Equal(got, want) {
			t.Errorf("pay failure sent %v, want %v", got, want)
		}
	})
	t.Run("skip fails", func(t *testing.T) {
		r := &run{t: t, m: newSkipMachine()}
		_, err := r.apply(&input{typ: message.TypeStartSaga, sagaID: "v-3", msgID: "m-3", value: []byte(`{"id":"v-3","bug":true}`)})
		var se *StepError
		var pe *saga.PanicError
		if !errors.As(err, &se) || se.Index != 0 || !errors.As(err, &pe) {
			t.Errorf("start with a panicking Skip: err %v, want a StepError of step 0 wrapping the panic", err)
		}
	})
}
