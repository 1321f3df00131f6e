package store

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
)

// Histogram buckets are coded with the range coder against a model learnt
// from the earlier windows of the same chunk: the expected count λ of each
// bucket is its mean count so far, scaled by this window's total count. The
// count is then coded with adaptive probabilities chosen by λ: sparse tail
// buckets (λ ≪ 1) cost a fraction of a bit, busy ones are coded as the
// difference from λ. A latency histogram of ~200 observations in ~110
// buckets costs about two thirds of Rice coding. Scale changes keep the model
// (it is mapped between scales).
//
// Per window and sign: expgolomb(len), and if len > 0, expgolomb(zigzag(
// offset − previous offset of that sign)), then len counts.

const (
	levels    = 22
	prefixLen = 24
)

// Upper bounds of λ for the unary levels 1..13; larger λ use levels 14+ by
// octave, coded as a Rice code of the zigzag difference from λ.
var levelBounds = [...]float64{0.03, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.4, 2, 2.8, 4, 5.6, 8}

type seriesSums struct {
	base int32
	sums []uint64
}

func (s *seriesSums) at(idx int32) uint64 {
	j := int64(idx) - int64(s.base)
	if j < 0 || j >= int64(len(s.sums)) {
		return 0
	}
	return s.sums[j]
}

// add adds counts whose indexes are at a scale shift finer than the sums
// (each index i lands in i >> shift).
func (s *seriesSums) add(b *buckets, shift int32) {
	if len(b.counts) == 0 {
		return
	}
	first, last := b.offset>>shift, (b.offset+int32(len(b.counts))-1)>>shift
	if len(s.sums) == 0 {
		s.base = first
		s.sums = make([]uint64, last-first+1)
	}
	lo := min(s.base, first)
	hi := max(int64(s.base)+int64(len(s.sums)), int64(last)+1)
	if lo < s.base || hi > int64(s.base)+int64(len(s.sums)) {
		grown := make([]uint64, hi-int64(lo))
		copy(grown[s.base-lo:], s.sums)
		s.base, s.sums = lo, grown
	}
	for j, c := range b.counts {
		s.sums[(b.offset+int32(j))>>shift-s.base] += c
	}
}

// downscale merges the sums into buckets shift scales coarser.
func (s *seriesSums) downscale(shift int32) {
	if len(s.sums) == 0 || shift <= 0 {
		return
	}
	old := *s
	*s = seriesSums{}
	s.add(&buckets{offset: old.base, counts: old.sums}, shift)
}

type bucketModel struct {
	p        [2][levels][prefixLen]uint16
	scale    int32  // of the sums: the coarsest seen
	cur      int32  // of the window being coded
	n        uint64 // windows seen
	countSum uint64
	sums     [2]seriesSums
	factor   float64 // this window's count / mean count
}

func newBucketModel() *bucketModel {
	m := &bucketModel{}
	for s := range m.p {
		for l := range m.p[s] {
			for j := range m.p[s][l] {
				m.p[s][l][j] = probInit
			}
		}
	}
	return m
}

// begin prepares for a window of histogram h. The model keeps its sums at
// the coarsest scale seen in the chunk, so a histogram whose scale moves by
// one between windows keeps its model.
func (m *bucketModel) begin(h *hdata) {
	m.factor = 0
	if m.n > 0 && m.countSum > 0 {
		m.factor = float64(h.count) / float64(m.countSum)
	}
	m.cur = h.scale
}

// end learns from the window just coded.
func (m *bucketModel) end(h *hdata) {
	if m.n == 0 {
		m.scale = h.scale
	} else if h.scale < m.scale {
		m.sums[0].downscale(m.scale - h.scale)
		m.sums[1].downscale(m.scale - h.scale)
		m.scale = h.scale
	}
	m.n++
	m.countSum += h.count
	m.sums[0].add(&h.pos, h.scale-m.scale)
	m.sums[1].add(&h.neg, h.scale-m.scale)
}

// context returns the level and λ for bucket idx (at the current window's
// scale) of sign.
func (m *bucketModel) context(sign int, idx int32) (int, float64) {
	if m.n == 0 {
		return 0, 0
	}
	var raw float64
	if d := m.scale - m.cur; d > 0 {
		// The window is coarser than the model: add the model buckets it covers.
		if d > 8 {
			return 0, 0
		}
		for k := int64(idx) << d; k < (int64(idx)+1)<<d; k++ {
			raw += float64(m.sums[sign].at(int32(k)))
		}
	} else {
		// Finer: share the model bucket evenly among the 2^-d it splits into.
		// Smoothed with the neighbours: early in a chunk the sums are
		// noisy, and the true shape is smooth.
		k := idx >> (-d)
		ss := &m.sums[sign]
		sm := (float64(ss.at(k-1)) + 2*float64(ss.at(k)) + float64(ss.at(k+1))) / 4
		raw = math.Ldexp(sm, int(d))
	}
	lambda := raw * m.factor
	for i, b := range levelBounds {
		if lambda < b {
			return i + 1, lambda
		}
	}
	l := len(levelBounds) + 1 + log2Int(lambda/8)
	return min(l, levels-1), lambda
}

// log2Int is int(math.Log2(x)) for x >= 1, exactly (the coder's contexts
// are fixed by what the encoder computed), without the logarithm in the
// common case: math.Log2 is exp-1 plus log(frac)/ln 2, which truncates to
// exp-1 unless frac is so close to 1 that the sum may round up to exp.
func log2Int(x float64) int {
	frac, exp := math.Frexp(x)
	if x >= 1 && !math.IsInf(x, 0) && (frac == 0.5 || frac < 1-1e-9) {
		return exp - 1
	}
	return int(math.Log2(x))
}

func riceParam(lambda float64) int {
	if lambda < 4 {
		return 0
	}
	return bits.Len64(uint64(math.Sqrt(lambda))) - 1
}

func encodeExpGolomb(e *rcEncoder, v uint64) {
	n := bits.Len64(v + 1)
	e.direct(0, n-1)
	e.direct(v+1, n)
}

func decodeExpGolomb(d *rcDecoder) (uint64, error) {
	n := 0
	for d.direct(1) == 0 {
		n++
		if n > 63 || d.over > 8 {
			return 0, fmt.Errorf("%w: bucket stream", errCorrupt)
		}
	}
	return (1<<n | d.direct(n)) - 1, nil
}

func (m *bucketModel) encodeCount(e *rcEncoder, sign int, idx int32, c uint64) {
	lvl, lambda := m.context(sign, idx)
	p := &m.p[sign][lvl]
	v, k := c, 0
	if lvl > len(levelBounds) {
		v = zigzag(int64(c) - int64(math.Round(lambda)))
		k = riceParam(lambda)
	}
	q := v >> k
	for j := range prefixLen {
		more := q > uint64(j)
		e.bit(&p[j], more)
		if !more {
			break
		}
	}
	if q >= prefixLen {
		encodeExpGolomb(e, q-prefixLen)
	}
	e.direct(v, k)
}

func (m *bucketModel) decodeCount(d *rcDecoder, sign int, idx int32) (uint64, error) {
	lvl, lambda := m.context(sign, idx)
	q := d.unary(&m.p[sign][lvl])
	if q >= prefixLen {
		x, err := decodeExpGolomb(d)
		if err != nil {
			return 0, err
		}
		q += x
	}
	k := 0
	if lvl > len(levelBounds) {
		k = riceParam(lambda)
	}
	if q > math.MaxUint64>>k {
		return 0, fmt.Errorf("%w: bucket count", errCorrupt)
	}
	v := q<<k | d.direct(k)
	if lvl > len(levelBounds) {
		c := int64(math.Round(lambda)) + unzigzag(v)
		if c < 0 {
			return 0, fmt.Errorf("%w: negative bucket count", errCorrupt)
		}
		return uint64(c), nil
	}
	return v, nil
}

func appendBuckets(dst []byte, pts []point) []byte {
	e := newRCEncoder(dst)
	m := newBucketModel()
	var prevOff [2]int32
	for i := range pts {
		h := pts[i].h
		m.begin(h)
		for sign, b := range [2]*buckets{&h.pos, &h.neg} {
			encodeExpGolomb(e, uint64(len(b.counts)))
			if len(b.counts) == 0 {
				continue
			}
			encodeExpGolomb(e, zigzag(int64(b.offset)-int64(prevOff[sign])))
			prevOff[sign] = b.offset
			for j, c := range b.counts {
				m.encodeCount(e, sign, b.offset+int32(j), c)
			}
		}
		m.end(h)
	}
	return e.finish()
}

func readBuckets(bs []byte, hs []hdata) error {
	d := newRCDecoder(bs)
	m := newBucketModel()
	var prevOff [2]int32
	var arena []uint64
	for i := range hs {
		h := &hs[i]
		m.begin(h)
		for sign, b := range [2]*buckets{&h.pos, &h.neg} {
			n, err := decodeExpGolomb(d)
			if err != nil {
				return err
			}
			if n == 0 {
				continue
			}
			if n > 1<<16 {
				return fmt.Errorf("%w: %d buckets", errCorrupt, n)
			}
			zz, err := decodeExpGolomb(d)
			if err != nil {
				return err
			}
			b.offset = int32(int64(prevOff[sign]) + unzigzag(zz))
			prevOff[sign] = b.offset
			// Counts of the whole chunk share a few allocations rather
			// than one each, sized as if the windows left were like this
			// one (a one-window head row gets just what it needs). Each
			// window's slice is capped: nothing appended runs into the next.
			if cap(arena)-len(arena) < int(n) {
				arena = make([]uint64, 0, int(n)*min(len(hs)-i, 1<<16/int(n)+1))
			}
			b.counts = arena[len(arena) : len(arena)+int(n) : len(arena)+int(n)]
			arena = arena[:len(arena)+int(n)]
			for j := range b.counts {
				if b.counts[j], err = m.decodeCount(d, sign, b.offset+int32(j)); err != nil {
					return err
				}
				if d.over > 8 {
					return fmt.Errorf("%w: truncated bucket stream", errCorrupt)
				}
			}
			if d.over > 8 {
				return fmt.Errorf("%w: truncated bucket stream", errCorrupt)
			}
		}
		m.end(h)
	}
	return nil
}

// Packed buckets (chunk version 2, the coarse tiers): each window's buckets
// are a self-contained, byte-aligned record, so a query can decode the few
// windows it needs (the peak hour of a day) without the windows before them,
// at a few nanoseconds per bucket instead of the range coder's ~100. An
// hourly or daily rollup is a small share of the disk: it trades 2–3× the
// range coder's size for that.
//
// A record is the whole histogram but its count (a column, for queries that
// want only counts): uvarint zero count, varint scale, a flags byte
// (packThreshold: the zero threshold follows), then the floats little-endian
// — zero threshold if flagged, sum, min, max — then per sign: uvarint n
// (buckets in the range, 0 for none); if n > 0, varint offset, then a byte:
// width w (bits per count, 0..64) plus packBitmap when only the non-zero
// counts follow a bitmap of the n buckets (chosen when smaller); then the
// counts, bit-packed least-significant bit first.

const (
	packBitmap    = 0x80
	packThreshold = 1
)

func appendPacked(dst []byte, h *hdata) []byte {
	dst = binary.AppendUvarint(dst, h.zeroCount)
	dst = binary.AppendVarint(dst, int64(h.scale))
	if h.zeroThreshold != 0 || math.Signbit(h.zeroThreshold) {
		dst = append(dst, packThreshold)
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(h.zeroThreshold))
	} else {
		dst = append(dst, 0)
	}
	for _, f := range [3]float64{h.sum, h.min, h.max} {
		dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(f))
	}
	for _, b := range [2]*buckets{&h.pos, &h.neg} {
		dst = binary.AppendUvarint(dst, uint64(len(b.counts)))
		if len(b.counts) == 0 {
			continue
		}
		dst = binary.AppendVarint(dst, int64(b.offset))
		var hi uint64
		nnz := 0
		for _, c := range b.counts {
			hi |= c
			if c != 0 {
				nnz++
			}
		}
		w := bits.Len64(hi)
		n := len(b.counts)
		if (n+7)/8+(nnz*w+7)/8 < (n*w+7)/8 {
			dst = append(dst, byte(w)|packBitmap)
			bm := make([]byte, (n+7)/8)
			for j, c := range b.counts {
				if c != 0 {
					bm[j>>3] |= 1 << (j & 7)
				}
			}
			dst = append(dst, bm...)
			dst = appendPackedInts(dst, b.counts, w, true)
			continue
		}
		dst = append(dst, byte(w))
		dst = appendPackedInts(dst, b.counts, w, false)
	}
	return dst
}

// appendPackedInts packs vs (only the non-zero ones with skipZero) at w bits
// each, least-significant bit first.
func appendPackedInts(dst []byte, vs []uint64, w int, skipZero bool) []byte {
	if w == 0 {
		return dst
	}
	var acc uint64
	nb := 0
	for _, v := range vs {
		if skipZero && v == 0 {
			continue
		}
		for left := w; left > 0; {
			take := min(left, 64-nb)
			acc |= (v & (1<<take - 1)) << nb
			v >>= take % 64
			if take == 64 {
				v = 0
			}
			nb += take
			left -= take
			for nb >= 8 {
				dst = append(dst, byte(acc))
				acc >>= 8
				nb -= 8
			}
		}
	}
	if nb > 0 {
		dst = append(dst, byte(acc))
	}
	return dst
}

// packedReader decodes packed bucket records into counts that share a few
// allocations per chunk.
type packedReader struct {
	arena []uint64
	left  int  // windows still to decode, for sizing the arena
	lazy  bool // leave the counts encoded (hdata.packed)
}

// packedSign is one sign's bucket counts as a packed record holds them.
type packedSign struct {
	n   int    // buckets spanned
	w   int    // bits per count
	bm  []byte // which of the n are non-zero (then only those are in src), or nil
	src []byte
}

// at returns the k-th count in src.
func (ps *packedSign) at(k int) uint64 {
	if pos := k * ps.w; ps.w <= 56 && pos>>3+8 <= len(ps.src) {
		return binary.LittleEndian.Uint64(ps.src[pos>>3:]) >> (pos & 7) & (1<<ps.w - 1)
	}
	return unpackAt(ps.src, k, ps.w)
}

// unpack writes the n counts into dst (len n).
func (ps *packedSign) unpack(dst []uint64) error {
	if ps.bm == nil {
		unpackInts(dst, ps.src, ps.w)
		return nil
	}
	clear(dst)
	k := 0
	for j, x := range ps.bm {
		for x != 0 {
			i := j*8 + bits.TrailingZeros8(x)
			x &= x - 1
			if i >= len(dst) {
				return fmt.Errorf("%w: bucket bitmap", errCorrupt)
			}
			dst[i] = ps.at(k)
			k++
		}
	}
	return nil
}

// expect sets how many windows are still to be read.
func (r *packedReader) expect(n int) { r.left = n }

func (r *packedReader) counts(n int) []uint64 {
	if cap(r.arena)-len(r.arena) < n {
		// A new arena: counts already handed out keep the old one.
		r.arena = make([]uint64, 0, max(n*min(max(r.left, 1), 1<<16/n+1), 2*cap(r.arena)))
	}
	c := r.arena[len(r.arena) : len(r.arena)+n : len(r.arena)+n]
	r.arena = r.arena[:len(r.arena)+n]
	return c
}

// read decodes one window's record into h (all but its count).
func (r *packedReader) read(rec []byte, h *hdata) error {
	d := decoder{b: rec}
	h.zeroCount = d.uvarint()
	scale := d.varint()
	flags := d.byte()
	if d.err != nil {
		return d.err
	}
	if scale < math.MinInt32 || scale > math.MaxInt32 || flags&^packThreshold != 0 {
		return fmt.Errorf("%w: histogram record", errCorrupt)
	}
	h.scale = int32(scale)
	nf := 3
	if flags&packThreshold != 0 {
		nf = 4
	}
	fb := d.bytes(8 * nf)
	if d.err != nil {
		return d.err
	}
	var fs [4]float64
	for i := range nf {
		fs[i] = math.Float64frombits(binary.LittleEndian.Uint64(fb[8*i:]))
	}
	if nf == 4 {
		h.zeroThreshold, fs[0], fs[1], fs[2] = fs[0], fs[1], fs[2], fs[3]
	}
	h.sum, h.min, h.max = fs[0], fs[1], fs[2]
	for sign, b := range [2]*buckets{&h.pos, &h.neg} {
		n := d.uvarint()
		if d.err != nil {
			return d.err
		}
		if n == 0 {
			continue
		}
		if n > 1<<16 {
			return fmt.Errorf("%w: %d buckets", errCorrupt, n)
		}
		off := d.varint()
		mode := d.byte()
		if d.err != nil {
			return d.err
		}
		if off < math.MinInt32 || off > math.MaxInt32 {
			return fmt.Errorf("%w: bucket offset %d", errCorrupt, off)
		}
		w := int(mode &^ packBitmap)
		if w > 64 {
			return fmt.Errorf("%w: bucket width %d", errCorrupt, w)
		}
		b.offset = int32(off)
		ps := packedSign{n: int(n), w: w}
		if mode&packBitmap == 0 {
			ps.src = d.bytes((int(n)*w + 7) / 8)
		} else {
			ps.bm = d.bytes((int(n) + 7) / 8)
			if d.err != nil {
				return d.err
			}
			nnz := 0
			for _, x := range ps.bm {
				nnz += bits.OnesCount8(x)
			}
			ps.src = d.bytes((nnz*w + 7) / 8)
		}
		if d.err != nil {
			return d.err
		}
		if r.lazy {
			h.packed, h.lz[sign] = true, ps
			continue
		}
		b.counts = r.counts(int(n))
		if err := ps.unpack(b.counts); err != nil {
			return err
		}
	}
	if r.left > 0 {
		r.left--
	}
	return nil
}

// unpackInts reads len(dst) values of w bits from src (packed by
// appendPackedInts; src holds exactly enough bytes).
func unpackInts(dst []uint64, src []byte, w int) {
	if w == 0 {
		clear(dst)
		return
	}
	if w <= 56 {
		mask := uint64(1)<<w - 1
		pos := 0
		i := 0
		// While 8 bytes can be loaded from the value's first byte.
		for ; i < len(dst) && pos>>3+8 <= len(src); i++ {
			dst[i] = binary.LittleEndian.Uint64(src[pos>>3:]) >> (pos & 7) & mask
			pos += w
		}
		for ; i < len(dst); i++ {
			dst[i] = unpackAt(src, i, w)
		}
		return
	}
	for i := range dst {
		dst[i] = unpackAt(src, i, w)
	}
}

// unpackAt reads the i-th value of w bits from src, a byte at a time.
func unpackAt(src []byte, i, w int) uint64 {
	var v uint64
	pos := i * w
	for got := 0; got < w; {
		j := pos >> 3
		sh := pos & 7
		take := min(8-sh, w-got)
		v |= uint64(src[j]>>sh&(1<<take-1)) << got
		got += take
		pos += take
	}
	return v
}
