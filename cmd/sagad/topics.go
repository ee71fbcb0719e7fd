package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
)

// topicSpec is how sagad creates the topics that do not exist yet.
type topicSpec struct {
	partitions        int
	replicationFactor int
	// dltRetention is the retention of the dead-letter topics; zero keeps
	// their records until they are deleted.
	dltRetention time.Duration
}

// topicGroup is topics created with the same configs.
type topicGroup struct {
	topics  []string
	configs map[string]*string
}

// topicGroups returns the topics of the order saga and its participants,
// grouped by their configs:
//
//   - every topic gets min.insync.replicas=2 when the replication factor is
//     3 or more, so that a committed transaction survives the loss of one
//     broker;
//   - the dead-letter topics (saga.order.inbox-dlt, <participant>.commands-dlt)
//     keep their records until deleted (retention.ms=-1), or for
//     dltRetention: a dead letter waits for a human;
//   - the state topic is compacted: the engine restores each saga from its
//     latest state, which time-based retention would delete.
func (s topicSpec) topicGroups() []topicGroup {
	with := func(kv ...string) map[string]*string {
		m := make(map[string]*string)
		if s.replicationFactor >= 3 {
			m["min.insync.replicas"] = ptr("2")
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = ptr(kv[i+1])
		}
		return m
	}
	retention := "-1"
	if s.dltRetention > 0 {
		retention = strconv.FormatInt(s.dltRetention.Milliseconds(), 10)
	}
	plain := []string{message.Inbox(order.Name), message.Events(order.Name)}
	dlts := []string{message.DLT(order.Name)}
	for _, p := range allParticipants {
		plain = append(plain, message.Commands(p))
		dlts = append(dlts, message.Commands(p)+"-dlt")
	}
	return []topicGroup{
		{plain, with()},
		{dlts, with("retention.ms", retention)},
		{[]string{message.State(order.Name)}, with("cleanup.policy", "compact")},
	}
}

func ptr(s string) *string { return &s }

// createTopics checks the topics that exist already (checkTopics), creates
// those that do not exist yet, and checks again. Existing topics are left as
// they are: partitions are never added to an inbox or state topic, since
// that would move sagas to other partitions, and configs are not changed.
func createTopics(ctx context.Context, adm *kadm.Client, spec topicSpec, log *slog.Logger) error {
	if _, err := checkTopics(ctx, adm, spec.partitions); err != nil {
		return err
	}
	for _, g := range spec.topicGroups() {
		resps, err := adm.CreateTopics(ctx, int32(spec.partitions), int16(spec.replicationFactor), g.configs, g.topics...)
		if err != nil {
			return fmt.Errorf("create topics: %w", err)
		}
		for _, r := range resps.Sorted() {
			switch {
			case r.Err == nil:
				log.Info("created topic", "topic", r.Topic, "partitions", spec.partitions, "replication_factor", spec.replicationFactor, "configs", configString(g.configs))
			case errors.Is(r.Err, kerr.TopicAlreadyExists):
			default:
				msg := r.Err.Error()
				if r.ErrMessage != "" {
					msg += ": " + r.ErrMessage
				}
				return fmt.Errorf("create topic %s (%d partitions, replication factor %d): %s; check --partitions and --replication-factor", r.Topic, spec.partitions, spec.replicationFactor, msg)
			}
		}
	}
	ni, err := checkTopics(ctx, adm, spec.partitions)
	if err != nil {
		return err
	}
	if ni != spec.partitions {
		log.Info("topics exist with a different partition count; --partitions applies only to new topics", "topic", message.Inbox(order.Name), "partitions", ni)
	}
	return nil
}

// configString formats configs for a log line, sorted by name.
func configString(configs map[string]*string) string {
	var kv []string
	for k, v := range configs {
		kv = append(kv, k+"="+*v)
	}
	slices.Sort(kv)
	return strings.Join(kv, ",")
}

// checkTopics checks what the engine needs of the order saga's inbox and
// state topics, which may have been created by someone else: the same
// partition count (the engine writes each saga's state to the state
// partition numbered like its inbox partition) and a compacted state topic
// (the engine restores each saga from its latest state, which time-based
// retention would delete). A topic that does not exist yet counts as
// created with partitions. It returns the inbox's partition count, or one
// error that says what is wrong and how to fix it: retrying cannot fix
// either, so sagad exits.
func checkTopics(ctx context.Context, adm *kadm.Client, partitions int) (int, error) {
	inbox, state := message.Inbox(order.Name), message.State(order.Name)
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
			"and restart sagad with --partitions set to the other's (never add partitions to either topic: that moves sagas in flight)",
			inbox, ni, state, ns, why)
	default:
		have, count, missing := inbox, ni, state
		if sok {
			have, count, missing = state, ns, inbox
		}
		return 0, fmt.Errorf("topic %s has %d partitions but %s does not exist and --partitions is %d: %s; restart sagad with --partitions %d",
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
