package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// restartRig runs pipelines over a real store in a temp dir; crash drops
// the pipeline without a Flush (what kill -9 leaves: the committed
// transactions) and starts a new one on the reopened store.
type restartRig struct {
	t     *testing.T
	dir   string
	now   time.Time
	st    *store.Store
	p     *Pipeline
	saved int // baseline rows written, over all windows
}

func newRestartRig(t *testing.T) *restartRig {
	r := &restartRig{t: t, dir: t.TempDir(), now: t0}
	r.start()
	t.Cleanup(func() { r.st.Close() })
	return r
}

func (r *restartRig) start() {
	t := r.t
	t.Helper()
	st, err := store.Open(r.dir, store.Options{Now: func() time.Time { return r.now },
		Tiers: []store.Tier{{Resolution: time.Minute, Keep: 24 * time.Hour}, {Resolution: time.Hour, Keep: 48 * time.Hour}}})
	if err != nil {
		t.Fatal(err)
	}
	r.st = st
	ctx := context.Background()
	p, err := NewPipeline(PipelineConfig{Window: time.Minute, Lateness: 5 * time.Minute}, Settings{
		Now:       func() time.Time { return r.now },
		StartTime: r.now,
		OnWindowState: func(w *metric.Window, ch StateChange) error {
			put := make([]store.StateRow, len(ch.Put))
			for i, x := range ch.Put {
				put[i] = store.StateRow{Key: x.Key, Value: x.Value}
				if [16]byte(x.Key) != watermarkKey {
					r.saved++
				}
			}
			err := st.WriteWithState(ctx, w, put, ch.Delete)
			if err != nil {
				t.Errorf("storing window: %v", err)
			}
			return err
		},
		LoadBaselines: func(fn func(k, v []byte) error) error { return st.ScanBaselines(ctx, fn) },
		Journal:       filepath.Join(r.dir, "journal"),
	})
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
}

func (r *restartRig) crash() {
	r.t.Helper()
	r.p = nil // no Flush: the open windows are lost with the process
	if err := r.st.Close(); err != nil {
		r.t.Fatal(err)
	}
	r.start()
}

// total sums stat over every stored window of metric.
func (r *restartRig) total(metricName, stat string) float64 {
	r.t.Helper()
	rows, err := r.st.Query(context.Background(), store.Query{Metric: metricName, From: t0.Add(-time.Hour), To: r.now.Add(time.Hour), Step: time.Minute})
	if err != nil {
		r.t.Fatal(err)
	}
	var sum float64
	for _, row := range rows {
		v, ok, err := store.Stat(row, stat)
		if err != nil {
			r.t.Fatal(err)
		}
		if ok {
			sum += v
		}
	}
	return sum
}

// TestRestartKeepsCumulativeCounts: cumulative counters and histograms
// scraped every 15 s through crashes at every phase of a window (just after
// an emission; after the boundary, with points of the next window already
// in, before the emission), a counter reset and a series that goes silent.
// The store ends with exactly the increments generated after the first
// scrape: nothing lost, nothing counted twice. Without saved baselines each
// crash loses the increments since the last stored window plus one scrape
// interval.
func TestRestartKeepsCumulativeCounts(t *testing.T) {
	r := newRestartRig(t)
	const counters = 20
	res := attrsOf("service.name", "app")
	start := t0.Add(-time.Hour) // the producer started before the agent
	values := make([]float64, counters)
	var wantCount float64 // increments after the first scrape
	cum := histogram.New(160, 20)
	var wantObs float64
	crashAt := map[int]bool{
		14: true, // 70 s: just after window 0 was emitted (65 s)
		25: true, // 125 s: window 1 not yet emitted; the 121 s scrape belongs to window 2
		49: true, // 245 s
		50: true, // 250 s: again right after the restart
	}
	for step := range 100 { // 5 s steps, 500 s
		r.now = t0.Add(time.Duration(step)*5*time.Second + time.Second)
		if crashAt[step] {
			r.crash()
		}
		if step%3 == 0 { // a scrape every 15 s
			batch := metric.Batch{Source: "app"}
			for i := range counters {
				inc := float64(i + step%7)
				if i == 3 && step == 60 {
					values[i] = 0 // a reset: the new value is the delta
					inc = 2
				}
				if i == 5 && step > 30 && step < 80 {
					continue // silent for a while
				}
				values[i] += inc
				if step > 0 {
					wantCount += inc
				}
				batch.Series = append(batch.Series, metric.Series{Name: "requests", Kind: metric.Counter, Temporality: metric.Cumulative,
					Resource: res, Attrs: attrsOf("route", fmt.Sprintf("/r/%d", i)),
					Points: []metric.Point{{Start: start, Time: r.now, Value: values[i]}}})
			}
			for j := range step%4 + 1 {
				cum.Record(0.01 * float64(j+step%5+1))
				if step > 0 {
					wantObs++
				}
			}
			batch.Series = append(batch.Series, metric.Series{Name: "latency", Kind: metric.Histogram, Temporality: metric.Cumulative,
				Resource: res, Points: []metric.Point{{Start: start, Time: r.now, Hist: cum.Clone()}}})
			if err := r.p.Consume(context.Background(), batch); err != nil {
				t.Fatal(err)
			}
		}
		r.p.tick(r.now)
	}
	r.p.Flush()
	if got := r.total("requests", "sum"); got != wantCount {
		t.Errorf("counter increments stored = %v, want %v (%+v)", got, wantCount, got-wantCount)
	}
	if got := r.total("latency", "count"); got != wantObs {
		t.Errorf("histogram observations stored = %v, want %v (%+v)", got, wantObs, got-wantObs)
	}
	if r.saved == 0 || metricValue(r.p.m.baselinesSaved) == 0 {
		t.Error("no baseline was saved")
	}
	if got := metricValue(r.p.m.baselinesRestored); got != counters+1 {
		t.Errorf("baselines restored after the last crash = %v, want %d", got, counters+1)
	}
}

// TestBaselinesOnlyChangedAndForgotten: a window saves the baselines of the
// series that moved in it, not all of them; the baseline of a series silent
// past the forget time is deleted from the store.
func TestBaselinesOnlyChangedAndForgotten(t *testing.T) {
	r := newRestartRig(t)
	// scrape: routes series, the first moved of them at v, the others at
	// rest.
	scrape := func(routes, moved int, v float64) {
		batch := metric.Batch{Source: "app"}
		for i := range routes {
			x := 1.0
			if i < moved {
				x = v
			}
			batch.Series = append(batch.Series, metric.Series{Name: "requests", Kind: metric.Counter, Temporality: metric.Cumulative,
				Attrs: attrsOf("route", fmt.Sprintf("/r/%d", i)), Points: []metric.Point{{Time: r.now, Value: x}}})
		}
		if err := r.p.Consume(context.Background(), batch); err != nil {
			t.Fatal(err)
		}
	}
	count := func() int {
		n := 0
		if err := r.st.ScanBaselines(context.Background(), func(k, v []byte) error {
			if [16]byte(k) != watermarkKey {
				n++
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	r.now = t0.Add(10 * time.Second)
	scrape(10, 1, 1)
	r.now = t0.Add(25 * time.Second)
	scrape(10, 1, 1)
	r.now = t0.Add(70 * time.Second)
	r.p.tick(r.now)
	if n := count(); n != 10 {
		t.Fatalf("after the first window: %d baselines saved, want 10", n)
	}
	before := r.saved
	r.now = t0.Add(80 * time.Second)
	scrape(10, 2, 2) // only 2 of the 10 move
	r.now = t0.Add(130 * time.Second)
	r.p.tick(r.now)
	if d := r.saved - before; d != 2 {
		t.Errorf("second window saved %d baselines, want the 2 that moved", d)
	}
	// Silent past 2×lateness + 10 min: forgotten, and deleted with the next
	// window (series 0 keeps the pipeline busy).
	for m := 3; m <= 25; m++ {
		r.now = t0.Add(time.Duration(m)*time.Minute + 10*time.Second)
		scrape(1, 1, float64(m))
		r.p.tick(r.now)
	}
	if n := count(); n != 1 {
		t.Errorf("after 20 min of silence: %d baselines saved, want 1", n)
	}
	// A crash with a saved baseline that expires while the agent is down.
	r.now = r.now.Add(time.Hour)
	r.crash()
	r.p.Flush()
	if n := count(); n != 0 {
		t.Errorf("after an hour down: %d baselines saved, want 0", n)
	}
}

// TestRestartReplaysDeltaJournal: delta counters and histograms acknowledged
// (Consume returned) into windows still open at a crash are replayed from the
// journal after the restart: the store ends with every point exactly once,
// and the journal keeps only segments of windows not yet stored.
func TestRestartReplaysDeltaJournal(t *testing.T) {
	r := newRestartRig(t)
	var wantSum, wantObs float64
	// 40 and 41: a second crash before the replayed window was stored.
	crashAt := map[int]bool{14: true, 25: true, 26: true, 40: true, 41: true, 61: true}
	for step := range 90 { // 5 s steps
		r.now = t0.Add(time.Duration(step)*5*time.Second + time.Second)
		if crashAt[step] {
			r.crash()
		}
		if step%2 == 0 { // an export every 10 s
			h := histogram.New(160, 20)
			for j := range step%3 + 1 {
				h.Record(0.01 * float64(j+1))
				wantObs++
			}
			v := float64(step + 1)
			wantSum += v
			b := metric.Batch{Source: "otlp", Series: []metric.Series{
				{Name: "requests", Kind: metric.Counter, Temporality: metric.Delta, Attrs: attrsOf("route", "/a"),
					Points: []metric.Point{{Start: r.now.Add(-10 * time.Second), Time: r.now, Value: v}}},
				{Name: "latency", Kind: metric.Histogram, Temporality: metric.Delta,
					Points: []metric.Point{{Start: r.now.Add(-10 * time.Second), Time: r.now, Hist: h}}},
			}}
			if err := r.p.Consume(context.Background(), b); err != nil {
				t.Fatal(err)
			}
		}
		r.p.tick(r.now)
	}
	segs, _ := os.ReadDir(filepath.Join(r.dir, "journal"))
	if len(segs) > 3 {
		t.Errorf("%d journal segments kept, want the current ones only", len(segs))
	}
	if metricValue(r.p.m.journalReplayed) == 0 {
		t.Error("no point replayed after the last crash")
	}
	r.p.Flush()
	if got := r.total("requests", "sum"); got != wantSum {
		t.Errorf("delta sum stored = %v, want %v (%+v)", got, wantSum, got-wantSum)
	}
	if got := r.total("latency", "count"); got != wantObs {
		t.Errorf("delta histogram observations stored = %v, want %v (%+v)", got, wantObs, got-wantObs)
	}
}

// TestJournalTornRecord: a record cut short by the crash (the kill hit a
// write) ends the replay of its segment; the records before it are
// replayed, and the agent starts.
func TestJournalTornRecord(t *testing.T) {
	r := newRestartRig(t)
	r.now = t0.Add(10 * time.Second)
	for i, v := range []float64{3, 5} {
		b := metric.Batch{Source: "otlp", Series: []metric.Series{{Name: "requests", Kind: metric.Counter, Temporality: metric.Delta,
			Points: []metric.Point{{Time: r.now.Add(time.Duration(i) * time.Second), Value: v}}}}}
		if err := r.p.Consume(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
	r.p = nil
	if err := r.st.Close(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(r.dir, "journal")
	segs, err := os.ReadDir(dir)
	if err != nil || len(segs) != 1 {
		t.Fatalf("journal segments: %v, %v", segs, err)
	}
	path := filepath.Join(dir, segs[0].Name())
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, fi.Size()-3); err != nil {
		t.Fatal(err)
	}
	r.now = t0.Add(20 * time.Second)
	r.start()
	r.p.Flush()
	if got := r.total("requests", "sum"); got != 3 {
		t.Errorf("stored %v after a torn second record, want the first record's 3", got)
	}
	if segs, _ := os.ReadDir(dir); len(segs) != 1 {
		t.Errorf("%d journal segments after the replay and a flush, want the current one", len(segs))
	}
}
