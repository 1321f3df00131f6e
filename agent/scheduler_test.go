package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/metric"
	"github.com/sabakiio/sabaki/sources"
)

type fakeSource struct {
	name    string
	err     error
	block   time.Duration // Collect takes this long (or until ctx is done)
	mu      sync.Mutex
	ats     []time.Time
	running *atomic.Int32
	maxRun  *atomic.Int32
	closed  bool
}

func (f *fakeSource) Name() string { return f.name }

func (f *fakeSource) Collect(ctx context.Context, at time.Time) (metric.Batch, error) {
	f.mu.Lock()
	f.ats = append(f.ats, at)
	f.mu.Unlock()
	if f.running != nil {
		n := f.running.Add(1)
		defer f.running.Add(-1)
		for {
			m := f.maxRun.Load()
			if n <= m || f.maxRun.CompareAndSwap(m, n) {
				break
			}
		}
	}
	if f.block > 0 {
		select {
		case <-time.After(f.block):
		case <-ctx.Done():
			return metric.Batch{}, ctx.Err()
		}
	}
	b := metric.Batch{Series: []metric.Series{{Name: "up", Kind: metric.Gauge, Points: []metric.Point{{Time: at, Value: 1}}}}}
	return b, f.err
}

func (f *fakeSource) Close() error { f.closed = true; return nil }

type batchSink struct {
	mu      sync.Mutex
	batches []metric.Batch
}

func (s *batchSink) Consume(_ context.Context, b metric.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, b)
	return nil
}

func runScheduler(t *testing.T, entries []ScheduledSource, sink metric.Sink, set SchedulerSettings, d time.Duration) (*Scheduler, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	set.Registerer = reg
	s, err := NewScheduler(entries, sink, set)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	time.Sleep(d)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return s, reg
}

func TestSchedulerAlignedTicksWithStableJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &fakeSource{name: "app"}
		sink := &batchSink{}
		interval := 10 * time.Second
		runScheduler(t, []ScheduledSource{{Source: src, Interval: interval}}, sink, SchedulerSettings{}, 35*time.Second)
		off := Offset("app", interval)
		if off != Offset("app", interval) || off == Offset("db", interval) {
			t.Errorf("offset not stable per name: %s", off)
		}
		if len(src.ats) < 3 {
			t.Fatalf("collected %d times in 35s", len(src.ats))
		}
		for i, at := range src.ats {
			if (at.UnixNano()-int64(off))%int64(interval) != 0 {
				t.Errorf("tick %d at %s is not aligned to offset %s", i, at, off)
			}
			if i > 0 && at.Sub(src.ats[i-1]) != interval {
				t.Errorf("ticks %s apart", at.Sub(src.ats[i-1]))
			}
		}
		if len(sink.batches) != len(src.ats) || sink.batches[0].Source != "app" {
			t.Errorf("%d batches for %d collections; source %q", len(sink.batches), len(src.ats), sink.batches[0].Source)
		}
		if !src.closed {
			t.Error("source not closed after Run")
		}
	})
}

func TestSchedulerTimeoutPartialAndLogging(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := &bytes.Buffer{}
		slow := &fakeSource{name: "slow", block: time.Hour}
		partial := &fakeSource{name: "partial", err: &sources.PartialError{Failed: 1, Err: errors.New("target 2 down")}}
		sink := &batchSink{}
		s, _ := runScheduler(t, []ScheduledSource{
			{Source: slow, Interval: time.Second, Timeout: 200 * time.Millisecond},
			{Source: partial, Interval: time.Second},
		}, sink, SchedulerSettings{Logger: slog.New(slog.NewTextHandler(logs, nil)), LogEvery: 10 * time.Second}, 25*time.Second)

		if got := metricValue(s.errors.WithLabelValues("slow")); got < 20 {
			t.Errorf("slow errors = %v, want one per collection", got)
		}
		if got := metricValue(s.success.WithLabelValues("slow")); got != 0 {
			t.Errorf("slow success = %v", got)
		}
		// Partial failures keep their data.
		n := 0
		for _, b := range sink.batches {
			if b.Source == "partial" {
				n++
			}
			if b.Source == "slow" {
				t.Error("a timed-out collection reached the pipeline")
			}
		}
		if n < 20 {
			t.Errorf("%d partial batches kept", n)
		}
		if got := metricValue(s.success.WithLabelValues("partial")); got != 1 {
			t.Errorf("partial success = %v", got)
		}
		// ~25 failures each: one line at once, then one per 10s.
		for _, src := range []string{"slow", "partial"} {
			lines := 0
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, "source="+src) {
					lines++
				}
			}
			if lines < 2 || lines > 4 {
				t.Errorf("%s: %d log lines for ~25 failures, want 1 + one per 10s\n%s", src, lines, logs)
			}
		}
		if !strings.Contains(logs.String(), "timed out after 200ms") {
			t.Errorf("timeout not named in logs:\n%s", logs)
		}
	})
}

func TestSchedulerBoundedConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var running, maxRun atomic.Int32
		var entries []ScheduledSource
		for _, n := range []string{"a", "b", "c", "d"} {
			entries = append(entries, ScheduledSource{Source: &fakeSource{name: n, block: 3 * time.Second, running: &running, maxRun: &maxRun}, Interval: 5 * time.Second})
		}
		runScheduler(t, entries, &batchSink{}, SchedulerSettings{MaxConcurrent: 2}, 30*time.Second)
		if m := maxRun.Load(); m != 2 {
			t.Errorf("max concurrent collections = %d, want 2", m)
		}
	})
}

func TestNewSchedulerRejects(t *testing.T) {
	for _, entries := range [][]ScheduledSource{
		{{Source: &fakeSource{name: "a"}, Interval: 0}},
		{{Source: &fakeSource{name: "a"}, Interval: time.Second}, {Source: &fakeSource{name: "a"}, Interval: time.Second}},
		{{Interval: time.Second}},
	} {
		if _, err := NewScheduler(entries, &batchSink{}, SchedulerSettings{}); err == nil {
			t.Errorf("NewScheduler accepted %+v", entries)
		}
	}
}

// The scheduler feeding a real pipeline under synctest: windows close on
// time with the scraped data.
func TestSchedulerIntoPipeline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var wins []*metric.Window
		p, err := NewPipeline(PipelineConfig{Window: 10 * time.Second, Lateness: time.Minute}, Settings{
			OnWindow: func(w *metric.Window) { mu.Lock(); wins = append(wins, w); mu.Unlock() },
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go p.Run(ctx)
		runScheduler(t, []ScheduledSource{{Source: &fakeSource{name: "app"}, Interval: 5 * time.Second}}, p, SchedulerSettings{}, 62*time.Second)
		cancel()
		mu.Lock()
		defer mu.Unlock()
		if len(wins) < 5 {
			t.Fatalf("%d windows in 62s of 10s windows", len(wins))
		}
		for _, w := range wins {
			if w.Start.UnixNano()%int64(10*time.Second) != 0 || len(w.Series) != 1 || w.Series[0].Count != 2 {
				t.Errorf("window %s: %d series, %+v", w.Start, len(w.Series), w.Series)
			}
		}
	})
}

// The collect-duration histogram is native as well as classic, so the self
// source stores it with exponential buckets instead of the classic bounds.
func TestSchedulerDurationIsNative(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &fakeSource{name: "app"}
		_, reg := runScheduler(t, []ScheduledSource{{Source: src, Interval: 10 * time.Second}}, &batchSink{}, SchedulerSettings{}, 25*time.Second)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "sabaki_source_collect_duration_seconds" {
				continue
			}
			h := mf.GetMetric()[0].GetHistogram()
			if h.Schema == nil || len(h.GetBucket()) == 0 || h.GetSampleCount() == 0 {
				t.Fatalf("want native (schema set) and classic buckets with samples, got schema %v, %d buckets, %d samples", h.Schema, len(h.GetBucket()), h.GetSampleCount())
			}
			return
		}
		t.Fatal("sabaki_source_collect_duration_seconds not registered")
	})
}
