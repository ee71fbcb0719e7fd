package pgdedupe_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/participant/pgdedupe"
)

// TestHandler delivers batches to a Handler: a command twice in one batch
// acts once; a batch that fails halfway keeps what it committed, and its
// retry answers the committed commands with their stored replies.
func TestHandler(t *testing.T) {
	tbl := newTable(t, unique("hotel-handler"))
	l := newLedger(t)
	down := true // the effect of t-3 fails while down
	h := tbl.Handler(func(ctx context.Context, tx pgx.Tx, req participant.Request) (participant.Reply, error) {
		if got, ok := participant.RequestFrom(ctx); !ok || got.MessageID != req.MessageID {
			t.Errorf("ctx carries request %+v (%v), want %s", got, ok, req.MessageID)
		}
		if req.SagaID == "t-3" && down {
			return participant.Reply{}, errors.New("rooms service down")
		}
		return l.effect(participant.Success())(ctx, tx)
	})
	ctx := context.Background()
	batch := []participant.Request{request("t-1", "m-1"), request("t-2", "m-2"), request("t-1", "m-1"), request("t-3", "m-3")}
	if _, err := h.Handle(ctx, batch); err == nil || !strings.Contains(err.Error(), "rooms service down") {
		t.Fatalf("got error %v, want t-3's", err)
	}
	for _, id := range []string{"t-1", "t-2", "t-3"} {
		want := map[string]int{"t-1": 1, "t-2": 1}[id]
		if n := l.rows(t, id); n != want {
			t.Errorf("after the failed batch: got %d effects for %s, want %d", n, id, want)
		}
	}
	down = false
	replies, err := h.Handle(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	if len(replies) != len(batch) {
		t.Fatalf("got %d replies, want %d", len(replies), len(batch))
	}
	for i, r := range replies {
		if r.Outcome != participant.Success().Outcome {
			t.Errorf("reply %d: got %+v, want success", i, r)
		}
	}
	for _, id := range []string{"t-1", "t-2", "t-3"} {
		if n := l.rows(t, id); n != 1 {
			t.Errorf("after the retry: got %d effects for %s, want 1", n, id)
		}
	}
	if n := l.calls.Load(); n != 3 {
		t.Errorf("got %d calls of the effect, want 3", n)
	}
}

// TestRun checks Run's request: the one in ctx, or ErrNoRequest.
func TestRun(t *testing.T) {
	tbl := newTable(t, unique("hotel-run"))
	l := newLedger(t)
	ctx := context.Background()
	if _, err := tbl.Run(ctx, l.effect(participant.Success())); !errors.Is(err, participant.ErrNoRequest) {
		t.Errorf("without a request in ctx: got error %v, want ErrNoRequest", err)
	}
	h := participant.Routes{
		"BookRoom": func(ctx context.Context, _ participant.Request) (participant.Reply, error) {
			return tbl.Run(ctx, l.effect(participant.Success()))
		},
	}
	req := request("t-1", "m-1")
	for range 2 {
		if _, err := h.Handle(ctx, []participant.Request{req}); err != nil {
			t.Fatal(err)
		}
	}
	if n := l.rows(t, "t-1"); n != 1 {
		t.Errorf("got %d effects, want 1", n)
	}
	req.MessageID = ""
	if _, err := tbl.Do(ctx, req, l.effect(participant.Success())); err == nil {
		t.Error("a request without a message id: got no error")
	}
}

// TestNew checks what New refuses.
func TestNew(t *testing.T) {
	p := pool(t)
	tests := []struct {
		name  string
		ok    bool
		build func() (*pgdedupe.Table, error)
	}{
		{"defaults", true, func() (*pgdedupe.Table, error) { return pgdedupe.New(p, "hotel") }},
		{"schema.name", true, func() (*pgdedupe.Table, error) { return pgdedupe.New(p, "hotel", pgdedupe.TableName("app.dedupe")) }},
		{"nil pool", false, func() (*pgdedupe.Table, error) { return pgdedupe.New(nil, "hotel") }},
		{"no participant", false, func() (*pgdedupe.Table, error) { return pgdedupe.New(p, "") }},
		{"table name with a quote", false, func() (*pgdedupe.Table, error) {
			return pgdedupe.New(p, "hotel", pgdedupe.TableName(`x"; DROP TABLE y; --`))
		}},
		{"three-part table name", false, func() (*pgdedupe.Table, error) { return pgdedupe.New(p, "hotel", pgdedupe.TableName("a.b.c")) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl, err := tt.build()
			if tt.ok && (err != nil || tbl == nil) {
				t.Errorf("got %v, %v, want a table", tbl, err)
			}
			if !tt.ok && err == nil {
				t.Errorf("got no error, want one")
			}
		})
	}
}
