package store

import (
	"encoding/binary"
	"errors"
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
	// Fast path: one big-endian 64-bit load holds the n bits when at least
	// 8 bytes remain and n fits beside the bit offset in the first byte.
	if i := r.pos >> 3; n > 0 && n <= 57 && i+8 <= len(r.b) {
		w := binary.BigEndian.Uint64(r.b[i:]) << (r.pos & 7)
		r.pos += n
		return w >> (64 - n), nil
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

func zigzag(v int64) uint64   { return uint64(v<<1) ^ uint64(v>>63) }
func unzigzag(u uint64) int64 { return int64(u>>1) ^ -int64(u&1) }
