package pgdedupe

import (
	"context"
	"fmt"
	"time"
)

// Schema creates the dedupe table DefaultTable and its index if they do not
// exist (Table.Schema gives them for another name). Run it with the
// service's migrations, or call Table.Migrate.
//
// A row's reply is NULL only inside the transaction that claimed the row;
// a committed row always holds a reply. reply is json, not jsonb: json
// keeps the reply's bytes as they were written.
const Schema = `CREATE TABLE IF NOT EXISTS ksaga_dedupe (
	participant text        NOT NULL,
	saga_type   text        NOT NULL,
	message_id  text        NOT NULL,
	reply       json,
	created_at  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (participant, saga_type, message_id)
);
CREATE INDEX IF NOT EXISTS ksaga_dedupe_participant_created_at ON ksaga_dedupe (participant, created_at);
`

// Schema returns the statements that create the table and its index if
// they do not exist (Schema, for the table's name).
func (t *Table) Schema() string {
	return fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
	participant text        NOT NULL,
	saga_type   text        NOT NULL,
	message_id  text        NOT NULL,
	reply       json,
	created_at  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (participant, saga_type, message_id)
);
CREATE INDEX IF NOT EXISTS %s ON %s (participant, created_at);
`, t.table, t.index, t.table)
}

// Migrate creates the table and its index if they do not exist.
func (t *Table) Migrate(ctx context.Context) error {
	if _, err := t.pool.Exec(ctx, t.Schema()); err != nil {
		return fmt.Errorf("pgdedupe: create table %s: %w", t.cfg.table, err)
	}
	return nil
}

// deleteBatch is the most rows one statement of DeleteOlderThan deletes,
// so that a large backlog is not one long transaction.
const deleteBatch = 10_000

// DeleteOlderThan deletes the participant's dedupe rows written more than
// age ago (by the database's clock) and returns how many it deleted. A
// command redelivered after its row is deleted acts again, so keep rows
// well beyond the longest a saga can take to receive its reply: call it
// periodically (hourly, say) with participant.DedupeTTL, the time a
// participant.Script keeps its dedupe records, or longer.
//
// It deletes in statements of at most 10,000 rows, each its own
// transaction; an error (or a cancelled ctx) stops it, and the rows deleted
// until then stay deleted. It is safe to run beside Do and on several
// instances at once. Rows of other participants sharing the table are left
// alone.
func (t *Table) DeleteOlderThan(ctx context.Context, age time.Duration) (int64, error) {
	stmt := `DELETE FROM ` + t.table + ` WHERE (participant, saga_type, message_id) IN (
	SELECT participant, saga_type, message_id FROM ` + t.table + `
	WHERE participant = $1 AND created_at < now() - make_interval(secs => $2)
	LIMIT $3)`
	var total int64
	for {
		tag, err := t.pool.Exec(ctx, stmt, t.participant, age.Seconds(), deleteBatch)
		if err != nil {
			return total, fmt.Errorf("pgdedupe: %s: delete rows older than %v from %s: %w", t.participant, age, t.cfg.table, err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < deleteBatch {
			return total, nil
		}
	}
}
