package sagatest

import (
	"encoding/json"
	"testing"

	"github.com/ksaga/ksaga/internal/sagadef"
	"github.com/ksaga/ksaga/saga"
)

// Compatible fails t when next cannot take over the running sagas of old
// (saga.Compatible lists the rules), and when samples, data values of old's
// type as its sagas store them, do not become next's data: through the
// Migration next gives for old (saga.Definition.Adopts), or, without one,
// by decoding as next's type. Run it in the saga's own tests for every
// version that replaces another without hosting it:
//
//	func TestV3TakesOverV2(t *testing.T) {
//		sagatest.Compatible(t, order.V2(store), order.V3(store), order.Order{OrderID: "o-1", …})
//	}
//
// A change it refuses ships as a new version hosted beside the old one
// until the old one drains (orchestrator.Host).
func Compatible(t testing.TB, old, next *saga.Definition, samples ...any) {
	t.Helper()
	if err := saga.Compatible(old, next); err != nil {
		t.Fatal(err)
	}
	o, n := sagadef.Of(old), sagadef.Of(next)
	for i, sample := range samples {
		stored, err := json.Marshal(sample)
		if err != nil {
			t.Fatalf("sample %d: encode: %v", i, err)
		}
		if _, err := o.DecodeStored(stored); err != nil {
			t.Fatalf("sample %d is not data of %s v%d: %v", i, old.Name(), old.Version(), err)
		}
		if _, ok := n.Adopted()[old.Version()]; ok {
			_, err = n.MigrateStored(old.Version(), stored)
		} else {
			_, err = n.DecodeStored(stored)
		}
		if err != nil {
			t.Fatalf("sample %d of %s v%d does not become data of v%d: %v", i, old.Name(), old.Version(), next.Version(), err)
		}
	}
}
