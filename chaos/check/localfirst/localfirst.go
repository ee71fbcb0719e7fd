// Package localfirst is the chaos suite's local-first saga: a saga whose
// first step is a Local step, run by the engine inside the transaction that
// handles the saga's start request, followed by a participant step. The
// reference order saga starts with participant steps, so it never takes that
// path: a Local step whose attempts run out before the saga has a state.
//
//	def := localfirst.New(localfirst.NewStore(holds, false, logger))
//
// The saga holds a transfer's amount on its account (hold-funds, Local, undone
// by releasing it), then asks the approver participant to approve it
// (approve, undone by withdrawing the approval). Both ledgers are in Redis so
// that package check can hold them to the sagas' outcomes: a hold stands
// exactly for each completed transfer, once, and each account's held total
// is the sum of its completed transfers. cmd/sagachaos/localsaga runs it.
package localfirst

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/participant"
	"github.com/ksaga/ksaga/retry"
	"github.com/ksaga/ksaga/saga"
)

// Name is the saga type: its topics are saga.localfirst.inbox, …
const Name = "localfirst"

// Step names, participant and commands.
const (
	StepHold    = "hold-funds"
	StepApprove = "approve"

	Approver = "approver"
	Approve  = "Approve"
	Withdraw = "Withdraw"
	// ReasonRefused is the approver's failure for a transfer marked
	// Refuse.
	ReasonRefused = "REFUSED"
)

// ApproveDeadline is how long the saga waits for the approver's reply to
// one attempt.
const ApproveDeadline = 10 * time.Second

// Transfer is the saga's data: the start request's JSON value.
type Transfer struct {
	TransferID  string `json:"transfer_id"`
	Account     string `json:"account"`
	AmountCents int64  `json:"amount_cents"`
	// Refuse makes the approver refuse the transfer.
	Refuse bool `json:"refuse,omitempty"`
}

// Validate rejects transfers no retry can fix.
func (t *Transfer) Validate() error {
	switch {
	case t.TransferID == "" || t.Account == "":
		return errors.New("transfer_id and account are required")
	case t.AmountCents < 1:
		return fmt.Errorf("amount_cents %d must be positive", t.AmountCents)
	}
	return nil
}

// New returns the local-first saga, holding funds in store.
func New(store *Store) *saga.Definition {
	return saga.New(Name,
		saga.Step[Transfer]{Name: StepHold, Local: store.Hold, UndoLocal: store.Release, Retry: retry.Policy{MaxAttempts: 3}},
		saga.Step[Transfer]{Name: StepApprove, Do: approve, Undo: withdraw, ReplyTimeout: ApproveDeadline},
	)
}

func approve(_ context.Context, t *Transfer) (saga.Command, error) {
	return saga.Command{Participant: Approver, Type: Approve, Payload: t}, nil
}

func withdraw(_ context.Context, t *Transfer) (saga.Command, error) {
	return saga.Command{Participant: Approver, Type: Withdraw, Payload: t}, nil
}

// The ledgers' keys.

// HoldKey is the hash of a transfer's hold: status held or released,
// amount_cents, account, fence (the highest saga.Key fence it has seen) and
// applies (how many times a hold took the amount: at most once).
func HoldKey(transferID string) string { return "ksaga:localfirst:hold:" + transferID }

// HeldKey counts the cents held on an account by the holds that stand.
func HeldKey(account string) string { return "ksaga:localfirst:held:" + account }

// ApprovalKey is the approver's hash of a transfer: status approved or
// withdrawn.
func ApprovalKey(transferID string) string { return "ksaga:localfirst:approval:" + transferID }

// The chaos suite's fault keys, on the holds' Redis, which a Store made with
// chaos obeys before each Hold (as sagad --chaos-faults does before each
// complete-order).
const (
	// HangKey holds milliseconds: each Hold sleeps that long, ignoring its
	// ctx, then goes on.
	HangKey = "ksaga:chaos:fault:local-first:hang"
	// PanicKey is decremented by each Hold; one whose decrement leaves it
	// at 0 or more panics.
	PanicKey = "ksaga:chaos:fault:local-first:panic"
	// HangLog and PanicLog are the messages a Store logs when it hangs
	// or panics on purpose.
	HangLog  = "chaos: hold-funds hangs"
	PanicLog = "chaos: hold-funds panics"
)

// Store keeps the holds in Redis. Both writes are fenced by the saga.Key in
// their ctx: a hold keeps the highest fence it has seen and refuses a write
// with a lower one, so that a late Hold of an abandoned attempt cannot bring
// back a released hold. A Store is safe for concurrent use.
type Store struct {
	rdb   redis.UniversalClient
	chaos bool
	log   *slog.Logger
}

// NewStore returns a Store on rdb. With chaos, Hold obeys HangKey and
// PanicKey (tests only).
func NewStore(rdb redis.UniversalClient, chaos bool, log *slog.Logger) *Store {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{rdb: rdb, chaos: chaos, log: log}
}

// scriptHold takes the amount: KEYS[1] the hold, KEYS[2] the account's held
// total; ARGV[1] the fence, ARGV[2] the amount, ARGV[3] the account. It
// returns {1} when the hold stands (taken now or before), or {0, status,
// fence} when a higher fence or a release came first.
var scriptHold = redis.NewScript(`
local fence = tonumber(ARGV[1])
local st = redis.call('HMGET', KEYS[1], 'status', 'fence')
local seen = tonumber(st[2])
if (seen and seen > fence) or st[1] == 'released' then return {0, st[1] or '', st[2] or ''} end
if st[1] ~= 'held' then
  redis.call('INCRBY', KEYS[2], ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'applies', 1)
end
redis.call('HSET', KEYS[1], 'status', 'held', 'amount_cents', ARGV[2], 'account', ARGV[3], 'fence', ARGV[1])
return {1}
`)

// scriptRelease gives a hold back, or leaves a released tombstone that
// refuses a later Hold: KEYS and ARGV[1] as scriptHold. It returns {1}, or
// {0, status, fence} when a higher fence holds another status.
var scriptRelease = redis.NewScript(`
local fence = tonumber(ARGV[1])
local st = redis.call('HMGET', KEYS[1], 'status', 'fence', 'amount_cents')
local seen = tonumber(st[2])
if seen and seen > fence then
  if st[1] == 'released' then return {1} end
  return {0, st[1] or '', st[2]}
end
if st[1] == 'held' then redis.call('DECRBY', KEYS[2], st[3]) end
redis.call('HSET', KEYS[1], 'status', 'released', 'fence', ARGV[1])
return {1}
`)

// scriptChaosPanic decrements KEYS[1] when it exists and returns the
// result, or nil.
var scriptChaosPanic = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return false
`)

// Hold takes the transfer's amount on its account: the saga's Local first
// step. It is idempotent for a fence; a Redis error is returned to be
// retried; a hold released at a higher fence is a permanent error.
func (s *Store) Hold(ctx context.Context, t *Transfer) error {
	if s.chaos {
		s.obeyFaults(ctx, t)
	}
	return s.write(ctx, "hold", scriptHold, t, t.AmountCents, t.Account)
}

// Release gives the hold back, also when it never stood, so that a late
// Hold is refused. It compensates Hold.
func (s *Store) Release(ctx context.Context, t *Transfer) error {
	return s.write(ctx, "release", scriptRelease, t)
}

func (s *Store) write(ctx context.Context, op string, script *redis.Script, t *Transfer, args ...any) error {
	k, ok := saga.KeyFrom(ctx)
	if !ok {
		return retry.Permanent(errors.New("no saga.Key in ctx"))
	}
	v, err := script.Run(ctx, s.rdb, []string{HoldKey(t.TransferID), HeldKey(t.Account)}, append([]any{k.Fence}, args...)...).Slice()
	if err != nil {
		return fmt.Errorf("%s transfer %s: %w", op, t.TransferID, err)
	}
	if len(v) == 3 {
		return retry.Permanent(fmt.Errorf("%s transfer %s at fence %d: the hold is %v at fence %v", op, t.TransferID, k.Fence, v[1], v[2]))
	}
	return nil
}

// obeyFaults reads HangKey and PanicKey in one round trip, then sleeps and
// panics as they say. A Redis error skips them.
func (s *Store) obeyFaults(ctx context.Context, t *Transfer) {
	pipe := s.rdb.Pipeline()
	hang := pipe.Get(ctx, HangKey)
	crash := scriptChaosPanic.Eval(ctx, pipe, []string{PanicKey})
	_, _ = pipe.Exec(ctx) // each command's error is checked below
	if v, err := hang.Result(); err == nil {
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
			s.log.Warn(HangLog, "transfer_id", t.TransferID, "ms", ms)
			time.Sleep(time.Duration(ms) * time.Millisecond) // ignores ctx on purpose
		}
	}
	if n, err := crash.Int64(); err == nil && n >= 0 {
		s.log.Warn(PanicLog, "transfer_id", t.TransferID, "left", n)
		panic("chaos: hold-funds panics")
	}
}

// The approver's effects, made exactly-once by participant.Script.
var (
	scriptApprove = participant.NewScript(Approver, `
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'withdrawn' then return failure('CANCELLED') end
if status == 'approved' then return success() end
if ARGV[1] == '1' then return failure('`+ReasonRefused+`') end
redis.call('HSET', KEYS[1], 'status', 'approved')
return success()`)
	scriptWithdraw = participant.NewScript(Approver, `
redis.call('HSET', KEYS[1], 'status', 'withdrawn')
return success()`)
)

// NewApprover returns the approver participant on rdb: Approve approves a
// transfer unless it is marked Refuse (ReasonRefused); Withdraw withdraws
// the approval, or leaves a tombstone that refuses a late Approve.
func NewApprover(rdb redis.UniversalClient) participant.Handler {
	return participant.Routes{
		Approve: participant.Typed(func(ctx context.Context, t *Transfer) (participant.Reply, error) {
			refuse := "0"
			if t.Refuse {
				refuse = "1"
			}
			return scriptApprove.Run(ctx, rdb, []string{ApprovalKey(t.TransferID)}, refuse)
		}),
		Withdraw: participant.Typed(func(ctx context.Context, t *Transfer) (participant.Reply, error) {
			return scriptWithdraw.Run(ctx, rdb, []string{ApprovalKey(t.TransferID)})
		}),
	}
}
