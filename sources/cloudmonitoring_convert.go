package sources

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/monitoring/apiv3/v2/monitoringpb"
	distributionpb "google.golang.org/genproto/googleapis/api/distribution"
	metricpb "google.golang.org/genproto/googleapis/api/metric"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// gcpStream is the read state of one (project, metric type).
type gcpStream struct {
	project, metricType, filter string

	desc   *metricpb.MetricDescriptor
	descAt time.Time

	// cursor is the end of the last successful read.
	cursor time.Time
	// seen holds, per series, the end times (unix ns) of the points already
	// accepted that a future read can still return (inside the lookback).
	seen map[uint64][]int64
	// cum holds the last cumulative distribution per series, the baseline
	// of the next difference.
	cum map[uint64]*gcpCumPoint

	loaded        bool
	failing       bool
	gapLogged     bool
	disabledUntil time.Time
}

func newGCPStream(project, metricType, filter string) *gcpStream {
	return &gcpStream{project: project, metricType: metricType, filter: filter,
		seen: map[uint64][]int64{}, cum: map[uint64]*gcpCumPoint{}}
}

// lookback is the configured lookback, raised to the metric's ingest delay
// plus its sample period when its descriptor says more.
func (st *gcpStream) lookback(cfg time.Duration) time.Duration {
	md := st.desc.GetMetadata()
	return max(cfg, md.GetIngestDelay().AsDuration()+md.GetSamplePeriod().AsDuration())
}

func (st *gcpStream) samplePeriod() time.Duration {
	if p := st.desc.GetMetadata().GetSamplePeriod().AsDuration(); p > 0 {
		return p
	}
	return time.Minute
}

// prune forgets what the next read, starting at end − lookback, cannot
// return again.
func (st *gcpStream) prune(_, end time.Time, lookback time.Duration) {
	horizon := end.Add(-lookback).UnixNano()
	for h, ends := range st.seen {
		ends = slices.DeleteFunc(ends, func(e int64) bool { return e <= horizon })
		if len(ends) == 0 {
			delete(st.seen, h)
		} else {
			st.seen[h] = ends
		}
	}
	stale := end.Add(-25 * time.Hour).UnixNano()
	for h, p := range st.cum {
		if p.End < stale {
			delete(st.cum, h)
		}
	}
}

// gcpSeriesHash identifies a time series: metric type and labels, resource
// type and labels.
func gcpSeriesHash(ts *monitoringpb.TimeSeries) uint64 {
	h := fnv.New64a()
	write := func(s string) { h.Write([]byte(s)); h.Write([]byte{0}) }
	labels := func(m map[string]string) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			write(k)
			write(m[k])
		}
		write("\x01")
	}
	write(ts.GetMetric().GetType())
	labels(ts.GetMetric().GetLabels())
	write(ts.GetResource().GetType())
	labels(ts.GetResource().GetLabels())
	return h.Sum64()
}

// convert turns the series of one read into sabaki series, keeping only
// points not accepted before. It returns the newest end time seen.
func (c *CloudMonitoring) convert(st *gcpStream, raw []*monitoringpb.TimeSeries, _ time.Time) ([]metric.Series, time.Time) {
	var out []metric.Series
	var newest time.Time
	var accepted, dup, invalid int
	for _, ts := range raw {
		h := gcpSeriesHash(ts)
		pts := slices.Clone(ts.GetPoints())
		slices.SortFunc(pts, func(a, b *monitoringpb.Point) int {
			return a.GetInterval().GetEndTime().AsTime().Compare(b.GetInterval().GetEndTime().AsTime())
		})
		kind := ts.GetMetricKind()
		if kind == metricpb.MetricDescriptor_METRIC_KIND_UNSPECIFIED {
			kind = st.desc.GetMetricKind()
		}
		vt := ts.GetValueType()
		if vt == metricpb.MetricDescriptor_VALUE_TYPE_UNSPECIFIED {
			vt = st.desc.GetValueType()
		}
		s := metric.Series{
			Name:        ts.GetMetric().GetType(),
			Unit:        ts.GetUnit(),
			Description: st.desc.GetDescription(),
			Resource:    metric.NewAttrs(ts.GetResource().GetLabels()),
			Attrs:       metric.NewAttrs(ts.GetMetric().GetLabels()),
		}
		if s.Unit == "" {
			s.Unit = st.desc.GetUnit()
		}
		switch {
		case vt == metricpb.MetricDescriptor_DISTRIBUTION:
			s.Kind, s.Temporality = metric.Histogram, metric.Delta
		case kind == metricpb.MetricDescriptor_GAUGE:
			s.Kind = metric.Gauge
		case kind == metricpb.MetricDescriptor_DELTA:
			s.Kind, s.Temporality = metric.Counter, metric.Delta
		case kind == metricpb.MetricDescriptor_CUMULATIVE:
			s.Kind, s.Temporality = metric.Counter, metric.Cumulative
		default:
			invalid += len(pts)
			continue
		}
		seen := st.seen[h]
		for _, p := range pts {
			end := p.GetInterval().GetEndTime().AsTime()
			if end.After(newest) {
				newest = end
			}
			endNs := end.UnixNano()
			if slices.Contains(seen, endNs) {
				dup++
				continue
			}
			seen = append(seen, endNs)
			start := end
			if t := p.GetInterval().GetStartTime(); t != nil {
				start = t.AsTime()
			}
			pt := metric.Point{Start: start, Time: end}
			if kind == metricpb.MetricDescriptor_GAUGE && s.Kind != metric.Histogram {
				pt.Start = time.Time{}
			}
			v := p.GetValue()
			switch vt {
			case metricpb.MetricDescriptor_BOOL:
				if v.GetBoolValue() {
					pt.Value = 1
				}
			case metricpb.MetricDescriptor_INT64:
				pt.Value = float64(v.GetInt64Value())
			case metricpb.MetricDescriptor_DOUBLE:
				pt.Value = v.GetDoubleValue()
			case metricpb.MetricDescriptor_DISTRIBUTION:
				d := v.GetDistributionValue()
				c.logBuckets(st.metricType, d)
				var gd gcpDist
				var ok bool
				bounds, err := c.layouts.bounds(d.GetBucketOptions())
				switch {
				case err != nil:
				case kind == metricpb.MetricDescriptor_CUMULATIVE:
					gd, pt.Start, ok, err = st.difference(h, start, end, d, bounds)
				case kind == metricpb.MetricDescriptor_GAUGE:
					// One sample period's samples, as a delta.
					pt.Start = end.Add(-st.samplePeriod())
					gd, err = newGCPDistWith(d, bounds)
					ok = true
				default:
					gd, err = newGCPDistWith(d, bounds)
					ok = true
				}
				if err != nil {
					invalid++
					c.log.Debug("invalid distribution", "metric_type", st.metricType, "err", err)
					continue
				}
				if !ok {
					continue // the baseline of a cumulative series
				}
				hist, err := gd.histogram()
				if err != nil {
					invalid++
					c.log.Debug("cannot convert distribution", "metric_type", st.metricType, "err", err)
					continue
				}
				pt.Hist = hist
				// A cumulative point's exemplars span its whole history: keep
				// those after the previous point. Delta ones are the point's own.
				var after time.Time
				if kind == metricpb.MetricDescriptor_CUMULATIVE {
					after = pt.Start
				}
				pt.Exemplars = gcpExemplars(d.GetExemplars(), after)
			default:
				invalid++
				continue
			}
			accepted++
			s.Points = append(s.Points, pt)
		}
		st.seen[h] = seen
		if len(s.Points) > 0 {
			out = append(out, s)
		}
	}
	c.m.points.WithLabelValues(c.cfg.Name, st.metricType, "accepted").Add(float64(accepted))
	c.m.points.WithLabelValues(c.cfg.Name, st.metricType, "duplicate").Add(float64(dup))
	if invalid > 0 {
		c.m.points.WithLabelValues(c.cfg.Name, st.metricType, "invalid").Add(float64(invalid))
	}
	return out, newest
}

// logBuckets logs the first bucket layout seen per metric type: Google does
// not document Cloud Run's layouts, and the conversion error depends on it.
func (c *CloudMonitoring) logBuckets(metricType string, d *distributionpb.Distribution) {
	if _, loaded := c.logged.LoadOrStore(metricType, true); loaded {
		return
	}
	c.log.Info("first bucket layout", "metric_type", metricType, "bucket_options", gcpOptionsKey(d.GetBucketOptions()))
}

// gcpLayouts caches the boundaries of exponential and linear layouts (a
// series keeps its layout, and computing 65 powers per point was a quarter
// of the conversion's time). Explicit bounds come with each point.
type gcpLayouts struct{ m sync.Map }

type gcpLayoutKey struct {
	exp  bool
	n    int32
	a, b float64
}

func (l *gcpLayouts) bounds(o *distributionpb.Distribution_BucketOptions) ([]float64, error) {
	var k gcpLayoutKey
	switch {
	case o.GetExponentialBuckets() != nil:
		e := o.GetExponentialBuckets()
		k = gcpLayoutKey{true, e.GetNumFiniteBuckets(), e.GetGrowthFactor(), e.GetScale()}
	case o.GetLinearBuckets() != nil:
		li := o.GetLinearBuckets()
		k = gcpLayoutKey{false, li.GetNumFiniteBuckets(), li.GetWidth(), li.GetOffset()}
	default:
		return gcpBounds(o)
	}
	if b, ok := l.m.Load(k); ok {
		return b.([]float64), nil
	}
	b, err := gcpBounds(o)
	if err == nil {
		l.m.Store(k, b)
	}
	return b, err
}

// gcpDist is a distribution reduced to what the conversion needs.
type gcpDist struct {
	bounds []float64 // finite boundaries; buckets are [b[i-1], b[i])
	counts []uint64  // len(bounds)+1: underflow, finite…, overflow
	count  uint64
	sum    float64
}

// gcpBounds returns the finite boundaries of a bucket layout (Distribution
// proto: Linear upper(i) = offset + width·i, Exponential upper(i) =
// scale·growth^i for i = 0…n, Explicit as given).
func gcpBounds(o *distributionpb.Distribution_BucketOptions) ([]float64, error) {
	switch {
	case o.GetExponentialBuckets() != nil:
		e := o.GetExponentialBuckets()
		n := int(e.GetNumFiniteBuckets())
		if n <= 0 || n > 10000 || !(e.GetGrowthFactor() > 1) || !(e.GetScale() > 0) {
			return nil, fmt.Errorf("invalid exponential buckets %v", e)
		}
		b := make([]float64, n+1)
		for i := range b {
			b[i] = e.GetScale() * math.Pow(e.GetGrowthFactor(), float64(i))
		}
		return b, nil
	case o.GetLinearBuckets() != nil:
		l := o.GetLinearBuckets()
		n := int(l.GetNumFiniteBuckets())
		if n <= 0 || n > 10000 || !(l.GetWidth() > 0) {
			return nil, fmt.Errorf("invalid linear buckets %v", l)
		}
		b := make([]float64, n+1)
		for i := range b {
			b[i] = l.GetOffset() + l.GetWidth()*float64(i)
		}
		return b, nil
	case o.GetExplicitBuckets() != nil:
		b := o.GetExplicitBuckets().GetBounds()
		if len(b) == 0 {
			return nil, errors.New("explicit buckets without bounds")
		}
		for i := 1; i < len(b); i++ {
			if !(b[i] > b[i-1]) {
				return nil, fmt.Errorf("explicit bounds not increasing at %d", i)
			}
		}
		return b, nil
	}
	return nil, nil
}

func gcpOptionsKey(o *distributionpb.Distribution_BucketOptions) string {
	switch {
	case o.GetExponentialBuckets() != nil:
		e := o.GetExponentialBuckets()
		return fmt.Sprintf("exponential(n=%d,growth=%g,scale=%g)", e.GetNumFiniteBuckets(), e.GetGrowthFactor(), e.GetScale())
	case o.GetLinearBuckets() != nil:
		l := o.GetLinearBuckets()
		return fmt.Sprintf("linear(n=%d,width=%g,offset=%g)", l.GetNumFiniteBuckets(), l.GetWidth(), l.GetOffset())
	case o.GetExplicitBuckets() != nil:
		return fmt.Sprintf("explicit%v", o.GetExplicitBuckets().GetBounds())
	}
	return "none"
}

// newGCPDist checks d and pads its bucket counts (trailing zero buckets may
// be omitted). The count is the sum of the buckets; sum = mean × count.
func newGCPDist(d *distributionpb.Distribution) (gcpDist, error) {
	bounds, err := gcpBounds(d.GetBucketOptions())
	if err != nil {
		return gcpDist{}, err
	}
	return newGCPDistWith(d, bounds)
}

// newGCPDistWith is newGCPDist with the layout's boundaries already known
// (shared, read-only).
func newGCPDistWith(d *distributionpb.Distribution, bounds []float64) (gcpDist, error) {
	g := gcpDist{bounds: bounds, counts: make([]uint64, len(bounds)+1)}
	if len(bounds) == 0 {
		// No layout: all observations at the mean.
		if d.GetCount() < 0 {
			return gcpDist{}, fmt.Errorf("negative count %d", d.GetCount())
		}
		g.counts[0] = uint64(d.GetCount())
		g.count = g.counts[0]
		g.sum = d.GetMean() * float64(g.count)
		return g, nil
	}
	if len(d.GetBucketCounts()) > len(g.counts) {
		return gcpDist{}, fmt.Errorf("%d bucket counts for %d buckets", len(d.GetBucketCounts()), len(g.counts))
	}
	for i, n := range d.GetBucketCounts() {
		if n < 0 {
			return gcpDist{}, fmt.Errorf("negative count in bucket %d", i)
		}
		g.counts[i] = uint64(n)
		g.count += uint64(n)
	}
	if len(d.GetBucketCounts()) == 0 && d.GetCount() > 0 {
		return gcpDist{}, fmt.Errorf("count %d without bucket counts", d.GetCount())
	}
	g.sum = d.GetMean() * float64(g.count)
	return g, nil
}

// histogram converts the distribution with histogram.FromExplicit: exact
// when the boundaries are powers of 2^(2^-s) for a scale s, otherwise each
// bucket's count is spread log-uniformly over the target buckets it covers;
// the underflow bucket (below the first boundary) and the overflow bucket
// (from the last one) are placed by FromExplicit.
func (g gcpDist) histogram() (*histogram.Histogram, error) {
	if len(g.bounds) == 0 {
		h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		if g.count > 0 {
			h.RecordN(g.sum/float64(g.count), g.count)
		}
		return h, nil
	}
	// GCP buckets are [lower, upper); FromExplicit's are (lower, upper]: a
	// sample exactly on a boundary moves down one bucket (see the notes).
	return histogram.FromExplicit(g.bounds, g.counts, g.sum, histogram.DefaultMaxSize, histogram.DefaultMaxScale)
}

// gcpCumPoint is the last cumulative distribution point of a series.
type gcpCumPoint struct {
	Start  int64   `json:"s"`
	End    int64   `json:"e"`
	Layout string  `json:"l"`
	Counts []int64 `json:"c"`
	Count  int64   `json:"n"`
	Mean   float64 `json:"m"`
}

// difference turns a cumulative distribution point into the delta since the
// series' previous point: bucket-wise subtraction in GCP's own layout, which
// is exact (differencing after conversion would subtract approximations).
// A changed start time, layout, or any decrease is a reset: the point
// counts from its new start. The first point of a series only sets the
// baseline (ok = false).
func (st *gcpStream) difference(h uint64, start, end time.Time, d *distributionpb.Distribution, bounds []float64) (gcpDist, time.Time, bool, error) {
	cur, err := newGCPDistWith(d, bounds)
	if err != nil {
		return gcpDist{}, time.Time{}, false, err
	}
	counts := make([]int64, len(cur.counts))
	for i, n := range cur.counts {
		counts[i] = int64(n)
	}
	now := &gcpCumPoint{Start: start.UnixNano(), End: end.UnixNano(), Layout: gcpOptionsKey(d.GetBucketOptions()),
		Counts: counts, Count: int64(cur.count), Mean: d.GetMean()}
	prev := st.cum[h]
	if prev != nil && now.End <= prev.End {
		return gcpDist{}, time.Time{}, false, nil // older than the baseline
	}
	st.cum[h] = now
	if prev == nil {
		return gcpDist{}, time.Time{}, false, nil
	}
	reset := prev.Start != now.Start || prev.Layout != now.Layout || now.Count < prev.Count || len(prev.Counts) != len(now.Counts)
	for i := 0; !reset && i < len(now.Counts); i++ {
		reset = now.Counts[i] < prev.Counts[i]
	}
	if reset {
		return cur, start, true, nil
	}
	out := gcpDist{bounds: cur.bounds, counts: make([]uint64, len(cur.counts))}
	for i := range out.counts {
		out.counts[i] = uint64(now.Counts[i] - prev.Counts[i])
		out.count += out.counts[i]
	}
	out.sum = max(0, now.Mean*float64(now.Count)-prev.Mean*float64(prev.Count))
	return out, time.Unix(0, prev.End), true, nil
}

// gcpExemplars converts Distribution exemplars: the trace and span IDs come
// from a SpanContext attachment (projects/P/traces/T/spans/S), dropped labels
// and string attachments become exemplar attributes. Exemplars older than
// after are left out (they belong to an earlier cumulative point).
func gcpExemplars(in []*distributionpb.Distribution_Exemplar, after time.Time) []metric.Exemplar {
	var out []metric.Exemplar
	for _, e := range in {
		ex := metric.Exemplar{Value: e.GetValue(), Time: e.GetTimestamp().AsTime()}
		if e.GetTimestamp() != nil && !after.IsZero() && !ex.Time.After(after) {
			continue
		}
		attrs := map[string]string{}
		for _, a := range e.GetAttachments() {
			switch a.GetTypeUrl()[strings.LastIndex(a.GetTypeUrl(), "/")+1:] {
			case "google.monitoring.v3.SpanContext":
				var sc monitoringpb.SpanContext
				if a.UnmarshalTo(&sc) == nil {
					ex.TraceID, ex.SpanID = parseSpanName(sc.GetSpanName())
				}
			case "google.monitoring.v3.DroppedLabels":
				var dl monitoringpb.DroppedLabels
				if a.UnmarshalTo(&dl) == nil {
					for k, v := range dl.GetLabel() {
						attrs[k] = v
					}
				}
			case "google.protobuf.StringValue":
				var sv wrapperspb.StringValue
				if a.UnmarshalTo(&sv) == nil {
					attrs["gcp.attachment"] = sv.GetValue()
				}
			}
		}
		if len(attrs) > 0 {
			ex.Attrs = metric.NewAttrs(attrs)
		}
		out = append(out, ex)
	}
	return out
}

// parseSpanName reads projects/[PROJECT]/traces/[TRACE_ID]/spans/[SPAN_ID]
// (32 and 16 hex digits); anything else yields zero IDs.
func parseSpanName(name string) (trace [16]byte, span [8]byte) {
	parts := strings.Split(name, "/")
	if len(parts) != 6 || parts[0] != "projects" || parts[2] != "traces" || parts[4] != "spans" {
		return trace, span
	}
	t, err1 := hex.DecodeString(parts[3])
	s, err2 := hex.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(t) != 16 || len(s) != 8 {
		return [16]byte{}, [8]byte{}
	}
	copy(trace[:], t)
	copy(span[:], s)
	return trace, span
}

// gcpStreamState is what the state store keeps per (project, metric type).
type gcpStreamState struct {
	V      int                     `json:"v"`
	Cursor int64                   `json:"cursor"` // unix ns
	Seen   map[string][]int64      `json:"seen,omitempty"`
	Cum    map[string]*gcpCumPoint `json:"cum,omitempty"`
}

func (c *CloudMonitoring) stateKey(st *gcpStream) string {
	return "cloudmonitoring/" + c.cfg.Name + "/" + st.project + "/" + st.metricType
}

func (c *CloudMonitoring) loadState(ctx context.Context, st *gcpStream) error {
	if st.loaded || c.state == nil {
		return nil
	}
	st.loaded = true
	b, ok, err := c.state.GetState(ctx, c.stateKey(st))
	if err != nil || !ok {
		return err
	}
	var s gcpStreamState
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("decode cursor: %w", err)
	}
	st.cursor = time.Unix(0, s.Cursor)
	for k, v := range s.Seen {
		if h, err := strconv.ParseUint(k, 16, 64); err == nil {
			st.seen[h] = v
		}
	}
	for k, v := range s.Cum {
		if h, err := strconv.ParseUint(k, 16, 64); err == nil {
			st.cum[h] = v
		}
	}
	return nil
}

func (c *CloudMonitoring) saveState(ctx context.Context, st *gcpStream) error {
	if c.state == nil {
		return nil
	}
	s := gcpStreamState{V: 1, Cursor: st.cursor.UnixNano(), Seen: map[string][]int64{}, Cum: map[string]*gcpCumPoint{}}
	for h, v := range st.seen {
		s.Seen[strconv.FormatUint(h, 16)] = v
	}
	for h, v := range st.cum {
		s.Cum[strconv.FormatUint(h, 16)] = v
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return c.state.PutState(ctx, c.stateKey(st), b)
}
