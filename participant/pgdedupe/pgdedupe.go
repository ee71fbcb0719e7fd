// Package pgdedupe makes a participant's effect in PostgreSQL exactly-once:
// the effect and the command's dedupe row are written in one database
// transaction, and a redelivered command gets the reply stored in the row
// instead of acting again. It is the PostgreSQL counterpart of
// participant.Script, which does the same for an effect in Redis.
//
//	received, err := pgdedupe.New(pool, "hotel")
//	if err != nil {
//		return err
//	}
//	if err := received.Migrate(ctx); err != nil { // or Schema, in the service's migrations
//		return err
//	}
//	h := participant.Routes{
//		"BookRoom": participant.Typed(func(ctx context.Context, r *Room) (participant.Reply, error) {
//			return received.Run(ctx, func(ctx context.Context, tx pgx.Tx) (participant.Reply, error) {
//				tag, err := tx.Exec(ctx, `UPDATE rooms SET free = free - 1 WHERE hotel = $1 AND free > 0`, r.Hotel)
//				if err != nil {
//					return participant.Reply{}, err
//				}
//				if tag.RowsAffected() == 0 {
//					return participant.Failure("NO_ROOMS"), nil
//				}
//				_, err = tx.Exec(ctx, `INSERT INTO bookings (trip_id, hotel) VALUES ($1, $2)`, r.TripID, r.Hotel)
//				return participant.Success(), err
//			})
//		}),
//	}
//
// The dedupe row is keyed by participant, saga type and message id (as
// participant.DedupeKey is), and holds the whole reply as JSON, so every
// field of message.Reply comes back to a redelivered command. Rows are kept
// until Table.DeleteOlderThan removes them; see there for how long to keep
// them.
//
// The package exports no metrics.
package pgdedupe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/participant"
)

// DefaultTable is the dedupe table's name unless TableName says otherwise.
const DefaultTable = "ksaga_dedupe"

// Opt is an option of New. Its implementations are the functions of this
// package.
type Opt interface{ apply(*config) }

type optFunc func(*config)

func (f optFunc) apply(c *config) { f(c) }

type config struct {
	table  string
	txOpts pgx.TxOptions
}

// TableName names the dedupe table: "name" or "schema.name" (letters,
// digits and underscores). The default is DefaultTable. Several
// participants may share one table: the participant's name is part of the
// key.
func TableName(name string) Opt { return optFunc(func(c *config) { c.table = name }) }

// TxOptions sets the options of the transactions that Do begins. The
// default is the zero pgx.TxOptions: the server's default isolation level,
// READ COMMITTED unless configured otherwise. Under REPEATABLE READ or
// SERIALIZABLE, a delivery that runs at the same time as another of the
// same command fails with a serialization error (SQLSTATE 40001) instead
// of waiting for the other's reply; the error aborts the participant's
// batch, whose retry then finds the stored reply.
func TxOptions(o pgx.TxOptions) Opt { return optFunc(func(c *config) { c.txOpts = o }) }

var tableRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// Table is the dedupe table of one participant in a PostgreSQL database.
// It is safe for concurrent use, by any number of participant instances.
type Table struct {
	pool        *pgxpool.Pool
	participant string
	cfg         config
	table       string // quoted
	index       string // quoted, unqualified

	claim, stored, store string // statements
}

// New returns the dedupe table of participant in the database of pool.
// It fails on a nil pool, an empty participant or a table name that is not
// an identifier. It does not talk to the database: create the table with
// Migrate or with Schema in the service's own migrations.
func New(pool *pgxpool.Pool, participant string, opts ...Opt) (*Table, error) {
	cfg := config{table: DefaultTable}
	for _, o := range opts {
		o.apply(&cfg)
	}
	switch {
	case pool == nil:
		return nil, errors.New("pgdedupe: nil pool")
	case participant == "":
		return nil, errors.New("pgdedupe: empty participant name")
	case !tableRE.MatchString(cfg.table):
		return nil, fmt.Errorf("pgdedupe: table name %q: want name or schema.name (letters, digits, underscores)", cfg.table)
	}
	parts := strings.Split(cfg.table, ".")
	t := &Table{
		pool:        pool,
		participant: participant,
		cfg:         cfg,
		table:       pgx.Identifier(parts).Sanitize(),
		index:       pgx.Identifier{parts[len(parts)-1] + "_participant_created_at"}.Sanitize(),
	}
	t.claim = `INSERT INTO ` + t.table + ` (participant, saga_type, message_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`
	t.stored = `SELECT reply FROM ` + t.table + ` WHERE participant = $1 AND saga_type = $2 AND message_id = $3`
	t.store = `UPDATE ` + t.table + ` SET reply = $4 WHERE participant = $1 AND saga_type = $2 AND message_id = $3`
	return t, nil
}

// Effect is a participant's effect in PostgreSQL. It runs in tx, the
// transaction that also writes the command's dedupe row, and returns the
// reply to store and send: its writes commit with the row, whichever the
// reply's outcome, or not at all. It must not commit or roll back tx (it
// may use savepoints, tx.Begin). ctx carries the request
// (participant.RequestFrom).
//
// An Effect that returns an error writes nothing: the transaction rolls
// back and the next delivery of the command runs the Effect again. An
// Effect whose command cannot be carried out should return a failure reply
// (participant.Failure) and no error: the failure is stored and repeated.
type Effect func(ctx context.Context, tx pgx.Tx) (participant.Reply, error)

// ErrNoReply is wrapped by the error of Do when an Effect returned a reply
// whose Outcome is neither message.OutcomeSuccess nor
// message.OutcomeFailure (the zero Reply, say). Nothing is stored.
var ErrNoReply = errors.New("effect returned no reply: return participant.Success() or participant.Failure(reason)")

// Do performs req's effect exactly once and returns its reply. In one
// transaction, it claims req's dedupe row; when another delivery of req
// has already stored its reply there, Do rolls back and returns that reply
// without calling effect; otherwise it calls effect, stores its reply in
// the row and commits.
//
// Two deliveries of req at the same time (two participant instances during
// a rebalance, a fenced zombie) both try to insert the same row: the
// unique key makes the second insert wait until the first transaction
// ends, and then return the first one's reply if it committed, or run the
// effect itself if it rolled back. So effect runs once per committed reply.
//
// The reply returned is the one stored: decoded from its JSON, so the
// first delivery and every later one get equal replies.
//
// An error means that nothing was stored and req should be delivered
// again: return it from the Handler, and the participant's batch is
// retried. It is effect's error (wrapped), a database error, ErrNoReply,
// or a req without a message id. When the commit's outcome is unknown (the
// connection broke during COMMIT) the error says so, and the retry finds
// the stored reply if the commit happened.
func (t *Table) Do(ctx context.Context, req participant.Request, effect Effect) (participant.Reply, error) {
	fail := func(what string, err error) (participant.Reply, error) {
		return participant.Reply{}, fmt.Errorf("%s: %s of saga %s (message %s): %s: %w", t.participant, req.Type, req.SagaID, req.MessageID, what, err)
	}
	if req.MessageID == "" {
		return participant.Reply{}, fmt.Errorf("%s: request of saga %s has no message id to dedupe on", t.participant, req.SagaID)
	}
	tx, err := t.pool.BeginTx(ctx, t.cfg.txOpts)
	if err != nil {
		return fail("begin", err)
	}
	// Rollback is a no-op once Commit ran; on every other path it undoes
	// the claim and whatever effect wrote. It runs even when ctx is
	// cancelled, so the connection goes back to the pool clean.
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	// The claim is what serializes deliveries of one command: an INSERT
	// that conflicts with an uncommitted row of the same key waits for that
	// row's transaction to end. After a commit it finds the conflict and
	// inserts nothing; after a rollback it inserts.
	tag, err := tx.Exec(ctx, t.claim, t.participant, req.SagaType, req.MessageID)
	if err != nil {
		return fail("claim the dedupe row", err)
	}
	if tag.RowsAffected() == 0 {
		// Under READ COMMITTED this statement sees the row that the
		// claim conflicted with, committed before the claim returned.
		var raw []byte
		err := tx.QueryRow(ctx, t.stored, t.participant, req.SagaType, req.MessageID).Scan(&raw)
		if errors.Is(err, pgx.ErrNoRows) {
			err = errors.New("the dedupe row was deleted meanwhile (DeleteOlderThan)")
		}
		if err != nil {
			return fail("read the stored reply", err)
		}
		if raw == nil {
			return fail("read the stored reply", errors.New("the dedupe row has no reply"))
		}
		return decode(raw, func(err error) (participant.Reply, error) { return fail("decode the stored reply", err) })
	}

	reply, err := effect(participant.WithRequest(ctx, req), tx)
	if err != nil {
		return fail("effect", err)
	}
	if reply.Outcome != message.OutcomeSuccess && reply.Outcome != message.OutcomeFailure {
		return fail(fmt.Sprintf("outcome %q", reply.Outcome), ErrNoReply)
	}
	// The whole Reply is stored, so fields that message.Reply gains come
	// along without a change here.
	raw, err := json.Marshal(reply)
	if err != nil {
		return fail("encode the reply", err)
	}
	if _, err := tx.Exec(ctx, t.store, t.participant, req.SagaType, req.MessageID, string(raw)); err != nil {
		return fail("store the reply", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fail("commit (its outcome may be unknown: a retry finds the reply if it committed)", err)
	}
	return decode(raw, func(err error) (participant.Reply, error) { return fail("decode the stored reply", err) })
}

// decode returns the reply stored as raw.
func decode(raw []byte, fail func(error) (participant.Reply, error)) (participant.Reply, error) {
	var r participant.Reply
	if err := json.Unmarshal(raw, &r); err != nil {
		return fail(err)
	}
	if r.Outcome != message.OutcomeSuccess && r.Outcome != message.OutcomeFailure {
		return fail(fmt.Errorf("%q is not a reply", raw))
	}
	return r, nil
}

// Run is Do for the request that ctx carries (participant.RequestFrom), as
// participant.Script.Run is: call it from a participant.Routes or
// participant.Typed function. It returns participant.ErrNoRequest when ctx
// carries no request.
func (t *Table) Run(ctx context.Context, effect Effect) (participant.Reply, error) {
	req, ok := participant.RequestFrom(ctx)
	if !ok {
		return participant.Reply{}, participant.ErrNoRequest
	}
	return t.Do(ctx, req, effect)
}

// HandlerFunc is a participant's effect for any of its requests: Effect
// with the request as an argument.
type HandlerFunc func(ctx context.Context, tx pgx.Tx, req participant.Request) (participant.Reply, error)

// Handler returns a participant.Handler that performs each request of a
// batch by Do, in order, with fn as its effect. Each request has its own
// database transaction: a batch of a hundred commands is a hundred commits
// (plus the reply's Kafka transaction, one per batch). When one request
// fails, Handle returns its error at once; the requests before it in the
// batch have committed, so the batch's retry answers them with their
// stored replies.
func (t *Table) Handler(fn HandlerFunc) participant.Handler {
	return participant.HandlerFunc(func(ctx context.Context, reqs []participant.Request) ([]participant.Reply, error) {
		replies := make([]participant.Reply, len(reqs))
		for i, req := range reqs {
			reply, err := t.Do(ctx, req, func(ctx context.Context, tx pgx.Tx) (participant.Reply, error) {
				return fn(ctx, tx, req)
			})
			if err != nil {
				return nil, err
			}
			replies[i] = reply
		}
		return replies, nil
	})
}
