// Package loadgen generates metrics load for the end-to-end suite and the
// benchmark report: Prometheus targets (client_golang registries with
// counters, gauges and native histograms with exemplars, each served on its
// own loopback port) and OTLP senders (the OpenTelemetry SDK exporting over
// OTLP/HTTP). Every value it generates is counted, so a test can compare what
// went in with what came out.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NativeFactor is the native histograms' bucket factor: 1.1 gives schema 3
// (base 2^(1/8)), whose quantile error bound is (base−1)/(base+1) ≈ 4.3 %.
const NativeFactor = 1.1

// NativeSchema is the schema NativeFactor yields.
const NativeSchema = 3

// TargetsConfig sizes a set of Prometheus targets.
type TargetsConfig struct {
	// Targets is the number of HTTP endpoints, each with its own registry.
	Targets int
	// Counters and Gauges per target (series of one labelled family each).
	Counters, Gauges int
	// Histograms per target: native-only histograms with exemplars, named
	// loadgen_request_duration_seconds with a route label.
	Histograms int
	// Seed makes the generated values reproducible.
	Seed uint64
	// KeepValues keeps every observed histogram value (for exact quantiles).
	KeepValues bool
}

// Targets are running Prometheus targets.
type Targets struct {
	cfg     TargetsConfig
	targets []*target

	mu       sync.Mutex
	rng      *rand.Rand
	values   []float64
	observed uint64
	errors   uint64
	incr     float64
}

type target struct {
	srv      *http.Server
	url      string
	counters *prometheus.CounterVec
	gauges   *prometheus.GaugeVec
	hist     *prometheus.HistogramVec
	reg      *prometheus.Registry
	scrapes  atomic.Int64
	// byProm counts the scrapes by a Prometheus server (User-Agent
	// "Prometheus/..."), for side-by-side runs.
	byProm atomic.Int64
}

// StartTargets starts cfg.Targets HTTP servers on 127.0.0.1, each serving
// /metrics with protobuf (native histograms, exemplars) when asked.
func StartTargets(cfg TargetsConfig) (*Targets, error) {
	t := &Targets{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 1))}
	for i := range cfg.Targets {
		tg, err := startTarget(cfg, i)
		if err != nil {
			t.Close()
			return nil, err
		}
		t.targets = append(t.targets, tg)
	}
	return t, nil
}

func startTarget(cfg TargetsConfig, i int) (*target, error) {
	reg := prometheus.NewRegistry()
	tg := &target{
		counters: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "loadgen_events_total", Help: "Events."}, []string{"series"}),
		gauges:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "loadgen_level", Help: "Levels."}, []string{"series"}),
		hist: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "loadgen_request_duration_seconds", Help: "Request latency.",
			NativeHistogramBucketFactor:     NativeFactor,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMaxExemplars:     4,
			NativeHistogramZeroThreshold:    prometheus.DefNativeHistogramZeroThreshold,
			NativeHistogramMinResetDuration: 0,
		}, []string{"route", "code"}),
	}
	reg.MustRegister(tg.counters, tg.gauges, tg.hist)
	tg.reg = reg
	// Every series exists (at zero) from the start, so a scraper's first
	// scrape is a baseline of zeros.
	for j := range cfg.Counters {
		tg.counters.WithLabelValues(strconv.Itoa(j))
	}
	for j := range cfg.Gauges {
		tg.gauges.WithLabelValues(strconv.Itoa(j)).Set(float64(j))
	}
	for j := range cfg.Histograms {
		tg.hist.WithLabelValues(route(j), "200")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for target %d: %w", i, err)
	}
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if strings.HasPrefix(r.UserAgent(), "Prometheus/") {
			tg.byProm.Add(1)
			return
		}
		tg.scrapes.Add(1)
	})
	tg.srv = &http.Server{Handler: mux}
	tg.url = "http://" + ln.Addr().String() + "/metrics"
	go tg.srv.Serve(ln)
	return tg, nil
}

func route(j int) string { return "/api/r" + strconv.Itoa(j) }

// URLs returns the targets' scrape URLs.
func (t *Targets) URLs() []string {
	var out []string
	for _, tg := range t.targets {
		out = append(out, tg.url)
	}
	return out
}

// PrometheusScrapes returns how many scrapes by a Prometheus server every
// target answered, together; Scrapes does not count them.
func (t *Targets) PrometheusScrapes() int64 {
	var n int64
	for _, tg := range t.targets {
		n += tg.byProm.Load()
	}
	return n
}

// Series returns the number of series every target exposes now, together
// (a native histogram counts once, as a Prometheus sample does).
func (t *Targets) Series() int {
	n := 0
	for _, tg := range t.targets {
		mfs, err := tg.reg.Gather()
		if err != nil {
			continue
		}
		for _, mf := range mfs {
			n += len(mf.GetMetric())
		}
	}
	return n
}

// Scrapes returns, per target, how many scrapes it has answered completely
// (by anything but a Prometheus server).
func (t *Targets) Scrapes() []int64 {
	var out []int64
	for _, tg := range t.targets {
		out = append(out, tg.scrapes.Load())
	}
	return out
}

// MinScrapes is the smallest Scrapes value.
func (t *Targets) MinScrapes() int64 { return slices.Min(t.Scrapes()) }

// Step makes n observations on every histogram of every target (1 in 20
// with code 500 and an exemplar), adds 1 to every counter and moves every
// gauge. Latencies are log-normal around 100 ms.
func (t *Targets) Step(n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tg := range t.targets {
		for j := range t.cfg.Histograms {
			ok := tg.hist.WithLabelValues(route(j), "200")
			bad := tg.hist.WithLabelValues(route(j), "500")
			for range n {
				v := math.Exp(t.rng.NormFloat64()*0.6 - 2.3)
				if t.cfg.KeepValues {
					t.values = append(t.values, v)
				}
				t.observed++
				if t.observed%20 == 0 {
					t.errors++
					bad.(prometheus.ExemplarObserver).ObserveWithExemplar(v, prometheus.Labels{"trace_id": traceID(t.rng)})
					continue
				}
				ok.Observe(v)
			}
		}
		for j := range t.cfg.Counters {
			tg.counters.WithLabelValues(strconv.Itoa(j)).Inc()
		}
		for j := range t.cfg.Gauges {
			tg.gauges.WithLabelValues(strconv.Itoa(j)).Set(t.rng.Float64() * 100)
		}
	}
	t.incr += float64(len(t.targets) * t.cfg.Counters)
}

func traceID(r *rand.Rand) string {
	return fmt.Sprintf("%016x%016x", r.Uint64(), r.Uint64())
}

// Totals are what the targets have generated so far.
type Totals struct {
	// Observations over every histogram; Errors of them had code 500.
	Observations, Errors uint64
	// CounterIncrements is the sum of every counter.
	CounterIncrements float64
}

// Totals returns what was generated so far.
func (t *Targets) Totals() Totals {
	t.mu.Lock()
	defer t.mu.Unlock()
	return Totals{Observations: t.observed, Errors: t.errors, CounterIncrements: t.incr}
}

// Quantile returns the exact q-quantile (nearest rank) of every observed
// value; it needs KeepValues.
func (t *Targets) Quantile(q float64) float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return ExactQuantile(t.values, q)
}

// ExactQuantile is the nearest-rank q-quantile of vs (sorted in place).
func ExactQuantile(vs []float64, q float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	slices.Sort(vs)
	rank := int(math.Ceil(q*float64(len(vs)))) - 1
	return vs[max(rank, 0)]
}

// Close stops every target.
func (t *Targets) Close() error {
	var errs []error
	for _, tg := range t.targets {
		errs = append(errs, tg.srv.Shutdown(context.Background()))
	}
	return errors.Join(errs...)
}
