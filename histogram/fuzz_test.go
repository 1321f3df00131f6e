package histogram

import (
	"encoding/binary"
	"math"
	"testing"
)

// floats decodes b as little-endian float64s.
func floats(b []byte) []float64 {
	out := make([]float64, 0, len(b)/8)
	for len(b) >= 8 {
		out = append(out, math.Float64frombits(binary.LittleEndian.Uint64(b)))
		b = b[8:]
	}
	return out
}

func fbytes(vs ...float64) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	}
	return b
}

// checkCount verifies count = zero count + buckets via Data, and the
// layout invariants.
func checkCount(t *testing.T, h *Histogram, want uint64) {
	t.Helper()
	checkInvariants(t, h)
	d := h.Data()
	n := d.ZeroCount
	for _, c := range d.Positive.Counts {
		n += c
	}
	for _, c := range d.Negative.Counts {
		n += c
	}
	if n != d.Count || n != want {
		t.Fatalf("count %d, buckets+zero %d, want %d", d.Count, n, want)
	}
}

// FuzzRecordMerge: recording and merging keep count = zero + buckets, and
// merging equals recording everything into one histogram, for any values
// (NaN, ±Inf, subnormals, huge ranges), small MaxSize and any max scale.
func FuzzRecordMerge(f *testing.F) {
	f.Add(uint8(4), int8(20), uint8(3), fbytes(1, 2, 3, -4, 0, math.NaN(), 1e300, 5e-324))
	f.Add(uint8(160), int8(3), uint8(1), fbytes(0.001, 0.5, 7, -7, math.Inf(1), math.MaxFloat64, -math.SmallestNonzeroFloat64))
	f.Add(uint8(2), int8(-10), uint8(0), fbytes(1, 1, 1))
	f.Fuzz(func(t *testing.T, size uint8, scale int8, split uint8, data []byte) {
		vs := floats(data)
		maxSize, maxScale := int(size)%64+1, int32(scale)%21
		a, b := NewAtScale(maxSize, maxScale), NewAtScale(maxSize, maxScale)
		all := NewAtScale(maxSize, maxScale)
		var na, nb uint64
		for i, v := range vs {
			finite := !math.IsNaN(v) && !math.IsInf(v, 0)
			if split != 0 && i%int(split) == 0 {
				b.RecordN(v, uint64(i%3)+1)
				all.RecordN(v, uint64(i%3)+1)
				if finite {
					nb += uint64(i%3) + 1
				}
			} else {
				a.Record(v)
				all.Record(v)
				if finite {
					na++
				}
			}
		}
		checkCount(t, a, na)
		checkCount(t, b, nb)
		ab := a.Clone()
		ab.Merge(b)
		checkCount(t, ab, na+nb)
		ba := b.Clone()
		ba.Merge(a)
		// Same buckets, count, min, max; the sum only up to rounding,
		// which with cancelling huge values is not relative to the result.
		equalBuckets(t, "a+b", ab, all)
		equalBuckets(t, "b+a", ba, all)
		m := NewAtScale(maxSize, maxScale)
		MergeAll(m, []*Histogram{a, b, a})
		checkCount(t, m, 2*na+nb)
		// Estimators never panic and stay in [Min, Max].
		for _, q := range []float64{0, 0.3, 0.5, 0.99, 1} {
			for _, e := range []float64{ab.Quantile(q), ab.QuantileMidpoint(q)} {
				if na+nb > 0 && (e < ab.Min() || e > ab.Max()) {
					t.Fatalf("quantile %v = %v outside [%v, %v]", q, e, ab.Min(), ab.Max())
				}
			}
		}
		for _, x := range vs {
			if fb := ab.FractionBelow(x); !(fb >= 0 && fb <= 1) && !math.IsNaN(x) {
				t.Fatalf("FractionBelow(%v) = %v", x, fb)
			}
		}
		// Binary round trip.
		enc, _ := ab.AppendBinary(nil)
		dec := NewAtScale(maxSize, maxScale)
		if err := dec.UnmarshalBinary(enc); err != nil {
			t.Fatalf("decode own encoding: %v", err)
		}
		checkCount(t, dec, na+nb)
	})
}

// FuzzUnmarshalBinary: garbage never panics, and whatever decodes is a
// valid histogram that re-encodes to something that decodes the same.
func FuzzUnmarshalBinary(f *testing.F) {
	h := New(0, 0)
	for _, v := range []float64{1, 2, 3, -4, 0, 1e-3, 7e5} {
		h.Record(v)
	}
	enc, _ := h.MarshalBinary()
	f.Add(enc)
	f.Add([]byte{1, 0, 0, 0})
	f.Add([]byte{1, 2, 40, 0, 0x10, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		var h Histogram
		if err := h.UnmarshalBinary(b); err != nil {
			return
		}
		checkCount(t, &h, h.Count())
		enc, _ := h.AppendBinary(nil)
		var g Histogram
		if err := g.UnmarshalBinary(enc); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if h.Count() != g.Count() || h.Scale() != g.Scale() {
			t.Fatal("re-decode differs")
		}
	})
}

// FuzzFromExplicit: any bounds/counts either error or give a histogram
// whose count is the total.
func FuzzFromExplicit(f *testing.F) {
	f.Add(fbytes(0.005, 0.01, 0.025, 0.05, 0.1), []byte{1, 2, 3, 4, 5, 6})
	f.Add(fbytes(-10, -1, 0, 1, 10), []byte{9, 0, 9, 0, 9, 0})
	f.Fuzz(func(t *testing.T, bb []byte, cb []byte) {
		bounds := floats(bb)
		counts := make([]uint64, len(bounds)+1)
		var total uint64
		for i := range counts {
			if i < len(cb) {
				counts[i] = uint64(cb[i])
				total += counts[i]
			}
		}
		h, err := FromExplicit(bounds, counts, 0, 20, 0)
		if err != nil {
			return
		}
		checkCount(t, h, total)
	})
}

// TestUnmarshalBoundedAlloc: decoding garbage allocates a bounded amount,
// whatever lengths the input claims.
func TestUnmarshalBoundedAlloc(t *testing.T) {
	garbage := make([]byte, 1<<16)
	x := uint64(seed)
	for i := range garbage {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		garbage[i] = byte(x)
	}
	// A header that claims a range of 2^40 buckets.
	claim := []byte{1, flagPos, 6, 0}
	claim = binary.AppendVarint(claim, 0)
	claim = binary.AppendUvarint(claim, 1<<40)
	var h Histogram
	if err := h.UnmarshalBinary(claim); err == nil {
		t.Fatal("huge claimed range accepted")
	}
	allocs := testing.AllocsPerRun(100, func() {
		for off := 0; off+64 < len(garbage); off += 997 {
			b := append([]byte{1, byte(off) & 31}, garbage[off:off+64]...)
			_ = h.UnmarshalBinary(b)
		}
	})
	if allocs > 2000 {
		t.Fatalf("%v allocations per pass", allocs)
	}
}
