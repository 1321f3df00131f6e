package exporters

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

// OTLP protocols.
const (
	OTLPProtocolGRPC = "grpc"
	OTLPProtocolHTTP = "http/protobuf"
)

// OTLPConfig configures the OTLP exporter (type "otlp"): closed windows sent
// as OTLP metrics to a collector, Mackerel's OTLP endpoint or any other
// OTLP backend.
type OTLPConfig struct {
	Common `yaml:",inline"`
	// Endpoint is host:port ("otlp.mackerelio.com:4317"), or a URL:
	// "https://collector:4318" (for http/protobuf the path defaults to
	// /v1/metrics), "http://127.0.0.1:4317" (plaintext, same as insecure).
	Endpoint string `yaml:"endpoint"`
	// Protocol is "grpc" (default) or "http/protobuf".
	Protocol string `yaml:"protocol"`
	// Insecure sends plaintext (no TLS), for a collector on loopback.
	Insecure bool `yaml:"insecure"`
	// Headers are sent with every request (gRPC metadata or HTTP headers),
	// e.g. Mackerel-Api-Key: ${MACKEREL_APIKEY}. Values are secrets: they
	// never appear in logs, errors or String.
	Headers map[string]Secret `yaml:"headers"`
	// TLS configures server verification and a client certificate.
	TLS TLSConfig `yaml:"tls"`
	// Compression is "gzip" (default) or "none".
	Compression string `yaml:"compression"`
	// Timeout bounds one request.
	Timeout config.Duration `yaml:"timeout"`
	// Temporality of counters and histograms: "delta" (default: each
	// window's own change, start = window start) or "cumulative" (running
	// totals since the series was first seen by this process, with that
	// stable start time; a restart appears as a reset).
	Temporality string `yaml:"temporality"`
	// MaxRevisionAge (cumulative only) is how long after its end a window
	// re-emitted with late points can still correct the totals; keep it at
	// least agent.lateness plus one window. Memory: one histogram per series
	// per window in that span.
	MaxRevisionAge config.Duration `yaml:"max_revision_age"`
	// MaxPointsPerRequest splits a resource's data points over several
	// requests (Mackerel refuses requests over 6 MB; a histogram point with
	// about 100 buckets and an exemplar is about 300 bytes before gzip).
	MaxPointsPerRequest int `yaml:"max_points_per_request"`
	// Outbox configures the durable queue the exporter sends from.
	Outbox OutboxConfig `yaml:"outbox"`
}

// DefaultOTLPConfig returns the defaults: gRPC with TLS, gzip, 10 s timeout,
// delta temporality.
func DefaultOTLPConfig() OTLPConfig {
	return OTLPConfig{
		Common:              Common{Type: "otlp", Name: "otlp"},
		Protocol:            OTLPProtocolGRPC,
		Compression:         "gzip",
		Timeout:             config.Duration(10 * time.Second),
		Temporality:         "delta",
		MaxRevisionAge:      config.Duration(6 * time.Minute),
		MaxPointsPerRequest: 10000,
		Outbox:              DefaultOutboxConfig(),
	}
}

// String describes the config without header values.
func (c OTLPConfig) String() string {
	return fmt.Sprintf("otlp{name=%s endpoint=%s protocol=%s insecure=%t headers=%s compression=%s timeout=%s temporality=%s}",
		c.Name, c.Endpoint, c.Protocol, c.Insecure, redactedHeaders(c.Headers), c.Compression, c.Timeout, c.Temporality)
}

// Validate implements config.Validator.
func (c *OTLPConfig) Validate() error {
	var errs []error
	if c.Endpoint == "" {
		errs = append(errs, config.Field("endpoint", "must be set (host:port or URL)"))
	} else if _, err := c.target(); err != nil {
		errs = append(errs, config.Field("endpoint", "%v", err))
	}
	if c.Protocol != OTLPProtocolGRPC && c.Protocol != OTLPProtocolHTTP {
		errs = append(errs, config.Field("protocol", "must be %s or %s, not %q", OTLPProtocolGRPC, OTLPProtocolHTTP, c.Protocol))
	}
	if c.Compression != "gzip" && c.Compression != "none" {
		errs = append(errs, config.Field("compression", "must be gzip or none, not %q", c.Compression))
	}
	if c.Timeout <= 0 {
		errs = append(errs, config.Field("timeout", "must be positive"))
	}
	if c.Temporality != "delta" && c.Temporality != "cumulative" {
		errs = append(errs, config.Field("temporality", "must be delta or cumulative, not %q", c.Temporality))
	}
	if c.MaxRevisionAge < 0 {
		errs = append(errs, config.Field("max_revision_age", "must not be negative"))
	}
	if c.MaxPointsPerRequest <= 0 {
		errs = append(errs, config.Field("max_points_per_request", "must be positive"))
	}
	if c.Insecure && !c.TLS.IsZero() {
		errs = append(errs, config.Field("tls", "cannot be combined with insecure: true"))
	}
	errs = append(errs, validateHeaders("headers", c.Headers), config.Join("tls", c.TLS.Validate()), config.Join("outbox", c.Outbox.Validate()))
	return errors.Join(errs...)
}

// otlpTarget is the parsed endpoint.
type otlpTarget struct {
	hostport  string
	path      string // http/protobuf only
	plaintext bool
}

func (c *OTLPConfig) target() (otlpTarget, error) {
	t := otlpTarget{hostport: c.Endpoint, plaintext: c.Insecure}
	if strings.Contains(c.Endpoint, "://") {
		u, err := url.Parse(c.Endpoint)
		if err != nil {
			return t, err
		}
		switch u.Scheme {
		case "http":
			t.plaintext = true
		case "https":
			if c.Insecure {
				return t, fmt.Errorf("https URL contradicts insecure: true")
			}
		default:
			return t, fmt.Errorf("scheme must be http or https, not %q", u.Scheme)
		}
		if u.User != nil || u.RawQuery != "" {
			return t, fmt.Errorf("must not carry credentials or a query; use headers")
		}
		t.hostport, t.path = u.Host, u.Path
		if c.Protocol == OTLPProtocolGRPC && t.path != "" && t.path != "/" {
			return t, fmt.Errorf("a gRPC endpoint has no path (got %q)", t.path)
		}
	}
	host, port, err := net.SplitHostPort(t.hostport)
	if err != nil || host == "" || port == "" {
		return t, fmt.Errorf("%q is not host:port", t.hostport)
	}
	if t.path == "" || t.path == "/" {
		t.path = "/v1/metrics"
	}
	return t, nil
}

// OTLP exports closed windows as OTLP metrics through the OpenTelemetry Go
// OTLP exporters (otlpmetricgrpc or otlpmetrichttp), one request per resource
// in the window (or more, see max_points_per_request). The library's own
// retry is off: the outbox retries.
//
// Mapping (per window [Start, End)):
//   - Counter → monotonic Sum; delta: the window's increase with StartTime =
//     window start; cumulative: the running total with a stable start.
//   - Gauge → Gauge with the window's last value at End. Min, max and mean
//     of the samples are not sent (they are in the store; keeping OTLP to the
//     one value a gauge means avoids inventing metric names).
//   - Histogram → ExponentialHistogram with scale, zero count and threshold,
//     sum, min, max, both bucket ranges, delta or cumulative like counters.
//   - Exemplars on every point: trace and span IDs, value, time, and their
//     filtered attributes.
//
// Resource attributes become the OTLP resource; series are grouped per
// resource and then per metric (name, unit, kind), at most
// max_points_per_request data points per request. In delta mode a window
// re-emitted with late points is sent whole again with the same StartTime
// and Time, so a backend that keeps the last point per timestamp (Mackerel)
// overwrites; backends that add up deltas should use cumulative.
//
// Errors: gRPC Unavailable, ResourceExhausted, DeadlineExceeded, Aborted,
// Canceled, OutOfRange, DataLoss and HTTP 5xx/429/408 are retryable (RetryInfo
// and Retry-After are passed on); other gRPC codes and HTTP 4xx are
// Permanent. ResourceExhausted is retried even without RetryInfo (OTLP says
// only with it) because it is how quotas answer, and the outbox is bounded.
// A partial success is logged, counted, and not retried (the server has
// rejected those points for good and kept the rest).
type OTLP struct {
	name   string
	cfg    OTLPConfig
	logger *slog.Logger
	exp    interface {
		Export(ctx context.Context, rm *metricdata.ResourceMetrics) error
		Shutdown(ctx context.Context) error
	}
	cum   *cumulator // nil in delta mode
	scope instrumentation.Scope

	// done remembers which resources of the window being retried were
	// already accepted, so a retry after a partial failure sends only the
	// rest.
	done struct {
		start    time.Time
		revision int
		keys     map[string]bool
	}

	rejected prometheus.Counter
	requests *prometheus.CounterVec

	shutdownOnce sync.Once
}

var _ Exporter = (*OTLP)(nil)

// NewOTLP builds the OTLP exporter. It does not connect: gRPC connects
// lazily, HTTP per request.
func NewOTLP(cfg OTLPConfig, set Settings) (*OTLP, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("otlp exporter config: %w", err)
	}
	if err := emptySecrets("headers", cfg.Headers); err != nil {
		return nil, fmt.Errorf("otlp exporter %q: %w", cfg.Name, err)
	}
	name := cfg.Name
	if name == "" {
		name = "otlp"
	}
	logger := set.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	e := &OTLP{
		name:   name,
		cfg:    cfg,
		logger: logger.With("exporter", name),
		scope:  instrumentation.Scope{Name: "github.com/sabakiio/sabaki"},
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name:        "sabaki_exporter_otlp_rejected_points_total",
			Help:        "Data points an OTLP backend rejected in a partial success response.",
			ConstLabels: prometheus.Labels{"exporter": name},
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "sabaki_exporter_otlp_requests_total",
			Help:        "OTLP export requests by outcome (ok, partial, retryable, permanent).",
			ConstLabels: prometheus.Labels{"exporter": name},
		}, []string{"outcome"}),
	}
	if cfg.Temporality == "cumulative" {
		e.cum = newCumulator(cfg.MaxRevisionAge.D())
	}
	tgt, _ := cfg.target()
	if !tgt.plaintext || len(cfg.Headers) == 0 {
		// fine
	} else if host, _, _ := net.SplitHostPort(tgt.hostport); !isLoopbackHost(host) {
		e.logger.Warn("otlp exporter sends headers over plaintext to a non-loopback endpoint", "endpoint", tgt.hostport)
	}
	var err error
	switch cfg.Protocol {
	case OTLPProtocolGRPC:
		e.exp, err = newOTLPGRPC(cfg, tgt)
	case OTLPProtocolHTTP:
		e.exp, err = newOTLPHTTP(cfg, tgt)
	}
	if err != nil {
		return nil, fmt.Errorf("otlp exporter %q: %w", name, err)
	}
	if e.rejected, err = remoteRegister(set.Registerer, e.rejected); err == nil {
		e.requests, err = remoteRegister(set.Registerer, e.requests)
	}
	if err != nil {
		_ = e.exp.Shutdown(context.Background())
		return nil, fmt.Errorf("otlp exporter %q: register self-metrics: %w", name, err)
	}
	return e, nil
}

func newOTLPGRPC(cfg OTLPConfig, tgt otlpTarget) (*otlpmetricgrpc.Exporter, error) {
	opts := []otlpmetricgrpc.Option{
		otlpmetricgrpc.WithEndpoint(tgt.hostport),
		otlpmetricgrpc.WithTimeout(cfg.Timeout.D()),
		otlpmetricgrpc.WithRetry(otlpmetricgrpc.RetryConfig{Enabled: false}),
		otlpmetricgrpc.WithDialOption(grpc.WithChainUnaryInterceptor(otlpGRPCInterceptor)),
	}
	// Headers are always set (an empty map too) so that OTEL_EXPORTER_OTLP_*
	// environment variables never add or override anything.
	opts = append(opts, otlpmetricgrpc.WithHeaders(revealHeaders(cfg.Headers)))
	if cfg.Compression == "gzip" {
		// "none" passes no option: the library has no name for it and
		// reports any other value through the global OTel error handler.
		opts = append(opts, otlpmetricgrpc.WithCompressor("gzip"))
	}
	if tgt.plaintext {
		opts = append(opts, otlpmetricgrpc.WithInsecure())
	} else {
		tc, err := cfg.TLS.Load()
		if err != nil {
			return nil, err
		}
		opts = append(opts, otlpmetricgrpc.WithTLSCredentials(credentials.NewTLS(tc)))
	}
	exp, err := otlpmetricgrpc.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("create otlp gRPC client: %w", err)
	}
	return exp, nil
}

func newOTLPHTTP(cfg OTLPConfig, tgt otlpTarget) (*otlpmetrichttp.Exporter, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = http.ProxyFromEnvironment
	if !tgt.plaintext {
		tc, err := cfg.TLS.Load()
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = tc
	}
	opts := []otlpmetrichttp.Option{
		otlpmetrichttp.WithEndpoint(tgt.hostport),
		otlpmetrichttp.WithURLPath(tgt.path),
		otlpmetrichttp.WithTimeout(cfg.Timeout.D()),
		otlpmetrichttp.WithRetry(otlpmetrichttp.RetryConfig{Enabled: false}),
		otlpmetrichttp.WithHeaders(revealHeaders(cfg.Headers)),
		otlpmetrichttp.WithHTTPClient(&http.Client{Transport: otlpRecorder{next: tr}, Timeout: cfg.Timeout.D()}),
	}
	if cfg.Compression == "gzip" {
		opts = append(opts, otlpmetrichttp.WithCompression(otlpmetrichttp.GzipCompression))
	} else {
		opts = append(opts, otlpmetrichttp.WithCompression(otlpmetrichttp.NoCompression))
	}
	if tgt.plaintext {
		opts = append(opts, otlpmetrichttp.WithInsecure())
	}
	exp, err := otlpmetrichttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("create otlp HTTP client: %w", err)
	}
	return exp, nil
}

// Name implements Exporter.
func (e *OTLP) Name() string { return e.name }

// Export implements Exporter: one OTLP request per resource in w (more when
// a resource has more than max_points_per_request points).
func (e *OTLP) Export(ctx context.Context, w *metric.Window) error {
	if !e.done.start.Equal(w.Start) || e.done.revision != w.Revision {
		e.done.start, e.done.revision, e.done.keys = w.Start, w.Revision, map[string]bool{}
	}
	parts := e.build(w)
	// A request refused for good does not stop the window's other requests
	// (other resources may be fine); the first refusal is returned at the
	// end, so the outbox drops the window only after the rest got through.
	var refused error
	for i := range parts {
		p := &parts[i]
		if e.done.keys[p.key] {
			continue
		}
		call := &otlpCall{}
		err := e.exp.Export(context.WithValue(ctx, otlpCallKey{}, call), &p.rm)
		if err = e.classify(call, err); err != nil {
			err = fmt.Errorf("otlp export window %s to %s (request %d of %d): %w",
				w.Start.UTC().Format(time.RFC3339), e.cfg.Endpoint, i+1, len(parts), err)
			if !IsPermanent(err) {
				return err
			}
			refused = cmp.Or(refused, err)
			e.done.keys[p.key] = true
			continue
		}
		e.done.keys[p.key] = true
		for _, c := range p.commits {
			e.cum.commit(c.key, c.t)
		}
	}
	return refused
}

// Shutdown implements Exporter; it closes the connection and is safe to
// call more than once.
func (e *OTLP) Shutdown(ctx context.Context) error {
	var err error
	// The library only reports ctx's error back (closing a connection does
	// not wait); nothing is buffered here, so an expired shutdown context
	// must not turn a clean close into an error.
	e.shutdownOnce.Do(func() { err = e.exp.Shutdown(context.WithoutCancel(ctx)) })
	return err
}

// otlpCall collects what the transport saw during one Export call: the
// library reports failures as opaque strings, so the gRPC interceptor and the
// HTTP round tripper record status, throttle hints and partial successes here.
type otlpCall struct {
	answered   bool
	grpcStatus *status.Status // gRPC: nil on OK
	httpStatus int            // HTTP: 0 when no response
	httpBody   []byte
	retryAfter time.Duration
	rejected   int64
	partialMsg string
}

type otlpCallKey struct{}

func otlpCallFrom(ctx context.Context) *otlpCall {
	c, _ := ctx.Value(otlpCallKey{}).(*otlpCall)
	return c
}

func otlpGRPCInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	call := otlpCallFrom(ctx)
	if call == nil {
		return err
	}
	call.answered = true
	if err != nil {
		st := status.Convert(err)
		call.grpcStatus = st
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				call.retryAfter = ri.GetRetryDelay().AsDuration()
			}
		}
		return err
	}
	if r, ok := reply.(*colmetricpb.ExportMetricsServiceResponse); ok && r.GetPartialSuccess() != nil {
		call.rejected = r.GetPartialSuccess().GetRejectedDataPoints()
		call.partialMsg = r.GetPartialSuccess().GetErrorMessage()
	}
	return nil
}

// otlpRecorder is the HTTP transport of the OTLP/HTTP client: it records the
// status, Retry-After and partial success of each response.
type otlpRecorder struct{ next http.RoundTripper }

func (r otlpRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	call := otlpCallFrom(req.Context())
	if err != nil || call == nil {
		return resp, err
	}
	call.answered = true
	call.httpStatus = resp.StatusCode
	call.retryAfter = remoteRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if rerr != nil {
		return resp, nil
	}
	if resp.StatusCode/100 == 2 {
		var msg colmetricpb.ExportMetricsServiceResponse
		if len(body) > 0 && strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-protobuf") && proto.Unmarshal(body, &msg) == nil && msg.GetPartialSuccess() != nil {
			call.rejected = msg.GetPartialSuccess().GetRejectedDataPoints()
			call.partialMsg = msg.GetPartialSuccess().GetErrorMessage()
		}
	} else {
		call.httpBody = body
	}
	return resp, nil
}

// classify turns the library's error plus what the transport recorded into
// nil (accepted, maybe partially), a retryable error or a Permanent one.
func (e *OTLP) classify(call *otlpCall, err error) error {
	var out error
	switch {
	case call.httpStatus != 0 && call.httpStatus/100 != 2:
		out = classifyHTTP(call.httpStatus, call.retryAfter, fmt.Errorf("HTTP %d: %s", call.httpStatus, bodySnippet(call.httpBody)))
	case call.grpcStatus != nil:
		gerr := fmt.Errorf("gRPC %s: %s", call.grpcStatus.Code(), call.grpcStatus.Message())
		if otlpRetryableCode(call.grpcStatus.Code()) {
			out = &remoteError{err: gerr, after: call.retryAfter}
		} else {
			out = Permanent(&remoteError{err: gerr})
		}
	case !call.answered && err != nil:
		// No answer: a network error, a timeout or a cancelled context.
		out = err
	}
	if out != nil {
		outcome := "retryable"
		if IsPermanent(out) {
			outcome = "permanent"
		}
		e.requests.WithLabelValues(outcome).Inc()
		return out
	}
	if err != nil {
		// The server accepted the request and the library still complained
		// (a response it could not read, a point it could not encode): what
		// was sent arrived, and retrying would not change the rest.
		e.logger.Warn("otlp backend accepted the request but the client reported an error", "err", err)
	}
	if call.rejected != 0 || call.partialMsg != "" {
		e.requests.WithLabelValues("partial").Inc()
		e.rejected.Add(float64(max(call.rejected, 0)))
		e.logger.Warn("otlp backend rejected part of the data", "rejected_points", call.rejected, "message", call.partialMsg)
		return nil
	}
	e.requests.WithLabelValues("ok").Inc()
	return nil
}

// otlpRetryableCode lists the gRPC codes worth retrying (OTLP spec,
// "Failures" table, plus ResourceExhausted: see OTLP).
func otlpRetryableCode(c codes.Code) bool {
	switch c {
	case codes.Canceled, codes.DeadlineExceeded, codes.Aborted, codes.OutOfRange,
		codes.Unavailable, codes.DataLoss, codes.ResourceExhausted:
		return true
	}
	return false
}

// otlpPart is one request: the data points of one resource (or part of
// them, see max_points_per_request), and in cumulative mode the points to
// commit once the request was accepted.
type otlpPart struct {
	key     string // resource identity and part number
	rm      metricdata.ResourceMetrics
	commits []otlpCommit
}

type otlpCommit struct {
	key string
	t   time.Time
}

// otlpResParts builds the requests of one resource.
type otlpResParts struct {
	rkey    string
	res     *resource.Resource
	parts   []otlpPart
	metrics map[otlpMetricKey]int // index in the current part's metrics
	points  int                   // points in the current part
}

type otlpMetricKey struct {
	name, unit string
	kind       metric.Kind
}

// metric returns the metric of a in the current part, starting a new part
// when the current one is full.
func (r *otlpResParts) metric(a *metric.Aggregate, scope instrumentation.Scope, maxPoints int) (*metricdata.Metrics, *otlpPart) {
	if len(r.parts) == 0 || r.points >= maxPoints {
		r.parts = append(r.parts, otlpPart{
			key: fmt.Sprintf("%s#%d", r.rkey, len(r.parts)),
			rm:  metricdata.ResourceMetrics{Resource: r.res, ScopeMetrics: []metricdata.ScopeMetrics{{Scope: scope}}},
		})
		r.metrics, r.points = map[otlpMetricKey]int{}, 0
	}
	part := &r.parts[len(r.parts)-1]
	sm := &part.rm.ScopeMetrics[0]
	mk := otlpMetricKey{a.Name, a.Unit, a.Kind}
	mi, ok := r.metrics[mk]
	if !ok {
		mi = len(sm.Metrics)
		r.metrics[mk] = mi
		sm.Metrics = append(sm.Metrics, metricdata.Metrics{Name: a.Name, Unit: a.Unit, Description: a.Description})
	}
	r.points++
	return &sm.Metrics[mi], part
}

// build converts w into requests: per resource (in the order resources
// first appear), at most max_points_per_request data points each, metrics in
// the order they first appear. The split is deterministic, so a retried
// window has the same parts.
func (e *OTLP) build(w *metric.Window) []otlpPart {
	tooLate := false
	if e.cum != nil {
		if tooLate = e.cum.begin(w); tooLate {
			e.logger.Warn("window revision arrived after max_revision_age; its counters and histograms are not re-sent",
				"window", w.Start, "revision", w.Revision)
		}
	}
	var order []*otlpResParts
	byRes := map[string]*otlpResParts{}
	start, end := w.Start, w.End()
	for i := range w.Series {
		a := &w.Series[i]
		if a.Kind == metric.Histogram && a.Hist == nil {
			continue
		}
		rkey := attrsKey(a.Resource)
		pStart, pTime, sum, hist := start, end, a.Sum, a.Hist
		temporality := metricdata.DeltaTemporality
		var commit *otlpCommit
		if e.cum != nil && a.Kind != metric.Gauge {
			if tooLate {
				continue
			}
			key := otlpSeriesKey(rkey, a)
			p := e.cum.add(key, w, a.Sum, a.Hist)
			pStart, pTime, sum, hist = p.Start, p.Time, p.Sum, p.Hist
			temporality = metricdata.CumulativeTemporality
			commit = &otlpCommit{key: key, t: p.Time}
		}
		var attrs attribute.Set
		switch a.Kind {
		case metric.Gauge, metric.Counter, metric.Histogram:
			attrs = attribute.NewSet(otelAttrs(a.Attrs)...)
		default:
			continue
		}
		rp := byRes[rkey]
		if rp == nil {
			rp = &otlpResParts{rkey: rkey, res: resource.NewSchemaless(otelAttrs(a.Resource)...)}
			byRes[rkey] = rp
			order = append(order, rp)
		}
		m, part := rp.metric(a, e.scope, e.cfg.MaxPointsPerRequest)
		if commit != nil {
			part.commits = append(part.commits, *commit)
		}
		ex := otelExemplars(a.Exemplars)
		switch a.Kind {
		case metric.Gauge:
			g, _ := m.Data.(metricdata.Gauge[float64])
			g.DataPoints = append(g.DataPoints, metricdata.DataPoint[float64]{Attributes: attrs, Time: end, Value: a.Last, Exemplars: ex})
			m.Data = g
		case metric.Counter:
			s, _ := m.Data.(metricdata.Sum[float64])
			s.Temporality, s.IsMonotonic = temporality, true
			s.DataPoints = append(s.DataPoints, metricdata.DataPoint[float64]{Attributes: attrs, StartTime: pStart, Time: pTime, Value: sum, Exemplars: ex})
			m.Data = s
		case metric.Histogram:
			h, _ := m.Data.(metricdata.ExponentialHistogram[float64])
			h.Temporality = temporality
			h.DataPoints = append(h.DataPoints, otelExpPoint(hist, attrs, pStart, pTime, ex))
			m.Data = h
		}
	}
	var parts []otlpPart
	for _, rp := range order {
		parts = append(parts, rp.parts...)
	}
	return parts
}

// otelExpPoint copies a histogram into an OTLP exponential histogram point.
func otelExpPoint(h *histogram.Histogram, attrs attribute.Set, start, t time.Time, ex []metricdata.Exemplar[float64]) metricdata.ExponentialHistogramDataPoint[float64] {
	d := h.Data()
	p := metricdata.ExponentialHistogramDataPoint[float64]{
		Attributes:     attrs,
		StartTime:      start,
		Time:           t,
		Count:          d.Count,
		Sum:            d.Sum,
		Scale:          d.Scale,
		ZeroCount:      d.ZeroCount,
		ZeroThreshold:  d.ZeroThreshold,
		PositiveBucket: metricdata.ExponentialBucket{Offset: d.Positive.Offset, Counts: d.Positive.Counts},
		NegativeBucket: metricdata.ExponentialBucket{Offset: d.Negative.Offset, Counts: d.Negative.Counts},
		Exemplars:      ex,
	}
	if d.Count > 0 {
		p.Min, p.Max = metricdata.NewExtrema(d.Min), metricdata.NewExtrema(d.Max)
	}
	return p
}

func otelAttrs(a metric.Attrs) []attribute.KeyValue {
	kv := make([]attribute.KeyValue, len(a))
	for i, x := range a {
		kv[i] = attribute.String(x.Key, x.Value)
	}
	return kv
}

func otelExemplars(es []metric.Exemplar) []metricdata.Exemplar[float64] {
	if len(es) == 0 {
		return nil
	}
	out := make([]metricdata.Exemplar[float64], len(es))
	for i := range es {
		e := &es[i]
		out[i] = metricdata.Exemplar[float64]{FilteredAttributes: otelAttrs(e.Attrs), Time: e.Time, Value: e.Value}
		if e.HasTrace() {
			out[i].TraceID = slices.Clone(e.TraceID[:])
		}
		if e.SpanID != [8]byte{} {
			out[i].SpanID = slices.Clone(e.SpanID[:])
		}
	}
	return out
}

// attrsKey encodes attributes as a map key (length-prefixed, unambiguous).
func attrsKey(a metric.Attrs) string {
	n := 0
	for _, kv := range a {
		n += len(kv.Key) + len(kv.Value) + 8
	}
	b := make([]byte, 0, n)
	for _, kv := range a {
		b = strconv.AppendInt(b, int64(len(kv.Key)), 10)
		b = append(append(b, ':'), kv.Key...)
		b = strconv.AppendInt(b, int64(len(kv.Value)), 10)
		b = append(append(b, ':'), kv.Value...)
	}
	return string(b)
}

// otlpSeriesKey identifies a series within a resource for the cumulator.
func otlpSeriesKey(rkey string, a *metric.Aggregate) string {
	return fmt.Sprintf("%d:%s|%s|%d|%s|%s", len(rkey), rkey, a.Name, a.Kind, a.Unit, attrsKey(a.Attrs))
}
