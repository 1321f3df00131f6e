package exporters

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

// ConsoleConfig configures the console exporter (type "console"): a compact
// summary of each closed window, for the quick start and for debugging, like
// the OpenTelemetry Collector's debug exporter.
type ConsoleConfig struct {
	Common `yaml:",inline"`
	// Output is "stdout" or "stderr".
	Output string `yaml:"output"`
	// MaxSeries limits the lines per window: histograms first, then
	// counters, then gauges, each by the highest count (observations for
	// histograms, the delta for counters, samples for gauges); the rest is
	// summarised as "… N more". 0 prints every series.
	MaxSeries int `yaml:"max_series"`
	// Metrics, when set, only prints series whose name starts with one of
	// these prefixes.
	Metrics []string `yaml:"metrics"`

	// Writer overrides Output (tests, embedding).
	Writer io.Writer `yaml:"-"`
}

// DefaultConsoleConfig returns the defaults: stdout, the 20 busiest series.
func DefaultConsoleConfig() ConsoleConfig {
	return ConsoleConfig{Common: Common{Type: "console", Name: "console"}, Output: "stdout", MaxSeries: 20}
}

// Validate implements config.Validator.
func (c *ConsoleConfig) Validate() error {
	var errs []error
	if c.Output != "stdout" && c.Output != "stderr" {
		errs = append(errs, config.Field("output", "must be stdout or stderr, not %q", c.Output))
	}
	if c.MaxSeries < 0 {
		errs = append(errs, config.Field("max_series", "must not be negative"))
	}
	return errors.Join(errs...)
}

// Console prints window summaries. It never fails: a write error is returned
// as permanent (retrying a terminal write cannot help).
type Console struct {
	name string
	cfg  ConsoleConfig
	mu   sync.Mutex
	w    io.Writer
}

// NewConsole builds the console exporter.
func NewConsole(cfg ConsoleConfig, set Settings) (*Console, error) {
	w := cfg.Writer
	if w == nil {
		w = os.Stdout
		if cfg.Output == "stderr" {
			w = os.Stderr
		}
	}
	name := cfg.Name
	if name == "" {
		name = "console"
	}
	return &Console{name: name, cfg: cfg, w: w}, nil
}

// Name implements Exporter.
func (c *Console) Name() string { return c.name }

// Shutdown implements Exporter; the console buffers nothing.
func (c *Console) Shutdown(context.Context) error { return nil }

// Export writes one summary block for w:
//
//	window 2026-11-25T21:14:00Z/1m0s: 3 series
//	  http.server.request.duration{http.route="/a"} histogram count=10 sum=1.2 p50=0.1 p95=0.2 p99=0.3 max=0.4
//	  sabaki_pipeline_points_total{source="self"} counter sum=120
//	  … 1 more
func (c *Console) Export(_ context.Context, w *metric.Window) error {
	series := make([]*metric.Aggregate, 0, len(w.Series))
	for i := range w.Series {
		a := &w.Series[i]
		if len(c.cfg.Metrics) > 0 && !slices.ContainsFunc(c.cfg.Metrics, func(p string) bool { return strings.HasPrefix(a.Name, p) }) {
			continue
		}
		series = append(series, a)
	}
	more := 0
	if c.cfg.MaxSeries > 0 && len(series) > c.cfg.MaxSeries {
		slices.SortStableFunc(series, func(x, y *metric.Aggregate) int {
			if c := cmp.Compare(rank(x), rank(y)); c != 0 {
				return c
			}
			return cmp.Compare(weight(y), weight(x))
		})
		more = len(series) - c.cfg.MaxSeries
		series = series[:c.cfg.MaxSeries]
	}
	slices.SortFunc(series, func(x, y *metric.Aggregate) int {
		if c := strings.Compare(x.Name, y.Name); c != 0 {
			return c
		}
		return strings.Compare(attrString(x), attrString(y))
	})

	var b strings.Builder
	fmt.Fprintf(&b, "window %s/%s", w.Start.UTC().Format(time.RFC3339), w.Duration)
	if w.Revision > 0 {
		fmt.Fprintf(&b, " (revision %d)", w.Revision)
	}
	fmt.Fprintf(&b, ": %d series\n", len(w.Series))
	for _, a := range series {
		b.WriteString("  ")
		b.WriteString(a.Name)
		b.WriteString(attrString(a))
		b.WriteByte(' ')
		b.WriteString(a.Kind.String())
		writeStats(&b, a)
		b.WriteByte('\n')
	}
	if more > 0 {
		fmt.Fprintf(&b, "  … %d more\n", more)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := io.WriteString(c.w, b.String()); err != nil {
		return Permanent(fmt.Errorf("writing window summary: %w", err))
	}
	return nil
}

// rank orders kinds for MaxSeries: histograms (latencies, the reason to run
// sabaki), then counters, then gauges (runtime gauges would otherwise fill
// the summary), then idle series; within a kind the busiest series come first.
func rank(a *metric.Aggregate) int {
	if weight(a) == 0 {
		return 3
	}
	switch a.Kind {
	case metric.Histogram:
		return 0
	case metric.Counter:
		return 1
	}
	return 2
}

func weight(a *metric.Aggregate) float64 {
	switch a.Kind {
	case metric.Histogram:
		if a.Hist != nil {
			return float64(a.Hist.Count())
		}
		return 0
	case metric.Counter:
		return a.Sum
	}
	return float64(a.Count)
}

func writeStats(b *strings.Builder, a *metric.Aggregate) {
	kv := func(k string, v float64) {
		b.WriteByte(' ')
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(strconv.FormatFloat(v, 'g', 6, 64))
	}
	switch a.Kind {
	case metric.Counter:
		kv("sum", a.Sum)
	case metric.Gauge:
		kv("last", a.Last)
		if a.Count > 1 {
			kv("min", a.Min)
			kv("max", a.Max)
			kv("mean", a.Sum/float64(a.Count))
		}
	case metric.Histogram:
		h := a.Hist
		if h == nil || h.Count() == 0 {
			b.WriteString(" count=0")
			break
		}
		fmt.Fprintf(b, " count=%d", h.Count())
		kv("sum", h.Sum())
		kv("p50", h.Quantile(0.5))
		kv("p95", h.Quantile(0.95))
		kv("p99", h.Quantile(0.99))
		kv("max", h.Max())
	}
	if a.ErrorTracked && a.ErrorCount > 0 {
		fmt.Fprintf(b, " errors=%d", a.ErrorCount)
	}
	if a.Unit != "" && a.Unit != "1" {
		b.WriteString(" unit=")
		b.WriteString(a.Unit)
	}
}

// attrString renders resource and point attributes as {k="v",...}, resource first.
func attrString(a *metric.Aggregate) string {
	if len(a.Resource) == 0 && len(a.Attrs) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	n := 0
	for _, set := range []metric.Attrs{a.Resource, a.Attrs} {
		for _, kv := range set {
			if n > 0 {
				b.WriteByte(',')
			}
			b.WriteString(kv.Key)
			b.WriteByte('=')
			b.WriteString(strconv.Quote(kv.Value))
			n++
		}
	}
	b.WriteByte('}')
	return b.String()
}
