package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/internal/fake/fakemackerel"
	"github.com/sabakiio/sabaki/internal/loadgen"
)

// exporterCounts reads the Mackerel exporter's outbox counters.
func exporterCounts(a *agent) (enqueued, sent, dropped, waiting float64) {
	return a.metricValue("sabaki_exporter_enqueued_windows_total"), a.metricValue("sabaki_exporter_sent_windows_total"),
		a.metricValue("sabaki_exporter_dropped_windows_total"), a.metricValue("sabaki_exporter_outbox_windows")
}

// TestMackerelOutage: fake Mackerel answers 503 for a stretch of windows
// while load goes on, then recovers. Every window the pipeline closed is
// sent exactly once (sent = enqueued, none dropped, none waiting) and the
// per-minute counts in Mackerel add up to what was generated and equal the
// store's minute by minute. Short: 3 s outage; full: 15 s, starting at
// second 50 of a minute.
func TestMackerelOutage(t *testing.T) {
	outage := 3 * time.Second
	if full() {
		outage = 15 * time.Second
	}
	e := newEnv(t)
	mk := newMackerel(t)
	l := startLoad(t, e, 2, 0)
	cfg := e.writeConfig(t, e.agentSection()+"sources:\n"+l.promSource("500ms")+"exporters:\n"+mackerelExporter(mk.URL))
	a := e.start(t, cfg, nil)
	l.waitBaseline(t)
	l.run(2*time.Second, 10)
	if full() {
		// The outage starts at second 50 of a minute, so it spans a minute
		// boundary: both minutes must reach Mackerel whole.
		l.run(untilSecond(50), 10)
	}
	from := time.Now()
	mk.FailBetween(from, from.Add(outage), "/api/v0/services/", fakemackerel.Fault{Status: 503})
	l.run(outage, 10)
	failures := a.metricValue("sabaki_exporter_send_failures_total")
	l.run(2*time.Second, 10)
	l.settle(t)
	var enq, sent, dropped, waiting float64
	waitFor(t, 90*time.Second, "the outbox to drain", func() bool {
		enq, sent, dropped, waiting = exporterCounts(a)
		return waiting == 0 && enq > 0 && sent == enq
	})
	a.stop()
	enqF, sentF := enq, sent
	t.Logf("outage %v: %v send failures during it; windows enqueued %v, sent %v, dropped %v; peak RSS %d KiB", outage, failures, enqF, sentF, dropped, a.peakRSS)
	if failures == 0 {
		t.Errorf("no send failure counted during the outage")
	}
	if dropped != 0 {
		t.Errorf("%v windows dropped", dropped)
	}
	want := l.targets.Totals()
	if got, _ := mackerelSum(mk, "loadgen_request_duration_seconds.count."); got != float64(want.Observations) {
		t.Errorf("Mackerel count after recovery: %v, want %d", got, want.Observations)
	}
	rows := query(t, e.dataDir, "-metric", "loadgen_request_duration_seconds", "-group-by", "e2e", "-stat", "count", "-from", "2h", "-step", "1d")
	if got := sumStat(rows, "count"); got != float64(want.Observations) {
		t.Errorf("store count %v, want %d", got, want.Observations)
	}
	perMinute(t, mk, "loadgen_request_duration_seconds.count.", e.dataDir, "loadgen_request_duration_seconds", "e2e")
	lost, dup := lostDup(float64(want.Observations), sumStat(rows, "count"))
	figures(t, a.counts, lost, dup, a.peakRSS)
}

// untilSecond returns the time until the wall clock next reads second s of
// a minute.
func untilSecond(s int) time.Duration {
	now := time.Now()
	next := now.Truncate(time.Minute).Add(time.Duration(s) * time.Second)
	if !next.After(now) {
		next = next.Add(time.Minute)
	}
	return next.Sub(now)
}

// history records the load's totals over time.
type history struct {
	mu    sync.Mutex
	at    []time.Time
	marks []mark
}

// mark is what had been generated, and what the OTLP receiver had
// acknowledged, at one moment.
type mark struct {
	scrape         loadgen.Totals
	cumGen, cumAck uint64 // the cumulative OTLP sender
	dltGen, dltAck uint64 // the delta OTLP sender
}

func (l *load) mark() mark {
	m := mark{scrape: l.targets.Totals()}
	if l.senders != nil {
		m.cumGen, _, _ = l.senders.Totals()
		m.cumAck = l.senders.Acked()
	}
	if l.delta != nil {
		m.dltGen, _, _ = l.delta.Totals()
		m.dltAck = l.delta.Acked()
	}
	return m
}

func (h *history) add(l *load) {
	m := l.mark()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.at = append(h.at, time.Now())
	h.marks = append(h.marks, m)
}

// before returns the mark last recorded before t.
func (h *history) before(t time.Time) mark {
	h.mu.Lock()
	defer h.mu.Unlock()
	var m mark
	for i, at := range h.at {
		if at.After(t) {
			break
		}
		m = h.marks[i]
	}
	return m
}

// TestKill9: the agent is killed with SIGKILL under load and restarted on
// the same data directory, with three kinds of sender: Prometheus targets
// (cumulative, scraped), an OTel SDK sender exporting cumulative
// histograms, and one exporting delta histograms (the SDK's delta
// temporality selector: an acknowledged delta export is never sent again,
// so the agent alone holds it). Checked, for every kind:
//   - no double count: the store never holds more than was generated (for
//     the delta sender: generated + the exports it re-sent after an attempt
//     that reached the agent and failed, which the agent may have taken in);
//   - cumulative (scrape, OTLP cumulative): the store holds exactly what
//     was generated, the load during the kills included. The pipeline
//     stores each window with the baselines that advanced with it in one
//     transaction, so the first point after a restart yields everything
//     since the last stored window: what the open windows held at the kill
//     is counted once, late.
//   - delta: the store holds every acknowledged point (the pipeline
//     journals delta points before acknowledging them and replays the
//     journal at start), those acknowledged in the 4 s before a kill (in
//     windows still open at it) included; they are logged apart.
//   - Mackerel holds exactly what the store holds, minutes split by a kill
//     included, though it answers 503 from 3 s before the first kill to
//     about 4 s after it (the outbox keeps the windows across the kill).
//
// Short: one kill; full: three.
func TestKill9(t *testing.T) {
	kills := 1
	if full() {
		kills = 3
	}
	e := newEnv(t)
	mk := newMackerel(t)
	l := startLoad(t, e, 2, 0)
	cfg := e.writeConfig(t, e.agentSection()+"sources:\n"+e.otlpSource("")+l.promSource("500ms")+"exporters:\n"+mackerelExporter(mk.URL))
	a := e.start(t, cfg, nil)
	l.waitBaseline(t)
	l.startSenders(t, e, 1)
	l.startDeltaSenders(t, e, 1)

	var h history
	gen := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); {
			l.step(10)
			h.add(l)
			time.Sleep(200 * time.Millisecond)
		}
	}
	// The delta sender's points acknowledged in the 4 s before each kill
	// (a 1 s window, its grace and slack for a loaded machine: the windows
	// open at the kill, which only the journal keeps).
	var dltOpen uint64
	var peak int64
	var counts windowCounts
	if full() {
		// The first kill comes at about second 57 of a minute, so a minute
		// is split by it and by the Mackerel outage around it.
		gen(untilSecond(52))
	}
	for k := range kills {
		if k == 0 {
			// Mackerel is down across the first kill: the windows queued
			// for it must survive the kill in the outbox and be sent after
			// the restart.
			gen(2 * time.Second)
			from := time.Now()
			mk.FailBetween(from, from.Add(8*time.Second), "/api/v0/services/", fakemackerel.Fault{Status: 503})
			gen(3 * time.Second)
		} else {
			gen(5 * time.Second)
		}
		killAt := time.Now()
		a.kill9()
		peak = max(peak, a.peakRSS)
		counts = counts.add(a.counts)
		dltOpen += h.before(killAt).dltAck - h.before(killAt.Add(-4*time.Second)).dltAck
		if k == 0 && !dropLastQueued(t, e.dataDir, "mackerel") {
			// The newest window (unsent: Mackerel is down) is cut off, as if
			// the kill came between storing and queueing it: the restarted
			// agent must queue it from the store, or Mackerel ends short.
			t.Error("no unsent window in the Mackerel outbox at the first kill")
		}
		gen(time.Second) // the load goes on while the agent is down
		s0 := l.targets.MinScrapes()
		a = e.start(t, cfg, nil)
		if k == 0 && !a.waitLog("replayed stored windows the exporter had not received", 10*time.Second) {
			t.Error("the window cut from the Mackerel outbox was not queued again from the store")
		}
		// The senders' exports refused while the agent was down are
		// retried; wait for them and for a scrape after the restart.
		waitFor(t, 60*time.Second, "a scrape after the restart", func() bool { return l.targets.MinScrapes() > s0 })
		for _, s := range []*loadgen.Senders{l.senders, l.delta} {
			if err := s.Flush(context.Background()); err != nil {
				t.Logf("OTLP flush after restart %d: %v", k, err)
			}
		}
	}
	gen(3 * time.Second)
	l.settle(t)
	end := l.mark()
	time.Sleep(1500 * time.Millisecond)
	// The windows queued while Mackerel was down are sent while the agent
	// runs, not only by the drain at shutdown.
	waitFor(t, 90*time.Second, "the Mackerel outbox to drain", func() bool {
		_, _, _, waiting := exporterCounts(a)
		return waiting == 0
	})
	a.stop()
	peak = max(peak, a.peakRSS)
	counts = counts.add(a.counts)

	got := sumStat(query(t, e.dataDir, "-metric", "loadgen_request_duration_seconds", "-group-by", "e2e", "-stat", "count", "-from", "2h", "-step", "1d"), "count")
	otlp := map[string]float64{}
	for _, r := range query(t, e.dataDir, "-metric", "http.server.request.duration", "-group-by", "service.instance.id", "-stat", "count", "-from", "2h", "-step", "1d") {
		otlp[r.Attributes["service.instance.id"]] += r.Value
	}
	gotC, gotD := otlp["sender-0"], otlp["delta-sender-0"]
	resent := l.delta.Resent()
	mkGot, _ := mackerelSum(mk, "loadgen_request_duration_seconds.count.")
	t.Logf("%d kill(s), peak RSS %d KiB:", kills, peak)
	t.Logf("  scrape: generated %d, stored %v, lost %v, Mackerel %v",
		end.scrape.Observations, got, float64(end.scrape.Observations)-got, mkGot)
	t.Logf("  OTLP cumulative: generated %d, acknowledged %d, stored %v, lost %v",
		end.cumGen, end.cumAck, gotC, float64(end.cumGen)-gotC)
	t.Logf("  OTLP delta: generated %d, acknowledged %d (%d of them in the 4 s before a kill), re-sent %d, stored %v, lost %v of the acknowledged",
		end.dltGen, end.dltAck, dltOpen, resent, gotD, float64(end.dltAck)-gotD)
	if len(otlp) != 2 {
		t.Errorf("OTLP series by service.instance.id: %v, want sender-0 and delta-sender-0", otlp)
	}
	check := func(what string, got float64, lo, hi uint64) {
		t.Helper()
		if got > float64(hi) {
			t.Errorf("%s: store holds %v observations, more than the %d generated: counted twice", what, got, hi)
		}
		if got < float64(lo) {
			t.Errorf("%s: store holds %v observations, fewer than the %d it must hold", what, got, lo)
		}
	}
	check("scrape", got, end.scrape.Observations, end.scrape.Observations)
	check("OTLP cumulative", gotC, end.cumGen, end.cumGen)
	check("OTLP delta", gotD, end.dltAck, end.dltGen+resent)
	var lost, dup float64
	for _, p := range [][2]float64{{float64(end.scrape.Observations), got}, {float64(end.cumGen), gotC}, {float64(end.dltAck), gotD}} {
		l, d := lostDup(p[0], p[1])
		lost, dup = lost+l, dup+d
	}
	figures(t, counts, lost, dup, peak)
	if mkGot > float64(end.scrape.Observations) {
		t.Errorf("Mackerel holds %v, more than the %d generated", mkGot, end.scrape.Observations)
	}
	// Mackerel keeps the last post of each minute; with 1 s windows the
	// exporter re-posts a minute as its windows close, and a minute split
	// by a kill is posted whole from the exporter's journal after the
	// restart. So Mackerel holds exactly what the store holds.
	refused := 0
	for _, p := range mk.Posts() {
		if p.Status == 503 {
			refused++
		}
	}
	t.Logf("  Mackerel: %d posts refused with 503 across the first kill", refused)
	if refused == 0 {
		t.Errorf("no post was refused during the Mackerel outage across the kill")
	}
	if mkGot != got {
		t.Errorf("Mackerel holds %v scrape observations, the store %v", mkGot, got)
	}
	perMinute(t, mk, "loadgen_request_duration_seconds.count.", e.dataDir, "loadgen_request_duration_seconds", "e2e")
	perMinute(t, mk, "http.server.request.duration.count.", e.dataDir, "http.server.request.duration", "service.name")
	if mkO, _ := mackerelSum(mk, "http.server.request.duration.count."); mkO != gotC+gotD {
		t.Errorf("Mackerel holds %v OTLP observations, the store %v", mkO, gotC+gotD)
	}
}

// TestReload: SIGHUP with a broken config keeps the running config (windows
// go on closing, the error names the file, line and problem); SIGHUP with a
// good config adding a rename rule applies it from the next window: no
// window after the reload has the old name, none before it the new one, and
// old + new add up to what was generated. Short and full alike.
func TestReload(t *testing.T) {
	e := newEnv(t)
	mk := newMackerel(t)
	l := startLoad(t, e, 2, 0)
	base := e.agentSection() + "sources:\n" + l.promSource("500ms") + "exporters:\n" + mackerelExporter(mk.URL)
	cfg := e.writeConfig(t, base)
	a := e.start(t, cfg, nil)
	l.waitBaseline(t)
	l.run(2*time.Second, 5)

	// Broken: an unknown key.
	if err := os.WriteFile(cfg, []byte(base+"rulez: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w0 := a.metricValue("sabaki_pipeline_windows_total")
	a.signal(syscall.SIGHUP)
	if !a.waitLog("config reload rejected", 10*time.Second) {
		t.Fatalf("no rejection logged for a broken config")
	}
	if !strings.Contains(a.out.String(), `unknown key \"rulez\" (did you mean \"rules\"?)`) && !strings.Contains(a.out.String(), `unknown key "rulez" (did you mean "rules"?)`) {
		t.Errorf("the rejection does not name the problem:\n%s", tail(a.out.String(), 5))
	}
	// FILE:LINE:COL of the bad key: the line after the good config's.
	if pos := fmt.Sprintf("sabaki.yaml:%d:1:", strings.Count(base, "\n")+1); !strings.Contains(a.out.String(), pos) {
		t.Errorf("the rejection does not give the position %s:\n%s", pos, tail(a.out.String(), 5))
	}
	l.run(2*time.Second, 5)
	if w1 := a.metricValue("sabaki_pipeline_windows_total"); w1 <= w0 {
		t.Errorf("windows stopped after a rejected reload: %v then %v", w0, w1)
	}
	if r := a.metricValue(`sabaki_agent_config_reloads_total{result="rejected"}`); r != 1 {
		t.Errorf("rejected reloads = %v, want 1", r)
	}

	// Good: rename the histogram.
	good := strings.Replace(base, "exporters:", "rules:\n  - rename_metric: {from: loadgen_request_duration_seconds, to: renamed_duration_seconds}\nexporters:", 1)
	if err := os.WriteFile(cfg, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	a.signal(syscall.SIGHUP)
	if !a.waitLog("config reloaded", 10*time.Second) {
		t.Fatalf("good config not reloaded")
	}
	reloadedAt := time.Now()
	l.run(3*time.Second, 5)
	l.settle(t)
	time.Sleep(1500 * time.Millisecond)
	a.stop()

	old := query(t, e.dataDir, "-metric", "loadgen_request_duration_seconds", "-group-by", "e2e", "-stat", "count", "-from", "2h", "-step", "1s")
	renamed := query(t, e.dataDir, "-metric", "renamed_duration_seconds", "-group-by", "e2e", "-stat", "count", "-from", "2h", "-step", "1s")
	if len(renamed) == 0 {
		t.Fatalf("no window has the renamed metric")
	}
	lastOld, firstNew := old[0].Time, renamed[0].Time
	for _, r := range old {
		lastOld = maxTime(lastOld, r.Time)
	}
	for _, r := range renamed {
		if r.Time.Before(firstNew) {
			firstNew = r.Time
		}
	}
	t.Logf("reload logged at %s; last window with the old name %s, first with the new %s", reloadedAt.Format("15:04:05.000"), lastOld.Format("15:04:05"), firstNew.Format("15:04:05"))
	if !lastOld.Before(firstNew) {
		t.Errorf("old and new names overlap: last old window %s, first new %s", lastOld, firstNew)
	}
	if lastOld.After(reloadedAt) {
		t.Errorf("a window starting after the reload (%s) still has the old name (%s)", reloadedAt, lastOld)
	}
	want := l.targets.Totals().Observations
	if got := sumStat(old, "count") + sumStat(renamed, "count"); got != float64(want) {
		t.Errorf("old + renamed counts = %v, want %d", got, want)
	}
	lost, dup := lostDup(float64(want), sumStat(old, "count")+sumStat(renamed, "count"))
	figures(t, a.counts, lost, dup, a.peakRSS)
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
