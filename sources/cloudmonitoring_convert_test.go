package sources

import (
	"encoding/hex"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/monitoring/apiv3/v2/monitoringpb"
	distributionpb "google.golang.org/genproto/googleapis/api/distribution"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sabakiio/sabaki/internal/fake/fakegcp"
)

// TestGCPConversionExact: exponential layouts whose growth factor is
// 2^(2^-s) and whose scale is a power of that base map one GCP bucket to
// one exponential bucket: counts are copied, nothing is spread.
// (Growth factors below 2, e.g. √2 for scale 1, are not detected as exact
// yet: histogram.FromExplicit floors -log2(log2(hi/lo)) without a float
// tolerance, so √2 lands on scale 0 and is spread.)
func TestGCPConversionExact(t *testing.T) {
	tests := []struct {
		name      string
		growth    float64
		scale     float64
		wantScale int32
		wantOff   int32 // exponential index of GCP finite bucket 1
	}{
		{"growth 2, scale 1", 2, 1, 0, 0},
		{"growth 4, scale 4", 4, 4, -1, 1},
		{"growth 2, scale 0.5", 2, 0.5, 0, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := fakegcp.ExponentialBuckets(24, tt.growth, tt.scale)
			bounds := fakegcp.Bounds(opts)
			rng := rand.New(rand.NewPCG(1, 2))
			var samples []float64
			for range 5000 {
				// Inside finite buckets, never on a boundary.
				k := 1 + rng.IntN(12)
				lo, hi := bounds[k-1], bounds[k]
				samples = append(samples, lo+(hi-lo)*(0.01+0.98*rng.Float64()))
			}
			d := fakegcp.Distribution(opts, samples, nil)
			g, err := newGCPDist(d)
			if err != nil {
				t.Fatal(err)
			}
			h, err := g.histogram()
			if err != nil {
				t.Fatal(err)
			}
			data := h.Data()
			if data.Scale != tt.wantScale {
				t.Fatalf("scale = %d, want %d", data.Scale, tt.wantScale)
			}
			if h.Count() != uint64(len(samples)) {
				t.Fatalf("count = %d, want %d", h.Count(), len(samples))
			}
			for k := 1; k < len(d.BucketCounts); k++ {
				idx := tt.wantOff + int32(k-1)
				var got uint64
				if i := idx - data.Positive.Offset; i >= 0 && int(i) < len(data.Positive.Counts) {
					got = data.Positive.Counts[i]
				}
				if got != uint64(d.BucketCounts[k]) {
					t.Errorf("GCP bucket %d [%g, %g): exponential bucket %d holds %d, want %d",
						k, bounds[k-1], bounds[k], idx, got, d.BucketCounts[k])
				}
			}
			if math.Abs(h.Sum()-d.Mean*float64(d.Count)) > 1e-9*h.Sum() {
				t.Errorf("sum = %v, want mean×count %v", h.Sum(), d.Mean*float64(d.Count))
			}
		})
	}
}

// TestGCPConversionSpread: layouts that do not align (linear, explicit,
// growth 1.4) keep count and sum exactly, and quantiles stay within the
// documented bound: the GCP bucket's own relative width (hi/lo − 1, the
// most an observation can move inside it) plus the target histogram's
// relative error.
func TestGCPConversionSpread(t *testing.T) {
	tests := []struct {
		name string
		opts *distributionpb.Distribution_BucketOptions
		gen  func(*rand.Rand) float64
	}{
		{"exponential growth 1.4", fakegcp.ExponentialBuckets(64, 1.4, 1), func(r *rand.Rand) float64 { return math.Exp(math.Log(40) + 0.8*r.NormFloat64()) }},
		{"linear width 5 offset 10", fakegcp.LinearBuckets(40, 5, 10), func(r *rand.Rand) float64 { return 20 + 150*r.Float64() }},
		{"explicit", fakegcp.ExplicitBuckets(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), func(r *rand.Rand) float64 { return math.Exp(math.Log(60) + r.NormFloat64()) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, 4))
			samples := make([]float64, 20000)
			for i := range samples {
				samples[i] = tt.gen(rng)
			}
			d := fakegcp.Distribution(tt.opts, samples, nil)
			g, err := newGCPDist(d)
			if err != nil {
				t.Fatal(err)
			}
			h, err := g.histogram()
			if err != nil {
				t.Fatal(err)
			}
			if h.Count() != uint64(len(samples)) {
				t.Fatalf("count = %d, want %d", h.Count(), len(samples))
			}
			if want := d.Mean * float64(d.Count); math.Abs(h.Sum()-want) > 1e-9*want {
				t.Fatalf("sum = %v, want %v", h.Sum(), want)
			}
			bounds := fakegcp.Bounds(tt.opts)
			sorted := slices.Sorted(slices.Values(samples))
			for _, q := range []float64{0.5, 0.9, 0.95, 0.99} {
				exact := sorted[int(math.Ceil(q*float64(len(sorted))))-1]
				k := 0
				for k < len(bounds) && exact >= bounds[k] {
					k++
				}
				width := 0.0
				if k > 0 && k < len(bounds) {
					width = bounds[k]/bounds[k-1] - 1
				}
				bound := width + h.RelativeError()
				got := h.Quantile(q)
				rel := math.Abs(got-exact) / exact
				if rel > bound {
					t.Errorf("p%v = %g, exact %g: error %.3f > bound %.3f", q*100, got, exact, rel, bound)
				}
				t.Logf("p%v = %.3f, exact %.3f, error %.3f, bound %.3f", q*100, got, exact, rel, bound)
			}
		})
	}
}

func TestGCPDistInvalid(t *testing.T) {
	opts := fakegcp.ExplicitBuckets(1, 2, 3)
	tests := []struct {
		name string
		d    *distributionpb.Distribution
		ok   bool
	}{
		{"short bucket counts padded", &distributionpb.Distribution{Count: 3, Mean: 1, BucketOptions: opts, BucketCounts: []int64{1, 2}}, true},
		{"too many bucket counts", &distributionpb.Distribution{Count: 5, BucketOptions: opts, BucketCounts: []int64{1, 1, 1, 1, 1}}, false},
		{"negative count", &distributionpb.Distribution{Count: 1, BucketOptions: opts, BucketCounts: []int64{2, -1}}, false},
		{"bounds not increasing", &distributionpb.Distribution{Count: 1, BucketOptions: fakegcp.ExplicitBuckets(2, 1), BucketCounts: []int64{1}}, false},
		{"count without buckets", &distributionpb.Distribution{Count: 4, BucketOptions: opts}, false},
		{"no layout: all at the mean", &distributionpb.Distribution{Count: 4, Mean: 2.5}, true},
		{"empty", &distributionpb.Distribution{BucketOptions: opts}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := newGCPDist(tt.d)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if err != nil {
				return
			}
			h, err := g.histogram()
			if err != nil {
				t.Fatal(err)
			}
			if h.Count() != g.count {
				t.Errorf("count %d, want %d", h.Count(), g.count)
			}
		})
	}
}

func TestGCPCumulativeDifference(t *testing.T) {
	st := newGCPStream("p", "t", "")
	opts := fakegcp.ExplicitBuckets(10, 100)
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	point := func(start time.Time, min int, o *distributionpb.Distribution_BucketOptions, counts ...int64) (gcpDist, time.Time, bool) {
		var n int64
		for _, c := range counts {
			n += c
		}
		d := &distributionpb.Distribution{Count: n, Mean: 50, BucketOptions: o, BucketCounts: counts}
		bounds, _ := gcpBounds(o)
		g, s, ok, err := st.difference(1, start, t0.Add(time.Duration(min)*time.Minute), d, bounds)
		if err != nil {
			t.Fatal(err)
		}
		return g, s, ok
	}
	if _, _, ok := point(t0, 1, opts, 1, 2, 3); ok {
		t.Fatal("first point must only set the baseline")
	}
	g, s, ok := point(t0, 2, opts, 1, 5, 4)
	if !ok || g.count != 4 || !slices.Equal(g.counts, []uint64{0, 3, 1}) || !s.Equal(t0.Add(time.Minute)) {
		t.Fatalf("delta = %+v from %s", g, s)
	}
	if math.Abs(g.sum-4*50) > 1e-9 {
		t.Errorf("delta sum = %v, want 200", g.sum)
	}
	// A decrease is a reset: the point counts from its own start.
	g, s, ok = point(t0, 3, opts, 0, 1, 0)
	if !ok || g.count != 1 || !s.Equal(t0) {
		t.Fatalf("reset by decrease: %+v from %s", g, s)
	}
	// A new start time is a reset too.
	ns := t0.Add(150 * time.Second)
	g, s, ok = point(ns, 4, opts, 0, 2, 0)
	if !ok || g.count != 2 || !s.Equal(ns) {
		t.Fatalf("reset by start: %+v from %s", g, s)
	}
	// A layout change is a reset.
	g, _, ok = point(ns, 5, fakegcp.ExplicitBuckets(10, 200), 0, 3, 0)
	if !ok || g.count != 3 {
		t.Fatalf("reset by layout: %+v", g)
	}
	// An older point than the baseline is ignored.
	if _, _, ok := point(ns, 4, opts, 0, 9, 0); ok {
		t.Fatal("older point differenced")
	}
}

func TestGCPExemplars(t *testing.T) {
	span, _ := anypb.New(&monitoringpb.SpanContext{SpanName: "projects/demo/traces/0123456789abcdef0123456789abcdef/spans/0011223344556677"})
	dropped, _ := anypb.New(&monitoringpb.DroppedLabels{Label: map[string]string{"instance_id": "i-1"}})
	bad, _ := anypb.New(&monitoringpb.SpanContext{SpanName: "projects/demo/traces/xyz/spans/1"})
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	in := []*distributionpb.Distribution_Exemplar{
		{Value: 12, Timestamp: fakegcp.Timestamp(t0.Add(-time.Minute)), Attachments: []*anypb.Any{span}},
		{Value: 250, Timestamp: fakegcp.Timestamp(t0.Add(30 * time.Second)), Attachments: []*anypb.Any{span, dropped}},
		{Value: 300, Timestamp: fakegcp.Timestamp(t0.Add(40 * time.Second)), Attachments: []*anypb.Any{bad}},
	}
	out := gcpExemplars(in, t0)
	if len(out) != 2 {
		t.Fatalf("got %d exemplars, want 2 (one older than the point's start)", len(out))
	}
	if got := out[0].TraceID; got != [16]byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef} {
		t.Errorf("trace ID = %x", got)
	}
	if out[0].SpanID != [8]byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77} || out[0].Value != 250 {
		t.Errorf("exemplar = %+v", out[0])
	}
	if v, _ := out[0].Attrs.Get("instance_id"); v != "i-1" {
		t.Errorf("dropped labels not kept: %v", out[0].Attrs)
	}
	if out[1].HasTrace() {
		t.Errorf("malformed span name gave a trace: %x", out[1].TraceID)
	}
}

func FuzzParseSpanName(f *testing.F) {
	for _, s := range []string{
		"projects/demo/traces/0123456789abcdef0123456789abcdef/spans/0011223344556677",
		"projects/p/traces/xyz/spans/1",
		"projects//traces//spans/",
		"",
		"projects/demo/traces/0123456789abcdef0123456789abcdef/spans/0011223344556677/extra",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		trace, span := parseSpanName(name)
		if trace == ([16]byte{}) != (span == [8]byte{}) && span != [8]byte{} && trace != [16]byte{} {
			t.Fatalf("half-parsed %q", name)
		}
		if trace != ([16]byte{}) && !strings.Contains(strings.ToLower(name), hex.EncodeToString(trace[:])) {
			t.Fatalf("trace %x not from %q", trace, name)
		}
	})
}

// BenchmarkGCPConvert measures one Cloud Run-shaped latency point (64
// exponential buckets, growth 1.4, ~20 samples) from the API's TimeSeries to a
// sabaki histogram point: bounds, conversion, exemplar.
func BenchmarkGCPConvert(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	samples := make([]float64, 20)
	for i := range samples {
		samples[i] = math.Exp(math.Log(40) + 0.8*rng.NormFloat64())
	}
	span, _ := anypb.New(&monitoringpb.SpanContext{SpanName: "projects/demo/traces/0123456789abcdef0123456789abcdef/spans/0011223344556677"})
	d := fakegcp.Distribution(fakegcp.ExponentialBuckets(64, 1.4, 1), samples,
		[]*distributionpb.Distribution_Exemplar{{Value: 90, Timestamp: fakegcp.Timestamp(time.Unix(1, 0)), Attachments: []*anypb.Any{span}}})
	var layouts gcpLayouts
	b.ReportAllocs()
	for b.Loop() {
		bounds, err := layouts.bounds(d.BucketOptions)
		if err != nil {
			b.Fatal(err)
		}
		g, err := newGCPDistWith(d, bounds)
		if err != nil {
			b.Fatal(err)
		}
		h, err := g.histogram()
		if err != nil || h.Count() != 20 {
			b.Fatal(err)
		}
		if ex := gcpExemplars(d.Exemplars, time.Time{}); len(ex) != 1 {
			b.Fatal("exemplar lost")
		}
	}
}
