package check

import (
	"slices"
	"strings"
	"testing"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
)

// The parking rule accepts every way the engine resolves a parking and
// names what is wrong with a story it cannot tell.
func TestParking(t *testing.T) {
	const (
		coup, inv, pay, ship, done = order.StepReserveCoupon, order.StepReserveInventory, order.StepAuthorizePayment, order.StepScheduleShipping, order.StepCompleteOrder
		park                       = "P" + coup + " no reply after 3 attempts"
		resume                     = "R" + coup + " resumed: " + ResumeReason
		late                       = "R" + coup + " " + ReplyArrivedReason
	)
	rest := []string{"+" + coup, "+" + inv, "+" + pay, "+" + ship, "+" + done, message.EventSagaCompleted}
	compensate := []string{"x" + coup + " compensation requested: " + ParkCompensateReason, "!compensation requested: " + ParkCompensateReason, "~" + coup, message.EventSagaCompensated}
	cases := []struct {
		name  string
		story []string
		// want is a part of the problem reported; empty: none.
		want string
		// by lists how each parking was resolved (resolution.by).
		by []string
	}{
		{name: "never parked", story: append([]string{"+" + coup}, rest[1:]...)},
		{name: "resumed by a Resume", story: append([]string{park, resume}, rest...), by: []string{message.EventSagaResumed}},
		{name: "resumed by its late reply, then refused", story: []string{park, late, "x" + coup + " " + order.ReasonCouponExhausted,
			"!" + order.ReasonCouponExhausted, message.EventSagaCompensated}, by: []string{message.EventSagaResumed}},
		{name: "compensated while parked", story: append([]string{park}, compensate...), by: []string{message.EventCompensationStarted}},
		{name: "parked again after a Resume, then compensated", story: append([]string{park, resume, park}, compensate...),
			by: []string{message.EventSagaResumed, message.EventCompensationStarted}},

		{name: "ended while parked", story: []string{park, message.EventSagaCompensated},
			want: "ended SagaCompensated (version 3) while parked at reserve-coupon"},
		{name: "never resolved", story: []string{park},
			want: "parked at reserve-coupon and never resumed or compensated"},
		{name: "resumed twice", story: append([]string{park, resume, resume}, rest...),
			want: "SagaResumed of reserve-coupon (version 4, \"resumed: chaos-resume\") while the saga was not parked"},
		{name: "parked again while parked", story: append([]string{park, park, resume}, rest...),
			want: "parked again at reserve-coupon (version 3) while parked at reserve-coupon"},
		{name: "step ran while parked", story: append([]string{park}, rest...),
			want: "StepSucceeded of reserve-coupon (version 3) while parked at reserve-coupon"},
		{name: "parked at a step that does not park", story: []string{"+" + coup, "P" + inv + " no reply after 3 attempts", "R" + inv + " resumed", "+" + inv,
			"+" + pay, "+" + ship, "+" + done, message.EventSagaCompleted},
			want: `parked at step "reserve-inventory" (version 3), which does not park`},
		{name: "resumed at another step", story: append([]string{park, "R" + inv + " resumed"}, rest...),
			want: "SagaResumed of reserve-inventory (version 3) while parked at reserve-coupon"},
		{name: "parked step failed without a compensation", story: []string{park, "x" + coup + " compensation requested: ops", "+" + inv},
			want: "StepSucceeded of reserve-inventory (version 4) after the StepFailed of parked step reserve-coupon, want CompensationStarted"},
		{name: "two terminal events after a parking", story: append(append([]string{park, resume}, rest...), message.EventSagaCompleted),
			want: "parked, then ended with 2 terminal events, want 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			evs, _ := tell(t, "o-1", c.story...)
			got, done := parking{parks: orderParks, events: evs}.problems()
			switch {
			case c.want == "" && len(got) > 0:
				t.Fatalf("got problems %q, want none", got)
			case c.want != "" && !slices.ContainsFunc(got, func(p string) bool { return strings.Contains(p, c.want) }):
				t.Fatalf("got problems %q, want one with %q", got, c.want)
			}
			if c.want != "" {
				return
			}
			var by []string
			for _, r := range done {
				by = append(by, r.by)
			}
			if !slices.Equal(by, c.by) {
				t.Errorf("got parkings resolved by %v, want %v", by, c.by)
			}
		})
	}
}

// The order saga parks at reserve-coupon only.
func TestParkSteps(t *testing.T) {
	if want := []string{order.StepReserveCoupon}; !slices.Equal(orderParks, want) {
		t.Errorf("got order steps that park %v, want %v", orderParks, want)
	}
	if len(localParks) != 0 {
		t.Errorf("got local-first steps that park %v, want none", localParks)
	}
}
