package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sabakiio/sabaki/metric"
)

// seriesID is the stable identity of a series: FNV-1a (64 bit) over name,
// kind, resource and point attributes, each string terminated by a byte that
// cannot occur in it unescaped. Unit and description are not part of it (a
// producer fixing a description keeps its history). With 64 bits, an agent
// with a million series has about a 1 in 30 million chance of any collision.
func seriesID(name string, kind metric.Kind, resource, attrs metric.Attrs) int64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	str := func(s string) {
		for i := 0; i < len(s); i++ {
			h ^= uint64(s[i])
			h *= prime
		}
		h ^= 0xff
		h *= prime
	}
	str(name)
	h ^= uint64(kind)
	h *= prime
	for _, a := range resource {
		str(a.Key)
		str(a.Value)
	}
	h ^= 0xfe
	h *= prime
	for _, a := range attrs {
		str(a.Key)
		str(a.Value)
	}
	return int64(h)
}

// tierFor returns the tier whose resolution is d.
func (s *Store) tierFor(d time.Duration) (int, error) {
	for i, t := range s.tiers {
		if time.Duration(t.res)*time.Second == d {
			return i, nil
		}
	}
	return 0, fmt.Errorf("window of %s matches no retention tier (first tier resolution %ds must equal agent.window)", d, s.tiers[0].res)
}

const (
	headBatch     = 128 // rows per multi-row INSERT (2 parameters each)
	exemplarBatch = 64  // 7 parameters each
)

// headInsertSQL is a multi-row INSERT of head rows at (tier, start) with
// revision rev: an upsert, or with ignore a plain INSERT OR IGNORE (see
// insertHead). The three integers every row shares are SQL literals, so a
// row binds two parameters (series, data).
func headInsertSQL(rows, tier int, start, rev int64, ignore bool) string {
	var b strings.Builder
	if ignore {
		b.WriteString(`INSERT OR IGNORE INTO head(tier, start, series, rev, data) VALUES `)
	} else {
		b.WriteString(`INSERT INTO head(tier, start, series, rev, data) VALUES `)
	}
	row := "(" + strconv.Itoa(tier) + "," + strconv.FormatInt(start, 10) + ",?," + strconv.FormatInt(rev, 10) + ",?)"
	b.Grow(rows*(len(row)+1) + 150)
	for i := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(row)
	}
	if !ignore {
		// A re-emitted window replaces the values it carries; an older
		// revision arriving late never overwrites a newer one.
		b.WriteString(` ON CONFLICT(tier, start, series) DO UPDATE SET rev = excluded.rev, data = excluded.data WHERE excluded.rev >= head.rev`)
	}
	return b.String()
}

func exemplarInsertSQL(rows int) string {
	var b strings.Builder
	b.WriteString(`INSERT INTO exemplars(start, series, trace_id, span_id, value, time, attrs) VALUES `)
	for i := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`(?,?,?,?,?,?,?)`)
	}
	return b.String()
}

// Write stores a closed window in one transaction: all of it or, on error,
// none of it. The window's duration selects the tier (normally the first;
// backfills may write coarser windows straight into a coarser tier). A window
// re-emitted with late points (same start, higher Revision) replaces the
// values and exemplars of every series it carries; a lower revision arriving
// after a higher one is ignored. Windows older than a slot already rolled up
// mark that slot for Maintain to redo.
func (s *Store) Write(ctx context.Context, w *metric.Window) error {
	if s.readOnly {
		return errReadOnly
	}
	tier, err := s.tierFor(w.Duration)
	if err != nil {
		return err
	}
	ti := s.tiers[tier]
	start := w.Start.Unix()
	if w.Start.Nanosecond() != 0 || start%ti.res != 0 {
		return fmt.Errorf("window start %s is not aligned to %ds", w.Start.UTC().Format(time.RFC3339Nano), ti.res)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writeWindow(ctx, tier, start, w, nil, nil); err != nil {
		return s.wrap(fmt.Sprintf("writing window %s", w.Start.UTC().Format(time.RFC3339)), err)
	}
	return nil
}

// WriteWithState is Write, and in the same transaction records the
// pipeline's baseline changes (see baselines.go): after a crash the window is
// stored if and only if the baselines moved with it. w may be nil (state
// only). An error means nothing was stored: a failed fold of the baselines
// log after the commit (a full disk) is logged, not returned, since a caller
// retrying the write would store the window's exemplars twice (Maintain
// folds the log too).
func (s *Store) WriteWithState(ctx context.Context, w *metric.Window, put []StateRow, del [][]byte) error {
	if s.readOnly {
		return errReadOnly
	}
	if w == nil {
		s.mu.Lock()
		defer s.mu.Unlock()
		err := s.inTxLocked(ctx, func(tx *sql.Tx) error { return s.appendBaselines(ctx, tx, put, del) })
		if err == nil {
			s.foldAfterWrite(ctx)
		}
		return s.wrap("writing baselines", err)
	}
	tier, err := s.tierFor(w.Duration)
	if err != nil {
		return err
	}
	start := w.Start.Unix()
	if w.Start.Nanosecond() != 0 || start%s.tiers[tier].res != 0 {
		return fmt.Errorf("window start %s is not aligned to %ds", w.Start.UTC().Format(time.RFC3339Nano), s.tiers[tier].res)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writeWindow(ctx, tier, start, w, put, del); err != nil {
		return s.wrap(fmt.Sprintf("writing window %s", w.Start.UTC().Format(time.RFC3339)), err)
	}
	s.foldAfterWrite(ctx)
	return nil
}

// foldAfterWrite folds the baselines log when it has grown past the write
// threshold; a failure is logged (see WriteWithState). Called with s.mu
// held.
func (s *Store) foldAfterWrite(ctx context.Context) {
	if err := s.maybeCompactBaselines(ctx, foldOnWrite); err != nil {
		s.log.Warn("folding the baselines log failed; the next Maintain tries again", "err", s.wrap("compacting baselines", err))
	}
}

type headRow struct {
	series int64
	data   []byte // nil: encoded by insertHead's encode from the window's aggregate ord
	ord    int    // position in the window: equal series keep their order
}

func (s *Store) writeWindow(ctx context.Context, tier int, start int64, w *metric.Window, put []StateRow, del [][]byte) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	ti := s.tiers[tier]
	// A row holds the series id and its aggregate's index: its point is
	// encoded a batch at a time by insertHead, and its exemplars' row
	// values by insertExemplars, so no encoding of the whole window is
	// held (they were 25 MB at 105k series, alive through the write).
	// Not kept across windows (4 MB at 105k series): memory held between
	// windows raises the GC's goal all the time, not only while writing.
	rows := make([]headRow, 0, len(w.Series))
	var added []newSeries // series rows this window adds
	skipped, exemplars := 0, 0
	for i := range w.Series {
		a := &w.Series[i]
		if a.Kind < metric.Gauge || a.Kind > metric.Histogram || a.Name == "" {
			skipped++
			continue
		}
		id := seriesID(a.Name, a.Kind, a.Resource, a.Attrs)
		if _, ok := s.known[id]; !ok {
			added = append(added, newSeries{id: id, a: a, ord: len(added)})
		}
		rows = append(rows, headRow{series: id, ord: i})
		exemplars += len(a.Exemplars)
	}
	if err := insertSeries(ctx, tx, added); err != nil {
		return err
	}
	encode := func(b []byte, r *headRow) []byte {
		return encodeChunk(b, w.Series[r.ord].Kind, ti.res, []point{pointOf(&w.Series[r.ord], start)})
	}
	if err := s.insertHeadWith(ctx, tx, tier, start, int64(w.Revision), rows, encode); err != nil {
		return err
	}
	if w.Revision > 0 && tier == 0 {
		for b := 0; b < len(rows); b += 500 {
			part := rows[b:min(b+500, len(rows))]
			args := []any{start}
			for _, r := range part {
				args = append(args, r.series)
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM exemplars WHERE start = ? AND series IN (`+placeholders(len(part))+`)`, args...); err != nil {
				return err
			}
		}
	}
	if tier == 0 && exemplars > 0 {
		if err := insertExemplars(ctx, tx, start, w, rows); err != nil {
			return err
		}
	}
	if next := tier + 1; next < len(s.tiers) && start < s.rolled[next].Load() {
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO dirty(tier, slot) VALUES(?, ?)`, next, alignDown(start, s.tiers[next].res)); err != nil {
			return err
		}
	}
	if err := s.appendBaselines(ctx, tx, put, del); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	for _, n := range added {
		s.known[n.id] = struct{}{}
	}
	if skipped > 0 {
		s.log.Warn("store skipped aggregates with no name or an unknown kind", "window", w.Start, "skipped", skipped)
	}
	return nil
}

// newSeries is a series row to add: a series not in s.known, which is
// therefore not in the table (known is loaded at Open and grows only after
// a commit) unless the window carries it twice.
type newSeries struct {
	id  int64
	a   *metric.Aggregate
	ord int
}

const seriesBatch = 64 // rows per multi-row INSERT (7 parameters each)

func seriesInsertSQL(rows int, ignore bool) string {
	var b strings.Builder
	if ignore {
		b.WriteString(`INSERT OR IGNORE INTO series(id, name, kind, unit, description, resource, attrs) VALUES `)
	} else {
		b.WriteString(`INSERT INTO series(id, name, kind, unit, description, resource, attrs) VALUES `)
	}
	for i := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`(?,?,?,?,?,?,?)`)
	}
	if !ignore {
		b.WriteString(` ON CONFLICT(id) DO UPDATE SET unit = excluded.unit, description = excluded.description`)
	}
	return b.String()
}

// insertSeries adds series rows like insertHead adds head rows, for the same
// reason: in id order, by INSERT OR IGNORE (no statement journal), a batch
// re-run as the upsert when a series came twice (the later one's unit and
// description win, as with the upsert alone). add is sorted in place.
func insertSeries(ctx context.Context, tx *sql.Tx, add []newSeries) error {
	if len(add) == 0 {
		return nil
	}
	slices.SortFunc(add, func(a, b newSeries) int {
		if c := cmp.Compare(a.id, b.id); c != 0 {
			return c
		}
		return cmp.Compare(a.ord, b.ord)
	})
	var full *sql.Stmt
	defer func() {
		if full != nil {
			full.Close()
		}
	}()
	args := make([]any, 0, 7*min(len(add), seriesBatch))
	// The series of one target share their resource attributes (one
	// array): each is encoded once.
	type attrsRef struct {
		p *metric.Attr
		n int
	}
	resources := map[attrsRef]string{}
	var buf []byte
	for b := 0; b < len(add); b += seriesBatch {
		part := add[b:min(b+seriesBatch, len(add))]
		args = args[:0]
		for _, n := range part {
			a := n.a
			res := "{}"
			if len(a.Resource) > 0 {
				ref := attrsRef{&a.Resource[0], len(a.Resource)}
				var ok bool
				if res, ok = resources[ref]; !ok {
					res = attrsJSON(a.Resource)
					resources[ref] = res
				}
			}
			attrs := "{}"
			if len(a.Attrs) > 0 {
				buf = appendAttrsJSON(buf[:0], a.Attrs)
				attrs = string(buf)
			}
			args = append(args, n.id, a.Name, int(a.Kind), a.Unit, a.Description, res, attrs)
		}
		var res sql.Result
		var err error
		if len(part) == seriesBatch {
			if full == nil {
				if full, err = tx.PrepareContext(ctx, seriesInsertSQL(seriesBatch, true)); err != nil {
					return fmt.Errorf("adding series: %w", err)
				}
			}
			res, err = full.ExecContext(ctx, args...)
		} else {
			res, err = tx.ExecContext(ctx, seriesInsertSQL(len(part), true), args...)
		}
		var n int64
		if err == nil {
			n, err = res.RowsAffected()
		}
		if err == nil && n < int64(len(part)) {
			_, err = tx.ExecContext(ctx, seriesInsertSQL(len(part), false), args...)
		}
		if err != nil {
			return fmt.Errorf("adding %d series (%s, ...): %w", len(part), part[0].a.Name, err)
		}
	}
	return nil
}

// insertHead upserts rows at (tier, start) with multi-row INSERTs.
//
// Cost: a multi-row statement that may abort half way (an upsert's UPDATE
// can) makes SQLite copy every page it touches into an in-memory statement
// journal first; with 64 KiB pages that copy was over half of a 105k-series
// window write. So rows go in ascending series order (a window's rows then
// fill the b-tree left to right, each statement touching a page or two
// instead of one per row), and a first emission (revision 0) uses INSERT OR
// IGNORE, which cannot abort and so needs no statement journal. A batch
// that had rows in its slot already (changes < rows: a window written
// twice, or after a crash) is then upserted as well; the rows the first
// statement inserted are replaced by themselves, the others by the upsert's
// revision rule, so the result is the upsert's. Revisions upsert directly.
// rows is sorted in place.
func (s *Store) insertHead(ctx context.Context, tx *sql.Tx, tier int, start, rev int64, rows []headRow) error {
	return s.insertHeadWith(ctx, tx, tier, start, rev, rows, nil)
}

// insertHeadWith is insertHead for rows whose data is encoded a batch at a
// time, by encode (appending a row's chunk to b), into a buffer reused
// across batches and windows.
func (s *Store) insertHeadWith(ctx context.Context, tx *sql.Tx, tier int, start, rev int64, rows []headRow, encode func(b []byte, r *headRow) []byte) error {
	slices.SortFunc(rows, func(a, b headRow) int {
		if c := cmp.Compare(a.series, b.series); c != 0 {
			return c
		}
		return cmp.Compare(a.ord, b.ord)
	})
	var full [2]*sql.Stmt // headBatch rows: upsert, insert or ignore
	defer func() {
		for _, st := range full {
			if st != nil {
				st.Close()
			}
		}
	}()
	exec := func(args []any, n int, ignore bool) (int64, error) {
		if n != headBatch {
			res, err := tx.ExecContext(ctx, headInsertSQL(n, tier, start, rev, ignore), args...)
			if err != nil {
				return 0, err
			}
			return res.RowsAffected()
		}
		k := 0
		if ignore {
			k = 1
		}
		if full[k] == nil {
			st, err := tx.PrepareContext(ctx, headInsertSQL(headBatch, tier, start, rev, ignore))
			if err != nil {
				return 0, err
			}
			full[k] = st
		}
		res, err := full[k].ExecContext(ctx, args...)
		if err != nil {
			return 0, err
		}
		return res.RowsAffected()
	}
	args := s.args[:0]
	buf := s.buf[:0]
	for b := 0; b < len(rows); b += headBatch {
		part := rows[b:min(b+headBatch, len(rows))]
		args = args[:0]
		buf = buf[:0]
		for i := range part {
			r := &part[i]
			data := r.data
			if encode != nil {
				// A slice of buf stays valid if buf grows (it points
				// into the array it was written to).
				off := len(buf)
				buf = encode(buf, r)
				data = buf[off:len(buf):len(buf)]
			}
			args = append(args, r.series, data)
		}
		ignore := rev == 0
		n, err := exec(args, len(part), ignore)
		if err == nil && ignore && n < int64(len(part)) {
			_, err = exec(args, len(part), false)
		}
		if err != nil {
			return err
		}
	}
	clear(args)
	s.args, s.buf = args[:0], buf[:0]
	return nil
}

// insertExemplars inserts the exemplars of the window's rows, exemplarBatch
// at a time.
func insertExemplars(ctx context.Context, tx *sql.Tx, start int64, w *metric.Window, rows []headRow) error {
	const cols = 7
	args := make([]any, 0, exemplarBatch*cols)
	flush := func() error {
		if len(args) == 0 {
			return nil
		}
		_, err := tx.ExecContext(ctx, exemplarInsertSQL(len(args)/cols), args...)
		args = args[:0]
		return err
	}
	for _, r := range rows {
		for _, e := range w.Series[r.ord].Exemplars {
			args = append(args, start, r.series, e.TraceID[:], e.SpanID[:], e.Value, e.Time.UnixNano(), attrsJSON(e.Attrs))
			if len(args) == exemplarBatch*cols {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	return flush()
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

func pointOf(a *metric.Aggregate, start int64) point {
	p := point{start: start, errCount: a.ErrorCount, errTracked: a.ErrorTracked}
	switch a.Kind {
	case metric.Counter:
		p.sum, p.count = a.Sum, a.Count
	case metric.Gauge:
		p.sum, p.count, p.last, p.min, p.max = a.Sum, a.Count, a.Last, a.Min, a.Max
	case metric.Histogram:
		if a.Hist != nil {
			p.h = toHData(a.Hist)
		} else {
			p.h = &hdata{}
		}
	}
	return p
}

// attrsJSON is the JSON object of a's pairs, as series and exemplar rows
// store them: byte for byte what json.Marshal(a.Map()) gives (parseAttrsFast
// reads that form).
func attrsJSON(a metric.Attrs) string {
	if len(a) == 0 {
		return "{}"
	}
	var buf [256]byte
	return string(appendAttrsJSON(buf[:0], a))
}

// appendAttrsJSON appends attrsJSON(a) to b without a map or reflection:
// json.Marshal of a map was most of the 83 MB a window of 105k new series
// allocated. Attrs are sorted by key with unique keys, which is the order
// json.Marshal sorts a map's keys in; a set that is not (built by hand) and
// strings json.Marshal would escape take json.Marshal, so the result is
// the same in every case.
func appendAttrsJSON(b []byte, a metric.Attrs) []byte {
	for i := range a {
		if (i > 0 && a[i-1].Key >= a[i].Key) || !plainJSON(a[i].Key) || !plainJSON(a[i].Value) {
			m, _ := json.Marshal(a.Map())
			return append(b, m...)
		}
	}
	b = append(b, '{')
	for i, kv := range a {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, kv.Key...)
		b = append(b, '"', ':', '"')
		b = append(b, kv.Value...)
		b = append(b, '"')
	}
	return append(b, '}')
}

// plainJSON reports whether json.Marshal writes s between quotes unchanged:
// printable ASCII other than the quote, the backslash and the characters it
// escapes for HTML.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

func parseAttrs(s string) (metric.Attrs, error) {
	var m map[string]string
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, fmt.Errorf("%w: attributes %q: %v", errCorrupt, s, err)
	}
	return metric.NewAttrs(m), nil
}
