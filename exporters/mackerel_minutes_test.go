package exporters

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/internal/fake/fakemackerel"
	"github.com/sabakiio/sabaki/metric"
)

// subMinuteWindows are five 15 s windows: four in minute t0, one in the next
// minute; window i has 10·(i+1) observations per route.
func subMinuteWindows() []*metric.Window {
	var ws []*metric.Window
	for i := range 5 {
		w, _ := latencyWindow(t0.Add(time.Duration(i)*15*time.Second), 10*(i+1), false)
		w.Duration = 15 * time.Second
		ws = append(ws, w)
	}
	return ws
}

// TestMackerelSubMinuteRestart: with windows shorter than a minute, the
// process stops (kill -9 at each step of a window's export, or a clean
// shutdown) in the middle of a minute and a new one carries on from its data
// directory. The minute Mackerel ends up with covers every window of it,
// each once: 10+20+30+40 observations, not just those after the restart,
// and not the re-sent one twice.
func TestMackerelSubMinuteRestart(t *testing.T) {
	const name = "http.server.request.duration.count.GET"
	cases := []struct {
		name string
		at   int // the window whose export the first process dies in (or, clean, the last it sends)
		// kill -9 step: "before" the window is handled at all, "journaled"
		// (its post failed: journal written, cursor not moved), "posted"
		// (Mackerel has it, the cursor did not move), "clean" shutdown.
		step string
		torn bool // a torn record at the end of the journal file
	}{
		{"kill before the first window of the minute is handled", 0, "before", false},
		{"kill before a window is handled", 2, "before", false},
		{"kill after the journal, before the post", 1, "journaled", false},
		{"kill after the post, before the cursor", 1, "posted", false},
		{"kill after the post, torn journal record", 2, "posted", true},
		{"kill after the last window of the minute", 3, "posted", false},
		{"clean shutdown mid-minute", 1, "clean", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := newMackerelEnv(t, nil)
			env.clock.Set(t0.Add(3 * time.Minute))
			exp, ob := env.open()
			ws := subMinuteWindows()
			dir := env.dir
			if tc.step != "clean" {
				snapshot := t.TempDir()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				ob.exp = exporterFunc{name: exp.Name(), export: func(ctx2 context.Context, w *metric.Window) error {
					if !w.Start.Equal(ws[tc.at].Start) {
						return exp.Export(ctx2, w)
					}
					switch tc.step {
					case "journaled":
						env.fake.FailNext(1, "/api/v0/services/", fakemackerel.Fault{Status: 503})
						if err := exp.Export(ctx2, w); err == nil {
							t.Error("the post did not fail")
						}
					case "posted":
						if err := exp.Export(ctx2, w); err != nil {
							t.Error(err)
						}
					}
					copyDir(t, ob.dir, filepath.Join(snapshot, "outbox", exp.Name())) // the process dies here
					cancel()
					return context.Canceled
				}}
				for _, w := range ws[:tc.at+1] {
					mustEnqueue(t, ob, w)
				}
				done := make(chan struct{})
				go func() { ob.Run(ctx); close(done) }()
				<-done
				dir = snapshot
			} else {
				for _, w := range ws[:tc.at+1] {
					mustEnqueue(t, ob, w)
				}
				drain(t, ob)
			}
			if tc.torn {
				f, err := os.OpenFile(filepath.Join(dir, "outbox", exp.Name(), strconv.FormatInt(t0.Unix(), 10)+minuteSuffix), os.O_WRONLY|os.O_APPEND, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.Write([]byte{0x40, 0, 0, 0, 1, 2, 3, 4, 5})
				f.Close()
			}

			env2 := *env
			env2.dir = dir
			_, ob2 := env2.open()
			for _, w := range ws[tc.at+1:] {
				mustEnqueue(t, ob2, w)
			}
			drain(t, ob2)
			if v, _ := env.fake.Value("toitta", name, t0); v != 100 {
				t.Errorf("minute %s holds count %v, want 100 (every window of the minute once)\n%s", fmtTime(t0), v, env.logs.String())
			}
			if v, _ := env.fake.Value("toitta", name, t0.Add(time.Minute)); v != 50 {
				t.Errorf("next minute holds count %v, want 50", v)
			}
			if v, _ := env.fake.Value("toitta", "http.server.request.duration.rate.GET", t0); v != 100.0/60 {
				t.Errorf("rate = %v, want %v (the minute's four windows)", v, 100.0/60)
			}
		})
	}
}

// TestMackerelSubMinuteJournalFiles: the journal keeps one 0600 file per
// minute and deletes the files of minutes that fell behind subMinuteKeep.
func TestMackerelSubMinuteJournalFiles(t *testing.T) {
	env := newMackerelEnv(t, nil)
	env.clock.Set(t0.Add(30 * time.Minute))
	exp, _ := env.open()
	for i := range 15 {
		w, _ := latencyWindow(t0.Add(time.Duration(i)*time.Minute), 10, false)
		w.Duration = 30 * time.Second
		if err := exp.Export(context.Background(), w); err != nil {
			t.Fatal(err)
		}
	}
	// Mackerel down: the outbox hands the newest window over again and
	// again; the journal keeps one record of it.
	last := filepath.Join(env.dir, "outbox", exp.Name(), strconv.FormatInt(t0.Add(14*time.Minute).Unix(), 10)+minuteSuffix)
	before, err := os.Stat(last)
	if err != nil {
		t.Fatal(err)
	}
	env.fake.FailNext(3, "/api/v0/services/", fakemackerel.Fault{Status: 503})
	for range 3 {
		w, _ := latencyWindow(t0.Add(14*time.Minute), 10, false)
		w.Duration = 30 * time.Second
		if err := exp.Export(context.Background(), w); err == nil {
			t.Fatal("want the scripted 503")
		}
	}
	if after, _ := os.Stat(last); after.Size() != before.Size() {
		t.Errorf("retries grew the journal from %d to %d bytes", before.Size(), after.Size())
	}
	files, _ := filepath.Glob(filepath.Join(env.dir, "outbox", exp.Name(), "*.minute"))
	if len(files) != 11 { // minutes 4..14: the newest and the 10 before it
		t.Fatalf("%d journal files, want 11: %v", len(files), files)
	}
	for _, f := range files {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, %v", f, st.Mode(), err)
		}
	}
	if st, err := os.Stat(filepath.Join(env.dir, "outbox", exp.Name())); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("journal directory mode %v, %v", st.Mode(), err)
	}
}

func TestMinuteWindowsPut(t *testing.T) {
	agg := func(route string, sum float64) metric.Aggregate {
		return metric.Aggregate{Name: "c", Kind: metric.Counter, Sum: sum, Attrs: metric.Attrs{{Key: "route", Value: route}}}
	}
	win := func(rev int, aggs ...metric.Aggregate) *metric.Window {
		return &metric.Window{Start: t0, Duration: 10 * time.Second, Revision: rev, Series: aggs}
	}
	sums := func(w *metric.Window) map[string]float64 {
		m := map[string]float64{}
		for _, a := range w.Series {
			m[a.Attrs[0].Value] = a.Sum
		}
		return m
	}
	cases := []struct {
		name   string
		first  *metric.Window
		second *metric.Window
		ok     bool
		want   map[string]float64
	}{
		{"a revision replaces", win(0, agg("a", 1), agg("b", 2)), win(1, agg("a", 5), agg("b", 6)), true, map[string]float64{"a": 5, "b": 6}},
		{"an older revision is ignored", win(2, agg("a", 1)), win(1, agg("a", 5)), false, map[string]float64{"a": 1}},
		{"the same window again is counted once", win(0, agg("a", 1)), win(0, agg("a", 1)), true, map[string]float64{"a": 1}},
		{"series the new one lacks are kept, as in the store", win(0, agg("a", 1), agg("b", 2)), win(0, agg("a", 7)), true, map[string]float64{"a": 7, "b": 2}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mw := newMinuteWindows()
			mw.put(tc.first)
			if ok := mw.put(tc.second); ok != tc.ok {
				t.Errorf("put = %v, want %v", ok, tc.ok)
			}
			got := sums(mw.windows[t0.UnixNano()])
			if len(got) != len(tc.want) {
				t.Fatalf("series %v, want %v", got, tc.want)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("series %s = %v, want %v", k, got[k], v)
				}
			}
		})
	}
}

// TestMackerelAnnotationAcrossRestart: a restarted process re-sends the
// window in flight at the kill (and then goes on with breaching minutes
// within annotate_every): the annotation the previous process made counts,
// so the breach is annotated once, not once per process.
func TestMackerelAnnotationAcrossRestart(t *testing.T) {
	env := newMackerelEnv(t, func(c *MackerelConfig) {
		c.Annotate = []MackerelAnnotate{{Metric: "http.server.*", Stat: "p95", Above: Threshold{Value: 1000, IsDuration: true, set: true}}}
		c.AnnotateEvery = config.Duration(10 * time.Minute)
	})
	env.clock.Set(t0.Add(5 * time.Minute))
	ctx := context.Background()
	a, _ := env.open()
	slow, _ := latencyWindow(t0, 100, true)
	if err := a.Export(ctx, slow); err != nil {
		t.Fatal(err)
	}
	if n := len(env.fake.Annotations()); n != 1 {
		t.Fatalf("%d annotations after the first breach, want 1", n)
	}
	b, _ := env.open() // the restarted process
	for i := range 3 {
		w, _ := latencyWindow(t0.Add(time.Duration(i)*time.Minute), 100, true) // minute 0 again: the re-sent window
		if err := b.Export(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(env.fake.Annotations()); n != 1 {
		t.Errorf("%d annotations after the restart, want still 1 (annotate_every 10m)", n)
	}
	// Past annotate_every the rule fires again.
	w, _ := latencyWindow(t0.Add(11*time.Minute), 100, true)
	if err := b.Export(ctx, w); err != nil {
		t.Fatal(err)
	}
	if n := len(env.fake.Annotations()); n != 2 {
		t.Errorf("%d annotations after annotate_every, want 2", n)
	}
}

// BenchmarkMinuteJournal measures the journal's cost per sub-minute window
// of 1,000 latency series (10 s windows): the fsync'd append, and the replay
// of the 10 kept minutes (60 windows) at start. Run with
// -bench MinuteJournal -benchtime=20x.
func BenchmarkMinuteJournal(b *testing.B) {
	w := realisticWindow(t0, 1000)
	w.Duration = 10 * time.Second
	b.Run("append", func(b *testing.B) {
		j := &minuteJournal{dir: b.TempDir(), log: slog.New(slog.DiscardHandler)}
		for i := 0; b.Loop(); i++ {
			w.Start = t0.Add(time.Duration(i) * 10 * time.Second)
			if err := j.append(w.Start.Truncate(time.Minute).Unix(), w); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		var size int64
		files, _ := filepath.Glob(filepath.Join(j.dir, "*"+minuteSuffix))
		for _, f := range files {
			st, _ := os.Stat(f)
			size += st.Size()
		}
		b.ReportMetric(float64(size)/float64(b.N), "disk-B/window")
	})
	b.Run("replay-10min", func(b *testing.B) {
		j := &minuteJournal{dir: b.TempDir(), log: slog.New(slog.DiscardHandler)}
		for i := range 60 {
			w.Start = t0.Add(time.Duration(i) * 10 * time.Second)
			if err := j.append(w.Start.Truncate(time.Minute).Unix(), w); err != nil {
				b.Fatal(err)
			}
		}
		for b.Loop() {
			if _, err := j.load(map[int64]*minuteWindows{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
