package agent

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/metric"
	"github.com/sabakiio/sabaki/sources"
)

// ScheduledSource is a pull source with its collection interval and timeout.
type ScheduledSource struct {
	Source   sources.Source
	Interval time.Duration
	// Timeout bounds one collection; 0 means the interval.
	Timeout time.Duration
}

// SchedulerSettings are the scheduler's collaborators.
type SchedulerSettings struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Now is the wall clock (time.Now when nil); the tick times handed to
	// Collect are computed from it. Timers use the time package, so tests
	// run the scheduler inside a testing/synctest bubble.
	Now func() time.Time
	// MaxConcurrent bounds the collections running at once (default 4).
	MaxConcurrent int
	// LogEvery is how often a failing source is logged at most (default 1m):
	// the first failure is logged at once, then one summary per period.
	LogEvery time.Duration
}

// Scheduler calls pull sources on their intervals and hands their batches to
// the pipeline.
//
// Ticks are aligned: a source with interval I and name N collects at the
// times t where (t − offset) mod I = 0, offset = FNV-1a(N) mod I. The offset
// is stable across restarts and spreads a fleet's sources over the interval
// instead of every agent hitting an API on the minute. A collection that
// overruns its interval skips the ticks it missed. Collect is never called
// concurrently for one source.
type Scheduler struct {
	entries []ScheduledSource
	sink    metric.Sink
	log     *slog.Logger
	now     func() time.Time
	sem     chan struct{}
	every   time.Duration

	duration *prometheus.HistogramVec
	success  *prometheus.GaugeVec
	series   *prometheus.GaugeVec
	errors   *prometheus.CounterVec
}

// NewScheduler checks the entries and registers the sabaki_source_* metrics.
func NewScheduler(entries []ScheduledSource, sink metric.Sink, set SchedulerSettings) (*Scheduler, error) {
	if set.Logger == nil {
		set.Logger = slog.New(slog.DiscardHandler)
	}
	if set.Now == nil {
		set.Now = time.Now
	}
	if set.Registerer == nil {
		set.Registerer = prometheus.NewRegistry()
	}
	if set.MaxConcurrent <= 0 {
		set.MaxConcurrent = 4
	}
	if set.LogEvery <= 0 {
		set.LogEvery = time.Minute
	}
	seen := map[string]bool{}
	for i, e := range entries {
		if e.Source == nil {
			return nil, fmt.Errorf("scheduler: source %d is nil", i)
		}
		name := e.Source.Name()
		if seen[name] {
			return nil, fmt.Errorf("scheduler: two sources are named %q; give each a distinct name", name)
		}
		seen[name] = true
		if e.Interval <= 0 {
			return nil, fmt.Errorf("scheduler: source %q: interval must be positive", name)
		}
		if e.Timeout <= 0 || e.Timeout > e.Interval {
			entries[i].Timeout = e.Interval
		}
	}
	s := &Scheduler{
		entries: entries, sink: sink, log: set.Logger, now: set.Now,
		sem: make(chan struct{}, set.MaxConcurrent), every: set.LogEvery,
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sabaki_source_collect_duration_seconds",
			Help:    "Duration of a pull source's collection.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
			// Also a native histogram: the self source stores it exactly
			// (the classic buckets alone put every sub-5 ms collection at
			// 5 ms), and /metrics keeps the classic form for scrapers.
			NativeHistogramBucketFactor:    1.1,
			NativeHistogramMaxBucketNumber: 160,
		}, []string{"source"}),
		success: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sabaki_source_collect_success",
			Help: "1 when the last collection of the source succeeded (fully or partially with data), else 0.",
		}, []string{"source"}),
		series: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sabaki_source_series",
			Help: "Series returned by the source's last collection.",
		}, []string{"source"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_source_collect_errors_total",
			Help: "Failed collections (including partial failures and batches the pipeline refused).",
		}, []string{"source"}),
	}
	for _, c := range []prometheus.Collector{s.duration, s.success, s.series, s.errors} {
		if err := set.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("scheduler: register metrics: %w", err)
		}
	}
	return s, nil
}

// Offset returns the stable phase of a source's ticks within its interval.
func Offset(name string, interval time.Duration) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(name))
	return time.Duration(h.Sum64() % uint64(interval))
}

// nextTick returns the first aligned tick strictly after now.
func nextTick(now time.Time, interval, offset time.Duration) time.Time {
	n := now.UnixNano() - int64(offset)
	next := (floorDiv(n, int64(interval)) + 1) * int64(interval)
	return time.Unix(0, next+int64(offset))
}

// Run collects until ctx is done, then waits for running collections to
// return (they see ctx cancelled) and closes sources that implement
// sources.Closer.
func (s *Scheduler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, e := range s.entries {
		wg.Go(func() { s.loop(ctx, e) })
	}
	wg.Wait()
	var errs []error
	for _, e := range s.entries {
		if c, ok := e.Source.(sources.Closer); ok {
			if err := c.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close source %q: %w", e.Source.Name(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// failLog rate-limits a source's failure logs.
type failLog struct {
	failing  bool
	failures int
	lastLog  time.Time
	lastErr  error
}

func (s *Scheduler) loop(ctx context.Context, e ScheduledSource) {
	name := e.Source.Name()
	off := Offset(name, e.Interval)
	log := s.log.With("source", name)
	var fl failLog
	for {
		at := nextTick(s.now(), e.Interval, off)
		t := time.NewTimer(at.Sub(s.now()))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		err := s.collect(ctx, e, at)
		<-s.sem
		if ctx.Err() != nil {
			return
		}
		s.report(log, &fl, err)
	}
}

// collect runs one collection and hands its batch to the sink.
func (s *Scheduler) collect(ctx context.Context, e ScheduledSource, at time.Time) error {
	name := e.Source.Name()
	cctx, cancel := context.WithTimeout(ctx, e.Timeout)
	defer cancel()
	begin := s.now()
	b, err := e.Source.Collect(cctx, at)
	s.duration.WithLabelValues(name).Observe(s.now().Sub(begin).Seconds())
	if b.Source == "" {
		b.Source = name
	}
	if err != nil && !sources.IsPartial(err) {
		s.success.WithLabelValues(name).Set(0)
		s.errors.WithLabelValues(name).Inc()
		if cctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			return fmt.Errorf("collect timed out after %s: %w", e.Timeout, err)
		}
		return fmt.Errorf("collect: %w", err)
	}
	s.series.WithLabelValues(name).Set(float64(len(b.Series)))
	if cerr := s.sink.Consume(ctx, b); cerr != nil {
		s.success.WithLabelValues(name).Set(0)
		s.errors.WithLabelValues(name).Inc()
		return fmt.Errorf("hand batch to pipeline: %w", cerr)
	}
	if err != nil { // partial: the data is kept, the failure counted
		s.errors.WithLabelValues(name).Inc()
		s.success.WithLabelValues(name).Set(1)
		return err
	}
	s.success.WithLabelValues(name).Set(1)
	return nil
}

// report logs the first failure at once, then at most one summary per
// LogEvery while the source keeps failing, and one line when it recovers.
func (s *Scheduler) report(log *slog.Logger, fl *failLog, err error) {
	now := s.now()
	if err == nil {
		if fl.failing {
			log.Info("source recovered", "failures", fl.failures)
		}
		*fl = failLog{}
		return
	}
	fl.failures++
	fl.lastErr = err
	if !fl.failing {
		fl.failing, fl.lastLog = true, now
		log.Warn("collection failed", "err", err)
		return
	}
	if now.Sub(fl.lastLog) >= s.every {
		log.Warn("collection still failing", "failures", fl.failures, "since_last_log", now.Sub(fl.lastLog).Round(time.Second).String(), "last_err", fl.lastErr)
		fl.lastLog = now
	}
}
