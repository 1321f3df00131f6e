package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/agent"
	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/exporters"
	"github.com/sabakiio/sabaki/metric"
)

// faultyOutbox is a real outbox with a fault hook: while fail > 0 each
// Enqueue fails as a full disk makes the outbox's segment write fail (and
// counts fail down; fail < 0 fails until set to 0).
type faultyOutbox struct {
	*exporters.Outbox
	fail    int
	refused int
}

func (f *faultyOutbox) outbox() *exporters.Outbox { return f.Outbox }

func (f *faultyOutbox) Enqueue(w *metric.Window) error {
	if f.fail != 0 {
		if f.fail > 0 {
			f.fail--
		}
		f.refused++
		return fmt.Errorf("outbox of rec: writing window: %w", &fs.PathError{Op: "write", Path: "00000000000000000001.seg", Err: syscall.ENOSPC})
	}
	return f.Outbox.Enqueue(w)
}

// enqT0 is the first window of the enqueue tests: three minutes ago,
// within the real outbox's max_age (its clock is the wall clock) and, for
// the replay, in the store's head table (windows of the open chunk).
var enqT0 = time.Now().UTC().Truncate(time.Minute).Add(-3 * time.Minute)

// enqRig is the daemon's hand-over to one exporter: a real outbox (sending
// to a recording exporter) behind the fault hook, and enqueueRetry on a
// fake clock.
type enqRig struct {
	t    *testing.T
	exp  *recordingExporter
	ob   *faultyOutbox
	r    *enqueueRetry
	errs *prometheus.CounterVec
	log  *strings.Builder
	now  time.Time
	next int // minute of the next window
}

func newEnqRig(t *testing.T, maxWindows int) *enqRig {
	g := &enqRig{t: t, exp: &recordingExporter{}, log: &strings.Builder{}, now: enqT0}
	ob, err := exporters.NewOutbox(exporters.DefaultOutboxConfig(), g.exp, exporters.Settings{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	g.ob = &faultyOutbox{Outbox: ob}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); ob.Run(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		ob.Shutdown(sctx)
		cancel()
		<-done
	})
	g.errs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "enqueue_errors"}, []string{"exporter"})
	g.r = newEnqueueRetry(slog.New(slog.NewTextHandler(g.log, nil)), prometheus.NewRegistry(), g.errs)
	g.r.now = func() time.Time { return g.now }
	if maxWindows > 0 {
		g.r.maxWindows = maxWindows
	}
	g.r.add("rec")
	return g
}

func (g *enqRig) window(minute, rev int) *metric.Window {
	return &metric.Window{Start: enqT0.Add(time.Duration(minute) * time.Minute), Duration: time.Minute, Revision: rev,
		Series: []metric.Aggregate{{Name: "requests", Kind: metric.Gauge, Sum: float64(minute), Count: 1, Last: float64(minute)}}}
}

// close hands the next window over, as onWindowState does at each close.
func (g *enqRig) close() error {
	w := g.window(g.next, 0)
	g.next++
	g.now = w.End().Add(time.Second)
	return g.r.Offer("rec", g.ob, w)
}

// waitSent waits until the exporter got n windows.
func (g *enqRig) waitSent(n int) []string {
	g.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := g.exp.sent()
		if len(got) >= n && g.ob.Depth() == 0 {
			return got
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("exporter got %v, want %d windows", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func minutes(from, to int) string {
	var s []string
	for m := from; m < to; m++ {
		s = append(s, enqT0.Add(time.Duration(m)*time.Minute).Format("15:04")+"/0")
	}
	return strings.Join(s, " ")
}

// TestEnqueueRetryRecovers: an outbox that refuses 3 enqueues (a full
// disk) then takes windows again gets every window, in order, with no
// restart: the refused window is offered again at the next closes, the
// windows behind it wait, and all of them are queued once it is taken.
func TestEnqueueRetryRecovers(t *testing.T) {
	g := newEnqRig(t, 0)
	if err := g.close(); err != nil { // window 0 queued
		t.Fatal(err)
	}
	g.ob.fail = 3
	for i := 1; i <= 3; i++ { // 1 refused; 2 and 3 wait behind it (its offers refused again)
		if err := g.close(); err == nil {
			t.Fatalf("window %d: queued while the outbox refuses", i)
		}
		if got := g.r.pending("rec"); got != i {
			t.Fatalf("after window %d: %d waiting, want %d", i, got, i)
		}
	}
	if err := g.close(); err != nil { // 4: 1, 2, 3 queued first, then 4
		t.Fatalf("window 4: %v", err)
	}
	if err := g.close(); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(g.waitSent(6), " "), minutes(0, 6); got != want {
		t.Errorf("sent %s, want %s", got, want)
	}
	for _, c := range []struct {
		what      string
		got, want float64
	}{
		{"sabaki_agent_enqueue_errors_total", value(g.errs), 3},
		{"retries{queued}", value(g.r.m.retries.WithLabelValues("rec", "queued")), 3},
		{"retries{failed}", value(g.r.m.retries.WithLabelValues("rec", "failed")), 2},
		{"pending", value(g.r.m.pending), 0},
		{"abandoned", value(g.r.m.abandoned), 0},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if !strings.Contains(g.log.String(), "queued a window for an exporter after its outbox refused it") {
		t.Errorf("no log line for the windows queued late:\n%s", g.log.String())
	}
}

// TestEnqueueRetryBackoff: between window closes a refused window is
// offered again once its backoff (1 s, doubling) has passed, not before.
func TestEnqueueRetryBackoff(t *testing.T) {
	g := newEnqRig(t, 0)
	g.ob.fail = -1
	if err := g.close(); err == nil {
		t.Fatal("window 0 queued while the outbox refuses")
	}
	g.r.retry("rec", g.ob) // before the backoff: not offered
	if g.ob.refused != 1 {
		t.Fatalf("offered %d times before the backoff passed, want 1", g.ob.refused)
	}
	g.now = g.now.Add(retryMinBackoff)
	g.r.retry("rec", g.ob) // refused again: the backoff doubles
	if g.ob.refused != 2 {
		t.Fatalf("offered %d times, want 2", g.ob.refused)
	}
	g.now = g.now.Add(retryMinBackoff)
	g.r.retry("rec", g.ob)
	if g.ob.refused != 2 {
		t.Fatalf("offered again after 1 s, want the doubled backoff (2 s)")
	}
	g.ob.fail = 0
	g.now = g.now.Add(retryMinBackoff)
	g.r.retry("rec", g.ob)
	if got := g.r.pending("rec"); got != 0 {
		t.Fatalf("%d still waiting after the outbox took windows again", got)
	}
	if got := strings.Join(g.waitSent(1), " "); got != minutes(0, 1) {
		t.Errorf("sent %s, want %s", got, minutes(0, 1))
	}
}

// TestEnqueueRetryReplayed: a waiting window that the outbox accepted
// meanwhile (replayCommitted at a reload's restart of the exporter) is
// dropped by the outbox when offered again: sent once.
func TestEnqueueRetryReplayed(t *testing.T) {
	g := newEnqRig(t, 0)
	g.ob.fail = 1
	if err := g.close(); err == nil {
		t.Fatal("window 0 queued while the outbox refuses")
	}
	if err := g.ob.Outbox.Enqueue(g.window(0, 0)); err != nil { // the replay from the store
		t.Fatal(err)
	}
	if err := g.close(); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(g.waitSent(2), " "), minutes(0, 2); got != want {
		t.Errorf("sent %s, want %s (each once)", got, want)
	}
}

// TestEnqueueRetryBounds: past maxPendingWindows the oldest waiting window
// is given up, counted by reason and logged; a refusal that is not a write
// error is not kept; at shutdown what still waits is given up (counted),
// and /readyz turns not ready at three quarters of the bound.
func TestEnqueueRetryBounds(t *testing.T) {
	g := newEnqRig(t, 4)
	g.ob.fail = -1
	for range 2 {
		g.close()
	}
	if detail, err := g.r.status(); err != nil || !strings.Contains(detail, "rec: 2 windows") {
		t.Errorf("status with 2 of 4 waiting: %q, %v; want the count, ready", detail, err)
	}
	g.close()
	if detail, err := g.r.status(); err == nil {
		t.Errorf("ready with 3 of 4 windows waiting (%q)", detail)
	}
	g.close()
	g.close() // the fifth: window 0 given up
	if got := value(g.r.m.abandoned.WithLabelValues("rec", abandonMaxWindows)); got != 1 {
		t.Fatalf("abandoned{max_windows} = %v, want 1", got)
	}
	if !strings.Contains(g.log.String(), "gave up queueing a window") || !strings.Contains(g.log.String(), "reason=max_windows") {
		t.Errorf("no error log naming the given-up window and the reason:\n%s", g.log.String())
	}
	g.r.finish("rec", g.ob)
	if got := value(g.r.m.abandoned.WithLabelValues("rec", abandonShutdown)); got != 4 {
		t.Errorf("abandoned{shutdown} = %v, want 4", got)
	}
	if got := g.r.pending("rec"); got != 0 {
		t.Errorf("%d still waiting after finish", got)
	}
	// Not a write failure: returned, not kept.
	final := errors.New("outbox of rec: window is 9 bytes, more than max_bytes")
	if err := g.r.Offer("rec", refusing{g.ob, final}, g.window(9, 0)); !errors.Is(err, final) {
		t.Errorf("Offer = %v, want %v", err, final)
	}
	if got := g.r.pending("rec"); got != 0 {
		t.Errorf("a window refused for good is kept (%d waiting)", got)
	}
}

// refusing is a queue whose Enqueue always returns err.
type refusing struct {
	exportQueue
	err error
}

func (r refusing) Enqueue(*metric.Window) error { return r.err }

// TestReplayRefusedAtStart: the disk is still full when the agent starts,
// so the outbox refuses the stored windows replayCommitted hands it; they
// wait in memory and reach the exporter, in order, once the outbox takes
// windows again, with the windows closed meanwhile behind them.
func TestReplayRefusedAtStart(t *testing.T) {
	g := newEnqRig(t, 0)
	if err := g.ob.MarkAccepted(nil); err != nil { // an outbox with marks: not Fresh
		t.Fatal(err)
	}
	st, err := store.Open(store.Dir(t.TempDir()), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for ; g.next < 3; g.next++ { // stored, never queued (the previous process stopped)
		if err := st.WriteWithState(context.Background(), rigWindow(enqT0.Add(time.Duration(g.next)*time.Minute), 0, 1), nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	g.ob.fail = -1
	exps := []*runningExporter{{name: "rec", cfg: &exporters.RemoteWriteConfig{Outbox: exporters.DefaultOutboxConfig()}, q: g.ob}}
	replayCommitted(context.Background(), st, exps, agent.HistogramConfig{}, g.r, slog.New(slog.NewTextHandler(g.log, nil)))
	if got := g.r.pending("rec"); got != 3 {
		t.Fatalf("%d windows waiting after a refused replay, want 3", got)
	}
	g.close() // window 3 closes while the disk is still full
	g.ob.fail = 0
	g.close() // window 4: 0..3 queued first
	if got, want := strings.Join(g.waitSent(5), " "), minutes(0, 5); got != want {
		t.Errorf("sent %s, want %s", got, want)
	}
}
