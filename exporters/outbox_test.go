package exporters

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

// recExporter records the windows it accepted; fail, when set, decides the
// outcome of each attempt.
type recExporter struct {
	name string
	mu   sync.Mutex
	got  []*metric.Window
	// fail is called for each attempt; a nil result means accepted.
	fail     func(w *metric.Window, attempt int) error
	attempts int
	shutdown int
}

func (e *recExporter) Name() string { return e.name }

func (e *recExporter) Export(ctx context.Context, w *metric.Window) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.attempts++
	if e.fail != nil {
		if err := e.fail(w, e.attempts); err != nil {
			return err
		}
	}
	e.got = append(e.got, w)
	return nil
}

func (e *recExporter) Shutdown(context.Context) error {
	e.mu.Lock()
	e.shutdown++
	e.mu.Unlock()
	return nil
}

func (e *recExporter) starts() []time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	var s []time.Time
	for _, w := range e.got {
		s = append(s, w.Start)
	}
	return s
}

// fakeClock is a settable clock whose sleeps advance it instantly.
type fakeClock struct {
	mu     sync.Mutex
	t      time.Time
	sleeps []time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	c.sleeps = append(c.sleeps, d)
	c.t = c.t.Add(d)
	c.mu.Unlock()
	return nil
}

func (c *fakeClock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// testWindow builds a window with a gauge, a counter and a latency histogram.
func testWindow(start time.Time, series int) *metric.Window {
	w := &metric.Window{Start: start, Duration: time.Minute}
	for i := range series {
		h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		for j := 1; j <= 100; j++ {
			h.Record(float64(j*(i+1)) / 1000)
		}
		w.Series = append(w.Series, metric.Aggregate{
			Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram,
			Resource: metric.Attrs{{Key: "service.name", Value: "toitta"}},
			Attrs:    metric.Attrs{{Key: "http.route", Value: fmt.Sprintf("/api/users/%d", i)}},
			Hist:     h, Count: h.Count(), Sum: h.Sum(), Min: h.Min(), Max: h.Max(),
			ErrorCount: 3, ErrorTracked: true,
			Exemplars: []metric.Exemplar{{TraceID: [16]byte{1, 2, 3, byte(i)}, SpanID: [8]byte{9}, Value: 0.1, Time: start.Add(time.Second),
				Attrs: metric.Attrs{{Key: "user", Value: "x"}}}},
		})
	}
	w.Series = append(w.Series,
		metric.Aggregate{Name: "cloudsql.connections", Unit: "{connection}", Kind: metric.Gauge, Sum: 30, Count: 3, Last: 11, Min: 9, Max: 11},
		metric.Aggregate{Name: "llm.tokens", Unit: "{token}", Kind: metric.Counter, Sum: 1234})
	return w
}

type outboxEnv struct {
	t     *testing.T
	dir   string
	clock *fakeClock
	reg   *prometheus.Registry
	logs  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newOutboxEnv(t *testing.T) *outboxEnv {
	return &outboxEnv{t: t, dir: t.TempDir(), clock: &fakeClock{t: t0.Add(90 * time.Second)}, logs: &syncBuffer{}}
}

// open opens the outbox of exp with a fresh registry and the fake clock.
func (e *outboxEnv) open(exp Exporter, mod func(*OutboxConfig)) *Outbox {
	e.t.Helper()
	cfg := DefaultOutboxConfig()
	if mod != nil {
		mod(&cfg)
	}
	e.reg = prometheus.NewRegistry()
	o, err := NewOutbox(cfg, exp, Settings{
		Logger:     slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer: e.reg, DataDir: e.dir,
	})
	if err != nil {
		e.t.Fatalf("NewOutbox: %v", err)
	}
	o.now, o.sleep, o.jitter = e.clock.Now, e.clock.Sleep, func() float64 { return 0.5 }
	return o
}

func (e *outboxEnv) dropped(name, reason string) float64 {
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sabaki_exporter_dropped_windows_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ex, re string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "exporter":
					ex = l.GetValue()
				case "reason":
					re = l.GetValue()
				}
			}
			if ex == name && re == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func mustEnqueue(t *testing.T, o *Outbox, w *metric.Window) {
	t.Helper()
	if err := o.Enqueue(w); err != nil {
		t.Fatalf("Enqueue(%s): %v", w.Start, err)
	}
}

// drain shuts o down with a generous deadline, sending everything queued.
func drain(t *testing.T, o *Outbox) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := o.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	w := testWindow(t0, 3)
	w.Revision = 2
	p, err := encodeWindow(w)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeWindow(p)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Start.Equal(w.Start) || got.Duration != w.Duration || got.Revision != 2 || len(got.Series) != len(w.Series) {
		t.Fatalf("header mismatch: %+v", got)
	}
	for i := range w.Series {
		a, b := w.Series[i], got.Series[i]
		if a.Name != b.Name || a.Unit != b.Unit || a.Kind != b.Kind || !a.Attrs.Equal(b.Attrs) || !a.Resource.Equal(b.Resource) ||
			a.Sum != b.Sum || a.Count != b.Count || a.Last != b.Last || a.Min != b.Min || a.Max != b.Max ||
			a.ErrorCount != b.ErrorCount || a.ErrorTracked != b.ErrorTracked || len(a.Exemplars) != len(b.Exemplars) {
			t.Fatalf("series %d: got %+v, want %+v", i, b, a)
		}
		for j := range a.Exemplars {
			x, y := a.Exemplars[j], b.Exemplars[j]
			if x.TraceID != y.TraceID || x.SpanID != y.SpanID || x.Value != y.Value || !x.Time.Equal(y.Time) || !x.Attrs.Equal(y.Attrs) {
				t.Fatalf("exemplar %d/%d: got %+v, want %+v", i, j, y, x)
			}
		}
		if (a.Hist == nil) != (b.Hist == nil) {
			t.Fatalf("series %d: histogram presence differs", i)
		}
		if a.Hist != nil && (a.Hist.Count() != b.Hist.Count() || a.Hist.Sum() != b.Hist.Sum() || a.Hist.Quantile(0.95) != b.Hist.Quantile(0.95)) {
			t.Fatalf("series %d: histogram differs: p95 %v vs %v", i, a.Hist.Quantile(0.95), b.Hist.Quantile(0.95))
		}
	}
	// Every truncation of the payload is rejected, never a panic.
	for n := range len(p) {
		if _, err := decodeWindow(p[:n]); err == nil {
			t.Fatalf("decodeWindow accepted a payload truncated to %d of %d bytes", n, len(p))
		}
	}
}

func TestOutboxSendsInOrderAndRestartResumes(t *testing.T) {
	env := newOutboxEnv(t)
	// First run: the destination accepts two windows, then is unreachable.
	exp := &recExporter{name: "mackerel", fail: func(w *metric.Window, n int) error {
		if n > 2 {
			return errors.New("dial tcp: connection refused")
		}
		return nil
	}}
	o := env.open(exp, nil)
	// Retries wait a little real time and leave the clock alone (advancing
	// it would age the windows out).
	o.sleep = func(ctx context.Context, d time.Duration) error { return sleepCtx(ctx, time.Millisecond) }
	for i := range 5 {
		mustEnqueue(t, o, testWindow(t0.Add(time.Duration(i)*time.Minute), 2))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { o.Run(ctx); close(done) }()
	waitFor(t, func() bool { exp.mu.Lock(); defer exp.mu.Unlock(); return exp.attempts >= 4 })
	cancel()
	<-done
	sctx, scancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	o.Shutdown(sctx) // the destination is still down: leaves 3 on disk
	scancel()
	if got := len(exp.starts()); got != 2 {
		t.Fatalf("first run delivered %d windows, want 2", got)
	}
	info, err := os.Stat(o.dir)
	if err != nil || info.Mode().Perm() != 0o700 {
		t.Fatalf("outbox dir mode = %v, %v; want 0700", info.Mode().Perm(), err)
	}
	files, _ := filepath.Glob(filepath.Join(o.dir, "*"))
	for _, f := range files {
		if fi, _ := os.Stat(f); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", filepath.Base(f), fi.Mode().Perm())
		}
	}

	// Second run: the rest arrives, in order, without the first two.
	exp2 := &recExporter{name: "mackerel"}
	o2 := env.open(exp2, nil)
	if d := o2.Depth(); d != 3 {
		t.Fatalf("after restart Depth = %d, want 3", d)
	}
	drain(t, o2)
	want := []time.Time{t0.Add(2 * time.Minute), t0.Add(3 * time.Minute), t0.Add(4 * time.Minute)}
	if got := exp2.starts(); !equalTimes(got, want) {
		t.Fatalf("second run delivered %v, want %v", got, want)
	}
	if exp2.shutdown != 1 {
		t.Fatalf("exporter Shutdown called %d times, want 1", exp2.shutdown)
	}
	// Everything sent: a third open finds nothing and the segments are gone.
	o3 := env.open(&recExporter{name: "mackerel"}, nil)
	if d := o3.Depth(); d != 0 {
		t.Fatalf("third open Depth = %d, want 0", d)
	}
	segs, _ := filepath.Glob(filepath.Join(o3.dir, "*.seg"))
	if len(segs) != 0 {
		t.Fatalf("sent segments left on disk: %v", segs)
	}
	// Sequence numbers continue after the cursor: a new window is sent.
	mustEnqueue(t, o3, testWindow(t0.Add(10*time.Minute), 1))
	exp4 := &recExporter{name: "mackerel"}
	o3.closeFiles()
	o4 := env.open(exp4, nil)
	drain(t, o4)
	if got := exp4.starts(); len(got) != 1 || !got[0].Equal(t0.Add(10*time.Minute)) {
		t.Fatalf("window enqueued after a full drain: delivered %v", got)
	}
}

func equalTimes(a, b []time.Time) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestOutboxTornRecord(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, path string)
		want   int // windows recovered of 3
	}{
		{"half-written frame", func(t *testing.T, path string) {
			// kill -9 in the middle of a write: a header and part of a payload.
			p, _ := encodeWindow(testWindow(t0, 1))
			f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			defer f.Close()
			f.Write([]byte{byte(len(p)), byte(len(p) >> 8), 0, 0, 1, 2, 3, 4})
			f.Write(p[:len(p)/2])
		}, 3},
		{"short header", func(t *testing.T, path string) {
			f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			defer f.Close()
			f.Write([]byte{7, 0, 0})
		}, 3},
		{"flipped byte in last record", func(t *testing.T, path string) {
			b, _ := os.ReadFile(path)
			b[len(b)-5] ^= 0xff
			os.WriteFile(path, b, 0o600)
		}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newOutboxEnv(t)
			o := env.open(&recExporter{name: "x"}, nil)
			for i := range 3 {
				mustEnqueue(t, o, testWindow(t0.Add(time.Duration(i)*time.Minute), 2))
			}
			o.closeFiles()
			segs, _ := filepath.Glob(filepath.Join(o.dir, "*.seg"))
			if len(segs) != 1 {
				t.Fatalf("segments: %v", segs)
			}
			tc.damage(t, segs[0])

			exp := &recExporter{name: "x"}
			o2 := env.open(exp, nil)
			if d := o2.Depth(); d != tc.want {
				t.Fatalf("recovered %d windows, want %d", d, tc.want)
			}
			if !strings.Contains(env.logs.String(), "torn or corrupt record") {
				t.Errorf("no log line about the truncated record:\n%s", env.logs.String())
			}
			// The segment continues cleanly after the truncation.
			mustEnqueue(t, o2, testWindow(t0.Add(5*time.Minute), 1))
			drain(t, o2)
			if got := len(exp.starts()); got != tc.want+1 {
				t.Fatalf("delivered %d windows, want %d", got, tc.want+1)
			}
			o3 := env.open(&recExporter{name: "x"}, nil)
			if d := o3.Depth(); d != 0 {
				t.Fatalf("after drain Depth = %d", d)
			}
		})
	}
}

func TestOutboxBounds(t *testing.T) {
	t.Run("bytes: oldest dropped first", func(t *testing.T) {
		env := newOutboxEnv(t)
		exp := &recExporter{name: "x"}
		o := env.open(exp, nil)
		p, _ := encodeWindow(testWindow(t0, 20))
		frame := int64(len(p) + frameHeader)
		o.cfg.MaxBytes = config.Bytes(3*frame + frame/2) // room for three windows
		for i := range 5 {
			mustEnqueue(t, o, testWindow(t0.Add(time.Duration(i)*time.Minute), 20))
		}
		if d := o.Depth(); d != 3 {
			t.Fatalf("Depth = %d, want 3", d)
		}
		if got := env.dropped("x", DropBytes); got != 2 {
			t.Fatalf("dropped{reason=bytes} = %v, want 2", got)
		}
		if n := strings.Count(env.logs.String(), "window dropped: outbox full"); n != 2 {
			t.Fatalf("%d drop log lines, want one per window (2)", n)
		}
		drain(t, o)
		want := []time.Time{t0.Add(2 * time.Minute), t0.Add(3 * time.Minute), t0.Add(4 * time.Minute)}
		if got := exp.starts(); !equalTimes(got, want) {
			t.Fatalf("delivered %v, want %v", got, want)
		}
	})
	t.Run("age", func(t *testing.T) {
		env := newOutboxEnv(t)
		exp := &recExporter{name: "x"}
		o := env.open(exp, func(c *OutboxConfig) { c.MaxAge = 10 * 60e9 })
		for i := range 5 {
			mustEnqueue(t, o, testWindow(t0.Add(time.Duration(i)*time.Minute), 1))
		}
		if age := o.OldestAge(); age != 90*time.Second {
			t.Fatalf("OldestAge = %v, want 1m30s", age)
		}
		env.clock.Advance(11 * time.Minute)                                    // t0+12m30s: windows starting before t0+2m30s are too old
		mustEnqueue(t, o, testWindow(env.clock.Now().Add(-30*time.Minute), 1)) // already too old
		if d := o.Depth(); d != 2 {
			t.Fatalf("Depth = %d, want 2", d)
		}
		if got := env.dropped("x", DropAge); got != 4 {
			t.Fatalf("dropped{reason=age} = %v, want 4", got)
		}
		drain(t, o)
		if got := exp.starts(); !equalTimes(got, []time.Time{t0.Add(3 * time.Minute), t0.Add(4 * time.Minute)}) {
			t.Fatalf("delivered %v", got)
		}
	})
}

// retryAfterErr is a 429 with a Retry-After hint.
type retryAfterErr struct{ s float64 }

func (e retryAfterErr) Error() string               { return "429 Too Many Requests" }
func (e retryAfterErr) RetryAfter() (float64, bool) { return e.s, e.s > 0 }

func TestOutboxBackoff(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want []time.Duration // jitter fixed at 0.5
	}{
		{"retry-after honoured", retryAfterErr{30}, []time.Duration{31500 * time.Millisecond, 31500 * time.Millisecond, 31500 * time.Millisecond}},
		{"429 without retry-after: exponential", retryAfterErr{0}, []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond, 3 * time.Second}},
		{"network error: exponential, capped", errors.New("connection reset by peer"), []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond, 3 * time.Second}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newOutboxEnv(t)
			exp := &recExporter{name: "x", fail: func(w *metric.Window, n int) error {
				if n <= len(tc.want) {
					return tc.err
				}
				return nil
			}}
			o := env.open(exp, nil)
			mustEnqueue(t, o, testWindow(t0, 1))
			drain(t, o)
			if got := env.clock.Sleeps(); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("sleeps = %v, want %v", got, tc.want)
			}
			if len(exp.starts()) != 1 {
				t.Fatal("window not delivered after retries")
			}
		})
	}
	t.Run("cap", func(t *testing.T) {
		o := &Outbox{cfg: DefaultOutboxConfig(), jitter: func() float64 { return 0.999 }}
		for attempt := range 100 {
			if d := o.backoff(attempt, errors.New("x")); d > o.cfg.MaxBackoff.D() || d <= 0 {
				t.Fatalf("attempt %d: backoff %v outside (0, %v]", attempt, d, o.cfg.MaxBackoff)
			}
		}
	})
}

func TestOutboxPermanentDrop(t *testing.T) {
	env := newOutboxEnv(t)
	exp := &recExporter{name: "x", fail: func(w *metric.Window, n int) error {
		if w.Start.Equal(t0.Add(time.Minute)) {
			return Permanent(errors.New("API request failed: invalid metric name"))
		}
		return nil
	}}
	o := env.open(exp, nil)
	for i := range 3 {
		mustEnqueue(t, o, testWindow(t0.Add(time.Duration(i)*time.Minute), 1))
	}
	drain(t, o)
	if got := exp.starts(); !equalTimes(got, []time.Time{t0, t0.Add(2 * time.Minute)}) {
		t.Fatalf("delivered %v", got)
	}
	if got := env.dropped("x", DropPermanent); got != 1 {
		t.Fatalf("dropped{reason=permanent} = %v, want 1", got)
	}
	logs := env.logs.String()
	for _, want := range []string{"window dropped", "http.server.request.duration", "invalid metric name", "2026-11-25T12:01:00Z"} {
		if !strings.Contains(logs, want) {
			t.Errorf("drop log lacks %q:\n%s", want, logs)
		}
	}
	if len(env.clock.Sleeps()) != 0 {
		t.Fatalf("a permanent error was retried: sleeps %v", env.clock.Sleeps())
	}
}

func TestOutboxEnqueueFailureKeepsRunning(t *testing.T) {
	env := newOutboxEnv(t)
	exp := &recExporter{name: "x"}
	o := env.open(exp, func(c *OutboxConfig) { c.SegmentBytes = 64 << 10 })
	mustEnqueue(t, o, testWindow(t0, 1))
	// Make the next segment impossible to create (as a full disk would make
	// the write fail): a directory sits where the file would go.
	o.closeFiles()
	o.segs[len(o.segs)-1].size = int64(o.cfg.SegmentBytes) // force a new segment
	if err := os.Mkdir(filepath.Join(o.dir, fmt.Sprintf("%020d%s", o.nextSeq, segSuffix)), 0o700); err != nil {
		t.Fatal(err)
	}
	err := o.Enqueue(testWindow(t0.Add(time.Minute), 1))
	if err == nil {
		t.Fatal("Enqueue succeeded although the segment could not be written")
	}
	if got := counterValue(t, o.m.enqFailedC); got != 1 {
		t.Fatalf("enqueue failures = %v, want 1", got)
	}
	os.Remove(filepath.Join(o.dir, fmt.Sprintf("%020d%s", o.nextSeq, segSuffix)))
	mustEnqueue(t, o, testWindow(t0.Add(2*time.Minute), 1))
	drain(t, o)
	if got := exp.starts(); !equalTimes(got, []time.Time{t0, t0.Add(2 * time.Minute)}) {
		t.Fatalf("delivered %v", got)
	}
}

func TestOutboxConcurrent(t *testing.T) {
	env := newOutboxEnv(t)
	var mu sync.Mutex
	failures := 0
	exp := &recExporter{name: "x", fail: func(w *metric.Window, n int) error {
		mu.Lock()
		defer mu.Unlock()
		if n%3 == 0 {
			failures++
			return errors.New("503 Service Unavailable")
		}
		return nil
	}}
	o := env.open(exp, func(c *OutboxConfig) { c.SegmentBytes = 64 << 10 })
	o.sleep = sleepCtx // real short sleeps
	o.cfg.InitialBackoff, o.cfg.MaxBackoff = 1e5, 1e6
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go o.Run(ctx)
	const writers, each = 4, 10
	var wg sync.WaitGroup
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				mustEnqueue(t, o, testWindow(t0.Add(time.Duration(g*each+i)*time.Second), 1))
				o.Depth()
				o.OldestAge()
			}
		})
	}
	wg.Wait()
	drain(t, o)
	got := exp.starts()
	if len(got) != writers*each {
		t.Fatalf("delivered %d windows, want %d", len(got), writers*each)
	}
	seen := map[time.Time]bool{}
	for _, s := range got {
		if seen[s] {
			t.Fatalf("window %v delivered twice", s)
		}
		seen[s] = true
	}
	if o.Depth() != 0 {
		t.Fatalf("Depth = %d after drain", o.Depth())
	}
}

func TestOutboxConfigValidate(t *testing.T) {
	c := DefaultOutboxConfig()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	c.MaxBytes, c.MaxAge, c.MaxBackoff = 10, 0, 1
	err := c.Validate()
	for _, f := range []string{"max_bytes", "max_age", "max_backoff"} {
		if err == nil || !strings.Contains(err.Error(), f) {
			t.Errorf("Validate() = %v, want a problem with %s", err, f)
		}
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestOutboxWriteErrorIsErrWrite: an Enqueue that cannot write the window
// (here its directory is gone; a full disk fails the same call) says so with
// ErrWrite, which the daemon offers again later, while a window larger than
// max_bytes is refused for good without it.
func TestOutboxWriteErrorIsErrWrite(t *testing.T) {
	env := newOutboxEnv(t)
	o := env.open(&recExporter{name: "x"}, nil)
	if err := os.RemoveAll(o.dir); err != nil {
		t.Fatal(err)
	}
	err := o.Enqueue(testWindow(t0, 20))
	if !errors.Is(err, ErrWrite) {
		t.Fatalf("Enqueue into a removed directory: %v, want ErrWrite", err)
	}
	o.cfg.MaxBytes = 10
	if err := o.Enqueue(testWindow(t0.Add(time.Minute), 20)); err == nil || errors.Is(err, ErrWrite) {
		t.Fatalf("Enqueue of a window over max_bytes: %v, want a final error without ErrWrite", err)
	}
}
