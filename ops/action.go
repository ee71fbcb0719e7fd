package ops

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/message"
)

// ErrSagaNotRunning means the saga is not in a state the action applies
// to: Compensate wants it running or parked (not ended, not compensating
// already), Resume wants it parked. The engine would drop the message.
var ErrSagaNotRunning = errors.New("saga not running")

// Action is an operator's request about one saga: who asks and why.
type Action struct {
	SagaType, SagaID string
	// By and Note are who asks and why, for the audit record; By must
	// pass audit.ValidName. Note is also the message's ksaga-reason.
	By, Note string
	// Tool names the program in the audit record (audit.Record.Tool);
	// "" means "ksaga-ops".
	Tool string
	// DryRun checks the saga and builds the records, and sends nothing
	// (and creates no topic).
	DryRun bool

	// Confirm, when not nil, is called with the saga as the view has it,
	// once it passed the checks and before anything is sent; an error
	// (e.g. ErrNotConfirmed) stops the action with nothing sent. It is not
	// called in a dry run.
	Confirm func(*Saga) error
	// TopicCreated, when not nil, is called if the action creates the
	// audit topic.
	TopicCreated TopicCreated
}

// ActionResult is what Compensate or Resume did, or would do in a dry run.
type ActionResult struct {
	// Saga is the saga as the Redis view had it before the action.
	Saga *Saga
	// Compensation holds the message (Request) and its audit record
	// (Audit, Record), built by package audit as the HTTP API builds them.
	Compensation *audit.Compensation
	// Sent is set when both were committed.
	Sent bool
}

// Compensate asks saga a.SagaID to compensate: the documented Compensate
// message (a.Note as its reason) on the saga's home partition of
// saga.<type>.inbox, and its audit record on saga.<type>.audit, both built
// by package audit and written in one Kafka transaction: both or neither.
// The transactional id is the run's own (<tool>-compensate-<type>-<run>):
// two operators do not fence each other.
//
// It first reads the saga from the Redis view: a saga the view does not
// have is an error wrapping ErrSagaNotFound, one that is not running or
// parked (it ended, or is compensating already) an error wrapping
// ErrSagaNotRunning; nothing is sent then, rather than a request the
// engine would dead-letter (unknown-saga) or drop. Every error means
// nothing was sent, except one of the commit itself, whose answer may
// have been lost (audit.Commit).
func Compensate(ctx context.Context, k Kafka, r Redis, a Action) (*ActionResult, error) {
	return act(ctx, k, r, a, false)
}

// Resume resumes a parked saga: one whose step (declared with
// saga.Step.Park) ran out of attempts and that waits for an operator
// instead of compensating. It sends a Resume message and its audit record
// as Compensate does; the engine runs the step again, or sends its command
// again with fresh attempts and the same message id. A saga that is not
// parked is an error wrapping ErrSagaNotRunning. To give up on a parked
// saga instead, use Compensate.
func Resume(ctx context.Context, k Kafka, r Redis, a Action) (*ActionResult, error) {
	return act(ctx, k, r, a, true)
}

func act(ctx context.Context, k Kafka, r Redis, a Action, resume bool) (*ActionResult, error) {
	verb := "compensate"
	if resume {
		verb = "resume"
	}
	cl, err := k.newAdminClient()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	n, err := inboxPartitions(ctx, k, adm, a.SagaType)
	if err != nil {
		return nil, err
	}
	s, err := GetSaga(ctx, r, a.SagaType, a.SagaID, n)
	if err != nil {
		return nil, fmt.Errorf("%w: nothing was sent", err)
	}
	switch st := s.State.Status; {
	case resume && st != message.StatusParked:
		return nil, fmt.Errorf("%w: saga %s/%s is %s, not parked: nothing to resume, nothing was sent", ErrSagaNotRunning, a.SagaType, a.SagaID, st)
	case !resume && st != message.StatusRunning && st != message.StatusParked:
		what := "has ended (" + st + ")"
		if st == message.StatusCompensating {
			what = "is compensating already"
		}
		return nil, fmt.Errorf("%w: saga %s/%s %s: nothing to compensate, nothing was sent", ErrSagaNotRunning, a.SagaType, a.SagaID, what)
	}
	var auditParts int32
	if a.DryRun {
		// A dry run creates nothing: an audit topic still to be created
		// would get the dead-letter topic's partition count.
		auditParts, err = auditPartitions(ctx, adm, a.SagaType)
	} else {
		auditParts, err = ensureAudit(ctx, adm, a.SagaType, a.TopicCreated)
	}
	if err != nil {
		return nil, err
	}
	tool := a.Tool
	if tool == "" {
		tool = "ksaga-ops"
	}
	comp, err := audit.NewCompensation(audit.Compensate{SagaType: a.SagaType, SagaID: a.SagaID, InboxPartitions: n, AuditPartitions: auditParts,
		By: a.By, Note: a.Note, Tool: tool, At: time.Now(), Resume: resume})
	if err != nil {
		return nil, err
	}
	res := &ActionResult{Saga: s, Compensation: comp}
	if a.DryRun {
		return res, nil
	}
	if a.Confirm != nil {
		if err := a.Confirm(s); err != nil {
			return nil, fmt.Errorf("%w: nothing was sent", err)
		}
	}
	// The request and its audit record commit together or not at all.
	tx, err := kgo.NewClient(append(k.clientOpts(),
		kgo.TransactionalID(tool+"-"+verb+"-"+a.SagaType+"-"+comp.Record.Run),
		kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
	if err != nil {
		return nil, err
	}
	defer tx.Close()
	pctx, cancel := context.WithTimeout(ctx, k.timeout())
	defer cancel()
	if err := audit.Commit(pctx, tx, k.timeout(), comp.Request, comp.Audit); err != nil {
		return nil, fmt.Errorf("%s saga %s: nothing was sent: %w", verb, a.SagaID, err)
	}
	res.Sent = true
	return res, nil
}
