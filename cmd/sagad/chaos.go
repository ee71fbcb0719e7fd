//go:build !ksaga_production

// The chaos suite's fault hooks are test code: the production build
// (go build -tags ksaga_production, as make image does) leaves this file
// out, and chaos_off.go stands in for it.

package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/saga/order"
)

// The chaos suite's fault keys, on the orders Redis. They are a contract
// with cmd/sagachaos: --chaos-faults makes sagad obey them.
const (
	// chaosHangKey, when present, holds an integer of milliseconds: each
	// Complete sleeps that long, ignoring its ctx, then goes on.
	chaosHangKey = "ksaga:chaos:fault:hang"
	// chaosPanicKey, when present, is decremented by each Complete; one
	// whose decrement leaves it at 0 or more panics.
	chaosPanicKey = "ksaga:chaos:fault:panic"
)

// registerChaosFlag adds --chaos-faults, which sets chaos.
func registerChaosFlag(fs *flag.FlagSet, chaos *bool) {
	fs.BoolVar(chaos, "chaos-faults", false, "TESTS ONLY: before each complete-order, obey the fault keys ksaga:chaos:fault:hang and ksaga:chaos:fault:panic on the orders Redis (the chaos suite sets them); never set it in production (the production build has no such flag)")
}

// withChaos wraps s with the chaos suite's fault hooks, read on rdb.
func withChaos(s order.Store, rdb redis.UniversalClient, log *slog.Logger) order.Store {
	log.Warn("chaos faults enabled (--chaos-faults): complete-order obeys " + chaosHangKey + " and " + chaosPanicKey + "; tests only")
	return &chaosStore{Store: s, rdb: rdb, log: log}
}

// chaosPanicValue is what a Complete panics with when chaosPanicKey says so.
const chaosPanicValue = "chaos: saga-panic"

// scriptChaosPanic decrements KEYS[1] only when it exists, and returns the
// result, or nil when it does not exist. It is sent whole (EVAL), so a
// restarted Redis needs no reload.
var scriptChaosPanic = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return false
`)

// chaosStore wraps the orders store with the chaos suite's fault hooks
// (--chaos-faults): before each Complete it reads chaosHangKey and
// chaosPanicKey on rdb in one round trip, sleeps and panics as they say,
// then calls the store. It lets the suite make the saga's local step hang
// past its timeout, or crash, on a running sagad. A Redis error (the orders
// Redis is down, a fault of its own) skips the hooks.
type chaosStore struct {
	order.Store
	rdb redis.UniversalClient
	log *slog.Logger
}

// Complete obeys the fault keys, then calls the wrapped store's Complete.
func (s *chaosStore) Complete(ctx context.Context, o *order.Order) error {
	pipe := s.rdb.Pipeline()
	hang := pipe.Get(ctx, chaosHangKey)
	crash := scriptChaosPanic.Eval(ctx, pipe, []string{chaosPanicKey})
	_, _ = pipe.Exec(ctx) // each command's error is checked below
	switch v, err := hang.Result(); {
	case errors.Is(err, redis.Nil):
	case err != nil:
		s.log.Debug("chaos: cannot read the hang key; no hang", "key", chaosHangKey, "err", err)
	default:
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			s.log.Warn("chaos: the hang key is not a number of milliseconds; no hang", "key", chaosHangKey, "value", v)
			break
		}
		s.log.Warn("chaos: complete-order hangs", "order_id", o.OrderID, "ms", ms)
		time.Sleep(time.Duration(ms) * time.Millisecond) // ignores ctx on purpose
	}
	switch n, err := crash.Int64(); {
	case errors.Is(err, redis.Nil):
	case err != nil:
		s.log.Debug("chaos: cannot read the panic key; no panic", "key", chaosPanicKey, "err", err)
	case n >= 0:
		s.log.Warn("chaos: complete-order panics", "order_id", o.OrderID, "left", n)
		panic(chaosPanicValue)
	}
	return s.Store.Complete(ctx, o)
}
