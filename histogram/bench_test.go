package histogram

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"testing"
)

const benchN = 1 << 16 // values per data set, taken cyclically

var benchSets = []string{"lognormal", "uniform", "pareto"}

func BenchmarkRecord(b *testing.B) {
	for _, name := range benchSets {
		vs := dataset(name, benchN)
		b.Run(name, func(b *testing.B) {
			h := New(0, 0)
			b.ReportAllocs()
			b.ResetTimer()
			ct := startCPU(b, false)
			for i := 0; i < b.N; i++ {
				h.Record(vs[i&(benchN-1)])
			}
			ct.stop(b)
		})
	}
}

// BenchmarkRecordConcurrent: one Concurrent histogram, GOMAXPROCS
// goroutines (2 on the reference machine); ns/op = wall time / all values.
func BenchmarkRecordConcurrent(b *testing.B) {
	vs := dataset("lognormal", benchN)
	b.Run("parallel", func(b *testing.B) {
		c := NewConcurrent(0, 0)
		b.ReportAllocs()
		b.ResetTimer()
		ct := startCPU(b, true)
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				c.Record(vs[i&(benchN-1)])
				i++
			}
		})
		ct.stop(b)
	})
	b.Run("serial", func(b *testing.B) {
		c := NewConcurrent(0, 0)
		b.ReportAllocs()
		b.ResetTimer()
		ct := startCPU(b, false)
		for i := 0; i < b.N; i++ {
			c.Record(vs[i&(benchN-1)])
		}
		ct.stop(b)
	})
}

// mergePair returns destination and source as in the notes: same-scale =
// the two halves of the lognormal set (scale 3); cross-scale = half the
// uniform set (scale 3) and lognormal with halved log spread (scale 4).
func mergePair(kind string) (dst, src *Histogram) {
	ln := dataset("lognormal", 1<<18)
	switch kind {
	case "same-scale":
		return record(New(0, 0), ln[:1<<17]), record(New(0, 0), ln[1<<17:])
	default:
		un := dataset("uniform", 1<<18)
		half := make([]float64, 1<<17)
		for i := range half {
			half[i] = math.Exp((math.Log(ln[i])-math.Log(0.05))/2 + math.Log(0.05))
		}
		return record(New(0, 0), un[:1<<17]), record(New(0, 0), half)
	}
}

func BenchmarkMerge(b *testing.B) {
	for _, kind := range []string{"same-scale", "cross-scale"} {
		b.Run(kind, func(b *testing.B) {
			dst, src := mergePair(kind)
			dst.Merge(src) // may downscale dst; not timed
			b.ReportAllocs()
			b.ResetTimer()
			ct := startCPU(b, false)
			for i := 0; i < b.N; i++ {
				dst.Merge(src)
			}
			ct.stop(b)
			b.StopTimer()
			b.ReportMetric(float64(dst.Scale()), "dst-scale")
			b.ReportMetric(float64(src.Scale()), "src-scale")
		})
	}
}

// BenchmarkMergeAll merges a window of 60 per-second histograms and 1,000
// per-instance histograms into a fresh destination.
func BenchmarkMergeAll(b *testing.B) {
	for _, n := range []int{60, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			vs := dataset("lognormal", n*100)
			hs := make([]*Histogram, n)
			for i := range hs {
				hs[i] = record(New(0, 0), vs[i*100:(i+1)*100])
			}
			dst := New(0, 0)
			b.ReportAllocs()
			b.ResetTimer()
			ct := startCPU(b, false)
			for i := 0; i < b.N; i++ {
				dst.Reset()
				MergeAll(dst, hs)
			}
			ct.stop(b)
		})
	}
}

func BenchmarkQuantile(b *testing.B) {
	h := record(New(0, 0), dataset("lognormal", benchN))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		h.Quantile(0.99)
	}
}

func BenchmarkAppendBinary(b *testing.B) {
	h := record(New(0, 0), dataset("lognormal", benchN))
	buf, _ := h.AppendBinary(nil)
	b.ReportMetric(float64(len(buf)), "bytes/hist")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		buf, _ = h.AppendBinary(buf[:0])
	}
}

func BenchmarkUnmarshalBinary(b *testing.B) {
	buf, _ := record(New(0, 0), dataset("lognormal", benchN)).MarshalBinary()
	var h Histogram
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := h.UnmarshalBinary(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// memoryHistograms fills hs with histograms that each hold 160 buckets at
// scale 3 (one value per bucket over 20 powers of two, recorded 1000 times
// each), as in the notes' memory measurement.
// With viaRecordN each value is recorded once with n = 1000 (same final
// state, much faster; used by the test).
func memoryHistograms(hs []*Histogram, viaRecordN bool) {
	vals := make([]float64, 160)
	for i := range vals {
		vals[i] = math.Exp2((float64(i-80) + 0.5) / 8) // midpoint of scale-3 bucket i-80
	}
	for i := range hs {
		h := New(0, 0)
		if viaRecordN {
			for _, v := range vals {
				h.RecordN(v, 1000)
			}
		} else {
			for r := 0; r < 1000; r++ {
				for _, v := range vals {
					h.Record(v)
				}
			}
		}
		hs[i] = h
	}
}

// retainedBytes measures live heap per histogram after a GC (the slice
// holding them is allocated before the first reading).
func retainedBytes(n int, viaRecordN bool) (retained, allocated float64, hs []*Histogram) {
	var m0, m1 runtime.MemStats
	hs = make([]*Histogram, n)
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m0)
	memoryHistograms(hs, viaRecordN)
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m1)
	retained = float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / float64(n)
	allocated = float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n)
	return retained, allocated, hs
}

// BenchmarkRetained reports retained heap bytes per histogram holding 160
// buckets (uint16 counters) as a metric.
func BenchmarkRetained(b *testing.B) {
	var r, a float64
	for i := 0; i < b.N; i++ {
		var hs []*Histogram
		r, a, hs = retainedBytes(300, false)
		runtime.KeepAlive(hs)
	}
	b.ReportMetric(r, "retained-B/hist")
	b.ReportMetric(a, "allocated-B/hist")
	b.ReportMetric(0, "ns/op")
}

func TestRetainedMemory(t *testing.T) {
	r, a, hs := retainedBytes(2000, true)
	h := hs[0]
	if h.Scale() != 3 || h.posLen != 160 {
		t.Fatalf("scale %d, %d buckets", h.Scale(), h.posLen)
	}
	t.Logf("retained %.0f B, allocated %.0f B per histogram of 160 buckets; SizeBytes %d", r, a, h.SizeBytes())
	if h.SizeBytes() > 400 {
		t.Errorf("SizeBytes %d > 400", h.SizeBytes())
	}
	if r > 440 { // GC noise allowance; SizeBytes is the exact figure
		t.Errorf("retained %.0f B > 400", r)
	}
	runtime.KeepAlive(hs)
}

// BenchmarkFloor is the notes' "physical limit": one counter increment per
// value indexed by the exponent bits, for judging noisy runs by ratio.
func BenchmarkFloor(b *testing.B) {
	vs := dataset("lognormal", benchN)
	var counts [2048]uint64
	b.ReportAllocs()
	ct := startCPU(b, false)
	for i := 0; i < b.N; i++ {
		counts[math.Float64bits(vs[i&(benchN-1)])>>52&0x7ff]++
	}
	ct.stop(b)
	runtime.KeepAlive(&counts)
}

// BenchmarkRecordMutex is the naive alternative to Concurrent, for ratio:
// one Histogram behind one sync.Mutex.
func BenchmarkRecordMutex(b *testing.B) {
	vs := dataset("lognormal", benchN)
	var mu sync.Mutex
	h := New(0, 0)
	b.ReportAllocs()
	ct := startCPU(b, true)
	defer ct.stop(b)
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			mu.Lock()
			h.Record(vs[i&(benchN-1)])
			mu.Unlock()
			i++
		}
	})
}

// BenchmarkMergeFloor is the notes' merge floor: adding two [160]uint64.
func BenchmarkMergeFloor(b *testing.B) {
	var dst, src [160]uint64
	for i := range src {
		src[i] = uint64(i)
	}
	ct := startCPU(b, false)
	for i := 0; i < b.N; i++ {
		for j := range dst {
			dst[j] += src[j]
		}
	}
	ct.stop(b)
	runtime.KeepAlive(&dst)
}

// BenchmarkRecordScale measures Record at fixed scales: data whose range
// is narrow keeps a histogram at a high scale (constant data stays at 20).
func BenchmarkRecordScale(b *testing.B) {
	for _, s := range []int32{-2, 0, 3, 8, 10, 12, 16, 20} {
		b.Run(fmt.Sprint(s), func(b *testing.B) {
			// Values spanning 100 buckets at scale s (fits MaxSize 160).
			vs := dataset("uniform", benchN)
			w := math.Exp2(100 * math.Exp2(-float64(s)))
			for i := range vs {
				vs[i] = 1.5 * math.Pow(w, vs[i])
			}
			h := NewAtScale(160, s)
			record(h, vs)
			if h.Scale() != s {
				b.Fatalf("scale %d", h.Scale())
			}
			b.ReportAllocs()
			b.ResetTimer()
			ct := startCPU(b, false)
			for i := 0; i < b.N; i++ {
				h.Record(vs[i&(benchN-1)])
			}
			ct.stop(b)
		})
	}
}
