package sources

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	collectormetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/proto"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// benchOTLPRequest builds a request of 2,000 data points, as an instrumented
// service sends it: 100 exponential histograms (http.server.request.duration
// per route, method and status, about 80 buckets each, with 2 exemplars),
// 900 monotonic sums and 1,000 gauges, each with three attributes.
func benchOTLPRequest() *collectormetrics.ExportMetricsServiceRequest {
	str := func(s string) *commonpb.AnyValue {
		return &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: s}}
	}
	kv := func(k, v string) *commonpb.KeyValue { return &commonpb.KeyValue{Key: k, Value: str(v)} }
	now := uint64(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).UnixNano())
	start := now - uint64(time.Hour)
	rng := rand.New(rand.NewPCG(5, 6))
	var hists []*metricspb.ExponentialHistogramDataPoint
	for i := range 100 {
		h := histogram.New(160, 20)
		for range 2000 {
			h.Record(math.Exp(math.Log(0.05) + rng.NormFloat64()))
		}
		d := h.Data()
		hists = append(hists, &metricspb.ExponentialHistogramDataPoint{
			Attributes:        []*commonpb.KeyValue{kv("http.route", fmt.Sprintf("/api/r%d", i/4)), kv("http.request.method", "GET"), {Key: "http.response.status_code", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: int64(200 + i%4)}}}},
			StartTimeUnixNano: start, TimeUnixNano: now,
			Count: d.Count, Sum: proto.Float64(d.Sum), Min: proto.Float64(d.Min), Max: proto.Float64(d.Max),
			Scale: d.Scale, ZeroCount: d.ZeroCount,
			Positive: &metricspb.ExponentialHistogramDataPoint_Buckets{Offset: d.Positive.Offset, BucketCounts: d.Positive.Counts},
			Exemplars: []*metricspb.Exemplar{
				{TimeUnixNano: now, Value: &metricspb.Exemplar_AsDouble{AsDouble: 0.3}, TraceId: make([]byte, 16), SpanId: make([]byte, 8)},
				{TimeUnixNano: now, Value: &metricspb.Exemplar_AsDouble{AsDouble: 1.2}, TraceId: make([]byte, 16), SpanId: make([]byte, 8)},
			},
		})
	}
	number := func(n, off int) []*metricspb.NumberDataPoint {
		out := make([]*metricspb.NumberDataPoint, n)
		for i := range out {
			out[i] = &metricspb.NumberDataPoint{
				Attributes:        []*commonpb.KeyValue{kv("tenant", fmt.Sprintf("t%d", (i+off)%50)), kv("queue", fmt.Sprintf("q%d", i)), kv("region", "asia-northeast1")},
				StartTimeUnixNano: start, TimeUnixNano: now,
				Value: &metricspb.NumberDataPoint_AsDouble{AsDouble: float64(i)},
			}
		}
		return out
	}
	return &collectormetrics.ExportMetricsServiceRequest{ResourceMetrics: []*metricspb.ResourceMetrics{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{kv("service.name", "web"), kv("service.version", "1.4.2"), kv("cloud.region", "asia-northeast1"), kv("cloud.platform", "gcp_cloud_run"), kv("service.instance.id", "00bf4c2e")}},
		ScopeMetrics: []*metricspb.ScopeMetrics{{
			Scope: &commonpb.InstrumentationScope{Name: "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp", Version: "0.63.0"},
			Metrics: []*metricspb.Metric{
				{Name: "http.server.request.duration", Unit: "s", Data: &metricspb.Metric_ExponentialHistogram{ExponentialHistogram: &metricspb.ExponentialHistogram{
					AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, DataPoints: hists}}},
				{Name: "jobs.processed", Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{IsMonotonic: true,
					AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, DataPoints: number(900, 0)}}},
				{Name: "queue.depth", Data: &metricspb.Metric_Gauge{Gauge: &metricspb.Gauge{DataPoints: number(1000, 7)}}},
			},
		}},
	}}}
}

// reportPerPoint adds ns/point and allocs/point for points data points per op.
func reportPerPoint(b *testing.B, points int, mallocs0 uint64) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	n := float64(b.N * points)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/point")
	b.ReportMetric(float64(ms.Mallocs-mallocs0)/n, "allocs/point")
}

func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

// BenchmarkOTLPExport measures the receiver's cost per data point from a
// decoded request to the batch handed to the sink (conversion, limits,
// histogram construction), i.e. the gRPC path after the gRPC library
// decoded the message.
func BenchmarkOTLPExport(b *testing.B) {
	req := benchOTLPRequest()
	r, err := NewOTLP(DefaultOTLPConfig(), Settings{})
	if err != nil {
		b.Fatal(err)
	}
	r.sink = metric.SinkFunc(func(context.Context, metric.Batch) error { return nil })
	ctx := context.Background()
	b.ReportAllocs()
	m0 := mallocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := r.export(ctx, req, "grpc")
		if err != nil || resp.GetPartialSuccess() != nil {
			b.Fatal(err, resp)
		}
	}
	reportPerPoint(b, 2000, m0)
}

// BenchmarkOTLPHTTP includes protobuf decoding of the body and the HTTP
// handler: the whole cost of an OTLP/HTTP request except the network.
func BenchmarkOTLPHTTP(b *testing.B) {
	body, err := proto.Marshal(benchOTLPRequest())
	if err != nil {
		b.Fatal(err)
	}
	r, err := NewOTLP(DefaultOTLPConfig(), Settings{})
	if err != nil {
		b.Fatal(err)
	}
	r.sink = metric.SinkFunc(func(context.Context, metric.Batch) error { return nil })
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	m0 := mallocs()
	b.ResetTimer()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/v1/metrics", newBytesReader(body))
		req.Header.Set("Content-Type", otlpProtoType)
		w := httptest.NewRecorder()
		r.serveHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
	reportPerPoint(b, 2000, m0)
}
