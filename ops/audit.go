package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/topic"
)

// AuditLog is what saga.<type>.audit holds: ListAudit's answer.
type AuditLog struct {
	Topic string
	// Records are the audit records, sorted by At.
	Records []audit.Record
	// Missing is set when the topic does not exist: nothing was audited.
	Missing bool
	// Invalid counts records that are not audit records.
	Invalid int
	// Incomplete is set when the read stopped before the end offsets.
	Incomplete bool

	// redriven maps each DLT record redriven to the records that say so
	// (indexes into Records).
	redriven map[Position][]int
}

// events returns the redrives of the DLT record at p.
func (l *AuditLog) events(p Position) []RedriveEvent {
	var out []RedriveEvent
	for _, i := range l.redriven[p] {
		r := &l.Records[i]
		out = append(out, RedriveEvent{DLT: p.String(), At: r.At, By: r.By, Note: r.Note, Run: r.Run})
	}
	return out
}

// ListAudit reads saga.<sagaType>.audit from its start to the end offsets
// taken when it starts (read_committed): every redrive transaction and
// every compensate or resume request, oldest first. A topic that does not
// exist is an empty log with Missing set.
func ListAudit(ctx context.Context, k Kafka, sagaType string) (*AuditLog, error) {
	cl, err := k.newAdminClient()
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	return readAudit(ctx, k, kadm.NewClient(cl), sagaType)
}

// readAudit reads the audit log of sagaType.
//
// A redrive reads it after its transactional producer has fenced any
// earlier run with the same transactional id: the coordinator completes
// that run's open transaction first, so every committed redrive is below
// the end offsets read here, and the fenced run can commit nothing more.
func readAudit(ctx context.Context, k Kafka, adm *kadm.Client, sagaType string) (*AuditLog, error) {
	l := &AuditLog{Topic: topic.Audit(sagaType), redriven: make(map[Position][]int)}
	spans, err := topicSpans(ctx, k, adm, l.Topic)
	if errors.Is(err, ErrNoTopic) {
		l.Missing = true
		return l, nil
	}
	if err != nil {
		return nil, err
	}
	l.Incomplete, err = scan(ctx, k, l.Topic, spans, func(r *kgo.Record) bool {
		var a audit.Record
		if err := json.Unmarshal(r.Value, &a); err != nil || a.Action == "" {
			l.Invalid++
			return true
		}
		l.Records = append(l.Records, a)
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", l.Topic, err)
	}
	slices.SortStableFunc(l.Records, func(a, b audit.Record) int { return a.At.Compare(b.At) })
	for i, a := range l.Records {
		if a.Action != message.AuditRedrive {
			continue
		}
		for _, e := range a.Records {
			p := Position{e.Partition, e.Offset}
			l.redriven[p] = append(l.redriven[p], i)
		}
	}
	return l, nil
}

// TopicCreated is called when an action creates saga.<type>.audit, which
// a sagad older than the audit topic did not create: its name, partition
// count and replication factor, those of the dead-letter topic.
type TopicCreated func(name string, partitions, replicationFactor int)

// ensureAudit returns the partition count of saga.<type>.audit. When the
// topic does not exist, it creates it as sagad would (topic.OfSagaType),
// with the partition count and replication factor of the dead-letter
// topic, and calls created when it is not nil.
func ensureAudit(ctx context.Context, adm *kadm.Client, sagaType string, created TopicCreated) (int32, error) {
	name, dltName := topic.Audit(sagaType), message.DLT(sagaType)
	tds, err := adm.ListTopics(ctx, name, dltName)
	if err != nil {
		return 0, fmt.Errorf("describe %s: %w", name, err)
	}
	if td, ok := tds[name]; ok && td.Err == nil && len(td.Partitions) > 0 {
		return int32(len(td.Partitions)), nil
	}
	dltd, ok := tds[dltName]
	if !ok || dltd.Err != nil || len(dltd.Partitions) == 0 {
		return 0, noTopic(dltName)
	}
	spec := topic.Spec{Partitions: len(dltd.Partitions), ReplicationFactor: len(dltd.Partitions.Sorted()[0].Replicas)}
	var configs map[string]*string
	for _, t := range topic.OfSagaType(sagaType, spec) {
		if t.Name == name {
			configs = make(map[string]*string, len(t.Configs))
			for k, v := range t.Configs {
				configs[k] = &v
			}
		}
	}
	resp, err := adm.CreateTopic(ctx, int32(spec.Partitions), int16(spec.ReplicationFactor), configs, name)
	if err == nil {
		err = resp.Err
	}
	switch {
	case err == nil:
		if created != nil {
			created(name, spec.Partitions, spec.ReplicationFactor)
		}
	case errors.Is(err, kerr.TopicAlreadyExists):
	default:
		return 0, fmt.Errorf("topic %s does not exist and cannot be created: %w (restart sagad, which creates it, or create it with %d partitions and retention.ms=-1)",
			name, err, spec.Partitions)
	}
	return int32(spec.Partitions), nil
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
	return 0, noTopic(dltName)
}
