package store

import (
	"errors"
	"math/bits"
)

// errCorrupt is wrapped by every decoding error: a chunk that does not parse
// is reported, never skipped silently.
var errCorrupt = errors.New("corrupt chunk")

// bitWriter appends bits most-significant first.
type bitWriter struct {
	b    []byte
	free uint8 // unused low bits in the last byte
}

func (w *bitWriter) writeBit(bit bool) {
	if w.free == 0 {
		w.b = append(w.b, 0)
		w.free = 8
	}
	w.free--
	if bit {
		w.b[len(w.b)-1] |= 1 << w.free
	}
}

// writeBits writes the low n bits of v (n ≤ 64).
func (w *bitWriter) writeBits(v uint64, n int) {
	for n > 0 {
		if w.free == 0 {
			w.b = append(w.b, 0)
			w.free = 8
		}
		take := min(n, int(w.free))
		chunk := (v >> (n - take)) & (1<<take - 1)
		w.free -= uint8(take)
		w.b[len(w.b)-1] |= byte(chunk << w.free)
		n -= take
	}
}

// writeUnary writes q one bits and a zero.
func (w *bitWriter) writeUnary(q uint64) {
	for ; q >= 32; q -= 32 {
		w.writeBits(1<<32-1, 32)
	}
	w.writeBits((1<<q-1)<<1, int(q)+1)
}

// writeRice writes v as a Rice code with parameter k.
func (w *bitWriter) writeRice(v uint64, k uint) {
	w.writeUnary(v >> k)
	if k > 0 {
		w.writeBits(v&(1<<k-1), int(k))
	}
}

// writeGamma writes v ≥ 0 as an Elias gamma code of v+1 (small numbers short).
func (w *bitWriter) writeGamma(v uint64) {
	v++
	n := bits.Len64(v)
	w.writeBits(0, n-1)
	w.writeBits(v, n)
}

type bitReader struct {
	b   []byte
	pos int // bit position
}

func (r *bitReader) readBit() (bool, error) {
	if r.pos >= len(r.b)*8 {
		return false, errCorrupt
	}
	bit := r.b[r.pos>>3]&(0x80>>(r.pos&7)) != 0
	r.pos++
	return bit, nil
}

func (r *bitReader) readBits(n int) (uint64, error) {
	if r.pos+n > len(r.b)*8 {
		return 0, errCorrupt
	}
	var v uint64
	for n > 0 {
		avail := 8 - r.pos&7
		take := min(n, avail)
		cur := uint64(r.b[r.pos>>3]) >> (avail - take) & (1<<take - 1)
		v = v<<take | cur
		r.pos += take
		n -= take
	}
	return v, nil
}

func (r *bitReader) readUnary() (uint64, error) {
	var q uint64
	for {
		bit, err := r.readBit()
		if err != nil {
			return 0, err
		}
		if !bit {
			return q, nil
		}
		q++
		if q > 1<<40 {
			return 0, errCorrupt
		}
	}
}

func (r *bitReader) readRice(k uint) (uint64, error) {
	q, err := r.readUnary()
	if err != nil {
		return 0, err
	}
	if q > 1<<(63-min(k, 62)) {
		return 0, errCorrupt
	}
	lo, err := r.readBits(int(k))
	return q<<k | lo, err
}

func (r *bitReader) readGamma() (uint64, error) {
	n := 0
	for {
		bit, err := r.readBit()
		if err != nil {
			return 0, err
		}
		if bit {
			break
		}
		n++
		if n > 64 {
			return 0, errCorrupt
		}
	}
	rest, err := r.readBits(n)
	if err != nil {
		return 0, err
	}
	return (1<<n | rest) - 1, nil
}

func zigzag(v int64) uint64   { return uint64(v<<1) ^ uint64(v>>63) }
func unzigzag(u uint64) int64 { return int64(u>>1) ^ -int64(u&1) }

// riceK returns the Rice parameter that codes vs in the fewest bits.
func riceK(vs []uint64) uint {
	best, bestCost := uint(0), uint64(1<<63)
	for k := uint(0); k < 32; k++ {
		cost := uint64(len(vs)) * uint64(k+1)
		for _, v := range vs {
			cost += v >> k
		}
		if cost < bestCost {
			best, bestCost = k, cost
		}
		if cost > bestCost {
			break // cost is convex in k
		}
	}
	return best
}
