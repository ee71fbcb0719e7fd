// Package message is ksaga's wire contract: topic names, header names,
// message types and the saga event, shared by the engine, the participants,
// the DLQ tools and anyone who talks to a saga from outside.
//
//	rec := &kgo.Record{
//		Topic: message.Inbox("order"),
//		Key:   []byte("o-1"),
//		Value: startJSON,
//		Headers: []kgo.RecordHeader{
//			{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
//		},
//	}
//
// Everything here is part of the external contract: renaming a header or a
// topic breaks running sagas and outside tools.
package message

import (
	"encoding/json"
	"time"
)

// Topic names for a saga type T.

// Inbox returns saga.T.inbox: start requests, replies, timeouts.
func Inbox(sagaType string) string { return "saga." + sagaType + ".inbox" }

// State returns saga.T.state, the compacted changelog of saga state.
func State(sagaType string) string { return "saga." + sagaType + ".state" }

// Events returns saga.T.events, the sagas' public history.
func Events(sagaType string) string { return "saga." + sagaType + ".events" }

// DLT returns saga.T.inbox-dlt, the inbox's dead-letter topic.
func DLT(sagaType string) string { return "saga." + sagaType + ".inbox-dlt" }

// Commands returns <participant>.commands.
func Commands(participant string) string { return participant + ".commands" }

// Header names. Values are strings.
const (
	HeaderSagaID      = "ksaga-saga-id"
	HeaderSagaType    = "ksaga-saga-type"
	HeaderMessageType = "ksaga-message-type"
	HeaderMessageID   = "ksaga-message-id"
	HeaderStep        = "ksaga-step"
	HeaderStepAttempt = "ksaga-step-attempt"
	HeaderOutcome     = "ksaga-outcome"
	HeaderReason      = "ksaga-reason"
	HeaderReplyTo     = "ksaga-reply-to"
	// HeaderInReplyTo carries, on a reply, the message id of the command
	// it answers; the engine accepts a reply only for the command it waits on.
	HeaderInReplyTo = "ksaga-in-reply-to"
	// HeaderRedriveOf marks a record that sagactl redrove from a
	// dead-letter topic: "<dlt partition>:<dlt offset>".
	HeaderRedriveOf   = "ksaga-redrive-of"
	HeaderTraceParent = "traceparent"
	HeaderTraceState  = "tracestate"
)

// Message types of inbox records and commands.
const (
	TypeStartSaga  = "StartSaga"
	TypeReply      = "Reply"
	TypeTimeout    = "Timeout"
	TypeCompensate = "Compensate"
	// TypeResume resumes a parked saga (see StatusParked).
	TypeResume = "Resume"
)

// Reply outcomes.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
)

// Saga statuses, as in State.Status and Event.State.
const (
	StatusRunning      = "running"
	StatusCompensating = "compensating"
	StatusCompleted    = "completed"
	StatusCompensated  = "compensated"
	StatusFailed       = "failed"
	// StatusParked: a step whose attempts ran out parks the saga instead
	// of compensating it (saga.Step.Park). It waits, where it is, for an
	// operator's Resume (the step again, with fresh attempts) or
	// Compensate; a participant's late reply to the step resumes it too.
	StatusParked = "parked"
)

// Event types on saga.T.events. Every saga ends with exactly one of
// EventSagaCompleted, EventSagaCompensated and EventSagaFailed.
const (
	EventSagaStarted         = "SagaStarted"
	EventStepSucceeded       = "StepSucceeded"
	EventStepFailed          = "StepFailed"
	EventCompensationStarted = "CompensationStarted"
	EventStepCompensated     = "StepCompensated"
	EventSagaCompleted       = "SagaCompleted"
	EventSagaCompensated     = "SagaCompensated"
	EventSagaFailed          = "SagaFailed"
	// EventSagaParked: the step named ran out of attempts and parks the
	// saga; EventSagaResumed: it goes on (a Resume, a late reply).
	EventSagaParked  = "SagaParked"
	EventSagaResumed = "SagaResumed"
)

// Event is the JSON value of a record on saga.T.events.
type Event struct {
	SagaID   string    `json:"saga_id"`
	SagaType string    `json:"saga_type"`
	Type     string    `json:"type"`
	State    string    `json:"state"`
	Step     string    `json:"step,omitempty"`
	Version  int64     `json:"version"`
	At       time.Time `json:"at"`
	Reason   string    `json:"reason,omitempty"`
	// Data is the saga's data as it ended, on the terminal event only
	// (SagaCompleted, SagaCompensated, SagaFailed): what it started with
	// and what its steps kept from the replies (a tracking number).
	Data json.RawMessage `json:"data,omitempty"`
}

// Terminal reports whether an event type ends a saga.
func Terminal(eventType string) bool {
	switch eventType {
	case EventSagaCompleted, EventSagaCompensated, EventSagaFailed:
		return true
	}
	return false
}

// Reply is what a participant answers to a command.
type Reply struct {
	// Outcome is OutcomeSuccess or OutcomeFailure.
	Outcome string
	// Reason is a failure code such as OUT_OF_STOCK; empty on success.
	Reason string
	// Data is what the participant returns with its answer, as JSON text:
	// a result with success (a payment's authorization id, a booking
	// reference), details with failure. Empty for none. The saga's step
	// reads it (saga.Step.OnReply) and may keep it in the saga's data. It
	// is a string so that a Reply stays comparable.
	Data string
}

// Audit records. sagactl writes one JSON record to saga.T.audit
// (topic.Audit) for every operator action, in the same Kafka transaction as
// the action's records when it has some: who (by), why (note), when (at) and
// what. HeaderAuditAction names the action; the record's key is the saga id
// of a saga action and the run id of a redrive.
const (
	HeaderAuditAction = "ksaga-audit-action"
	// AuditRedrive: dlq redrive re-produced dead-letter records; the
	// record lists their DLT partitions and offsets, which are never
	// redriven again.
	AuditRedrive = "dlq-redrive"
	// AuditCompensate: saga compensate sent a Compensate message.
	AuditCompensate = "saga-compensate"
	// AuditResume: saga resume sent a Resume message to a parked saga.
	AuditResume = "saga-resume"
)

// HeaderForwardedFrom is set by the engine on an inbox record it moved to
// its saga's home partition: "<partition>/<offset>" of the record as it
// arrived.
const HeaderForwardedFrom = "ksaga-forwarded-from"

// HeaderOriginalTimestamp is set by the engine on an inbox record it moved
// to its saga's home partition: the Unix milliseconds of the record as it
// arrived. The copy itself is timestamped when it is moved, so that a
// broker that bounds timestamps (message.timestamp.before.max.ms) takes it
// however long the original waited.
const HeaderOriginalTimestamp = "ksaga-original-timestamp"

// HomePartition returns the inbox partition that owns saga id when the
// inbox has n partitions: murmur2 of the id, as Kafka's Java client and
// franz-go hash keys. The engine handles every message of a saga on this
// partition, whatever partition a producer wrote it to, and keeps the saga's
// state on the same partition of saga.T.state.
func HomePartition(id string, n int32) int32 {
	if n <= 0 {
		return 0
	}
	return int32(murmur2([]byte(id))&0x7fffffff) % n
}

// murmur2 is Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2).
func murmur2(b []byte) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	h := seed ^ uint32(len(b))
	for len(b) >= 4 {
		k := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
		b = b[4:]
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch len(b) {
	case 3:
		h ^= uint32(b[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(b[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(b[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}
