package sources

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

// SelfConfig configures the self source (type "self"): the agent's own
// self-metrics (every sabaki_* metric, Go runtime and process metrics) fed
// into its own pipeline, so the store keeps the agent's history like any
// other series.
type SelfConfig struct {
	Common   `yaml:",inline"`
	Interval config.Duration `yaml:"interval"`
	Timeout  config.Duration `yaml:"timeout"`
}

// DefaultSelfConfig returns the defaults: every 15 s, 5 s timeout.
func DefaultSelfConfig() SelfConfig {
	return SelfConfig{
		Common:   Common{Type: "self", Name: "self"},
		Interval: config.Duration(15 * time.Second),
		Timeout:  config.Duration(5 * time.Second),
	}
}

// Validate implements config.Validator.
func (c *SelfConfig) Validate() error {
	var errs []error
	if c.Interval <= 0 {
		errs = append(errs, config.Field("interval", "must be positive"))
	}
	if c.Timeout <= 0 {
		errs = append(errs, config.Field("timeout", "must be positive"))
	} else if c.Interval > 0 && c.Timeout > c.Interval {
		errs = append(errs, config.Field("timeout", "must not exceed interval (%s)", c.Interval))
	}
	return errors.Join(errs...)
}

// Self is a pull source reading the agent's client_golang registry.
type Self struct {
	name    string
	g       prometheus.Gatherer
	started time.Time
}

// NewSelf builds the self source. set.Registerer must also be a
// prometheus.Gatherer (the agent passes its *prometheus.Registry), since that
// registry is what the source reads.
func NewSelf(cfg SelfConfig, set Settings) (*Self, error) {
	g, ok := set.Registerer.(prometheus.Gatherer)
	if !ok || g == nil {
		return nil, fmt.Errorf("self source %q: the agent's registerer is not a gatherer", cfg.Name)
	}
	name := cfg.Name
	if name == "" {
		name = "self"
	}
	return &Self{name: name, g: g, started: time.Now()}, nil
}

// Name implements Source.
func (s *Self) Name() string { return s.name }

// Collect gathers the registry and converts every family. Counters and
// histograms are cumulative since the process start (process_start_time_seconds
// when the process collector is registered, else the time the source was
// built), so rebuilding the source on a reload does not look like a reset.
func (s *Self) Collect(ctx context.Context, at time.Time) (metric.Batch, error) {
	fams, gerr := s.g.Gather()
	start := s.started
	for _, f := range fams {
		if f.GetName() == "process_start_time_seconds" && len(f.GetMetric()) == 1 && f.GetMetric()[0].GetGauge() != nil {
			sec := f.GetMetric()[0].GetGauge().GetValue()
			start = time.Unix(0, int64(sec*1e9))
		}
	}
	b := metric.Batch{Source: s.name}
	var errs []error
	for _, f := range fams {
		ss, err := familySeries(f, start, at)
		if err != nil {
			errs = append(errs, err)
		}
		b.Series = append(b.Series, ss...)
	}
	if gerr != nil {
		errs = append(errs, fmt.Errorf("gathering self-metrics: %w", gerr))
	}
	if len(errs) > 0 {
		return b, &PartialError{Failed: len(errs), Err: errors.Join(errs...)}
	}
	return b, nil
}

// familySeries converts one client_golang family to series. Summaries become
// their _sum and _count counters (quantiles of a summary cannot be merged);
// untyped metrics are gauges; gauge histograms are skipped.
func familySeries(f *dto.MetricFamily, start, at time.Time) ([]metric.Series, error) {
	name := f.GetName()
	var out []metric.Series
	var errs []error
	for _, m := range f.GetMetric() {
		attrs := labelAttrs(m.GetLabel())
		base := metric.Series{Name: name, Unit: unitOf(name), Description: f.GetHelp(), Attrs: attrs}
		pt := metric.Point{Time: at}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			base.Kind, base.Temporality = metric.Counter, metric.Cumulative
			pt.Start = startOf(m.GetCounter().GetCreatedTimestamp().AsTime(), m.GetCounter().GetCreatedTimestamp() != nil, start)
			pt.Value = m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			base.Kind = metric.Gauge
			pt.Value = m.GetGauge().GetValue()
		case dto.MetricType_UNTYPED:
			base.Kind = metric.Gauge
			pt.Value = m.GetUntyped().GetValue()
		case dto.MetricType_SUMMARY:
			sm := m.GetSummary()
			st := startOf(sm.GetCreatedTimestamp().AsTime(), sm.GetCreatedTimestamp() != nil, start)
			for _, part := range []struct {
				suffix string
				v      float64
			}{{"_sum", sm.GetSampleSum()}, {"_count", float64(sm.GetSampleCount())}} {
				s := base
				s.Name = name + part.suffix
				if part.suffix == "_count" {
					s.Unit = ""
				}
				s.Kind, s.Temporality = metric.Counter, metric.Cumulative
				s.Points = []metric.Point{{Start: st, Time: at, Value: part.v}}
				out = append(out, s)
			}
			continue
		case dto.MetricType_HISTOGRAM:
			hm := m.GetHistogram()
			h, err := convertHistogram(hm)
			if err != nil {
				errs = append(errs, fmt.Errorf("converting histogram %s: %w", name, err))
				continue
			}
			base.Kind, base.Temporality = metric.Histogram, metric.Cumulative
			pt.Start = startOf(hm.GetCreatedTimestamp().AsTime(), hm.GetCreatedTimestamp() != nil, start)
			pt.Hist = h
		default:
			continue
		}
		base.Points = []metric.Point{pt}
		out = append(out, base)
	}
	return out, errors.Join(errs...)
}

func startOf(created time.Time, ok bool, fallback time.Time) time.Time {
	if ok && !created.IsZero() && created.Unix() > 0 {
		return created
	}
	return fallback
}

// convertHistogram turns a client_golang histogram into an exponential one:
// exactly for native histograms (same buckets), by spreading each classic
// bucket for classic ones.
func convertHistogram(hm *dto.Histogram) (*histogram.Histogram, error) {
	if hm.Schema != nil && (len(hm.GetPositiveSpan()) > 0 || len(hm.GetNegativeSpan()) > 0 || hm.GetZeroCount() > 0 || len(hm.GetBucket()) == 0) {
		return histogram.FromNative(histogram.Native{
			Schema:         hm.GetSchema(),
			ZeroThreshold:  hm.GetZeroThreshold(),
			ZeroCount:      hm.GetZeroCount(),
			Count:          hm.GetSampleCount(),
			Sum:            hm.GetSampleSum(),
			PositiveSpans:  spans(hm.GetPositiveSpan()),
			NegativeSpans:  spans(hm.GetNegativeSpan()),
			PositiveDeltas: hm.GetPositiveDelta(),
			NegativeDeltas: hm.GetNegativeDelta(),
		}, histogram.DefaultMaxSize, histogram.DefaultMaxScale)
	}
	var bounds []float64
	var counts []uint64
	var prev uint64
	for _, b := range hm.GetBucket() {
		if math.IsInf(b.GetUpperBound(), +1) {
			break
		}
		c := b.GetCumulativeCount()
		bounds = append(bounds, b.GetUpperBound())
		counts = append(counts, c-min(c, prev))
		prev = max(prev, c)
	}
	counts = append(counts, hm.GetSampleCount()-min(hm.GetSampleCount(), prev))
	return histogram.FromExplicit(bounds, counts, hm.GetSampleSum(), histogram.DefaultMaxSize, histogram.DefaultMaxScale)
}

func spans(in []*dto.BucketSpan) []histogram.Span {
	out := make([]histogram.Span, len(in))
	for i, s := range in {
		out[i] = histogram.Span{Offset: s.GetOffset(), Length: s.GetLength()}
	}
	return out
}

func labelAttrs(ls []*dto.LabelPair) metric.Attrs {
	if len(ls) == 0 {
		return nil
	}
	a := make(metric.Attrs, len(ls))
	for i, l := range ls {
		a[i] = metric.Attr{Key: l.GetName(), Value: l.GetValue()}
	}
	a.Sort()
	return a
}

// unitOf derives the UCUM unit from the Prometheus naming convention.
func unitOf(name string) string {
	n := strings.TrimSuffix(name, "_total")
	switch {
	case strings.HasSuffix(n, "_seconds"):
		return "s"
	case strings.HasSuffix(n, "_bytes"):
		return "By"
	case strings.HasSuffix(n, "_ratio"):
		return "1"
	}
	return ""
}
