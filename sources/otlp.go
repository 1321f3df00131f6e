package sources

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	collectormetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	_ "google.golang.org/grpc/encoding/gzip" // accept gzip-compressed gRPC requests (otlpmetricgrpc.WithCompressor("gzip"))
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

// OTLPConfig configures the OTLP metrics receiver (type "otlp").
type OTLPConfig struct {
	Common `yaml:",inline"`
	// GRPCListen and HTTPListen are the listen addresses of the gRPC
	// (MetricsService/Export) and HTTP (POST /v1/metrics) endpoints; an empty
	// address disables that endpoint. Both default to loopback.
	GRPCListen string `yaml:"grpc_listen"`
	HTTPListen string `yaml:"http_listen"`
	// MaxRequestBytes caps one request, compressed and uncompressed (HTTP 413,
	// gRPC RESOURCE_EXHAUSTED).
	MaxRequestBytes config.Bytes `yaml:"max_request_bytes"`
	// MaxSeriesPerRequest caps the data points taken from one request; the
	// rest are rejected through OTLP partial success (rejected_data_points).
	MaxSeriesPerRequest int `yaml:"max_series_per_request"`
	// MaxAttributeLength caps attribute keys and values (bytes); a data point
	// with a longer one is rejected through partial success.
	MaxAttributeLength int `yaml:"max_attribute_length"`
	// DropExemplarAttributes drops exemplars' filtered attributes (keeping
	// trace ID, span ID, value and time). Attribute rules do not reach
	// exemplar attributes, so a service that may record request content in
	// measurement attributes (GenAI prompts) should set it.
	DropExemplarAttributes bool `yaml:"drop_exemplar_attributes"`
	// RetryAfter is what the receiver asks clients to wait when the pipeline
	// is full (gRPC RetryInfo, HTTP Retry-After).
	RetryAfter config.Duration `yaml:"retry_after"`
	TLS        OTLPTLS         `yaml:"tls"`
	// BearerToken, when set, is required as "Authorization: Bearer <token>"
	// (gRPC metadata or HTTP header).
	BearerToken string `yaml:"bearer_token"`
}

// OTLPTLS turns on TLS for both listeners.
type OTLPTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// DefaultOTLPConfig returns the defaults: loopback listeners on the standard
// ports, 4 MiB per request, 20,000 points per request, 4 KiB attributes.
func DefaultOTLPConfig() OTLPConfig {
	return OTLPConfig{
		Common:              Common{Type: "otlp"},
		GRPCListen:          "127.0.0.1:4317",
		HTTPListen:          "127.0.0.1:4318",
		MaxRequestBytes:     4 << 20,
		MaxSeriesPerRequest: 20000,
		MaxAttributeLength:  4096,
		RetryAfter:          config.Duration(5 * time.Second),
	}
}

// Validate checks the config; problems name the offending field.
func (c *OTLPConfig) Validate() error {
	var errs []error
	if c.GRPCListen == "" && c.HTTPListen == "" {
		errs = append(errs, config.Field("grpc_listen", "grpc_listen and http_listen are both empty: nothing would listen"))
	}
	for _, f := range []struct{ key, addr string }{{"grpc_listen", c.GRPCListen}, {"http_listen", c.HTTPListen}} {
		if f.addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(f.addr); err != nil {
			errs = append(errs, config.Field(f.key, "must be host:port: %v", err))
		}
	}
	if c.GRPCListen != "" && c.GRPCListen == c.HTTPListen && !strings.HasSuffix(c.GRPCListen, ":0") {
		errs = append(errs, config.Field("http_listen", "must differ from grpc_listen"))
	}
	if c.MaxRequestBytes <= 0 {
		errs = append(errs, config.Field("max_request_bytes", "must be positive"))
	} else if c.MaxRequestBytes > math.MaxInt32 {
		errs = append(errs, config.Field("max_request_bytes", "must be below 2GiB"))
	}
	if c.MaxSeriesPerRequest <= 0 {
		errs = append(errs, config.Field("max_series_per_request", "must be positive"))
	}
	if c.MaxAttributeLength <= 0 {
		errs = append(errs, config.Field("max_attribute_length", "must be positive"))
	}
	if c.RetryAfter <= 0 {
		errs = append(errs, config.Field("retry_after", "must be positive"))
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		errs = append(errs, config.Field("tls", "cert_file and key_file must be set together"))
	}
	return errors.Join(errs...)
}

// OTLP receives OTLP metrics over gRPC and HTTP and hands them to the sink.
//
// Response semantics follow the OTLP specification: data points that cannot
// be taken (over max_series_per_request, an attribute over
// max_attribute_length, an invalid point) are reported as partial success
// with their count while the rest are accepted; when the sink answers
// metric.ErrFull the whole request is refused with gRPC RESOURCE_EXHAUSTED
// plus RetryInfo, or HTTP 429 plus Retry-After, so the SDK retries it later
// and nothing is lost; a malformed request gets InvalidArgument / 400, an
// oversized one RESOURCE_EXHAUSTED / 413. One request is handed to the sink
// in one Consume call, so it is accepted or refused as a whole.
//
// Mapping: monotonic sums become Counters (delta or cumulative as sent),
// non-monotonic sums and gauges become Gauges, histograms and exponential
// histograms become Histograms (an exponential histogram above max scale is
// downscaled), summaries become one Gauge per quantile (attribute
// "quantile") plus <name>_sum and <name>_count Counters. Names are kept as
// sent (http.server.request.duration). Resource attributes go to
// Series.Resource; the scope's name and version become the point attributes
// otel.scope.name and otel.scope.version; non-string attribute values are
// stringified (ints decimal, bools true/false, doubles shortest form, bytes
// base64, arrays and maps as JSON). Points flagged "no recorded value"
// (OTLP's staleness marker) are skipped.
type OTLP struct {
	cfg  OTLPConfig
	name string
	log  *slog.Logger
	m    *otlpMetrics
	now  func() time.Time

	exemplars otlpExemplarMemo

	mu       sync.Mutex
	sink     metric.Sink
	started  bool
	grpcSrv  *grpc.Server
	httpSrv  *http.Server
	grpcAddr net.Addr
	httpAddr net.Addr
	done     sync.WaitGroup
}

var _ PushSource = (*OTLP)(nil)

// NewOTLP builds the receiver; it binds nothing until Start.
func NewOTLP(cfg OTLPConfig, set Settings) (*OTLP, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("otlp source: %w", err)
	}
	logger := set.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &OTLP{
		cfg:  cfg,
		name: cmp.Or(cfg.Name, "otlp"),
		log:  logger,
		m:    newOTLPMetrics(set.Registerer),
		now:  time.Now,
	}, nil
}

// Name returns the configured source name.
func (r *OTLP) Name() string { return r.name }

// GRPCAddr returns the bound gRPC address (useful with port 0), or nil.
func (r *OTLP) GRPCAddr() net.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.grpcAddr
}

// HTTPAddr returns the bound HTTP address (useful with port 0), or nil.
func (r *OTLP) HTTPAddr() net.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.httpAddr
}

// Start binds the configured listeners and serves until Shutdown.
func (r *OTLP) Start(_ context.Context, sink metric.Sink) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return fmt.Errorf("otlp source %q: already started", r.name)
	}
	var tlsCfg *tls.Config
	if r.cfg.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(r.cfg.TLS.CertFile, r.cfg.TLS.KeyFile)
		if err != nil {
			return fmt.Errorf("otlp source %q: load tls.cert_file/key_file: %w", r.name, err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	var grpcLn, httpLn net.Listener
	var err error
	if r.cfg.GRPCListen != "" {
		if grpcLn, err = net.Listen("tcp", r.cfg.GRPCListen); err != nil {
			return fmt.Errorf("otlp source %q: grpc listen %s: %w", r.name, r.cfg.GRPCListen, err)
		}
		r.warnExposed("grpc_listen", grpcLn.Addr(), tlsCfg)
	}
	if r.cfg.HTTPListen != "" {
		if httpLn, err = net.Listen("tcp", r.cfg.HTTPListen); err != nil {
			if grpcLn != nil {
				grpcLn.Close()
			}
			return fmt.Errorf("otlp source %q: http listen %s: %w", r.name, r.cfg.HTTPListen, err)
		}
		r.warnExposed("http_listen", httpLn.Addr(), tlsCfg)
	}
	r.sink, r.started = sink, true
	if grpcLn != nil {
		opts := []grpc.ServerOption{
			grpc.MaxRecvMsgSize(int(r.cfg.MaxRequestBytes)),
			grpc.UnaryInterceptor(r.grpcAuth),
			grpc.StatsHandler(otlpGRPCStats{r: r}),
		}
		if tlsCfg != nil {
			opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
		}
		srv := grpc.NewServer(opts...)
		collectormetrics.RegisterMetricsServiceServer(srv, otlpGRPC{r: r})
		r.grpcSrv, r.grpcAddr = srv, grpcLn.Addr()
		r.done.Go(func() {
			if err := srv.Serve(grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
				r.log.Error("otlp grpc server stopped", "err", err)
			}
		})
	}
	if httpLn != nil {
		mux := http.NewServeMux()
		mux.HandleFunc("/v1/metrics", r.serveHTTP)
		srv := &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       time.Minute,
			IdleTimeout:       2 * time.Minute,
			TLSConfig:         tlsCfg,
			ErrorLog:          slog.NewLogLogger(r.log.Handler(), slog.LevelWarn),
		}
		r.httpSrv, r.httpAddr = srv, httpLn.Addr()
		r.done.Go(func() {
			var err error
			if tlsCfg != nil {
				err = srv.ServeTLS(httpLn, "", "")
			} else {
				err = srv.Serve(httpLn)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				r.log.Error("otlp http server stopped", "err", err)
			}
		})
	}
	r.log.Info("otlp receiver listening", "grpc", addrString(r.grpcAddr), "http", addrString(r.httpAddr))
	return nil
}

func addrString(a net.Addr) string {
	if a == nil {
		return "off"
	}
	return a.String()
}

func (r *OTLP) warnExposed(key string, a net.Addr, tlsCfg *tls.Config) {
	ta, ok := a.(*net.TCPAddr)
	if !ok || ta.IP.IsLoopback() || (tlsCfg != nil && r.cfg.BearerToken != "") {
		return
	}
	r.log.Warn("otlp receiver listens beyond loopback without both TLS and a bearer token",
		"key", key, "addr", a.String(), "tls", tlsCfg != nil, "bearer_token", r.cfg.BearerToken != "")
}

// Shutdown stops accepting requests and waits for in-flight ones until ctx
// expires; it is safe without Start and more than once.
func (r *OTLP) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	grpcSrv, httpSrv := r.grpcSrv, r.httpSrv
	r.grpcSrv, r.httpSrv = nil, nil
	r.mu.Unlock()
	var errs []error
	if httpSrv != nil {
		if err := httpSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("otlp http shutdown: %w", err))
			httpSrv.Close()
		}
	}
	if grpcSrv != nil {
		stopped := make(chan struct{})
		go func() { grpcSrv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-ctx.Done():
			grpcSrv.Stop()
			<-stopped
			errs = append(errs, fmt.Errorf("otlp grpc shutdown: %w", ctx.Err()))
		}
	}
	r.done.Wait()
	return errors.Join(errs...)
}

// errOTLPFull marks a refusal because the sink is full.
var errOTLPFull = errors.New("pipeline full, retry later")

// export converts a request and hands it to the sink. It returns the
// response (possibly with partial success) or an error wrapping
// errOTLPFull (retry later) or another sink error.
func (r *OTLP) export(ctx context.Context, req *collectormetrics.ExportMetricsServiceRequest, transport string) (*collectormetrics.ExportMetricsServiceResponse, error) {
	c := otlpConverter{maxPoints: r.cfg.MaxSeriesPerRequest, maxAttr: r.cfg.MaxAttributeLength, now: r.now(), dropExemplarAttrs: r.cfg.DropExemplarAttributes}
	c.convert(req)
	for reason, n := range c.rejected {
		r.m.rejected.WithLabelValues(r.name, reason).Add(float64(n))
	}
	resp := &collectormetrics.ExportMetricsServiceResponse{}
	if c.rejectedTotal > 0 {
		resp.PartialSuccess = &collectormetrics.ExportMetricsPartialSuccess{
			RejectedDataPoints: c.rejectedTotal,
			ErrorMessage:       c.firstErr,
		}
	}
	if len(c.series) > 0 {
		r.mu.Lock()
		sink := r.sink
		r.mu.Unlock()
		if sink == nil {
			return nil, fmt.Errorf("otlp source %q: not started", r.name)
		}
		ups := r.exemplars.filter(c.series)
		err := sink.Consume(ctx, metric.Batch{Source: r.name, Series: c.series})
		if err != nil {
			if errors.Is(err, metric.ErrFull) {
				r.m.requests.WithLabelValues(r.name, transport, "full").Inc()
				return nil, fmt.Errorf("%w: %w", errOTLPFull, err)
			}
			r.m.requests.WithLabelValues(r.name, transport, "error").Inc()
			return nil, fmt.Errorf("hand batch to pipeline: %w", err)
		}
		r.exemplars.commit(ups, c.now)
		r.m.received.WithLabelValues(r.name, transport).Add(float64(c.accepted))
	}
	outcome := "ok"
	if c.rejectedTotal > 0 {
		outcome = "partial"
	}
	r.m.requests.WithLabelValues(r.name, transport, outcome).Inc()
	return resp, nil
}

// otlpGRPC is the gRPC MetricsService.
type otlpGRPC struct {
	collectormetrics.UnimplementedMetricsServiceServer
	r *OTLP
}

func (g otlpGRPC) Export(ctx context.Context, req *collectormetrics.ExportMetricsServiceRequest) (*collectormetrics.ExportMetricsServiceResponse, error) {
	resp, err := g.r.export(ctx, req, "grpc")
	switch {
	case err == nil:
		return resp, nil
	case errors.Is(err, errOTLPFull):
		st := status.New(codes.ResourceExhausted, err.Error())
		if d, derr := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(g.r.cfg.RetryAfter.D())}); derr == nil {
			st = d
		}
		return nil, st.Err()
	default:
		return nil, status.Error(codes.Unavailable, err.Error())
	}
}

// otlpGRPCStats counts requests that gRPC refuses before the handler runs
// (a message over max_request_bytes), which the handler cannot see.
type otlpGRPCStats struct{ r *OTLP }

func (otlpGRPCStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (otlpGRPCStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (otlpGRPCStats) HandleConn(context.Context, stats.ConnStats)                       {}
func (h otlpGRPCStats) HandleRPC(_ context.Context, s stats.RPCStats) {
	if e, ok := s.(*stats.End); ok && e.Error != nil {
		if st := status.Convert(e.Error); st.Code() == codes.ResourceExhausted && strings.Contains(st.Message(), "larger than max") {
			h.r.m.requests.WithLabelValues(h.r.name, "grpc", "too_large").Inc()
		}
	}
}

func (r *OTLP) grpcAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if r.cfg.BearerToken != "" {
		md, _ := metadata.FromIncomingContext(ctx)
		var got string
		if v := md.Get("authorization"); len(v) > 0 {
			got = v[0]
		}
		if !r.tokenOK(got) {
			r.m.requests.WithLabelValues(r.name, "grpc", "unauthorized").Inc()
			return nil, status.Error(codes.Unauthenticated, "missing or wrong bearer token")
		}
	}
	return handler(ctx, req)
}

func (r *OTLP) tokenOK(header string) bool {
	tok, ok := strings.CutPrefix(header, "Bearer ")
	if !ok {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(tok), []byte(r.cfg.BearerToken)) == 1
}

const (
	otlpProtoType = "application/x-protobuf"
	otlpJSONType  = "application/json"
)

// serveHTTP implements OTLP/HTTP POST /v1/metrics (binary protobuf or JSON,
// optionally gzip-compressed).
func (r *OTLP) serveHTTP(w http.ResponseWriter, req *http.Request) {
	ct, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type"))
	isJSON := ct == otlpJSONType
	fail := func(code int, outcome, msg string) {
		r.m.requests.WithLabelValues(r.name, "http", outcome).Inc()
		writeOTLPStatus(w, isJSON, code, msg)
	}
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		fail(http.StatusMethodNotAllowed, "malformed", "only POST is supported")
		return
	}
	if r.cfg.BearerToken != "" && !r.tokenOK(req.Header.Get("Authorization")) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="sabaki"`)
		fail(http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token")
		return
	}
	if ct != otlpProtoType && ct != otlpJSONType {
		fail(http.StatusUnsupportedMediaType, "malformed", "content type must be application/x-protobuf or application/json")
		return
	}
	limit := int64(r.cfg.MaxRequestBytes)
	tooLarge := fmt.Sprintf("request exceeds max_request_bytes (%s)", appFormatBytes(limit))
	if req.ContentLength > limit {
		fail(http.StatusRequestEntityTooLarge, "too_large", tooLarge)
		return
	}
	var body io.Reader = http.MaxBytesReader(w, req.Body, limit)
	switch enc := strings.ToLower(req.Header.Get("Content-Encoding")); enc {
	case "", "identity":
	case "gzip":
		gz, err := gzip.NewReader(body)
		if err != nil {
			if otlpMaxBytes(err) {
				fail(http.StatusRequestEntityTooLarge, "too_large", tooLarge)
			} else {
				fail(http.StatusBadRequest, "malformed", "invalid gzip body: "+err.Error())
			}
			return
		}
		defer gz.Close()
		body = gz
	default:
		fail(http.StatusUnsupportedMediaType, "malformed", fmt.Sprintf("unsupported content encoding %q (use gzip)", enc))
		return
	}
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(body, limit+1))
	switch {
	case otlpMaxBytes(err) || n > limit:
		fail(http.StatusRequestEntityTooLarge, "too_large", tooLarge)
		return
	case err != nil:
		fail(http.StatusBadRequest, "malformed", "read body: "+err.Error())
		return
	}
	msg := &collectormetrics.ExportMetricsServiceRequest{}
	if isJSON {
		err = protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(buf.Bytes(), msg)
		otlpFixJSONIDs(msg)
	} else {
		err = proto.Unmarshal(buf.Bytes(), msg)
	}
	if err != nil {
		fail(http.StatusBadRequest, "malformed", "decode request: "+err.Error())
		return
	}
	resp, err := r.export(req.Context(), msg, "http")
	switch {
	case err == nil:
		writeOTLPMessage(w, isJSON, http.StatusOK, resp)
	case errors.Is(err, errOTLPFull):
		secs := int(math.Ceil(r.cfg.RetryAfter.D().Seconds()))
		w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
		writeOTLPStatus(w, isJSON, http.StatusTooManyRequests, err.Error())
	default:
		writeOTLPStatus(w, isJSON, http.StatusServiceUnavailable, err.Error())
	}
}

func otlpMaxBytes(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}

func writeOTLPStatus(w http.ResponseWriter, isJSON bool, code int, msg string) {
	writeOTLPMessage(w, isJSON, code, &spb.Status{Code: int32(otlpHTTPToGRPC(code)), Message: msg})
}

func otlpHTTPToGRPC(code int) codes.Code {
	switch code {
	case http.StatusTooManyRequests, http.StatusRequestEntityTooLarge:
		return codes.ResourceExhausted
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusServiceUnavailable:
		return codes.Unavailable
	}
	return codes.InvalidArgument
}

func writeOTLPMessage(w http.ResponseWriter, isJSON bool, code int, m proto.Message) {
	var (
		b   []byte
		err error
	)
	if isJSON {
		w.Header().Set("Content-Type", otlpJSONType)
		b, err = protojson.Marshal(m)
	} else {
		w.Header().Set("Content-Type", otlpProtoType)
		b, err = proto.Marshal(m)
	}
	if err != nil {
		code, b = http.StatusInternalServerError, nil
	}
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// otlpFixJSONIDs repairs trace and span IDs of a JSON request. OTLP/JSON writes
// them as hex strings, while protojson reads bytes fields as base64: a
// 32-character hex trace ID comes out as 24 bytes (16 hex characters of a
// span ID as 12). Hex digits are valid base64 and a multiple of four
// characters round-trips exactly, so re-encoding recovers the hex text.
func otlpFixJSONIDs(req *collectormetrics.ExportMetricsServiceRequest) {
	fix := func(b []byte, want int) []byte {
		if len(b) != want*3/2 {
			return b
		}
		out := make([]byte, want)
		if _, err := hex.Decode(out, []byte(base64.StdEncoding.EncodeToString(b))); err != nil {
			return b
		}
		return out
	}
	fixAll := func(es []*metricspb.Exemplar) {
		for _, e := range es {
			e.TraceId = fix(e.TraceId, 16)
			e.SpanId = fix(e.SpanId, 8)
		}
	}
	for _, rm := range req.GetResourceMetrics() {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				switch d := m.GetData().(type) {
				case *metricspb.Metric_Gauge:
					for _, p := range d.Gauge.GetDataPoints() {
						fixAll(p.GetExemplars())
					}
				case *metricspb.Metric_Sum:
					for _, p := range d.Sum.GetDataPoints() {
						fixAll(p.GetExemplars())
					}
				case *metricspb.Metric_Histogram:
					for _, p := range d.Histogram.GetDataPoints() {
						fixAll(p.GetExemplars())
					}
				case *metricspb.Metric_ExponentialHistogram:
					for _, p := range d.ExponentialHistogram.GetDataPoints() {
						fixAll(p.GetExemplars())
					}
				}
			}
		}
	}
}

// otlpMetrics are the receiver's self-metrics.
type otlpMetrics struct {
	received *prometheus.CounterVec
	rejected *prometheus.CounterVec
	requests *prometheus.CounterVec
}

func newOTLPMetrics(reg prometheus.Registerer) *otlpMetrics {
	return &otlpMetrics{
		received: appRegister(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_otlp_received_points_total", Help: "OTLP data points accepted and handed to the pipeline.",
		}, []string{"source", "transport"})),
		rejected: appRegister(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_otlp_rejected_points_total", Help: "OTLP data points rejected (reported to the client as partial success), by reason.",
		}, []string{"source", "reason"})),
		requests: appRegister(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_otlp_requests_total", Help: "OTLP export requests by outcome (ok, partial, full, too_large, malformed, unauthorized, error).",
		}, []string{"source", "transport", "outcome"})),
	}
}

// Rejection reasons, the values of sabaki_otlp_rejected_points_total{reason}.
const (
	rejectTooManySeries = "too_many_series"
	rejectAttrTooLong   = "attribute_too_long"
	rejectInvalid       = "invalid"
)

// otlpConverter turns one export request into series, enforcing the limits.
type otlpConverter struct {
	maxPoints         int
	maxAttr           int
	now               time.Time
	dropExemplarAttrs bool

	series        []metric.Series
	points        []metric.Point
	accepted      int
	rejected      map[string]int64
	rejectedTotal int64
	firstErr      string
}

func (c *otlpConverter) reject(reason string, n int, msg string) {
	if n <= 0 {
		return
	}
	if c.rejected == nil {
		c.rejected = map[string]int64{}
	}
	c.rejected[reason] += int64(n)
	c.rejectedTotal += int64(n)
	if c.firstErr == "" {
		c.firstErr = msg
	}
}

func (c *otlpConverter) convert(req *collectormetrics.ExportMetricsServiceRequest) {
	total := 0
	for _, rm := range req.GetResourceMetrics() {
		total += otlpResourcePoints(rm)
	}
	total = min(total, c.maxPoints)
	c.series = make([]metric.Series, 0, total)
	c.points = make([]metric.Point, 0, total)
	for _, rm := range req.GetResourceMetrics() {
		res, err := c.attrs(rm.GetResource().GetAttributes(), nil)
		if err != nil {
			c.reject(rejectAttrTooLong, otlpResourcePoints(rm), "resource "+err.Error())
			continue
		}
		for _, sm := range rm.GetScopeMetrics() {
			var scope []metric.Attr
			if s := sm.GetScope(); s != nil {
				if s.GetName() != "" {
					scope = append(scope, metric.Attr{Key: "otel.scope.name", Value: s.GetName()})
				}
				if s.GetVersion() != "" {
					scope = append(scope, metric.Attr{Key: "otel.scope.version", Value: s.GetVersion()})
				}
				if err := c.checkAttrs(scope); err != nil {
					c.reject(rejectAttrTooLong, otlpScopePoints(sm), "scope "+err.Error())
					continue
				}
			}
			for _, m := range sm.GetMetrics() {
				c.metric(res, scope, m)
			}
		}
	}
}

func (c *otlpConverter) checkAttrs(a []metric.Attr) error {
	for _, kv := range a {
		if len(kv.Key) > c.maxAttr || len(kv.Value) > c.maxAttr {
			return fmt.Errorf("attribute %.64q longer than max_attribute_length (%d)", kv.Key, c.maxAttr)
		}
	}
	return nil
}

// room reports whether one more point fits the per-request limit, and
// rejects the point when it does not.
func (c *otlpConverter) room() bool {
	if c.accepted < c.maxPoints {
		return true
	}
	c.reject(rejectTooManySeries, 1, fmt.Sprintf("request holds more than max_series_per_request (%d) data points", c.maxPoints))
	return false
}

func (c *otlpConverter) metric(res metric.Attrs, scope []metric.Attr, m *metricspb.Metric) {
	if m.GetName() == "" {
		c.reject(rejectInvalid, otlpMetricPoints(m), "metric without a name")
		return
	}
	base := metric.Series{Name: m.GetName(), Unit: m.GetUnit(), Description: m.GetDescription(), Resource: res}
	switch d := m.GetData().(type) {
	case *metricspb.Metric_Gauge:
		base.Kind = metric.Gauge
		for _, p := range d.Gauge.GetDataPoints() {
			c.number(base, scope, p)
		}
	case *metricspb.Metric_Sum:
		base.Kind = metric.Gauge
		if d.Sum.GetIsMonotonic() {
			t, ok := c.temporality(m, d.Sum.GetAggregationTemporality(), len(d.Sum.GetDataPoints()))
			if !ok {
				return
			}
			base.Kind, base.Temporality = metric.Counter, t
		}
		for _, p := range d.Sum.GetDataPoints() {
			c.number(base, scope, p)
		}
	case *metricspb.Metric_Histogram:
		t, ok := c.temporality(m, d.Histogram.GetAggregationTemporality(), len(d.Histogram.GetDataPoints()))
		if !ok {
			return
		}
		base.Kind, base.Temporality = metric.Histogram, t
		for _, p := range d.Histogram.GetDataPoints() {
			c.histogram(base, scope, p)
		}
	case *metricspb.Metric_ExponentialHistogram:
		t, ok := c.temporality(m, d.ExponentialHistogram.GetAggregationTemporality(), len(d.ExponentialHistogram.GetDataPoints()))
		if !ok {
			return
		}
		base.Kind, base.Temporality = metric.Histogram, t
		for _, p := range d.ExponentialHistogram.GetDataPoints() {
			c.expHistogram(base, scope, p)
		}
	case *metricspb.Metric_Summary:
		for _, p := range d.Summary.GetDataPoints() {
			c.summary(base, scope, p)
		}
	default:
		c.reject(rejectInvalid, 1, fmt.Sprintf("metric %q carries no data", m.GetName()))
	}
}

// temporality maps a metric's aggregation temporality; an unspecified one
// rejects the metric's n points.
func (c *otlpConverter) temporality(m *metricspb.Metric, agg metricspb.AggregationTemporality, n int) (metric.Temporality, bool) {
	t, ok := otlpTemporality(agg)
	if !ok {
		c.reject(rejectInvalid, n, fmt.Sprintf("metric %q: unspecified aggregation temporality", m.GetName()))
	}
	return t, ok
}

func otlpTemporality(t metricspb.AggregationTemporality) (metric.Temporality, bool) {
	switch t {
	case metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE:
		return metric.Cumulative, true
	case metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA:
		return metric.Delta, true
	}
	return 0, false
}

const otlpNoRecordedValue = uint32(metricspb.DataPointFlags_DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK)

// point prepares the common parts of a data point: the limit check, the
// attributes and the times. ok is false when the point was rejected or is a
// staleness marker.
func (c *otlpConverter) point(base metric.Series, scope []metric.Attr, attrs []*commonpb.KeyValue, flags uint32, start, ts uint64) (metric.Series, metric.Point, bool) {
	if flags&otlpNoRecordedValue != 0 {
		return base, metric.Point{}, false
	}
	if !c.room() {
		return base, metric.Point{}, false
	}
	a, err := c.attrs(attrs, scope)
	if err != nil {
		c.reject(rejectAttrTooLong, 1, fmt.Sprintf("metric %q: %v", base.Name, err))
		return base, metric.Point{}, false
	}
	base.Attrs = a
	p := metric.Point{Time: c.now}
	if ts != 0 {
		p.Time = time.Unix(0, int64(ts))
	}
	if start != 0 {
		p.Start = time.Unix(0, int64(start))
	}
	return base, p, true
}

func (c *otlpConverter) accept(s metric.Series, p metric.Point) {
	// One backing array for the request's points: one allocation instead
	// of one per series. Each series gets a capacity-limited window of it.
	c.points = append(c.points, p)
	n := len(c.points)
	s.Points = c.points[n-1 : n : n]
	c.series = append(c.series, s)
	c.accepted++
}

func (c *otlpConverter) number(base metric.Series, scope []metric.Attr, dp *metricspb.NumberDataPoint) {
	s, p, ok := c.point(base, scope, dp.GetAttributes(), dp.GetFlags(), dp.GetStartTimeUnixNano(), dp.GetTimeUnixNano())
	if !ok {
		return
	}
	switch v := dp.GetValue().(type) {
	case *metricspb.NumberDataPoint_AsDouble:
		p.Value = v.AsDouble
	case *metricspb.NumberDataPoint_AsInt:
		p.Value = float64(v.AsInt)
	default:
		c.reject(rejectInvalid, 1, fmt.Sprintf("metric %q: data point without a value", s.Name))
		return
	}
	if math.IsNaN(p.Value) || math.IsInf(p.Value, 0) {
		c.reject(rejectInvalid, 1, fmt.Sprintf("metric %q: value %v", s.Name, p.Value))
		return
	}
	if s.Kind == metric.Gauge {
		p.Start = time.Time{} // a gauge has no interval
	}
	p.Exemplars = c.exemplars(dp.GetExemplars())
	c.accept(s, p)
}

func (c *otlpConverter) histogram(base metric.Series, scope []metric.Attr, dp *metricspb.HistogramDataPoint) {
	s, p, ok := c.point(base, scope, dp.GetAttributes(), dp.GetFlags(), dp.GetStartTimeUnixNano(), dp.GetTimeUnixNano())
	if !ok {
		return
	}
	bounds, counts := dp.GetExplicitBounds(), dp.GetBucketCounts()
	if len(counts) == 0 {
		counts = []uint64{dp.GetCount()} // no buckets: everything in one (-Inf, +Inf) bucket
		bounds = nil
	}
	if len(counts) != len(bounds)+1 {
		c.reject(rejectInvalid, 1, fmt.Sprintf("metric %q: %d bucket counts for %d explicit bounds", s.Name, len(counts), len(bounds)))
		return
	}
	var total uint64
	for _, n := range counts {
		total += n
	}
	if total != dp.GetCount() {
		c.reject(rejectInvalid, 1, fmt.Sprintf("metric %q: bucket counts add up to %d, count is %d", s.Name, total, dp.GetCount()))
		return
	}
	h, err := histogram.FromExplicit(bounds, counts, dp.GetSum(), histogram.DefaultMaxSize, histogram.DefaultMaxScale)
	if err == nil && dp.Min != nil && dp.Max != nil && dp.GetCount() > 0 && dp.GetMin() <= dp.GetMax() {
		// The SDK's exact min and max bound the quantile estimates far
		// better than the explicit buckets can: carry them over.
		d := h.Data()
		d.Min, d.Max = dp.GetMin(), dp.GetMax()
		h, err = histogram.FromData(d, histogram.DefaultMaxSize, histogram.DefaultMaxScale)
	}
	if err != nil {
		c.reject(rejectInvalid, 1, fmt.Sprintf("metric %q: %v", s.Name, err))
		return
	}
	p.Hist = h
	p.Exemplars = c.exemplars(dp.GetExemplars())
	c.accept(s, p)
}

func (c *otlpConverter) expHistogram(base metric.Series, scope []metric.Attr, dp *metricspb.ExponentialHistogramDataPoint) {
	s, p, ok := c.point(base, scope, dp.GetAttributes(), dp.GetFlags(), dp.GetStartTimeUnixNano(), dp.GetTimeUnixNano())
	if !ok {
		return
	}
	d := histogram.Data{
		Scale:         dp.GetScale(),
		ZeroThreshold: dp.GetZeroThreshold(),
		ZeroCount:     dp.GetZeroCount(),
		Positive:      histogram.Buckets{Offset: dp.GetPositive().GetOffset(), Counts: dp.GetPositive().GetBucketCounts()},
		Negative:      histogram.Buckets{Offset: dp.GetNegative().GetOffset(), Counts: dp.GetNegative().GetBucketCounts()},
		Count:         dp.GetCount(),
		Sum:           dp.GetSum(),
		Min:           dp.GetMin(), // absent: 0 and 0, which FromData derives from the buckets
		Max:           dp.GetMax(),
	}
	if dp.Min == nil || dp.Max == nil {
		d.Min, d.Max = 0, 0
	}
	h, err := histogram.FromData(d, histogram.DefaultMaxSize, histogram.DefaultMaxScale)
	if err != nil {
		c.reject(rejectInvalid, 1, fmt.Sprintf("metric %q: %v", s.Name, err))
		return
	}
	p.Hist = h
	p.Exemplars = c.exemplars(dp.GetExemplars())
	c.accept(s, p)
}

func (c *otlpConverter) summary(base metric.Series, scope []metric.Attr, dp *metricspb.SummaryDataPoint) {
	s, p, ok := c.point(base, scope, dp.GetAttributes(), dp.GetFlags(), dp.GetStartTimeUnixNano(), dp.GetTimeUnixNano())
	if !ok {
		return
	}
	for _, q := range dp.GetQuantileValues() {
		qs := s
		qs.Kind = metric.Gauge
		qs.Attrs = append(s.Attrs.Clone(), metric.Attr{Key: "quantile", Value: strconv.FormatFloat(q.GetQuantile(), 'f', -1, 64)})
		qs.Attrs.Sort()
		qs.Points = []metric.Point{{Time: p.Time, Value: q.GetValue()}}
		c.series = append(c.series, qs)
	}
	s.Kind, s.Temporality = metric.Counter, metric.Cumulative
	sum := s
	sum.Name = s.Name + "_sum"
	sum.Points = []metric.Point{{Start: p.Start, Time: p.Time, Value: dp.GetSum()}}
	cnt := s
	cnt.Name = s.Name + "_count"
	cnt.Points = []metric.Point{{Start: p.Start, Time: p.Time, Value: float64(dp.GetCount())}}
	c.series = append(c.series, sum, cnt)
	c.accepted++
}

func (c *otlpConverter) exemplars(es []*metricspb.Exemplar) []metric.Exemplar {
	if len(es) == 0 {
		return nil
	}
	out := make([]metric.Exemplar, 0, len(es))
	for _, e := range es {
		x := metric.Exemplar{Time: time.Unix(0, int64(e.GetTimeUnixNano()))}
		switch v := e.GetValue().(type) {
		case *metricspb.Exemplar_AsDouble:
			x.Value = v.AsDouble
		case *metricspb.Exemplar_AsInt:
			x.Value = float64(v.AsInt)
		}
		if len(e.GetTraceId()) == 16 {
			copy(x.TraceID[:], e.GetTraceId())
		}
		if len(e.GetSpanId()) == 8 {
			copy(x.SpanID[:], e.GetSpanId())
		}
		if fa := e.GetFilteredAttributes(); len(fa) > 0 && !c.dropExemplarAttrs {
			a, err := c.attrs(fa, nil)
			if err == nil {
				x.Attrs = a
			}
		}
		out = append(out, x)
	}
	return out
}

// attrs stringifies OTLP attributes (plus extra ones, which win over a
// point attribute of the same key) into sorted Attrs, enforcing
// max_attribute_length. SDKs send attributes sorted by key, so the sort is
// usually skipped and the extra (scope) attributes are inserted in place.
func (c *otlpConverter) attrs(kvs []*commonpb.KeyValue, extra []metric.Attr) (metric.Attrs, error) {
	if len(kvs) == 0 && len(extra) == 0 {
		return nil, nil
	}
	out := make(metric.Attrs, 0, len(kvs)+len(extra))
	sorted := true
	for _, kv := range kvs {
		k, v := kv.GetKey(), otlpAnyString(kv.GetValue())
		if len(k) > c.maxAttr || len(v) > c.maxAttr {
			return nil, fmt.Errorf("attribute %.64q longer than max_attribute_length (%d)", k, c.maxAttr)
		}
		if n := len(out); n > 0 && out[n-1].Key >= k {
			sorted = false
		}
		out = append(out, metric.Attr{Key: k, Value: v})
	}
	if !sorted {
		out.Sort()
	}
	for _, e := range extra {
		i, found := slices.BinarySearchFunc(out, e.Key, func(a metric.Attr, k string) int { return strings.Compare(a.Key, k) })
		if found {
			out[i] = e
		} else {
			out = slices.Insert(out, i, e)
		}
	}
	return out, nil
}

var otlpSmallInts = func() (a [1024]string) {
	for i := range a {
		a[i] = strconv.Itoa(i)
	}
	return a
}()

// otlpAnyString formats an attribute value as a string.
func otlpAnyString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *commonpb.AnyValue_IntValue:
		if x.IntValue >= 0 && x.IntValue < int64(len(otlpSmallInts)) {
			return otlpSmallInts[x.IntValue] // status codes, ports: no allocation
		}
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	case *commonpb.AnyValue_BytesValue:
		return base64.StdEncoding.EncodeToString(x.BytesValue)
	case *commonpb.AnyValue_ArrayValue, *commonpb.AnyValue_KvlistValue:
		b, err := json.Marshal(otlpAnyJSON(v))
		if err != nil {
			return ""
		}
		return string(b)
	}
	return ""
}

func otlpAnyJSON(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		if math.IsNaN(x.DoubleValue) || math.IsInf(x.DoubleValue, 0) {
			return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
		}
		return x.DoubleValue
	case *commonpb.AnyValue_BytesValue:
		return base64.StdEncoding.EncodeToString(x.BytesValue)
	case *commonpb.AnyValue_ArrayValue:
		out := make([]any, 0, len(x.ArrayValue.GetValues()))
		for _, e := range x.ArrayValue.GetValues() {
			out = append(out, otlpAnyJSON(e))
		}
		return out
	case *commonpb.AnyValue_KvlistValue:
		out := make(map[string]any, len(x.KvlistValue.GetValues()))
		for _, kv := range x.KvlistValue.GetValues() {
			out[kv.GetKey()] = otlpAnyJSON(kv.GetValue())
		}
		return out
	}
	return nil
}

func otlpResourcePoints(rm *metricspb.ResourceMetrics) int {
	n := 0
	for _, sm := range rm.GetScopeMetrics() {
		n += otlpScopePoints(sm)
	}
	return n
}

func otlpScopePoints(sm *metricspb.ScopeMetrics) int {
	n := 0
	for _, m := range sm.GetMetrics() {
		n += otlpMetricPoints(m)
	}
	return n
}

func otlpMetricPoints(m *metricspb.Metric) int {
	switch d := m.GetData().(type) {
	case *metricspb.Metric_Gauge:
		return len(d.Gauge.GetDataPoints())
	case *metricspb.Metric_Sum:
		return len(d.Sum.GetDataPoints())
	case *metricspb.Metric_Histogram:
		return len(d.Histogram.GetDataPoints())
	case *metricspb.Metric_ExponentialHistogram:
		return len(d.ExponentialHistogram.GetDataPoints())
	case *metricspb.Metric_Summary:
		return len(d.Summary.GetDataPoints())
	}
	return 1
}
