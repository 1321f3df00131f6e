package exporters_test

// Round trip: sabaki's OTLP exporter into sabaki's own OTLP receiver
// (sources.OTLP). sources and exporters never import each other; only this
// external test package sees both.

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/exporters"
	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
	"github.com/sabakiio/sabaki/sources"
)

// TestOTLPRoundTripIntoReceiver exports a window over gRPC and over HTTP into
// sabaki's OTLP receiver and checks that every series comes back with the
// same resource and attributes, histograms bucket for bucket, counters as
// deltas over the window, gauges, and exemplars (trace ID, span ID, value,
// time, attributes) equal.
func TestOTLPRoundTripIntoReceiver(t *testing.T) {
	for _, protocol := range []string{exporters.OTLPProtocolGRPC, exporters.OTLPProtocolHTTP} {
		t.Run(protocol, func(t *testing.T) {
			rcfg := sources.DefaultOTLPConfig()
			rcfg.GRPCListen, rcfg.HTTPListen = "127.0.0.1:0", "127.0.0.1:0"
			recv, err := sources.NewOTLP(rcfg, sources.Settings{})
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var got []metric.Series
			sink := metric.SinkFunc(func(_ context.Context, b metric.Batch) error {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, b.Series...)
				return nil
			})
			if err := recv.Start(context.Background(), sink); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = recv.Shutdown(context.Background()) })

			ecfg := exporters.DefaultOTLPConfig()
			ecfg.Protocol, ecfg.Insecure = protocol, true
			ecfg.Endpoint = recv.GRPCAddr().String()
			if protocol == exporters.OTLPProtocolHTTP {
				ecfg.Endpoint = recv.HTTPAddr().String()
			}
			exp, err := exporters.NewOTLP(ecfg, exporters.Settings{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = exp.Shutdown(context.Background()) })

			w := roundTripWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC))
			if err := exp.Export(context.Background(), w); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) != len(w.Series) {
				t.Fatalf("receiver got %d series, want %d", len(got), len(w.Series))
			}
			for i := range w.Series {
				a := &w.Series[i]
				s := findSeries(got, a)
				if s == nil {
					t.Errorf("series %s %v not received", a.Name, a.Attrs)
					continue
				}
				if s.Kind != a.Kind || s.Unit != a.Unit || s.Description != a.Description || !s.Resource.Equal(a.Resource) || len(s.Points) != 1 {
					t.Errorf("%s: kind %s unit %q desc %q resource %v points %d", a.Name, s.Kind, s.Unit, s.Description, s.Resource, len(s.Points))
					continue
				}
				p := s.Points[0]
				if !p.Time.Equal(w.End()) {
					t.Errorf("%s: time %s, want the window end", a.Name, p.Time)
				}
				switch a.Kind {
				case metric.Histogram:
					if s.Temporality != metric.Delta || !p.Start.Equal(w.Start) {
						t.Errorf("%s: temporality %d start %s", a.Name, s.Temporality, p.Start)
					}
					want, have := a.Hist.Data(), p.Hist.Data()
					if !dataEqual(want, have) {
						t.Errorf("%s: histogram\n got %+v\nwant %+v", a.Name, have, want)
					}
				case metric.Counter:
					if s.Temporality != metric.Delta || !p.Start.Equal(w.Start) || p.Value != a.Sum {
						t.Errorf("%s: temporality %d start %s value %g, want delta %g", a.Name, s.Temporality, p.Start, p.Value, a.Sum)
					}
				case metric.Gauge:
					if p.Value != a.Last {
						t.Errorf("%s: value %g, want %g", a.Name, p.Value, a.Last)
					}
				}
				if !exemplarsEqual(p.Exemplars, a.Exemplars) {
					t.Errorf("%s: exemplars\n got %+v\nwant %+v", a.Name, p.Exemplars, a.Exemplars)
				}
			}
		})
	}
}

func roundTripWindow(start time.Time) *metric.Window {
	r := rand.New(rand.NewPCG(3, 4))
	res := metric.NewAttrs(map[string]string{"service.name": "web", "service.instance.id": "i-1", "cloud.region": "asia-northeast1"})
	latency := func(n int, mixed bool) *histogram.Histogram {
		h := histogram.New(0, 0)
		for range n {
			h.Record(math.Exp(r.NormFloat64()*0.8 + math.Log(0.08)))
		}
		if mixed {
			h.RecordN(0, 4)
			h.Record(-3)
		}
		return h
	}
	ex := func(i byte, v float64) metric.Exemplar {
		var e metric.Exemplar
		for j := range e.TraceID {
			e.TraceID[j] = i + byte(j)
		}
		e.SpanID = [8]byte{i, 1, 2, 3, 4, 5, 6, 7}
		e.Value, e.Time = v, start.Add(time.Duration(i)*time.Second)
		e.Attrs = metric.NewAttrs(map[string]string{"enduser.tier": "gold"})
		return e
	}
	return &metric.Window{Start: start, Duration: time.Minute, Series: []metric.Aggregate{
		{Name: "http.server.request.duration", Unit: "s", Description: "latency", Kind: metric.Histogram, Resource: res,
			Attrs: metric.NewAttrs(map[string]string{"http.route": "/a", "http.request.method": "GET"}),
			Hist:  latency(1000, false), Exemplars: []metric.Exemplar{ex(1, 2.5), ex(2, 0.3)}},
		{Name: "http.server.request.duration", Unit: "s", Description: "latency", Kind: metric.Histogram, Resource: res,
			Attrs: metric.NewAttrs(map[string]string{"http.route": "/b", "http.request.method": "POST"}),
			Hist:  latency(20, true)},
		{Name: "gen_ai.client.token.usage", Unit: "{token}", Kind: metric.Counter, Resource: res,
			Attrs: metric.NewAttrs(map[string]string{"gen_ai.request.model": "m-1"}), Sum: 12345, Exemplars: []metric.Exemplar{ex(3, 800)}},
		{Name: "db.client.connection.count", Unit: "{connection}", Kind: metric.Gauge, Resource: res, Last: 17, Sum: 50, Count: 3, Min: 15, Max: 18},
	}}
}

// findSeries returns the received series matching a's name and attributes
// (the receiver adds the instrumentation scope as otel.scope.* attributes).
func findSeries(ss []metric.Series, a *metric.Aggregate) *metric.Series {
	for i := range ss {
		attrs := slices.DeleteFunc(ss[i].Attrs.Clone(), func(kv metric.Attr) bool { return strings.HasPrefix(kv.Key, "otel.scope.") })
		if ss[i].Name == a.Name && attrs.Equal(a.Attrs) {
			return &ss[i]
		}
	}
	return nil
}

func dataEqual(a, b histogram.Data) bool {
	return a.Scale == b.Scale && a.ZeroThreshold == b.ZeroThreshold && a.ZeroCount == b.ZeroCount && a.Count == b.Count &&
		a.Sum == b.Sum && a.Min == b.Min && a.Max == b.Max &&
		a.Positive.Offset == b.Positive.Offset && slices.Equal(a.Positive.Counts, b.Positive.Counts) &&
		a.Negative.Offset == b.Negative.Offset && slices.Equal(a.Negative.Counts, b.Negative.Counts)
}

func exemplarsEqual(a, b []metric.Exemplar) bool {
	return slices.EqualFunc(a, b, func(x, y metric.Exemplar) bool {
		return x.TraceID == y.TraceID && x.SpanID == y.SpanID && x.Value == y.Value && x.Time.Equal(y.Time) && x.Attrs.Equal(y.Attrs)
	})
}
