package store

import (
	"fmt"
	"math"
	"math/bits"

	"github.com/sabakiio/sabaki/histogram"
)

// toHData converts a histogram into the chunk codec's form. Bucket slices are
// shared with the returned Data, never modified.
func toHData(h *histogram.Histogram) *hdata {
	d := h.Data()
	return &hdata{
		scale:         d.Scale,
		zeroThreshold: d.ZeroThreshold,
		zeroCount:     d.ZeroCount,
		pos:           buckets{offset: d.Positive.Offset, counts: d.Positive.Counts},
		neg:           buckets{offset: d.Negative.Offset, counts: d.Negative.Counts},
		count:         d.Count,
		sum:           d.Sum,
		min:           d.Min,
		max:           d.Max,
	}
}

// histogram rebuilds the histogram. Its limits are the package defaults or
// larger when the stored one needs it (a config with a bigger max_size), so
// nothing is downscaled on the way out.
func (d *hdata) histogram() (*histogram.Histogram, error) {
	return d.histogramSized(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
}

// histogramSized rebuilds the histogram with limits of at least maxSize and
// maxScale, raised to what the stored one needs.
func (d *hdata) histogramSized(maxSize int, maxScale int32) (*histogram.Histogram, error) {
	if err := d.unpack(); err != nil {
		return nil, err
	}
	h, err := histogram.FromData(histogram.Data{
		Scale:         d.scale,
		ZeroThreshold: d.zeroThreshold,
		ZeroCount:     d.zeroCount,
		Positive:      histogram.Buckets{Offset: d.pos.offset, Counts: d.pos.counts},
		Negative:      histogram.Buckets{Offset: d.neg.offset, Counts: d.neg.counts},
		Count:         d.count,
		Sum:           d.sum,
		Min:           d.min,
		Max:           d.max,
	}, max(maxSize, len(d.pos.counts), len(d.neg.counts)), max(maxScale, d.scale))
	if err != nil {
		return nil, fmt.Errorf("%w: histogram: %v", errCorrupt, err)
	}
	return h, nil
}

// histAcc merges stored histograms bucket by bucket without building a
// histogram.Histogram per window (which costs more than decoding the window):
// a query merging thousands of windows per row builds one histogram per row.
// The result is exactly what histogram() of the first window followed by
// Merge of the others gives: the same limits (the first window's), the same
// rule for the scale (the finest at or below every window's where each
// sign's populated range fits MaxSize buckets), the same bucket counts.
// Windows it cannot take exactly (a zero threshold, min and max left 0, a
// value FromData would reject) go through histogram() instead: see eligible.
type histAcc struct {
	scale     int32
	maxSize   int64
	maxScale  int32
	zeroCount uint64
	count     uint64
	sum       float64
	min, max  float64 // ±Inf while no observation
	signs     [2]accRange
	bad       bool        // a window's counts did not add up to its count
	scratch   [2][]uint64 // packed counts decoded (add)
}

// accRange is one sign's populated bucket range at the accumulator's scale.
type accRange struct {
	lo     int64
	counts []uint64 // empty: no bucket
	// counts is a window of buf (buf[0] is bucket base), which has room on
	// both sides, all zero: merging a group's series widens the range a
	// bucket or two at a time, and each widening would otherwise copy it.
	buf  []uint64
	base int64
}

// populated returns the first and last bucket the bitmap marks non-zero
// (ok false: none), given the offset; a bit past n makes the range run past
// n, which add catches. The bitmap's first and last set bits bound the
// populated range.
func (ps *packedSign) populated(offset int32) (first, last int64, ok bool) {
	i, j := 0, len(ps.bm)-1
	for i <= j && ps.bm[i] == 0 {
		i++
	}
	for j >= i && ps.bm[j] == 0 {
		j--
	}
	if i > j {
		return 0, 0, false
	}
	lo := i*8 + bits.TrailingZeros8(ps.bm[i])
	hi := j*8 + 7 - bits.LeadingZeros8(ps.bm[j])
	return int64(offset) + int64(lo), int64(offset) + int64(hi), true
}

// populated returns the first and last non-zero bucket of b (ok false: none).
func populated(b *buckets) (first, last int64, ok bool) {
	i, j := 0, len(b.counts)-1
	for i <= j && b.counts[i] == 0 {
		i++
	}
	for j >= i && b.counts[j] == 0 {
		j--
	}
	if i > j {
		return 0, 0, false
	}
	return int64(b.offset) + int64(i), int64(b.offset) + int64(j), true
}

// eligible reports whether d can be accumulated exactly: what FromData
// accepts, with no zero threshold and with min and max known.
func (d *hdata) eligible() bool {
	if d.zeroThreshold != 0 || d.scale < histogram.MinScale || d.scale > histogram.DefaultMaxScale ||
		d.size(0) > 1<<12 || d.size(1) > 1<<12 {
		return false
	}
	// Cheap checks only: the whole range within bounds (FromData checks
	// the populated part), min and max given. That the counts add up to
	// count is checked by add while it adds them.
	hasBuckets := false
	for i, b := range [2]*buckets{&d.pos, &d.neg} {
		n := d.size(i)
		if n == 0 {
			continue
		}
		hasBuckets = true
		if int64(b.offset) < minIndex64(d.scale) || int64(b.offset)+int64(n)-1 > maxIndex64(d.scale) {
			return false
		}
	}
	if d.count > 0 && (math.IsNaN(d.min) || math.IsNaN(d.max) || d.min > d.max || (d.min == 0 && d.max == 0 && hasBuckets)) {
		return false
	}
	return true
}

// countsAddUp reports whether the buckets and zero count add up to count
// without overflowing (what FromData checks), for callers that cannot
// report histAcc's error later.
func (d *hdata) countsAddUp() bool {
	if d.unpack() != nil {
		return false
	}
	total := d.zeroCount
	for _, b := range [2]*buckets{&d.pos, &d.neg} {
		for _, c := range b.counts {
			t := total + c
			if t < total {
				return false
			}
			total = t
		}
	}
	return total == d.count
}

// minIndex64 and maxIndex64 bound the bucket indexes of finite values at
// scale s, as histogram.FromData checks them.
func minIndex64(s int32) int64 {
	if s <= 0 {
		return -1075 >> uint(-s)
	}
	return -1074<<uint(s) - 1
}

func maxIndex64(s int32) int64 {
	if s <= 0 {
		return 1023 >> uint(-s)
	}
	return 1024<<uint(s) - 1
}

// newHistAcc starts an accumulator with its first window (eligible).
func newHistAcc(d *hdata) *histAcc {
	a := &histAcc{
		scale:    d.scale,
		maxSize:  int64(max(histogram.DefaultMaxSize, d.size(0), d.size(1))),
		maxScale: max(histogram.DefaultMaxScale, d.scale),
		min:      math.Inf(1),
		max:      math.Inf(-1),
	}
	a.sum = d.sum
	a.add(d, true)
	return a
}

// add merges an eligible window; first is for newHistAcc (which has set the
// scale and sum: a histogram from an empty window still has them).
func (a *histAcc) add(d *hdata, first bool) {
	if d.packed && ((d.lz[0].n > 0 && d.lz[0].bm == nil) || (d.lz[1].n > 0 && d.lz[1].bm == nil)) {
		// Counts packed without a bitmap: decoded into scratch memory
		// first (a bitmap says where the non-zero ones are; this does not).
		u := *d
		u.packed, u.lz = false, [2]packedSign{}
		for i, b := range [2]*buckets{&u.pos, &u.neg} {
			if ps := &d.lz[i]; ps.n > 0 {
				if cap(a.scratch[i]) < ps.n {
					a.scratch[i] = make([]uint64, ps.n)
				}
				b.counts = a.scratch[i][:ps.n]
				if ps.unpack(b.counts) != nil {
					a.bad = true
					return
				}
			}
		}
		a.add(&u, first)
		return
	}
	var rs [2][3]int64 // per sign: first, last, ok
	empty := d.zeroCount == 0
	for i, b := range [2]*buckets{&d.pos, &d.neg} {
		f, l, ok := populated(b)
		if d.packed {
			f, l, ok = d.lz[i].populated(b.offset)
		}
		if ok {
			rs[i] = [3]int64{f, l, 1}
			empty = false
		}
	}
	if empty && !first {
		return // Merge ignores an empty histogram
	}
	if !first {
		a.sum += d.sum
	}
	if d.count > 0 {
		a.min, a.max = math.Min(a.min, d.min), math.Max(a.max, d.max)
	}
	a.count += d.count
	a.zeroCount += d.zeroCount
	// The scale: the lower of the two, lower still until both signs' union
	// ranges fit maxSize.
	s := min(a.scale, d.scale)
	var extra int32
	for i := range rs {
		lo, hi, ok := a.signs[i].span(a.scale - s)
		if rs[i][2] == 1 {
			dl, dh := rs[i][0]>>(d.scale-s), rs[i][1]>>(d.scale-s)
			if ok {
				lo, hi = min(lo, dl), max(hi, dh)
			} else {
				lo, hi, ok = dl, dh, true
			}
		}
		if !ok {
			continue
		}
		var e int32
		for hi-lo+1 > a.maxSize && s-e > histogram.MinScale {
			lo >>= 1
			hi >>= 1
			e++
		}
		extra = max(extra, e)
	}
	s -= extra
	if s < a.scale {
		for i := range a.signs {
			a.signs[i].downscale(a.scale - s)
		}
		a.scale = s
	}
	total := d.zeroCount
	for i, b := range [2]*buckets{&d.pos, &d.neg} {
		if rs[i][2] == 0 {
			continue
		}
		shift := d.scale - s
		r := &a.signs[i]
		r.grow(rs[i][0]>>shift, rs[i][1]>>shift)
		if d.packed {
			// Only the non-zero counts, where the bitmap puts them, read
			// in order from the bit-packed values.
			ps := &d.lz[i]
			if rs[i][1]-int64(b.offset) >= int64(ps.n) {
				a.bad = true // a bitmap bit past the buckets
				continue
			}
			// The values first (one tight loop over the bits), then where
			// the bitmap puts them: two simple loops beat one that does both.
			nnz := len(ps.src) * 8
			if ps.w > 0 {
				nnz /= ps.w
			}
			if cap(a.scratch[i]) < nnz {
				a.scratch[i] = make([]uint64, nnz)
			}
			vals := a.scratch[i][:nnz]
			unpackInts(vals, ps.src, ps.w)
			cnt, at := r.counts, int64(b.offset)-r.lo<<shift
			var carry uint64
			k := 0
			for j, x := range ps.bm {
				for x != 0 && k < len(vals) {
					bit := int64(j*8 + bits.TrailingZeros8(x))
					x &= x - 1
					c := vals[k]
					k++
					if shift == 0 {
						cnt[at+bit] += c
					} else {
						cnt[(at+bit)>>shift] += c
					}
					var cy uint64
					total, cy = bits.Add64(total, c, 0)
					carry |= cy
				}
			}
			if carry != 0 {
				a.bad = true
			}
			continue
		}
		first := rs[i][0] - int64(b.offset)
		for j, c := range b.counts[first : rs[i][1]-int64(b.offset)+1] {
			r.counts[(rs[i][0]+int64(j))>>shift-r.lo] += c
			t := total + c
			if t < total {
				a.bad = true
			}
			total = t
		}
	}
	if total != d.count {
		a.bad = true // FromData would have refused the window
	}
}

// merge adds another accumulator, as Merge adds a histogram.
func (a *histAcc) merge(o *histAcc) {
	d := o.hdata()
	a.add(&d, false)
}

// hdata presents the accumulator as a stored window (sharing its counts).
func (a *histAcc) hdata() hdata {
	d := hdata{scale: a.scale, zeroCount: a.zeroCount, count: a.count, sum: a.sum, min: a.min, max: a.max}
	if a.count == 0 {
		d.min, d.max = 0, 0
	}
	d.pos = buckets{offset: int32(a.signs[0].lo), counts: a.signs[0].counts}
	d.neg = buckets{offset: int32(a.signs[1].lo), counts: a.signs[1].counts}
	return d
}

// histogram builds the merged histogram.
func (a *histAcc) histogram() (*histogram.Histogram, error) {
	if a.bad {
		return nil, fmt.Errorf("%w: histogram: %v", errCorrupt, histogram.ErrCount)
	}
	d := a.hdata()
	h, err := histogram.FromData(histogram.Data{
		Scale:     d.scale,
		ZeroCount: d.zeroCount,
		Positive:  histogram.Buckets{Offset: d.pos.offset, Counts: d.pos.counts},
		Negative:  histogram.Buckets{Offset: d.neg.offset, Counts: d.neg.counts},
		Count:     d.count,
		Sum:       d.sum,
		Min:       d.min,
		Max:       d.max,
	}, int(a.maxSize), a.maxScale)
	if err != nil {
		return nil, fmt.Errorf("%w: histogram: %v", errCorrupt, err)
	}
	return h, nil
}

// span returns the range shifted down by k scales.
func (r *accRange) span(k int32) (lo, hi int64, ok bool) {
	if len(r.counts) == 0 {
		return 0, 0, false
	}
	return r.lo >> k, (r.lo + int64(len(r.counts)) - 1) >> k, true
}

func (r *accRange) downscale(k int32) {
	if len(r.counts) == 0 || k <= 0 {
		return
	}
	lo, hi, _ := r.span(k)
	out := make([]uint64, hi-lo+1)
	for j, c := range r.counts {
		out[(r.lo+int64(j))>>k-lo] += c
	}
	r.lo, r.counts, r.buf, r.base = lo, out, out, lo
}

// grow makes the range cover [lo, hi].
func (r *accRange) grow(lo, hi int64) {
	if len(r.counts) > 0 {
		cl, ch := r.lo, r.lo+int64(len(r.counts))-1
		if lo >= cl && hi <= ch {
			return
		}
		lo, hi = min(lo, cl), max(hi, ch)
		if lo >= r.base && hi < r.base+int64(len(r.buf)) {
			r.lo, r.counts = lo, r.buf[lo-r.base:hi-r.base+1]
			return
		}
	}
	slack := max(8, (hi-lo+1)/4)
	buf := make([]uint64, hi-lo+1+2*slack)
	base := lo - slack
	if len(r.counts) > 0 {
		copy(buf[r.lo-base:], r.counts)
	}
	r.buf, r.base = buf, base
	r.lo, r.counts = lo, buf[lo-base:hi-base+1]
}
