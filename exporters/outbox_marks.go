package exporters

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"time"

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
	if o.marks, err = parseMarks(b); err != nil {
		return err
	}
	o.tracking = true
	return nil
}

// parseMarks decodes a marks file: version u8, count uvarint, then per
// window start (Unix ns) varint, duration (ns) varint, revision uvarint, and
// a CRC-32C of all that, u32 LE.
func parseMarks(b []byte) (map[markKey]int, error) {
	bad := errors.New("marks file corrupt")
	if len(b) < 5 || b[0] != marksVersion || crc32.Checksum(b[:len(b)-4], castagnoli) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, bad
	}
	d := b[1 : len(b)-4]
	n, k := binary.Uvarint(d)
	if k <= 0 || n > uint64(len(d)) { // each window takes 3 bytes or more
		return nil, bad
	}
	d = d[k:]
	marks := make(map[markKey]int, n)
	for range n {
		start, k1 := binary.Varint(d)
		if k1 <= 0 {
			return nil, bad
		}
		dur, k2 := binary.Varint(d[k1:])
		if k2 <= 0 {
			return nil, bad
		}
		rev, k3 := binary.Uvarint(d[k1+k2:])
		if k3 <= 0 || rev > math.MaxInt32 {
			return nil, bad
		}
		d = d[k1+k2+k3:]
		marks[markKey{start: start, dur: dur}] = int(rev)
	}
	if len(d) != 0 {
		return nil, bad
	}
	return marks, nil
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
// snappy body, so only its first bytes are decoded.
func payloadKey(p []byte) (markKey, int, error) {
	start, err := payloadStart(p)
	if err != nil {
		return markKey{}, 0, err
	}
	prefix := snappyPrefix(p[payloadHeaderSize:], 2*binary.MaxVarintLen64)
	rev, n := binary.Uvarint(prefix)
	if n <= 0 {
		return markKey{}, 0, errors.New("corrupt window header")
	}
	dur, m := binary.Varint(prefix[n:])
	if m <= 0 {
		return markKey{}, 0, errors.New("corrupt window header")
	}
	return markKey{start: unixNanos(start), dur: dur}, int(rev), nil
}

// snappyPrefix decodes the first n bytes (fewer if the block is shorter or
// corrupt) of a snappy block: literals and back-references until n bytes
// are out, whatever the block's size.
func snappyPrefix(b []byte, n int) []byte {
	total, k := binary.Uvarint(b)
	if k <= 0 {
		return nil
	}
	b = b[k:]
	out := make([]byte, 0, n)
	for len(out) < n && uint64(len(out)) < total && len(b) > 0 {
		tag := b[0]
		b = b[1:]
		var length, offset int
		switch tag & 3 {
		case 0: // literal
			length = int(tag>>2) + 1
			if length > 60 {
				w := length - 60
				if len(b) < w {
					return out
				}
				length = 0
				for i := w - 1; i >= 0; i-- {
					length = length<<8 | int(b[i])
				}
				length++
				b = b[w:]
			}
			if length > len(b) || length <= 0 {
				return out
			}
			out = append(out, b[:min(length, n-len(out))]...)
			b = b[length:]
			continue
		case 1:
			if len(b) < 1 {
				return out
			}
			length, offset = 4+int(tag>>2)&7, int(tag&0xe0)<<3|int(b[0])
			b = b[1:]
		case 2:
			if len(b) < 2 {
				return out
			}
			length, offset = 1+int(tag>>2), int(binary.LittleEndian.Uint16(b))
			b = b[2:]
		case 3:
			if len(b) < 4 {
				return out
			}
			length, offset = 1+int(tag>>2), int(binary.LittleEndian.Uint32(b))
			b = b[4:]
		}
		if offset <= 0 || offset > len(out) {
			return out
		}
		for i := 0; i < length && len(out) < n; i++ { // may overlap itself
			out = append(out, out[len(out)-offset])
		}
	}
	return out
}

// logDuplicate notes a window Enqueue dropped because it had accepted it.
func (o *Outbox) logDuplicate(w *metric.Window) {
	o.log.Info("window already accepted by the outbox; not queued again", "window", fmtTime(w.Start), "revision", w.Revision)
}
