package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
)

// errSagaNotFound means Redis holds no state for the saga: a wrong id or
// type, a saga whose start request is not processed yet, or a Redis that
// lost its data (the engine rebuilds it from saga.<type>.state).
var errSagaNotFound = errors.New("saga not found")

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
}

// getSaga prints the saga's state as stored in Redis: its version, then its
// state JSON, indented. It returns an error wrapping errSagaNotFound when
// the key does not exist.
func getSaga(ctx context.Context, rdb redis.UniversalClient, w io.Writer, opt getOptions) error {
	key := orchestrator.StateKey(opt.sagaType, message.HomePartition(opt.id, opt.partitions), opt.id)
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
	fmt.Fprintf(w, "saga %s/%s version %s (Redis key %s)\n", opt.sagaType, opt.id, fields["version"], key)
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, []byte(state), "", "  "); err != nil {
		// Not JSON: show it as it is rather than hide it.
		pretty.Reset()
		pretty.WriteString(state)
	}
	pretty.WriteByte('\n')
	_, err = w.Write(pretty.Bytes())
	return err
}

// inboxPartitions reads the partition count of saga.<sagaType>.inbox, which
// places a saga's Redis keys (its home partition).
func inboxPartitions(ctx context.Context, brokers []string, sec []kgo.Opt, sagaType string, timeout time.Duration) (int32, error) {
	cl, err := newAdminClient(brokers, sec, timeout)
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	topic := message.Inbox(sagaType)
	reqCtx, cancel := context.WithTimeout(ctx, orDefault(timeout, defaultTimeout))
	defer cancel()
	tds, err := kadm.NewClient(cl).ListTopics(reqCtx, topic)
	if err != nil {
		return 0, firstRequestError(ctx, "Kafka", brokers, "kafka-brokers", orDefault(timeout, defaultTimeout), fmt.Errorf("describe %s: %w", topic, err))
	}
	td, ok := tds[topic]
	if ok && td.Err != nil && !errors.Is(td.Err, kerr.UnknownTopicOrPartition) {
		return 0, firstRequestError(ctx, "Kafka", brokers, "kafka-brokers", orDefault(timeout, defaultTimeout), fmt.Errorf("describe %s: %w", topic, td.Err))
	}
	if !ok || td.Err != nil || len(td.Partitions) == 0 {
		return 0, fmt.Errorf("topic %s not found (check --saga, or pass --partitions N)", topic)
	}
	return int32(len(td.Partitions)), nil
}
