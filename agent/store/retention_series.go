package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"
)

// Series retention
//
// Retention (expire in maintain.go) deletes a tier's chunks, head rows and
// exemplars past its keep, but a series row outlives them: a series whose
// last point has left every tier would otherwise stay listed (`sabaki
// query` without -metric, attribute lookups) forever, and a route
// explosion's series rows would never go. deleteExpiredSeries removes the
// series rows nothing references: no head row, no chunk, no exemplar in
// any tier. Nothing else refers to a series id: the pipeline's saved
// baselines (table baselines) are keyed by a hash of the raw series, the
// state table holds source cursors, dirty holds rollup slots.
//
// No table has an index on series alone, so finding the unreferenced ids
// reads the head, chunks and exemplars tables whole. It therefore runs at
// most once per seriesSweepEvery (the time of the last sweep is kept in
// meta, so restarts do not repeat it), and in two steps, so that window
// writes wait for none of the long part:
//
//  1. Without the writer lock, in one read transaction (a WAL snapshot):
//     one statement lists the series ids in no head row, chunk or exemplar.
//  2. Under the writer lock, in one write transaction: the ids a window
//     written since the snapshot stored again (head rows: Maintain itself,
//     the only other writer of chunks, is not running meanwhile) are kept,
//     found by index seeks on head's (tier, start, series) key for each
//     (tier, start) in head; the rest are deleted, and forgotten from the
//     known set, so a series that comes back later gets its row again.
//
// Maintain must not run concurrently with itself (the daemon calls it from
// one goroutine).

const (
	// seriesSweepEvery: series rows expire with the data of a whole chunk
	// span (2 h at 1 m) at the earliest; a daily sweep is plenty.
	seriesSweepEvery = 24 * time.Hour
	seriesSweptKey   = "series_swept_at"
	sweepBatch       = 500 // ids per statement
)

// seriesSweepHook, when set (tests), runs between the two steps.
var seriesSweepHook func()

// deleteExpiredSeries deletes the series rows no head row, chunk or exemplar
// references any more, at most once per seriesSweepEvery (see above). It
// returns the number of rows deleted.
func (s *Store) deleteExpiredSeries(ctx context.Context, now int64) (int, error) {
	last, err := s.metaInt(ctx, s.db, seriesSweptKey)
	if err != nil {
		return 0, err
	}
	if last != 0 && now-last < int64(seriesSweepEvery/time.Second) && now >= last {
		return 0, nil
	}
	began := time.Now()
	ids, err := s.unreferencedSeries(ctx)
	if err != nil {
		return 0, fmt.Errorf("listing series without data: %w", err)
	}
	if seriesSweepHook != nil {
		seriesSweepHook()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	err = s.inTxLocked(ctx, func(tx *sql.Tx) error {
		if len(ids) > 0 {
			back, err := headSeriesAmong(ctx, tx, ids)
			if err != nil {
				return err
			}
			var del []int64
			for _, id := range ids {
				if _, ok := back[id]; !ok {
					del = append(del, id)
				}
			}
			for b := 0; b < len(del); b += sweepBatch {
				part := del[b:min(b+sweepBatch, len(del))]
				if _, err := tx.ExecContext(ctx, `DELETE FROM series WHERE id IN (`+placeholders(len(part))+`)`, int64Args(part)...); err != nil {
					return fmt.Errorf("deleting series rows: %w", err)
				}
			}
			ids, n = del, len(del)
		}
		return s.putMetaInt(ctx, tx, seriesSweptKey, now)
	})
	if err != nil {
		return 0, err
	}
	for _, id := range ids[:n] {
		delete(s.known, id)
		s.parsed.Delete(id)
	}
	if n > 0 {
		s.log.Info("deleted series whose data left every tier's retention", "series", n, "took", time.Since(began).Round(time.Millisecond).String())
	}
	return n, nil
}

// unreferencedSQL lists the series ids in no head row, chunk or exemplar.
const unreferencedSQL = `SELECT id FROM series
	WHERE id NOT IN (SELECT series FROM head)
	  AND id NOT IN (SELECT series FROM chunks)
	  AND id NOT IN (SELECT series FROM exemplars)
	ORDER BY id`

// unreferencedSeries lists, in one read transaction, the series ids in no
// head row, chunk or exemplar. Each NOT IN builds its table's set of ids
// once (a scan of the table), not a lookup per series.
func (s *Store) unreferencedSeries(ctx context.Context) ([]int64, error) {
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, unreferencedSQL)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// headSeriesAmong returns which of ids have a head row: for each (tier,
// start) in head (found by seeks on the key), one indexed lookup per id.
func headSeriesAmong(ctx context.Context, tx *sql.Tx, ids []int64) (map[int64]struct{}, error) {
	found := map[int64]struct{}{}
	tier, start := int64(math.MinInt64), int64(math.MinInt64)
	for {
		var t, st int64
		err := tx.QueryRowContext(ctx, `SELECT tier, start FROM head WHERE tier > ?1 OR (tier = ?1 AND start > ?2) ORDER BY tier, start LIMIT 1`, tier, start).Scan(&t, &st)
		if errors.Is(err, sql.ErrNoRows) {
			return found, nil
		}
		if err != nil {
			return nil, fmt.Errorf("listing head windows: %w", err)
		}
		tier, start = t, st
		for b := 0; b < len(ids); b += sweepBatch {
			part := ids[b:min(b+sweepBatch, len(ids))]
			args := append([]any{t, st}, int64Args(part)...)
			rows, err := tx.QueryContext(ctx, `SELECT series FROM head WHERE tier = ? AND start = ? AND series IN (`+placeholders(len(part))+`)`, args...)
			if err != nil {
				return nil, fmt.Errorf("checking head rows: %w", err)
			}
			for rows.Next() {
				var id int64
				if err := rows.Scan(&id); err != nil {
					rows.Close()
					return nil, err
				}
				found[id] = struct{}{}
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return nil, err
			}
		}
	}
}

func int64Args(ids []int64) []any {
	out := make([]any, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}
