package store

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/sabakiio/sabaki/metric"
)

// Stats lists the statistics Stat knows, per kind ("p<q>" stands for any
// quantile such as p50, p99.9).
var Stats = map[metric.Kind][]string{
	metric.Histogram: {"count", "sum", "rate", "mean", "min", "max", "p50", "p90", "p95", "p99", "p<q>", "error_ratio"},
	metric.Counter:   {"sum", "rate", "count", "error_ratio"},
	metric.Gauge:     {"last", "min", "max", "mean", "sum", "count"},
}

// DefaultStat is the statistic shown when none is asked for.
func DefaultStat(k metric.Kind) string {
	switch k {
	case metric.Histogram:
		return "p95"
	case metric.Counter:
		return "sum"
	}
	return "last"
}

// Stat computes a statistic of a row. ok is false when the value is unknown:
// error_ratio of a series that does not track errors, or mean, min, max and
// quantiles of an empty histogram. An error means the statistic does not
// apply to the row's kind (or is not one at all).
//
//   - count: histogram observations; counter increments (the sum); gauge
//     samples.
//   - sum: histogram sum of observations; counter increase; gauge sum of
//     samples.
//   - rate: count (histograms) or sum (counters) per second over the step.
//   - mean: sum/count; min, max: exact extremes.
//   - p50, p99.9, …: histogram quantile (Quantile), clamped to [min, max].
//   - last: gauges, the latest value (summed across a group's series).
//   - error_ratio: errors / count (histograms) or / sum (counters), 0–1.
func Stat(r Row, stat string) (v float64, ok bool, err error) {
	a := &r.Agg
	bad := func() (float64, bool, error) {
		return 0, false, fmt.Errorf("stat %q does not apply to a %s (use %s)", stat, r.Kind, strings.Join(Stats[r.Kind], ", "))
	}
	var count float64
	switch r.Kind {
	case metric.Histogram:
		count = float64(a.Count)
	case metric.Counter:
		count = a.Sum
	case metric.Gauge:
		count = float64(a.Count)
	default:
		return 0, false, fmt.Errorf("unknown metric kind %d", r.Kind)
	}
	switch stat {
	case "count":
		return count, true, nil
	case "sum":
		return a.Sum, true, nil
	case "rate":
		if r.Kind == metric.Gauge {
			return bad()
		}
		if r.Step <= 0 {
			return 0, false, nil
		}
		return count / r.Step.Seconds(), true, nil
	case "mean":
		if r.Kind == metric.Counter {
			return bad()
		}
		if a.Count == 0 {
			return 0, false, nil
		}
		return a.Sum / float64(a.Count), true, nil
	case "min", "max":
		if r.Kind == metric.Counter {
			return bad()
		}
		if a.Count == 0 {
			return 0, false, nil
		}
		if stat == "min" {
			return a.Min, true, nil
		}
		return a.Max, true, nil
	case "last":
		if r.Kind != metric.Gauge {
			return bad()
		}
		return a.Last, a.Count > 0, nil
	case "error_ratio":
		if r.Kind == metric.Gauge {
			return bad()
		}
		if !a.ErrorTracked || count <= 0 {
			return 0, false, nil
		}
		return float64(a.ErrorCount) / count, true, nil
	}
	if q, perr := ParseQuantile(stat); perr == nil {
		if r.Kind != metric.Histogram {
			return bad()
		}
		if a.Hist == nil || a.Hist.Count() == 0 {
			return 0, false, nil
		}
		return a.Hist.Quantile(q), true, nil
	}
	return 0, false, fmt.Errorf("unknown stat %q (want one of %s)", stat, strings.Join(Stats[r.Kind], ", "))
}

// ParseQuantile parses "p95" → 0.95, "p99.9" → 0.999, "p0" → 0, "p100" → 1.
func ParseQuantile(stat string) (float64, error) {
	rest, ok := strings.CutPrefix(stat, "p")
	if !ok || rest == "" {
		return 0, fmt.Errorf("not a quantile: %q", stat)
	}
	v, err := strconv.ParseFloat(rest, 64)
	if err != nil || v < 0 || v > 100 || math.IsNaN(v) || strings.ContainsAny(rest, "eE+-") {
		return 0, fmt.Errorf("not a quantile: %q (use p0 … p100, e.g. p99.9)", stat)
	}
	// Parse the decimal shifted by two places rather than dividing, so
	// p99.9 is exactly the float nearest 0.999.
	q, _ := strconv.ParseFloat(rest+"e-2", 64)
	return q, nil
}

// ValidStat reports whether stat is a statistic of some kind.
func ValidStat(stat string) bool {
	switch stat {
	case "count", "sum", "rate", "mean", "min", "max", "last", "error_ratio":
		return true
	}
	_, err := ParseQuantile(stat)
	return err == nil
}
