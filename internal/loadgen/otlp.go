package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	"go.opentelemetry.io/otel/trace"
)

// SendersConfig sizes a set of OTLP senders.
type SendersConfig struct {
	// Senders is the number of independent SDK meter providers (each its
	// own service.instance.id).
	Senders int
	// Endpoint is the receiver's OTLP/HTTP host:port.
	Endpoint string
	// Routes per sender: one http.server.request.duration series each.
	Routes int
	// Interval between the SDK's exports.
	Interval time.Duration
	Seed     uint64
	// KeepValues keeps every recorded value (for exact quantiles).
	KeepValues bool
	// Delta exports with delta temporality (the SDK's
	// DeltaTemporalitySelector) instead of cumulative; the senders' ids
	// are then delta-sender-N instead of sender-N.
	Delta bool
}

// Senders are running OTel SDK meter providers exporting base-2
// exponential histograms and counters over OTLP/HTTP, cumulative or delta.
// Each export is retried (every 100 ms to 1 s) until it succeeds or the
// reader's export timeout passes; Acked and Resent account for what the
// receiver acknowledged.
type Senders struct {
	cfg       SendersConfig
	providers []*sdkmetric.MeterProvider
	hists     []metric.Float64Histogram
	counters  []metric.Int64Counter
	exporters []*ackExporter

	mu       sync.Mutex
	rng      *rand.Rand
	values   []float64
	recorded uint64
	errors   uint64
	jobs     uint64
}

// StartSenders builds cfg.Senders meter providers.
func StartSenders(ctx context.Context, cfg SendersConfig) (*Senders, error) {
	s := &Senders{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 2))}
	for i := range cfg.Senders {
		opts := []otlpmetrichttp.Option{otlpmetrichttp.WithEndpoint(cfg.Endpoint), otlpmetrichttp.WithInsecure(),
			// ackExporter retries, so it sees every attempt.
			otlpmetrichttp.WithRetry(otlpmetrichttp.RetryConfig{Enabled: false})}
		id := fmt.Sprintf("sender-%d", i)
		if cfg.Delta {
			opts = append(opts, otlpmetrichttp.WithTemporalitySelector(sdkmetric.DeltaTemporalitySelector))
			id = "delta-" + id
		}
		inner, err := otlpmetrichttp.New(ctx, opts...)
		if err != nil {
			s.Shutdown(ctx)
			return nil, fmt.Errorf("building OTLP exporter %d: %w", i, err)
		}
		exp := &ackExporter{Exporter: inner, delta: cfg.Delta}
		s.exporters = append(s.exporters, exp)
		view := sdkmetric.NewView(sdkmetric.Instrument{Name: "http.server.request.duration"},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationBase2ExponentialHistogram{MaxSize: 160, MaxScale: 20}})
		res := resource.NewSchemaless(attribute.String("service.name", "loadgen"),
			attribute.String("service.instance.id", id))
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithResource(res), sdkmetric.WithView(view),
			sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(cfg.Interval))))
		m := mp.Meter("loadgen")
		h, err := m.Float64Histogram("http.server.request.duration", metric.WithUnit("s"))
		if err != nil {
			return nil, err
		}
		c, err := m.Int64Counter("loadgen.jobs", metric.WithUnit("{job}"))
		if err != nil {
			return nil, err
		}
		s.providers = append(s.providers, mp)
		s.hists = append(s.hists, h)
		s.counters = append(s.counters, c)
	}
	return s, nil
}

// Step records n latencies per route per sender (1 in 20 a 500, all inside
// a sampled span so they can become exemplars) and adds 1 job per route.
func (s *Senders) Step(ctx context.Context, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, h := range s.hists {
		for r := range s.cfg.Routes {
			ok := metric.WithAttributeSet(attribute.NewSet(attribute.String("http.route", route(r)),
				attribute.Int("http.response.status_code", 200)))
			bad := metric.WithAttributeSet(attribute.NewSet(attribute.String("http.route", route(r)),
				attribute.Int("http.response.status_code", 500)))
			for range n {
				v := math.Exp(s.rng.NormFloat64()*0.6 - 2.3)
				if s.cfg.KeepValues {
					s.values = append(s.values, v)
				}
				s.recorded++
				opt := ok
				if s.recorded%20 == 0 {
					opt = bad
					s.errors++
				}
				h.Record(s.spanCtx(ctx), v, opt)
			}
			s.counters[i].Add(ctx, 1, metric.WithAttributes(attribute.String("http.route", route(r))))
			s.jobs++
		}
	}
}

func (s *Senders) spanCtx(ctx context.Context) context.Context {
	var tid trace.TraceID
	var sid trace.SpanID
	for i := range tid {
		tid[i] = byte(s.rng.Uint32())
	}
	for i := range sid {
		sid[i] = byte(s.rng.Uint32())
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled})
	return trace.ContextWithSpanContext(ctx, sc)
}

// Totals returns the observations (and the 500s among them) and the jobs
// added so far.
func (s *Senders) Totals() (observations, errs, jobs uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recorded, s.errors, s.jobs
}

// Acked returns the http.server.request.duration observations the receiver
// has acknowledged: for delta senders the sum of every acknowledged
// export's counts, for cumulative ones the counts of the last acknowledged
// export (so what the receiver must hold if it loses nothing it accepted).
func (s *Senders) Acked() uint64 {
	var n uint64
	for _, e := range s.exporters {
		a, _ := e.counts()
		n += a
	}
	return n
}

// Resent returns the observations in acknowledged exports of which an
// earlier attempt failed after the connection was made (a reset, a
// timeout, an error status): the receiver may have taken that attempt in
// too, so a delta receiver may hold them twice. Attempts refused at connect
// are not counted: they never reached the receiver.
func (s *Senders) Resent() uint64 {
	var n uint64
	for _, e := range s.exporters {
		_, r := e.counts()
		n += r
	}
	return n
}

// Values returns a copy of every recorded value (KeepValues).
func (s *Senders) Values() []float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.values)
}

// Flush exports what every provider holds now.
func (s *Senders) Flush(ctx context.Context) error {
	var errs []error
	for _, mp := range s.providers {
		errs = append(errs, mp.ForceFlush(ctx))
	}
	return errors.Join(errs...)
}

// Shutdown flushes and stops every provider.
func (s *Senders) Shutdown(ctx context.Context) error {
	var errs []error
	for _, mp := range s.providers {
		errs = append(errs, mp.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// ackExporter retries its exporter's failed exports and counts what the
// receiver acknowledged.
type ackExporter struct {
	sdkmetric.Exporter
	delta bool

	mu     sync.Mutex
	acked  uint64
	resent uint64
}

func (e *ackExporter) counts() (acked, resent uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.acked, e.resent
}

// Export implements sdkmetric.Exporter: it retries until the export
// succeeds or ctx (the reader's export timeout) ends.
func (e *ackExporter) Export(ctx context.Context, rm *metricdata.ResourceMetrics) error {
	n := observations(rm)
	maybeTaken := false
	backoff := 100 * time.Millisecond
	for {
		err := e.Exporter.Export(ctx, rm)
		if err == nil {
			e.mu.Lock()
			if e.delta {
				e.acked += n
			} else {
				e.acked = n
			}
			if maybeTaken {
				e.resent += n
			}
			e.mu.Unlock()
			return nil
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			maybeTaken = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("exporting after retries: %w (last: %w)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// observations adds the counts of the http.server.request.duration points
// in rm.
func observations(rm *metricdata.ResourceMetrics) uint64 {
	var n uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.ExponentialHistogram[float64]); ok && m.Name == "http.server.request.duration" {
				for _, dp := range h.DataPoints {
					n += dp.Count
				}
			}
		}
	}
	return n
}
