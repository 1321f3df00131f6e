package store

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/metric"
)

// seriesRoutes lists the http.route of every series row of http.requests.
func seriesRoutes(t *testing.T, s *Store) string {
	t.Helper()
	rows, err := s.db.Query(`SELECT attrs FROM series WHERE name = 'http.requests' ORDER BY attrs`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return strings.Join(out, " ")
}

// TestExpiredSeriesDeleted: a series whose points (and exemplars) left
// every tier's keep loses its series row at the next daily sweep in
// Maintain; a series with data in any tier keeps it; a deleted series that
// comes back is stored and read again (its row is added anew). A sweep
// runs at most once a day.
func TestExpiredSeriesDeleted(t *testing.T) {
	c := &clock{t: t0}
	s := open(t, t.TempDir(), c, Tier{time.Minute, 3 * time.Hour}, Tier{time.Hour, 10 * time.Hour})
	ctx := context.Background()
	for m := range 120 {
		old := counter("/old", 1)
		old.Exemplars = []metric.Exemplar{{TraceID: [16]byte{1, byte(m)}, Value: 1, Time: t0.Add(time.Duration(m) * time.Minute)}}
		write(t, s, win(t0.Add(time.Duration(m)*time.Minute), 0, old, counter("/live", 1)))
	}
	c.set(t0.Add(3 * time.Hour))
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	const both = `{"http.route":"/live"} {"http.route":"/old"}`
	if got := seriesRoutes(t, s); got != both {
		t.Fatalf("series after the first sweep: %s, want both", got)
	}
	// /live goes on (a point every few hours keeps it in some tier); /old
	// has been silent since 2h.
	for _, h := range []time.Duration{6, 12, 20, 26} {
		write(t, s, win(t0.Add(h*time.Hour), 0, counter("/live", 1)))
	}
	c.set(t0.Add(24 * time.Hour))
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	if got := seriesRoutes(t, s); got != both {
		t.Errorf("series swept again 21 h after the last sweep: %s", got)
	}
	c.set(t0.Add(27 * time.Hour))
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	if got, want := seriesRoutes(t, s), `{"http.route":"/live"}`; got != want {
		t.Errorf("series after /old left every tier: %s, want %s", got, want)
	}
	ms, err := s.Metrics(ctx)
	if err != nil || len(ms) != 1 || ms[0].Series != 1 {
		t.Errorf("metrics listed: %+v, %v; want http.requests with 1 series", ms, err)
	}
	// /old comes back.
	at := t0.Add(27*time.Hour + time.Minute)
	write(t, s, win(at, 0, counter("/old", 5)))
	rows := query(t, s, Query{Metric: "http.requests", Where: map[string]string{"http.route": "/old"}, From: at, To: at.Add(time.Minute)})
	if len(rows) != 1 || rows[0].Agg.Sum != 5 {
		t.Errorf("a series written again after its row was deleted reads back as %+v, want one row of 5", rows)
	}
}

// TestExpiredSeriesWrittenDuringSweep: a series listed as unreferenced by
// the sweep's first step but written again before its second step (a
// window of a series back from a long silence) keeps its row.
func TestExpiredSeriesWrittenDuringSweep(t *testing.T) {
	c := &clock{t: t0}
	s := open(t, t.TempDir(), c, Tier{time.Minute, time.Hour})
	ctx := context.Background()
	write(t, s, win(t0, 0, counter("/back", 1), counter("/gone", 1)))
	c.set(t0.Add(26 * time.Hour))
	at := t0.Add(26 * time.Hour)
	seriesSweepHook = func() { write(t, s, win(at, 0, counter("/back", 7))) }
	defer func() { seriesSweepHook = nil }()
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	if got, want := seriesRoutes(t, s), `{"http.route":"/back"}`; got != want {
		t.Errorf("series after the sweep: %s, want %s", got, want)
	}
	rows := query(t, s, Query{Metric: "http.requests", From: at, To: at.Add(time.Minute)})
	if len(rows) != 1 || rows[0].Agg.Sum != 7 {
		t.Errorf("the window written during the sweep reads back as %+v", rows)
	}
}

// TestUnreferencedSQLPlan: each NOT IN of the sweep is one scan building a
// set (a list subquery), not a scan of the table per series.
func TestUnreferencedSQLPlan(t *testing.T) {
	c := &clock{t: t0}
	s := open(t, t.TempDir(), c, Tier{time.Minute, time.Hour})
	rows, err := s.db.Query(`EXPLAIN QUERY PLAN ` + unreferencedSQL)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	p := strings.Join(plan, "\n")
	if strings.Contains(p, "CORRELATED") || strings.Count(p, "LIST SUBQUERY") != 3 {
		t.Errorf("plan:\n%s\nwant three uncorrelated list subqueries", p)
	}
}

// BenchmarkUnreferencedSeries: the sweep's first step (the long one, run
// without the writer lock) over 5,000 series with 10 chunks of 1,000 bytes
// each and a window of head rows: it reads the chunks table whole, so its
// cost grows with the store's size (reported per MB of chunk payload).
//
//	go test ./agent/store -run '^$' -bench UnreferencedSeries -benchtime=3x
func BenchmarkUnreferencedSeries(b *testing.B) {
	c := &clock{t: t0}
	s, err := Open(b.TempDir(), Options{Now: c.now, Tiers: []Tier{{time.Minute, 14 * 24 * time.Hour}}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	const series, chunks, size = 5_000, 10, 1_000
	blob := make([]byte, size)
	tx, err := s.db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	ins := func(q string) *sql.Stmt {
		st, err := tx.Prepare(q)
		if err != nil {
			b.Fatal(err)
		}
		return st
	}
	insSeries := ins(`INSERT INTO series(id, name, kind, unit, description, resource, attrs) VALUES(?, 'm', 1, '', '', '{}', '{}')`)
	insChunk := ins(`INSERT INTO chunks(tier, start, series, data) VALUES(0, ?, ?, ?)`)
	insHead := ins(`INSERT INTO head(tier, start, series, rev, data) VALUES(0, 72000, ?, 0, x'00')`)
	for i := range series {
		id := int64(i) + 1
		if _, err := insSeries.Exec(id); err != nil {
			b.Fatal(err)
		}
		if i%10 == 0 { // one in ten series has no data left
			continue
		}
		for k := range chunks {
			blob[0] = byte(k)
			if _, err := insChunk.Exec(int64(k)*7200, id, blob); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := insHead.Exec(id); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	mb := float64(series*9/10*chunks*size) / 1e6
	n := 0
	for b.Loop() {
		ids, err := s.unreferencedSeries(ctx)
		if err != nil || len(ids) != series/10 {
			b.Fatalf("%d unreferenced, %v; want %d", len(ids), err, series/10)
		}
		n++
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1e3/float64(n)/mb, "ms/MB")
}
