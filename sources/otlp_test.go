package sources

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	otelmetric "go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	collectormetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"go.yaml.in/yaml/v3"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

// otlpTestSink records batches; fail, when set, decides each Consume's error.
type otlpTestSink struct {
	mu      sync.Mutex
	batches []metric.Batch
	calls   int
	fail    func(call int) error
}

func (s *otlpTestSink) Consume(_ context.Context, b metric.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.fail != nil {
		if err := s.fail(s.calls); err != nil {
			return err
		}
	}
	s.batches = append(s.batches, b)
	return nil
}

func (s *otlpTestSink) series() []metric.Series {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []metric.Series
	for _, b := range s.batches {
		out = append(out, b.Series...)
	}
	return out
}

func startOTLP(t testing.TB, mod func(*OTLPConfig)) (*OTLP, *otlpTestSink, *prometheus.Registry) {
	t.Helper()
	cfg := DefaultOTLPConfig()
	cfg.GRPCListen, cfg.HTTPListen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.RetryAfter = config.Duration(time.Second)
	if mod != nil {
		mod(&cfg)
	}
	reg := prometheus.NewRegistry()
	r, err := NewOTLP(cfg, Settings{Registerer: reg})
	if err != nil {
		t.Fatalf("NewOTLP: %v", err)
	}
	sink := &otlpTestSink{}
	if err := r.Start(context.Background(), sink); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return r, sink, reg
}

func otlpFind(ss []metric.Series, name string, attrs map[string]string) []metric.Series {
	var out []metric.Series
	for _, s := range ss {
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

func otlpOne(t *testing.T, ss []metric.Series, name string, attrs map[string]string) metric.Series {
	t.Helper()
	f := otlpFind(ss, name, attrs)
	if len(f) != 1 {
		t.Fatalf("series %s %v: found %d, want 1", name, attrs, len(f))
	}
	return f[0]
}

func setMap(s attribute.Set) map[string]string {
	m := map[string]string{}
	for _, kv := range s.ToSlice() {
		m[string(kv.Key)] = kv.Value.Emit()
	}
	return m
}

// TestOTLPSDK points the real OTel Go SDK exporters (gRPC and HTTP, gzip)
// at the receiver and checks that the batch equals what the SDK sent:
// exponential histograms bucket for bucket, exemplars from sampled spans,
// explicit histograms, counters, up-down counters, gauges, resource and
// scope attributes; and that p95 per route is within the bound.
func TestOTLPSDK(t *testing.T) {
	for _, transport := range []string{"grpc", "http"} {
		t.Run(transport, func(t *testing.T) {
			ctx := context.Background()
			r, sink, _ := startOTLP(t, nil)
			var exp sdkmetric.Exporter
			var err error
			if transport == "grpc" {
				exp, err = otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpoint(r.GRPCAddr().String()),
					otlpmetricgrpc.WithInsecure(), otlpmetricgrpc.WithCompressor("gzip"))
			} else {
				exp, err = otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpoint(r.HTTPAddr().String()),
					otlpmetrichttp.WithInsecure(), otlpmetrichttp.WithCompression(otlpmetrichttp.GzipCompression))
			}
			if err != nil {
				t.Fatal(err)
			}
			manual := sdkmetric.NewManualReader()
			mp := sdkmetric.NewMeterProvider(
				sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(time.Hour))),
				sdkmetric.WithReader(manual),
				sdkmetric.WithResource(resource.NewSchemaless(attribute.String("service.name", "web"), attribute.Int("service.instance.port", 8080))),
				sdkmetric.WithView(sdkmetric.NewView(
					sdkmetric.Instrument{Name: "http.server.request.duration"},
					sdkmetric.Stream{Aggregation: sdkmetric.AggregationBase2ExponentialHistogram{MaxSize: 160, MaxScale: 20}},
				)),
			)
			defer mp.Shutdown(ctx)
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
			defer tp.Shutdown(ctx)
			tracer := tp.Tracer("app")
			meter := mp.Meter("sabaki.test/app", otelmetric.WithInstrumentationVersion("1.2.3"))
			dur, _ := meter.Float64Histogram("http.server.request.duration", otelmetric.WithUnit("s"))
			tokens, _ := meter.Int64Histogram("gen_ai.client.token.usage", otelmetric.WithUnit("{token}"))
			reqs, _ := meter.Int64Counter("http.server.requests")
			active, _ := meter.Int64UpDownCounter("http.server.active_requests")
			cpu, _ := meter.Float64Gauge("process.cpu.utilization")

			rng := rand.New(rand.NewPCG(3, 4))
			values := map[string][]float64{}
			spans := map[string]string{} // trace ID -> span ID of sampled spans
			for _, rt := range promRoutes {
				for i := range 1500 {
					v := math.Exp(math.Log(rt.median) + 0.8*rng.NormFloat64())
					values[rt.route] = append(values[rt.route], v)
					code := 200
					if i%50 == 0 {
						code = 500
					}
					attrs := otelmetric.WithAttributes(attribute.String("http.route", rt.route), attribute.String("http.request.method", "GET"), attribute.Int("http.response.status_code", code))
					rctx := ctx
					if i%10 == 0 {
						c, sp := tracer.Start(ctx, "request")
						rctx = c
						spans[sp.SpanContext().TraceID().String()] = sp.SpanContext().SpanID().String()
						sp.End()
					}
					dur.Record(rctx, v, attrs)
					reqs.Add(rctx, 1, attrs)
				}
			}
			tokens.Record(ctx, 120, otelmetric.WithAttributes(attribute.String("gen_ai.request.model", "m1"), attribute.String("gen_ai.token.type", "input")))
			tokens.Record(ctx, 900, otelmetric.WithAttributes(attribute.String("gen_ai.request.model", "m1"), attribute.String("gen_ai.token.type", "input")))
			active.Add(ctx, 5)
			active.Add(ctx, -2)
			cpu.Record(ctx, 0.42)

			if err := mp.ForceFlush(ctx); err != nil {
				t.Fatalf("ForceFlush: %v", err)
			}
			var want metricdata.ResourceMetrics
			if err := manual.Collect(ctx, &want); err != nil {
				t.Fatal(err)
			}
			got := sink.series()
			if len(got) == 0 {
				t.Fatal("sink received nothing")
			}
			for _, s := range got {
				if v, _ := s.Resource.Get("service.name"); v != "web" {
					t.Fatalf("%s: resource %v", s.Name, s.Resource)
				}
				if v, _ := s.Resource.Get("service.instance.port"); v != "8080" {
					t.Fatalf("%s: int resource attribute not stringified: %v", s.Name, s.Resource)
				}
				if n, _ := s.Attrs.Get("otel.scope.name"); n != "sabaki.test/app" {
					t.Fatalf("%s: scope attrs %v", s.Name, s.Attrs)
				}
				if v, _ := s.Attrs.Get("otel.scope.version"); v != "1.2.3" {
					t.Fatalf("%s: scope version %v", s.Name, s.Attrs)
				}
			}
			checked := 0
			for _, sm := range want.ScopeMetrics {
				for _, m := range sm.Metrics {
					switch d := m.Data.(type) {
					case metricdata.ExponentialHistogram[float64]:
						for _, dp := range d.DataPoints {
							checked++
							attrs := setMap(dp.Attributes)
							s := otlpOne(t, got, m.Name, attrs)
							if s.Kind != metric.Histogram || s.Temporality != metric.Cumulative || s.Unit != "s" {
								t.Errorf("%v: kind %v temporality %v unit %q", attrs, s.Kind, s.Temporality, s.Unit)
							}
							pt := s.Points[0]
							if !pt.Start.Equal(dp.StartTime) && pt.Start.Sub(dp.StartTime).Abs() > time.Second {
								t.Errorf("start %v, want about %v", pt.Start, dp.StartTime)
							}
							h := pt.Hist.Data()
							mn, _ := dp.Min.Value()
							mx, _ := dp.Max.Value()
							if h.Scale != dp.Scale || h.Count != dp.Count || h.Sum != dp.Sum || h.ZeroCount != dp.ZeroCount || h.Min != mn || h.Max != mx {
								t.Errorf("%v: got scale %d count %d sum %v zero %d min %v max %v; SDK sent %d %d %v %d %v %v",
									attrs, h.Scale, h.Count, h.Sum, h.ZeroCount, h.Min, h.Max, dp.Scale, dp.Count, dp.Sum, dp.ZeroCount, mn, mx)
							}
							if h.Positive.Offset != dp.PositiveBucket.Offset || !slices.Equal(h.Positive.Counts, dp.PositiveBucket.Counts) {
								t.Errorf("%v: positive buckets differ: offset %d vs %d, %d vs %d buckets", attrs, h.Positive.Offset, dp.PositiveBucket.Offset, len(h.Positive.Counts), len(dp.PositiveBucket.Counts))
							}
							route := attrs["http.route"]
							var vals []float64
							if attrs["http.response.status_code"] == "200" {
								for i, v := range values[route] {
									if i%50 != 0 {
										vals = append(vals, v)
									}
								}
								exact := promExactQuantile(vals, 0.95)
								p95 := pt.Hist.QuantileMidpoint(0.95)
								if rel := math.Abs(p95-exact) / exact; rel > pt.Hist.RelativeError() {
									t.Errorf("%s: p95 %v vs exact %v: relative error %.4f > %.4f", route, p95, exact, rel, pt.Hist.RelativeError())
								}
								t.Logf("%s: p95 %.5f (log-interpolated %.5f), exact %.5f, scale %d", route, p95, pt.Hist.Quantile(0.95), exact, h.Scale)
								if len(pt.Exemplars) == 0 {
									t.Errorf("%s: no exemplars", route)
								}
							}
							for _, e := range pt.Exemplars {
								tid := hex.EncodeToString(e.TraceID[:])
								if sid, ok := spans[tid]; !ok || sid != hex.EncodeToString(e.SpanID[:]) {
									t.Errorf("exemplar trace %s span %x is not a recorded span", tid, e.SpanID)
								}
							}
						}
					case metricdata.Histogram[int64]:
						for _, dp := range d.DataPoints {
							checked++
							s := otlpOne(t, got, m.Name, setMap(dp.Attributes))
							if s.Points[0].Hist.Count() != dp.Count || s.Points[0].Hist.Sum() != float64(dp.Sum) {
								t.Errorf("%s: count/sum %d/%v, want %d/%v", m.Name, s.Points[0].Hist.Count(), s.Points[0].Hist.Sum(), dp.Count, dp.Sum)
							}
						}
					case metricdata.Sum[int64]:
						for _, dp := range d.DataPoints {
							checked++
							s := otlpOne(t, got, m.Name, setMap(dp.Attributes))
							wantKind := metric.Gauge
							if d.IsMonotonic {
								wantKind = metric.Counter
							}
							if s.Kind != wantKind || s.Points[0].Value != float64(dp.Value) {
								t.Errorf("%s: kind %v value %v, want %v %v", m.Name, s.Kind, s.Points[0].Value, wantKind, dp.Value)
							}
						}
					case metricdata.Gauge[float64]:
						for _, dp := range d.DataPoints {
							checked++
							s := otlpOne(t, got, m.Name, setMap(dp.Attributes))
							if s.Kind != metric.Gauge || s.Points[0].Value != dp.Value {
								t.Errorf("%s: %+v", m.Name, s)
							}
						}
					default:
						t.Errorf("unexpected SDK data %T", d)
					}
				}
			}
			if checked != len(got) {
				t.Errorf("compared %d points, sink holds %d series", checked, len(got))
			}
			if v := promSelfValue(r.m.received.WithLabelValues("otlp", transport)); int(v) != len(got) {
				t.Errorf("received self-metric %v, want %d", v, len(got))
			}

			// The SDK repeats a cumulative series' exemplars at every export
			// until newer ones replace them: each is handed over once.
			sink.mu.Lock()
			sink.batches = nil
			sink.mu.Unlock()
			if err := mp.ForceFlush(ctx); err != nil {
				t.Fatal(err)
			}
			for _, s := range sink.series() {
				if len(s.Points[0].Exemplars) > 0 {
					t.Errorf("%s %v: exemplars handed over again", s.Name, s.Attrs)
				}
			}
			c, sp := tracer.Start(ctx, "late request")
			dur.Record(c, 9.5, otelmetric.WithAttributes(attribute.String("http.route", "/api/orders"), attribute.String("http.request.method", "GET"), attribute.Int("http.response.status_code", 200)))
			sp.End()
			sink.mu.Lock()
			sink.batches = nil
			sink.mu.Unlock()
			if err := mp.ForceFlush(ctx); err != nil {
				t.Fatal(err)
			}
			ex := otlpOne(t, sink.series(), "http.server.request.duration", map[string]string{"http.route": "/api/orders", "http.response.status_code": "200"}).Points[0].Exemplars
			if len(ex) != 1 || ex[0].TraceID != sp.SpanContext().TraceID() || ex[0].Value != 9.5 {
				t.Errorf("after one new traced request: exemplars %+v", ex)
			}
		})
	}
}

// TestOTLPBackoff: when the pipeline is full the SDK is told to retry
// later, and its retry delivers the data.
func TestOTLPBackoff(t *testing.T) {
	for _, transport := range []string{"grpc", "http"} {
		t.Run(transport, func(t *testing.T) {
			ctx := context.Background()
			r, sink, _ := startOTLP(t, nil)
			sink.fail = func(call int) error {
				if call == 1 {
					return fmt.Errorf("window store: %w", metric.ErrFull)
				}
				return nil
			}
			var exp sdkmetric.Exporter
			var err error
			if transport == "grpc" {
				exp, err = otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpoint(r.GRPCAddr().String()), otlpmetricgrpc.WithInsecure(),
					otlpmetricgrpc.WithRetry(otlpmetricgrpc.RetryConfig{Enabled: true, InitialInterval: 10 * time.Millisecond, MaxInterval: 2 * time.Second, MaxElapsedTime: 20 * time.Second}))
			} else {
				exp, err = otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpoint(r.HTTPAddr().String()), otlpmetrichttp.WithInsecure(),
					otlpmetrichttp.WithRetry(otlpmetrichttp.RetryConfig{Enabled: true, InitialInterval: 10 * time.Millisecond, MaxInterval: 2 * time.Second, MaxElapsedTime: 20 * time.Second}))
			}
			if err != nil {
				t.Fatal(err)
			}
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(time.Hour))))
			defer mp.Shutdown(ctx)
			c, _ := mp.Meter("m").Int64Counter("jobs")
			c.Add(ctx, 7)
			start := time.Now()
			if err := mp.ForceFlush(ctx); err != nil {
				t.Fatalf("ForceFlush: %v", err)
			}
			waited := time.Since(start)
			if sink.calls != 2 {
				t.Fatalf("Consume called %d times, want 2 (refused, then accepted)", sink.calls)
			}
			if s := otlpOne(t, sink.series(), "jobs", nil); s.Points[0].Value != 7 {
				t.Errorf("value %v", s.Points[0].Value)
			}
			// The SDK honoured the receiver's retry delay (1 s), not its own 10 ms.
			if waited < 900*time.Millisecond {
				t.Errorf("SDK retried after %v, before the 1s asked for", waited)
			}
			if v := promSelfValue(r.m.requests.WithLabelValues("otlp", transport, "full")); v != 1 {
				t.Errorf("full requests = %v", v)
			}
		})
	}
}

func otlpRequest(points int, attrLen int) *collectormetrics.ExportMetricsServiceRequest {
	dps := make([]*metricspb.NumberDataPoint, points)
	for i := range dps {
		dps[i] = &metricspb.NumberDataPoint{
			Attributes:   []*commonpb.KeyValue{{Key: "i", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: int64(i)}}}},
			TimeUnixNano: uint64(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).UnixNano()),
			Value:        &metricspb.NumberDataPoint_AsDouble{AsDouble: float64(i)},
		}
	}
	if attrLen > 0 {
		dps[0].Attributes = append(dps[0].Attributes, &commonpb.KeyValue{Key: "long", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: strings.Repeat("x", attrLen)}}})
	}
	return &collectormetrics.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "web"}}}}},
		ScopeMetrics: []*metricspb.ScopeMetrics{{Metrics: []*metricspb.Metric{{
			Name: "queue.depth", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{DataPoints: dps}},
		}}}},
	}}}
}

func postOTLP(t *testing.T, addr string, body []byte, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/metrics", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", otlpProtoType)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func gzipBytes(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

// TestOTLPHTTP covers JSON (with OTLP/JSON's hex trace IDs), gzip, and the
// status codes of every refusal.
func TestOTLPHTTP(t *testing.T) {
	r, sink, _ := startOTLP(t, func(c *OTLPConfig) { c.MaxRequestBytes = 64 << 10; c.BearerToken = "tok" })
	addr := r.HTTPAddr().String()
	auth := map[string]string{"Authorization": "Bearer tok"}
	pb, _ := proto.Marshal(otlpRequest(10, 0))

	t.Run("json", func(t *testing.T) {
		js := `{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web"}}]},
		  "scopeMetrics":[{"scope":{"name":"app"},"metrics":[{"name":"http.server.request.duration","unit":"s",
		  "exponentialHistogram":{"aggregationTemporality":1,"dataPoints":[{"attributes":[{"key":"http.route","value":{"stringValue":"/api/users/:id"}}],
		  "startTimeUnixNano":"1764072000000000000","timeUnixNano":"1764072060000000000","count":"3","sum":0.35,"scale":3,"zeroCount":"0",
		  "positive":{"offset":-30,"bucketCounts":["1","0","2"]},"min":0.07,"max":0.15,
		  "exemplars":[{"timeUnixNano":"1764072030000000000","asDouble":0.15,"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331"}]}]}}]}]}]}`
		resp, body := postOTLP(t, addr, gzipBytes([]byte(js)), map[string]string{"Content-Type": "application/json", "Content-Encoding": "gzip", "Authorization": "Bearer tok"})
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != otlpJSONType {
			t.Fatalf("status %d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		s := otlpOne(t, sink.series(), "http.server.request.duration", map[string]string{"http.route": "/api/users/:id"})
		d := s.Points[0].Hist.Data()
		if s.Temporality != metric.Delta || d.Scale != 3 || d.Count != 3 || d.Positive.Offset != -30 || !slices.Equal(d.Positive.Counts, []uint64{1, 0, 2}) {
			t.Errorf("histogram %+v temporality %v", d, s.Temporality)
		}
		ex := s.Points[0].Exemplars
		if len(ex) != 1 || hex.EncodeToString(ex[0].TraceID[:]) != "0af7651916cd43dd8448eb211c80319c" || hex.EncodeToString(ex[0].SpanID[:]) != "b7ad6b7169203331" {
			t.Errorf("exemplar %+v", ex)
		}
	})
	t.Run("protobuf gzip", func(t *testing.T) {
		before := len(sink.series())
		resp, body := postOTLP(t, addr, gzipBytes(pb), map[string]string{"Content-Encoding": "gzip", "Authorization": "Bearer tok"})
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		var out collectormetrics.ExportMetricsServiceResponse
		if err := proto.Unmarshal(body, &out); err != nil || out.GetPartialSuccess() != nil {
			t.Errorf("response %v %v", &out, err)
		}
		if got := len(sink.series()) - before; got != 10 {
			t.Errorf("sink got %d series, want 10", got)
		}
	})

	big, _ := proto.Marshal(otlpRequest(3000, 0))
	bomb := gzipBytes(bytes.Repeat([]byte{0}, 1<<20))
	for _, tc := range []struct {
		name   string
		body   []byte
		header map[string]string
		full   bool
		code   int
	}{
		{"no token", pb, nil, false, http.StatusUnauthorized},
		{"wrong token", pb, map[string]string{"Authorization": "Bearer nope"}, false, http.StatusUnauthorized},
		{"oversized", big, auth, false, http.StatusRequestEntityTooLarge},
		{"oversized once decompressed", bomb, map[string]string{"Authorization": "Bearer tok", "Content-Encoding": "gzip"}, false, http.StatusRequestEntityTooLarge},
		{"malformed protobuf", []byte("\xff\xff\xff\xff"), auth, false, http.StatusBadRequest},
		{"malformed json", []byte("{"), map[string]string{"Authorization": "Bearer tok", "Content-Type": "application/json"}, false, http.StatusBadRequest},
		{"bad gzip", []byte("nope"), map[string]string{"Authorization": "Bearer tok", "Content-Encoding": "gzip"}, false, http.StatusBadRequest},
		{"wrong content type", pb, map[string]string{"Authorization": "Bearer tok", "Content-Type": "text/plain"}, false, http.StatusUnsupportedMediaType},
		{"pipeline full", pb, auth, true, http.StatusTooManyRequests},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(sink.series())
			if tc.full {
				sink.mu.Lock()
				sink.fail = func(int) error { return metric.ErrFull }
				sink.mu.Unlock()
				defer func() { sink.mu.Lock(); sink.fail = nil; sink.mu.Unlock() }()
			}
			resp, body := postOTLP(t, addr, tc.body, tc.header)
			if resp.StatusCode != tc.code {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.code, body)
			}
			if tc.full && resp.Header.Get("Retry-After") != "1" {
				t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
			}
			if len(sink.series()) != before {
				t.Errorf("refused request reached the sink")
			}
		})
	}
	resp, _ := http.Get("http://" + addr + "/v1/metrics")
	if resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET: %d", resp.StatusCode)
	}
	resp.Body.Close()
}

func TestOTLPGRPC(t *testing.T) {
	r, sink, _ := startOTLP(t, func(c *OTLPConfig) { c.MaxRequestBytes = 64 << 10; c.BearerToken = "tok" })
	conn, err := grpc.NewClient(r.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := collectormetrics.NewMetricsServiceClient(conn)
	authed := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer tok")

	if _, err := client.Export(context.Background(), otlpRequest(3, 0)); status.Code(err) != codes.Unauthenticated {
		t.Errorf("without token: %v", err)
	}
	if _, err := client.Export(authed, otlpRequest(3, 0)); err != nil {
		t.Fatalf("with token: %v", err)
	}
	if n := len(sink.series()); n != 3 {
		t.Errorf("sink got %d series", n)
	}
	if _, err := client.Export(authed, otlpRequest(3000, 0)); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("oversized: %v", err)
	}
	if v := promSelfValue(r.m.requests.WithLabelValues("otlp", "grpc", "too_large")); v != 1 {
		t.Errorf("too_large requests counted %v, want 1", v)
	}
	sink.fail = func(int) error { return metric.ErrFull }
	_, err = client.Export(authed, otlpRequest(3, 0))
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("full: %v", err)
	}
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			retry = ri
		}
	}
	if retry == nil || retry.GetRetryDelay().AsDuration() != time.Second {
		t.Errorf("RetryInfo %v", retry)
	}
}

// TestOTLPLimits: points over the limits are rejected through partial
// success and counted, the rest accepted.
func TestOTLPLimits(t *testing.T) {
	r, sink, _ := startOTLP(t, func(c *OTLPConfig) { c.MaxSeriesPerRequest = 6; c.MaxAttributeLength = 100 })
	conn, err := grpc.NewClient(r.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	resp, err := collectormetrics.NewMetricsServiceClient(conn).Export(context.Background(), otlpRequest(10, 200))
	if err != nil {
		t.Fatal(err)
	}
	ps := resp.GetPartialSuccess()
	// Point 0 has a 200-byte attribute; points 1-6 fit the limit of 6; 7-9 do not.
	if ps.GetRejectedDataPoints() != 4 || !strings.Contains(ps.GetErrorMessage(), "max_attribute_length") {
		t.Errorf("partial success %v", ps)
	}
	if n := len(sink.series()); n != 6 {
		t.Errorf("accepted %d, want 6", n)
	}
	for reason, want := range map[string]float64{rejectAttrTooLong: 1, rejectTooManySeries: 3} {
		if v := promSelfValue(r.m.rejected.WithLabelValues("otlp", reason)); v != want {
			t.Errorf("rejected{reason=%s} = %v, want %v", reason, v, want)
		}
	}
}

// TestOTLPConvert checks the mapping of every metric kind.
func TestOTLPConvert(t *testing.T) {
	kv := func(k string, v *commonpb.AnyValue) *commonpb.KeyValue { return &commonpb.KeyValue{Key: k, Value: v} }
	str := func(s string) *commonpb.AnyValue {
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s}}
	}
	ts := uint64(1764072060000000000)
	num := func(v float64) []*metricspb.NumberDataPoint {
		return []*metricspb.NumberDataPoint{{StartTimeUnixNano: ts - 60e9, TimeUnixNano: ts, Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: v}}}
	}
	fine := make([]uint64, 64)
	for i := range fine {
		fine[i] = 1
	}
	req := &collectormetrics.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{
			kv("service.name", str("web")),
			kv("b", &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: true}}),
			kv("d", &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: 1.5}}),
			kv("arr", &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: &commonpb.ArrayValue{Values: []*commonpb.AnyValue{str("x"), {Value: &commonpb.AnyValue_IntValue{IntValue: 2}}}}}}),
			kv("raw", &commonpb.AnyValue{Value: &commonpb.AnyValue_BytesValue{BytesValue: []byte{1, 2}}}),
		}},
		ScopeMetrics: []*metricspb.ScopeMetrics{{Metrics: []*metricspb.Metric{
			{Name: "delta.counter", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{IsMonotonic: true, AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA, DataPoints: num(3)}}},
			{Name: "cum.counter", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{IsMonotonic: true, AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, DataPoints: num(30)}}},
			{Name: "updown", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, DataPoints: num(-4)}}},
			{Name: "gauge", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{DataPoints: num(7)}}},
			{Name: "nan.gauge", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{DataPoints: num(math.NaN())}}},
			{Name: "stale", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{DataPoints: []*metricspb.NumberDataPoint{{TimeUnixNano: ts, Flags: 1}}}}},
			{Name: "no.temporality", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{IsMonotonic: true, DataPoints: num(1)}}},
			{Name: "explicit", Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{
				AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE,
				DataPoints:             []*metricspb.HistogramDataPoint{{TimeUnixNano: ts, Count: 6, Sum: proto.Float64(3.1), Min: proto.Float64(0.05), Max: proto.Float64(1.3), ExplicitBounds: []float64{0.1, 0.5, 1}, BucketCounts: []uint64{1, 2, 2, 1}}},
			}}},
			{Name: "explicit.bad", Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{
				AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE,
				DataPoints:             []*metricspb.HistogramDataPoint{{TimeUnixNano: ts, Count: 6, ExplicitBounds: []float64{0.1}, BucketCounts: []uint64{1, 2, 3}}},
			}}},
			{Name: "fine", Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{
				AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA,
				DataPoints: []*metricspb.ExponentialHistogramDataPoint{{TimeUnixNano: ts, Count: 65, Sum: proto.Float64(70), Scale: 23, ZeroCount: 1,
					Positive: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: 1 << 20, BucketCounts: fine}}},
			}}},
			{Name: "rpc.duration", Data: &metricspb.Metric_Summary{Summary: &metricspb.Summary{DataPoints: []*metricspb.SummaryDataPoint{{
				StartTimeUnixNano: ts - 60e9, TimeUnixNano: ts, Count: 10, Sum: 4.5,
				QuantileValues: []*metricspb.SummaryDataPoint_ValueAtQuantile{{Quantile: 0.5, Value: 0.4}, {Quantile: 0.99, Value: 0.9}},
			}}}}},
		}}},
	}}}
	c := otlpConverter{maxPoints: 1000, maxAttr: 100, now: time.Now()}
	c.convert(req)
	// Exemplar attributes: kept by default, dropped on request.
	exReq := &collectormetrics.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{ScopeMetrics: []*metricspb.ScopeMetrics{{Metrics: []*metricspb.Metric{
		{Name: "gen_ai.client.token.usage", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{DataPoints: []*metricspb.NumberDataPoint{{
			TimeUnixNano: ts, Value: &metricspb.NumberDataPoint_AsInt{AsInt: 5},
			Exemplars: []*metricspb.Exemplar{{TraceId: bytes.Repeat([]byte{1}, 16), SpanId: bytes.Repeat([]byte{2}, 8), FilteredAttributes: []*commonpb.KeyValue{kv("gen_ai.prompt", str("secret"))}}},
		}}}}},
	}}}}}}
	for _, drop := range []bool{false, true} {
		ec := otlpConverter{maxPoints: 10, maxAttr: 100, now: time.Now(), dropExemplarAttrs: drop}
		ec.convert(exReq)
		e := ec.series[0].Points[0].Exemplars[0]
		if _, has := e.Attrs.Get("gen_ai.prompt"); has == drop || e.TraceID[0] != 1 || e.SpanID[0] != 2 {
			t.Errorf("drop_exemplar_attributes=%v: exemplar %+v", drop, e)
		}
	}
	ss := c.series
	res := otlpOne(t, ss, "gauge", nil).Resource
	wantRes := metric.NewAttrs(map[string]string{"service.name": "web", "b": "true", "d": "1.5", "arr": `["x",2]`, "raw": "AQI="})
	if !res.Equal(wantRes) {
		t.Errorf("resource %v, want %v", res, wantRes)
	}
	for _, tc := range []struct {
		name  string
		kind  metric.Kind
		temp  metric.Temporality
		value float64
	}{
		{"delta.counter", metric.Counter, metric.Delta, 3},
		{"cum.counter", metric.Counter, metric.Cumulative, 30},
		{"updown", metric.Gauge, 0, -4},
		{"gauge", metric.Gauge, 0, 7},
		{"rpc.duration_sum", metric.Counter, metric.Cumulative, 4.5},
		{"rpc.duration_count", metric.Counter, metric.Cumulative, 10},
	} {
		s := otlpOne(t, ss, tc.name, nil)
		if s.Kind != tc.kind || s.Temporality != tc.temp || s.Points[0].Value != tc.value {
			t.Errorf("%s: kind %v temporality %v value %v; want %v %v %v", tc.name, s.Kind, s.Temporality, s.Points[0].Value, tc.kind, tc.temp, tc.value)
		}
		if tc.kind == metric.Counter && s.Points[0].Start.IsZero() {
			t.Errorf("%s: start lost", tc.name)
		}
	}
	if q := otlpOne(t, ss, "rpc.duration", map[string]string{"quantile": "0.99"}); q.Kind != metric.Gauge || q.Points[0].Value != 0.9 {
		t.Errorf("summary quantile %+v", q)
	}
	ex := otlpOne(t, ss, "explicit", nil).Points[0].Hist
	if ex.Count() != 6 || ex.Sum() != 3.1 || ex.Min() != 0.05 || ex.Max() != 1.3 {
		t.Errorf("explicit: count %d sum %v min %v max %v", ex.Count(), ex.Sum(), ex.Min(), ex.Max())
	}
	fh := otlpOne(t, ss, "fine", nil).Points[0].Hist
	if fh.Scale() > 20 || fh.Count() != 65 || fh.ZeroCount() != 1 {
		t.Errorf("fine: scale %d count %d zero %d", fh.Scale(), fh.Count(), fh.ZeroCount())
	}
	for _, gone := range []string{"nan.gauge", "stale", "no.temporality", "explicit.bad"} {
		if len(otlpFind(ss, gone, nil)) != 0 {
			t.Errorf("%s should not be accepted", gone)
		}
	}
	if c.rejectedTotal != 3 || c.rejected[rejectInvalid] != 3 {
		t.Errorf("rejected %d %v, want 3 invalid (nan, no temporality, bad buckets); the stale marker is skipped silently", c.rejectedTotal, c.rejected)
	}
}

func TestOTLPConfig(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"defaults", "type: otlp\n", ""},
		{"grpc only", "type: otlp\nhttp_listen: ''\n", ""},
		{"nothing listens", "type: otlp\ngrpc_listen: ''\nhttp_listen: ''\n", "nothing would listen"},
		{"bad address", "type: otlp\ngrpc_listen: localhost\n", "grpc_listen: must be host:port"},
		{"same address", "type: otlp\ngrpc_listen: 127.0.0.1:4317\nhttp_listen: 127.0.0.1:4317\n", "http_listen: must differ"},
		{"zero limit", "type: otlp\nmax_series_per_request: 0\n", "max_series_per_request: must be positive"},
		{"half tls", "type: otlp\ntls: {key_file: k.pem}\n", "tls: cert_file and key_file"},
		{"typo", "type: otlp\nhttp_listn: 127.0.0.1:1\n", "did you mean"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n yaml.Node
			if err := yaml.Unmarshal([]byte(tc.yaml), &n); err != nil {
				t.Fatal(err)
			}
			cfg := DefaultOTLPConfig()
			ps := config.Decode(&n, "sources[0]", &cfg)
			if tc.want == "" {
				if len(ps) > 0 {
					t.Fatalf("unexpected problems: %v", ps)
				}
				return
			}
			if len(ps) == 0 || !strings.Contains(ps.Error(), tc.want) {
				t.Fatalf("problems %v, want %q", ps, tc.want)
			}
		})
	}
	// Start reports a port in use, naming the address.
	r1, _, _ := startOTLP(t, func(c *OTLPConfig) { c.HTTPListen = "" })
	cfg := DefaultOTLPConfig()
	cfg.GRPCListen, cfg.HTTPListen = r1.GRPCAddr().String(), ""
	r2, err := NewOTLP(cfg, Settings{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Start(context.Background(), &otlpTestSink{}); err == nil || !strings.Contains(err.Error(), r1.GRPCAddr().String()) {
		t.Errorf("Start on a used port: %v", err)
	}
	if err := r2.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after a failed Start: %v", err)
	}
}

// A sum or histogram without an aggregation temporality cannot be turned into
// deltas: its points are rejected through partial success, the rest kept.
func TestOTLPUnspecifiedTemporality(t *testing.T) {
	r, sink, _ := startOTLP(t, nil)
	conn, err := grpc.NewClient(r.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pt := &metricspb.NumberDataPoint{TimeUnixNano: 1, Value: &metricspb.NumberDataPoint_AsInt{AsInt: 1}}
	req := otlpRequest(1, 0)
	ms := req.ResourceMetrics[0].ScopeMetrics[0].Metrics
	ms = append(ms,
		&metricspb.Metric{Name: "no_temporality_sum", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{IsMonotonic: true, DataPoints: []*metricspb.NumberDataPoint{pt, pt}}}},
		&metricspb.Metric{Name: "no_temporality_hist", Data: &metricspb.Metric_Histogram{Histogram: &metricspb.Histogram{
			DataPoints: []*metricspb.HistogramDataPoint{{TimeUnixNano: 1, Count: 1, BucketCounts: []uint64{1}}}}}},
		&metricspb.Metric{Name: "no_temporality_exp", Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{
			DataPoints: []*metricspb.ExponentialHistogramDataPoint{{TimeUnixNano: 1, ZeroCount: 1, Count: 1}}}}},
	)
	req.ResourceMetrics[0].ScopeMetrics[0].Metrics = ms
	resp, err := collectormetrics.NewMetricsServiceClient(conn).Export(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	ps := resp.GetPartialSuccess()
	if ps.GetRejectedDataPoints() != 4 || !strings.Contains(ps.GetErrorMessage(), "unspecified aggregation temporality") {
		t.Errorf("partial success %v, want 4 points rejected for temporality", ps)
	}
	if n := len(sink.series()); n != 1 {
		t.Errorf("accepted %d series, want 1", n)
	}
}
