package sagatest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/sagatest"
)

type account struct {
	ID    string `json:"id"`
	Cents int64  `json:"cents"`
}

type accountV3 struct {
	ID     string `json:"id"`
	Amount int64  `json:"amount_cents"`
}

// fatalTB records a Fatal instead of ending the test, so that a test can
// see what Compatible fails with.
type fatalTB struct {
	testing.TB
	failed string
}

func (f *fatalTB) Helper()           {}
func (f *fatalTB) Fatal(args ...any) { f.failed = fmt.Sprint(args...); panic(f) }
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
	panic(f)
}

// compatible runs sagatest.Compatible and returns what it failed with, "" if
// nothing.
func compatible(t *testing.T, old, next *saga.Definition, samples ...any) (failed string) {
	f := &fatalTB{TB: t}
	defer func() {
		if v := recover(); v != nil && v != any(f) {
			panic(v)
		}
		failed = f.failed
	}()
	sagatest.Compatible(f, old, next, samples...)
	return ""
}

func send(context.Context, *account) (saga.Command, error) {
	return saga.Command{Participant: "bank", Type: "T"}, nil
}

func sendV3(context.Context, *accountV3) (saga.Command, error) {
	return saga.Command{Participant: "bank", Type: "T"}, nil
}

func TestCompatible(t *testing.T) {
	v1 := saga.New("account", saga.Step[account]{Name: "debit", Do: send, Undo: send})
	appended := saga.New("account",
		saga.Step[account]{Name: "debit", Do: send, Undo: send},
		saga.Step[account]{Name: "notify", Do: send}).WithVersion(2)
	inserted := saga.New("account",
		saga.Step[account]{Name: "check", Do: send},
		saga.Step[account]{Name: "debit", Do: send, Undo: send}).WithVersion(2)
	migrated := saga.New("account", saga.Step[accountV3]{Name: "debit", Do: sendV3, Undo: sendV3}).WithVersion(3).
		Adopts(v1, saga.Migrate(func(a *account) (*accountV3, error) { return &accountV3{ID: a.ID, Amount: a.Cents}, nil }))
	retyped := saga.New("account", saga.Step[accountV3]{Name: "debit", Do: sendV3, Undo: sendV3}).WithVersion(3)
	sample := account{ID: "a-1", Cents: 250}

	if got := compatible(t, v1, appended, sample); got != "" {
		t.Errorf("a step appended: %s", got)
	}
	if got := compatible(t, v1, inserted, sample); !strings.Contains(got, "step check is inserted before step debit of the older version (rule 7)") {
		t.Errorf("a step inserted: %q, want rule 7", got)
	}
	if got := compatible(t, v1, migrated, sample); got != "" {
		t.Errorf("a data type migrated: %s", got)
	}
	if got := compatible(t, v1, retyped, map[string]any{"id": "a-1", "cents": "250"}); !strings.Contains(got, "is not data of account v1") {
		t.Errorf("a sample of another type: %q", got)
	}
	// A retyped field with no migration: v1's {"cents": 250} decodes into
	// accountV3 leniently (unknown fields ignored), so it passes; a field
	// whose type changed does not.
	type strict struct {
		ID    string `json:"id"`
		Cents string `json:"cents"`
	}
	strictDef := saga.New("account", saga.Step[strict]{Name: "debit",
		Do:   func(context.Context, *strict) (saga.Command, error) { return saga.Command{}, nil },
		Undo: func(context.Context, *strict) (saga.Command, error) { return saga.Command{}, nil }}).WithVersion(4)
	if got := compatible(t, v1, strictDef, sample); !strings.Contains(got, "does not become data of v4") {
		t.Errorf("a field whose type changed, without a migration: %q", got)
	}
}
