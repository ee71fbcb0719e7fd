package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/ops"
	"github.com/ksaga/ksaga/topic"
)

// errSagaNotFound means Redis holds no state for the saga (ops.ErrSagaNotFound).
var errSagaNotFound = ops.ErrSagaNotFound

// sagaRow is a saga as saga get -o table and saga list show it: the fields
// of its state an operator looks at first, from its Redis view.
type sagaRow struct {
	SagaID    string `json:"saga_id"`
	SagaType  string `json:"saga_type"`
	Partition int32  `json:"partition"`
	Status    string `json:"status"`
	// DefinitionVersion is the version of the saga's definition the saga
	// runs on: 1 for a state that names none (written before versions).
	DefinitionVersion int `json:"definition_version"`
	// Step is the index of the current step (while compensating, of the
	// step that failed); Undoing the step being compensated, or -1.
	Step int `json:"step"`
	// StepName is the current step's name, when the state names it.
	StepName string `json:"step_name,omitempty"`
	Undoing  int    `json:"undoing"`
	Waiting  string `json:"waiting,omitempty"`
	Attempt  int    `json:"attempt,omitempty"`
	// Deadline is when the current send times out; StepStarted when the
	// current step or undo began.
	Deadline    time.Time `json:"deadline,omitzero"`
	StepStarted time.Time `json:"step_started,omitzero"`
	Reason      string    `json:"reason,omitempty"`
	// UndoFailures counts the failed tries of the current compensation;
	// LastError is the last error of a local step's UndoLocal.
	UndoFailures int       `json:"undo_failures,omitempty"`
	LastError    string    `json:"last_error,omitempty"`
	Created      time.Time `json:"created_at"`
	Updated      time.Time `json:"updated_at"`
	// IdleSeconds is how long ago the saga last changed (updated_at).
	IdleSeconds int64  `json:"idle_seconds"`
	Version     int64  `json:"version"`
	RedisKey    string `json:"redis_key"`

	// hasDefinition is set when the state names its definition's version.
	hasDefinition bool
}

// newSagaRow returns the row of saga sg.
func newSagaRow(sg *ops.Saga, now time.Time) sagaRow {
	s := &sg.State
	r := sagaRow{SagaID: sg.ID, SagaType: sg.SagaType, Partition: sg.Partition, Status: s.Status, Step: s.Step, Undoing: s.Undoing,
		Waiting: s.Waiting, Attempt: s.Attempt, Reason: s.Reason, UndoFailures: s.UndoFailures, LastError: s.LastError, Created: s.Created.UTC(), Updated: s.Updated.UTC(),
		Version: s.Version, RedisKey: sg.Key, DefinitionVersion: 1}
	// Read from the JSON the engine wrote, so that sagactl shows them
	// whatever version of orchestrator.State it was built with.
	var named struct {
		DefinitionVersion int    `json:"definition_version"`
		StepName          string `json:"step_name"`
	}
	if json.Unmarshal(sg.Raw, &named) == nil {
		if named.DefinitionVersion > 0 {
			r.DefinitionVersion, r.hasDefinition = named.DefinitionVersion, true
		}
		r.StepName = named.StepName
	}
	if s.Deadline > 0 {
		r.Deadline = time.UnixMilli(s.Deadline).UTC()
	}
	if s.StepStarted > 0 {
		r.StepStarted = time.UnixMilli(s.StepStarted).UTC()
	}
	if !s.Updated.IsZero() {
		r.IdleSeconds = int64(now.Sub(s.Updated).Seconds())
	}
	return r
}

// sagaTable prints rows as a table: the columns an operator looks at
// first, DEF-VERSION (the version of the saga's definition; VERSION is
// the state's) when a state names it, STEP-NAME when a state names its
// step, and PARTITION with partition set.
func sagaTable(w io.Writer, rows []sagaRow, now time.Time, partition bool) error {
	var def, names bool
	for _, r := range rows {
		def = def || r.hasDefinition
		names = names || r.StepName != ""
	}
	header := []string{"SAGA-ID", "STATUS"}
	if def {
		header = append(header, "DEF-VERSION")
	}
	header = append(header, "STEP")
	if names {
		header = append(header, "STEP-NAME")
	}
	header = append(header, "UNDOING", "ATTEMPT", "DEADLINE", "UPDATED", "VERSION", "REASON")
	if partition {
		header = append(header, "PARTITION")
	}
	t := newTable(w, header...)
	for _, r := range rows {
		undoing, attempt, deadline := "-", "-", "-"
		if r.Undoing >= 0 {
			undoing = strconv.Itoa(r.Undoing)
		}
		if r.Attempt > 0 {
			attempt = strconv.Itoa(r.Attempt)
		}
		if !r.Deadline.IsZero() {
			deadline = formatTime(r.Deadline)
		}
		cells := []string{r.SagaID, r.Status}
		if def {
			cells = append(cells, strconv.Itoa(r.DefinitionVersion))
		}
		cells = append(cells, strconv.Itoa(r.Step))
		if names {
			cells = append(cells, printable(r.StepName))
		}
		cells = append(cells, undoing, attempt, deadline, age(now, r.Updated)+" ago", strconv.FormatInt(r.Version, 10), shorten(r.Reason, 60))
		if partition {
			cells = append(cells, strconv.Itoa(int(r.Partition)))
		}
		t.row(cells...)
	}
	return t.flush()
}

// getOptions are the options of saga get.
type getOptions struct {
	sagaType string
	id       string
	// redisAddrs is --redis-addr (ops names Redis by its client in errors).
	redisAddrs []string
	// timeout bounds the request to Redis; 0 means defaultTimeout.
	timeout time.Duration
	// partitions is the inbox's partition count: the saga's home
	// partition places its Redis key.
	partitions int32
	output     string
	now        func() time.Time
}

// getSaga prints the saga's state as stored in Redis: -o json and -o yaml
// the state itself (as the engine wrote it), -o table a one-row summary.
// It returns an error wrapping errSagaNotFound when the key does not exist.
func getSaga(ctx context.Context, rdb redis.UniversalClient, w io.Writer, opt getOptions) error {
	sg, err := ops.GetSaga(ctx, ops.Redis{Client: rdb, Timeout: orDefault(opt.timeout, defaultTimeout)}, opt.sagaType, opt.id, opt.partitions)
	if err != nil {
		return err
	}
	if opt.output != outTable {
		return writeData(w, opt.output, sg.Raw)
	}
	now := nowOf(opt.now)
	return sagaTable(w, []sagaRow{newSagaRow(sg, now)}, now, false)
}

func nowOf(now func() time.Time) time.Time {
	if now == nil {
		return time.Now()
	}
	return now()
}

// sagaListOptions are the options of saga list.
type sagaListOptions struct {
	sagaType   string
	redisAddrs []string
	// stuck keeps only sagas that have not ended.
	stuck bool
	// olderThan keeps only sagas whose updated_at is older than this.
	olderThan time.Duration
	// status keeps only sagas of this status; "" keeps all.
	status  string
	limit   int
	output  string
	timeout time.Duration
	now     func() time.Time
}

// listSagas scans the Redis view for the states of opt.sagaType
// (orchestrator.StateKeyPattern; on Redis Cluster, every primary) and
// prints those that match, the longest unchanged first.
func listSagas(ctx context.Context, rdb redis.UniversalClient, st streams, opt sagaListOptions) ([]sagaRow, error) {
	now := nowOf(opt.now)
	l, err := ops.ListSagas(ctx, ops.Redis{Client: rdb, Timeout: orDefault(opt.timeout, defaultTimeout)}, opt.sagaType)
	if err != nil {
		return nil, err
	}
	var rows []sagaRow
	for _, sg := range l.Sagas {
		if r := newSagaRow(sg, now); opt.match(r, now) {
			rows = append(rows, r)
		}
	}
	scanned, invalid, pattern := len(l.Sagas), l.Invalid, l.Pattern
	slices.SortStableFunc(rows, func(a, b sagaRow) int {
		if c := a.Updated.Compare(b.Updated); c != 0 {
			return c
		}
		return strings.Compare(a.SagaID, b.SagaID)
	})
	matched := len(rows)
	if opt.limit > 0 && len(rows) > opt.limit {
		rows = rows[:opt.limit]
	}
	if rows == nil {
		rows = []sagaRow{}
	}
	if opt.output != outTable {
		if err := writeData(st.out, opt.output, rows); err != nil {
			return nil, err
		}
	} else if len(rows) > 0 {
		if err := sagaTable(st.out, rows, now, true); err != nil {
			return nil, err
		}
	}
	what := "sagas"
	if matched == 1 {
		what = "saga"
	}
	if opt.stuck {
		what = "stuck " + what + " (not ended)"
	}
	if opt.olderThan > 0 {
		what += fmt.Sprintf(" unchanged for more than %s", opt.olderThan)
	}
	fmt.Fprintf(st.errw, "%d %s of type %s in Redis%s, of %d scanned\n", matched, what, opt.sagaType, limitNote(len(rows), matched), scanned)
	if line := versionsLine(l.Sagas, now); line != "" {
		fmt.Fprintln(st.errw, line)
	}
	if invalid > 0 {
		fmt.Fprintf(st.errw, "%d keys matching %s hold no readable state (skipped)\n", invalid, pattern)
	}
	return rows, nil
}

// versionsLine counts the sagas of the view that have not ended by the
// version of the definition they run on ("not ended, by definition
// version: v1 12, v2 3400"), so that an operator sees when an old version
// has drained (docs/CONCEPTS.md, "Evolving a saga"); "" when every saga
// has ended.
func versionsLine(sagas []*ops.Saga, now time.Time) string {
	running := make(map[int]int)
	for _, sg := range sagas {
		r := newSagaRow(sg, now)
		switch r.Status {
		case message.StatusCompleted, message.StatusCompensated, message.StatusFailed:
		default:
			running[r.DefinitionVersion]++
		}
	}
	if len(running) == 0 {
		return ""
	}
	var parts []string
	for _, v := range slices.Sorted(maps.Keys(running)) {
		parts = append(parts, fmt.Sprintf("v%d %d", v, running[v]))
	}
	return "not ended, by definition version: " + strings.Join(parts, ", ")
}

// match reports whether r is one saga list shows.
func (opt sagaListOptions) match(r sagaRow, now time.Time) bool {
	terminal := r.Status == message.StatusCompleted || r.Status == message.StatusCompensated || r.Status == message.StatusFailed
	return (!opt.stuck || !terminal) &&
		(opt.status == "" || r.Status == opt.status) &&
		(opt.olderThan <= 0 || now.Sub(r.Updated) > opt.olderThan)
}

// compensateOptions are the options of saga compensate.
type compensateOptions struct {
	sagaType string
	id       string
	kafka    []kgo.Opt
	// redisAddrs names the Redis of the view, which says whether the saga
	// exists and runs.
	redisAddrs []string
	// dryRun checks and prints, and sends nothing.
	dryRun   bool
	yes      bool
	by, note string
	output   string
	timeout  time.Duration
	// resume sends a Resume to a parked saga instead of a Compensate.
	resume bool
}

// compensateSaga asks saga opt.id to compensate (ops.Compensate), or,
// with opt.resume, a parked saga to resume (ops.Resume): the message and
// its audit record in one Kafka transaction. It asks for confirmation
// unless opt.yes; with opt.dryRun it prints what it would send and sends
// nothing. A saga the Redis view does not have is an error wrapping
// errSagaNotFound, one in the wrong state an error wrapping ops.ErrSagaNotRunning.
func compensateSaga(ctx context.Context, brokers []string, rdb redis.UniversalClient, st streams, opt compensateOptions) (auditRecord, error) {
	timeout := orDefault(opt.timeout, defaultTimeout)
	verb, msgType, do := "compensate", message.TypeCompensate, ops.Compensate
	if opt.resume {
		verb, msgType, do = "resume", message.TypeResume, ops.Resume
	}
	res, err := do(ctx, kafkaOf(brokers, opt.kafka, timeout, 0), ops.Redis{Client: rdb, Timeout: timeout}, ops.Action{
		SagaType: opt.sagaType, SagaID: opt.id, By: opt.by, Note: opt.note, Tool: "sagactl", DryRun: opt.dryRun,
		TopicCreated: topicCreated(st),
		Confirm: func(sg *ops.Saga) error {
			if opt.yes {
				return nil
			}
			s := &sg.State
			q := fmt.Sprintf("Compensate saga %s/%s (%s, step %d; undo its completed steps) as %s, note %q?", opt.sagaType, opt.id, s.Status, s.Step, opt.by, opt.note)
			if opt.resume {
				q = fmt.Sprintf("Resume saga %s/%s (parked at step %d: run or send it again) as %s, note %q?", opt.sagaType, opt.id, s.Step, opt.by, opt.note)
			}
			if !confirm(ctx, st, q) {
				return errNotConfirmed
			}
			return nil
		},
	})
	if err != nil {
		return auditRecord{}, err
	}
	comp, a := res.Compensation, res.Compensation.Record
	if opt.dryRun {
		s := &res.Saga.State
		fmt.Fprintf(st.errw, "dry run: saga %s/%s is %s (version %d, step %d); nothing was sent\n", opt.sagaType, opt.id, s.Status, s.Version, s.Step)
		if opt.output != outTable {
			return a, writeData(st.out, opt.output, a)
		}
		fmt.Fprintf(st.out, "would send: %s to %s partition %d, key %s, reason %q\nwould audit: %s on %s partition %d, by %s, run %s\n",
			msgType, comp.Request.Topic, comp.Request.Partition, opt.id, opt.note,
			a.Action, comp.Audit.Topic, comp.Audit.Partition, opt.by, a.Run)
		return a, nil
	}
	if opt.output != outTable {
		return a, writeData(st.out, opt.output, a)
	}
	fmt.Fprintf(st.out, "%s requested: saga %s/%s on %s partition %d, by %s, note %q; audited in %s\n",
		verb, opt.sagaType, opt.id, message.Inbox(opt.sagaType), comp.Request.Partition, opt.by, opt.note, topic.Audit(opt.sagaType))
	return a, nil
}

// topicCreated says on stderr that ops created the audit topic.
func topicCreated(st streams) ops.TopicCreated {
	return func(name string, partitions, replicationFactor int) {
		fmt.Fprintf(st.errw, "sagactl: created topic %s (%d partitions, replication factor %d, kept for ever) for the audit records\n",
			name, partitions, replicationFactor)
	}
}

// inboxPartitions reads the partition count of saga.<sagaType>.inbox, which
// places a saga's Redis keys (its home partition).
func inboxPartitions(ctx context.Context, brokers []string, sec []kgo.Opt, sagaType string, timeout time.Duration) (int32, error) {
	return ops.InboxPartitions(ctx, kafkaOf(brokers, sec, timeout, 0), sagaType)
}
