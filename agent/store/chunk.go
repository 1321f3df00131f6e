package store

import (
	"encoding/binary"
	"fmt"

	"github.com/sabakiio/sabaki/metric"
)

// point is one series' aggregate over one window of a tier, as stored.
// Counters use sum (the delta), count and the error fields; gauges sum,
// count, last, min and max; histograms h and the error fields.
type point struct {
	start      int64 // window start, Unix seconds
	sum        float64
	count      uint64
	last       float64
	min, max   float64
	errCount   uint64
	errTracked bool
	h          *hdata
}

// hdata is an exponential histogram in the OTLP shape, the form the chunk
// codec reads and writes (see hist.go for the conversion).
type hdata struct {
	scale         int32
	zeroThreshold float64
	zeroCount     uint64
	pos, neg      buckets
	count         uint64
	sum, min, max float64
}

type buckets struct {
	offset int32
	counts []uint64
}

const chunkVersion = 1

// encodeChunk encodes points (sorted by start, unique starts, all multiples
// of res seconds) of one series of the given kind. The same encoding holds a
// single point in the head table and a closed chunk of many.
//
// Layout: version, kind, uvarint n, uvarint res, varint base (first start),
// then columns: window index ((start-base)/res, delta-encoded: consecutive
// windows cost nothing), error tracked, error count, then per kind:
//
//	counter:   sum, count
//	gauge:     count, last, sum, min, max
//	histogram: count, zero count, scale, zero threshold, sum, min, max, and a
//	           bit stream of buckets (see appendBuckets)
func encodeChunk(dst []byte, kind metric.Kind, res int64, pts []point) []byte {
	n := len(pts)
	dst = append(dst, chunkVersion, byte(kind))
	dst = binary.AppendUvarint(dst, uint64(n))
	dst = binary.AppendUvarint(dst, uint64(res))
	if n == 0 {
		return dst
	}
	base := pts[0].start
	dst = binary.AppendVarint(dst, base)
	ints := make([]int64, n)
	col := func(f func(p *point) int64) []byte {
		for i := range pts {
			ints[i] = f(&pts[i])
		}
		return appendIntColumn(dst, ints)
	}
	floats := make([][]float64, 0, 5)
	fcol := func(f func(p *point) float64) []float64 {
		vs := make([]float64, n)
		for i := range pts {
			vs[i] = f(&pts[i])
		}
		floats = append(floats, vs)
		return vs
	}
	dst = col(func(p *point) int64 { return (p.start - base) / res })
	dst = col(func(p *point) int64 {
		if p.errTracked {
			return 1
		}
		return 0
	})
	dst = col(func(p *point) int64 { return int64(p.errCount) })
	var fe floatEncoder
	switch kind {
	case metric.Counter:
		dst = fe.append(dst, fcol(func(p *point) float64 { return p.sum }))
		dst = col(func(p *point) int64 { return int64(p.count) })
	case metric.Gauge:
		dst = col(func(p *point) int64 { return int64(p.count) })
		dst = fe.append(dst, fcol(func(p *point) float64 { return p.last }))
		dst = fe.append(dst, fcol(func(p *point) float64 { return p.sum }))
		dst = fe.append(dst, fcol(func(p *point) float64 { return p.min }))
		dst = fe.append(dst, fcol(func(p *point) float64 { return p.max }))
	case metric.Histogram:
		dst = col(func(p *point) int64 { return int64(p.h.count) })
		dst = col(func(p *point) int64 { return int64(p.h.zeroCount) })
		dst = col(func(p *point) int64 { return int64(p.h.scale) })
		dst = fe.append(dst, fcol(func(p *point) float64 { return p.h.zeroThreshold }))
		dst = fe.append(dst, fcol(func(p *point) float64 { return p.h.sum }))
		dst = fe.append(dst, fcol(func(p *point) float64 { return p.h.min }))
		dst = fe.append(dst, fcol(func(p *point) float64 { return p.h.max }))
		bs := appendBuckets(nil, pts)
		dst = binary.AppendUvarint(dst, uint64(len(bs)))
		dst = append(dst, bs...)
	}
	return dst
}

// decodeChunk is the inverse of encodeChunk.
func decodeChunk(b []byte) (metric.Kind, []point, error) {
	d := decoder{b: b}
	if v := d.byte(); d.err == nil && v != chunkVersion {
		return 0, nil, fmt.Errorf("%w: unknown chunk version %d", errCorrupt, v)
	}
	kind := metric.Kind(d.byte())
	n64 := d.uvarint()
	res := int64(d.uvarint())
	if d.err != nil {
		return 0, nil, d.err
	}
	if n64 > 1<<20 || (n64 > 0 && res <= 0) {
		return 0, nil, fmt.Errorf("%w: %d points at resolution %d", errCorrupt, n64, res)
	}
	n := int(n64)
	if n == 0 {
		return kind, nil, nil
	}
	base := d.varint()
	pts := make([]point, n)
	for i, v := range d.intColumn(n) {
		pts[i].start = base + v*res
	}
	for i, v := range d.intColumn(n) {
		pts[i].errTracked = v != 0
	}
	for i, v := range d.intColumn(n) {
		pts[i].errCount = uint64(v)
	}
	var prev [][]float64
	fcol := func() []float64 {
		vs := d.floatColumn(prev, n)
		prev = append(prev, vs)
		return vs
	}
	switch kind {
	case metric.Counter:
		for i, v := range fcol() {
			pts[i].sum = v
		}
		for i, v := range d.intColumn(n) {
			pts[i].count = uint64(v)
		}
	case metric.Gauge:
		for i, v := range d.intColumn(n) {
			pts[i].count = uint64(v)
		}
		for i, v := range fcol() {
			pts[i].last = v
		}
		for i, v := range fcol() {
			pts[i].sum = v
		}
		for i, v := range fcol() {
			pts[i].min = v
		}
		for i, v := range fcol() {
			pts[i].max = v
		}
	case metric.Histogram:
		hs := make([]hdata, n)
		for i := range pts {
			pts[i].h = &hs[i]
		}
		for i, v := range d.intColumn(n) {
			hs[i].count = uint64(v)
		}
		for i, v := range d.intColumn(n) {
			hs[i].zeroCount = uint64(v)
		}
		for i, v := range d.intColumn(n) {
			hs[i].scale = int32(v)
		}
		for i, v := range fcol() {
			hs[i].zeroThreshold = v
		}
		for i, v := range fcol() {
			hs[i].sum = v
		}
		for i, v := range fcol() {
			hs[i].min = v
		}
		for i, v := range fcol() {
			hs[i].max = v
		}
		l := d.uvarint()
		if d.err == nil && l > uint64(len(d.b)) {
			d.fail("truncated bucket stream")
		}
		if d.err == nil {
			if err := readBuckets(d.bytes(int(l)), hs); err != nil {
				return 0, nil, err
			}
		}
	default:
		return 0, nil, fmt.Errorf("%w: unknown kind %d", errCorrupt, kind)
	}
	if d.err != nil {
		return 0, nil, d.err
	}
	return kind, pts, nil
}

// appendBuckets writes the positive and negative buckets of each histogram
// point as a bit stream: per sign, gamma(len); if len > 0, gamma(zigzag(offset
// − previous offset)), one mode bit, a 5-bit Rice parameter k and len Rice
// codes. Mode 0 codes the counts themselves; mode 1 codes zigzag deltas
// against the previous point's count at the same bucket index (same scale
// only), which wins for busy series whose shape is stable minute to minute.
// With ~200 observations a minute most buckets hold 0–3, where plain Rice
// codes with k=0 (unary, 1–4 bits) beat deltas.
func appendBuckets(dst []byte, pts []point) []byte {
	w := bitWriter{b: dst}
	var prev [2]*buckets
	var prevScale int32
	var raw, delta []uint64
	for i := range pts {
		h := pts[i].h
		for sign, b := range [2]*buckets{&h.pos, &h.neg} {
			w.writeGamma(uint64(len(b.counts)))
			if len(b.counts) == 0 {
				continue
			}
			var prevOff int32
			if prev[sign] != nil {
				prevOff = prev[sign].offset
			}
			w.writeGamma(zigzag(int64(b.offset) - int64(prevOff)))
			raw = append(raw[:0], b.counts...)
			kr := riceK(raw)
			costRaw := riceCost(raw, kr)
			useDelta := false
			var kd uint
			if p := prev[sign]; p != nil && i > 0 && prevScale == h.scale {
				delta = delta[:0]
				for j, c := range b.counts {
					delta = append(delta, zigzag(int64(c)-int64(p.at(b.offset+int32(j)))))
				}
				kd = riceK(delta)
				useDelta = riceCost(delta, kd) < costRaw
			}
			vs, k := raw, kr
			if useDelta {
				vs, k = delta, kd
			}
			w.writeBit(useDelta)
			w.writeBits(uint64(k), 5)
			for _, v := range vs {
				w.writeRice(v, k)
			}
			prev[sign] = b
		}
		prevScale = h.scale
	}
	return w.b
}

func riceCost(vs []uint64, k uint) uint64 {
	cost := uint64(len(vs)) * uint64(k+1)
	for _, v := range vs {
		cost += v >> k
	}
	return cost
}

// at returns the count of the bucket with absolute index idx (0 outside).
func (b *buckets) at(idx int32) uint64 {
	j := int64(idx) - int64(b.offset)
	if j < 0 || j >= int64(len(b.counts)) {
		return 0
	}
	return b.counts[j]
}

func readBuckets(bs []byte, hs []hdata) error {
	r := bitReader{b: bs}
	var prev [2]*buckets
	var prevScale int32
	for i := range hs {
		h := &hs[i]
		for sign, b := range [2]*buckets{&h.pos, &h.neg} {
			n, err := r.readGamma()
			if err != nil {
				return fmt.Errorf("%w: bucket stream: %v", errCorrupt, err)
			}
			if n == 0 {
				continue
			}
			if n > 1<<16 {
				return fmt.Errorf("%w: %d buckets", errCorrupt, n)
			}
			zz, err := r.readGamma()
			if err != nil {
				return fmt.Errorf("%w: bucket stream: %v", errCorrupt, err)
			}
			var prevOff int64
			if prev[sign] != nil {
				prevOff = int64(prev[sign].offset)
			}
			b.offset = int32(prevOff + unzigzag(zz))
			useDelta, err := r.readBit()
			if err != nil {
				return fmt.Errorf("%w: bucket stream: %v", errCorrupt, err)
			}
			k, err := r.readBits(5)
			if err != nil {
				return fmt.Errorf("%w: bucket stream: %v", errCorrupt, err)
			}
			if useDelta && (prev[sign] == nil || prevScale != h.scale) {
				return fmt.Errorf("%w: bucket delta without a previous point", errCorrupt)
			}
			b.counts = make([]uint64, n)
			for j := range b.counts {
				v, err := r.readRice(uint(k))
				if err != nil {
					return fmt.Errorf("%w: bucket stream: %v", errCorrupt, err)
				}
				if useDelta {
					v = uint64(int64(prev[sign].at(b.offset+int32(j))) + unzigzag(v))
				}
				b.counts[j] = v
			}
			prev[sign] = b
		}
		prevScale = h.scale
	}
	return nil
}
