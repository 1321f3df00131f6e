package store

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
	"github.com/sabakiio/sabaki/sources"
)

var t0 = time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)

// clock is a settable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func open(t *testing.T, dir string, c *clock, tiers ...Tier) *Store {
	t.Helper()
	opts := Options{Now: c.now, Grace: time.Minute}
	opts.Tiers = tiers
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var res = metric.NewAttrs(map[string]string{"service.name": "toitta"})

func counter(route string, v float64) metric.Aggregate {
	return metric.Aggregate{Name: "http.requests", Unit: "{request}", Kind: metric.Counter, Resource: res,
		Attrs: metric.NewAttrs(map[string]string{"http.route": route}), Sum: v, Count: 1}
}

func gauge(instance string, vs ...float64) metric.Aggregate {
	a := metric.Aggregate{Name: "instances", Unit: "1", Kind: metric.Gauge, Resource: res,
		Attrs: metric.NewAttrs(map[string]string{"instance": instance}), Min: math.Inf(1), Max: math.Inf(-1)}
	for _, v := range vs {
		a.Sum += v
		a.Count++
		a.Last = v
		a.Min, a.Max = math.Min(a.Min, v), math.Max(a.Max, v)
	}
	return a
}

func hist(route string, vs ...float64) metric.Aggregate {
	h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
	for _, v := range vs {
		h.Record(v)
	}
	return metric.Aggregate{Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram, Resource: res,
		Attrs: metric.NewAttrs(map[string]string{"http.route": route}), Hist: h, ErrorCount: 1, ErrorTracked: true}
}

func win(start time.Time, rev int, aggs ...metric.Aggregate) *metric.Window {
	return &metric.Window{Start: start, Duration: time.Minute, Revision: rev, Series: aggs}
}

func write(t *testing.T, s *Store, w *metric.Window) {
	t.Helper()
	if err := s.Write(context.Background(), w); err != nil {
		t.Fatal(err)
	}
}

func query(t *testing.T, s *Store, q Query) []Row {
	t.Helper()
	rows, err := s.Query(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	return rows
}

func stat(t *testing.T, r Row, name string) float64 {
	t.Helper()
	v, ok, err := Stat(r, name)
	if err != nil || !ok {
		t.Fatalf("Stat(%s) = %v, %v, %v", name, v, ok, err)
	}
	return v
}

func TestWriteQueryRoundTrip(t *testing.T) {
	c := &clock{t: t0.Add(10 * time.Minute)}
	s := open(t, t.TempDir(), c)
	ctx := context.Background()
	for i := range 3 {
		at := t0.Add(time.Duration(i) * time.Minute)
		w := win(at, 0,
			counter("/a", float64(10+i)), counter("/b", 1),
			gauge("i1", 1, float64(2+i)), gauge("i2", 3),
			hist("/a", 0.1, 0.2, float64(i+1)),
		)
		w.Series[4].Exemplars = []metric.Exemplar{{TraceID: [16]byte{1, 2, byte(i)}, SpanID: [8]byte{3}, Value: float64(i + 1), Time: at.Add(time.Second)}}
		write(t, s, w)
	}
	q := Query{Metric: "http.requests", From: t0, To: c.now()}
	rows := query(t, s, q)
	if len(rows) != 6 {
		t.Fatalf("%d rows, want 6: %+v", len(rows), rows)
	}
	if got := rows[0].Attributes; got["http.route"] != "/a" || got["service.name"] != "toitta" || len(got) != 2 {
		t.Errorf("attributes = %v, want route and service.name", got)
	}
	if !rows[1].Time.Equal(t0.Add(time.Minute)) || stat(t, rows[1], "sum") != 11 {
		t.Errorf("row 1 = %v %v", rows[1].Time, rows[1].Agg.Sum)
	}
	// Step 1h, where, group-by.
	q.Step = time.Hour
	q.Where = map[string]string{"http.route": "/a"}
	rows = query(t, s, q)
	if len(rows) != 1 || stat(t, rows[0], "sum") != 33 || !rows[0].Time.Equal(t0) {
		t.Fatalf("where /a, 1h: %+v", rows)
	}
	if r := stat(t, rows[0], "rate"); math.Abs(r-33.0/3600) > 1e-12 {
		t.Errorf("rate = %v", r)
	}
	q.Where = map[string]string{"service.name": "toitta"} // resource attribute
	q.GroupBy = []string{"service.name"}
	rows = query(t, s, q)
	if len(rows) != 1 || stat(t, rows[0], "sum") != 36 || len(rows[0].Attributes) != 1 {
		t.Fatalf("group by service: %+v", rows)
	}
	// Gauges: last sums across series, min/max/mean over everything.
	rows = query(t, s, Query{Metric: "instances", GroupBy: []string{"service.name"}, From: t0, To: c.now(), Step: time.Hour})
	if len(rows) != 1 {
		t.Fatalf("gauge rows %+v", rows)
	}
	if g := rows[0]; stat(t, g, "last") != 4+3 || stat(t, g, "min") != 1 || stat(t, g, "max") != 4 || stat(t, g, "count") != 9 {
		t.Errorf("gauge agg = %+v", g.Agg)
	}
	// Histograms: exact merge of the three minutes.
	rows = query(t, s, Query{Metric: "http.server.request.duration", From: t0, To: c.now(), Step: time.Hour})
	want := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
	for i := range 3 {
		for _, v := range []float64{0.1, 0.2, float64(i + 1)} {
			want.Record(v)
		}
	}
	if len(rows) != 1 || stat(t, rows[0], "count") != 9 || stat(t, rows[0], "max") != 3 || stat(t, rows[0], "p50") != want.Quantile(0.5) {
		t.Fatalf("hist rows %+v", rows)
	}
	if er := stat(t, rows[0], "error_ratio"); er != 3.0/9 {
		t.Errorf("error_ratio = %v", er)
	}
	ex, err := s.Exemplars(ctx, Query{Metric: "http.server.request.duration", From: t0, To: c.now()})
	if err != nil || len(ex) != 3 || ex[2].Exemplar.Value != 3 || ex[2].TraceIDHex() != "01020200000000000000000000000000" || ex[2].Attributes["http.route"] != "/a" {
		t.Fatalf("exemplars = %+v, %v", ex, err)
	}
	ms, err := s.Metrics(ctx)
	if err != nil || len(ms) != 3 || ms[0] != (MetricInfo{Name: "http.requests", Kind: metric.Counter, Unit: "{request}", Series: 2}) {
		t.Fatalf("metrics = %+v, %v", ms, err)
	}
	// The same answers after compaction into chunks.
	before := query(t, s, Query{Metric: "http.requests", From: t0, To: c.now()})
	c.set(t0.Add(3 * time.Hour))
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	var head, chunks int
	s.db.QueryRow(`SELECT (SELECT count(*) FROM head WHERE tier = 0), (SELECT count(*) FROM chunks WHERE tier = 0)`).Scan(&head, &chunks)
	if head != 0 || chunks != 5 {
		t.Errorf("after Maintain: %d head rows, %d chunks; want 0, 5", head, chunks)
	}
	after := query(t, s, Query{Metric: "http.requests", From: t0, To: c.now()})
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("compaction changed the answer:\n%v\n%v", before, after)
	}
}

func TestReemittedWindowReplaces(t *testing.T) {
	c := &clock{t: t0.Add(5 * time.Minute)}
	s := open(t, t.TempDir(), c)
	ctx := context.Background()
	sum := func() float64 {
		rows := query(t, s, Query{Metric: "http.requests", From: t0, To: t0.Add(time.Minute)})
		if len(rows) != 1 {
			t.Fatalf("rows %+v", rows)
		}
		return rows[0].Agg.Sum
	}
	write(t, s, win(t0, 0, counter("/a", 1)))
	write(t, s, win(t0, 1, counter("/a", 5)))
	if got := sum(); got != 5 {
		t.Errorf("after revision 1: sum %v, want 5", got)
	}
	write(t, s, win(t0, 0, counter("/a", 9))) // stale revision arriving late
	if got := sum(); got != 5 {
		t.Errorf("after stale revision 0: sum %v, want 5", got)
	}
	// After compaction, a later revision still replaces (chunk re-encoded).
	c.set(t0.Add(3 * time.Hour))
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	h := hist("/a", 1)
	h.Exemplars = []metric.Exemplar{{TraceID: [16]byte{9}, Value: 1}}
	write(t, s, win(t0, 2, counter("/a", 7), h))
	if got := sum(); got != 7 {
		t.Errorf("late revision after compaction: sum %v, want 7", got)
	}
	h.Exemplars = []metric.Exemplar{{TraceID: [16]byte{8}, Value: 2}}
	write(t, s, win(t0, 3, counter("/a", 7), h))
	if ex, _ := s.Exemplars(ctx, Query{Metric: h.Name, From: t0, To: c.now()}); len(ex) != 1 || ex[0].Exemplar.TraceID[0] != 8 {
		t.Errorf("exemplars after re-emission = %+v, want only the new one", ex)
	}
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	if got := sum(); got != 7 {
		t.Errorf("after recompaction: sum %v, want 7", got)
	}
}

// TestRollupExact checks that an hour in the 1 h tier holds exactly the
// merge of its minutes: the 1 h p95 is the p95 of all the hour's
// observations, not a mean of minute p95s.
func TestRollupExact(t *testing.T) {
	c := &clock{t: t0}
	tiers := []Tier{{time.Minute, 3 * time.Hour}, {time.Hour, 2 * 24 * time.Hour}, {24 * time.Hour, 30 * 24 * time.Hour}}
	s := open(t, t.TempDir(), c, tiers...)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(7, 8))
	direct := map[int]*histogram.Histogram{} // hour → every observation recorded once
	var counterSum [3]float64
	var gmin, gmax [3]float64
	for h := range 3 {
		direct[h] = histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		gmin[h], gmax[h] = math.Inf(1), math.Inf(-1)
	}
	for m := range 180 {
		hour := m / 60
		vs := make([]float64, 150+r.IntN(100))
		for i := range vs {
			vs[i] = math.Exp(r.NormFloat64()*0.8 - 2)
			direct[hour].Record(vs[i])
		}
		g := float64(r.IntN(50))
		gmin[hour], gmax[hour] = math.Min(gmin[hour], g), math.Max(gmax[hour], g)
		counterSum[hour] += float64(m)
		write(t, s, win(t0.Add(time.Duration(m)*time.Minute), 0, hist("/a", vs...), counter("/a", float64(m)), gauge("i1", g)))
		c.set(t0.Add(time.Duration(m+1) * time.Minute))
		if m%17 == 0 {
			if err := s.Maintain(ctx, c.now()); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Far enough on that the minutes are gone: answers come from the 1 h tier.
	c.set(t0.Add(7 * time.Hour))
	for range 2 { // idempotent
		if err := s.Maintain(ctx, c.now()); err != nil {
			t.Fatal(err)
		}
	}
	var minutes int
	s.db.QueryRow(`SELECT count(*) FROM chunks WHERE tier = 0`).Scan(&minutes)
	if minutes != 0 {
		t.Fatalf("%d first-tier chunks left after retention", minutes)
	}
	rows := query(t, s, Query{Metric: "http.server.request.duration", From: t0, To: c.now(), Step: time.Hour})
	if len(rows) != 3 {
		t.Fatalf("%d hourly rows, want 3", len(rows))
	}
	for h, row := range rows {
		d := direct[h]
		for _, q := range []float64{0.5, 0.95, 0.99} {
			if got, want := row.Agg.Hist.Quantile(q), d.Quantile(q); got != want {
				t.Errorf("hour %d p%v = %v, want %v (all observations)", h, q*100, got, want)
			}
		}
		if row.Agg.Count != d.Count() || row.Agg.Min != d.Min() || row.Agg.Max != d.Max() || math.Abs(row.Agg.Sum-d.Sum()) > 1e-9*d.Sum() {
			t.Errorf("hour %d: count/min/max/sum %v %v %v %v, want %v %v %v %v", h, row.Agg.Count, row.Agg.Min, row.Agg.Max, row.Agg.Sum, d.Count(), d.Min(), d.Max(), d.Sum())
		}
		if row.Agg.ErrorCount != 60 {
			t.Errorf("hour %d: %d errors, want 60", h, row.Agg.ErrorCount)
		}
	}
	crow := query(t, s, Query{Metric: "http.requests", From: t0, To: c.now(), Step: time.Hour})
	grow := query(t, s, Query{Metric: "instances", From: t0, To: c.now(), Step: time.Hour})
	for h := range 3 {
		if crow[h].Agg.Sum != counterSum[h] {
			t.Errorf("hour %d counter sum %v, want %v", h, crow[h].Agg.Sum, counterSum[h])
		}
		if grow[h].Agg.Min != gmin[h] || grow[h].Agg.Max != gmax[h] || grow[h].Agg.Count != 60 {
			t.Errorf("hour %d gauge %+v, want min %v max %v count 60", h, grow[h].Agg, gmin[h], gmax[h])
		}
	}
	// Days roll up too, once the day has closed.
	c.set(t0.Add(24*time.Hour + time.Hour))
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	id := seriesID("http.requests", metric.Counter, res, counter("/a", 0).Attrs)
	day, err := s.scan(ctx, s.db, 2, t0.Unix(), t0.Unix()+1, selection{ids: []int64{id}})
	if err != nil || day[id] == nil {
		t.Fatalf("daily rollup missing: %v", err)
	}
	if pts := day[id].pts; len(pts) != 1 || pts[0].sum != counterSum[0]+counterSum[1]+counterSum[2] {
		t.Errorf("daily point = %+v", pts)
	}
}

func TestLateWindowRedoesRollup(t *testing.T) {
	c := &clock{t: t0.Add(2 * time.Hour)}
	s := open(t, t.TempDir(), c, Tier{time.Minute, 14 * 24 * time.Hour}, Tier{time.Hour, 400 * 24 * time.Hour})
	ctx := context.Background()
	write(t, s, win(t0, 0, counter("/a", 1)))
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	write(t, s, win(t0.Add(30*time.Minute), 0, counter("/a", 2))) // after the hour was rolled up
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	var data []byte
	if err := s.db.QueryRow(`SELECT data FROM head WHERE tier = 1 AND start = ?`, t0.Unix()).Scan(&data); err != nil {
		t.Fatal(err)
	}
	if _, pts, _ := decodeChunk(data); len(pts) != 1 || pts[0].sum != 3 {
		t.Errorf("hour after late window = %+v, want sum 3", pts)
	}
}

func TestRetention(t *testing.T) {
	c := &clock{t: t0}
	s := open(t, t.TempDir(), c, Tier{time.Minute, 3 * time.Hour}, Tier{time.Hour, 10 * time.Hour})
	ctx := context.Background()
	for m := range 120 {
		write(t, s, win(t0.Add(time.Duration(m)*time.Minute), 0, counter("/a", 1)))
	}
	count := func(q string) int {
		var n int
		if err := s.db.QueryRow(q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	c.set(t0.Add(3 * time.Hour))
	s.Maintain(ctx, c.now())
	if n := count(`SELECT count(*) FROM chunks WHERE tier = 0`); n != 1 {
		t.Errorf("%d first-tier chunks, want 1", n)
	}
	c.set(t0.Add(5*time.Hour + time.Second)) // chunk [0h, 2h) is past 3h keep
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	if n := count(`SELECT count(*) FROM chunks WHERE tier = 0`) + count(`SELECT count(*) FROM head WHERE tier = 0`); n != 0 {
		t.Errorf("%d first-tier rows after keep, want 0", n)
	}
	rows := query(t, s, Query{Metric: "http.requests", From: t0, To: c.now(), Step: time.Hour})
	if len(rows) != 2 || rows[0].Agg.Sum != 60 || rows[1].Agg.Sum != 60 {
		t.Errorf("hourly rows after minutes expired: %+v", rows)
	}
	c.set(t0.Add(24 * time.Hour))
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	if rows := query(t, s, Query{Metric: "http.requests", From: t0, To: c.now(), Step: time.Hour}); len(rows) != 0 {
		t.Errorf("rows after every keep: %+v", rows)
	}
}

func TestStateStore(t *testing.T) {
	s := open(t, t.TempDir(), &clock{t: t0})
	ctx := context.Background()
	if _, ok, err := s.GetState(ctx, "gcp/cursor"); ok || err != nil {
		t.Fatalf("missing key: %v %v", ok, err)
	}
	for _, v := range []string{"a", "bb"} {
		if err := s.PutState(ctx, "gcp/cursor", []byte(v)); err != nil {
			t.Fatal(err)
		}
		if got, ok, err := s.GetState(ctx, "gcp/cursor"); string(got) != v || !ok || err != nil {
			t.Errorf("GetState = %q %v %v, want %q", got, ok, err, v)
		}
	}
}

func TestSecondWriterRejected(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: t0.Add(time.Hour)}
	s := open(t, dir, c)
	write(t, s, win(t0, 0, counter("/a", 1)))
	_, err := Open(dir, Options{})
	if err == nil || !strings.Contains(err.Error(), "in use by another sabaki process (pid "+strconv.Itoa(os.Getpid())+")") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second writer: err = %v", err)
	}
	r, err := Open(dir, Options{ReadOnly: true, Now: c.now})
	if err != nil {
		t.Fatalf("reader beside writer: %v", err)
	}
	defer r.Close()
	if rows := query(t, r, Query{Metric: "http.requests", From: t0, To: c.now()}); len(rows) != 1 {
		t.Errorf("reader sees %d rows", len(rows))
	}
	if err := r.Write(context.Background(), win(t0, 0)); err == nil {
		t.Error("read-only store accepted a write")
	}
}

func TestReadOnlyMissingStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nope")
	_, err := Open(dir, Options{ReadOnly: true})
	if err == nil || !strings.Contains(err.Error(), "no sabaki store in "+dir) {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("read-only open created %s", dir)
	}
}

func TestPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "store")
	s := open(t, dir, &clock{t: t0})
	write(t, s, win(t0, 0, counter("/a", 1)))
	check := func(path string, want os.FileMode) {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", filepath.Base(path), st.Mode().Perm(), want)
		}
	}
	check(dir, 0o700)
	for _, f := range []string{dbFile, dbFile + "-wal", dbFile + "-shm", lockFile} {
		check(filepath.Join(dir, f), 0o600)
	}
}

func TestForeignAndCorruptFiles(t *testing.T) {
	t.Run("not sqlite", func(t *testing.T) {
		dir := t.TempDir()
		junk := []byte(strings.Repeat("this is not a database\n", 100))
		os.WriteFile(filepath.Join(dir, dbFile), junk, 0o600)
		_, err := Open(dir, Options{})
		if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, dbFile)+" is not a sabaki store") {
			t.Fatalf("err = %v", err)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, dbFile)); string(b) != string(junk) {
			t.Error("the foreign file was modified")
		}
	})
	t.Run("other sqlite application", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, dbFile)
		db, err := sql.Open("sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('keep me')`); err != nil {
			t.Fatal(err)
		}
		db.Close()
		for _, ro := range []bool{false, true} {
			_, err = Open(dir, Options{ReadOnly: ro})
			if err == nil || !strings.Contains(err.Error(), path+" is not a sabaki store") {
				t.Fatalf("read-only %v: err = %v", ro, err)
			}
		}
		db, _ = sql.Open("sqlite", path)
		defer db.Close()
		var body string
		if err := db.QueryRow(`SELECT body FROM notes`).Scan(&body); err != nil || body != "keep me" {
			t.Errorf("foreign database changed: %q %v", body, err)
		}
	})
	t.Run("corrupt store", func(t *testing.T) {
		dir := t.TempDir()
		c := &clock{t: t0.Add(time.Hour)}
		s, err := Open(dir, Options{Now: c.now})
		if err != nil {
			t.Fatal(err)
		}
		for m := range 200 {
			var aggs []metric.Aggregate
			for i := range 20 {
				aggs = append(aggs, counter(fmt.Sprintf("/r%d", i), float64(m)))
			}
			write(t, s, win(t0.Add(time.Duration(m)*time.Minute), 0, aggs...))
		}
		s.Close()
		path := filepath.Join(dir, dbFile)
		b, _ := os.ReadFile(path)
		for i := 4096; i < len(b); i++ { // every page but the header page
			b[i] = byte(i * 7)
		}
		os.WriteFile(path, b, 0o600)
		s, err = Open(dir, Options{Now: c.now})
		if err == nil {
			_, err = s.Query(context.Background(), Query{Metric: "http.requests", From: t0, To: c.now()})
			s.Close()
		}
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "corrupt") {
			t.Fatalf("err = %v, want a corruption error naming %s", err, path)
		}
		if after, _ := os.ReadFile(path); len(after) != len(b) {
			t.Errorf("corrupt store was rewritten (%d → %d bytes)", len(b), len(after))
		}
	})
	t.Run("newer schema", func(t *testing.T) {
		dir := t.TempDir()
		s := open(t, dir, &clock{t: t0})
		s.db.Exec(`UPDATE meta SET value = '99' WHERE key = 'schema_version'`)
		s.Close()
		_, err := Open(dir, Options{})
		if err == nil || !strings.Contains(err.Error(), "newer sabaki") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestConcurrentReaderWhileWriting(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: t0.Add(3 * time.Hour)}
	s := open(t, dir, c)
	write(t, s, win(t0, 0, counter("/a", 1)))
	r, err := Open(dir, Options{ReadOnly: true, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() {
		for m := 1; m < 100; m++ {
			aggs := make([]metric.Aggregate, 0, 100)
			for i := range 100 {
				aggs = append(aggs, counter(fmt.Sprintf("/r%d", i), 1))
			}
			if err := s.Write(context.Background(), win(t0.Add(time.Duration(m)*time.Minute), 0, aggs...)); err != nil {
				errs <- err
				return
			}
			if m%50 == 0 {
				if err := s.Maintain(context.Background(), t0.Add(time.Duration(m)*time.Minute)); err != nil {
					errs <- err
					return
				}
			}
		}
	})
	wg.Go(func() {
		last := 0.0
		for range 15 {
			rows, err := r.Query(context.Background(), Query{Metric: "http.requests", GroupBy: []string{"service.name"}, From: t0, To: c.now(), Step: 24 * time.Hour})
			if err != nil {
				errs <- err
				return
			}
			if len(rows) == 1 {
				if rows[0].Agg.Sum < last {
					errs <- fmt.Errorf("reader went back in time: %v after %v", rows[0].Agg.Sum, last)
					return
				}
				last = rows[0].Agg.Sum
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	rows := query(t, r, Query{Metric: "http.requests", GroupBy: []string{"service.name"}, From: t0, To: c.now(), Step: 24 * time.Hour})
	if len(rows) != 1 || rows[0].Agg.Sum != 1+99*100 {
		t.Errorf("final sum %+v, want %d", rows, 1+99*100)
	}
}

// TestCrashSafety kills a writer process with SIGKILL after it committed
// windows (and without Maintain or Close) and checks everything is there on
// reopen, and that the dead writer's lock is gone.
func TestCrashSafety(t *testing.T) {
	if dir := os.Getenv("SABAKI_STORE_CRASH_DIR"); dir != "" {
		crashChild(dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashSafety$")
	cmd.Env = append(os.Environ(), "SABAKI_STORE_CRASH_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	written := false
	for sc.Scan() {
		if sc.Text() == "written" {
			written = true
			break
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if !written {
		t.Fatal("child did not write")
	}
	c := &clock{t: t0.Add(3 * time.Hour)}
	s := open(t, dir, c) // the lock died with the child
	rows := query(t, s, Query{Metric: "http.requests", GroupBy: []string{"service.name"}, From: t0, To: c.now(), Step: 24 * time.Hour})
	if len(rows) != 1 || rows[0].Agg.Sum != 30*10 {
		t.Fatalf("after kill -9: %+v, want sum 300", rows)
	}
	if err := s.Maintain(context.Background(), c.now()); err != nil {
		t.Fatal(err)
	}
}

func crashChild(dir string) {
	c := &clock{t: t0.Add(40 * time.Minute)}
	s, err := Open(dir, Options{Now: c.now})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for m := range 30 {
		var aggs []metric.Aggregate
		for i := range 10 {
			aggs = append(aggs, counter(fmt.Sprintf("/r%d", i), 1))
		}
		if err := s.Write(context.Background(), win(t0.Add(time.Duration(m)*time.Minute), 0, aggs...)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	fmt.Println("written")
	time.Sleep(time.Minute) // killed here
	os.Exit(3)
}

// TestBackfillOlderThanFirstTier: windows written for times the first tier
// no longer keeps (a backfill of 42 days) are rolled up before they expire,
// also when the store already rolled up later hours.
func TestBackfillOlderThanFirstTier(t *testing.T) {
	c := &clock{t: t0.Add(48 * time.Hour)}
	s := open(t, t.TempDir(), c, Tier{time.Minute, 3 * time.Hour}, Tier{time.Hour, 30 * 24 * time.Hour})
	ctx := context.Background()
	write(t, s, win(c.now().Add(-time.Hour).Truncate(time.Hour), 0, counter("/a", 5)))
	if err := s.Maintain(ctx, c.now()); err != nil { // rolls up to now
		t.Fatal(err)
	}
	for m := range 120 { // two days ago
		write(t, s, win(t0.Add(time.Duration(m)*time.Minute), 0, counter("/a", 1)))
	}
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	var n int
	s.db.QueryRow(`SELECT (SELECT count(*) FROM head WHERE tier = 0 AND start < ?) + (SELECT count(*) FROM chunks WHERE tier = 0 AND start < ?)`, t0.Add(2*time.Hour).Unix(), t0.Add(2*time.Hour).Unix()).Scan(&n)
	if n != 0 {
		t.Errorf("%d first-tier rows of the backfill left after Maintain", n)
	}
	rows := query(t, s, Query{Metric: "http.requests", From: t0, To: c.now(), Step: time.Hour})
	if len(rows) != 3 || rows[0].Agg.Sum != 60 || rows[1].Agg.Sum != 60 || rows[2].Agg.Sum != 5 {
		t.Errorf("rows = %+v, want 60, 60 (backfill, from the 1 h tier) and 5", rows)
	}
	// A window of the coarse tier's duration goes straight into it.
	if err := s.Write(ctx, &metric.Window{Start: t0.Add(5 * time.Hour), Duration: time.Hour, Series: []metric.Aggregate{counter("/a", 7)}}); err != nil {
		t.Fatal(err)
	}
	rows = query(t, s, Query{Metric: "http.requests", From: t0.Add(5 * time.Hour), To: t0.Add(6 * time.Hour), Step: time.Hour})
	if len(rows) != 1 || rows[0].Agg.Sum != 7 {
		t.Errorf("hourly window written directly: %+v", rows)
	}
	if err := s.Write(ctx, &metric.Window{Start: t0, Duration: 90 * time.Second}); err == nil {
		t.Error("a window matching no tier was accepted")
	}
	if err := s.Write(ctx, &metric.Window{Start: t0.Add(time.Second), Duration: time.Minute}); err == nil {
		t.Error("a misaligned window was accepted")
	}
}

// The store is the agent's sources.StateStore.
var _ sources.StateStore = (*Store)(nil)

// TestQueryPartial checks the reads a long report makes against a full
// query: CountsOnly, Steps (some steps of each group, buckets decoded only
// there) and Rollups (days from the daily tier), over hourly windows in
// closed packed chunks.
func TestQueryPartial(t *testing.T) {
	c := &clock{t: t0}
	tiers := []Tier{{time.Minute, 24 * time.Hour}, {time.Hour, 400 * 24 * time.Hour}, {24 * time.Hour, 5 * 365 * 24 * time.Hour}}
	s := open(t, t.TempDir(), c, tiers...)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(3, 9))
	const days = 6
	for h := range days * 24 {
		w := &metric.Window{Start: t0.Add(time.Duration(h) * time.Hour), Duration: time.Hour}
		for _, svc := range []string{"a", "b"} {
			for _, route := range []string{"/x", "/y", "/z"} {
				vs := make([]float64, 20+r.IntN(200))
				for i := range vs {
					vs[i] = math.Exp(r.NormFloat64()*0.7 - 2)
				}
				a := hist(route, vs...)
				a.Resource = metric.NewAttrs(map[string]string{"service.name": svc})
				a.ErrorCount = uint64(r.IntN(5))
				w.Series = append(w.Series, a)
			}
		}
		write(t, s, w)
	}
	c.set(t0.Add(12 * 24 * time.Hour))
	if err := s.Maintain(ctx, c.now()); err != nil {
		t.Fatal(err)
	}
	var heads, packed int
	s.db.QueryRow(`SELECT count(*) FROM head WHERE tier = 1`).Scan(&heads)
	s.db.QueryRow(`SELECT count(*) FROM chunks WHERE tier = 1 AND substr(data, 1, 1) = x'02'`).Scan(&packed)
	if heads != 0 || packed == 0 {
		t.Fatalf("%d head rows, %d packed hourly chunks: want all in packed chunks", heads, packed)
	}
	base := Query{Metric: "http.server.request.duration", GroupBy: []string{"service.name"}, From: t0, To: t0.Add(days * 24 * time.Hour), Step: time.Hour}
	full := query(t, s, base)
	if len(full) != 2*days*24 {
		t.Fatalf("%d rows, want %d", len(full), 2*days*24)
	}
	sameHist := func(a, b *histogram.Histogram) bool {
		if a == nil || b == nil {
			return a == b
		}
		x, y := a.Data(), b.Data()
		x.Sum, y.Sum = 0, 0
		return fmt.Sprint(x) == fmt.Sprint(y)
	}

	t.Run("counts only", func(t *testing.T) {
		q := base
		q.CountsOnly = true
		got := query(t, s, q)
		if len(got) != len(full) {
			t.Fatalf("%d rows, want %d", len(got), len(full))
		}
		for i, g := range got {
			f := full[i]
			if !g.Time.Equal(f.Time) || g.Attributes["service.name"] != f.Attributes["service.name"] || g.Agg.Count != f.Agg.Count ||
				g.Agg.ErrorCount != f.Agg.ErrorCount || !g.Agg.ErrorTracked || g.Agg.Hist != nil || g.Agg.Min != 0 || g.Agg.Max != 0 {
				t.Fatalf("row %d: %+v %+v, want %+v %+v", i, g.Time, g.Agg, f.Time, f.Agg)
			}
		}
	})

	t.Run("prefix too short", func(t *testing.T) {
		// A chunk prefix without all the count columns is fetched again whole.
		var ids []int64
		rows, _ := s.db.Query(`SELECT id FROM series ORDER BY id`)
		for rows.Next() {
			var id int64
			rows.Scan(&id)
			ids = append(ids, id)
		}
		rows.Close()
		counts := func(prefix int) map[int64]uint64 {
			out := map[int64]uint64{}
			err := s.stream(ctx, s.db, 1, t0.Unix(), t0.Unix()+days*86400, selection{ids: ids}, prefix,
				func(int64) decodeOptions { return decodeOptions{countsOnly: true} },
				func(id int64, kind metric.Kind, pts []point) error {
					for _, p := range pts {
						out[id] += p.count
					}
					return nil
				}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			return out
		}
		whole, short := counts(0), counts(24)
		if len(whole) != 6 || fmt.Sprint(whole) != fmt.Sprint(short) {
			t.Fatalf("prefix 24: %v, whole chunks: %v", short, whole)
		}
	})

	t.Run("steps", func(t *testing.T) {
		want := map[string][]time.Time{}
		for d := range days {
			want["a"] = append(want["a"], t0.Add(time.Duration(d*24+d+3)*time.Hour+17*time.Minute))
			want["b"] = append(want["b"], t0.Add(time.Duration(d*24+20-d)*time.Hour))
		}
		q := base
		q.Steps = func(g map[string]string) []time.Time { return want[g["service.name"]] }
		got := query(t, s, q)
		var exp []Row
		for _, f := range full {
			for _, w := range want[f.Attributes["service.name"]] {
				if w.Truncate(time.Hour).Equal(f.Time) {
					exp = append(exp, f)
				}
			}
		}
		if len(got) != len(exp) || len(got) != 2*days {
			t.Fatalf("%d rows, want %d", len(got), len(exp))
		}
		for i, g := range got {
			e := exp[i]
			if !g.Time.Equal(e.Time) || g.Agg.Count != e.Agg.Count || g.Agg.Min != e.Agg.Min || g.Agg.Max != e.Agg.Max || !sameHist(g.Agg.Hist, e.Agg.Hist) {
				t.Fatalf("row %d: %v %+v, want %v %+v", i, g.Time, g.Agg, e.Time, e.Agg)
			}
		}
	})

	t.Run("rollups", func(t *testing.T) {
		q := base
		q.Step = 24 * time.Hour
		hours := query(t, s, q)
		segs := s.rollupSegments(t0.Unix(), q.To.Unix(), 86400)
		if len(segs) != 1 || segs[0].tier != 2 {
			t.Fatalf("segments %+v, want the daily tier", segs)
		}
		q.Rollups = true
		got := query(t, s, q)
		if len(got) != len(hours) || len(got) != 2*days {
			t.Fatalf("%d rows, want %d", len(got), len(hours))
		}
		for i, g := range got {
			h := hours[i]
			if !g.Time.Equal(h.Time) || g.Agg.Count != h.Agg.Count || g.Agg.ErrorCount != h.Agg.ErrorCount || g.Agg.Min != h.Agg.Min || g.Agg.Max != h.Agg.Max ||
				math.Abs(g.Agg.Sum-h.Agg.Sum) > 1e-9*h.Agg.Sum || !sameHist(g.Agg.Hist, h.Agg.Hist) {
				t.Fatalf("day %d: %v %+v, want %v %+v", i, g.Time, g.Agg, h.Time, h.Agg)
			}
		}
		// A range ending inside a day reads that day from the hours.
		q.To = t0.Add(30 * time.Hour)
		if segs := s.rollupSegments(t0.Unix(), q.To.Unix(), 86400); len(segs) != 2 || segs[0].tier != 1 || segs[1].tier != 2 {
			t.Fatalf("segments %+v, want hours then days", segs)
		}
		part := query(t, s, q)
		if len(part) != 4 || part[1].Agg.Count >= hours[1].Agg.Count {
			t.Fatalf("partial day: %d rows", len(part))
		}
	})

	// Peak: the busiest hour of each group and day carries its whole
	// aggregate, every other hour counts only; the same as a CountsOnly
	// query and a Steps query of the busiest hours. Days with a head row
	// (a late window after Maintain) and a partial first day are read
	// again rather than from the chunk in memory.
	t.Run("peak", func(t *testing.T) {
		check := func(t *testing.T, q Query, full []Row) {
			t.Helper()
			pq := q
			pq.CountsOnly, pq.Peak = true, 24*time.Hour
			got := query(t, s, pq)
			if len(got) != len(full) {
				t.Fatalf("%d rows, want %d", len(got), len(full))
			}
			type key struct {
				svc string
				day int64
			}
			best := map[key]int{}
			for i, f := range full {
				k := key{f.Attributes["service.name"], f.Time.Unix() / 86400}
				if b, ok := best[k]; !ok || f.Agg.Count > full[b].Agg.Count {
					best[k] = i
				}
			}
			peaks := 0
			for i, g := range got {
				f := full[i]
				if !g.Time.Equal(f.Time) || g.Attributes["service.name"] != f.Attributes["service.name"] || g.Agg.Count != f.Agg.Count || g.Agg.ErrorCount != f.Agg.ErrorCount {
					t.Fatalf("row %d: %v %+v, want %v %+v", i, g.Time, g.Agg, f.Time, f.Agg)
				}
				if best[key{f.Attributes["service.name"], f.Time.Unix() / 86400}] != i {
					if g.Agg.Hist != nil {
						t.Fatalf("row %d (%v) is not its day's busiest hour but has a histogram", i, g.Time)
					}
					continue
				}
				peaks++
				if g.Agg.Hist == nil || g.Agg.Min != f.Agg.Min || g.Agg.Max != f.Agg.Max || !sameHist(g.Agg.Hist, f.Agg.Hist) {
					t.Fatalf("busiest hour %d (%v): %+v, want %+v", i, g.Time, g.Agg, f.Agg)
				}
			}
			if peaks != len(best) {
				t.Fatalf("%d busiest hours, want %d", peaks, len(best))
			}
		}
		t.Run("chunks", func(t *testing.T) { check(t, base, full) })
		t.Run("partial first day", func(t *testing.T) {
			q := base
			q.From = t0.Add(30 * time.Hour)
			check(t, q, query(t, s, q))
		})
		t.Run("head row", func(t *testing.T) {
			w := &metric.Window{Start: t0.Add(50 * time.Hour), Duration: time.Hour, Revision: 1}
			a := hist("/x", 0.1, 0.2, 0.3, 5, 5, 5, 5)
			a.Resource = metric.NewAttrs(map[string]string{"service.name": "a"})
			w.Series = append(w.Series, a)
			write(t, s, w)
			var heads int
			s.db.QueryRow(`SELECT count(*) FROM head WHERE tier = 1`).Scan(&heads)
			if heads == 0 {
				t.Fatal("the late window did not go to the head")
			}
			check(t, base, query(t, s, base))
		})
	})
}
