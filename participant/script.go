package participant

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/message"
)

// DedupeTTL is how long a Script remembers the reply to a request. A
// command redelivered later than that would act again: keep it well above
// the longest a saga can take to receive its reply.
const DedupeTTL = 7 * 24 * time.Hour

// DedupeKey returns the Redis key where a Script of participant stores its
// reply to message id msgID of a saga of type sagaType. Message ids are
// unique within a saga type only, so the type is part of the key.
func DedupeKey(participant, sagaType, msgID string) string {
	return "ksaga:dedupe:" + participant + ":" + sagaType + ":" + msgID
}

// Script is a participant's effect in Redis, made exactly-once: one Lua
// script that looks up the request's dedupe record, and when there is none
// runs the effect, stores its reply as the dedupe record and returns it;
// when there is one, it returns the stored reply and does nothing else. The
// effect, the dedupe record and the stored reply are written atomically, so
// a redelivered request (an aborted transaction, a crash, a rebalance) never
// acts twice.
//
// The body is Lua. It sees its own keys and arguments as KEYS and ARGV (the
// dedupe key and its TTL are kept apart), and must return success() or
// failure(reason); success(data) and failure(reason, details) give the saga
// data too (a Lua table, encoded as JSON: see SuccessWith):
//
//	var book = participant.NewScript("hotel", `
//	local left = tonumber(redis.call('GET', KEYS[2]) or '1')
//	if left < 1 then return failure('NO_ROOMS') end
//	redis.call('DECR', KEYS[2])
//	redis.call('HSET', KEYS[1], 'status', 'booked')
//	return success()
//	`)
//
// Redis does not roll back a script that raises an error halfway: check
// everything before the first write. The dedupe key and the body's keys are
// used in one script, so they must live on one Redis node: a single node or
// a Sentinel-managed one, not Redis Cluster.
//
// A Script is safe for concurrent use.
type Script struct {
	participant string
	script      *redis.Script
}

// scriptHead and scriptTail wrap a Script's body. KEYS[1] is the dedupe key
// and ARGV[1] its TTL in seconds; the body gets the rest as KEYS and ARGV.
const (
	scriptHead = `
local stored = redis.call('GET', KEYS[1])
if stored then return stored end
local function success(data) return cjson.encode({outcome = 'success', data = data}) end
local function failure(reason, details) return cjson.encode({outcome = 'failure', reason = tostring(reason), data = details}) end
local keys, args = {}, {}
for i = 2, #KEYS do keys[#keys + 1] = KEYS[i] end
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
local reply = (function(KEYS, ARGV)
`
	scriptTail = `
end)(keys, args)
if type(reply) ~= 'string' then
  return redis.error_reply('ERR participant script returned no reply: end it with return success() or return failure(reason)')
end
redis.call('SET', KEYS[1], reply, 'EX', ARGV[1])
return reply
`
)

// NewScript returns the Script of participant whose effect is body (see
// Script). It does not talk to Redis.
func NewScript(participant, body string) *Script {
	return &Script{participant: participant, script: redis.NewScript(scriptHead + body + scriptTail)}
}

// ErrNoRequest is returned by Script.Run when its ctx carries no Request.
var ErrNoRequest = errors.New("no participant.Request in ctx: call Run from a Routes or Typed function, or use WithRequest")

// Run runs the script on rdb for the request in ctx (RequestFrom), with
// keys and args as the body's KEYS and ARGV, and returns the reply: the
// body's, or the one stored for the request's message id by an earlier run.
// An error is a Redis error (or ErrNoRequest, or a body that returned no
// reply): return it from the handler and the batch is retried, which is
// safe, since the script either ran whole or not at all.
func (s *Script) Run(ctx context.Context, rdb redis.Scripter, keys []string, args ...any) (Reply, error) {
	req, ok := RequestFrom(ctx)
	if !ok {
		return Reply{}, ErrNoRequest
	}
	if req.MessageID == "" {
		return Reply{}, fmt.Errorf("%s: request of saga %s has no message id to dedupe on", s.participant, req.SagaID)
	}
	k := append([]string{DedupeKey(s.participant, req.SagaType, req.MessageID)}, keys...)
	a := append([]any{int64(DedupeTTL / time.Second)}, args...)
	raw, err := s.script.Run(ctx, rdb, k, a...).Text()
	if err != nil {
		return Reply{}, fmt.Errorf("%s: %s of saga %s (message %s): %w", s.participant, req.Type, req.SagaID, req.MessageID, err)
	}
	var v struct {
		Outcome string          `json:"outcome"`
		Reason  string          `json:"reason"`
		Data    json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal([]byte(raw), &v); err != nil ||
		(v.Outcome != message.OutcomeSuccess && v.Outcome != message.OutcomeFailure) {
		return Reply{}, fmt.Errorf("%s: stored reply %q of message %s is not a reply", s.participant, raw, req.MessageID)
	}
	return Reply{Outcome: v.Outcome, Reason: v.Reason, Data: string(v.Data)}, nil
}
