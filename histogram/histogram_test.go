package histogram

import (
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

const seed = 20260824

// Test data sets (fixed seed): the notes' three plus the edge shapes the
// issue asks for.
func dataset(name string, n int) []float64 {
	r := rand.New(rand.NewPCG(seed, uint64(len(name))))
	out := make([]float64, n)
	for i := range out {
		switch name {
		case "lognormal":
			out[i] = math.Exp(math.Log(0.05) + r.NormFloat64())
		case "uniform":
			out[i] = r.Float64()
			for out[i] == 0 {
				out[i] = r.Float64()
			}
		case "pareto":
			out[i] = 0.001 / math.Pow(1-r.Float64(), 1/1.16)
		case "bimodal":
			if r.IntN(10) < 7 {
				out[i] = math.Exp(math.Log(0.002) + 0.3*r.NormFloat64())
			} else {
				out[i] = math.Exp(math.Log(0.8) + 0.2*r.NormFloat64())
			}
		case "constant":
			out[i] = 0.125 * 3
		case "mixed": // negatives and zeros
			switch r.IntN(5) {
			case 0:
				out[i] = 0
			case 1, 2:
				out[i] = -math.Exp(r.NormFloat64() * 2)
			default:
				out[i] = math.Exp(r.NormFloat64() * 2)
			}
		default:
			panic("BUG: unknown data set " + name)
		}
	}
	return out
}

var datasets = []string{"lognormal", "uniform", "pareto", "bimodal", "constant", "mixed"}

func record(h *Histogram, vs []float64) *Histogram {
	for _, v := range vs {
		h.Record(v)
	}
	return h
}

// checkInvariants verifies the internal layout rules.
func checkInvariants(t testing.TB, h *Histogram) {
	t.Helper()
	if int(h.posLen)+int(h.negLen) > int(h.cap) {
		t.Fatalf("ranges %d+%d exceed cap %d", h.posLen, h.negLen, h.cap)
	}
	if int(h.posLen) > int(h.maxSize) || int(h.negLen) > int(h.maxSize) {
		t.Fatalf("range exceeds maxSize %d: %d %d", h.maxSize, h.posLen, h.negLen)
	}
	for i := int(h.posLen); i < int(h.cap)-int(h.negLen); i++ {
		if h.get(i) != 0 {
			t.Fatalf("free slot %d holds %d", i, h.get(i))
		}
	}
	if h.scale < int8(MinScale) || h.scale > h.maxScale {
		t.Fatalf("scale %d outside [%d, %d]", h.scale, MinScale, h.maxScale)
	}
	for _, neg := range []bool{false, true} {
		start, n, _ := h.region(neg)
		if n > 0 && (start < minIndex(int32(h.scale)) || start+n-1 > maxIndex(int32(h.scale))) {
			t.Fatalf("range [%d, %d] outside float64 at scale %d", start, start+n-1, h.scale)
		}
	}
}

func TestRecordBasics(t *testing.T) {
	h := New(0, 0)
	if h.Scale() != 20 || h.MaxSize() != 160 || h.Count() != 0 || h.Min() != 0 || h.Max() != 0 {
		t.Fatalf("new histogram: scale %d size %d count %d min %v max %v", h.Scale(), h.MaxSize(), h.Count(), h.Min(), h.Max())
	}
	for _, v := range []float64{1, 2, 3, -4, 0, math.NaN(), math.Inf(1), math.Inf(-1)} {
		h.Record(v)
	}
	if h.Count() != 5 || h.Dropped() != 3 || h.Sum() != 2 || h.Min() != -4 || h.Max() != 3 || h.ZeroCount() != 1 {
		t.Fatalf("count %d dropped %d sum %v min %v max %v zero %d", h.Count(), h.Dropped(), h.Sum(), h.Min(), h.Max(), h.ZeroCount())
	}
	if h.Mean() != 0.4 {
		t.Fatalf("mean %v", h.Mean())
	}
	checkInvariants(t, h)
	d := h.Data()
	// 1, 2, 3 at scale s: 1 and 2 are powers of two (upper ends of buckets).
	if d.Count != 5 || d.ZeroCount != 1 {
		t.Fatalf("data %+v", d)
	}
}

func TestZeroValue(t *testing.T) {
	var h Histogram
	if h.Count() != 0 || h.Scale() != DefaultMaxScale || h.MaxSize() != DefaultMaxSize || h.Min() != 0 {
		t.Fatal("zero value accessors")
	}
	h.Record(5)
	h.Record(-1)
	if h.Count() != 2 || h.Min() != -1 || h.Max() != 5 || h.Sum() != 4 {
		t.Fatalf("zero value after records: count %d min %v max %v", h.Count(), h.Min(), h.Max())
	}
	var g Histogram
	g.Record(0)
	g.Record(3)
	if g.Min() != 0 || g.Max() != 3 || g.Count() != 2 {
		t.Fatalf("zero value: %v %v %d", g.Min(), g.Max(), g.Count())
	}
	var m Histogram
	m.Merge(&g)
	if m.Count() != 2 || m.Max() != 3 {
		t.Fatal("merge into zero value")
	}
}

func TestDownscaleAutomatic(t *testing.T) {
	for _, name := range datasets {
		h := record(New(0, 0), dataset(name, 20000))
		checkInvariants(t, h)
		// The scale is the largest at which the data fits 160 buckets.
		d := h.Data()
		if n := len(d.Positive.Counts); n > 160 {
			t.Fatalf("%s: %d buckets", name, n)
		}
		if h.Scale() < MaxScale {
			up := NewAtScale(160, h.Scale()+1)
			up.maxScale = int8(h.Scale() + 1)
			vs := dataset(name, 20000)
			lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
			nlo, nhi := int64(math.MaxInt64), int64(math.MinInt64)
			for _, v := range vs {
				if v == 0 {
					continue
				}
				k := int64(mapIndex(math.Float64bits(math.Abs(v)), h.Scale()+1))
				if v > 0 {
					lo, hi = min(lo, k), max(hi, k)
				} else {
					nlo, nhi = min(nlo, k), max(nhi, k)
				}
			}
			if hi-lo+1 <= 160 && nhi-nlo+1 <= 160 {
				t.Errorf("%s: ended at scale %d although scale %d fits", name, h.Scale(), h.Scale()+1)
			}
		}
		t.Logf("%-9s scale %3d pos %3d neg %3d buckets", name, h.Scale(), len(d.Positive.Counts), len(d.Negative.Counts))
	}
}

func TestRecordAllocs(t *testing.T) {
	vs := dataset("lognormal", 4096)
	h := record(New(0, 0), vs)
	i := 0
	allocs := testing.AllocsPerRun(10000, func() {
		h.Record(vs[i&4095])
		i++
	})
	if allocs != 0 {
		t.Fatalf("Record allocates: %v", allocs)
	}
}

// equalHist compares two histograms' data; sums within rounding.
func equalHist(t testing.TB, what string, a, b *Histogram) {
	t.Helper()
	da, db := a.Data(), b.Data()
	sa, sb := da.Sum, db.Sum
	da.Sum, db.Sum = 0, 0
	if !reflect.DeepEqual(da, db) {
		t.Fatalf("%s: histograms differ:\n%+v\n%+v", what, da, db)
	}
	if math.Abs(sa-sb) > 1e-9*max(1, math.Abs(sa)) {
		t.Fatalf("%s: sums differ: %v %v", what, sa, sb)
	}
	if a.Dropped() != b.Dropped() {
		t.Fatalf("%s: dropped %d vs %d", what, a.Dropped(), b.Dropped())
	}
}

// equalBuckets is equalHist without the sum.
func equalBuckets(t testing.TB, what string, a, b *Histogram) {
	t.Helper()
	da, db := a.Data(), b.Data()
	da.Sum, db.Sum = 0, 0
	if !reflect.DeepEqual(da, db) || a.Dropped() != b.Dropped() {
		t.Fatalf("%s: histograms differ:\n%+v\n%+v", what, da, db)
	}
}

func TestMergeLaws(t *testing.T) {
	for _, an := range datasets {
		for _, bn := range datasets {
			a := dataset(an, 3000)
			b := dataset(bn, 2000)
			for i := range b {
				b[i] *= 7.3 // shift so ranges differ
			}
			ha, hb := record(New(0, 0), a), record(New(0, 0), b)
			all := record(record(New(0, 0), a), b)
			ab := ha.Clone()
			ab.Merge(hb)
			ba := hb.Clone()
			ba.Merge(ha)
			checkInvariants(t, ab)
			equalHist(t, an+"+"+bn, ab, all)
			equalHist(t, bn+"+"+an, ba, all)
			// o unchanged
			equalHist(t, "source unchanged", hb, record(New(0, 0), b))
			m := New(0, 0)
			MergeAll(m, []*Histogram{ha, nil, hb})
			equalHist(t, "MergeAll "+an+"+"+bn, m, all)
		}
	}
}

func TestMergeAllWindow(t *testing.T) {
	vs := dataset("lognormal", 60*200)
	var hs []*Histogram
	all := New(0, 0)
	for i := 0; i < 60; i++ {
		part := vs[i*200 : (i+1)*200]
		for j := range part {
			part[j] *= float64(i + 1)
		}
		hs = append(hs, record(New(0, 0), part))
		record(all, part)
	}
	dst := New(0, 0)
	MergeAll(dst, hs)
	equalHist(t, "60 windows", dst, all)
	seq := New(0, 0)
	for _, h := range hs {
		seq.Merge(h)
	}
	equalHist(t, "sequential", seq, all)
}

// exactQuantile is the observation of 0-based rank floor(q·(n-1)).
func exactQuantile(sorted []float64, q float64) float64 {
	return sorted[int(math.Floor(q*float64(len(sorted)-1)))]
}

func TestQuantileAccuracy(t *testing.T) {
	qs := []float64{0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1}
	for _, name := range datasets {
		vs := dataset(name, 100000)
		h := record(New(0, 0), vs)
		sorted := slices.Clone(vs)
		slices.Sort(sorted)
		bound := h.RelativeError()
		var maxMid, maxInterp, sumInterp float64
		n := 0
		for _, q := range qs {
			x := exactQuantile(sorted, q)
			mid, ip := h.QuantileMidpoint(q), h.Quantile(q)
			if x == 0 {
				if mid != 0 || ip != 0 {
					t.Errorf("%s q=%v: exact 0, got %v %v", name, q, mid, ip)
				}
				continue
			}
			em := math.Abs(mid-x) / math.Abs(x)
			ei := math.Abs(ip-x) / math.Abs(x)
			if em > bound*(1+1e-9) {
				t.Errorf("%s q=%v: midpoint %v exact %v error %.4f%% > bound %.4f%%", name, q, mid, x, 100*em, 100*bound)
			}
			if ei > (2*bound/(1-bound))*(1+1e-9) { // base-1
				t.Errorf("%s q=%v: interpolated %v exact %v error %.4f%%", name, q, ip, x, 100*ei)
			}
			maxMid, maxInterp = max(maxMid, em), max(maxInterp, ei)
			sumInterp += ei
			n++
		}
		t.Logf("%-9s scale %2d bound %.3f%%: midpoint max %.3f%%, interpolation max %.3f%% mean %.3f%%",
			name, h.Scale(), 100*bound, 100*maxMid, 100*maxInterp, 100*sumInterp/float64(n))
	}
}

func TestFractionBelow(t *testing.T) {
	for _, name := range datasets {
		vs := dataset(name, 50000)
		h := record(New(0, 0), vs)
		sorted := slices.Clone(vs)
		slices.Sort(sorted)
		for _, q := range []float64{0.05, 0.5, 0.9, 0.99} {
			x := exactQuantile(sorted, q)
			want := float64(sortSearchLE(sorted, x)) / float64(len(sorted))
			got := h.FractionBelow(x)
			// The share can only be wrong by the observations of one bucket.
			if math.Abs(got-want) > 0.05 {
				t.Errorf("%s: FractionBelow(%v) = %v, want about %v", name, x, got, want)
			}
		}
		if h.FractionBelow(math.Inf(1)) != 1 || h.FractionBelow(math.Inf(-1)) != 0 {
			t.Errorf("%s: FractionBelow at ±Inf", name)
		}
	}
	// Exact at bucket boundaries.
	h := New(0, 0)
	for _, v := range []float64{0.5, 1, 1.5, 2, 3, 4} {
		h.Record(v)
	}
	h.Downscale(h.Scale()) // scale 0: boundaries at powers of two
	if got := h.FractionBelow(2); got != 4.0/6 {
		t.Errorf("FractionBelow(2) = %v, want 4/6", got)
	}
}

func sortSearchLE(sorted []float64, x float64) int {
	n, _ := slices.BinarySearchFunc(sorted, x, func(a, b float64) int {
		if a <= b {
			return -1
		}
		return 1
	})
	return n
}

// TestEncodedSize reports bytes per encoded histogram for the test
// distributions, for a 1-minute window (1,000 values) and a large one.
func TestEncodedSize(t *testing.T) {
	for _, n := range []int{1000, 100000} {
		for _, name := range datasets {
			h := record(New(0, 0), dataset(name, n))
			b, _ := h.AppendBinary(nil)
			d := h.Data()
			t.Logf("%7d values %-9s scale %2d, %3d+%3d buckets: %4d bytes", n, name, h.Scale(),
				len(d.Positive.Counts), len(d.Negative.Counts), len(b))
		}
	}
}

func TestDataRoundTrip(t *testing.T) {
	for _, name := range datasets {
		h := record(New(0, 0), dataset(name, 5000))
		g, err := FromData(h.Data(), 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		equalHist(t, name, g, h)
		b, _ := h.MarshalBinary()
		var u Histogram
		if err := u.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		u.dropped = h.dropped
		equalHist(t, name+" binary", &u, h)
		t.Logf("%-9s %d buckets, %d bytes encoded", name, h.posLen+h.negLen, len(b))
	}
}

func TestFromDataErrors(t *testing.T) {
	good := Data{Scale: 3, Positive: Buckets{Offset: -5, Counts: []uint64{1, 2}}, Count: 3, Sum: 1, Min: 0.5, Max: 0.7}
	if _, err := FromData(good, 0, 0); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Data){
		"count":     func(d *Data) { d.Count = 4 },
		"scale":     func(d *Data) { d.Scale = -11 },
		"threshold": func(d *Data) { d.ZeroThreshold = -1 },
		"minmax":    func(d *Data) { d.Min = 2 },
		"index":     func(d *Data) { d.Scale = -10; d.Positive.Offset = 5 },
	} {
		d := good
		mod(&d)
		if _, err := FromData(d, 0, 0); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestNativeRoundTrip(t *testing.T) {
	for _, name := range datasets {
		h := record(New(0, 0), dataset(name, 5000))
		n := h.Native()
		g, err := FromNative(n, 0, 0)
		if err != nil {
			t.Fatal(name, err)
		}
		want := h.Clone()
		if want.Scale() > 8 {
			want.Downscale(want.Scale() - 8)
		}
		gd, wd := g.Data(), want.Data()
		gd.Min, gd.Max, wd.Min, wd.Max = 0, 0, 0, 0
		if !reflect.DeepEqual(gd, wd) {
			t.Fatalf("%s: native round trip differs\n%+v\n%+v", name, gd, wd)
		}
	}
}

func TestFromNative(t *testing.T) {
	// client_golang-style: schema 3, buckets at Prometheus indices 1,2 and 5.
	n := Native{Schema: 3, ZeroThreshold: 0x1p-128, ZeroCount: 2, Count: 11, Sum: 10,
		PositiveSpans: []Span{{Offset: 1, Length: 2}, {Offset: 2, Length: 1}}, PositiveDeltas: []int64{3, -1, 1}}
	h, err := FromNative(n, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := h.Data()
	if d.Scale != 3 || d.Positive.Offset != 0 || !reflect.DeepEqual(d.Positive.Counts, []uint64{3, 2, 0, 0, 3}) || h.Dropped() != 1 || d.Count != 10 {
		t.Fatalf("got %+v dropped %d", d, h.Dropped())
	}
	for name, bad := range map[string]Native{
		"schema":  {Schema: 9},
		"spans":   {Schema: 0, Count: 1, PositiveSpans: []Span{{0, 2}}, PositiveDeltas: []int64{1}},
		"neg":     {Schema: 0, Count: 1, PositiveSpans: []Span{{0, 2}}, PositiveDeltas: []int64{1, -2}},
		"count":   {Schema: 0, Count: 0, PositiveSpans: []Span{{0, 1}}, PositiveDeltas: []int64{1}},
		"custom":  {Schema: -53},
		"bigspan": {Schema: 0, Count: 1, PositiveSpans: []Span{{1 << 30, 1}}, PositiveDeltas: []int64{1}},
	} {
		if _, err := FromNative(bad, 0, 0); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestFromExplicitExact(t *testing.T) {
	// Power-of-two bounds: each bucket is one bucket at scale 0.
	bounds := []float64{0.25, 0.5, 1, 2, 4, 8}
	vs := dataset("lognormal", 10000)
	counts := make([]uint64, len(bounds)+1)
	ref := NewAtScale(160, 0)
	var sum float64
	for _, v := range vs {
		v *= 20
		i, _ := slices.BinarySearch(bounds, v)
		counts[i]++
		sum += v
		if i > 0 && i < len(bounds) {
			ref.Record(v)
		}
	}
	counts[0], counts[len(bounds)] = 0, 0
	h, err := FromExplicit(bounds, counts, sum, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if h.Scale() != 0 {
		t.Fatalf("scale %d, want 0", h.Scale())
	}
	hd, rd := h.Data(), ref.Data()
	if !reflect.DeepEqual(hd.Positive, rd.Positive) || hd.Count != rd.Count {
		t.Fatalf("explicit power-of-two not exact:\n%+v\n%+v", hd, rd)
	}
	if _, err := FromExplicit([]float64{1, 1}, []uint64{0, 0, 0}, 0, 0, 0); err == nil {
		t.Error("non-ascending bounds accepted")
	}
	if _, err := FromExplicit([]float64{1}, []uint64{0}, 0, 0, 0); err == nil {
		t.Error("wrong count length accepted")
	}
}

func TestConcurrent(t *testing.T) {
	c := NewConcurrent(0, 0)
	vs := dataset("lognormal", 32000)
	// 32 goroutines: more than the shards, so collisions (lockSlow) happen;
	// a concurrent Snapshot runs meanwhile.
	done := make(chan bool)
	for g := 0; g < 32; g++ {
		go func(g int) {
			for i, v := range vs[g*1000 : (g+1)*1000] {
				if i%2 == 0 {
					c.Record(v)
				} else {
					c.RecordN(v, 1)
				}
			}
			done <- true
		}(g)
	}
	dst := New(0, 0)
	c.Snapshot(dst)
	for g := 0; g < 32; g++ {
		<-done
	}
	c.Snapshot(dst)
	equalHist(t, "concurrent", dst, record(New(0, 0), vs))
	again := New(0, 0)
	c.Snapshot(again)
	if again.Count() != 0 {
		t.Fatal("snapshot did not reset")
	}
}

func TestResetCloneDownscale(t *testing.T) {
	h := record(New(0, 0), dataset("mixed", 3000))
	c := h.Clone()
	equalHist(t, "clone", c, h)
	c.Record(1e9)
	if h.Max() == 1e9 {
		t.Fatal("clone shares state")
	}
	s := h.Scale()
	h.Downscale(2)
	if h.Scale() != s-2 {
		t.Fatal("downscale")
	}
	checkInvariants(t, h)
	if h.Count() != c.Count()-1 {
		t.Fatal("downscale lost counts")
	}
	h.Reset()
	if h.Count() != 0 || h.Scale() != 20 || h.Sum() != 0 || h.Min() != 0 {
		t.Fatal("reset")
	}
	record(h, dataset("uniform", 100))
	checkInvariants(t, h)
}

func TestMergeZeroThreshold(t *testing.T) {
	vs := dataset("mixed", 4000)
	for _, zt := range []float64{0x1p-128, 0.001, 0.3, 1} {
		a, err := FromData(Data{Scale: 20, ZeroThreshold: zt}, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := New(0, 0)
		record(a, vs[:2000])
		record(b, vs[2000:])
		var below uint64
		for _, v := range vs {
			if math.Abs(v) <= zt {
				below++
			}
		}
		for _, order := range []string{"a+b", "b+a"} {
			var m *Histogram
			if order == "a+b" {
				m = a.Clone()
				m.Merge(b)
			} else {
				m = b.Clone()
				m.Merge(a)
			}
			checkInvariants(t, m)
			if m.Count() != uint64(len(vs)) {
				t.Fatalf("zt %v %s: count %d", zt, order, m.Count())
			}
			if m.ZeroThreshold() < zt || m.ZeroCount() < below {
				t.Fatalf("zt %v %s: threshold %v zero count %d < %d", zt, order, m.ZeroThreshold(), m.ZeroCount(), below)
			}
			// No bucket lies entirely at or below the threshold.
			d := m.Data()
			k := mapIndex(math.Float64bits(m.ZeroThreshold()), d.Scale)
			if len(d.Positive.Counts) > 0 && d.Positive.Offset < k {
				t.Fatalf("zt %v %s: positive bucket %d below threshold bucket %d", zt, order, d.Positive.Offset, k)
			}
			if len(d.Negative.Counts) > 0 && d.Negative.Offset < k {
				t.Fatalf("zt %v %s: negative bucket below threshold", zt, order)
			}
			// Estimates stay sane.
			if q := m.Quantile(0.5); q < m.Min() || q > m.Max() {
				t.Fatalf("median %v outside [%v, %v]", q, m.Min(), m.Max())
			}
		}
	}
}

func TestExtremeRange(t *testing.T) {
	for _, size := range []int{4, 5, 160} {
		h := New(size, 0)
		vs := []float64{math.SmallestNonzeroFloat64, math.MaxFloat64, -math.MaxFloat64, -math.SmallestNonzeroFloat64, 1, 0x1p-1022}
		record(h, vs)
		checkInvariants(t, h)
		if h.Count() != uint64(len(vs)) || h.Min() != -math.MaxFloat64 || h.Max() != math.MaxFloat64 {
			t.Fatalf("size %d: count %d", size, h.Count())
		}
		if q := h.Quantile(0.5); q < h.Min() || q > h.Max() {
			t.Fatal("quantile")
		}
		b, _ := h.MarshalBinary()
		g := New(size, 0)
		if err := g.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		equalBuckets(t, "extreme round trip", g, h)
		t.Logf("maxSize %d: scale %d", size, h.Scale())
	}
}

func TestFromDataDownscales(t *testing.T) {
	vs := dataset("bimodal", 5000)
	fine := record(New(1000, 20), vs)         // ends at a fine scale
	for _, ms := range []int32{8, 3, 1, -3} { // 0 would mean the default (20)
		g, err := FromData(fine.Data(), 160, ms)
		if err != nil {
			t.Fatal(err)
		}
		want := record(NewAtScale(160, ms), vs)
		equalHist(t, "FromData maxScale", g, want)
	}
	// Narrower maxSize than the data needs.
	g, err := FromData(fine.Data(), 20, 20)
	if err != nil {
		t.Fatal(err)
	}
	equalHist(t, "FromData maxSize", g, record(New(20, 20), vs))
}

func TestMergeAllIncludesDst(t *testing.T) {
	a := record(New(0, 0), dataset("lognormal", 1000))
	b := record(New(0, 0), dataset("pareto", 1000))
	want := a.Clone()
	want.Merge(a)
	want.Merge(b)
	MergeAll(a, []*Histogram{a, b})
	equalHist(t, "MergeAll with dst inside", a, want)
}

func TestRecordNegativeZero(t *testing.T) {
	h := New(0, 0)
	h.Record(math.Copysign(0, -1))
	h.RecordN(2, 3)
	h.RecordN(math.NaN(), 2)
	if h.ZeroCount() != 1 || h.Count() != 4 || h.Dropped() != 2 || h.Sum() != 6 {
		t.Fatalf("zero %d count %d dropped %d sum %v", h.ZeroCount(), h.Count(), h.Dropped(), h.Sum())
	}
}

func TestNativeCoarseScale(t *testing.T) {
	h := record(NewAtScale(160, -6), dataset("mixed", 2000))
	n := h.Native()
	if n.Schema != -4 || n.Count != h.Count() {
		t.Fatalf("schema %d count %d", n.Schema, n.Count)
	}
	g, err := FromNative(n, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if g.Count() != h.Count() || g.ZeroCount() != h.ZeroCount() {
		t.Fatalf("count %d/%d", g.Count(), h.Count())
	}
}

// TestMergeWidens: sums that outgrow the destination's counter width in
// the middle of a run (same scale and across scales) widen and resume.
func TestMergeWidens(t *testing.T) {
	for _, srcScale := range []int32{3, 5} {
		dst := NewAtScale(160, 3)
		src := NewAtScale(160, srcScale)
		var vals []float64
		for i := 0; i < 40; i++ {
			vals = append(vals, math.Exp2(float64(i)/8+0.01))
		}
		for _, v := range vals {
			dst.RecordN(v, 200)
			src.RecordN(v, uint64(60+i8(v)))
		}
		if dst.width != 0 {
			t.Fatalf("dst width %d, want 8-bit counters", dst.width)
		}
		want := dst.Clone()
		for _, v := range vals {
			want.RecordN(v, uint64(60+i8(v)))
		}
		dst.Merge(src)
		equalBuckets(t, "widening merge", dst, want)
		if dst.width == 0 {
			t.Fatal("not widened")
		}
	}
}

func i8(v float64) int { return int(v) % 7 }
