package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sabakiio/sabaki/agent"
	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/metric"
)

// value is a counter's or gauge's value.
func value(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 4)
	c.Collect(ch)
	close(ch)
	var sum float64
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			panic(err)
		}
		sum += d.GetCounter().GetValue() + d.GetGauge().GetValue()
	}
	return sum
}

var errDiskFull = errors.New("database or disk is full (injected)")

// faultyStore is the store with a fault hook: while fail > 0 each write
// fails (and counts fail down; fail < 0 fails until set to 0), as a full
// disk does. It records the windows it stored, in order.
type faultyStore struct {
	st     *store.Store
	fail   int
	stored []string // "start/rev" of stored windows
	// failOnly, when set, fails only the writes of the window starting
	// then, failOnlyN times.
	failOnly  time.Time
	failOnlyN int
}

func (f *faultyStore) WriteWithState(ctx context.Context, w *metric.Window, put []store.StateRow, del [][]byte) error {
	if w != nil && w.Start.Equal(f.failOnly) && f.failOnlyN > 0 {
		f.failOnlyN--
		return errDiskFull
	}
	if f.fail != 0 {
		if f.fail > 0 {
			f.fail--
		}
		return errDiskFull
	}
	if err := f.st.WriteWithState(ctx, w, put, del); err != nil {
		return err
	}
	if w != nil {
		f.stored = append(f.stored, w.Start.Format("15:04")+"/"+string(rune('0'+w.Revision)))
	}
	return nil
}

// retryRig runs a real pipeline (with its delta journal) over a real store
// through storeRetry and a fault hook, on a fake clock; crash drops the
// pipeline and the writer without a flush (what kill -9 leaves) and starts
// new ones on the reopened store.
type retryRig struct {
	t     *testing.T
	dir   string
	now   time.Time
	start time.Time
	fs    *faultyStore
	w     *storeRetry
	p     *agent.Pipeline
	reg   *prometheus.Registry
	log   *strings.Builder

	maxWindows int
	idx        int64 // window of the last consume

	// What the sources were acknowledged: the delta sum and the cumulative
	// counter's value, and its first value (the baseline, not counted).
	deltaSum, cum, cumBase float64
	seenCum                bool
	// Per window: the delta sum and the cumulative increments it holds.
	deltaIn, cumIn map[int64]float64
}

var retryT0 = time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)

func newRetryRig(t *testing.T, maxWindows int) *retryRig {
	// Points 1 s into their 10 s slot: a point on a window's start would
	// belong to the window before (its interval ends there).
	r := &retryRig{t: t, dir: t.TempDir(), now: retryT0.Add(time.Second), start: retryT0, maxWindows: maxWindows,
		deltaIn: map[int64]float64{}, cumIn: map[int64]float64{}}
	r.open()
	t.Cleanup(func() { r.fs.st.Close() })
	return r
}

func (r *retryRig) open() {
	t := r.t
	t.Helper()
	st, err := store.Open(filepath.Join(r.dir, "store"), store.Options{Now: func() time.Time { return r.now },
		Tiers: []store.Tier{{Resolution: time.Minute, Keep: 24 * time.Hour}, {Resolution: time.Hour, Keep: 48 * time.Hour}}})
	if err != nil {
		t.Fatal(err)
	}
	fail := 0
	if r.fs != nil {
		fail = r.fs.fail
	}
	r.fs = &faultyStore{st: st, fail: fail}
	r.reg = prometheus.NewRegistry()
	r.log = &strings.Builder{}
	log := slog.New(slog.NewTextHandler(r.log, nil))
	r.w = newStoreRetry(r.fs, log, r.reg, 24*time.Hour, func(wm int64) { r.p.ReleaseJournal(wm) })
	r.w.now = func() time.Time { return r.now }
	if r.maxWindows > 0 {
		r.w.maxWindows = r.maxWindows
	}
	ctx := context.Background()
	p, err := agent.NewPipeline(agent.PipelineConfig{Window: time.Minute, Lateness: 5 * time.Minute}, agent.Settings{
		Now: func() time.Time { return r.now }, StartTime: r.start, Logger: log,
		OnWindowState: r.w.Write,
		LoadBaselines: func(fn func(k, v []byte) error) error { return st.ScanBaselines(ctx, fn) },
		Journal:       filepath.Join(r.dir, "journal"),
	})
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
	r.idx = r.now.Unix() / 60
}

func (r *retryRig) crash() {
	r.t.Helper()
	r.p = nil
	if err := r.fs.st.Close(); err != nil {
		r.t.Fatal(err)
	}
	r.open()
}

// step moves the clock 10 s on; when it enters a new window the closed one
// is emitted (Flush: nothing of the new one is in yet); then one delta
// point and one cumulative point are consumed, as an OTLP sender and a
// scrape would deliver them.
func (r *retryRig) step() {
	r.t.Helper()
	r.now = r.now.Add(10 * time.Second)
	if idx := r.now.Unix() / 60; idx != r.idx {
		r.p.Flush()
		r.idx = idx
	}
	v := float64(r.now.Unix()%7 + 1)
	inc := float64(r.now.Unix()%5 + 1)
	r.cum += inc
	b := metric.Batch{Source: "test", Series: []metric.Series{
		{Name: "requests", Kind: metric.Counter, Temporality: metric.Delta,
			Points: []metric.Point{{Start: r.now.Add(-10 * time.Second), Time: r.now, Value: v}}},
		{Name: "bytes", Kind: metric.Counter, Temporality: metric.Cumulative,
			Points: []metric.Point{{Start: retryT0.Add(-time.Hour), Time: r.now, Value: r.cum}}},
	}}
	if err := r.p.Consume(context.Background(), b); err != nil {
		r.t.Fatal(err)
	}
	r.deltaSum += v
	r.deltaIn[r.idx] += v
	if !r.seenCum {
		r.seenCum, r.cumBase = true, r.cum
	} else {
		r.cumIn[r.idx] += inc
	}
}

// boundary moves the clock into the next window and emits the closed one,
// before any point of the new window: a Flush mid-window would emit a
// partial window, after which a restarted agent drops that window's points
// as too late.
func (r *retryRig) boundary() {
	r.now = time.Unix((r.now.Unix()/60+1)*60+1, 0).UTC()
	r.p.Flush()
	r.idx = r.now.Unix() / 60
}

// stored sums a counter's increments over every stored window.
func (r *retryRig) stored(name string) float64 {
	r.t.Helper()
	rows, err := r.fs.st.Query(context.Background(), store.Query{Metric: name, From: retryT0.Add(-time.Hour), To: r.now.Add(time.Hour), Step: time.Minute})
	if err != nil {
		r.t.Fatal(err)
	}
	var sum float64
	for _, row := range rows {
		v, ok, err := store.Stat(row, "sum")
		if err != nil {
			r.t.Fatal(err)
		}
		if ok {
			sum += v
		}
	}
	return sum
}

func (r *retryRig) segments() int {
	r.t.Helper()
	ents, err := os.ReadDir(filepath.Join(r.dir, "journal"))
	if err != nil {
		r.t.Fatal(err)
	}
	return len(ents)
}

// checkExact emits what is open (boundary) and asserts the store holds exactly what was
// acknowledged: every delta point, every cumulative increment after the
// first scrape.
func (r *retryRig) checkExact(what string) {
	r.t.Helper()
	r.boundary()
	if got := r.stored("requests"); got != r.deltaSum {
		r.t.Errorf("%s: delta sum stored %v, acknowledged %v (%+v)", what, got, r.deltaSum, got-r.deltaSum)
	}
	if got, want := r.stored("bytes"), r.cum-r.cumBase; got != want {
		r.t.Errorf("%s: cumulative increments stored %v, want %v (%+v)", what, got, want, got-want)
	}
}

// TestStoreRetryNoLoss: the store fails every write for four windows (a
// full disk), then recovers. The failed windows wait, later ones wait
// behind them; their delta journal is kept meanwhile; once the store takes
// writes again they are stored in order, the journal is released, and the
// store holds exactly every acknowledged delta point and cumulative
// increment. A crash after the recovery then proves the saved baselines
// and journal watermark never moved back (nothing counted twice, nothing
// lost); a crash while windows wait proves they never ran ahead (the
// restart counts and replays what was not stored).
func TestStoreRetryNoLoss(t *testing.T) {
	for _, crashWhileFull := range []bool{false, true} {
		name := "recover"
		if crashWhileFull {
			name = "crash-while-full"
		}
		t.Run(name, func(t *testing.T) {
			r := newRetryRig(t, 0)
			for range 18 { // 3 windows stored
				r.step()
			}
			if n := len(r.fs.stored); n != 3 {
				t.Fatalf("%d windows stored before the disk filled, want 3 (%v)", n, r.fs.stored)
			}
			r.fs.fail = -1 // the disk is full
			for range 24 {
				r.step()
			}
			n, _, _ := r.w.pendingStats()
			if n != 4 {
				t.Fatalf("%d windows waiting, want 4", n)
			}
			if got := value(r.w.m.writeErrors); got != 4 {
				t.Errorf("store write errors = %v, want 4", got)
			}
			if segs := r.segments(); segs < 5 {
				t.Errorf("%d journal segments while 4 windows wait: their delta points are not kept", segs)
			}
			if detail, err := r.w.status(); err != nil || !strings.Contains(detail, "4 windows") {
				t.Errorf("/readyz store status = %q, %v; want 4 windows waiting, ready", detail, err)
			}
			if crashWhileFull {
				r.crash()
				r.fs.fail = 0
				for range 12 {
					r.step()
				}
				r.checkExact("after a crash while windows waited")
				return
			}
			// Space returns; a background retry before the next window
			// stores what waits, once its backoff has passed.
			r.fs.fail = 0
			r.now = r.now.Add(10 * time.Second) // past the backoff (8 s after four failures)
			r.w.retry(context.Background())
			if n, _, _ := r.w.pendingStats(); n != 0 {
				t.Fatalf("%d windows still waiting after a retry with the store back", n)
			}
			if got := value(r.w.m.retries.WithLabelValues("stored")); got != 4 {
				t.Errorf("retries stored = %v, want 4", got)
			}
			if !strings.Contains(r.log.String(), "stored a window after failed store writes") {
				t.Error("no log line for the windows stored late")
			}
			// In order: window starts never go back.
			for i := 1; i < len(r.fs.stored); i++ {
				if r.fs.stored[i] < r.fs.stored[i-1] {
					t.Errorf("windows stored out of order: %v", r.fs.stored)
				}
			}
			if segs := r.segments(); segs > 2 {
				t.Errorf("%d journal segments after the waiting windows were stored, want the open ones only", segs)
			}
			for range 12 {
				r.step()
			}
			r.checkExact("after the store recovered")
			// The baselines and watermark stored late did not move back:
			// a crash now neither loses nor double counts.
			r.crash()
			for range 12 {
				r.step()
			}
			r.checkExact("after a crash once recovered")
			if got := value(r.w.m.abandoned.WithLabelValues(abandonMaxWindows)); got != 0 {
				t.Errorf("abandoned = %v, want 0", got)
			}
		})
	}
}

// TestStoreRetryInOrder: one window's write fails three times (at its
// close and at the next two closes) while the store would take the others.
// The later windows wait behind it and are stored after it, in order: were
// they stored first, the failed window's baselines and journal watermark,
// stored last, would move back, and a crash would count the later windows'
// increments again.
func TestStoreRetryInOrder(t *testing.T) {
	r := newRetryRig(t, 0)
	for range 18 {
		r.step()
	}
	r.fs.failOnly, r.fs.failOnlyN = retryT0.Add(3*time.Minute), 3
	for range 24 { // windows 3..6 close; 3 is stored at 6's close
		r.step()
	}
	want := []string{"03:00/0", "03:01/0", "03:02/0", "03:03/0", "03:04/0", "03:05/0", "03:06/0"}
	if got := strings.Join(r.fs.stored, " "); got != strings.Join(want, " ") {
		t.Errorf("stored %s, want %s", got, strings.Join(want, " "))
	}
	if got := value(r.w.m.writeErrors); got != 3 {
		t.Errorf("store write errors = %v, want 3 (window 3, and 4 and 5 behind it)", got)
	}
	r.checkExact("after the window was stored")
	r.crash()
	for range 12 {
		r.step()
	}
	r.checkExact("after a crash")
}

// TestStoreRetryBounds: past maxPendingWindows the oldest waiting window is
// given up, counted by reason and logged; what is missing from the store
// is exactly what the given-up windows held, and later windows are stored.
// At shutdown what still waits is counted as given up too.
func TestStoreRetryBounds(t *testing.T) {
	r := newRetryRig(t, 2)
	for range 18 { // windows 0..2 stored
		r.step()
	}
	r.fs.fail = -1
	for range 18 { // windows 3..5 fail; the third to wait drops window 3
		r.step()
	}
	if got := value(r.w.m.abandoned.WithLabelValues(abandonMaxWindows)); got != 1 {
		t.Fatalf("abandoned{max_windows} = %v, want 1", got)
	}
	if !strings.Contains(r.log.String(), "gave up storing a window") || !strings.Contains(r.log.String(), "reason=max_windows") {
		t.Errorf("no error log naming the given-up window and the reason:\n%s", r.log.String())
	}
	r.fs.fail = 0
	for range 12 {
		r.step()
	}
	r.boundary()
	lost := int64(retryT0.Unix()/60 + 3)
	if got, want := r.stored("requests"), r.deltaSum-r.deltaIn[lost]; got != want {
		t.Errorf("delta sum stored %v, want %v (all but the given-up window's %v)", got, want, r.deltaIn[lost])
	}
	if got, want := r.stored("bytes"), r.cum-r.cumBase-r.cumIn[lost]; got != want {
		t.Errorf("cumulative increments stored %v, want %v (all but the given-up window's %v)", got, want, r.cumIn[lost])
	}
	// Shutdown with two windows waiting: one last try, then counted.
	r.fs.fail = -1
	for range 12 {
		r.step()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	r.w.finish(ctx)
	if got := value(r.w.m.abandoned.WithLabelValues(abandonShutdown)); got != 2 {
		t.Errorf("abandoned{shutdown} = %v, want 2", got)
	}
	if n, _, _ := r.w.pendingStats(); n != 0 {
		t.Errorf("%d windows still waiting after finish", n)
	}
}
