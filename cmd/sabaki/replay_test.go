package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/agent"
	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/exporters"
	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// recordingExporter records the windows it was sent.
type recordingExporter struct {
	mu  sync.Mutex
	got []metric.Window
}

func (e *recordingExporter) Name() string { return "rec" }
func (e *recordingExporter) Export(_ context.Context, w *metric.Window) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.got = append(e.got, *w)
	return nil
}
func (e *recordingExporter) Shutdown(context.Context) error { return nil }

func (e *recordingExporter) sent() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, w := range e.got {
		out = append(out, w.Start.UTC().Format("15:04")+"/"+string(rune('0'+w.Revision)))
	}
	return out
}

// crashRig is the part of the daemon between the pipeline and the exporters:
// a real store and a real outbox in one data directory, opened again after
// each simulated kill -9.
type crashRig struct {
	t     *testing.T
	dir   string
	exp   *recordingExporter
	st    *store.Store
	ob    *exporters.Outbox
	stop  context.CancelFunc
	done  chan struct{}
	start time.Time
}

func (r *crashRig) open() {
	r.t.Helper()
	var err error
	if r.st, err = store.Open(store.Dir(r.dir), store.Options{}); err != nil {
		r.t.Fatal(err)
	}
	cfg := exporters.DefaultOutboxConfig()
	if r.ob, err = exporters.NewOutbox(cfg, r.exp, exporters.Settings{DataDir: r.dir}); err != nil {
		r.t.Fatal(err)
	}
	// What startDaemon does between opening the store and running the
	// pipeline.
	replayCommitted(context.Background(), r.st, []*runningExporter{{name: "rec", cfg: &exporters.RemoteWriteConfig{Outbox: cfg}, q: r.ob}},
		agent.HistogramConfig{}, nil, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	r.stop, r.done = cancel, make(chan struct{})
	go func() { defer close(r.done); r.ob.Run(ctx) }()
}

// kill stops the process abruptly: the outbox stops sending without
// draining or closing anything; the store's committed transactions stay.
func (r *crashRig) kill() {
	r.t.Helper()
	r.waitSent()
	r.stop()
	<-r.done
	if err := r.st.Close(); err != nil { // releases the store's lock for the reopen
		r.t.Fatal(err)
	}
}

func (r *crashRig) waitSent() {
	r.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for r.ob.Depth() > 0 {
		if time.Now().After(deadline) {
			r.t.Fatalf("outbox still holds %d windows", r.ob.Depth())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// store commits w with a baseline row, as onWindowState does first.
func (r *crashRig) store(w *metric.Window) {
	r.t.Helper()
	if err := r.st.WriteWithState(context.Background(), w, []store.StateRow{{Key: make([]byte, 16), Value: []byte{byte(w.Revision)}}}, nil); err != nil {
		r.t.Fatal(err)
	}
}

// emit is onWindowState without a crash: store, then enqueue.
func (r *crashRig) emit(w *metric.Window) {
	r.t.Helper()
	r.store(w)
	if err := r.ob.Enqueue(w); err != nil {
		r.t.Fatal(err)
	}
}

func rigWindow(start time.Time, rev int, v float64) *metric.Window {
	return &metric.Window{Start: start, Duration: time.Minute, Revision: rev, Series: []metric.Aggregate{
		{Name: "http.requests", Kind: metric.Counter, Resource: metric.Attrs{{Key: "service.name", Value: "toitta"}},
			Attrs: metric.Attrs{{Key: "http.route", Value: "/a"}}, Sum: v, Count: 1},
	}}
}

// TestKillBetweenStoreAndOutbox: a kill -9 after the store committed a window
// and before the outbox had it; after the restart the exporter receives that
// window, once. A kill after the enqueue (before anything else) does not
// send it twice, and a revision lost the same way arrives too.
func TestKillBetweenStoreAndOutbox(t *testing.T) {
	now := time.Now().Truncate(time.Minute)
	m := func(i int) time.Time { return now.Add(time.Duration(i-10) * time.Minute) }
	r := &crashRig{t: t, dir: t.TempDir(), exp: &recordingExporter{}}

	r.open()
	r.emit(rigWindow(m(0), 0, 1))
	r.store(rigWindow(m(1), 0, 2)) // kill -9 here: stored, never queued
	r.kill()

	r.open() // the restart replays m(1)
	r.emit(rigWindow(m(2), 0, 3))
	r.emit(rigWindow(m(3), 0, 4))
	r.ob.Enqueue(rigWindow(m(3), 0, 4)) // a second hand-over of the same window is dropped
	r.store(rigWindow(m(2), 1, 5))      // a revision, stored, kill -9 before it is queued
	r.kill()

	r.open()
	r.emit(rigWindow(m(4), 0, 6))
	r.kill()

	r.open() // nothing left to replay
	r.kill()

	want := []string{
		m(0).UTC().Format("15:04") + "/0",
		m(1).UTC().Format("15:04") + "/0",
		m(2).UTC().Format("15:04") + "/0",
		m(3).UTC().Format("15:04") + "/0",
		m(2).UTC().Format("15:04") + "/1",
		m(4).UTC().Format("15:04") + "/0",
	}
	if got := r.exp.sent(); !slices.Equal(got, want) {
		t.Fatalf("exporter received %v, want %v", got, want)
	}
	// The replayed window carries the stored values.
	r.exp.mu.Lock()
	defer r.exp.mu.Unlock()
	if w := r.exp.got[1]; len(w.Series) != 1 || w.Series[0].Sum != 2 || w.Series[0].Name != "http.requests" {
		t.Fatalf("replayed window %+v", w)
	}
	if w := r.exp.got[4]; w.Series[0].Sum != 5 {
		t.Fatalf("replayed revision %+v", w)
	}
}

// TestReplayFreshOutbox: an exporter added to a config whose store already
// holds windows is not sent the store's history.
func TestReplayFreshOutbox(t *testing.T) {
	now := time.Now().Truncate(time.Minute)
	dir := t.TempDir()
	st, err := store.Open(store.Dir(dir), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := st.Write(context.Background(), rigWindow(now.Add(time.Duration(i-5)*time.Minute), 0, 1)); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	r := &crashRig{t: t, dir: dir, exp: &recordingExporter{}}
	r.open()
	r.kill()
	r.open()
	r.kill()
	if got := r.exp.sent(); len(got) != 0 {
		t.Fatalf("a new exporter was sent the store's history: %v", got)
	}
}

// BenchmarkReplayCommitted is the start-up cost of the replay with a store
// whose head holds 10 windows of 105,000 series (90 % counters, 10 %
// histograms): listing them, and reading back and queueing the ones the
// outbox lacks (1: a kill -9 between store and queue; 10: all of them).
func BenchmarkReplayCommitted(b *testing.B) {
	dir := b.TempDir()
	st, err := store.Open(store.Dir(dir), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	now := time.Now().Truncate(time.Minute)
	const windows, series = 10, 105_000
	w := &metric.Window{Duration: time.Minute}
	for i := range series {
		a := metric.Aggregate{Name: "http.requests", Kind: metric.Counter, Resource: metric.Attrs{{Key: "service.name", Value: "toitta"}},
			Attrs: metric.Attrs{{Key: "http.route", Value: "/r" + strconv.Itoa(i)}}, Sum: float64(i), Count: 1}
		if i%10 == 0 {
			h := histogram.New(0, 0)
			h.Record(0.01)
			h.Record(float64(i%7) / 10)
			a.Name, a.Kind, a.Sum, a.Count, a.Hist = "http.server.request.duration", metric.Histogram, 0, 0, h
		}
		w.Series = append(w.Series, a)
	}
	var keys []exporters.WindowKey
	for i := range windows {
		w.Start = now.Add(time.Duration(i-windows) * time.Minute)
		if err := st.Write(context.Background(), w); err != nil {
			b.Fatal(err)
		}
		keys = append(keys, exporters.WindowKey{Start: w.Start, Duration: w.Duration})
	}
	cfg := exporters.DefaultOutboxConfig()
	for _, missing := range []int{0, 1, windows} {
		b.Run(strconv.Itoa(missing)+"_missing", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				ob, err := exporters.NewOutbox(cfg, &recordingExporter{}, exporters.Settings{DataDir: filepath.Join(b.TempDir(), strconv.Itoa(i))})
				if err != nil {
					b.Fatal(err)
				}
				if err := ob.MarkAccepted(keys[:windows-missing]); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				replayCommitted(context.Background(), st, []*runningExporter{{name: "rec", cfg: &exporters.RemoteWriteConfig{Outbox: cfg}, q: ob}},
					agent.HistogramConfig{}, nil, slog.New(slog.DiscardHandler))
				b.StopTimer()
				if ob.Depth() != missing {
					b.Fatalf("replayed %d windows, want %d", ob.Depth(), missing)
				}
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				ob.Shutdown(ctx)
				b.StartTimer()
			}
		})
	}
}
