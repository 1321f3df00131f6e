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
// First emissions happen in window order; a re-emission naturally follows
// newer windows.

type window struct {
	idx   int64 // start / window
	start time.Time
	rules *ruleSet

	series    map[string]*agg
	perMetric map[string]int  // series per metric, for max_series
	overflow  map[string]bool // metrics that overflowed (logged once)

	emitted  bool
	dirty    bool // changed since the last emission
	revision int
	freed    bool
}

// agg is one output series in one window.
type agg struct {
	out *outSeries

	sum, last, min, max float64
	lastTime            int64 // UnixNano of last
	count               uint64

	hist *histogram.Histogram
	// histShared is set once hist was handed out in an emitted window; a
	// later update clones it first (copy on write).
	histShared bool

	errSum     float64
	errTracked bool

	// cands holds exemplar candidates: the largest exemplar per power of
	// two of the value, at most maxCandidates of the largest powers.
	cands []metric.Exemplar
}

const maxCandidates = 16

func (a *agg) addGauge(v float64, t time.Time) {
	if a.count == 0 || v < a.min {
		a.min = v
	}
	if a.count == 0 || v > a.max {
		a.max = v
	}
	if ns := t.UnixNano(); a.count == 0 || ns >= a.lastTime {
		a.last, a.lastTime = v, ns
	}
	a.sum += v
	a.count++
}

func (a *agg) addCounter(delta float64, st *rawState) {
	a.sum += delta
	a.count++
	if st.isError {
		a.errSum += delta
	}
}

// addHist merges h (owned by the pipeline) into the aggregate.
func (a *agg) addHist(h *histogram.Histogram, st *rawState, maxSize int, maxScale int32) {
	if st.isError {
		a.errSum += float64(h.Count())
	}
	a.count++
	switch {
	case a.hist == nil && h.Scale() <= maxScale:
		a.hist = h // take ownership, no copy
	case a.hist == nil:
		a.hist = histogram.New(maxSize, maxScale)
		a.hist.Merge(h)
	default:
		if a.histShared {
			a.hist = a.hist.Clone()
			a.histShared = false
		}
		a.hist.Merge(h)
	}
}

// addExemplar keeps e when it is the largest seen in its power of two.
func (a *agg) addExemplar(e *metric.Exemplar) {
	if math.IsNaN(e.Value) || math.IsInf(e.Value, 0) {
		return
	}
	_, exp := math.Frexp(e.Value)
	for i := range a.cands {
		c := &a.cands[i]
		if _, ce := math.Frexp(c.Value); ce == exp && (c.Value < 0) == (e.Value < 0) {
			if e.Value > c.Value {
				*c = *e
				c.Attrs = e.Attrs.Clone()
			}
			return
		}
	}
	if len(a.cands) >= maxCandidates {
		lo := 0
		for i := range a.cands {
			if a.cands[i].Value < a.cands[lo].Value {
				lo = i
			}
		}
		if a.cands[lo].Value >= e.Value {
			return
		}
		a.cands = slices.Delete(a.cands, lo, lo+1)
	}
	c := *e
	c.Attrs = e.Attrs.Clone()
	a.cands = append(a.cands, c)
}

// exemplars chooses the window's exemplars: the one with the largest value,
// and for each quantile q the smallest candidate at or above the window's
// q-quantile (histograms only). The result is sorted by value, without
// duplicates, so at most 1+len(quantiles) exemplars.
func (a *agg) exemplars(quantiles []float64) []metric.Exemplar {
	if len(a.cands) == 0 {
		return nil
	}
	pick := make([]bool, len(a.cands))
	top := 0
	for i := range a.cands {
		if a.cands[i].Value > a.cands[top].Value {
			top = i
		}
	}
	pick[top] = true
	if a.hist != nil && a.hist.Count() > 0 {
		for _, q := range quantiles {
			qv := a.hist.Quantile(q)
			best := -1
			for i := range a.cands {
				if a.cands[i].Value >= qv && (best < 0 || a.cands[i].Value < a.cands[best].Value) {
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
			out = append(out, a.cands[i])
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
		Name: o.name, Unit: o.unit, Description: o.desc, Kind: o.kind,
		Resource: o.resource, Attrs: o.attrs,
		Sum: a.sum, Count: a.count,
		ErrorTracked: a.errTracked,
		Exemplars:    a.exemplars(quantiles),
	}
	if a.errTracked && a.errSum > 0 {
		r.ErrorCount = uint64(math.Round(a.errSum))
	}
	switch o.kind {
	case metric.Gauge:
		r.Last, r.Min, r.Max = a.last, a.min, a.max
	case metric.Histogram:
		if a.hist == nil {
			a.hist = histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		}
		r.Hist = a.hist
		a.histShared = true
		r.Count, r.Sum = a.hist.Count(), a.hist.Sum()
		if r.Count > 0 {
			r.Min, r.Max = a.hist.Min(), a.hist.Max()
		}
	}
	return r
}

// keyed is an aggregate with its identity, sorted outside the lock.
type keyed struct {
	key string
	a   metric.Aggregate
}

// render snapshots the window for an emission (under the pipeline's lock);
// finish sorts it by identity and builds the metric.Window (outside it).
func (w *window) render() []keyed {
	out := make([]keyed, 0, len(w.series))
	for k, a := range w.series {
		out = append(out, keyed{key: k, a: a.aggregate(w.rules.quantiles)})
	}
	return out
}

func finish(ks []keyed, start time.Time, d time.Duration, revision int) *metric.Window {
	slices.SortFunc(ks, func(x, y keyed) int { return strings.Compare(x.key, y.key) })
	mw := &metric.Window{Start: start, Duration: d, Revision: revision, Series: make([]metric.Aggregate, len(ks))}
	for i := range ks {
		mw.Series[i] = ks[i].a
	}
	return mw
}
