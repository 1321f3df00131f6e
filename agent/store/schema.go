package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
)

// applicationID is written into the SQLite header ("sbk1") so a store is
// recognised without reading a table, and a foreign database is refused.
const applicationID = 0x73626b31

const magic = "sabaki-store"

const pageSize = 65536

// migrations[i] brings the schema from version i to i+1. Append only; never
// edit a released migration.
var migrations = []string{
	// 0 → 1
	`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE series (
	id          INTEGER PRIMARY KEY,
	name        TEXT NOT NULL,
	kind        INTEGER NOT NULL,
	unit        TEXT NOT NULL,
	description TEXT NOT NULL,
	resource    TEXT NOT NULL, -- JSON object
	attrs       TEXT NOT NULL  -- JSON object
);
CREATE INDEX series_name ON series(name);
CREATE TABLE head (
	tier   INTEGER NOT NULL,
	start  INTEGER NOT NULL, -- window start, Unix seconds
	series INTEGER NOT NULL,
	rev    INTEGER NOT NULL,
	data   BLOB NOT NULL,    -- a one-point chunk
	PRIMARY KEY (tier, start, series)
) WITHOUT ROWID;
CREATE TABLE chunks (
	tier   INTEGER NOT NULL,
	start  INTEGER NOT NULL, -- chunk start, a multiple of the chunk span
	series INTEGER NOT NULL,
	data   BLOB NOT NULL,
	PRIMARY KEY (tier, start, series)
) WITHOUT ROWID;
CREATE TABLE exemplars (
	start    INTEGER NOT NULL, -- window start (first tier)
	series   INTEGER NOT NULL,
	trace_id BLOB NOT NULL,
	span_id  BLOB NOT NULL,
	value    REAL NOT NULL,
	time     INTEGER NOT NULL, -- Unix nanoseconds
	attrs    TEXT NOT NULL     -- JSON object
);
CREATE INDEX exemplars_start ON exemplars(start, series);
CREATE TABLE dirty (tier INTEGER NOT NULL, slot INTEGER NOT NULL, PRIMARY KEY (tier, slot)) WITHOUT ROWID;
CREATE TABLE state (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;`,
	// 1 → 2: the pipeline's cumulative baselines (baselines.go), a log of
	// changes, one row per window write.
	`CREATE TABLE baselines (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);`,
}

// schemaVersion is the version this binary writes.
var schemaVersion = len(migrations)

func (s *Store) migrate(ctx context.Context) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return s.wrap("connecting", err)
	}
	defer conn.Close()
	var appID int64
	var objects int
	if err := conn.QueryRowContext(ctx, `PRAGMA application_id`).Scan(&appID); err != nil {
		return s.wrap("reading header", err)
	}
	if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master`).Scan(&objects); err != nil {
		return s.wrap("reading schema", err)
	}
	switch {
	case appID == 0 && objects == 0:
		if s.readOnly {
			return fmt.Errorf("opening store: %s is empty; start `sabaki run` first", s.path)
		}
		// The id goes in first, in rollback-journal mode, so it is in the
		// main file's header before any table exists.
		//
		// 64 KiB pages: chunks are 0.1–16 KB rows; with 4 KiB pages a
		// b-tree leaf holds one or two of them and wastes the rest, and
		// rows over ~1 KB spill into mostly empty overflow pages. 64 KiB
		// pages keep rows up to 16 KB inline and packed.
		if _, err := conn.ExecContext(ctx, fmt.Sprintf(`PRAGMA page_size = %d; PRAGMA application_id = %d`, pageSize, applicationID)); err != nil {
			return s.wrap("initialising", err)
		}
	case appID != applicationID:
		return fmt.Errorf("%s is not a sabaki store (SQLite application_id %#08x, want %#08x)", s.path, appID, applicationID)
	}
	version := 0
	if objects > 0 {
		var m, v string
		err := conn.QueryRowContext(ctx, `SELECT (SELECT value FROM meta WHERE key = 'magic'), (SELECT value FROM meta WHERE key = 'schema_version')`).Scan(&m, &v)
		if err != nil || m != magic {
			return fmt.Errorf("%s is not a sabaki store (no sabaki meta table): %v", s.path, err)
		}
		if version, err = strconv.Atoi(v); err != nil {
			return fmt.Errorf("store %s is corrupt: schema version %q", s.path, v)
		}
	}
	if version > schemaVersion {
		return fmt.Errorf("store %s has schema version %d, written by a newer sabaki; this one knows up to %d", s.path, version, schemaVersion)
	}
	if version < schemaVersion {
		if s.readOnly {
			return fmt.Errorf("store %s has schema version %d and needs a migration to %d; start `sabaki run` once to migrate it", s.path, version, schemaVersion)
		}
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return s.wrap("migrating", err)
		}
		defer tx.Rollback()
		for v := version; v < schemaVersion; v++ {
			if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
				return s.wrap(fmt.Sprintf("migrating schema %d → %d", v, v+1), err)
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO meta(key, value) VALUES('magic', ?), ('schema_version', ?)
			ON CONFLICT(key) DO UPDATE SET value = excluded.value`, magic, strconv.Itoa(schemaVersion)); err != nil {
			return s.wrap("migrating", err)
		}
		if err := tx.Commit(); err != nil {
			return s.wrap("migrating", err)
		}
		if version > 0 {
			s.log.Info("store schema migrated", "path", s.path, "from", version, "to", schemaVersion)
		}
	}
	if !s.readOnly {
		var mode string
		if err := conn.QueryRowContext(ctx, `PRAGMA journal_mode = WAL`).Scan(&mode); err != nil || mode != "wal" {
			return fmt.Errorf("store %s: cannot switch to WAL mode (got %q): %v", s.path, mode, err)
		}
	}
	return nil
}

func rolledKey(tier int) string { return "rolled_until." + strconv.Itoa(tier) }

type queryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (s *Store) metaInt(ctx context.Context, q queryer, key string) (int64, error) {
	var v string
	err := q.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, s.wrap("reading "+key, err)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("store %s is corrupt: meta %s = %q", s.path, key, v)
	}
	return n, nil
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func (s *Store) putMetaInt(ctx context.Context, e execer, key string, v int64) error {
	_, err := e.ExecContext(ctx, `INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`, key, strconv.FormatInt(v, 10))
	return s.wrap("saving "+key, err)
}
