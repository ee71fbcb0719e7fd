package orchestrator

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/ksaga/ksaga/message"
)

// appendJSON appends s encoded as encoding/json encodes it, byte for byte,
// without re-validating and re-compacting s.Data on every encode:
// encoding/json does both for a json.RawMessage, and a saga's state is
// encoded once per change. s.Data must be compact JSON (the engine compacts
// a start request's value once, when the saga starts).
func (s *State) appendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"saga_id":`...)
	b = appendString(b, s.ID)
	b = append(b, `,"saga_type":`...)
	b = appendString(b, s.Type)
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, s.Version, 10)
	b = append(b, `,"status":`...)
	b = appendString(b, s.Status)
	b = appendNonZero(b, `,"definition_version":`, int64(s.DefinitionVersion))
	b = append(b, `,"step":`...)
	b = strconv.AppendInt(b, int64(s.Step), 10)
	if s.StepName != "" {
		b = append(b, `,"step_name":`...)
		b = appendString(b, s.StepName)
	}
	if s.UndoingName != "" {
		b = append(b, `,"undoing_step":`...)
		b = appendString(b, s.UndoingName)
	}
	b = append(b, `,"undoing":`...)
	b = strconv.AppendInt(b, int64(s.Undoing), 10)
	b = appendInts(b, `,"plan":`, s.Plan)
	b = appendInts(b, `,"undone":`, s.Undone)
	if s.Waiting != "" {
		b = append(b, `,"waiting":`...)
		b = appendString(b, s.Waiting)
	}
	b = appendNonZero(b, `,"attempt":`, int64(s.Attempt))
	b = appendNonZero(b, `,"deadline_ms":`, s.Deadline)
	if len(s.Group) > 0 {
		b = append(b, `,"group":[`...)
		for i, m := range s.Group {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"step":`...)
			b = strconv.AppendInt(b, int64(m.Step), 10)
			b = append(b, `,"waiting":`...)
			b = appendString(b, m.Waiting)
			b = append(b, `,"attempt":`...)
			b = strconv.AppendInt(b, int64(m.Attempt), 10)
			b = append(b, `,"deadline_ms":`...)
			b = strconv.AppendInt(b, m.Deadline, 10)
			if m.Outcome != "" {
				b = append(b, `,"outcome":`...)
				b = appendString(b, m.Outcome)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = appendNonZero(b, `,"step_started_ms":`, s.StepStarted)
	b = appendNonZero(b, `,"undo_failures":`, int64(s.UndoFailures))
	b = appendNonZero(b, `,"undo_sends":`, int64(s.UndoSends))
	if s.StartID != "" {
		b = append(b, `,"start_id":`...)
		b = appendString(b, s.StartID)
	}
	b = append(b, `,"start_hash":`...)
	b = appendString(b, s.StartHash)
	if s.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, s.Reason)
	}
	if s.LastError != "" {
		b = append(b, `,"last_error":`...)
		b = appendString(b, s.LastError)
	}
	b = append(b, `,"data":`...)
	if len(s.Data) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, s.Data...)
	}
	b = append(b, `,"created_at":`...)
	var err error
	if b, err = appendTime(b, s.Created); err != nil {
		return nil, err
	}
	b = append(b, `,"updated_at":`...)
	if b, err = appendTime(b, s.Updated); err != nil {
		return nil, err
	}
	if b, err = appendTrace(b, `,"trace":`, s.Trace); err != nil {
		return nil, err
	}
	if len(s.History) > 0 {
		b = append(b, `,"history":[`...)
		for i := range s.History {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = s.History[i].appendJSON(b); err != nil {
				return nil, err
			}
		}
		b = append(b, ']')
	}
	b = appendNonZero(b, `,"history_dropped":`, int64(s.HistoryDropped))
	if b, err = appendTrace(b, `,"step_trace":`, s.StepTrace); err != nil {
		return nil, err
	}
	return append(b, '}'), nil
}

func appendTrace(b []byte, name string, tc *TraceContext) ([]byte, error) {
	if tc == nil {
		return b, nil
	}
	raw, err := json.Marshal(tc)
	if err != nil {
		return nil, err
	}
	return append(append(b, name...), raw...), nil
}

// appendJSON appends h encoded as encoding/json encodes it. h.Reply must
// be compact JSON with HTML characters escaped, as replyData leaves it.
func (h *HistoryEntry) appendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"type":`...)
	b = appendString(b, h.Type)
	if h.Step != "" {
		b = append(b, `,"step":`...)
		b = appendString(b, h.Step)
	}
	if h.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, h.Reason)
	}
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, h.Version, 10)
	b = append(b, `,"at":`...)
	b, err := appendTime(b, h.At)
	if err != nil {
		return nil, err
	}
	b = appendNonZero(b, `,"attempt":`, int64(h.Attempt))
	if len(h.Reply) > 0 {
		b = append(append(b, `,"reply":`...), h.Reply...)
	}
	return append(b, '}'), nil
}

// appendEventJSON appends ev encoded as encoding/json encodes it.
func appendEventJSON(b []byte, ev *message.Event) ([]byte, error) {
	b = append(b, `{"saga_id":`...)
	b = appendString(b, ev.SagaID)
	b = append(b, `,"saga_type":`...)
	b = appendString(b, ev.SagaType)
	b = append(b, `,"type":`...)
	b = appendString(b, ev.Type)
	b = append(b, `,"state":`...)
	b = appendString(b, ev.State)
	if ev.Step != "" {
		b = append(b, `,"step":`...)
		b = appendString(b, ev.Step)
	}
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, ev.Version, 10)
	b = append(b, `,"at":`...)
	b, err := appendTime(b, ev.At)
	if err != nil {
		return nil, err
	}
	if ev.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, ev.Reason)
	}
	if len(ev.Data) > 0 {
		b = append(append(b, `,"data":`...), ev.Data...)
	}
	return append(b, '}'), nil
}

func appendInts(b []byte, name string, v []int) []byte {
	if len(v) == 0 {
		return b
	}
	b = append(append(b, name...), '[')
	for i, n := range v {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, int64(n), 10)
	}
	return append(b, ']')
}

func appendNonZero(b []byte, name string, v int64) []byte {
	if v == 0 {
		return b
	}
	return strconv.AppendInt(append(b, name...), v, 10)
}

// appendTime appends t as time.Time's MarshalJSON does.
func appendTime(b []byte, t time.Time) ([]byte, error) {
	if y := t.Year(); y < 0 || y > 9999 {
		raw, err := json.Marshal(t) // the error encoding/json gives
		return append(b, raw...), err
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), nil
}

// appendString appends s as a JSON string. Strings of plain printable ASCII
// (ids, step names, statuses: nearly all) are copied; anything else goes
// through encoding/json, whose escaping (HTML characters, invalid UTF-8,
// U+2028/U+2029) it must match.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			raw, _ := json.Marshal(s) // a string always encodes
			return append(b, raw...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
