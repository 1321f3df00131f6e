package capacity

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/agent/capacity/synth"
	"github.com/sabakiio/sabaki/agent/store"
)

// benchOptions is one year of 1-hour rollups of 1,000 series: the app
// latency histogram of 10 services × 100 routes.
func benchOptions(days int) synth.Options {
	o := synth.Options{Start: time.Date(2025, 9, 1, 0, 0, 0, 0, time.UTC), Days: days, MinuteDays: 0, AppOnly: true}
	for i := range 10 {
		s := synth.Service{Name: fmt.Sprintf("svc%02d", i), Base: 10 + float64(i), Growth: 0.05}
		for r := range 100 {
			s.Routes = append(s.Routes, fmt.Sprintf("/r%03d", r))
		}
		o.Services = append(o.Services, s)
	}
	return o
}

// BenchmarkBuildYear builds the report over one year of hourly rollups of
// 1,000 histogram series (8.76 million stored histograms; the store answers
// the last day from its 1-minute tier, which the generator leaves empty, so
// 364 days are read). The store is generated once (about 10 minutes on a
// loaded 2-core machine) and kept in the temp directory for later runs;
// CAPACITY_BENCH_DAYS=30 makes a smaller one, and CAPACITY_BENCH_LATENCIES=160
// dense hours (160 distinct latencies an hour instead of 20), and
// CAPACITY_BENCH_RATE=20 twenty times the requests (~12,000 an hour a
// route, which no longer fit a packed chunk when dense). The directory
// name carries a version: bump it when the stored format changes.
//
// Build reads the latency histogram twice, at the same time: the hourly
// tier once for every hour's count and each day's busiest hour with its
// buckets (store.Query.Peak), and the days from the daily tier (Rollups).
//
//	go test ./agent/capacity -run '^$' -bench 'BuildYear|BuildDefault' -benchtime 3x -benchmem -count 2
//
// Measured on 2026-11-26 on the idle 2-core machine: build 1.68-1.94 s/op,
// 1.07 GB and 1.64 M allocations per op, against 3.24-3.48 s/op, 2.35 GB
// and 3.10 M for the session's starting tree (three reads, the hourly tier
// twice) in the same session, and 171 s/op the session before (every hourly
// histogram decoded). The one-shot command over the same store takes
// 1.52-1.61 s (README, capacity).
func BenchmarkBuildYear(b *testing.B) {
	days := 365
	if s := os.Getenv("CAPACITY_BENCH_DAYS"); s != "" {
		fmt.Sscan(s, &days)
	}
	o := benchOptions(days)
	name := fmt.Sprintf("sabaki-capacity-bench-v4-%d", days)
	if s := os.Getenv("CAPACITY_BENCH_LATENCIES"); s != "" {
		fmt.Sscan(s, &o.LatencyPoints)
		name += fmt.Sprintf("-dense%d", o.LatencyPoints)
	}
	if s := os.Getenv("CAPACITY_BENCH_RATE"); s != "" {
		var k float64
		fmt.Sscan(s, &k)
		for i := range o.Services {
			o.Services[i].Base *= k
			o.Services[i].Growth *= k
		}
		name += "-rate" + s
	}
	dir := filepath.Join(os.TempDir(), name, "store")
	if _, err := os.Stat(filepath.Join(dir, "done")); err != nil {
		os.RemoveAll(dir)
		start := time.Now()
		if err := synth.Generate(context.Background(), dir, o); err != nil {
			b.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "done"), nil, 0o600)
		b.Logf("generated %d days × 1,000 series in %s", days, time.Since(start))
	}
	end := o.End()
	st, err := store.Open(dir, store.Options{ReadOnly: true, Tiers: synth.Tiers(o), Now: func() time.Time { return end }})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	opts := Options{From: o.Start, To: end, GroupBy: []string{"service"}, MinuteFrom: end}
	b.Run("build", func(b *testing.B) {
		for b.Loop() {
			if _, err := Build(context.Background(), st, opts); err != nil {
				b.Fatal(err)
			}
		}
	})
	// The store's share: the two reads Build makes of the latency
	// histogram, grouped by service (the hourly counts with each day's
	// busiest hour, and the days from the daily rollups), one after the
	// other and each over the whole year (Build splits each in two halves
	// and runs all four at once).
	keys := []string{"service.name", "service_name"}
	b.Run("store_query", func(b *testing.B) {
		for b.Loop() {
			for _, q := range []store.Query{
				{Metric: "http.server.request.duration", GroupBy: keys, From: o.Start, To: end, Step: time.Hour, CountsOnly: true, Peak: 24 * time.Hour},
				{Metric: "http.server.request.duration", GroupBy: keys, From: o.Start, To: end, Step: 24 * time.Hour, Rollups: true},
			} {
				rows, err := st.Query(context.Background(), q)
				if err != nil || len(rows) == 0 {
					b.Fatalf("%d rows, %v", len(rows), err)
				}
			}
		}
	})
}

// BenchmarkBuildDefault builds the golden tests' report: 91 days of two
// services (hourly, the last 2 days in minutes), 16 series.
func BenchmarkBuildDefault(b *testing.B) {
	st := openStore(b)
	opts := defaultOptions()
	for b.Loop() {
		if _, err := Build(context.Background(), st, opts); err != nil {
			b.Fatal(err)
		}
	}
}
