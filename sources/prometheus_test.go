package sources

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

var promRoutes = []struct {
	route  string
	median float64
}{{"/api/users/:id", 0.05}, {"/api/orders", 0.2}}

// promApp is a client_golang registry instrumented like an application:
// a latency histogram with native and classic buckets per route (with
// exemplars), a request counter with exemplars, a gauge and a summary.
type promApp struct {
	reg      *prometheus.Registry
	lat      *prometheus.HistogramVec
	values   map[string][]float64 // observations per route
	traceIDs map[string]string    // trace_id -> span_id used in exemplars
}

func newPromApp(t testing.TB) *promApp {
	t.Helper()
	a := &promApp{reg: prometheus.NewRegistry(), values: map[string][]float64{}, traceIDs: map[string]string{}}
	lat := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:                        "http_server_request_duration_seconds",
		Help:                        "Request latency.",
		Buckets:                     []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		NativeHistogramBucketFactor: 1.1,
	}, []string{"route", "method"})
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "http_requests_total", Help: "Requests."}, []string{"route", "code"})
	inflight := prometheus.NewGauge(prometheus.GaugeOpts{Name: "http_inflight_requests", Help: "In flight."})
	sum := prometheus.NewSummary(prometheus.SummaryOpts{Name: "rpc_duration_seconds", Help: "RPC latency.", Objectives: map[float64]float64{0.5: 0.05, 0.99: 0.001}})
	a.reg.MustRegister(lat, reqs, inflight, sum)
	a.lat = lat

	rng := rand.New(rand.NewPCG(1, 2))
	for _, r := range promRoutes {
		for i := range 2000 {
			v := math.Exp(math.Log(r.median) + 0.8*rng.NormFloat64())
			a.values[r.route] = append(a.values[r.route], v)
			if i%97 == 0 {
				tid, sid := promRandHex(rng, 16), promRandHex(rng, 8)
				a.traceIDs[tid] = sid
				lat.WithLabelValues(r.route, "GET").(prometheus.ExemplarObserver).ObserveWithExemplar(v, prometheus.Labels{"trace_id": tid, "span_id": sid})
				reqs.WithLabelValues(r.route, "200").(prometheus.ExemplarAdder).AddWithExemplar(1, prometheus.Labels{"trace_id": tid, "span_id": sid, "tenant": "acme"})
			} else {
				lat.WithLabelValues(r.route, "GET").Observe(v)
				reqs.WithLabelValues(r.route, "200").Inc()
			}
			sum.Observe(v)
		}
	}
	inflight.Set(3)
	return a
}

// observe records one latency with an exemplar carrying traceID.
func (a *promApp) observe(t testing.TB, route string, v float64, traceID string) {
	t.Helper()
	a.lat.WithLabelValues(route, "GET").(prometheus.ExemplarObserver).ObserveWithExemplar(v, prometheus.Labels{"trace_id": traceID, "span_id": "00000000000000aa"})
	a.traceIDs[traceID] = "00000000000000aa"
}

func promRandHex(rng *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.UintN(256))
	}
	return hex.EncodeToString(b)
}

// promServe serves the registry in one fixed exposition format, announced
// as ct (the format itself when ct is empty).
func promServe(g prometheus.Gatherer, f expfmt.Format, ct string, opts ...expfmt.EncoderOption) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mfs, err := g.Gather()
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		if ct == "" {
			ct = string(f)
		}
		w.Header().Set("Content-Type", ct)
		enc := expfmt.NewEncoder(w, f, opts...)
		for _, mf := range mfs {
			if err := enc.Encode(mf); err != nil {
				panic(err)
			}
		}
		if c, ok := enc.(expfmt.Closer); ok {
			_ = c.Close()
		}
	})
}

func newTestPrometheus(t testing.TB, cfg PrometheusConfig, logger *slog.Logger) (*Prometheus, *prometheus.Registry) {
	t.Helper()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	reg := prometheus.NewRegistry()
	p, err := NewPrometheus(cfg, Settings{Logger: logger, Registerer: reg})
	if err != nil {
		t.Fatalf("NewPrometheus: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p, reg
}

func promCfg(targets ...string) PrometheusConfig {
	c := DefaultPrometheusConfig()
	c.Name = "app"
	c.Targets = targets
	return c
}

func promFind(b metric.Batch, name string, attrs map[string]string) []metric.Series {
	var out []metric.Series
	for _, s := range b.Series {
		if s.Name != name {
			continue
		}
		ok := true
		for k, v := range attrs {
			if got, _ := s.Attrs.Get(k); got != v {
				ok = false
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

func promOne(t *testing.T, b metric.Batch, name string, attrs map[string]string) metric.Series {
	t.Helper()
	s := promFind(b, name, attrs)
	if len(s) != 1 {
		t.Fatalf("series %s %v: found %d, want 1 (batch has %d series)", name, attrs, len(s), len(b.Series))
	}
	return s[0]
}

// promNativeBuckets expands a native histogram's positive spans into
// Prometheus index -> count.
func promNativeBuckets(h *dto.Histogram) map[int32]uint64 {
	out := map[int32]uint64{}
	var idx int32
	var c int64
	k := 0
	for i, sp := range h.GetPositiveSpan() {
		if i == 0 {
			idx = sp.GetOffset()
		} else {
			idx += sp.GetOffset()
		}
		for range sp.GetLength() {
			c += h.GetPositiveDelta()[k]
			k++
			if c != 0 {
				out[idx] = uint64(c)
			}
			idx++
		}
	}
	return out
}

func promGatherFamily(t *testing.T, g prometheus.Gatherer, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	t.Fatalf("family %s not gathered", name)
	return nil
}

func promLabelMap(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func promExactQuantile(vals []float64, q float64) float64 {
	s := slices.Clone(vals)
	slices.Sort(s)
	return s[int(math.Floor(q*float64(len(s)-1)))]
}

// TestPrometheusNative scrapes a real client_golang handler, which
// negotiates the protobuf format, and checks native histograms bucket for
// bucket, p95 per route, exemplars, counters with created timestamps,
// gauges, summaries and the per-target series.
func TestPrometheusNative(t *testing.T) {
	app := newPromApp(t)
	var gotCT string
	var mu sync.Mutex
	h := promhttp.HandlerFor(app.reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		mu.Lock()
		gotCT = rec.Header().Get("Content-Type")
		mu.Unlock()
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	}))
	defer srv.Close()

	p, reg := newTestPrometheus(t, promCfg(srv.URL+"/metrics"), nil)
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	b, err := p.Collect(context.Background(), at)
	if err != nil {
		t.Fatalf("Collect: %v", err)
	}
	if !strings.HasPrefix(gotCT, "application/vnd.google.protobuf") {
		t.Fatalf("negotiated %q, want delimited protobuf", gotCT)
	}
	if b.Source != "app" {
		t.Errorf("batch source %q", b.Source)
	}

	fam := promGatherFamily(t, app.reg, "http_server_request_duration_seconds")
	for _, m := range fam.GetMetric() {
		lm := promLabelMap(m)
		route := lm["route"]
		want := m.GetHistogram()
		s := promOne(t, b, "http_server_request_duration_seconds", lm)
		if s.Kind != metric.Histogram || s.Temporality != metric.Cumulative {
			t.Fatalf("%s: kind %v temporality %v", route, s.Kind, s.Temporality)
		}
		if inst, _ := s.Resource.Get("instance"); inst != strings.TrimPrefix(srv.URL, "http://") {
			t.Errorf("instance = %q", inst)
		}
		if job, _ := s.Resource.Get("job"); job != "app" {
			t.Errorf("job = %q", job)
		}
		pt := s.Points[0]
		if !pt.Time.Equal(at) {
			t.Errorf("point time %v, want tick %v", pt.Time, at)
		}
		if !pt.Start.Equal(want.GetCreatedTimestamp().AsTime()) {
			t.Errorf("start %v, want created %v", pt.Start, want.GetCreatedTimestamp().AsTime())
		}
		hist := pt.Hist
		if hist.Count() != want.GetSampleCount() || hist.Sum() != want.GetSampleSum() {
			t.Errorf("%s: count/sum %d/%v, want %d/%v", route, hist.Count(), hist.Sum(), want.GetSampleCount(), want.GetSampleSum())
		}
		if hist.Scale() != want.GetSchema() {
			t.Errorf("%s: scale %d, want schema %d", route, hist.Scale(), want.GetSchema())
		}
		// Bucket for bucket: OTel index = Prometheus index - 1.
		d := hist.Data()
		got := map[int32]uint64{}
		for i, c := range d.Positive.Counts {
			if c != 0 {
				got[d.Positive.Offset+int32(i)+1] = c
			}
		}
		wantB := promNativeBuckets(want)
		if len(got) != len(wantB) {
			t.Errorf("%s: %d populated buckets, want %d", route, len(got), len(wantB))
		}
		for idx, c := range wantB {
			if got[idx] != c {
				t.Errorf("%s: prometheus bucket %d = %d, want %d", route, idx, got[idx], c)
			}
		}
		if d.ZeroCount != want.GetZeroCount() || d.ZeroThreshold != want.GetZeroThreshold() {
			t.Errorf("%s: zero bucket %d@%v, want %d@%v", route, d.ZeroCount, d.ZeroThreshold, want.GetZeroCount(), want.GetZeroThreshold())
		}
		// p95 per route: the bucket holding rank floor(0.95(n-1)) per the
		// exposed buckets, and the exact value within the error bound.
		k := uint64(math.Floor(0.95 * float64(want.GetSampleCount()-1)))
		idxs := slices.Sorted(func(yield func(int32) bool) {
			for i := range wantB {
				if !yield(i) {
					return
				}
			}
		})
		var cum uint64
		var lo, hi float64
		base := math.Pow(2, math.Pow(2, -float64(want.GetSchema())))
		for _, i := range idxs {
			cum += wantB[i]
			if cum > k {
				lo, hi = math.Pow(base, float64(i-1)), math.Pow(base, float64(i))
				break
			}
		}
		p95 := hist.QuantileMidpoint(0.95)
		if p95 < lo*(1-1e-12) || p95 > hi*(1+1e-12) {
			t.Errorf("%s: p95 %v outside the rank's bucket (%v, %v]", route, p95, lo, hi)
		}
		exact := promExactQuantile(app.values[route], 0.95)
		if rel := math.Abs(p95-exact) / exact; rel > hist.RelativeError() {
			t.Errorf("%s: p95 %v vs exact %v: relative error %.4f > bound %.4f", route, p95, exact, rel, hist.RelativeError())
		}
		t.Logf("%s: p95 %.5f exact %.5f (bucket (%.5f, %.5f])", route, p95, exact, lo, hi)

		// Exemplars: every exposed one (native and per-bucket) arrives with
		// its trace and span ID.
		var wantEx []*dto.Exemplar
		wantEx = append(wantEx, want.GetExemplars()...)
		for _, bk := range want.GetBucket() {
			if bk.GetExemplar() != nil {
				wantEx = append(wantEx, bk.GetExemplar())
			}
		}
		if len(wantEx) == 0 {
			t.Fatalf("%s: the registry exposed no exemplars", route)
		}
		for _, we := range wantEx {
			wl := promLabelMap(&dto.Metric{Label: we.GetLabel()})
			found := false
			for _, e := range pt.Exemplars {
				if hex.EncodeToString(e.TraceID[:]) == wl["trace_id"] && hex.EncodeToString(e.SpanID[:]) == wl["span_id"] && e.Value == we.GetValue() {
					found = true
				}
			}
			if !found {
				t.Errorf("%s: exemplar trace_id=%s missing", route, wl["trace_id"])
			}
		}
		for _, e := range pt.Exemplars {
			tid := hex.EncodeToString(e.TraceID[:])
			if sid, ok := app.traceIDs[tid]; !ok || sid != hex.EncodeToString(e.SpanID[:]) {
				t.Errorf("%s: unexpected exemplar trace %s span %x", route, tid, e.SpanID)
			}
		}
	}

	// Counter: cumulative, created timestamp, exemplar with extra attrs.
	c := promOne(t, b, "http_requests_total", map[string]string{"route": "/api/orders", "code": "200"})
	if c.Kind != metric.Counter || c.Temporality != metric.Cumulative || c.Points[0].Value != 2000 {
		t.Errorf("counter: %+v", c)
	}
	if c.Points[0].Start.IsZero() {
		t.Errorf("counter start not taken from the created timestamp")
	}
	if len(c.Points[0].Exemplars) != 1 || !c.Points[0].Exemplars[0].HasTrace() {
		t.Fatalf("counter exemplars: %+v", c.Points[0].Exemplars)
	}
	if v, _ := c.Points[0].Exemplars[0].Attrs.Get("tenant"); v != "acme" {
		t.Errorf("exemplar attrs %v, want tenant=acme", c.Points[0].Exemplars[0].Attrs)
	}
	// Gauge and summary.
	if g := promOne(t, b, "http_inflight_requests", nil); g.Kind != metric.Gauge || g.Points[0].Value != 3 {
		t.Errorf("gauge: %+v", g)
	}
	if q := promOne(t, b, "rpc_duration_seconds", map[string]string{"quantile": "0.99"}); q.Kind != metric.Gauge || q.Points[0].Value <= 0 {
		t.Errorf("summary quantile: %+v", q)
	}
	if n := promOne(t, b, "rpc_duration_seconds_count", nil); n.Kind != metric.Counter || n.Points[0].Value != 4000 {
		t.Errorf("summary count: %+v", n)
	}
	promOne(t, b, "rpc_duration_seconds_sum", nil)
	// Per-target series and self-metrics.
	if up := promOne(t, b, "up", nil); up.Points[0].Value != 1 {
		t.Errorf("up = %v", up.Points[0].Value)
	}
	samples := promOne(t, b, "scrape_samples_scraped", nil).Points[0].Value
	if want := float64(len(b.Series) - 3); samples != want {
		t.Errorf("scrape_samples_scraped = %v, want %v", samples, want)
	}
	promOne(t, b, "scrape_duration_seconds", nil)
	inst := strings.TrimPrefix(srv.URL, "http://")
	if v := promSelfValue(p.m.up.WithLabelValues("app", inst)); v != 1 {
		t.Errorf("self-metric up = %v", v)
	}
	if n, err := promGatherCount(reg, "sabaki_prometheus_scrape_samples"); err != nil || n != 1 {
		t.Errorf("self-metric scrape_samples: %d, %v", n, err)
	}

	// A second scrape shows the same exemplars again: they are not handed
	// over twice. A new one is.
	b, err = p.Collect(context.Background(), at.Add(15*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range b.Series {
		if len(s.Points[0].Exemplars) > 0 {
			t.Errorf("%s %v: exemplars handed over again: %v", s.Name, s.Attrs, s.Points[0].Exemplars)
		}
	}
	fresh := "00000000000000000000000000abcdef"
	app.observe(t, "/api/orders", 0.3, fresh)
	b, err = p.Collect(context.Background(), at.Add(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ex := promOne(t, b, "http_server_request_duration_seconds", map[string]string{"route": "/api/orders"}).Points[0].Exemplars
	if len(ex) != 1 || hex.EncodeToString(ex[0].TraceID[:]) != fresh {
		t.Errorf("after a new observation: exemplars %+v, want only trace %s", ex, fresh)
	}
}

// TestPrometheusTextFormats checks the fallbacks: OpenMetrics (exemplars,
// _created) and the classic text format (classic histogram buckets).
func TestPrometheusTextFormats(t *testing.T) {
	app := newPromApp(t)
	for _, tc := range []struct {
		name      string
		format    expfmt.Format
		ct        string
		opts      []expfmt.EncoderOption
		exemplars bool
		created   bool
	}{
		{"openmetrics", expfmt.FmtOpenMetrics_1_0_0, "", []expfmt.EncoderOption{expfmt.WithCreatedLines()}, true, true},
		{"text", expfmt.FmtText, "", nil, false, false},
		{"unknown content type", expfmt.FmtText, "text/weird", nil, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(promServe(app.reg, tc.format, tc.ct, tc.opts...))
			defer srv.Close()
			p, _ := newTestPrometheus(t, promCfg(srv.URL), nil)
			b, err := p.Collect(context.Background(), time.Now())
			if err != nil {
				t.Fatalf("Collect: %v", err)
			}
			fam := promGatherFamily(t, app.reg, "http_server_request_duration_seconds")
			for _, m := range fam.GetMetric() {
				lm := promLabelMap(m)
				want := m.GetHistogram()
				s := promOne(t, b, "http_server_request_duration_seconds", lm)
				hist := s.Points[0].Hist
				if hist.Count() != want.GetSampleCount() || math.Abs(hist.Sum()-want.GetSampleSum()) > 1e-9*want.GetSampleSum() {
					t.Errorf("%v: count/sum %d/%v, want %d/%v", lm, hist.Count(), hist.Sum(), want.GetSampleCount(), want.GetSampleSum())
				}
				// Classic buckets: the p95 lies in the `le` bucket holding its rank
				// (widened by one exponential bucket: the conversion spreads each
				// explicit bucket over the exponential ones it overlaps).
				k := uint64(math.Floor(0.95 * float64(want.GetSampleCount()-1)))
				lo, hi := 0.0, math.Inf(1)
				for _, bk := range want.GetBucket() {
					if bk.GetCumulativeCount() > k {
						hi = bk.GetUpperBound()
						break
					}
					lo = bk.GetUpperBound()
				}
				base := math.Pow(2, math.Pow(2, -float64(hist.Scale())))
				if p95 := hist.Quantile(0.95); p95 < lo/base || p95 > hi*base {
					t.Errorf("%v: p95 %v outside classic bucket (%v, %v]", lm, p95, lo, hi)
				}
				if got := len(s.Points[0].Exemplars) > 0; got != tc.exemplars {
					t.Errorf("exemplars present = %v, want %v", got, tc.exemplars)
				}
				for _, e := range s.Points[0].Exemplars {
					if _, ok := app.traceIDs[hex.EncodeToString(e.TraceID[:])]; !ok {
						t.Errorf("unexpected exemplar trace %x", e.TraceID)
					}
				}
				if got := !s.Points[0].Start.IsZero(); got != tc.created {
					t.Errorf("start set = %v, want %v", got, tc.created)
				}
			}
			c := promOne(t, b, "http_requests_total", map[string]string{"route": "/api/users/:id"})
			if c.Kind != metric.Counter || c.Points[0].Value != 2000 {
				t.Errorf("counter %+v", c)
			}
			if got := len(c.Points[0].Exemplars) == 1; got != tc.exemplars {
				t.Errorf("counter exemplar present = %v, want %v", got, tc.exemplars)
			}
		})
	}
}

func TestPrometheusGzipAndAuth(t *testing.T) {
	app := newPromApp(t)
	var buf bytes.Buffer
	promServe(app.reg, expfmt.FmtText, "").ServeHTTP(&promRecorder{h: http.Header{}, w: &buf}, httptest.NewRequest("GET", "/", nil))
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(buf.Bytes())
	_ = zw.Close()

	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		cfg   func(*PrometheusConfig)
		check func(*http.Request) bool
	}{
		{"bearer token", func(c *PrometheusConfig) { c.BearerToken = "s3cret" }, func(r *http.Request) bool { return r.Header.Get("Authorization") == "Bearer s3cret" }},
		{"bearer token file", func(c *PrometheusConfig) { c.BearerTokenFile = tokenFile }, func(r *http.Request) bool { return r.Header.Get("Authorization") == "Bearer s3cret" }},
		{"basic auth", func(c *PrometheusConfig) { c.BasicAuth = &PrometheusBasicAuth{Username: "u", Password: "p"} }, func(r *http.Request) bool {
			u, pw, ok := r.BasicAuth()
			return ok && u == "u" && pw == "p"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !tc.check(r) {
					http.Error(w, "unauthorized", http.StatusUnauthorized)
					return
				}
				if r.Header.Get("Accept-Encoding") != "gzip" {
					t.Errorf("Accept-Encoding %q", r.Header.Get("Accept-Encoding"))
				}
				w.Header().Set("Content-Type", string(expfmt.FmtText))
				w.Header().Set("Content-Encoding", "gzip")
				_, _ = w.Write(gz.Bytes())
			}))
			defer srv.Close()
			// A host that is not loopback (dialled to the test server) is
			// asked for gzip.
			cfg := promCfg("http://metrics.example/metrics")
			tc.cfg(&cfg)
			p, _ := newTestPrometheus(t, cfg, nil)
			promDialTo(p, srv)
			b, err := p.Collect(context.Background(), time.Now())
			if err != nil {
				t.Fatalf("Collect: %v", err)
			}
			if c := promOne(t, b, "http_requests_total", map[string]string{"route": "/api/orders"}); c.Points[0].Value != 2000 {
				t.Errorf("counter %v", c.Points[0].Value)
			}
			// Without credentials the same server refuses: up=0.
			cfg = promCfg("http://metrics.example/metrics")
			p2, _ := newTestPrometheus(t, cfg, nil)
			promDialTo(p2, srv)
			b, err = p2.Collect(context.Background(), time.Now())
			if !IsPartial(err) || !strings.Contains(err.Error(), "401") {
				t.Errorf("without credentials: err %v", err)
			}
			if up := promOne(t, b, "up", nil); up.Points[0].Value != 0 {
				t.Errorf("up = %v", up.Points[0].Value)
			}
		})
	}
}

type promRecorder struct {
	h http.Header
	w *bytes.Buffer
}

func (r *promRecorder) Header() http.Header         { return r.h }
func (r *promRecorder) Write(b []byte) (int, error) { return r.w.Write(b) }
func (r *promRecorder) WriteHeader(int)             {}

func TestPrometheusBadBodies(t *testing.T) {
	big := strings.Repeat("# filler comment line to make the body large\n", 100) + "x 1\n"
	// A good family, then garbage: the series converted before the error
	// must not stay in the batch.
	pb := promProtoBody(t, newPromApp(t).reg)
	size, k := protowire.ConsumeVarint(pb)
	goodThenBad := string(pb[:k+int(size)]) + "\xff\xff\xff"
	c := promConverter{at: time.Now()}
	if first, err := c.parseProto(nil, pb[:k+int(size)]); err != nil || len(first) == 0 {
		t.Fatalf("the first family alone: %d series, %v", len(first), err)
	}
	for _, tc := range []struct {
		name, ct, body string
		gzip           bool
		want           string
	}{
		{"oversized", string(expfmt.FmtText), big, false, "body exceeds body_size_limit (1KiB uncompressed)"},
		{"oversized after gunzip", string(expfmt.FmtText), big, true, "body exceeds body_size_limit"},
		{"malformed text", string(expfmt.FmtText), "metric{a=\"b\" 1\n", false, "parse text exposition"},
		{"malformed openmetrics", string(expfmt.FmtOpenMetrics_1_0_0), "# TYPE x counter\nx_total 1\n", false, "parse OpenMetrics exposition"},
		{"malformed protobuf", string(expfmt.FmtProtoDelim), "\xff\xff\xff", false, "parse protobuf exposition"},
		{"protobuf malformed after a family", string(expfmt.FmtProtoDelim), goodThenBad, false, "parse protobuf exposition"},
		{"text malformed after samples", string(expfmt.FmtText), "# TYPE a gauge\na 1\na{b=\"c\",d=\"e\"} 2\na{b=\"c\" 3\n", false, "parse text exposition"},
		{"bad gzip", string(expfmt.FmtText), "not gzip", false, "gzip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tc.ct)
				body := []byte(tc.body)
				if tc.gzip || tc.name == "bad gzip" {
					w.Header().Set("Content-Encoding", "gzip")
				}
				if tc.gzip {
					var gz bytes.Buffer
					zw := gzip.NewWriter(&gz)
					_, _ = zw.Write(body)
					_ = zw.Close()
					body = gz.Bytes()
				}
				_, _ = w.Write(body)
			}))
			defer srv.Close()
			cfg := promCfg(srv.URL)
			cfg.BodySizeLimit = 1024
			p, _ := newTestPrometheus(t, cfg, nil)
			b, err := p.Collect(context.Background(), time.Now())
			var pe *PartialError
			if !errors.As(err, &pe) || pe.Failed != 1 {
				t.Fatalf("err = %v, want a partial error for one target", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want it to mention %q", err, tc.want)
			}
			if up := promOne(t, b, "up", nil); up.Points[0].Value != 0 {
				t.Errorf("up = %v", up.Points[0].Value)
			}
			if len(b.Series) != 3 {
				t.Errorf("got %d series, want only the 3 per-target ones", len(b.Series))
			}
		})
	}
}

func TestPrometheusHonorLabels(t *testing.T) {
	body := "# TYPE m gauge\nm{instance=\"exposed:1\",job=\"theirs\",route=\"/a\"} 1\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", string(expfmt.FmtText))
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	inst := strings.TrimPrefix(srv.URL, "http://")
	for _, tc := range []struct {
		honor        bool
		wantAttrs    map[string]string
		wantResource map[string]string
	}{
		{false,
			map[string]string{"exported_instance": "exposed:1", "exported_job": "theirs", "route": "/a"},
			map[string]string{"instance": inst, "job": "app", "team": "web"}},
		{true,
			map[string]string{"instance": "exposed:1", "job": "theirs", "route": "/a"},
			map[string]string{"team": "web"}},
	} {
		t.Run(fmt.Sprintf("honor_labels=%v", tc.honor), func(t *testing.T) {
			cfg := promCfg(srv.URL)
			cfg.HonorLabels = tc.honor
			cfg.Labels = map[string]string{"team": "web"}
			p, _ := newTestPrometheus(t, cfg, nil)
			b, err := p.Collect(context.Background(), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			s := promOne(t, b, "m", nil)
			if !s.Attrs.Equal(metric.NewAttrs(tc.wantAttrs)) {
				t.Errorf("attrs %v, want %v", s.Attrs, tc.wantAttrs)
			}
			if !s.Resource.Equal(metric.NewAttrs(tc.wantResource)) {
				t.Errorf("resource %v, want %v", s.Resource, tc.wantResource)
			}
		})
	}
}

// TestPrometheusStalenessAndLogging checks that a disappeared series stops
// and is counted, that a failing target logs once (not per scrape), and
// that the recovery is logged.
func TestPrometheusStalenessAndLogging(t *testing.T) {
	var mu sync.Mutex
	body, status := "# TYPE m gauge\nm{k=\"a\"} 1\nm{k=\"b\"} 2\n", 200
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", string(expfmt.FmtText))
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	logs := &promLogs{}
	p, reg := newTestPrometheus(t, promCfg(srv.URL), slog.New(logs))
	collect := func() (metric.Batch, error) { return p.Collect(context.Background(), time.Now()) }
	if _, err := collect(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	body = "# TYPE m gauge\nm{k=\"a\"} 1\n"
	mu.Unlock()
	b, err := collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(promFind(b, "m", map[string]string{"k": "b"})) != 0 {
		t.Errorf("disappeared series still emitted")
	}
	if v := promSelfValue(p.m.stale.WithLabelValues("app")); v != 1 {
		t.Errorf("stale series = %v, want 1", v)
	}
	mu.Lock()
	status = 500
	mu.Unlock()
	for range 5 {
		if _, err := collect(); !IsPartial(err) {
			t.Fatalf("want a partial error, got %v", err)
		}
	}
	if got := logs.count("scrape failing"); got != 1 {
		t.Errorf("logged the failure %d times in 5 scrapes, want once", got)
	}
	p.now = func() time.Time { return time.Now().Add(promFailureLogEvery + time.Second) }
	_, _ = collect()
	if got := logs.count("scrape still failing"); got != 1 {
		t.Errorf("summary after the window logged %d times, want 1", got)
	}
	mu.Lock()
	status = 200
	mu.Unlock()
	if _, err := collect(); err != nil {
		t.Fatal(err)
	}
	if got := logs.count("scrape recovered"); got != 1 {
		t.Errorf("recovery logged %d times", got)
	}
	if n, _ := promGatherCount(reg, "sabaki_prometheus_scrape_failures_total"); n != 1 {
		t.Errorf("failures self-metric series = %d", n)
	}
}

type promLogs struct {
	mu   sync.Mutex
	msgs []string
}

func (l *promLogs) Enabled(context.Context, slog.Level) bool { return true }
func (l *promLogs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Message)
	return nil
}
func (l *promLogs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *promLogs) WithGroup(string) slog.Handler      { return l }
func (l *promLogs) count(msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

func TestPrometheusFileSD(t *testing.T) {
	mk := func(v string) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/custom" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", string(expfmt.FmtText))
			_, _ = fmt.Fprintf(w, "# TYPE v gauge\nv %s\n", v)
		}))
	}
	s1, s2 := mk("1"), mk("2")
	defer s1.Close()
	defer s2.Close()
	dir := t.TempDir()
	file := filepath.Join(dir, "targets.json")
	write := func(srv *httptest.Server, env string) {
		t.Helper()
		js := fmt.Sprintf(`[{"targets": [%q], "labels": {"env": %q, "__metrics_path__": "/custom"}}]`, strings.TrimPrefix(srv.URL, "http://"), env)
		if err := os.WriteFile(file, []byte(js), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(s1, "prod")
	cfg := DefaultPrometheusConfig()
	cfg.Name = "sd"
	cfg.FileSD = []string{file}
	p, _ := newTestPrometheus(t, cfg, nil)
	b, err := p.Collect(context.Background(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	v := promOne(t, b, "v", nil)
	if env, _ := v.Resource.Get("env"); env != "prod" || v.Points[0].Value != 1 {
		t.Errorf("first target: resource %v value %v", v.Resource, v.Points[0].Value)
	}
	if _, ok := v.Resource.Get("__metrics_path__"); ok {
		t.Errorf("__ label kept in resource")
	}
	write(s2, "staging")
	future := time.Now().Add(time.Minute)
	_ = os.Chtimes(file, future, future)
	b, err = p.Collect(context.Background(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	v = promOne(t, b, "v", nil)
	if env, _ := v.Resource.Get("env"); env != "staging" || v.Points[0].Value != 2 {
		t.Errorf("reloaded target: resource %v value %v", v.Resource, v.Points[0].Value)
	}
	// A broken file keeps the previous targets.
	if err := os.WriteFile(file, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(file, future.Add(time.Minute), future.Add(time.Minute))
	if b, err = p.Collect(context.Background(), time.Now()); err != nil || promOne(t, b, "v", nil).Points[0].Value != 2 {
		t.Errorf("after a broken file: %v", err)
	}
}

func TestPrometheusConfig(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       string // substring of the problem, "" for valid
	}{
		{"valid", "type: prometheus\ntargets: [http://127.0.0.1:3000/metrics, 'localhost:9100']\ninterval: 30s\ntimeout: 5s\nbody_size_limit: 10MiB\n", ""},
		{"no targets", "type: prometheus\n", "targets: must list at least one target"},
		{"bad scheme", "type: prometheus\ntargets: ['ftp://x/metrics']\n", "targets[0]: target \"ftp://x/metrics\": scheme must be http or https"},
		{"timeout above interval", "type: prometheus\ntargets: [a:1]\ninterval: 5s\ntimeout: 10s\n", "timeout: must not exceed interval"},
		{"two tokens", "type: prometheus\ntargets: [a:1]\nbearer_token: x\nbearer_token_file: /f\n", "bearer_token_file: set either"},
		{"half tls", "type: prometheus\ntargets: ['https://a:1/m']\ntls: {cert_file: c.pem}\n", "tls: cert_file and key_file"},
		{"typo", "type: prometheus\ntargets: [a:1]\nintervall: 5s\n", "did you mean"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n yaml.Node
			if err := yaml.Unmarshal([]byte(tc.yaml), &n); err != nil {
				t.Fatal(err)
			}
			cfg := DefaultPrometheusConfig()
			ps := config.Decode(&n, "sources[0]", &cfg)
			if tc.want == "" {
				if len(ps) > 0 {
					t.Fatalf("unexpected problems: %v", ps)
				}
				if _, err := NewPrometheus(cfg, Settings{}); err != nil {
					t.Fatalf("NewPrometheus: %v", err)
				}
				return
			}
			if len(ps) == 0 || !strings.Contains(ps.Error(), tc.want) {
				t.Fatalf("problems %v, want %q", ps, tc.want)
			}
		})
	}
}

// FuzzParse runs arbitrary bytes through the text and OpenMetrics paths:
// no panic, and whatever converts is well-formed.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"# TYPE a counter\na_total{x=\"1\"} 3 1700000000000\n",
		"# HELP g help\n# TYPE g gauge\ng 1.5\ng{a=\"b\"} NaN\n",
		"# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 4\nh_sum 2.5\nh_count 4\n",
		"# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"0.5\"} 3\nh_bucket{le=\"+Inf\"} 4\nh_count 4\n",
		"# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 3\ns_count 2\n",
		"# TYPE c counter\nc_total 1 # {trace_id=\"0af7651916cd43dd8448eb211c80319c\",span_id=\"b7ad6b7169203331\"} 0.5 1700000000.1\nc_created 1700000000\n# EOF\n",
		"# TYPE h histogram\nh_bucket{le=\"1\"} 1 # {trace_id=\"zz\"} 0.3\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0.3\nh_created 1700000000\n# EOF\n",
		"untyped_metric 12\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, format := range []expfmt.Format{expfmt.FmtText, expfmt.FmtOpenMetrics_1_0_0} {
			if format == expfmt.FmtOpenMetrics_1_0_0 && len(data) > 4096 {
				continue // expfmt's OpenMetrics fallback needs ~18 ms a line: keep executions short
			}
			c := promConverter{resource: metric.Attrs{{Key: "job", Value: "j"}}, at: time.Unix(1700000000, 0), honorTimestamps: true}
			series, err := c.parse(nil, data, format)
			if err != nil {
				continue
			}
			for _, s := range series {
				if s.Name == "" || len(s.Points) != 1 {
					t.Fatalf("malformed series %+v", s)
				}
				if (s.Kind == metric.Histogram) != (s.Points[0].Hist != nil) {
					t.Fatalf("kind %v with hist %v", s.Kind, s.Points[0].Hist)
				}
				if !slices.IsSortedFunc(s.Attrs, func(a, b metric.Attr) int { return strings.Compare(a.Key, b.Key) }) {
					t.Fatalf("attrs not sorted: %v", s.Attrs)
				}
			}
		}
	})
}

// promSelfValue reads a gauge or counter's current value.
func promSelfValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		return math.NaN()
	}
	if d.Counter != nil {
		return d.GetCounter().GetValue()
	}
	return d.GetGauge().GetValue()
}

// promGatherCount counts the series of the named family in g.
func promGatherCount(g prometheus.Gatherer, name string) (int, error) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return len(mf.GetMetric()), nil
		}
	}
	return 0, nil
}

// promParseDTO converts a protobuf exposition through client_model's
// generated decoder (expfmt) instead of promDecodeProto: the reference the
// hand-written decoder must agree with.
func promParseDTO(c *promConverter, body []byte) ([]metric.Series, error) {
	dec := expfmt.NewDecoder(bytes.NewReader(body), expfmt.FmtProtoDelim)
	var out []metric.Series
	var mf dto.MetricFamily
	for {
		err := dec.Decode(&mf)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		c.fam.fromDTO(&mf)
		out = c.appendFamily(out, &c.fam)
	}
}

// promDiff describes the first difference between two conversions, or "".
func promDiff(a, b []metric.Series) string {
	if len(a) != len(b) {
		return fmt.Sprintf("%d series vs %d", len(a), len(b))
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Name != y.Name || x.Unit != y.Unit || x.Description != y.Description || x.Kind != y.Kind || x.Temporality != y.Temporality ||
			!x.Attrs.Equal(y.Attrs) || !x.Resource.Equal(y.Resource) || len(x.Points) != len(y.Points) {
			return fmt.Sprintf("series %d: %+v vs %+v", i, x, y)
		}
		for j := range x.Points {
			p, q := x.Points[j], y.Points[j]
			if !p.Start.Equal(q.Start) || !p.Time.Equal(q.Time) || !(p.Value == q.Value || math.IsNaN(p.Value) && math.IsNaN(q.Value)) {
				return fmt.Sprintf("%s point %d: %+v vs %+v", x.Name, j, p, q)
			}
			if (p.Hist == nil) != (q.Hist == nil) {
				return fmt.Sprintf("%s: histogram presence differs", x.Name)
			}
			if p.Hist != nil {
				dp, dq := p.Hist.Data(), q.Hist.Data()
				if fmt.Sprint(dp) != fmt.Sprint(dq) || p.Hist.Dropped() != q.Hist.Dropped() {
					return fmt.Sprintf("%s: histogram %+v vs %+v", x.Name, dp, dq)
				}
			}
			if len(p.Exemplars) != len(q.Exemplars) {
				return fmt.Sprintf("%s: %d exemplars vs %d", x.Name, len(p.Exemplars), len(q.Exemplars))
			}
			for k := range p.Exemplars {
				e, f := p.Exemplars[k], q.Exemplars[k]
				if e.TraceID != f.TraceID || e.SpanID != f.SpanID || !(e.Value == f.Value || math.IsNaN(e.Value) && math.IsNaN(f.Value)) || !e.Time.Equal(f.Time) || !e.Attrs.Equal(f.Attrs) {
					return fmt.Sprintf("%s: exemplar %+v vs %+v", x.Name, e, f)
				}
			}
		}
	}
	return ""
}

func promProtoBody(t testing.TB, g prometheus.Gatherer) []byte {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.FmtProtoDelim)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// TestPrometheusProtoDecoder checks the hand-written protobuf decoder
// against client_model's generated one on real client_golang output and on
// hand-made families (float histograms, negative buckets, unpacked fields,
// timestamps, a gauge histogram).
func TestPrometheusProtoDecoder(t *testing.T) {
	bodies := map[string][]byte{"client_golang app": promProtoBody(t, newPromApp(t).reg)}
	f64 := func(v float64) *float64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	i32 := func(v int32) *int32 { return &v }
	u32 := func(v uint32) *uint32 { return &v }
	str := func(v string) *string { return &v }
	typ := func(v dto.MetricType) *dto.MetricType { return &v }
	ts := &timestamppb.Timestamp{Seconds: 1764072000, Nanos: 5}
	lbl := []*dto.LabelPair{{Name: str("route"), Value: str("/x")}}
	ex := &dto.Exemplar{Label: []*dto.LabelPair{{Name: str("trace_id"), Value: str("0af7651916cd43dd8448eb211c80319c")}, {Name: str("k"), Value: str("v")}}, Value: f64(0.7), Timestamp: ts}
	fams := []*dto.MetricFamily{
		{Name: str("float_native"), Type: typ(dto.MetricType_HISTOGRAM), Metric: []*dto.Metric{{Label: lbl, TimestampMs: proto.Int64(1764072000123), Histogram: &dto.Histogram{
			SampleCountFloat: f64(7), SampleSum: f64(-1.5), Schema: i32(2), ZeroThreshold: f64(1e-6), ZeroCountFloat: f64(1),
			PositiveSpan: []*dto.BucketSpan{{Offset: i32(-3), Length: u32(2)}, {Offset: i32(4), Length: u32(1)}}, PositiveCount: []float64{1, 2, 1},
			NegativeSpan: []*dto.BucketSpan{{Offset: i32(1), Length: u32(1)}}, NegativeCount: []float64{2},
			Exemplars: []*dto.Exemplar{ex}, CreatedTimestamp: ts,
		}}}},
		{Name: str("int_native_neg"), Type: typ(dto.MetricType_HISTOGRAM), Metric: []*dto.Metric{{Histogram: &dto.Histogram{
			SampleCount: u64(6), SampleSum: f64(2), Schema: i32(-1), ZeroCount: u64(1),
			PositiveSpan: []*dto.BucketSpan{{Offset: i32(0), Length: u32(2)}}, PositiveDelta: []int64{2, -1},
			NegativeSpan: []*dto.BucketSpan{{Offset: i32(-2), Length: u32(1)}}, NegativeDelta: []int64{2},
		}}}},
		{Name: str("classic_float"), Type: typ(dto.MetricType_HISTOGRAM), Unit: str("seconds"), Help: str("h"), Metric: []*dto.Metric{{Histogram: &dto.Histogram{
			SampleCountFloat: f64(4), SampleSum: f64(2), Bucket: []*dto.Bucket{{UpperBound: f64(0.5), CumulativeCountFloat: f64(1), Exemplar: ex}, {UpperBound: f64(1), CumulativeCountFloat: f64(3)}},
		}}}},
		{Name: str("gh"), Type: typ(dto.MetricType_GAUGE_HISTOGRAM), Metric: []*dto.Metric{{Histogram: &dto.Histogram{SampleCount: u64(1)}}}},
		{Name: str("summ"), Type: typ(dto.MetricType_SUMMARY), Metric: []*dto.Metric{{Label: lbl, Summary: &dto.Summary{SampleCount: u64(3), SampleSum: f64(1.5),
			Quantile: []*dto.Quantile{{Quantile: f64(0.5), Value: f64(0.4)}}, CreatedTimestamp: ts}}}},
		{Name: str("u"), Type: typ(dto.MetricType_UNTYPED), Metric: []*dto.Metric{{Untyped: &dto.Untyped{Value: f64(math.Inf(1))}}, {Untyped: &dto.Untyped{Value: f64(math.NaN())}}}},
		{Name: str("c_total"), Metric: []*dto.Metric{{Label: lbl, Counter: &dto.Counter{Value: f64(3), Exemplar: ex, CreatedTimestamp: &timestamppb.Timestamp{Seconds: 5, Nanos: 2e9}}}}},
		{Name: str("no_data_hist"), Type: typ(dto.MetricType_HISTOGRAM), Metric: []*dto.Metric{{Label: lbl}}},
	}
	var buf bytes.Buffer
	for _, mf := range fams {
		if _, err := protodelim.MarshalTo(&buf, mf); err != nil {
			t.Fatal(err)
		}
	}
	bodies["hand-made"] = buf.Bytes()
	// The same with every packed field written unpacked.
	var unpacked bytes.Buffer
	for _, mf := range fams {
		b, err := proto.Marshal(mf)
		if err != nil {
			t.Fatal(err)
		}
		b = promUnpack(t, b, (&dto.MetricFamily{}).ProtoReflect().Descriptor())
		unpacked.Write(protowire.AppendVarint(nil, uint64(len(b))))
		unpacked.Write(b)
	}
	bodies["unpacked"] = unpacked.Bytes()
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			at := time.Unix(1764072060, 0)
			res := metric.Attrs{{Key: "instance", Value: "i:1"}, {Key: "job", Value: "j"}}
			ref := promConverter{resource: res, at: at, honorTimestamps: true}
			want, err := promParseDTO(&ref, body)
			if err != nil {
				t.Fatal(err)
			}
			got := promConverter{resource: res, at: at, honorTimestamps: true}
			series, err := got.parse(nil, body, expfmt.FmtProtoDelim)
			if err != nil {
				t.Fatal(err)
			}
			if d := promDiff(series, want); d != "" {
				t.Fatalf("decoders disagree: %s", d)
			}
			if fmt.Sprint(got.dropped) != fmt.Sprint(ref.dropped) {
				t.Errorf("dropped %v vs %v", got.dropped, ref.dropped)
			}
			if len(series) == 0 {
				t.Fatal("nothing decoded")
			}
		})
	}
	// Truncated input is an error, not a panic.
	body := bodies["hand-made"]
	for _, n := range []int{1, 5, len(body) / 2, len(body) - 1} {
		c := promConverter{at: time.Now()}
		if _, err := c.parse(nil, body[:n], expfmt.FmtProtoDelim); err == nil {
			t.Errorf("truncated at %d: no error", n)
		}
	}
}

// promUnpack rewrites packed repeated scalar fields of msg (described by
// md) as one field per element, recursively, as an old encoder may write.
func promUnpack(t testing.TB, msg []byte, md protoreflect.MessageDescriptor) []byte {
	var out []byte
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		msg = msg[n:]
		fd := md.Fields().ByNumber(num)
		switch typ {
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(msg)
			msg = msg[n:]
			switch {
			case fd != nil && fd.Message() != nil:
				out = protowire.AppendTag(out, num, typ)
				out = protowire.AppendBytes(out, promUnpack(t, v, fd.Message()))
			case fd != nil && fd.IsList() && fd.Kind() == protoreflect.DoubleKind:
				for ; len(v) > 0; v = v[8:] {
					x, _ := protowire.ConsumeFixed64(v)
					out = protowire.AppendTag(out, num, protowire.Fixed64Type)
					out = protowire.AppendFixed64(out, x)
				}
			case fd != nil && fd.IsList() && fd.Kind() == protoreflect.Sint64Kind:
				for len(v) > 0 {
					x, n := protowire.ConsumeVarint(v)
					v = v[n:]
					out = protowire.AppendTag(out, num, protowire.VarintType)
					out = protowire.AppendVarint(out, x)
				}
			default:
				out = protowire.AppendTag(out, num, typ)
				out = protowire.AppendBytes(out, v)
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, msg)
			out = protowire.AppendTag(out, num, typ)
			out = append(out, msg[:n]...)
			msg = msg[n:]
		}
	}
	return out
}

// FuzzProto feeds arbitrary bytes to both protobuf decoders: no panic, and
// whenever the generated decoder accepts the input the hand-written one
// produces the same series.
func FuzzProto(f *testing.F) {
	warmBody := promProtoBody(f, newPromApp(f).reg)
	f.Add(warmBody)
	f.Add([]byte{})
	f.Add([]byte{0x05, 0x0a, 0x01, 'x', 0x18, 0x04})
	f.Fuzz(func(t *testing.T, body []byte) {
		at := time.Unix(1764072060, 0)
		// The generated decoder (protodelim, no size limit) allocates
		// whatever a length prefix claims: only give it consistent framing.
		for rest := body; len(rest) > 0; {
			size, n := protowire.ConsumeVarint(rest)
			if n < 0 || size > uint64(len(rest)-n) {
				c := promConverter{at: at}
				if _, err := c.parse(nil, body, expfmt.FmtProtoDelim); err == nil {
					t.Fatal("bad framing accepted")
				}
				return
			}
			rest = rest[n+int(size):]
		}
		ref := promConverter{at: at, honorTimestamps: true}
		want, refErr := promParseDTO(&ref, body)
		got := promConverter{at: at, honorTimestamps: true}
		series, err := got.parse(nil, body, expfmt.FmtProtoDelim)
		// A converter that decoded another scrape first remembers its
		// labels by position (decodeLabel): it must decide the same.
		warm := promConverter{at: at, honorTimestamps: true}
		if _, err := warm.parse(nil, warmBody, expfmt.FmtProtoDelim); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			series2, err2 := warm.parse(nil, body, expfmt.FmtProtoDelim)
			if (err == nil) != (err2 == nil) {
				t.Fatalf("after another scrape: error %v, fresh converter: %v", err2, err)
			}
			if err == nil {
				if d := promDiff(series2, series); d != "" {
					t.Fatalf("after another scrape, decoders disagree: %s", d)
				}
			}
		}
		if refErr != nil {
			return // the generated decoder refuses; ours may be more lenient (UTF-8 names)
		}
		if err != nil {
			t.Fatalf("generated decoder accepts, hand-written refuses: %v", err)
		}
		if d := promDiff(series, want); d != "" {
			t.Fatalf("decoders disagree: %s", d)
		}
	})
}

// promParseOMSlow converts an OpenMetrics body through expfmt's parser.
func promParseOMSlow(c *promConverter, body []byte) ([]metric.Series, error) {
	dec := expfmt.NewDecoder(bytes.NewReader(body), expfmt.FmtOpenMetrics_1_0_0)
	var out []metric.Series
	var mf dto.MetricFamily
	for {
		err := dec.Decode(&mf)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		c.fam.fromDTO(&mf)
		out = c.appendFamily(out, &c.fam)
	}
}

func promOMBody(t testing.TB, g prometheus.Gatherer) []byte {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.FmtOpenMetrics_1_0_0, expfmt.WithCreatedLines())
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	if c, ok := enc.(expfmt.Closer); ok {
		_ = c.Close()
	}
	return buf.Bytes()
}

var promOMSamples = []string{
	"# TYPE a counter\n# HELP a Requests \\\"served\\\"\\nand more.\na_total{code=\"200\",path=\"/x\\\\y\"} 3 1764072000.5 # {trace_id=\"0af7651916cd43dd8448eb211c80319c\",span_id=\"b7ad6b7169203331\"} 0.25 1764072000.123456789\na_created{code=\"200\",path=\"/x\\\\y\"} 1764000000.25\na_total{code=\"500\",path=\"/x\\\\y\"} 1\n# EOF\n",
	"# TYPE g_seconds gauge\n# UNIT g_seconds seconds\ng_seconds 1.5\ng_seconds{a=\"b\"} NaN\ng_seconds{a=\"c\"} -Inf 1764072000\n# TYPE u unknown\nu{x=\"\"} 1e3\n# EOF\n",
	"# TYPE s summary\ns{quantile=\"0.5\",m=\"GET\"} 0.4\ns{quantile=\"0.99\",m=\"GET\"} 0.9\ns_sum{m=\"GET\"} 10.5\ns_count{m=\"GET\"} 20\ns_created{m=\"GET\"} 1764000000\n# EOF\n",
	"# TYPE h histogram\nh_bucket{le=\"0.1\"} 1 # {trace_id=\"aa\"} 0.05\nh_bucket{le=\"1.0\"} 3\nh_bucket{le=\"+Inf\"} 4\nh_count 4\nh_sum 2.5\nh_created 1764000000.5\n# EOF\n",
	"# TYPE a counter\na_total 1\n", // no # EOF: falls back, expfmt rejects
	"# TYPE a gaugehistogram\na_bucket{le=\"+Inf\"} 1\na_gcount 1\na_gsum 1\n# EOF\n", // falls back
	"# TYPE a counter\na_total -1\n# EOF\n",                                           // falls back, expfmt rejects
}

// TestPrometheusOpenMetricsFast checks the fast OpenMetrics path against
// expfmt's parser and that it does not fall back on what client libraries
// write.
func TestPrometheusOpenMetricsFast(t *testing.T) {
	bodies := map[string][]byte{"client_golang app": promOMBody(t, newPromApp(t).reg)}
	for i, s := range promOMSamples[:4] {
		bodies[fmt.Sprintf("sample %d", i)] = []byte(s)
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			at := time.Unix(1764072060, 0)
			fast := promConverter{at: at, honorTimestamps: true}
			got, err := fast.parseOpenMetricsFast(nil, body)
			if err != nil {
				t.Fatalf("fell back: %v\n%s", err, body)
			}
			slow := promConverter{at: at, honorTimestamps: true}
			want, err := promParseOMSlow(&slow, body)
			if err != nil {
				t.Fatal(err)
			}
			if d := promDiff(got, want); d != "" {
				t.Fatalf("fast and expfmt disagree: %s", d)
			}
			if len(got) == 0 {
				t.Fatal("nothing parsed")
			}
		})
	}
	for i, s := range promOMSamples[4:] {
		c := promConverter{at: time.Now()}
		if _, err := c.parseOpenMetricsFast(nil, []byte(s)); !errors.Is(err, errOMFallback) {
			t.Errorf("sample %d: want a fallback, got %v", i+4, err)
		}
	}
}

// FuzzOpenMetrics: the fast path never accepts what expfmt rejects, and
// agrees with it on what both accept.
func FuzzOpenMetrics(f *testing.F) {
	for _, s := range promOMSamples {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) > 4096 {
			return // expfmt's parser is too slow for long inputs
		}
		at := time.Unix(1764072060, 0)
		fast := promConverter{at: at, honorTimestamps: true}
		got, err := fast.parseOpenMetricsFast(nil, body)
		if err != nil {
			return
		}
		slow := promConverter{at: at, honorTimestamps: true}
		want, err := promParseOMSlow(&slow, body)
		if err != nil {
			t.Fatalf("fast path accepts what expfmt rejects (%v):\n%q", err, body)
		}
		if d := promDiff(got, want); d != "" {
			t.Fatalf("fast and expfmt disagree: %s\n%q", d, body)
		}
	})
}

// TestPromArena checks that series built from the reused arena (as Collect
// does, slabs growing on the first scrape and reused on the next) equal
// those built with an allocation each, in every format.
func TestPromArena(t *testing.T) {
	for _, format := range []expfmt.Format{expfmt.FmtProtoDelim, expfmt.FmtText, expfmt.FmtOpenMetrics_1_0_0} {
		t.Run(string(format), func(t *testing.T) {
			// 620 series, ~1,900 attributes: the labels slab (1,024 at
			// first) has to grow on the first scrape.
			body := promExposition(t, format, 20, 200, 300, 300)
			res := metric.Attrs{{Key: "instance", Value: "i:1"}, {Key: "job", Value: "j"}}
			at := time.Unix(1764072060, 0)
			ref := promConverter{resource: res, at: at, honorTimestamps: true}
			want, err := ref.parse(nil, body, format)
			if err != nil || len(want) == 0 {
				t.Fatalf("%d series, %v", len(want), err)
			}
			var arena promArena
			c := promConverter{resource: res, at: at, honorTimestamps: true, arena: &arena}
			var got []metric.Series
			for scrape := range 3 {
				clear(got)
				arena.reset()
				if got, err = c.parse(got[:0], body, format); err != nil {
					t.Fatal(err)
				}
				// expfmt's text decoder returns families in map order.
				if d := promDiff(promSorted(got), promSorted(want)); d != "" {
					t.Fatalf("scrape %d: arena series differ: %s", scrape, d)
				}
			}
			if cap(arena.labels) < arena.used {
				t.Errorf("after three scrapes the labels slab (%d) still does not hold a scrape's %d attributes", cap(arena.labels), arena.used)
			}
		})
	}
}

// promFirstPoint orders by the first point's time and value.
func promFirstPoint(a, b metric.Series) int {
	if len(a.Points) == 0 || len(b.Points) == 0 {
		return 0
	}
	return cmp.Or(a.Points[0].Time.Compare(b.Points[0].Time), cmp.Compare(a.Points[0].Value, b.Points[0].Value))
}

// promSorted returns a copy of ss sorted by name, attributes, kind and
// points (expfmt's text decoder returns families in map order).
func promSorted(ss []metric.Series) []metric.Series {
	out := slices.Clone(ss)
	slices.SortStableFunc(out, func(a, b metric.Series) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), strings.Compare(fmt.Sprint(a.Attrs), fmt.Sprint(b.Attrs)),
			cmp.Compare(a.Kind, b.Kind), cmp.Compare(len(a.Points), len(b.Points)), promFirstPoint(a, b))
	})
	return out
}

func promParseTextSlow(c *promConverter, body []byte) ([]metric.Series, error) {
	dec := expfmt.NewDecoder(bytes.NewReader(body), expfmt.FmtText)
	var out []metric.Series
	var mf dto.MetricFamily
	for {
		err := dec.Decode(&mf)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		c.fam.fromDTO(&mf)
		out = c.appendFamily(out, &c.fam)
	}
}

func promTextBody(t testing.TB, g prometheus.Gatherer) []byte {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.FmtText)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

var promTextSamples = []string{
	"# HELP a Requests \\\"served\\\"\\nand \\\\ more.\n# TYPE a counter\na{code=\"200\",path=\"/x\\\\y\\n\\\"z\\\"\"} 3 1764072000500\na{code=\"500\",path=\"/x\"} -1\na 2\n",
	"# TYPE g gauge\ng 1.5\ng{a=\"b\"} NaN\ng{a=\"c\"} -Inf -5\ng{} +Inf\n# HELP u Untyped \"quoted\".\nu{x=\"\"} 1e3\nu{le=\"1\",quantile=\"x\"} 7\n",
	"# HELP s A summary.\n# TYPE s summary\ns{m=\"GET\",quantile=\"0.5\"} 0.4\ns{quantile=\"0.99\",m=\"GET\"} 0.9 1764072000000\ns_sum{m=\"GET\"} -10.5\ns_count{m=\"GET\"} 20\ns{quantile=\"0.5\"} 1\ns_count 1\n",
	"# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"1.0\"} 3\nh_bucket{le=\"+Inf\"} 4\nh_count 4\nh_sum 2.5\nh_bucket{k=\"v\",le=\"1\"} 0\nh_sum{k=\"v\"} 0\n",
	"# TYPE empty gauge\n# TYPE next untyped\nnext 1\n",
	// Each of these falls back to expfmt (which accepts some, rejects others).
	"a 1\n",                   // no TYPE: an untyped family of its own
	"# TYPE a gauge\na 1",     // no final newline: expfmt rejects
	"# TYPE a gauge\n\na 1\n", // blank line
	"# a comment\n# TYPE a gauge\na 1\n",
	"# TYPE a gauge\na\t1\n",
	"# TYPE a gauge\na{b=\"c\",} 1\n",
	"# TYPE a gauge\na 1 \n",
	"# TYPE a gauge\na{__name__=\"x\"} 1\n",
	"# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n",
	"# TYPE h histogram\nh_bucket{le=\"1\"} 1.5\nh_count 1.5\n",
	"# TYPE h histogram\nh_bucket{le=\"1\"} 1\n# TYPE h_count gauge\nh_count 1\n",
	"# TYPE s summary\ns_count 1\n# HELP s_sum The sum.\n",
	"# TYPE h histogram\nh_sum{le=\"1\"} 1\n",
	"# TYPE h histogram\nh{le=\"1\"} 1\n",
	"# TYPE a Counter\na 1\n",
	"# HELP a x\\t\n# TYPE a gauge\na 1\n",
	"# TYPE a gauge\na 1 +5\n",
	"# TYPE a gauge\na 0x1p-2\n",
}

// promTextFastCount is how many promTextSamples the fast path must take.
const promTextFastCount = 5

// TestPrometheusTextFast checks the fast text path against expfmt's parser
// and that it does not fall back on what client_golang writes.
func TestPrometheusTextFast(t *testing.T) {
	bodies := map[string][]byte{"client_golang app": promTextBody(t, newPromApp(t).reg), "bench exposition": benchExposition(t, expfmt.FmtText)}
	for i, s := range promTextSamples[:promTextFastCount] {
		bodies[fmt.Sprintf("sample %d", i)] = []byte(s)
	}
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			at := time.Unix(1764072060, 0)
			fast := promConverter{at: at, honorTimestamps: true}
			got, err := fast.parseTextFast(nil, body)
			if err != nil {
				t.Fatalf("fell back: %v\n%s", err, body)
			}
			slow := promConverter{at: at, honorTimestamps: true}
			want, err := promParseTextSlow(&slow, body)
			if err != nil {
				t.Fatal(err)
			}
			if d := promDiff(promSorted(got), promSorted(want)); d != "" {
				t.Fatalf("fast and expfmt disagree: %s", d)
			}
			if len(got) == 0 {
				t.Fatal("nothing parsed")
			}
		})
	}
	for i, s := range promTextSamples[promTextFastCount:] {
		c := promConverter{at: time.Now()}
		if _, err := c.parseTextFast(nil, []byte(s)); !errors.Is(err, errOMFallback) {
			t.Errorf("sample %d: want a fallback, got %v", i+promTextFastCount, err)
		}
	}
}

// FuzzText: the fast text path never accepts what expfmt rejects, and
// agrees with it on what both accept.
func FuzzText(f *testing.F) {
	for _, s := range promTextSamples {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		at := time.Unix(1764072060, 0)
		fast := promConverter{at: at, honorTimestamps: true}
		got, err := fast.parseTextFast(nil, body)
		if err != nil {
			return
		}
		slow := promConverter{at: at, honorTimestamps: true}
		want, err := promParseTextSlow(&slow, body)
		if err != nil {
			t.Fatalf("fast path accepts what expfmt rejects (%v):\n%q", err, body)
		}
		if d := promDiff(promSorted(got), promSorted(want)); d != "" {
			t.Fatalf("fast and expfmt disagree: %s\n%q", d, body)
		}
		if fmt.Sprint(fast.dropped) != fmt.Sprint(slow.dropped) {
			t.Fatalf("dropped %v vs %v\n%q", fast.dropped, slow.dropped, body)
		}
	})
}

// TestPrometheusStaleCount follows the stale-series count over scrapes whose
// series repeat, reorder, disappear and come back (the unchanged order
// skips the comparison of sorted hashes).
func TestPrometheusStaleCount(t *testing.T) {
	var mu sync.Mutex
	var body string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", string(expfmt.FmtText))
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	p, _ := newTestPrometheus(t, promCfg(srv.URL), slog.New(slog.DiscardHandler))
	for i, step := range []struct {
		keys  []string // series m{k=...}, in exposition order
		stale float64  // stale series counted so far
	}{
		{[]string{"a", "b"}, 0},
		{[]string{"a", "b"}, 0},
		{[]string{"b", "a"}, 0},
		{[]string{"a"}, 1},
		{[]string{"a"}, 1},
		{[]string{"a", "c"}, 1},
		{[]string{"c", "a"}, 1},
		{[]string{"c"}, 2},
		{[]string{"b"}, 3},
		{[]string{"b"}, 3},
	} {
		var sb strings.Builder
		sb.WriteString("# TYPE m gauge\n")
		for _, k := range step.keys {
			fmt.Fprintf(&sb, "m{k=%q} 1\n", k)
		}
		mu.Lock()
		body = sb.String()
		mu.Unlock()
		if _, err := p.Collect(context.Background(), time.Now()); err != nil {
			t.Fatal(err)
		}
		if v := promSelfValue(p.m.stale.WithLabelValues("app")); v != step.stale {
			t.Errorf("scrape %d (%v): stale series = %v, want %v", i, step.keys, v, step.stale)
		}
	}
}

// TestPrometheusOrderByTarget: whatever order the targets were converted in,
// the batch holds each target's series in target order, each target's in
// exposition order.
func TestPrometheusOrderByTarget(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name  string
		sizes []int // series per target, in target order
		conv  []int // the order the targets were converted in
	}{
		{name: "in order", sizes: []int{3, 2, 4}, conv: []int{0, 1, 2}},
		{name: "reversed", sizes: []int{3, 2, 4}, conv: []int{2, 1, 0}},
		{name: "failed targets", sizes: []int{0, 5, 0, 1, 3}, conv: []int{3, 1, 4, 0, 2}},
		{name: "one target", sizes: []int{7}, conv: []int{0}},
		{name: "none", sizes: nil, conv: nil},
		{name: "50 shuffled", sizes: func() []int {
			s := make([]int, 50)
			for i := range s {
				s[i] = rng.IntN(40)
			}
			return s
		}(), conv: rng.Perm(50)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Prometheus{}
			results := make([]promScrapeResult, len(tc.sizes))
			for _, i := range tc.conv {
				results[i] = promScrapeResult{start: len(p.series), n: tc.sizes[i]}
				for j := range tc.sizes[i] {
					p.series = append(p.series, metric.Series{Name: fmt.Sprintf("t%d-%d", i, j)})
				}
			}
			for range 2 { // the scratch is reused
				p.orderByTarget(results)
				var want []string
				for i, n := range tc.sizes {
					for j := range n {
						want = append(want, fmt.Sprintf("t%d-%d", i, j))
					}
				}
				got := make([]string, 0, len(p.series))
				for _, s := range p.series {
					got = append(got, s.Name)
				}
				if !slices.Equal(got, want) {
					t.Fatalf("series = %v, want %v", got, want)
				}
				at := 0
				for i := range results {
					results[i].start = at
					at += results[i].n
				}
			}
		})
	}
}

// TestPrometheusBatchInTargetOrder: a target that answers last still comes
// first in the batch when it is first in the config.
func TestPrometheusBatchInTargetOrder(t *testing.T) {
	release := make(chan struct{})
	var urls []string
	for i := range 3 {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			if i == 0 {
				<-release // answers after the others were fetched
			}
			w.Header().Set("Content-Type", string(expfmt.FmtText))
			fmt.Fprintf(w, "# TYPE m gauge\nm{k=\"%d-b\"} 1\nm{k=\"%d-a\"} 1\n", i, i)
			if i == 2 {
				close(release)
			}
		}))
		defer srv.Close()
		urls = append(urls, srv.URL)
	}
	p, _ := newTestPrometheus(t, promCfg(urls...), slog.New(slog.DiscardHandler))
	b, err := p.Collect(context.Background(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range b.Series {
		if s.Name == "m" {
			k, _ := s.Attrs.Get("k")
			got = append(got, k)
		}
	}
	if want := []string{"0-b", "0-a", "1-b", "1-a", "2-b", "2-a"}; !slices.Equal(got, want) {
		t.Errorf("series in the batch: %v, want %v", got, want)
	}
}

// TestPrometheusProtoLabelsByPosition: labels remembered from the previous
// scrape at the same place are used only when both name and value are the
// same bytes; a changed value, a changed name and invalid UTF-8 where a
// valid value was are decoded (and refused) as in a first scrape.
func TestPrometheusProtoLabelsByPosition(t *testing.T) {
	body := func(labels ...string) []byte {
		m := &dto.Metric{Gauge: &dto.Gauge{Value: proto.Float64(1)}}
		for i := 0; i+1 < len(labels); i += 2 {
			m.Label = append(m.Label, &dto.LabelPair{Name: proto.String(labels[i]), Value: proto.String(labels[i+1])})
		}
		mf := &dto.MetricFamily{Name: proto.String("m"), Type: dto.MetricType_GAUGE.Enum(), Metric: []*dto.Metric{m, m}}
		var buf bytes.Buffer
		if _, err := protodelim.MarshalTo(&buf, mf); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	c := promConverter{at: time.Unix(1764072060, 0)}
	for i, step := range []struct {
		labels  []string
		wantErr bool
	}{
		{labels: []string{"a", "1", "b", "2"}},
		{labels: []string{"a", "1", "b", "2"}},
		{labels: []string{"a", "1", "b", "3"}},
		{labels: []string{"a", "1", "c", "3"}},
		{labels: []string{"a", "1", "c", "\xff"}, wantErr: true},
		{labels: []string{"a", "1", "c", "3"}},
		{labels: []string{"a", "1"}},
		{labels: []string{"a", "1", "c", "3", "d", "4"}},
		{labels: []string{"\xff", "1", "c", "3", "d", "4"}, wantErr: true},
		{labels: []string{"a", "1", "c", "3", "d", "4"}},
	} {
		series, err := c.parse(nil, body(step.labels...), expfmt.FmtProtoDelim)
		if (err != nil) != step.wantErr {
			t.Fatalf("scrape %d %q: err = %v, want error %v", i, step.labels, err, step.wantErr)
		}
		if err != nil {
			continue
		}
		want := map[string]string{}
		for j := 0; j+1 < len(step.labels); j += 2 {
			want[step.labels[j]] = step.labels[j+1]
		}
		if len(series) != 2 {
			t.Fatalf("scrape %d: %d series", i, len(series))
		}
		for _, s := range series {
			if !s.Attrs.Equal(metric.NewAttrs(want)) {
				t.Errorf("scrape %d: attributes %v, want %v", i, s.Attrs, want)
			}
		}
	}
}

// promDialTo makes p's client connect to srv whatever the target's host.
func promDialTo(p *Prometheus, srv *httptest.Server) {
	tr := p.client.Transport.(*http.Transport).Clone()
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, srv.Listener.Addr().String())
	}
	p.client.Transport = tr
}

// TestPrometheusLoopbackUncompressed: a loopback target is asked for its
// body uncompressed, one elsewhere for gzip (TestPrometheusGzipAndAuth);
// a loopback target that compresses anyway is still read.
func TestPrometheusLoopbackUncompressed(t *testing.T) {
	for _, tc := range []struct {
		url      string
		loopback bool
	}{
		{"http://127.0.0.1:9100/metrics", true},
		{"http://127.3.4.5:9100/metrics", true},
		{"http://localhost:3000/metrics", true},
		{"http://LOCALHOST/metrics", true},
		{"http://[::1]:9100/metrics", true},
		{"https://10.0.0.1:9100/metrics", false},
		{"http://app.internal:3000/metrics", false},
		{"http://[2001:db8::1]/metrics", false},
		{"http://localhost.example.com/metrics", false},
	} {
		if got := promLoopback(tc.url); got != tc.loopback {
			t.Errorf("promLoopback(%q) = %v, want %v", tc.url, got, tc.loopback)
		}
	}
	for _, compress := range []bool{false, true} {
		var accept string
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			accept = r.Header.Get("Accept-Encoding")
			body := []byte("# TYPE m gauge\nm 3\n")
			w.Header().Set("Content-Type", string(expfmt.FmtText))
			if compress {
				var gz bytes.Buffer
				zw := gzip.NewWriter(&gz)
				_, _ = zw.Write(body)
				_ = zw.Close()
				w.Header().Set("Content-Encoding", "gzip")
				body = gz.Bytes()
			}
			_, _ = w.Write(body)
		}))
		p, _ := newTestPrometheus(t, promCfg(srv.URL), nil)
		b, err := p.Collect(context.Background(), time.Now())
		srv.Close()
		if err != nil {
			t.Fatalf("compress=%v: %v", compress, err)
		}
		if accept != "identity" {
			t.Errorf("compress=%v: Accept-Encoding %q, want identity", compress, accept)
		}
		if m := promOne(t, b, "m", nil); m.Points[0].Value != 3 {
			t.Errorf("compress=%v: m = %v", compress, m.Points[0].Value)
		}
	}
}
