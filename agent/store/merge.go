package store

import (
	"errors"
	"math"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// Agg is the merge of stored points: the same fields as metric.Aggregate.
//
// Over time (the windows of one series in a step or rollup slot): Sum, Count
// and ErrorCount add; Min and Max are the extremes; Last is the latest
// window's Last; Hist is the exact merge of the windows' histograms.
// Across series (a -group-by row): the same, except that Last is the sum of
// each series' Last (the total across instances of, say, memory in use).
type Agg struct {
	Sum   float64
	Count uint64
	Last  float64
	Min   float64
	Max   float64
	// Hist is nil for counters and gauges.
	Hist         *histogram.Histogram
	ErrorCount   uint64
	ErrorTracked bool
	// Exemplars is left empty by Query; Store.Exemplars lists them.
	Exemplars []metric.Exemplar

	// acc holds Hist's buckets while a merge is in progress (merger).
	acc *histAcc
}

// merger folds points of one kind.
type merger struct {
	err       error // from addSeries, reported by finish
	kind      metric.Kind
	agg       Agg
	n         int
	lastStart int64
	// countsOnly: the points carry only counts (Query.CountsOnly); Min
	// and Max come out zero.
	countsOnly bool
}

func newMerger(kind metric.Kind) *merger {
	return &merger{kind: kind, agg: Agg{Min: math.Inf(1), Max: math.Inf(-1)}}
}

// addPoint folds one stored window of the series.
func (m *merger) addPoint(p *point) error {
	a := &m.agg
	a.ErrorCount += p.errCount
	a.ErrorTracked = a.ErrorTracked || p.errTracked
	switch m.kind {
	case metric.Counter:
		a.Sum += p.sum
		a.Count += p.count
	case metric.Gauge:
		a.Sum += p.sum
		a.Count += p.count
		a.Min = math.Min(a.Min, p.min)
		a.Max = math.Max(a.Max, p.max)
		if m.n == 0 || p.start >= m.lastStart {
			a.Last, m.lastStart = p.last, p.start
		}
	case metric.Histogram:
		if p.h == nil {
			if m.countsOnly {
				a.Count += p.count // decodeOptions.countsOnly
			}
			break
		}
		if p.h.summary {
			// Buckets not decoded (a partial read): the summary adds up.
			a.Count += p.h.count
			a.Sum += p.h.sum
			if p.h.count > 0 && !m.countsOnly {
				a.Min = math.Min(a.Min, p.h.min)
				a.Max = math.Max(a.Max, p.h.max)
			}
			break
		}
		// Merged bucket by bucket until a histogram is needed (result).
		// point() cannot report an error: windows FromData would refuse
		// take the path below, which does.
		if a.Hist == nil && p.h.eligible() && p.h.countsAddUp() {
			if a.acc == nil {
				a.acc = newHistAcc(p.h)
			} else {
				a.acc.add(p.h, false)
			}
			break
		}
		if err := m.materialize(); err != nil {
			return err
		}
		h, err := p.h.histogram()
		if err != nil {
			return err
		}
		if a.Hist == nil {
			a.Hist = h
		} else {
			a.Hist.Merge(h)
		}
		a.Count = a.Hist.Count()
		a.Sum = a.Hist.Sum()
		a.Min, a.Max = a.Hist.Min(), a.Hist.Max()
	}
	m.n++
	return nil
}

// addSeries folds another series' merge (across series: Last adds up). With
// own, o.Hist is handed over (the caller no longer uses it) and becomes the
// accumulator if there is none yet, instead of being cloned.
func (m *merger) addSeries(o *Agg, own bool) {
	a := &m.agg
	a.ErrorCount += o.ErrorCount
	a.ErrorTracked = a.ErrorTracked || o.ErrorTracked
	switch m.kind {
	case metric.Counter:
		a.Sum += o.Sum
		a.Count += o.Count
	case metric.Gauge:
		a.Sum += o.Sum
		a.Count += o.Count
		a.Min = math.Min(a.Min, o.Min)
		a.Max = math.Max(a.Max, o.Max)
		a.Last += o.Last
	case metric.Histogram:
		if o.acc != nil {
			switch {
			case a.Hist == nil && a.acc == nil && own:
				a.acc = o.acc
			case a.Hist == nil && a.acc == nil:
				d := o.acc.hdata()
				a.acc = newHistAcc(&d)
			case a.acc != nil:
				a.acc.merge(o.acc)
			default:
				h, err := o.acc.histogram()
				if err == nil {
					a.Hist.Merge(h)
				}
				m.err = errors.Join(m.err, err)
			}
			break
		}
		if err := m.materialize(); err != nil {
			m.err = errors.Join(m.err, err)
		}
		if o.Hist == nil {
			// A summary (buckets not read): counts and extremes add up.
			a.Count += o.Count
			a.Sum += o.Sum
			if o.Count > 0 && !m.countsOnly {
				a.Min = math.Min(a.Min, o.Min)
				a.Max = math.Max(a.Max, o.Max)
			}
			break
		}
		if a.Hist == nil && own {
			a.Hist = o.Hist
		} else if a.Hist == nil {
			a.Hist = o.Hist.Clone()
		} else {
			a.Hist.Merge(o.Hist)
		}
		a.Count = a.Hist.Count()
		a.Sum = a.Hist.Sum()
		a.Min, a.Max = a.Hist.Min(), a.Hist.Max()
	}
	m.n++
}

// addSingle folds one point of a series of the given kind as addSeries
// folds the merge of a series' step that holds only that point (a step no
// longer than the tier's resolution), without that merge for the common
// cases: a count, or a histogram merged bucket by bucket.
func (m *merger) addSingle(p *point, kind metric.Kind) error {
	a := &m.agg
	if kind == metric.Histogram && m.kind == metric.Histogram {
		switch {
		case p.h == nil && m.countsOnly:
			a.ErrorCount += p.errCount
			a.ErrorTracked = a.ErrorTracked || p.errTracked
			a.Count += p.count
			m.n++
			return nil
		case p.h != nil && !p.h.summary && a.Hist == nil && p.h.eligible():
			a.ErrorCount += p.errCount
			a.ErrorTracked = a.ErrorTracked || p.errTracked
			if a.acc == nil {
				a.acc = newHistAcc(p.h)
			} else {
				a.acc.add(p.h, false)
			}
			m.n++
			return nil
		}
	}
	one := newMerger(kind)
	one.countsOnly = m.countsOnly
	if err := one.addPoint(p); err != nil {
		return err
	}
	r := one.result()
	m.addSeries(&r, true)
	return nil
}

// materialize turns the accumulated buckets into the histogram.
func (m *merger) materialize() error {
	a := &m.agg
	if a.acc == nil {
		return nil
	}
	h, err := a.acc.histogram()
	a.acc = nil
	if err != nil {
		return err
	}
	a.Hist = h
	a.Count = h.Count()
	a.Sum = h.Sum()
	a.Min, a.Max = h.Min(), h.Max()
	return nil
}

// result returns the merge; Min and Max are 0 when nothing was merged. Its
// Hist may still be accumulated buckets (Agg.acc) while it goes from a
// series' merger into a row's; finish builds it.
func (m *merger) result() Agg {
	a := m.agg
	if a.acc != nil {
		a.Count, a.Sum, a.Min, a.Max = a.acc.count, a.acc.sum, a.acc.min, a.acc.max
	}
	if m.kind == metric.Counter || m.n == 0 || m.countsOnly || (m.kind == metric.Histogram && a.Count == 0) {
		a.Min, a.Max = 0, 0
	}
	return a
}

// finish returns the merge with its histogram built.
func (m *merger) finish() (Agg, error) {
	if err := m.materialize(); err != nil {
		return Agg{}, err
	}
	if m.err != nil {
		return Agg{}, m.err
	}
	return m.result(), nil
}

// point returns the merge as a stored point for a rollup slot.
func (m *merger) point(start int64) point {
	a, err := m.finish()
	if err != nil {
		// Only accumulated windows that FromData would have rejected get
		// here, and eligible() lets none through.
		a = m.result()
	}
	p := point{start: start, sum: a.Sum, count: a.Count, last: a.Last, min: a.Min, max: a.Max,
		errCount: a.ErrorCount, errTracked: a.ErrorTracked}
	if m.kind == metric.Histogram {
		if a.Hist != nil {
			p.h = toHData(a.Hist)
		} else {
			p.h = &hdata{}
		}
	}
	return p
}
