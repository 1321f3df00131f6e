package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/sabakiio/sabaki/metric"
)

// MetricInfo describes one stored metric.
type MetricInfo struct {
	Name   string
	Kind   metric.Kind
	Unit   string
	Series int
}

// Metrics lists the stored metrics by name, kind and unit (a metric whose
// unit changed over time is listed once per unit).
func (s *Store) Metrics(ctx context.Context) ([]MetricInfo, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, kind, unit, count(*) FROM series GROUP BY name, kind, unit ORDER BY name, kind, unit`)
	if err != nil {
		return nil, s.wrap("listing metrics", err)
	}
	defer rows.Close()
	var out []MetricInfo
	for rows.Next() {
		var m MetricInfo
		var kind int
		if err := rows.Scan(&m.Name, &kind, &m.Unit, &m.Series); err != nil {
			return nil, s.wrap("listing metrics", err)
		}
		m.Kind = metric.Kind(kind)
		out = append(out, m)
	}
	return out, s.wrap("listing metrics", rows.Err())
}

// Query selects what to read.
type Query struct {
	// Metric is the metric name (required).
	Metric string
	// Where keeps series whose resource or point attributes have these
	// values (all must match; a point attribute wins over a resource
	// attribute of the same key).
	Where map[string]string
	// GroupBy merges all series sharing these attribute values into one row
	// per step; empty means one row per series and step.
	GroupBy []string
	// From and To bound window starts: [From, To). Rows start at From
	// aligned down to Step.
	From, To time.Time
	// Step is the row width (default: the first tier's resolution). Rows
	// are aligned to the Unix epoch in UTC.
	Step time.Duration
	// CountsOnly reads only what a count needs: rows carry Count,
	// ErrorCount and ErrorTracked (and a counter's Sum, its value); Sum,
	// Min, Max, Last and Hist are left zero. Histogram buckets, most of a
	// long query's work, are not decoded.
	CountsOnly bool
	// Steps, if set, limits each row group (each series without GroupBy)
	// to the step starts it returns for the group's attributes (called
	// once per group; times are aligned down to Step). Histogram buckets
	// are decoded only for those steps where the tier allows it (1 h and
	// coarser tiers store each window's buckets on their own), so reading
	// a day's busiest hour out of a year costs about 1/24 of the year.
	Steps func(group map[string]string) []time.Time
	// Rollups reads each step, where it can, from the coarsest tier whose
	// resolution divides Step and that has already rolled the step up,
	// rather than from the finest tier still holding it. Rollups are exact
	// merges, so the rows are the same (a histogram's Sum may differ in
	// its last bits: float additions in another order) as of the last
	// Maintain, read from far fewer points: a 1 d step over a year reads
	// 365 daily points per series instead of 8,760 hourly ones.
	Rollups bool
	// Peak, with CountsOnly, also finds each group's busiest step (the
	// highest Count, the earliest of equal ones) in every Peak-long period
	// (aligned to the Unix epoch, UTC) of a histogram metric: that step's
	// row carries its whole aggregate, histogram included, as a query
	// without CountsOnly would return it; the other rows carry counts only.
	// Where a tier's chunks span whole periods and the step is the tier's
	// resolution (a day's busiest hour, read from the 1 h tier), each chunk
	// is fetched once for both: the counts are folded, the busiest steps
	// chosen, and their buckets decoded from the chunk already in memory,
	// which halves what a long report reads compared with a CountsOnly
	// query followed by a Steps query. Other periods (in a finer tier, or
	// holding head rows) are read again for their busiest steps only.
	// Peak must be a whole number of steps; it cannot be combined with Steps.
	Peak time.Duration
}

// Row is one step of one series (or group).
type Row struct {
	// Time is the step start (UTC, a multiple of Step since the epoch).
	Time time.Time
	Step time.Duration
	// Attributes are the group-by values, or without GroupBy the series'
	// whole identity: resource attributes and point attributes (point
	// attributes win on a key clash).
	Attributes map[string]string
	Kind       metric.Kind
	Unit       string
	Agg        Agg
}

type storedSeries struct {
	id       int64
	kind     metric.Kind
	unit     string
	resource metric.Attrs
	attrs    metric.Attrs
}

func (ss *storedSeries) get(key string) (string, bool) {
	if v, ok := ss.attrs.Get(key); ok {
		return v, true
	}
	return ss.resource.Get(key)
}

func (ss *storedSeries) identity() map[string]string {
	m := ss.resource.Map()
	for _, a := range ss.attrs {
		m[a.Key] = a.Value
	}
	return m
}

// selectSeries loads the series of q.Metric matching q.Where.
func (s *Store) selectSeries(ctx context.Context, db rowQuerier, q Query) ([]storedSeries, error) {
	if q.Metric == "" {
		return nil, fmt.Errorf("query: no metric given")
	}
	rows, err := db.QueryContext(ctx, `SELECT id, kind, unit, resource, attrs FROM series WHERE name = ? ORDER BY id`, q.Metric)
	if err != nil {
		return nil, s.wrap("reading series", err)
	}
	defer rows.Close()
	var out []storedSeries
	for rows.Next() {
		var ss storedSeries
		var kind int
		var res, attrs sql.RawBytes
		if err := rows.Scan(&ss.id, &kind, &ss.unit, &res, &attrs); err != nil {
			return nil, s.wrap("reading series", err)
		}
		ss.kind = metric.Kind(kind)
		// A series row never changes (its id is a hash of its identity):
		// its attributes are parsed once per Store, not per query.
		if p, ok := s.parsed.Load(ss.id); ok && p.(*storedSeries).unit == ss.unit && p.(*storedSeries).kind == ss.kind {
			ss.resource, ss.attrs = p.(*storedSeries).resource, p.(*storedSeries).attrs
		} else {
			if ss.resource, err = parseAttrs(string(res)); err != nil {
				return nil, s.wrap("reading series", err)
			}
			if ss.attrs, err = parseAttrs(string(attrs)); err != nil {
				return nil, s.wrap("reading series", err)
			}
			c := ss
			s.parsed.Store(ss.id, &c)
		}
		match := true
		for k, v := range q.Where {
			if got, ok := ss.get(k); !ok || got != v {
				match = false
				break
			}
		}
		if match {
			out = append(out, ss)
		}
	}
	return out, s.wrap("reading series", rows.Err())
}

// segment is the part of a query answered by one tier.
type segment struct {
	tier     int
	from, to int64
}

// segments splits [from, to) between tiers: each tier answers from where its
// retention starts (aligned up to the next tier's resolution, so a coarse
// slot is never counted twice) to where the finer tier takes over. Recent
// data therefore always comes from the finest tier, whatever the step.
func (s *Store) segments(from, to int64) []segment {
	now := s.now().Unix()
	var out []segment
	hi := to
	for i, t := range s.tiers {
		lo := now - t.keep
		if i+1 < len(s.tiers) {
			// A tier also answers what the next one has not rolled up yet
			// (a daemon that was down, a backfill): that data is still here
			// until Maintain rolls it up and only then expires it.
			lo = min(alignUp(lo, s.tiers[i+1].res), s.rolled[i+1].Load())
		}
		if i == len(s.tiers)-1 {
			lo = math.MinInt64 / 2 // the coarsest tier answers whatever is left
		}
		a, b := max(from, lo), hi
		if a < b {
			out = append(out, segment{tier: i, from: a, to: b})
		}
		hi = min(hi, lo)
		if hi <= from {
			break
		}
	}
	return out
}

// countsPrefix is how much of a chunk a CountsOnly query fetches: the
// header and the count columns of 120 windows fit with room to spare (a
// chunk whose don't is fetched again whole).
const countsPrefix = 2048

// rollupSegments is segments, except that the part of [from, to) that the
// coarsest tier dividing step has rolled up (whole slots only) is read from
// that tier.
func (s *Store) rollupSegments(from, to, step int64) []segment {
	j := 0
	for i, t := range s.tiers {
		if step%t.res == 0 {
			j = i
		}
	}
	if j == 0 {
		return s.segments(from, to)
	}
	t := s.tiers[j]
	lo := int64(math.MinInt64 / 2)
	if j < len(s.tiers)-1 {
		lo = alignUp(s.now().Unix()-t.keep, t.res)
	}
	a, b := max(from, lo), min(alignDown(to, t.res), s.rolled[j].Load())
	if a >= b {
		return s.segments(from, to)
	}
	var out []segment
	// Newest first, like segments.
	if b < to {
		out = append(out, s.segments(b, to)...)
	}
	out = append(out, segment{tier: j, from: a, to: b})
	if from < a {
		out = append(out, s.segments(from, a)...)
	}
	return out
}

// Query merges, per step and per series or group, every stored point whose
// window starts in the step, reading each time from the finest tier that
// still holds it. Rows are ordered by attributes, then time.
func (s *Store) Query(ctx context.Context, q Query) ([]Row, error) {
	// One read transaction: a consistent snapshot even while Maintain moves
	// head rows into chunks.
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, s.wrap("querying "+q.Metric, err)
	}
	defer tx.Rollback()
	return s.query(ctx, tx, q)
}

func (s *Store) query(ctx context.Context, tx *sql.Tx, q Query) ([]Row, error) {
	// In the transaction: a query holds one connection at a time, so
	// concurrent queries never wait for each other's.
	series, err := s.selectSeries(ctx, tx, q)
	if err != nil {
		return nil, err
	}
	step := q.Step
	if step <= 0 {
		step = time.Duration(s.tiers[0].res) * time.Second
	}
	stepS := int64(step / time.Second)
	if stepS < 1 || step%time.Second != 0 {
		return nil, fmt.Errorf("query: step %s must be a whole number of seconds", step)
	}
	peakS := int64(q.Peak / time.Second)
	if q.Peak != 0 && (!q.CountsOnly || q.Steps != nil || q.Peak%time.Second != 0 || peakS < stepS || peakS%stepS != 0) {
		return nil, fmt.Errorf("query: peak %s needs CountsOnly, no Steps, and a whole number of %s steps", q.Peak, step)
	}
	from, to := alignDown(q.From.Unix(), stepS), q.To.Unix()
	if q.To.Nanosecond() > 0 {
		to++
	}
	nSteps := max(0, (to-from+stepS-1)/stepS)
	// Series are put into groups first; each group keeps its accumulators
	// by step index.
	type group struct {
		key   string
		attrs map[string]string
		steps []int64 // with q.Steps: the wanted step starts, sorted
		accs  stepTable
		// With q.Peak: the busiest steps' whole merges by step index, and
		// the periods whose busiest step is settled.
		peaks map[int64]*merger
		done  map[int64]bool
	}
	var groups []*group
	byKey := map[string]*group{}
	byID := make(map[int64]*storedSeries, len(series))
	groupOfID := make(map[int64]*group, len(series))
	ids := make([]int64, 0, len(series))
	for i := range series {
		ss := &series[i]
		byID[ss.id] = ss
		ids = append(ids, ss.id)
		key, attrs := groupOf(ss, q.GroupBy)
		g := byKey[key]
		if g == nil {
			g = &group{key: key, attrs: attrs}
			if q.Steps != nil {
				for _, t := range q.Steps(attrs) {
					if u := alignDown(t.Unix(), stepS); u >= from && u < to {
						g.steps = append(g.steps, u)
					}
				}
				slices.Sort(g.steps)
				g.steps = slices.Compact(g.steps)
			}
			if peakS > 0 {
				g.peaks, g.done = map[int64]*merger{}, map[int64]bool{}
			}
			byKey[key] = g
			groups = append(groups, g)
		}
		groupOfID[ss.id] = g
	}
	for _, g := range groups {
		g.accs = newStepTable(nSteps, len(groups))
	}
	opts := func(id int64) decodeOptions {
		o := decodeOptions{countsOnly: q.CountsOnly, lazy: true}
		if g := groupOfID[id]; g != nil && q.Steps != nil {
			steps := g.steps
			o.want = func(start int64) bool {
				t := alignDown(start, stepS)
				for len(steps) > 0 && steps[0] < t {
					steps = steps[1:]
				}
				return len(steps) > 0 && steps[0] == t
			}
		}
		return o
	}
	// Groups fold on all cores, each by one goroutine (stream).
	var partition func(id int64) int
	if len(groups) > 1 {
		index := make(map[*group]int, len(groups))
		for i, g := range groups {
			index[g] = i
		}
		partition = func(id int64) int { return index[groupOfID[id]] }
	}
	segs := s.segments(from, to)
	if q.Rollups {
		segs = s.rollupSegments(from, to, stepS)
	}
	// Each series folds its windows per step first, then adds the step to
	// its group's row.
	type seriesState struct {
		ss      *storedSeries
		g       *group
		steps   []int64 // cursor into g.steps
		cur     merger
		curT    int64
		started bool
	}
	states := make(map[int64]*seriesState, len(series))
	for i := range series {
		states[series[i].id] = &seriesState{ss: &series[i], g: groupOfID[series[i].id]}
	}
	flush := func(st *seriesState) {
		if !st.started {
			return
		}
		a := st.g.accs.get((st.curT - from) / stepS)
		if !a.used {
			a.used, a.unit, a.m = true, st.ss.unit, *newMerger(st.ss.kind)
			a.m.countsOnly = q.CountsOnly
		}
		r := st.cur.result()
		a.m.addSeries(&r, true) // cur is reset next: its histogram can move
		st.started = false
	}
	// single: steps are no longer than the tier's resolution, so each
	// holds one point of a series, which goes straight into the row.
	var single bool
	fold := func(id int64, kind metric.Kind, pts []point) error {
		st := states[id]
		if st == nil || kind != st.ss.kind {
			return nil
		}
		for i := range pts {
			t := alignDown(pts[i].start, stepS)
			if q.Steps != nil {
				for len(st.steps) > 0 && st.steps[0] < t {
					st.steps = st.steps[1:]
				}
				if len(st.steps) == 0 || st.steps[0] != t {
					continue
				}
			}
			if single {
				a := st.g.accs.get((t - from) / stepS)
				if !a.used {
					a.used, a.unit, a.m = true, st.ss.unit, *newMerger(st.ss.kind)
					a.m.countsOnly = q.CountsOnly
				}
				if err := a.m.addSingle(&pts[i], kind); err != nil {
					return err
				}
				continue
			}
			if !st.started || t != st.curT {
				flush(st)
				st.cur, st.curT, st.started = *newMerger(kind), t, true
				st.cur.countsOnly = q.CountsOnly
			}
			if err := st.cur.addPoint(&pts[i]); err != nil {
				return err
			}
		}
		return nil
	}
	for _, seg := range segs {
		for _, st := range states {
			st.steps = st.g.steps
		}
		ti := s.tiers[seg.tier]
		single = stepS <= ti.res
		// fused: each chunk spans whole periods and holds one point per
		// series and step, so a period's row counts are final once its
		// chunk start has been folded (peak.go).
		fused := peakS > 0 && stepS == ti.res && ti.span%peakS == 0
		prefix := 0
		if q.CountsOnly && !fused {
			prefix = countsPrefix
		}
		var post func(start, end int64, raw func(id int64) []byte) error
		if fused {
			pr, err := s.newPeakReader(ctx, tx, seg, from, stepS, peakS)
			if err != nil {
				return nil, s.wrap("querying "+q.Metric, err)
			}
			post = func(start, end int64, raw func(id int64) []byte) error {
				var want []peakWant
				for p := alignUp(max(start, seg.from, from), peakS); p+peakS <= min(end, seg.to, to); p += peakS {
					if pr.headed[p] {
						continue // a head row may still add to it: read again below
					}
					for _, g := range groups {
						g.done[p] = true
						if t, ok := busiest(&g.accs, p, peakS, from, stepS); ok {
							want = append(want, peakWant{key: g.key, step: t})
						}
					}
				}
				return pr.read(ids, func(id int64) (string, metric.Kind) {
					st := states[id]
					return st.g.key, st.ss.kind
				}, want, raw, func(key string, idx int64, p *point) error {
					g := byKey[key]
					m := g.peaks[idx]
					if m == nil {
						m = newMerger(metric.Histogram)
						g.peaks[idx] = m
					}
					return m.addSingle(p, metric.Histogram)
				})
			}
		}
		if err := s.stream(ctx, tx, seg.tier, seg.from, seg.to, selection{ids: ids}, prefix, opts, fold, post, partition); err != nil {
			return nil, s.wrap("querying "+q.Metric, err)
		}
		for _, st := range states {
			flush(st)
		}
	}
	// Periods not settled above: their busiest steps are read again, in one
	// query per run of consecutive periods.
	var peakRows map[string]map[int64]Agg
	if peakS > 0 {
		wanted := map[string][]time.Time{}
		var periods []int64
		for _, g := range groups {
			g.accs.each(func(i int64, a *rowAcc) {
				p := alignDown(from+i*stepS, peakS)
				if g.done[p] || a.m.kind != metric.Histogram {
					return
				}
				g.done[p] = true
				if t, ok := busiest(&g.accs, p, peakS, from, stepS); ok {
					wanted[g.key] = append(wanted[g.key], time.Unix(t, 0))
					periods = append(periods, p)
				}
			})
		}
		slices.Sort(periods)
		periods = slices.Compact(periods)
		peakRows = map[string]map[int64]Agg{}
		for i := 0; i < len(periods); {
			j := i + 1
			for j < len(periods) && periods[j] == periods[j-1]+peakS {
				j++
			}
			sub := Query{Metric: q.Metric, Where: q.Where, GroupBy: q.GroupBy, Step: step, Rollups: q.Rollups,
				From: time.Unix(max(periods[i], from), 0), To: time.Unix(min(periods[j-1]+peakS, to), 0),
				Steps: func(attrs map[string]string) []time.Time { return wanted[attrKey(attrs)] }}
			rows, err := s.query(ctx, tx, sub)
			if err != nil {
				return nil, err
			}
			for _, r := range rows {
				k := attrKey(r.Attributes)
				if peakRows[k] == nil {
					peakRows[k] = map[int64]Agg{}
				}
				peakRows[k][(r.Time.Unix()-from)/stepS] = r.Agg
			}
			i = j
		}
	}
	// Rows by group key (attrKey of the row's attributes), then time.
	slices.SortFunc(groups, func(a, b *group) int { return strings.Compare(a.key, b.key) })
	n := 0
	for _, g := range groups {
		g.accs.each(func(int64, *rowAcc) { n++ })
	}
	rows := make([]Row, 0, n)
	for _, g := range groups {
		pr := peakRows[g.key]
		g.accs.each(func(i int64, a *rowAcc) {
			var agg Agg
			var ferr error
			if m := g.peaks[i]; m != nil {
				agg, ferr = m.finish()
			} else if pa, ok := pr[i]; ok {
				agg = pa
			} else {
				agg, ferr = a.m.finish()
			}
			if ferr != nil && err == nil {
				err = ferr
			}
			rows = append(rows, Row{Time: time.Unix(from+i*stepS, 0).UTC(), Step: step, Attributes: g.attrs, Kind: a.m.kind, Unit: a.unit, Agg: agg})
		})
	}
	if err != nil {
		return nil, s.wrap("querying "+q.Metric, err)
	}
	return rows, nil
}

// rowAcc is one row being merged.
type rowAcc struct {
	used bool
	unit string // of the first series merged
	m    merger
}

// stepTable holds a group's rows by step index: a slice when the query's
// steps times its groups are few enough, a map otherwise (a per-series query
// of minutes over months).
type stepTable struct {
	dense  []*rowAcc
	sparse map[int64]*rowAcc
}

func newStepTable(nSteps int64, groups int) stepTable {
	if nSteps*int64(groups) <= 1<<22 {
		return stepTable{dense: make([]*rowAcc, nSteps)}
	}
	return stepTable{sparse: map[int64]*rowAcc{}}
}

func (t *stepTable) get(i int64) *rowAcc {
	if t.dense != nil {
		a := t.dense[i]
		if a == nil {
			a = &rowAcc{}
			t.dense[i] = a
		}
		return a
	}
	a := t.sparse[i]
	if a == nil {
		a = &rowAcc{}
		t.sparse[i] = a
	}
	return a
}

// peek returns row i, or nil if there is none (without making one).
func (t *stepTable) peek(i int64) *rowAcc {
	if t.dense != nil {
		if i < 0 || i >= int64(len(t.dense)) {
			return nil
		}
		return t.dense[i]
	}
	return t.sparse[i]
}

// each calls fn for the rows in step order.
func (t *stepTable) each(fn func(i int64, a *rowAcc)) {
	if t.dense != nil {
		for i, a := range t.dense {
			if a != nil {
				fn(int64(i), a)
			}
		}
		return
	}
	keys := make([]int64, 0, len(t.sparse))
	for k := range t.sparse {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fn(k, t.sparse[k])
	}
}

// groupOf returns the row key and attributes of a series.
func groupOf(ss *storedSeries, groupBy []string) (string, map[string]string) {
	if len(groupBy) == 0 {
		m := ss.identity()
		return attrKey(m), m
	}
	m := make(map[string]string, len(groupBy))
	for _, k := range groupBy {
		if v, ok := ss.get(k); ok {
			m[k] = v
		}
	}
	return attrKey(m), m
}

// attrKey is a canonical string of attributes, for grouping and ordering.
func attrKey(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(m[k])
		b.WriteByte(0)
	}
	return b.String()
}

// ExemplarRow is one exemplar kept with a stored window.
type ExemplarRow struct {
	// Time is the window start the exemplar belongs to.
	Time time.Time
	// Attributes identify the series as in Row (group-by values or the
	// series identity).
	Attributes map[string]string
	Exemplar   metric.Exemplar
}

// TraceIDHex returns the exemplar's trace ID in lower-case hex.
func (e ExemplarRow) TraceIDHex() string { return hex.EncodeToString(e.Exemplar.TraceID[:]) }

// SpanIDHex returns the exemplar's span ID in lower-case hex.
func (e ExemplarRow) SpanIDHex() string { return hex.EncodeToString(e.Exemplar.SpanID[:]) }

// Exemplars returns the exemplars kept for the windows of the matching series
// that start in [From, To), ordered by time then value (largest first).
// Exemplars are kept as long as the first tier's points.
func (s *Store) Exemplars(ctx context.Context, q Query) ([]ExemplarRow, error) {
	series, err := s.selectSeries(ctx, s.db, q)
	if err != nil {
		return nil, err
	}
	byID := make(map[int64]*storedSeries, len(series))
	ids := make([]int64, 0, len(series))
	for i := range series {
		byID[series[i].id] = &series[i]
		ids = append(ids, series[i].id)
	}
	var out []ExemplarRow
	for _, p := range (selection{ids: ids}).parts() {
		args := append([]any{q.From.Unix(), q.To.Unix()}, p.args...)
		rows, err := s.db.QueryContext(ctx, `SELECT start, series, trace_id, span_id, value, time, attrs FROM exemplars WHERE start >= ? AND start < ? AND `+p.cond, args...)
		if err != nil {
			return nil, s.wrap("reading exemplars", err)
		}
		for rows.Next() {
			var start, id, ns int64
			var tid, sid []byte
			var v float64
			var attrs string
			if err := rows.Scan(&start, &id, &tid, &sid, &v, &ns, &attrs); err != nil {
				rows.Close()
				return nil, s.wrap("reading exemplars", err)
			}
			ss := byID[id]
			if ss == nil {
				continue
			}
			e := metric.Exemplar{Value: v, Time: time.Unix(0, ns).UTC()}
			copy(e.TraceID[:], tid)
			copy(e.SpanID[:], sid)
			if e.Attrs, err = parseAttrs(attrs); err != nil {
				rows.Close()
				return nil, s.wrap("reading exemplars", err)
			}
			_, m := groupOf(ss, q.GroupBy)
			out = append(out, ExemplarRow{Time: time.Unix(start, 0).UTC(), Attributes: m, Exemplar: e})
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, s.wrap("reading exemplars", err)
		}
	}
	slices.SortStableFunc(out, func(a, b ExemplarRow) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		switch {
		case a.Exemplar.Value > b.Exemplar.Value:
			return -1
		case a.Exemplar.Value < b.Exemplar.Value:
			return 1
		}
		return strings.Compare(attrKey(a.Attributes), attrKey(b.Attributes))
	})
	return out, nil
}
