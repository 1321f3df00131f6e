package histogram

import (
	"math"
	"unsafe"
)

// Counter storage: see the layout comment on Histogram.

// allocSlots allocates n zeroed counters of 1<<width bytes, 8-byte aligned.
func allocSlots(n int, width uint8) unsafe.Pointer {
	words := (n<<width + 7) >> 3
	if words == 0 {
		return nil
	}
	return unsafe.Pointer(&make([]uint64, words)[0])
}

// bytes returns the counter buffer as bytes.
func (h *Histogram) bytes() []byte {
	if h.buf == nil {
		return nil
	}
	return unsafe.Slice((*byte)(h.buf), int(h.cap)<<h.width)
}

func (h *Histogram) get(slot int) uint64 {
	p := unsafe.Add(h.buf, slot<<h.width)
	switch h.width {
	case 0:
		return uint64(*(*uint8)(p))
	case 1:
		return uint64(*(*uint16)(p))
	case 2:
		return uint64(*(*uint32)(p))
	default:
		return *(*uint64)(p)
	}
}

// set stores v, which must fit the current width.
func (h *Histogram) set(slot int, v uint64) {
	p := unsafe.Add(h.buf, slot<<h.width)
	switch h.width {
	case 0:
		*(*uint8)(p) = uint8(v)
	case 1:
		*(*uint16)(p) = uint16(v)
	case 2:
		*(*uint32)(p) = uint32(v)
	default:
		*(*uint64)(p) = v
	}
}

// widthFor returns the smallest width (log2 bytes) that holds v.
func widthFor(v uint64) uint8 {
	switch {
	case v <= math.MaxUint8:
		return 0
	case v <= math.MaxUint16:
		return 1
	case v <= math.MaxUint32:
		return 2
	}
	return 3
}

func widthMax(w uint8) uint64 {
	if w >= 3 {
		return math.MaxUint64
	}
	return 1<<(8<<w) - 1
}

// addSlot adds n to a slot, widening all counters if needed. Counts wrap
// at 2^64 like OTLP's uint64 fields.
func (h *Histogram) addSlot(slot int, n uint64) {
	c := h.get(slot)
	s := c + n
	if s < c {
		h.widen(3)
	} else if s > widthMax(h.width) {
		h.widen(widthFor(s))
	}
	h.set(slot, s)
}

// widen re-allocates the counters at width w (> h.width).
func (h *Histogram) widen(w uint8) {
	if w > 3 {
		w = 3
	}
	if w <= h.width {
		return
	}
	nb := allocSlots(int(h.cap), w)
	old := *h
	h.buf, h.width = nb, w
	for i := 0; i < int(h.cap); i++ {
		if v := old.get(i); v != 0 {
			h.set(i, v)
		}
	}
}

// region returns the index of the first bucket and the number of buckets of
// one sign, and the slot of its first bucket.
func (h *Histogram) region(neg bool) (start int32, n int32, slot0 int) {
	if neg {
		return h.negStart, int32(h.negLen), int(h.cap) - int(h.negLen)
	}
	return h.posStart, int32(h.posLen), 0
}

// addAt adds n to bucket idx (at the current scale) of one sign, growing the
// range, downscaling or widening as needed.
func (h *Histogram) addAt(neg bool, idx int32, n uint64) {
	idx = h.ensure(neg, idx, idx)
	start, _, slot0 := h.region(neg)
	h.addSlot(slot0+int(idx-start), n)
}

// ensure makes the range of one sign cover [lo, hi] (indices at the current
// scale), downscaling first if the union would exceed maxSize buckets. It
// returns lo mapped to the final scale.
func (h *Histogram) ensure(neg bool, lo, hi int32) int32 {
	start, n, _ := h.region(neg)
	if n > 0 {
		if lo >= start && hi < start+n {
			return lo
		}
		lo2, hi2 := min(lo, start), max(hi, start+n-1)
		if d := h.fitShift(int64(lo2), int64(hi2)); d > 0 {
			h.downscale(d)
			lo >>= d
			hi >>= d
			return h.ensure(neg, lo, hi)
		}
		h.resize(neg, lo2, hi2)
		return lo
	}
	if d := h.fitShift(int64(lo), int64(hi)); d > 0 {
		h.downscale(d)
		lo >>= d
		hi >>= d
		return h.ensure(neg, lo, hi)
	}
	h.resize(neg, lo, hi)
	return lo
}

// fitShift returns how many halvings make [lo, hi] fit in maxSize buckets
// (never going below MinScale).
func (h *Histogram) fitShift(lo, hi int64) int32 {
	var d int32
	for hi-lo+1 > int64(h.maxSize) && int32(h.scale)-d > MinScale {
		lo >>= 1
		hi >>= 1
		d++
	}
	return d
}

// resize sets the range of one sign to [lo, hi] (which must contain the
// current range and fit maxSize), moving or re-allocating counters.
func (h *Histogram) resize(neg bool, lo, hi int32) {
	newLen := int(hi-lo) + 1
	posLen, negLen := int(h.posLen), int(h.negLen)
	var posStart, negStart int32 = h.posStart, h.negStart
	if neg {
		negLen, negStart = newLen, lo
	} else {
		posLen, posStart = newLen, lo
	}
	h.relayout(posStart, posLen, negStart, negLen)
}

// relayout moves the counters to the given ranges, each of which contains
// the corresponding current range (or the current range is empty).
func (h *Histogram) relayout(posStart int32, posLen int, negStart int32, negLen int) {
	w := int(h.width)
	oldCap := int(h.cap)
	need := posLen + negLen
	if need > oldCap {
		limit := int(h.maxSize)
		if posLen > 0 && negLen > 0 {
			limit *= 2
		}
		nc := max(need, min(2*oldCap, limit), min(8, limit))
		nb := allocSlots(nc, h.width)
		nbs := unsafe.Slice((*byte)(nb), nc<<w)
		obs := h.bytes()
		if h.posLen > 0 {
			at := int(h.posStart-posStart) << w
			copy(nbs[at:], obs[:int(h.posLen)<<w])
		}
		if h.negLen > 0 {
			at := (nc - negLen + int(h.negStart-negStart)) << w
			copy(nbs[at:], obs[(oldCap-int(h.negLen))<<w:])
		}
		h.buf, h.cap = nb, uint16(nc)
	} else {
		bs := h.bytes()
		if h.posLen > 0 && posStart < h.posStart {
			k := int(h.posStart-posStart) << w
			n := int(h.posLen) << w
			copy(bs[k:], bs[:n])
			clear(bs[:k])
		}
		if h.negLen > 0 {
			oldEnd := h.negStart + int32(h.negLen) - 1
			newEnd := negStart + int32(negLen) - 1
			if newEnd > oldEnd {
				k := int(newEnd-oldEnd) << w
				from := (oldCap - int(h.negLen)) << w
				copy(bs[from-k:], bs[from:])
				clear(bs[len(bs)-k:])
			}
		}
	}
	h.posStart, h.posLen = posStart, uint16(posLen)
	h.negStart, h.negLen = negStart, uint16(negLen)
}

// downscale halves the resolution d times (d > 0, scale-d >= MinScale),
// merging counters in place.
func (h *Histogram) downscale(d int32) {
	h.scale -= int8(d)
	if h.posLen == 0 && h.negLen == 0 {
		return
	}
	// Widen first if a merged counter will not fit.
	var need uint64
	for _, neg := range [2]bool{false, true} {
		start, n, slot0 := h.region(neg)
		var run uint64
		for i := int32(0); i < n; i++ {
			if i > 0 && (start+i)>>d != (start+i-1)>>d {
				run = 0
			}
			c := h.get(slot0 + int(i))
			if run+c < run {
				need = math.MaxUint64
			}
			run += c
			need = max(need, run)
		}
	}
	if need > widthMax(h.width) {
		h.widen(widthFor(need))
	}
	// Positive range: forward, new slot <= old slot.
	if n := int32(h.posLen); n > 0 {
		s0 := h.posStart >> d
		for i := int32(0); i < n; i++ {
			c := h.get(int(i))
			if c == 0 {
				continue
			}
			h.set(int(i), 0)
			j := int(((h.posStart + i) >> d) - s0)
			h.set(j, h.get(j)+c)
		}
		h.posLen = uint16((h.posStart+n-1)>>d - s0 + 1)
		h.posStart = s0
	}
	// Negative range: backward, new slot >= old slot.
	if n := int32(h.negLen); n > 0 {
		s0 := h.negStart >> d
		e0 := (h.negStart + n - 1) >> d
		newLen := int(e0 - s0 + 1)
		oldBase := int(h.cap) - int(n)
		newBase := int(h.cap) - newLen
		for i := n - 1; i >= 0; i-- {
			c := h.get(oldBase + int(i))
			if c == 0 {
				continue
			}
			h.set(oldBase+int(i), 0)
			j := newBase + int(((h.negStart+i)>>d)-s0)
			h.set(j, h.get(j)+c)
		}
		h.negLen = uint16(newLen)
		h.negStart = s0
	}
}
