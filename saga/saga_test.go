package saga_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
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
