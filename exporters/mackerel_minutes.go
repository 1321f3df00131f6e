package exporters

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/sabakiio/sabaki/metric"
)

// Sub-minute windows and restarts.
//
// Mackerel keeps one value per name and minute, the last one posted. With
// windows shorter than a minute the exporter therefore posts, for each
// window, the merge of every window of that minute it has: its last post
// covers the whole minute. If those windows were only in memory, a restart
// (clean or kill -9) in the middle of a minute would re-post the minute with
// the windows seen since the restart only, overwriting the whole minute with
// a part of it.
//
// So every sub-minute window the exporter accepts is also appended to a
// journal on disk, one file per minute, next to the outbox
// (<data_dir>/outbox/<name>/<unix minute>.minute, records framed like the
// outbox's: length, CRC-32C, encoded window), and fsync'd before the window
// is posted, that is before Export returns and the outbox moves its cursor
// past it. A new process replays the journal, so its first post of a minute
// merges the windows the previous process had. Every step of a kill -9:
//
//   - before the append, or torn in the middle of it: the torn record fails
//     its CRC and is cut off at the replay; the outbox still has the window
//     (its cursor did not move) and sends it again, which appends it again.
//   - after the append, before or after the post, before the cursor moved:
//     the journal has the window and the outbox sends it again; a window
//     replaces the one with the same start (see minuteWindows.put), so it is
//     counted once.
//   - after the cursor moved: the journal has it.
//
// Windows are replaced by start, never added, so re-sending is harmless; the
// journal only has to hold, at any moment, every window the outbox no longer
// holds. Files of minutes older than subMinuteKeep behind the newest minute
// are deleted, as their windows are from memory.
//
// When appending fails (disk full) the window is still posted, with an error
// logged and counted: a restart within that minute would then undercount it,
// but Mackerel keeps getting data.

// minuteWindows holds the windows of one minute, by start.
type minuteWindows struct {
	windows map[int64]*metric.Window
	// journaled is the revision of each window this process appended to the
	// journal: the outbox retrying a window (Mackerel down) hands it over
	// again and again, and one record of it is enough.
	journaled map[int64]int
}

func newMinuteWindows() *minuteWindows {
	return &minuteWindows{windows: map[int64]*metric.Window{}, journaled: map[int64]int{}}
}

// put records w (which the caller no longer changes) as the window starting
// at w.Start. A window with a lower revision than the one held is ignored
// (false). Otherwise the series w carries replace those of the window held,
// and the held window's series that w lacks are kept: the rule the store
// applies per series (a revised window carries every series again; a
// window re-emitted by a restarted pipeline may carry fewer).
func (mw *minuteWindows) put(w *metric.Window) bool {
	k := w.Start.UnixNano()
	old, ok := mw.windows[k]
	if ok && w.Revision < old.Revision {
		return false
	}
	if ok && len(old.Series) > 0 {
		have := make(map[string]bool, len(w.Series))
		for i := range w.Series {
			have[aggregateKey(&w.Series[i])] = true
		}
		for i := range old.Series {
			if !have[aggregateKey(&old.Series[i])] {
				w.Series = append(w.Series, old.Series[i])
			}
		}
	}
	mw.windows[k] = w
	return true
}

// aggregateKey identifies a series within a window, as the store does: name,
// kind, resource and attributes.
func aggregateKey(a *metric.Aggregate) string {
	return a.Name + "\x00" + strconv.Itoa(int(a.Kind)) + "\x00" + attrsKey(a.Resource) + "\x00" + attrsKey(a.Attrs)
}

const minuteSuffix = ".minute"

// minuteJournal is the on-disk copy of the sub-minute windows (see above).
// Only the exporter's Export goroutine uses it, under Mackerel.mu.
type minuteJournal struct {
	dir string
	log *slog.Logger
}

// minutePath is the journal file of the minute starting at unix second m.
func (j *minuteJournal) minutePath(m int64) string {
	return filepath.Join(j.dir, strconv.FormatInt(m, 10)+minuteSuffix)
}

// load replays the journal into minutes. A torn or corrupt record ends its
// file, which is truncated there; an unreadable file is skipped with a
// warning (its minute is then posted without those windows, as before the
// journal existed). It returns the newest minute found.
func (j *minuteJournal) load(minutes map[int64]*minuteWindows) (newest int64, err error) {
	entries, err := os.ReadDir(j.dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading sub-minute journal directory: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, minuteSuffix) {
			continue
		}
		m, err := strconv.ParseInt(strings.TrimSuffix(name, minuteSuffix), 10, 64)
		if err != nil {
			continue
		}
		ws, err := j.readFile(filepath.Join(j.dir, name))
		if err != nil {
			j.log.Warn("sub-minute journal file unreadable; its minute is posted without the windows it held", "file", name, "err", err)
			continue
		}
		mw := minutes[m]
		if mw == nil {
			mw = newMinuteWindows()
			minutes[m] = mw
		}
		for _, w := range ws {
			mw.put(w)
		}
		newest = max(newest, m)
	}
	return newest, nil
}

// readFile decodes the records of one journal file, truncating it at the
// first torn or corrupt one.
func (j *minuteJournal) readFile(path string) ([]*metric.Window, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []*metric.Window
	var off int64
	for off < int64(len(data)) {
		rest := data[off:]
		bad := ""
		var w *metric.Window
		var n int64
		if len(rest) < frameHeader {
			bad = "short frame header"
		} else {
			n = int64(binary.LittleEndian.Uint32(rest))
			switch {
			case n > maxRecordSize || n > int64(len(rest)-frameHeader):
				bad = "record extends past end of file"
			case crc32.Checksum(rest[frameHeader:frameHeader+n], castagnoli) != binary.LittleEndian.Uint32(rest[4:]):
				bad = "checksum mismatch"
			default:
				if w, err = decodeWindow(rest[frameHeader : frameHeader+n]); err != nil {
					bad = err.Error()
				}
			}
		}
		if bad != "" {
			j.log.Warn("sub-minute journal has a torn or corrupt record; truncating it (the outbox re-sends that window)",
				"file", filepath.Base(path), "offset", off, "dropped_bytes", int64(len(data))-off, "problem", bad)
			if err := os.Truncate(path, off); err != nil {
				return out, fmt.Errorf("truncating %s: %w", filepath.Base(path), err)
			}
			break
		}
		out = append(out, w)
		off += frameHeader + n
	}
	return out, nil
}

// append writes w to the file of minute m and syncs it. A failed write is
// cut off again, so no partial record stays behind.
func (j *minuteJournal) append(m int64, w *metric.Window) error {
	payload, err := encodeWindow(w)
	if err != nil {
		return fmt.Errorf("encoding window: %w", err)
	}
	frame := make([]byte, frameHeader, frameHeader+len(payload))
	binary.LittleEndian.PutUint32(frame, uint32(len(payload)))
	binary.LittleEndian.PutUint32(frame[4:], crc32.Checksum(payload, castagnoli))
	frame = append(frame, payload...)

	if err := os.MkdirAll(j.dir, 0o700); err != nil {
		return fmt.Errorf("creating sub-minute journal directory: %w", err)
	}
	path := j.minutePath(m)
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening sub-minute journal: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("sub-minute journal: %w", err)
	}
	if _, err = f.Write(frame); err == nil {
		err = f.Sync()
	}
	if err != nil {
		if terr := f.Truncate(st.Size()); terr != nil {
			j.log.Warn("truncating sub-minute journal after a failed write", "err", terr)
		}
		return fmt.Errorf("writing sub-minute journal: %w", err)
	}
	if created {
		// The new file's directory entry must survive a power loss too.
		if d, err := os.Open(j.dir); err == nil {
			_ = d.Sync()
			d.Close()
		}
	}
	return nil
}

// dropBefore deletes the files of minutes before horizon (unix seconds).
func (j *minuteJournal) dropBefore(horizon int64) {
	entries, err := os.ReadDir(j.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, minuteSuffix) {
			continue
		}
		m, err := strconv.ParseInt(strings.TrimSuffix(name, minuteSuffix), 10, 64)
		if err != nil || m >= horizon {
			continue
		}
		if err := os.Remove(filepath.Join(j.dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			j.log.Warn("removing old sub-minute journal file", "file", name, "err", err)
		}
	}
}

// sortedStarts returns the window starts of mw in order.
func (mw *minuteWindows) sortedStarts() []int64 {
	starts := make([]int64, 0, len(mw.windows))
	for s := range mw.windows {
		starts = append(starts, s)
	}
	slices.Sort(starts)
	return starts
}
