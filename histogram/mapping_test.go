package histogram

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
)

// exactAbove reports (2^52+m)^(2^s) > 2^(52·2^s+k) in integers.
func exactAbove(m uint64, k, s int) bool {
	x := new(big.Int).SetUint64(1<<52 + m)
	x.Exp(x, big.NewInt(int64(1)<<s), nil)
	return x.Cmp(new(big.Int).Lsh(big.NewInt(1), uint(52<<s+k))) > 0
}

// TestLUTThresholdsExact checks every generated threshold with exact
// integer arithmetic: threshold k is the smallest mantissa above 2^(k/1024).
func TestLUTThresholdsExact(t *testing.T) {
	if lutThresholds[0] != 0 || lutThresholds[1<<lutScale] != 1<<52 {
		t.Fatal("sentinels")
	}
	step := 1
	if testing.Short() {
		step = 37
	}
	for k := 1; k < 1<<lutScale; k += step {
		m := lutThresholds[k]
		if !exactAbove(m, k, lutScale) || exactAbove(m-1, k, lutScale) {
			t.Fatalf("threshold %d = %#x is not exact", k, m)
		}
	}
}

// refIndex is an independent reference mapping: Frexp for scale <= 0,
// math/big interval squaring for scale > 0.
func refIndex(v float64, s int32) int32 {
	frac, exp := math.Frexp(v) // v = frac·2^exp, frac in [0.5, 1)
	e := int32(exp - 1)        // v = (2·frac)·2^e
	if frac == 0.5 {
		if s <= 0 {
			return (e - 1) >> uint(-s)
		}
		return e<<uint(s) - 1
	}
	if s <= 0 {
		return e >> uint(-s)
	}
	m := uint64((2*frac - 1) * (1 << 52))
	return e<<uint(s) + int32(log2DigitsBig(m, s))
}

func edgeValues() []float64 {
	vs := []float64{
		math.SmallestNonzeroFloat64, 2 * math.SmallestNonzeroFloat64, 3 * math.SmallestNonzeroFloat64,
		0x1p-1022, math.Nextafter(0x1p-1022, 0), math.Nextafter(0x1p-1022, 1),
		0x1p-1023, 0x1.8p-1030, math.MaxFloat64, math.Nextafter(math.MaxFloat64, 0), 0x1p1023,
		1, math.Nextafter(1, 2), math.Nextafter(1, 0), 2, 0.5, 3, 1.5, math.Sqrt2, 1e-300, 1e300,
	}
	for e := -1074; e <= 1023; e += 7 {
		p := math.Ldexp(1, e)
		vs = append(vs, p, math.Nextafter(p, 0), math.Nextafter(p, math.Inf(1)))
	}
	return vs
}

func TestMapIndexEdges(t *testing.T) {
	for s := MinScale; s <= MaxScale; s++ {
		for _, v := range edgeValues() {
			if v == 0 {
				continue
			}
			got, want := mapIndex(math.Float64bits(v), s), refIndex(v, s)
			if got != want {
				t.Fatalf("scale %d, v=%g (%x): index %d, want %d", s, v, math.Float64bits(v), got, want)
			}
		}
		if minIndex(s) > maxIndex(s) {
			t.Fatal("index range")
		}
	}
	// Known values: 1 is the upper end of bucket -1, 2 of bucket 2^s-1.
	for s := int32(0); s <= MaxScale; s++ {
		if mapIndex(math.Float64bits(1), s) != -1 || mapIndex(math.Float64bits(2), s) != 1<<s-1 {
			t.Fatalf("scale %d: powers of two", s)
		}
	}
	// Scale 20 indices fit int32 (go-expohisto: [-0x3fe00000, 0x3fffffff]
	// without subnormals; with them the minimum is lower).
	if maxIndex(20) != 0x3fffffff || minIndex(20) != -1074<<20-1 {
		t.Fatalf("scale 20 range %#x..%#x", minIndex(20), maxIndex(20))
	}
}

// TestMapIndexBoundaries tests mantissas on both sides of bucket boundaries
// at every positive scale: the LUT (scales 1..10) and the 128-bit squaring
// (all scales) against math/big, and exactly (big.Int) where feasible.
func TestMapIndexBoundaries(t *testing.T) {
	r := rand.New(rand.NewPCG(seed, 1))
	for s := int32(1); s <= MaxScale; s++ {
		n := 64
		for i := 0; i < n; i++ {
			k := 1 + r.IntN(1<<s-1)
			// boundary 2^(k/2^s) at 200 bits
			b := new(big.Float).SetPrec(200).SetInt64(1)
			b.SetMantExp(b, k)
			for j := int32(0); j < s; j++ {
				b.Sqrt(b)
			}
			b.Sub(b, new(big.Float).SetInt64(1))
			b.SetMantExp(b, 52)
			mi, _ := b.Uint64()
			for _, m := range []uint64{mi - 1, mi, mi + 1, mi + 2} {
				if m == 0 || m >= 1<<52 {
					continue
				}
				v := math.Float64frombits(1023<<52 | m)
				want := int32(log2DigitsBig(m, s))
				if got := mapIndex(math.Float64bits(v), s); got != want {
					t.Fatalf("scale %d m=%#x: mapIndex %d, big %d", s, m, got, want)
				}
				if got := int32(log2Digits(m, s)); got != want {
					t.Fatalf("scale %d m=%#x: log2Digits %d, big %d", s, m, got, want)
				}
				if s <= 8 {
					above := exactAbove(m, int(want), int(s))
					below := !exactAbove(m, int(want)+1, int(s))
					if !above || !below {
						t.Fatalf("scale %d m=%#x: index %d not exact", s, m, want)
					}
				}
			}
		}
	}
}

// TestMapIndexRandom compares the fast mapping with the reference on random
// values at all scales, including subnormals.
func TestMapIndexRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(seed, 2))
	for i := 0; i < 20000; i++ {
		b := r.Uint64() &^ signBit
		if b&expMask == expMask || b == 0 {
			continue
		}
		v := math.Float64frombits(b)
		s := MinScale + int32(r.IntN(int(MaxScale-MinScale+1)))
		if got, want := mapIndex(b, s), refIndex(v, s); got != want {
			t.Fatalf("scale %d v=%g: %d want %d", s, v, got, want)
		}
	}
}

func TestLowerBoundaryAndLargestIn(t *testing.T) {
	for s := MinScale; s <= MaxScale; s++ {
		for _, idx := range []int32{-5, 0, 1, 7, 100, minIndex(s), maxIndex(s)} {
			if idx < minIndex(s) || idx > maxIndex(s) {
				continue
			}
			v := largestIn(idx, s)
			if mapIndex(math.Float64bits(v), s) != idx {
				t.Fatalf("scale %d: largestIn(%d) = %g maps to %d", s, idx, v, mapIndex(math.Float64bits(v), s))
			}
			if v < math.MaxFloat64 && mapIndex(math.Float64bits(math.Nextafter(v, math.Inf(1))), s) <= idx {
				t.Fatalf("scale %d: largestIn(%d) not largest", s, idx)
			}
		}
	}
}

// TestHiDigits compares the checked-logarithm digits with the exact
// squaring digits on random mantissas at every scale above the table.
func TestHiDigits(t *testing.T) {
	r := rand.New(rand.NewPCG(seed, 3))
	fallbacks := 0
	for s := int32(lutScale + 1); s <= MaxScale; s++ {
		for i := 0; i < 5000; i++ {
			m := r.Uint64() & mantMask
			if got, want := hiDigits(m, s), log2Digits(m, s); got != want {
				t.Fatalf("scale %d m=%#x: %d, exact %d", s, m, got, want)
			}
		}
		// Mantissas just around exact thresholds force the fallback.
		for k := 1; k < 1<<lutScale; k += 97 {
			th := lutThresholds[k] // a boundary at scale 10, hence at every finer scale
			for _, m := range []uint64{th - 1, th, th + 1} {
				if got, want := hiDigits(m, s), log2Digits(m, s); got != want {
					t.Fatalf("scale %d m=%#x (boundary): %d, exact %d", s, m, got, want)
				}
				fallbacks++
			}
		}
	}
	t.Logf("%d boundary-adjacent mantissas checked", fallbacks)
}
