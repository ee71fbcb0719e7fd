package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	kaudit "github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/topic"
)

// errSagaNotFound means Redis holds no state for the saga: a wrong id or
// type, a saga whose start request is not processed yet, or a Redis that
// lost its data (the engine rebuilds it from saga.<type>.state).
var errSagaNotFound = errors.New("saga not found")

// sagaRow is a saga as saga get -o table and saga list show it: the fields
// of its state an operator looks at first, from its Redis view.
type sagaRow struct {
	SagaID    string `json:"saga_id"`
	SagaType  string `json:"saga_type"`
	Partition int32  `json:"partition"`
	Status    string `json:"status"`
	// Step is the index of the current step (while compensating, of the
	// step that failed); Undoing the step being compensated, or -1.
	Step    int    `json:"step"`
	Undoing int    `json:"undoing"`
	Waiting string `json:"waiting,omitempty"`
	Attempt int    `json:"attempt,omitempty"`
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
}

// newSagaRow returns the row of the saga whose state is s, at key.
func newSagaRow(sagaType string, p int32, id, key string, s *orchestrator.State, now time.Time) sagaRow {
	r := sagaRow{SagaID: id, SagaType: sagaType, Partition: p, Status: s.Status, Step: s.Step, Undoing: s.Undoing,
		Waiting: s.Waiting, Attempt: s.Attempt, Reason: s.Reason, UndoFailures: s.UndoFailures, LastError: s.LastError, Created: s.Created.UTC(), Updated: s.Updated.UTC(),
		Version: s.Version, RedisKey: key}
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

var sagaColumns = []string{"SAGA-ID", "STATUS", "STEP", "UNDOING", "ATTEMPT", "DEADLINE", "UPDATED", "VERSION", "REASON"}

func (r sagaRow) cells(now time.Time) []string {
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
	return []string{r.SagaID, r.Status, strconv.Itoa(r.Step), undoing, attempt, deadline,
		age(now, r.Updated) + " ago", strconv.FormatInt(r.Version, 10), shorten(r.Reason, 60)}
}

// getOptions are the options of saga get.
type getOptions struct {
	sagaType string
	id       string
	// redisAddrs names Redis in error messages.
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
	p := message.HomePartition(opt.id, opt.partitions)
	key := orchestrator.StateKey(opt.sagaType, p, opt.id)
	timeout := orDefault(opt.timeout, defaultTimeout)
	reqCtx, cancel := context.WithTimeout(ctx, timeout)
	fields, err := rdb.HGetAll(reqCtx, key).Result()
	cancel()
	if err != nil {
		return firstRequestError(ctx, "Redis", opt.redisAddrs, "redis-addr", timeout, fmt.Errorf("HGETALL %s: %w", key, err))
	}
	if len(fields) == 0 {
		return fmt.Errorf("%w: Redis has no key %s (check the id and --saga; Redis may also lag the engine by a few transactions)", errSagaNotFound, key)
	}
	state, ok := fields["state"]
	if !ok {
		names := make([]string, 0, len(fields))
		for k := range fields {
			names = append(names, k)
		}
		slices.Sort(names)
		return fmt.Errorf("key %s has no state field (it has %s): it was not written by the ksaga engine", key, strings.Join(names, ", "))
	}
	if !json.Valid([]byte(state)) {
		return fmt.Errorf("key %s holds a state that is not JSON: %s", key, shorten(state, 200))
	}
	if opt.output != outTable {
		return writeData(w, opt.output, json.RawMessage(state))
	}
	var s orchestrator.State
	if err := json.Unmarshal([]byte(state), &s); err != nil {
		return fmt.Errorf("key %s: decode the state: %w", key, err)
	}
	if s.Version == 0 {
		s.Version, _ = strconv.ParseInt(fields["version"], 10, 64)
	}
	now := nowOf(opt.now)
	t := newTable(w, sagaColumns...)
	t.row(newSagaRow(opt.sagaType, p, opt.id, key, &s, now).cells(now)...)
	return t.flush()
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

// scanBatch is the SCAN COUNT of saga list, and how many states it reads
// per pipelined round trip.
const scanBatch = 500

// listSagas scans the Redis view for the states of opt.sagaType
// (orchestrator.StateKeyPattern; on Redis Cluster, every primary) and
// prints those that match, the longest unchanged first.
func listSagas(ctx context.Context, rdb redis.UniversalClient, st streams, opt sagaListOptions) ([]sagaRow, error) {
	now := nowOf(opt.now)
	timeout := orDefault(opt.timeout, defaultTimeout)
	pattern := orchestrator.StateKeyPattern(opt.sagaType)
	var rows []sagaRow
	scanned, invalid := 0, 0
	first := true
	scanOne := func(ctx context.Context, c redis.UniversalClient) error {
		var cursor uint64
		for {
			reqCtx, cancel := context.WithTimeout(ctx, timeout)
			keys, next, err := c.Scan(reqCtx, cursor, pattern, scanBatch).Result()
			cancel()
			if err != nil {
				err = fmt.Errorf("SCAN %s: %w", pattern, err)
				if first {
					err = firstRequestError(ctx, "Redis", opt.redisAddrs, "redis-addr", timeout, err)
				}
				return err
			}
			first = false
			if len(keys) > 0 {
				reqCtx, cancel := context.WithTimeout(ctx, timeout)
				cmds, err := c.Pipelined(reqCtx, func(pipe redis.Pipeliner) error {
					for _, k := range keys {
						pipe.HGet(reqCtx, k, "state")
					}
					return nil
				})
				cancel()
				if err != nil && !errors.Is(err, redis.Nil) {
					return fmt.Errorf("read the states: %w", err)
				}
				for i, cmd := range cmds {
					v, err := cmd.(*redis.StringCmd).Result()
					if errors.Is(err, redis.Nil) {
						continue // gone since the SCAN
					}
					p, id, ok := parseStateKey(opt.sagaType, keys[i])
					var s orchestrator.State
					if err != nil || !ok || json.Unmarshal([]byte(v), &s) != nil {
						invalid++
						continue
					}
					scanned++
					if r := newSagaRow(opt.sagaType, p, id, keys[i], &s, now); opt.match(r, now) {
						rows = append(rows, r)
					}
				}
			}
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	}
	var err error
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		// SCAN walks one node: walk every primary. Their callbacks run
		// concurrently: collect under a lock.
		var mu sync.Mutex
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return scanOne(ctx, c)
		})
	} else {
		err = scanOne(ctx, rdb)
	}
	if err != nil {
		return nil, err
	}
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
		t := newTable(st.out, append(slices.Clone(sagaColumns), "PARTITION")...)
		for _, r := range rows {
			t.row(append(r.cells(now), strconv.Itoa(int(r.Partition)))...)
		}
		if err := t.flush(); err != nil {
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
	if invalid > 0 {
		fmt.Fprintf(st.errw, "%d keys matching %s hold no readable state (skipped)\n", invalid, pattern)
	}
	return rows, nil
}

// match reports whether r is one saga list shows.
func (opt sagaListOptions) match(r sagaRow, now time.Time) bool {
	terminal := r.Status == message.StatusCompleted || r.Status == message.StatusCompensated || r.Status == message.StatusFailed
	return (!opt.stuck || !terminal) &&
		(opt.status == "" || r.Status == opt.status) &&
		(opt.olderThan <= 0 || now.Sub(r.Updated) > opt.olderThan)
}

// parseStateKey reads the partition and saga id out of a state key:
// ksaga:{<type>:<partition>}:state:<id>.
func parseStateKey(sagaType, key string) (int32, string, bool) {
	rest, ok := strings.CutPrefix(key, "ksaga:{"+sagaType+":")
	if !ok {
		return 0, "", false
	}
	ps, id, ok := strings.Cut(rest, "}:state:")
	if !ok {
		return 0, "", false
	}
	p, err := strconv.ParseInt(ps, 10, 32)
	if err != nil {
		return 0, "", false
	}
	return int32(p), id, true
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
	clock    clock
	// resume sends a Resume to a parked saga instead of a Compensate.
	resume bool
}

// errSagaEnded means the saga is not running (it has ended, or is
// compensating already): a Compensate message would be dropped.
var errSagaEnded = errors.New("saga not running")

// sagaNameRE is saga.New's rule for a saga type's name: sagactl writes the
// saga type into the Compensate message and its audit record.
var sagaNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// compensateSaga asks saga opt.id to compensate: the documented Compensate
// message (the note as its reason) on the saga's home partition of
// saga.<type>.inbox, and its audit record on saga.<type>.audit, both built
// by package audit (as the HTTP API builds them) and written in one Kafka
// transaction: both or neither.
//
// It first reads the saga from the Redis view (rdb): a saga the view does
// not have is an error wrapping errSagaNotFound, one that is not running
// (ended, or compensating already) an error wrapping errSagaEnded; nothing
// is sent then, rather than a request the engine would dead-letter
// (unknown-saga) or drop. With opt.dryRun it prints what it would send and
// sends nothing.
func compensateSaga(ctx context.Context, brokers []string, rdb redis.UniversalClient, st streams, opt compensateOptions) (auditRecord, error) {
	timeout := orDefault(opt.timeout, defaultTimeout)
	n, err := inboxPartitions(ctx, brokers, opt.kafka, opt.sagaType, timeout)
	if err != nil {
		return auditRecord{}, err
	}
	home := message.HomePartition(opt.id, n)
	key := orchestrator.StateKey(opt.sagaType, home, opt.id)
	s, err := readState(ctx, rdb, key, opt.redisAddrs, timeout)
	switch {
	case err != nil:
		return auditRecord{}, fmt.Errorf("%w: nothing was sent", err)
	case s == nil:
		return auditRecord{}, fmt.Errorf("%w: Redis has no key %s (check the id and --saga; a saga whose start request is not handled yet is not there either): nothing was sent",
			errSagaNotFound, key)
	case opt.resume && s.Status != message.StatusParked:
		return auditRecord{}, fmt.Errorf("%w: saga %s/%s is %s, not parked: nothing to resume, nothing was sent", errSagaEnded, opt.sagaType, opt.id, s.Status)
	case !opt.resume && s.Status != message.StatusRunning && s.Status != message.StatusParked:
		what := "has ended (" + s.Status + ")"
		if s.Status == message.StatusCompensating {
			what = "is compensating already"
		}
		return auditRecord{}, fmt.Errorf("%w: saga %s/%s %s: nothing to compensate, nothing was sent", errSagaEnded, opt.sagaType, opt.id, what)
	}
	verb, msgType := "compensate", message.TypeCompensate
	if opt.resume {
		verb, msgType = "resume", message.TypeResume
	}
	adm, err := newAdminClient(brokers, opt.kafka, timeout)
	if err != nil {
		return auditRecord{}, err
	}
	defer adm.Close()
	var auditParts int32
	if opt.dryRun {
		// A dry run creates nothing: an audit topic still to be created
		// would get the dead-letter topic's partition count.
		auditParts, err = auditPartitions(ctx, kadm.NewClient(adm), opt.sagaType)
	} else {
		auditParts, err = ensureAudit(ctx, kadm.NewClient(adm), opt.sagaType, st.errw)
	}
	if err != nil {
		return auditRecord{}, err
	}
	comp, err := kaudit.NewCompensation(kaudit.Compensate{SagaType: opt.sagaType, SagaID: opt.id, InboxPartitions: n, AuditPartitions: auditParts,
		By: opt.by, Note: opt.note, Tool: "sagactl", At: opt.clock.Now(), Resume: opt.resume})
	if err != nil {
		return auditRecord{}, err
	}
	a := comp.Record
	if opt.dryRun {
		fmt.Fprintf(st.errw, "dry run: saga %s/%s is %s (version %d, step %d); nothing was sent\n", opt.sagaType, opt.id, s.Status, s.Version, s.Step)
		if opt.output != outTable {
			return a, writeData(st.out, opt.output, a)
		}
		fmt.Fprintf(st.out, "would send: %s to %s partition %d, key %s, reason %q\nwould audit: %s on %s partition %d, by %s, run %s\n",
			msgType, comp.Request.Topic, comp.Request.Partition, opt.id, opt.note,
			a.Action, comp.Audit.Topic, comp.Audit.Partition, opt.by, a.Run)
		return a, nil
	}
	if !opt.yes {
		q := fmt.Sprintf("Compensate saga %s/%s (%s, step %d; undo its completed steps) as %s, note %q?", opt.sagaType, opt.id, s.Status, s.Step, opt.by, opt.note)
		if opt.resume {
			q = fmt.Sprintf("Resume saga %s/%s (parked at step %d: run or send it again) as %s, note %q?", opt.sagaType, opt.id, s.Step, opt.by, opt.note)
		}
		if !confirm(ctx, st, q) {
			return auditRecord{}, fmt.Errorf("%w: nothing was sent", errNotConfirmed)
		}
	}
	// The request and its audit record commit together or not at all. The
	// transactional id is this run's: two operators do not fence each other.
	if err := produceInTransaction(ctx, append(clientOpts(brokers, opt.kafka, timeout),
		kgo.TransactionalID("sagactl-"+verb+"-"+opt.sagaType+"-"+a.Run),
		kgo.RecordPartitioner(kgo.ManualPartitioner())), timeout, comp.Request, comp.Audit); err != nil {
		return auditRecord{}, fmt.Errorf("%s saga %s: nothing was sent: %w", verb, opt.id, err)
	}
	if opt.output != outTable {
		return a, writeData(st.out, opt.output, a)
	}
	fmt.Fprintf(st.out, "%s requested: saga %s/%s on %s partition %d, by %s, note %q; audited in %s\n",
		verb, opt.sagaType, opt.id, message.Inbox(opt.sagaType), home, opt.by, opt.note, topic.Audit(opt.sagaType))
	return a, nil
}

// readState reads the state of the saga at key from the Redis view: nil
// and no error when the view does not have it.
func readState(ctx context.Context, rdb redis.UniversalClient, key string, addrs []string, timeout time.Duration) (*orchestrator.State, error) {
	reqCtx, cancel := context.WithTimeout(ctx, timeout)
	raw, err := rdb.HGet(reqCtx, key, "state").Result()
	cancel()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, nil
	case err != nil:
		return nil, firstRequestError(ctx, "Redis", addrs, "redis-addr", timeout, fmt.Errorf("HGET %s state: %w", key, err))
	}
	var s orchestrator.State
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return nil, fmt.Errorf("key %s holds a state that is not the engine's JSON: %w", key, err)
	}
	return &s, nil
}

// auditPartitions returns the partition count of saga.<type>.audit, or,
// when the topic does not exist yet, that of the dead-letter topic, which
// ensureAudit would give it.
func auditPartitions(ctx context.Context, adm *kadm.Client, sagaType string) (int32, error) {
	name, dltName := topic.Audit(sagaType), message.DLT(sagaType)
	tds, err := adm.ListTopics(ctx, name, dltName)
	if err != nil {
		return 0, fmt.Errorf("describe %s: %w", name, err)
	}
	for _, t := range []string{name, dltName} {
		if td, ok := tds[t]; ok && td.Err == nil && len(td.Partitions) > 0 {
			return int32(len(td.Partitions)), nil
		}
	}
	return 0, fmt.Errorf("%w: %s (check --saga; sagad creates the topic when it starts)", errNoTopic, dltName)
}

// produceInTransaction produces rs in one Kafka transaction of a client
// made with opts (which name a transactional id), and commits it
// (audit.Commit).
func produceInTransaction(ctx context.Context, opts []kgo.Opt, timeout time.Duration, rs ...*kgo.Record) error {
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer cl.Close()
	pctx, cancel := context.WithTimeout(ctx, orDefault(timeout, defaultTimeout))
	defer cancel()
	return kaudit.Commit(pctx, cl, orDefault(timeout, defaultTimeout), rs...)
}

// inboxPartitions reads the partition count of saga.<sagaType>.inbox, which
// places a saga's Redis keys (its home partition).
func inboxPartitions(ctx context.Context, brokers []string, sec []kgo.Opt, sagaType string, timeout time.Duration) (int32, error) {
	cl, err := newAdminClient(brokers, sec, timeout)
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	inbox := message.Inbox(sagaType)
	reqCtx, cancel := context.WithTimeout(ctx, orDefault(timeout, defaultTimeout))
	defer cancel()
	tds, err := kadm.NewClient(cl).ListTopics(reqCtx, inbox)
	if err != nil {
		return 0, firstRequestError(ctx, "Kafka", brokers, "kafka-brokers", orDefault(timeout, defaultTimeout), fmt.Errorf("describe %s: %w", inbox, err))
	}
	td, ok := tds[inbox]
	if ok && td.Err != nil && !errors.Is(td.Err, kerr.UnknownTopicOrPartition) {
		return 0, firstRequestError(ctx, "Kafka", brokers, "kafka-brokers", orDefault(timeout, defaultTimeout), fmt.Errorf("describe %s: %w", inbox, td.Err))
	}
	if !ok || td.Err != nil || len(td.Partitions) == 0 {
		return 0, fmt.Errorf("topic %s not found (check --saga; sagad creates it when it starts)", inbox)
	}
	return int32(len(td.Partitions)), nil
}
