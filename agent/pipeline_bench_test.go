package agent

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// BenchmarkConsume measures the pipeline's cost per data point for a scrape
// of 2,000 cumulative counter series and 100 cumulative histogram series
// (the steady state: every series known, rules cached), and of the benchmark
// report's 105,000 series. ns/op and allocs/op are per batch; the ns/point
// metrics divide by the series in the batch.
func BenchmarkConsume(b *testing.B) {
	for _, tc := range []struct {
		name            string
		counters, hists int
		rules           []RuleConfig
		durable         bool // baselines saved with each window (discarded here)
		delta           bool // delta series (journalled when durable)
	}{
		{name: "2000c+100h/no-rules", counters: 2000, hists: 100},
		{name: "2000c+100h/durable", counters: 2000, hists: 100, durable: true},
		{name: "2000c+100h/delta", counters: 2000, hists: 100, delta: true},
		{name: "2000c+100h/delta-journal", counters: 2000, hists: 100, delta: true, durable: true},
		{name: "2000c/no-rules", counters: 2000},
		{name: "100h/no-rules", hists: 100},
		// The benchmark report's load (50 targets × 2,100 series) in one
		// batch: the raw-series state no longer fits the CPU caches.
		{name: "100000c+5000h/durable", counters: 100000, hists: 5000, durable: true},
		{name: "2000c+100h/rules", counters: 2000, hists: 100, rules: []RuleConfig{
			{ReplacePattern: &ReplacePatternRule{Attribute: "http.route", Pattern: "_rsc=[a-z0-9]{5}", Replacement: "_rsc=*****"}},
			{DeleteAttribute: &DeleteAttributeRule{Key: "instance"}},
			{MaxSeries: &MaxSeriesRule{Metric: "*", Limit: 5000}},
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			counters, hists := tc.counters, tc.hists
			now := t0
			set := Settings{Now: func() time.Time { return now }, StartTime: t0}
			if tc.durable {
				set.OnWindowState = func(*metric.Window, StateChange) error { return nil }
				set.Journal = b.TempDir()
			}
			temporality := metric.Cumulative
			if tc.delta {
				temporality = metric.Delta
			}
			p, err := NewPipeline(PipelineConfig{Window: time.Minute, Lateness: 5 * time.Minute, Rules: tc.rules}, set)
			if err != nil {
				b.Fatal(err)
			}
			res := attrsOf("service.name", "app", "instance", "10.0.0.1:3000")
			batch := metric.Batch{Source: "app", Series: make([]metric.Series, 0, counters+hists)}
			for i := range counters {
				batch.Series = append(batch.Series, metric.Series{Name: fmt.Sprintf("http_requests_total_%d", i%50), Kind: metric.Counter,
					Temporality: temporality, Resource: res,
					Attrs:  attrsOf("http.route", fmt.Sprintf("/api/v1/items/%d", i), "code", "200", "method", "GET"),
					Points: []metric.Point{{}}})
			}
			// Cumulative histograms: each scrape's histogram is the previous
			// plus a few observations (sources hand over fresh histograms).
			cum := make([]*histogram.Histogram, hists)
			for i := range hists {
				cum[i] = histogram.New(160, 20)
				for j := range 200 {
					cum[i].Record(0.001 * float64(j+1))
				}
				batch.Series = append(batch.Series, metric.Series{Name: "http.server.request.duration", Kind: metric.Histogram,
					Temporality: temporality, Resource: res,
					Attrs:  attrsOf("http.route", fmt.Sprintf("/r/%d", i), "http.response.status_code", "200"),
					Points: []metric.Point{{}}})
			}
			step := func(n int) {
				now = t0.Add(time.Duration(n) * 5 * time.Second)
				for i := range counters {
					batch.Series[i].Points[0] = metric.Point{Time: now, Value: float64(n * (i + 1))}
				}
				for i := range hists {
					cum[i].Record(0.05 * float64(n%7+1))
					batch.Series[counters+i].Points[0] = metric.Point{Time: now, Hist: cum[i].Clone()}
				}
			}
			ctx := context.Background()
			step(1)
			if err := p.Consume(ctx, batch); err != nil { // first sight: baselines
				b.Fatal(err)
			}
			b.ReportAllocs()
			var elapsed, cpu, emitCPU time.Duration
			n := 1
			for b.Loop() {
				n++
				b.StopTimer()
				step(n)
				if n%12 == 0 {
					c0 := cpuTime()
					p.tick(now) // windows close as in production
					emitCPU += cpuTime() - c0
				}
				b.StartTimer()
				start, cpu0 := time.Now(), cpuTime()
				if err := p.Consume(ctx, batch); err != nil {
					b.Fatal(err)
				}
				elapsed += time.Since(start)
				cpu += cpuTime() - cpu0
			}
			b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N)/float64(counters+hists), "ns/point")
			// CPU time (user+system of the process, so GC included) is
			// steadier than wall time on a shared machine.
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/float64(counters+hists), "cpu-ns/point")
			// Emitting the windows (compaction, rendering, and with
			// durable the baselines' encoding), outside the timed Consume
			// calls, per point consumed.
			b.ReportMetric(float64(emitCPU.Nanoseconds())/float64(b.N)/float64(counters+hists), "emit-cpu-ns/point")
		})
	}
}

// BenchmarkRetainedMemory reports the heap the pipeline keeps per series in
// steady state: 10 targets × 2,100 cumulative counter series scraped every
// 15 s for 7 minutes, so the current window and the emitted windows still
// within the default 5 min lateness are held. Run with -benchtime=1x; the
// figure is bytes/series (heap after GC, minus the heap before).
func BenchmarkRetainedMemory(b *testing.B) {
	const targets, perTarget = 10, 2100
	for b.Loop() {
		now := t0
		p, err := NewPipeline(PipelineConfig{Window: time.Minute, Lateness: 5 * time.Minute},
			Settings{Now: func() time.Time { return now }, StartTime: t0})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		batches := counterBatches(targets, perTarget, "10.0.0.%d:3000")
		var maxTick time.Duration
		var maxHold float64
		for step := range 7 * 4 {
			now = t0.Add(time.Duration(step) * 15 * time.Second)
			for _, bt := range batches {
				for i := range bt.Series {
					// Fresh strings each scrape, as a parser produces them:
					// the pipeline must not keep the first scrape's alive.
					bt.Series[i].Attrs = attrsOf("http.route", fmt.Sprintf("/api/v1/items/%d", i), "code", strconv.Itoa(200))
					bt.Series[i].Points[0] = metric.Point{Time: now, Value: float64(step * i)}
				}
				if err := p.Consume(context.Background(), bt); err != nil {
					b.Fatal(err)
				}
			}
			tickStart := time.Now()
			p.tick(now)
			maxTick = max(maxTick, time.Since(tickStart))
			maxHold = max(maxHold, metricValue(p.m.lockHold))
		}
		batches = nil // only the pipeline's own state is measured
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(targets*perTarget), "B/series")
		b.ReportMetric(float64(len(p.windows)), "windows")
		// The longest tick: emitting a 21,000-series window (p.mu is held
		// for the compaction and rendering, not for OnWindow).
		b.ReportMetric(float64(maxTick.Microseconds())/1000, "max-tick-ms")
		b.ReportMetric(maxHold*1000, "max-lock-ms")
		runtime.KeepAlive(p)
	}
}

// cpuTime returns the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkEmitWindow measures closing one window of 100,000 cumulative
// counter series (50 targets × 2,000, one scrape per window), with the
// baselines saved (durable) or not: B/op and allocs/op are what the
// emission allocates (compaction, rendering, the baselines' marks and
// encoding; the points' Consume calls are outside the timer), lock-ms how
// long it held the pipeline lock, cpu-ms the process CPU time of the
// emission. The callee keeps nothing.
func BenchmarkEmitWindow(b *testing.B) {
	const targets, perTarget = 50, 2000
	for _, durable := range []bool{false, true} {
		b.Run(fmt.Sprintf("100k/durable=%v", durable), func(b *testing.B) {
			now := t0
			set := Settings{Now: func() time.Time { return now }, StartTime: t0}
			if durable {
				set.OnWindowState = func(*metric.Window, StateChange) error { return nil }
			}
			p, err := NewPipeline(PipelineConfig{Window: time.Minute, Lateness: 2 * time.Minute}, set)
			if err != nil {
				b.Fatal(err)
			}
			batches := counterBatches(targets, perTarget, "10.0.%d.1:3000")
			n := 0
			fill := func() {
				n++
				now = t0.Add(time.Duration(n)*time.Minute + 30*time.Second)
				for _, bt := range batches {
					for i := range bt.Series {
						bt.Series[i].Points[0] = metric.Point{Time: now, Value: float64(n * (i + 1))}
					}
					if err := p.Consume(context.Background(), bt); err != nil {
						b.Fatal(err)
					}
				}
				now = now.Add(40 * time.Second) // past the window's end and grace
			}
			fill() // baselines
			p.tick(now)
			var lock float64
			var cpu time.Duration
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				fill()
				b.StartTimer()
				c0 := cpuTime()
				p.tick(now)
				cpu += cpuTime() - c0
				lock += metricValue(p.m.lockHold)
			}
			b.ReportMetric(lock*1000/float64(b.N), "lock-ms")
			// Process CPU time (GC included): steadier than ns/op on a
			// shared machine.
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms")
		})
	}
}

// counterBatches is one scrape of targets × perTarget cumulative counters
// (50 names, a route each), the instance address from instanceFmt and the
// target's index; the points' values are left for the caller to set.
func counterBatches(targets, perTarget int, instanceFmt string) []metric.Batch {
	batches := make([]metric.Batch, targets)
	for tgt := range batches {
		res := attrsOf("service.name", "app", "service.instance.id", fmt.Sprintf(instanceFmt, tgt))
		bt := metric.Batch{Source: "app"}
		for i := range perTarget {
			bt.Series = append(bt.Series, metric.Series{Name: fmt.Sprintf("http_requests_total_%d", i%50), Kind: metric.Counter,
				Temporality: metric.Cumulative, Resource: res,
				Attrs:  attrsOf("http.route", fmt.Sprintf("/api/v1/items/%d", i), "code", "200"),
				Points: []metric.Point{{}}})
		}
		batches[tgt] = bt
	}
	return batches
}
