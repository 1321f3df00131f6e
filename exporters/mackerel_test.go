package exporters

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"go.yaml.in/yaml/v3"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/internal/fake/fakemackerel"
	"github.com/sabakiio/sabaki/metric"
)

const testKey = "mkr-TEST-KEY-9f8e7d6c5b4a"

func TestMackerelNames(t *testing.T) {
	keys := []struct{ in, want string }{
		{"GET_/api/users/:id", "GET_api_users_id"},
		{"", "all"},
		{"/", "all"},
		{"a.b c", "a_b_c"},
		{"日本語", "all"},
		{"-x-", "-x-"},
	}
	for _, tc := range keys {
		if got := cleanKey(tc.in); got != tc.want {
			t.Errorf("cleanKey(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	long := strings.Repeat("/segment", 30)
	a, b := cleanKey(long+"a"), cleanKey(long+"b")
	if len(a) > 96 || a == b {
		t.Errorf("long keys: %q (%d) and %q must be distinct and ≤ 96 characters", a, len(a), b)
	}
	names := []struct{ in, want string }{
		{".http.server.request.duration", "http.server.request.duration"},
		{"sabaki..a/b c", "sabaki.a.b_c"},
		{"run.googleapis.com/request_latencies", "run.request_latencies"},
		{"x.", "x"},
	}
	for _, tc := range names {
		if got := cleanMetricName(tc.in); got != tc.want {
			t.Errorf("cleanMetricName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for q, want := range map[float64]string{0.5: "p50", 0.9: "p90", 0.95: "p95", 0.99: "p99", 0.999: "p999", 0.995: "p995"} {
		if got := quantileStat(q); got != want {
			t.Errorf("quantileStat(%v) = %q, want %q", q, got, want)
		}
	}
}

func TestMackerelConfig(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		problem string // substring of the problems; "" = valid
	}{
		{"minimal", "type: mackerel\nservice: toitta\napi_key: k\n", ""},
		{"annotate", "type: mackerel\nservice: toitta\napi_key: k\norg: acme\nannotate:\n  - {metric: http.server.request.duration, stat: p95, above: 1s}\n  - {metric: \"*\", stat: error_ratio, above: 0.01}\n", ""},
		{"bad service", "type: mackerel\nservice: _x\napi_key: k\n", "service"},
		{"bad stat", "type: mackerel\nservice: toitta\napi_key: k\nstats: [count, p95x]\n", "stats[1]"},
		{"bad quantile", "type: mackerel\nservice: toitta\napi_key: k\nquantiles: [1.5]\n", "quantiles[0]"},
		{"annotate needs org", "type: mackerel\nservice: toitta\napi_key: k\nannotate: [{metric: m, stat: p95, above: 1s}]\n", "org"},
		{"annotate unknown stat", "type: mackerel\nservice: toitta\napi_key: k\norg: o\nannotate: [{metric: m, stat: p42, above: 1s}]\n", "annotate[0].stat"},
		{"bad threshold", "type: mackerel\nservice: toitta\napi_key: k\norg: o\nannotate: [{metric: m, stat: p95, above: fast}]\n", "neither a number nor a duration"},
		{"typo", "type: mackerel\nservice: toitta\napi_key: k\nquantile: [0.5]\n", "did you mean"},
		{"monitor", "type: mackerel\nservice: toitta\napi_key: k\nmonitors:\n  - {name: users p95, metric: http.server.request.duration, stat: p95, series: {http.route: /api/users/:id}, warning: 2s, duration: 5m}\n", ""},
		{"monitor without threshold", "type: mackerel\nservice: toitta\napi_key: k\nmonitors: [{name: x, metric: m, stat: p95}]\n", "needs warning or critical"},
		{"monitor duplicate", "type: mackerel\nservice: toitta\napi_key: k\nmonitors: [{name: x, metric: m, stat: p95, warning: 1}, {name: x, metric: m, stat: p99, warning: 1}]\n", "duplicate monitor name"},
		{"monitor duration", "type: mackerel\nservice: toitta\napi_key: k\nmonitors: [{name: x, metric: m, stat: p95, warning: 1, duration: 90s}]\n", "monitors[0].duration"},
		{"host rule", "type: mackerel\nservice: toitta\napi_key: k\nhosts: [{resource_attribute: database_id, roles: [nocolon]}]\n", "hosts[0].roles[0]"},
		{"outbox", "type: mackerel\nservice: toitta\napi_key: k\noutbox: {max_bytes: 10KiB}\n", "outbox.max_bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var n yaml.Node
			if err := yaml.Unmarshal([]byte(tc.yaml), &n); err != nil {
				t.Fatal(err)
			}
			c := DefaultMackerelConfig()
			ps := config.Decode(n.Content[0], "exporters[0]", &c)
			got := ""
			if len(ps) > 0 {
				got = ps.Error()
			}
			if (tc.problem == "") != (got == "") || !strings.Contains(got, tc.problem) {
				t.Fatalf("problems %q, want %q", got, tc.problem)
			}
			if tc.name == "annotate" {
				if a := c.Annotate[0].Above; !a.IsDuration || a.Value != 1000 {
					t.Fatalf("above 1s = %+v, want 1000 ms", a)
				}
				if a := c.Annotate[1].Above; a.IsDuration || a.Value != 0.01 {
					t.Fatalf("above 0.01 = %+v", a)
				}
			}
		})
	}
	// An empty key validates (examples carry ${MACKEREL_APIKEY}) but does not start.
	empty := DefaultMackerelConfig()
	empty.Service = "toitta"
	if _, err := NewMackerel(empty, Settings{}); err == nil || !strings.Contains(err.Error(), "MACKEREL_APIKEY") {
		t.Fatalf("NewMackerel without a key: %v", err)
	}
	// The key never prints.
	c := DefaultMackerelConfig()
	c.APIKey = testKey
	out, _ := yaml.Marshal(c)
	for _, s := range []string{fmt.Sprintf("%v %+v %#v %s", c, c, c, c.APIKey), string(out)} {
		if strings.Contains(s, testKey) {
			t.Fatalf("API key printed: %s", s)
		}
	}
}

// mackerelEnv is a fake Mackerel, an exporter and its outbox on a shared clock.
type mackerelEnv struct {
	t     *testing.T
	fake  *fakemackerel.Server
	clock *manualClock
	logs  *syncBuffer
	reg   *prometheus.Registry
	dir   string
	cfg   MackerelConfig
}

func newMackerelEnv(t *testing.T, mod func(*MackerelConfig)) *mackerelEnv {
	env := &mackerelEnv{t: t, clock: newManualClock(t0), logs: &syncBuffer{}, dir: t.TempDir()}
	env.fake = fakemackerel.New(fakemackerel.Options{
		Keys:     map[string]fakemackerel.Perm{testKey: {Read: true, Write: true}},
		Services: []string{"toitta"},
		Now:      env.clock.Now,
	})
	t.Cleanup(env.fake.Close)
	env.cfg = DefaultMackerelConfig()
	env.cfg.Service, env.cfg.APIKey, env.cfg.BaseURL, env.cfg.Org = "toitta", testKey, env.fake.URL, "acme"
	env.cfg.Timeout = config.Duration(2 * time.Second)
	if mod != nil {
		mod(&env.cfg)
	}
	return env
}

func (env *mackerelEnv) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(env.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// open builds the exporter and its outbox with a fresh registry.
func (env *mackerelEnv) open() (*Mackerel, *Outbox) {
	env.t.Helper()
	env.reg = prometheus.NewRegistry()
	set := Settings{Logger: env.logger(), Registerer: env.reg, DataDir: env.dir}
	exp, err := NewMackerel(env.cfg, set)
	if err != nil {
		env.t.Fatal(err)
	}
	exp.now = env.clock.Now
	ob, err := NewOutbox(env.cfg.Outbox, exp, set)
	if err != nil {
		env.t.Fatal(err)
	}
	ob.now, ob.sleep = env.clock.Now, env.clock.Sleep
	return exp, ob
}

// latencyWindow is one minute of two routes' latencies (seconds), a gauge
// and a counter; route 1 is slow when slow is set. It also returns the
// histograms it put in, to compare with what Mackerel received.
func latencyWindow(start time.Time, n int, slow bool) (*metric.Window, []*histogram.Histogram) {
	w := &metric.Window{Start: start, Duration: time.Minute}
	var hs []*histogram.Histogram
	for r, route := range []string{"/api/users/:id", "/"} {
		h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		for i := 1; i <= n; i++ {
			v := 0.002 * float64(i%50+1) * float64(r+1)
			if slow && r == 1 {
				v *= 40
			}
			h.Record(v)
		}
		hs = append(hs, h)
		a := metric.Aggregate{
			Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram,
			Resource: metric.Attrs{{Key: "service.name", Value: "toitta"}},
			Attrs: metric.Attrs{{Key: "http.request.method", Value: "GET"}, {Key: "http.route", Value: route},
				{Key: "otel.scope.name", Value: "github.com/acme/toitta"}},
			Hist:       h.Clone(),
			ErrorCount: uint64(r * 3), ErrorTracked: true,
		}
		a.Exemplars = []metric.Exemplar{{TraceID: traceID(start, r), SpanID: [8]byte{1}, Value: h.Max(), Time: start.Add(time.Second)}}
		w.Series = append(w.Series, a)
	}
	w.Series = append(w.Series,
		metric.Aggregate{Name: "cloudsql.network.connections", Unit: "{connection}", Kind: metric.Gauge, Sum: 30, Count: 3, Last: 12, Min: 8, Max: 12,
			Attrs: metric.Attrs{{Key: "database_id", Value: "proj:main"}}},
		metric.Aggregate{Name: "gen_ai.client.token.usage", Unit: "{token}", Kind: metric.Counter, Sum: 1200,
			Attrs: metric.Attrs{{Key: "gen_ai.request.model", Value: "gpt-4.1"}}},
		metric.Aggregate{Name: "broken.gauge", Kind: metric.Gauge, Sum: math.NaN(), Count: 1},
	)
	return w, hs
}

func traceID(start time.Time, r int) [16]byte {
	var id [16]byte
	copy(id[:], fmt.Sprintf("%08x%d", start.Unix(), r))
	return id
}

func TestMackerelEndToEnd(t *testing.T) {
	env := newMackerelEnv(t, func(c *MackerelConfig) {
		c.Annotate = []MackerelAnnotate{{Metric: "http.server.*", Stat: "p95", Above: Threshold{Value: 1000, IsDuration: true, set: true}}}
		c.AnnotateEvery = config.Duration(10 * time.Minute)
	})
	_, ob := env.open()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ob.Run(ctx)

	var wins [][]*histogram.Histogram
	for i := range 3 {
		w, hs := latencyWindow(t0.Add(time.Duration(i)*time.Minute), 1000, i >= 1)
		wins = append(wins, hs)
		env.clock.Set(w.End().Add(5 * time.Second))
		mustEnqueue(t, ob, w)
	}
	drain(t, ob)

	names := env.fake.Names("toitta")
	want := []string{
		"cloudsql.network.connections.proj_main",
		"gen_ai.client.token.usage.count.gpt-4_1",
		"gen_ai.client.token.usage.rate.gpt-4_1",
	}
	for _, route := range []string{"GET_api_users_id", "GET"} {
		for _, stat := range []string{"count", "error_ratio", "max", "mean", "p50", "p90", "p95", "p99", "rate"} {
			want = append(want, "http.server.request.duration."+stat+"."+route)
		}
	}
	sort.Strings(want)
	if strings.Join(names, "\n") != strings.Join(want, "\n") {
		t.Fatalf("names:\n%s\nwant:\n%s", strings.Join(names, "\n"), strings.Join(want, "\n"))
	}
	for i, hs := range wins {
		minute := t0.Add(time.Duration(i) * time.Minute)
		for r, route := range []string{"GET_api_users_id", "GET"} {
			h := hs[r]
			checks := map[string]float64{
				"count": float64(h.Count()), "rate": float64(h.Count()) / 60, "p95": h.Quantile(0.95) * 1000,
				"p50": h.Quantile(0.5) * 1000, "max": h.Max() * 1000, "mean": h.Mean() * 1000, "error_ratio": float64(r*3) / float64(h.Count()),
			}
			for stat, wantV := range checks {
				got, ok := env.fake.Value("toitta", "http.server.request.duration."+stat+"."+route, minute)
				if !ok || got != wantV {
					t.Errorf("minute %d %s.%s = %v (%v), want %v", i, stat, route, got, ok, wantV)
				}
			}
		}
		if v, _ := env.fake.Value("toitta", "cloudsql.network.connections.proj_main", minute); v != 10 {
			t.Errorf("gauge = %v, want the mean 10", v)
		}
		if v, _ := env.fake.Value("toitta", "gen_ai.client.token.usage.rate.gpt-4_1", minute); v != 20 {
			t.Errorf("counter rate = %v, want 20/s", v)
		}
	}
	if c, _ := env.fake.Value("toitta", "http.server.request.duration.count.GET", t0); c != 1000 {
		t.Fatalf("count = %v, want exactly 1000", c)
	}

	// Minutes 1 and 2 breach p95 > 1s on "/"; annotate_every (10m) lets one through.
	anns := env.fake.Annotations()
	if len(anns) != 1 {
		t.Fatalf("annotations: %+v", anns)
	}
	a := anns[0]
	wantURL := "https://mackerel.io/orgs/acme/tracing/traces/" + hex.EncodeToString(func() []byte { id := traceID(t0.Add(time.Minute), 1); return id[:] }())
	if a.From != t0.Add(time.Minute).Unix() || a.To != a.From+60 || a.Service != "toitta" ||
		!strings.Contains(a.Title, "http.server.request.duration p95 above 1s") || !strings.Contains(a.Description, wantURL) {
		t.Fatalf("annotation %+v, want the minute t0+1m and %s", a, wantURL)
	}
	if strings.Contains(a.Description, "GET_api_users_id") {
		t.Fatalf("a series below the threshold is annotated: %q", a.Description)
	}
	if _, overwrites, _ := env.fake.Stats(); overwrites != 0 {
		t.Fatalf("%d overwrites: every minute should be posted once", overwrites)
	}
}

func TestMackerelTraceSearchFallback(t *testing.T) {
	env := newMackerelEnv(t, func(c *MackerelConfig) {
		c.Annotate = []MackerelAnnotate{{Metric: "http.server.request.duration", Stat: "max", Above: Threshold{Value: 1000, IsDuration: true, set: true}}}
	})
	slowID := strings.Repeat("ab", 16)
	env.fake.AddTrace(fakemackerel.Trace{TraceID: slowID, ServiceName: "toitta", StartAt: t0.Unix() + 5, LatencyMillis: 3000})
	env.fake.AddTrace(fakemackerel.Trace{TraceID: strings.Repeat("cd", 16), ServiceName: "toitta", StartAt: t0.Unix() + 5, LatencyMillis: 20})
	exp, _ := env.open()
	w, _ := latencyWindow(t0, 100, true)
	for i := range w.Series {
		w.Series[i].Exemplars = nil
	}
	env.clock.Set(t0.Add(2 * time.Minute))
	if err := exp.Export(context.Background(), w); err != nil {
		t.Fatal(err)
	}
	anns := env.fake.Annotations()
	if len(anns) != 1 || !strings.Contains(anns[0].Description, slowID) || strings.Contains(anns[0].Description, "cdcd") {
		t.Fatalf("annotations %+v, want a link to the slow trace %s only\n%s\n%v", anns, slowID, env.logs.String(), env.fake.Requests())
	}
}

func TestMackerelSubMinuteWindows(t *testing.T) {
	env := newMackerelEnv(t, nil)
	exp, _ := env.open()
	env.clock.Set(t0.Add(2 * time.Minute))
	ctx := context.Background()
	name := "http.server.request.duration.count.GET"
	var total uint64
	all := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
	for i := range 4 {
		w, hs := latencyWindow(t0.Add(time.Duration(i)*15*time.Second), 10*(i+1), false)
		w.Duration = 15 * time.Second
		total += hs[1].Count()
		all.Merge(hs[1])
		if err := exp.Export(ctx, w); err != nil {
			t.Fatal(err)
		}
		if v, _ := env.fake.Value("toitta", name, t0); v != float64(total) {
			t.Fatalf("after window %d the minute's count is %v, want %v (merge of the minute so far)", i, v, total)
		}
	}
	if v, _ := env.fake.Value("toitta", "http.server.request.duration.p95.GET", t0); v != all.Quantile(0.95)*1000 {
		t.Fatalf("p95 of the minute = %v, want the merged histogram's %v", v, all.Quantile(0.95)*1000)
	}
	if v, _ := env.fake.Value("toitta", "http.server.request.duration.rate.GET", t0); v != float64(total)/60 {
		t.Fatalf("rate = %v, want %v", v, float64(total)/60)
	}
	// A late revision of the second window replaces it, not adds to it.
	w, hs := latencyWindow(t0.Add(15*time.Second), 500, false)
	w.Duration, w.Revision = 15*time.Second, 1
	if err := exp.Export(ctx, w); err != nil {
		t.Fatal(err)
	}
	want := total - 20 + hs[1].Count()
	if v, _ := env.fake.Value("toitta", name, t0); v != float64(want) {
		t.Fatalf("after a revision the count is %v, want %v", v, want)
	}
	for _, p := range env.fake.Posts() {
		if p.Points == 0 || p.Status != 200 {
			t.Fatalf("post %+v", p)
		}
	}
}

func TestMackerelNeverSendsNaN(t *testing.T) {
	env := newMackerelEnv(t, nil)
	exp, _ := env.open()
	env.clock.Set(t0.Add(2 * time.Minute))
	w := &metric.Window{Start: t0, Duration: time.Minute, Series: []metric.Aggregate{
		{Name: "empty", Unit: "s", Kind: metric.Histogram, Hist: histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale), ErrorTracked: true},
		{Name: "inf", Kind: metric.Gauge, Sum: math.Inf(1), Count: 1},
		{Name: "nan", Kind: metric.Counter, Sum: math.NaN()},
	}}
	if err := exp.Export(context.Background(), w); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(env.fake.Names("toitta"), ","); got != "empty.count.all,empty.rate.all" {
		t.Fatalf("names %s: an empty histogram posts count and rate 0 only, NaN/Inf nothing", got)
	}
}

func TestMackerelBatches(t *testing.T) {
	env := newMackerelEnv(t, nil)
	exp, _ := env.open()
	env.clock.Set(t0.Add(2 * time.Minute))
	w := manySeries(t0, 1000)
	if err := exp.Export(context.Background(), w); err != nil {
		t.Fatal(err)
	}
	posts := env.fake.Posts()
	points := 0
	for _, p := range posts {
		if p.Points > env.cfg.MaxPointsPerPost || int64(p.Bytes) > int64(env.cfg.MaxBytesPerPost) {
			t.Fatalf("post of %d points, %d bytes exceeds the limits", p.Points, p.Bytes)
		}
		points += p.Points
	}
	if want := 1000 * 9; points != want || len(env.fake.Names("toitta")) != want {
		t.Fatalf("%d points posted, %d names stored, want %d", points, len(env.fake.Names("toitta")), want)
	}
}

// manySeries is a window of n latency series (9 stats each by default).
func manySeries(start time.Time, n int) *metric.Window {
	w := &metric.Window{Start: start, Duration: time.Minute}
	for i := range n {
		h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		for j := 1; j <= 20; j++ {
			h.Record(float64(j) / 100)
		}
		w.Series = append(w.Series, metric.Aggregate{
			Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram, Hist: h, ErrorTracked: true,
			Attrs: metric.Attrs{{Key: "http.request.method", Value: "GET"}, {Key: "http.route", Value: fmt.Sprintf("/api/v1/tenants/%d/items/:id", i)}},
		})
	}
	return w
}

func TestMackerelErrorClassification(t *testing.T) {
	tests := []struct {
		name       string
		fault      *fakemackerel.Fault
		key        string
		service    string
		permanent  bool
		retryAfter float64 // 0 = none
	}{
		{"429 with Retry-After", &fakemackerel.Fault{Status: 429, RetryAfter: "42"}, testKey, "toitta", false, 42},
		{"429 without Retry-After", &fakemackerel.Fault{Status: 429}, testKey, "toitta", false, 0},
		{"503 with HTTP-date Retry-After", &fakemackerel.Fault{Status: 503, RetryAfter: time.Now().Add(time.Hour).UTC().Format(http1123)}, testKey, "toitta", false, 3600},
		{"500", &fakemackerel.Fault{Status: 500}, testKey, "toitta", false, 0},
		{"connection reset", &fakemackerel.Fault{Reset: true}, testKey, "toitta", false, 0},
		{"slow (client timeout)", &fakemackerel.Fault{Delay: 2500 * time.Millisecond}, testKey, "toitta", false, 0},
		{"bad key 403", nil, "wrong-key-0000", "toitta", true, 0},
		{"unknown service 404", nil, testKey, "nosuch", true, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := newMackerelEnv(t, func(c *MackerelConfig) {
				c.APIKey, c.Service = APIKey(tc.key), tc.service
				c.Timeout = config.Duration(time.Second) // a loaded machine must not time out the other cases
			})
			exp, _ := env.open()
			if tc.fault != nil {
				env.fake.FailNext(1, "", *tc.fault)
			}
			w, _ := latencyWindow(t0, 10, false)
			err := exp.Export(context.Background(), w)
			if err == nil {
				t.Fatal("Export succeeded")
			}
			if IsPermanent(err) != tc.permanent {
				t.Fatalf("IsPermanent(%v) = %v, want %v", err, IsPermanent(err), tc.permanent)
			}
			var ra RetryAfter
			s, ok := 0.0, false
			if errors.As(err, &ra) {
				s, ok = ra.RetryAfter()
			}
			if (tc.retryAfter > 0) != ok || math.Abs(s-tc.retryAfter) > 2 {
				t.Fatalf("RetryAfter = %v %v, want %v", s, ok, tc.retryAfter)
			}
			if strings.Contains(err.Error(), tc.key) {
				t.Fatalf("error text holds the API key: %v", err)
			}
		})
	}
}

const http1123 = "Mon, 02 Jan 2006 15:04:05 GMT"

// TestMackerelOutage: Mackerel fails for 60 simulated minutes (503s, then
// connection resets, then 429s with Retry-After) while a window closes every
// minute; afterwards every minute arrives exactly once, in order.
func TestMackerelOutage(t *testing.T) {
	env := newMackerelEnv(t, func(c *MackerelConfig) {
		c.Outbox.MaxBackoff = config.Duration(2 * time.Minute)
	})
	down := t0.Add(10 * time.Minute)
	env.fake.FailBetween(down, down.Add(20*time.Minute), "", fakemackerel.Fault{Status: 503})
	env.fake.FailBetween(down.Add(20*time.Minute), down.Add(40*time.Minute), "", fakemackerel.Fault{Reset: true})
	env.fake.FailBetween(down.Add(40*time.Minute), down.Add(60*time.Minute), "", fakemackerel.Fault{Status: 429, RetryAfter: "30"})
	_, ob := env.open()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { ob.Run(ctx); close(done) }()

	const minutes = 90
	maxDepth, maxBytes := 0, int64(0)
	for i := range minutes {
		w, _ := latencyWindow(t0.Add(time.Duration(i)*time.Minute), 50, false)
		env.clock.Set(w.End().Add(time.Second))
		mustEnqueue(t, ob, w)
		maxDepth, maxBytes = max(maxDepth, ob.Depth()), max(maxBytes, ob.Bytes())
		// Let the simulated minute pass in 10 s steps, giving the sender
		// time to act between steps.
		for range 6 {
			env.clock.Advance(10 * time.Second)
			env.clock.settle()
		}
	}
	waitFor(t, func() bool { return ob.Depth() == 0 })
	drain(t, ob)
	cancel()
	<-done

	name := "http.server.request.duration.count.GET"
	points := env.fake.Points("toitta", name)
	if len(points) != minutes {
		t.Fatalf("%d minutes stored, want %d", len(points), minutes)
	}
	writes, overwrites, discarded := env.fake.Stats()
	if overwrites != 0 || discarded != 0 {
		t.Fatalf("overwrites %d, discarded %d: every window should arrive once", overwrites, discarded)
	}
	// In order: the accepted posts' minutes never go back.
	var last int64
	var failed, okPosts int
	var firstAfter time.Time
	for _, p := range env.fake.Posts() {
		if p.Status != 200 {
			failed++
			continue
		}
		okPosts++
		if p.MinTime < last {
			t.Fatalf("post of minute %d after minute %d", p.MinTime, last)
		}
		last = p.MinTime
		if firstAfter.IsZero() && !p.At.Before(down.Add(60*time.Minute)) {
			firstAfter = p.At
		}
	}
	if failed == 0 {
		t.Fatal("the outage produced no failed posts")
	}
	t.Logf("outage figures: %d minutes, %d windows queued at most (%d bytes on disk), %d failed attempts, %d accepted posts, %d points written, first post %v after recovery, backoff waits %v",
		minutes, maxDepth, maxBytes, failed, okPosts, writes, firstAfter.Sub(down.Add(60*time.Minute)), env.clock.totalSlept())
	if maxDepth < 55 {
		t.Fatalf("queue peaked at %d windows; the outage should have queued about 60", maxDepth)
	}
}

// TestMackerelKill9: the process dies while a window is in flight (the
// outbox directory is copied at that moment, as kill -9 leaves it, plus a
// torn record); a new process on the copy loses nothing.
func TestMackerelKill9(t *testing.T) {
	env := newMackerelEnv(t, nil)
	exp, ob := env.open()
	snapshot := t.TempDir()
	var once sync.Once
	killAt := 7
	calls := 0
	ob.exp = exporterFunc{name: exp.Name(), export: func(ctx context.Context, w *metric.Window) error {
		calls++
		err := exp.Export(ctx, w) // the post reaches Mackerel...
		if calls == killAt {
			once.Do(func() { copyDir(t, ob.dir, filepath.Join(snapshot, "outbox", exp.Name())) }) // ...and the process dies before the cursor moves
		}
		return err
	}}
	env.clock.Set(t0.Add(20 * time.Minute))
	for i := range 12 {
		w, _ := latencyWindow(t0.Add(time.Duration(i)*time.Minute), 50, false)
		mustEnqueue(t, ob, w)
	}
	// The sender only ran up to the kill: windows 0..6 reached Mackerel.
	ctx, cancel := context.WithCancel(context.Background())
	go ob.Run(ctx)
	waitFor(t, func() bool { return ob.Depth() == 0 })
	cancel()
	// Simulate a torn append in the snapshot: a half-written record.
	segs, _ := filepath.Glob(filepath.Join(snapshot, "outbox", exp.Name(), "*.seg"))
	f, _ := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte{0xff, 0x10, 0, 0, 9, 9, 9, 9, 1, 2, 3})
	f.Close()

	fresh := fakemackerel.New(fakemackerel.Options{Keys: map[string]fakemackerel.Perm{testKey: {Read: true, Write: true}}, Services: []string{"toitta"}, Now: env.clock.Now})
	defer fresh.Close()
	// What reached Mackerel before the kill.
	before := env.fake.Points("toitta", "http.server.request.duration.count.GET")
	if len(before) != 12 {
		t.Fatalf("first process delivered %d minutes", len(before))
	}
	env2 := *env
	env2.dir = snapshot
	env2.cfg.BaseURL = fresh.URL
	_, ob2 := env2.open()
	if d := ob2.Depth(); d != 12-killAt+1 {
		t.Fatalf("restart found %d windows, want %d (the in-flight one again, and the rest)", d, 12-killAt+1)
	}
	drain(t, ob2)
	after := fresh.Points("toitta", "http.server.request.duration.count.GET")
	if len(after) != 12-killAt+1 || after[0].Time != t0.Add(time.Duration(killAt-1)*time.Minute).Unix() {
		t.Fatalf("after restart %d minutes posted starting %v", len(after), after)
	}
	// Together: every minute, and the re-sent one has the same value.
	got := map[int64]float64{}
	for _, p := range before[:killAt] {
		got[p.Time] = p.Value
	}
	for _, p := range after {
		if v, ok := got[p.Time]; ok && v != p.Value {
			t.Fatalf("re-sent minute %d differs: %v vs %v", p.Time, v, p.Value)
		}
		got[p.Time] = p.Value
	}
	if len(got) != 12 {
		t.Fatalf("%d of 12 minutes survived the kill", len(got))
	}
}

type exporterFunc struct {
	name   string
	export func(ctx context.Context, w *metric.Window) error
}

func (e exporterFunc) Name() string                                       { return e.name }
func (e exporterFunc) Export(ctx context.Context, w *metric.Window) error { return e.export(ctx, w) }
func (e exporterFunc) Shutdown(context.Context) error                     { return nil }

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(from)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMackerelKeyHygiene runs failures of every kind and checks that the key
// appears in no log line, error, or self-metric.
func TestMackerelKeyHygiene(t *testing.T) {
	env := newMackerelEnv(t, func(c *MackerelConfig) {
		c.Annotate = []MackerelAnnotate{{Metric: "*", Stat: "max", Above: Threshold{Value: 1, set: true}}}
		// Long enough that a post on a loaded machine does not time out
		// (a fourth error); the scripted delay is well past it.
		c.Timeout = config.Duration(time.Second)
	})
	exp, ob := env.open()
	env.fake.FailNext(1, "", fakemackerel.Fault{Status: 500})
	env.fake.FailNext(1, "", fakemackerel.Fault{Reset: true})
	env.fake.FailNext(1, "", fakemackerel.Fault{Delay: 2500 * time.Millisecond})
	env.fake.FailNext(1, "/api/v0/graph-annotations", fakemackerel.Fault{Status: 400})
	env.clock.Set(t0.Add(10 * time.Minute))
	var errs []string
	for i := range 4 {
		w, _ := latencyWindow(t0.Add(time.Duration(i)*time.Minute), 10, true)
		if err := exp.Export(context.Background(), w); err != nil {
			errs = append(errs, err.Error())
		}
		mustEnqueue(t, ob, w)
	}
	// A wrong key: the 403 is dropped with a log line.
	bad := env.cfg
	bad.APIKey = "wrong-" + testKey
	badExp, err := NewMackerel(bad, Settings{Logger: env.logger(), Registerer: env.reg})
	if err != nil {
		t.Fatal(err)
	}
	ob.exp = badExp
	drain(t, ob)
	if len(errs) != 3 || !strings.Contains(env.logs.String(), "window dropped") {
		t.Fatalf("expected 3 failed exports and a permanent drop; errors %v, logs:\n%s", errs, env.logs.String())
	}
	var metrics bytes.Buffer
	mfs, _ := env.reg.Gather()
	for _, mf := range mfs {
		expfmt.MetricFamilyToText(&metrics, mf)
	}
	for what, s := range map[string]string{"logs": env.logs.String(), "errors": strings.Join(errs, "\n"), "/metrics": metrics.String()} {
		if strings.Contains(s, testKey) {
			t.Errorf("the API key appears in %s:\n%s", what, s)
		}
	}
	if !strings.Contains(metrics.String(), "sabaki_exporter_mackerel_requests_total") {
		t.Fatal("self-metrics missing")
	}
}

// manualClock is a clock the test moves; Sleep blocks until the clock has
// passed the deadline (or ctx ends).
type manualClock struct {
	mu      sync.Mutex
	t       time.Time
	cond    *sync.Cond
	slept   time.Duration
	waiting int
}

func newManualClock(t time.Time) *manualClock {
	c := &manualClock{t: t}
	c.cond = sync.NewCond(&c.mu)
	return c
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *manualClock) Set(t time.Time) {
	c.mu.Lock()
	if t.After(c.t) {
		c.t = t
	}
	c.mu.Unlock()
	c.cond.Broadcast()
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
	c.cond.Broadcast()
}

// settle gives goroutines woken by the clock a moment of real time.
func (c *manualClock) settle() { time.Sleep(2 * time.Millisecond) }

func (c *manualClock) Sleep(ctx context.Context, d time.Duration) error {
	stop := context.AfterFunc(ctx, func() { c.cond.Broadcast() })
	defer stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.slept += d
	deadline := c.t.Add(d)
	c.waiting++
	defer func() { c.waiting-- }()
	for c.t.Before(deadline) {
		if err := ctx.Err(); err != nil {
			return err
		}
		c.cond.Wait()
	}
	return nil
}

func (c *manualClock) totalSlept() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.slept
}

// realisticWindow is n latency series of 300 log-normal observations each
// (median 50 ms), each series with its own random stream.
func realisticWindow(start time.Time, n int) *metric.Window {
	w := &metric.Window{Start: start, Duration: time.Minute}
	for i := range n {
		h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		rng := rand.New(rand.NewPCG(uint64(i), 42))
		for range 300 {
			h.Record(math.Exp(rng.NormFloat64()*1.2 - 3)) // log-normal around 50 ms
		}
		w.Series = append(w.Series, metric.Aggregate{
			Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram, Hist: h, ErrorTracked: true, ErrorCount: uint64(i % 3),
			Resource:  metric.Attrs{{Key: "service.name", Value: "toitta"}, {Key: "cloud.region", Value: "asia-northeast1"}},
			Attrs:     metric.Attrs{{Key: "http.request.method", Value: "GET"}, {Key: "http.route", Value: fmt.Sprintf("/api/v1/tenants/%d/items/:id", i)}},
			Exemplars: []metric.Exemplar{{TraceID: [16]byte{byte(i), byte(i >> 8), 7}, SpanID: [8]byte{1}, Value: h.Max(), Time: start}},
		})
	}
	return w
}

// TestMackerelFigures measures what one minute of 1,000 latency series costs
// on the wire with the default config, and the outbox's record size (which
// sizes outbox.max_bytes). Run with -v to see them.
func TestMackerelFigures(t *testing.T) {
	env := newMackerelEnv(t, nil)
	exp, _ := env.open()
	const minutes = 3
	for i := range minutes {
		env.clock.Set(t0.Add(time.Duration(i+1) * time.Minute))
		if err := exp.Export(context.Background(), realisticWindow(t0.Add(time.Duration(i)*time.Minute), 1000)); err != nil {
			t.Fatal(err)
		}
	}
	posts, points, size := 0, 0, 0
	for _, p := range env.fake.Posts() {
		posts++
		points += p.Points
		size += p.Bytes
		if p.Status != 200 || p.Points > env.cfg.MaxPointsPerPost || int64(p.Bytes) > int64(env.cfg.MaxBytesPerPost) {
			t.Fatalf("post %+v outside the limits", p)
		}
	}
	t.Logf("1,000 latency series, default stats (9 per series): %.1f posts/min, %d points/min, %d bytes/min (%.0f bytes/point)",
		float64(posts)/minutes, points/minutes, size/minutes, float64(size)/float64(points))
	if points/minutes != 9000 {
		t.Fatalf("%d points per minute, want 9,000", points/minutes)
	}

	// Outbox record size, scaled linearly from 1,000 to 10,000 series
	// (BenchmarkOutboxEncode10k measures 10,000 directly: 1.42 MB).
	p, err := encodeWindow(realisticWindow(t0, 1000))
	if err != nil {
		t.Fatal(err)
	}
	perDay := int64(len(p)+frameHeader) * 10 * 1440
	t.Logf("outbox record for 1,000 latency series: %d bytes; 24 h of 10,000 series: about %.2f GiB", len(p)+frameHeader, float64(perDay)/(1<<30))
	if perDay > int64(DefaultOutboxConfig().MaxBytes) {
		t.Errorf("the default max_bytes (%d) does not hold 24 h of 10,000 series (%d)", DefaultOutboxConfig().MaxBytes, perDay)
	}
}

func TestMackerelHostMode(t *testing.T) {
	env := newMackerelEnv(t, func(c *MackerelConfig) {
		c.Hosts = []MackerelHost{{ResourceAttribute: "database_id", Roles: []string{"toitta:cloudsql"}}}
	})
	exp, ob := env.open()
	window := func(start time.Time) *metric.Window {
		h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		for i := 1; i <= 100; i++ {
			h.Record(float64(i) / 10) // ms
		}
		db := metric.Attrs{{Key: "database_id", Value: "proj:main"}, {Key: "project_id", Value: "proj"}}
		run := metric.NewAttrs(map[string]string{"service_name": "web", "revision_name": "web-00042"})
		return &metric.Window{Start: start, Duration: time.Minute, Series: []metric.Aggregate{
			{Name: "cloudsql.googleapis.com/database/cpu/utilization", Unit: "1", Kind: metric.Gauge, Resource: db, Sum: 0.9, Count: 2},
			{Name: "cloudsql.googleapis.com/database/disk/bytes_used", Unit: "By", Kind: metric.Gauge, Resource: db, Sum: 1e9, Count: 1},
			{Name: "cloudsql.googleapis.com/database/postgresql/insights/aggregate/latencies", Unit: "us", Kind: metric.Histogram, Resource: db,
				Attrs: metric.Attrs{{Key: "database", Value: "app"}}, Hist: h},
			{Name: "run.googleapis.com/container/instance_count", Unit: "1", Kind: metric.Gauge, Resource: run,
				Attrs: metric.Attrs{{Key: "state", Value: "active"}}, Sum: 3, Count: 1},
		}}
	}
	env.clock.Set(t0.Add(3 * time.Minute))
	mustEnqueue(t, ob, window(t0))
	mustEnqueue(t, ob, window(t0.Add(time.Minute)))
	drain(t, ob)

	hosts := env.fake.Hosts()
	if len(hosts) != 1 || hosts[0].CustomIdentifier != "sabaki/database_id/proj:main" || hosts[0].Name != "proj:main" ||
		len(hosts[0].RoleFullnames) != 1 {
		t.Fatalf("hosts %+v", hosts)
	}
	id := hosts[0].ID
	checks := map[string]float64{
		"custom.cloudsql.database.cpu.utilization.all.value":                               0.45,
		"custom.cloudsql.database.disk.bytes_used.all.value":                               1e9,
		"custom.cloudsql.database.postgresql.insights.aggregate.latencies.count.app.count": 100,
		"custom.cloudsql.database.postgresql.insights.aggregate.latencies.latency.app.max": 0.01, // 10 µs in ms
	}
	for name, want := range checks {
		for _, m := range []time.Time{t0, t0.Add(time.Minute)} {
			if got, ok := env.fake.HostValue(id, name, m); !ok || math.Abs(got-want) > 1e-12 {
				t.Errorf("host metric %s at %v = %v %v, want %v", name, m, got, ok, want)
			}
		}
	}
	// The Cloud Run series stays a service metric, split by service_name.
	if v, ok := env.fake.Value("toitta", "run.container.instance_count.web_active", t0); !ok || v != 3 {
		t.Fatalf("service metric: %v %v; names %v", v, ok, env.fake.Names("toitta"))
	}
	defs := env.fake.GraphDefs()
	wantDefs := map[string]string{
		"custom.cloudsql.database.cpu.utilization.#":                                 "float",
		"custom.cloudsql.database.disk.bytes_used.#":                                 "bytes",
		"custom.cloudsql.database.postgresql.insights.aggregate.latencies.latency.#": "milliseconds",
		"custom.cloudsql.database.postgresql.insights.aggregate.latencies.count.#":   "integer",
		"custom.cloudsql.database.postgresql.insights.aggregate.latencies.rate.#":    "float",
	}
	for name, unit := range wantDefs {
		if d, ok := defs[name]; !ok || d.Unit != unit {
			t.Errorf("graph def %s = %+v, want unit %s", name, d, unit)
		}
	}
	if d := defs["custom.cloudsql.database.postgresql.insights.aggregate.latencies.latency.#"]; len(d.Metrics) != 6 {
		t.Errorf("latency graph has %d metrics, want mean, p50, p90, p95, p99, max", len(d.Metrics))
	}
	creates, finds := 0, 0
	for _, r := range env.fake.Requests() {
		if strings.HasPrefix(r, "POST /api/v0/graph-defs/create") {
			creates++
		}
		if strings.HasPrefix(r, "GET /api/v0/hosts") {
			finds++
		}
	}
	if creates != 1 || finds != 1 {
		t.Fatalf("graph-def creates %d, host look-ups %d: want 1 each (idempotent, cached)", creates, finds)
	}
	// A new process finds the host by customIdentifier instead of registering it again.
	exp2, err := NewMackerel(env.cfg, Settings{})
	if err != nil {
		t.Fatal(err)
	}
	if err := exp2.Export(context.Background(), window(t0.Add(2*time.Minute))); err != nil {
		t.Fatal(err)
	}
	if len(env.fake.Hosts()) != 1 {
		t.Fatalf("host registered twice: %+v", env.fake.Hosts())
	}
	_ = exp
}

func TestMackerelMonitors(t *testing.T) {
	two := Threshold{Value: 2000, IsDuration: true, set: true}
	env := newMackerelEnv(t, func(c *MackerelConfig) {
		c.ExemplarsURL = "https://sabaki.example.internal/api/v1/exemplars"
		c.Monitors = []MackerelMonitor{
			{Name: "users p95", Metric: "http.server.request.duration", Stat: "p95",
				Series:  map[string]string{"http.route": "/api/users/:id", "http.request.method": "GET"},
				Warning: &two, Duration: config.Duration(5 * time.Minute), MaxCheckAttempts: 3},
			{Name: "error ratio", Metric: "http.server.request.duration", Stat: "error_ratio",
				Series:   map[string]string{"http.route": "/", "http.request.method": "GET"},
				Critical: &Threshold{Value: 0.01, set: true}},
		}
	})
	exp, _ := env.open()
	ctx := context.Background()
	dry, err := exp.SyncMonitors(ctx, true)
	if err != nil || len(dry) != 2 || dry[0].Action != "create" || len(env.fake.Monitors()) != 0 {
		t.Fatalf("dry run: %+v %v; monitors %v", dry, err, env.fake.Monitors())
	}
	// Export creates them at the first contact, once.
	w, _ := latencyWindow(t0, 10, false)
	env.clock.Set(t0.Add(2 * time.Minute))
	for range 2 {
		if err := exp.Export(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	ms := env.fake.Monitors()
	if len(ms) != 2 {
		t.Fatalf("monitors %v", ms)
	}
	m := ms[0]
	if m["metric"] != "http.server.request.duration.p95.GET_api_users_id" || m["warning"] != 2000.0 || m["duration"] != 5.0 ||
		m["maxCheckAttempts"] != 3.0 || m["operator"] != ">" || m["service"] != "toitta" ||
		!strings.Contains(m["memo"].(string), "https://sabaki.example.internal/api/v1/exemplars?metric=http.server.request.duration") {
		t.Fatalf("monitor %v", m)
	}
	// The monitored name is one the exporter posts.
	if _, ok := env.fake.Value("toitta", m["metric"].(string), t0); !ok {
		t.Fatalf("monitor watches %v, which is never posted; names %v", m["metric"], env.fake.Names("toitta"))
	}
	// Re-sync: nothing to do; a changed threshold is an update in place.
	again, err := exp.SyncMonitors(ctx, false)
	if err != nil || again[0].Action != "unchanged" || again[1].Action != "unchanged" {
		t.Fatalf("re-sync %+v %v", again, err)
	}
	exp.cfg.Monitors[0].Warning = &Threshold{Value: 3000, IsDuration: true, set: true}
	upd, err := exp.SyncMonitors(ctx, false)
	if err != nil || upd[0].Action != "update" || !strings.Contains(upd[0].Diff, "warning: 2000 → 3000") {
		t.Fatalf("update %+v %v", upd, err)
	}
	if ms := env.fake.Monitors(); len(ms) != 2 || ms[0]["warning"] != 3000.0 {
		t.Fatalf("after update %v", ms)
	}
}

func TestMackerelLateSubMinuteWindow(t *testing.T) {
	env := newMackerelEnv(t, nil)
	exp, _ := env.open()
	env.clock.Set(t0.Add(30 * time.Minute))
	ctx := context.Background()
	name := "http.server.request.duration.count.GET"
	post := func(start time.Time, rev int) {
		t.Helper()
		w, _ := latencyWindow(start, 10, false)
		w.Duration, w.Revision = 15*time.Second, rev
		if err := exp.Export(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 {
		post(t0.Add(time.Duration(i)*15*time.Second), 0)
	}
	if v, _ := env.fake.Value("toitta", name, t0); v != 40 {
		t.Fatalf("minute t0 = %v, want 40", v)
	}
	post(t0.Add(20*time.Minute), 0) // time moves on
	post(t0.Add(15*time.Second), 1) // a revision for t0 arrives too late to re-merge
	if v, _ := env.fake.Value("toitta", name, t0); v != 40 {
		t.Fatalf("minute t0 = %v after a too-late window: the whole minute must not be overwritten by a part", v)
	}
	if got := counterValue(t, exp.m.skipped); got != 1 {
		t.Fatalf("skipped = %v, want 1", got)
	}
	post(t0.Add(20*time.Minute+15*time.Second), 0) // within the kept minutes: merged
	if v, _ := env.fake.Value("toitta", name, t0.Add(20*time.Minute)); v != 20 {
		t.Fatalf("minute t0+20m = %v, want 20", v)
	}
}
