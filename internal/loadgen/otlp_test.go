package loadgen

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/internal/fake/fakeotlp"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
)

// TestSendersAcked checks, for a cumulative and a delta sender, the
// temporality and instance id on the wire, that Acked equals what was
// recorded once every export succeeded, and that an export whose first
// attempt reached the receiver and failed (503) is retried and counted in
// Resent.
func TestSendersAcked(t *testing.T) {
	for _, tc := range []struct {
		delta    bool
		temp     metricpb.AggregationTemporality
		instance string
	}{
		{false, metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE, "sender-0"},
		{true, metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA, "delta-sender-0"},
	} {
		t.Run(tc.instance, func(t *testing.T) {
			fake := fakeotlp.Start(t, fakeotlp.Options{})
			fake.Push(fakeotlp.Response{HTTPStatus: 503})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			// An hour between periodic exports: only Flush exports.
			s, err := StartSenders(ctx, SendersConfig{Senders: 1, Endpoint: strings.TrimPrefix(fake.HTTPURL, "http://"),
				Routes: 2, Interval: time.Hour, Seed: 1, Delta: tc.delta})
			if err != nil {
				t.Fatal(err)
			}
			s.Step(ctx, 5)
			if err := s.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			first, _, _ := s.Totals()
			s.Step(ctx, 7)
			if err := s.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			total, _, _ := s.Totals()
			if got := s.Acked(); got != total {
				t.Errorf("Acked = %d, want %d", got, total)
			}
			if got := s.Resent(); got != first {
				t.Errorf("Resent = %d, want %d (the export refused once with 503)", got, first)
			}
			var hists int
			for _, req := range fake.Requests() {
				for _, rm := range req.GetResourceMetrics() {
					for _, a := range rm.GetResource().GetAttributes() {
						if a.GetKey() == "service.instance.id" && a.GetValue().GetStringValue() != tc.instance {
							t.Errorf("service.instance.id %q, want %q", a.GetValue().GetStringValue(), tc.instance)
						}
					}
					for _, sm := range rm.GetScopeMetrics() {
						for _, m := range sm.GetMetrics() {
							if h := m.GetExponentialHistogram(); h != nil {
								hists++
								if h.GetAggregationTemporality() != tc.temp {
									t.Errorf("%s: temporality %v, want %v", m.GetName(), h.GetAggregationTemporality(), tc.temp)
								}
							}
						}
					}
				}
			}
			if hists == 0 {
				t.Errorf("no exponential histogram received")
			}
		})
	}
}
