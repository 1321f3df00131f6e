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
	// summary: the buckets were not decoded (decodeOptions.want); count
	// holds, and in a range-coded chunk sum, min and max too.
	summary bool
	// packed: the buckets are still encoded (decodeOptions.lazy): pos and
	// neg have their offsets but no counts, lz holds each sign's encoded
	// counts. histAcc.add merges them from there; unpack decodes them for
	// anything else.
	packed bool
	lz     [2]packedSign
}

// size returns how many buckets sign (0 positive, 1 negative) spans.
func (d *hdata) size(sign int) int {
	if d.packed {
		return d.lz[sign].n
	}
	if sign == 0 {
		return len(d.pos.counts)
	}
	return len(d.neg.counts)
}

// unpack decodes packed buckets (a no-op for others).
func (d *hdata) unpack() error {
	if !d.packed {
		return nil
	}
	for i, b := range [2]*buckets{&d.pos, &d.neg} {
		if ps := &d.lz[i]; ps.n > 0 {
			b.counts = make([]uint64, ps.n)
			if err := ps.unpack(b.counts); err != nil {
				return err
			}
		}
	}
	d.packed, d.lz = false, [2]packedSign{}
	return nil
}

type buckets struct {
	offset int32
	counts []uint64
}

// Chunk versions: the first byte of every encoded chunk. Both are read;
// encodeChunk writes chunkPacked for histograms at coarse resolutions and
// chunkVersion otherwise.
const (
	chunkVersion = 1 // histogram buckets range-coded (buckets.go)
	chunkPacked  = 2 // histogram buckets packed per window (appendPacked)
)

// packedMinRes is the finest resolution (seconds) whose histogram chunks
// are written packed: the hourly and daily rollups that long reports read
// selectively. The 1-minute tier, most of the disk, stays range-coded.
const packedMinRes = 3600

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
//	histogram: count, then
//	           version 1: zero count, scale, zero threshold, sum, min, max,
//	           uvarint length and a bit stream of buckets (see appendBuckets);
//	           version 2: an int column of each window's record length and
//	           the records, each a whole histogram (see appendPacked)
//
// The columns a count needs come first, so a query that wants only counts
// stops reading there (decodeOptions.countsOnly).
func encodeChunk(dst []byte, kind metric.Kind, res int64, pts []point) []byte {
	if kind == metric.Histogram && res >= packedMinRes {
		at := len(dst)
		dst = encodeChunkVersion(dst, chunkPacked, kind, res, pts)
		packed := len(dst) - at
		if packed <= packedMaxBytes || res >= 86400 {
			return dst
		}
		// Too big to stay in its b-tree page: range-coded, unless that
		// does not fit either and the packed one needs no more overflow
		// pages (SQLite gives a row's overflow a 64 KB page of its own:
		// the packed one then costs no more disk, and reads much faster).
		rc := encodeChunkVersion(nil, chunkVersion, kind, res, pts)
		if len(rc) > packedMaxBytes && packed <= packedOverflowMax {
			return dst
		}
		return append(dst[:at], rc...)
	}
	return encodeChunkVersion(dst, chunkVersion, kind, res, pts)
}

// packedOverflowMax is the largest row that takes one overflow page at
// the store's 64 KB page size: SQLite keeps ~8 KB of an overflowing row in
// its b-tree page and the rest, up to a page less 4 bytes, on the first
// overflow page.
const packedOverflowMax = 8000 + 65532

// packedMaxBytes is the largest packed chunk written. SQLite keeps at most
// ~16 KB of a row of a WITHOUT ROWID table in its 64 KB b-tree page and puts
// the rest on overflow pages of its own, mostly empty: a 29 KB chunk of
// dense hourly histograms (12,000 observations, ~160 buckets an hour)
// would take ~70 KB on disk, against ~11 KB range-coded. Such chunks of
// the 1 h tier stay range-coded: compact, but read whole when any window is
// wanted. Daily chunks are packed whatever their size: one per series and
// 120 days (at most ~64 KB of overflow page each), and a long report reads
// every one of them.
const packedMaxBytes = 16000

func encodeChunkVersion(dst []byte, version byte, kind metric.Kind, res int64, pts []point) []byte {
	n := len(pts)
	dst = append(dst, version, byte(kind))
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
		if version == chunkPacked {
			var recs []byte
			for i := range pts {
				l := len(recs)
				recs = appendPacked(recs, pts[i].h)
				ints[i] = int64(len(recs) - l)
			}
			dst = appendIntColumn(dst, ints)
			return append(dst, recs...)
		}
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

// decodeOptions select a partial decode for queries.
type decodeOptions struct {
	// countsOnly stops after the columns a count needs: window index,
	// errors, count (and a counter's sum, its value). Other fields are
	// left zero; a histogram's count is in point.count and h is nil.
	countsOnly bool
	// want, if set, is asked for each window start (in increasing order)
	// whether its histogram buckets are needed. A packed chunk returns the
	// wanted windows only; in a range-coded one the others are marked
	// summary, and all buckets are decoded if any is wanted.
	want func(start int64) bool
	// buf, if set, lends the memory of the decoded points: they are valid
	// until buf is used again.
	buf *decodeBuf
	// lazy leaves a packed chunk's buckets encoded (hdata.packed): the
	// points then refer to the chunk's bytes, which must outlive them. A
	// query merging thousands of windows adds their counts straight into
	// its sums rather than writing each window's buckets out first.
	lazy bool
}

// decodeBuf is memory reused from one chunk decode to the next or, with
// keep, shared by many decodes whose points are all kept (head rows: one
// point each).
type decodeBuf struct {
	keep  bool
	raw   []byte // the blob, for the caller
	idx   []int  // decodeSelected's wanted windows
	pts   []point
	hs    []hdata
	ints  []int64
	fl    []float64
	arena []uint64
}

// points returns n points (not zeroed: the decoder sets each whole) and,
// when hist, n zeroed histograms.
func (b *decodeBuf) points(n int, hist bool) ([]point, []hdata) {
	if b.keep {
		if cap(b.pts)-len(b.pts) < n {
			b.pts = make([]point, 0, max(n, 1024))
		}
		pts := b.pts[len(b.pts) : len(b.pts)+n : len(b.pts)+n]
		b.pts = b.pts[:len(b.pts)+n]
		if !hist {
			return pts, nil
		}
		if cap(b.hs)-len(b.hs) < n {
			b.hs = make([]hdata, 0, max(n, 1024))
		}
		hs := b.hs[len(b.hs) : len(b.hs)+n : len(b.hs)+n]
		b.hs = b.hs[:len(b.hs)+n]
		return pts, hs
	}
	if cap(b.pts) < n {
		b.pts = make([]point, n)
	}
	pts := b.pts[:n]
	if !hist {
		return pts, nil
	}
	if cap(b.hs) < n {
		b.hs = make([]hdata, n)
	}
	hs := b.hs[:n]
	clear(hs)
	return pts, hs
}

func countTrue(bs []bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// decodeSelected decodes the windows of a packed histogram chunk that
// opt.want asks for, and only those (d is past the header).
func decodeSelected(d *decoder, n int, base, res int64, opt decodeOptions) (metric.Kind, []point, error) {
	var idx []int
	if opt.buf != nil {
		idx = opt.buf.idx[:0]
		defer func() { opt.buf.idx = idx[:0] }()
	}
	starts := d.intColumn(n)
	for i, v := range starts {
		if opt.want(base + v*res) {
			idx = append(idx, i)
		}
	}
	var pts []point
	var hs []hdata
	if opt.buf != nil {
		pts, hs = opt.buf.points(len(idx), true)
	} else {
		pts, hs = make([]point, len(idx)), make([]hdata, len(idx))
	}
	for k, i := range idx {
		pts[k] = point{start: base + starts[i]*res}
	}
	tracked := d.intColumn(n)
	for k, i := range idx {
		pts[k].errTracked = tracked[i] != 0
	}
	errs := d.intColumn(n)
	for k, i := range idx {
		pts[k].errCount = uint64(errs[i])
	}
	counts := d.intColumn(n)
	for k, i := range idx {
		hs[k].count = uint64(counts[i])
		pts[k].h = &hs[k]
	}
	lens := d.intColumn(n)
	r := packedReader{lazy: opt.lazy}
	if opt.buf != nil {
		r.arena = opt.buf.arena[:0]
		if opt.buf.keep {
			r.arena = opt.buf.arena
		}
		defer func() { opt.buf.arena = r.arena }()
	}
	r.expect(len(idx))
	k := 0
	for i := 0; i < n && d.err == nil; i++ {
		if lens[i] < 0 || lens[i] > int64(len(d.b)) {
			d.fail("truncated bucket record")
			break
		}
		rec := d.bytes(int(lens[i]))
		if k < len(idx) && idx[k] == i {
			if err := r.read(rec, &hs[k]); err != nil {
				return 0, nil, err
			}
			k++
		}
	}
	if d.err != nil {
		return 0, nil, d.err
	}
	return metric.Histogram, pts, nil
}

// decodeChunk is the inverse of encodeChunk.
func decodeChunk(b []byte) (metric.Kind, []point, error) {
	return decodeChunkWith(b, decodeOptions{})
}

// decodeChunkWith decodes a chunk, or the part of it opt asks for.
func decodeChunkWith(b []byte, opt decodeOptions) (metric.Kind, []point, error) {
	d := decoder{b: b}
	if opt.buf != nil {
		d.ints, d.fl = opt.buf.ints, opt.buf.fl[:0]
		defer func() { opt.buf.ints, opt.buf.fl = d.ints, d.fl }()
	}
	version := d.byte()
	if d.err == nil && version != chunkVersion && version != chunkPacked {
		return 0, nil, fmt.Errorf("%w: unknown chunk version %d", errCorrupt, version)
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
	// A packed histogram chunk read for some windows returns those only.
	selective := version == chunkPacked && opt.want != nil && !opt.countsOnly
	if selective && kind == metric.Histogram {
		return decodeSelected(&d, n, base, res, opt)
	}
	var pts []point
	var hs []hdata
	if opt.buf != nil {
		pts, hs = opt.buf.points(n, kind == metric.Histogram && !opt.countsOnly)
	} else {
		pts = make([]point, n)
	}
	for i, v := range d.intColumn(n) {
		pts[i] = point{start: base + v*res}
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
		if opt.countsOnly {
			break
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
		if opt.countsOnly {
			// Only the count, kept in the point itself (h stays nil).
			for i, v := range d.intColumn(n) {
				pts[i].count = uint64(v)
			}
			break
		}
		if hs == nil {
			hs = make([]hdata, n)
		}
		for i := range pts {
			pts[i].h = &hs[i]
		}
		for i, v := range d.intColumn(n) {
			hs[i].count = uint64(v)
		}
		if version == chunkVersion {
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
		}
		var want []bool
		anyWanted := opt.want == nil
		if opt.want != nil {
			want = make([]bool, n)
			for i := range pts {
				want[i] = opt.want(pts[i].start)
				anyWanted = anyWanted || want[i]
			}
		}
		if version == chunkPacked {
			lens := d.intColumn(n)
			r := packedReader{lazy: opt.lazy}
			if opt.buf != nil {
				r.arena = opt.buf.arena[:0]
				if opt.buf.keep {
					r.arena = opt.buf.arena // counts handed out stay
				}
				defer func() { opt.buf.arena = r.arena }()
			}
			if want == nil {
				r.expect(n)
			} else {
				r.expect(countTrue(want))
			}
			for i := range hs {
				if d.err != nil {
					break
				}
				if lens[i] < 0 || lens[i] > int64(len(d.b)) {
					d.fail("truncated bucket record")
					break
				}
				rec := d.bytes(int(lens[i]))
				if want != nil && !want[i] {
					hs[i].summary = true
					continue
				}
				if err := r.read(rec, &hs[i]); err != nil {
					return 0, nil, err
				}
			}
			break
		}
		l := d.uvarint()
		if d.err == nil && l > uint64(len(d.b)) {
			d.fail("truncated bucket stream")
		}
		if d.err == nil && !anyWanted {
			for i := range hs {
				hs[i].summary = true
			}
			break
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
