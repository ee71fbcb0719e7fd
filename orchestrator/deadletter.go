package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/retry"
)

type deadLetter struct {
	p      int32
	offset int64
}

func deadLetterReason(err error) string {
	var ie *InputError
	if errors.As(err, &ie) {
		return ie.Reason
	}
	if retry.IsPermanent(err) {
		return ReasonPermanent
	}
	return ReasonExhausted
}

// deadLetter dead-letters h.r after a single attempt that failed with err.
// tc, when set, is the trace context its dead letter carries instead of
// h.r's own (see deadLetterTrace).
func (h *handling) deadLetter(ctx context.Context, tc *TraceContext, err error) {
	now := h.e.cfg.now()
	h.deadLetterAt(ctx, tc, attempt{count: 1, first: now, last: now, err: err})
}

// maxDeadLetterValue bounds the value copied into a dead-letter record. A
// larger value (one dead-lettered for its size) is cut, and the record says
// so: a broker whose topics take 1 MB records (Kafka's default) would refuse
// the whole copy, and the partition would stall on it. The original stays on
// the inbox at the offset the record names.
const maxDeadLetterValue = 512 << 10

// maxDeadLetterHeader bounds each header value of a dead-letter record, for
// the same reason.
const maxDeadLetterHeader = 16 << 10

// HeaderValueTruncated is set on a dead-letter record whose value was cut; it
// holds the original value's length in bytes.
const HeaderValueTruncated = "ksaga-dlt-value-truncated"

// deadLetterAt dead-letters h.r after the attempts a, as deadLetter does.
func (h *handling) deadLetterAt(ctx context.Context, tc *TraceContext, a attempt) {
	e, r := h.e, h.r
	reason := deadLetterReason(a.err)
	rec := dlq.New(r, e.dlt, dlq.Failure{
		Group: e.cfg.group, Err: a.err, Reason: reason, Attempts: a.count, First: a.first, Last: a.last,
	})
	setTrace(rec, tc)
	for i, h := range rec.Headers {
		if len(h.Value) > maxDeadLetterHeader {
			rec.Headers[i].Value = h.Value[:maxDeadLetterHeader]
		}
	}
	// The copy must fit the dead-letter topic's limit alone: the
	// producer's batches stay within the same limit, so whatever shares
	// its batch then fits too.
	room := min(maxDeadLetterValue, int(e.limits.batchBytes(e.dlt))-recordBytes(&kgo.Record{Key: rec.Key, Headers: rec.Headers})-64)
	if len(rec.Value) > room {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: HeaderValueTruncated, Value: []byte(strconv.Itoa(len(rec.Value)))})
		rec.Value = rec.Value[:max(room, 0)]
	}
	h.produce(rec)
	h.b.DeadLettered = append(h.b.DeadLettered, reason)
	h.b.dead = append(h.b.dead, deadLetter{r.Partition, r.Offset})
	e.log.WarnContext(ctx, "dead-lettered", "reason", reason, "err", a.err, "partition", r.Partition, "offset", r.Offset, "key", string(r.Key), "attempts", a.count)
}

// retryLater counts a failed attempt of r durably and waits out its backoff.
// When the attempts are used up the record is marked, so that its next
// delivery dead-letters it.
func (e *Engine) retryLater(ctx, runCtx context.Context, r *kgo.Record, err error) error {
	if errors.Is(err, errInfra) {
		return err
	}
	policy := e.cfg.retry
	var se *StepError
	if errors.As(err, &se) {
		policy = se.Retry
	}
	now := e.cfg.now()
	step := -1
	if se != nil {
		step = se.Index
	}
	n, first, cerr := e.store.countFailure(ctx, r.Partition, r.Offset, now, policy.Attempts(), step, err)
	if cerr != nil {
		// Without a durable count the attempt does not count: retry
		// until Redis is back rather than dead-letter too early.
		return fmt.Errorf("%w: %w (processing failed: %v)", errInfra, cerr, err)
	}
	for _, h := range e.cfg.hooks {
		if h, ok := h.(HookRetry); ok {
			h.OnRetry(r, n, err)
		}
	}
	if part := e.parts[r.Partition]; part != nil {
		a := attempt{count: n, first: first, last: now, step: step}
		if policy.Exhausted(n) {
			a.err = fmt.Errorf("%w (after %d attempts)", err, n)
		}
		part.attempts[r.Offset] = a
	}
	wait := policy.Backoff(n + 1)
	if policy.Exhausted(n) {
		wait = 0
	}
	e.log.WarnContext(ctx, "processing failed; retrying", "saga_id", string(r.Key), "trace_id", traceID(r), "err", err, "partition", r.Partition, "offset", r.Offset, "attempt", n, "of", policy.Attempts(), "wait", wait)
	e.sleep(runCtx, wait)
	return nil
}
