package store

import (
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

func latencyHist(r *rand.Rand, n int) *histogram.Histogram {
	h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
	for range n {
		h.Record(math.Exp(r.NormFloat64()*0.6 - 2.5)) // median ~82 ms
	}
	return h
}

func TestChunkRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	mk := func(n int, f func(i int, p *point)) []point {
		pts := make([]point, n)
		for i := range pts {
			pts[i].start = 1_700_000_040 + int64(i)*60
			f(i, &pts[i])
		}
		return pts
	}
	tests := []struct {
		name string
		kind metric.Kind
		pts  []point
	}{
		{"counter ints", metric.Counter, mk(120, func(i int, p *point) { p.sum = float64(1000 + r.IntN(100)); p.count = 3 })},
		{"counter zero", metric.Counter, mk(120, func(i int, p *point) {})},
		{"counter floats with errors", metric.Counter, mk(50, func(i int, p *point) {
			p.sum = r.Float64() * 1e6
			p.errCount, p.errTracked = uint64(r.IntN(3)), true
		})},
		{"counter NaN and Inf", metric.Counter, mk(4, func(i int, p *point) { p.sum = []float64{math.NaN(), math.Inf(1), -0.0, 5e-324}[i] })},
		{"gauge one sample", metric.Gauge, mk(120, func(i int, p *point) {
			v := float64(r.IntN(8))
			p.sum, p.count, p.last, p.min, p.max = v, 1, v, v, v
		})},
		{"gauge decimals", metric.Gauge, mk(120, func(i int, p *point) {
			v := float64(r.IntN(10000)) / 100
			p.sum, p.count, p.last, p.min, p.max = v*4, 4, v, v-1, v+1.5
		})},
		{"gauge random", metric.Gauge, mk(120, func(i int, p *point) {
			p.sum, p.count, p.last, p.min, p.max = r.Float64(), 4, r.Float64(), -r.Float64(), r.ExpFloat64()
		})},
		{"gaps", metric.Counter, []point{{start: 60, sum: 1}, {start: 180, sum: 2}, {start: 7140, sum: 3}}},
		{"histograms", metric.Histogram, mk(120, func(i int, p *point) {
			p.h = toHData(latencyHist(r, 200))
			p.errCount, p.errTracked = uint64(r.IntN(3)), true
		})},
		{"histograms with empties and negatives", metric.Histogram, mk(30, func(i int, p *point) {
			h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
			for j := range i % 4 * 50 {
				h.Record(r.NormFloat64() * float64(j))
			}
			h.Record(0)
			p.h = toHData(h)
		})},
		{"one point", metric.Histogram, mk(1, func(i int, p *point) { p.h = toHData(latencyHist(r, 5)) })},
	}
	// Histograms also at 1 h: coarse tiers write them packed (version 2).
	for _, tc := range tests {
		if tc.kind != metric.Histogram {
			continue
		}
		pts := make([]point, len(tc.pts))
		for i, p := range tc.pts {
			p.start *= 60
			pts[i] = p
		}
		tests = append(tests, struct {
			name string
			kind metric.Kind
			pts  []point
		}{tc.name + " packed", tc.kind, pts})
	}
	tests = append(tests, struct {
		name string
		kind metric.Kind
		pts  []point
	}{"packed wide counts", metric.Histogram, []point{
		{start: 3600, h: &hdata{scale: 3, pos: buckets{offset: -7, counts: []uint64{1 << 60, 0, 0, 3, math.MaxUint64 >> 1}}, neg: buckets{offset: 4, counts: []uint64{0, 0, 0, 0, 0, 0, 0, 0, 0, 9}}}},
		{start: 7200, h: &hdata{scale: 3, pos: buckets{offset: 100, counts: []uint64{math.MaxUint64}}}},
		{start: 10800, h: &hdata{scale: -2, pos: buckets{offset: 0, counts: []uint64{5, 1 << 56, 1<<57 - 1, 7}}}},
	}})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := int64(60)
			if strings.HasPrefix(tc.name, "packed") || strings.HasSuffix(tc.name, " packed") {
				res = 3600
			}
			b := encodeChunk(nil, tc.kind, res, tc.pts)
			if want := byte(chunkVersion); tc.kind == metric.Histogram && res >= packedMinRes {
				if b[0] != chunkPacked {
					t.Fatalf("version %d, want %d", b[0], chunkPacked)
				}
			} else if b[0] != want {
				t.Fatalf("version %d, want %d", b[0], want)
			}
			kind, got, err := decodeChunk(b)
			if err != nil {
				t.Fatal(err)
			}
			if kind != tc.kind {
				t.Errorf("kind %v, want %v", kind, tc.kind)
			}
			if len(got) != len(tc.pts) {
				t.Fatalf("%d points, want %d", len(got), len(tc.pts))
			}
			for i := range got {
				if !samePoint(got[i], tc.pts[i]) {
					t.Fatalf("point %d:\n got %+v %+v\nwant %+v %+v", i, got[i], got[i].h, tc.pts[i], tc.pts[i].h)
				}
			}
			t.Logf("%d points, %d bytes, %.2f B/point", len(got), len(b), float64(len(b))/float64(len(got)))
		})
	}
}

// TestChunkPartialDecode checks the query decodes: counts only, and the
// buckets of some windows only, for range-coded and packed chunks.
func TestChunkPartialDecode(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, res := range []int64{60, 3600} {
		pts := make([]point, 120)
		for i := range pts {
			pts[i] = point{start: res * int64(1000+i), errCount: uint64(i % 3), errTracked: true, h: toHData(latencyHist(r, 100+i))}
		}
		b := encodeChunk(nil, metric.Histogram, res, pts)
		_, got, err := decodeChunkWith(b, decodeOptions{countsOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range got {
			if p.start != pts[i].start || p.count != pts[i].h.count || p.errCount != pts[i].errCount || !p.errTracked || p.h != nil {
				t.Fatalf("res %d counts only, point %d: %+v", res, i, p)
			}
		}
		for _, wantAny := range []bool{true, false} {
			want := func(start int64) bool { return wantAny && (start/res)%7 == 3 }
			_, got, err = decodeChunkWith(b, decodeOptions{want: want})
			if err != nil {
				t.Fatal(err)
			}
			if res == 3600 {
				// Packed: the wanted windows only, whole.
				var exp []point
				for _, p := range pts {
					if want(p.start) {
						exp = append(exp, p)
					}
				}
				if len(got) != len(exp) {
					t.Fatalf("res %d: %d points, want %d", res, len(got), len(exp))
				}
				for i, p := range got {
					if !samePoint(p, exp[i]) {
						t.Fatalf("res %d point %d: got %+v %+v, want %+v", res, i, p, p.h, exp[i].h)
					}
				}
				continue
			}
			for i, p := range got {
				switch {
				case want(p.start) || wantAny:
					// Range-coded chunks decode every window when one is wanted.
					if p.h.summary || !samePoint(p, pts[i]) {
						t.Fatalf("res %d point %d: got %+v %+v, want %+v", res, i, p, p.h, pts[i].h)
					}
				default:
					if !p.h.summary || p.h.pos.counts != nil || p.h.count != pts[i].h.count || p.h.sum != pts[i].h.sum || p.h.max != pts[i].h.max {
						t.Fatalf("res %d point %d: want a summary, got %+v", res, i, p.h)
					}
				}
			}
		}
	}
}

// samePoint compares bit for bit (NaN equals NaN, -0 differs from 0).
func samePoint(a, b point) bool {
	fs := func(p point) []uint64 {
		return []uint64{math.Float64bits(p.sum), math.Float64bits(p.last), math.Float64bits(p.min), math.Float64bits(p.max)}
	}
	if a.start != b.start || a.count != b.count || a.errCount != b.errCount || a.errTracked != b.errTracked || !reflect.DeepEqual(fs(a), fs(b)) {
		return false
	}
	if (a.h == nil) != (b.h == nil) {
		return false
	}
	if a.h == nil {
		return true
	}
	x, y := *a.h, *b.h
	norm := func(b *buckets) {
		if len(b.counts) == 0 {
			*b = buckets{}
		}
	}
	norm(&x.pos)
	norm(&x.neg)
	norm(&y.pos)
	norm(&y.neg)
	return x.scale == y.scale && math.Float64bits(x.zeroThreshold) == math.Float64bits(y.zeroThreshold) &&
		x.zeroCount == y.zeroCount && x.count == y.count && math.Float64bits(x.sum) == math.Float64bits(y.sum) &&
		math.Float64bits(x.min) == math.Float64bits(y.min) && math.Float64bits(x.max) == math.Float64bits(y.max) &&
		reflect.DeepEqual(x.pos, y.pos) && reflect.DeepEqual(x.neg, y.neg)
}

func FuzzDecodeChunk(f *testing.F) {
	r := rand.New(rand.NewPCG(3, 4))
	f.Add(encodeChunk(nil, metric.Counter, 60, []point{{start: 60, sum: 3}, {start: 120, sum: 4}}))
	f.Add(encodeChunk(nil, metric.Gauge, 60, []point{{start: 60, sum: 3, last: 1.5, count: 2}}))
	f.Add(encodeChunk(nil, metric.Histogram, 60, []point{{start: 60, h: toHData(latencyHist(r, 50))}, {start: 120, h: toHData(latencyHist(r, 50))}}))
	f.Add(encodeChunk(nil, metric.Histogram, 3600, []point{{start: 3600, h: toHData(latencyHist(r, 50))}, {start: 7200, h: toHData(latencyHist(r, 3))}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, pts, err := decodeChunk(b)
		if err != nil {
			return
		}
		// Whatever decodes must re-encode to something that decodes the same.
		if len(pts) > 0 {
			res := int64(1)
			for _, p := range pts[1:] {
				if p.start <= pts[0].start {
					return
				}
			}
			_, again, err := decodeChunk(encodeChunk(nil, kind, res, pts))
			if err != nil || len(again) != len(pts) {
				t.Fatalf("re-encode: %v, %d points want %d", err, len(again), len(pts))
			}
		}
	})
}

func TestHistogramConversion(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	h := latencyHist(r, 1000)
	back, err := toHData(h).histogram()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []float64{0.5, 0.9, 0.99} {
		if a, b := h.Quantile(q), back.Quantile(q); a != b {
			t.Errorf("p%v: %v after round trip, want %v", q*100, b, a)
		}
	}
	if h.Count() != back.Count() || h.Sum() != back.Sum() || h.Min() != back.Min() || h.Max() != back.Max() {
		t.Errorf("summary changed: %v %v %v %v vs %v %v %v %v", back.Count(), back.Sum(), back.Min(), back.Max(), h.Count(), h.Sum(), h.Min(), h.Max())
	}
}

// TestLog2Int checks the coder's fast floor(log2) against math.Log2, which
// the encoder used: a different level would decode a different count.
func TestLog2Int(t *testing.T) {
	check := func(x float64) {
		t.Helper()
		if got, want := log2Int(x), int(math.Log2(x)); got != want {
			t.Fatalf("log2Int(%v) = %d, int(math.Log2) = %d", x, got, want)
		}
	}
	for e := 0; e < 70; e++ {
		p := math.Ldexp(1, e)
		for _, x := range []float64{p, math.Nextafter(p, 0), math.Nextafter(p, math.Inf(1)), p * (1 - 1e-9), p * (1 - 1e-10), p * 1.5, p * (1 - 1e-16)} {
			if x >= 1 {
				check(x)
			}
		}
	}
	r := rand.New(rand.NewPCG(9, 9))
	for range 200_000 {
		check(1 + r.ExpFloat64()*1e4)
	}
}

// TestPackedTooBig: a chunk of hourly histograms too big to stay in its
// SQLite page when packed is written range-coded, and reads back the same.
func TestPackedTooBig(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 1))
	pts := make([]point, 120)
	for i := range pts {
		pts[i] = point{start: 3600 * int64(1000+i), h: toHData(latencyHist(r, 12000))}
	}
	b := encodeChunk(nil, metric.Histogram, 3600, pts)
	if b[0] != chunkVersion {
		t.Fatalf("version %d for a %d-byte chunk, want %d (range-coded)", b[0], len(b), chunkVersion)
	}
	if packed := encodeChunkVersion(nil, chunkPacked, metric.Histogram, 3600, pts); len(packed) <= packedMaxBytes {
		t.Fatalf("packed is %d bytes: the test needs a bigger chunk", len(packed))
	}
	if len(b) > packedMaxBytes {
		t.Fatalf("range-coded is %d bytes: the test needs one that fits its page", len(b))
	}
	// A chunk neither way fits in its page: packed (the same overflow page).
	big := slices.Clone(pts)
	for i := range big {
		// 150 latencies with ~20-bit counts: ~400 bytes an hour either way.
		h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		for j := range 150 {
			h.RecordN(math.Exp(float64(j)*0.04-4), uint64(100_000+r.IntN(900_000)))
		}
		big[i].h = toHData(h)
	}
	if p, rc := encodeChunkVersion(nil, chunkPacked, metric.Histogram, 3600, big), encodeChunkVersion(nil, chunkVersion, metric.Histogram, 3600, big); len(rc) <= packedMaxBytes || len(p) > packedOverflowMax {
		t.Fatalf("packed %d, range-coded %d bytes: the test needs both over %d and packed within %d", len(p), len(rc), packedMaxBytes, packedOverflowMax)
	}
	if v := encodeChunk(nil, metric.Histogram, 3600, big)[0]; v != chunkPacked {
		t.Fatalf("version %d for a chunk that overflows either way, want %d (packed)", v, chunkPacked)
	}
	// Daily chunks are packed whatever their size.
	days := slices.Clone(pts)
	for i := range days {
		days[i].start *= 24
	}
	if v := encodeChunk(nil, metric.Histogram, 86400, days)[0]; v != chunkPacked {
		t.Fatalf("daily chunk version %d, want %d", v, chunkPacked)
	}
	_, got, err := decodeChunk(b)
	if err != nil || len(got) != len(pts) {
		t.Fatalf("%d points, %v", len(got), err)
	}
	for i := range got {
		if !samePoint(got[i], pts[i]) {
			t.Fatalf("point %d differs", i)
		}
	}
}
