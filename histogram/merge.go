package histogram

import (
	"math"
	"unsafe"
)

// Merge adds the observations of o to h; o is not changed. The result is
// exactly what recording o's values into h would have given (same buckets,
// count, min, max; sum up to float rounding): h moves to the lower of the two
// scales (and lower still if the union of the ranges needs more than MaxSize
// buckets), which is exact because a bucket at scale s lies inside one
// bucket at scale s-1. Zero thresholds merge as in the OTel data model: the
// larger wins, buckets entirely at or below it join the zero bucket, and a
// populated bucket that straddles it raises it to that bucket's upper end.
// Merging a histogram into itself doubles it.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil {
		return
	}
	h.lazyInit()
	if o == h {
		o = o.Clone()
	}
	h.dropped += o.dropped
	if o.empty() {
		return
	}
	h.sum += o.sum
	h.min = min(h.min, o.min)
	h.max = max(h.max, o.max)
	s := min(int32(h.scale), int32(o.scale))
	s -= h.mergeShift(s, o)
	if s < int32(h.scale) {
		h.downscale(int32(h.scale) - s)
	}
	h.mergeBuckets(o)
}

// MergeAll merges every histogram of hs into dst with work linear in the
// total number of buckets: it picks the final scale and bucket ranges from
// all inputs first, so dst is downscaled and re-allocated at most once.
// nil entries are skipped.
func MergeAll(dst *Histogram, hs []*Histogram) {
	dst.lazyInit()
	s := int32(dst.scale)
	for _, o := range hs {
		if o != nil && !o.empty() {
			s = min(s, int32(o.scale))
		}
	}
	var r [2]span64
	r[0], r[1] = dst.spanAt(false, s), dst.spanAt(true, s)
	for _, o := range hs {
		if o != nil && o != dst && !o.empty() {
			r[0] = r[0].union(o.spanAt(false, s))
			r[1] = r[1].union(o.spanAt(true, s))
		}
	}
	d := max(r[0].fitShift(s, int(dst.maxSize)), r[1].fitShift(s, int(dst.maxSize)))
	s -= d
	if s < int32(dst.scale) {
		dst.downscale(int32(dst.scale) - s)
	}
	for i, neg := range [2]bool{false, true} {
		if r[i].ok {
			dst.ensure(neg, int32(r[i].lo>>d), int32(r[i].hi>>d))
		}
	}
	for _, o := range hs {
		if o != nil {
			dst.Merge(o)
		}
	}
}

// span64 is an index range at some scale; ok is false for an empty range.
type span64 struct {
	lo, hi int64
	ok     bool
}

func (a span64) union(b span64) span64 {
	switch {
	case !a.ok:
		return b
	case !b.ok:
		return a
	}
	return span64{min(a.lo, b.lo), max(a.hi, b.hi), true}
}

// fitShift returns how many halvings below scale s the span needs to fit
// maxSize buckets (not going below MinScale).
func (a span64) fitShift(s int32, maxSize int) int32 {
	if !a.ok {
		return 0
	}
	var d int32
	lo, hi := a.lo, a.hi
	for hi-lo+1 > int64(maxSize) && s-d > MinScale {
		lo >>= 1
		hi >>= 1
		d++
	}
	return d
}

// spanAt returns the range of one sign mapped to scale s (<= h.scale).
func (h *Histogram) spanAt(neg bool, s int32) span64 {
	start, n, _ := h.region(neg)
	if n == 0 {
		return span64{}
	}
	d := int32(h.scale) - s
	return span64{int64(start >> d), int64((start + n - 1) >> d), true}
}

// mergeShift returns the extra halvings below scale s (<= both scales) that
// the union of h's and o's ranges needs.
func (h *Histogram) mergeShift(s int32, o *Histogram) int32 {
	p := h.spanAt(false, s).union(o.spanAt(false, s))
	n := h.spanAt(true, s).union(o.spanAt(true, s))
	return max(p.fitShift(s, int(h.maxSize)), n.fitShift(s, int(h.maxSize)))
}

// mergeBuckets adds o's zero count and buckets into h; h.scale <= o.scale
// and the union of the ranges fits h.
func (h *Histogram) mergeBuckets(o *Histogram) {
	zc := o.zeroCount
	// Buckets of o at (target) index <= oFold go to the zero bucket.
	oFold := int64(math.MinInt64)
	if t := max(h.zeroThreshold, o.zeroThreshold); t > 0 {
		k := mapIndex(math.Float64bits(t), int32(h.scale))
		raise := false
		if h.zeroThreshold < t {
			h.foldBelow(k - 1)
			raise = raise || h.bucketAt(k) != 0
		}
		if o.zeroThreshold < t {
			raise = raise || o.bucketsAt(k, int32(o.scale)-int32(h.scale)) != 0
		}
		oFold = int64(k) - 1
		if raise {
			h.foldBelow(k)
			oFold = int64(k)
			t = max(t, largestIn(k, int32(h.scale)))
		}
		h.zeroThreshold = t
	}
	for _, neg := range [2]bool{false, true} {
		ostart, n, oslot0 := o.region(neg)
		if n == 0 {
			continue
		}
		d := int32(o.scale) - int32(h.scale)
		// Skip (into the zero bucket) the prefix that folds.
		i := int32(0)
		for i < n && int64((ostart+i)>>d) <= oFold {
			zc += o.get(oslot0 + int(i))
			i++
		}
		if i == n {
			continue
		}
		lo, hi := (ostart+i)>>d, (ostart+n-1)>>d
		h.ensure(neg, lo, hi)
		d = int32(o.scale) - int32(h.scale) // ensure may have downscaled
		for i < n {
			hstart, hn, hslot0 := h.region(neg)
			done := addCounts(h.width, unsafe.Add(h.buf, hslot0<<h.width), int(hn), hstart,
				o.width, unsafe.Add(o.buf, (oslot0+int(i))<<o.width), int(n-i), ostart+i, uint(d))
			i += int32(done)
			if i < n {
				h.widen(h.width + 1)
			}
		}
	}
	h.zeroCount += zc
}

// bucketAt returns the count of bucket k of both signs together.
func (h *Histogram) bucketAt(k int32) uint64 { return h.bucketsAt(k, 0) }

// bucketsAt returns the total count, both signs, of the buckets whose index
// shifted right by d is k.
func (h *Histogram) bucketsAt(k int32, d int32) uint64 {
	var c uint64
	for _, neg := range [2]bool{false, true} {
		start, n, slot0 := h.region(neg)
		for i := int32(0); i < n; i++ {
			if (start+i)>>d == k {
				c += h.get(slot0 + int(i))
			}
		}
	}
	return c
}

// foldBelow moves every bucket with index <= k (both signs) into the zero
// count and shrinks the ranges accordingly.
func (h *Histogram) foldBelow(k int32) {
	if n := int32(h.posLen); n > 0 && h.posStart <= k {
		cut := min(k-h.posStart+1, n)
		for i := int32(0); i < cut; i++ {
			h.zeroCount += h.get(int(i))
		}
		bs := h.bytes()
		w := int(h.width)
		copy(bs, bs[int(cut)<<w:int(n)<<w])
		clear(bs[int(n-cut)<<w : int(n)<<w])
		h.posLen = uint16(n - cut)
		h.posStart += cut
	}
	if n := int32(h.negLen); n > 0 && h.negStart <= k {
		cut := min(k-h.negStart+1, n)
		base := int(h.cap) - int(n)
		for i := int32(0); i < cut; i++ {
			h.zeroCount += h.get(base + int(i))
			h.set(base+int(i), 0)
		}
		h.negLen = uint16(n - cut)
		h.negStart += cut
	}
}

type counter interface {
	~uint8 | ~uint16 | ~uint32 | ~uint64
}

// addCounts adds the source counters (indices srcStart..., at a scale d
// steps finer) into the destination range (indices dstStart..., which covers
// them). It returns how many source counters it added: fewer than sn when a
// sum does not fit the destination width (the caller widens and resumes).
// Specialised per width pair (generic instantiation), so the loops have no
// per-counter dispatch.
func addCounts(dw uint8, dp unsafe.Pointer, dn int, dstStart int32, sw uint8, sp unsafe.Pointer, sn int, srcStart int32, d uint) int {
	switch dw {
	case 0:
		return addInto(unsafe.Slice((*uint8)(dp), dn), dstStart, sw, sp, sn, srcStart, d)
	case 1:
		return addInto(unsafe.Slice((*uint16)(dp), dn), dstStart, sw, sp, sn, srcStart, d)
	case 2:
		return addInto(unsafe.Slice((*uint32)(dp), dn), dstStart, sw, sp, sn, srcStart, d)
	default:
		return addInto(unsafe.Slice((*uint64)(dp), dn), dstStart, sw, sp, sn, srcStart, d)
	}
}

func addInto[D counter](dst []D, dstStart int32, sw uint8, sp unsafe.Pointer, sn int, srcStart int32, d uint) int {
	switch sw {
	case 0:
		return addRun(dst, dstStart, unsafe.Slice((*uint8)(sp), sn), srcStart, d)
	case 1:
		return addRun(dst, dstStart, unsafe.Slice((*uint16)(sp), sn), srcStart, d)
	case 2:
		return addRun(dst, dstStart, unsafe.Slice((*uint32)(sp), sn), srcStart, d)
	default:
		return addRun(dst, dstStart, unsafe.Slice((*uint64)(sp), sn), srcStart, d)
	}
}

func addRun[D, S counter](dst []D, dstStart int32, src []S, srcStart int32, d uint) int {
	lim := uint64(^D(0))
	if d == 0 {
		off := int(srcStart - dstStart)
		dst := dst[off : off+len(src)]
		for i, c := range src {
			v := uint64(dst[i]) + uint64(c)
			if v > lim || (v < uint64(c) && lim != math.MaxUint64) {
				return i
			}
			dst[i] = D(v)
		}
		return len(src)
	}
	// Cross-scale: 2^d source buckets fold into one destination bucket;
	// sum each group in a register and touch the destination once.
	j := (srcStart >> d) - dstStart
	var acc uint64
	group := 0 // first source index of the current group
	for i, c := range src {
		if k := ((srcStart + int32(i)) >> d) - dstStart; k != j {
			v := uint64(dst[j]) + acc
			if v > lim || (v < acc && lim != math.MaxUint64) {
				return group
			}
			dst[j] = D(v)
			j, acc, group = k, 0, i
		}
		acc += uint64(c) // wraps only if the true total does: counts are mod 2^64
	}
	v := uint64(dst[j]) + acc
	if v > lim || (v < acc && lim != math.MaxUint64) {
		return group
	}
	dst[j] = D(v)
	return len(src)
}
