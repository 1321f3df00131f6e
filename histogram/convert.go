package histogram

import (
	"errors"
	"fmt"
	"math"
)

// Buckets is one sign's dense bucket range, as in OTLP: Counts[i] is the
// count of bucket index Offset+i, which covers (base^idx, base^(idx+1)] in
// absolute value.
type Buckets struct {
	Offset int32
	Counts []uint64
}

// Data is the plain OTLP ExponentialHistogramDataPoint content (without
// timestamps, attributes and exemplars), for exporters, receivers and the
// store. Count includes ZeroCount and every bucket count.
type Data struct {
	Scale              int32
	ZeroThreshold      float64
	ZeroCount          uint64
	Positive, Negative Buckets
	Count              uint64
	Sum, Min, Max      float64
}

// Data returns the histogram as OTLP-shaped data. It allocates the two
// count slices; leading and trailing zero buckets are trimmed (a range with
// no counts has Offset 0 and nil Counts). Min and Max are 0 when empty.
func (h *Histogram) Data() Data {
	d := Data{
		Scale:         h.Scale(),
		ZeroThreshold: h.zeroThreshold,
		ZeroCount:     h.zeroCount,
		Sum:           h.sum,
		Min:           h.Min(),
		Max:           h.Max(),
	}
	d.Positive = h.dense(false)
	d.Negative = h.dense(true)
	d.Count = h.Count()
	return d
}

func (h *Histogram) dense(neg bool) Buckets {
	start, n, slot0 := h.region(neg)
	first, last := int32(-1), int32(-1)
	for i := int32(0); i < n; i++ {
		if h.get(slot0+int(i)) != 0 {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if first < 0 {
		return Buckets{}
	}
	b := Buckets{Offset: start + first, Counts: make([]uint64, last-first+1)}
	for i := range b.Counts {
		b.Counts[i] = h.get(slot0 + int(first) + i)
	}
	return b
}

// Errors returned by the conversions and decoding.
var (
	ErrCount     = errors.New("histogram: bucket counts do not add up to count")
	ErrScale     = errors.New("histogram: scale out of range")
	ErrIndex     = errors.New("histogram: bucket index out of range for float64")
	ErrThreshold = errors.New("histogram: zero threshold must be finite and >= 0")
	ErrMinMax    = errors.New("histogram: min/max are NaN or min > max")
	ErrSpans     = errors.New("histogram: spans do not match the buckets")
	ErrNegative  = errors.New("histogram: negative bucket count")
	ErrBounds    = errors.New("histogram: explicit bounds must be ascending, finite, and len(counts) = len(bounds)+1")
	ErrEncoding  = errors.New("histogram: malformed encoding")
)

// maxInputScale is the finest scale the conversions accept (indices are
// computed in int64; scale 52 covers every float64 without overflow).
const maxInputScale = 52

// minIdx64 and maxIdx64 are minIndex and maxIndex for any scale in
// [MinScale, maxInputScale].
func minIdx64(s int32) int64 {
	if s <= 0 {
		return -1075 >> uint(-s)
	}
	return -1074<<uint(s) - 1
}

func maxIdx64(s int32) int64 {
	if s <= 0 {
		return 1023 >> uint(-s)
	}
	return 1024<<uint(s) - 1
}

// entry is one bucket of input data.
type entry struct {
	neg bool
	idx int64
	c   uint64
}

// input is bucket data to load: each(yield) calls yield for every bucket,
// in any order, stopping when yield returns false.
type input struct {
	scale int32
	zt    float64
	zc    uint64
	each  func(yield func(entry) bool) error
}

// build loads in into a new histogram with the given settings: it validates
// indices, picks the finest scale <= min(in.scale, maxScale) where both
// ranges fit maxSize, and adds every count. It returns the total count.
func build(in input, maxSize int, maxScale int32) (*Histogram, uint64, error) {
	if in.scale < MinScale || in.scale > maxInputScale {
		return nil, 0, fmt.Errorf("%w: %d (want %d..%d)", ErrScale, in.scale, MinScale, maxInputScale)
	}
	if !(in.zt >= 0) || math.IsInf(in.zt, 1) {
		return nil, 0, ErrThreshold
	}
	lo, hi := minIdx64(in.scale), maxIdx64(in.scale)
	var r [2]span64
	total := in.zc
	var errIdx, errSum bool
	err := in.each(func(e entry) bool {
		if e.c == 0 {
			return true
		}
		if e.idx < lo || e.idx > hi {
			errIdx = true
			return false
		}
		t := total + e.c
		if t < total {
			errSum = true
			return false
		}
		total = t
		i := 0
		if e.neg {
			i = 1
		}
		r[i] = r[i].union(span64{e.idx, e.idx, true})
		return true
	})
	switch {
	case err != nil:
		return nil, 0, err
	case errIdx:
		return nil, 0, ErrIndex
	case errSum:
		return nil, 0, fmt.Errorf("%w: total overflows uint64", ErrCount)
	}
	h := New(maxSize, maxScale)
	s := min(in.scale, int32(h.maxScale))
	d := in.scale - s
	for i := range r {
		if r[i].ok {
			r[i].lo >>= d
			r[i].hi >>= d
		}
	}
	extra := max(r[0].fitShift(s, int(h.maxSize)), r[1].fitShift(s, int(h.maxSize)))
	s -= extra
	d += extra
	h.scale = int8(s)
	for i, neg := range [2]bool{false, true} {
		if r[i].ok {
			h.ensure(neg, int32(r[i].lo>>extra), int32(r[i].hi>>extra))
		}
	}
	_ = in.each(func(e entry) bool {
		if e.c != 0 {
			h.addAt(e.neg, int32(e.idx>>d), e.c)
		}
		return true
	})
	h.zeroCount = in.zc
	if in.zt > 0 {
		// Buckets of the input below its own threshold's bucket are entirely
		// inside the zero bucket; the bucket holding the threshold holds
		// values above it (that is where the producer put them).
		h.foldBelow(mapIndex(math.Float64bits(in.zt), s) - 1)
		h.zeroThreshold = in.zt
	}
	return h, total, nil
}

// deriveMinMax sets min and max from the populated buckets (the lowest and
// highest values they can hold), for inputs that carry no min/max.
func (h *Histogram) deriveMinMax() {
	s := int32(h.scale)
	lo, hi := math.Inf(1), math.Inf(-1)
	if p := h.dense(true); len(p.Counts) > 0 {
		lo = -boundaryOrMax(p.Offset+int32(len(p.Counts)), s)
		hi = -lowerBoundary(p.Offset, s)
	}
	if h.zeroCount > 0 {
		lo, hi = min(lo, 0), max(hi, 0)
	}
	if p := h.dense(false); len(p.Counts) > 0 {
		lo = min(lo, lowerBoundary(p.Offset, s))
		hi = max(hi, boundaryOrMax(p.Offset+int32(len(p.Counts)), s))
	}
	h.min, h.max = lo, hi
}

func boundaryOrMax(idx, s int32) float64 {
	v := lowerBoundary(idx, s)
	if math.IsInf(v, 1) {
		return math.MaxFloat64
	}
	return v
}

// FromData builds a histogram from OTLP-shaped data, with the given
// settings (as New). It returns an error if the scale is outside
// [MinScale, 52], an index cannot hold a float64 at that scale, the zero
// threshold is negative or not finite, the counts do not add up to Count,
// or (when Count > 0) Min or Max is NaN or Min > Max. If d.Scale is finer
// than maxScale, or a range needs more than maxSize buckets, the result is
// downscaled (exactly). Buckets entirely below the zero threshold are
// folded into the zero count. Sum is taken as given. Min and Max are taken
// as given, except that Min = Max = 0 with buckets away from zero means the
// producer did not set them (OTLP's min/max are optional): they are then
// derived from the populated buckets.
func FromData(d Data, maxSize int, maxScale int32) (*Histogram, error) {
	in := input{scale: d.Scale, zt: d.ZeroThreshold, zc: d.ZeroCount}
	in.each = func(yield func(entry) bool) error {
		for i, c := range d.Positive.Counts {
			if !yield(entry{false, int64(d.Positive.Offset) + int64(i), c}) {
				return nil
			}
		}
		for i, c := range d.Negative.Counts {
			if !yield(entry{true, int64(d.Negative.Offset) + int64(i), c}) {
				return nil
			}
		}
		return nil
	}
	h, total, err := build(in, maxSize, maxScale)
	if err != nil {
		return nil, err
	}
	if total != d.Count {
		return nil, fmt.Errorf("%w: buckets+zero = %d, count = %d", ErrCount, total, d.Count)
	}
	h.sum = d.Sum
	if d.Count > 0 {
		if math.IsNaN(d.Min) || math.IsNaN(d.Max) || d.Min > d.Max {
			return nil, ErrMinMax
		}
		h.deriveMinMax()
		unknown := d.Min == 0 && d.Max == 0 && (h.min != 0 || h.max != 0)
		if !unknown {
			h.min, h.max = d.Min, d.Max
		}
	}
	return h, nil
}

// Span is a Prometheus native histogram span: Offset is the gap (in
// buckets) from the end of the previous span, or the absolute Prometheus
// index of the first bucket for the first span; Length buckets follow.
type Span struct {
	Offset int32
	Length uint32
}

// Native is a Prometheus native histogram with integer counts (the
// prompb/remote-write and client_model shape, without timestamps): Schema is
// the OTel scale, Prometheus bucket index i covers (base^(i-1), base^i],
// i.e. Prometheus index = OTel index + 1; bucket counts are delta-encoded
// (first absolute, then differences) in span order.
type Native struct {
	Schema                         int32
	ZeroThreshold                  float64
	ZeroCount                      uint64
	Count                          uint64
	Sum                            float64
	PositiveSpans, NegativeSpans   []Span
	PositiveDeltas, NegativeDeltas []int64
}

// FromNative builds a histogram from a Prometheus native histogram. Schema
// must be a standard exponential schema, -4..8 (custom-bucket histograms,
// schema -53, are explicit histograms: use FromExplicit). Prometheus counts
// NaN observations in Count but in no bucket, and ±Inf in buckets just past
// the one holding ±MaxFloat64; both become Dropped here (so Count() =
// n.Count - Dropped()). Count smaller than the buckets is an error, as are
// spans that do not match the deltas and deltas that make a count negative.
// Prometheus has no min/max: they are derived from the populated buckets.
func FromNative(n Native, maxSize int, maxScale int32) (*Histogram, error) {
	if n.Schema < -4 || n.Schema > 8 {
		return nil, fmt.Errorf("%w: native schema %d (want -4..8)", ErrScale, n.Schema)
	}
	var inf uint64
	infIdx := maxIdx64(n.Schema) + 1
	walk := func(spans []Span, deltas []int64, neg bool, yield func(entry) bool) (bool, error) {
		var total uint64
		for _, sp := range spans {
			total += uint64(sp.Length)
		}
		if total != uint64(len(deltas)) {
			return false, fmt.Errorf("%w: spans hold %d buckets, %d deltas", ErrSpans, total, len(deltas))
		}
		var idx int64 // OTel index of the next bucket
		var c int64
		k := 0
		for si, sp := range spans {
			if si == 0 {
				idx = int64(sp.Offset) - 1
			} else {
				idx += int64(sp.Offset)
			}
			for j := uint32(0); j < sp.Length; j++ {
				c += deltas[k]
				k++
				if c < 0 {
					return false, ErrNegative
				}
				if idx == infIdx {
					inf += uint64(c)
				} else if !yield(entry{neg, idx, uint64(c)}) {
					return false, nil
				}
				idx++
			}
		}
		return true, nil
	}
	in := input{scale: n.Schema, zt: n.ZeroThreshold, zc: n.ZeroCount}
	in.each = func(yield func(entry) bool) error {
		inf = 0
		ok, err := walk(n.PositiveSpans, n.PositiveDeltas, false, yield)
		if err != nil || !ok {
			return err
		}
		_, err = walk(n.NegativeSpans, n.NegativeDeltas, true, yield)
		return err
	}
	h, total, err := build(in, maxSize, maxScale)
	if err != nil {
		return nil, err
	}
	if n.Count < total || n.Count-total < inf {
		return nil, fmt.Errorf("%w: buckets+zero = %d, count = %d", ErrCount, total+inf, n.Count)
	}
	h.dropped = n.Count - total
	h.sum = n.Sum
	h.deriveMinMax()
	return h, nil
}

// Native returns the histogram as a Prometheus native histogram. The schema
// is the scale clamped to [-4, 8]: a finer histogram is downscaled (a copy,
// exact); a coarser one (below -4, only for ranges beyond 2^(160·16)) has
// each bucket's count placed in the schema -4 bucket that holds its upper
// boundary (lossy; Prometheus cannot represent it). Gaps of up to two empty
// buckets are filled with zeros instead of starting a new span (as
// client_golang does). Count is Count() (Dropped values are not included).
func (h *Histogram) Native() Native {
	c := h
	if h.scale > 8 {
		c = h.Clone()
		c.downscale(int32(h.scale) - 8)
	}
	s := int32(c.scale)
	n := Native{
		Schema:        max(s, -4),
		ZeroThreshold: c.zeroThreshold,
		ZeroCount:     c.zeroCount,
		Count:         c.Count(),
		Sum:           c.sum,
	}
	n.PositiveSpans, n.PositiveDeltas = c.spans(false)
	n.NegativeSpans, n.NegativeDeltas = c.spans(true)
	return n
}

// spans encodes one sign as Prometheus spans and deltas.
func (h *Histogram) spans(neg bool) ([]Span, []int64) {
	start, n, slot0 := h.region(neg)
	s := int32(h.scale)
	up := int32(0)
	if s < -4 {
		up = -4 - s
	}
	var spans []Span
	var deltas []int64
	var prev int64
	var next int64 // Prometheus index after the last emitted bucket
	var acc uint64
	var accIdx int64
	have := false
	emit := func(pidx int64, c uint64) {
		if len(spans) == 0 {
			spans = append(spans, Span{Offset: int32(pidx), Length: 1})
		} else if gap := pidx - next; gap <= 2 {
			for ; gap > 0; gap-- {
				deltas = append(deltas, -prev)
				prev = 0
				spans[len(spans)-1].Length++
			}
			spans[len(spans)-1].Length++
		} else {
			spans = append(spans, Span{Offset: int32(gap), Length: 1})
		}
		deltas = append(deltas, int64(c)-prev)
		prev = int64(c)
		next = pidx + 1
	}
	for i := int32(0); i < n; i++ {
		c := h.get(slot0 + int(i))
		if c == 0 {
			continue
		}
		// Prometheus index of the schema max(s,-4) bucket (OTel index + 1).
		pidx := int64(start+i) + 1
		if up > 0 {
			pidx = (int64(start+i)+1)<<up - 1 + 1
		}
		if have && pidx == accIdx {
			acc += c
			continue
		}
		if have {
			emit(accIdx, acc)
		}
		acc, accIdx, have = c, pidx, true
	}
	if have {
		emit(accIdx, acc)
	}
	return spans, deltas
}
