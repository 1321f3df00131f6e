package histogram

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Binary encoding for the store, version 1:
//
//	byte     version (1)
//	byte     flags: 1 negative range, 2 positive range, 4 zero threshold,
//	         8 dropped, 16 sum/min/max
//	varint   scale (zigzag)
//	uvarint  zero count
//	[16]     3 × 8 bytes little-endian float64: sum, min, max
//	[4]      8 bytes zero threshold
//	[8]      uvarint dropped
//	per range present, negative first:
//	  varint  offset (zigzag): index of the first bucket
//	  uvarint n >= 1: number of buckets
//	  n × varint (zigzag) count[i] - count[i-1] (count[-1] = 0), mod 2^64
//
// Count is not stored (it is the zero count plus the buckets). Leading and
// trailing empty buckets are trimmed. A histogram of 30 populated buckets
// typically takes 60-70 bytes. The settings (MaxSize, MaxScale) are not
// stored: UnmarshalBinary keeps the receiver's.

const encVersion = 1

const (
	flagNeg = 1 << iota
	flagPos
	flagZT
	flagDropped
	flagStats
)

// AppendBinary appends the encoding of h to dst. It does not allocate
// beyond growing dst. The error is always nil (encoding.BinaryAppender).
func (h *Histogram) AppendBinary(dst []byte) ([]byte, error) {
	flags := byte(0)
	pos, neg := h.trimmed(false), h.trimmed(true)
	if neg.n > 0 {
		flags |= flagNeg
	}
	if pos.n > 0 {
		flags |= flagPos
	}
	if h.zeroThreshold != 0 {
		flags |= flagZT
	}
	if h.dropped != 0 {
		flags |= flagDropped
	}
	if !h.empty() || h.sum != 0 {
		flags |= flagStats
	}
	dst = append(dst, encVersion, flags)
	dst = binary.AppendVarint(dst, int64(h.Scale()))
	dst = binary.AppendUvarint(dst, h.zeroCount)
	if flags&flagStats != 0 {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(h.sum))
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(h.Min()))
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(h.Max()))
	}
	if flags&flagZT != 0 {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(h.zeroThreshold))
	}
	if flags&flagDropped != 0 {
		dst = binary.AppendUvarint(dst, h.dropped)
	}
	for _, r := range [2]trimmedRange{neg, pos} {
		if r.n == 0 {
			continue
		}
		dst = binary.AppendVarint(dst, int64(r.start))
		dst = binary.AppendUvarint(dst, uint64(r.n))
		var prev uint64
		for i := 0; i < r.n; i++ {
			c := h.get(r.slot0 + i)
			dst = binary.AppendVarint(dst, int64(c-prev))
			prev = c
		}
	}
	return dst, nil
}

// MarshalBinary returns the encoding of h (see AppendBinary).
func (h *Histogram) MarshalBinary() ([]byte, error) {
	return h.AppendBinary(make([]byte, 0, 32+2*int(h.posLen+h.negLen)))
}

type trimmedRange struct {
	start int32
	n     int
	slot0 int
}

// trimmed returns one sign's range without leading and trailing zeros.
func (h *Histogram) trimmed(neg bool) trimmedRange {
	start, n, slot0 := h.region(neg)
	lo, hi := 0, int(n)-1
	for lo <= hi && h.get(slot0+lo) == 0 {
		lo++
	}
	for hi >= lo && h.get(slot0+hi) == 0 {
		hi--
	}
	if lo > hi {
		return trimmedRange{}
	}
	return trimmedRange{start: start + int32(lo), n: hi - lo + 1, slot0: slot0 + lo}
}

// UnmarshalBinary replaces h with the decoded histogram, keeping h's
// MaxSize and MaxScale (the defaults for a zero Histogram); data finer than
// MaxScale or wider than MaxSize is downscaled. It returns an error wrapping
// ErrEncoding (or a validation error) for malformed input, and then leaves h
// unchanged. It never allocates more than the counters of MaxSize buckets
// per sign, whatever the input claims.
func (h *Histogram) UnmarshalBinary(b []byte) error {
	d := decoder{b: b}
	if d.byte() != encVersion {
		return fmt.Errorf("%w: unknown version", ErrEncoding)
	}
	flags := d.byte()
	if flags&^(flagNeg|flagPos|flagZT|flagDropped|flagStats) != 0 {
		return fmt.Errorf("%w: unknown flags %#x", ErrEncoding, flags)
	}
	scale := d.varint()
	zc := d.uvarint()
	var sum, mn, mx, zt float64
	var dropped uint64
	if flags&flagStats != 0 {
		sum, mn, mx = d.float(), d.float(), d.float()
	}
	if flags&flagZT != 0 {
		zt = d.float()
	}
	if flags&flagDropped != 0 {
		dropped = d.uvarint()
	}
	type rng struct {
		neg   bool
		start int64
		n     uint64
		at    int // offset of the first delta in b
	}
	var ranges [2]rng
	nr := 0
	for _, neg := range [2]bool{true, false} {
		f := byte(flagPos)
		if neg {
			f = flagNeg
		}
		if flags&f == 0 {
			continue
		}
		r := rng{neg: neg, start: d.varint(), n: d.uvarint()}
		if d.err != nil || r.n == 0 || r.n > uint64(len(d.b)-d.i) || r.start < -1<<40 || r.start > 1<<40 {
			return fmt.Errorf("%w: bad bucket range", ErrEncoding)
		}
		r.at = d.i
		for i := uint64(0); i < r.n; i++ {
			d.varint()
		}
		ranges[nr] = r
		nr++
	}
	if d.err != nil {
		return fmt.Errorf("%w: %v", ErrEncoding, d.err)
	}
	if d.i != len(d.b) {
		return fmt.Errorf("%w: %d trailing bytes", ErrEncoding, len(d.b)-d.i)
	}
	if scale < int64(MinScale) || scale > int64(MaxScale) {
		return fmt.Errorf("%w: %d", ErrScale, scale)
	}
	in := input{scale: int32(scale), zt: zt, zc: zc}
	in.each = func(yield func(entry) bool) error {
		for _, r := range ranges[:nr] {
			dd := decoder{b: b, i: r.at}
			var c uint64
			for i := uint64(0); i < r.n; i++ {
				c += uint64(dd.varint())
				if !yield(entry{r.neg, r.start + int64(i), c}) {
					return nil
				}
			}
		}
		return nil
	}
	maxSize, maxScale := DefaultMaxSize, DefaultMaxScale
	if h.maxSize != 0 {
		maxSize, maxScale = int(h.maxSize), int32(h.maxScale)
	}
	nh, total, err := build(in, maxSize, maxScale)
	if err != nil {
		return err
	}
	if total > 0 {
		if math.IsNaN(mn) || math.IsNaN(mx) || mn > mx {
			return ErrMinMax
		}
		nh.min, nh.max = mn, mx
	}
	nh.sum = sum
	nh.dropped = dropped
	nh.maxScale = int8(maxScale)
	*h = *nh
	return nil
}

type decoder struct {
	b   []byte
	i   int
	err error
}

func (d *decoder) byte() byte {
	if d.i >= len(d.b) {
		d.err = fmt.Errorf("truncated")
		return 0
	}
	c := d.b[d.i]
	d.i++
	return c
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.i:])
	if n <= 0 {
		d.err = fmt.Errorf("bad varint at %d", d.i)
		return 0
	}
	d.i += n
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.i:])
	if n <= 0 {
		d.err = fmt.Errorf("bad varint at %d", d.i)
		return 0
	}
	d.i += n
	return v
}

func (d *decoder) float() float64 {
	if d.err != nil {
		return 0
	}
	if len(d.b)-d.i < 8 {
		d.err = fmt.Errorf("truncated")
		return 0
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(d.b[d.i:]))
	d.i += 8
	return v
}
