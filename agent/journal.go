package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// Journal
//
// A delta point (OTLP delta sums and histograms) acknowledged to its sender
// is not sent again; while its window is open it lives only in memory. With
// Settings.Journal, Consume first appends the batch's delta series to a
// journal segment with write(2) (no fsync: the page cache survives kill -9,
// not a power loss), then aggregates them.
//
//   - A segment is started at each tick that first-emits a window, and
//     deleted once every point in it belongs to a stored window: the
//     journal's watermark, the last first-emitted window, is saved with that
//     window's baselines (durable.go), in the same transaction.
//   - At start the segments are replayed in order: points of windows after
//     the watermark are consumed again (not journalled again: the old
//     segments stay, and are deleted like the others once their windows are
//     stored, so a crash during or after the replay replays them once
//     more, never twice). A torn record at a segment's end (the crash hit a
//     write) ends its replay.
//   - Not replayed: exemplars, and late points for windows already stored
//     when the crash came (their revision may be lost).
//
// Record: uint32 payload length, uint32 CRC-32C of the payload, payload:
// source, then per series name, unit, description, kind, temporality,
// resource and point attributes, points (start, time, value or histogram
// data).

// watermarkKey is the reserved baselines key of the journal watermark (a
// series key is a SHA-256 prefix).
var watermarkKey = [16]byte{0xff, 'j', 'o', 'u', 'r', 'n', 'a', 'l', '-', 'w', 'm', 0xff, 0xff, 0xff, 0xff, 0xff}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type journal struct {
	dir    string
	log    *slog.Logger
	errors prometheus.Counter

	mu     sync.Mutex
	f      *os.File
	seq    uint64
	maxIdx int64 // latest window in the current segment
	closed []segment
	failed bool // the last write failed (logged once)
}

type segment struct {
	seq    uint64
	maxIdx int64
}

func segName(seq uint64) string { return fmt.Sprintf("seg-%016x", seq) }

// openJournal creates dir (0700) and lists the existing segments, in order.
func openJournal(dir string, log *slog.Logger, errs prometheus.Counter) (*journal, []string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("creating journal directory: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("reading journal directory: %w", err)
	}
	j := &journal{dir: dir, log: log, errors: errs, maxIdx: math.MinInt64}
	var old []string
	for _, e := range ents {
		name := e.Name()
		hex, ok := strings.CutPrefix(name, "seg-")
		if !ok {
			continue
		}
		seq, err := strconv.ParseUint(hex, 16, 64)
		if err != nil {
			continue
		}
		old = append(old, name)
		j.seq = max(j.seq, seq)
	}
	slices.Sort(old) // fixed-width hex: name order is sequence order
	// New records go to a new segment, after the old ones.
	if err := j.rotate(); err != nil {
		return nil, nil, err
	}
	return j, old, nil
}

// rotate starts a new segment (under j.mu, or before any use).
func (j *journal) rotate() error {
	if j.f != nil {
		if j.maxIdx == math.MinInt64 { // empty: keep writing to it
			return nil
		}
		j.f.Close()
		j.closed = append(j.closed, segment{seq: j.seq, maxIdx: j.maxIdx})
	}
	j.seq++
	f, err := os.OpenFile(filepath.Join(j.dir, segName(j.seq)), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		j.f = nil
		return fmt.Errorf("creating journal segment: %w", err)
	}
	j.f, j.maxIdx = f, math.MinInt64
	return nil
}

// write appends one record holding payload (which starts with 8 bytes of
// room for the header), whose points reach window maxIdx.
func (j *journal) write(rec []byte, maxIdx int64) error {
	binary.LittleEndian.PutUint32(rec, uint32(len(rec)-8))
	binary.LittleEndian.PutUint32(rec[4:], crc32.Checksum(rec[8:], castagnoli))
	j.mu.Lock()
	defer j.mu.Unlock()
	var err error
	if j.f == nil {
		err = j.rotate()
	}
	if err == nil {
		_, err = j.f.Write(rec)
	}
	if err != nil {
		j.errors.Inc()
		if j.f != nil {
			// The failed write may have left part of the record: end the
			// segment here (replay stops at a torn last record) and start
			// the next write in a new one, or the records after it would
			// never be replayed.
			j.f.Close()
			j.f = nil
			if j.maxIdx != math.MinInt64 {
				j.closed = append(j.closed, segment{seq: j.seq, maxIdx: j.maxIdx})
			} else {
				os.Remove(filepath.Join(j.dir, segName(j.seq)))
			}
		}
		if !j.failed {
			j.log.Error("writing the delta journal failed; batches with delta points are refused (senders retry them) until it works again", "err", err)
		}
		j.failed = true
		return err
	}
	j.failed = false
	j.maxIdx = max(j.maxIdx, maxIdx)
	return nil
}

// release deletes the closed segments whose points all belong to windows up
// to stored.
func (j *journal) release(stored int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	keep := j.closed[:0]
	for _, s := range j.closed {
		if s.maxIdx <= stored {
			if err := os.Remove(filepath.Join(j.dir, segName(s.seq))); err != nil && !errors.Is(err, fs.ErrNotExist) {
				j.log.Warn("deleting a journal segment", "err", err)
			}
			continue
		}
		keep = append(keep, s)
	}
	j.closed = keep
}

// ReleaseJournal deletes the delta journal's segments whose points all
// belong to windows up to wm, a StateChange.Watermark the caller has
// stored after OnWindowState returned an error for its window (see
// durable.go). Without Settings.Journal it does nothing. Safe to call
// concurrently with Consume and emission.
func (p *Pipeline) ReleaseJournal(wm int64) {
	if p.jr != nil {
		p.jr.release(wm)
	}
}

func (j *journal) close() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f != nil {
		j.f.Close()
		j.f = nil
	}
}

// journalled reports whether a series goes to the journal: delta counters
// and histograms (gauges resume with the next sample; cumulative series
// with their saved baseline).
func journalled(s *metric.Series) bool {
	return s.Temporality == metric.Delta && (s.Kind == metric.Counter || s.Kind == metric.Histogram) && s.Name != "" && len(s.Points) > 0
}

// pointIdx is the window a point lands in (as consumeSeries places it).
func (p *Pipeline) pointIdx(s *metric.Series, pt *metric.Point, now time.Time) int64 {
	t := pt.Time
	if t.IsZero() {
		t = now
	}
	if s.Kind != metric.Gauge && !pt.Start.IsZero() && pt.Start.Before(t) {
		t = t.Add(-1)
	}
	return p.windowIdx(t)
}

// recBufs holds journal record buffers: a request's record is encoded
// outside the journal's lock, into a buffer reused across requests.
var recBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// journalBatch appends b's delta series to the journal. An error means
// they are not journalled (the disk is full, say): Consume then refuses the
// batch, so the sender keeps it and retries, rather than acknowledging
// points a crash would lose.
func (p *Pipeline) journalBatch(b *metric.Batch, now time.Time) error {
	var bufp *[]byte
	var rec []byte
	maxIdx := int64(math.MinInt64)
	for i := range b.Series {
		s := &b.Series[i]
		if !journalled(s) {
			continue
		}
		if bufp == nil {
			bufp = recBufs.Get().(*[]byte)
			rec = append((*bufp)[:0], make([]byte, 8)...)
			rec = appendString(rec, b.Source)
		}
		rec = appendSeries(rec, s, now)
		for j := range s.Points {
			maxIdx = max(maxIdx, p.pointIdx(s, &s.Points[j], now))
		}
	}
	if bufp == nil {
		return nil
	}
	err := p.jr.write(rec, maxIdx)
	*bufp = rec[:0]
	recBufs.Put(bufp)
	return err
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendAttrList(b []byte, a metric.Attrs) []byte {
	b = binary.AppendUvarint(b, uint64(len(a)))
	for _, kv := range a {
		b = appendString(b, kv.Key)
		b = appendString(b, kv.Value)
	}
	return b
}

// appendSeries encodes one series (a leading 1 marks it; 0 ends the
// record); points without a time get now.
func appendSeries(b []byte, s *metric.Series, now time.Time) []byte {
	b = append(b, 1)
	b = appendString(b, s.Name)
	b = appendString(b, s.Unit)
	b = appendString(b, s.Description)
	b = append(b, byte(s.Kind), byte(s.Temporality))
	b = appendAttrList(b, s.Resource)
	b = appendAttrList(b, s.Attrs)
	b = binary.AppendUvarint(b, uint64(len(s.Points)))
	for i := range s.Points {
		pt := &s.Points[i]
		t := pt.Time
		if t.IsZero() {
			t = now
		}
		b = binary.AppendVarint(b, nanos(pt.Start))
		b = binary.AppendVarint(b, t.UnixNano())
		if s.Kind == metric.Histogram {
			if pt.Hist == nil {
				b = append(b, 0)
				continue
			}
			d := pt.Hist.Data()
			b = append(b, 1)
			b = appendHistData(b, &d)
			continue
		}
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(pt.Value))
	}
	return b
}

func (d *decoder) str() string {
	n := d.uvarint()
	if d.err || n > uint64(len(d.b)) {
		d.err, d.b = true, nil
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) attrList() metric.Attrs {
	n := d.uvarint()
	if d.err || n > uint64(len(d.b))/2 {
		d.err, d.b = true, nil
		return nil
	}
	var a metric.Attrs
	for range n {
		k := d.str()
		a = append(a, metric.Attr{Key: k, Value: d.str()})
	}
	return a
}

func unixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

// decodeRecord decodes a record's payload into a batch.
func decodeRecord(payload []byte, maxSize int, maxScale int32) (metric.Batch, error) {
	d := decoder{b: payload}
	b := metric.Batch{Source: d.str()}
	for len(d.b) > 0 && !d.err {
		if d.b[0] != 1 {
			return b, errors.New("bad series marker")
		}
		d.b = d.b[1:]
		s := metric.Series{Name: d.str(), Unit: d.str(), Description: d.str()}
		if len(d.b) < 2 {
			return b, errors.New("truncated series")
		}
		s.Kind, s.Temporality = metric.Kind(d.b[0]), metric.Temporality(d.b[1])
		d.b = d.b[2:]
		s.Resource, s.Attrs = d.attrList(), d.attrList()
		n := d.uvarint()
		if d.err || n > uint64(len(d.b)) {
			return b, errors.New("truncated points")
		}
		s.Points = make([]metric.Point, n)
		for i := range s.Points {
			pt := &s.Points[i]
			pt.Start, pt.Time = unixNano(d.varint()), unixNano(d.varint())
			if s.Kind == metric.Histogram {
				if len(d.b) == 0 {
					return b, errors.New("truncated point")
				}
				has := d.b[0]
				d.b = d.b[1:]
				if has == 1 {
					hd := d.histData()
					if d.err {
						break
					}
					h, err := histogram.FromData(*hd, maxSize, maxScale)
					if err != nil {
						return b, fmt.Errorf("histogram: %w", err)
					}
					pt.Hist = h
				}
				continue
			}
			pt.Value = d.float()
		}
		b.Series = append(b.Series, s)
	}
	if d.err {
		return b, errors.New("truncated record")
	}
	return b, nil
}

// replayJournal consumes again the journalled points of windows after the
// watermark; the old segments are released with the windows they hold.
// Called by NewPipeline.
func (p *Pipeline) replayJournal(old []string) {
	now := p.now()
	points, skipped := 0, 0
	for _, name := range old {
		seq, _ := strconv.ParseUint(strings.TrimPrefix(name, "seg-"), 16, 64)
		maxIdx := int64(math.MinInt64)
		path := filepath.Join(p.jr.dir, name)
		data, err := os.ReadFile(path)
		if err != nil {
			p.log.Warn("reading a journal segment", "segment", name, "err", err)
			continue
		}
		for len(data) > 0 {
			if len(data) < 8 {
				p.log.Warn("journal segment ends with a torn record (the crash hit a write)", "segment", name)
				break
			}
			n := binary.LittleEndian.Uint32(data)
			if uint64(n) > uint64(len(data)-8) || crc32.Checksum(data[8:8+n], castagnoli) != binary.LittleEndian.Uint32(data[4:]) {
				p.log.Warn("journal segment ends with a torn or corrupt record; the rest of it is skipped", "segment", name)
				break
			}
			b, err := decodeRecord(data[8:8+n], p.maxSize, p.maxScale)
			data = data[8+n:]
			if err != nil {
				p.log.Warn("skipping an undecodable journal record", "segment", name, "err", err)
				continue
			}
			for i := range b.Series {
				s := &b.Series[i]
				s.Points = slices.DeleteFunc(s.Points, func(pt metric.Point) bool {
					idx := p.pointIdx(s, &pt, now)
					if idx <= p.jwm {
						skipped++
						return true
					}
					maxIdx = max(maxIdx, idx)
					points++
					return false
				})
			}
			b.Series = slices.DeleteFunc(b.Series, func(s metric.Series) bool { return len(s.Points) == 0 })
			if len(b.Series) > 0 {
				p.consume(b, now)
			}
		}
		p.jr.mu.Lock()
		p.jr.closed = append(p.jr.closed, segment{seq: seq, maxIdx: maxIdx})
		p.jr.mu.Unlock()
	}
	p.jr.release(p.jwm) // those with nothing left to replay
	p.m.journalReplayed.Add(float64(points))
	if points+skipped > 0 {
		p.log.Info("replayed the delta journal", "points", points, "already_stored", skipped)
	}
}
