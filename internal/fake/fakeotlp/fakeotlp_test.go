package fakeotlp

import (
	"strings"
	"testing"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
)

func expReq(p *metricpb.ExponentialHistogramDataPoint, t metricpb.AggregationTemporality) *colmetricpb.ExportMetricsServiceRequest {
	return &colmetricpb.ExportMetricsServiceRequest{ResourceMetrics: []*metricpb.ResourceMetrics{{
		ScopeMetrics: []*metricpb.ScopeMetrics{{Metrics: []*metricpb.Metric{{
			Name: "m",
			Data: &metricpb.Metric_ExponentialHistogram{ExponentialHistogram: &metricpb.ExponentialHistogram{
				AggregationTemporality: t, DataPoints: []*metricpb.ExponentialHistogramDataPoint{p},
			}},
		}}}},
	}}}
}

// TestCheck: the rules the fake enforces catch what they promise to.
func TestCheck(t *testing.T) {
	delta := metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA
	ok := func() *metricpb.ExponentialHistogramDataPoint {
		return &metricpb.ExponentialHistogramDataPoint{
			StartTimeUnixNano: 1, TimeUnixNano: 2, Count: 5, ZeroCount: 1, Scale: 3,
			Positive: &metricpb.ExponentialHistogramDataPoint_Buckets{Offset: 4, BucketCounts: []uint64{1, 2}},
			Negative: &metricpb.ExponentialHistogramDataPoint_Buckets{BucketCounts: []uint64{1}},
		}
	}
	for _, tc := range []struct {
		name string
		mod  func(*metricpb.ExponentialHistogramDataPoint)
		temp metricpb.AggregationTemporality
		want string
	}{
		{"valid", func(*metricpb.ExponentialHistogramDataPoint) {}, delta, ""},
		{"count mismatch", func(p *metricpb.ExponentialHistogramDataPoint) { p.Count = 6 }, delta, "count 6 != zero_count + buckets 5"},
		{"scale", func(p *metricpb.ExponentialHistogramDataPoint) { p.Scale = 21 }, delta, "scale 21"},
		{"delta without start", func(p *metricpb.ExponentialHistogramDataPoint) { p.StartTimeUnixNano = 0 }, delta, "start_time < time"},
		{"no temporality", func(*metricpb.ExponentialHistogramDataPoint) {}, 0, "unspecified temporality"},
		{"short trace id", func(p *metricpb.ExponentialHistogramDataPoint) {
			p.Exemplars = []*metricpb.Exemplar{{TraceId: []byte{1, 2, 3}}}
		}, delta, "trace_id of 3 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := ok()
			tc.mod(p)
			err := Check(expReq(p, tc.temp))
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Check = %v, want %q", err, tc.want)
			}
		})
	}
}
