package exporters

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"time"

	"github.com/golang/snappy"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// Window encoding used in outbox records (version 1):
//
//	payload    = version u8 | start unix-nanos i64 LE | snappy(body)
//	body       = revision uvarint | duration-nanos varint | nseries uvarint | aggregate*
//	aggregate  = name str | unit str | description str | kind u8 | resource attrs | attrs attrs
//	             | sum f64 | count uvarint | last f64 | min f64 | max f64
//	             | hist (len uvarint, 0 = none | histogram.AppendBinary | maxSize uvarint | maxScale varint)
//	             | errorCount uvarint
//	             | errorTracked u8 | nexemplars uvarint | exemplar*
//	exemplar   = traceID [16] | spanID [8] | value f64 | time unix-nanos varint (0 = zero) | attrs
//	attrs      = n uvarint | (key str | value str)*
//	str        = len uvarint | bytes
//
// The start time sits outside the compressed body so that reopening an outbox
// can rebuild its index (and apply the age bound) without decompressing.
// Snappy is used because names and attribute keys repeat across thousands of
// series in a window.
const codecVersion = 1

// payloadHeaderSize is the uncompressed prefix: version and start time.
const payloadHeaderSize = 1 + 8

// encodeWindow returns the payload of a record holding w.
func encodeWindow(w *metric.Window) ([]byte, error) {
	rec, err := appendRecord(nil, w)
	if err != nil {
		return nil, err
	}
	return rec[frameHeader:], nil
}

// snappyBlock is the block size of snappy's block format: snappy.Encode
// compresses its input in independent blocks of this size.
const snappyBlock = 64 << 10

// maxBodyLenSize is the room kept for the body's length (a uvarint at the
// head of the snappy block) while the body is compressed: 5 bytes hold any
// length up to 32 GiB, far above maxRecordSize.
const maxBodyLenSize = 5

// appendRecord appends to dst a whole outbox record for w: the frame header
// (payload length and CRC-32C, see Outbox) and the payload.
//
// The body is compressed 64 KiB at a time while it is encoded, so a window
// never exists uncompressed as a whole (26 MB at 105k series, on top of the
// compressed copy, its frame copy and the rendered window, at every window
// close). Each 64 KiB piece is compressed by snappy.Encode and loses its own
// length header; snappy.Encode of the whole body compresses the same 64 KiB
// blocks independently, so the result is byte for byte what it gives
// (TestAppendRecordMatchesWholeEncode): records stay readable by every
// version.
func appendRecord(dst []byte, w *metric.Window) ([]byte, error) {
	base := len(dst)
	dst = append(dst, make([]byte, frameHeader+payloadHeaderSize+maxBodyLenSize)...)
	dst[base+frameHeader] = codecVersion
	binary.LittleEndian.PutUint64(dst[base+frameHeader+1:], uint64(unixNanos(w.Start)))
	c := chunkCompressor{out: dst}
	b := make([]byte, 0, snappyBlock+4096) // the body not yet compressed
	b = binary.AppendUvarint(b, uint64(max(w.Revision, 0)))
	b = binary.AppendVarint(b, int64(w.Duration))
	b = binary.AppendUvarint(b, uint64(len(w.Series)))
	var hb []byte // a histogram's encoding, reused
	for i := range w.Series {
		a := &w.Series[i]
		b = appendString(b, a.Name)
		b = appendString(b, a.Unit)
		b = appendString(b, a.Description)
		b = append(b, byte(a.Kind))
		b = appendAttrs(b, a.Resource)
		b = appendAttrs(b, a.Attrs)
		b = appendFloat(b, a.Sum)
		b = binary.AppendUvarint(b, a.Count)
		b = appendFloat(b, a.Last)
		b = appendFloat(b, a.Min)
		b = appendFloat(b, a.Max)
		if a.Hist == nil {
			b = binary.AppendUvarint(b, 0)
		} else {
			var herr error
			if hb, herr = a.Hist.AppendBinary(hb[:0]); herr != nil {
				return nil, fmt.Errorf("encoding histogram of %s: %w", a.Name, herr)
			}
			b = binary.AppendUvarint(b, uint64(len(hb)))
			b = append(b, hb...)
			b = binary.AppendUvarint(b, uint64(a.Hist.MaxSize()))
			b = binary.AppendVarint(b, int64(a.Hist.MaxScale()))
		}
		b = binary.AppendUvarint(b, a.ErrorCount)
		b = appendBool(b, a.ErrorTracked)
		b = binary.AppendUvarint(b, uint64(len(a.Exemplars)))
		for _, e := range a.Exemplars {
			b = append(b, e.TraceID[:]...)
			b = append(b, e.SpanID[:]...)
			b = appendFloat(b, e.Value)
			b = binary.AppendVarint(b, unixNanos(e.Time))
			b = appendAttrs(b, e.Attrs)
		}
		if len(b) >= snappyBlock {
			b = c.compress(b, false)
		}
	}
	c.compress(b, true)
	if c.n > maxRecordSize {
		return nil, fmt.Errorf("window of %d bytes uncompressed is too large for a record", c.n)
	}
	// The body's length heads the snappy block: put it in the room kept
	// for it and close the gap.
	var lb [binary.MaxVarintLen64]byte
	ln := binary.PutUvarint(lb[:], c.n)
	at := base + frameHeader + payloadHeaderSize
	out := c.out
	copy(out[at+ln:], out[at+maxBodyLenSize:])
	out = out[:len(out)-(maxBodyLenSize-ln)]
	copy(out[at:], lb[:ln])
	payload := out[base+frameHeader:]
	binary.LittleEndian.PutUint32(out[base:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(out[base+4:], crc32.Checksum(payload, castagnoli))
	return out, nil
}

// chunkCompressor appends the snappy block of a body given piece by piece
// to out, without the block's length header.
type chunkCompressor struct {
	out []byte
	tmp []byte // snappy.Encode's output for one 64 KiB block
	n   uint64 // body bytes compressed
}

// compress compresses the full 64 KiB blocks of b (all of it when final)
// and returns the rest, moved to the start of b's array.
func (c *chunkCompressor) compress(b []byte, final bool) []byte {
	if c.tmp == nil {
		c.tmp = make([]byte, snappy.MaxEncodedLen(snappyBlock))
	}
	done := 0
	for len(b)-done >= snappyBlock || (final && done < len(b)) {
		p := b[done:min(done+snappyBlock, len(b))]
		enc := snappy.Encode(c.tmp, p)
		_, k := binary.Uvarint(enc) // the piece's own length header
		c.out = append(c.out, enc[k:]...)
		c.n += uint64(len(p))
		done += len(p)
	}
	return b[:copy(b, b[done:])]
}

// payloadStart returns the window start stored in a payload's header.
func payloadStart(p []byte) (time.Time, error) {
	if len(p) < payloadHeaderSize || p[0] != codecVersion {
		return time.Time{}, errors.New("unknown record version")
	}
	return fromUnixNanos(int64(binary.LittleEndian.Uint64(p[1:]))), nil
}

func decodeWindow(p []byte) (*metric.Window, error) {
	start, err := payloadStart(p)
	if err != nil {
		return nil, err
	}
	body, err := snappy.Decode(nil, p[payloadHeaderSize:])
	if err != nil {
		return nil, fmt.Errorf("decompressing window: %w", err)
	}
	d := decoder{b: body, strs: map[string]string{}, sets: map[string]metric.Attrs{}}
	w := &metric.Window{Start: start}
	w.Revision = int(d.uvarint())
	w.Duration = time.Duration(d.varint())
	n := d.uvarint()
	if n > uint64(len(body)) { // each aggregate takes more than one byte
		return nil, errors.New("corrupt window: series count exceeds payload")
	}
	w.Series = make([]metric.Aggregate, n)
	for i := range w.Series {
		a := &w.Series[i]
		a.Name = d.str()
		a.Unit = d.str()
		a.Description = d.str()
		a.Kind = metric.Kind(d.byte())
		a.Resource = d.resource()
		a.Attrs = d.attrs()
		a.Sum = d.float()
		a.Count = d.uvarint()
		a.Last = d.float()
		a.Min = d.float()
		a.Max = d.float()
		if hb := d.bytes(); len(hb) > 0 && d.err == nil {
			maxSize, maxScale := d.uvarint(), d.varint()
			if d.err != nil || maxSize == 0 || maxSize > 1<<16 || maxScale < -10 || maxScale > 20 {
				return nil, fmt.Errorf("decoding histogram of %s: bad limits", a.Name)
			}
			h := histogram.New(int(maxSize), int32(maxScale))
			if err := h.UnmarshalBinary(hb); err != nil {
				return nil, fmt.Errorf("decoding histogram of %s: %w", a.Name, err)
			}
			a.Hist = h
		}
		a.ErrorCount = d.uvarint()
		a.ErrorTracked = d.byte() != 0
		ne := d.uvarint()
		if ne > uint64(len(body)) {
			return nil, errors.New("corrupt window: exemplar count exceeds payload")
		}
		if ne > 0 {
			a.Exemplars = make([]metric.Exemplar, ne)
		}
		for j := range a.Exemplars {
			e := &a.Exemplars[j]
			copy(e.TraceID[:], d.fixed(16))
			copy(e.SpanID[:], d.fixed(8))
			e.Value = d.float()
			e.Time = fromUnixNanos(d.varint())
			e.Attrs = d.attrs()
		}
		if d.err != nil {
			break
		}
	}
	if d.err != nil {
		return nil, fmt.Errorf("decoding window %s: %w", start.UTC().Format(time.RFC3339), d.err)
	}
	return w, nil
}

func unixNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendAttrs(b []byte, a metric.Attrs) []byte {
	b = binary.AppendUvarint(b, uint64(len(a)))
	for _, kv := range a {
		b = appendString(b, kv.Key)
		b = appendString(b, kv.Value)
	}
	return b
}

func appendFloat(b []byte, f float64) []byte {
	return binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// decoder reads the body; the first error sticks and later reads return zero values.
//
// A decoded window shares memory between its aggregates, to keep decoding
// a window of 100k series to a few allocations per distinct value instead
// of ~10 per series: equal strings are one string, equal resources one
// Attrs, and attributes come from slabs. The window is read-only for its
// users (exporters never modify an aggregate's attributes in place).
type decoder struct {
	b   []byte
	err error

	strs map[string]string       // strings decoded so far (up to decoderMaxStrings)
	sets map[string]metric.Attrs // resources by encoding (up to decoderMaxSets)
	slab []metric.Attr           // attributes are cut from here
}

const (
	decoderMaxStrings = 1 << 16
	decoderMaxSets    = 1 << 12
	decoderSlab       = 4096 // attributes per slab
)

var errShort = errors.New("truncated record")

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.b = nil
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) fixed(n int) []byte {
	if len(d.b) < n {
		d.fail(errShort)
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	v := d.fixed(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (d *decoder) float() float64 {
	v := d.fixed(8)
	if v == nil {
		return 0
	}
	return math.Float64frombits(binary.LittleEndian.Uint64(v))
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail(errShort)
		return nil
	}
	return d.fixed(int(n))
}

func (d *decoder) str() string {
	b := d.bytes()
	if d.strs == nil {
		return string(b)
	}
	if s, ok := d.strs[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(d.strs) < decoderMaxStrings {
		d.strs[s] = s
	}
	return s
}

func (d *decoder) attrs() metric.Attrs {
	n := d.uvarint()
	if n == 0 || n > uint64(len(d.b)) {
		if n > 0 {
			d.fail(errShort)
		}
		return nil
	}
	l := len(d.slab)
	if cap(d.slab)-l < int(n) {
		d.slab, l = make([]metric.Attr, 0, max(int(n), decoderSlab)), 0
	}
	d.slab = d.slab[:l+int(n)]
	a := metric.Attrs(d.slab[l : l+int(n) : l+int(n)])
	for i := range a {
		a[i].Key = d.str()
		a[i].Value = d.str()
	}
	return a
}

// resource decodes attributes that repeat across many aggregates (all the
// series of one target share a resource): equal ones are one Attrs.
func (d *decoder) resource() metric.Attrs {
	raw := d.b
	a := d.attrs()
	if a == nil || d.err != nil || d.sets == nil {
		return a
	}
	enc := raw[:len(raw)-len(d.b)]
	if prev, ok := d.sets[string(enc)]; ok {
		d.slab = d.slab[:len(d.slab)-len(a)] // a was cut from the slab's end: give it back
		return prev
	}
	if len(d.sets) < decoderMaxSets {
		d.sets[string(enc)] = a
	}
	return a
}
