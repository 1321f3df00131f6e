package exporters

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

// OutboxConfig bounds and paces one exporter's durable queue. Every exporter
// config embeds it as `outbox:`.
type OutboxConfig struct {
	// MaxBytes bounds the unsent records on disk; when a new window does not
	// fit, the oldest unsent windows are dropped (and counted) first.
	MaxBytes config.Bytes `yaml:"max_bytes"`
	// MaxAge drops windows that start more than MaxAge ago instead of
	// sending them. The default, 24h, is what Mackerel still stores: it
	// answers 200 for older points but silently discards them, so sending
	// them would only pretend they were stored.
	MaxAge config.Duration `yaml:"max_age"`
	// InitialBackoff and MaxBackoff bound the jittered exponential wait
	// between attempts after a retryable failure. A server's Retry-After
	// replaces the computed wait.
	InitialBackoff config.Duration `yaml:"initial_backoff"`
	MaxBackoff     config.Duration `yaml:"max_backoff"`
	// SendTimeout bounds one Export call.
	SendTimeout config.Duration `yaml:"send_timeout"`
	// SegmentBytes is the size at which the outbox starts a new segment
	// file; fully sent segments are deleted.
	SegmentBytes config.Bytes `yaml:"segment_bytes"`
}

// DefaultOutboxConfig returns the defaults: 24 h of windows, up to 2.5 GiB on
// disk (a one-minute window of 10,000 latency series takes about 1.4 MB
// encoded, so 24 h of them take about 1.9 GiB; TestMackerelFigures measures
// it), backoff from 1 s to 5 min.
func DefaultOutboxConfig() OutboxConfig {
	return OutboxConfig{
		MaxBytes:       2560 << 20,
		MaxAge:         config.Duration(24 * time.Hour),
		InitialBackoff: config.Duration(time.Second),
		MaxBackoff:     config.Duration(5 * time.Minute),
		SendTimeout:    config.Duration(time.Minute),
		SegmentBytes:   16 << 20,
	}
}

// Validate checks the bounds.
func (c *OutboxConfig) Validate() error {
	var errs []error
	if c.MaxBytes < 1<<20 {
		errs = append(errs, config.Field("max_bytes", "must be at least 1MiB"))
	}
	if c.MaxAge <= 0 {
		errs = append(errs, config.Field("max_age", "must be positive"))
	}
	if c.InitialBackoff <= 0 {
		errs = append(errs, config.Field("initial_backoff", "must be positive"))
	}
	if c.MaxBackoff < c.InitialBackoff {
		errs = append(errs, config.Field("max_backoff", "must be at least initial_backoff (%s)", c.InitialBackoff))
	}
	if c.SendTimeout <= 0 {
		errs = append(errs, config.Field("send_timeout", "must be positive"))
	}
	if c.SegmentBytes < 64<<10 {
		errs = append(errs, config.Field("segment_bytes", "must be at least 64KiB"))
	}
	return errors.Join(errs...)
}

// Drop reasons, the values of the reason label of
// sabaki_exporter_dropped_windows_total.
const (
	DropBytes     = "bytes"     // evicted to stay within max_bytes
	DropAge       = "age"       // older than max_age
	DropPermanent = "permanent" // the destination rejected it (4xx)
	DropCorrupt   = "corrupt"   // a record on disk failed its checksum
)

// Outbox is an exporter's durable queue. Windows are appended to segment
// files and fsync'd by Enqueue; Run sends them in order through the exporter,
// retrying with backoff, and records a committed read offset after every
// window that was sent or dropped.
//
// On disk, under DataDir/outbox/<exporter name>/ (directory 0700, files 0600):
//
//	<20-digit sequence>.seg  append-only records; the name is the sequence
//	                         number of the file's first record
//	cursor                   sequence number of the first unsent record
//	                         (u64 LE + CRC-32C), replaced atomically
//	marks                    windows accepted whose segments were deleted
//	                         (outbox_marks.go), replaced atomically
//
// A record is `length u32 LE | CRC-32C(payload) u32 LE | payload`, the payload
// being one encoded window (see outbox_codec.go). Reopening scans the
// segments; a torn or corrupt record (kill -9 during a write, a bad sector)
// fails its CRC and the segment is truncated there.
//
// Delivery is at least once: the cursor is written after the destination
// accepted a window, so a crash between the two re-sends that one window.
// That is harmless for Mackerel, which keeps the last value posted for a
// metric and minute (the re-send writes the same values again), and for the
// store-like destinations that replace a window by its start time.
//
// One Outbox owns its directory; do not open two on the same directory.
type Outbox struct {
	cfg  OutboxConfig
	exp  Exporter
	name string
	dir  string
	log  *slog.Logger

	// Injected for tests.
	now    func() time.Time
	sleep  func(ctx context.Context, d time.Duration) error
	jitter func() float64 // uniform in [0, 1)

	mu        sync.Mutex
	segs      []*segment // by base sequence
	active    *os.File   // append handle on the last segment, nil until needed
	q         []record   // unsent records, oldest first
	qBytes    int64
	nextSeq   uint64
	inflight  uint64 // sequence number being sent; valid when sending
	sending   bool
	running   bool
	runCancel context.CancelFunc
	runDone   chan struct{}
	draining  bool
	closed    bool
	notify    chan struct{} // cap 1: a record was appended or draining began

	// marks: the highest revision accepted per window start and duration,
	// for Enqueue to drop a window handed over twice and the daemon to find
	// the windows a crash kept from the outbox (outbox_marks.go).
	marks      map[markKey]int
	marksDirty bool // marks holds windows the marks file lacks
	tracking   bool // the marks file exists: the outbox is not Fresh

	// held is the window Enqueue wrote as record heldSeq, kept in memory
	// while that record is next in line (the head, or right behind the
	// one being sent), so that Run sends it without reading it back and
	// decoding it: at 100k series a decode allocated 35 MB at every
	// window close, beside the window itself. At most one window is
	// held; a record further back, or retried after a failed send, is
	// read from disk (take).
	held    *metric.Window
	heldSeq uint64

	lastRecord atomic.Int64 // size of the last record written, to size the next

	m outboxMetrics
}

type segment struct {
	base  uint64
	path  string
	size  int64
	count uint64 // records in the file
}

type record struct {
	seq   uint64
	seg   *segment
	off   int64 // of the frame header
	size  int64 // of the frame, header included
	start time.Time
}

const (
	frameHeader   = 8
	maxRecordSize = 1 << 30
	cursorFile    = "cursor"
	segSuffix     = ".seg"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrWrite marks an Enqueue that failed writing the window to disk (a full
// disk, an I/O error): the window was not accepted, and offering it again
// once the disk has room is right. Other Enqueue errors (closed, larger
// than max_bytes) are final.
var ErrWrite = errors.New("outbox write failed")

// NewOutbox opens (or creates) the outbox of exp under
// set.DataDir/outbox/<exp.Name()>, recovering what a previous run left: the
// unsent windows are sent first by Run. It registers its self-metrics on
// set.Registerer.
func NewOutbox(cfg OutboxConfig, exp Exporter, set Settings) (*Outbox, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("outbox of %s: %w", exp.Name(), err)
	}
	if set.DataDir == "" {
		return nil, fmt.Errorf("outbox of %s: no data directory", exp.Name())
	}
	log := set.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := &Outbox{
		cfg:    cfg,
		exp:    exp,
		name:   exp.Name(),
		dir:    filepath.Join(set.DataDir, "outbox", exp.Name()),
		log:    log, // the agent scopes it with the exporter's name
		now:    time.Now,
		sleep:  sleepCtx,
		jitter: rand.Float64,
		notify: make(chan struct{}, 1),
	}
	if err := o.open(); err != nil {
		return nil, err
	}
	if err := o.m.register(set.Registerer, o); err != nil {
		o.closeFiles()
		return nil, fmt.Errorf("outbox of %s: registering self-metrics: %w", o.name, err)
	}
	return o, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// open creates the directory or recovers the queue from it.
func (o *Outbox) open() error {
	if err := os.MkdirAll(o.dir, 0o700); err != nil {
		return fmt.Errorf("creating outbox directory: %w", err)
	}
	if err := os.Chmod(o.dir, 0o700); err != nil {
		return fmt.Errorf("securing outbox directory: %w", err)
	}
	if err := o.readMarks(); err != nil {
		o.log.Warn("outbox marks unreadable; windows a crash kept from this outbox are not re-sent from the store", "err", err)
		o.marks, o.tracking = map[markKey]int{}, false
	}
	cursor, err := o.readCursor()
	if err != nil {
		// Starting from the oldest segment re-sends windows that were already
		// delivered; that is harmless (see the type's doc), losing them is not.
		o.log.Warn("outbox cursor unreadable, re-sending from the oldest record", "err", err)
		cursor = 0
	}
	entries, err := os.ReadDir(o.dir)
	if err != nil {
		return fmt.Errorf("reading outbox directory: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, segSuffix) {
			continue
		}
		base, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 10, 64)
		if err != nil {
			continue
		}
		o.segs = append(o.segs, &segment{base: base, path: filepath.Join(o.dir, name)})
	}
	slices.SortFunc(o.segs, func(a, b *segment) int {
		switch {
		case a.base < b.base:
			return -1
		case a.base > b.base:
			return 1
		}
		return 0
	})
	for _, s := range o.segs {
		if err := o.scan(s, cursor); err != nil {
			return err
		}
		o.nextSeq = max(o.nextSeq, s.base+s.count)
	}
	// The cursor may point past every record left on disk (all sent, the
	// segments deleted): never reuse sequence numbers below it.
	o.nextSeq = max(o.nextSeq, cursor)
	o.gcSegments()
	if len(o.q) > 0 {
		o.log.Info("outbox recovered unsent windows", "windows", len(o.q), "bytes", o.qBytes,
			"oldest", o.q[0].start.UTC().Format(time.RFC3339))
	}
	return nil
}

// scan indexes the records of s at or after cursor. A record that fails its
// frame or checksum ends the segment: the file is truncated there.
func (o *Outbox) scan(s *segment, cursor uint64) error {
	data, err := os.ReadFile(s.path)
	if err != nil {
		return fmt.Errorf("reading outbox segment %s: %w", filepath.Base(s.path), err)
	}
	var off int64
	for int64(len(data))-off > 0 {
		rest := data[off:]
		bad := ""
		var n int64
		switch {
		case len(rest) < frameHeader:
			bad = "short frame header"
		default:
			n = int64(binary.LittleEndian.Uint32(rest))
			sum := binary.LittleEndian.Uint32(rest[4:])
			switch {
			case n > maxRecordSize || n > int64(len(rest)-frameHeader):
				bad = "record extends past end of file"
			case crc32.Checksum(rest[frameHeader:frameHeader+n], castagnoli) != sum:
				bad = "checksum mismatch"
			}
		}
		if bad != "" {
			o.log.Warn("outbox segment has a torn or corrupt record; truncating it",
				"segment", filepath.Base(s.path), "offset", off, "dropped_bytes", int64(len(data))-off, "problem", bad)
			if err := os.Truncate(s.path, off); err != nil {
				return fmt.Errorf("truncating outbox segment %s: %w", filepath.Base(s.path), err)
			}
			break
		}
		// Every record on disk, sent or not, is a window the outbox accepted.
		if k, rev, err := payloadKey(rest[frameHeader : frameHeader+n]); err == nil {
			o.markLocked(k, rev)
		}
		seq := s.base + s.count
		if seq >= cursor {
			start, err := payloadStart(rest[frameHeader : frameHeader+n])
			if err != nil {
				start = time.Time{} // undecodable: Run drops it as corrupt
			}
			o.q = append(o.q, record{seq: seq, seg: s, off: off, size: frameHeader + n, start: start})
			o.qBytes += frameHeader + n
		}
		s.count++
		off += frameHeader + n
	}
	s.size = off
	return nil
}

func (o *Outbox) readCursor() (uint64, error) {
	b, err := os.ReadFile(filepath.Join(o.dir, cursorFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	if len(b) != 12 || crc32.Checksum(b[:8], castagnoli) != binary.LittleEndian.Uint32(b[8:]) {
		return 0, errors.New("cursor file corrupt")
	}
	return binary.LittleEndian.Uint64(b), nil
}

// writeCursorLocked records the first unsent sequence number. It writes a
// temporary file, syncs it and renames it over the old one, so a crash leaves
// either the old or the new cursor; an old cursor only re-sends.
func (o *Outbox) writeCursorLocked() {
	seq := o.nextSeq
	if len(o.q) > 0 {
		seq = o.q[0].seq
	}
	var b [12]byte
	binary.LittleEndian.PutUint64(b[:], seq)
	binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(b[:8], castagnoli))
	tmp := filepath.Join(o.dir, cursorFile+".tmp")
	err := writeFileSync(tmp, b[:])
	if err == nil {
		err = os.Rename(tmp, filepath.Join(o.dir, cursorFile))
	}
	if err != nil {
		o.log.Warn("writing outbox cursor failed; a restart will re-send already delivered windows", "err", err)
	}
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Name returns the exporter's name.
func (o *Outbox) Name() string { return o.name }

// Enqueue writes w to disk and syncs it before returning, so a window that was
// enqueued survives a crash. When the window is next in line to be sent, the
// outbox keeps w until it is sent (instead of reading it back from disk), so
// w must not be modified afterwards (the pipeline's windows are not). Windows that
// start more than max_age ago are dropped and counted, not written. When w
// does not fit in max_bytes the oldest unsent windows are dropped. A write
// error (disk full) is returned and nothing of w stays on disk; the caller
// counts it and carries on.
func (o *Outbox) Enqueue(w *metric.Window) error {
	if o.expired(w.Start) {
		o.mu.Lock()
		o.evictExpiredLocked()
		o.mu.Unlock()
		o.m.dropped(DropAge)
		o.log.Warn("window dropped: older than max_age", "window", fmtTime(w.Start), "max_age", o.cfg.MaxAge, "series", len(w.Series))
		return nil
	}
	key := keyOf(w.Start, w.Duration)
	if o.Accepted(WindowKey{Start: w.Start, Duration: w.Duration, Revision: w.Revision}) {
		o.logDuplicate(w)
		return nil
	}
	// Sized like the last record (windows mostly hold the same series), so
	// the record is not copied as it grows.
	frame, err := appendRecord(make([]byte, 0, o.lastRecord.Load()*9/8), w)
	if err != nil {
		o.m.enqueueFailed()
		return fmt.Errorf("outbox of %s: encoding window %s: %w", o.name, fmtTime(w.Start), err)
	}
	size := int64(len(frame))
	o.lastRecord.Store(size)
	payload := frame[frameHeader:]

	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return fmt.Errorf("outbox of %s: closed", o.name)
	}
	if size > int64(o.cfg.MaxBytes) || len(payload) > maxRecordSize {
		o.m.dropped(DropBytes)
		o.log.Warn("window dropped: larger than the outbox max_bytes", "window", fmtTime(w.Start), "bytes", size, "max_bytes", int64(o.cfg.MaxBytes))
		return fmt.Errorf("outbox of %s: window %s is %d bytes, more than max_bytes", o.name, fmtTime(w.Start), size)
	}
	if o.acceptedLocked(key, w.Revision) { // enqueued concurrently
		o.logDuplicate(w)
		return nil
	}
	o.evictExpiredLocked()
	for o.qBytes+size > int64(o.cfg.MaxBytes) {
		i := 0
		if o.sending && len(o.q) > 0 && o.q[0].seq == o.inflight {
			i = 1 // the window being sent finishes first
		}
		if i >= len(o.q) {
			break
		}
		r := o.q[i]
		o.removeLocked(i)
		o.m.dropped(DropBytes)
		o.log.Warn("window dropped: outbox full", "window", fmtTime(r.start), "bytes", r.size, "max_bytes", int64(o.cfg.MaxBytes))
	}
	if err := o.appendLocked(frame, w.Start); err != nil {
		o.m.enqueueFailed()
		return fmt.Errorf("outbox of %s: writing window %s: %w: %w", o.name, fmtTime(w.Start), ErrWrite, err)
	}
	o.held = nil
	if len(o.q) == 1 || (len(o.q) == 2 && o.sending && o.q[0].seq == o.inflight) {
		o.held, o.heldSeq = heldWindow(w), o.q[len(o.q)-1].seq
	}
	o.markLocked(key, w.Revision)
	o.m.enqueued()
	select {
	case o.notify <- struct{}{}:
	default:
	}
	return nil
}

// appendLocked writes one framed record to the active segment and syncs it.
// On failure it truncates the segment back so no partial record remains.
func (o *Outbox) appendLocked(frame []byte, start time.Time) error {
	var s *segment
	if n := len(o.segs); n > 0 {
		s = o.segs[n-1]
	}
	if o.active != nil && s.size >= int64(o.cfg.SegmentBytes) {
		o.active.Close()
		o.active, s = nil, nil
	}
	if o.active == nil {
		// After a restart the last segment is reused while it has room.
		if s == nil || s.size >= int64(o.cfg.SegmentBytes) || s.base+s.count != o.nextSeq {
			s = &segment{base: o.nextSeq, path: filepath.Join(o.dir, fmt.Sprintf("%020d%s", o.nextSeq, segSuffix))}
			o.segs = append(o.segs, s)
		}
		f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			o.gcSegments()
			return err
		}
		o.active = f
	}
	_, err := o.active.Write(frame)
	if err == nil {
		err = o.active.Sync()
	}
	if err != nil {
		// Best effort: a failed truncate leaves a torn record that the CRC
		// check removes at the next open.
		if terr := o.active.Truncate(s.size); terr != nil {
			o.log.Warn("truncating outbox segment after a failed write", "err", terr)
		}
		return err
	}
	o.q = append(o.q, record{seq: o.nextSeq, seg: s, off: s.size, size: int64(len(frame)), start: start})
	o.qBytes += int64(len(frame))
	o.nextSeq++
	s.count++
	s.size += int64(len(frame))
	return nil
}

func (o *Outbox) expired(start time.Time) bool {
	return !start.IsZero() && o.now().Sub(start) > o.cfg.MaxAge.D()
}

// evictExpiredLocked drops the unsent windows older than max_age, except the
// one being sent (Run checks it before its next attempt).
func (o *Outbox) evictExpiredLocked() {
	for len(o.q) > 0 {
		r := o.q[0]
		if !o.expired(r.start) || (o.sending && r.seq == o.inflight) {
			return
		}
		o.removeLocked(0)
		o.m.dropped(DropAge)
		o.log.Warn("window dropped: older than max_age, Mackerel-like destinations would discard it",
			"window", fmtTime(r.start), "max_age", o.cfg.MaxAge)
	}
}

// removeLocked removes q[i] from the queue, persists the cursor when the head
// moved, and deletes segments that hold no unsent record.
func (o *Outbox) removeLocked(i int) {
	if o.held != nil && o.q[i].seq == o.heldSeq {
		o.held = nil
	}
	o.qBytes -= o.q[i].size
	o.q = slices.Delete(o.q, i, i+1)
	if i == 0 {
		o.writeCursorLocked()
		o.gcSegments()
	}
}

// gcSegments deletes the segments before the first unsent record, keeping the
// active one.
func (o *Outbox) gcSegments() {
	first := o.nextSeq
	if len(o.q) > 0 {
		first = o.q[0].seq
	}
	// A deleted segment takes the marks of its windows with it: the marks
	// file must hold them first.
	for i, s := range o.segs {
		if s.base+s.count <= first && !(i == len(o.segs)-1 && o.active != nil) {
			if err := o.writeMarksLocked(); err != nil {
				o.log.Warn("writing outbox marks failed; keeping sent segments", "err", err)
				return
			}
			break
		}
	}
	keep := o.segs[:0]
	for i, s := range o.segs {
		last := i == len(o.segs)-1
		if s.base+s.count <= first && !(last && o.active != nil) {
			if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
				o.log.Warn("removing sent outbox segment", "segment", filepath.Base(s.path), "err", err)
				keep = append(keep, s)
			}
			continue
		}
		keep = append(keep, s)
	}
	clear(o.segs[len(keep):])
	o.segs = keep
}

// Depth returns the number of windows waiting to be sent.
func (o *Outbox) Depth() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.q)
}

// Bytes returns the size on disk of the windows waiting to be sent.
func (o *Outbox) Bytes() int64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.qBytes
}

// OldestAge returns how long ago the oldest unsent window started, 0 when
// the queue is empty.
func (o *Outbox) OldestAge() time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.q) == 0 || o.q[0].start.IsZero() {
		return 0
	}
	return max(o.now().Sub(o.q[0].start), 0)
}

// Run sends the queued windows in order until ctx is cancelled or Shutdown
// has drained the queue. A retryable failure (network, 5xx, 429) waits a
// jittered exponential backoff, or the server's Retry-After, and retries the
// same window: later windows wait behind it, so order is kept. A Permanent
// failure drops the window with a log line naming its metrics. Run returns
// nil; it must not be called twice concurrently.
func (o *Outbox) Run(ctx context.Context) error {
	o.mu.Lock()
	// Once Shutdown began it may be sending itself (Run had not started):
	// a second sending loop would send the head window twice.
	if o.running || o.closed || o.draining {
		o.mu.Unlock()
		return fmt.Errorf("outbox of %s: already running or shut down", o.name)
	}
	ctx, cancel := context.WithCancel(ctx)
	o.running, o.runCancel, o.runDone = true, cancel, make(chan struct{})
	done := o.runDone
	o.mu.Unlock()
	defer func() {
		cancel()
		o.mu.Lock()
		o.running = false
		o.mu.Unlock()
		close(done)
	}()
	o.loop(ctx)
	return nil
}

// loop is the sending loop shared by Run and a Shutdown without Run.
func (o *Outbox) loop(ctx context.Context) {
	attempt := 0
	for {
		r, ok := o.head(ctx)
		if !ok {
			return
		}
		if o.expired(r.start) {
			o.finish(r, DropAge, nil, nil)
			attempt = 0
			continue
		}
		w, err := o.take(r)
		if err != nil {
			o.finish(r, DropCorrupt, err, nil)
			attempt = 0
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, o.cfg.SendTimeout.D())
		err = o.exp.Export(sctx, w)
		cancel()
		switch {
		case err == nil:
			o.finish(r, "", nil, w)
			attempt = 0
			continue
		case ctx.Err() != nil:
			o.release()
			return // shutting down: the window stays on disk
		case IsPermanent(err):
			o.finish(r, DropPermanent, err, w)
			attempt = 0
			continue
		}
		o.mu.Lock()
		if o.held != nil && o.heldSeq == r.seq {
			o.held = nil // while the destination fails, hold no window in memory
		}
		o.mu.Unlock()
		d := o.backoff(attempt, err)
		attempt++
		o.m.failed()
		o.log.Warn("sending window failed; will retry", "window", fmtTime(r.start), "attempt", attempt,
			"retry_in", d.Round(time.Millisecond).String(), "queued", o.Depth(), "err", err)
		if o.sleep(ctx, d) != nil {
			o.release()
			return
		}
	}
}

// head waits for the oldest unsent record and marks it in flight. It returns
// false when ctx is done, or when draining and the queue is empty.
func (o *Outbox) head(ctx context.Context) (record, bool) {
	for {
		o.mu.Lock()
		o.evictExpiredLocked()
		if len(o.q) > 0 {
			r := o.q[0]
			o.sending, o.inflight = true, r.seq
			o.mu.Unlock()
			return r, true
		}
		draining := o.draining
		o.mu.Unlock()
		if draining || ctx.Err() != nil {
			return record{}, false
		}
		select {
		case <-o.notify:
		case <-ctx.Done():
			return record{}, false
		}
	}
}

func (o *Outbox) release() {
	o.mu.Lock()
	o.sending = false
	o.mu.Unlock()
}

// take returns the window of record r: the one Enqueue held, else the
// record read from disk.
func (o *Outbox) take(r record) (*metric.Window, error) {
	o.mu.Lock()
	w := o.held
	if w != nil && o.heldSeq != r.seq {
		w = nil
	}
	o.mu.Unlock()
	if w != nil {
		return w, nil
	}
	return o.load(r)
}

// heldWindow returns the window as decodeWindow gives it back from its
// record: a shallow copy with the start in UTC and no negative revision.
// The series are shared with w.
func heldWindow(w *metric.Window) *metric.Window {
	h := *w
	h.Start = fromUnixNanos(unixNanos(w.Start))
	h.Revision = max(w.Revision, 0)
	return &h
}

// load reads and decodes a record.
func (o *Outbox) load(r record) (*metric.Window, error) {
	f, err := os.Open(r.seg.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, r.size)
	if _, err := f.ReadAt(buf, r.off); err != nil {
		return nil, fmt.Errorf("reading record %d: %w", r.seq, err)
	}
	if crc32.Checksum(buf[frameHeader:], castagnoli) != binary.LittleEndian.Uint32(buf[4:]) {
		return nil, fmt.Errorf("record %d: checksum mismatch", r.seq)
	}
	return decodeWindow(buf[frameHeader:])
}

// finish removes a record that was sent (reason "") or dropped, advancing
// the cursor, and logs and counts a drop once.
func (o *Outbox) finish(r record, reason string, err error, w *metric.Window) {
	o.mu.Lock()
	o.sending = false
	if i := slices.IndexFunc(o.q, func(x record) bool { return x.seq == r.seq }); i >= 0 {
		o.removeLocked(i)
	}
	o.mu.Unlock()
	if reason == "" {
		o.m.sent()
		return
	}
	o.m.dropped(reason)
	attrs := []any{"window", fmtTime(r.start), "reason", reason}
	if w != nil {
		attrs = append(attrs, "series", len(w.Series), "metrics", metricNames(w, 10))
	}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	o.log.Error("window dropped", attrs...)
}

// metricNames lists the distinct metric names of w, at most n of them.
func metricNames(w *metric.Window, n int) string {
	var names []string
	seen := map[string]bool{}
	more := 0
	for _, a := range w.Series {
		if seen[a.Name] {
			continue
		}
		seen[a.Name] = true
		if len(names) < n {
			names = append(names, a.Name)
		} else {
			more++
		}
	}
	s := strings.Join(names, ",")
	if more > 0 {
		s += fmt.Sprintf(" and %d more", more)
	}
	return s
}

// backoff returns the wait before attempt+1: the server's Retry-After when
// err carries one, else InitialBackoff·2^attempt capped at MaxBackoff, with
// "equal jitter" (half fixed, half random) so that many agents that failed
// together do not retry together.
func (o *Outbox) backoff(attempt int, err error) time.Duration {
	var ra RetryAfter
	if errors.As(err, &ra) {
		if s, ok := ra.RetryAfter(); ok && s > 0 {
			d := time.Duration(math.Min(s, 3600) * float64(time.Second))
			return d + time.Duration(o.jitter()*0.1*float64(d))
		}
	}
	d, initial := o.cfg.MaxBackoff.D(), o.cfg.InitialBackoff.D()
	if attempt < 62 && initial <= d>>attempt {
		d = initial << attempt
	}
	return d/2 + time.Duration(o.jitter()*float64(d/2))
}

// Shutdown stops sending after draining what it can within ctx's deadline;
// what is left stays on disk for the next start. It then shuts the exporter
// down. Enqueue fails afterwards. Safe to call more than once.
func (o *Outbox) Shutdown(ctx context.Context) error {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return nil
	}
	o.draining = true
	running, done, cancel := o.running, o.runDone, o.runCancel
	o.mu.Unlock()
	select {
	case o.notify <- struct{}{}:
	default:
	}
	if running {
		select {
		case <-done:
		case <-ctx.Done():
			cancel()
			<-done
		}
	}
	if ctx.Err() == nil && o.Depth() > 0 {
		o.loop(ctx) // Run was not running (or its context ended first): drain here
	}
	o.mu.Lock()
	o.closed = true
	left := len(o.q)
	o.closeFiles()
	o.mu.Unlock()
	if left > 0 {
		o.log.Info("outbox shut down with unsent windows; they are sent after the next start", "windows", left)
	}
	o.m.unregister()
	if err := o.exp.Shutdown(ctx); err != nil {
		return fmt.Errorf("shutting down exporter %s: %w", o.name, err)
	}
	return nil
}

func (o *Outbox) closeFiles() {
	o.held = nil
	if o.active != nil {
		o.active.Close()
		o.active = nil
	}
}

func fmtTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// outboxMetrics are the outbox's self-metrics. The counters are vectors by
// exporter, shared by all outboxes registered on one registry; the gauges are
// per outbox.
type outboxMetrics struct {
	name       string
	reg        prometheus.Registerer
	sentC      prometheus.Counter
	droppedV   *prometheus.CounterVec
	failedC    prometheus.Counter
	enqueuedC  prometheus.Counter
	enqFailedC prometheus.Counter
	gauges     []prometheus.Collector
}

func (m *outboxMetrics) register(reg prometheus.Registerer, o *Outbox) error {
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_sent_windows_total", Help: "Windows the exporter's destination accepted.",
	}, []string{"exporter"})
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_dropped_windows_total", Help: "Windows dropped by the outbox, by reason (bytes, age, permanent, corrupt).",
	}, []string{"exporter", "reason"})
	failed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_send_failures_total", Help: "Retryable send failures (network, 5xx, 429).",
	}, []string{"exporter"})
	enq := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_enqueued_windows_total", Help: "Windows written to the outbox.",
	}, []string{"exporter"})
	enqFailed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_enqueue_failures_total", Help: "Windows that could not be written to the outbox (disk full, encoding).",
	}, []string{"exporter"})
	for _, c := range []**prometheus.CounterVec{&sent, &dropped, &failed, &enq, &enqFailed} {
		var err error
		if *c, err = registerCounterVec(reg, *c); err != nil {
			return err
		}
	}
	m.reg, m.name = reg, o.name
	m.sentC = sent.WithLabelValues(o.name)
	m.droppedV = dropped
	m.failedC = failed.WithLabelValues(o.name)
	m.enqueuedC = enq.WithLabelValues(o.name)
	m.enqFailedC = enqFailed.WithLabelValues(o.name)
	for _, reason := range []string{DropBytes, DropAge, DropPermanent, DropCorrupt} {
		dropped.WithLabelValues(o.name, reason) // export zeros, so rate() works from the start
	}
	labels := prometheus.Labels{"exporter": o.name}
	m.gauges = []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sabaki_exporter_outbox_windows", Help: "Windows waiting in the outbox.", ConstLabels: labels,
		}, func() float64 { return float64(o.Depth()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sabaki_exporter_outbox_bytes", Help: "Bytes on disk of the windows waiting in the outbox.", ConstLabels: labels,
		}, func() float64 { return float64(o.Bytes()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sabaki_exporter_outbox_oldest_age_seconds", Help: "Age of the oldest window waiting in the outbox.", ConstLabels: labels,
		}, func() float64 { return o.OldestAge().Seconds() }),
	}
	if reg != nil {
		for i, g := range m.gauges {
			if err := reg.Register(g); err != nil {
				for _, r := range m.gauges[:i] {
					reg.Unregister(r)
				}
				return err
			}
		}
	}
	return nil
}

func (m *outboxMetrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, g := range m.gauges {
		m.reg.Unregister(g)
	}
}

func (m *outboxMetrics) sent()                 { m.sentC.Inc() }
func (m *outboxMetrics) failed()               { m.failedC.Inc() }
func (m *outboxMetrics) enqueued()             { m.enqueuedC.Inc() }
func (m *outboxMetrics) enqueueFailed()        { m.enqFailedC.Inc() }
func (m *outboxMetrics) dropped(reason string) { m.droppedV.WithLabelValues(m.name, reason).Inc() }
