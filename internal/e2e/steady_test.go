package e2e

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/internal/fake/fakemackerel"
	"github.com/sabakiio/sabaki/internal/loadgen"
)

const apiKey = "e2e-key"

func newMackerel(t testing.TB) *fakemackerel.Server {
	m := fakemackerel.New(fakemackerel.Options{
		Keys:     map[string]fakemackerel.Perm{apiKey: {Read: true, Write: true}},
		Services: []string{"e2e"},
	})
	t.Cleanup(m.Close)
	return m
}

func mackerelExporter(url string) string {
	return fmt.Sprintf(`  - type: mackerel
    service: e2e
    api_key: %s
    base_url: %s
    quantiles: [0.95]
    stats: [count, max]
    timeout: 2s
`, apiKey, url)
}

// mackerelSum adds every point posted under names starting with prefix
// (Mackerel keeps the last post of each minute; the exporter re-posts a
// minute's merge as its 1 s windows close, so the last post is the minute).
func mackerelSum(m *fakemackerel.Server, prefix string) (sum float64, names int) {
	for _, n := range m.Names("e2e") {
		if !strings.HasPrefix(n, prefix) {
			continue
		}
		names++
		for _, p := range m.Points("e2e", n) {
			sum += p.Value
		}
	}
	return sum, names
}

// perMinute compares, minute by minute, what Mackerel holds under names
// starting with prefix with the store's counts of metric (grouped by
// groupBy, summed): each minute must be posted once and whole, so the two
// agree minute by minute, not just in total.
func perMinute(t testing.TB, m *fakemackerel.Server, prefix, dataDir, metric, groupBy string) {
	t.Helper()
	mk := map[int64]float64{}
	for _, n := range m.Names("e2e") {
		if strings.HasPrefix(n, prefix) {
			for _, p := range m.Points("e2e", n) {
				mk[p.Time] += p.Value
			}
		}
	}
	st := map[int64]float64{}
	for _, r := range query(t, dataDir, "-metric", metric, "-group-by", groupBy, "-stat", "count", "-from", "2h", "-step", "1m") {
		if r.Value != 0 {
			st[r.Time.Unix()] += r.Value
		}
	}
	for min, v := range st {
		if mk[min] != v {
			t.Errorf("minute %s: Mackerel holds %v %s, the store %v", time.Unix(min, 0).UTC().Format("15:04"), mk[min], metric, v)
		}
	}
	for min, v := range mk {
		if _, ok := st[min]; !ok && v != 0 {
			t.Errorf("minute %s: Mackerel holds %v %s, the store nothing", time.Unix(min, 0).UTC().Format("15:04"), v, metric)
		}
	}
	t.Logf("%s: compared over %d minute(s)", metric, len(st))
}

// load is a run of Prometheus targets and OTLP senders against one agent.
type load struct {
	targets *loadgen.Targets
	senders *loadgen.Senders // cumulative, service.instance.id sender-N
	delta   *loadgen.Senders // delta, delta-sender-N (only where asked)
}

func startLoad(t testing.TB, e *env, nTargets, nSenders int) *load {
	t.Helper()
	tg, err := loadgen.StartTargets(loadgen.TargetsConfig{Targets: nTargets, Counters: 20, Gauges: 5, Histograms: 4, Seed: 1, KeepValues: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tg.Close() })
	return &load{targets: tg}
}

// startSenders starts the OTLP senders; call it after the agent is up, so
// their cumulative series start after the agent (and count from zero).
func (l *load) startSenders(t testing.TB, e *env, n int) {
	t.Helper()
	s, err := loadgen.StartSenders(context.Background(), loadgen.SendersConfig{Senders: n, Endpoint: e.otlpHTTP,
		Routes: 3, Interval: 300 * time.Millisecond, Seed: 2, KeepValues: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	l.senders = s
}

// startDeltaSenders starts n OTLP senders exporting with delta temporality.
func (l *load) startDeltaSenders(t testing.TB, e *env, n int) {
	t.Helper()
	s, err := loadgen.StartSenders(context.Background(), loadgen.SendersConfig{Senders: n, Endpoint: e.otlpHTTP,
		Routes: 3, Interval: 300 * time.Millisecond, Seed: 3, Delta: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	l.delta = s
}

// step generates n observations per histogram on every target and sender.
func (l *load) step(n int) {
	l.targets.Step(n)
	for _, s := range []*loadgen.Senders{l.senders, l.delta} {
		if s != nil {
			s.Step(context.Background(), n)
		}
	}
}

func (l *load) promSource(interval string) string {
	return fmt.Sprintf(`  - type: prometheus
    name: app
    targets: [%s]
    interval: %s
    timeout: %s
    labels: {e2e: prom}
`, strings.Join(l.targets.URLs(), ", "), interval, interval)
}

// waitBaseline waits until every target has answered a scrape: the agent's
// first scrape of a target is its baseline, so load generated after it is
// counted in full.
func (l *load) waitBaseline(t testing.TB) {
	waitFor(t, 30*time.Second, "a baseline scrape of every target", func() bool { return l.targets.MinScrapes() >= 1 })
}

// run generates load for d: n observations per histogram every 200 ms.
func (l *load) run(d time.Duration, n int) {
	for end := time.Now().Add(d); time.Now().Before(end); {
		l.step(n)
		time.Sleep(200 * time.Millisecond)
	}
}

// settle stops generating: the senders flush and stop, and every target
// answers two more scrapes (so the agent has seen the final values).
func (l *load) settle(t testing.TB) {
	t.Helper()
	for _, s := range []*loadgen.Senders{l.senders, l.delta} {
		if s == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("OTLP senders' last export: %v", err)
		}
	}
	s0 := l.targets.MinScrapes()
	waitFor(t, 30*time.Second, "two scrapes after the load stopped", func() bool { return l.targets.MinScrapes() >= s0+2 })
}

// relBound is the quantile error bound of a base-2 exponential histogram at
// scale s: (base−1)/(base+1).
func relBound(scale int) float64 {
	base := math.Pow(2, math.Pow(2, -float64(scale)))
	return (base - 1) / (base + 1)
}

// TestSteadyState: Prometheus targets (native histograms with exemplars) and
// OTLP senders feed the agent; after the load stops, the observation counts
// and counter increments in the store (sabaki query) and in fake Mackerel
// equal what was generated,
// exactly, and the stored p95 over the run is within the histogram's bound of
// the exact p95 of the generated values. Short: 3 targets, 2 senders, 4 s;
// full: 10 targets, 4 senders, 20 s.
func TestSteadyState(t *testing.T) {
	nT, nS, d := 3, 2, 4*time.Second
	if full() {
		nT, nS, d = 10, 4, 20*time.Second
	}
	e := newEnv(t)
	mk := newMackerel(t)
	l := startLoad(t, e, nT, nS)
	cfg := e.writeConfig(t, e.agentSection()+"sources:\n"+e.otlpSource("")+l.promSource("500ms")+
		"exporters:\n"+mackerelExporter(mk.URL))
	a := e.start(t, cfg, nil)
	l.waitBaseline(t)
	l.startSenders(t, e, nS)
	l.run(d, 10)
	l.settle(t)
	time.Sleep(1500 * time.Millisecond) // the last window closes
	sent := a.metricValue("sabaki_exporter_sent_windows_total")
	a.stop()

	want := l.targets.Totals()
	otlpObs, otlpErr, jobs := l.senders.Totals()
	t.Logf("generated: scrape %d observations (%d errors), %.0f counter increments; OTLP %d observations (%d errors), %d jobs",
		want.Observations, want.Errors, want.CounterIncrements, otlpObs, otlpErr, jobs)

	checkCount := func(metric, groupBy string, want float64, stat string) {
		t.Helper()
		rows := query(t, e.dataDir, "-metric", metric, "-group-by", groupBy, "-stat", stat, "-from", "2h", "-step", "1d")
		if got := sumStat(rows, stat); got != want {
			t.Errorf("store: %s %s = %v, want %v (%d rows)", metric, stat, got, want, len(rows))
		}
	}
	checkCount("loadgen_request_duration_seconds", "e2e", float64(want.Observations), "count")
	checkCount("loadgen_events_total", "e2e", want.CounterIncrements, "sum")
	checkCount("http.server.request.duration", "service.name", float64(otlpObs), "count")
	checkCount("loadgen.jobs", "service.name", float64(jobs), "sum")

	// Error marking: code=500 (scrape) and http.response.status_code=500
	// (OTLP) observations over all observations.
	checkRatio := func(metric, groupBy string, errs, obs uint64) {
		t.Helper()
		rows := query(t, e.dataDir, "-metric", metric, "-group-by", groupBy, "-stat", "error_ratio", "-from", "2h", "-step", "1d")
		want := float64(errs) / float64(obs)
		if len(rows) != 1 || math.Abs(rows[0].Value-want) > 1e-9 {
			t.Errorf("store: %s error_ratio rows %v, want one of %v", metric, rows, want)
		}
	}
	checkRatio("loadgen_request_duration_seconds", "e2e", want.Errors, want.Observations)
	checkRatio("http.server.request.duration", "service.name", otlpErr, otlpObs)

	// p95 over the whole run, all series merged.
	rows := query(t, e.dataDir, "-metric", "loadgen_request_duration_seconds", "-group-by", "e2e", "-stat", "p95", "-from", "2h", "-step", "1d")
	exact := l.targets.Quantile(0.95)
	if len(rows) != 1 {
		t.Fatalf("p95 rows: %d, want 1", len(rows))
	}
	relErr := math.Abs(rows[0].Value-exact) / exact
	t.Logf("scrape p95: stored %.6f, exact %.6f, relative error %.4f (bound %.4f at schema %d)", rows[0].Value, exact, relErr, relBound(loadgen.NativeSchema), loadgen.NativeSchema)
	if relErr > relBound(loadgen.NativeSchema) {
		t.Errorf("scrape p95 %.6f off the exact %.6f by %.4f, beyond the bound %.4f", rows[0].Value, exact, relErr, relBound(loadgen.NativeSchema))
	}
	rows = query(t, e.dataDir, "-metric", "http.server.request.duration", "-group-by", "service.name", "-stat", "p95", "-from", "2h", "-step", "1d")
	oexact := loadgen.ExactQuantile(l.senders.Values(), 0.95)
	if len(rows) == 1 {
		// The SDK's scale for values spanning ~2 decades with 160 buckets
		// is at least 4; the merge keeps the coarsest, so check against 4.
		relErr := math.Abs(rows[0].Value-oexact) / oexact
		t.Logf("OTLP p95: stored %.6f, exact %.6f, relative error %.4f (bound %.4f at scale 4)", rows[0].Value, oexact, relErr, relBound(4))
		if relErr > relBound(4) {
			t.Errorf("OTLP p95 %.6f off the exact %.6f by %.4f, beyond the bound %.4f", rows[0].Value, oexact, relErr, relBound(4))
		}
	} else {
		t.Errorf("OTLP p95 rows: %d, want 1", len(rows))
	}

	// Mackerel: the count posted for every minute, over every series.
	got, names := mackerelSum(mk, "loadgen_request_duration_seconds.count.")
	if got != float64(want.Observations) {
		t.Errorf("Mackerel: scrape histogram count %v over %d names, want %d", got, names, want.Observations)
	}
	got, names = mackerelSum(mk, "http.server.request.duration.count.")
	if got != float64(otlpObs) {
		t.Errorf("Mackerel: OTLP histogram count %v over %d names, want %d", got, names, otlpObs)
	}
	perMinute(t, mk, "loadgen_request_duration_seconds.count.", e.dataDir, "loadgen_request_duration_seconds", "e2e")
	perMinute(t, mk, "http.server.request.duration.count.", e.dataDir, "http.server.request.duration", "service.name")
	// Counters: the count stat of a counter is its increase.
	got, names = mackerelSum(mk, "loadgen_events_total.count.")
	if got != want.CounterIncrements {
		t.Errorf("Mackerel: scrape counter increments %v over %d names, want %v", got, names, want.CounterIncrements)
	}
	got, names = mackerelSum(mk, "loadgen.jobs.count.")
	if got != float64(jobs) {
		t.Errorf("Mackerel: OTLP counter increments %v over %d names, want %d", got, names, jobs)
	}
	t.Logf("windows sent to Mackerel before shutdown: %v; peak RSS %d KiB; Mackerel posts %d", sent, a.peakRSS, len(mk.Posts()))
	stored := sumStat(query(t, e.dataDir, "-metric", "loadgen_request_duration_seconds", "-group-by", "e2e", "-stat", "count", "-from", "2h", "-step", "1d"), "count") +
		sumStat(query(t, e.dataDir, "-metric", "http.server.request.duration", "-group-by", "service.name", "-stat", "count", "-from", "2h", "-step", "1d"), "count")
	lost, dup := lostDup(float64(want.Observations+otlpObs), stored)
	figures(t, a.counts, lost, dup, a.peakRSS)
}
