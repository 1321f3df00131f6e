package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/sabakiio/sabaki/metric"
)

// selection picks series: an explicit sorted ID list, or an ID range
// [lo, hi] (maintenance walks the ID space in slices to bound memory).
type selection struct {
	ids    []int64
	lo, hi int64
}

// parts returns the condition on column series and its arguments, one per
// batch of at most 500 IDs.
func (sel selection) parts() []struct {
	cond string
	args []any
} {
	type part = struct {
		cond string
		args []any
	}
	if sel.ids == nil {
		return []part{{"series BETWEEN ? AND ?", []any{sel.lo, sel.hi}}}
	}
	var out []part
	for b := 0; b < len(sel.ids); b += 500 {
		ids := sel.ids[b:min(b+500, len(sel.ids))]
		args := make([]any, len(ids))
		for i, id := range ids {
			args[i] = id
		}
		out = append(out, part{"series IN (" + placeholders(len(ids)) + ")", args})
	}
	return out
}

type seriesPoints struct {
	kind metric.Kind
	pts  []point
}

type rowQuerier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
}

// scan returns the points of the selected series in tier with window start
// in [from, to), merging closed chunks and the head (a head row wins over a
// chunk point for the same window: it is the newer write).
func (s *Store) scan(ctx context.Context, q rowQuerier, tier int, from, to int64, sel selection) (map[int64]*seriesPoints, error) {
	return s.scanWith(ctx, q, tier, from, to, sel, nil)
}

// scanWith is scan with a partial decode per series (opts nil: decode all).
func (s *Store) scanWith(ctx context.Context, q rowQuerier, tier int, from, to int64, sel selection, opts func(id int64) decodeOptions) (map[int64]*seriesPoints, error) {
	out := map[int64]*seriesPoints{}
	if from >= to {
		return out, nil
	}
	if sel.ids != nil && len(sel.ids) == 0 {
		return out, nil
	}
	ti := s.tiers[tier]
	// Blobs are fetched first and decoded afterwards, on all cores (the
	// bucket decoding is most of a large query's time), then added in fetch
	// order so that a head row still wins over a chunk point.
	type blob struct {
		id    int64
		data  []byte
		table string
		start int64
	}
	var blobs []blob
	add := func(id int64, kind metric.Kind, pts []point) {
		sp := out[id]
		if sp == nil {
			sp = &seriesPoints{kind: kind}
			out[id] = sp
		}
		if sp.pts == nil && len(pts) > 0 && pts[0].start >= from && pts[len(pts)-1].start < to {
			sp.pts = pts // the common case: a whole chunk in range, no copy
			return
		}
		for _, p := range pts {
			if p.start >= from && p.start < to {
				sp.pts = append(sp.pts, p)
			}
		}
	}
	parts := sel.parts()
	// Closed chunks and head rows: walk the distinct starts in range by
	// seeking (chunk starts are multiples of the span, head starts of the
	// resolution), then fetch the selected series at each start. This never
	// scans the time range for all series.
	for _, t := range []struct {
		table string
		from  int64
	}{{"chunks", alignDown(from, ti.span)}, {"head", from}} {
		seek, err := q.PrepareContext(ctx, `SELECT start FROM `+t.table+` WHERE tier = ? AND start > ? AND start < ? ORDER BY start LIMIT 1`)
		if err != nil {
			return nil, err
		}
		var starts []int64
		for cur := t.from - 1; ; {
			var next int64
			err := seek.QueryRowContext(ctx, tier, cur, to).Scan(&next)
			if errors.Is(err, sql.ErrNoRows) {
				break
			}
			if err != nil {
				seek.Close()
				return nil, err
			}
			starts = append(starts, next)
			cur = next
		}
		seek.Close()
		if len(starts) == 0 {
			continue
		}
		for _, p := range parts {
			// One prepared statement per selection part, run at each start.
			stmt, err := q.PrepareContext(ctx, `SELECT series, data FROM `+t.table+` WHERE tier = ? AND start = ? AND `+p.cond)
			if err != nil {
				return nil, err
			}
			for _, st := range starts {
				if err := queryBlobs(ctx, stmt, append([]any{tier, st}, p.args...), func(id int64, data []byte) error {
					blobs = append(blobs, blob{id, data, t.table, st})
					return nil
				}); err != nil {
					stmt.Close()
					return nil, err
				}
			}
			stmt.Close()
		}
	}
	type decoded struct {
		kind metric.Kind
		pts  []point
		err  error
	}
	res := make([]decoded, len(blobs))
	decode := func(i int) {
		b := &blobs[i]
		var o decodeOptions
		if opts != nil {
			o = opts(b.id)
		}
		kind, pts, err := decodeChunkWith(b.data, o)
		if err != nil {
			err = fmt.Errorf("%s %d/%d of series %d: %w", b.table, tier, b.start, b.id, err)
		}
		res[i] = decoded{kind, pts, err}
		b.data = nil
	}
	parallel(len(blobs), len(blobs)/64, func(_, i int) { decode(i) })
	for i := range res {
		if res[i].err != nil {
			return nil, res[i].err
		}
		add(blobs[i].id, res[i].kind, res[i].pts)
	}
	for _, sp := range out {
		// Stable: for equal starts the head point (appended last) survives.
		slices.SortStableFunc(sp.pts, func(a, b point) int { return cmpInt(a.start, b.start) })
		w := 0
		for i := range sp.pts {
			if w > 0 && sp.pts[w-1].start == sp.pts[i].start {
				sp.pts[w-1] = sp.pts[i]
				continue
			}
			sp.pts[w] = sp.pts[i]
			w++
		}
		sp.pts = sp.pts[:w]
	}
	return out, nil
}

func queryBlobs(ctx context.Context, stmt *sql.Stmt, args []any, fn func(id int64, data []byte) error) error {
	rows, err := stmt.QueryContext(ctx, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var data []byte
		if err := rows.Scan(&id, &data); err != nil {
			return err
		}
		if err := fn(id, data); err != nil {
			return err
		}
	}
	return rows.Err()
}

// queryRawStmt is queryBlobs without a copy: data is only valid during fn.
func queryRawStmt(ctx context.Context, stmt *sql.Stmt, args []any, fn func(id int64, data sql.RawBytes) error) error {
	rows, err := stmt.QueryContext(ctx, args...)
	if err != nil {
		return err
	}
	return eachRawBlob(rows, fn)
}

// queryRawBlobs is queryRawStmt for a query string.
func queryRawBlobs(ctx context.Context, q rowQuerier, query string, args []any, fn func(id int64, data sql.RawBytes) error) error {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	return eachRawBlob(rows, fn)
}

func eachRawBlob(rows *sql.Rows, fn func(id int64, data sql.RawBytes) error) error {
	defer rows.Close()
	for rows.Next() {
		var id int64
		var data sql.RawBytes
		if err := rows.Scan(&id, &data); err != nil {
			return err
		}
		if err := fn(id, data); err != nil {
			return err
		}
	}
	return rows.Err()
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

var errReadOnly = errors.New("store opened read-only")

// stream calls fold with the points of the selected series in tier whose
// window starts in [from, to): per series in start order, a head row
// replacing a chunk point of the same start (it is the newer write). Points
// come in runs that fold must not keep. Head rows (the open chunks: few) are
// read first; closed chunks are then fetched one chunk start at a time and
// decoded on all cores, and fold runs on the calling goroutine, so memory
// stays bounded by one chunk start's blobs however long the range.
//
// prefix > 0 fetches only the first prefix bytes of each chunk (enough for
// the count columns, decodeOptions.countsOnly), and the whole chunk only
// when that is not enough.
//
// post, if set, is called after each closed chunk start's points have gone
// to fold, with the start, the end of its span and the whole encoded chunk
// of each series fetched there (nil for another; valid during the call
// only): a caller that has seen all of a span can read more of it without
// fetching it again. It needs prefix 0.
//
// partition, if set, puts each series in a partition (a query's group):
// with whole chunks (prefix 0), the partitions of a chunk start are decoded
// and folded on all cores, each partition's series in order by one
// goroutine, so fold may touch a partition's state without a lock and sums
// add up in the same order whatever the number of cores.
func (s *Store) stream(ctx context.Context, q rowQuerier, tier int, from, to int64, sel selection, prefix int, opts func(id int64) decodeOptions, fold func(id int64, kind metric.Kind, pts []point) error, post func(start, end int64, raw func(id int64) []byte) error, partition func(id int64) int) error {
	if from >= to || (sel.ids != nil && len(sel.ids) == 0) {
		return nil
	}
	ti := s.tiers[tier]
	parts := sel.parts()
	starts := func(table string, lo int64) ([]int64, error) {
		seek, err := q.PrepareContext(ctx, `SELECT start FROM `+table+` WHERE tier = ? AND start > ? AND start < ? ORDER BY start LIMIT 1`)
		if err != nil {
			return nil, err
		}
		defer seek.Close()
		var out []int64
		for cur := lo - 1; ; {
			var next int64
			err := seek.QueryRowContext(ctx, tier, cur, to).Scan(&next)
			if errors.Is(err, sql.ErrNoRows) {
				return out, nil
			}
			if err != nil {
				return nil, err
			}
			out = append(out, next)
			cur = next
		}
	}
	type blob struct {
		id      int64
		data    []byte
		head    bool
		refetch bool
		kind    metric.Kind
		pts     []point
		err     error
	}
	col := `data`
	if prefix > 0 {
		col = fmt.Sprintf(`substr(data, 1, %d)`, prefix)
	}
	var blobs []blob
	var slab []byte
	add := func(head bool, id int64, data sql.RawBytes) {
		if !head {
			// The driver hands each row's blob in memory of its own
			// (modernc.org/sqlite copies it out of SQLite for every row;
			// TestRawBlobsOwned checks it): kept as it is, not copied again.
			blobs = append(blobs, blob{id: id, data: data})
			return
		}
		// Head rows are small: they share slabs.
		if cap(slab)-len(slab) < len(data) {
			slab = make([]byte, 0, max(1<<20, len(data)))
		}
		at := len(slab)
		slab = append(slab, data...)
		blobs = append(blobs, blob{id: id, data: slab[at:len(slab):len(slab)], head: true})
	}
	// Closed chunks decode a batch at a time into memory reused from one
	// batch to the next (fold keeps nothing), so what is decoded at once
	// stays bounded however many series a start has (a year's daily
	// histograms of 1,000 series would take ~150 MB); head points are kept
	// until the chunks are done.
	const batch = 256
	var bufs []*decodeBuf
	// byPartition decodes and folds the blobs of a start partition by
	// partition on all cores (see partition above); false if there are too
	// few partitions for that.
	// decodeBlob decodes b, fetched from table at start st, into buf.
	decodeBlob := func(table string, st int64, b *blob, buf *decodeBuf) {
		var o decodeOptions
		if opts != nil {
			o = opts(b.id)
		}
		o.buf = buf
		b.kind, b.pts, b.err = decodeChunkWith(b.data, o)
		if b.err != nil && prefix > 0 && len(b.data) == prefix {
			b.refetch, b.err = true, nil // the prefix was too short
		}
		if b.err != nil {
			b.err = fmt.Errorf("%s %d/%d of series %d: %w", table, tier, st, b.id, b.err)
		}
	}
	var pbufs []*decodeBuf // a worker's, reused from one start to the next
	byPartition := func(table string, st int64, each func(st int64, blobs []blob) error) (bool, error) {
		idx := map[int][]int{}
		var keys []int
		for i := range blobs {
			p := partition(blobs[i].id)
			if _, ok := idx[p]; !ok {
				keys = append(keys, p)
			}
			idx[p] = append(idx[p], i)
		}
		workers := min(runtime.GOMAXPROCS(0), len(keys))
		if workers < 2 {
			return false, nil
		}
		errs := make([]error, len(keys))
		for len(pbufs) < workers {
			pbufs = append(pbufs, &decodeBuf{})
		}
		parallel(len(keys), workers, func(w, k int) {
			for _, i := range idx[keys[k]] {
				b := &blobs[i]
				if decodeBlob(table, st, b, pbufs[w]); b.err != nil {
					errs[k] = b.err
					return
				}
				if err := each(st, blobs[i:i+1]); err != nil {
					errs[k] = err
					return
				}
				b.pts = nil
			}
		})
		for _, err := range errs {
			if err != nil {
				return true, err
			}
		}
		return true, nil
	}
	// process decodes the blobs fetched from table at start st (all of the
	// head's) on all cores, a batch at a time, and hands each batch to each;
	// then calls after, if set, while the blobs' data is still there.
	process := func(table string, st int64, each func(st int64, blobs []blob) error, after func(st int64, blobs []blob) error) error {
		defer func() { blobs = blobs[:0] }()
		if len(blobs) == 0 {
			return nil
		}
		if partition != nil && table == "chunks" && prefix == 0 {
			done, err := byPartition(table, st, each)
			if done || err != nil {
				if err == nil && after != nil {
					err = after(st, blobs)
				}
				return err
			}
		}
		for lo := 0; lo < len(blobs); lo += batch {
			part := blobs[lo:min(lo+batch, len(blobs))]
			for len(bufs) < len(part) {
				bufs = append(bufs, &decodeBuf{})
			}
			// kb is the worker's memory for head points, which are kept.
			decode := func(i int, kb *decodeBuf) {
				buf := bufs[i]
				if part[i].head {
					buf = kb
				}
				decodeBlob(table, st, &part[i], buf)
			}
			kbs := make([]*decodeBuf, min(runtime.GOMAXPROCS(0), max(1, len(part)/64)))
			for w := range kbs {
				kbs[w] = &decodeBuf{keep: true}
			}
			parallel(len(part), len(kbs), func(w, i int) { decode(i, kbs[w]) })
			for i := range part {
				b := &part[i]
				if b.err != nil {
					return b.err
				}
				if !b.refetch {
					continue
				}
				var data []byte
				if err := q.QueryRowContext(ctx, `SELECT data FROM `+table+` WHERE tier = ? AND start = ? AND series = ?`, tier, st, b.id).Scan(&data); err != nil {
					return err
				}
				var o decodeOptions
				if opts != nil {
					o = opts(b.id)
				}
				if b.kind, b.pts, b.err = decodeChunkWith(data, o); b.err != nil {
					return fmt.Errorf("%s %d/%d of series %d: %w", table, tier, st, b.id, b.err)
				}
			}
			if err := each(st, part); err != nil {
				return err
			}
			for i := range part {
				part[i].pts = nil
			}
		}
		if after != nil {
			return after(st, blobs)
		}
		return nil
	}
	// When the selection is a large share of all series, a scan of the
	// range that skips the unselected rows is cheaper than seeking to each
	// selected one (or, for the head, filtering by an IN list per part).
	var want map[int64]struct{}
	if sel.ids != nil {
		var total int
		if err := q.QueryRowContext(ctx, `SELECT count(*) FROM series`).Scan(&total); err != nil {
			return err
		}
		if 2*len(sel.ids) >= total {
			want = make(map[int64]struct{}, len(sel.ids))
			for _, id := range sel.ids {
				want[id] = struct{}{}
			}
		}
	}
	// fetchHead hands each all head rows in range, decoded: they are one
	// window each, fetched by one range query (per part).
	fetchHead := func(each func(st int64, blobs []blob) error) error {
		if want != nil {
			if err := queryRawBlobs(ctx, q, `SELECT series, `+col+` FROM head WHERE tier = ? AND start >= ? AND start < ?`,
				[]any{tier, from, to}, func(id int64, data sql.RawBytes) error {
					if _, ok := want[id]; ok {
						add(true, id, data)
					}
					return nil
				}); err != nil {
				return err
			}
			return process("head", from, each, nil)
		}
		for _, p := range parts {
			if err := queryRawBlobs(ctx, q, `SELECT series, `+col+` FROM head WHERE tier = ? AND start >= ? AND start < ? AND `+p.cond,
				append([]any{tier, from, to}, p.args...), func(id int64, data sql.RawBytes) error {
					add(true, id, data)
					return nil
				}); err != nil {
				return err
			}
		}
		return process("head", from, each, nil)
	}
	// fetchChunks hands each the chunks one chunk start at a time, decoded:
	// one scan of the range (want), or seeks per series at each start.
	fetchChunks := func(each func(st int64, blobs []blob) error, after func(st int64, blobs []blob) error) error {
		lo := alignDown(from, ti.span)
		if want != nil {
			rows, err := q.QueryContext(ctx, `SELECT start, series, `+col+` FROM chunks WHERE tier = ? AND start >= ? AND start < ? ORDER BY start`, tier, lo, to)
			if err != nil {
				return err
			}
			defer rows.Close()
			cur := int64(math.MinInt64)
			for rows.Next() {
				var st, id int64
				var data sql.RawBytes
				if err := rows.Scan(&st, &id, &data); err != nil {
					return err
				}
				if _, ok := want[id]; !ok {
					continue
				}
				if st != cur {
					if err := process("chunks", cur, each, after); err != nil {
						return err
					}
					cur = st
					if err := ctx.Err(); err != nil {
						return err
					}
				}
				add(false, id, data)
			}
			if err := rows.Err(); err != nil {
				return err
			}
			return process("chunks", cur, each, after)
		}
		sts, err := starts("chunks", lo)
		if err != nil {
			return err
		}
		stmts := make([]*sql.Stmt, len(parts))
		for i, p := range parts {
			stmt, err := q.PrepareContext(ctx, `SELECT series, `+col+` FROM chunks WHERE tier = ? AND start = ? AND `+p.cond)
			if err != nil {
				return err
			}
			defer stmt.Close()
			stmts[i] = stmt
		}
		for _, st := range sts {
			if err := ctx.Err(); err != nil {
				return err
			}
			for i, p := range parts {
				if err := queryRawStmt(ctx, stmts[i], append([]any{tier, st}, p.args...), func(id int64, data sql.RawBytes) error {
					add(false, id, data)
					return nil
				}); err != nil {
					return err
				}
			}
			if err := process("chunks", st, each, after); err != nil {
				return err
			}
		}
		return nil
	}
	// inRange is the part of sorted pts that starts in [from, to).
	inRange := func(pts []point) []point {
		if len(pts) == 0 || (pts[0].start >= from && pts[len(pts)-1].start < to) {
			return pts
		}
		lo, _ := slices.BinarySearchFunc(pts, from, func(p point, t int64) int { return cmpInt(p.start, t) })
		hi, _ := slices.BinarySearchFunc(pts, to, func(p point, t int64) int { return cmpInt(p.start, t) })
		return pts[lo:hi]
	}
	type headPoints struct {
		kind metric.Kind
		pts  []point
	}
	heads := map[int64]*headPoints{}
	if err := fetchHead(func(_ int64, blobs []blob) error {
		for _, b := range blobs {
			h := heads[b.id]
			if h == nil {
				h = &headPoints{kind: b.kind}
				heads[b.id] = h
			}
			h.pts = append(h.pts, inRange(b.pts)...)
		}
		return nil
	}); err != nil {
		return err
	}
	for _, h := range heads {
		slices.SortStableFunc(h.pts, func(a, b point) int { return cmpInt(a.start, b.start) })
	}
	var afterChunks func(st int64, blobs []blob) error
	if post != nil {
		afterChunks = func(st int64, blobs []blob) error {
			if len(blobs) == 0 {
				return nil
			}
			raw := make(map[int64][]byte, len(blobs))
			for _, b := range blobs {
				raw[b.id] = b.data
			}
			return post(st, st+ti.span, func(id int64) []byte { return raw[id] })
		}
	}
	if err := fetchChunks(func(st int64, blobs []blob) error {
		for _, b := range blobs {
			pts := inRange(b.pts)
			h := heads[b.id]
			if h == nil || len(h.pts) == 0 {
				if len(pts) > 0 {
					if err := fold(b.id, b.kind, pts); err != nil {
						return err
					}
				}
				continue
			}
			// Interleave the series' head points; one of the same start
			// replaces the chunk's.
			for len(pts) > 0 {
				if len(h.pts) > 0 && h.pts[0].start <= pts[0].start {
					if err := fold(b.id, h.kind, h.pts[:1]); err != nil {
						return err
					}
					if h.pts[0].start == pts[0].start {
						pts = pts[1:]
					}
					h.pts = h.pts[1:]
					continue
				}
				n := len(pts)
				if len(h.pts) > 0 {
					n, _ = slices.BinarySearchFunc(pts, h.pts[0].start, func(p point, t int64) int { return cmpInt(p.start, t) })
				}
				if err := fold(b.id, b.kind, pts[:n]); err != nil {
					return err
				}
				pts = pts[n:]
			}
		}
		return nil
	}, afterChunks); err != nil {
		return err
	}
	ids := make([]int64, 0, len(heads))
	for id, h := range heads {
		if len(h.pts) > 0 {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		if err := fold(id, heads[id].kind, heads[id].pts); err != nil {
			return err
		}
	}
	return nil
}

// parallel calls fn(w, i) for every i in [0, n) on at most workers
// goroutines (never more than GOMAXPROCS; one means the caller's), each
// taking the next i when done with one; w is the goroutine's index, for
// memory of its own. It returns when all calls have.
func parallel(n, workers int, fn func(w, i int)) {
	workers = min(workers, runtime.GOMAXPROCS(0), n)
	if workers <= 1 {
		for i := range n {
			fn(0, i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				fn(w, i)
			}
		})
	}
	wg.Wait()
}
