package exporters

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/grpc/codes"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/internal/fake/fakeotlp"
	"github.com/sabakiio/sabaki/metric"
)

// otlpTestHist returns a histogram of n latencies (seconds, log-normal around
// 80 ms) drawn from seed, plus zeros and a few negative values when mixed.
func otlpTestHist(seed uint64, n int, mixed bool) *histogram.Histogram {
	r := rand.New(rand.NewPCG(seed, 1))
	h := histogram.New(0, 0)
	for range n {
		h.Record(math.Exp(r.NormFloat64()*0.8 + math.Log(0.08)))
	}
	if mixed {
		h.RecordN(0, 3)
		h.Record(-0.5)
		h.Record(-2)
	}
	return h
}

func otlpTraceID(i byte) [16]byte {
	var id [16]byte
	for j := range id {
		id[j] = i + byte(j)
	}
	return id
}

// otlpTestWindow is a window with two resources: the web service (histogram,
// counter, gauge, exemplars) and a database (a histogram with zeros and
// negative values).
func otlpTestWindow(start time.Time, seed uint64) *metric.Window {
	web := metric.NewAttrs(map[string]string{"service.name": "web", "service.instance.id": "i-1"})
	db := metric.NewAttrs(map[string]string{"service.name": "db"})
	return &metric.Window{Start: start, Duration: time.Minute, Series: []metric.Aggregate{
		{
			Name: "http.server.request.duration", Unit: "s", Description: "request latency", Kind: metric.Histogram,
			Resource: web, Attrs: metric.NewAttrs(map[string]string{"http.route": "/a"}),
			Hist: otlpTestHist(seed, 500, false),
			Exemplars: []metric.Exemplar{{
				TraceID: otlpTraceID(1), SpanID: [8]byte{9, 8, 7, 6, 5, 4, 3, 2}, Value: 1.5,
				Time: start.Add(10 * time.Second), Attrs: metric.NewAttrs(map[string]string{"user.tier": "gold"}),
			}},
		},
		{
			Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram,
			Resource: web, Attrs: metric.NewAttrs(map[string]string{"http.route": "/b"}),
			Hist: otlpTestHist(seed+100, 50, false),
		},
		{
			Name: "http.server.requests", Unit: "{request}", Kind: metric.Counter, Resource: web,
			Attrs: metric.NewAttrs(map[string]string{"http.route": "/a"}), Sum: 42,
			Exemplars: []metric.Exemplar{{TraceID: otlpTraceID(2), Value: 1, Time: start.Add(time.Second)}},
		},
		{
			Name: "process.memory.usage", Unit: "By", Kind: metric.Gauge, Resource: web,
			Sum: 300, Count: 3, Last: 120, Min: 80, Max: 120,
		},
		{
			Name: "db.client.operation.duration", Unit: "s", Kind: metric.Histogram, Resource: db,
			Hist: otlpTestHist(seed+200, 200, true),
		},
	}}
}

func otlpTestExporter(t *testing.T, mod func(*OTLPConfig)) (*OTLP, *prometheus.Registry) {
	t.Helper()
	cfg := DefaultOTLPConfig()
	cfg.Insecure = true
	cfg.Headers = map[string]Secret{"Mackerel-Api-Key": "secret-key-123"}
	mod(&cfg)
	reg := prometheus.NewRegistry()
	e, err := NewOTLP(cfg, Settings{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	return e, reg
}

func otlpFindMetric(ms []*metricpb.Metric, name string) []*metricpb.Metric {
	var out []*metricpb.Metric
	for _, m := range ms {
		if m.GetName() == name {
			out = append(out, m)
		}
	}
	return out
}

func otlpAttrs(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		m[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	return m
}

// checkExpPoint compares a received point with the histogram it came from,
// bucket for bucket.
func checkExpPoint(t *testing.T, p *metricpb.ExponentialHistogramDataPoint, h *histogram.Histogram) {
	t.Helper()
	d := h.Data()
	if p.GetScale() != d.Scale || p.GetCount() != d.Count || p.GetZeroCount() != d.ZeroCount ||
		p.GetZeroThreshold() != d.ZeroThreshold || p.GetSum() != d.Sum || p.GetMin() != d.Min || p.GetMax() != d.Max {
		t.Errorf("point header = scale %d count %d zero %d/%g sum %g min %g max %g, want %+v",
			p.GetScale(), p.GetCount(), p.GetZeroCount(), p.GetZeroThreshold(), p.GetSum(), p.GetMin(), p.GetMax(), d)
	}
	if p.GetPositive().GetOffset() != d.Positive.Offset || !slices.Equal(p.GetPositive().GetBucketCounts(), d.Positive.Counts) {
		t.Errorf("positive buckets = %d %v, want %d %v", p.GetPositive().GetOffset(), p.GetPositive().GetBucketCounts(), d.Positive.Offset, d.Positive.Counts)
	}
	if p.GetNegative().GetOffset() != d.Negative.Offset || !slices.Equal(p.GetNegative().GetBucketCounts(), d.Negative.Counts) {
		t.Errorf("negative buckets = %d %v, want %d %v", p.GetNegative().GetOffset(), p.GetNegative().GetBucketCounts(), d.Negative.Offset, d.Negative.Counts)
	}
}

// TestOTLPWireShape sends a window over gRPC and over HTTP (gzip and plain)
// into the fake receiver and checks what arrived on the wire: one request
// per resource, delta temporality with the window as interval, exponential
// histograms bucket for bucket, monotonic sums, gauges, exemplars with their
// trace and span ID bytes, the API key header and the compression.
func TestOTLPWireShape(t *testing.T) {
	for _, tc := range []struct {
		name, protocol, compression string
	}{
		{"grpc-gzip", OTLPProtocolGRPC, "gzip"},
		{"grpc-none", OTLPProtocolGRPC, "none"},
		{"http-gzip", OTLPProtocolHTTP, "gzip"},
		{"http-none", OTLPProtocolHTTP, "none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := fakeotlp.Start(t, fakeotlp.Options{RequireHeader: "Mackerel-Api-Key", RequireValue: "secret-key-123"})
			e, _ := otlpTestExporter(t, func(c *OTLPConfig) {
				c.Protocol, c.Compression = tc.protocol, tc.compression
				c.Endpoint = fake.GRPCAddr
				if tc.protocol == OTLPProtocolHTTP {
					c.Endpoint = fake.HTTPURL
				}
			})
			start := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
			w := otlpTestWindow(start, 1)
			if err := e.Export(context.Background(), w); err != nil {
				t.Fatal(err)
			}
			if v := fake.Violations(); len(v) > 0 {
				t.Fatalf("receiver rule violations: %v", v)
			}
			reqs := fake.Requests()
			if len(reqs) != 2 {
				t.Fatalf("got %d requests, want one per resource (2)", len(reqs))
			}
			wantEnc := map[string]string{"gzip": "gzip", "none": ""}[tc.compression]
			if got := fake.Encoding(0); got != wantEnc {
				t.Errorf("encoding = %q, want %q", got, wantEnc)
			}
			if got := otlpAttrs(reqs[0].GetResourceMetrics()[0].GetResource().GetAttributes()); got["service.name"] != "web" || got["service.instance.id"] != "i-1" {
				t.Errorf("first resource = %v", got)
			}
			ms := fake.Metrics()
			startNs, endNs := uint64(start.UnixNano()), uint64(start.Add(time.Minute).UnixNano())

			lat := otlpFindMetric(ms, "http.server.request.duration")
			if len(lat) != 1 {
				t.Fatalf("latency metrics = %d, want 1 (two series grouped in one metric)", len(lat))
			}
			if lat[0].GetUnit() != "s" || lat[0].GetDescription() != "request latency" {
				t.Errorf("unit/description = %q/%q", lat[0].GetUnit(), lat[0].GetDescription())
			}
			eh := lat[0].GetExponentialHistogram()
			if eh.GetAggregationTemporality() != metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA {
				t.Errorf("temporality = %v, want DELTA", eh.GetAggregationTemporality())
			}
			if len(eh.GetDataPoints()) != 2 {
				t.Fatalf("points = %d, want 2", len(eh.GetDataPoints()))
			}
			for i, p := range eh.GetDataPoints() {
				if p.GetStartTimeUnixNano() != startNs || p.GetTimeUnixNano() != endNs {
					t.Errorf("point interval = %d..%d, want the window %d..%d", p.GetStartTimeUnixNano(), p.GetTimeUnixNano(), startNs, endNs)
				}
				checkExpPoint(t, p, w.Series[i].Hist)
				if got := otlpAttrs(p.GetAttributes())["http.route"]; got != w.Series[i].Attrs[0].Value {
					t.Errorf("point %d route = %q", i, got)
				}
			}
			ex := eh.GetDataPoints()[0].GetExemplars()
			if len(ex) != 1 {
				t.Fatalf("exemplars = %d, want 1", len(ex))
			}
			wantTrace := otlpTraceID(1)
			if string(ex[0].GetTraceId()) != string(wantTrace[:]) || string(ex[0].GetSpanId()) != "\x09\x08\x07\x06\x05\x04\x03\x02" {
				t.Errorf("exemplar ids = %x/%x", ex[0].GetTraceId(), ex[0].GetSpanId())
			}
			if ex[0].GetAsDouble() != 1.5 || ex[0].GetTimeUnixNano() != uint64(start.Add(10*time.Second).UnixNano()) ||
				otlpAttrs(ex[0].GetFilteredAttributes())["user.tier"] != "gold" {
				t.Errorf("exemplar = %v", ex[0])
			}

			db := otlpFindMetric(ms, "db.client.operation.duration")
			if len(db) != 1 {
				t.Fatalf("db metrics = %d", len(db))
			}
			checkExpPoint(t, db[0].GetExponentialHistogram().GetDataPoints()[0], w.Series[4].Hist)
			if db[0].GetExponentialHistogram().GetDataPoints()[0].GetNegative().GetBucketCounts() == nil {
				t.Error("negative buckets lost")
			}

			sum := otlpFindMetric(ms, "http.server.requests")
			if len(sum) != 1 || !sum[0].GetSum().GetIsMonotonic() ||
				sum[0].GetSum().GetAggregationTemporality() != metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA {
				t.Fatalf("counter = %v", sum)
			}
			if p := sum[0].GetSum().GetDataPoints()[0]; p.GetAsDouble() != 42 || p.GetStartTimeUnixNano() != startNs ||
				len(p.GetExemplars()) != 1 || len(p.GetExemplars()[0].GetSpanId()) != 0 {
				t.Errorf("counter point = %v", p)
			}
			g := otlpFindMetric(ms, "process.memory.usage")
			if len(g) != 1 || g[0].GetGauge().GetDataPoints()[0].GetAsDouble() != 120 || g[0].GetGauge().GetDataPoints()[0].GetTimeUnixNano() != endNs {
				t.Errorf("gauge = %v", g)
			}
		})
	}
}

// TestOTLPCumulative checks cumulative temporality: stable start time,
// running totals across windows, a revised window corrects the totals once
// (also when it is exported twice) and is stamped after the last point.
func TestOTLPCumulative(t *testing.T) {
	fake := fakeotlp.Start(t, fakeotlp.Options{})
	e, _ := otlpTestExporter(t, func(c *OTLPConfig) {
		c.Endpoint, c.Temporality, c.Headers = fake.GRPCAddr, "cumulative", nil
	})
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	var ws []*metric.Window
	for i := range 3 {
		ws = append(ws, otlpTestWindow(t0.Add(time.Duration(i)*time.Minute), uint64(i+1)))
	}
	rev := otlpTestWindow(t0.Add(time.Minute), 2) // window 1 again, with late points
	rev.Revision = 1
	rev.Series[0].Hist.Record(0.3)
	rev.Series[2].Sum += 8
	for _, w := range ws {
		if err := e.Export(context.Background(), w); err != nil {
			t.Fatal(err)
		}
	}
	// The revision fails once (the outbox retries it): the totals must not
	// count it twice.
	fake.Push(fakeotlp.Response{GRPCCode: codes.Unavailable})
	if err := e.Export(context.Background(), rev); err == nil {
		t.Fatal("scripted failure did not fail")
	}
	if err := e.Export(context.Background(), rev); err != nil {
		t.Fatal(err)
	}
	if v := fake.Violations(); len(v) > 0 {
		t.Fatal(v)
	}
	var hists []*metricpb.ExponentialHistogramDataPoint
	var sums []*metricpb.NumberDataPoint
	for _, m := range fake.Metrics() {
		if m.GetName() == "http.server.request.duration" {
			if m.GetExponentialHistogram().GetAggregationTemporality() != metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE {
				t.Fatal("histogram not cumulative")
			}
			hists = append(hists, m.GetExponentialHistogram().GetDataPoints()[0]) // route /a
		}
		if m.GetName() == "http.server.requests" {
			sums = append(sums, m.GetSum().GetDataPoints()[0])
		}
	}
	if len(hists) != 5 || len(sums) != 5 {
		t.Fatalf("got %d histogram and %d sum points, want 5", len(hists), len(sums))
	}
	merged := histogram.New(0, 0)
	for i, w := range ws {
		merged.Merge(w.Series[0].Hist)
		checkExpPoint(t, hists[i], merged)
		if got, want := sums[i].GetAsDouble(), 42*float64(i+1); got != want {
			t.Errorf("window %d counter total = %g, want %g", i, got, want)
		}
		if hists[i].GetTimeUnixNano() != uint64(w.End().UnixNano()) {
			t.Errorf("window %d time = %d, want its end", i, hists[i].GetTimeUnixNano())
		}
	}
	merged.Merge(rev.Series[0].Hist)
	// Window 1's first revision is replaced by the new one, not added to it.
	withRev := histogram.New(0, 0)
	for _, h := range []*histogram.Histogram{ws[0].Series[0].Hist, rev.Series[0].Hist, ws[2].Series[0].Hist} {
		withRev.Merge(h)
	}
	for i := 3; i < 5; i++ {
		checkExpPoint(t, hists[i], withRev)
		if got := sums[i].GetAsDouble(); got != 42*3+8 {
			t.Errorf("revised counter total = %g, want %d", got, 42*3+8)
		}
	}
	if got, want := hists[3].GetTimeUnixNano(), uint64(ws[2].End().Add(time.Millisecond).UnixNano()); got != want {
		t.Errorf("revised point time = %d, want 1 ms after the last point (%d)", got, want)
	}
	for i, p := range append(slices.Clone(hists), hists...) {
		if p.GetStartTimeUnixNano() != uint64(t0.UnixNano()) {
			t.Errorf("point %d start = %d, want the stable start %d", i, p.GetStartTimeUnixNano(), t0.UnixNano())
		}
	}
}

// TestOTLPErrorMapping checks how server answers become outbox decisions.
func TestOTLPErrorMapping(t *testing.T) {
	type want struct {
		permanent  bool
		retryAfter float64 // seconds; 0 = none
	}
	grpcCases := []struct {
		resp fakeotlp.Response
		want want
	}{
		{fakeotlp.Response{GRPCCode: codes.Unavailable, Message: "down"}, want{}},
		{fakeotlp.Response{GRPCCode: codes.Unavailable, RetryDelay: 7 * time.Second}, want{retryAfter: 7}},
		{fakeotlp.Response{GRPCCode: codes.ResourceExhausted, Message: "quota"}, want{}},
		{fakeotlp.Response{GRPCCode: codes.ResourceExhausted, RetryDelay: 30 * time.Second}, want{retryAfter: 30}},
		{fakeotlp.Response{GRPCCode: codes.DeadlineExceeded}, want{}},
		{fakeotlp.Response{GRPCCode: codes.Aborted}, want{}},
		{fakeotlp.Response{GRPCCode: codes.InvalidArgument, Message: "bad"}, want{permanent: true}},
		{fakeotlp.Response{GRPCCode: codes.Unauthenticated}, want{permanent: true}},
		{fakeotlp.Response{GRPCCode: codes.PermissionDenied}, want{permanent: true}},
		{fakeotlp.Response{GRPCCode: codes.Unimplemented}, want{permanent: true}},
	}
	httpCases := []struct {
		resp fakeotlp.Response
		want want
	}{
		{fakeotlp.Response{HTTPStatus: 500}, want{}},
		{fakeotlp.Response{HTTPStatus: 502}, want{}},
		{fakeotlp.Response{HTTPStatus: 503, RetryAfter: "12"}, want{retryAfter: 12}},
		{fakeotlp.Response{HTTPStatus: 429, RetryAfter: "3"}, want{retryAfter: 3}},
		{fakeotlp.Response{HTTPStatus: 429}, want{}},
		{fakeotlp.Response{HTTPStatus: 400, Message: "bad data"}, want{permanent: true}},
		{fakeotlp.Response{HTTPStatus: 401}, want{permanent: true}},
		{fakeotlp.Response{HTTPStatus: 403}, want{permanent: true}},
		{fakeotlp.Response{HTTPStatus: 413}, want{permanent: true}},
	}
	check := func(t *testing.T, err error, w want) {
		t.Helper()
		if err == nil {
			t.Fatal("export succeeded, want an error")
		}
		if IsPermanent(err) != w.permanent {
			t.Errorf("permanent = %v, want %v (%v)", IsPermanent(err), w.permanent, err)
		}
		var ra RetryAfter
		secs, ok := 0.0, false
		if errors.As(err, &ra) {
			secs, ok = ra.RetryAfter()
		}
		if ok != (w.retryAfter > 0) || math.Abs(secs-w.retryAfter) > 0.5 {
			t.Errorf("retry after = %v %v, want %v", secs, ok, w.retryAfter)
		}
		if strings.Contains(err.Error(), "secret-key-123") {
			t.Errorf("error reveals the API key: %v", err)
		}
	}
	w := otlpTestWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 1)
	for _, tc := range grpcCases {
		t.Run("grpc-"+tc.resp.GRPCCode.String(), func(t *testing.T) {
			fake := fakeotlp.Start(t, fakeotlp.Options{})
			fake.Push(tc.resp)
			e, _ := otlpTestExporter(t, func(c *OTLPConfig) { c.Endpoint = fake.GRPCAddr })
			check(t, e.Export(context.Background(), w), tc.want)
		})
	}
	for _, tc := range httpCases {
		t.Run(fmt.Sprintf("http-%d", tc.resp.HTTPStatus), func(t *testing.T) {
			fake := fakeotlp.Start(t, fakeotlp.Options{})
			fake.Push(tc.resp)
			e, _ := otlpTestExporter(t, func(c *OTLPConfig) { c.Endpoint, c.Protocol = fake.HTTPURL, OTLPProtocolHTTP })
			check(t, e.Export(context.Background(), w), tc.want)
		})
	}
	t.Run("connection-refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		for _, proto := range []string{OTLPProtocolGRPC, OTLPProtocolHTTP} {
			e, _ := otlpTestExporter(t, func(c *OTLPConfig) {
				c.Endpoint, c.Protocol, c.Timeout = addr, proto, config.Duration(2*time.Second)
			})
			check(t, e.Export(context.Background(), w), want{})
		}
	})
}

// TestOTLPPartialSuccess: a partial success is not an error (retrying would
// resend what was accepted); it is counted.
func TestOTLPPartialSuccess(t *testing.T) {
	for _, proto := range []string{OTLPProtocolGRPC, OTLPProtocolHTTP} {
		t.Run(proto, func(t *testing.T) {
			fake := fakeotlp.Start(t, fakeotlp.Options{})
			fake.Push(fakeotlp.Response{Rejected: 2, PartialMessage: "2 points too old"})
			e, reg := otlpTestExporter(t, func(c *OTLPConfig) {
				c.Endpoint, c.Protocol = fake.GRPCAddr, proto
				if proto == OTLPProtocolHTTP {
					c.Endpoint = fake.HTTPURL
				}
			})
			if err := e.Export(context.Background(), otlpTestWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 1)); err != nil {
				t.Fatalf("partial success returned %v", err)
			}
			if got, _ := gatheredSum(t, reg, "sabaki_exporter_otlp_rejected_points_total"); got != 2 {
				t.Errorf("rejected points = %g, want 2", got)
			}
			if got, n := gatheredSum(t, reg, "sabaki_exporter_otlp_requests_total"); got != 2 || n != 2 {
				t.Errorf("requests = %g in %d outcomes, want partial and ok", got, n)
			}
		})
	}
}

// TestOTLPRetrySendsOnlyTheRest: when the second resource's request fails,
// the retry of the same window does not resend the first.
func TestOTLPRetrySendsOnlyTheRest(t *testing.T) {
	fake := fakeotlp.Start(t, fakeotlp.Options{})
	fake.Push(fakeotlp.Response{}, fakeotlp.Response{GRPCCode: codes.Unavailable})
	e, _ := otlpTestExporter(t, func(c *OTLPConfig) { c.Endpoint = fake.GRPCAddr })
	w := otlpTestWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 1)
	if err := e.Export(context.Background(), w); err == nil || IsPermanent(err) {
		t.Fatalf("first attempt: %v, want a retryable error", err)
	}
	if err := e.Export(context.Background(), w); err != nil {
		t.Fatal(err)
	}
	reqs := fake.Requests()
	if len(reqs) != 3 {
		t.Fatalf("requests = %d, want 3 (web, db failed, db)", len(reqs))
	}
	for i, want := range []string{"web", "db", "db"} {
		if got := otlpAttrs(reqs[i].GetResourceMetrics()[0].GetResource().GetAttributes())["service.name"]; got != want {
			t.Errorf("request %d resource = %s, want %s", i, got, want)
		}
	}
}

func TestOTLPConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*OTLPConfig)
		want string // substring of the error; "" = valid
	}{
		{"defaults with endpoint", func(c *OTLPConfig) {}, ""},
		{"url endpoint", func(c *OTLPConfig) { c.Endpoint = "https://collector:4318"; c.Protocol = OTLPProtocolHTTP }, ""},
		{"http url is plaintext", func(c *OTLPConfig) { c.Endpoint = "http://127.0.0.1:4317" }, ""},
		{"no endpoint", func(c *OTLPConfig) { c.Endpoint = "" }, "endpoint: must be set"},
		{"no port", func(c *OTLPConfig) { c.Endpoint = "collector" }, "is not host:port"},
		{"grpc path", func(c *OTLPConfig) { c.Endpoint = "https://c:4317/v1/metrics" }, "no path"},
		{"bad protocol", func(c *OTLPConfig) { c.Protocol = "http/json" }, "protocol: must be"},
		{"bad compression", func(c *OTLPConfig) { c.Compression = "zstd" }, "compression"},
		{"bad temporality", func(c *OTLPConfig) { c.Temporality = "both" }, "temporality"},
		{"zero timeout", func(c *OTLPConfig) { c.Timeout = 0 }, "timeout: must be positive"},
		{"empty header value is for NewOTLP", func(c *OTLPConfig) { c.Headers = map[string]Secret{"Mackerel-Api-Key": ""} }, ""},
		{"header with line break", func(c *OTLPConfig) { c.Headers = map[string]Secret{"K": "a\nb"} }, "line break"},
		{"insecure with tls", func(c *OTLPConfig) { c.Insecure = true; c.TLS.ServerName = "x" }, "tls: cannot be combined"},
		{"https with insecure", func(c *OTLPConfig) { c.Insecure = true; c.Endpoint = "https://c:4317" }, "contradicts"},
		{"cert without key", func(c *OTLPConfig) { c.TLS.CertFile = "/nonexistent.pem" }, "cert_file and key_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultOTLPConfig()
			c.Endpoint = "otlp.mackerelio.com:4317"
			tc.mod(&c)
			err := c.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}

// TestOTLPEmptyHeaderRefusesToStart: an unset ${MACKEREL_APIKEY} passes
// validate (examples validate without secrets) but stops the exporter.
func TestOTLPEmptyHeaderRefusesToStart(t *testing.T) {
	cfg := DefaultOTLPConfig()
	cfg.Endpoint = "127.0.0.1:4317"
	cfg.Headers = map[string]Secret{"Mackerel-Api-Key": ""}
	_, err := NewOTLP(cfg, Settings{})
	if err == nil || !strings.Contains(err.Error(), "headers.Mackerel-Api-Key: empty value") {
		t.Errorf("NewOTLP = %v, want an empty-value error", err)
	}
}

func TestOTLPConfigStringRedacts(t *testing.T) {
	c := DefaultOTLPConfig()
	c.Endpoint = "otlp.mackerelio.com:4317"
	c.Headers = map[string]Secret{"Mackerel-Api-Key": "secret-key-123"}
	s := c.String()
	if strings.Contains(s, "secret-key-123") || !strings.Contains(s, "Mackerel-Api-Key: <redacted>") {
		t.Errorf("String() = %s", s)
	}
	if s := fmt.Sprintf("%v %+v %#v", c, c, c); strings.Contains(s, "secret-key-123") {
		t.Errorf("formatting reveals the key: %s", s)
	}
}

// gatheredSum returns the sum of a counter family's values and its number of
// series.
func gatheredSum(t *testing.T, reg *prometheus.Registry, name string) (float64, int) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			sum := 0.0
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum, len(mf.GetMetric())
		}
	}
	return 0, 0
}

// TestOTLPSplitsLargeResources: max_points_per_request splits a resource's
// points over requests; every point arrives once, also across a retry.
func TestOTLPSplitsLargeResources(t *testing.T) {
	fake := fakeotlp.Start(t, fakeotlp.Options{})
	fake.Push(fakeotlp.Response{}, fakeotlp.Response{GRPCCode: codes.Unavailable})
	e, _ := otlpTestExporter(t, func(c *OTLPConfig) { c.Endpoint, c.MaxPointsPerRequest = fake.GRPCAddr, 3 })
	w := otlpTestWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 1)
	if err := e.Export(context.Background(), w); err == nil {
		t.Fatal("want the scripted failure of the second request")
	}
	if err := e.Export(context.Background(), w); err != nil {
		t.Fatal(err)
	}
	reqs := fake.Requests()
	// web: 4 points → 3 + 1; db: 1. The second request failed once.
	var sizes []int
	for _, r := range reqs {
		n := 0
		for _, m := range r.GetResourceMetrics()[0].GetScopeMetrics()[0].GetMetrics() {
			n += len(m.GetExponentialHistogram().GetDataPoints()) + len(m.GetSum().GetDataPoints()) + len(m.GetGauge().GetDataPoints())
		}
		sizes = append(sizes, n)
	}
	if !slices.Equal(sizes, []int{3, 1, 1, 1}) {
		t.Errorf("points per request = %v, want [3 1 1 1] (web 3, web 1 failed, web 1 again, db 1)", sizes)
	}
}

// TestOTLPShutdown: safe twice, and clean even with an expired context
// (nothing is buffered).
func TestOTLPShutdown(t *testing.T) {
	for _, proto := range []string{OTLPProtocolGRPC, OTLPProtocolHTTP} {
		cfg := DefaultOTLPConfig()
		cfg.Endpoint, cfg.Protocol, cfg.Insecure = "127.0.0.1:4317", proto, true
		e, err := NewOTLP(cfg, Settings{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := e.Shutdown(ctx); err != nil {
			t.Errorf("%s: Shutdown with an expired context = %v", proto, err)
		}
		if err := e.Shutdown(context.Background()); err != nil {
			t.Errorf("%s: second Shutdown = %v", proto, err)
		}
	}
}

// TestOTLPRefusedResourceDoesNotStopTheRest: InvalidArgument for one
// resource still lets the other through; the refusal comes back permanent.
func TestOTLPRefusedResourceDoesNotStopTheRest(t *testing.T) {
	fake := fakeotlp.Start(t, fakeotlp.Options{})
	fake.Push(fakeotlp.Response{GRPCCode: codes.InvalidArgument, Message: "bad point"})
	e, _ := otlpTestExporter(t, func(c *OTLPConfig) { c.Endpoint = fake.GRPCAddr })
	err := e.Export(context.Background(), otlpTestWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 1))
	if err == nil || !IsPermanent(err) || !strings.Contains(err.Error(), "bad point") {
		t.Fatalf("Export = %v, want the permanent refusal", err)
	}
	if n := len(fake.Requests()); n != 2 {
		t.Errorf("requests = %d, want both resources tried", n)
	}
}
