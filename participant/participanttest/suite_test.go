package participanttest

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/ksaga/ksaga/participant"
)

// memory is a participant in memory whose flaws are switches: the suite
// must pass it with none, and fail it with each. (It only checks the suite:
// real handlers keep their dedupe records in Redis or PostgreSQL.)
type memory struct {
	// noDedupe acts on every delivery; typeBlind keys dedupe records by
	// message id alone; forgetFailures stores success replies only;
	// noLock checks and stores the dedupe record in two steps, so that
	// concurrent deliveries both act.
	noDedupe, typeBlind, forgetFailures, noLock bool

	mu      sync.Mutex
	effects map[string]int    // key → effects
	stock   map[string]int    // key → units left; missing: plenty
	replies map[string]string // dedupe key → reason ("" for success)
}

func newMemory() *memory {
	return &memory{effects: map[string]int{}, stock: map[string]int{}, replies: map[string]string{}}
}

func (m *memory) Handle(ctx context.Context, reqs []participant.Request) ([]participant.Reply, error) {
	replies := make([]participant.Reply, len(reqs))
	for i, req := range reqs {
		replies[i] = m.handle(req)
	}
	return replies, nil
}

func (m *memory) handle(req participant.Request) participant.Reply {
	id := req.SagaType + "/" + req.MessageID
	if m.typeBlind {
		id = req.MessageID
	}
	reply := func(reason string) participant.Reply {
		if reason == "" {
			return participant.Success()
		}
		return participant.Failure(reason)
	}
	m.mu.Lock()
	reason, done := m.replies[id]
	if m.noLock {
		m.mu.Unlock()
		runtime.Gosched() // let the other deliveries check too
		m.mu.Lock()
	}
	defer m.mu.Unlock()
	if done && !m.noDedupe {
		return reply(reason)
	}
	key := req.SagaID
	if left, ok := m.stock[key]; ok && left < 1 {
		reason = "SOLD_OUT"
	} else {
		reason = ""
		m.effects[key]++
		if ok {
			m.stock[key]--
		}
	}
	if reason == "" || !m.forgetFailures {
		m.replies[id] = reason
	}
	return reply(reason)
}

func (m *memory) fixture() Fixture {
	return Fixture{
		NewHandler: func() participant.Handler { return m },
		Success:    func(testing.TB, string) participant.Request { return participant.Request{Type: "Take"} },
		Failure: func(_ testing.TB, key string) participant.Request {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.stock[key] = 0
			return participant.Request{Type: "Take"}
		},
		Heal: func(_ testing.TB, key string) {
			m.mu.Lock()
			defer m.mu.Unlock()
			m.stock[key] = 1
		},
		Effects: func(_ testing.TB, key string) int {
			m.mu.Lock()
			defer m.mu.Unlock()
			return m.effects[key]
		},
	}
}

// TestMemory runs the suite against the flawless memory participant.
func TestMemory(t *testing.T) {
	m := newMemory()
	Run(t, func(*testing.T) Fixture { return m.fixture() })
}

// recorder is a testing.TB that records failures instead of failing the
// test, so that a test can check that the suite fails a flawed handler.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Errorf(format string, args ...any) { r.record(fmt.Sprintf(format, args...)) }
func (r *recorder) Error(args ...any)                 { r.record(fmt.Sprint(args...)) }
func (r *recorder) Fail()                             { r.record("Fail") }
func (r *recorder) Fatalf(format string, args ...any) { r.Errorf(format, args...); runtime.Goexit() }
func (r *recorder) Fatal(args ...any)                 { r.Error(args...); runtime.Goexit() }
func (r *recorder) FailNow()                          { r.Fail(); runtime.Goexit() }
func (r *recorder) Failed() bool                      { return len(r.failures()) > 0 }

func (r *recorder) record(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, msg)
}

func (r *recorder) failures() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errors...)
}

// TestFlawsFail checks that each subtest fails the handler flaw it exists
// for: a suite that passes everything proves nothing.
func TestFlawsFail(t *testing.T) {
	tests := []struct {
		name string
		flaw func(*memory)
		// fails: the subtests (cases' ids) that must fail; the others must
		// pass.
		fails []string
		// want: a failure of each failing subtest must contain it.
		want string
	}{
		{
			name:  "no dedupe",
			flaw:  func(m *memory) { m.noDedupe = true },
			fails: []string{"twice", "batch", "concurrent", "failure"},
			want:  "effects",
		},
		{
			name:  "dedupe by message id alone",
			flaw:  func(m *memory) { m.typeBlind = true },
			fails: []string{"other"},
			want:  "same message id, other saga type: got 0 effects",
		},
		{
			name:  "failures not stored",
			flaw:  func(m *memory) { m.forgetFailures = true },
			fails: []string{"failure"},
			want:  "redelivery once healed",
		},
		{
			name:  "check and store not atomic",
			flaw:  func(m *memory) { m.noLock = true },
			fails: []string{"concurrent"},
			want:  "deliveries at once",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMemory()
			tt.flaw(m)
			for _, c := range cases {
				r := &recorder{TB: t}
				done := make(chan struct{})
				go func() {
					defer close(done)
					c.run(r, &suite{f: m.fixture(), prefix: fmt.Sprintf("%s-%d", c.id, runs.Add(1))})
				}()
				<-done
				failures := r.failures()
				mustFail := false
				for _, id := range tt.fails {
					mustFail = mustFail || id == c.id
				}
				switch {
				case mustFail && len(failures) == 0:
					t.Errorf("%s: passed, want it to fail", c.name)
				case mustFail && !strings.Contains(strings.Join(failures, "\n"), tt.want):
					t.Errorf("%s: got failures %q, want one containing %q", c.name, failures, tt.want)
				case !mustFail && len(failures) > 0:
					t.Errorf("%s: got failures %q, want none", c.name, failures)
				}
			}
		})
	}
}
