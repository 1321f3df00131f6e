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
func (s *Store) selectSeries(ctx context.Context, q Query) ([]storedSeries, error) {
	if q.Metric == "" {
		return nil, fmt.Errorf("query: no metric given")
	}
	rows, err := s.db.QueryContext(ctx, `SELECT id, kind, unit, resource, attrs FROM series WHERE name = ? ORDER BY id`, q.Metric)
	if err != nil {
		return nil, s.wrap("reading series", err)
	}
	defer rows.Close()
	var out []storedSeries
	for rows.Next() {
		var ss storedSeries
		var kind int
		var res, attrs string
		if err := rows.Scan(&ss.id, &kind, &ss.unit, &res, &attrs); err != nil {
			return nil, s.wrap("reading series", err)
		}
		ss.kind = metric.Kind(kind)
		if ss.resource, err = parseAttrs(res); err != nil {
			return nil, s.wrap("reading series", err)
		}
		if ss.attrs, err = parseAttrs(attrs); err != nil {
			return nil, s.wrap("reading series", err)
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

// Query merges, per step and per series or group, every stored point whose
// window starts in the step, reading each time from the finest tier that
// still holds it. Rows are ordered by attributes, then time.
func (s *Store) Query(ctx context.Context, q Query) ([]Row, error) {
	series, err := s.selectSeries(ctx, q)
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
	from, to := alignDown(q.From.Unix(), stepS), q.To.Unix()
	if q.To.Nanosecond() > 0 {
		to++
	}
	byID := make(map[int64]*storedSeries, len(series))
	ids := make([]int64, 0, len(series))
	for i := range series {
		byID[series[i].id] = &series[i]
		ids = append(ids, series[i].id)
	}
	type key struct {
		group string
		t     int64
	}
	type acc struct {
		row Row
		m   merger
	}
	accs := map[key]*acc{}
	// One read transaction: a consistent snapshot even while Maintain moves
	// head rows into chunks.
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, s.wrap("querying "+q.Metric, err)
	}
	defer tx.Rollback()
	for _, seg := range s.segments(from, to) {
		pts, err := s.scan(ctx, tx, seg.tier, seg.from, seg.to, selection{ids: ids})
		if err != nil {
			return nil, s.wrap("querying "+q.Metric, err)
		}
		for id, sp := range pts {
			ss := byID[id]
			if ss == nil || sp.kind != ss.kind {
				continue
			}
			group, attrs := groupOf(ss, q.GroupBy)
			// Fold this series' windows per step first, then into the row.
			var cur merger // reused from step to step
			var curT int64
			started := false
			flush := func() {
				if !started {
					return
				}
				k := key{group, curT}
				a := accs[k]
				if a == nil {
					a = &acc{row: Row{Time: time.Unix(curT, 0).UTC(), Step: step, Attributes: attrs, Kind: ss.kind, Unit: ss.unit}, m: *newMerger(ss.kind)}
					accs[k] = a
				}
				r := cur.result()
				a.m.addSeries(&r, true) // cur is reset next: its histogram can move
			}
			for i := range sp.pts {
				t := alignDown(sp.pts[i].start, stepS)
				if !started || t != curT {
					flush()
					cur, curT, started = *newMerger(ss.kind), t, true
				}
				if err := cur.addPoint(&sp.pts[i]); err != nil {
					return nil, s.wrap("querying "+q.Metric, err)
				}
			}
			flush()
		}
	}
	// Sort by the group key already built per series (it is attrKey of the
	// row's attributes), not by a key rebuilt on every comparison.
	type keyed struct {
		group string
		t     int64
		a     *acc
	}
	order := make([]keyed, 0, len(accs))
	for k, a := range accs {
		order = append(order, keyed{k.group, k.t, a})
	}
	slices.SortFunc(order, func(a, b keyed) int {
		if c := strings.Compare(a.group, b.group); c != 0 {
			return c
		}
		return cmpInt(a.t, b.t)
	})
	rows := make([]Row, len(order))
	for i, o := range order {
		rows[i] = o.a.row
		rows[i].Agg = o.a.m.result()
	}
	return rows, nil
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
	series, err := s.selectSeries(ctx, q)
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
