package histogram

import (
	"math"
	"unsafe"
)

const (
	// DefaultMaxSize is the default number of buckets per sign (OTel SDK default).
	DefaultMaxSize = 160
	// DefaultMaxScale is the scale a histogram starts at (OTel SDK default).
	DefaultMaxScale int32 = 20
	// MinScale is the coarsest scale: at -10 the whole float64 range needs
	// at most three buckets (subnormals included), so nothing can outgrow it.
	MinScale int32 = -10
	// MaxScale is the finest scale: every index at scale 20 fits in an int32.
	MaxScale int32 = 20

	// minMaxSize is the smallest accepted maxSize: at MinScale the float64
	// range (subnormals included) spans three buckets.
	minMaxSize = 4
	// maxMaxSize is the largest accepted maxSize (both signs share a buffer
	// of at most 2·maxMaxSize counters addressed by uint16).
	maxMaxSize = 1<<15 - 1
)

// Histogram is a base-2 exponential histogram with the data model of an
// OpenTelemetry ExponentialHistogramDataPoint (and of a Prometheus native
// histogram with the same schema).
//
// Bucket index i at scale s counts the values v with base^i < |v| <= base^(i+1),
// base = 2^(2^-s); positive and negative values have separate ranges of at
// most MaxSize buckets each; values with |v| <= ZeroThreshold go to the zero
// bucket. A new histogram starts at its maximum scale and halves its
// resolution (Downscale) whenever a range would need more than MaxSize
// buckets, so it always holds the finest resolution that fits.
//
// Count, Min and Max are exact; Sum is the float64 running sum. NaN and
// ±Inf are not observations: they
// go into no bucket, not into Count, Sum, Min or Max, and are counted by
// Dropped (OTel SDKs drop them too; Prometheus counts NaN in its count and
// ±Inf in overflow buckets, see FromNative).
//
// A Histogram is not safe for concurrent use; see Concurrent. Create one
// with New. The zero value is an empty histogram with the default settings.
//
// Memory: counters are 1, 2, 4 or 8 bytes wide, all of one width, widened on
// overflow; both signs share one buffer that holds the bucket ranges in use
// (grown by doubling, capped at MaxSize per sign in use), so a histogram
// holding 160 buckets with counts below 65536 takes 80 + 320 bytes.
type Histogram struct {
	sum, min, max float64 // min > max while empty (Min and Max report 0)
	zeroThreshold float64
	zeroCount     uint64
	dropped       uint64

	// buf holds cap counters of 1<<width bytes. The positive range occupies
	// slots [0, posLen) for indices posStart...; the negative range the last
	// negLen slots for indices negStart... (both ascending). Slots outside
	// the two ranges are always zero. A raw pointer instead of a slice saves
	// 16 bytes per histogram (the header is 80 bytes, a size class).
	buf      unsafe.Pointer
	posStart int32
	negStart int32
	posLen   uint16
	negLen   uint16
	cap      uint16
	width    uint8 // log2 of the counter size in bytes, 0..3
	scale    int8
	maxScale int8
	maxSize  uint16 // 0 only in a zero Histogram (means defaults)
}

// New returns an empty histogram that keeps at most maxSize buckets per sign
// and starts at scale maxScale. maxSize 0 means DefaultMaxSize; other values
// are clamped to [4, 32767] (4: at MinScale the float64 range, subnormals
// included, spans three buckets). maxScale 0 means DefaultMaxScale, as in
// the OTel SDK configuration (NewAtScale takes 0 literally); other values
// are clamped to [MinScale, MaxScale].
func New(maxSize int, maxScale int32) *Histogram {
	h := &Histogram{}
	h.init(maxSize, maxScale, maxScale == 0)
	return h
}

// NewAtScale is New where maxScale 0 means scale 0 rather than the default.
func NewAtScale(maxSize int, maxScale int32) *Histogram {
	h := &Histogram{}
	h.init(maxSize, maxScale, false)
	return h
}

func (h *Histogram) init(maxSize int, maxScale int32, defaultScale bool) {
	switch {
	case maxSize == 0:
		maxSize = DefaultMaxSize
	case maxSize < minMaxSize:
		maxSize = minMaxSize
	case maxSize > maxMaxSize:
		maxSize = maxMaxSize
	}
	if defaultScale {
		maxScale = DefaultMaxScale
	}
	maxScale = max(MinScale, min(MaxScale, maxScale))
	h.maxSize = uint16(maxSize)
	h.maxScale = int8(maxScale)
	h.scale = int8(maxScale)
	h.min, h.max = math.Inf(1), math.Inf(-1)
}

// lazyInit gives a zero Histogram its default settings; it must be called
// by every mutating entry point that can see a zero Histogram before it
// depends on the settings (Record's fast path never does: a zero Histogram
// has no buckets, so its first non-zero value takes the slow path).
func (h *Histogram) lazyInit() {
	if h.maxSize == 0 {
		h.init(0, 0, true)
	}
}

// Record adds one observation of v. NaN and ±Inf are not recorded; they are
// counted by Dropped. It never allocates except when the bucket range grows
// past the allocated buffer or a counter outgrows its width.
//
// The fast path covers normal values at scales up to 10 (where histograms
// of real data live); higher scales take recordHigh, and zeros,
// subnormals, NaN/±Inf and the first value of a zero Histogram recordRare.
func (h *Histogram) Record(v float64) {
	b := math.Float64bits(v)
	abs := b &^ signBit
	exp := int32(abs >> mantBits)
	if uint32(exp-1) >= 0x7fe { // ±0, subnormal, ±Inf, NaN
		h.recordRare(v)
		return
	}
	h.sum += v
	if v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	if math.Float64frombits(abs) <= h.zeroThreshold {
		h.zeroCount++
		return
	}
	s := int32(h.scale)
	mant := abs & mantMask
	e := exp - 1023
	pow2 := int32((mant - 1) >> 63) // 1 for an exact power of two (upper bucket end)
	var idx int32
	switch {
	case uint32(s-1) < lutScale:
		idx = e<<uint(s&31) + lutIndex(mant, s) - pow2 // lutIndex(0) = 0
	case s <= 0:
		idx = (e - pow2) >> uint(-s&31)
	default:
		h.recordHigh(b, e, mant, s)
		return
	}
	var slot uint32
	if b&signBit == 0 {
		slot = uint32(idx - h.posStart)
		if slot >= uint32(h.posLen) {
			h.addMiss(b, idx)
			return
		}
	} else {
		slot = uint32(idx - h.negStart)
		if slot >= uint32(h.negLen) {
			h.addMiss(b, idx)
			return
		}
		slot += uint32(h.cap) - uint32(h.negLen)
	}
	p := unsafe.Add(h.buf, uintptr(slot)<<(h.width&3))
	switch h.width {
	case 1:
		c := (*uint16)(p)
		if *c == math.MaxUint16 {
			h.addSlot(int(slot), 1)
			return
		}
		*c++
	case 0:
		c := (*uint8)(p)
		if *c == math.MaxUint8 {
			h.addSlot(int(slot), 1)
			return
		}
		*c++
	case 2:
		c := (*uint32)(p)
		if *c == math.MaxUint32 {
			h.addSlot(int(slot), 1)
			return
		}
		*c++
	default:
		*(*uint64)(p)++
	}
}

// addMiss finishes Record when idx is outside the current range: the range
// grows (or the histogram downscales). A zero Histogram (scale 0, no
// settings yet) always lands here first and is initialised by recordOther.
func (h *Histogram) addMiss(b uint64, idx int32) {
	if h.maxSize == 0 {
		h.recordOther(math.Float64frombits(b), b&^signBit)
		return
	}
	h.addAt(b&signBit != 0, idx, 1)
}

// recordHigh finishes Record at scales above lutScale (a tail call, so the
// fast path keeps its registers): normal value, sum/min/max done.
func (h *Histogram) recordHigh(b uint64, e int32, mant uint64, s int32) {
	idx := e<<uint(s&31) + int32(hiDigits(mant, s))
	if mant == 0 {
		idx--
	}
	neg := b&signBit != 0
	start, n, slot0 := h.region(neg)
	if uint32(idx-start) < uint32(n) {
		h.addSlot(slot0+int(idx-start), 1)
		return
	}
	h.addAt(neg, idx, 1)
}

// recordRare is Record for zeros, subnormals, ±Inf and NaN.
func (h *Histogram) recordRare(v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		h.dropped++
		return
	}
	h.sum += v
	if v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	abs := math.Float64bits(v) &^ signBit
	if math.Float64frombits(abs) <= h.zeroThreshold {
		h.zeroCount++
		return
	}
	h.recordOther(v, abs)
}

// recordOther finishes Record for what the fast path does not cover: sum,
// min and max are already updated and v is finite and outside the zero
// bucket.
func (h *Histogram) recordOther(v float64, abs uint64) {
	if h.maxSize == 0 {
		// A zero Histogram: its min/max started at 0, not ±Inf. Every value
		// before this one was a zero (or dropped), so min/max are right if
		// there were zeros, and must be v otherwise.
		first := h.zeroCount == 0
		h.init(0, 0, true)
		if first {
			h.min, h.max = v, v
		} else {
			h.min, h.max = min(0, v), max(0, v)
		}
	}
	h.addAt(v < 0, mapIndex(abs, int32(h.scale)), 1)
}

// RecordN adds n observations of v (n = 0 does nothing). NaN and ±Inf add n
// to Dropped.
func (h *Histogram) RecordN(v float64, n uint64) {
	if n == 0 {
		return
	}
	b := math.Float64bits(v)
	if b&expMask == expMask {
		h.dropped += n
		return
	}
	h.recordSlow(v, n)
}

// recordSlow is RecordN for a finite v, also serving a zero Histogram.
func (h *Histogram) recordSlow(v float64, n uint64) {
	h.lazyInit()
	h.sum += v * float64(n)
	h.min = min(h.min, v)
	h.max = max(h.max, v)
	abs := math.Float64bits(v) &^ signBit
	if math.Float64frombits(abs) <= h.zeroThreshold {
		h.zeroCount += n
		return
	}
	h.addAt(v < 0, mapIndex(abs, int32(h.scale)), n)
}

// Scale returns the current scale.
func (h *Histogram) Scale() int32 {
	if h.maxSize == 0 {
		return DefaultMaxScale
	}
	return int32(h.scale)
}

// MaxScale returns the scale the histogram starts at (and Reset returns to).
func (h *Histogram) MaxScale() int32 {
	if h.maxSize == 0 {
		return DefaultMaxScale
	}
	return int32(h.maxScale)
}

// MaxSize returns the maximum number of buckets per sign.
func (h *Histogram) MaxSize() int {
	if h.maxSize == 0 {
		return DefaultMaxSize
	}
	return int(h.maxSize)
}

// Count returns the number of observations (Dropped ones excluded): the
// zero count plus all bucket counts. It is computed, O(buckets), which keeps
// Record one increment cheaper and the header smaller.
func (h *Histogram) Count() uint64 {
	n := h.zeroCount
	for i := 0; i < int(h.posLen); i++ {
		n += h.get(i)
	}
	base := int(h.cap) - int(h.negLen)
	for i := 0; i < int(h.negLen); i++ {
		n += h.get(base + i)
	}
	return n
}

// empty reports whether the histogram holds no observation.
func (h *Histogram) empty() bool {
	return h.zeroCount == 0 && h.posLen == 0 && h.negLen == 0
}

// Sum returns the sum of the observations (0 when empty).
func (h *Histogram) Sum() float64 { return h.sum }

// Min returns the smallest observation, or 0 when the histogram is empty.
// Histograms built from data without a minimum (FromNative, FromExplicit)
// report the lower boundary of the lowest populated bucket.
func (h *Histogram) Min() float64 {
	if h.empty() || h.min > h.max {
		return 0
	}
	return h.min
}

// Max returns the largest observation, or 0 when the histogram is empty.
func (h *Histogram) Max() float64 {
	if h.empty() || h.min > h.max {
		return 0
	}
	return h.max
}

// Mean returns Sum/Count, or 0 when the histogram is empty.
func (h *Histogram) Mean() float64 {
	n := h.Count()
	if n == 0 {
		return 0
	}
	return h.sum / float64(n)
}

// ZeroCount returns the number of observations in the zero bucket
// [-ZeroThreshold, ZeroThreshold].
func (h *Histogram) ZeroCount() uint64 { return h.zeroCount }

// ZeroThreshold returns the zero bucket's half-width (0: exact zeros only).
func (h *Histogram) ZeroThreshold() float64 { return h.zeroThreshold }

// Dropped returns how many NaN and ±Inf values were offered and not
// counted (including those of merged histograms).
func (h *Histogram) Dropped() uint64 { return h.dropped }

// RelativeError returns (base-1)/(base+1) at the current scale: the largest
// relative error of QuantileMidpoint for a quantile outside the zero bucket.
func (h *Histogram) RelativeError() float64 {
	base := math.Exp2(math.Exp2(-float64(h.Scale())))
	return (base - 1) / (base + 1)
}

// Reset empties the histogram and returns it to its maximum scale and a
// zero threshold of 0, keeping its settings and its counter buffer (so a
// histogram reused per window stops allocating once warmed up).
func (h *Histogram) Reset() {
	if h.buf != nil {
		clear(h.bytes())
	}
	h.lazyInit()
	*h = Histogram{
		buf: h.buf, cap: h.cap, width: h.width,
		maxSize: h.maxSize, maxScale: h.maxScale, scale: h.maxScale,
		min: math.Inf(1), max: math.Inf(-1),
	}
}

// Clone returns a deep copy.
func (h *Histogram) Clone() *Histogram {
	c := *h
	if h.buf != nil {
		nb := allocSlots(int(h.cap), h.width)
		copy(unsafe.Slice((*byte)(nb), int(h.cap)<<h.width), h.bytes())
		c.buf = nb
	}
	return &c
}

// Downscale lowers the scale by `by` (halving the resolution `by` times),
// merging buckets exactly; it stops at MinScale. by <= 0 does nothing.
func (h *Histogram) Downscale(by int32) {
	h.lazyInit()
	by = min(by, int32(h.scale)-MinScale)
	if by <= 0 {
		return
	}
	h.downscale(by)
}

// SizeBytes returns the heap memory the histogram holds: the header and
// the counter buffer, each rounded up to its Go allocation size class (for
// the sizes a histogram uses: 80-byte header; buffers of 8..1024 bytes in
// classes of 16 up to 256 and 32..128 above).
func (h *Histogram) SizeBytes() int {
	return sizeClass(int(unsafe.Sizeof(*h))) + sizeClass((int(h.cap)<<h.width+7)&^7)
}

// sizeClass rounds n up to the Go runtime's small-object size classes
// (runtime/sizeclasses.go) up to 32 KiB; larger sizes are rounded to pages.
func sizeClass(n int) int {
	if n == 0 {
		return 0
	}
	for _, c := range sizeClasses {
		if n <= c {
			return c
		}
	}
	return (n + 8191) &^ 8191
}

var sizeClasses = [...]int{8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256,
	288, 320, 352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536, 1792,
	2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192, 9472, 9728, 10240,
	10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576, 27264, 28672, 32768}
