package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// Replay
//
// The daemon writes each closed window to the store (with the pipeline's
// baselines, one transaction) and then hands it to every exporter's outbox.
// A kill -9 between the two leaves a window that the store committed and an
// outbox never saw. WindowKeys and ReadWindow let the daemon find such
// windows at the next start and hand them over then: the store is the record
// of what was committed, the outboxes of what they accepted.
//
// Only the head table is read. A window stays there until Maintain compacts
// its chunk, Grace (10 min by default) after the chunk ended, so the window
// a crash left behind is there at the next start unless the agent ran
// Maintain in between, which it does only after replaying.

// WindowKey identifies one first-tier window held in the head table: its
// start, its duration (the first tier's resolution) and the revision the
// store holds. A window re-emitted with late points is stored whole under its
// new revision, so the store holds one revision per start: the latest
// committed.
type WindowKey struct {
	Start    time.Time
	Duration time.Duration
	Revision int
}

// WindowKeys lists the first-tier windows in the head table that start at or
// after from, oldest first. It costs two index seeks per window (a
// multi-million-row head is not scanned).
func (s *Store) WindowKeys(ctx context.Context, from time.Time) ([]WindowKey, error) {
	res := time.Duration(s.tiers[0].res) * time.Second
	var out []WindowKey
	cur := from.Unix()
	if from.IsZero() {
		cur = math.MinInt64
	}
	for {
		var start, rev int64
		err := s.db.QueryRowContext(ctx, `SELECT start, rev FROM head WHERE tier = 0 AND start >= ? ORDER BY start LIMIT 1`, cur).Scan(&start, &rev)
		if errors.Is(err, sql.ErrNoRows) {
			return out, nil
		}
		if err != nil {
			return nil, s.wrap("listing stored windows", err)
		}
		// Every row of a start carries the same revision: a window is
		// written whole, in one transaction. The last row is read too (one
		// more seek, where max(rev) would read the whole window) in case a
		// window was ever stored in parts.
		var last int64
		if err := s.db.QueryRowContext(ctx, `SELECT rev FROM head WHERE tier = 0 AND start = ? ORDER BY series DESC LIMIT 1`, start).Scan(&last); err != nil {
			return nil, s.wrap("listing stored windows", err)
		}
		rev = max(rev, last)
		out = append(out, WindowKey{Start: time.Unix(start, 0).UTC(), Duration: res, Revision: int(rev)})
		cur = start + 1
	}
}

// ReadOptions shape the windows ReadWindow rebuilds.
type ReadOptions struct {
	// HistMaxSize and HistMaxScale are the limits of the rebuilt histograms
	// (the agent's histogram.max_size and max_scale; 0 means the histogram
	// package's defaults). A stored histogram needing more buckets keeps
	// them: nothing is downscaled on the way out.
	HistMaxSize  int
	HistMaxScale int32
}

// ReadWindow reads the first-tier window starting at start back from the
// head table as the pipeline emitted it: every series' aggregate (counter
// sum and count, gauge sum, count, last, min and max, the histogram, error
// count) with its unit, description and exemplars, under the revision the
// store holds. Series come in the store's order (by series id).
// A start the head table does not hold returns (nil, nil).
func (s *Store) ReadWindow(ctx context.Context, start time.Time, opt ReadOptions) (*metric.Window, error) {
	st := start.Unix()
	wrap := func(err error) error {
		return s.wrap(fmt.Sprintf("reading back window %s", start.UTC().Format(time.RFC3339)), err)
	}
	// The series count first: growing a slice of 105,000 aggregates by
	// appending copies it about twenty times.
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM head WHERE tier = 0 AND start = ?`, st).Scan(&n); err != nil {
		return nil, wrap(err)
	}
	if n == 0 {
		return nil, nil
	}
	rows, err := s.db.QueryContext(ctx, `SELECT h.series, h.rev, h.data, s.name, s.kind, s.unit, s.description, s.resource, s.attrs
		FROM head h JOIN series s ON s.id = h.series WHERE h.tier = 0 AND h.start = ?`, st)
	if err != nil {
		return nil, wrap(err)
	}
	defer rows.Close()
	w := &metric.Window{Start: time.Unix(st, 0).UTC(), Duration: time.Duration(s.tiers[0].res) * time.Second,
		Series: make([]metric.Aggregate, 0, n)}
	byID := make(map[int64]int, n)
	// Series of one window share few resource sets: parse each once.
	attrSets := map[string]metric.Attrs{}
	parse := func(raw sql.RawBytes) (metric.Attrs, error) {
		if a, ok := attrSets[string(raw)]; ok {
			return a, nil
		}
		a, err := parseAttrsFast(raw)
		if err != nil {
			return nil, err
		}
		attrSets[string(raw)] = a
		return a, nil
	}
	for rows.Next() {
		var id, rev int64
		var kind int
		var data, res, attrs sql.RawBytes
		var a metric.Aggregate
		if err := rows.Scan(&id, &rev, &data, &a.Name, &kind, &a.Unit, &a.Description, &res, &attrs); err != nil {
			return nil, wrap(err)
		}
		a.Kind = metric.Kind(kind)
		if a.Resource, err = parse(res); err != nil {
			return nil, wrap(err)
		}
		if a.Attrs, err = parse(attrs); err != nil {
			return nil, wrap(err)
		}
		k, pts, err := decodeChunk(data)
		if err != nil {
			return nil, wrap(fmt.Errorf("series %s: %w", a.Name, err))
		}
		if len(pts) != 1 || pts[0].start != st || k != a.Kind {
			return nil, wrap(fmt.Errorf("%w: head row of series %s holds %d points of kind %v", errCorrupt, a.Name, len(pts), k))
		}
		if err := fillAggregate(&a, &pts[0], opt); err != nil {
			return nil, wrap(fmt.Errorf("series %s: %w", a.Name, err))
		}
		w.Revision = max(w.Revision, int(rev))
		byID[id] = len(w.Series)
		w.Series = append(w.Series, a)
	}
	if err := rows.Err(); err != nil {
		return nil, wrap(err)
	}
	rows.Close()
	if len(w.Series) == 0 {
		return nil, nil
	}
	if err := s.readExemplars(ctx, st, w, byID); err != nil {
		return nil, wrap(err)
	}
	return w, nil
}

// readExemplars attaches the exemplars stored for window st, in the order
// they were written.
func (s *Store) readExemplars(ctx context.Context, st int64, w *metric.Window, byID map[int64]int) error {
	rows, err := s.db.QueryContext(ctx, `SELECT series, trace_id, span_id, value, time, attrs FROM exemplars WHERE start = ? ORDER BY rowid`, st)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id, ns int64
		var tid, sid []byte
		var attrs string
		var e metric.Exemplar
		if err := rows.Scan(&id, &tid, &sid, &e.Value, &ns, &attrs); err != nil {
			return err
		}
		i, ok := byID[id]
		if !ok {
			continue
		}
		copy(e.TraceID[:], tid)
		copy(e.SpanID[:], sid)
		// Write stores a zero time as time.Time{}.UnixNano().
		if ns != 0 && ns != zeroUnixNano {
			e.Time = time.Unix(0, ns).UTC()
		}
		if e.Attrs, err = parseAttrs(attrs); err != nil {
			return err
		}
		if len(e.Attrs) == 0 {
			e.Attrs = nil
		}
		w.Series[i].Exemplars = append(w.Series[i].Exemplars, e)
	}
	return rows.Err()
}

var zeroUnixNano = time.Time{}.UnixNano()

// fillAggregate sets a's values from a stored point (pointOf's inverse).
func fillAggregate(a *metric.Aggregate, p *point, opt ReadOptions) error {
	a.ErrorCount, a.ErrorTracked = p.errCount, p.errTracked
	switch a.Kind {
	case metric.Counter:
		a.Sum, a.Count = p.sum, p.count
	case metric.Gauge:
		a.Sum, a.Count, a.Last, a.Min, a.Max = p.sum, p.count, p.last, p.min, p.max
	case metric.Histogram:
		if p.h == nil {
			return fmt.Errorf("%w: histogram point without buckets", errCorrupt)
		}
		size := opt.HistMaxSize
		if size <= 0 {
			size = histogram.DefaultMaxSize
		}
		scale := opt.HistMaxScale
		if scale == 0 {
			scale = histogram.DefaultMaxScale
		}
		h, err := p.h.histogramSized(size, scale)
		if err != nil {
			return err
		}
		a.Hist = h
	}
	return nil
}

// parseAttrsFast parses what attrsJSON wrote (json.Marshal of a map: an
// object of strings, keys sorted) without encoding/json, which costs more
// than the rest of ReadWindow together; strings with escapes take the slow
// path.
func parseAttrsFast(raw []byte) (metric.Attrs, error) {
	if bytes.IndexByte(raw, '\\') >= 0 {
		return parseAttrs(string(raw))
	}
	b := raw
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return parseAttrs(string(raw))
	}
	b = b[1 : len(b)-1]
	if len(b) == 0 {
		return metric.NewAttrs(nil), nil
	}
	out := make(metric.Attrs, 0, bytes.Count(b, []byte{':'}))
	str := func() (string, bool) {
		if len(b) < 2 || b[0] != '"' {
			return "", false
		}
		i := bytes.IndexByte(b[1:], '"')
		if i < 0 {
			return "", false
		}
		v := string(b[1 : 1+i])
		b = b[2+i:]
		return v, true
	}
	for {
		k, ok := str()
		if !ok || len(b) == 0 || b[0] != ':' {
			return parseAttrs(string(raw))
		}
		b = b[1:]
		v, ok := str()
		if !ok {
			return parseAttrs(string(raw))
		}
		out = append(out, metric.Attr{Key: k, Value: v})
		if len(b) == 0 {
			break
		}
		if b[0] != ',' {
			return parseAttrs(string(raw))
		}
		b = b[1:]
	}
	if !slices.IsSortedFunc(out, func(x, y metric.Attr) int { return strings.Compare(x.Key, y.Key) }) {
		return parseAttrs(string(raw))
	}
	return out, nil
}
