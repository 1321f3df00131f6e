package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// Durability
//
// Without help a restart loses the baselines of cumulative series: the
// first point after it only sets a new baseline, so whatever the series
// counted since the last stored window is never counted. With
// Settings.OnWindowState (the daemon wires it to the store's
// WriteWithState) the pipeline hands every window over together with the
// baselines that advance with it, to be stored in one transaction:
//
//   - The saved baseline of a cumulative raw series is its cumulative value
//     (and start time) as of the last window its deltas went into that has
//     been handed over: not its latest value, which may already belong to a
//     window still open. A series that moves on to a later window while its
//     previous window is still open leaves a mark (its baseline at that
//     moment) with that window.
//   - So after a crash, a window is stored if and only if the baselines of
//     the series in it moved past it: no increment is counted twice, and the
//     first point after the restart yields current − saved baseline (reset
//     rules apply), landing in the current window. What the open windows
//     held at the crash is thereby counted again, once, late.
//   - Only baselines that changed are written: a series whose deltas went
//     into the window (or a later revision of it), a first sight, a point
//     whose delta was dropped. Baselines of series forgotten after their
//     silence (2×lateness + 10 min) are deleted with the next window.
//   - At start (Settings.LoadBaselines) saved baselines are read into a
//     table keyed by a 16-byte hash (SHA-256) of the raw series identity, and
//     taken out of it when their series is first seen again; those not seen
//     within the forget time are deleted.
//
// Delta points (OTLP delta), which a sender does not send again once
// acknowledged, are journalled until their window is stored (journal.go).
//
// OnWindowState returning an error means the window is not stored: the
// pipeline then keeps the journal for it (it releases segments only for a
// stored watermark). The daemon keeps such a window and writes it again
// later, in order, every later window waiting behind it so that saved
// baselines only move forward (cmd/sabaki/storeretry.go); when it stores
// one late it calls Pipeline.ReleaseJournal with StateChange.Watermark.

// StateRow is one saved baseline: a 16-byte key and an opaque value.
type StateRow struct {
	Key, Value []byte
}

// StateChange is what must be stored atomically with a window: baselines
// to save (a later row for the same key wins) and keys to delete.
type StateChange struct {
	Put    []StateRow
	Delete [][]byte
}

func (c *StateChange) empty() bool { return len(c.Put) == 0 && len(c.Delete) == 0 }

// Watermark returns the delta journal's watermark the change carries (a
// window's first emission with Settings.Journal does): once the change is
// stored, Pipeline.ReleaseJournal(wm) may delete the journal segments it
// covers. A callee that stores a window after OnWindowState returned an
// error for it (a retry) calls that itself; on a nil return the pipeline
// does.
func (c *StateChange) Watermark() (wm int64, ok bool) {
	// The first row, when present (newStateEncoder).
	if len(c.Put) == 0 || !bytes.Equal(c.Put[0].Key, watermarkKey[:]) {
		return 0, false
	}
	v, n := binary.Varint(c.Put[0].Value)
	return v, n > 0
}

// baseMark is a baseline as of some moment: the value saved for st.
type baseMark struct {
	st       *rawState
	start, t int64
	value    float64
	hist     *histogram.Data
}

func markOf(st *rawState) baseMark {
	return baseMark{st: st, start: st.start, t: st.lastTime, value: st.lastValue, hist: st.lastHist}
}

// restored is a baseline read at start, not yet claimed by its series.
type restored struct {
	t     int64 // point time of the baseline, UnixNano
	value []byte
}

// sidOf is the stable key of a raw series, from its encoded identity.
func sidOf(key []byte) [16]byte {
	s := sha256.Sum256(key)
	return [16]byte(s[:16])
}

// tracked records, under p.mu, that st's baseline advanced: to a point whose
// delta went into window w, or (w == nil) to a point that only set the
// baseline or whose delta was dropped. prev is the baseline before the
// point.
func (p *Pipeline) tracked(st *rawState, w *window, prev baseMark) {
	// An unchanged value (and start) need not be saved again: the saved
	// baseline's older time only lets a re-delivered point through, with a
	// zero delta.
	unchanged := prev.start == st.start && prev.t != 0 &&
		((st.lastHist == nil && prev.value == st.lastValue) ||
			(st.lastHist != nil && prev.hist != nil && prev.hist.Count == st.lastHist.Count))
	if st.bw != nil { // a hand-over of st.bw with st's baseline is pending
		if st.bw == w || w == nil {
			// Still the same window, or a dropped delta: bw's hand-over
			// takes the latest baseline.
			return
		}
		prev.st = st
		st.bw.closing = append(st.bw.closing, prev)
		st.bw = nil
		if unchanged {
			return // the closing mark saves this value
		}
	} else if unchanged && st.saved {
		return
	} else if w == nil {
		p.loose = append(p.loose, markOf(st))
		return
	}
	w.touched = append(w.touched, st)
	st.bw = w
}

// collectState takes, under p.mu, the baselines that go with w's emission
// (and, when first, the pipeline's loose marks and deletions) and encodes
// them with the journal watermark wm: it returns the StateChange and the
// number of baselines in it. The baselines are encoded here, under the
// lock, rather than copied into marks to be encoded after it: a window of
// 100k series has as many, and the marks were as large again as the rows
// (the encoding is a few milliseconds for 100k counters).
func (p *Pipeline) collectState(w *window, first bool, wm int64) (StateChange, int) {
	n := len(w.closing)
	for _, st := range w.touched {
		if st.bw == w {
			n++
		}
	}
	var del [][16]byte
	if first {
		n += len(p.loose)
		del = p.forget
	}
	enc := newStateEncoder(n, len(del), wm)
	if first {
		for i := range p.loose {
			enc.mark(&p.loose[i])
		}
		p.loose, p.forget = nil, nil
	}
	for i := range w.closing {
		enc.mark(&w.closing[i])
	}
	for _, st := range w.touched {
		if st.bw == w {
			m := markOf(st)
			enc.mark(&m)
			st.bw = nil
		}
	}
	for _, sid := range del {
		enc.del(sid)
	}
	w.closing, w.touched = nil, nil
	return enc.ch, n
}

// noWatermark: the state change carries no journal watermark.
const noWatermark int64 = math.MinInt64

// encodeState turns marks, deletions and the journal watermark (window
// index) into a StateChange.
func encodeState(marks []baseMark, del [][16]byte, wm int64) StateChange {
	enc := newStateEncoder(len(marks), len(del), wm)
	for i := range marks {
		enc.mark(&marks[i])
	}
	for _, sid := range del {
		enc.del(sid)
	}
	return enc.ch
}

// stateEncoder builds a StateChange whose rows share one buffer. Marking a
// baseline encoded also marks its series saved.
type stateEncoder struct {
	ch  StateChange
	buf []byte
}

func newStateEncoder(marks, dels int, wm int64) *stateEncoder {
	e := &stateEncoder{}
	rows := marks
	if wm != noWatermark {
		rows++
	}
	if rows > 0 {
		e.ch.Put = make([]StateRow, 0, rows)
	}
	if wm != noWatermark {
		e.ch.Put = append(e.ch.Put, StateRow{Key: watermarkKey[:], Value: binary.AppendVarint(nil, wm)})
	}
	if dels > 0 {
		e.ch.Delete = make([][]byte, 0, dels)
	}
	if marks+dels > 0 {
		// 48 bytes: a counter's key and value take 43.
		e.buf = make([]byte, 0, marks*48+dels*16)
	}
	return e
}

func (e *stateEncoder) mark(m *baseMark) {
	m.st.saved = true
	off := len(e.buf)
	e.buf = append(e.buf, m.st.sid[:]...)
	e.buf = appendBaseline(e.buf, m)
	e.ch.Put = append(e.ch.Put, StateRow{Key: e.buf[off : off+16 : off+16], Value: e.buf[off+16 : len(e.buf) : len(e.buf)]})
}

func (e *stateEncoder) del(sid [16]byte) {
	off := len(e.buf)
	e.buf = append(e.buf, sid[:]...)
	e.ch.Delete = append(e.ch.Delete, e.buf[off:len(e.buf):len(e.buf)])
}

// Baseline encoding: a kind byte (1 counter, 2 histogram), start and point
// time as varints (UnixNano, 0 unknown), then the counter value as 8 bytes,
// or the histogram: scale, zero threshold, zero count, count, sum, min, max,
// positive and negative buckets (offset, length, counts).
const (
	baseCounter = 1
	baseHist    = 2
)

func appendBaseline(b []byte, m *baseMark) []byte {
	kind := byte(baseCounter)
	if m.hist != nil {
		kind = baseHist
	}
	b = append(b, kind)
	b = binary.AppendVarint(b, m.start)
	b = binary.AppendVarint(b, m.t)
	if m.hist == nil {
		return binary.LittleEndian.AppendUint64(b, math.Float64bits(m.value))
	}
	return appendHistData(b, m.hist)
}

// appendHistData encodes histogram data: scale, zero threshold, zero count,
// count, sum, min, max, positive and negative buckets (offset, length,
// counts).
func appendHistData(b []byte, d *histogram.Data) []byte {
	b = binary.AppendVarint(b, int64(d.Scale))
	b = binary.LittleEndian.AppendUint64(b, math.Float64bits(d.ZeroThreshold))
	b = binary.AppendUvarint(b, d.ZeroCount)
	b = binary.AppendUvarint(b, d.Count)
	for _, f := range [...]float64{d.Sum, d.Min, d.Max} {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
	}
	for _, bk := range [...]histogram.Buckets{d.Positive, d.Negative} {
		b = binary.AppendVarint(b, int64(bk.Offset))
		b = binary.AppendUvarint(b, uint64(len(bk.Counts)))
		for _, c := range bk.Counts {
			b = binary.AppendUvarint(b, c)
		}
	}
	return b
}

// histData decodes what appendHistData wrote.
func (d *decoder) histData() *histogram.Data {
	var h histogram.Data
	h.Scale = int32(d.varint())
	h.ZeroThreshold = d.float()
	h.ZeroCount = d.uvarint()
	h.Count = d.uvarint()
	h.Sum, h.Min, h.Max = d.float(), d.float(), d.float()
	for _, bk := range [...]*histogram.Buckets{&h.Positive, &h.Negative} {
		bk.Offset = int32(d.varint())
		n := d.uvarint()
		if n > uint64(len(d.b)) { // each count takes at least a byte
			d.err, d.b = true, nil
			return nil
		}
		if n > 0 {
			bk.Counts = make([]uint64, n)
			for i := range bk.Counts {
				bk.Counts[i] = d.uvarint()
			}
		}
	}
	if d.err {
		return nil
	}
	return &h
}

var errBadBaseline = errors.New("malformed baseline")

type decoder struct {
	b   []byte
	err bool
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err, d.b = true, nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err, d.b = true, nil
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) float() float64 {
	if len(d.b) < 8 {
		d.err, d.b = true, nil
		return 0
	}
	v := math.Float64frombits(binary.LittleEndian.Uint64(d.b))
	d.b = d.b[8:]
	return v
}

// baselineTime returns the point time of an encoded baseline.
func baselineTime(v []byte) (int64, error) {
	if len(v) == 0 || (v[0] != baseCounter && v[0] != baseHist) {
		return 0, errBadBaseline
	}
	d := decoder{b: v[1:]}
	d.varint()
	t := d.varint()
	if d.err {
		return 0, errBadBaseline
	}
	return t, nil
}

// restoreBaseline sets st's baseline from an encoded one of the same kind.
func (st *rawState) restoreBaseline(v []byte, kind metric.Kind) error {
	if len(v) == 0 {
		return errBadBaseline
	}
	want := byte(baseCounter)
	if kind == metric.Histogram {
		want = baseHist
	}
	if v[0] != want {
		return fmt.Errorf("%w: kind %d, series is %v", errBadBaseline, v[0], kind)
	}
	d := decoder{b: v[1:]}
	start, t := d.varint(), d.varint()
	if want == baseCounter {
		val := d.float()
		if d.err {
			return errBadBaseline
		}
		st.start, st.lastTime, st.lastValue, st.hasBase = start, t, val, true
		return nil
	}
	h := d.histData()
	if d.err || len(d.b) != 0 {
		return errBadBaseline
	}
	st.start, st.lastTime, st.lastHist, st.hasBase = start, t, h, true
	return nil
}

// loadBaselines reads the saved baselines into p.restored; those silent for
// longer than the forget time are deleted with the first window.
func (p *Pipeline) loadBaselines(load func(fn func(key, value []byte) error) error, now int64) error {
	stale := int64(p.forgetAfter())
	bad := 0
	err := load(func(key, value []byte) error {
		if len(key) != 16 {
			bad++
			return nil
		}
		sid := [16]byte(key)
		if sid == watermarkKey {
			wm, n := binary.Varint(value)
			if n <= 0 {
				bad++
				return nil
			}
			p.jwm = wm
			return nil
		}
		t, err := baselineTime(value)
		if err != nil || now-t > stale {
			if err != nil {
				bad++
			}
			p.forget = append(p.forget, sid)
			return nil
		}
		p.restored[sid] = restored{t: t, value: append([]byte(nil), value...)}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pipeline: loading baselines: %w", err)
	}
	if bad > 0 {
		p.log.Warn("ignored malformed saved baselines; their series start from a new baseline", "count", bad)
	}
	if len(p.restored)+len(p.forget) > 0 {
		p.log.Info("loaded saved baselines of cumulative series", "baselines", len(p.restored), "expired", len(p.forget))
	}
	return nil
}

// claim gives a new raw series its saved baseline, if any (under p.mu).
func (p *Pipeline) claim(st *rawState, kind metric.Kind) {
	r, ok := p.restored[st.sid]
	if !ok {
		return
	}
	delete(p.restored, st.sid)
	st.saved = true // its row exists
	p.m.baselinesRestored.Inc()
	if err := st.restoreBaseline(r.value, kind); err != nil {
		st.start, st.lastTime, st.lastValue, st.lastHist, st.hasBase = 0, 0, 0, nil, false
		p.log.Warn("ignored a saved baseline", "err", err)
	}
}

// trackedAgg is tracked for a point whose delta went into a (nil: none).
func (p *Pipeline) trackedAgg(st *rawState, a *agg, prev baseMark) {
	var w *window
	if a != nil {
		w = st.win // aggFor set it to a's window
	}
	p.tracked(st, w, prev)
}
