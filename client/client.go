// Package client starts sagas and asks them to compensate, from any Go
// program that can reach Kafka.
//
//	c, err := client.New(kgo.SeedBrokers("kafka:9092"))
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	err = c.Start(ctx, trip.New(nil), "t-1", trip.Trip{TripID: "t-1", …})
//
// Start and Compensate produce one record to saga.T.inbox, keyed by the
// saga id, on the saga's home partition (message.HomePartition: murmur2 of
// the id modulo the inbox's partition count, which the client reads from the
// broker once per saga type). They return once the record is durable in
// Kafka (acks=all): from then on the engine handles it, whatever happens to
// the caller.
//
// A start is idempotent per saga id: the engine recognises a start it has
// seen by its payload, so Start may be retried after an error or a crash
// with the same data. Start writes the payload in canonical form
// (message.Canonical), as the HTTP API and the outboxes do, so a retry
// through any of them is the same start too. Starting an id again with
// other data dead-letters the second request (reason conflicting-start) and
// leaves the saga as it was.
package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/inbox"
	"github.com/ksaga/ksaga/internal/outcome"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
)

// ErrNoInbox is wrapped by the error of Start and Compensate when the saga
// type's inbox topic does not exist: the daemon that runs the saga type
// creates it when it starts.
var ErrNoInbox = errors.New("the saga type's inbox topic does not exist")

// Client produces start and compensate requests. It is safe for concurrent
// use. Close it when done.
type Client struct {
	cl   *kgo.Client
	opts []kgo.Opt // the caller's, for the consumers of saga.T.events

	mu       sync.Mutex
	parts    map[string]int32            // inbox partition counts, by saga type
	watchers map[string]*outcome.Watcher // readers of saga.T.events (see Run)
}

// New returns a Client whose Kafka client is made with opts, which must
// include kgo.SeedBrokers (and TLS or SASL options where the cluster needs
// them). The client sets its own partitioner, kgo.ManualPartitioner, after
// opts (a kgo.RecordPartitioner among them is overridden): each record names
// its saga's home partition, so that the engine handles it where it lands.
// A record written elsewhere by another producer is not lost either: the
// engine first moves it to its home partition (message.HeaderForwardedFrom).
// New does not connect; the first request does.
func New(opts ...kgo.Opt) (*Client, error) {
	cl, err := kgo.NewClient(append(opts, kgo.RecordPartitioner(kgo.ManualPartitioner()))...)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return &Client{cl: cl, opts: opts, parts: make(map[string]int32)}, nil
}

// Close closes the Kafka clients, including the readers of saga.T.events
// that runs wait on (their Get then waits until its ctx ends), and waits for
// them. Requests after Close fail.
func (c *Client) Close() {
	c.mu.Lock()
	for _, w := range c.watchers {
		w.Close()
	}
	c.mu.Unlock()
	c.cl.Close()
}

// Start asks the engine of def's saga type to start saga id with data. data
// is encoded as JSON in canonical form (message.Canonical: keys sorted, no
// space) and checked as the engine will check it (def.Decode: strict
// decoding, then the data type's Validate): data the engine would
// dead-letter, or JSON that has no canonical form (a MarshalJSON that
// writes a key twice or invalid UTF-8), is refused here with an error
// wrapping saga.ErrInvalidData, and nothing is produced. Start returns once
// the request is durable in Kafka; the saga then runs asynchronously
// (StartRun and Run.Get wait for its end). Any other error leaves it unknown whether the
// request was written: retrying with the same id and data is safe.
func (c *Client) Start(ctx context.Context, def *saga.Definition, id string, data any) error {
	value, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("start %s saga %s: encode data: %w", def.Name(), id, err)
	}
	if value, err = message.Canonical(value); err != nil {
		return fmt.Errorf("start %s saga %s: %w: %s: %w", def.Name(), id, saga.ErrInvalidData, def.Name(), err)
	}
	if _, err := def.Decode(value); err != nil {
		return fmt.Errorf("start %s saga %s: %w", def.Name(), id, err)
	}
	return c.start(ctx, def.Name(), id, value)
}

// StartRaw is Start with a value that is sent as it is, unchecked and not
// canonicalized: for tests of how the engine treats bad input, and for
// relays of start requests that were checked and canonicalized elsewhere
// (message.Canonical). An invalid value is dead-lettered by the engine.
func (c *Client) StartRaw(ctx context.Context, sagaType, id string, value []byte) error {
	return c.start(ctx, sagaType, id, value)
}

// Compensate asks the engine to stop saga id of def's saga type and undo its
// completed steps, last first, as if its current step had failed with the
// reason "compensation requested" (and ": "+reason when reason is not
// empty). A saga that has ended already is left as it is; one that does
// not exist is dead-lettered (reason unknown-saga). Compensate returns once
// the request is durable in Kafka.
func (c *Client) Compensate(ctx context.Context, def *saga.Definition, id, reason string) error {
	r, err := c.CompensateRecord(ctx, def, id, reason)
	if err != nil {
		return err
	}
	return c.send(ctx, r)
}

// Resume asks a parked saga (a step whose attempts ran out and that parks:
// saga.Step.Park) to go on: the engine runs its step again, or sends it
// again with fresh attempts. reason is kept in its SagaResumed event. A
// saga that is not parked ignores it.
func (c *Client) Resume(ctx context.Context, def *saga.Definition, id, reason string) error {
	r, err := c.ResumeRecord(ctx, def, id, reason)
	if err != nil {
		return err
	}
	return c.send(ctx, r)
}

// ResumeRecord returns the record Resume produces, without producing it
// (see CompensateRecord).
func (c *Client) ResumeRecord(ctx context.Context, def *saga.Definition, id, reason string) (*kgo.Record, error) {
	msgID, err := randomID()
	if err != nil {
		return nil, err
	}
	return c.record(ctx, def.Name(), id, message.TypeResume, "resume-"+id+"-"+msgID, reason)
}

// CompensateRecord returns the record Compensate produces, without
// producing it: for a caller that writes it together with records of its
// own in one Kafka transaction (sagactl writes its audit record so). The
// record names its partition (the saga's home): produce it with
// kgo.ManualPartitioner. Each call gets a new message id.
func (c *Client) CompensateRecord(ctx context.Context, def *saga.Definition, id, reason string) (*kgo.Record, error) {
	msgID, err := randomID()
	if err != nil {
		return nil, err
	}
	return c.record(ctx, def.Name(), id, message.TypeCompensate, "compensate-"+id+"-"+msgID, reason)
}

func (c *Client) start(ctx context.Context, sagaType, id string, value []byte) error {
	n, err := c.home(ctx, sagaType, id, message.TypeStartSaga)
	if err != nil {
		return err
	}
	return c.send(ctx, inbox.Start(sagaType, id, n, value))
}

// record builds a message for saga id's home partition of the inbox.
func (c *Client) record(ctx context.Context, sagaType, id, typ, msgID string, reason string) (*kgo.Record, error) {
	n, err := c.home(ctx, sagaType, id, typ)
	if err != nil {
		return nil, err
	}
	r := inbox.Record(sagaType, id, typ, msgID, n, nil)
	if reason != "" {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: message.HeaderReason, Value: []byte(reason)})
	}
	return r, nil
}

// home checks saga id and returns the partition count of sagaType's inbox,
// for a message of type typ.
func (c *Client) home(ctx context.Context, sagaType, id, typ string) (int32, error) {
	if id == "" || !utf8.ValidString(id) {
		return 0, fmt.Errorf("%s %s saga %q: the id must be non-empty UTF-8", typ, sagaType, id)
	}
	n, err := c.partitions(ctx, sagaType)
	if err != nil {
		return 0, fmt.Errorf("%s %s saga %s: %w", typ, sagaType, id, err)
	}
	return n, nil
}

func (c *Client) send(ctx context.Context, r *kgo.Record) error {
	if err := c.cl.ProduceSync(ctx, r).FirstErr(); err != nil {
		return fmt.Errorf("%s %s saga %s: %w", header(r, message.HeaderMessageType), header(r, message.HeaderSagaType), r.Key, err)
	}
	return nil
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// partitions returns the partition count of sagaType's inbox, asking the
// broker the first time. The count of an inbox never changes (see
// message.HomePartition), so it is kept.
func (c *Client) partitions(ctx context.Context, sagaType string) (int32, error) {
	c.mu.Lock()
	n, ok := c.parts[sagaType]
	c.mu.Unlock()
	if ok {
		return n, nil
	}
	topic := message.Inbox(sagaType)
	n, err := inbox.Partitions(ctx, c.cl, topic)
	switch {
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, inbox.ErrNoPartitions):
		return 0, fmt.Errorf("%w: %s (start the daemon that runs the saga type first)", ErrNoInbox, topic)
	case err != nil:
		return 0, fmt.Errorf("read the partitions of %s: %w", topic, err)
	}
	c.mu.Lock()
	c.parts[sagaType] = n
	c.mu.Unlock()
	return n, nil
}

func randomID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}
