package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"
)

// Maintain compacts, rolls up and expires data as of now. The daemon calls
// it about once a minute (more often is harmless, less often only delays the
// work). Each step commits in small transactions (a slice of the series ID
// space at a time), so writers wait milliseconds, memory stays bounded, and
// an interrupted run simply continues the next time.
//
//  1. Rollups: every slot of tier i (i ≥ 1) that ended more than Grace ago is
//     computed from tier i-1 by exact merge, in order; then slots that late
//     windows touched after their rollup (the dirty table) are redone.
//  2. Compaction: head rows of chunks that ended more than Grace ago become
//     one compressed chunk per series (merged into an existing chunk when a
//     late window arrived after it was compacted).
//  3. Retention: chunks and head rows wholly older than a tier's keep are
//     deleted, and exemplars with the first tier.
//     Series rows no data references any more are deleted once a day
//     (retention_series.go).
//  4. Baselines: the log of baseline changes is folded into one snapshot
//     row once past twice the last snapshot plus 1 MiB (see baselines.go).
func (s *Store) Maintain(ctx context.Context, now time.Time) error {
	if s.readOnly {
		return errReadOnly
	}
	n := now.Unix()
	for tier := 1; tier < len(s.tiers); tier++ {
		if err := s.rollupTier(ctx, tier, n); err != nil {
			return s.wrap(fmt.Sprintf("rolling up tier %d", tier), err)
		}
	}
	for tier := range s.tiers {
		if err := s.compactTier(ctx, tier, n); err != nil {
			return s.wrap(fmt.Sprintf("compacting tier %d", tier), err)
		}
	}
	if err := s.expire(ctx, n); err != nil {
		return s.wrap("expiring old data", err)
	}
	if _, err := s.deleteExpiredSeries(ctx, n); err != nil { // retention_series.go
		return s.wrap("deleting series past retention", err)
	}
	s.mu.Lock()
	err := s.maybeCompactBaselines(ctx, foldOnMaintain)
	s.mu.Unlock()
	return s.wrap("compacting baselines", err)
}

// partitions splits the series ID space into ranges of about 512 known
// series each: enough to amortise the per-window queries, few enough that a
// partition's decoded points (512 series × 120 windows) stay a few MB.
func (s *Store) partitions() [][2]int64 {
	s.mu.Lock()
	n := len(s.known)
	s.mu.Unlock()
	p := uint64(1)
	for p*512 < uint64(n) && p < 1<<20 {
		p *= 2
	}
	width := uint64(math.MaxUint64)/p + 1 // p is a power of two
	if p == 1 {
		return [][2]int64{{math.MinInt64, math.MaxInt64}}
	}
	out := make([][2]int64, p)
	for i := range p {
		lo := uint64(1)<<63 + i*width // offset so ranges ascend as int64
		out[i] = [2]int64{int64(lo), int64(lo + width - 1)}
	}
	return out
}

// firstStart returns the smallest start in table for tier at or after from
// and before to.
func firstStart(ctx context.Context, q rowQuerier, table string, tier int, from, to int64) (int64, bool, error) {
	var v sql.NullInt64
	err := q.QueryRowContext(ctx, `SELECT start FROM `+table+` WHERE tier = ? AND start >= ? AND start < ? ORDER BY start LIMIT 1`, tier, from, to).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, false, nil
	}
	return v.Int64, v.Valid, err
}

// hasData reports whether tier holds any point with window start in [from, to).
func (s *Store) hasData(ctx context.Context, tier int, from, to int64) (bool, error) {
	if _, ok, err := firstStart(ctx, s.db, "head", tier, from, to); err != nil || ok {
		return ok, err
	}
	_, ok, err := firstStart(ctx, s.db, "chunks", tier, alignDown(from, s.tiers[tier].span), to)
	return ok, err
}

func (s *Store) rollupTier(ctx context.Context, tier int, now int64) error {
	res := s.tiers[tier].res
	limit := alignDown(now-s.grace, res) // slots starting before limit are closed
	next := s.rolled[tier].Load()
	if next == 0 {
		// First run: start at the oldest data of the finer tier.
		lo := int64(math.MaxInt64)
		for _, table := range []string{"head", "chunks"} {
			if v, ok, err := firstStart(ctx, s.db, table, tier-1, math.MinInt64, math.MaxInt64); err != nil {
				return err
			} else if ok {
				lo = min(lo, v)
			}
		}
		next = min(alignDown(lo, res), limit)
	}
	for t := next; t < limit; t += res {
		if err := ctx.Err(); err != nil {
			return err
		}
		ok, err := s.hasData(ctx, tier-1, t, t+res)
		if err != nil {
			return err
		}
		if !ok {
			// Jump over empty stretches (downtime, a fresh store).
			h, okh, err := firstStart(ctx, s.db, "head", tier-1, t+res, limit)
			if err != nil {
				return err
			}
			c, okc, err := firstStart(ctx, s.db, "chunks", tier-1, t+res, limit)
			if err != nil {
				return err
			}
			switch {
			case okh && okc:
				t = alignDown(min(h, c), res) - res
			case okh:
				t = alignDown(h, res) - res
			case okc:
				t = alignDown(c, res) - res
			default:
				t = limit - res
			}
			continue
		}
		if err := s.rollupSlot(ctx, tier, t); err != nil {
			return err
		}
	}
	if limit > s.rolled[tier].Load() {
		s.mu.Lock()
		err := s.putMetaInt(ctx, s.db, rolledKey(tier), limit)
		if err == nil {
			s.rolled[tier].Store(limit)
		}
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
	// Slots that windows written after their rollup changed.
	rows, err := s.db.QueryContext(ctx, `SELECT slot FROM dirty WHERE tier = ? AND slot < ? ORDER BY slot`, tier, limit)
	if err != nil {
		return err
	}
	var slots []int64
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return err
		}
		slots = append(slots, v)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, t := range slots {
		if err := s.rollupSlot(ctx, tier, t); err != nil {
			return err
		}
		s.mu.Lock()
		_, err := s.db.ExecContext(ctx, `DELETE FROM dirty WHERE tier = ? AND slot = ?`, tier, t)
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// rollupSlot computes tier's slot [t, t+res) from the finer tier and stores
// it in tier's head, replacing any earlier result (idempotent).
func (s *Store) rollupSlot(ctx context.Context, tier int, t int64) error {
	ti := s.tiers[tier]
	for _, part := range s.partitions() {
		err := s.inTx(ctx, func(tx *sql.Tx) error {
			pts, err := s.scan(ctx, tx, tier-1, t, t+ti.res, selection{lo: part[0], hi: part[1]})
			if err != nil {
				return err
			}
			if len(pts) == 0 {
				return nil
			}
			rows := make([]headRow, 0, len(pts))
			var buf []byte
			for id, sp := range pts {
				if len(sp.pts) == 0 {
					continue
				}
				m := newMerger(sp.kind)
				for i := range sp.pts {
					if err := m.addPoint(&sp.pts[i]); err != nil {
						return err
					}
				}
				off := len(buf)
				buf = encodeChunk(buf, sp.kind, ti.res, []point{m.point(t)})
				rows = append(rows, headRow{series: id, data: buf[off:len(buf):len(buf)]})
			}
			if err := s.insertHead(ctx, tx, tier, t, math.MaxInt32, rows); err != nil {
				return err
			}
			if next := tier + 1; next < len(s.tiers) && t < s.rolled[next].Load() {
				_, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO dirty(tier, slot) VALUES(?, ?)`, next, alignDown(t, s.tiers[next].res))
				return err
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("slot %s: %w", time.Unix(t, 0).UTC().Format(time.RFC3339), err)
		}
	}
	return nil
}

// inTx runs fn in a write transaction holding the writer lock.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inTxLocked(ctx, fn)
}

func (s *Store) compactTier(ctx context.Context, tier int, now int64) error {
	ti := s.tiers[tier]
	limit := alignDown(now-s.grace, ti.span) // chunks starting before limit are closed
	from := int64(math.MinInt64)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		first, ok, err := firstStart(ctx, s.db, "head", tier, from, limit)
		if err != nil || !ok {
			return err
		}
		cs := alignDown(first, ti.span)
		if err := s.compactChunk(ctx, tier, cs); err != nil {
			return fmt.Errorf("chunk %s: %w", time.Unix(cs, 0).UTC().Format(time.RFC3339), err)
		}
		from = cs + ti.span
	}
}

// compactChunk turns the head rows of chunk cs into compressed chunks.
func (s *Store) compactChunk(ctx context.Context, tier int, cs int64) error {
	ti := s.tiers[tier]
	var starts []int64
	for cur := cs; ; {
		v, ok, err := firstStart(ctx, s.db, "head", tier, cur, cs+ti.span)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		starts = append(starts, v)
		cur = v + 1
	}
	for _, part := range s.partitions() {
		err := s.inTx(ctx, func(tx *sql.Tx) error {
			pts, err := s.scan(ctx, tx, tier, cs, cs+ti.span, selection{lo: part[0], hi: part[1]})
			if err != nil {
				return err
			}
			var buf []byte
			for id, sp := range pts {
				if len(sp.pts) == 0 {
					continue
				}
				buf = encodeChunk(buf[:0], sp.kind, ti.res, sp.pts)
				if _, err := tx.ExecContext(ctx, `INSERT INTO chunks(tier, start, series, data) VALUES(?,?,?,?)
					ON CONFLICT(tier, start, series) DO UPDATE SET data = excluded.data`, tier, cs, id, buf); err != nil {
					return err
				}
			}
			// Starts that arrived after the list was taken are found by the
			// next Maintain.
			for _, st := range starts {
				if _, err := tx.ExecContext(ctx, `DELETE FROM head WHERE tier = ? AND start = ? AND series BETWEEN ? AND ?`, tier, st, part[0], part[1]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) expire(ctx context.Context, now int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for tier, ti := range s.tiers {
		cutoff := now - ti.keep // windows starting before cutoff are past keep
		if _, err := s.db.ExecContext(ctx, `DELETE FROM chunks WHERE tier = ? AND start <= ?`, tier, cutoff-ti.span); err != nil {
			return err
		}
		if _, err := s.db.ExecContext(ctx, `DELETE FROM head WHERE tier = ? AND start < ?`, tier, cutoff); err != nil {
			return err
		}
		if tier == 0 {
			if _, err := s.db.ExecContext(ctx, `DELETE FROM exemplars WHERE start < ?`, cutoff); err != nil {
				return err
			}
		}
	}
	return nil
}
