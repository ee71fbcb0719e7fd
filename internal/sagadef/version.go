package sagadef

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// Versions. A saga runs to its end on the definition it started with:
// sagas live for minutes to days, deploys happen every day. A definition
// carries a version (1 unless set with WithVersion); the engine records it
// in each saga's state, hosts every version still in flight beside the
// newest one, and starts new sagas on the newest. A change to a saga's steps
// that a running saga could not survive (a step inserted before the one it
// waits on, a step removed, …) ships as a new version:
//
//	var V1 = saga.New("order", reserve, pay, ship)
//	var V2 = saga.New("order", coupon, reserve, pay, ship).WithVersion(2)
//	// the daemon hosts both until no saga runs on V1 (ksaga_sagas_by_version)
//
// A new version may also take over the sagas of an older one (Adopts), so
// that the older one need not stay hosted: their state moves to the new
// version, step by step name, and their data through a Migration, in the
// transaction that first touches each saga after the deploy. Compatible
// says whether it can; sagatest.Compatible checks it in a saga author's own
// tests.

// Migration turns the stored data of a saga started on an older version
// into the data of the version that adopts it. Build one with Migrate.
type Migration func(stored []byte) (any, error)

// Migrate returns the Migration that decodes the stored data of the older
// version into an Old (leniently, as DecodeStored does) and hands it to fn,
// whose New is the adopting version's data type.
func Migrate[Old, New any](fn func(old *Old) (*New, error)) Migration {
	return func(stored []byte) (any, error) {
		old := new(Old)
		if err := json.Unmarshal(stored, old); err != nil {
			return nil, fmt.Errorf("%w: decode the data of the older version: %w", ErrInvalidData, err)
		}
		data, err := fn(old)
		if err != nil {
			return nil, fmt.Errorf("%w: migrate: %w", ErrInvalidData, err)
		}
		if data == nil {
			return nil, fmt.Errorf("%w: migrate: returned no data", ErrInvalidData)
		}
		return data, nil
	}
}

// adoption is an older version that a definition takes over.
type adoption struct {
	old     *Definition
	migrate Migration // nil: the stored data decodes as the new type
}

// Version returns the definition's version: 1 unless set by WithVersion.
func (d *Definition) Version() int {
	if d.version == 0 {
		return 1
	}
	return d.version
}

// WithVersion returns a copy of d numbered v (>= 1). It panics for v < 1,
// like New for an invalid definition.
func (d *Definition) WithVersion(v int) *Definition {
	if v < 1 {
		panic(fmt.Sprintf("saga %s: version %d must be at least 1", d.name, v))
	}
	c := *d
	c.version = v
	c.adopts = nil
	return &c
}

// Adopts returns a copy of d that takes over the running sagas of old, an
// older version of the same saga type: the engine no longer needs to host
// old. migrate turns old's data into d's; nil means old's stored data
// decodes as d's data type (DecodeStored is lenient: unknown fields are
// ignored). It panics when d cannot take over old's sagas (Compatible
// explains why): that is a programming error, found at initialization.
func (d *Definition) Adopts(old *Definition, migrate Migration) *Definition {
	if err := Compatible(old, d); err != nil {
		panic(err)
	}
	c := *d
	c.adopts = make(map[int]adoption, len(d.adopts)+1)
	for v, a := range d.adopts {
		c.adopts[v] = a
	}
	c.adopts[old.Version()] = adoption{old: old, migrate: migrate}
	return &c
}

// Adopted returns the older definitions that d takes over (Adopts), by
// version.
func (d *Definition) Adopted() map[int]*Definition {
	out := make(map[int]*Definition, len(d.adopts))
	for v, a := range d.adopts {
		out[v] = a.old
	}
	return out
}

// MigrateStored decodes the stored data of a saga that started on version
// from, which d adopts, into d's data type. It is the engine's path for
// the first touch of an adopted saga.
func (d *Definition) MigrateStored(from int, stored []byte) (any, error) {
	a, ok := d.adopts[from]
	if !ok {
		return nil, fmt.Errorf("saga %s version %d does not adopt version %d", d.name, d.Version(), from)
	}
	if a.migrate == nil {
		return d.DecodeStored(stored)
	}
	var data any
	err := callPure(context.Background(), DefaultCallTimeout, func() error {
		var err error
		data, err = a.migrate(stored)
		return err
	})
	if err != nil {
		return nil, err
	}
	return data, nil
}

// IncompatibleError says why a definition cannot take over the running
// sagas of another: one line per rule it breaks.
type IncompatibleError struct {
	Old, New string // "order v1", "order v2"
	Reasons  []string
}

func (e *IncompatibleError) Error() string {
	s := fmt.Sprintf("%s cannot take over the running sagas of %s:", e.New, e.Old)
	for _, r := range e.Reasons {
		s += "\n  - " + r
	}
	return s
}

// Compatible reports whether next can take over the running sagas of old: a
// saga that old left anywhere (waiting on a step's reply, in a parallel
// group, compensating, parked) finds in next the same steps to wait on,
// to compensate and to run next. The rules, each there for a saga in
// flight:
//
//  1. Same saga type, and a higher version.
//  2. No step of old is removed or renamed: a saga may wait on it, or have
//     to compensate it. Steps are matched by name.
//  3. Each step of old keeps its kind (a Do step stays a Do step, a Local
//     step a Local one): a saga that waits on a reply still gets one.
//  4. A step of old with a compensation keeps one: a saga that ran it may
//     have to undo it.
//  5. The steps of old keep their order: a saga past a step must not find
//     it ahead, nor a step it has not reached behind it.
//  6. Each step of old keeps its parallel group, and each group of old its
//     members: a saga in a group waits on exactly those.
//  7. Steps are added only after the last step of old: a saga already
//     past the place of an inserted step would end without ever running it
//     (and would compensate it when it fails). A step to insert earlier
//     needs a new version that runs beside old until old drains.
//
// Anything else may change: retry policies, timeouts, Park, Skip, the code
// of every function (it runs for the sagas in flight from the deploy on),
// and the data type, with a Migration or when the stored data decodes as
// the new type.
func Compatible(old, next *Definition) error {
	e := &IncompatibleError{
		Old: fmt.Sprintf("%s v%d", old.name, old.Version()),
		New: fmt.Sprintf("%s v%d", next.name, next.Version()),
	}
	add := func(format string, args ...any) { e.Reasons = append(e.Reasons, fmt.Sprintf(format, args...)) }
	if old.name != next.name {
		add("it is another saga type (%s, not %s)", next.name, old.name)
	}
	if next.Version() <= old.Version() {
		add("its version %d is not higher than %d", next.Version(), old.Version())
	}
	at := make(map[string]int, len(next.steps))
	for i, s := range next.steps {
		at[s.Name] = i
	}
	last := -1
	for _, s := range old.steps {
		j, ok := at[s.Name]
		if !ok {
			add("step %s is removed (rule 2)", s.Name)
			continue
		}
		n := next.steps[j]
		switch {
		case s.Local != n.Local:
			add("step %s changes kind: %s (rule 3)", s.Name, kinds(s.Local, n.Local))
		case s.Undoable && !n.Undoable:
			add("step %s loses its compensation (rule 4)", s.Name)
		}
		if j < last {
			add("step %s moves before a step that came before it (rule 5)", s.Name)
		}
		if s.Group != n.Group {
			add("step %s moves from parallel group %q to %q (rule 6)", s.Name, s.Group, n.Group)
		}
		last = max(last, j)
	}
	for i, n := range next.steps {
		if slices.ContainsFunc(old.steps, func(s StepInfo) bool { return s.Name == n.Name }) {
			continue
		}
		if i < last {
			add("step %s is inserted before step %s of the older version (rule 7)", n.Name, next.steps[last].Name)
		} else if n.Group != "" && slices.ContainsFunc(old.steps, func(s StepInfo) bool { return s.Group == n.Group }) {
			add("step %s joins parallel group %s of the older version (rule 6)", n.Name, n.Group)
		}
	}
	if len(e.Reasons) > 0 {
		return e
	}
	return nil
}

func kinds(oldLocal, newLocal bool) string {
	name := func(local bool) string {
		if local {
			return "Local"
		}
		return "Do"
	}
	return name(oldLocal) + " becomes " + name(newLocal)
}

// ErrVersionNotHosted is wrapped by the engine's error when the state topic
// holds running sagas of a version that no hosted definition runs or
// adopts.
var ErrVersionNotHosted = errors.New("saga version not hosted")

// StepIndex returns the index of the step named name, or -1.
func (d *Definition) StepIndex(name string) int {
	return slices.IndexFunc(d.steps, func(s StepInfo) bool { return s.Name == name })
}
