package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/metric"
)

// TestRestartLatePointForStoredWindow: a window stored by the previous
// process gets a late point after a restart. The new process knows nothing
// of what that window holds, so emitting the window again (as revision 0,
// with only the late point) would replace the stored values with the late
// point's. The point is dropped instead, counted as too_late, and the
// stored window keeps its values.
func TestRestartLatePointForStoredWindow(t *testing.T) {
	r := newRestartRig(t)
	ctx := context.Background()
	delta := func(at time.Time, route string, v float64) metric.Batch {
		return metric.Batch{Source: "otlp", Series: []metric.Series{
			{Name: "requests", Kind: metric.Counter, Temporality: metric.Delta, Attrs: attrsOf("route", route),
				Points: []metric.Point{{Start: at.Add(-10 * time.Second), Time: at, Value: v}}},
		}}
	}
	// Window [t0, t0+1m): 10 on /a and 3 on /b, emitted and stored.
	r.now = t0.Add(20 * time.Second)
	if err := r.p.Consume(ctx, delta(r.now, "/a", 10)); err != nil {
		t.Fatal(err)
	}
	if err := r.p.Consume(ctx, delta(r.now, "/b", 3)); err != nil {
		t.Fatal(err)
	}
	for s := 25; s <= 70; s += 5 {
		r.now = t0.Add(time.Duration(s) * time.Second)
		r.p.tick(r.now)
	}
	if got := r.total("requests", "sum"); got != 13 {
		t.Fatalf("before the crash: stored %v, want 13", got)
	}

	r.crash()
	// After the restart, well within the lateness of the stored window: a
	// late point for it, and a point of the current window.
	r.now = t0.Add(80 * time.Second)
	if err := r.p.Consume(ctx, delta(t0.Add(30*time.Second), "/a", 5)); err != nil {
		t.Fatal(err)
	}
	if err := r.p.Consume(ctx, delta(r.now, "/a", 7)); err != nil {
		t.Fatal(err)
	}
	for s := 85; s <= 200; s += 5 {
		r.now = t0.Add(time.Duration(s) * time.Second)
		r.p.tick(r.now)
	}
	r.p.Flush()
	if got := r.total("requests", "sum"); got != 20 {
		t.Errorf("stored %v, want 20: the first window's 13 kept and the current window's 7 (the late 5 dropped)", got)
	}
	if got := metricValue(r.p.m.dropped[DropTooLate]); got != 1 {
		t.Errorf("too_late drops = %v, want 1", got)
	}
}

// TestJournalFailureRefusesDeltaBatch: when the delta journal cannot be
// written (a full disk), a batch with delta points is refused with
// metric.ErrFull, so the OTLP receiver answers "retry later" instead of
// acknowledging points a crash would lose; batches without delta points go
// on. The next write starts a new segment (the failed one may end in a torn
// record), and after a crash everything acknowledged is replayed.
func TestJournalFailureRefusesDeltaBatch(t *testing.T) {
	r := newRestartRig(t)
	ctx := context.Background()
	delta := func(v float64) metric.Batch {
		return metric.Batch{Source: "otlp", Series: []metric.Series{
			{Name: "requests", Kind: metric.Counter, Temporality: metric.Delta,
				Points: []metric.Point{{Start: r.now.Add(-time.Second), Time: r.now, Value: v}}},
		}}
	}
	r.now = t0.Add(10 * time.Second)
	if err := r.p.Consume(ctx, delta(1)); err != nil {
		t.Fatal(err)
	}
	// The journal's file fails under it.
	r.p.jr.mu.Lock()
	r.p.jr.f.Close()
	r.p.jr.mu.Unlock()
	r.now = t0.Add(20 * time.Second)
	err := r.p.Consume(ctx, delta(10))
	if !errors.Is(err, metric.ErrFull) {
		t.Fatalf("Consume with a failing journal = %v, want metric.ErrFull", err)
	}
	gauge := metric.Batch{Source: "prom", Series: []metric.Series{
		{Name: "temp", Kind: metric.Gauge, Points: []metric.Point{{Time: r.now, Value: 3}}},
	}}
	if err := r.p.Consume(ctx, gauge); err != nil {
		t.Errorf("a batch without delta points refused: %v", err)
	}
	r.now = t0.Add(30 * time.Second)
	if err := r.p.Consume(ctx, delta(100)); err != nil {
		t.Fatalf("the journal did not recover: %v", err)
	}
	if got := metricValue(r.p.m.journalErrors); got != 1 {
		t.Errorf("journal write errors = %v, want 1", got)
	}
	r.crash()
	for s := 35; s <= 120; s += 5 {
		r.now = t0.Add(time.Duration(s) * time.Second)
		r.p.tick(r.now)
	}
	r.p.Flush()
	if got := r.total("requests", "sum"); got != 101 {
		t.Errorf("stored %v after the crash, want 101: the acknowledged 1 and 100, not the refused 10", got)
	}
}
