// Package outbox starts sagas from a service's own write: the start request
// is written in the same Redis MULTI (or Lua script) or PostgreSQL
// transaction as the service's business data, and a relay moves it to
// saga.<type>.inbox in Kafka transactions. When Kafka is down the write still
// succeeds and the saga starts once Kafka is back; when the write fails no
// saga starts. It is the transactional outbox of write-up 001.
//
// Redis: the business write and the start request in one MULTI/EXEC.
//
//	orders := outbox.Redis(rdb, "order", outbox.Check(def))
//	err := orders.Start(ctx, "o-1", o, func(pipe redis.Pipeliner) error {
//		pipe.HSet(ctx, "shop:{order}:o-1", "status", "placed")
//		return nil
//	})
//
// PostgreSQL: the business write and the start request in one pgx
// transaction.
//
//	table := outbox.Postgres(outbox.Check(def))
//	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		if _, err := tx.Exec(ctx, `INSERT INTO orders (id, amount_cents) VALUES ($1, $2)`, o.OrderID, o.AmountCents); err != nil {
//			return err
//		}
//		return table.Add(ctx, tx, "order", o.OrderID, o)
//	})
//
// The relay (Stream.Relay, Table.Relay; sagad runs them with --outbox-relay)
// reads a batch of entries, produces one start request per entry to the
// saga's home partition (message.HomePartition) in one Kafka transaction,
// and deletes the entries only once that transaction has committed. A relay
// that dies between the commit and the delete relays those entries again:
// the same saga id with the same payload, which the engine drops as a
// duplicate start (orchestrator.DropDuplicateStart). So every entry starts
// its saga exactly once. The start request is the one client.Start sends:
// key = saga id, headers ksaga-saga-id, ksaga-saga-type,
// ksaga-message-type: StartSaga and ksaga-message-id: start-<id>.
//
// The outbox holds only the entries not yet relayed: while Kafka is up it
// stays near empty, while Kafka is down it grows by the writes and drains
// when Kafka is back (see Relay for the throughput).
//
// A relay with a Registerer exports, labelled saga=<type> and
// store=redis|postgres:
//
//	ksaga_outbox_pending_entries      entries waiting in the outbox
//	ksaga_outbox_oldest_age_seconds   age of the oldest of them (0 when empty)
//	ksaga_outbox_relayed_total        entries relayed (their transaction committed)
//	ksaga_outbox_relay_errors_total   failed relay rounds (Kafka, Redis or PostgreSQL unavailable)
package outbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga"
)

// MaxDataBytes is the largest start request the outbox accepts: the
// engine's default inbox limit (orchestrator.MaxValueBytes), over which it
// dead-letters a start unread.
const MaxDataBytes = 256 << 10

// ErrInvalid is wrapped by the errors of Start, AddTo, Encode and Add for a
// start request that the engine would refuse: an empty or non-UTF-8 id,
// data that is not JSON (or whose JSON has an object with a key twice or
// invalid UTF-8, which a MarshalJSON method may write) or over MaxDataBytes, or (with Check) data the saga
// definition refuses, then also wrapping saga.ErrInvalidData. Nothing is
// written then.
var ErrInvalid = errors.New("outbox: invalid start request")

// Opt configures a Stream (Redis) or a Table (Postgres).
type Opt interface{ apply(*config) }

type optFunc func(*config)

func (f optFunc) apply(c *config) { f(c) }

type config struct {
	defs  map[string]*saga.Definition
	table string
}

func newConfig(opts []Opt) config {
	c := config{defs: make(map[string]*saga.Definition), table: DefaultTable}
	for _, o := range opts {
		o.apply(&c)
	}
	return c
}

// Check makes the outbox check the data of the saga types of defs as the
// engine will (def.Decode: strict JSON, then the data type's Validate), so
// that a start the engine would dead-letter fails the caller's write
// instead. Without it, data is only encoded as JSON.
func Check(defs ...*saga.Definition) Opt {
	return optFunc(func(c *config) {
		for _, d := range defs {
			c.defs[d.Name()] = d
		}
	})
}

// encode returns the start request of saga id with data, checked, in the
// canonical form (message.Canonical) that client.Start and the HTTP API
// write too: a start written to the outbox and retried through either is
// the same start.
func (c *config) encode(sagaType, id string, data any) ([]byte, error) {
	if id == "" || !utf8.ValidString(id) {
		return nil, fmt.Errorf("%w: %s saga %q: the id must be non-empty UTF-8", ErrInvalid, sagaType, id)
	}
	value, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s saga %s: encode data: %w", ErrInvalid, sagaType, id, err)
	}
	if value, err = message.Canonical(value); err != nil {
		return nil, fmt.Errorf("%w: %s saga %s: encode data: %w", ErrInvalid, sagaType, id, err)
	}
	if len(value) > MaxDataBytes {
		return nil, fmt.Errorf("%w: %s saga %s: data is %d bytes, the limit is %d", ErrInvalid, sagaType, id, len(value), MaxDataBytes)
	}
	if def := c.defs[sagaType]; def != nil {
		if _, err := def.Decode(value); err != nil {
			return nil, fmt.Errorf("%w: %s saga %s: %w", ErrInvalid, sagaType, id, err)
		}
	}
	return value, nil
}
