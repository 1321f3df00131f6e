// Package fakegcp is an in-process Cloud Monitoring MetricService: a real
// monitoringpb.MetricServiceServer on a loopback gRPC listener, meant to be
// used through the real cloud.google.com/go/monitoring client:
//
//	monitoring.NewMetricClient(ctx,
//		option.WithEndpoint(srv.Addr()),
//		option.WithoutAuthentication(),
//		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
//
// It enforces the rules of the real API that a consumer can get wrong:
//   - the filter must name exactly one metric type; resource and metric label
//     clauses (=, !=, one_of, starts_with) and project = "P" are honoured,
//     anything else is InvalidArgument;
//   - interval.end_time is required and reads are (start_time, end_time];
//   - points come newest first;
//   - in FULL view page_size counts points (a page can end inside a series,
//     whose header then repeats on the next page); in HEADERS view it counts
//     series and no points are returned;
//   - a point is visible only from its ingestion time on (SetNow drives the
//     clock), so late points appear in later reads;
//   - a project the server does not hold answers PERMISSION_DENIED.
//
// Errors can be scripted per method, project, metric type and page (Fail),
// and every call is recorded (Calls, CallCount, SeriesReturned).
package fakegcp

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/monitoring/apiv3/v2/monitoringpb"
	metricpb "google.golang.org/genproto/googleapis/api/metric"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DefaultPageSize is the page size used when a request leaves it at 0 (the
// real API's effective maximum).
const DefaultPageSize = 100000

// Server is the fake MetricService. The zero value is not usable; call New.
type Server struct {
	monitoringpb.UnimplementedMetricServiceServer

	mu          sync.Mutex
	now         time.Time
	wall        bool // the clock is time.Now (UseWallClock)
	projects    map[string]bool
	descriptors map[string]*metricpb.MetricDescriptor // by type
	series      []*entry
	byKey       map[string]*entry
	faults      []*Fault
	calls       []Call
	pages       map[string]*snapshot
	nextToken   int

	grpc *grpc.Server
	lis  net.Listener
}

type entry struct {
	header *monitoringpb.TimeSeries // no points
	points []visPoint               // ascending by end time
}

type visPoint struct {
	p       *monitoringpb.Point
	end     time.Time
	visible time.Time
}

type snapshot struct {
	page  int
	view  monitoringpb.ListTimeSeriesRequest_TimeSeriesView
	items []*monitoringpb.TimeSeries // remaining series, points newest first
}

// Fault scripts an error. Zero fields match anything.
type Fault struct {
	Method     string // "ListTimeSeries", "GetMetricDescriptor", "ListMetricDescriptors"
	Project    string
	MetricType string
	Page       int // 1-based page of a ListTimeSeries walk; 0 = any
	Times      int // how many calls fail; 0 = every matching call
	Code       codes.Code
	Message    string
	// RetryAfter adds a google.rpc.RetryInfo detail, as the real API does
	// with RESOURCE_EXHAUSTED.
	RetryAfter time.Duration
	fired      int
}

// Call records one RPC the server answered.
type Call struct {
	Method     string
	Project    string
	MetricType string
	Filter     string
	View       monitoringpb.ListTimeSeriesRequest_TimeSeriesView
	Start, End time.Time
	Page       int
	Series     int // time series in the response
	Points     int
	Code       codes.Code
}

// New returns an empty server whose clock starts at now.
func New(now time.Time) *Server {
	return &Server{
		now:         now,
		projects:    map[string]bool{},
		descriptors: map[string]*metricpb.MetricDescriptor{},
		byKey:       map[string]*entry{},
		pages:       map[string]*snapshot{},
	}
}

// Start serves on a loopback port and returns its address.
func (s *Server) Start() (string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("fakegcp: listen: %w", err)
	}
	s.lis = lis
	s.grpc = grpc.NewServer()
	monitoringpb.RegisterMetricServiceServer(s.grpc, s)
	go func() { _ = s.grpc.Serve(lis) }()
	return lis.Addr().String(), nil
}

// Addr is the listening address after Start.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Stop stops the gRPC server.
func (s *Server) Stop() {
	if s.grpc != nil {
		s.grpc.Stop()
	}
}

// SetNow moves the clock that decides which points are visible.
func (s *Server) SetNow(t time.Time) {
	s.mu.Lock()
	s.now = t
	s.mu.Unlock()
}

// UseWallClock makes the visibility clock follow time.Now, for tests that
// run the agent as a process in real time.
func (s *Server) UseWallClock() {
	s.mu.Lock()
	s.wall = true
	s.mu.Unlock()
}

// AddProject makes project readable even without data.
func (s *Server) AddProject(project string) {
	s.mu.Lock()
	s.projects[project] = true
	s.mu.Unlock()
}

// AddDescriptor adds or replaces a metric descriptor.
func (s *Server) AddDescriptor(d *metricpb.MetricDescriptor) {
	s.mu.Lock()
	s.descriptors[d.GetType()] = d
	s.mu.Unlock()
}

// AddPoint adds p to the series described by header (metric, resource,
// kind, value type, unit; its points are ignored). The point becomes visible
// at visible. The series' project is its resource label project_id.
func (s *Server) AddPoint(header *monitoringpb.TimeSeries, p *monitoringpb.Point, visible time.Time) {
	key := seriesKey(header)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.byKey[key]
	if e == nil {
		h := proto.Clone(header).(*monitoringpb.TimeSeries)
		h.Points = nil
		e = &entry{header: h}
		s.byKey[key] = e
		s.series = append(s.series, e)
		if pr := h.GetResource().GetLabels()["project_id"]; pr != "" {
			s.projects[pr] = true
		}
	}
	vp := visPoint{p: p, end: p.GetInterval().GetEndTime().AsTime(), visible: visible}
	i, _ := slices.BinarySearchFunc(e.points, vp.end, func(x visPoint, t time.Time) int { return x.end.Compare(t) })
	e.points = slices.Insert(e.points, i, vp)
}

// Fail scripts an error (see Fault).
func (s *Server) Fail(f Fault) {
	s.mu.Lock()
	s.faults = append(s.faults, &f)
	s.mu.Unlock()
}

// ClearFaults removes every scripted error.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

// Calls returns a copy of the call log.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// ResetCalls clears the call log.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	s.calls = nil
	s.mu.Unlock()
}

// CallCount counts calls of method for metricType ("" = any).
func (s *Server) CallCount(method, metricType string) int {
	n := 0
	for _, c := range s.Calls() {
		if c.Method == method && (metricType == "" || c.MetricType == metricType) {
			n++
		}
	}
	return n
}

// SeriesReturned sums the time series returned by successful ListTimeSeries
// calls for metricType ("" = any): the unit Cloud Monitoring bills reads by.
func (s *Server) SeriesReturned(metricType string) int {
	n := 0
	for _, c := range s.Calls() {
		if c.Method == "ListTimeSeries" && c.Code == codes.OK && (metricType == "" || c.MetricType == metricType) {
			n += c.Series
		}
	}
	return n
}

func (s *Server) fault(method, project, metricType string, page int) error {
	for _, f := range s.faults {
		if f.Method != "" && f.Method != method ||
			f.Project != "" && f.Project != project ||
			f.MetricType != "" && f.MetricType != metricType ||
			f.Page != 0 && f.Page != page ||
			f.Times > 0 && f.fired >= f.Times {
			continue
		}
		f.fired++
		msg := f.Message
		if msg == "" {
			msg = fmt.Sprintf("fakegcp: scripted %s", f.Code)
		}
		st := status.New(f.Code, msg)
		if f.RetryAfter > 0 {
			if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(f.RetryAfter)}); err == nil {
				st = d
			}
		}
		return st.Err()
	}
	return nil
}

func (s *Server) record(c Call, err error) {
	c.Code = status.Code(err)
	s.calls = append(s.calls, c)
}

// ListTimeSeries implements the read RPC (see the package comment for the
// rules it enforces).
func (s *Server) ListTimeSeries(_ context.Context, req *monitoringpb.ListTimeSeriesRequest) (*monitoringpb.ListTimeSeriesResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	call := Call{Method: "ListTimeSeries", Filter: req.GetFilter(), View: req.GetView()}
	project, ok := strings.CutPrefix(req.GetName(), "projects/")
	if !ok || project == "" {
		return nil, status.Errorf(codes.InvalidArgument, "name %q must be projects/[PROJECT_ID]", req.GetName())
	}
	call.Project = project
	f, err := parseFilter(req.GetFilter())
	if err != nil {
		s.record(call, err)
		return nil, err
	}
	call.MetricType = f.metricType
	if req.GetInterval().GetEndTime() == nil {
		err := status.Error(codes.InvalidArgument, "interval.end_time required")
		s.record(call, err)
		return nil, err
	}
	end := req.GetInterval().GetEndTime().AsTime()
	start := end
	if st := req.GetInterval().GetStartTime(); st != nil {
		start = st.AsTime()
	}
	call.Start, call.End = start, end
	if start.After(end) {
		err := status.Error(codes.InvalidArgument, "interval.start_time must not be after end_time")
		s.record(call, err)
		return nil, err
	}
	if a := req.GetAggregation(); a != nil && (a.GetPerSeriesAligner() != 0 || a.GetCrossSeriesReducer() != 0) {
		err := status.Error(codes.InvalidArgument, "fakegcp: aggregation is not supported")
		s.record(call, err)
		return nil, err
	}

	var snap *snapshot
	if tok := req.GetPageToken(); tok != "" {
		snap = s.pages[tok]
		if snap == nil {
			err := status.Error(codes.InvalidArgument, "invalid page token")
			s.record(call, err)
			return nil, err
		}
		delete(s.pages, tok)
	} else {
		snap = &snapshot{page: 1, view: req.GetView(), items: s.matching(project, f, start, end, req.GetView())}
	}
	call.Page = snap.page
	if err := s.fault("ListTimeSeries", project, f.metricType, snap.page); err != nil {
		// The page can be asked for again with the same token.
		if req.GetPageToken() != "" {
			s.pages[req.GetPageToken()] = snap
		}
		s.record(call, err)
		return nil, err
	}
	if !s.projects[project] {
		err := status.Errorf(codes.PermissionDenied, "Permission monitoring.timeSeries.list denied (or the resource may not exist).")
		s.record(call, err)
		return nil, err
	}

	size := int(req.GetPageSize())
	if size <= 0 || size > DefaultPageSize {
		size = DefaultPageSize
	}
	resp := &monitoringpb.ListTimeSeriesResponse{}
	budget := size
	for len(snap.items) > 0 && budget > 0 {
		ts := snap.items[0]
		if snap.view == monitoringpb.ListTimeSeriesRequest_HEADERS {
			resp.TimeSeries = append(resp.TimeSeries, ts)
			snap.items = snap.items[1:]
			budget--
			continue
		}
		if len(ts.Points) <= budget {
			resp.TimeSeries = append(resp.TimeSeries, ts)
			budget -= len(ts.Points)
			snap.items = snap.items[1:]
			continue
		}
		// The page ends inside this series: its header repeats on the next page.
		part := proto.Clone(ts).(*monitoringpb.TimeSeries)
		part.Points = ts.Points[:budget]
		rest := proto.Clone(ts).(*monitoringpb.TimeSeries)
		rest.Points = ts.Points[budget:]
		resp.TimeSeries = append(resp.TimeSeries, part)
		snap.items[0] = rest
		budget = 0
	}
	if len(snap.items) > 0 {
		s.nextToken++
		tok := "p" + strconv.Itoa(s.nextToken)
		snap.page++
		s.pages[tok] = snap
		resp.NextPageToken = tok
	}
	if len(resp.TimeSeries) > 0 {
		resp.Unit = resp.TimeSeries[0].GetUnit()
	}
	call.Series = len(resp.TimeSeries)
	for _, ts := range resp.TimeSeries {
		call.Points += len(ts.Points)
	}
	s.record(call, nil)
	return resp, nil
}

// matching returns the series of project that pass f, with their visible
// points in (start, end] newest first; series without such points are
// left out, as the real API does.
func (s *Server) matching(project string, f *filter, start, end time.Time, view monitoringpb.ListTimeSeriesRequest_TimeSeriesView) []*monitoringpb.TimeSeries {
	now := s.now
	if s.wall {
		now = time.Now()
	}
	var out []*monitoringpb.TimeSeries
	for _, e := range s.series {
		h := e.header
		if h.GetResource().GetLabels()["project_id"] != project || !f.match(h) {
			continue
		}
		var pts []*monitoringpb.Point
		for i := len(e.points) - 1; i >= 0; i-- {
			p := e.points[i]
			if p.visible.After(now) {
				continue
			}
			inside := p.end.After(start) && !p.end.After(end)
			if start.Equal(end) {
				inside = p.end.Equal(end)
			}
			if inside {
				pts = append(pts, p.p)
			}
		}
		if len(pts) == 0 {
			continue
		}
		ts := proto.Clone(h).(*monitoringpb.TimeSeries)
		if view != monitoringpb.ListTimeSeriesRequest_HEADERS {
			ts.Points = pts
		}
		out = append(out, ts)
	}
	return out
}

// GetMetricDescriptor returns a descriptor added with AddDescriptor.
func (s *Server) GetMetricDescriptor(_ context.Context, req *monitoringpb.GetMetricDescriptorRequest) (*metricpb.MetricDescriptor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rest, ok := strings.CutPrefix(req.GetName(), "projects/")
	project, typ, ok2 := strings.Cut(rest, "/metricDescriptors/")
	call := Call{Method: "GetMetricDescriptor", Project: project, MetricType: typ}
	if !ok || !ok2 {
		err := status.Errorf(codes.InvalidArgument, "bad descriptor name %q", req.GetName())
		s.record(call, err)
		return nil, err
	}
	if err := s.fault("GetMetricDescriptor", project, typ, 0); err != nil {
		s.record(call, err)
		return nil, err
	}
	if !s.projects[project] {
		err := status.Error(codes.PermissionDenied, "Permission monitoring.metricDescriptors.get denied (or the resource may not exist).")
		s.record(call, err)
		return nil, err
	}
	d := s.descriptors[typ]
	if d == nil {
		err := status.Errorf(codes.NotFound, "Could not find descriptor for metric '%s'.", typ)
		s.record(call, err)
		return nil, err
	}
	s.record(call, nil)
	return proto.Clone(d).(*metricpb.MetricDescriptor), nil
}

var startsWithRE = regexp.MustCompile(`^metric\.type\s*=\s*starts_with\("([^"]*)"\)$`)

// ListMetricDescriptors honours `metric.type = starts_with("prefix")`.
func (s *Server) ListMetricDescriptors(_ context.Context, req *monitoringpb.ListMetricDescriptorsRequest) (*monitoringpb.ListMetricDescriptorsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	project, _ := strings.CutPrefix(req.GetName(), "projects/")
	call := Call{Method: "ListMetricDescriptors", Project: project, Filter: req.GetFilter()}
	prefix := ""
	if f := strings.TrimSpace(req.GetFilter()); f != "" {
		m := startsWithRE.FindStringSubmatch(f)
		if m == nil {
			err := status.Errorf(codes.InvalidArgument, "fakegcp: unsupported descriptor filter %q", f)
			s.record(call, err)
			return nil, err
		}
		prefix = m[1]
	}
	call.MetricType = prefix
	if err := s.fault("ListMetricDescriptors", project, prefix, 0); err != nil {
		s.record(call, err)
		return nil, err
	}
	if !s.projects[project] {
		err := status.Error(codes.PermissionDenied, "Permission monitoring.metricDescriptors.list denied (or the resource may not exist).")
		s.record(call, err)
		return nil, err
	}
	resp := &monitoringpb.ListMetricDescriptorsResponse{}
	for typ, d := range s.descriptors {
		if strings.HasPrefix(typ, prefix) {
			resp.MetricDescriptors = append(resp.MetricDescriptors, proto.Clone(d).(*metricpb.MetricDescriptor))
		}
	}
	slices.SortFunc(resp.MetricDescriptors, func(a, b *metricpb.MetricDescriptor) int { return strings.Compare(a.GetType(), b.GetType()) })
	s.record(call, nil)
	return resp, nil
}

func seriesKey(ts *monitoringpb.TimeSeries) string {
	var b strings.Builder
	b.WriteString(ts.GetMetric().GetType())
	writeLabels(&b, ts.GetMetric().GetLabels())
	b.WriteString("|" + ts.GetResource().GetType())
	writeLabels(&b, ts.GetResource().GetLabels())
	return b.String()
}

func writeLabels(b *strings.Builder, m map[string]string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		b.WriteString("|" + k + "=" + m[k])
	}
}

// Timestamp is a small helper for building points.
func Timestamp(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
