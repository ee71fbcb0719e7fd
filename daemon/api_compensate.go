package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/audit"
)

// compensator writes the HTTP API's compensations, each Compensate message
// with its audit record in one Kafka transaction (audit.Commit), one
// transaction at a time. It is safe for concurrent use.
//
// Its transactional id is stable per daemon (<--transactional-id>.api): a
// restarted daemon fences its predecessor and aborts whatever transaction
// that one left open, so read_committed readers of the inbox are never
// held up for longer than a restart.
type compensator struct {
	opts    []kgo.Opt
	timeout time.Duration
	// turn is taken by the writer: kgo runs one transaction at a time
	// per client. Whoever holds it owns cl.
	turn chan struct{}
	cl   *kgo.Client
}

func newCompensator(opts []kgo.Opt, txnID string, timeout time.Duration) *compensator {
	opts = append(opts[:len(opts):len(opts)], kgo.TransactionalID(txnID), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	return &compensator{opts: opts, timeout: timeout, turn: make(chan struct{}, 1)}
}

// write commits recs in one transaction, waiting at most c.timeout in all
// (for its turn, the records and the commit). A nil error means they are
// committed; an error means they were not when it returned (a commit whose
// answer was lost may still have been made). After an error the client is
// closed and a new one is made for the next write: kgo holds that no error
// of a transaction's end is retryable.
func (c *compensator) write(ctx context.Context, recs ...*kgo.Record) error {
	// Not the request's context: a caller that hangs up must not leave a
	// transaction half done.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	select {
	case c.turn <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: waiting for the compensations before it (%v)", errNoAck, c.timeout)
	}
	defer func() { <-c.turn }()
	if c.cl == nil {
		cl, err := kgo.NewClient(c.opts...)
		if err != nil {
			return err
		}
		c.cl = cl
	}
	if err := audit.Commit(ctx, c.cl, c.timeout, recs...); err != nil {
		c.cl.Close()
		c.cl = nil
		return err
	}
	return nil
}

// close closes the client, after the write in progress.
func (c *compensator) close() {
	c.turn <- struct{}{}
	defer func() { <-c.turn }()
	if c.cl != nil {
		c.cl.Close()
		c.cl = nil
	}
}
