package orchestrator

import (
	"encoding/json"
	"time"

	"github.com/ksaga/ksaga/message"
)

// State is one saga's state: the value of its records on saga.T.state and
// of its Redis hash. Version grows by one with every message that changes it.
type State struct {
	ID      string `json:"saga_id"`
	Type    string `json:"saga_type"`
	Version int64  `json:"version"`
	Status  string `json:"status"`
	// DefinitionVersion is the version of the saga's definition
	// (saga.Definition.Version) that the saga runs on; 0 in states written
	// before versions existed, which means 1.
	DefinitionVersion int `json:"definition_version,omitempty"`
	// Step is the index of the current step; while compensating, the step
	// that failed. StepName is its name (and UndoingName that of Undoing):
	// the engine checks them against the definition, so that a definition
	// changed under a running saga cannot read its step as another one.
	Step        int    `json:"step"`
	StepName    string `json:"step_name,omitempty"`
	UndoingName string `json:"undoing_step,omitempty"`
	// Undoing is the step being compensated, or -1.
	Undoing int `json:"undoing"`
	// Plan is the rest of the compensation plan after Undoing.
	Plan []int `json:"plan,omitempty"`
	// Undone lists the steps compensated so far.
	Undone []int `json:"undone,omitempty"`
	// Waiting is the message id of the command whose reply the saga waits
	// for; Attempt counts its sends; Deadline (Unix ms) is when the
	// current send times out.
	Waiting  string `json:"waiting,omitempty"`
	Attempt  int    `json:"attempt,omitempty"`
	Deadline int64  `json:"deadline_ms,omitempty"`
	// Group holds the members of the parallel group the saga waits on
	// (saga.Step.Group), each with its command; Step is then the group's
	// last member, and Waiting, Attempt and Deadline those of the member
	// whose deadline comes first.
	Group []Member `json:"group,omitempty"`
	// StepStarted (Unix ms) is when the current step or undo began.
	StepStarted int64 `json:"step_started_ms,omitempty"`
	// UndoFailures counts failure replies to the current undo, so its
	// retries get fresh message ids.
	UndoFailures int `json:"undo_failures,omitempty"`
	// UndoSends counts the sends of the current undo, across fresh ids.
	UndoSends int `json:"undo_sends,omitempty"`
	// StartID and StartHash identify the start request, to tell a
	// redelivered start from a different one that reuses the saga id.
	StartID   string `json:"start_id,omitempty"`
	StartHash string `json:"start_hash"`
	Reason    string `json:"reason,omitempty"`
	// LastError is the last error of a call into saga code that the
	// engine retries on its own (a failed UndoLocal), for operators.
	LastError string          `json:"last_error,omitempty"`
	Data      json.RawMessage `json:"data"`
	Created   time.Time       `json:"created_at"`
	Updated   time.Time       `json:"updated_at"`
	// Trace is the W3C trace context of the saga: the span of the saga's
	// life, with a tracer (HookTrace), or the context its start request
	// came with. Every record the engine produces for the saga carries it
	// (a command carries StepTrace when set), timeouts included, so the
	// saga's trace continues across transactions, instances and
	// deadlines. Nil when the start request had none and no tracer is
	// registered.
	Trace *TraceContext `json:"trace,omitempty"`
	// History is the saga's events as saga.T.events has them, with the
	// attempt and reply data of the steps they name: the timeline of one
	// saga, kept with it and gone with it. It holds at most the engine's
	// History entries (DefaultHistory): the first and the latest;
	// HistoryDropped counts the others.
	History        []HistoryEntry `json:"history,omitempty"`
	HistoryDropped int            `json:"history_dropped,omitempty"`
	// StepTrace is the trace context of the span of the command the saga
	// waits on (a step attempt or a compensation), set by the tracer while
	// one is in flight.
	StepTrace *TraceContext `json:"step_trace,omitempty"`
}

// HistoryEntry is one of the saga's events, as saga.T.events has it, with
// the attempt of the step it names and the data its reply carried.
type HistoryEntry struct {
	Type    string          `json:"type"`
	Step    string          `json:"step,omitempty"`
	Reason  string          `json:"reason,omitempty"`
	Version int64           `json:"version"`
	At      time.Time       `json:"at"`
	Attempt int             `json:"attempt,omitempty"`
	Reply   json.RawMessage `json:"reply,omitempty"`
}

// DefaultHistory is how many entries State.History keeps by default, and
// MaxHistory the most it may keep (History).
const (
	DefaultHistory = 48
	MaxHistory     = 1000
)

// OnVersion returns the version of the definition the saga runs on.
func (s *State) OnVersion() int { return max(s.DefinitionVersion, 1) }

// Member is one step of a parallel group in flight.
type Member struct {
	Step     int    `json:"step"`
	Waiting  string `json:"waiting"`
	Attempt  int    `json:"attempt"`
	Deadline int64  `json:"deadline_ms"`
	// Outcome is "" while its reply is awaited, then success, failure or
	// unknown (no reply after its attempts).
	Outcome string `json:"outcome,omitempty"`
}

// Member outcomes.
const (
	memberSuccess = "success"
	memberFailure = "failure"
	memberUnknown = "unknown"
)

// Terminal reports whether the saga has ended.
func (s *State) Terminal() bool {
	switch s.Status {
	case message.StatusCompleted, message.StatusCompensated, message.StatusFailed:
		return true
	}
	return false
}

// clone returns a copy that shares nothing mutable with s.
func (s *State) clone() *State {
	c := *s
	c.Plan = append([]int(nil), s.Plan...)
	c.Undone = append([]int(nil), s.Undone...)
	if s.History != nil {
		c.History = append(make([]HistoryEntry, 0, len(s.History)+4), s.History...)
	}
	if s.Group != nil {
		c.Group = append([]Member(nil), s.Group...)
	}
	return &c
}
