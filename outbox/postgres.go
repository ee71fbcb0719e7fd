package outbox

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultTable is the PostgreSQL outbox table's name unless Table says
// otherwise.
const DefaultTable = "ksaga_outbox"

// Schema creates the outbox table DefaultTable (Table.Schema gives it for
// another name). Run it with the service's migrations, or call
// Table.Migrate. data is json, not jsonb: json keeps the request's bytes
// as written, and the engine recognises a repeated start by their hash.
const Schema = `CREATE TABLE IF NOT EXISTS ksaga_outbox (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	saga_type  text        NOT NULL,
	saga_id    text        NOT NULL,
	data       json        NOT NULL,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS ksaga_outbox_saga_type_id ON ksaga_outbox (saga_type, id);
`

var tableRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// TableName names the outbox table: "name" or "schema.name" (letters,
// digits and underscores). The default is DefaultTable.
func TableName(name string) Opt { return optFunc(func(c *config) { c.table = name }) }

// Table is a PostgreSQL outbox table: the caller's transaction inserts
// start requests of any saga type into it. It is safe for concurrent use.
type Table struct {
	cfg   config
	table string // quoted
	index string // quoted, unqualified
	err   error
}

// Postgres returns the outbox in table DefaultTable (or TableName's).
// Check(defs...) makes Add refuse data that the saga definitions refuse.
// A table name that is not an identifier makes every method fail.
func Postgres(opts ...Opt) *Table {
	o := &Table{cfg: newConfig(opts)}
	if !tableRE.MatchString(o.cfg.table) {
		o.err = fmt.Errorf("outbox: table name %q: want name or schema.name (letters, digits, underscores)", o.cfg.table)
		return o
	}
	parts := strings.Split(o.cfg.table, ".")
	o.table = pgx.Identifier(parts).Sanitize()
	o.index = pgx.Identifier{parts[len(parts)-1] + "_saga_type_id"}.Sanitize()
	return o
}

// Schema returns the statements that create the outbox table and its index
// if they do not exist (Schema, for the table's name).
func (o *Table) Schema() string {
	return fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	saga_type  text        NOT NULL,
	saga_id    text        NOT NULL,
	data       json        NOT NULL,
	created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS %s ON %s (saga_type, id);
`, o.table, o.index, o.table)
}

// Migrate creates the outbox table and its index if they do not exist.
func (o *Table) Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	if o.err != nil {
		return o.err
	}
	if _, err := pool.Exec(ctx, o.Schema()); err != nil {
		return fmt.Errorf("outbox: create table %s: %w", o.cfg.table, err)
	}
	return nil
}

// Add inserts the start request of saga id of saga type sagaType with data
// in tx, the caller's transaction: the saga starts if and only if tx
// commits.
//
//	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
//		if _, err := tx.Exec(ctx, `INSERT INTO orders …`); err != nil {
//			return err
//		}
//		return ob.Add(ctx, tx, "order", "o-1", o)
//	})
//
// A start the engine would refuse returns an error wrapping ErrInvalid
// and inserts nothing; the caller should roll tx back (BeginFunc does).
// Any other error is the insert's. Adding the same id and data twice (a
// retried transaction that did commit) starts the saga once.
func (o *Table) Add(ctx context.Context, tx pgx.Tx, sagaType, id string, data any) error {
	if o.err != nil {
		return o.err
	}
	value, err := o.cfg.encode(sagaType, id, data)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO `+o.table+` (saga_type, saga_id, data) VALUES ($1, $2, $3)`, sagaType, id, value)
	if err != nil {
		return fmt.Errorf("outbox: insert the start of %s saga %s: %w", sagaType, id, err)
	}
	return nil
}

// pgSource is the relay's side of the table, for one saga type.
type pgSource struct {
	o        *Table
	pool     *pgxpool.Pool
	sagaType string
}

func (p *pgSource) kind() string { return "postgres" }

// fetch locks up to n rows of the saga type that no other relay has locked
// (SKIP LOCKED), in a transaction that done commits after deleting them.
func (p *pgSource) fetch(ctx context.Context, n int) (batch, error) {
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	b := &pgBatch{p: p, tx: tx}
	rows, err := tx.Query(ctx, `SELECT id, saga_id, data FROM `+p.o.table+`
		WHERE saga_type = $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED`, p.sagaType, n)
	if err == nil {
		for rows.Next() {
			var e entry
			var id int64
			if err = rows.Scan(&id, &e.sagaID, &e.data); err != nil {
				break
			}
			e.ref = fmt.Sprint(id)
			b.ids = append(b.ids, id)
			b.entries = append(b.entries, e)
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
	}
	if err != nil {
		b.release(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("select from %s: %w", p.o.cfg.table, err)
	}
	return b, nil
}

func (p *pgSource) stats(ctx context.Context) (int64, time.Duration, error) {
	var n int64
	var age float64
	err := p.pool.QueryRow(ctx, `SELECT count(*), COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), 0)::float8
		FROM `+p.o.table+` WHERE saga_type = $1`, p.sagaType).Scan(&n, &age)
	if err != nil {
		return 0, 0, err
	}
	return n, max(time.Duration(age*float64(time.Second)), 0), nil
}

// pgBatch is a batch of rows locked by its transaction.
type pgBatch struct {
	p       *pgSource
	tx      pgx.Tx
	ids     []int64
	entries []entry
}

func (b *pgBatch) list() []entry { return b.entries }

func (b *pgBatch) size() int { return len(b.ids) }

// done deletes the rows and commits: it runs after the Kafka transaction
// committed. Until this commit the rows stay locked, so no other relay
// relays them meanwhile.
func (b *pgBatch) done(ctx context.Context) error {
	if len(b.ids) == 0 {
		b.release(ctx)
		return nil
	}
	if _, err := b.tx.Exec(ctx, `DELETE FROM `+b.p.o.table+` WHERE id = ANY($1)`, b.ids); err != nil {
		b.release(ctx)
		return fmt.Errorf("delete %d rows of %s: %w", len(b.ids), b.p.o.cfg.table, err)
	}
	if err := b.tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit the delete of %d rows of %s: %w", len(b.ids), b.p.o.cfg.table, err)
	}
	return nil
}

// release rolls the transaction back: the rows are unlocked, to be relayed
// again.
func (b *pgBatch) release(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	// A failed rollback closes the connection: the server then rolls
	// back and unlocks the rows itself.
	_ = b.tx.Rollback(ctx)
}
