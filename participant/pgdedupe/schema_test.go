package pgdedupe_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/participant/pgdedupe"
)

// TestSchema checks that the Schema constant is what Table.Schema writes
// for the default name, that both run twice, and that another name (in
// another schema) works end to end.
func TestSchema(t *testing.T) {
	p := pool(t)
	ctx := context.Background()
	name := unique("hotel-schema")
	tbl, err := pgdedupe.New(p, name)
	if err != nil {
		t.Fatal(err)
	}
	// Table.Schema quotes the names; Schema, for people to read, does not.
	if got := strings.ReplaceAll(tbl.Schema(), `"`, ""); got != pgdedupe.Schema {
		t.Errorf("Table.Schema() for the default name:\n%s\nwant Schema:\n%s", got, pgdedupe.Schema)
	}
	for range 2 {
		if _, err := p.Exec(ctx, pgdedupe.Schema); err != nil {
			t.Fatal(err)
		}
		if err := tbl.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := p.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS app`); err != nil {
		t.Fatal(err)
	}
	other := newTable(t, name, pgdedupe.TableName("app.received"))
	l := newLedger(t)
	req := request("t-1", "m-1")
	for range 2 {
		do(t, other, req, l.effect(participant.Success()))
	}
	if n := l.rows(t, "t-1"); n != 1 {
		t.Errorf("got %d effects, want 1", n)
	}
	if s := storedRow(t, "app.received", name, req.SagaType, req.MessageID); s != encode(t, participant.Success()) {
		t.Errorf("got stored reply %q in app.received, want %s", s, encode(t, participant.Success()))
	}
}

// TestDeleteOlderThan checks that the cleanup deletes the participant's
// rows older than its age, all of them across several statements, and
// nothing else; and that a command whose row is gone acts again, which is
// why rows must outlive redeliveries.
func TestDeleteOlderThan(t *testing.T) {
	p := pool(t)
	ctx := context.Background()
	hotel, spa := unique("hotel-cleanup"), unique("spa-cleanup")
	tbl := newTable(t, hotel, pgdedupe.TableName("cleanup_dedupe"))
	neighbour := newTable(t, spa, pgdedupe.TableName("cleanup_dedupe"))
	l := newLedger(t)

	// 10,001 old rows of the hotel (more than one delete statement
	// takes), 3 recent ones, and 5 old rows of another participant.
	_, err := p.Exec(ctx, `INSERT INTO cleanup_dedupe (participant, saga_type, message_id, reply, created_at)
		SELECT $1, 'trip', 'old-' || i, '{"Outcome":"success","Reason":""}', now() - interval '8 days'
		FROM generate_series(1, 10001) AS i`, hotel)
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Exec(ctx, `INSERT INTO cleanup_dedupe (participant, saga_type, message_id, reply, created_at)
		SELECT $1, 'trip', 'old-' || i, '{"Outcome":"success","Reason":""}', now() - interval '8 days'
		FROM generate_series(1, 5) AS i`, spa)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		do(t, tbl, request(fmt.Sprintf("t-%d", i), fmt.Sprintf("new-%d", i)), l.effect(participant.Success()))
	}

	n, err := tbl.DeleteOlderThan(ctx, participant.DedupeTTL)
	if err != nil {
		t.Fatal(err)
	}
	if n != 10001 {
		t.Errorf("DeleteOlderThan deleted %d rows, want 10001", n)
	}
	count := func(name string) int {
		var c int
		if err := p.QueryRow(ctx, `SELECT count(*) FROM cleanup_dedupe WHERE participant = $1`, name).Scan(&c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	if c := count(hotel); c != 3 {
		t.Errorf("got %d rows of the hotel left, want the 3 recent ones", c)
	}
	if c := count(spa); c != 5 {
		t.Errorf("got %d rows of the spa left, want its 5", c)
	}

	// A redelivery of a command whose row was deleted acts again.
	old := request("t-old", "old-1")
	do(t, tbl, old, l.effect(participant.Success()))
	if c := l.rows(t, "t-old"); c != 1 {
		t.Errorf("command whose row was deleted: got %d effects, want 1 (it acts again)", c)
	}

	// Age 0 deletes every row written before the call; the neighbour's
	// cleanup leaves the hotel's alone.
	time.Sleep(10 * time.Millisecond)
	if _, err := neighbour.DeleteOlderThan(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if c := count(hotel); c != 4 {
		t.Errorf("after the spa's cleanup: got %d rows of the hotel, want 4", c)
	}
	if n, err := tbl.DeleteOlderThan(ctx, 0); err != nil || n != 4 {
		t.Errorf("DeleteOlderThan(0): got %d, %v, want 4 rows", n, err)
	}
}
