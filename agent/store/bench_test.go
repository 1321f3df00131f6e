package store

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// Synthetic series for the benchmarks. The mix for a Prometheus-style
// agent (DESIGN §7: 50 targets × 2,100 series) is assumed to be 60 %
// counters, 35 % gauges and 5 % histograms (classic histograms become one
// exponential-histogram series each).
//
//   - counters: per-window deltas, Poisson-like around a per-series rate
//     drawn log-uniformly from 1 to 1,100 per minute; 30 % are error-style
//     counters that are almost always 0.
//   - gauges, 4 samples per window (15 s scrapes): 40 % small integers
//     (goroutines, instances: a random walk), 30 % large integers (bytes),
//     30 % full-precision floats (a CPU-seconds-like random walk).
//   - histograms: log-normal latencies (median 30–300 ms, σ 0.4–1.0),
//     ~200 observations a minute (Poisson), recorded in seconds at full
//     float precision.
type gen struct {
	r     *rand.Rand
	kind  metric.Kind
	sub   int
	rate  float64
	level float64
	mu    float64
	sigma float64
	attrs metric.Attrs
}

func newGen(r *rand.Rand, kind metric.Kind, i int) *gen {
	g := &gen{r: r, kind: kind, attrs: metric.NewAttrs(map[string]string{"i": fmt.Sprint(i), "route": fmt.Sprintf("/api/v1/things/%d", i%50)})}
	switch kind {
	case metric.Counter:
		if r.Float64() < 0.3 {
			g.rate = 0.02
		} else {
			g.rate = math.Exp(r.Float64() * 7)
		}
	case metric.Gauge:
		switch x := r.Float64(); {
		case x < 0.4:
			g.sub, g.level = 0, float64(5+r.IntN(200))
		case x < 0.7:
			g.sub, g.level = 1, float64(1e8+r.IntN(1e9))
		default:
			g.sub, g.level = 2, r.Float64()*1000
		}
	case metric.Histogram:
		g.mu = math.Log(0.03 + r.Float64()*0.27)
		g.sigma = 0.4 + r.Float64()*0.6
	}
	return g
}

func poisson(r *rand.Rand, l float64) float64 {
	if l < 30 {
		k, p, lim := 0.0, 1.0, math.Exp(-l)
		for {
			p *= r.Float64()
			if p <= lim {
				return k
			}
			k++
		}
	}
	return math.Max(0, math.Round(l+math.Sqrt(l)*r.NormFloat64()))
}

func (g *gen) next() metric.Aggregate {
	a := metric.Aggregate{Name: "bench." + g.kind.String(), Kind: g.kind, Resource: res, Attrs: g.attrs}
	switch g.kind {
	case metric.Counter:
		a.Sum, a.Count = poisson(g.r, g.rate), 4
	case metric.Gauge:
		a.Min, a.Max = math.Inf(1), math.Inf(-1)
		for range 4 {
			switch g.sub {
			case 0:
				g.level = math.Max(0, g.level+float64(g.r.IntN(5)-2))
			case 1:
				g.level = math.Max(0, g.level+float64(g.r.IntN(1<<20)-1<<19))
			case 2:
				g.level += g.r.Float64() * 0.25
			}
			a.Sum += g.level
			a.Count++
			a.Last = g.level
			a.Min, a.Max = math.Min(a.Min, g.level), math.Max(a.Max, g.level)
		}
	case metric.Histogram:
		h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		for range int(poisson(g.r, 200)) {
			h.Record(math.Exp(g.mu + g.sigma*g.r.NormFloat64()))
		}
		a.Hist = h
	}
	return a
}

func mixGens(r *rand.Rand, n int) []*gen {
	gens := make([]*gen, n)
	for i := range gens {
		k := metric.Counter
		switch x := i % 20; {
		case x == 0:
			k = metric.Histogram
		case x < 8:
			k = metric.Gauge
		}
		gens[i] = newGen(r, k, i)
	}
	return gens
}

// BenchmarkWrite measures Write throughput: one op is one window of 10,000
// series in the assumed mix.
//
//	go test ./agent/store -run '^$' -bench Write -benchtime=20x -count=3
func BenchmarkWrite(b *testing.B) {
	const n = 10_000
	r := rand.New(rand.NewPCG(1, 1))
	gens := mixGens(r, n)
	windows := make([]*metric.Window, 4) // pre-generated, reused with new starts
	for i := range windows {
		w := &metric.Window{Duration: time.Minute}
		for _, g := range gens {
			w.Series = append(w.Series, g.next())
		}
		windows[i] = w
	}
	s, err := Open(b.TempDir(), Options{Now: func() time.Time { return t0 }})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w := windows[i%len(windows)]
		w.Start = t0.Add(time.Duration(i) * time.Minute)
		if err := s.Write(ctx, w); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "series-windows/s")
	// The machine is shared: CPU time says what a dedicated core would do.
	b.ReportMetric(float64(n*b.N)/(cpuTime()-cpu0).Seconds(), "series-windows/cpu-s")
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchScale multiplies the series counts of BenchmarkDiskBytesPerPoint:
// 64 KiB pages leave a fixed slack per table that small runs overstate.
var benchScale = flag.Int("store.bench-scale", 1, "multiply the series of the disk-size benchmarks")

// BenchmarkDiskBytesPerPoint writes 6 hours of 1-minute windows (3 chunks) for series of
// one kind, compacts, VACUUMs and reports the file size per stored point
// (everything included: chunk payload, SQLite pages, series rows, indexes),
// minus an empty store. It does the work once whatever b.N is:
//
//	go test ./agent/store -run '^$' -bench DiskBytes -benchtime=1x -store.bench-scale=4
func BenchmarkDiskBytesPerPoint(b *testing.B) {
	for _, tc := range []struct {
		name    string
		kind    metric.Kind
		sub     int // gauge subtype, -1 for the mix
		series  int
		windows int
		values  int // float values per point, for B/value
	}{
		{"counter", metric.Counter, -1, 300, 360, 1},
		{"gauge_mix", metric.Gauge, -1, 300, 360, 4},
		{"gauge_small_int", metric.Gauge, 0, 200, 360, 4},
		{"gauge_large_int", metric.Gauge, 1, 200, 360, 4},
		{"gauge_float", metric.Gauge, 2, 200, 360, 4},
		{"histogram_latency", metric.Histogram, -1, 100, 360, 1},
		{"agent_mix", 0, -1, 600, 360, 1},
		{"agent_mix_1h_tier", 0, -1, 200, 240, 1},
	} {
		tc.series *= max(1, *benchScale)
		b.Run(tc.name, func(b *testing.B) {
			r := rand.New(rand.NewPCG(2, 2))
			var gens []*gen
			if tc.kind == 0 {
				gens = mixGens(r, tc.series)
			} else {
				for i := range tc.series {
					g := newGen(r, tc.kind, i)
					if tc.sub >= 0 && g.sub != tc.sub {
						g = newGen(r, tc.kind, i)
						g.sub = tc.sub
						g.level = []float64{50, 5e8, 10}[tc.sub]
					}
					gens = append(gens, g)
				}
			}
			per := 1
			if strings.HasSuffix(tc.name, "_1h_tier") {
				per = 60 // each point is the rollup of 60 minutes
			}
			size, payload, rows := diskSize(b, gens, tc.windows, per)
			points := float64(tc.series * tc.windows)
			b.ReportMetric(float64(size)/points, "B/point")
			b.ReportMetric(float64(size)/points/float64(tc.values), "B/value")
			b.ReportMetric(float64(payload)/points, "payload-B/point")
			b.ReportMetric(float64(size-payload)/float64(rows), "overhead-B/chunk")
		})
	}
}

// diskSize writes windows for gens from t0, compacts everything and returns
// the VACUUMed file size beyond an empty store, the chunk payload bytes and
// the number of chunk rows.
func diskSize(tb testing.TB, gens []*gen, windows, per int) (size, payload, rows int64) {
	dir := tb.TempDir()
	now := t0
	res := time.Duration(per) * time.Minute
	s, err := Open(dir, Options{Now: func() time.Time { return now }, Grace: time.Minute, Tiers: []Tier{{res, 10000 * 24 * time.Hour}}})
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	empty := fileSize(tb, s)
	for m := range windows {
		w := &metric.Window{Start: t0.Add(time.Duration(m) * res), Duration: res}
		for _, g := range gens {
			a := g.next()
			for range per - 1 {
				mergeAgg(&a, g.next())
			}
			w.Series = append(w.Series, a)
		}
		if err := s.Write(ctx, w); err != nil {
			tb.Fatal(err)
		}
		if m%120 == 119 {
			now = w.Start.Add(res + 20*time.Minute)
			if err := s.compactTier(ctx, 0, now.Unix()); err != nil {
				tb.Fatal(err)
			}
		}
	}
	now = t0.Add(time.Duration(windows+120)*res + 3*time.Hour)
	if err := s.compactTier(ctx, 0, now.Unix()); err != nil {
		tb.Fatal(err)
	}
	if err := s.db.QueryRow(`SELECT coalesce(sum(length(data)), 0), count(*) FROM chunks`).Scan(&payload, &rows); err != nil {
		tb.Fatal(err)
	}
	return fileSize(tb, s) - empty, payload, rows
}

// mergeAgg folds b into a as a rollup does.
func mergeAgg(a *metric.Aggregate, b metric.Aggregate) {
	a.Sum += b.Sum
	a.Count += b.Count
	a.Last = b.Last
	a.Min, a.Max = math.Min(a.Min, b.Min), math.Max(a.Max, b.Max)
	if a.Hist != nil {
		a.Hist.Merge(b.Hist)
	}
}

func fileSize(tb testing.TB, s *Store) int64 {
	if _, err := s.db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		tb.Fatal(err)
	}
	if _, err := s.db.Exec(`VACUUM`); err != nil {
		tb.Fatal(err)
	}
	if _, err := s.db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		tb.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(s.dir, dbFile))
	if err != nil {
		tb.Fatal(err)
	}
	return st.Size()
}

// BenchmarkRollupHistogramBytes reports the chunk payload per point of
// rolled-up latency histograms: an hour (60 merged minutes, ~12,000
// observations) and six hours (a stand-in for a day: beyond a few thousand
// observations the bucket counts only grow by a bit or two), in 120-point
// chunks, as the 1 h and 1 d tiers store them.
//
//	go test ./agent/store -run '^$' -bench RollupHistogramBytes -benchtime=1x
func BenchmarkRollupHistogramBytes(b *testing.B) {
	for _, per := range []int{60, 360} {
		b.Run(fmt.Sprintf("minutes_per_point=%d", per), func(b *testing.B) {
			r := rand.New(rand.NewPCG(3, 3))
			g := newGen(r, metric.Histogram, 0)
			var total int
			series := 5
			if per > 60 {
				series = 2
			}
			for range series {
				pts := make([]point, 120)
				for i := range pts {
					h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
					for range per {
						h.Merge(g.next().Hist)
					}
					pts[i] = point{start: int64(i) * int64(per) * 60, h: toHData(h)}
				}
				total += len(encodeChunk(nil, metric.Histogram, int64(per)*60, pts))
			}
			b.ReportMetric(float64(total)/float64(series*120), "payload-B/point")
		})
	}
}

var queryBench struct {
	once sync.Once
	dir  string
	s    *Store
	err  error
}

// TestMain removes the store BenchmarkQuery shares between its runs.
func TestMain(m *testing.M) {
	code := m.Run()
	if queryBench.s != nil {
		queryBench.s.Close()
	}
	if queryBench.dir != "" {
		os.RemoveAll(queryBench.dir)
	}
	if rollupBench.s != nil {
		rollupBench.s.Close()
	}
	if rollupBench.dir != "" {
		os.RemoveAll(rollupBench.dir)
	}
	os.Exit(code)
}

// BenchmarkQuery measures a day of 1-minute latency histograms for 50 series
// (72,000 stored windows, 22 h in chunks and 2 h in the head), merged into
// one row per hour: the work behind `sabaki query -metric M -group-by
// service.name -from 24h -step 1h`.
//
//	go test ./agent/store -run '^$' -bench Query -benchtime=5x
func BenchmarkQuery(b *testing.B) {
	queryBench.once.Do(func() {
		dir, err := os.MkdirTemp("", "sabaki-query-bench")
		if err != nil {
			queryBench.err = err
			return
		}
		queryBench.dir = dir
		now := t0.Add(24 * time.Hour)
		s, err := Open(dir, Options{Now: func() time.Time { return now }})
		if err != nil {
			queryBench.err = err
			return
		}
		queryBench.s = s
		r := rand.New(rand.NewPCG(4, 4))
		gens := make([]*gen, 50)
		for i := range gens {
			gens[i] = newGen(r, metric.Histogram, i)
		}
		ctx := context.Background()
		for m := range 1440 {
			w := &metric.Window{Start: t0.Add(time.Duration(m) * time.Minute), Duration: time.Minute}
			for _, g := range gens {
				w.Series = append(w.Series, g.next())
			}
			if err := s.Write(ctx, w); err != nil {
				queryBench.err = err
				return
			}
		}
		queryBench.err = s.compactTier(ctx, 0, now.Unix())
	})
	if queryBench.err != nil {
		b.Fatal(queryBench.err)
	}
	s := queryBench.s
	q := Query{Metric: "bench.histogram", GroupBy: []string{"service.name"}, From: t0, To: t0.Add(24 * time.Hour), Step: time.Hour}
	b.ResetTimer()
	for range b.N {
		rows, err := s.Query(context.Background(), q)
		if err != nil || len(rows) != 24 {
			b.Fatalf("%d rows, %v", len(rows), err)
		}
		if _, ok, err := Stat(rows[0], "p95"); !ok || err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(50*1440*b.N)/b.Elapsed().Seconds(), "windows/s")
}

var rollupBench struct {
	once sync.Once
	dir  string
	s    *Store
	err  error
}

const (
	rollupSeries = 100
	rollupPoints = 60 * 24 // 60 days of 1-hour points
)

// BenchmarkQueryRollup measures the export path over rolled-up history:
// 100 latency-histogram series × 60 days of 1-hour points (144,000 stored
// points, all in closed chunks), read back one row per series and hour, as
// an export of the 1 h tier does (all), counts only (counts), and one hour
// a day (one_hour_a_day: a day's peak hour, as the capacity report reads
// it). ns/point and cpu-ns/point are per stored point in the range.
//
//	go test ./agent/store -run '^$' -bench QueryRollup -benchmem -count 3
func BenchmarkQueryRollup(b *testing.B) {
	rollupBench.once.Do(func() {
		rollupBench.dir, rollupBench.s, rollupBench.err = buildRollupStore()
	})
	if rollupBench.err != nil {
		b.Fatal(rollupBench.err)
	}
	s := rollupBench.s
	q := Query{Metric: "bench.histogram", From: t0, To: t0.Add(rollupPoints * time.Hour), Step: time.Hour}
	// The reads a long report makes: counts only, and one hour a day with
	// its histograms (Query.Steps).
	counts := q
	counts.CountsOnly = true
	daily := q
	daily.Steps = func(map[string]string) []time.Time {
		var ts []time.Time
		for d := range rollupPoints / 24 {
			ts = append(ts, t0.Add(time.Duration(d*24+14)*time.Hour))
		}
		return ts
	}
	for _, c := range []struct {
		name string
		q    Query
		rows int
	}{{"all", q, rollupSeries * rollupPoints}, {"counts", counts, rollupSeries * rollupPoints}, {"one_hour_a_day", daily, rollupSeries * rollupPoints / 24}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				rows, err := s.Query(context.Background(), c.q)
				if err != nil || len(rows) != c.rows {
					b.Fatalf("%d rows, %v", len(rows), err)
				}
			}
			pts := float64(rollupSeries * rollupPoints * b.N)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/pts, "ns/point")
			// The machine is shared: CPU time (GC included) is steadier than wall time.
			b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/pts, "cpu-ns/point")
		})
	}
}

// buildRollupStore writes the store BenchmarkQueryRollup reads: each hourly
// point stands for ~12,000 observations, drawn as a few hundred weighted
// samples (RecordN) so that setup stays fast.
func buildRollupStore() (string, *Store, error) {
	dir, err := os.MkdirTemp("", "sabaki-rollup-bench")
	if err != nil {
		return "", nil, err
	}
	now := t0
	s, err := Open(dir, Options{Now: func() time.Time { return now }, Grace: time.Minute, Tiers: []Tier{{time.Hour, 10000 * 24 * time.Hour}}})
	if err != nil {
		return dir, nil, err
	}
	r := rand.New(rand.NewPCG(5, 5))
	gens := make([]*gen, rollupSeries)
	for i := range gens {
		gens[i] = newGen(r, metric.Histogram, i)
	}
	ctx := context.Background()
	for m := range rollupPoints {
		w := &metric.Window{Start: t0.Add(time.Duration(m) * time.Hour), Duration: time.Hour}
		for _, g := range gens {
			h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
			for range 300 {
				h.RecordN(math.Exp(g.mu+g.sigma*g.r.NormFloat64()), uint64(1+g.r.IntN(80)))
			}
			w.Series = append(w.Series, metric.Aggregate{Name: "bench.histogram", Kind: metric.Histogram, Resource: res, Attrs: g.attrs, Hist: h})
		}
		if err := s.Write(ctx, w); err != nil {
			return dir, s, err
		}
		if m%240 == 239 {
			now = w.Start.Add(2 * time.Hour)
			if err := s.compactTier(ctx, 0, now.Unix()); err != nil {
				return dir, s, err
			}
		}
	}
	// Close every chunk, the last one included.
	now = t0.Add(rollupPoints*time.Hour + 30*24*time.Hour)
	return dir, s, s.compactTier(ctx, 0, now.Unix())
}
