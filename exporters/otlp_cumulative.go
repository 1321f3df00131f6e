package exporters

import (
	"slices"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// cumulator turns the per-window deltas of counters and histograms into
// running totals per series, for destinations that want cumulative data:
// Prometheus remote write always, OTLP with `temporality: cumulative`.
//
// A closed window can come back with a higher Revision when late points
// updated it; it carries the whole window again, not the change. So the
// cumulator keeps the latest revision of every window that may still be
// revised and folds a window into the base only once it is older than
// maxAge:
//
//	total = base  +  recent[W-k] + … + recent[W-1] + recent[W]
//	        │        └── latest revision of each window, keyed by start ──┘
//	        └── windows whose end is more than maxAge before the newest end
//
// Adding a window twice (a retried export, a re-sent window after restart)
// replaces its entry, so totals never double count. A revision that arrives
// after its window was folded cannot be applied and is reported as too late.
//
// Totals start at zero when the process starts: the first point of a series
// has the start of its first window as start time, and a restart shows up
// downstream as a counter reset (a drop to a smaller total with a new start),
// which Prometheus and OTLP consumers handle. Series idle for idleTTL are
// forgotten (and restart from zero if they come back).
//
// A cumulator is not safe for concurrent use; the exporter's single Export
// goroutine owns it.
type cumulator struct {
	maxAge  time.Duration
	idleTTL time.Duration
	series  map[string]*cumSeries
	newest  time.Time // newest window end seen
}

type cumSeries struct {
	start  time.Time // start of the first window seen: the stable start time
	lastT  time.Time // timestamp of the last point the destination accepted
	seen   time.Time // newest window end that carried the series
	base   cumValue
	recent []cumWindow // ascending by start
	total  cumValue    // base + every recent window, kept up to date
}

type cumValue struct {
	sum  float64
	hist *histogram.Histogram // nil for counters
}

type cumWindow struct {
	start time.Time
	v     cumValue
}

// cumPoint is one cumulative point ready to send.
type cumPoint struct {
	Start time.Time // stable start of the series
	Time  time.Time // point timestamp: the window end, or just after the last accepted point
	Sum   float64
	// Hist is the series' running total: read it (Data, Native) but do not
	// change or keep it; the next add for the series changes it.
	Hist *histogram.Histogram
}

// cumIdleTTL is how long a series may go without data before its totals are
// forgotten.
const cumIdleTTL = time.Hour

func newCumulator(maxAge time.Duration) *cumulator {
	return &cumulator{maxAge: maxAge, idleTTL: max(cumIdleTTL, 2*maxAge), series: map[string]*cumSeries{}}
}

// begin is called once per window before add: it advances the clock, folds
// windows that can no longer be revised and forgets idle series. It reports
// whether w is too old to change totals (a revision that came after its
// window was folded).
func (c *cumulator) begin(w *metric.Window) (tooLate bool) {
	end := w.End()
	if end.After(c.newest) {
		c.newest = end
	}
	horizon := c.newest.Add(-c.maxAge)
	for k, s := range c.series {
		if s.seen.Before(c.newest.Add(-c.idleTTL)) {
			delete(c.series, k)
			continue
		}
		n := 0
		for _, r := range s.recent {
			if r.start.Add(w.Duration).Before(horizon) {
				s.base.add(r.v)
				n++
				continue
			}
			break
		}
		if n > 0 {
			s.recent = slices.Delete(s.recent, 0, n)
		}
	}
	return end.Before(horizon)
}

// add records the window's delta for the series key (sum for a counter, h
// for a histogram; h is cloned) and returns the series' new total. begin must
// have been called for w and must not have reported it too late. A new
// window costs one merge; a revision or a retry recomputes the total from
// the kept windows.
func (c *cumulator) add(key string, w *metric.Window, sum float64, h *histogram.Histogram) cumPoint {
	s := c.series[key]
	if s == nil {
		s = &cumSeries{start: w.Start}
		c.series[key] = s
	}
	if w.End().After(s.seen) {
		s.seen = w.End()
	}
	v := cumValue{sum: sum}
	if h != nil {
		v.hist = h.Clone()
	}
	i, found := slices.BinarySearchFunc(s.recent, w.Start, func(r cumWindow, t time.Time) int { return r.start.Compare(t) })
	if found {
		// A revision (or a retry): replace the window's entry and recompute
		// the total from the base and every kept window.
		s.recent[i].v = v
		s.total = cumValue{sum: s.base.sum}
		if s.base.hist != nil {
			s.total.hist = s.base.hist.Clone()
		}
		for _, r := range s.recent {
			s.total.add(r.v)
		}
	} else {
		// A new window: one merge into the running total.
		s.recent = slices.Insert(s.recent, i, cumWindow{start: w.Start, v: v})
		s.total.add(v)
	}

	p := cumPoint{Start: s.start, Time: w.End(), Sum: s.total.sum, Hist: s.total.hist}
	if !p.Time.After(s.lastT) {
		// Later than a point already accepted: a cumulative series cannot
		// go back in time, so the revised total is stamped just after it.
		p.Time = s.lastT.Add(time.Millisecond)
	}
	return p
}

// commit records that the destination accepted the point of key at t.
func (c *cumulator) commit(key string, t time.Time) {
	if s := c.series[key]; s != nil && t.After(s.lastT) {
		s.lastT = t
	}
}

// forget drops the running total of key: its next add starts from zero,
// like a series seen for the first time.
func (c *cumulator) forget(key string) { delete(c.series, key) }

// lastTime returns the timestamp of the last accepted point of key (zero if none).
func (c *cumulator) lastTime(key string) time.Time {
	if s := c.series[key]; s != nil {
		return s.lastT
	}
	return time.Time{}
}

// len returns the number of series tracked.
func (c *cumulator) len() int { return len(c.series) }

func (v *cumValue) add(o cumValue) {
	v.sum += o.sum
	if o.hist == nil {
		return
	}
	if v.hist == nil {
		v.hist = newLike(o.hist, nil)
	}
	v.hist.Merge(o.hist)
}

// newLike returns an empty histogram with the limits of the first non-nil
// argument.
func newLike(a, b *histogram.Histogram) *histogram.Histogram {
	for _, h := range []*histogram.Histogram{a, b} {
		if h != nil {
			return histogram.New(h.MaxSize(), h.MaxScale())
		}
	}
	return histogram.New(0, 0)
}
