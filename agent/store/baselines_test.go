package store

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"path/filepath"
	"testing"
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
		k, v := fmt.Sprintf("key-%03d", i), fmt.Sprintf("v%d", i)
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
	if err := s.WriteWithState(ctx, bad, []StateRow{{Key: []byte("key-000"), Value: []byte("changed")}}, [][]byte{[]byte("key-001")}); err == nil {
		t.Fatal("a misaligned window was accepted")
	}
	if got := scan(s); !maps.Equal(got, want) {
		t.Fatal("a failed window write changed the baselines")
	}

	// Update one, delete two; state only (no window) too.
	if err := s.WriteWithState(ctx, win(t0.Add(60e9), 0, counter("/a", 2)), []StateRow{{Key: []byte("key-000"), Value: []byte("changed")}}, [][]byte{[]byte("key-001")}); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteWithState(ctx, nil, nil, [][]byte{[]byte("key-002"), []byte("absent")}); err != nil {
		t.Fatal(err)
	}
	want["key-000"] = "changed"
	delete(want, "key-001")
	delete(want, "key-002")
	s.Close()
	s = open(t, dir, c)
	if got := scan(s); !maps.Equal(got, want) {
		t.Fatalf("after reopening: %d baselines, want %d (key-000 = %q)", len(got), len(want), got["key-000"])
	}
	rows := query(t, s, Query{Metric: "http.requests", From: t0, To: t0.Add(2 * 60e9), Step: 60e9})
	if len(rows) != 2 {
		t.Fatalf("%d rows stored, want the 2 good windows", len(rows))
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
	if err := s.WriteWithState(ctx, nil, []StateRow{{Key: []byte("k"), Value: []byte("v")}}, nil); err != nil {
		t.Fatal(err)
	}
	if rows := query(t, s, Query{Metric: "http.requests", From: t0, To: t0.Add(60e9), Step: 60e9}); len(rows) != 1 {
		t.Fatalf("%d rows after the migration, want 1", len(rows))
	}
}
