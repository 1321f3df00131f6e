// Package store is sabaki's embedded time-series store: an SQLite database
// (modernc.org/sqlite, no cgo) holding every closed window at several
// resolutions (tiers), for years, in a few bytes per point.
//
// # Layout
//
// A store is a directory (0700) holding sabaki.db (0600, with its -wal and
// -shm files) and LOCK. The database runs in WAL mode so `sabaki query` and
// `sabaki export` read while `sabaki run` writes. Exactly one writer may open
// a store: Open takes an exclusive flock on LOCK and a second writer fails at
// once with a message naming the directory; ReadOnly opens take no lock.
//
// Tables (schema version 2, see schema.go):
//
//   - series: one row per series; id is a 64-bit FNV-1a hash of name, kind,
//     resource and point attributes (stable across restarts and machines).
//   - head: the open chunk, one row per series and window, (tier, start,
//     series) → encoded point. A window is one transaction, so a crash loses
//     at most the window being written.
//   - chunks: closed chunks, one row per (tier, chunk start, series) holding
//     up to chunkPoints points compressed column by column (chunk.go):
//     delta-encoded window indexes, bit-packed integers, exact decimal floats
//     or Gorilla XOR floats; histogram buckets range-coded against a model
//     learnt from the chunk's earlier windows (version 1), or, for the 1 h
//     and coarser tiers, bit-packed per window so that one window decodes
//     without the ones before it (version 2, see buckets.go and chunk.go).
//   - exemplars, state (source cursors), dirty (rollup slots to redo), meta
//     (magic, schema version, rollup progress).
//   - baselines: the pipeline's cumulative baselines, a log of changes
//     written in the same transaction as the window they account for
//     (WriteWithState), so that after a crash a window is stored if and only
//     if the baselines of its counters advanced past it; compacted into one
//     snapshot row as it grows.
//
// # Lifecycle
//
// Write stores each closed window in the first tier (or the tier whose
// resolution equals the window's duration, for backfills). Maintain — the
// daemon calls it about once a minute — compacts head rows of closed chunks,
// rolls closed slots up into the next tier by exact merge (histograms merged
// bucket by bucket, counter sums added, gauge min/max/last/sum/count
// combined), redoes slots that late windows changed, and deletes what is past
// each tier's keep. Every step is idempotent and safe to interrupt.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Tier is one resolution the store keeps points at, and for how long.
type Tier struct {
	Resolution time.Duration
	Keep       time.Duration
}

// Options configure Open.
type Options struct {
	// Tiers default to Tiers(DefaultRetention()). The first tier's resolution
	// must be the agent window; see ValidateRetention.
	Tiers []Tier
	// Logger defaults to a logger that discards.
	Logger *slog.Logger
	// ReadOnly opens an existing store for queries beside a running writer:
	// no lock, no schema changes, writes fail.
	ReadOnly bool
	// Now defaults to time.Now; tests pin it.
	Now func() time.Time
	// Grace is how long after a chunk or rollup slot ends Maintain waits
	// before compacting or rolling it up, so windows re-emitted with late
	// points (agent.lateness, 5 min by default) are still cheap head
	// updates. Later windows are still stored correctly, at the cost of
	// re-encoding a chunk and redoing a rollup slot. Default 10m.
	Grace time.Duration
}

// Store is an open store. Its methods are safe for concurrent use; writes
// are serialised.
type Store struct {
	dir, path string
	db        *sql.DB
	log       *slog.Logger
	now       func() time.Time
	grace     int64
	readOnly  bool
	tiers     []tierInfo
	lock      *os.File

	mu     sync.Mutex // serialises writers
	known  map[int64]struct{}
	rolled []atomic.Int64 // rolled[i]: tier i holds rollups of every slot before this (Unix s)
	parsed sync.Map       // series id → *storedSeries, attributes parsed once (read.go)
	buf    []byte         // encoded head points of one insert batch (write.go)
	args   []any
	// The baselines log (baselines.go): bytes in it, and in its oldest
	// row (the last compaction's snapshot); baseRead once they are known.
	baseLog, baseSnap int64
	baseRead          bool
}

type tierInfo struct {
	res, keep, span int64 // seconds
}

// chunkPoints is how many windows a chunk spans (2 h at 1 m, 5 d at 1 h,
// 120 d at 1 d), like the Prometheus TSDB's 120-sample chunks.
const chunkPoints = 120

const (
	dbFile   = "sabaki.db"
	lockFile = "LOCK"
)

// Open opens (creating it unless opts.ReadOnly) the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Grace <= 0 {
		opts.Grace = 10 * time.Minute
	}
	if len(opts.Tiers) == 0 {
		opts.Tiers = Tiers(DefaultRetention())
	}
	s := &Store{
		dir:      dir,
		path:     filepath.Join(dir, dbFile),
		log:      opts.Logger,
		now:      opts.Now,
		grace:    int64((opts.Grace + time.Second - 1) / time.Second),
		readOnly: opts.ReadOnly,
		known:    map[int64]struct{}{},
	}
	for i, t := range opts.Tiers {
		if t.Resolution < time.Second || t.Resolution%time.Second != 0 || t.Keep <= 0 {
			return nil, fmt.Errorf("opening store %s: tier %d (%s, keep %s): resolution must be whole seconds and keep positive", dir, i, t.Resolution, t.Keep)
		}
		if i > 0 && (t.Resolution <= opts.Tiers[i-1].Resolution || t.Resolution%opts.Tiers[i-1].Resolution != 0) {
			return nil, fmt.Errorf("opening store %s: tier %d resolution %s is not a larger multiple of %s", dir, i, t.Resolution, opts.Tiers[i-1].Resolution)
		}
		res := int64(t.Resolution / time.Second)
		s.tiers = append(s.tiers, tierInfo{res: res, keep: int64(t.Keep / time.Second), span: res * chunkPoints})
	}
	if err := s.open(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) open() error {
	if s.readOnly {
		if _, err := os.Stat(s.path); err != nil {
			return fmt.Errorf("opening store: no sabaki store in %s (%w); is the data directory right?", s.dir, err)
		}
	} else {
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return fmt.Errorf("creating store directory: %w", err)
		}
		if st, err := os.Stat(s.dir); err == nil && st.Mode().Perm()&0o077 != 0 {
			// Created by someone else with wider permissions: say so, but
			// leave the choice to them.
			s.log.Warn("store directory is accessible to other users; 0700 is recommended", "dir", s.dir, "mode", st.Mode().Perm().String())
		}
		if err := s.takeLock(); err != nil {
			return err
		}
		f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("opening store: %w", err)
		}
		f.Close()
	}
	if err := checkHeader(s.path); err != nil {
		return err
	}
	q := url(s.path, s.readOnly)
	db, err := sql.Open("sqlite", q)
	if err != nil {
		return fmt.Errorf("opening store %s: %w", s.path, err)
	}
	s.db = db
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(0)
	ctx := context.Background()
	if err := s.migrate(ctx); err != nil {
		return err
	}
	if err := s.syncTiers(ctx); err != nil {
		return err
	}
	s.rolled = make([]atomic.Int64, len(s.tiers))
	for i := 1; i < len(s.tiers); i++ {
		v, err := s.metaInt(ctx, db, rolledKey(i))
		if err != nil {
			return err
		}
		s.rolled[i].Store(v)
	}
	if s.readOnly {
		return nil
	}
	for _, f := range []string{s.path + "-wal", s.path + "-shm"} {
		if err := os.Chmod(f, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("opening store: %w", err)
		}
	}
	rows, err := db.QueryContext(ctx, `SELECT id FROM series`)
	if err != nil {
		return s.wrap("loading series", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return s.wrap("loading series", err)
		}
		s.known[id] = struct{}{}
	}
	if err := rows.Err(); err != nil {
		return s.wrap("loading series", err)
	}
	return nil
}

// syncTiers records the writer's tiers in meta, and makes a reader use the
// tiers the writer recorded, so `sabaki query -data-dir` reads a store with a
// custom retention correctly without its config.
func (s *Store) syncTiers(ctx context.Context) error {
	enc := func(ts []tierInfo) string {
		parts := make([]string, len(ts))
		for i, t := range ts {
			parts[i] = strconv.FormatInt(t.res, 10) + ":" + strconv.FormatInt(t.keep, 10)
		}
		return strings.Join(parts, ",")
	}
	var stored string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'tiers'`).Scan(&stored)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return s.wrap("reading tiers", err)
	}
	if !s.readOnly {
		if stored != "" && stored != enc(s.tiers) {
			s.log.Warn("store retention tiers changed", "path", s.path, "was", stored, "now", enc(s.tiers))
		}
		_, err := s.db.ExecContext(ctx, `INSERT INTO meta(key, value) VALUES('tiers', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`, enc(s.tiers))
		return s.wrap("saving tiers", err)
	}
	if stored == "" {
		return nil
	}
	var ts []tierInfo
	for _, part := range strings.Split(stored, ",") {
		a, b, _ := strings.Cut(part, ":")
		res, err1 := strconv.ParseInt(a, 10, 64)
		keep, err2 := strconv.ParseInt(b, 10, 64)
		if err1 != nil || err2 != nil || res <= 0 {
			return fmt.Errorf("store %s is corrupt: meta tiers = %q", s.path, stored)
		}
		ts = append(ts, tierInfo{res: res, keep: keep, span: res * chunkPoints})
	}
	s.tiers = ts
	return nil
}

// url builds the modernc DSN. busy_timeout lets a reader wait out a
// checkpoint instead of failing; synchronous=NORMAL is durable across process
// crashes in WAL mode (only an OS crash can lose the last transactions).
func url(path string, readOnly bool) string {
	q := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)&_pragma=temp_store(memory)"
	if readOnly {
		q += "&_pragma=query_only(1)"
	} else {
		// Checkpoint every 256 pages (16 MiB at 64 KiB pages) rather than
		// SQLite's 1000, and cut the WAL file back to 64 MiB afterwards.
		q += "&_txlock=immediate&_pragma=wal_autocheckpoint(256)&_pragma=journal_size_limit(67108864)"
	}
	return q
}

func (s *Store) takeLock() error {
	path := filepath.Join(s.dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening store lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who := "another sabaki process"
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				who += fmt.Sprintf(" (pid %d)", pid)
			}
			return fmt.Errorf("store %s is in use by %s: only one `sabaki run` may write a data directory", s.dir, who)
		}
		return fmt.Errorf("locking store %s: %w", s.dir, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	s.lock = f
	return nil
}

// sqliteMagic starts every SQLite 3 database file.
const sqliteMagic = "SQLite format 3\x00"

// checkHeader refuses files that are not SQLite databases, and SQLite
// databases of other applications, before SQLite touches them.
func checkHeader(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening store: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, 100)
	n, err := io.ReadFull(f, hdr)
	if n == 0 && (err == io.EOF || err == nil) {
		return nil // new, empty file
	}
	if n < len(hdr) || string(hdr[:16]) != sqliteMagic {
		return fmt.Errorf("%s is not a sabaki store (not an SQLite database); move it away or point -data-dir elsewhere", path)
	}
	appID := uint32(hdr[68])<<24 | uint32(hdr[69])<<16 | uint32(hdr[70])<<8 | uint32(hdr[71])
	if appID != applicationID && appID != 0 {
		return fmt.Errorf("%s is not a sabaki store (SQLite application_id %#08x, want %#08x)", path, appID, applicationID)
	}
	return nil
}

// wrap names the file in errors, and says so when SQLite finds corruption.
func (s *Store) wrap(doing string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, errCorrupt) || strings.Contains(err.Error(), "malformed") || strings.Contains(err.Error(), "not a database") {
		return fmt.Errorf("store %s is corrupt (%s): %w", s.path, doing, err)
	}
	return fmt.Errorf("store %s: %s: %w", s.path, doing, err)
}

// Close checkpoints the WAL and releases the lock. It is safe to call twice.
func (s *Store) Close() error {
	var err error
	if s.db != nil {
		if !s.readOnly {
			s.mu.Lock()
			_, _ = s.db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`)
			s.mu.Unlock()
		}
		err = s.db.Close()
		s.db = nil
	}
	if s.lock != nil {
		s.lock.Truncate(0)
		syscall.Flock(int(s.lock.Fd()), syscall.LOCK_UN)
		s.lock.Close()
		s.lock = nil
	}
	if err != nil {
		return fmt.Errorf("closing store %s: %w", s.path, err)
	}
	return nil
}

// DiskUsage returns the bytes the store's files take (database and WAL).
func (s *Store) DiskUsage() (int64, error) {
	var total int64
	for _, f := range []string{s.path, s.path + "-wal", s.path + "-shm"} {
		st, err := os.Stat(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		total += st.Size()
	}
	return total, nil
}

// GetState returns the value saved under key (sources.StateStore).
func (s *Store) GetState(ctx context.Context, key string) ([]byte, bool, error) {
	var v []byte
	err := s.db.QueryRowContext(ctx, `SELECT value FROM state WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, s.wrap("reading state "+key, err)
	}
	return v, true, nil
}

// PutState saves value under key durably (sources.StateStore).
func (s *Store) PutState(ctx context.Context, key string, value []byte) error {
	if s.readOnly {
		return errReadOnly
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.db.ExecContext(ctx, `INSERT INTO state(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`, key, value)
	return s.wrap("saving state "+key, err)
}

func alignDown(t, step int64) int64 {
	r := t % step
	if r < 0 {
		r += step
	}
	return t - r
}

func alignUp(t, step int64) int64 { return alignDown(t+step-1, step) }
