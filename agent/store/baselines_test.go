package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/metric"
)

// TestWriteWithState: baselines are written and deleted in the window's
// transaction, a failed window writes none of them, and they survive a
// reopen.
func TestWriteWithState(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := &clock{t: t0}
	s := open(t, dir, c)
	scan := func(s *Store) map[string]string {
		t.Helper()
		got := map[string]string{}
		if err := s.ScanBaselines(ctx, func(k, v []byte) error { got[string(k)] = string(v); return nil }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	var put []StateRow
	want := map[string]string{}
	for i := range 600 { // more than two multi-row batches
		k, v := key(i), fmt.Sprintf("v%d", i)
		put = append(put, StateRow{Key: []byte(k), Value: []byte(v)})
		want[k] = v
	}
	if err := s.WriteWithState(ctx, win(t0, 0, counter("/a", 1)), put, nil); err != nil {
		t.Fatal(err)
	}
	if got := scan(s); !maps.Equal(got, want) {
		t.Fatalf("after the first write: %d baselines, want %d", len(got), len(want))
	}

	// A window that fails (misaligned start) changes no baseline.
	bad := win(t0.Add(1), 0, counter("/a", 1))
	if err := s.WriteWithState(ctx, bad, []StateRow{{Key: []byte(key(0)), Value: []byte("changed")}}, [][]byte{[]byte(key(1))}); err == nil {
		t.Fatal("a misaligned window was accepted")
	}
	if got := scan(s); !maps.Equal(got, want) {
		t.Fatal("a failed window write changed the baselines")
	}

	// Update one, delete two; state only (no window) too.
	if err := s.WriteWithState(ctx, win(t0.Add(60e9), 0, counter("/a", 2)), []StateRow{{Key: []byte(key(0)), Value: []byte("changed")}}, [][]byte{[]byte(key(1))}); err != nil {
		t.Fatal(err)
	}
	// Deletes go first, and a later row for the same key wins.
	if err := s.WriteWithState(ctx, nil, []StateRow{{Key: []byte(key(3)), Value: []byte("a")}, {Key: []byte(key(3)), Value: []byte("b")}},
		[][]byte{[]byte(key(2)), []byte(key(3)), []byte(key(999))}); err != nil {
		t.Fatal(err)
	}
	want[key(3)] = "b"
	want[key(0)] = "changed"
	delete(want, key(1))
	delete(want, key(2))
	s.Close()
	s = open(t, dir, c)
	if got := scan(s); !maps.Equal(got, want) {
		t.Fatalf("after reopening: %d baselines, want %d (key-000 = %q)", len(got), len(want), got[key(0)])
	}
	rows := query(t, s, Query{Metric: "http.requests", From: t0, To: t0.Add(2 * 60e9), Step: 60e9})
	if len(rows) != 2 {
		t.Fatalf("%d rows stored, want the 2 good windows", len(rows))
	}
}

func key(i int) string { return fmt.Sprintf("key-%012d", i) }

// TestBaselinesCompacted: the log of changes is folded into one snapshot
// row as it grows, and reads the same before and after.
func TestBaselinesCompacted(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := open(t, dir, &clock{t: t0})
	want := map[string]string{}
	for w := range 40 {
		var put []StateRow
		var del [][]byte
		for i := range 2000 {
			if (i+w)%5 == 0 {
				del = append(del, []byte(key(i)))
				delete(want, key(i))
				continue
			}
			v := fmt.Sprintf("%d-%d-%s", w, i, "some padding to make the log grow")
			put = append(put, StateRow{Key: []byte(key(i)), Value: []byte(v)})
			want[key(i)] = v
		}
		if err := s.WriteWithState(ctx, win(t0.Add(time.Duration(w)*time.Minute), 0, counter("/a", 1)), put, del); err != nil {
			t.Fatal(err)
		}
	}
	var rows int
	if err := s.db.QueryRow(`SELECT count(*) FROM baselines`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows > 20 {
		t.Errorf("%d rows in the baselines log after 40 writes of ~100 KB, want it compacted", rows)
	}
	got := map[string]string{}
	if err := s.ScanBaselines(ctx, func(k, v []byte) error { got[string(k)] = string(v); return nil }); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Errorf("%d baselines read, want %d", len(got), len(want))
	}
}

// TestFirstBaselinesKept: the first row of an empty log counts as the
// snapshot, so a first write past the 1 MiB slack is stored as written, not
// folded and rewritten right away (which at 105k series was a whole-table
// read at the first window's close). A fold would rewrite the row in map
// order, so the row equal to the write's own encoding proves there was none.
func TestFirstBaselinesKept(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir(), &clock{t: t0})
	var put []StateRow
	var want []byte
	for i := range 20000 { // ~1.5 MB
		r := StateRow{Key: []byte(key(i)), Value: fmt.Appendf(nil, "%060d", i)}
		put = append(put, r)
		want = append(want, r.Key...)
		want = binary.AppendUvarint(want, uint64(len(r.Value))+1)
		want = append(want, r.Value...)
	}
	if err := s.WriteWithState(ctx, win(t0, 0, counter("/a", 1)), put, nil); err != nil {
		t.Fatal(err)
	}
	var got []byte
	if err := s.db.QueryRow(`SELECT data FROM baselines`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the first baselines row (%d bytes) is not the write as made (%d bytes): it was folded", len(got), len(want))
	}
}

// TestBaselinesFoldedByMaintain: a log past twice its snapshot (plus 1 MiB)
// is left to Maintain by the writes, which fold only past four times (so
// the fold is not on a window's close), and Maintain folds it, reading the
// same.
func TestBaselinesFoldedByMaintain(t *testing.T) {
	ctx := context.Background()
	c := &clock{t: t0}
	s := open(t, t.TempDir(), c)
	want := map[string]string{}
	for w := range 3 { // ~1.5 MB each: 4.5 MB, past 2×1.5+1 MiB, not 4×
		var put []StateRow
		for i := range 20000 {
			v := fmt.Sprintf("%060d", w*100000+i)
			put = append(put, StateRow{Key: []byte(key(i)), Value: []byte(v)})
			want[key(i)] = v
		}
		if err := s.WriteWithState(ctx, win(t0.Add(time.Duration(w)*time.Minute), 0, counter("/a", 1)), put, nil); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		t.Helper()
		var n int
		if err := s.db.QueryRow(`SELECT count(*) FROM baselines`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 3 {
		t.Fatalf("%d rows in the baselines log after 3 writes, want 3 (not folded by a write)", n)
	}
	if err := s.Maintain(ctx, t0.Add(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 1 {
		t.Errorf("%d rows in the baselines log after Maintain, want 1 (folded)", n)
	}
	got := map[string]string{}
	if err := s.ScanBaselines(ctx, func(k, v []byte) error { got[string(k)] = string(v); return nil }); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Errorf("%d baselines read after the fold, want %d", len(got), len(want))
	}
}

// TestMigrateBaselines: a schema-1 store (written before baselines existed)
// gains the table when a writer opens it, and keeps its data.
func TestMigrateBaselines(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := &clock{t: t0}
	s := open(t, dir, c)
	write(t, s, win(t0, 0, counter("/a", 1)))
	s.Close()
	db, err := sql.Open("sqlite", filepath.Join(dir, dbFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`DROP TABLE baselines; UPDATE meta SET value = '1' WHERE key = 'schema_version'`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s = open(t, dir, c)
	if err := s.WriteWithState(ctx, nil, []StateRow{{Key: []byte(key(0)), Value: []byte("v")}}, nil); err != nil {
		t.Fatal(err)
	}
	if rows := query(t, s, Query{Metric: "http.requests", From: t0, To: t0.Add(60e9), Step: 60e9}); len(rows) != 1 {
		t.Fatalf("%d rows after the migration, want 1", len(rows))
	}
}

// BenchmarkWriteWithState is BenchmarkWrite (10,000-series windows of the
// agent mix) with a changed baseline per series saved in each window's
// transaction (the 1:1 worst case: every raw series cumulative and moving;
// a counter baseline encodes to ~20 bytes, a histogram one to ~100):
//
//	go test ./agent/store -run '^$' -bench 'Write(WithState)?$' -benchtime=20x -count=3
func BenchmarkWriteWithState(b *testing.B) { benchWriteWithState(b, 10_000, false) }

// BenchmarkWriteWithState105k is BenchmarkWriteWithState at the DESIGN §7
// scale (50 targets × 2,100 series), where the window write was a quarter
// of the whole agent's CPU. It measures the steady state: a first window,
// which adds the series rows, is written before the timer starts.
//
//	go test ./agent/store -run '^$' -bench 'WriteWithState105k$' -benchtime=5x -count=3
func BenchmarkWriteWithState105k(b *testing.B) { benchWriteWithState(b, 105_000, true) }

// benchWriteWithState writes n-series windows; warm writes one before the
// timer starts (the series rows), so only steady-state windows are timed.
func benchWriteWithState(b *testing.B, n int, warm bool) {
	r := rand.New(rand.NewPCG(1, 1))
	gens := mixGens(r, n)
	windows := make([]*metric.Window, 4)
	for i := range windows {
		w := &metric.Window{Duration: time.Minute}
		for _, g := range gens {
			w.Series = append(w.Series, g.next())
		}
		windows[i] = w
	}
	put := make([]StateRow, n)
	for i := range put {
		k := make([]byte, 16)
		binary.LittleEndian.PutUint64(k, r.Uint64())
		binary.LittleEndian.PutUint64(k[8:], r.Uint64())
		v := make([]byte, 20)
		if i%20 == 0 {
			v = make([]byte, 100)
		}
		put[i] = StateRow{Key: k, Value: v}
	}
	s, err := Open(b.TempDir(), Options{Now: func() time.Time { return t0 }})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if warm {
		w := windows[len(windows)-1]
		w.Start = t0.Add(-time.Minute)
		if err := s.WriteWithState(ctx, w, put, nil); err != nil {
			b.Fatal(err)
		}
	}
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w := windows[i%len(windows)]
		w.Start = t0.Add(time.Duration(i) * time.Minute)
		for j := range put {
			put[j].Value[0] = byte(i)
		}
		if err := s.WriteWithState(ctx, w, put, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "series-windows/s")
	b.ReportMetric(float64(n*b.N)/(cpuTime()-cpu0).Seconds(), "series-windows/cpu-s")
}
