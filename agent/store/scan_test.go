package store

import (
	"bytes"
	"context"
	"database/sql"
	"testing"
	"time"
)

// TestRawBlobsOwned checks what stream relies on to keep chunks without
// copying them: the blob a row's sql.RawBytes points to is not reused by the
// driver for the next rows (modernc.org/sqlite copies every blob out of
// SQLite into a new slice).
func TestRawBlobsOwned(t *testing.T) {
	s := open(t, t.TempDir(), &clock{t: t0}, Tier{time.Minute, 24 * time.Hour})
	ctx := context.Background()
	want := [][]byte{bytes.Repeat([]byte{1}, 100), bytes.Repeat([]byte{2}, 100), bytes.Repeat([]byte{3}, 50)}
	for i, b := range want {
		if _, err := s.db.ExecContext(ctx, `INSERT INTO chunks (tier, start, series, data) VALUES (0, 0, ?, ?)`, i, b); err != nil {
			t.Fatal(err)
		}
	}
	var got [][]byte
	err := queryRawBlobs(ctx, s.db, `SELECT series, data FROM chunks WHERE tier = 0 ORDER BY series`, nil, func(_ int64, data sql.RawBytes) error {
		got = append(got, data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("blob %d is %v after the later rows were read, want %v: the driver reuses its memory, stream must copy", i, got[i], want[i])
		}
	}
}
