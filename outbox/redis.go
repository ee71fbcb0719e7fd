package outbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Fields of a Redis outbox entry. An entry is one stream entry with the
// field FieldSagaID (the saga id) and FieldData (the start request's JSON);
// its stream id (milliseconds-sequence) dates it.
const (
	FieldSagaID = "saga_id"
	FieldData   = "data"
)

// RelayGroup is the consumer group of the Redis relays on an outbox stream.
const RelayGroup = "ksaga-outbox-relay"

// RedisKey returns the stream of saga type sagaType's start requests:
// "ksaga:outbox:{<type>}". Its hash tag {<type>} decides its Redis Cluster
// slot: a MULTI or a script must touch keys of one slot only, so on a
// Cluster the keys written with the start request must carry the same hash
// tag ("shop:{order}:o-1"). That puts them in one slot, which is fine for
// the outbox's own traffic but is worth knowing when they are large or
// busy. A single Redis, or Sentinel, has no such constraint.
func RedisKey(sagaType string) string { return "ksaga:outbox:{" + sagaType + "}" }

// Stream is the Redis outbox of one saga type: a stream (RedisKey) that the
// caller's MULTI or script appends start requests to. It is safe for
// concurrent use.
type Stream struct {
	rdb      redis.UniversalClient
	sagaType string
	key      string
	cfg      config
}

// Redis returns the outbox of saga type sagaType in rdb. Check(def) makes it
// refuse data the saga definition refuses.
func Redis(rdb redis.UniversalClient, sagaType string, opts ...Opt) *Stream {
	return &Stream{rdb: rdb, sagaType: sagaType, key: RedisKey(sagaType), cfg: newConfig(opts)}
}

// Key returns the stream's key, for a Lua script that appends to it.
func (s *Stream) Key() string { return s.key }

// SagaType returns the saga type whose starts the stream holds.
func (s *Stream) SagaType() string { return s.sagaType }

// Encode returns the start request of saga id with data, checked as AddTo
// checks it, for a Lua script that appends the entry itself:
//
//	redis.call('HSET', KEYS[1], 'status', 'placed')
//	redis.call('XADD', KEYS[2], '*', 'saga_id', ARGV[1], 'data', ARGV[2])
//
// with KEYS[2] = s.Key(), ARGV[1] = id, ARGV[2] = the returned value. Its
// errors wrap ErrInvalid.
func (s *Stream) Encode(id string, data any) ([]byte, error) {
	return s.cfg.encode(s.sagaType, id, data)
}

// AddTo queues the start request of saga id with data on pipe, a MULTI
// pipeline of the caller's (redis.Client.TxPipelined), so that it is
// written if and only if the caller's own commands are:
//
//	_, err := rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
//		pipe.HSet(ctx, "shop:{order}:o-1", "status", "placed")
//		return orders.AddTo(pipe, "o-1", o)
//	})
//
// It queues nothing and returns an error wrapping ErrInvalid for a start
// the engine would refuse; returned from TxPipelined's function, that error
// discards the whole MULTI.
func (s *Stream) AddTo(pipe redis.Pipeliner, id string, data any) error {
	value, err := s.Encode(id, data)
	if err != nil {
		return err
	}
	// The context of a queued command is not used: the pipeline's Exec
	// has its own.
	pipe.XAdd(context.Background(), &redis.XAddArgs{Stream: s.key, Values: []any{FieldSagaID, id, FieldData, value}})
	return nil
}

// Start writes what write queues and the start request of saga id with data
// in one MULTI/EXEC: both or neither. write may be nil. It returns the
// error of write or AddTo (nothing is written), or of the MULTI (then, as
// with any Redis write whose answer was lost, it may or may not have been
// written: retrying with the same id and data is safe, a second start
// request for the id being dropped by the engine as a duplicate).
func (s *Stream) Start(ctx context.Context, id string, data any, write func(pipe redis.Pipeliner) error) error {
	_, err := s.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		if write != nil {
			if err := write(pipe); err != nil {
				return err
			}
		}
		return s.AddTo(pipe, id, data)
	})
	return err
}

// redisSource is the relay's side of a Stream: a consumer of RelayGroup.
type redisSource struct {
	s        *Stream
	consumer string
	// claimIdle is how long an entry delivered to another consumer stays
	// unacknowledged before this one takes it over (that relay died).
	claimIdle time.Duration
	// block bounds a wait for new entries.
	block time.Duration

	// own is set when this consumer may have delivered entries that it
	// did not acknowledge: at start (a predecessor with the same name
	// died) and after a failed round.
	own bool
	// lastClaim is when the pending entries were last looked at in
	// full; claimFrom is where the look goes on, "" when it is complete.
	lastClaim time.Time
	claimFrom string
	groupOK   bool
}

func (r *redisSource) kind() string { return "redis" }

func (r *redisSource) ensureGroup(ctx context.Context) error {
	if r.groupOK {
		return nil
	}
	// From id 0: entries written before the first relay ever ran are
	// relayed too.
	err := r.s.rdb.XGroupCreateMkStream(ctx, r.s.key, RelayGroup, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create consumer group %s on %s: %w", RelayGroup, r.s.key, err)
	}
	r.groupOK = true
	return nil
}

// fetch returns up to n entries: first those this consumer was given and
// did not acknowledge, then those other consumers left unacknowledged for
// claimIdle, then new ones (waiting up to block for them).
func (r *redisSource) fetch(ctx context.Context, n int) (batch, error) {
	if err := r.ensureGroup(ctx); err != nil {
		return nil, err
	}
	rb := &redisBatch{r: r}
	if r.own {
		res, err := r.s.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: RelayGroup, Consumer: r.consumer, Streams: []string{r.s.key, "0"}, Count: int64(n),
		}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, r.readErr(err)
		}
		if rb.add(res); len(rb.ids) > 0 {
			return rb, nil
		}
		r.own = false
	}
	if r.claimFrom != "" || time.Since(r.lastClaim) >= r.claimIdle/2 {
		from := r.claimFrom
		if from == "" {
			from = "0-0"
		}
		msgs, next, err := r.s.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
			Stream: r.s.key, Group: RelayGroup, Consumer: r.consumer, MinIdle: r.claimIdle, Start: from, Count: int64(n),
		}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, r.readErr(err)
		}
		if next == "0-0" || next == "" {
			r.claimFrom, r.lastClaim = "", time.Now()
		} else {
			r.claimFrom = next // more to look at on the next round
		}
		if rb.add([]redis.XStream{{Stream: r.s.key, Messages: msgs}}); len(rb.ids) > 0 {
			return rb, nil
		}
	}
	res, err := r.s.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: RelayGroup, Consumer: r.consumer, Streams: []string{r.s.key, ">"}, Count: int64(n), Block: r.block,
	}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, r.readErr(err)
	}
	rb.add(res)
	return rb, nil
}

// readErr notes a lost consumer group (a Redis that lost its data: it is
// created again) and that the entries read may be pending for us.
func (r *redisSource) readErr(err error) error {
	if strings.HasPrefix(err.Error(), "NOGROUP") {
		r.groupOK = false
	}
	r.own = true
	return fmt.Errorf("read %s: %w", r.s.key, err)
}

// stats returns the stream's length and the age of its oldest entry, by
// the Redis server's clock (the entry ids are its milliseconds).
func (r *redisSource) stats(ctx context.Context) (int64, time.Duration, error) {
	var n *redis.IntCmd
	var first *redis.XMessageSliceCmd
	var now *redis.TimeCmd
	_, err := r.s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		n = pipe.XLen(ctx, r.s.key)
		first = pipe.XRangeN(ctx, r.s.key, "-", "+", 1)
		now = pipe.Time(ctx)
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	if n.Val() == 0 || len(first.Val()) == 0 {
		return n.Val(), 0, nil
	}
	ms, _, _ := strings.Cut(first.Val()[0].ID, "-")
	at, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("stream id %q: %w", first.Val()[0].ID, err)
	}
	return n.Val(), max(now.Val().Sub(time.UnixMilli(at)), 0), nil
}

// redisBatch is a batch of stream entries delivered to the relay's
// consumer.
type redisBatch struct {
	r       *redisSource
	ids     []string
	entries []entry
}

func (b *redisBatch) add(streams []redis.XStream) {
	for _, st := range streams {
		for _, m := range st.Messages {
			b.ids = append(b.ids, m.ID)
			if len(m.Values) == 0 {
				// Deleted from the stream but still pending (an XDEL
				// without its XACK): relayed already; done acknowledges
				// it.
				continue
			}
			id, _ := m.Values[FieldSagaID].(string)
			data, _ := m.Values[FieldData].(string)
			b.entries = append(b.entries, entry{ref: m.ID, sagaID: id, data: []byte(data)})
		}
	}
}

func (b *redisBatch) list() []entry { return b.entries }

func (b *redisBatch) size() int { return len(b.ids) }

// done acknowledges and deletes the batch's entries in one MULTI.
func (b *redisBatch) done(ctx context.Context) error {
	if len(b.ids) == 0 {
		return nil
	}
	s := b.r.s
	_, err := s.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.XAck(ctx, s.key, RelayGroup, b.ids...)
		pipe.XDel(ctx, s.key, b.ids...)
		return nil
	})
	if err != nil {
		b.r.own = true
		return fmt.Errorf("acknowledge and delete %d entries of %s: %w", len(b.ids), s.key, err)
	}
	return nil
}

// release leaves the entries pending for this consumer: the next fetch
// reads them again.
func (b *redisBatch) release(context.Context) { b.r.own = true }
