package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestCloseWhileDraining checks that once the drain has begun, /readyz
// fails and every answer closes its keep-alive connection, so that callers
// reconnect, through their Service, to an instance that is not stopping.
func TestCloseWhileDraining(t *testing.T) {
	a := &app{}
	srv := httptest.NewServer(a.closeWhileDraining(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})))
	defer srv.Close()
	ready := a.readyUnlessDraining(func(context.Context) error { return nil })

	get := func() *http.Response {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := get(); resp.Close {
		t.Error("before the drain: the answer closes its connection")
	}
	if err := ready(context.Background()); err != nil {
		t.Errorf("before the drain: /readyz fails: %v", err)
	}
	a.draining.Store(true)
	if resp := get(); !resp.Close {
		t.Error("during the drain: the answer keeps its connection open, want Connection: close")
	}
	if err := ready(context.Background()); !errors.Is(err, errDraining) {
		t.Errorf("during the drain: /readyz: got %v, want %v", err, errDraining)
	}
}
