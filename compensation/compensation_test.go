package compensation

import (
	"slices"
	"testing"
)

func TestPlan(t *testing.T) {
	// reserve (undo), pay (undo), notify (no undo), ship (undo), complete
	steps := []Step{{true}, {true}, {false}, {true}, {false}}
	tests := []struct {
		name    string
		failed  int
		outcome Outcome
		want    []int
	}{
		{"first step failed", 0, NotApplied, nil},
		{"first step unknown", 0, OutcomeUnknown, []int{0}},
		{"second failed", 1, NotApplied, []int{0}},
		{"last failed", 4, NotApplied, []int{3, 1, 0}},
		{"step without undo unknown", 2, OutcomeUnknown, []int{1, 0}},
		{"ship unknown", 3, OutcomeUnknown, []int{3, 1, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Plan(steps, tt.failed, tt.outcome); !slices.Equal(got, tt.want) {
				t.Errorf("Plan(failed %d) = %v, want %v", tt.failed, got, tt.want)
			}
		})
	}
}

func TestPolicy(t *testing.T) {
	var p Policy
	if p.GiveUp(DefaultMaxAttempts-1) || !p.GiveUp(DefaultMaxAttempts) {
		t.Errorf("zero Policy gives up at %d attempts, want %d", DefaultMaxAttempts, DefaultMaxAttempts)
	}
	if p.ReplyDeadline() != DefaultDeadline {
		t.Errorf("zero Policy deadline %v, want %v", p.ReplyDeadline(), DefaultDeadline)
	}
}
