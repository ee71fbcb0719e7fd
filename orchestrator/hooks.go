package orchestrator

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
)

// Hook is a value that implements one or more of the Hook* interfaces. Hooks
// are called from the engine's loop goroutine, one at a time: they must be
// fast and must not block.
type Hook any

// Batch is what one transaction did. Hooks must not modify it.
type Batch struct {
	// Records counts the inbox records consumed.
	Records int
	// CaughtUp counts those of Records that a second, short poll added:
	// records committed while the previous transaction ran, which would
	// otherwise have waited for the next one (see the engine's catchUp).
	CaughtUp int
	// Events are the saga events produced, in order.
	Events []message.Event
	// StepLatencies holds, per step that finished (succeeded, failed or
	// was compensated) in this batch, how long it took.
	StepLatencies []StepLatency
	// DeadLettered holds the reason of each record dead-lettered.
	DeadLettered []string
	// Dropped holds the reason of each duplicate or stale record dropped.
	Dropped []string
	// Timeouts counts Timeout messages produced for expired deadlines.
	Timeouts int
	// UndoLocalFailures holds, per failed call of a local step's
	// UndoLocal in this batch, the step's name. Each is retried after a
	// backoff; the saga's view keeps the last error (State.LastError).
	UndoLocalFailures []string
	// ReadBack counts the saga states that Redis lost (an eviction, a
	// DEL) while the state topic holds them: the engine read them back
	// from the state topic and writes them to Redis again.
	ReadBack int
	// Expired counts the ended sagas deleted after their retention: a
	// tombstone on the state topic, their keys gone from Redis.
	Expired int
	// Forwarded counts inbox records that arrived off their saga's home
	// partition (a producer that hashes keys differently) and were moved
	// there.
	Forwarded int
	// Changes lists the records that changed a saga, with the saga's state
	// before and after each, in the order of the batch per saga.
	Changes []Change
	// Phases is how long the transaction spent in each of its phases.
	Phases Phases
}

// Phases splits a transaction's time, from the records polled to the
// commit's answer. A phase it did not reach is zero.
type Phases struct {
	// Preload reads the batch's sagas that are not in memory from Redis.
	Preload time.Duration
	// Handle applies the records: saga code, and encoding the records
	// to produce, which kgo starts sending as they come.
	Handle time.Duration
	// Flush waits until every record of the transaction is written.
	Flush time.Duration
	// Commit commits the consumed offsets and ends the transaction.
	Commit time.Duration
}

// StepLatency is the duration of one step or compensation.
type StepLatency struct {
	Step     string
	Duration time.Duration
}

// HookAfterCommit is called after a transaction commits, before the new
// states are written to Redis. It is the place for side effects that must
// happen only once the saga's progress is durable (the counterpart of
// Spring's TransactionSynchronization.afterCommit).
type HookAfterCommit interface {
	AfterCommit(ctx context.Context, b *Batch)
}

// HookAfterCompletion is called after every transaction, committed or
// aborted, once the after-commit work is done.
type HookAfterCompletion interface {
	AfterCompletion(ctx context.Context, b *Batch, committed bool)
}

// HookRetry is called when processing a record failed and its transaction
// is aborted to retry it. attempts counts the failures so far.
type HookRetry interface {
	OnRetry(r *kgo.Record, attempts int, err error)
}

// HookRedisLag is called after each write that brings Redis up to date,
// with the number of committed states Redis has not acknowledged yet, when
// the oldest of them was committed (zero when there are none) and the
// write's error, if it failed. The engine writes after each commit without
// waiting, so under load a few states are always on their way.
type HookRedisLag interface {
	OnRedisLag(pending int, oldest time.Time, err error)
}

func isHook(h Hook) bool {
	switch h.(type) {
	case HookAfterCommit, HookAfterCompletion, HookRetry, HookRedisLag, HookTrace:
		return true
	}
	return false
}
