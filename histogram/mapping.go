package histogram

import (
	"math"
	"math/big"
	"math/bits"
)

// Mapping from a value to its bucket index, and back.
//
// Bucket index i at scale s holds the values in (base^i, base^(i+1)] with
// base = 2^(2^-s). The mapping is exact at every scale, for every finite
// non-zero float64 (subnormals included, none rounded up):
//
//   - scale <= 0: the IEEE exponent bits, minus one for an exact power of two,
//     shifted right by -scale (an arithmetic shift floors correctly).
//   - 0 < scale <= lutScale: exponent bits plus a table lookup on the top
//     scale+1 mantissa bits and one compare with an exact threshold
//     (lutThresholds, generated and checked with exact integer arithmetic).
//     No logarithm is taken.
//   - lutScale < scale <= MaxScale: a float64 logarithm gives the digits
//     whenever it is farther than a safe error margin from a boundary
//     (hiDigits; all but about one value in 2^23 at scale 20); otherwise
//     the digits of log2 of the mantissa are computed by repeated squaring
//     in 128-bit fixed point, carried as a lower and an upper bound, and if
//     the two bounds ever disagree (astronomically rare) with math/big at
//     increasing precision. Since (1+m/2^52)^(2^k) is never a power of two
//     for m > 0, that loop always decides, so this path is exact too.

const (
	mantBits = 52
	mantMask = 1<<mantBits - 1
	expMask  = 0x7ff << mantBits
	signBit  = 1 << 63
)

// lutTab holds, for every scale s in 1..lutScale, 2^(s+1) entries starting
// at lutOff(s). Entry t describes the linear sub-bucket of mantissas
// [t, t+1)·2^(52-(s+1)): bits 53.. hold j, the bucket (0..2^s-1 within one
// power of two) of the sub-bucket's first mantissa, and bits 0..52 the
// threshold of bucket j+1 (2^52 for the last bucket). A sub-bucket of width
// 2^-(s+1) is narrower than the narrowest bucket (2^(2^-s)-1 > 2^-(s+1)), so
// it holds at most one boundary: the index is j, plus one if the mantissa
// reaches the threshold. One load, one compare, no logarithm.
var lutTab = *buildLUT()

const (
	lutTabLen = 1 << (lutScale + 2) // a power of two, so masked indices need no bounds check
	lutJShift = 53
	lutThrMsk = 1<<lutJShift - 1
)

func lutOff(s int32) int32 { return 1<<(s+1) - 4 }

func buildLUT() *[lutTabLen]uint64 {
	out := new([lutTabLen]uint64)
	for s := int32(1); s <= lutScale; s++ {
		off := lutOff(s)
		n := int32(1) << (s + 1)
		step := uint(lutScale - s)
		j := uint64(0)
		for t := int32(0); t < n; t++ {
			m := uint64(t) << (mantBits - (s + 1))
			for lutThresholds[(j+1)<<step] <= m {
				j++
			}
			out[off+t] = j<<lutJShift | lutThresholds[(j+1)<<step]
		}
	}
	return out
}

// lutIndex maps a normal value's mantissa (not 0) at scale s in
// 1..lutScale to its bucket within the power of two, branch-free.
func lutIndex(mant uint64, s int32) int32 {
	e := lutTab[(lutOff(s&15)+int32(mant>>uint((mantBits-1-s)&63)))&(lutTabLen-1)]
	return int32(e>>lutJShift) + int32(((e&lutThrMsk)-1-mant)>>63)
}

// mapIndex returns the bucket index at the given scale of the finite,
// non-zero value whose bits without the sign are abs.
func mapIndex(abs uint64, scale int32) int32 {
	exp := int32(abs >> mantBits)
	mant := abs & mantMask
	if exp == 0 { // subnormal: normalise
		shift := int32(bits.LeadingZeros64(mant)) - 11
		mant = (mant << uint(shift)) & mantMask
		exp = 1 - shift
	}
	e := exp - 1023
	if scale <= 0 {
		if mant == 0 {
			e--
		}
		return e >> uint(-scale)
	}
	if mant == 0 {
		return e<<uint(scale) - 1
	}
	if scale <= lutScale {
		return e<<uint(scale) + lutIndex(mant, scale)
	}
	return e<<uint(scale) + int32(hiDigits(mant, scale))
}

// hiMargin bounds the absolute error of math.Log(y)/ln2 for y in [1, 2)
// with a wide safety factor: Go's Log is accurate to < 1 ulp, so the error
// is below 2^-51; 2^-44 leaves a factor 128.
const hiMargin = 0x1p-44

// hiDigits returns floor(log2(1+m/2^52) · 2^s) for 0 <= m < 2^52 and
// s > lutScale, exactly: a float64 logarithm gives the digits unless the
// result lies within hiMargin·2^s (in index units) of an integer, which at
// scale 20 happens for about one value in 2^23; those take the exact
// squaring path.
func hiDigits(m uint64, s int32) uint32 {
	if m == 0 {
		return 0
	}
	y := math.Float64frombits(1023<<mantBits | m) // 1 + m/2^52, exact
	t := math.Log(y) * (1 / math.Ln2) * float64(int64(1)<<uint(s&63))
	d := math.Floor(t)
	if eps := hiMargin * float64(int64(1)<<uint(s&63)); t-d < eps || d+1-t < eps {
		return log2Digits(m, s)
	}
	return uint32(d)
}

// log2Digits returns floor(log2(1+m/2^52) · 2^s) for 0 < m < 2^52, exactly.
func log2Digits(m uint64, s int32) uint32 {
	// Fixed point Q1.127 in (hi, lo): value = (hi·2^64+lo) / 2^127.
	lh, ll := (1<<mantBits|m)<<11, uint64(0) // lower bound
	uh, ul := lh, ll                         // upper bound
	var d uint32
	for i := int32(0); i < s; i++ {
		l3, l2, l1, _ := square128(lh, ll)
		u3, u2, u1, u0 := square128(uh, ul)
		lb, ub := l3>>63, u3>>63 // x^2 >= 2 ?
		if lb != ub {
			return log2DigitsBig(m, s)
		}
		d = d<<1 | uint32(lb)
		if lb == 1 { // x^2/2: X' = X^2 >> 128
			lh, ll = l3, l2
			uh, ul = u3, u2
			if u1|u0 != 0 {
				uh, ul = inc128(uh, ul)
			}
			if uh|ul == 0 { // the upper bound wrapped at 2^128
				return log2DigitsBig(m, s)
			}
		} else { // X' = X^2 >> 127
			lh, ll = l3<<1|l2>>63, l2<<1|l1>>63
			uh, ul = u3<<1|u2>>63, u2<<1|u1>>63
			if u1<<1|u0 != 0 {
				uh, ul = inc128(uh, ul)
			}
			if uh|ul == 0 {
				return log2DigitsBig(m, s)
			}
		}
	}
	return d
}

func inc128(h, l uint64) (uint64, uint64) {
	l, c := bits.Add64(l, 1, 0)
	return h + c, l
}

// square128 returns the 256-bit square of the 128-bit number (h, l).
func square128(h, l uint64) (r3, r2, r1, r0 uint64) {
	hh1, hh0 := bits.Mul64(h, h)
	hl1, hl0 := bits.Mul64(h, l)
	ll1, ll0 := bits.Mul64(l, l)
	// 2·h·l as a 129-bit number (c, hl1, hl0)
	c := hl1 >> 63
	hl1 = hl1<<1 | hl0>>63
	hl0 <<= 1
	r0 = ll0
	var k uint64
	r1, k = bits.Add64(ll1, hl0, 0)
	r2, k = bits.Add64(hh0, hl1, k)
	r3 = hh1 + c + k
	return
}

// log2DigitsBig is log2Digits with math/big interval arithmetic at growing
// precision; used only when 128 bits cannot decide a digit.
func log2DigitsBig(m uint64, s int32) uint32 {
	two := big.NewFloat(2)
	for prec := uint(256); ; prec *= 2 {
		lo := new(big.Float).SetPrec(prec).SetMode(big.ToZero).SetUint64(1<<mantBits | m)
		lo.SetMantExp(lo, -mantBits)
		hi := new(big.Float).SetPrec(prec).SetMode(big.AwayFromZero).Set(lo)
		var d uint32
		ok := true
		for i := int32(0); i < s; i++ {
			lo.Mul(lo, lo)
			hi.Mul(hi, hi)
			lb, ub := lo.Cmp(two) >= 0, hi.Cmp(two) >= 0
			if lb != ub {
				ok = false
				break
			}
			d <<= 1
			if lb {
				d |= 1
				lo.SetMantExp(lo, -1)
				hi.SetMantExp(hi, -1)
			}
		}
		if ok {
			return d
		}
		if prec > 1<<20 {
			panic("BUG: log2DigitsBig did not converge")
		}
	}
}

// lowerBoundary returns base^idx at the given scale, the exclusive lower
// boundary of bucket idx (accurate to about one ulp; exact for scale <= 0).
// It returns 0 or +Inf where the boundary is outside the float64 range.
func lowerBoundary(idx, scale int32) float64 {
	if scale <= 0 {
		return math.Ldexp(1, int(int64(idx)<<uint(-scale)))
	}
	e := idx >> uint(scale)
	frac := idx & (1<<uint(scale) - 1)
	if frac == 0 {
		return math.Ldexp(1, int(e))
	}
	return math.Ldexp(math.Exp2(float64(frac)/float64(int64(1)<<uint(scale))), int(e))
}

// minIndex and maxIndex bound the indices a finite non-zero float64 can map
// to at a scale: the buckets of the smallest subnormal and of MaxFloat64.
func minIndex(scale int32) int32 { return mapIndex(1, scale) }
func maxIndex(scale int32) int32 { return mapIndex(math.Float64bits(math.MaxFloat64), scale) }

// largestIn returns the largest float64 in bucket idx (its inclusive upper
// end, rounded down to a float64), for idx in [minIndex, maxIndex].
func largestIn(idx, scale int32) float64 {
	if idx >= maxIndex(scale) {
		return math.MaxFloat64
	}
	v := lowerBoundary(idx+1, scale)
	if v == 0 {
		v = math.SmallestNonzeroFloat64
	}
	if math.IsInf(v, 1) {
		v = math.MaxFloat64
	}
	// Correct the approximate boundary with the exact mapping.
	for v > math.SmallestNonzeroFloat64 && mapIndex(math.Float64bits(v), scale) > idx {
		v = math.Nextafter(v, 0)
	}
	for v < math.MaxFloat64 {
		n := math.Nextafter(v, math.Inf(1))
		if mapIndex(math.Float64bits(n), scale) > idx {
			break
		}
		v = n
	}
	return v
}
