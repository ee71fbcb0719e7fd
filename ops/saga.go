package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
)

// ErrSagaNotFound means the Redis view holds no state for the saga: a wrong
// id or type, a saga whose start request is not processed yet, or a Redis
// that lost its data (the engine rebuilds it from saga.<type>.state).
var ErrSagaNotFound = errors.New("saga not found")

// Saga is a saga's state as the engine last wrote it to the Redis view
// (hash orchestrator.StateKey, fields version and state). The view may lag
// Kafka by the last few transactions.
type Saga struct {
	SagaType  string
	ID        string
	Partition int32
	// Key is the Redis key of the state.
	Key string
	// State is the state decoded; its Version is the hash's version field
	// when the JSON has none.
	State orchestrator.State
	// Raw is the state's JSON as the engine wrote it, with fields this
	// version of ops may not know.
	Raw json.RawMessage
}

// Redis is the Redis of the saga view.
type Redis struct {
	Client redis.UniversalClient
	// Timeout bounds each request; 0 means DefaultTimeout.
	Timeout time.Duration
}

func (r Redis) timeout() time.Duration { return orDefault(r.Timeout, DefaultTimeout) }

// addrs returns the addresses the client was made with.
func (r Redis) addrs() []string {
	switch c := r.Client.(type) {
	case *redis.Client:
		return []string{c.Options().Addr}
	case *redis.ClusterClient:
		return c.Options().Addrs
	}
	return nil
}

// GetSaga reads saga id of sagaType from the Redis view. partitions is
// the partition count of saga.<sagaType>.inbox (InboxPartitions), which
// places the saga's key. A key that does not exist is an error wrapping
// ErrSagaNotFound; a Redis that does not answer a *ConnError.
func GetSaga(ctx context.Context, r Redis, sagaType, id string, partitions int32) (*Saga, error) {
	p := message.HomePartition(id, partitions)
	key := orchestrator.StateKey(sagaType, p, id)
	reqCtx, cancel := context.WithTimeout(ctx, r.timeout())
	fields, err := r.Client.HGetAll(reqCtx, key).Result()
	cancel()
	if err != nil {
		return nil, connError(ctx, "Redis", r.addrs(), r.timeout(), fmt.Errorf("HGETALL %s: %w", key, err))
	}
	if len(fields) == 0 {
		return nil, fmt.Errorf("%w: Redis has no key %s (check the id and the saga type; Redis may also lag the engine by a few transactions)", ErrSagaNotFound, key)
	}
	state, ok := fields["state"]
	if !ok {
		names := make([]string, 0, len(fields))
		for k := range fields {
			names = append(names, k)
		}
		slices.Sort(names)
		return nil, fmt.Errorf("key %s has no state field (it has %s): it was not written by the ksaga engine", key, strings.Join(names, ", "))
	}
	s := &Saga{SagaType: sagaType, ID: id, Partition: p, Key: key, Raw: json.RawMessage(state)}
	if err := json.Unmarshal(s.Raw, &s.State); err != nil {
		return nil, fmt.Errorf("key %s holds a state that is not the engine's JSON: %w", key, err)
	}
	if s.State.Version == 0 {
		s.State.Version, _ = strconv.ParseInt(fields["version"], 10, 64)
	}
	return s, nil
}

// scanBatch is the SCAN COUNT of ListSagas, and how many states it reads
// per pipelined round trip.
const scanBatch = 500

// SagaList is what ListSagas found.
type SagaList struct {
	// Sagas are the states read, in no order.
	Sagas []*Saga
	// Invalid counts keys that match the pattern but hold no readable
	// state.
	Invalid int
	// Pattern is the SCAN pattern (orchestrator.StateKeyPattern).
	Pattern string
}

// ListSagas scans the Redis view for the states of sagaType
// (orchestrator.StateKeyPattern; on Redis Cluster, every primary) and
// returns them. A Redis that does not answer the first SCAN is a
// *ConnError.
func ListSagas(ctx context.Context, r Redis, sagaType string) (*SagaList, error) {
	rdb, timeout := r.Client, r.timeout()
	l := &SagaList{Pattern: orchestrator.StateKeyPattern(sagaType)}
	first := true
	scanOne := func(ctx context.Context, c redis.UniversalClient) error {
		var cursor uint64
		for {
			reqCtx, cancel := context.WithTimeout(ctx, timeout)
			keys, next, err := c.Scan(reqCtx, cursor, l.Pattern, scanBatch).Result()
			cancel()
			if err != nil {
				err = fmt.Errorf("SCAN %s: %w", l.Pattern, err)
				if first {
					err = connError(ctx, "Redis", r.addrs(), timeout, err)
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
					p, id, ok := parseStateKey(sagaType, keys[i])
					s := &Saga{SagaType: sagaType, ID: id, Partition: p, Key: keys[i], Raw: json.RawMessage(v)}
					if err != nil || !ok || json.Unmarshal(s.Raw, &s.State) != nil {
						l.Invalid++
						continue
					}
					l.Sagas = append(l.Sagas, s)
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
	return l, nil
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
