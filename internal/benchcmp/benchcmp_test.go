package benchcmp

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	"github.com/lightstep/go-expohisto/structure"
	"go.opentelemetry.io/otel/attribute"
	otelmetric "go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/sabakiio/sabaki/histogram"
)

const (
	seed  = 20260824
	nVals = 1 << 16 // values per data set, taken cyclically
)

// dataset mirrors histogram's test data (same seed and formulas).
func dataset(name string, n int) []float64 {
	r := rand.New(rand.NewPCG(seed, uint64(len(name))))
	out := make([]float64, n)
	for i := range out {
		switch name {
		case "lognormal":
			out[i] = math.Exp(math.Log(0.05) + r.NormFloat64())
		case "uniform":
			for out[i] == 0 {
				out[i] = r.Float64()
			}
		case "pareto":
			out[i] = 0.001 / math.Pow(1-r.Float64(), 1/1.16)
		}
	}
	return out
}

var sets = []string{"lognormal", "uniform", "pareto"}

// recorder is what every implementation is called through (as in the
// notes' measurement, an interface call per value).
type recorder interface{ Record(v float64) }

type ours struct{ h *histogram.Histogram }

func (o ours) Record(v float64) { o.h.Record(v) }

type oursConcurrent struct{ c *histogram.Concurrent }

func (o oursConcurrent) Record(v float64) { o.c.Record(v) }

type expo struct{ h *structure.Float64 }

func (e expo) Record(v float64) { e.h.Update(v) }

func newExpo() *structure.Float64 {
	h := new(structure.Float64)
	h.Init(structure.NewConfig(structure.WithMaxSize(160)))
	return h
}

type lockedExpo struct {
	mu sync.Mutex
	h  *structure.Float64
}

func (e *lockedExpo) Record(v float64) {
	e.mu.Lock()
	e.h.Update(v)
	e.mu.Unlock()
}

type otelRec struct {
	h   otelmetric.Float64Histogram
	ctx context.Context
}

func (o otelRec) Record(v float64) { o.h.Record(o.ctx, v) }

func newOTel(tb testing.TB) (otelmetric.Float64Histogram, *metric.ManualReader) {
	reader := metric.NewManualReader()
	view := metric.NewView(metric.Instrument{Name: "latency"}, metric.Stream{
		Aggregation: metric.AggregationBase2ExponentialHistogram{MaxSize: 160, MaxScale: 20},
	})
	mp := metric.NewMeterProvider(metric.WithReader(reader), metric.WithView(view))
	h, err := mp.Meter("benchcmp").Float64Histogram("latency")
	if err != nil {
		tb.Fatal(err)
	}
	return h, reader
}

func impls(tb testing.TB) []struct {
	name string
	new  func() recorder
} {
	return []struct {
		name string
		new  func() recorder
	}{
		{"sabaki", func() recorder { return ours{histogram.New(0, 0)} }},
		{"sabaki-concurrent", func() recorder { return oursConcurrent{histogram.NewConcurrent(0, 0)} }},
		{"go-expohisto", func() recorder { return expo{newExpo()} }},
		{"otel-sdk", func() recorder { h, _ := newOTel(tb); return otelRec{h, context.Background()} }},
	}
}

// BenchmarkRecord: one goroutine, one histogram, values cyclic.
func BenchmarkRecord(b *testing.B) {
	for _, set := range sets {
		vs := dataset(set, nVals)
		for _, im := range impls(b) {
			b.Run(set+"/"+im.name, func(b *testing.B) {
				r := im.new()
				b.ReportAllocs()
				b.ResetTimer()
				ct := startCPU(b, false)
				for i := 0; i < b.N; i++ {
					r.Record(vs[i&(nVals-1)])
				}
				ct.stop(b)
			})
		}
	}
}

// BenchmarkRecordParallel: one shared histogram, GOMAXPROCS goroutines
// (2 on the reference machine), lognormal data; go-expohisto is not
// concurrency-safe and runs behind a sync.Mutex.
func BenchmarkRecordParallel(b *testing.B) {
	vs := dataset("lognormal", nVals)
	for _, im := range []struct {
		name string
		new  func() recorder
	}{
		{"sabaki-concurrent", func() recorder { return oursConcurrent{histogram.NewConcurrent(0, 0)} }},
		{"go-expohisto+mutex", func() recorder { return &lockedExpo{h: newExpo()} }},
		{"otel-sdk", func() recorder { h, _ := newOTel(b); return otelRec{h, context.Background()} }},
	} {
		b.Run(im.name, func(b *testing.B) {
			r := im.new()
			b.ReportAllocs()
			b.ResetTimer()
			ct := startCPU(b, true)
			b.RunParallel(func(pb *testing.PB) {
				i := rand.IntN(nVals)
				for pb.Next() {
					r.Record(vs[i&(nVals-1)])
					i++
				}
			})
			ct.stop(b)
		})
	}
}

// mergeData: same-scale = both halves of the lognormal set; cross-scale =
// half the uniform set (scale 3) and lognormal with halved log spread
// (scale 4), as in the notes.
func mergeData(kind string) (dst, src []float64) {
	ln := dataset("lognormal", 1<<18)
	if kind == "same-scale" {
		return ln[:1<<17], ln[1<<17:]
	}
	un := dataset("uniform", 1<<18)
	half := make([]float64, 1<<17)
	for i := range half {
		half[i] = math.Exp((math.Log(ln[i])-math.Log(0.05))/2 + math.Log(0.05))
	}
	return un[:1<<17], half
}

// BenchmarkMerge: merging a ~160-bucket source into the same destination
// repeatedly (steady state; the first merge, which may downscale, is not
// timed). The OTel SDK has no merge API.
func BenchmarkMerge(b *testing.B) {
	for _, kind := range []string{"same-scale", "cross-scale"} {
		d, s := mergeData(kind)
		b.Run(kind+"/sabaki", func(b *testing.B) {
			dst, src := histogram.New(0, 0), histogram.New(0, 0)
			for _, v := range d {
				dst.Record(v)
			}
			for _, v := range s {
				src.Record(v)
			}
			dst.Merge(src)
			b.ReportAllocs()
			b.ResetTimer()
			ct := startCPU(b, false)
			for i := 0; i < b.N; i++ {
				dst.Merge(src)
			}
			ct.stop(b)
		})
		b.Run(kind+"/go-expohisto", func(b *testing.B) {
			dst, src := newExpo(), newExpo()
			for _, v := range d {
				dst.Update(v)
			}
			for _, v := range s {
				src.Update(v)
			}
			dst.MergeFrom(src)
			b.ReportAllocs()
			b.ResetTimer()
			ct := startCPU(b, false)
			for i := 0; i < b.N; i++ {
				dst.MergeFrom(src)
			}
			ct.stop(b)
		})
	}
}

// memValues are 160 values, one per scale-3 bucket over 20 powers of two.
func memValues() []float64 {
	vals := make([]float64, 160)
	for i := range vals {
		vals[i] = math.Exp2((float64(i-80) + 0.5) / 8)
	}
	return vals
}

// retained measures live heap bytes per histogram: n histograms made by
// build (each holding the 160 values with count 1000).
func retained(n int, build func(i int, vals []float64) any) float64 {
	vals := memValues()
	keep := make([]any, n)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m0)
	for i := range keep {
		keep[i] = build(i, vals)
	}
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m1)
	runtime.KeepAlive(keep)
	return float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / float64(n)
}

// BenchmarkRetained reports retained bytes per histogram holding 160
// buckets (counts 1000 via RecordN/UpdateByIncr, so 16-bit counters where
// counters are variable; the OTel SDK has no incr API and uint64 counters,
// so it records each value 10 times).
// otel-sdk: per attribute set of one instrument (the per-series cost; the
// MeterProvider is shared), like the notes.
func BenchmarkRetained(b *testing.B) {
	b.Run("sabaki", func(b *testing.B) {
		var r float64
		for i := 0; i < b.N; i++ {
			r = retained(2000, func(_ int, vals []float64) any {
				h := histogram.New(0, 0)
				for _, v := range vals {
					h.RecordN(v, 1000)
				}
				return h
			})
		}
		b.ReportMetric(r, "retained-B/hist")
	})
	b.Run("go-expohisto", func(b *testing.B) {
		var r float64
		for i := 0; i < b.N; i++ {
			r = retained(2000, func(_ int, vals []float64) any {
				h := newExpo()
				for _, v := range vals {
					h.UpdateByIncr(v, 1000)
				}
				return h
			})
		}
		b.ReportMetric(r, "retained-B/hist")
	})
	b.Run("otel-sdk", func(b *testing.B) {
		var r float64
		for i := 0; i < b.N; i++ {
			h, reader := newOTel(b)
			ctx := context.Background()
			r = retained(20, func(i int, vals []float64) any {
				opt := otelmetric.WithAttributeSet(attribute.NewSet(attribute.Int("series", i)))
				for k := 0; k < 10; k++ { // no RecordN in the SDK; its counters are uint64 anyway
					for _, v := range vals {
						h.Record(ctx, v, opt)
					}
				}
				return nil
			})
			var rm metricdata.ResourceMetrics
			if err := reader.Collect(ctx, &rm); err != nil {
				b.Fatal(err)
			}
			runtime.KeepAlive(h)
		}
		b.ReportMetric(r, "retained-B/hist")
	})
}

// TestSameBuckets checks that the three implementations agree bucket for
// bucket on the lognormal set (the comparison is apples to apples).
func TestSameBuckets(t *testing.T) {
	vs := dataset("lognormal", nVals)
	h := histogram.New(0, 0)
	e := newExpo()
	oh, reader := newOTel(t)
	ctx := context.Background()
	for _, v := range vs {
		h.Record(v)
		e.Update(v)
		oh.Record(ctx, v)
	}
	d := h.Data()
	if d.Scale != e.Scale() || d.Count != e.Count() || d.Min != e.Min() || d.Max != e.Max() {
		t.Fatalf("go-expohisto: scale %d/%d count %d/%d", d.Scale, e.Scale(), d.Count, e.Count())
	}
	ep := e.Positive()
	var eCounts []uint64
	for i := uint32(0); i < ep.Len(); i++ {
		eCounts = append(eCounts, ep.At(i))
	}
	// go-expohisto may keep zero buckets at the ends; compare with offsets.
	for i, c := range d.Positive.Counts {
		j := int(d.Positive.Offset) + i - int(ep.Offset())
		if j < 0 || j >= len(eCounts) || eCounts[j] != c {
			t.Fatalf("go-expohisto differs at index %d", int(d.Positive.Offset)+i)
		}
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	dp := rm.ScopeMetrics[0].Metrics[0].Data.(metricdata.ExponentialHistogram[float64]).DataPoints[0]
	if dp.Scale != d.Scale || dp.Count != d.Count || dp.PositiveBucket.Offset != d.Positive.Offset ||
		fmt.Sprint(dp.PositiveBucket.Counts) != fmt.Sprint(d.Positive.Counts) {
		t.Fatalf("otel-sdk differs: scale %d offset %d", dp.Scale, dp.PositiveBucket.Offset)
	}
}
