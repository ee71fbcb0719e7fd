// Package topic derives the Kafka topics of a saga type and of a
// participant, with the configs ksaga needs, and creates and checks them.
//
//	spec := topic.Spec{Partitions: 6, ReplicationFactor: 3}
//	ts := append(topic.OfSaga(def, spec), topic.OfParticipant("hotel", spec)...)
//	err := topic.Create(ctx, kadm.NewClient(cl), spec, ts, slog.Default())
//
// For a saga type T it is
//
//	saga.T.inbox        start requests, replies, timeouts (spec's partitions)
//	saga.T.state        compacted: cleanup.policy=compact
//	saga.T.events       the public history
//	saga.T.inbox-dlt    dead letters: retention.ms=-1, or Spec.DLTRetention
//	saga.T.audit        what operators did (sagactl): retention.ms=-1 always
//
// and for a participant P, P.commands and P.commands-dlt (kept like the
// saga's dead letters). From a replication factor of 3 on, every topic gets
// min.insync.replicas=2, so that a committed transaction survives the loss
// of a broker.
//
// The inbox and the state topic of a saga type must have the same partition
// count, which must never change: a saga's home partition is murmur2 of its
// id modulo that count (message.HomePartition), and its state lives on the
// state partition numbered like it. Create and Check enforce it.
package topic

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
)

// Spec is how topics that do not exist yet are created.
type Spec struct {
	// Partitions of every created topic. Never change it for existing
	// topics. It must be at least 1.
	Partitions int
	// ReplicationFactor of every created topic, from 1 to 32767. From 3 on,
	// topics get min.insync.replicas=2.
	ReplicationFactor int
	// DLTRetention is the retention of the dead-letter topics; zero keeps
	// their records until they are deleted (retention.ms=-1).
	DLTRetention time.Duration
}

// Topic is a topic and the configs it is created with.
type Topic struct {
	Name    string
	Configs map[string]string
}

// CommandsDLT returns <participant>.commands-dlt, where a participant
// dead-letters the commands it cannot answer.
func CommandsDLT(participant string) string { return message.Commands(participant) + "-dlt" }

// Audit returns saga.<sagaType>.audit, where sagactl writes one JSON record
// per operator action on the saga type: each dlq redrive transaction (who,
// why, when, which dead-letter offsets), each saga compensate. The audit is
// also the redrive history: sagactl never redrives a dead-letter offset
// that an audit record names, so the topic keeps its records for ever
// (retention.ms=-1), whatever Spec.DLTRetention says.
func Audit(sagaType string) string { return "saga." + sagaType + ".audit" }

// OfSaga returns the topics of the saga type def: its inbox, state, events,
// dead-letter and audit topics, in that order, with their configs for spec.
func OfSaga(def *saga.Definition, spec Spec) []Topic { return ofSagaType(def.Name(), spec) }

// OfSagaType is OfSaga for a saga type known by its name only.
func OfSagaType(sagaType string, spec Spec) []Topic { return ofSagaType(sagaType, spec) }

func ofSagaType(name string, spec Spec) []Topic {
	return []Topic{
		{message.Inbox(name), spec.configs()},
		{message.State(name), spec.configs("cleanup.policy", "compact")},
		{message.Events(name), spec.configs()},
		{message.DLT(name), spec.configs("retention.ms", spec.dltRetention())},
		{Audit(name), spec.configs("retention.ms", "-1")},
	}
}

// OfParticipant returns the topics of participant name: <name>.commands
// and <name>.commands-dlt, with their configs for spec.
func OfParticipant(name string, spec Spec) []Topic {
	return []Topic{
		{message.Commands(name), spec.configs()},
		{CommandsDLT(name), spec.configs("retention.ms", spec.dltRetention())},
	}
}

func (s Spec) configs(kv ...string) map[string]string {
	m := make(map[string]string)
	if s.ReplicationFactor >= 3 {
		m["min.insync.replicas"] = "2"
	}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func (s Spec) dltRetention() string {
	if s.DLTRetention > 0 {
		return strconv.FormatInt(s.DLTRetention.Milliseconds(), 10)
	}
	return "-1"
}

func (s Spec) validate() error {
	switch {
	case s.Partitions < 1:
		return fmt.Errorf("topic spec: partitions must be at least 1, got %d", s.Partitions)
	case s.ReplicationFactor < 1 || s.ReplicationFactor > 32767:
		return fmt.Errorf("topic spec: replication factor must be between 1 and 32767, got %d", s.ReplicationFactor)
	case s.DLTRetention < 0:
		return fmt.Errorf("topic spec: dead-letter retention %v is negative", s.DLTRetention)
	}
	return nil
}

// Create checks the saga topics that exist already (see Check), creates the
// topics of ts that do not exist yet with spec, and checks again. Existing
// topics are left as they are: partitions are never added to an inbox or
// state topic, since that would move sagas to other partitions, and configs
// are not changed. It logs each topic it creates, and once when the
// existing topics have another partition count than spec's.
//
// Its errors say what is wrong and how to fix it. An error of Check cannot
// be fixed by retrying; an error talking to the broker may be. A nil log
// logs nothing.
func Create(ctx context.Context, adm *kadm.Client, spec Spec, ts []Topic, log *slog.Logger) error {
	if err := spec.validate(); err != nil {
		return err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	types := sagaTypes(ts)
	for _, typ := range types {
		if _, err := Check(ctx, adm, typ, spec.Partitions); err != nil {
			return err
		}
	}
	// One CreateTopics request per set of configs.
	var groups []map[string]string
	byGroup := make(map[int][]string)
	for _, t := range ts {
		i := slices.IndexFunc(groups, func(c map[string]string) bool { return maps.Equal(c, t.Configs) })
		if i < 0 {
			groups, i = append(groups, t.Configs), len(groups)
		}
		byGroup[i] = append(byGroup[i], t.Name)
	}
	for i, configs := range groups {
		ptrs := make(map[string]*string, len(configs))
		for k, v := range configs {
			ptrs[k] = &v
		}
		resps, err := adm.CreateTopics(ctx, int32(spec.Partitions), int16(spec.ReplicationFactor), ptrs, byGroup[i]...)
		if err != nil {
			return fmt.Errorf("create topics: %w", err)
		}
		for _, r := range resps.Sorted() {
			switch {
			case r.Err == nil:
				log.Info("created topic", "topic", r.Topic, "partitions", spec.Partitions,
					"replication_factor", spec.ReplicationFactor, "configs", configString(configs))
			case errors.Is(r.Err, kerr.TopicAlreadyExists):
			default:
				msg := r.Err.Error()
				if r.ErrMessage != "" {
					msg += ": " + r.ErrMessage
				}
				return fmt.Errorf("create topic %s (%d partitions, replication factor %d): %s; check --partitions and --replication-factor",
					r.Topic, spec.Partitions, spec.ReplicationFactor, msg)
			}
		}
	}
	for _, typ := range types {
		n, err := Check(ctx, adm, typ, spec.Partitions)
		if err != nil {
			return err
		}
		if n != spec.Partitions {
			log.Info("topics exist with a different partition count; --partitions applies only to new topics",
				"topic", message.Inbox(typ), "partitions", n)
		}
	}
	return nil
}

// sagaTypes returns the saga types whose inbox is in ts, in order.
func sagaTypes(ts []Topic) []string {
	var out []string
	for _, t := range ts {
		if typ, ok := strings.CutPrefix(t.Name, "saga."); ok {
			if typ, ok := strings.CutSuffix(typ, ".inbox"); ok {
				out = append(out, typ)
			}
		}
	}
	return out
}

// configString formats configs for a log line, sorted by name.
func configString(configs map[string]string) string {
	kv := make([]string, 0, len(configs))
	for k, v := range configs {
		kv = append(kv, k+"="+v)
	}
	slices.Sort(kv)
	return strings.Join(kv, ",")
}

// Check checks what the engine needs of the inbox and state topics of saga
// type sagaType, which may have been created by someone else: the same
// partition count (the engine writes each saga's state to the state
// partition numbered like its inbox partition) and a compacted state topic
// (the engine restores each saga from its latest state, which time-based
// retention would delete). A topic that does not exist yet counts as
// created with partitions. It returns the inbox's partition count, or one
// error that says what is wrong and how to fix it: retrying cannot fix
// either, so a daemon should exit.
func Check(ctx context.Context, adm *kadm.Client, sagaType string, partitions int) (int, error) {
	inbox, state := message.Inbox(sagaType), message.State(sagaType)
	tds, err := adm.ListTopics(ctx, inbox, state)
	if err != nil {
		return 0, fmt.Errorf("describe topics %s and %s: %w", inbox, state, err)
	}
	count := func(topic string) (n int, exists bool, err error) {
		td, ok := tds[topic]
		switch {
		case !ok || errors.Is(td.Err, kerr.UnknownTopicOrPartition):
			return partitions, false, nil
		case td.Err != nil:
			return 0, false, fmt.Errorf("describe topic %s: %w", topic, td.Err)
		}
		return len(td.Partitions), true, nil
	}
	ni, iok, err := count(inbox)
	if err != nil {
		return 0, err
	}
	ns, sok, err := count(state)
	if err != nil {
		return 0, err
	}
	const why = "they must match, since the engine writes each saga's state to the state partition numbered like its inbox partition"
	switch {
	case ni == ns:
	case iok && sok:
		return 0, fmt.Errorf("topic %s has %d partitions but %s has %d: %s; delete the topic that was created with the wrong count "+
			"and restart with --partitions set to the other's (never add partitions to either topic: that moves sagas in flight)",
			inbox, ni, state, ns, why)
	default:
		have, count, missing := inbox, ni, state
		if sok {
			have, count, missing = state, ns, inbox
		}
		return 0, fmt.Errorf("topic %s has %d partitions but %s does not exist and --partitions is %d: %s; restart with --partitions %d",
			have, count, missing, partitions, why, count)
	}
	if !sok {
		return ni, nil
	}
	rcs, err := adm.DescribeTopicConfigs(ctx, state)
	if err != nil {
		return 0, fmt.Errorf("describe the configs of topic %s: %w", state, err)
	}
	rc, err := rcs.On(state, nil)
	if err == nil {
		err = rc.Err
	}
	if err != nil {
		return 0, fmt.Errorf("describe the configs of topic %s: %w", state, err)
	}
	policy := "delete" // Kafka's default
	for _, c := range rc.Configs {
		if c.Key == "cleanup.policy" {
			policy = c.MaybeValue()
		}
	}
	if policy != "compact" {
		return 0, fmt.Errorf("topic %s has cleanup.policy=%s, want compact: the engine restores each saga from its latest state, "+
			"which time-based retention deletes; fix it with: kafka-configs.sh --bootstrap-server <broker> --alter "+
			"--entity-type topics --entity-name %s --add-config cleanup.policy=compact", state, policy, state)
	}
	return ni, nil
}
