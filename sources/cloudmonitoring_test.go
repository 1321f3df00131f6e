package sources

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/monitoring/apiv3/v2/monitoringpb"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/internal/fake/fakegcp"
	"github.com/sabakiio/sabaki/metric"
)

// memState is an in-memory StateStore.
type memState struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *memState) GetState(_ context.Context, key string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.m[key]
	return b, ok, nil
}

func (s *memState) PutState(_ context.Context, key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string][]byte{}
	}
	s.m[key] = slices.Clone(value)
	return nil
}

var day0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

func startFake(t *testing.T, sc fakegcp.Scenario) (*fakegcp.Server, *fakegcp.Truth) {
	t.Helper()
	srv := fakegcp.New(sc.Start)
	truth := srv.Load(sc)
	if _, err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	return srv, truth
}

type testSource struct {
	*CloudMonitoring
	logs *bytes.Buffer
	reg  *prometheus.Registry
}

func newTestSource(t *testing.T, srv *fakegcp.Server, state StateStore, mod func(*CloudMonitoringConfig)) testSource {
	t.Helper()
	cfg := DefaultCloudMonitoringConfig()
	cfg.Name = "gcp"
	cfg.Project = "demo"
	cfg.Presets = []string{"cloudrun", "cloudsql"}
	cfg.Endpoint = srv.Addr()
	cfg.Credentials = "none"
	if mod != nil {
		mod(&cfg)
	}
	var logs bytes.Buffer
	reg := prometheus.NewRegistry()
	c, err := NewCloudMonitoring(cfg, Settings{
		Logger:     slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Registerer: reg,
		State:      state,
	})
	if err != nil {
		t.Fatal(err)
	}
	c.backoff = time.Millisecond
	t.Cleanup(func() { _ = c.Close() })
	return testSource{CloudMonitoring: c, logs: &logs, reg: reg}
}

// collector accumulates what a source delivered.
type collector struct {
	series []metric.Series
}

func (cl *collector) add(b metric.Batch) { cl.series = append(cl.series, b.Series...) }

func (cl *collector) of(name string) []metric.Series {
	var out []metric.Series
	for _, s := range cl.series {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

func resourceOf(s metric.Series, k string) string { v, _ := s.Resource.Get(k); return v }
func attrOf(s metric.Series, k string) string     { v, _ := s.Attrs.Get(k); return v }

// run polls src every step from from to to (inclusive), moving the fake's
// clock along, and fails the test on any error.
func run(t *testing.T, srv *fakegcp.Server, src testSource, cl *collector, from, to time.Time, step time.Duration) {
	t.Helper()
	for at := from; !at.After(to); at = at.Add(step) {
		srv.SetNow(at)
		// A generous deadline: it only guards against a hang. Under -race
		// on a loaded 2-core machine a many-page backfill poll took over 10 s.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		b, err := src.Collect(ctx, at)
		cancel()
		if err != nil {
			t.Fatalf("collect at %s: %v", at, err)
		}
		cl.add(b)
	}
}

func TestCloudMonitoringDay(t *testing.T) {
	sc := fakegcp.Scenario{Project: "demo", Start: day0, Duration: 24 * time.Hour, Services: 2, SQLInstances: 1,
		LateEvery: 37, InsightsResetAt: 12 * time.Hour, Seed: 1}
	srv, truth := startFake(t, sc)
	src := newTestSource(t, srv, &memState{}, func(c *CloudMonitoringConfig) {
		c.Interval = config.Duration(15 * time.Minute)
		c.Timeout = c.Interval
		c.MetricTypes = []string{fakegcp.RunCPUUsage}
	})
	// Polls every 15 min reading back 5 min before the previous end: late
	// points (visible 4 min after their end) and re-read ones both occur.
	var cl collector
	run(t, srv, src, &cl, day0, day0.Add(24*time.Hour+15*time.Minute), 15*time.Minute)

	// Every point exactly once: all but the baseline of each cumulative series.
	// (Query Insights is cumulative: a late point older than one already
	// differenced is covered by the later difference; checked by samples below.)
	points := 0
	for _, s := range cl.series {
		if s.Name != fakegcp.SQLInsightsLatency {
			points += len(s.Points)
		}
	}
	if want := truth.Points - 24*60*sc.SQLInstances; points != want {
		t.Errorf("points delivered = %d, want %d (late points in the data: %d)", points, want, truth.LatePoints)
	}

	// request_count per service: exact.
	req := map[string]float64{}
	for _, s := range cl.of(fakegcp.RunRequestCount) {
		if s.Kind != metric.Counter || s.Temporality != metric.Delta {
			t.Fatalf("request_count kind %v temporality %v", s.Kind, s.Temporality)
		}
		for _, p := range s.Points {
			req[resourceOf(s, "service_name")] += p.Value
		}
	}
	for svc, n := range truth.Requests {
		if req[svc] != float64(n) {
			t.Errorf("request_count %s = %v, want %d", svc, req[svc], n)
		}
	}

	// request_latencies per service: counts exact, quantiles within the bound.
	hists := map[string]*histogram.Histogram{}
	exemplars := 0
	for _, s := range cl.of(fakegcp.RunRequestLatencies) {
		svc := resourceOf(s, "service_name")
		if s.Kind != metric.Histogram || s.Temporality != metric.Delta || s.Unit != "ms" {
			t.Fatalf("request_latencies %v %v %q", s.Kind, s.Temporality, s.Unit)
		}
		if attrOf(s, "response_code_class") == "" || resourceOf(s, "revision_name") == "" || resourceOf(s, "project_id") != "demo" {
			t.Fatalf("labels missing: %v %v", s.Resource, s.Attrs)
		}
		if hists[svc] == nil {
			hists[svc] = histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		}
		for _, p := range s.Points {
			if p.Time.Sub(p.Start) != time.Minute {
				t.Fatalf("delta point interval %s..%s", p.Start, p.Time)
			}
			hists[svc].Merge(p.Hist)
			for _, e := range p.Exemplars {
				if !e.HasTrace() || e.SpanID == [8]byte{} {
					t.Fatalf("exemplar without trace: %+v", e)
				}
				exemplars++
			}
		}
	}
	if exemplars == 0 {
		t.Error("no exemplars")
	}
	for svc, samples := range truth.Latencies {
		h := hists[svc]
		if h == nil || h.Count() != uint64(len(samples)) {
			t.Fatalf("latency count %s = %v, want %d", svc, h, len(samples))
		}
		var sum float64
		for _, v := range samples {
			sum += v
		}
		if math.Abs(h.Sum()-sum) > 1e-6*sum {
			t.Errorf("latency sum %s = %v, want %v", svc, h.Sum(), sum)
		}
		sorted := slices.Sorted(slices.Values(samples))
		// Documented bound: a GCP bucket [L, 1.4·L) holds the true value; the
		// conversion can move an observation within it (relative ≤ 0.4), plus
		// the target histogram's own relative error.
		bound := 0.4 + h.RelativeError()
		for _, q := range []float64{0.5, 0.9, 0.95, 0.99} {
			exact := sorted[int(math.Ceil(q*float64(len(sorted))))-1]
			got := h.Quantile(q)
			if rel := math.Abs(got-exact) / exact; rel > bound {
				t.Errorf("%s p%v = %.2f, exact %.2f: error %.3f > bound %.3f", svc, q*100, got, exact, rel, bound)
			} else {
				t.Logf("%s p%v = %.2f ms, exact %.2f ms, error %.3f (bound %.3f)", svc, q*100, got, exact, rel, bound)
			}
		}
	}

	// instance_count (GAUGE) per service and minute: exact.
	for _, s := range cl.of(fakegcp.RunInstanceCount) {
		if s.Kind != metric.Gauge {
			t.Fatalf("instance_count kind %v", s.Kind)
		}
		if attrOf(s, "state") != "active" {
			continue
		}
		want := truth.ActiveInstances[resourceOf(s, "service_name")]
		for _, p := range s.Points {
			if p.Value != float64(want[p.Time.Unix()]) {
				t.Fatalf("instance_count at %s = %v, want %d", p.Time, p.Value, want[p.Time.Unix()])
			}
		}
	}

	// Cloud SQL backends (summed over databases) and CPU per minute: exact.
	backends := map[int64]float64{}
	for _, s := range cl.of(fakegcp.SQLNumBackends) {
		for _, p := range s.Points {
			backends[p.Time.Unix()] += p.Value
		}
	}
	for dbid, want := range truth.Backends {
		if len(backends) != len(want) {
			t.Fatalf("num_backends minutes = %d, want %d", len(backends), len(want))
		}
		for ts, n := range want {
			if backends[ts] != float64(n) {
				t.Fatalf("num_backends %s at %d = %v, want %d", dbid, ts, backends[ts], n)
			}
		}
	}
	for _, s := range cl.of(fakegcp.SQLCPUUtilization) {
		want := truth.CPU[resourceOf(s, "database_id")]
		for _, p := range s.Points {
			if p.Value != want[p.Time.Unix()] {
				t.Fatalf("cpu at %s = %v, want %v", p.Time, p.Value, want[p.Time.Unix()])
			}
		}
	}
	tx := map[string]float64{}
	for _, s := range cl.of(fakegcp.SQLTransactionCount) {
		for _, p := range s.Points {
			tx[resourceOf(s, "database_id")] += p.Value
		}
	}
	for dbid, n := range truth.Transactions {
		if tx[dbid] != float64(n) {
			t.Errorf("transactions %s = %v, want %d", dbid, tx[dbid], n)
		}
	}

	// Query Insights: CUMULATIVE distribution differenced here, with a reset.
	ins := map[string]uint64{}
	for _, s := range cl.of(fakegcp.SQLInsightsLatency) {
		if s.Kind != metric.Histogram || s.Temporality != metric.Delta {
			t.Fatalf("insights kind %v %v", s.Kind, s.Temporality)
		}
		for _, p := range s.Points {
			ins[resourceOf(s, "resource_id")] += p.Hist.Count()
		}
	}
	for id, n := range truth.InsightsSamples {
		if ins[id] != uint64(n) {
			t.Errorf("insights samples %s = %d, want %d", id, ins[id], n)
		}
	}

	// GAUGE distribution (container/cpu/usage): histograms of one sample period.
	usage := cl.of(fakegcp.RunCPUUsage)
	if len(usage) == 0 || usage[0].Kind != metric.Histogram || usage[0].Temporality != metric.Delta {
		t.Fatalf("cpu/usage series: %d", len(usage))
	}
	if p := usage[0].Points[0]; p.Time.Sub(p.Start) != time.Minute {
		t.Errorf("gauge distribution interval %s", p.Time.Sub(p.Start))
	}

	if dup := testutilSum(t, src.reg, "sabaki_cloudmonitoring_points_total", "duplicate"); dup == 0 {
		t.Error("no re-read points: the overlap was not exercised")
	}
	// One call per metric type per poll: 20 metric types, no paging here.
	polls := int(24*time.Hour/(15*time.Minute)) + 2
	if got, want := srv.CallCount("ListTimeSeries", ""), polls*20; got != want {
		t.Errorf("ListTimeSeries calls = %d, want %d", got, want)
	}
}

func TestCloudMonitoringPaging(t *testing.T) {
	sc := fakegcp.Scenario{Project: "demo", Start: day0, Duration: 2 * time.Hour, Services: 3, SQLInstances: 1, Seed: 2}
	srv, truth := startFake(t, sc)
	src := newTestSource(t, srv, nil, func(c *CloudMonitoringConfig) {
		c.PageSize = 7
		c.Backfill = config.Duration(3 * time.Hour)
	})
	var cl collector
	run(t, srv, src, &cl, day0.Add(2*time.Hour+5*time.Minute), day0.Add(2*time.Hour+5*time.Minute), time.Minute)
	req := map[string]float64{}
	for _, s := range cl.of(fakegcp.RunRequestCount) {
		for _, p := range s.Points {
			req[resourceOf(s, "service_name")] += p.Value
		}
	}
	for svc, n := range truth.Requests {
		if req[svc] != float64(n) {
			t.Errorf("request_count %s = %v, want %d", svc, req[svc], n)
		}
	}
	// Series split across pages were merged: one Series per GCP series.
	if got := len(cl.of(fakegcp.RunRequestCount)); got != 6 {
		t.Errorf("request_count series = %d, want 6 (3 services × 2 classes)", got)
	}
	pages, total, split := 0, 0, 0
	var prev *fakegcp.Call
	for _, c := range srv.Calls() {
		if c.Method == "ListTimeSeries" && c.MetricType == fakegcp.RunRequestCount {
			pages++
			total += c.Points
			if c.Points > 7 {
				t.Errorf("page with %d points > page_size 7", c.Points)
			}
			if prev != nil && c.Page > 1 {
				split++
			}
			prev = &c
		}
	}
	if want := (total + 6) / 7; pages != want || total == 0 {
		t.Errorf("request_count pages = %d for %d points, want %d", pages, total, want)
	}
}

func TestCloudMonitoringRetriesAndErrors(t *testing.T) {
	sc := fakegcp.Scenario{Project: "demo", Start: day0, Duration: time.Hour, Services: 2, SQLInstances: 1, Seed: 3}
	srv, truth := startFake(t, sc)
	srv.Fail(fakegcp.Fault{Method: "ListTimeSeries", MetricType: fakegcp.RunRequestCount, Page: 2, Times: 2, Code: codes.ResourceExhausted,
		Message: "Quota exceeded for quota metric 'Time series queries'", RetryAfter: 30 * time.Millisecond})
	srv.Fail(fakegcp.Fault{Method: "ListTimeSeries", MetricType: fakegcp.SQLCPUUtilization, Times: 1, Code: codes.Unavailable})
	srv.Fail(fakegcp.Fault{Method: "ListTimeSeries", MetricType: fakegcp.RunRequestLatencies, Code: codes.PermissionDenied,
		Message: "Permission monitoring.timeSeries.list denied (or the resource may not exist)."})
	src := newTestSource(t, srv, nil, func(c *CloudMonitoringConfig) {
		c.PageSize = 50
		c.Backfill = config.Duration(2 * time.Hour)
	})
	at := day0.Add(time.Hour + 5*time.Minute)
	srv.SetNow(at)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := src.Collect(ctx, at)
	var pe *PartialError
	if !errors.As(err, &pe) || pe.Failed != 1 {
		t.Fatalf("want a PartialError with 1 failure, got %v", err)
	}
	for _, want := range []string{"project demo", fakegcp.RunRequestLatencies, "PermissionDenied"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	var cl collector
	cl.add(b)
	var n float64
	for _, s := range cl.of(fakegcp.RunRequestCount) {
		for _, p := range s.Points {
			n += p.Value
		}
	}
	var want int64
	for _, v := range truth.Requests {
		want += v
	}
	if n != float64(want) {
		t.Errorf("request_count after 429 retries = %v, want %d", n, want)
	}
	if len(cl.of(fakegcp.SQLCPUUtilization)) == 0 {
		t.Error("cpu/utilization missing after a retried 503")
	}
	if len(cl.of(fakegcp.RunRequestLatencies)) != 0 {
		t.Error("latencies delivered despite PERMISSION_DENIED")
	}
	// 429 twice on page 2 → two retries counted as calls.
	var c429 int
	for _, c := range srv.Calls() {
		if c.MetricType == fakegcp.RunRequestCount && c.Code == codes.ResourceExhausted {
			c429++
		}
	}
	if c429 != 2 {
		t.Errorf("scripted 429s answered = %d, want 2", c429)
	}
	if d := gcpRetryDelay(errWithRetryInfo(t)); d != 30*time.Millisecond {
		t.Errorf("RetryInfo delay = %s, want 30ms", d)
	}
	// Reported once: the next polls stay quiet about it (the stream is
	// retried hourly) while the others keep being read.
	srv.ResetCalls()
	for i := 1; i <= 3; i++ {
		at := at.Add(time.Duration(i) * time.Minute)
		srv.SetNow(at)
		if _, err := src.Collect(ctx, at); err != nil {
			t.Fatalf("poll %d: %v", i, err)
		}
	}
	if n := srv.CallCount("ListTimeSeries", fakegcp.RunRequestCount); n != 3 {
		t.Errorf("request_count calls in 3 later polls = %d, want 3", n)
	}
	if n := srv.CallCount("ListTimeSeries", fakegcp.RunRequestLatencies); n != 0 {
		t.Errorf("denied metric type re-read %d times within the hour", n)
	}
	if n := strings.Count(src.logs.String(), "metric type not readable"); n != 1 {
		t.Errorf("permission error logged %d times, want once:\n%s", n, src.logs)
	}
	if !strings.Contains(src.logs.String(), "roles/monitoring.viewer") {
		t.Error("permission log does not name the role")
	}
}

func TestCloudMonitoringResume(t *testing.T) {
	sc := fakegcp.Scenario{Project: "demo", Start: day0, Duration: 6 * time.Hour, Services: 2, SQLInstances: 1, LateEvery: 11, Seed: 4}
	srv, truth := startFake(t, sc)
	state := &memState{}
	mod := func(c *CloudMonitoringConfig) { c.Backfill = 0 }
	var cl collector
	// First life: 0h–2h.
	src := newTestSource(t, srv, state, mod)
	run(t, srv, src, &cl, day0, day0.Add(2*time.Hour), time.Minute)
	_ = src.Close()
	// Down for 2 hours, then a new process with the same state: fills the gap.
	src = newTestSource(t, srv, state, mod)
	run(t, srv, src, &cl, day0.Add(4*time.Hour), day0.Add(6*time.Hour+10*time.Minute), time.Minute)
	req := map[string]float64{}
	for _, s := range cl.of(fakegcp.RunRequestCount) {
		for _, p := range s.Points {
			req[resourceOf(s, "service_name")] += p.Value
		}
	}
	for svc, n := range truth.Requests {
		if req[svc] != float64(n) {
			t.Errorf("request_count %s after restart = %v, want %d", svc, req[svc], n)
		}
	}
	ins := uint64(0)
	for _, s := range cl.of(fakegcp.SQLInsightsLatency) {
		for _, p := range s.Points {
			ins += p.Hist.Count()
		}
	}
	var insWant int64
	for _, n := range truth.InsightsSamples {
		insWant += n
	}
	if ins != uint64(insWant) {
		t.Errorf("insights samples across restart = %d, want %d (baseline kept in state)", ins, insWant)
	}
}

func TestCloudMonitoringFilterAndPrefix(t *testing.T) {
	sc := fakegcp.Scenario{Project: "demo", Start: day0, Duration: time.Hour, Services: 3, SQLInstances: 1, Seed: 5}
	srv, _ := startFake(t, sc)
	src := newTestSource(t, srv, nil, func(c *CloudMonitoringConfig) {
		c.Presets = []string{"cloudrun"}
		c.MetricTypes = []string{"cloudsql.googleapis.com/database/postgresql/"}
		c.Filter = map[string]string{"cloudrun": `resource.labels.service_name = one_of("web-1", "web-2")`}
		c.Backfill = config.Duration(2 * time.Hour)
	})
	var cl collector
	run(t, srv, src, &cl, day0.Add(70*time.Minute), day0.Add(70*time.Minute), time.Minute)
	for _, s := range cl.series {
		if strings.HasPrefix(s.Name, "run.") && resourceOf(s, "service_name") == "web-0" {
			t.Fatalf("filtered service web-0 delivered: %s", s.Name)
		}
	}
	if len(cl.of(fakegcp.RunRequestCount)) == 0 || len(cl.of(fakegcp.SQLNumBackends)) == 0 || len(cl.of(fakegcp.SQLTransactionCount)) == 0 {
		t.Fatal("missing preset or prefix metric types")
	}
	if len(cl.of(fakegcp.SQLCPUUtilization)) != 0 {
		t.Error("cpu/utilization is outside the configured prefix")
	}
	if n := srv.CallCount("ListMetricDescriptors", ""); n != 1 {
		t.Errorf("ListMetricDescriptors calls = %d, want 1 (cached)", n)
	}
}

func TestCloudMonitoringNoCredentials(t *testing.T) {
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", "")
	t.Setenv("HOME", t.TempDir())
	t.Setenv("GCE_METADATA_HOST", "")
	os.Unsetenv("GCE_METADATA_HOST")
	defer func(f func() bool) { onGCE = f }(onGCE)
	onGCE = func() bool { return false } // no probe of the metadata address
	cfg := DefaultCloudMonitoringConfig()
	cfg.Project = "demo"
	_, err := NewCloudMonitoring(cfg, Settings{})
	if !errors.Is(err, ErrNoGCPCredentials) {
		t.Fatalf("want ErrNoGCPCredentials, got %v", err)
	}
	for _, want := range []string{"GOOGLE_APPLICATION_CREDENTIALS", "application_default_credentials.json", "metadata server"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say it looked for %s", err, want)
		}
	}
}

func TestCloudMonitoringConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*CloudMonitoringConfig)
		want string
	}{
		{"defaults", func(*CloudMonitoringConfig) {}, ""},
		{"unknown preset", func(c *CloudMonitoringConfig) { c.Presets = []string{"cloudrn"} }, "presets[0]"},
		{"both project forms", func(c *CloudMonitoringConfig) { c.Projects = []string{"b"} }, "projects"},
		{"bad metric type", func(c *CloudMonitoringConfig) { c.MetricTypes = []string{"request_count"} }, "metric_types[0]"},
		{"timeout over interval", func(c *CloudMonitoringConfig) { c.Timeout = config.Duration(2 * time.Minute) }, "timeout"},
		{"backfill beyond retention", func(c *CloudMonitoringConfig) { c.Backfill = config.Duration(50 * 24 * time.Hour) }, "backfill"},
		{"bad credentials", func(c *CloudMonitoringConfig) { c.Credentials = "anonymous" }, "credentials"},
		{"bad filter key", func(c *CloudMonitoringConfig) { c.Filter = map[string]string{"run": "x"} }, "filter.run"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultCloudMonitoringConfig()
			c.Project = "a"
			tt.mod(&c)
			err := c.Validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("Validate() = %v, want mention of %q", err, tt.want)
			}
		})
	}
}

// TestCloudMonitoringCostPerHour measures what one hour of polling costs
// against the fake for 1 and for 50 Cloud Run services (plus one Cloud SQL
// instance): API calls must not grow with the number of services; time
// series returned (the billed unit) grow only with the series that exist.
// Run with -v to see the figures.
func TestCloudMonitoringCostPerHour(t *testing.T) {
	type result struct{ calls, series, points int }
	measure := func(services int, interval time.Duration) result {
		sc := fakegcp.Scenario{Project: "demo", Start: day0, Duration: 100 * time.Minute, Services: services, SQLInstances: 1, Seed: 6}
		srv, _ := startFake(t, sc)
		src := newTestSource(t, srv, nil, func(c *CloudMonitoringConfig) {
			c.Interval = config.Duration(interval)
			c.Timeout = c.Interval
			c.Backfill = 0 // steady state only
		})
		var cl collector
		run(t, srv, src, &cl, day0.Add(time.Hour), day0.Add(time.Hour), interval)
		srv.ResetCalls()
		// Half an hour of steady polling, doubled: per hour.
		run(t, srv, src, &cl, day0.Add(time.Hour+interval), day0.Add(90*time.Minute), interval)
		var r result
		for _, c := range srv.Calls() {
			if c.Method == "ListTimeSeries" {
				r.calls += 2
				r.series += 2 * c.Series
				r.points += 2 * c.Points
			}
		}
		return r
	}
	for _, interval := range []time.Duration{time.Minute, 5 * time.Minute} {
		one, fifty := measure(1, interval), measure(50, interval)
		t.Logf("interval %s, per hour: 1 service: %d ListTimeSeries calls, %d time series returned, %d points; "+
			"50 services: %d calls, %d time series, %d points", interval, one.calls, one.series, one.points, fifty.calls, fifty.series, fifty.points)
		if one.calls != fifty.calls {
			t.Errorf("interval %s: calls grow with services: %d vs %d", interval, one.calls, fifty.calls)
		}
		if want := int(time.Hour/interval) * 19; one.calls != want {
			t.Errorf("interval %s: calls per hour = %d, want %d (19 metric types × polls)", interval, one.calls, want)
		}
	}
}

func TestCloudMonitoringWindow(t *testing.T) {
	c := &CloudMonitoring{cfg: DefaultCloudMonitoringConfig(), maxRange: 6 * time.Hour}
	at := day0.Add(30 * 24 * time.Hour)
	tests := []struct {
		name       string
		cursor     time.Time
		start, end time.Time
	}{
		{"first start: backfill", time.Time{}, at.Add(-time.Hour), at},
		{"next poll: lookback before the cursor", at.Add(-time.Minute), at.Add(-6 * time.Minute), at},
		{"long gap: read in 6 h steps", at.Add(-10 * time.Hour), at.Add(-10*time.Hour - 5*time.Minute), at.Add(-4*time.Hour - 5*time.Minute)},
		{"beyond retention: clamped", at.Add(-50 * 24 * time.Hour), at.Add(-gcpRetention), at.Add(-gcpRetention + 6*time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newGCPStream("p", "m", "")
			st.cursor = tt.cursor
			start, end := c.window(st, at)
			if !start.Equal(tt.start) || !end.Equal(tt.end) {
				t.Errorf("window = (%s, %s], want (%s, %s]", start, end, tt.start, tt.end)
			}
		})
	}
}

// testutilSum sums the counter family name over the series whose result
// label is result.
func testutilSum(t *testing.T, reg *prometheus.Registry, name, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// errWithRetryInfo is a RESOURCE_EXHAUSTED error as the client surfaces it.
func errWithRetryInfo(t *testing.T) error {
	t.Helper()
	srv := fakegcp.New(day0)
	srv.AddProject("demo")
	srv.Fail(fakegcp.Fault{Code: codes.ResourceExhausted, RetryAfter: 30 * time.Millisecond})
	if _, err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	src := newTestSource(t, srv, nil, nil)
	_, err := src.api.ListTimeSeriesPage(context.Background(), &monitoringpb.ListTimeSeriesRequest{
		Name: "projects/demo", Filter: `metric.type = "x"`,
		Interval: &monitoringpb.TimeInterval{EndTime: timestamppb.New(day0)},
	})
	if err == nil {
		t.Fatal("no error")
	}
	return err
}
