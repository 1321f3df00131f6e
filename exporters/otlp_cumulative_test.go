package exporters

import (
	"testing"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// TestCumulator walks the cumulator through folding, revisions inside and
// outside max_revision_age, retries, and idle eviction.
func TestCumulator(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	win := func(i int, rev int) *metric.Window {
		return &metric.Window{Start: t0.Add(time.Duration(i) * time.Minute), Duration: time.Minute, Revision: rev}
	}
	c := newCumulator(2 * time.Minute)
	hists := map[int]*histogram.Histogram{}
	step := func(i, rev int, sum float64, wantTotal float64, wantTooLate bool) cumPoint {
		t.Helper()
		w := win(i, rev)
		if got := c.begin(w); got != wantTooLate {
			t.Fatalf("window %d rev %d: tooLate = %v, want %v", i, rev, got, wantTooLate)
		}
		if wantTooLate {
			return cumPoint{}
		}
		h := histogram.New(0, 0)
		h.RecordN(float64(i+1), uint64(sum))
		hists[i] = h
		p := c.add("k", w, sum, h)
		if p.Sum != wantTotal || p.Hist.Count() != uint64(wantTotal) {
			t.Fatalf("window %d rev %d: total %g / count %d, want %g", i, rev, p.Sum, p.Hist.Count(), wantTotal)
		}
		if !p.Start.Equal(t0) {
			t.Fatalf("window %d: start %s, want the first window's %s", i, p.Start, t0)
		}
		return p
	}
	for i := range 6 {
		p := step(i, 0, 1, float64(i+1), false)
		if !p.Time.Equal(win(i, 0).End()) {
			t.Fatalf("window %d: time %s, want its end", i, p.Time)
		}
		c.commit("k", p.Time)
	}
	if n := len(c.series["k"].recent); n > 3 {
		t.Errorf("recent windows kept = %d, want at most 3 (2 min of 1 min windows, plus the newest)", n)
	}
	// Revision of window 4 (inside the horizon): 1 → 3, stamped after the
	// last accepted point.
	p := step(4, 1, 3, 8, false)
	if want := win(5, 0).End().Add(time.Millisecond); !p.Time.Equal(want) {
		t.Errorf("revision time %s, want %s", p.Time, want)
	}
	// The same revision again (a retry before commit): same total, same time.
	if p2 := step(4, 1, 3, 8, false); !p2.Time.Equal(p.Time) {
		t.Errorf("retried revision time %s, want %s", p2.Time, p.Time)
	}
	c.commit("k", p.Time)
	// Revision of window 1: folded long ago, too late.
	step(1, 1, 5, 0, true)
	// The histogram total is the merge of every window's latest revision.
	want := histogram.New(0, 0)
	for i := range 6 {
		want.Merge(hists[i])
	}
	got := step(6, 0, 1, 9, false).Hist
	want.Merge(hists[6])
	if got.Count() != want.Count() || got.Sum() != want.Sum() || got.Quantile(0.5) != want.Quantile(0.5) {
		t.Errorf("histogram total count %d sum %g, want %d %g", got.Count(), got.Sum(), want.Count(), want.Sum())
	}
	// Idle for longer than the TTL: forgotten, and back with a new start.
	late := t0.Add(6*time.Minute + cumIdleTTL + 2*time.Minute)
	w := &metric.Window{Start: late, Duration: time.Minute}
	c.begin(w)
	if c.len() != 0 {
		t.Fatalf("idle series kept: %d", c.len())
	}
	if p := c.add("k", w, 2, nil); p.Sum != 2 || !p.Start.Equal(late) || p.Hist != nil {
		t.Errorf("after eviction: %+v, want a new series from %s", p, late)
	}
}
