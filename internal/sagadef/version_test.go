package sagadef_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	saga "github.com/ksaga/ksaga/internal/sagadef"
)

type acct struct {
	ID    string `json:"id"`
	Cents int64  `json:"cents"`
}

type acctV2 struct {
	ID     string `json:"id"`
	Amount struct {
		Cents    int64  `json:"cents"`
		Currency string `json:"currency"`
	} `json:"amount"`
}

func do(context.Context, *acct) (saga.Command, error) {
	return saga.Command{Participant: "p", Type: "T"}, nil
}
func local(context.Context, *acct) error { return nil }

func def(v int, steps ...saga.Step[acct]) *saga.Definition {
	return saga.New("acct", steps...).WithVersion(v)
}

var (
	reserve  = saga.Step[acct]{Name: "reserve", Do: do, Undo: do}
	charge   = saga.Step[acct]{Name: "charge", Do: do, Undo: do}
	ship     = saga.Step[acct]{Name: "ship", Do: do}
	record   = saga.Step[acct]{Name: "record", Local: local}
	notify   = saga.Step[acct]{Name: "notify", Do: do}
	reserveG = saga.Step[acct]{Name: "reserve", Do: do, Undo: do, Group: "g"}
	chargeG  = saga.Step[acct]{Name: "charge", Do: do, Undo: do, Group: "g"}
)

// TestCompatible has, for each rule of saga.Compatible, a pair of
// definitions it refuses and one it accepts.
func TestCompatible(t *testing.T) {
	base := def(1, reserve, charge, ship, record)
	for _, tc := range []struct {
		rule     string
		old, new *saga.Definition
		refused  string // "" means accepted
	}{
		{"1 type", base, saga.New("other", reserve, charge, ship, record).WithVersion(2), "another saga type"},
		{"1 version", base, def(1, reserve, charge, ship, record), "not higher"},
		{"1 accepted", base, def(2, reserve, charge, ship, record), ""},
		{"2 removed", base, def(2, reserve, charge, record), "step ship is removed"},
		{"2 renamed", base, def(2, reserve, charge, saga.Step[acct]{Name: "deliver", Do: do}, record), "step ship is removed"},
		{"2 accepted: the code changes", base, def(2, reserve, charge, saga.Step[acct]{Name: "ship", Do: do, Undo: do}, record), ""},
		{"3 kind", base, def(2, reserve, charge, saga.Step[acct]{Name: "ship", Local: local}, record), "changes kind: Do becomes Local"},
		{"3 accepted: retry and timeouts change", base, def(2, reserve, charge, saga.Step[acct]{Name: "ship", Do: do, ReplyTimeout: 1, CallTimeout: 1, Park: true}, record), ""},
		{"4 compensation lost", base, def(2, reserve, saga.Step[acct]{Name: "charge", Do: do}, ship, record), "charge loses its compensation"},
		{"4 accepted: a compensation gained", base, def(2, reserve, charge, saga.Step[acct]{Name: "ship", Do: do, Undo: do}, record), ""},
		{"5 order", base, def(2, charge, reserve, ship, record), "moves before"},
		{"5 accepted", base, def(2, reserve, charge, ship, record, notify), ""},
		{"6 group", base, def(2, reserveG, chargeG, ship, record), "moves from parallel group"},
		{"6 new member", def(1, reserveG, chargeG, ship), def(2, reserveG, chargeG, saga.Step[acct]{Name: "hold", Do: do, Group: "g"}, ship), "inserted before"},
		{"6 accepted: same group", def(1, reserveG, chargeG, ship), def(2, reserveG, chargeG, ship, notify), ""},
		{"7 inserted", base, def(2, notify, reserve, charge, ship, record), "step notify is inserted before step record"},
		{"7 accepted: appended", base, def(2, reserve, charge, ship, record, notify), ""},
	} {
		t.Run(tc.rule, func(t *testing.T) {
			err := saga.Compatible(tc.old, tc.new)
			switch {
			case tc.refused == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.refused != "" && err == nil:
				t.Fatalf("accepted, want refused with %q", tc.refused)
			case tc.refused != "" && !strings.Contains(err.Error(), tc.refused):
				t.Fatalf("refused with %v, want %q", err, tc.refused)
			}
			var ie *saga.IncompatibleError
			if err != nil && !errors.As(err, &ie) {
				t.Fatalf("error %T is not an *IncompatibleError", err)
			}
		})
	}
}

func TestAdoptsMigratesData(t *testing.T) {
	v1 := def(1, reserve, charge)
	v2 := saga.New("acct",
		saga.Step[acctV2]{Name: "reserve", Do: func(context.Context, *acctV2) (saga.Command, error) { return saga.Command{}, nil }, Undo: func(context.Context, *acctV2) (saga.Command, error) { return saga.Command{}, nil }},
		saga.Step[acctV2]{Name: "charge", Do: func(context.Context, *acctV2) (saga.Command, error) { return saga.Command{}, nil }, Undo: func(context.Context, *acctV2) (saga.Command, error) { return saga.Command{}, nil }},
	).WithVersion(2).Adopts(v1, saga.Migrate(func(old *acct) (*acctV2, error) {
		n := &acctV2{ID: old.ID}
		n.Amount.Cents, n.Amount.Currency = old.Cents, "EUR"
		return n, nil
	}))
	data, err := v2.MigrateStored(1, []byte(`{"id":"a-1","cents":250}`))
	if err != nil {
		t.Fatal(err)
	}
	got := data.(*acctV2)
	if got.ID != "a-1" || got.Amount.Cents != 250 || got.Amount.Currency != "EUR" {
		t.Fatalf("migrated %+v", got)
	}
	if _, err := v2.MigrateStored(1, []byte(`{"id":7}`)); !errors.Is(err, saga.ErrInvalidData) {
		t.Fatalf("undecodable old data: %v, want ErrInvalidData", err)
	}
	if _, err := v2.MigrateStored(3, []byte(`{}`)); err == nil {
		t.Fatal("a version v2 does not adopt migrated")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("Adopts of an incompatible version did not panic")
		}
	}()
	def(3, charge).Adopts(v1, nil)
}
