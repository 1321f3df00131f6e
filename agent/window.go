package agent

import (
	"math"
	"slices"
	"strings"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// Windows
//
// Windows are [k×window, (k+1)×window) in Unix time, so a 60 s window starts
// on the minute and a 1 s window on the second. A point belongs to the window
// of its own timestamp, whenever it arrives:
//
//   - A window is emitted (OnWindow, Revision 0) once wall time passes its end
//     plus a grace (window/10, between 100 ms and 5 s) that lets the points of
//     a collection stamped just before the boundary arrive.
//   - A point for an emitted window that is not older than `lateness` (its
//     window's end + lateness is still in the future) updates the window,
//     which is emitted again, whole, with Revision+1 at the next tick. Late
//     points that arrive together cause one re-emission.
//   - Points for windows whose end + lateness has passed are dropped and
//     counted (reason="too_late"); points more than one window in the future
//     are dropped (reason="future").
//   - A window's memory is released when its end + lateness has passed.
//
// Emissions happen in window order, first emissions and re-emissions of
// the same tick alike (a re-emission follows the newer windows emitted in
// earlier ticks).

type window struct {
	idx   int64 // start / window
	start time.Time
	rules *ruleSet

	// series holds the aggregates of an open window. At its first emission
	// the window is compacted: the aggregates move into slices of values
	// sorted by identity (a third of the memory of the map of pointers):
	// gauges into closed, counters and histograms into closedC, in 40
	// bytes instead of 64. series keeps only series first seen after that,
	// and those of closedC a late point updated (promoted back to an agg,
	// their closedC entry marked moved).
	series    map[string]*agg
	closed    []agg
	closedC   []cagg
	moved     int             // closedC entries promoted into series
	gen       uint32          // bumped by compaction; invalidates cached *agg
	perMetric map[string]int  // series per metric, for max_series
	overflow  map[string]bool // metrics that overflowed (logged once)

	// touched: cumulative series whose deltas went into the window since
	// its last emission; closing: baselines as of the window for those that
	// moved on to a later window meanwhile (durable.go).
	touched []*rawState
	closing []baseMark

	// snapped: an emission took a snapshot of series, not yet compacted;
	// late holds the aggregates added to series since.
	snapped bool
	late    []*agg

	emitted  bool
	dirty    bool // changed since the last emission
	revision int
	freed    bool
}

// lookup returns the aggregate of key, or nil. A counter or histogram of an
// emitted window is promoted back into series (the caller updates it).
func (w *window) lookup(key string) *agg {
	if len(w.closed) > 0 {
		i, ok := slices.BinarySearchFunc(w.closed, key, func(a agg, k string) int { return strings.Compare(a.out.key, k) })
		if ok {
			return &w.closed[i]
		}
	}
	if len(w.closedC) > 0 {
		i, ok := slices.BinarySearchFunc(w.closedC, key, func(c cagg, k string) int { return strings.Compare(c.out.key, k) })
		if ok && !w.closedC[i].moved {
			c := &w.closedC[i]
			a := new(agg)
			*a = c.value()
			c.moved = true
			w.moved++
			w.add(key, a)
			return a
		}
	}
	return w.series[key]
}

func (w *window) len() int { return len(w.closed) + len(w.closedC) - w.moved + len(w.series) }

// cagg is a counter or histogram aggregate of an emitted window: agg
// without the gauge fields.
type cagg struct {
	out        *outSeries
	sum, x     float64
	ext        *aggExt
	count      uint32
	errTracked bool
	moved      bool // promoted into window.series
}

func (c *cagg) value() agg {
	return agg{out: c.out, sum: c.sum, x: c.x, ext: c.ext, count: c.count, errTracked: c.errTracked}
}

func caggOf(a *agg) cagg {
	return cagg{out: a.out, sum: a.sum, x: a.x, ext: a.ext, count: a.count, errTracked: a.errTracked}
}

func sortAggs(as []*agg) {
	slices.SortFunc(as, func(x, y *agg) int { return strings.Compare(x.out.key, y.out.key) })
}

// mergeAggs merges two slices sorted by identity into one (x when y is
// empty).
func mergeAggs(x, y []*agg) []*agg {
	if len(y) == 0 {
		return x
	}
	if len(x) == 0 {
		return y
	}
	out := make([]*agg, 0, len(x)+len(y))
	i, j := 0, 0
	for i < len(x) && j < len(y) {
		if x[i].out.key <= y[j].out.key {
			out = append(out, x[i])
			i++
		} else {
			out = append(out, y[j])
			j++
		}
	}
	out = append(out, x[i:]...)
	return append(out, y[j:]...)
}

// minOrdered is the size from which orderAggs places a window's aggregates
// by the previous window's order: below it sorting them costs little.
const minOrdered = 1024

// snapshot returns, under the pipeline's lock, the aggregates of w.series
// for an emission; those added after it are kept in w.late for compact.
func (w *window) snapshot() []*agg {
	all := make([]*agg, 0, len(w.series))
	for _, a := range w.series {
		all = append(all, a)
	}
	w.snapped = true
	return all
}

// add puts a new aggregate in w.series.
func (w *window) add(key string, a *agg) {
	w.series[key] = a
	if w.snapped {
		w.late = append(w.late, a)
	}
}

// orderAggs sorts a window's snapshot by identity, outside the pipeline's
// lock. Sorting 100k aggregates by their long identities was the costliest
// part of a window's emission; consecutive windows mostly hold the same
// series, with the same *outSeries, whose rank is its index in the previous
// compacted window (prev, nil for none): those still there are put in place
// by it, without comparing identities, and only the others are sorted and
// merged in. prev's closed and closedC are read without the lock: emit
// (under emitMu) is their only writer, and an aggregate's out never
// changes. placed counts the aggregates put in place by their rank.
func orderAggs(all []*agg, prev *window) (sorted []*agg, placed int) {
	if prev == nil || len(all) < minOrdered {
		sortAggs(all)
		return all, 0
	}
	g := make([]*agg, len(prev.closed))
	c := make([]*agg, len(prev.closedC))
	var rest []*agg
	for _, a := range all {
		r := int(a.out.rank)
		switch {
		case a.out.kind == metric.Gauge && r < len(g) && prev.closed[r].out == a.out && g[r] == nil:
			g[r] = a
		case a.out.kind != metric.Gauge && r < len(c) && prev.closedC[r].out == a.out && c[r] == nil:
			c[r] = a
		default:
			rest = append(rest, a)
		}
	}
	// Merge the two placed runs (holes skipped), both in identity order.
	ordered := all[:0]
	i, j := 0, 0
	for {
		for i < len(g) && g[i] == nil {
			i++
		}
		for j < len(c) && c[j] == nil {
			j++
		}
		if i == len(g) && j == len(c) {
			break
		}
		if j == len(c) || (i < len(g) && g[i].out.key < c[j].out.key) {
			ordered = append(ordered, g[i])
			i++
		} else {
			ordered = append(ordered, c[j])
			j++
		}
	}
	placed = len(ordered)
	sortAggs(rest)
	return mergeAggs(ordered, rest), placed
}

// compact moves the aggregates of w.series into the sorted slices w.closed
// and w.closedC, and with rank sets their outSeries' rank: only for the
// newest emitted window, the next one's previous (a re-emission of an
// older window would move the ranks of most series away from it). sorted holds the snapshot
// of w.series' values sorted by identity; those added to w.series since
// the snapshot (w.late) are sorted here.
func (w *window) compact(sorted []*agg, rank bool) {
	if len(w.series) == 0 {
		w.snapped, w.late = false, nil
		return
	}
	if len(w.late) > 0 {
		sortAggs(w.late)
		sorted = mergeAggs(sorted, w.late)
	}
	// Merge the sorted runs, gauges and the others apart.
	gauges := 0
	for _, a := range sorted {
		if a.out.kind == metric.Gauge {
			gauges++
		}
	}
	g := make([]agg, 0, len(w.closed)+gauges)
	i := 0
	for _, a := range sorted {
		if a.out.kind != metric.Gauge {
			continue
		}
		for i < len(w.closed) && w.closed[i].out.key < a.out.key {
			if rank {
				w.closed[i].out.rank = uint32(len(g))
			}
			g = append(g, w.closed[i])
			i++
		}
		if rank {
			a.out.rank = uint32(len(g)) // for orderAggs (the line is loaded)
		}
		g = append(g, *a)
	}
	for ; i < len(w.closed); i++ {
		if rank {
			w.closed[i].out.rank = uint32(len(g))
		}
		g = append(g, w.closed[i])
	}
	c := make([]cagg, 0, len(w.closedC)-w.moved+len(sorted)-gauges)
	i = 0
	for _, a := range sorted {
		if a.out.kind == metric.Gauge {
			continue
		}
		for i < len(w.closedC) && w.closedC[i].out.key < a.out.key {
			if !w.closedC[i].moved {
				if rank {
					w.closedC[i].out.rank = uint32(len(c))
				}
				c = append(c, w.closedC[i])
			}
			i++
		}
		if i < len(w.closedC) && w.closedC[i].out.key == a.out.key {
			i++ // the promoted entry (moved) replaced by a
		}
		if rank {
			a.out.rank = uint32(len(c))
		}
		c = append(c, caggOf(a))
	}
	for ; i < len(w.closedC); i++ {
		if !w.closedC[i].moved {
			if rank {
				w.closedC[i].out.rank = uint32(len(c))
			}
			c = append(c, w.closedC[i])
		}
	}
	w.closed, w.closedC, w.moved, w.series = g, c, 0, map[string]*agg{}
	w.snapped, w.late = false, nil
	w.gen++
}

// agg is one output series in one window. It is kept small (64 bytes):
// emitted windows hold one per series for the whole lateness.
type agg struct {
	out *outSeries
	sum float64
	// Gauge: x = last, y = min, z = max. Counter and histogram: x is the
	// error sum (increments or observations from points marked as errors).
	x, y, z  float64
	lastTime int64 // gauge: UnixNano of x
	ext      *aggExt
	// count is the number of contributions (gauge samples, counter deltas,
	// histogram points), saturating.
	count uint32
	// errTracked: some contributing series carried a status attribute.
	errTracked bool
}

func (a *agg) inc() {
	if a.count < math.MaxUint32 {
		a.count++
	}
}

// aggExt holds what only histograms and series with exemplars need.
type aggExt struct {
	hist *histogram.Histogram
	// histShared is set once hist was handed out in an emitted window; a
	// later update clones it first (copy on write).
	histShared bool
	// cands holds exemplar candidates: the largest exemplar per power of
	// two of the value, at most maxCandidates of the largest powers.
	cands []metric.Exemplar
}

const maxCandidates = 16

func (a *agg) extra() *aggExt {
	if a.ext == nil {
		a.ext = &aggExt{}
	}
	return a.ext
}

func (a *agg) addGauge(v float64, t time.Time) {
	if a.count == 0 || v < a.y {
		a.y = v
	}
	if a.count == 0 || v > a.z {
		a.z = v
	}
	if ns := t.UnixNano(); a.count == 0 || ns >= a.lastTime {
		a.x, a.lastTime = v, ns
	}
	a.sum += v
	a.inc()
}

func (a *agg) addCounter(delta float64, st *rawState) {
	a.sum += delta
	a.inc()
	if st.isError {
		a.x += delta
	}
}

// addHist merges h (owned by the pipeline) into the aggregate.
func (a *agg) addHist(h *histogram.Histogram, st *rawState, maxSize int, maxScale int32) {
	if st.isError {
		a.x += float64(h.Count())
	}
	a.inc()
	e := a.extra()
	switch {
	case e.hist == nil && h.Scale() <= maxScale:
		e.hist = h // take ownership, no copy
	case e.hist == nil:
		e.hist = histogram.New(maxSize, maxScale)
		e.hist.Merge(h)
	default:
		if e.histShared {
			e.hist = e.hist.Clone()
			e.histShared = false
		}
		e.hist.Merge(h)
	}
}

// addExemplar keeps e when it is the largest seen in its power of two.
func (a *agg) addExemplar(e *metric.Exemplar) {
	if math.IsNaN(e.Value) || math.IsInf(e.Value, 0) {
		return
	}
	x := a.extra()
	_, exp := math.Frexp(e.Value)
	for i := range x.cands {
		c := &x.cands[i]
		if _, ce := math.Frexp(c.Value); ce == exp && (c.Value < 0) == (e.Value < 0) {
			if e.Value > c.Value {
				*c = *e
				c.Attrs = e.Attrs.Clone()
			}
			return
		}
	}
	if len(x.cands) >= maxCandidates {
		lo := 0
		for i := range x.cands {
			if x.cands[i].Value < x.cands[lo].Value {
				lo = i
			}
		}
		if x.cands[lo].Value >= e.Value {
			return
		}
		x.cands = slices.Delete(x.cands, lo, lo+1)
	}
	c := *e
	c.Attrs = e.Attrs.Clone()
	x.cands = append(x.cands, c)
}

// exemplars chooses the window's exemplars: the one with the largest value,
// and for each quantile q the smallest candidate at or above the window's
// q-quantile (histograms only). The result is sorted by value, without
// duplicates, so at most 1+len(quantiles) exemplars.
func (a *agg) exemplars(quantiles []float64) []metric.Exemplar {
	if a.ext == nil || len(a.ext.cands) == 0 {
		return nil
	}
	cands, hist := a.ext.cands, a.ext.hist
	pick := make([]bool, len(cands))
	top := 0
	for i := range cands {
		if cands[i].Value > cands[top].Value {
			top = i
		}
	}
	pick[top] = true
	if hist != nil && hist.Count() > 0 {
		for _, q := range quantiles {
			qv := hist.Quantile(q)
			best := -1
			for i := range cands {
				if cands[i].Value >= qv && (best < 0 || cands[i].Value < cands[best].Value) {
					best = i
				}
			}
			if best >= 0 {
				pick[best] = true
			}
		}
	}
	var out []metric.Exemplar
	for i, p := range pick {
		if p {
			out = append(out, cands[i])
		}
	}
	slices.SortFunc(out, func(x, y metric.Exemplar) int {
		switch {
		case x.Value < y.Value:
			return -1
		case x.Value > y.Value:
			return 1
		}
		return 0
	})
	return out
}

// aggregate renders the series for an emitted window. The histogram is
// shared with the emitted window from now on (copy on write).
func (a *agg) aggregate(quantiles []float64) metric.Aggregate {
	o := a.out
	r := metric.Aggregate{
		Name: o.name(), Unit: o.meta.unit, Description: o.meta.desc, Kind: o.kind,
		Resource: o.meta.resource, Attrs: o.attrs,
		Sum: a.sum, Count: uint64(a.count),
		ErrorTracked: a.errTracked,
		Exemplars:    a.exemplars(quantiles),
	}
	switch o.kind {
	case metric.Gauge:
		r.Last, r.Min, r.Max = a.x, a.y, a.z
	case metric.Histogram:
		e := a.extra()
		if e.hist == nil {
			e.hist = histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		}
		r.Hist = e.hist
		e.histShared = true
		r.Count, r.Sum = e.hist.Count(), e.hist.Sum()
		if r.Count > 0 {
			r.Min, r.Max = e.hist.Min(), e.hist.Max()
		}
	}
	if o.kind != metric.Gauge && a.errTracked && a.x > 0 {
		r.ErrorCount = uint64(math.Round(a.x))
	}
	return r
}

// render snapshots a compacted window for an emission (under the
// pipeline's lock), in identity order.
func (w *window) render() []metric.Aggregate {
	out := make([]metric.Aggregate, 0, w.len())
	i, j := 0, 0
	for i < len(w.closed) || j < len(w.closedC) {
		if j == len(w.closedC) || (i < len(w.closed) && w.closed[i].out.key < w.closedC[j].out.key) {
			out = append(out, w.closed[i].aggregate(w.rules.quantiles))
			i++
			continue
		}
		if c := &w.closedC[j]; !c.moved {
			a := c.value()
			out = append(out, a.aggregate(w.rules.quantiles))
			c.ext = a.ext // aggregate may have created it
		}
		j++
	}
	for _, a := range w.series { // none: compact emptied it
		out = append(out, a.aggregate(w.rules.quantiles))
	}
	return out
}
