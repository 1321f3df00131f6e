package histogram

import "math"

// Estimators.
//
// Rank convention: the q-quantile is the observation of 0-based rank
// k = floor(q·(n-1)) in ascending order, i.e. sorted[k] for the sorted
// observations, the same convention as the exact quantile the tests compare
// with. Both estimators find the bucket holding rank k (negative buckets by
// descending index, then the zero bucket, then positive buckets) and clamp
// the estimate to [Min, Max].
//
//   - Quantile interpolates log-linearly (exponentially, like PromQL's
//     histogram_quantile on native histograms) inside the bucket, treating
//     its c observations as spread log-uniformly and taking the one of
//     within-bucket rank u at fraction (u+0.5)/c. Typical error on smooth
//     data is far below the bucket width, but the worst case (all
//     observations at one end of the bucket) is the whole width: relative
//     error up to base-1 (9.05% at scale 3).
//   - QuantileMidpoint returns the error-minimising point of the bucket,
//     2·lo·hi/(lo+hi), whose relative error never exceeds (base-1)/(base+1)
//     (RelativeError; 4.33% at scale 3) whatever the data.
//
// In the zero bucket both return 0 when ZeroThreshold is 0 (exact); with a
// positive threshold Quantile interpolates linearly over the part of
// [-ZeroThreshold, ZeroThreshold] that has data on its side, and
// QuantileMidpoint returns 0 (no relative error bound there).

// bucketRef identifies one bucket in ascending value order.
type bucketRef struct {
	idx   int32
	kind  int8 // -1 negative, 0 zero bucket, +1 positive
	count uint64
	u     uint64 // within-bucket rank
}

// find returns the bucket holding rank k (k < Count()).
func (h *Histogram) find(k uint64) bucketRef {
	var cum uint64
	base := int(h.cap) - int(h.negLen)
	for i := int(h.negLen) - 1; i >= 0; i-- {
		c := h.get(base + i)
		if k < cum+c {
			return bucketRef{idx: h.negStart + int32(i), kind: -1, count: c, u: k - cum}
		}
		cum += c
	}
	if k < cum+h.zeroCount {
		return bucketRef{kind: 0, count: h.zeroCount, u: k - cum}
	}
	cum += h.zeroCount
	for i := 0; i < int(h.posLen); i++ {
		c := h.get(i)
		if k < cum+c {
			return bucketRef{idx: h.posStart + int32(i), kind: 1, count: c, u: k - cum}
		}
		cum += c
	}
	// Not reached for k < Count(); return the top of the data.
	return bucketRef{idx: h.posStart + int32(h.posLen) - 1, kind: 1, count: 1}
}

// rank returns the 0-based rank for q, or ok=false for an empty histogram or
// a NaN q. q is clamped to [0, 1].
func (h *Histogram) rank(q float64) (k, n uint64, ok bool) {
	n = h.Count()
	if n == 0 || math.IsNaN(q) {
		return 0, n, false
	}
	q = max(0, min(1, q))
	k = uint64(math.Floor(q * float64(n-1)))
	if k > n-1 { // float rounding for huge n
		k = n - 1
	}
	return k, n, true
}

// extreme returns Min for rank 0 and Max for the last rank: exact, since
// both are kept exactly.
func (h *Histogram) extreme(k, n uint64) (float64, bool) {
	if h.min > h.max {
		return 0, false
	}
	if k == 0 {
		return h.min, true
	}
	if k == n-1 {
		return h.max, true
	}
	return 0, false
}

func (h *Histogram) clamp(v float64) float64 {
	if h.min <= h.max {
		v = max(h.min, min(h.max, v))
	}
	return v
}

// zeroRange returns the part of the zero bucket that can hold data.
func (h *Histogram) zeroRange() (lo, hi float64) {
	t := h.zeroThreshold
	if h.negLen > 0 || h.min < 0 {
		lo = -t
	}
	if h.posLen > 0 || h.max > 0 {
		hi = t
	}
	return lo, hi
}

// Quantile returns the log-linearly interpolated q-quantile (see the rank
// convention above), clamped to [Min, Max]. It returns 0 for an empty
// histogram and NaN for a NaN q; q outside [0, 1] is clamped.
func (h *Histogram) Quantile(q float64) float64 {
	k, n, ok := h.rank(q)
	if !ok {
		if math.IsNaN(q) {
			return math.NaN()
		}
		return 0
	}
	if v, ok := h.extreme(k, n); ok {
		return v
	}
	b := h.find(k)
	f := (float64(b.u) + 0.5) / float64(b.count)
	inv := math.Exp2(-float64(h.scale))
	var v float64
	switch b.kind {
	case 1:
		v = math.Exp2((float64(b.idx) + f) * inv)
	case -1:
		v = -math.Exp2((float64(b.idx) + 1 - f) * inv)
	default:
		lo, hi := h.zeroRange()
		v = lo + f*(hi-lo)
	}
	return h.clamp(v)
}

// QuantileMidpoint returns the q-quantile estimated by the error-minimising
// point 2·lo·hi/(lo+hi) of the bucket holding its rank, clamped to
// [Min, Max]: its relative error is at most RelativeError() outside the zero
// bucket. It returns 0 for an empty histogram and NaN for a NaN q.
func (h *Histogram) QuantileMidpoint(q float64) float64 {
	k, n, ok := h.rank(q)
	if !ok {
		if math.IsNaN(q) {
			return math.NaN()
		}
		return 0
	}
	if v, ok := h.extreme(k, n); ok {
		return v
	}
	b := h.find(k)
	if b.kind == 0 {
		return h.clamp(0)
	}
	s := int32(h.scale)
	lo := lowerBoundary(b.idx, s)
	base := math.Exp2(math.Exp2(-float64(s)))
	m := lo * (2 * base / (1 + base)) // = 2·lo·hi/(lo+hi), no overflow of hi
	if lo == 0 {                      // lowest subnormal bucket at a coarse scale
		hi := lowerBoundary(b.idx+1, s)
		m = hi * (2 / (1 + base))
	}
	if b.kind < 0 {
		m = -m
	}
	return h.clamp(m)
}

// FractionBelow returns the share of observations <= x, interpolating
// log-linearly inside the bucket holding x (linearly inside a zero bucket
// with a positive threshold): the inverse of Quantile, for SLOs such as
// "share of requests faster than 300 ms". Exact when x is a bucket boundary
// or outside [Min, Max]. It returns 0 for an empty histogram and NaN for NaN.
func (h *Histogram) FractionBelow(x float64) float64 {
	if math.IsNaN(x) {
		return math.NaN()
	}
	n := h.Count()
	if n == 0 {
		return 0
	}
	if h.min <= h.max {
		if x < h.min {
			return 0
		}
		if x >= h.max {
			return 1
		}
	}
	s := int32(h.scale)
	var below float64
	ax := math.Abs(x)
	var kx int32
	var l float64
	finite := ax != 0 && !math.IsInf(ax, 0) && ax > h.zeroThreshold
	if finite {
		kx = mapIndex(math.Float64bits(ax), s)
		l = math.Log2(ax) * math.Exp2(float64(s))
	}
	// Negative buckets.
	base := int(h.cap) - int(h.negLen)
	for i := 0; i < int(h.negLen); i++ {
		c := float64(h.get(base + i))
		j := h.negStart + int32(i)
		switch {
		case x >= 0 || ax <= h.zeroThreshold:
			below += c
		case math.IsInf(x, -1):
		case j > kx:
			below += c
		case j == kx:
			below += c * max(0, min(1, float64(kx)+1-l))
		}
	}
	// Zero bucket.
	if h.zeroCount > 0 {
		lo, hi := h.zeroRange()
		switch {
		case x >= hi:
			below += float64(h.zeroCount)
		case x > lo:
			below += float64(h.zeroCount) * (x - lo) / (hi - lo)
		}
	}
	// Positive buckets.
	if x > 0 {
		for i := 0; i < int(h.posLen); i++ {
			c := float64(h.get(i))
			j := h.posStart + int32(i)
			switch {
			case math.IsInf(x, 1):
				below += c
			case !finite: // x inside the zero bucket
			case j < kx:
				below += c
			case j == kx:
				below += c * max(0, min(1, l-float64(kx)))
			}
		}
	}
	return max(0, min(1, below/float64(n)))
}
