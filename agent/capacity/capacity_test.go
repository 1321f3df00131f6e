package capacity

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/agent/capacity/synth"
	"github.com/sabakiio/sabaki/agent/store"
)

// storeDir is the synthetic store, generated once for the package's tests.
var storeDir string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "capacity-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	storeDir = filepath.Join(dir, "store")
	start := time.Now()
	if err := synth.Generate(context.Background(), storeDir, synth.Default()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "synthetic store generated in %s\n", time.Since(start).Round(time.Millisecond))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func openStore(t testing.TB) *store.Store {
	t.Helper()
	o := synth.Default()
	end := o.End()
	st, err := store.Open(storeDir, store.Options{ReadOnly: true, Tiers: synth.Tiers(o), Now: func() time.Time { return end }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func defaultOptions() Options {
	o := synth.Default()
	end := o.End()
	return Options{
		From: o.Start, To: end, GroupBy: []string{"service"},
		MinuteFrom:     end.AddDate(0, 0, -o.MinuteDays),
		TraceRetention: time.Duration(o.MinuteDays) * 24 * time.Hour,
		Limits: []Limit{
			{Name: "Cloud Run max instances", Measure: "instances_max", Value: 12},
			{Name: "Cloud SQL max_connections", Measure: "db_connections_max", Value: 40},
			{Name: "p95 SLO", Measure: "latency_p95_peak_hour", Value: 0.5, Group: "service=web"},
		},
		TraceURL: func(id string) string { return "https://mackerel.io/orgs/example/tracing/traces/" + id },
	}
}

// TestForecastRecoversGrowth checks the trend against the synthetic data's
// known growth: web grows 0.2 req/s per day at the busiest hour of an
// average weekday (0.05 for api), with ±5 % noise per window, a 0.7/1.12
// weekly cycle and three 5× spikes. The busiest hour's mean rate is the
// hour 13:00–14:00 UTC, where the daily shape averages Hourly(13.5).
func TestForecastRecoversGrowth(t *testing.T) {
	r, err := Build(context.Background(), openStore(t), defaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	o := synth.Default()
	for _, s := range o.Services {
		g := findGroup(t, r, "service="+s.Name)
		tr := findTrend(t, g, "peak_rate_1h")
		want := s.Growth * synth.Hourly(13.5)
		// Tolerance 3 %: the noise is ±5 % per hour and the busiest of 24
		// noisy hours biases each day's peak up by a near-constant factor.
		if rel := math.Abs(tr.Slope-want) / want; rel > 0.03 {
			t.Errorf("%s: slope %.4f req/s/day, want %.4f ±3 %% (off by %.1f %%)", s.Name, tr.Slope, want, rel*100)
		}
		if tr.SlopeLow > tr.Slope || tr.SlopeHigh < tr.Slope || tr.SlopeHigh-tr.SlopeLow > want*0.2 {
			t.Errorf("%s: slope interval [%.4f, %.4f] around %.4f", s.Name, tr.SlopeLow, tr.SlopeHigh, tr.Slope)
		}
		if !tr.Seasonal || len(tr.Weekly) != 7 {
			t.Fatalf("%s: weekly cycle not noted: %v", s.Name, tr.Weekly)
		}
		// Weekday factors: 1.12 Monday–Friday, 0.7 at weekends.
		for wd, f := range tr.Weekly {
			want := 1.12
			if wd >= 5 {
				want = 0.7
			}
			if math.Abs(f-want) > 0.03 {
				t.Errorf("%s: weekday %d factor %.3f, want %.2f", s.Name, wd, f, want)
			}
		}
	}
}

// TestLimitCrossing checks a projected date against the date the synthetic
// data's own formula reaches the limit.
func TestLimitCrossing(t *testing.T) {
	opts := defaultOptions()
	opts.Limits = []Limit{{Name: "rate", Measure: "peak_rate_1h", Value: 60, Group: "service=web"}}
	r, err := Build(context.Background(), openStore(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	tr := findTrend(t, findGroup(t, r, "service=web"), "peak_rate_1h")
	if len(tr.Limits) != 1 || tr.Limits[0].Crossing == nil {
		t.Fatalf("no crossing: %+v", tr.Limits)
	}
	p := tr.Limits[0]
	// Busiest weekday peak on day d: (20 + 0.2 d) × 1.12 × Hourly(13.5),
	// plus the noise's upward bias on a daily maximum (a few %).
	o := synth.Default()
	d := (60/(1.12*synth.Hourly(13.5)) - 20) / 0.2
	want := o.Start.AddDate(0, 0, int(math.Ceil(d)))
	if diff := p.Crossing.Sub(want).Hours() / 24; diff > 0 || diff < -21 {
		t.Errorf("crossing %s, formula without noise %s (want within 21 days before it)", p.Crossing.Format(time.DateOnly), want.Format(time.DateOnly))
	}
	if p.Earliest == nil || p.Latest == nil || p.Earliest.After(*p.Crossing) || p.Latest.Before(*p.Crossing) {
		t.Errorf("interval %v – %v around %v", p.Earliest, p.Latest, p.Crossing)
	}
	if p.Headroom <= 0 || p.Headroom >= 1 {
		t.Errorf("headroom %v", p.Headroom)
	}
}

func TestTheilSenResistsSpikes(t *testing.T) {
	var xs, ys []float64
	for i := range 60 {
		xs = append(xs, float64(i))
		ys = append(ys, 10+0.5*float64(i))
	}
	ys[10], ys[40] = 500, 900 // two spikes
	a, b := theilSen(xs, ys)
	if math.Abs(b-0.5) > 1e-9 || math.Abs(a-10) > 1e-9 {
		t.Errorf("a, b = %v, %v; want 10, 0.5", a, b)
	}
	lo, hi := senInterval(xs, ys)
	if lo > 0.5 || hi < 0.5 {
		t.Errorf("interval [%v, %v] misses 0.5", lo, hi)
	}
}

func TestProjection(t *testing.T) {
	first := time.Date(2026, 1, 5, 0, 0, 0, 0, time.UTC)
	var xs, ys []float64
	var days []time.Time
	for i := range 28 {
		xs = append(xs, float64(i))
		ys = append(ys, 10+float64(i)) // +1 a day, no weekly cycle
		days = append(days, first.AddDate(0, 0, i))
	}
	tr := fit(xs, ys, days)
	tr.first = first
	tr.Current = 37
	now := first.AddDate(0, 0, 28)
	cases := []struct {
		limit float64
		want  string
	}{
		{30, "already reached"},
		{50, "projected in 12 days"}, // day 40 = 50, now = day 28
		{1e6, "not projected to reach the limit within two years"},
	}
	for _, c := range cases {
		p := project(tr, Limit{Name: "x", Value: c.limit}, xs, ys, now)
		if !strings.HasPrefix(p.Note, c.want) {
			t.Errorf("limit %v: note %q, want %q", c.limit, p.Note, c.want)
		}
	}
	flat := fit(xs, make([]float64, len(xs)), days)
	flat.first = first
	if p := project(flat, Limit{Name: "x", Value: 5}, xs, make([]float64, len(xs)), now); p.Crossing != nil || !strings.Contains(p.Note, "flat or falling") {
		t.Errorf("flat: %+v", p)
	}
}

func TestMissingAndErrors(t *testing.T) {
	st := openStore(t)
	r, err := Build(context.Background(), st, defaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Missing) != 1 || r.Missing[0].Family != "cloudrun_memory" {
		t.Errorf("missing = %+v, want cloudrun_memory only", r.Missing)
	}
	noMin := defaultOptions()
	noMin.MinuteFrom = noMin.To
	r, err = Build(context.Background(), st, noMin)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Missing) != 2 || r.Missing[1].Family != "requests" || strings.Join(r.Missing[1].Measures, ",") != "peak_rate_1m,rate_1m_p99" ||
		!strings.Contains(r.Missing[1].Reason, "in minutes") {
		t.Errorf("without minutes, missing = %+v", r.Missing)
	}
	opts := defaultOptions()
	opts.GroupBy = []string{"nosuch"}
	if _, err := Build(context.Background(), st, opts); err == nil || !strings.Contains(err.Error(), `unknown group-by attribute "nosuch"`) {
		t.Errorf("unknown group-by: %v", err)
	}
	opts = defaultOptions()
	opts.From, opts.To = opts.From.AddDate(-1, 0, 0), opts.From.AddDate(-1, 1, 0)
	if _, err := Build(context.Background(), st, opts); !errors.Is(err, ErrNoData) {
		t.Errorf("range without data: %v", err)
	}
	empty, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if _, err := Build(context.Background(), empty, defaultOptions()); !errors.Is(err, ErrEmptyStore) {
		t.Errorf("empty store: %v", err)
	}
}

// TestWeeksAreMerged checks that a week's p95 is the p95 of the week's
// merged histogram (not the largest or mean daily p95) and its requests the
// sum of its days.
func TestWeeksAreMerged(t *testing.T) {
	r, err := Build(context.Background(), openStore(t), defaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	g := findGroup(t, r, "service=web")
	w := g.Weeks[3]
	var sum, maxP95, minP95 float64
	minP95 = math.Inf(1)
	for _, d := range g.Days {
		if !d.Start.Before(w.Start) && d.Start.Before(w.Start.AddDate(0, 0, 7)) {
			sum += d.Values["requests"]
			maxP95 = max(maxP95, d.Values["latency_p95"])
			minP95 = min(minP95, d.Values["latency_p95"])
		}
	}
	if w.Values["requests"] != sum {
		t.Errorf("week requests %v, days sum %v", w.Values["requests"], sum)
	}
	if p := w.Values["latency_p95"]; p <= minP95 || p >= maxP95 {
		t.Errorf("week p95 %v not strictly between the days' %v and %v", p, minP95, maxP95)
	}
}

func findGroup(t *testing.T, r *Report, label string) *Group {
	t.Helper()
	for _, g := range r.Groups {
		if g.Label == label {
			return g
		}
	}
	t.Fatalf("no group %q", label)
	return nil
}

func findTrend(t *testing.T, g *Group, measure string) *Trend {
	t.Helper()
	for _, tr := range g.Trends {
		if tr.Measure == measure {
			return tr
		}
	}
	t.Fatalf("%s: no trend of %s", g.Label, measure)
	return nil
}

// TestKth checks the quickselect behind the Theil–Sen fits against sorting,
// with ties and the rank pairs the median and Sen's interval take.
func TestKth(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 2))
	for _, n := range []int{1, 2, 3, 7, 100, 1001} {
		for range 20 {
			vs := make([]float64, n)
			for i := range vs {
				vs[i] = float64(r.IntN(max(2, n/3))) - float64(n)/6 // many ties
				if r.IntN(4) == 0 {
					vs[i] = r.NormFloat64()
				}
			}
			sorted := slices.Clone(vs)
			slices.Sort(sorted)
			for _, k := range []int{0, n / 2, (n - 1) / 2, n - 1, r.IntN(n)} {
				if got := kth(slices.Clone(vs), k); got != sorted[k] {
					t.Fatalf("n %d: kth(%d) = %v, sorted %v", n, k, got, sorted[k])
				}
			}
			if got, want := quantileSelect(slices.Clone(vs), 0.5), quantileSorted(sorted, 0.5); got != want {
				t.Fatalf("n %d: median %v, want %v", n, got, want)
			}
			l, h := senIntervalOf(n, slices.Clone(vs))
			wl, wh := senIntervalSorted(n, sorted)
			if l != wl || h != wh {
				t.Fatalf("n %d: interval %v %v, want %v %v", n, l, h, wl, wh)
			}
		}
	}
}
