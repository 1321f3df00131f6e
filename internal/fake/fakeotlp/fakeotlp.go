// Package fakeotlp is an OTLP metrics receiver for tests: a plain gRPC
// MetricsService server and an OTLP/HTTP endpoint built from
// go.opentelemetry.io/proto/otlp, that records every request, enforces the
// data-model rules a real backend relies on, and answers with scripted
// failures (gRPC codes with RetryInfo, HTTP statuses with Retry-After,
// partial successes).
//
// Rules enforced (a violation answers InvalidArgument / 400 and is listed by
// Violations):
//   - a required header (Mackerel's OTLP endpoint wants Mackerel-Api-Key);
//   - every metric has a name and exactly one data kind; sums and histograms
//     have a temporality; delta points have StartTime < Time;
//   - an exponential histogram's count equals zero_count plus its bucket
//     counts, its scale is in [-10, 20], min <= max;
//   - exemplar trace IDs are 16 bytes and span IDs 8 bytes (or empty).
package fakeotlp

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Response scripts the answer to one request. The zero value is success.
type Response struct {
	// GRPCCode, if not OK, fails a gRPC request with this code and Message;
	// RetryDelay adds a RetryInfo detail.
	GRPCCode   codes.Code
	Message    string
	RetryDelay time.Duration
	// HTTPStatus, if set and not 2xx, fails an HTTP request; RetryAfter is
	// sent as the Retry-After header.
	HTTPStatus int
	RetryAfter string
	// Rejected and PartialMessage make a successful answer a partial success.
	Rejected       int64
	PartialMessage string
}

// Options configure the server.
type Options struct {
	// RequireHeader, when set, must be present (case-insensitive name) with
	// the value RequireValue, or the request fails with Unauthenticated/401.
	RequireHeader, RequireValue string
}

// Server is a running fake. Start it with Start; it stops at test cleanup.
type Server struct {
	// GRPCAddr is host:port of the gRPC MetricsService; HTTPURL the base
	// URL of the OTLP/HTTP endpoint (POST HTTPURL + "/v1/metrics").
	GRPCAddr string
	HTTPURL  string

	opts Options

	mu         sync.Mutex
	requests   []*colmetricpb.ExportMetricsServiceRequest
	headers    []map[string]string // lower-case names, per recorded request
	encodings  []string
	wire       []int
	script     []Response
	violations []string

	colmetricpb.UnimplementedMetricsServiceServer
}

// Start starts both listeners on loopback ports.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := &Server{opts: opts}

	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fakeotlp: listen: %v", err)
	}
	gs := grpc.NewServer(grpc.StatsHandler(compressionRecorder{}))
	colmetricpb.RegisterMetricsServiceServer(gs, s)
	go func() { _ = gs.Serve(gl) }()
	s.GRPCAddr = gl.Addr().String()

	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fakeotlp: listen: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/metrics", s.serveHTTP)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(hl) }()
	s.HTTPURL = "http://" + hl.Addr().String()

	t.Cleanup(func() {
		gs.Stop()
		_ = hs.Close()
	})
	return s
}

// Push appends scripted responses; each request consumes the first one.
func (s *Server) Push(r ...Response) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.script = append(s.script, r...)
}

// Requests returns the requests received so far (successful or not).
func (s *Server) Requests() []*colmetricpb.ExportMetricsServiceRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*colmetricpb.ExportMetricsServiceRequest(nil), s.requests...)
}

// Headers returns the headers (gRPC metadata) of request i, names lower-case.
func (s *Server) Headers(i int) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.headers[i]
}

// Encoding returns the Content-Encoding (HTTP) or grpc-encoding of request i.
func (s *Server) Encoding(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.encodings[i]
}

// WireBytes returns the size of request i as it travelled (compressed): the
// HTTP body, or the gRPC message with its 5-byte frame header.
func (s *Server) WireBytes(i int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.wire[i]
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// Violations returns the rule violations seen so far.
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.violations...)
}

// Metrics returns every metric of every recorded request, in order.
func (s *Server) Metrics() []*metricpb.Metric {
	var out []*metricpb.Metric
	for _, r := range s.Requests() {
		for _, rm := range r.GetResourceMetrics() {
			for _, sm := range rm.GetScopeMetrics() {
				out = append(out, sm.GetMetrics()...)
			}
		}
	}
	return out
}

// record stores the request and returns the scripted response and any rule
// violation.
func (s *Server) record(req *colmetricpb.ExportMetricsServiceRequest, hdr map[string]string, enc string, wire int) (Response, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, req)
	s.headers = append(s.headers, hdr)
	s.encodings = append(s.encodings, enc)
	s.wire = append(s.wire, wire)
	var r Response
	if len(s.script) > 0 {
		r, s.script = s.script[0], s.script[1:]
	}
	v := ""
	if s.opts.RequireHeader != "" && hdr[strings.ToLower(s.opts.RequireHeader)] != s.opts.RequireValue {
		v = "missing or wrong " + s.opts.RequireHeader
	} else if err := Check(req); err != nil {
		v = err.Error()
	}
	if v != "" {
		s.violations = append(s.violations, v)
	}
	return r, v
}

// Export implements the gRPC MetricsService.
func (s *Server) Export(ctx context.Context, req *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	hdr := map[string]string{}
	for k, v := range md {
		hdr[k] = strings.Join(v, ",")
	}
	var info rpcInfo
	if p, ok := ctx.Value(compressionKey{}).(*rpcInfo); ok {
		info = *p
	}
	r, violation := s.record(req, hdr, info.compression, info.wire)
	if violation != "" {
		if strings.HasPrefix(violation, "missing or wrong") {
			return nil, status.Error(codes.Unauthenticated, violation)
		}
		return nil, status.Error(codes.InvalidArgument, violation)
	}
	if r.GRPCCode != codes.OK {
		st := status.New(r.GRPCCode, r.Message)
		if r.RetryDelay > 0 {
			st, _ = st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(r.RetryDelay)})
		}
		return nil, st.Err()
	}
	return response(r), nil
}

// compressionRecorder is a gRPC stats handler that stores the compression
// of each incoming request in its context (gRPC hides grpc-encoding from the
// metadata).
type compressionRecorder struct{}

type compressionKey struct{}

type rpcInfo struct {
	compression string
	wire        int
}

func (compressionRecorder) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, compressionKey{}, new(rpcInfo))
}

func (compressionRecorder) HandleRPC(ctx context.Context, st stats.RPCStats) {
	p, ok := ctx.Value(compressionKey{}).(*rpcInfo)
	if !ok {
		return
	}
	switch st := st.(type) {
	case *stats.InHeader:
		p.compression = st.Compression
	case *stats.InPayload:
		p.wire = st.WireLength
	}
}

func (compressionRecorder) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (compressionRecorder) HandleConn(context.Context, stats.ConnStats) {}

func response(r Response) *colmetricpb.ExportMetricsServiceResponse {
	resp := &colmetricpb.ExportMetricsServiceResponse{}
	if r.Rejected != 0 || r.PartialMessage != "" {
		resp.PartialSuccess = &colmetricpb.ExportMetricsPartialSuccess{RejectedDataPoints: r.Rejected, ErrorMessage: r.PartialMessage}
	}
	return resp
}

func (s *Server) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		http.Error(w, "Content-Type must be application/x-protobuf, got "+ct, http.StatusUnsupportedMediaType)
		return
	}
	var body io.Reader
	enc := req.Header.Get("Content-Encoding")
	cr := &countingReader{r: req.Body}
	if enc == "gzip" {
		zr, err := gzip.NewReader(cr)
		if err != nil {
			http.Error(w, "bad gzip: "+err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	} else {
		body = cr
	}
	raw, err := io.ReadAll(io.LimitReader(body, 64<<20))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	var msg colmetricpb.ExportMetricsServiceRequest
	if err := proto.Unmarshal(raw, &msg); err != nil {
		http.Error(w, "bad protobuf: "+err.Error(), http.StatusBadRequest)
		return
	}
	hdr := map[string]string{}
	for k, v := range req.Header {
		hdr[strings.ToLower(k)] = strings.Join(v, ",")
	}
	r, violation := s.record(&msg, hdr, enc, cr.n)
	switch {
	case violation != "" && strings.HasPrefix(violation, "missing or wrong"):
		http.Error(w, violation, http.StatusUnauthorized)
		return
	case violation != "":
		http.Error(w, violation, http.StatusBadRequest)
		return
	case r.HTTPStatus != 0 && r.HTTPStatus/100 != 2:
		if r.RetryAfter != "" {
			w.Header().Set("Retry-After", r.RetryAfter)
		}
		http.Error(w, r.Message, r.HTTPStatus)
		return
	}
	out, _ := proto.Marshal(response(r))
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = io.Copy(w, bytes.NewReader(out))
}

// Check enforces the OTLP data-model rules listed in the package comment.
func Check(req *colmetricpb.ExportMetricsServiceRequest) error {
	for _, rm := range req.GetResourceMetrics() {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				if err := checkMetric(m); err != nil {
					return fmt.Errorf("metric %q: %w", m.GetName(), err)
				}
			}
		}
	}
	return nil
}

func checkMetric(m *metricpb.Metric) error {
	if m.GetName() == "" {
		return fmt.Errorf("empty name")
	}
	delta := func(t metricpb.AggregationTemporality, start, end uint64) error {
		switch t {
		case metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA:
			if start == 0 || start >= end {
				return fmt.Errorf("delta point needs start_time < time (got %d, %d)", start, end)
			}
		case metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE:
			if start == 0 || start > end {
				return fmt.Errorf("cumulative point needs start_time <= time (got %d, %d)", start, end)
			}
		default:
			return fmt.Errorf("unspecified temporality")
		}
		return nil
	}
	switch d := m.GetData().(type) {
	case *metricpb.Metric_Gauge:
		for _, p := range d.Gauge.GetDataPoints() {
			if p.GetTimeUnixNano() == 0 {
				return fmt.Errorf("gauge point without time")
			}
			if err := checkExemplars(p.GetExemplars()); err != nil {
				return err
			}
		}
	case *metricpb.Metric_Sum:
		for _, p := range d.Sum.GetDataPoints() {
			if err := delta(d.Sum.GetAggregationTemporality(), p.GetStartTimeUnixNano(), p.GetTimeUnixNano()); err != nil {
				return err
			}
			if err := checkExemplars(p.GetExemplars()); err != nil {
				return err
			}
		}
	case *metricpb.Metric_ExponentialHistogram:
		for _, p := range d.ExponentialHistogram.GetDataPoints() {
			if err := delta(d.ExponentialHistogram.GetAggregationTemporality(), p.GetStartTimeUnixNano(), p.GetTimeUnixNano()); err != nil {
				return err
			}
			if p.GetScale() < -10 || p.GetScale() > 20 {
				return fmt.Errorf("scale %d outside [-10, 20]", p.GetScale())
			}
			n := p.GetZeroCount()
			for _, c := range p.GetPositive().GetBucketCounts() {
				n += c
			}
			for _, c := range p.GetNegative().GetBucketCounts() {
				n += c
			}
			if n != p.GetCount() {
				return fmt.Errorf("count %d != zero_count + buckets %d", p.GetCount(), n)
			}
			if p.Min != nil && p.Max != nil && p.GetMin() > p.GetMax() {
				return fmt.Errorf("min %g > max %g", p.GetMin(), p.GetMax())
			}
			if err := checkExemplars(p.GetExemplars()); err != nil {
				return err
			}
		}
	case nil:
		return fmt.Errorf("no data")
	default:
		// Histograms and summaries are valid OTLP; sabaki sends neither.
	}
	return nil
}

func checkExemplars(es []*metricpb.Exemplar) error {
	for _, e := range es {
		if l := len(e.GetTraceId()); l != 0 && l != 16 {
			return fmt.Errorf("exemplar trace_id of %d bytes", l)
		}
		if l := len(e.GetSpanId()); l != 0 && l != 8 {
			return fmt.Errorf("exemplar span_id of %d bytes", l)
		}
	}
	return nil
}
