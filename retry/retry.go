// Package retry holds the retry policy of saga steps and inbox records, the
// classification of errors into retryable and permanent ones, and the
// backoff between attempts.
//
//	step := saga.Step[Order]{Name: "complete-order", Local: completeOrder,
//		Retry: retry.Policy{MaxAttempts: 3}}
//
//	func completeOrder(ctx context.Context, o *Order) error {
//		if o.AmountCents <= 0 {
//			return retry.Permanent(errors.New("amount must be positive"))
//		}
//		return store.Complete(ctx, o)
//	}
//
// Attempts are counted durably by the engine (package orchestrator), so a
// crash or a rebalance does not reset them; this package is pure and holds
// only the rules.
package retry

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Defaults of a zero Policy.
const (
	DefaultMaxAttempts     = 3
	DefaultInitialInterval = 200 * time.Millisecond
	DefaultMaxInterval     = 5 * time.Second
	DefaultMultiplier      = 2.0
	DefaultJitter          = 0.5
)

// Policy bounds how often a failing record or step is attempted and how long
// the engine waits between attempts. The zero value of every field means its
// default, so Policy{} is the Spring Cloud Stream default: three attempts, the
// first one included.
type Policy struct {
	// MaxAttempts is the number of attempts, the first one included.
	// Zero means DefaultMaxAttempts (3); 1 means no retry.
	MaxAttempts int
	// InitialInterval is the wait before the second attempt. Zero means
	// DefaultInitialInterval.
	InitialInterval time.Duration
	// MaxInterval caps the wait between attempts. Zero means DefaultMaxInterval.
	MaxInterval time.Duration
	// Multiplier grows the wait after each attempt. Zero means DefaultMultiplier.
	Multiplier float64
	// Jitter randomizes each wait by ± this fraction. Zero means
	// DefaultJitter; a negative value disables jitter.
	Jitter float64
}

// Attempts returns MaxAttempts with its default applied.
func (p Policy) Attempts() int {
	if p.MaxAttempts <= 0 {
		return DefaultMaxAttempts
	}
	return p.MaxAttempts
}

// Exhausted reports whether attempts attempts (the first one included) use up
// the policy.
func (p Policy) Exhausted(attempts int) bool { return attempts >= p.Attempts() }

// Backoff returns the wait before attempt number next (2 for the first retry):
// exponential from InitialInterval, capped at MaxInterval, with jitter.
func (p Policy) Backoff(next int) time.Duration {
	if next <= 1 {
		return 0
	}
	initial, maxInterval, mult, jitter := p.InitialInterval, p.MaxInterval, p.Multiplier, p.Jitter
	if initial <= 0 {
		initial = DefaultInitialInterval
	}
	if maxInterval <= 0 {
		maxInterval = DefaultMaxInterval
	}
	if mult <= 0 {
		mult = DefaultMultiplier
	}
	switch {
	case jitter == 0:
		jitter = DefaultJitter
	case jitter < 0:
		jitter = 0
	}
	d := float64(initial)
	for i := 2; i < next && d < float64(maxInterval); i++ {
		d *= mult
	}
	d = min(d, float64(maxInterval))
	if jitter > 0 {
		d += d * jitter * (2*rand.Float64() - 1)
	}
	return time.Duration(d)
}

// Permanent marks err as not worth retrying: the engine dead-letters the
// record at once. It wraps backoff.Permanent so that saga authors never import
// backoff; a nil err returns nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return backoff.Permanent(err)
}

// IsPermanent reports whether err, or an error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p *backoff.PermanentError
	return errors.As(err, &p)
}
