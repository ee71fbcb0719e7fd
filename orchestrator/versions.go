package orchestrator

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ksaga/ksaga/internal/sagadef"
	"github.com/ksaga/ksaga/saga"
)

// Versions. An engine runs the newest definition it is given (New's def)
// and hosts older versions of it (Host): a saga runs to its end on the
// version it started with, recorded in its state (State.DefinitionVersion);
// new sagas start on the newest. A hosted definition that adopts an older
// version (saga.Definition.Adopts) takes over that version's sagas: the
// first transaction that changes one moves it to the adopting version,
// steps matched by name, data migrated. When a partition is assigned, the
// engine refuses to run (Run returns an error wrapping
// saga.ErrVersionNotHosted) if the state topic holds running sagas that no
// hosted version runs or adopts, or whose step is not where their version
// has it: the definition changed under them without a new version.

// StartOn makes new sagas start on version v, one of the versions the
// engine runs (New's definition or one given to Host), rather than on the
// newest. A deploy of a new version to several instances goes in two
// steps: first every instance hosts the new version while new sagas still
// start on the current one (an instance that has not been replaced yet
// would refuse a partition holding sagas of a version it does not know),
// then every instance starts them on the new one.
func StartOn(v int) Opt { return opt(func(c *config) { c.startOn = v }) }

// Host makes the engine run, beside the newest definition given to New,
// the sagas still in flight on these older versions of it. Each must have
// New's saga name and a version lower than its. Keep a version hosted until
// no saga runs on it (ksaga_sagas_by_version, sagactl saga list).
func Host(older ...*saga.Definition) Opt {
	return opt(func(c *config) { c.hosted = append(c.hosted, older...) })
}

// versions are the machines of the hosted definitions.
type versions struct {
	newest *machine // the machine new sagas start on (StartOn)
	byV    map[int]*machine
	// adopters maps an adopted version to the hosted machine that takes
	// its sagas over, and old to the adopted definition's machine (its
	// steps, for the mapping by name).
	adopters map[int]*machine
	old      map[int]*machine
}

func newVersions(def *sagadef.Definition, hosted []*sagadef.Definition, startOn int, mk func(*sagadef.Definition) *machine) (*versions, error) {
	vs := &versions{newest: mk(def), byV: make(map[int]*machine), adopters: make(map[int]*machine), old: make(map[int]*machine)}
	vs.byV[def.Version()] = vs.newest
	for _, d := range hosted {
		switch {
		case d == nil:
			return nil, fmt.Errorf("host: nil definition")
		case d.Name() != def.Name():
			return nil, fmt.Errorf("host: saga %s is not %s", d.Name(), def.Name())
		case d.Version() >= def.Version():
			return nil, fmt.Errorf("host: %s version %d is not older than the newest, %d", d.Name(), d.Version(), def.Version())
		case vs.byV[d.Version()] != nil:
			return nil, fmt.Errorf("host: %s version %d is given twice", d.Name(), d.Version())
		}
		vs.byV[d.Version()] = mk(d)
	}
	if startOn != 0 {
		if vs.byV[startOn] == nil {
			return nil, fmt.Errorf("start on: %s version %d is not hosted", def.Name(), startOn)
		}
		vs.newest = vs.byV[startOn]
	}
	for _, m := range vs.byV {
		for v, old := range m.def.Adopted() {
			if vs.byV[v] != nil {
				continue // hosted itself: its sagas run on it
			}
			if prev := vs.adopters[v]; prev != nil && prev.version > m.version {
				continue // the newest adopter takes them
			}
			vs.adopters[v], vs.old[v] = m, mk(old)
		}
	}
	return vs, nil
}

// all returns the hosted machines, newest first.
func (vs *versions) all() []*machine {
	ms := slices.Collect(maps.Values(vs.byV))
	slices.SortFunc(ms, func(a, b *machine) int { return b.version - a.version })
	return ms
}

// hosted lists the versions run or adopted, for messages.
func (vs *versions) hosted() string {
	var parts []string
	for _, m := range vs.all() {
		parts = append(parts, fmt.Sprint(m.version))
	}
	for _, v := range slices.Sorted(maps.Keys(vs.adopters)) {
		parts = append(parts, fmt.Sprintf("%d (adopted by %d)", v, vs.adopters[v].version))
	}
	return strings.Join(parts, ", ")
}

// unrunnable says why the engine cannot run the saga of st: its version is
// neither hosted nor adopted, or its step is not where the hosted
// definition of its version has it. "" means it can.
func (vs *versions) unrunnable(st *State) string {
	v := st.OnVersion()
	m := vs.byV[v]
	if m == nil {
		if m = vs.old[v]; m == nil {
			return fmt.Sprintf("version %d is not hosted", v)
		}
	}
	if at := named(m, st.Step, st.StepName); at != "" {
		return at
	}
	return named(m, st.Undoing, st.UndoingName)
}

// named checks that step i of m is the step named name ("": not
// recorded).
func named(m *machine, i int, name string) string {
	if name == "" || (i >= 0 && i < len(m.steps) && m.steps[i].Name == name) {
		return ""
	}
	return fmt.Sprintf("its step %s is not step %d of version %d of the definition: the steps changed without a new version", name, i, m.version)
}

// machineOf returns the machine that runs st's saga, with st and data as
// it runs them: for a saga of an adopted version, a copy of st moved to the
// adopting version and its data migrated.
func (vs *versions) machineOf(st *State) (*machine, *State, any, error) {
	v := st.OnVersion()
	if m := vs.byV[v]; m != nil {
		if why := vs.unrunnable(st); why != "" {
			return nil, nil, nil, fmt.Errorf("saga %s: %s", st.ID, why)
		}
		data, err := m.def.DecodeStored(st.Data)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("stored data of saga %s (version %d) no longer decodes into the saga's data type: %w", st.ID, st.Version, err)
		}
		return m, st, data, nil
	}
	to, from := vs.adopters[v], vs.old[v]
	if to == nil {
		return nil, nil, nil, fmt.Errorf("saga %s runs on version %d of %s, which this engine neither hosts nor adopts (it hosts %s)", st.ID, v, st.Type, vs.hosted())
	}
	if why := vs.unrunnable(st); why != "" {
		return nil, nil, nil, fmt.Errorf("saga %s: %s", st.ID, why)
	}
	data, err := to.def.MigrateStored(v, st.Data)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("saga %s: migrate its data from version %d to %d: %w", st.ID, v, to.version, err)
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("saga %s: encode its data migrated to version %d: %w", st.ID, to.version, err)
	}
	return to, adopt(st, from, to, raw), data, nil
}

// adopt returns a copy of st, a saga of from's version, moved to to's: its
// step positions mapped by name (saga.Compatible guarantees every step of
// from is in to), its data raw.
func adopt(st *State, from, to *machine, raw json.RawMessage) *State {
	at := func(i int) int {
		if i < 0 || i >= len(from.steps) {
			return i
		}
		return to.def.StepIndex(from.steps[i].Name)
	}
	c := st.clone()
	c.Step, c.Undoing = at(c.Step), at(c.Undoing)
	for k := range c.Plan {
		c.Plan[k] = at(c.Plan[k])
	}
	for k := range c.Undone {
		c.Undone[k] = at(c.Undone[k])
	}
	for k := range c.Group {
		c.Group[k].Step = at(c.Group[k].Step)
	}
	c.Data = raw
	to.stamp(c)
	return c
}

// VersionCount is how many running sagas of the partitions an engine owns
// are on one version of its definition.
type VersionCount struct {
	Version int
	// Current is set for the version new sagas start on.
	Current bool
	Sagas   int
}

// Versions returns the running sagas of the partitions this instance
// owns per definition version: every hosted version, with 0 where none
// runs, and any other version a saga is on. It is safe to call from any
// goroutine.
func (e *Engine) Versions() []VersionCount {
	counts := make(map[int]int)
	for v := range e.vs.byV {
		counts[v] = 0
	}
	e.flightMu.Lock()
	for _, f := range e.flight {
		counts[f.version]++
	}
	e.flightMu.Unlock()
	out := make([]VersionCount, 0, len(counts))
	for _, v := range slices.Sorted(maps.Keys(counts)) {
		out = append(out, VersionCount{Version: v, Current: v == e.vs.newest.version, Sagas: counts[v]})
	}
	return out
}

// checkVersions refuses partition p when its index holds running sagas
// the engine cannot run (versions.unrunnable), with one line that says
// which version, how many sagas and what to do.
func (e *Engine) checkVersions(p int32, x *sagaIndex) error {
	bad := make(map[int]int)
	for _, ent := range x.sagas {
		if ent.ended == 0 && ent.bad {
			bad[int(ent.version)]++
		}
	}
	if len(bad) == 0 {
		return nil
	}
	example := x.example
	var which []string
	for _, v := range slices.Sorted(maps.Keys(bad)) {
		which = append(which, fmt.Sprintf("%d on version %d", bad[v], v))
	}
	return fmt.Errorf("%w: saga %s: partition %d of %s holds running sagas this engine cannot run (%s; e.g. %s): it hosts versions %s. Deploy a build that hosts their version (orchestrator.Host, or a newer version that Adopts it) until they end, then remove it",
		saga.ErrVersionNotHosted, e.def.Name(), p, e.stateTopic, strings.Join(which, ", "), example, e.vs.hosted())
}
