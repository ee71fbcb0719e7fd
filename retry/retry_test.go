package retry

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestPolicyDefaults(t *testing.T) {
	var p Policy
	if got := p.Attempts(); got != 3 {
		t.Errorf("zero Policy attempts %d, want 3 (the first included)", got)
	}
	for n, want := range map[int]bool{1: false, 2: false, 3: true, 4: true} {
		if got := p.Exhausted(n); got != want {
			t.Errorf("Exhausted(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestBackoffGrowsAndCaps(t *testing.T) {
	p := Policy{InitialInterval: 100 * time.Millisecond, MaxInterval: time.Second, Multiplier: 2, Jitter: -1}
	tests := []struct {
		next int
		want time.Duration
	}{
		{1, 0},
		{2, 100 * time.Millisecond},
		{3, 200 * time.Millisecond},
		{4, 400 * time.Millisecond},
		{5, 800 * time.Millisecond},
		{6, time.Second},
		{60, time.Second},
	}
	for _, tt := range tests {
		if got := p.Backoff(tt.next); got != tt.want {
			t.Errorf("Backoff(%d) = %v, want %v", tt.next, got, tt.want)
		}
	}
}

func TestBackoffJitterStaysInBounds(t *testing.T) {
	p := Policy{InitialInterval: 100 * time.Millisecond, Jitter: 0.5}
	for range 1000 {
		if got := p.Backoff(2); got < 50*time.Millisecond || got > 150*time.Millisecond {
			t.Fatalf("Backoff(2) = %v, want within 100ms ± 50%%", got)
		}
	}
}

func TestPermanent(t *testing.T) {
	base := errors.New("bad input")
	err := fmt.Errorf("step x: %w", Permanent(base))
	if !IsPermanent(err) {
		t.Errorf("IsPermanent(%v) = false, want true", err)
	}
	if !errors.Is(err, base) {
		t.Errorf("a permanent error does not wrap its cause")
	}
	if IsPermanent(base) {
		t.Errorf("IsPermanent of a plain error = true, want false")
	}
	if Permanent(nil) != nil {
		t.Errorf("Permanent(nil) != nil")
	}
}
