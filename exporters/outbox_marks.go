package exporters

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"time"

	"github.com/golang/snappy"

	"github.com/sabakiio/sabaki/metric"
)

// Accepted windows
//
// The daemon stores each closed window and then enqueues it to every outbox;
// a kill -9 between the two leaves a window the store committed and an outbox
// never saw. To find it at the next start, an outbox remembers which windows
// it accepted: a (start, duration) → highest revision table, kept durable
// without an extra write per window:
//
//   - a window's record in its segment file says it was accepted for as
//     long as the segment exists (open scans every record, sent or not);
//   - the marks file holds the windows of segments already deleted: it is
//     rewritten (temporary file, fsync, rename) before a segment is deleted,
//     keeping the windows that started within max_age + 1 h.
//
// Enqueue drops a window whose start and duration it accepted with the same
// or a higher revision, so a window handed over twice (replayed after the
// crash and then re-emitted, or enqueued and then replayed because the kill
// came before anything recorded it) is queued once.
//
// A new outbox directory, or one written by a sabaki that kept no marks, is
// Fresh: it does not know what it accepted before. The daemon marks what the
// store already holds as accepted (MarkAccepted) rather than re-sending it;
// from then on the outbox keeps its marks.

// WindowKey identifies one emission of a window.
type WindowKey struct {
	Start    time.Time
	Duration time.Duration
	Revision int
}

type markKey struct {
	start int64 // Unix nanoseconds
	dur   int64 // nanoseconds
}

const (
	marksFile    = "marks"
	marksVersion = 1
	// marksSlack keeps marks this long past max_age: Enqueue drops windows
	// older than max_age anyway, so older marks can never matter.
	marksSlack = time.Hour
)

// Fresh reports whether the outbox was opened without a record of the windows
// it accepted before (a new directory, or one an older sabaki wrote); it
// stays so until MarkAccepted.
func (o *Outbox) Fresh() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return !o.tracking
}

// Accepted reports whether the outbox accepted a window of k's start and
// duration with revision k.Revision or higher: it holds it, sent it, or
// dropped it since.
func (o *Outbox) Accepted(k WindowKey) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.acceptedLocked(keyOf(k.Start, k.Duration), k.Revision)
}

func keyOf(start time.Time, d time.Duration) markKey {
	return markKey{start: unixNanos(start), dur: int64(d)}
}

func (o *Outbox) acceptedLocked(k markKey, rev int) bool {
	r, ok := o.marks[k]
	return ok && r >= rev
}

func (o *Outbox) markLocked(k markKey, rev int) {
	if r, ok := o.marks[k]; !ok || rev > r {
		o.marks[k] = rev
		o.marksDirty = true
	}
}

// MarkAccepted records keys as accepted without queueing them, and makes the
// outbox keep its marks from now on (Fresh returns false). It syncs them to
// disk before returning.
func (o *Outbox) MarkAccepted(keys []WindowKey) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return fmt.Errorf("outbox of %s: closed", o.name)
	}
	for _, k := range keys {
		o.markLocked(keyOf(k.Start, k.Duration), k.Revision)
	}
	o.tracking, o.marksDirty = true, true
	if err := o.writeMarksLocked(); err != nil {
		return fmt.Errorf("outbox of %s: writing marks: %w", o.name, err)
	}
	return nil
}

// readMarks loads the marks file; a missing file leaves the outbox Fresh. A
// corrupt one is reported (the daemon then treats the outbox as Fresh:
// nothing is re-sent twice, a window lost in a crash may stay lost).
func (o *Outbox) readMarks() error {
	o.marks = map[markKey]int{}
	b, err := os.ReadFile(filepath.Join(o.dir, marksFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(b) < 5 || b[0] != marksVersion || crc32.Checksum(b[:len(b)-4], castagnoli) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return errors.New("marks file corrupt")
	}
	d := b[1 : len(b)-4]
	n, k := binary.Uvarint(d)
	if k <= 0 || n > uint64(len(d)) {
		return errors.New("marks file corrupt")
	}
	d = d[k:]
	for range n {
		start, k1 := binary.Varint(d)
		if k1 <= 0 {
			return errors.New("marks file corrupt")
		}
		dur, k2 := binary.Varint(d[k1:])
		if k2 <= 0 {
			return errors.New("marks file corrupt")
		}
		rev, k3 := binary.Uvarint(d[k1+k2:])
		if k3 <= 0 {
			return errors.New("marks file corrupt")
		}
		d = d[k1+k2+k3:]
		o.marks[markKey{start: start, dur: dur}] = int(rev)
	}
	o.tracking = true
	return nil
}

// writeMarksLocked prunes the marks past max_age + marksSlack and replaces
// the marks file (temporary file, fsync, rename).
func (o *Outbox) writeMarksLocked() error {
	if !o.tracking || !o.marksDirty {
		return nil
	}
	horizon := unixNanos(o.now().Add(-o.cfg.MaxAge.D() - marksSlack))
	b := []byte{marksVersion}
	for k := range o.marks {
		if k.start < horizon {
			delete(o.marks, k)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(o.marks)))
	for k, rev := range o.marks {
		b = binary.AppendVarint(b, k.start)
		b = binary.AppendVarint(b, k.dur)
		b = binary.AppendUvarint(b, uint64(max(rev, 0)))
	}
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	tmp := filepath.Join(o.dir, marksFile+".tmp")
	err := writeFileSync(tmp, b)
	if err == nil {
		err = os.Rename(tmp, filepath.Join(o.dir, marksFile))
	}
	if err != nil {
		return err
	}
	o.marksDirty = false
	return nil
}

// payloadKey returns the start, duration and revision of an encoded window
// without decompressing all of it: the revision and duration open the
// snappy body, which starts with a literal; otherwise the body is decoded.
func payloadKey(p []byte) (markKey, int, error) {
	start, err := payloadStart(p)
	if err != nil {
		return markKey{}, 0, err
	}
	body := p[payloadHeaderSize:]
	prefix, ok := snappyLiteralPrefix(body)
	if !ok {
		if prefix, err = snappy.Decode(nil, body); err != nil {
			return markKey{}, 0, fmt.Errorf("decompressing window: %w", err)
		}
	}
	rev, n := binary.Uvarint(prefix)
	if n <= 0 {
		return markKey{}, 0, errors.New("corrupt window header")
	}
	dur, m := binary.Varint(prefix[n:])
	if m <= 0 {
		if ok { // the literal was too short: decode it all
			full, err := snappy.Decode(nil, body)
			if err != nil {
				return markKey{}, 0, fmt.Errorf("decompressing window: %w", err)
			}
			rev, n = binary.Uvarint(full)
			if n > 0 {
				dur, m = binary.Varint(full[n:])
			}
		}
		if n <= 0 || m <= 0 {
			return markKey{}, 0, errors.New("corrupt window header")
		}
	}
	return markKey{start: unixNanos(start), dur: dur}, int(rev), nil
}

// snappyLiteralPrefix returns the literal a snappy block starts with.
func snappyLiteralPrefix(b []byte) ([]byte, bool) {
	_, n := binary.Uvarint(b) // decoded length
	if n <= 0 || n >= len(b) {
		return nil, false
	}
	b = b[n:]
	tag := b[0]
	if tag&3 != 0 {
		return nil, false
	}
	l := int(tag >> 2)
	b = b[1:]
	if l >= 60 {
		w := l - 59
		if len(b) < w {
			return nil, false
		}
		l = 0
		for i := w - 1; i >= 0; i-- {
			l = l<<8 | int(b[i])
		}
		b = b[w:]
	}
	l++
	if l > len(b) {
		return nil, false
	}
	return b[:l], true
}

// logDuplicate notes a window Enqueue dropped because it had accepted it.
func (o *Outbox) logDuplicate(w *metric.Window) {
	o.log.Info("window already accepted by the outbox; not queued again", "window", fmtTime(w.Start), "revision", w.Revision)
}
