package sagadef_test

import (
	"context"
	"errors"
	"testing"
	"time"

	saga "github.com/ksaga/ksaga/internal/sagadef"
	"github.com/ksaga/ksaga/retry"
)

// TestCallContainsSagaCode: an error, a panic and a call that ignores its
// ctx past the timeout all come back as errors, in time.
func TestCallContainsSagaCode(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	tests := []struct {
		name string
		fn   func(context.Context) error
		want func(error) bool
	}{
		{"error", func(context.Context) error { return errors.New("db down") }, func(err error) bool { return err != nil && err.Error() == "db down" }},
		{"panic", func(context.Context) error { panic("bug") }, func(err error) bool {
			var pe *saga.PanicError
			return errors.As(err, &pe) && pe.Value == "bug" && len(pe.Stack) > 0
		}},
		{"hang", func(context.Context) error { <-block; return nil }, func(err error) bool { return errors.Is(err, saga.ErrTimeout) }},
		{"ok", func(context.Context) error { return nil }, func(err error) bool { return err == nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			err := saga.Call(context.Background(), 50*time.Millisecond, tt.fn)
			if !tt.want(err) {
				t.Errorf("got error %v", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("Call took %v, want about the 50ms timeout at most", d)
			}
		})
	}
}

type v2 struct {
	ID string `json:"id"`
}

func (v *v2) Validate() error { return errors.New("stricter than before") }

type panicky struct{}

func (panicky) Validate() error { panic("validate bug") }

// TestDecodeStored: stored data survives a removed field and a stricter
// Validate, which a start request would not.
func TestDecodeStored(t *testing.T) {
	def := saga.New("evolve", saga.Step[v2]{Name: "s", Local: func(context.Context, *v2) error { return nil }})
	old := []byte(`{"id":"x","notes":"removed since"}`)
	if _, err := def.DecodeStored(old); err != nil {
		t.Errorf("DecodeStored: %v, want the removed field ignored", err)
	}
	if _, err := def.Decode(old); !errors.Is(err, saga.ErrInvalidData) || !retry.IsPermanent(err) {
		t.Errorf("Decode: %v, want a permanent ErrInvalidData", err)
	}
	if _, err := def.DecodeStored([]byte(`{"id":7}`)); !errors.Is(err, saga.ErrInvalidData) {
		t.Errorf("DecodeStored of a changed type: %v, want ErrInvalidData", err)
	}
	p := saga.New("panicky", saga.Step[panicky]{Name: "s", Local: func(context.Context, *panicky) error { return nil }})
	if _, err := p.Decode([]byte(`{}`)); !errors.Is(err, saga.ErrInvalidData) {
		t.Errorf("Decode with a panicking Validate: %v, want ErrInvalidData", err)
	}
}

type gift struct {
	ID   string `json:"id"`
	Wrap bool   `json:"wrap"`
}

// TestSkip: Skip answers for the data, contained like the rest of the
// saga's code; a step without Skip always runs.
func TestSkip(t *testing.T) {
	noop := func(context.Context, *gift) error { return nil }
	def := saga.New("gift",
		saga.Step[gift]{Name: "wrap", Local: noop, Skip: func(g *gift) bool { return !g.Wrap }},
		saga.Step[gift]{Name: "send", Local: noop},
		saga.Step[gift]{Name: "bug", Local: noop, Skip: func(*gift) bool { panic("skip bug") }},
	)
	if got := []bool{def.Steps()[0].Optional, def.Steps()[1].Optional}; got[0] != true || got[1] != false {
		t.Errorf("Optional = %v, want [true false]", got)
	}
	for _, tt := range []struct {
		value string
		step  int
		want  bool
	}{
		{`{"id":"g-1","wrap":true}`, 0, false},
		{`{"id":"g-1","wrap":false}`, 0, true},
		{`{"id":"g-1"}`, 1, false},
	} {
		data, err := def.Decode([]byte(tt.value))
		if err != nil {
			t.Fatal(err)
		}
		if got, err := def.Skip(context.Background(), tt.step, data); got != tt.want || err != nil {
			t.Errorf("Skip(%d) of %s = %v, %v; want %v, nil", tt.step, tt.value, got, err, tt.want)
		}
	}
	data, _ := def.Decode([]byte(`{"id":"g-1"}`))
	var pe *saga.PanicError
	if got, err := def.Skip(context.Background(), 2, data); got || !errors.As(err, &pe) {
		t.Errorf("a panicking Skip = %v, %v; want false and a *PanicError", got, err)
	}
}

// TestAbandonedBuilderFinishingLate: a Do that outlives its Timeout is
// abandoned; when it returns later it must not write anything the caller
// already read (go test -race tells).
func TestAbandonedBuilderFinishingLate(t *testing.T) {
	release := make(chan struct{})
	done := make(chan struct{})
	def := saga.New("late", saga.Step[v2]{Name: "s", CallTimeout: 20 * time.Millisecond,
		Do: func(context.Context, *v2) (saga.Command, error) {
			defer close(done)
			<-release
			return saga.Command{Participant: "p", Type: "T"}, nil
		}})
	data, err := def.DecodeStored([]byte(`{"id":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := def.Do(context.Background(), 0, data)
	if !errors.Is(err, saga.ErrTimeout) || cmd != (saga.Command{}) {
		t.Fatalf("Do = %+v, %v; want the zero command and ErrTimeout", cmd, err)
	}
	close(release)
	<-done
}

// TestCallsAfterAbandonedOnes: calls run on reused goroutines; a goroutine
// whose call hangs is not handed another one, and a hung Skip does not
// hold up the calls after it. Once the hung calls return, their
// goroutines serve calls again.
func TestCallsAfterAbandonedOnes(t *testing.T) {
	release := make(chan struct{})
	def := saga.New("hung", saga.Step[v2]{Name: "s", CallTimeout: 20 * time.Millisecond,
		Do: func(context.Context, *v2) (saga.Command, error) {
			return saga.Command{Participant: "p", Type: "T"}, nil
		},
		Skip: func(d *v2) bool { <-release; return false }})
	data, err := def.DecodeStored([]byte(`{"id":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, err := def.Skip(context.Background(), 0, data); !errors.Is(err, saga.ErrTimeout) {
			t.Fatalf("Skip that hangs = %v, want ErrTimeout", err)
		}
	}
	check := func() {
		start := time.Now()
		for i := range 1000 {
			if cmd, err := def.Do(context.Background(), 0, data); err != nil || cmd.Type != "T" {
				t.Fatalf("call %d: Do = %+v, %v", i, cmd, err)
			}
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("1000 quick calls took %v", d)
		}
	}
	check()
	close(release)
	check()

	// A cancelled ctx ends the wait for a Skip, as it does for Call.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	block := make(chan struct{})
	defer close(block)
	slow := saga.New("slow", saga.Step[v2]{Name: "s", CallTimeout: time.Minute,
		Do:   func(context.Context, *v2) (saga.Command, error) { return saga.Command{}, nil },
		Skip: func(*v2) bool { <-block; return true }})
	start := time.Now()
	if _, err := slow.Skip(ctx, 0, data); !errors.Is(err, saga.ErrTimeout) || time.Since(start) > time.Second {
		t.Errorf("Skip with a cancelled ctx = %v after %v, want ErrTimeout at once", err, time.Since(start))
	}
}
