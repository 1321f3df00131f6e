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
	if n64 > 1<<14 || (n64 > 0 && res <= 0) {
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
