// Package metric is sabaki's data model: the series and points that sources
// produce, and the closed windows that the agent hands to the store and to
// exporters. It is shared by sources/, agent/ and exporters/ so that those
// packages never import each other.
package metric

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/sabakiio/sabaki/histogram"
)

// Kind is what a series measures.
type Kind uint8

const (
	// Gauge is a sampled value (temperature, instance count, utilisation).
	// Non-monotonic sums (UpDownCounters) are treated as gauges.
	Gauge Kind = iota + 1
	// Counter is a monotonic sum. Cumulative counters are turned into
	// per-window deltas by the agent.
	Counter
	// Histogram is a base-2 exponential histogram of observations.
	Histogram
)

// String returns the lower-case name used in configs, the store and query output.
func (k Kind) String() string {
	switch k {
	case Gauge:
		return "gauge"
	case Counter:
		return "counter"
	case Histogram:
		return "histogram"
	}
	return "unknown"
}

// ParseKind is the inverse of Kind.String; it returns 0 for an unknown name.
func ParseKind(s string) Kind {
	switch s {
	case "gauge":
		return Gauge
	case "counter":
		return Counter
	case "histogram":
		return Histogram
	}
	return 0
}

// Temporality says whether a Counter or Histogram point holds the total since
// Start (Cumulative) or only what happened between Start and Time (Delta).
type Temporality uint8

const (
	// Cumulative points carry totals since their start time.
	Cumulative Temporality = iota + 1
	// Delta points carry only the change over (Start, Time].
	Delta
)

// Attr is one attribute. Values are strings: non-string OTLP and GCP values
// are formatted by the source (ints in decimal, bools as true/false).
type Attr struct {
	Key   string
	Value string
}

// Attrs is a set of attributes sorted by key with unique keys. Sources build
// them with NewAttrs (which sorts); everything downstream relies on the order
// for identity and hashing.
type Attrs []Attr

// NewAttrs returns the attributes of m sorted by key.
func NewAttrs(m map[string]string) Attrs {
	a := make(Attrs, 0, len(m))
	for k, v := range m {
		a = append(a, Attr{Key: k, Value: v})
	}
	a.Sort()
	return a
}

// Sort sorts a by key in place; on duplicate keys the last one wins.
func (a *Attrs) Sort() {
	s := *a
	slices.SortStableFunc(s, func(x, y Attr) int { return strings.Compare(x.Key, y.Key) })
	out := s[:0]
	for i, kv := range s {
		if i+1 < len(s) && s[i+1].Key == kv.Key {
			continue
		}
		out = append(out, kv)
	}
	*a = out
}

// Get returns the value of key and whether it is present.
func (a Attrs) Get(key string) (string, bool) {
	i, ok := slices.BinarySearchFunc(a, key, func(x Attr, k string) int { return strings.Compare(x.Key, k) })
	if !ok {
		return "", false
	}
	return a[i].Value, true
}

// Map returns the attributes as a map (for JSON output).
func (a Attrs) Map() map[string]string {
	m := make(map[string]string, len(a))
	for _, kv := range a {
		m[kv.Key] = kv.Value
	}
	return m
}

// Clone returns a copy that shares no memory with a.
func (a Attrs) Clone() Attrs { return slices.Clone(a) }

// Equal reports whether a and b hold the same pairs.
func (a Attrs) Equal(b Attrs) bool { return slices.Equal(a, b) }

// Exemplar is one observation kept with its trace context, so a person can
// jump from a number to the trace behind it.
type Exemplar struct {
	TraceID [16]byte
	SpanID  [8]byte
	Value   float64
	Time    time.Time
	// Attrs are the filtered attributes the producer attached (those not
	// already on the series).
	Attrs Attrs
}

// HasTrace reports whether the exemplar carries a non-zero trace ID.
func (e Exemplar) HasTrace() bool { return e.TraceID != [16]byte{} }

// Point is one observation of a series at Time.
type Point struct {
	// Start is the start of the cumulative or delta interval; zero when the
	// producer does not say (Prometheus text exposition without _created).
	Start time.Time
	// Time is the observation time (end of the interval).
	Time time.Time
	// Value holds Gauge and Counter values.
	Value float64
	// Hist holds Histogram values. The pipeline takes ownership of it.
	Hist *histogram.Histogram
	// Exemplars observed with this point.
	Exemplars []Exemplar
}

// Series is a run of points sharing a metric identity, as a source produced it.
type Series struct {
	Name        string
	Unit        string // UCUM, as OTel: "s", "ms", "By", "1", "{request}"
	Description string
	Kind        Kind
	// Temporality applies to Counter and Histogram; Gauge ignores it.
	Temporality Temporality
	// Resource attributes describe the producer (service.name, cloud.region,
	// GCP resource labels); Attrs describe the point (http.route).
	Resource Attrs
	Attrs    Attrs
	Points   []Point
}

// Batch is what a source hands to the pipeline in one go.
type Batch struct {
	// Source is the configured name of the source that produced the batch.
	Source string
	Series []Series
}

// Sink consumes batches. The agent's pipeline is the Sink every source feeds.
// Consume must not keep references to the batch's slices after it returns,
// except the histograms, whose ownership passes to the sink.
// Consume returns ErrFull (wrapped) when the pipeline cannot accept more right
// now, so push receivers can answer "retry later" instead of losing data.
type Sink interface {
	Consume(ctx context.Context, b Batch) error
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(ctx context.Context, b Batch) error

// Consume calls f.
func (f SinkFunc) Consume(ctx context.Context, b Batch) error { return f(ctx, b) }
