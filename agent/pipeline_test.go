package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// t0 is a minute boundary; the agent "starts" there in every test.
var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

type harness struct {
	t    *testing.T
	p    *Pipeline
	reg  *prometheus.Registry
	logs *bytes.Buffer

	mu   sync.Mutex
	now  time.Time
	wins []*metric.Window
}

func newHarness(t *testing.T, cfg PipelineConfig) *harness {
	t.Helper()
	if cfg.Window == 0 {
		cfg.Window = time.Minute
	}
	if cfg.Lateness == 0 {
		cfg.Lateness = 5 * time.Minute
	}
	h := &harness{t: t, reg: prometheus.NewRegistry(), logs: &bytes.Buffer{}, now: t0}
	p, err := NewPipeline(cfg, Settings{
		Logger:     slog.New(slog.NewTextHandler(h.logs, nil)),
		Registerer: h.reg,
		Now:        h.clock,
		OnWindow: func(w *metric.Window) {
			h.mu.Lock()
			h.wins = append(h.wins, w)
			h.mu.Unlock()
		},
		StartTime: t0,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.p = p
	return h
}

func (h *harness) clock() time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.now
}

// at sets the wall clock and runs one Run tick.
func (h *harness) at(d time.Duration) {
	h.mu.Lock()
	h.now = t0.Add(d)
	h.mu.Unlock()
	h.p.tick(t0.Add(d))
}

func (h *harness) consume(ss ...metric.Series) {
	h.t.Helper()
	if err := h.p.Consume(context.Background(), metric.Batch{Source: "test", Series: ss}); err != nil {
		h.t.Fatal(err)
	}
}

// take returns and forgets the windows emitted so far.
func (h *harness) take() []*metric.Window {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := h.wins
	h.wins = nil
	return w
}

func (h *harness) dropped(reason string) float64 {
	return metricValue(h.p.m.dropped[reason])
}

func find(w *metric.Window, name string, attrs ...string) *metric.Aggregate {
	want := attrsOf(attrs...)
	for i := range w.Series {
		if w.Series[i].Name == name && w.Series[i].Attrs.Equal(want) {
			return &w.Series[i]
		}
	}
	return nil
}

func attrsOf(kv ...string) metric.Attrs {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return metric.NewAttrs(m)
}

func counter(temp metric.Temporality, pts ...metric.Point) metric.Series {
	return metric.Series{Name: "requests", Kind: metric.Counter, Temporality: temp, Attrs: attrsOf("route", "/"), Points: pts}
}

func pt(at time.Duration, v float64) metric.Point { return metric.Point{Time: t0.Add(at), Value: v} }

func ptStart(start, at time.Duration, v float64) metric.Point {
	return metric.Point{Start: t0.Add(start), Time: t0.Add(at), Value: v}
}

// sums returns the counter sum of "requests" per emitted window start
// offset (seconds from t0); a window without the series maps to -1.
func sums(ws []*metric.Window) map[int]float64 {
	out := map[int]float64{}
	for _, w := range ws {
		s := -1.0
		if a := find(w, "requests", "route", "/"); a != nil {
			s = a.Sum
		}
		out[int(w.Start.Sub(t0)/time.Second)] = s
	}
	return out
}

func TestCumulativeCounter(t *testing.T) {
	for _, tc := range []struct {
		name string
		pts  []metric.Point
		want map[int]float64 // window start (s from t0) → delta
		drop map[string]float64
	}{
		{
			name: "unknown start sets the baseline",
			pts:  []metric.Point{pt(10*time.Second, 100), pt(20*time.Second, 110), pt(70*time.Second, 130)},
			want: map[int]float64{0: 10, 60: 20},
		},
		{
			name: "decrease is a reset",
			pts:  []metric.Point{pt(10*time.Second, 100), pt(20*time.Second, 110), pt(70*time.Second, 5), pt(80*time.Second, 7)},
			want: map[int]float64{0: 10, 60: 7},
		},
		{
			name: "changed start is a reset even when the value grew",
			pts: []metric.Point{ptStart(-time.Hour, 10*time.Second, 100), ptStart(-time.Hour, 20*time.Second, 110),
				ptStart(65*time.Second, 70*time.Second, 150)},
			want: map[int]float64{0: 10, 60: 150},
		},
		{
			name: "first sight, start after agent start: whole value counts",
			pts:  []metric.Point{ptStart(time.Second, 10*time.Second, 7), ptStart(time.Second, 20*time.Second, 9)},
			want: map[int]float64{0: 9},
		},
		{
			name: "first sight, start equal to agent start: whole value counts",
			pts:  []metric.Point{ptStart(0, 10*time.Second, 7)},
			want: map[int]float64{0: 7},
		},
		{
			name: "first sight, start before agent start: baseline only",
			pts:  []metric.Point{ptStart(-time.Hour, 10*time.Second, 1000), ptStart(-time.Hour, 70*time.Second, 1010)},
			want: map[int]float64{60: 10},
		},
		{
			name: "duplicate and out-of-order points are dropped",
			pts:  []metric.Point{pt(10*time.Second, 100), pt(20*time.Second, 110), pt(20*time.Second, 110), pt(15*time.Second, 105), pt(30*time.Second, 111)},
			want: map[int]float64{0: 11},
			drop: map[string]float64{DropOutOfOrder: 2},
		},
		{
			name: "NaN and Inf are dropped and counted",
			pts:  []metric.Point{pt(10*time.Second, 1), pt(15*time.Second, math.NaN()), pt(16*time.Second, math.Inf(1)), pt(20*time.Second, 4)},
			want: map[int]float64{0: 3},
			drop: map[string]float64{DropNaN: 2},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, PipelineConfig{})
			for _, p := range tc.pts {
				h.at(p.Time.Sub(t0))
				h.consume(counter(metric.Cumulative, p))
			}
			h.at(10 * time.Minute)
			got := sums(h.take())
			if len(got) != len(tc.want) {
				t.Fatalf("windows = %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("window +%ds: delta %v, want %v (all %v)", k, got[k], v, got)
				}
			}
			for r, n := range tc.drop {
				if got := h.dropped(r); got != n {
					t.Errorf("dropped{%s} = %v, want %v", r, got, n)
				}
			}
		})
	}
}

func TestDeltaCounterAndGauge(t *testing.T) {
	h := newHarness(t, PipelineConfig{})
	h.consume(counter(metric.Delta, pt(time.Second, 3), pt(2*time.Second, 4), pt(3*time.Second, -1)))
	g := metric.Series{Name: "temp", Kind: metric.Gauge, Points: []metric.Point{
		pt(5*time.Second, 20), pt(1*time.Second, 10), pt(9*time.Second, 15), pt(10*time.Second, math.NaN())}}
	h.consume(g)
	h.at(time.Minute + 5*time.Second)
	ws := h.take()
	if len(ws) != 1 {
		t.Fatalf("%d windows, want 1", len(ws))
	}
	c := find(ws[0], "requests", "route", "/")
	if c == nil || c.Sum != 7 || c.Kind != metric.Counter {
		t.Errorf("delta counter = %+v, want sum 7", c)
	}
	a := find(ws[0], "temp")
	if a == nil {
		t.Fatal("gauge missing")
	}
	if a.Last != 15 || a.Min != 10 || a.Max != 20 || a.Sum != 45 || a.Count != 3 {
		t.Errorf("gauge = last %v min %v max %v sum %v count %v; want 15 10 20 45 3", a.Last, a.Min, a.Max, a.Sum, a.Count)
	}
	if h.dropped(DropNegativeDelta) != 1 || h.dropped(DropNaN) != 1 {
		t.Errorf("drops negative=%v nan=%v, want 1 1", h.dropped(DropNegativeDelta), h.dropped(DropNaN))
	}
}

func TestWindowAlignment(t *testing.T) {
	for _, tc := range []struct {
		window time.Duration
		at     time.Duration // point time from t0
		start  time.Duration // expected window start from t0
	}{
		{time.Minute, 0, 0},
		{time.Minute, 59*time.Second + 999*time.Millisecond, 0},
		{time.Minute, 60 * time.Second, time.Minute},
		{time.Minute, -time.Nanosecond, -time.Minute},
		{time.Second, 1500 * time.Millisecond, time.Second},
		{time.Second, 999 * time.Millisecond, 0},
		{time.Second, 2 * time.Second, 2 * time.Second},
		{10 * time.Second, 25 * time.Second, 20 * time.Second},
	} {
		h := newHarness(t, PipelineConfig{Window: tc.window})
		h.at(tc.at)
		h.consume(metric.Series{Name: "g", Kind: metric.Gauge, Points: []metric.Point{pt(tc.at, 1)}})
		// Not yet emitted before end + grace.
		end := tc.start + tc.window
		h.at(end)
		if n := len(h.take()); n != 0 {
			t.Errorf("window %s, point +%s: emitted at its end, before the grace", tc.window, tc.at)
		}
		h.at(end + h.p.grace)
		ws := h.take()
		if len(ws) != 1 || !ws[0].Start.Equal(t0.Add(tc.start)) || ws[0].Duration != tc.window {
			t.Errorf("window %s, point +%s: got %v, want one window at +%s", tc.window, tc.at, ws, tc.start)
		}
	}
}

func TestLatePointsReemitAndTooLate(t *testing.T) {
	h := newHarness(t, PipelineConfig{Lateness: 2 * time.Minute})
	h.consume(counter(metric.Delta, pt(10*time.Second, 1)))
	h.at(65 * time.Second)
	ws := h.take()
	if len(ws) != 1 || ws[0].Revision != 0 || sums(ws)[0] != 1 {
		t.Fatalf("first emission = %v", sums(ws))
	}
	// A late point for window 0 within lateness: re-emitted whole, Revision 1.
	h.at(90 * time.Second)
	h.consume(counter(metric.Delta, pt(20*time.Second, 2)), counter(metric.Delta, pt(30*time.Second, 4)))
	h.at(91 * time.Second)
	ws = h.take()
	if len(ws) != 1 || ws[0].Revision != 1 || !ws[0].Start.Equal(t0) || sums(ws)[0] != 7 {
		t.Fatalf("re-emission = %d windows, %+v", len(ws), ws)
	}
	// Nothing changed: no further emission.
	h.at(100 * time.Second)
	if ws := h.take(); len(ws) != 0 {
		t.Fatalf("unchanged window re-emitted: %v", ws)
	}
	// Window 0 ends at +60s; with 2m lateness it is closed for good after +180s.
	h.at(179 * time.Second)
	h.consume(counter(metric.Delta, pt(59*time.Second, 8)))
	h.at(180*time.Second + time.Millisecond)
	ws = h.take()
	if len(ws) != 1 || ws[0].Revision != 2 || sums(ws)[0] != 15 {
		t.Fatalf("second re-emission = %+v", ws)
	}
	h.at(181 * time.Second)
	h.consume(counter(metric.Delta, pt(59*time.Second, 16)))
	h.at(190 * time.Second)
	if ws := h.take(); len(ws) != 0 {
		t.Fatalf("too-late point re-emitted a window: %v", sums(ws))
	}
	if got := h.dropped(DropTooLate); got != 1 {
		t.Errorf("dropped{too_late} = %v, want 1", got)
	}
	// From the future (more than a window ahead of now): dropped.
	h.consume(counter(metric.Delta, pt(190*time.Second+61*time.Second, 1)))
	if got := h.dropped(DropFuture); got != 1 {
		t.Errorf("dropped{future} = %v, want 1", got)
	}
	if n := len(h.p.windows); n != 0 {
		t.Errorf("%d windows still held after their lateness", n)
	}
}

func TestFlushEmitsOpenWindow(t *testing.T) {
	h := newHarness(t, PipelineConfig{})
	h.at(30 * time.Second)
	h.consume(counter(metric.Delta, pt(10*time.Second, 1)))
	h.p.Flush()
	ws := h.take()
	if len(ws) != 1 || ws[0].Revision != 0 || sums(ws)[0] != 1 {
		t.Fatalf("flush = %+v", ws)
	}
	h.p.Flush()
	if ws := h.take(); len(ws) != 0 {
		t.Fatalf("second flush emitted %d windows", len(ws))
	}
}

func TestFirstEmissionsInWindowOrder(t *testing.T) {
	h := newHarness(t, PipelineConfig{Window: time.Second})
	h.at(4500 * time.Millisecond)
	for i := 4; i >= 0; i-- {
		h.consume(counter(metric.Delta, pt(time.Duration(i)*time.Second, 1)))
	}
	h.at(10 * time.Second)
	ws := h.take()
	if len(ws) != 5 {
		t.Fatalf("%d windows", len(ws))
	}
	for i, w := range ws {
		if !w.Start.Equal(t0.Add(time.Duration(i) * time.Second)) {
			t.Errorf("window %d starts at %s", i, w.Start)
		}
	}
}

func newHist(vs ...float64) *histogram.Histogram {
	h := histogram.New(160, 20)
	for _, v := range vs {
		h.Record(v)
	}
	return h
}

func histSeries(temp metric.Temporality, pts ...metric.Point) metric.Series {
	return metric.Series{Name: "latency", Unit: "s", Kind: metric.Histogram, Temporality: temp, Points: pts}
}

func hpt(at time.Duration, h *histogram.Histogram) metric.Point {
	return metric.Point{Time: t0.Add(at), Hist: h}
}

func TestCumulativeHistogramDelta(t *testing.T) {
	base := []float64{0.01, 0.02, 0.05, 0.1}
	more := []float64{0.015, 0.2, 0.3}
	wide := []float64{1e-6, 1e6} // forces a downscale of the cumulative histogram
	for _, tc := range []struct {
		name      string
		prev, cur []float64
		curScale  int32 // max scale of the cumulative histogram at cur (0: 20)
		wantCount uint64
		wantVals  []float64 // the observations the delta should hold
	}{
		{name: "same scale", prev: base, cur: append(append([]float64{}, base...), more...), wantVals: more},
		{name: "cur coarser (range grew)", prev: base, cur: append(append([]float64{}, base...), append(more, wide...)...), wantVals: append(append([]float64{}, more...), wide...)},
		{name: "cur finer (producer changed scale)", prev: base, cur: append(append([]float64{}, base...), more...), curScale: 20, wantVals: more},
		{name: "reset: fewer observations", prev: append(append([]float64{}, base...), more...), cur: []float64{0.5, 0.6}, wantVals: []float64{0.5, 0.6}},
		{name: "reset: same count, a bucket went down", prev: []float64{1, 2}, cur: []float64{1, 4}, wantVals: []float64{1, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, PipelineConfig{})
			prev := newHist(tc.prev...)
			if tc.name == "cur finer (producer changed scale)" {
				prev = histogram.New(160, 3)
				for _, v := range tc.prev {
					prev.Record(v)
				}
			}
			h.consume(histSeries(metric.Cumulative, hpt(10*time.Second, prev)))
			h.consume(histSeries(metric.Cumulative, hpt(20*time.Second, newHist(tc.cur...))))
			h.at(2 * time.Minute)
			ws := h.take()
			if len(ws) != 1 {
				t.Fatalf("%d windows", len(ws))
			}
			a := find(ws[0], "latency")
			if a == nil || a.Hist == nil {
				t.Fatal("histogram missing")
			}
			want := newHist(tc.wantVals...)
			if a.Hist.Count() != want.Count() || a.Count != want.Count() {
				t.Fatalf("delta count = %d (agg %d), want %d", a.Hist.Count(), a.Count, want.Count())
			}
			if math.Abs(a.Hist.Sum()-want.Sum()) > 1e-9 {
				t.Errorf("delta sum = %v, want %v", a.Hist.Sum(), want.Sum())
			}
			// Buckets: the expected observations at the delta's scale.
			if want.Scale() > a.Hist.Scale() {
				want.Downscale(want.Scale() - a.Hist.Scale())
			}
			gd, wd := a.Hist.Data(), want.Data()
			if gd.Scale != wd.Scale || !equalBuckets(gd.Positive, wd.Positive) || gd.ZeroCount != wd.ZeroCount {
				t.Errorf("delta buckets = scale %d %+v, want scale %d %+v", gd.Scale, gd.Positive, wd.Scale, wd.Positive)
			}
			if a.Hist.Max() < want.Max()*(1-1e-9) || a.Hist.Min() > want.Min()*(1+1e-9) {
				t.Errorf("delta min/max = %v/%v, must cover %v/%v", a.Hist.Min(), a.Hist.Max(), want.Min(), want.Max())
			}
		})
	}
}

func equalBuckets(a, b histogram.Buckets) bool {
	if len(a.Counts) != len(b.Counts) || (len(a.Counts) > 0 && a.Offset != b.Offset) {
		return false
	}
	for i := range a.Counts {
		if a.Counts[i] != b.Counts[i] {
			return false
		}
	}
	return true
}

func TestDeltaHistogramsMerge(t *testing.T) {
	h := newHarness(t, PipelineConfig{})
	h.consume(histSeries(metric.Delta, hpt(time.Second, newHist(1, 2, 3))))
	h.at(62 * time.Second)
	h.consume(histSeries(metric.Delta, hpt(2*time.Second, newHist(4, 5)), hpt(61*time.Second, newHist(6))))
	h.at(3 * time.Minute)
	ws := h.take()
	if len(ws) != 2 {
		t.Fatalf("%d windows", len(ws))
	}
	if a := find(ws[0], "latency"); a.Hist.Count() != 5 || a.Hist.Sum() != 15 || a.Hist.Max() != 5 {
		t.Errorf("window 0: count %d sum %v max %v", a.Hist.Count(), a.Hist.Sum(), a.Hist.Max())
	}
	if a := find(ws[1], "latency"); a.Hist.Count() != 1 {
		t.Errorf("window 1: count %d", a.Hist.Count())
	}
}

// A histogram handed out in an emitted window must not change when a late
// point updates the window (copy on write).
func TestEmittedHistogramIsNotMutated(t *testing.T) {
	h := newHarness(t, PipelineConfig{})
	h.consume(histSeries(metric.Delta, hpt(time.Second, newHist(1, 2))))
	h.at(65 * time.Second)
	first := find(h.take()[0], "latency").Hist
	h.consume(histSeries(metric.Delta, hpt(2*time.Second, newHist(3))))
	h.at(66 * time.Second)
	second := find(h.take()[0], "latency").Hist
	if first.Count() != 2 || second.Count() != 3 {
		t.Errorf("counts first %d second %d, want 2 and 3", first.Count(), second.Count())
	}
}

func TestErrorRatioFolding(t *testing.T) {
	keep := []RuleConfig{{KeepAttributes: &KeepAttributesRule{Metric: "*", Keys: []string{"http.route"}}}}
	h := newHarness(t, PipelineConfig{Rules: keep})
	mk := func(status string, vs ...float64) metric.Series {
		return metric.Series{Name: "http.server.request.duration", Kind: metric.Histogram, Temporality: metric.Delta,
			Attrs: attrsOf("http.route", "/a", "http.response.status_code", status), Points: []metric.Point{hpt(time.Second, newHist(vs...))}}
	}
	h.consume(mk("200", 0.1, 0.2, 0.3), mk("503", 1, 2), mk("404", 0.1))
	// Prometheus-style counter with a code label; and one without any status.
	prom := func(code string, v float64) metric.Series {
		return metric.Series{Name: "http_requests_total", Kind: metric.Counter, Temporality: metric.Delta,
			Attrs: attrsOf("http.route", "/b", "code", code), Points: []metric.Point{pt(time.Second, v)}}
	}
	h.consume(prom("200", 10), prom("500", 3), prom("5xx", 1))
	h.consume(metric.Series{Name: "untracked", Kind: metric.Counter, Temporality: metric.Delta,
		Attrs: attrsOf("http.route", "/c"), Points: []metric.Point{pt(time.Second, 1)}})
	h.consume(metric.Series{Name: "otel.errors", Kind: metric.Counter, Temporality: metric.Delta,
		Attrs: attrsOf("http.route", "/d", "error.type", "timeout"), Points: []metric.Point{pt(time.Second, 2)}})
	h.at(2 * time.Minute)
	w := h.take()[0]
	for _, tc := range []struct {
		name, route string
		count, errs uint64
		tracked     bool
		sum         float64
	}{
		{"http.server.request.duration", "/a", 6, 2, true, 0},
		{"http_requests_total", "/b", 3, 4, true, 14},
		{"untracked", "/c", 1, 0, false, 1},
		{"otel.errors", "/d", 1, 2, true, 2},
	} {
		a := find(w, tc.name, "http.route", tc.route)
		if a == nil {
			t.Errorf("%s: missing; have %+v", tc.name, w.Series)
			continue
		}
		if a.Kind == metric.Histogram && a.Hist.Count() != tc.count {
			t.Errorf("%s: count %d, want %d", tc.name, a.Hist.Count(), tc.count)
		}
		if a.Kind == metric.Counter && a.Sum != tc.sum {
			t.Errorf("%s: sum %v, want %v", tc.name, a.Sum, tc.sum)
		}
		if a.ErrorCount != tc.errs || a.ErrorTracked != tc.tracked {
			t.Errorf("%s: errors %d tracked %v, want %d %v", tc.name, a.ErrorCount, a.ErrorTracked, tc.errs, tc.tracked)
		}
	}
}

func TestExemplarChoice(t *testing.T) {
	h := newHarness(t, PipelineConfig{Quantiles: []float64{0.5, 0.99}})
	hist := histogram.New(160, 20)
	for i := 1; i <= 100; i++ {
		hist.Record(float64(i))
	}
	var exs []metric.Exemplar
	for _, v := range []float64{3, 40, 52, 70, 99, 100, 120} {
		exs = append(exs, metric.Exemplar{TraceID: [16]byte{byte(v)}, Value: v, Time: t0.Add(time.Second), Attrs: attrsOf("k", "v")})
	}
	p := hpt(time.Second, hist)
	p.Exemplars = exs
	h.consume(histSeries(metric.Delta, p))
	exs[0].Attrs[0].Value = "mutated" // the pipeline must not keep the caller's slices
	h.at(2 * time.Minute)
	a := find(h.take()[0], "latency")
	var got []float64
	for _, e := range a.Exemplars {
		got = append(got, e.Value)
	}
	// Candidates keep the largest per power of two: 3, 40→52? no: 40 and 52
	// share [32,64) so 52 stays; 70, 99, 100 share [64,128) with 120, so 120.
	// Max: 120. p50 ≈ 50 → smallest candidate ≥ p50 is 52. p99 ≈ 99 → 120.
	if len(got) != 2 || got[0] != 52 || got[1] != 120 {
		t.Errorf("exemplars = %v, want [52 120]", got)
	}
	for _, e := range a.Exemplars {
		if v, _ := e.Attrs.Get("k"); v != "v" {
			t.Errorf("exemplar attrs changed with the caller's batch: %v", e.Attrs)
		}
	}
}

func TestExemplarCandidatesBounded(t *testing.T) {
	var a agg
	for i := range 1000 {
		e := metric.Exemplar{Value: math.Ldexp(1, i%60) * 1.5}
		a.addExemplar(&e)
	}
	if len(a.ext.cands) > maxCandidates {
		t.Fatalf("%d candidates kept", len(a.ext.cands))
	}
	top := a.exemplars(nil)
	if len(top) != 1 || top[0].Value != math.Ldexp(1, 59)*1.5 {
		t.Errorf("max exemplar = %v", top)
	}
}

func TestConcurrentConsume(t *testing.T) {
	h := newHarness(t, PipelineConfig{Window: time.Second})
	h.at(1500 * time.Millisecond)
	const workers, batches, series = 4, 50, 20
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for b := range batches {
				var ss []metric.Series
				for s := range series {
					ss = append(ss, metric.Series{Name: "c", Kind: metric.Counter, Temporality: metric.Delta,
						Attrs:  attrsOf("s", string(rune('a'+s))),
						Points: []metric.Point{pt(time.Duration(b%3)*time.Second, 1)}})
					ss = append(ss, histSeries(metric.Delta, hpt(time.Duration(b%3)*time.Second, newHist(float64(w+1)))))
				}
				if err := h.p.Consume(context.Background(), metric.Batch{Source: "src", Series: ss}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 20 {
			h.p.tick(t0.Add(1500*time.Millisecond + time.Duration(i)*100*time.Millisecond))
		}
	})
	wg.Wait()
	h.p.Flush()
	// Re-emissions repeat a window whole; count each window's last revision.
	last := map[time.Time]*metric.Window{}
	for _, w := range h.take() {
		if l := last[w.Start]; l == nil || w.Revision > l.Revision {
			last[w.Start] = w
		}
	}
	var total float64
	var hcount uint64
	for _, w := range last {
		for _, a := range w.Series {
			if a.Kind == metric.Counter {
				total += a.Sum
			} else {
				hcount += a.Hist.Count()
			}
		}
	}
	if total != workers*batches*series || hcount != workers*batches*series {
		t.Errorf("counter total %v, histogram count %d; want %d each", total, hcount, workers*batches*series)
	}
}

func TestBackpressure(t *testing.T) {
	h := newHarness(t, PipelineConfig{MaxPendingPoints: 10})
	batch := func(n int) metric.Batch {
		var ss []metric.Series
		for i := range n {
			ss = append(ss, metric.Series{Name: "g", Kind: metric.Gauge, Attrs: attrsOf("i", string(rune('a'+i))), Points: []metric.Point{pt(0, 1)}})
		}
		return metric.Batch{Source: "x", Series: ss}
	}
	// Alone, even an oversized batch is accepted.
	if err := h.p.Consume(context.Background(), batch(20)); err != nil {
		t.Fatalf("lone batch: %v", err)
	}
	// With 8 points in flight elsewhere, 5 more exceed the bound.
	h.p.pending.Add(8)
	err := h.p.Consume(context.Background(), batch(5))
	if !errors.Is(err, metric.ErrFull) {
		t.Fatalf("err = %v, want ErrFull", err)
	}
	if err := h.p.Consume(context.Background(), batch(2)); err != nil {
		t.Fatalf("within bound: %v", err)
	}
	h.p.pending.Add(-8)
	if got := metricValue(h.p.m.rejected); got != 1 {
		t.Errorf("rejected = %v", got)
	}
}

func TestReloadAppliesFromNextWindow(t *testing.T) {
	h := newHarness(t, PipelineConfig{})
	mk := func(at time.Duration) metric.Series {
		return metric.Series{Name: "old", Kind: metric.Counter, Temporality: metric.Delta, Points: []metric.Point{pt(at, 1)}}
	}
	h.at(10 * time.Second)
	h.consume(mk(10 * time.Second))
	err := h.p.Reload(PipelineConfig{Window: time.Minute, Lateness: 5 * time.Minute,
		Rules: []RuleConfig{{RenameMetric: &RenameMetricRule{From: "old", To: "new"}}}})
	if err != nil {
		t.Fatal(err)
	}
	h.consume(mk(20*time.Second), mk(70*time.Second))
	h.at(3 * time.Minute)
	ws := h.take()
	if len(ws) != 2 || ws[0].Series[0].Name != "old" || ws[0].Series[0].Sum != 2 || ws[1].Series[0].Name != "new" {
		t.Fatalf("windows after reload: %+v", ws)
	}
	if err := h.p.Reload(PipelineConfig{Window: time.Second}); err == nil || !strings.Contains(err.Error(), "restart") {
		t.Errorf("window change on reload: err = %v", err)
	}
	bad := []RuleConfig{{ReplacePattern: &ReplacePatternRule{Attribute: "a", Pattern: "("}}}
	if err := h.p.Reload(PipelineConfig{Window: time.Minute, Rules: bad}); err == nil {
		t.Error("invalid rule accepted on reload")
	}
}

func TestStaleSeriesForgotten(t *testing.T) {
	h := newHarness(t, PipelineConfig{Lateness: time.Minute})
	h.consume(counter(metric.Cumulative, pt(0, 5)))
	h.at(5 * time.Minute)
	if len(h.p.raw) != 1 {
		t.Fatalf("raw series = %d", len(h.p.raw))
	}
	h.at(13 * time.Minute) // > 2×lateness + 10m of silence
	if len(h.p.raw) != 0 {
		t.Fatalf("stale series kept: %d", len(h.p.raw))
	}
}

func TestMaxWindowSeries(t *testing.T) {
	h := newHarness(t, PipelineConfig{MaxWindowSeries: 3})
	for i := range 5 {
		h.consume(metric.Series{Name: "g", Kind: metric.Gauge, Attrs: attrsOf("i", string(rune('a'+i))), Points: []metric.Point{pt(0, 1)}})
	}
	h.at(2 * time.Minute)
	if ws := h.take(); len(ws[0].Series) != 3 || h.dropped(DropSeriesLimit) != 2 {
		t.Errorf("series %d, dropped %v", len(ws[0].Series), h.dropped(DropSeriesLimit))
	}
}

func TestResourceMergedUnderSeries(t *testing.T) {
	h := newHarness(t, PipelineConfig{Resource: attrsOf("service.name", "agent", "cloud.region", "asia-northeast1")})
	h.consume(metric.Series{Name: "g", Kind: metric.Gauge, Resource: attrsOf("service.name", "app"), Points: []metric.Point{pt(0, 1)}})
	h.at(2 * time.Minute)
	a := h.take()[0].Series[0]
	if !a.Resource.Equal(attrsOf("service.name", "app", "cloud.region", "asia-northeast1")) {
		t.Errorf("resource = %v", a.Resource)
	}
}

func TestNewPipelineRejectsBadConfig(t *testing.T) {
	for _, cfg := range []PipelineConfig{
		{Window: 500 * time.Millisecond},
		{Window: 1500 * time.Millisecond},
		{Window: time.Minute, Lateness: -1},
		{Window: time.Minute, Quantiles: []float64{1.5}},
		{Window: time.Minute, Rules: []RuleConfig{{}}},
	} {
		if _, err := NewPipeline(cfg, Settings{}); err == nil {
			t.Errorf("NewPipeline(%+v) accepted", cfg)
		}
	}
}

// metricValue reads a counter or gauge (the sum over its series).
func metricValue(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 64)
	c.Collect(ch)
	close(ch)
	var v float64
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			panic(err)
		}
		switch {
		case d.Counter != nil:
			v += d.Counter.GetValue()
		case d.Gauge != nil:
			v += d.Gauge.GetValue()
		}
	}
	return v
}

// Run closes windows on the wall clock: with 1 s windows, each window is
// emitted once its end plus the grace has passed, in order, and Run returns
// when its context ends.
func TestRunEmitsOnTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		type emitted struct {
			start time.Time
			at    time.Time
			sum   float64
		}
		var mu sync.Mutex
		var got []emitted
		p, err := NewPipeline(PipelineConfig{Window: time.Second, Lateness: 10 * time.Second}, Settings{
			OnWindow: func(w *metric.Window) {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, emitted{w.Start, time.Now(), w.Series[0].Sum})
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- p.Run(ctx) }()
		start := time.Now().Truncate(time.Second)
		for i := range 5 {
			// Two points per second, at +100 ms and +600 ms.
			for _, off := range []time.Duration{100 * time.Millisecond, 600 * time.Millisecond} {
				time.Sleep(time.Until(start.Add(time.Duration(i)*time.Second + off)))
				err := p.Consume(ctx, metric.Batch{Source: "s", Series: []metric.Series{{Name: "c", Kind: metric.Counter,
					Temporality: metric.Delta, Points: []metric.Point{{Time: time.Now(), Value: 1}}}}})
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		time.Sleep(time.Until(start.Add(6 * time.Second)))
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(got) != 5 {
			t.Fatalf("%d windows emitted, want 5: %+v", len(got), got)
		}
		for i, e := range got {
			ws := start.Add(time.Duration(i) * time.Second)
			end := ws.Add(time.Second).Add(p.grace)
			if !e.start.Equal(ws) || e.sum != 2 {
				t.Errorf("window %d: start %s sum %v, want %s and 2", i, e.start, e.sum, ws)
			}
			if e.at.Before(end) || e.at.After(end.Add(100*time.Millisecond)) {
				t.Errorf("window %d emitted at end%+v, want within 100ms after end+grace (%s)", i, e.at.Sub(ws.Add(time.Second)), p.grace)
			}
		}
	})
}

func TestMarkError(t *testing.T) {
	for _, tc := range []struct {
		attrs            []string
		isError, tracked bool
	}{
		{[]string{"http.response.status_code", "500"}, true, true},
		{[]string{"http.response.status_code", "599"}, true, true},
		{[]string{"http.response.status_code", "499"}, false, true},
		{[]string{"http.response.status_code", "600"}, false, true},
		{[]string{"http.status_code", "503"}, true, true},
		{[]string{"code", "502"}, true, true},
		{[]string{"code", "200"}, false, true},
		{[]string{"status", "5xx"}, true, true},
		{[]string{"status", "2xx"}, false, true},
		{[]string{"status_code", "504"}, true, true},
		{[]string{"response_code_class", "5xx"}, true, true}, // Cloud Run request_count
		{[]string{"response_code_class", "4xx"}, false, true},
		{[]string{"response_code", "503"}, true, true},
		{[]string{"rpc.grpc.status_code", "14"}, true, true},
		{[]string{"rpc.grpc.status_code", "5"}, false, true}, // NOT_FOUND is the client's problem
		{[]string{"rpc.grpc.status_code", "0"}, false, true},
		{[]string{"error.type", "timeout"}, true, true},
		{[]string{"error.type", ""}, false, true},
		{[]string{"http.route", "/"}, false, false},
		{nil, false, false},
	} {
		isErr, tracked := markError(attrsOf(tc.attrs...))
		if isErr != tc.isError || tracked != tc.tracked {
			t.Errorf("%v: error %v tracked %v, want %v %v", tc.attrs, isErr, tracked, tc.isError, tc.tracked)
		}
	}
}

func TestPointsCountedPerSource(t *testing.T) {
	h := newHarness(t, PipelineConfig{})
	h.consume(counter(metric.Delta, pt(time.Second, 1), pt(2*time.Second, 1)))
	if got := metricValue(h.p.m.points.WithLabelValues("test")); got != 2 {
		t.Errorf("sabaki_pipeline_points_total{source=test} = %v, want 2", got)
	}
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"sabaki_pipeline_points_total", "sabaki_pipeline_dropped_points_total",
		"sabaki_pipeline_overflow_series_total", "sabaki_pipeline_windows_total", "sabaki_pipeline_active_series"} {
		if !names[n] {
			t.Errorf("%s not registered", n)
		}
	}
}

// An idle cumulative histogram still shows up in its window, with count 0.
func TestCumulativeHistogramNoChange(t *testing.T) {
	h := newHarness(t, PipelineConfig{})
	h.consume(histSeries(metric.Cumulative, hpt(10*time.Second, newHist(1, 2, 3))))
	h.consume(histSeries(metric.Cumulative, hpt(20*time.Second, newHist(1, 2, 3))))
	h.at(2 * time.Minute)
	ws := h.take()
	if len(ws) != 1 {
		t.Fatalf("%d windows", len(ws))
	}
	a := find(ws[0], "latency")
	if a == nil || a.Hist == nil || a.Hist.Count() != 0 || a.Count != 0 || a.Sum != 0 {
		t.Errorf("idle histogram = %+v", a)
	}
}

// A cumulative point too late for its window moves the baseline: its
// increments are dropped, not counted into the next window.
func TestTooLateCumulativeMovesBaseline(t *testing.T) {
	h := newHarness(t, PipelineConfig{Lateness: time.Minute})
	h.consume(counter(metric.Cumulative, pt(10*time.Second, 100)))
	h.at(10 * time.Minute)
	h.consume(counter(metric.Cumulative, pt(20*time.Second, 150))) // window 0 closed long ago
	h.consume(counter(metric.Cumulative, pt(10*time.Minute, 160)))
	h.at(12 * time.Minute)
	got := sums(h.take())
	if got[600] != 10 || h.dropped(DropTooLate) != 1 {
		t.Errorf("windows %v, too_late %v; want the +600s window = 10 and one drop", got, h.dropped(DropTooLate))
	}
}

// A delta point covers (Start, Time]; one that ends exactly on a window
// boundary (Cloud Monitoring's minute deltas) belongs to the window it covers,
// not to the next one. A delta point without a start keeps its timestamp's
// window.
func TestDeltaEndingOnBoundary(t *testing.T) {
	h := newHarness(t, PipelineConfig{})
	h.at(90 * time.Second)
	h.consume(counter(metric.Delta, ptStart(0, time.Minute, 5)))
	h.consume(counter(metric.Delta, pt(time.Minute, 7)))
	h.at(3 * time.Minute)
	got := sums(h.take())
	want := map[int]float64{0: 5, 60: 7}
	if len(got) != len(want) {
		t.Fatalf("sums %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("window +%ds: %v, want %v (all %v)", k, got[k], v, got)
		}
	}
}

// TestMaxSeriesBoundsRawState: a cardinality explosion under a max_series
// rule keeps state for about `limit` raw series, not one per distinct
// value: delta and gauge series folded into the overflow series keep none
// (every increment still counted), new cumulative series that would fold
// into it are dropped (reason="max_series"); MaxRawSeries caps the rest.
func TestMaxSeriesBoundsRawState(t *testing.T) {
	const limit, routes = 10, 10_000
	h := newHarness(t, PipelineConfig{MaxRawSeries: 100, Rules: []RuleConfig{{MaxSeries: &MaxSeriesRule{Metric: "*", Limit: limit}}}})
	var batch []metric.Series
	for i := range routes {
		batch = append(batch, metric.Series{Name: "delta", Kind: metric.Counter, Temporality: metric.Delta,
			Attrs: attrsOf("route", strconv.Itoa(i)), Points: []metric.Point{pt(1, 1)}})
	}
	h.consume(batch...)
	if n := len(h.p.raw); n > limit {
		t.Errorf("delta explosion: %d raw states kept, want <= %d", n, limit)
	}
	// Cumulative: the first scrape only sets baselines (the producer started
	// before the agent), the second counts.
	for v := range 2 {
		batch = batch[:0]
		for i := range routes {
			batch = append(batch, metric.Series{Name: "cumulative", Kind: metric.Counter, Temporality: metric.Cumulative,
				Attrs:  attrsOf("route", strconv.Itoa(i)),
				Points: []metric.Point{{Start: t0.Add(-time.Hour), Time: t0.Add(time.Duration(2+v) * time.Second), Value: float64(1 + v)}}})
		}
		h.consume(batch...)
	}
	if n := len(h.p.raw); n > 2*limit {
		t.Errorf("after a cumulative explosion: %d raw states kept, want <= %d", n, 2*limit)
	}
	if got := h.dropped(DropMaxSeries); got != 2*(routes-limit) {
		t.Errorf("dropped max_series = %v, want %d", got, 2*(routes-limit))
	}
	// No max_series for gauges: MaxRawSeries caps the states, every sample
	// is still aggregated.
	batch = batch[:0]
	for i := range 1000 {
		batch = append(batch, metric.Series{Name: "gauge" + strconv.Itoa(i), Kind: metric.Gauge, Points: []metric.Point{pt(3, 1)}})
	}
	h.consume(batch...)
	if n := len(h.p.raw); n > 100 {
		t.Errorf("%d raw states kept, want <= MaxRawSeries (100)", n)
	}
	h.at(2 * time.Minute)
	var deltaSum, cumSum float64
	gauges := 0
	for _, w := range h.take() {
		for _, a := range w.Series {
			switch {
			case a.Name == "delta":
				deltaSum += a.Sum
			case a.Name == "cumulative":
				cumSum += a.Sum
			case a.Kind == metric.Gauge:
				gauges++
			}
		}
	}
	if deltaSum != routes {
		t.Errorf("delta increments = %v, want all %d (in at most %d series + overflow)", deltaSum, routes, limit)
	}
	if cumSum != limit {
		t.Errorf("cumulative increments = %v, want %d from the admitted series", cumSum, limit)
	}
	if gauges != 1000 {
		t.Errorf("%d gauge series aggregated, want 1000", gauges)
	}
}

// TestLateUpdatesOfCompactedWindow: an emitted window keeps counters and
// histograms in a compact form and promotes one back on a late point; its
// re-emissions carry every series (gauges, counters, histograms, a series
// first seen late) in identity order with the right values, and the series
// count drops back to zero when the windows are freed.
func TestLateUpdatesOfCompactedWindow(t *testing.T) {
	h := newHarness(t, PipelineConfig{})
	hist := func(vs ...float64) *histogram.Histogram {
		x := histogram.New(160, 20)
		for _, v := range vs {
			x.Record(v)
		}
		return x
	}
	series := func(name string, kind metric.Kind, p metric.Point) metric.Series {
		return metric.Series{Name: name, Kind: kind, Temporality: metric.Delta, Points: []metric.Point{p}}
	}
	hp := func(at time.Duration, vs ...float64) metric.Point {
		return metric.Point{Time: t0.Add(at), Hist: hist(vs...)}
	}
	// Names interleave the kinds in identity order.
	h.consume(series("a.gauge", metric.Gauge, pt(10*time.Second, 4)), series("b.count", metric.Counter, pt(11*time.Second, 2)),
		series("c.gauge", metric.Gauge, pt(12*time.Second, 7)), series("d.hist", metric.Histogram, hp(13*time.Second, 1, 2)),
		series("e.count", metric.Counter, pt(14*time.Second, 5)))
	h.at(70 * time.Second)
	check := func(rev int, want map[string]float64) {
		t.Helper()
		ws := h.take()
		if len(ws) != 1 || ws[0].Revision != rev {
			t.Fatalf("emitted %d windows (want 1, revision %d)", len(ws), rev)
		}
		got := map[string]float64{}
		var names []string
		for _, a := range ws[0].Series {
			names = append(names, a.Name)
			switch a.Kind {
			case metric.Gauge:
				got[a.Name] = a.Last
			case metric.Counter:
				got[a.Name] = a.Sum
			case metric.Histogram:
				got[a.Name] = float64(a.Hist.Count())
			}
		}
		if !slices.IsSorted(names) {
			t.Errorf("revision %d: series not in identity order: %v", rev, names)
		}
		if !maps.Equal(got, want) {
			t.Errorf("revision %d: %v, want %v", rev, got, want)
		}
	}
	check(0, map[string]float64{"a.gauge": 4, "b.count": 2, "c.gauge": 7, "d.hist": 2, "e.count": 5})
	// Late points: a counter, the histogram, a new series, a gauge.
	h.at(80 * time.Second)
	h.consume(series("b.count", metric.Counter, pt(20*time.Second, 1)), series("d.hist", metric.Histogram, hp(21*time.Second, 3)),
		series("bb.count", metric.Counter, pt(22*time.Second, 9)), series("c.gauge", metric.Gauge, pt(23*time.Second, 8)))
	h.at(81 * time.Second)
	check(1, map[string]float64{"a.gauge": 4, "b.count": 3, "bb.count": 9, "c.gauge": 8, "d.hist": 3, "e.count": 5})
	// The promoted counter again, and the other counter.
	h.consume(series("b.count", metric.Counter, pt(25*time.Second, 10)), series("e.count", metric.Counter, pt(26*time.Second, 1)))
	h.at(82 * time.Second)
	check(2, map[string]float64{"a.gauge": 4, "b.count": 13, "bb.count": 9, "c.gauge": 8, "d.hist": 3, "e.count": 6})
	h.at(20 * time.Minute)
	if len(h.p.windows) != 0 || h.p.series != 0 {
		t.Errorf("after the lateness: %d windows, %d series counted", len(h.p.windows), h.p.series)
	}
}

// TestConsumeRemembersPositions: consume tries the state of a position's
// series in the source's previous batch first; a batch in another order, a
// shorter or longer batch, and a series forgotten while silent must count
// exactly as a lookup by identity does.
func TestConsumeRemembersPositions(t *testing.T) {
	route := func(r string, p metric.Point) metric.Series {
		return metric.Series{Name: "requests", Kind: metric.Counter, Temporality: metric.Cumulative, Attrs: attrsOf("route", r), Points: []metric.Point{p}}
	}
	type batch struct {
		at     time.Duration // wall clock (a Run tick) before the batch
		series []metric.Series
	}
	for _, tc := range []struct {
		name    string
		batches []batch
		want    map[string]float64 // sum over all windows per route
		raw     int                // raw series kept at the end
	}{
		{name: "same order", batches: []batch{
			{0, []metric.Series{route("/a", pt(0, 10)), route("/b", pt(0, 100))}},
			{5 * time.Second, []metric.Series{route("/a", pt(5*time.Second, 15)), route("/b", pt(5*time.Second, 130))}},
		}, want: map[string]float64{"/a": 5, "/b": 30}, raw: 2},
		{name: "reordered", batches: []batch{
			{0, []metric.Series{route("/a", pt(0, 10)), route("/b", pt(0, 100))}},
			{5 * time.Second, []metric.Series{route("/b", pt(5*time.Second, 130)), route("/a", pt(5*time.Second, 15))}},
			{10 * time.Second, []metric.Series{route("/a", pt(10*time.Second, 17)), route("/b", pt(10*time.Second, 131))}},
		}, want: map[string]float64{"/a": 7, "/b": 31}, raw: 2},
		{name: "shorter then longer", batches: []batch{
			{0, []metric.Series{route("/a", pt(0, 10)), route("/b", pt(0, 100))}},
			{5 * time.Second, []metric.Series{route("/a", pt(5*time.Second, 12))}},
			{10 * time.Second, []metric.Series{route("/a", pt(10*time.Second, 13)), route("/c", pt(10*time.Second, 7)), route("/b", pt(10*time.Second, 104))}},
		}, want: map[string]float64{"/a": 3, "/b": 4}, raw: 3},
		{name: "forgotten while silent", batches: []batch{
			{0, []metric.Series{route("/a", pt(0, 5))}},
			// 13 min > 2×lateness + 10 min: the state is forgotten, so the
			// series' return is a first sight (its baseline, no delta).
			{13 * time.Minute, []metric.Series{route("/a", pt(13*time.Minute, 50))}},
			{13*time.Minute + 5*time.Second, []metric.Series{route("/a", pt(13*time.Minute+5*time.Second, 60))}},
		}, want: map[string]float64{"/a": 10}, raw: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, PipelineConfig{Lateness: time.Minute})
			for _, b := range tc.batches {
				h.at(b.at)
				h.consume(b.series...)
			}
			h.p.Flush()
			got := map[string]float64{}
			for _, w := range h.take() {
				for _, a := range w.Series {
					r, _ := a.Attrs.Get("route")
					got[r] += a.Sum
				}
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("sums per route = %v, want %v", got, tc.want)
			}
			if n := len(h.p.raw); n != tc.raw {
				t.Errorf("raw series = %d", n)
			}
		})
	}
}

// TestCumulativeHistogramDeltasShareScratch: the bucket differences of
// several cumulative histograms in one batch go through one scratch buffer;
// each delta must hold its own series' new observations.
func TestCumulativeHistogramDeltasShareScratch(t *testing.T) {
	h := newHarness(t, PipelineConfig{})
	series := func(route string, at time.Duration, vs []float64) metric.Series {
		s := histSeries(metric.Cumulative, hpt(at, newHist(vs...)))
		s.Attrs = attrsOf("route", route)
		return s
	}
	small := []float64{0.001, 0.002, 0.004}
	large := []float64{100, 200, 400, 800, -3}
	h.consume(series("/s", 10*time.Second, small), series("/l", 10*time.Second, large))
	addS, addL := []float64{0.003, 0.0015}, []float64{150, 1600, -5}
	h.consume(series("/s", 20*time.Second, append(slices.Clone(small), addS...)), series("/l", 20*time.Second, append(slices.Clone(large), addL...)))
	h.at(2 * time.Minute)
	ws := h.take()
	if len(ws) != 1 {
		t.Fatalf("%d windows", len(ws))
	}
	for _, tc := range []struct {
		route string
		want  []float64
	}{{"/s", addS}, {"/l", addL}} {
		a := find(ws[0], "latency", "route", tc.route)
		if a == nil || a.Hist == nil {
			t.Fatalf("%s: histogram missing", tc.route)
		}
		want := newHist(tc.want...)
		if want.Scale() > a.Hist.Scale() { // the cumulative histogram's scale
			want.Downscale(want.Scale() - a.Hist.Scale())
		}
		gd, wd := a.Hist.Data(), want.Data()
		if gd.Count != wd.Count || gd.Scale != wd.Scale || !equalBuckets(gd.Positive, wd.Positive) || !equalBuckets(gd.Negative, wd.Negative) {
			t.Errorf("%s: delta = %+v, want %+v", tc.route, gd, wd)
		}
	}
}
