package exporters

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/internal/fake/fakeotlp"
	"github.com/sabakiio/sabaki/metric"
)

// sizeWindow is one window of 1,000 latency histogram series of one service
// (routes route-000 … route-999), each with 200 log-normal observations
// around 80 ms (σ = 0.8: scale 4, about 100 buckets from first to last) and one
// exemplar, like a busy API's per-route latency.
func sizeWindow(start time.Time, seed uint64) *metric.Window {
	r := rand.New(rand.NewPCG(seed, 99))
	res := metric.NewAttrs(map[string]string{"service.name": "web", "service.instance.id": "i-1", "cloud.region": "asia-northeast1"})
	w := &metric.Window{Start: start, Duration: time.Minute}
	for i := range 1000 {
		h := histogram.New(0, 0)
		for range 200 {
			h.Record(math.Exp(r.NormFloat64()*0.8 + math.Log(0.08)))
		}
		var tid [16]byte
		for j := range tid {
			tid[j] = byte(r.Uint32())
		}
		w.Series = append(w.Series, metric.Aggregate{
			Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram, Resource: res,
			Attrs:     metric.NewAttrs(map[string]string{"http.route": fmt.Sprintf("/api/v1/route-%03d", i), "http.request.method": "GET"}),
			Hist:      h,
			Exemplars: []metric.Exemplar{{TraceID: tid, SpanID: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, Value: h.Max(), Time: start.Add(30 * time.Second)}},
		})
	}
	return w
}

// TestExportSizes measures the bytes one window of 1,000 histogram series
// costs on the wire: OTLP (gRPC and HTTP, gzip and none, delta) as received
// by the fake, and remote write (snappy) for the first window (which also
// carries a zero before each series' first total) and for the
// tenth (cumulative histograms hold the buckets of all windows so far).
// Run with -v to see the figures; the bounds only catch regressions.
func TestExportSizes(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	buckets, scale := 0, int32(0)
	for _, a := range sizeWindow(t0, 1).Series {
		buckets += len(a.Hist.Data().Positive.Counts)
		scale = a.Hist.Scale()
	}
	t.Logf("workload: 1,000 series, scale %d, %.1f buckets per series on average (dense OTLP range)", scale, float64(buckets)/1000)
	for _, tc := range []struct{ protocol, compression string }{
		{OTLPProtocolGRPC, "gzip"}, {OTLPProtocolGRPC, "none"}, {OTLPProtocolHTTP, "gzip"}, {OTLPProtocolHTTP, "none"},
	} {
		fake := fakeotlp.Start(t, fakeotlp.Options{})
		e, _ := otlpTestExporter(t, func(c *OTLPConfig) {
			c.Protocol, c.Compression, c.Headers = tc.protocol, tc.compression, nil
			c.Endpoint = fake.GRPCAddr
			if tc.protocol == OTLPProtocolHTTP {
				c.Endpoint = fake.HTTPURL
			}
		})
		if err := e.Export(context.Background(), sizeWindow(t0, 1)); err != nil {
			t.Fatal(err)
		}
		n := fake.WireBytes(0)
		t.Logf("OTLP %-13s %-4s: %7d bytes per window of 1,000 histogram series (%.0f B/series)", tc.protocol, tc.compression, n, float64(n)/1000)
		if n <= 0 || n > 1000*1000 {
			t.Errorf("OTLP %s %s: %d bytes", tc.protocol, tc.compression, n)
		}
	}

	f := startRWFake(t)
	var ws []*metric.Window
	for i := range 10 {
		ws = append(ws, sizeWindow(t0.Add(time.Duration(i)*time.Minute), uint64(i+1)))
	}
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	e, _ := rwTestExporter(t, f.srv.URL, func(c *RemoteWriteConfig) { c.MaxSamplesPerSend = 5000 }) // one request per window
	for _, w := range ws {
		if err := e.Export(context.Background(), w); err != nil {
			t.Fatal(err)
		}
	}
	// The state the exporter keeps: the cumulative totals (cumulator) of
	// 1,000 histogram series after 10 windows.
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("series-%04d", i)
	}
	before := heap()
	c := newCumulator(6 * time.Minute)
	for _, w := range ws {
		c.begin(w)
		for i := range w.Series {
			c.add(keys[i], w, 0, w.Series[i].Hist)
		}
	}
	state := int64(heap()) - int64(before)
	runtime.KeepAlive(c)
	runtime.KeepAlive(ws)
	if state > 8<<10*1000 {
		t.Errorf("cumulative state %d bytes for 1,000 series, want < 8 KiB per series", state)
	}
	t.Logf("remote write state after 10 windows (max_revision_age 6m: 7 windows kept per series + totals): %d bytes, %.0f B/series", state, float64(state)/1000)
	f.mu.Lock()
	sizes := append([]int(nil), f.sizes...)
	f.mu.Unlock()
	if len(sizes) != 10 {
		t.Fatalf("remote write: %d requests for 10 windows, want one each", len(sizes))
	}
	for _, i := range []int{0, 9} {
		t.Logf("remote write (snappy), window %2d: %7d bytes per window of 1,000 histogram series (%.0f B/series)", i+1, sizes[i], float64(sizes[i])/1000)
		if sizes[i] <= 0 || sizes[i] > 1000*1000 {
			t.Errorf("remote write window %d: %d bytes", i+1, sizes[i])
		}
	}
}
