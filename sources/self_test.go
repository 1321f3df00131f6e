package sources

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sabakiio/sabaki/metric"
)

func TestSelfCollect(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	points := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sabaki_pipeline_points_total", Help: "Points."}, []string{"source"})
	points.WithLabelValues("self").Add(42)
	gauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "sabaki_store_size_bytes", Help: "Size."})
	gauge.Set(1024)
	classic := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "sabaki_source_collect_duration_seconds", Help: "D.", Buckets: []float64{0.1, 1, 10}})
	for _, v := range []float64{0.05, 0.5, 0.5, 5, 50} {
		classic.Observe(v)
	}
	native := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "sabaki_native_seconds", Help: "N.", NativeHistogramBucketFactor: 1.1})
	for _, v := range []float64{0.001, 0.01, 0.1, 1} {
		native.Observe(v)
	}
	summary := prometheus.NewSummary(prometheus.SummaryOpts{Name: "sabaki_summary_seconds", Help: "S."})
	summary.Observe(2)
	summary.Observe(3)
	reg.MustRegister(points, gauge, classic, native, summary)

	cfg := DefaultSelfConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := NewSelf(cfg, Settings{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	b, err := s.Collect(context.Background(), at)
	if err != nil {
		t.Fatal(err)
	}
	if b.Source != "self" {
		t.Errorf("batch source = %q", b.Source)
	}
	byName := map[string]metric.Series{}
	for _, sr := range b.Series {
		byName[sr.Name] = sr
		if len(sr.Points) != 1 || !sr.Points[0].Time.Equal(at) {
			t.Errorf("%s: points %+v, want one at %s", sr.Name, sr.Points, at)
		}
	}

	c := byName["sabaki_pipeline_points_total"]
	if c.Kind != metric.Counter || c.Temporality != metric.Cumulative || c.Points[0].Value != 42 {
		t.Errorf("counter: %+v", c)
	}
	if v, _ := c.Attrs.Get("source"); v != "self" {
		t.Errorf("counter attrs: %v", c.Attrs)
	}
	// Start is the process start (process_start_time_seconds), before now.
	if st := c.Points[0].Start; st.IsZero() || st.After(time.Now()) {
		t.Errorf("counter start = %v", st)
	}
	if g := byName["sabaki_store_size_bytes"]; g.Kind != metric.Gauge || g.Points[0].Value != 1024 || g.Unit != "By" {
		t.Errorf("gauge: %+v", g)
	}
	h := byName["sabaki_source_collect_duration_seconds"]
	if h.Kind != metric.Histogram || h.Unit != "s" || h.Points[0].Hist == nil {
		t.Fatalf("classic histogram: %+v", h)
	}
	if hh := h.Points[0].Hist; hh.Count() != 5 || hh.Sum() != 56.05 {
		t.Errorf("classic histogram count %d sum %v, want 5 and 56.05", hh.Count(), hh.Sum())
	}
	n := byName["sabaki_native_seconds"]
	if n.Kind != metric.Histogram || n.Points[0].Hist == nil || n.Points[0].Hist.Count() != 4 {
		t.Fatalf("native histogram: %+v", n)
	}
	if q := n.Points[0].Hist.Quantile(1); q < 0.9 || q > 1.1 {
		t.Errorf("native histogram max quantile = %v, want about 1", q)
	}
	if sc := byName["sabaki_summary_seconds_count"]; sc.Kind != metric.Counter || sc.Points[0].Value != 2 || sc.Unit != "" {
		t.Errorf("summary count: %+v", sc)
	}
	if ss := byName["sabaki_summary_seconds_sum"]; ss.Points[0].Value != 5 || ss.Unit != "s" {
		t.Errorf("summary sum: %+v", ss)
	}
}

func TestSelfNeedsGatherer(t *testing.T) {
	type onlyRegisterer struct{ prometheus.Registerer }
	if _, err := NewSelf(DefaultSelfConfig(), Settings{Registerer: onlyRegisterer{prometheus.NewRegistry()}}); err == nil {
		t.Error("NewSelf with a registerer that cannot gather: want an error")
	}
}

func TestSelfConfigValidate(t *testing.T) {
	c := DefaultSelfConfig()
	c.Timeout = c.Interval * 2
	if err := c.Validate(); err == nil || err.Error() != "timeout: must not exceed interval (15s)" {
		t.Errorf("Validate = %v", err)
	}
}
