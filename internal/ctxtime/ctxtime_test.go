package ctxtime_test

import (
	"context"
	"testing"
	"time"

	"github.com/ksaga/ksaga/internal/ctxtime"
)

func TestSleep(t *testing.T) {
	if !ctxtime.Sleep(context.Background(), time.Millisecond) {
		t.Error("Sleep with a live context reported false, want true")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	began := time.Now()
	if ctxtime.Sleep(ctx, time.Hour) {
		t.Error("Sleep with an ended context reported true, want false")
	}
	if waited := time.Since(began); waited > time.Second {
		t.Errorf("Sleep with an ended context waited %v, want it to return at once", waited)
	}
}
