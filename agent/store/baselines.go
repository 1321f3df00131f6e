package store

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
)

// Baselines
//
// The pipeline saves the baseline of each cumulative raw series with the
// window its deltas went into (WriteWithState). At 100k series a row per
// baseline would cost SQLite a few µs each per window, so the table is a
// log instead: each write appends one row holding that write's changes
// (records of a 16-byte key and a value, or a deletion), and reading folds
// the log in order (a later record for a key wins). When the log has grown
// past twice its last snapshot plus 1 MiB it is folded into a single
// snapshot row, in its own transaction (a crash in between leaves the
// unfolded log, which reads the same).
//
// Record: the 16-byte key, then uvarint n: 0 deletes the key, n > 0 sets it
// to the n−1 bytes that follow.

// StateRow is one baseline of the pipeline's durable state: a 16-byte key
// and an opaque value.
type StateRow struct {
	Key, Value []byte
}

const baselineKeyLen = 16

// appendBaselines logs del (first) and put inside tx.
func (s *Store) appendBaselines(ctx context.Context, tx *sql.Tx, put []StateRow, del [][]byte) error {
	if len(put) == 0 && len(del) == 0 {
		return nil
	}
	if err := s.readBaselineSizes(ctx, tx); err != nil {
		return err
	}
	n := 0
	for _, k := range del {
		n += len(k) + 1
	}
	for _, r := range put {
		n += len(r.Key) + len(r.Value) + 3
	}
	b := make([]byte, 0, n)
	for _, k := range del {
		if len(k) != baselineKeyLen {
			return fmt.Errorf("baseline key of %d bytes, want %d", len(k), baselineKeyLen)
		}
		b = append(b, k...)
		b = append(b, 0)
	}
	for _, r := range put {
		if len(r.Key) != baselineKeyLen {
			return fmt.Errorf("baseline key of %d bytes, want %d", len(r.Key), baselineKeyLen)
		}
		b = append(b, r.Key...)
		b = binary.AppendUvarint(b, uint64(len(r.Value))+1)
		b = append(b, r.Value...)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO baselines(data) VALUES(?)`, b); err != nil {
		return fmt.Errorf("saving baselines: %w", err)
	}
	if s.baseLog == 0 {
		// The first row of an empty log counts as its snapshot, as
		// readBaselineSizes counts it after a restart. Otherwise the first
		// window's baselines (2.7 MB at 105k series) are past the 1 MiB
		// slack at once and folded right away, only to be rewritten as they
		// are: a whole-table read, map and copy at the first window's close,
		// the close that already adds every series row (it set the agent's
		// peak RSS).
		s.baseSnap = int64(len(b))
	}
	s.baseLog += int64(len(b))
	return nil
}

// readBaselineSizes learns the log's sizes once, from the database.
func (s *Store) readBaselineSizes(ctx context.Context, q queryer) error {
	if s.baseRead {
		return nil
	}
	err := q.QueryRowContext(ctx, `SELECT coalesce(sum(length(data)), 0),
		coalesce((SELECT length(data) FROM baselines ORDER BY seq LIMIT 1), 0) FROM baselines`).Scan(&s.baseLog, &s.baseSnap)
	if err != nil {
		return fmt.Errorf("reading the baselines' size: %w", err)
	}
	s.baseRead = true
	return nil
}

// Fold thresholds, in multiples of the snapshot (plus 1 MiB). Maintain,
// once a minute and so mostly away from a window's close, folds past twice
// the snapshot; a write folds only past four times, as a backstop for a
// store nobody maintains. A fold holds the log, a map of every baseline and
// the new snapshot at once (about 40 MB at 105k series): done by the write,
// it landed on the window's close, where the pipeline's rendered window,
// the store write and the exporters' copies are live too, and set the
// agent's peak RSS.
const (
	foldOnMaintain = 2
	foldOnWrite    = 4
)

// maybeCompactBaselines folds the log into one snapshot row when it is past
// factor times the snapshot plus 1 MiB. Called with s.mu held.
func (s *Store) maybeCompactBaselines(ctx context.Context, factor int64) error {
	if !s.baseRead || s.baseLog <= factor*s.baseSnap+1<<20 {
		return nil
	}
	return s.inTxLocked(ctx, func(tx *sql.Tx) error {
		live, err := foldBaselines(ctx, tx)
		if err != nil {
			return err
		}
		n := 0
		for _, v := range live {
			n += baselineKeyLen + len(v) + 3
		}
		b := make([]byte, 0, n)
		for k, v := range live {
			b = append(b, k[:]...)
			b = binary.AppendUvarint(b, uint64(len(v))+1)
			b = append(b, v...)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM baselines`); err != nil {
			return fmt.Errorf("compacting baselines: %w", err)
		}
		if len(b) > 0 {
			if _, err := tx.ExecContext(ctx, `INSERT INTO baselines(data) VALUES(?)`, b); err != nil {
				return fmt.Errorf("compacting baselines: %w", err)
			}
		}
		s.baseLog, s.baseSnap = int64(len(b)), int64(len(b))
		return nil
	})
}

// inTxLocked runs fn in a write transaction; the caller holds s.mu.
func (s *Store) inTxLocked(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

type rowsQueryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// foldBaselines reads the log in order and returns the live baselines.
func foldBaselines(ctx context.Context, q rowsQueryer) (map[[baselineKeyLen]byte][]byte, error) {
	rows, err := q.QueryContext(ctx, `SELECT seq, data FROM baselines ORDER BY seq`)
	if err != nil {
		return nil, fmt.Errorf("reading baselines: %w", err)
	}
	defer rows.Close()
	live := map[[baselineKeyLen]byte][]byte{}
	for rows.Next() {
		var seq int64
		var b []byte // a copy: the values below point into it
		if err := rows.Scan(&seq, &b); err != nil {
			return nil, fmt.Errorf("reading baselines: %w", err)
		}
		for len(b) > 0 {
			if len(b) < baselineKeyLen+1 {
				return nil, fmt.Errorf("%w: baselines row %d is truncated", errCorrupt, seq)
			}
			k := [baselineKeyLen]byte(b[:baselineKeyLen])
			n, sz := binary.Uvarint(b[baselineKeyLen:])
			if sz <= 0 || n > uint64(len(b)-baselineKeyLen-sz)+1 {
				return nil, fmt.Errorf("%w: baselines row %d is truncated", errCorrupt, seq)
			}
			b = b[baselineKeyLen+sz:]
			if n == 0 {
				delete(live, k)
				continue
			}
			live[k] = b[: n-1 : n-1]
			b = b[n-1:]
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading baselines: %w", err)
	}
	return live, nil
}

// ScanBaselines calls fn with every saved baseline (in no particular
// order); key and value are only valid during the call. An error from fn
// stops the scan and is returned.
func (s *Store) ScanBaselines(ctx context.Context, fn func(key, value []byte) error) error {
	live, err := foldBaselines(ctx, s.db)
	if err != nil {
		return s.wrap("reading baselines", err)
	}
	for k, v := range live {
		if err := fn(k[:], v); err != nil {
			return err
		}
	}
	return nil
}
