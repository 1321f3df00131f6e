package store

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
)

// Column encodings. A chunk is a short header followed by one column per
// field; each column picks the smallest of a few encodings for its values, so
// a counter that never moves costs two bytes per chunk, integral values are
// bit-packed, and arbitrary floats fall back to Gorilla XOR compression.

const (
	intConst    = 0 // varint value
	intFOR      = 1 // zigzag varint min, width byte, n×width bits of v-min
	intDeltaFOR = 2 // zigzag varint first, then the n-1 deltas as intFOR

	floatConst   = 0 // 8 bytes
	floatSame    = 1 // byte: index of an earlier float column with identical values
	floatDecimal = 2 // byte d, then an int column of v×10^d (exact round trip checked)
	floatXOR     = 3 // uvarint byte length, Gorilla XOR bit stream
)

func appendIntColumn(dst []byte, vs []int64) []byte {
	if len(vs) == 0 {
		return append(dst, intConst, 0)
	}
	allSame := true
	for _, v := range vs[1:] {
		if v != vs[0] {
			allSame = false
			break
		}
	}
	if allSame {
		return binary.AppendVarint(append(dst, intConst), vs[0])
	}
	forLen, _, _ := forCost(vs)
	deltas := make([]int64, len(vs)-1)
	for i := 1; i < len(vs); i++ {
		deltas[i-1] = vs[i] - vs[i-1]
	}
	dLen, _, _ := forCost(deltas)
	if dLen+binary.MaxVarintLen64/2 < forLen {
		dst = binary.AppendVarint(append(dst, intDeltaFOR), vs[0])
		return appendFOR(dst, deltas)
	}
	return appendFOR(append(dst, intFOR), vs)
}

// forCost returns the byte size of the frame-of-reference encoding of vs.
func forCost(vs []int64) (size int, lo int64, width int) {
	lo, hi := vs[0], vs[0]
	for _, v := range vs {
		lo, hi = min(lo, v), max(hi, v)
	}
	width = bits.Len64(uint64(hi) - uint64(lo))
	return varintLen(lo) + 1 + (len(vs)*width+7)/8, lo, width
}

func varintLen(v int64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutVarint(b[:], v)
}

func appendFOR(dst []byte, vs []int64) []byte {
	_, lo, width := forCost(vs)
	dst = binary.AppendVarint(dst, lo)
	dst = append(dst, byte(width))
	w := bitWriter{b: dst}
	for _, v := range vs {
		w.writeBits(uint64(v)-uint64(lo), width)
	}
	return w.b
}

// decoder reads a chunk's columns in order.
type decoder struct {
	b    []byte
	err  error
	ints []int64 // intColumn's result, reused by the next call
	fl   []float64
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{errCorrupt}, args...)...)
	}
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(n int) []byte {
	if d.err != nil || n < 0 || n > len(d.b) {
		d.fail("truncated")
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

// intColumn reads an int column; the result is only valid until the next
// call.
func (d *decoder) intColumn(n int) []int64 {
	if cap(d.ints) < n {
		d.ints = make([]int64, n)
	}
	out := d.ints[:n]
	switch tag := d.byte(); tag {
	case intConst:
		v := d.varint()
		for i := range out {
			out[i] = v
		}
	case intFOR:
		d.readFOR(out)
	case intDeltaFOR:
		if n == 0 {
			d.fail("delta column without values")
			return out
		}
		out[0] = d.varint()
		d.readFOR(out[1:])
		for i := 1; i < n; i++ {
			out[i] += out[i-1]
		}
	default:
		d.fail("unknown int column encoding %d", tag)
	}
	return out
}

func (d *decoder) readFOR(out []int64) {
	lo := d.varint()
	width := int(d.byte())
	if width > 64 {
		d.fail("bad width %d", width)
		return
	}
	src := d.bytes((len(out)*width + 7) / 8)
	if d.err != nil {
		return
	}
	if width == 0 {
		for i := range out {
			out[i] = lo
		}
		return
	}
	// Values whose 8 bytes from their first byte are all in src: one
	// big-endian load each (src holds exactly the bits, checked above).
	i := 0
	if width <= 57 {
		pos := 0
		for ; i < len(out) && pos>>3+8 <= len(src); i++ {
			w := binary.BigEndian.Uint64(src[pos>>3:]) << (pos & 7)
			out[i] = int64(uint64(lo) + w>>(64-width))
			pos += width
		}
	}
	r := bitReader{b: src, pos: i * width}
	for ; i < len(out); i++ {
		u, err := r.readBits(width)
		if err != nil {
			d.fail("truncated bit-packed column")
			return
		}
		out[i] = int64(uint64(lo) + u)
	}
}

// floatEncoder remembers the float columns already written in a chunk, so a
// column identical to an earlier one (a gauge's min, max and sum when each
// window holds one sample) costs two bytes.
type floatEncoder struct {
	prev [][]float64
}

func (e *floatEncoder) append(dst []byte, vs []float64) []byte {
	idx := len(e.prev)
	e.prev = append(e.prev, vs)
	if len(vs) == 0 {
		return append(dst, floatConst, 0, 0, 0, 0, 0, 0, 0, 0)
	}
	if sameBits(vs, vs[0]) {
		return binary.LittleEndian.AppendUint64(append(dst, floatConst), math.Float64bits(vs[0]))
	}
	for j := 0; j < idx; j++ {
		if equalBits(e.prev[j], vs) {
			return append(dst, floatSame, byte(j))
		}
	}
	if d, ints, ok := decimalInts(vs); ok {
		return appendIntColumn(append(dst, floatDecimal, byte(d)), ints)
	}
	x := appendXOR(nil, vs)
	dst = binary.AppendUvarint(append(dst, floatXOR), uint64(len(x)))
	return append(dst, x...)
}

func sameBits(vs []float64, v float64) bool {
	b := math.Float64bits(v)
	for _, x := range vs {
		if math.Float64bits(x) != b {
			return false
		}
	}
	return true
}

func equalBits(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float64bits(a[i]) != math.Float64bits(b[i]) {
			return false
		}
	}
	return true
}

var pow10 = [...]float64{1, 10, 100, 1e3, 1e4, 1e5, 1e6}

// decimalInts finds the fewest decimal places d ≤ 6 with which every value
// is an integer n such that float64(n)/10^d reproduces it bit for bit.
func decimalInts(vs []float64) (int, []int64, bool) {
	ints := make([]int64, len(vs))
next:
	for d, p := range pow10 {
		for i, v := range vs {
			s := v * p
			if math.IsNaN(s) || math.Abs(s) >= 1<<53 {
				return 0, nil, false
			}
			n := int64(math.Round(s))
			if math.Float64bits(float64(n)/p) != math.Float64bits(v) {
				continue next
			}
			ints[i] = n
		}
		return d, ints, true
	}
	return 0, nil, false
}

func (d *decoder) floatColumn(prev [][]float64, n int) []float64 {
	// Float columns of a chunk share one allocation.
	if cap(d.fl)-len(d.fl) < n {
		d.fl = make([]float64, 0, 5*n)
	}
	out := d.fl[len(d.fl) : len(d.fl)+n : len(d.fl)+n]
	d.fl = d.fl[:len(d.fl)+n]
	switch tag := d.byte(); tag {
	case floatConst:
		b := d.bytes(8)
		if d.err != nil {
			return out
		}
		v := math.Float64frombits(binary.LittleEndian.Uint64(b))
		for i := range out {
			out[i] = v
		}
	case floatSame:
		j := int(d.byte())
		if j >= len(prev) || len(prev[j]) != n {
			d.fail("bad column reference %d", j)
			return out
		}
		copy(out, prev[j])
	case floatDecimal:
		places := int(d.byte())
		if places >= len(pow10) {
			d.fail("bad decimal places %d", places)
			return out
		}
		for i, v := range d.intColumn(n) {
			out[i] = float64(v) / pow10[places]
		}
	case floatXOR:
		l := d.uvarint()
		if l > uint64(len(d.b)) {
			d.fail("truncated XOR column")
			return out
		}
		if err := readXOR(d.bytes(int(l)), out); err != nil {
			d.fail("XOR column: %v", err)
		}
	default:
		d.fail("unknown float column encoding %d", tag)
	}
	return out
}

// appendXOR is Gorilla's float compression (Pelkonen et al., VLDB 2015), as
// in the Prometheus TSDB: each value is XORed with the previous one and only
// the meaningful bits are written, reusing the previous leading/trailing-zero
// window when it fits.
func appendXOR(dst []byte, vs []float64) []byte {
	w := bitWriter{b: dst}
	prev := math.Float64bits(vs[0])
	w.writeBits(prev, 64)
	lead, trail := uint8(0xff), uint8(0)
	for _, v := range vs[1:] {
		cur := math.Float64bits(v)
		x := cur ^ prev
		prev = cur
		if x == 0 {
			w.writeBit(false)
			continue
		}
		w.writeBit(true)
		l, t := uint8(bits.LeadingZeros64(x)), uint8(bits.TrailingZeros64(x))
		if l > 31 {
			l = 31
		}
		if lead != 0xff && l >= lead && t >= trail {
			w.writeBit(false)
			w.writeBits(x>>trail, 64-int(lead)-int(trail))
			continue
		}
		lead, trail = l, t
		sig := 64 - int(l) - int(t)
		w.writeBit(true)
		w.writeBits(uint64(l), 5)
		w.writeBits(uint64(sig-1), 6)
		w.writeBits(x>>t, sig)
	}
	return w.b
}

func readXOR(b []byte, out []float64) error {
	if len(out) == 0 {
		return nil
	}
	r := bitReader{b: b}
	prev, err := r.readBits(64)
	if err != nil {
		return err
	}
	out[0] = math.Float64frombits(prev)
	lead, trail := 0, 0
	for i := 1; i < len(out); i++ {
		changed, err := r.readBit()
		if err != nil {
			return err
		}
		if changed {
			newWindow, err := r.readBit()
			if err != nil {
				return err
			}
			if newWindow {
				l, err1 := r.readBits(5)
				s, err2 := r.readBits(6)
				if err1 != nil || err2 != nil {
					return errCorrupt
				}
				lead = int(l)
				trail = 64 - lead - int(s) - 1
				if trail < 0 {
					return errCorrupt
				}
			}
			x, err := r.readBits(64 - lead - trail)
			if err != nil {
				return err
			}
			prev ^= x << trail
		}
		out[i] = math.Float64frombits(prev)
	}
	return nil
}
