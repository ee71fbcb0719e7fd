// Package audit is the record of what operators and API callers did to
// sagas: one JSON record on saga.<type>.audit (topic.Audit) per action,
// written in the same Kafka transaction as the action's own records, so
// that an action is never without its record, nor a record without its
// action.
//
//	c, err := audit.NewCompensation(audit.Compensate{
//		SagaType: "order", SagaID: "o-7", InboxPartitions: 6, AuditPartitions: 6,
//		By: "alice", Note: "customer cancelled by phone", Tool: "sagactl", At: time.Now(),
//	})
//	if err != nil {
//		return err
//	}
//	// cl has a kgo.TransactionalID and kgo.ManualPartitioner.
//	err = audit.Commit(ctx, cl, c.Request, c.Audit)
//
// sagactl (saga compensate) and the HTTP API of package daemon (POST
// .../compensate) both build their Compensate message and its audit record
// with NewCompensation, and write them with Commit: what one writes, the
// other does. sagactl dlq redrive writes a Record of action
// message.AuditRedrive with the dead-letter records it re-produces.
package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/inbox"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/topic"
)

// Record is the JSON value of a record on saga.<type>.audit: one action. A
// dlq redrive writes one per transaction, in that transaction, all with the
// run's id; a compensate writes one with its Compensate message.
type Record struct {
	// Action is message.AuditRedrive, message.AuditCompensate or
	// message.AuditResume.
	Action   string `json:"action"`
	SagaType string `json:"saga_type"`
	// Run identifies the run (NewRun): the records of one redrive share
	// it.
	Run string `json:"run"`
	// By is who acted: sagactl's --as (default $USER), or the name of
	// the HTTP API's bearer token. It matches ValidName. Note is why.
	By   string    `json:"by"`
	Note string    `json:"note"`
	At   time.Time `json:"at"`
	Host string    `json:"host,omitempty"`
	// Tool is what wrote the record: "sagactl", or "<daemon>-api" for
	// the HTTP API of a daemon (sagad-api).
	Tool string `json:"tool"`

	// DLT, Count, Filters and Records describe a redrive: the dead-letter
	// records it re-produced, in this record's transaction.
	DLT     string   `json:"dlt,omitempty"`
	Count   int      `json:"count,omitempty"`
	Filters *Filters `json:"filters,omitempty"`
	Records []Entry  `json:"records,omitempty"`

	// SagaID, Inbox and Partition describe a compensate: the saga, and
	// where its Compensate message went (its home partition).
	SagaID    string `json:"saga_id,omitempty"`
	Inbox     string `json:"inbox,omitempty"`
	Partition *int32 `json:"partition,omitempty"`
}

// Filters are the selection of a redrive run, as the operator gave it.
type Filters struct {
	Reason string     `json:"reason,omitempty"`
	SagaID string     `json:"saga_id,omitempty"`
	Since  *time.Time `json:"since,omitempty"`
	Until  *time.Time `json:"until,omitempty"`
	Limit  int        `json:"limit,omitempty"`
}

// Entry is one redriven dead-letter record.
type Entry struct {
	// Partition and Offset place the record in the DLT.
	Partition   int32  `json:"partition"`
	Offset      int64  `json:"offset"`
	SagaID      string `json:"saga_id"`
	MessageType string `json:"message_type,omitempty"`
	Reason      string `json:"reason,omitempty"`
	// To is where the original went back: "<topic>/<partition>".
	To string `json:"to"`
}

// nameRE is what a Record's By may be: a user or token name, not free text.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)

// NameRule says in words what ValidName accepts, for error messages.
const NameRule = "1 to 64 characters of A-Z, a-z, 0-9 and . _ @ -, starting with a letter or digit"

// ErrInvalidName is wrapped by ValidName's error.
var ErrInvalidName = errors.New("not a valid name")

// ValidName returns nil when name can be a Record's By (NameRule), and an
// error wrapping ErrInvalidName that says why not otherwise. It is
// sagactl's rule for --as and the HTTP API's for token names, so that the
// audit trail holds names, never terminal escapes or newlines.
func ValidName(name string) error {
	if nameRE.MatchString(name) {
		return nil
	}
	return fmt.Errorf("%w: %q: want %s", ErrInvalidName, name, NameRule)
}

// NewRun returns a new run id: the time and 4 random bytes, so that ids
// sort by time and never collide.
func NewRun(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// New returns a Record of action, by whom and why, at now, with this
// host's name.
func New(action, sagaType, run, by, note, tool string, now time.Time) Record {
	host, _ := os.Hostname()
	return Record{Action: action, SagaType: sagaType, Run: run, By: by, Note: note, At: now.UTC(), Host: host, Tool: tool}
}

// KafkaRecord returns r's record for saga.<type>.audit, which has parts
// partitions: keyed by key (the saga id of a compensate, the run of a
// redrive), on the partition murmur2 of the key picks, as every ksaga
// producer's; produce it with kgo.ManualPartitioner.
func (r Record) KafkaRecord(key string, parts int32) (*kgo.Record, error) {
	v, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode the audit record: %w", err)
	}
	rec := &kgo.Record{
		Topic: topic.Audit(r.SagaType), Partition: message.HomePartition(key, parts), Key: []byte(key), Value: v,
		Headers: []kgo.RecordHeader{header(message.HeaderAuditAction, r.Action), header(message.HeaderSagaType, r.SagaType)},
	}
	if r.SagaID != "" {
		rec.Headers = append(rec.Headers, header(message.HeaderSagaID, r.SagaID))
	}
	return rec, nil
}

func header(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }

// Compensate describes a compensate request: whose saga, who asks and why.
type Compensate struct {
	SagaType, SagaID string
	// InboxPartitions and AuditPartitions are the partition counts of
	// saga.<type>.inbox and saga.<type>.audit.
	InboxPartitions, AuditPartitions int32
	// By must pass ValidName. Note, the reason, goes into the audit
	// record and, when not empty, the Compensate message's ksaga-reason
	// header.
	By, Note string
	// Tool is Record.Tool.
	Tool string
	At   time.Time
	// Headers are added to the Compensate message (a W3C traceparent and
	// tracestate).
	Headers []kgo.RecordHeader
	// Resume makes the request a Resume message for a parked saga
	// (saga.Step.Park), audited as message.AuditResume, instead of a
	// Compensate.
	Resume bool
}

// Compensation is a Compensate message and its audit record: write both in
// one Kafka transaction (Commit).
type Compensation struct {
	// Request is the documented Compensate message, package client's:
	// key = saga id, on the saga's home partition of saga.<type>.inbox,
	// a new message id compensate-<id>-<16 hex digits>.
	Request *kgo.Record
	// Audit is Record's record on saga.<type>.audit, keyed by the saga id.
	Audit *kgo.Record
	// Record is the audit record's value, as written.
	Record Record
}

// NewCompensation builds the records of c. It fails when c.By is not a
// valid name or a field is missing; nothing is produced.
func NewCompensation(c Compensate) (*Compensation, error) {
	switch {
	case c.SagaType == "" || c.SagaID == "":
		return nil, errors.New("audit: a compensation needs a saga type and id")
	case c.InboxPartitions <= 0 || c.AuditPartitions <= 0:
		return nil, fmt.Errorf("audit: compensate %s/%s: partition counts %d (inbox) and %d (audit) must be positive", c.SagaType, c.SagaID, c.InboxPartitions, c.AuditPartitions)
	}
	if err := ValidName(c.By); err != nil {
		return nil, fmt.Errorf("audit: compensate %s/%s: by: %w", c.SagaType, c.SagaID, err)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	home := message.HomePartition(c.SagaID, c.InboxPartitions)
	typ, prefix, action := message.TypeCompensate, "compensate-", message.AuditCompensate
	if c.Resume {
		typ, prefix, action = message.TypeResume, "resume-", message.AuditResume
	}
	req := inbox.Record(c.SagaType, c.SagaID, typ, prefix+c.SagaID+"-"+hex.EncodeToString(b[:]), c.InboxPartitions, nil)
	if c.Note != "" {
		req.Headers = append(req.Headers, header(message.HeaderReason, c.Note))
	}
	req.Headers = append(req.Headers, c.Headers...)
	r := New(action, c.SagaType, NewRun(c.At), c.By, c.Note, c.Tool, c.At)
	r.SagaID, r.Inbox, r.Partition = c.SagaID, message.Inbox(c.SagaType), &home
	a, err := r.KafkaRecord(c.SagaID, c.AuditPartitions)
	if err != nil {
		return nil, err
	}
	return &Compensation{Request: req, Audit: a, Record: r}, nil
}

// Commit produces recs in one transaction of cl, which must have a
// kgo.TransactionalID (and kgo.ManualPartitioner, for records that name
// their partition), and commits it: all of recs are written, or none.
// The caller must not use cl for another transaction at the same time.
//
// ctx bounds the produce; ending the transaction gets a context of its own
// bounded by endTimeout, so that a cancelled caller does not leave it open.
// A nil error means the records are committed. An error means they are not
// visible to read_committed readers now; the transaction was aborted when
// that could be done. kgo's documentation holds that no error of
// EndTransaction is retryable: after one, close cl and make another.
func Commit(ctx context.Context, cl *kgo.Client, endTimeout time.Duration, recs ...*kgo.Record) error {
	if err := cl.BeginTransaction(); err != nil {
		return fmt.Errorf("begin a transaction: %w", err)
	}
	endCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(ctx), endTimeout)
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		// Abort whatever the failed produce left in the transaction.
		ectx, cancel := endCtx()
		defer cancel()
		_ = cl.AbortBufferedRecords(ectx)
		return errors.Join(err, cl.EndTransaction(ectx, kgo.TryAbort))
	}
	ectx, cancel := endCtx()
	defer cancel()
	if err := cl.EndTransaction(ectx, kgo.TryCommit); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
