package sources

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/sabakiio/sabaki/metric"
)

func newBytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// benchExposition renders a 2,000-series exposition from a client_golang
// registry: 100 native histograms (factor 1.1, as the tests use), 900
// counters and 1,000 gauges, each with three labels.
func benchExposition(b testing.TB, format expfmt.Format) []byte {
	return promExposition(b, format, 100, 2000, 900, 1000)
}

// promExposition renders hists native histograms of obs observations each,
// and counters and gauges, each series with three labels.
func promExposition(b testing.TB, format expfmt.Format, hists, obs, counters, gauges int) []byte {
	reg := prometheus.NewRegistry()
	lat := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "http_server_request_duration_seconds", Help: "Latency.", NativeHistogramBucketFactor: 1.1,
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"route", "method", "code"})
	jobs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jobs_processed_total", Help: "Jobs."}, []string{"tenant", "queue", "region"})
	depth := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "queue_depth", Help: "Depth."}, []string{"tenant", "queue", "region"})
	reg.MustRegister(lat, jobs, depth)
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range hists {
		o := lat.WithLabelValues(fmt.Sprintf("/api/r%d", i/4), "GET", fmt.Sprint(200+i%4))
		for range obs {
			o.Observe(math.Exp(math.Log(0.05) + rng.NormFloat64()))
		}
	}
	for i := range counters {
		jobs.WithLabelValues(fmt.Sprintf("t%d", i%50), fmt.Sprintf("q%d", i), "asia-northeast1").Add(float64(i))
	}
	for i := range gauges {
		depth.WithLabelValues(fmt.Sprintf("t%d", i%50), fmt.Sprintf("q%d", i), "asia-northeast1").Set(float64(i))
	}
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, format)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			b.Fatal(err)
		}
	}
	if c, ok := enc.(expfmt.Closer); ok {
		_ = c.Close()
	}
	return buf.Bytes()
}

// BenchmarkPrometheusParse measures the scrape path per series, from the
// response body to the batch: decoding and conversion (native histograms
// through histogram.FromNative in the protobuf case; classic buckets
// through histogram.FromExplicit in the text case).
func BenchmarkPrometheusParse(b *testing.B) {
	for _, tc := range []struct {
		name   string
		format expfmt.Format
		ref    bool // through client_model's generated decoder, for comparison
	}{{"protobuf-native", expfmt.FmtProtoDelim, false}, {"protobuf-native-generated-decoder", expfmt.FmtProtoDelim, true}, {"text-classic", expfmt.FmtText, false}, {"openmetrics-classic", expfmt.FmtOpenMetrics_1_0_0, false}} {
		b.Run(tc.name, func(b *testing.B) {
			body := benchExposition(b, tc.format)
			res := metric.Attrs{{Key: "instance", Value: "127.0.0.1:3000"}, {Key: "job", Value: "app"}}
			at := time.Now()
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			m0 := mallocs()
			b.ResetTimer()
			// One converter per target, reused scrape after scrape as the
			// source does (its intern table and buffers carry over), and
			// the batch's series and arena reused from scrape to scrape.
			var arena promArena
			c := promConverter{resource: res, at: at, honorTimestamps: true, arena: &arena}
			var series []metric.Series
			for b.Loop() {
				var err error
				if tc.ref {
					series, err = promParseDTO(&c, body)
				} else {
					clear(series)
					arena.reset()
					series, err = c.parse(series[:0], body, tc.format)
				}
				if err != nil || len(series) != 2000 {
					b.Fatalf("%d series, %v", len(series), err)
				}
			}
			reportPerPoint(b, 2000, m0)
		})
	}
}

// BenchmarkPrometheusOrderByTarget measures putting a collection of 50
// targets × 2,100 series, converted in a shuffled order, back into target
// order (Collect does it after every collection).
func BenchmarkPrometheusOrderByTarget(b *testing.B) {
	const targets, per = 50, 2100
	rng := rand.New(rand.NewPCG(3, 4))
	conv := rng.Perm(targets)
	p := &Prometheus{series: make([]metric.Series, targets*per)}
	res := metric.NewAttrs(map[string]string{"job": "bench"})
	for i := range p.series {
		p.series[i] = metric.Series{Name: "m", Resource: res}
	}
	results := make([]promScrapeResult, targets)
	for b.Loop() {
		at := 0
		for _, i := range conv {
			results[i] = promScrapeResult{start: at, n: per}
			at += per
		}
		p.orderByTarget(results)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(targets*per), "ns/series")
}
