// Package fakemackerel is an in-process Mackerel API for tests. It enforces
// the rules the real API is documented (or, where marked, believed) to
// enforce, records what it accepted, and can be scripted to fail.
//
// Rules and where they come from (shared notes on Mackerel, §9):
//   - X-Api-Key is required; an unknown key gets 403 (the real code for a bad
//     key is unverified: Rules.BadKeyStatus), a key without write permission
//     gets 403 on writes (documented).
//   - Errors are JSON {"error":{"message":...}} (as mackerel-client-go parses).
//   - POST /api/v0/services/<svc>/tsdb: the service must exist (404,
//     unverified); the body is a JSON array of {name, time, value}; names match
//     [A-Za-z0-9._-]+ (documented) without empty segments (documented for
//     custom metrics; Rules.RejectEmptySegments); values are JSON numbers
//     (NaN/Infinity are not JSON); time is integer epoch seconds and
//     required (unverified); points older than 24 h are answered 200 and
//     discarded (documented); points more than 24 h in the future are
//     discarded too (unverified); otherwise the point is stored in its
//     minute slot, the last write winning (documented "overwritten"; flooring
//     to the minute unverified).
//   - Body and batch size caps, the per-key rate limit and Retry-After are
//     not documented: they are Rules, switchable.
//   - POST /api/v0/graph-defs/create validates names (custom. prefix,
//     wildcards) and units (documented), upserting by name.
//   - POST /api/v0/graph-annotations: title ≤ 250, description ≤ 1024,
//     from ≤ to, service must exist (documented).
//   - Monitors: list, create, update of service-metric monitors with the
//     fields the client sends (name, service, metric, operator, warning,
//     critical, duration, maxCheckAttempts, memo).
//   - Hosts: POST /api/v0/hosts registers (customIdentifier unique), GET
//     /api/v0/hosts?customIdentifier= finds; POST /api/v0/tsdb takes host
//     metrics for registered hosts.
package fakemackerel

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Perm is what an API key may do.
type Perm struct{ Read, Write bool }

// Rules are the behaviours that are not documented by Mackerel; tests may
// relax or tighten them. DefaultRules is strict-but-plausible.
type Rules struct {
	// BadKeyStatus is the status for a missing or unknown key (403 believed).
	BadKeyStatus int
	// UnknownServiceStatus is the status for posting to a service that does
	// not exist (404 believed).
	UnknownServiceStatus int
	// RequireJSONContentType rejects writes without application/json (415).
	RequireJSONContentType bool
	// RejectEmptySegments rejects names with "..", or a leading or trailing dot.
	RejectEmptySegments bool
	// MaxBodyBytes caps a request body (413); 0 = no cap.
	MaxBodyBytes int64
	// MaxPointsPerRequest caps a metric post (400); 0 = no cap.
	MaxPointsPerRequest int
	// RateLimitPerMinute caps requests per key per clock minute (429); 0 = off.
	RateLimitPerMinute int
	// RateLimitRetryAfter adds Retry-After (seconds to the next minute) to 429s.
	RateLimitRetryAfter bool
	// RequireTime rejects metric values without a time (400).
	RequireTime bool
}

// DefaultRules returns the rules used unless a test says otherwise.
func DefaultRules() Rules {
	return Rules{
		BadKeyStatus:           http.StatusForbidden,
		UnknownServiceStatus:   http.StatusNotFound,
		RequireJSONContentType: true,
		RejectEmptySegments:    true,
		MaxBodyBytes:           1 << 20,
		MaxPointsPerRequest:    0,
		RequireTime:            true,
	}
}

// Options configure a Server.
type Options struct {
	// Keys maps API keys to their permissions.
	Keys map[string]Perm
	// Services that exist from the start.
	Services []string
	// Rules; the zero value means DefaultRules().
	Rules *Rules
	// Now is the server's clock (for the 24 h rule, rate limits and fault
	// periods); default time.Now.
	Now func() time.Time
}

// Fault is a scripted failure.
type Fault struct {
	// Status, when non-zero, is answered with a JSON error body.
	Status int
	// RetryAfter, when non-empty, is sent as the Retry-After header.
	RetryAfter string
	// Reset closes the connection without a response.
	Reset bool
	// Delay waits before answering (or failing); the request's context
	// (client timeout) cuts it short.
	Delay time.Duration
}

type faultRule struct {
	from, to time.Time // by the server clock; zero = unbounded
	skip     int       // matching requests to let through first
	left     int       // remaining uses; -1 = unlimited
	path     string    // prefix of the request path; "" = all
	f        Fault
}

// Point is one stored metric value.
type Point struct {
	Time  int64 // minute slot, epoch seconds
	Value float64
}

// Post is one metric request that the server answered.
type Post struct {
	At      time.Time // server clock
	Path    string
	Points  int // points in the body
	Bytes   int // body size
	Status  int
	Dropped int   // points accepted but discarded as too old or too new
	MinTime int64 // earliest point time in an accepted post
}

// GraphDef is a stored graph definition.
type GraphDef struct {
	Name        string           `json:"name"`
	DisplayName string           `json:"displayName,omitempty"`
	Unit        string           `json:"unit,omitempty"`
	Metrics     []GraphDefMetric `json:"metrics"`
}

// GraphDefMetric is a metric of a graph definition.
type GraphDefMetric struct {
	Name        string `json:"name"`
	DisplayName string `json:"displayName,omitempty"`
	IsStacked   bool   `json:"isStacked"`
}

// Annotation is a stored graph annotation.
type Annotation struct {
	ID          string   `json:"id,omitempty"`
	Title       string   `json:"title"`
	Description string   `json:"description,omitempty"`
	From        int64    `json:"from"`
	To          int64    `json:"to"`
	Service     string   `json:"service"`
	Roles       []string `json:"roles,omitempty"`
}

// Host is a registered host.
type Host struct {
	ID               string         `json:"id"`
	Name             string         `json:"name"`
	DisplayName      string         `json:"displayName,omitempty"`
	CustomIdentifier string         `json:"customIdentifier,omitempty"`
	Meta             map[string]any `json:"meta"`
	RoleFullnames    []string       `json:"roleFullnames,omitempty"`
}

// Server is the fake. Create it with New; Close it when done.
type Server struct {
	*httptest.Server
	rules Rules
	keys  map[string]Perm
	now   func() time.Time

	mu          sync.Mutex
	services    map[string]bool
	metrics     map[string]map[string]map[int64]float64 // service or "host:<id>" → name → slot → value
	writes      int                                     // accepted points, overwrites included
	overwrites  int
	discarded   int
	posts       []Post
	requests    []string // "METHOD path status"
	faults      []*faultRule
	rate        map[string]int // key|minute → requests
	graphDefs   map[string]GraphDef
	annotations []Annotation
	monitors    []json.RawMessage
	hosts       []Host
	traces      []Trace
	nextID      int
}

// Trace is a trace the fake trace search can find.
type Trace struct {
	TraceID       string `json:"traceId"`
	ServiceName   string `json:"serviceName"`
	Title         string `json:"title"`
	StartAt       int64  `json:"traceStartAt"`
	LatencyMillis int64  `json:"traceLatencyMillis"`
}

// New starts a fake Mackerel.
func New(opts Options) *Server {
	s := &Server{
		keys:      opts.Keys,
		now:       opts.Now,
		services:  map[string]bool{},
		metrics:   map[string]map[string]map[int64]float64{},
		rate:      map[string]int{},
		graphDefs: map[string]GraphDef{},
	}
	if opts.Rules != nil {
		s.rules = *opts.Rules
	} else {
		s.rules = DefaultRules()
	}
	if s.now == nil {
		s.now = time.Now
	}
	for _, svc := range opts.Services {
		s.services[svc] = true
	}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// SetRules replaces the rules.
func (s *Server) SetRules(r Rules) {
	s.mu.Lock()
	s.rules = r
	s.mu.Unlock()
}

// FailBetween makes requests whose path starts with pathPrefix ("" = all)
// fail with f while the server clock is in [from, to).
func (s *Server) FailBetween(from, to time.Time, pathPrefix string, f Fault) {
	s.mu.Lock()
	s.faults = append(s.faults, &faultRule{from: from, to: to, left: -1, path: pathPrefix, f: f})
	s.mu.Unlock()
}

// FailNext makes the next n matching requests fail with f.
func (s *Server) FailNext(n int, pathPrefix string, f Fault) {
	s.mu.Lock()
	s.faults = append(s.faults, &faultRule{left: n, path: pathPrefix, f: f})
	s.mu.Unlock()
}

// FailAfter lets the next skip matching requests through, then fails n.
func (s *Server) FailAfter(skip, n int, pathPrefix string, f Fault) {
	s.mu.Lock()
	s.faults = append(s.faults, &faultRule{skip: skip, left: n, path: pathPrefix, f: f})
	s.mu.Unlock()
}

// ClearFaults removes every scripted fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

// ---- query helpers ----

// Value returns the stored value of a service metric in the minute of t.
func (s *Server) Value(service, name string, t time.Time) (float64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.metrics[service][name][slot(t.Unix())]
	return v, ok
}

// HostValue returns the stored value of a host metric in the minute of t.
func (s *Server) HostValue(hostID, name string, t time.Time) (float64, bool) {
	return s.Value("host:"+hostID, name, t)
}

// Names returns the metric names stored for a service, sorted.
func (s *Server) Names(service string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for n := range s.metrics[service] {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Points returns the stored points of a service metric in time order.
func (s *Server) Points(service, name string) []Point {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ps []Point
	for t, v := range s.metrics[service][name] {
		ps = append(ps, Point{Time: t, Value: v})
	}
	slices.SortFunc(ps, func(a, b Point) int { return int(a.Time - b.Time) })
	return ps
}

// Stats returns counts of accepted points, overwrites (a later post for a
// slot that had a value) and points answered 200 but discarded.
func (s *Server) Stats() (writes, overwrites, discarded int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes, s.overwrites, s.discarded
}

// Posts returns the metric posts answered so far (failed ones included).
func (s *Server) Posts() []Post {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.posts)
}

// Requests returns "METHOD path status" for every request.
func (s *Server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// GraphDefs returns the stored graph definitions by name.
func (s *Server) GraphDefs() map[string]GraphDef {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]GraphDef, len(s.graphDefs))
	for k, v := range s.graphDefs {
		m[k] = v
	}
	return m
}

// Annotations returns the stored graph annotations in creation order.
func (s *Server) Annotations() []Annotation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.annotations)
}

// Monitors returns the stored monitors as JSON objects.
func (s *Server) Monitors() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, raw := range s.monitors {
		var m map[string]any
		json.Unmarshal(raw, &m)
		out = append(out, m)
	}
	return out
}

// Hosts returns the registered hosts.
func (s *Server) Hosts() []Host {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.hosts)
}

// AddTrace makes a trace findable by POST /api/v0/traces.
func (s *Server) AddTrace(t Trace) {
	s.mu.Lock()
	s.traces = append(s.traces, t)
	s.mu.Unlock()
}

// ---- serving ----

var (
	metricNameRE  = regexp.MustCompile(`^[a-zA-Z0-9._-]+$`)
	serviceNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{1,62}$`)
	segmentRE     = regexp.MustCompile(`^[-a-zA-Z0-9_]+$`)
	graphNameRE   = regexp.MustCompile(`^custom(\.([-a-zA-Z0-9_]+|[*#]))+$`)
	graphUnits    = map[string]bool{"float": true, "integer": true, "percentage": true, "seconds": true,
		"milliseconds": true, "bytes": true, "bytes/sec": true, "bits/sec": true, "iops": true}
)

func slot(t int64) int64 { return t - ((t%60)+60)%60 }

type apiError struct {
	status int
	msg    string
}

func errf(status int, format string, args ...any) *apiError {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	status := s.handle(w, r)
	s.mu.Lock()
	s.requests = append(s.requests, fmt.Sprintf("%s %s %d", r.Method, r.URL.Path, status))
	s.mu.Unlock()
}

func writeErr(w http.ResponseWriter, e *apiError) int {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"message": e.msg}})
	return e.status
}

func writeJSON(w http.ResponseWriter, v any) int {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
	return http.StatusOK
}

// fault returns the scripted fault for r, if any, consuming one use.
func (s *Server) fault(r *http.Request) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for _, fr := range s.faults {
		if fr.left == 0 || !strings.HasPrefix(r.URL.Path, fr.path) {
			continue
		}
		if (!fr.from.IsZero() && now.Before(fr.from)) || (!fr.to.IsZero() && !now.Before(fr.to)) {
			continue
		}
		if fr.skip > 0 {
			fr.skip--
			continue
		}
		if fr.left > 0 {
			fr.left--
		}
		return fr.f, true
	}
	return Fault{}, false
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) int {
	// Read the body first, as a server does: a client that goes away
	// while a scripted delay runs is then noticed (the request's context ends).
	var raw []byte
	if r.Method != http.MethodGet {
		limit := s.rules.MaxBodyBytes
		if limit <= 0 {
			limit = math.MaxInt32
		}
		var err error
		raw, err = io.ReadAll(io.LimitReader(r.Body, limit+1))
		if err != nil {
			return writeErr(w, errf(http.StatusBadRequest, "reading body: %v", err))
		}
	}
	if f, ok := s.fault(r); ok {
		if f.Delay > 0 {
			t := time.NewTimer(f.Delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return 0
			}
		}
		if f.Reset {
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					conn.Close()
				}
			}
			s.recordPost(r, 0, 0, 0, 0)
			return 0
		}
		if f.Status != 0 {
			if f.RetryAfter != "" {
				w.Header().Set("Retry-After", f.RetryAfter)
			}
			s.recordPost(r, 0, 0, f.Status, 0)
			return writeErr(w, errf(f.Status, "%s (scripted)", http.StatusText(f.Status)))
		}
	}
	perm, ok := s.keys[r.Header.Get("X-Api-Key")]
	if !ok {
		return writeErr(w, errf(s.rules.BadKeyStatus, "Authentication failed. Please try again after logging in."))
	}
	// The trace search is a POST that needs only read permission.
	write := r.Method != http.MethodGet && r.URL.Path != "/api/v0/traces"
	if write && !perm.Write || !write && !perm.Read {
		return writeErr(w, errf(http.StatusForbidden, "Permission denied."))
	}
	if lim := s.rules.RateLimitPerMinute; lim > 0 {
		now := s.now()
		k := fmt.Sprintf("%s|%d", r.Header.Get("X-Api-Key"), slot(now.Unix()))
		s.mu.Lock()
		s.rate[k]++
		n := s.rate[k]
		s.mu.Unlock()
		if n > lim {
			if s.rules.RateLimitRetryAfter {
				w.Header().Set("Retry-After", strconv.FormatInt(60-now.Unix()%60, 10))
			}
			s.recordPost(r, 0, 0, http.StatusTooManyRequests, 0)
			return writeErr(w, errf(http.StatusTooManyRequests, "Too many requests."))
		}
	}
	var body []byte
	if r.Method != http.MethodGet {
		if s.rules.RequireJSONContentType && !strings.HasPrefix(r.Header.Get("Content-Type"), "application/json") {
			return writeErr(w, errf(http.StatusUnsupportedMediaType, "Content-Type must be application/json"))
		}
		body = raw
		if limit := s.rules.MaxBodyBytes; limit > 0 && int64(len(body)) > limit {
			s.recordPost(r, 0, len(body), http.StatusRequestEntityTooLarge, 0)
			return writeErr(w, errf(http.StatusRequestEntityTooLarge, "Request Entity Too Large"))
		}
		if r.Method != http.MethodDelete || len(body) > 0 {
			if !json.Valid(body) {
				return writeErr(w, errf(http.StatusBadRequest, "Invalid JSON"))
			}
		}
	}
	p := strings.TrimSuffix(r.URL.Path, "/")
	parts := strings.Split(strings.TrimPrefix(p, "/api/v0/"), "/")
	if !strings.HasPrefix(p, "/api/v0/") {
		return writeErr(w, errf(http.StatusNotFound, "Not found"))
	}
	var res any
	var e *apiError
	switch {
	case len(parts) == 3 && parts[0] == "services" && parts[2] == "tsdb" && r.Method == http.MethodPost:
		res, e = s.postServiceMetrics(r, parts[1], body)
	case len(parts) == 3 && parts[0] == "services" && parts[2] == "metrics" && r.Method == http.MethodGet:
		res, e = s.getServiceMetrics(r, parts[1])
	case p == "/api/v0/services" && r.Method == http.MethodGet:
		res, e = s.listServices()
	case p == "/api/v0/services" && r.Method == http.MethodPost:
		res, e = s.createService(body)
	case p == "/api/v0/tsdb" && r.Method == http.MethodPost:
		res, e = s.postHostMetrics(r, body)
	case p == "/api/v0/hosts" && r.Method == http.MethodPost:
		res, e = s.createHost(body)
	case p == "/api/v0/hosts" && r.Method == http.MethodGet:
		res, e = s.findHosts(r)
	case p == "/api/v0/graph-defs/create" && r.Method == http.MethodPost:
		res, e = s.createGraphDefs(body)
	case p == "/api/v0/graph-defs" && r.Method == http.MethodDelete:
		res, e = s.deleteGraphDef(body)
	case p == "/api/v0/graph-annotations" && r.Method == http.MethodPost:
		res, e = s.createAnnotation(body)
	case p == "/api/v0/graph-annotations" && r.Method == http.MethodGet:
		res, e = s.findAnnotations(r)
	case p == "/api/v0/traces" && r.Method == http.MethodPost:
		res, e = s.searchTraces(body)
	case p == "/api/v0/monitors" && r.Method == http.MethodGet:
		res, e = s.listMonitors()
	case p == "/api/v0/monitors" && r.Method == http.MethodPost:
		res, e = s.putMonitor("", body)
	case len(parts) == 2 && parts[0] == "monitors" && r.Method == http.MethodPut:
		res, e = s.putMonitor(parts[1], body)
	default:
		e = errf(http.StatusNotFound, "Not found: %s %s", r.Method, r.URL.Path)
	}
	if e != nil {
		return writeErr(w, e)
	}
	return writeJSON(w, res)
}

func (s *Server) recordPost(r *http.Request, points, size, status, dropped int, vs ...metricValue) {
	if !strings.HasSuffix(r.URL.Path, "/tsdb") {
		return
	}
	var minTime int64
	for i, v := range vs {
		if i == 0 || v.time < minTime {
			minTime = v.time
		}
	}
	s.mu.Lock()
	s.posts = append(s.posts, Post{At: s.now(), Path: r.URL.Path, Points: points, Bytes: size, Status: status, Dropped: dropped, MinTime: minTime})
	s.mu.Unlock()
}

type metricValue struct {
	hostID string
	name   string
	time   int64
	value  float64
}

// parseValues validates a metric post body.
func (s *Server) parseValues(body []byte, host bool) ([]metricValue, *apiError) {
	var raw []map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, errf(http.StatusBadRequest, "body must be an array of metric values: %v", err)
	}
	if max := s.rules.MaxPointsPerRequest; max > 0 && len(raw) > max {
		return nil, errf(http.StatusBadRequest, "too many metric values in one request (%d > %d)", len(raw), max)
	}
	out := make([]metricValue, 0, len(raw))
	for i, m := range raw {
		var v metricValue
		if err := json.Unmarshal(m["name"], &v.name); err != nil || v.name == "" {
			return nil, errf(http.StatusBadRequest, "metric value %d: name is required and must be a string", i)
		}
		if !metricNameRE.MatchString(v.name) {
			return nil, errf(http.StatusBadRequest, "invalid metric name: %q", v.name)
		}
		if s.rules.RejectEmptySegments && (strings.Contains(v.name, "..") || strings.HasPrefix(v.name, ".") || strings.HasSuffix(v.name, ".")) {
			return nil, errf(http.StatusBadRequest, "invalid metric name (empty segment): %q", v.name)
		}
		if t, ok := m["time"]; ok {
			if err := json.Unmarshal(t, &v.time); err != nil {
				return nil, errf(http.StatusBadRequest, "metric %q: time must be an integer epoch second", v.name)
			}
		} else if s.rules.RequireTime {
			return nil, errf(http.StatusBadRequest, "metric %q: time is required", v.name)
		}
		val, ok := m["value"]
		if !ok || len(val) == 0 || !(val[0] == '-' || (val[0] >= '0' && val[0] <= '9')) {
			return nil, errf(http.StatusBadRequest, "metric %q: value must be a number", v.name)
		}
		if err := json.Unmarshal(val, &v.value); err != nil {
			return nil, errf(http.StatusBadRequest, "metric %q: value must be a number", v.name)
		}
		if host {
			if err := json.Unmarshal(m["hostId"], &v.hostID); err != nil || v.hostID == "" {
				return nil, errf(http.StatusBadRequest, "metric %q: hostId is required", v.name)
			}
		}
		out = append(out, v)
	}
	return out, nil
}

// store writes values into their minute slots; it returns how many were
// discarded as more than 24 h old or in the future.
func (s *Server) storeLocked(key func(metricValue) string, vs []metricValue) int {
	now := s.now().Unix()
	dropped := 0
	for _, v := range vs {
		if v.time < now-24*3600 || v.time > now+24*3600 {
			dropped++ // documented: 200, not recorded
			continue
		}
		k := key(v)
		if s.metrics[k] == nil {
			s.metrics[k] = map[string]map[int64]float64{}
		}
		if s.metrics[k][v.name] == nil {
			s.metrics[k][v.name] = map[int64]float64{}
		}
		sl := slot(v.time)
		if _, ok := s.metrics[k][v.name][sl]; ok {
			s.overwrites++
		}
		s.metrics[k][v.name][sl] = v.value
		s.writes++
	}
	s.discarded += dropped
	return dropped
}

func (s *Server) postServiceMetrics(r *http.Request, svc string, body []byte) (any, *apiError) {
	s.mu.Lock()
	exists := s.services[svc]
	s.mu.Unlock()
	if !exists {
		s.recordPost(r, 0, len(body), s.rules.UnknownServiceStatus, 0)
		return nil, errf(s.rules.UnknownServiceStatus, "Service not found: %s", svc)
	}
	vs, e := s.parseValues(body, false)
	if e != nil {
		s.recordPost(r, 0, len(body), e.status, 0)
		return nil, e
	}
	s.mu.Lock()
	dropped := s.storeLocked(func(metricValue) string { return svc }, vs)
	s.mu.Unlock()
	s.recordPost(r, len(vs), len(body), http.StatusOK, dropped, vs...)
	return map[string]bool{"success": true}, nil
}

func (s *Server) postHostMetrics(r *http.Request, body []byte) (any, *apiError) {
	vs, e := s.parseValues(body, true)
	if e != nil {
		s.recordPost(r, 0, len(body), e.status, 0)
		return nil, e
	}
	s.mu.Lock()
	for _, v := range vs {
		if !slices.ContainsFunc(s.hosts, func(h Host) bool { return h.ID == v.hostID }) {
			s.mu.Unlock()
			s.recordPost(r, 0, len(body), http.StatusBadRequest, 0)
			return nil, errf(http.StatusBadRequest, "host not found: %s", v.hostID)
		}
	}
	dropped := s.storeLocked(func(v metricValue) string { return "host:" + v.hostID }, vs)
	s.mu.Unlock()
	s.recordPost(r, len(vs), len(body), http.StatusOK, dropped, vs...)
	return map[string]bool{"success": true}, nil
}

func (s *Server) getServiceMetrics(r *http.Request, svc string) (any, *apiError) {
	q := r.URL.Query()
	from, _ := strconv.ParseInt(q.Get("from"), 10, 64)
	to, _ := strconv.ParseInt(q.Get("to"), 10, 64)
	s.mu.Lock()
	exists := s.services[svc]
	s.mu.Unlock()
	if !exists {
		return nil, errf(http.StatusNotFound, "Service not found: %s", svc)
	}
	type tv struct {
		Time  int64   `json:"time"`
		Value float64 `json:"value"`
	}
	out := []tv{}
	for _, p := range s.Points(svc, q.Get("name")) {
		if p.Time >= from && p.Time <= to {
			out = append(out, tv{p.Time, p.Value})
		}
	}
	return map[string]any{"metrics": out}, nil
}

func (s *Server) listServices() (any, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for name := range s.services {
		out = append(out, map[string]any{"name": name, "roles": []string{}})
	}
	return map[string]any{"services": out}, nil
}

func (s *Server) createService(body []byte) (any, *apiError) {
	var p struct {
		Name string `json:"name"`
		Memo string `json:"memo"`
	}
	if err := json.Unmarshal(body, &p); err != nil || !serviceNameRE.MatchString(p.Name) {
		return nil, errf(http.StatusBadRequest, "invalid service name")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.services[p.Name] {
		return nil, errf(http.StatusBadRequest, "service already exists: %s", p.Name)
	}
	s.services[p.Name] = true
	return map[string]any{"name": p.Name, "memo": p.Memo, "roles": []string{}}, nil
}

func (s *Server) id() string {
	s.nextID++
	return fmt.Sprintf("fake%07d", s.nextID) // 11 characters, like real IDs
}

func (s *Server) createHost(body []byte) (any, *apiError) {
	var h Host
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&h); err != nil || h.Name == "" {
		return nil, errf(http.StatusBadRequest, "name is required")
	}
	if h.Meta == nil {
		return nil, errf(http.StatusBadRequest, "meta is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.CustomIdentifier != "" && slices.ContainsFunc(s.hosts, func(x Host) bool { return x.CustomIdentifier == h.CustomIdentifier }) {
		return nil, errf(http.StatusBadRequest, "customIdentifier already in use: %s", h.CustomIdentifier)
	}
	for _, rf := range h.RoleFullnames {
		svc, _, ok := strings.Cut(rf, ":")
		if !ok {
			return nil, errf(http.StatusBadRequest, "invalid roleFullname: %s", rf)
		}
		s.services[svc] = true // documented: created when missing
	}
	h.ID = s.id()
	s.hosts = append(s.hosts, h)
	return map[string]string{"id": h.ID}, nil
}

func (s *Server) findHosts(r *http.Request) (any, *apiError) {
	ci := r.URL.Query().Get("customIdentifier")
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Host{}
	for _, h := range s.hosts {
		if ci == "" || h.CustomIdentifier == ci {
			out = append(out, h)
		}
	}
	return map[string]any{"hosts": out}, nil
}

func (s *Server) createGraphDefs(body []byte) (any, *apiError) {
	var defs []GraphDef
	if err := json.Unmarshal(body, &defs); err != nil {
		return nil, errf(http.StatusBadRequest, "body must be an array of graph definitions")
	}
	for _, d := range defs {
		if !graphNameRE.MatchString(d.Name) || strings.Count(d.Name, "#") > 1 {
			return nil, errf(http.StatusBadRequest, "invalid graph name: %q", d.Name)
		}
		if d.Unit != "" && !graphUnits[d.Unit] {
			return nil, errf(http.StatusBadRequest, "invalid unit: %q", d.Unit)
		}
		for _, m := range d.Metrics {
			last := m.Name[strings.LastIndexByte(m.Name, '.')+1:]
			if !strings.HasPrefix(m.Name, d.Name+".") || strings.Contains(strings.TrimPrefix(m.Name, d.Name+"."), ".") ||
				!(last == "*" || last == "#" || segmentRE.MatchString(last)) {
				return nil, errf(http.StatusBadRequest, "invalid metric name %q for graph %q", m.Name, d.Name)
			}
			if (last == "*" || last == "#") && !strings.Contains(d.Name, last) {
				// A wildcard in a metric name must also appear in the graph name.
				return nil, errf(http.StatusBadRequest, "wildcard in metric %q not in graph name %q", m.Name, d.Name)
			}
		}
	}
	s.mu.Lock()
	for _, d := range defs {
		s.graphDefs[d.Name] = d
	}
	s.mu.Unlock()
	return map[string]bool{"success": true}, nil
}

func (s *Server) deleteGraphDef(body []byte) (any, *apiError) {
	var p struct {
		Name string `json:"name"`
	}
	json.Unmarshal(body, &p)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.graphDefs[p.Name]; !ok {
		return nil, errf(http.StatusBadRequest, "graph definition not found: %q", p.Name)
	}
	delete(s.graphDefs, p.Name)
	return map[string]bool{"success": true}, nil
}

func (s *Server) createAnnotation(body []byte) (any, *apiError) {
	var a Annotation
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, errf(http.StatusBadRequest, "malformed annotation")
	}
	switch {
	case a.Title == "":
		return nil, errf(http.StatusBadRequest, "title is required")
	case len([]rune(a.Title)) > 250:
		return nil, errf(http.StatusBadRequest, "title is too long (max 250 characters)")
	case len([]rune(a.Description)) > 1024:
		return nil, errf(http.StatusBadRequest, "description is too long (max 1024 characters)")
	case a.From == 0 || a.To == 0 || a.From > a.To:
		return nil, errf(http.StatusBadRequest, "from and to are required, from <= to")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.services[a.Service] {
		return nil, errf(http.StatusNotFound, "Service not found: %s", a.Service)
	}
	a.ID = s.id()
	s.annotations = append(s.annotations, a)
	return a, nil
}

func (s *Server) findAnnotations(r *http.Request) (any, *apiError) {
	q := r.URL.Query()
	from, _ := strconv.ParseInt(q.Get("from"), 10, 64)
	to, _ := strconv.ParseInt(q.Get("to"), 10, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []Annotation{}
	for _, a := range s.annotations {
		if a.Service == q.Get("service") && a.From <= to && a.To >= from {
			out = append(out, a)
		}
	}
	return map[string]any{"graphAnnotations": out}, nil
}

func (s *Server) listMonitors() (any, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return map[string]any{"monitors": slices.Clone(s.monitors)}, nil
}

// putMonitor creates (id == "") or updates a monitor after checking the
// fields of a service-metric monitor.
func (s *Server) putMonitor(id string, body []byte) (any, *apiError) {
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, errf(http.StatusBadRequest, "malformed monitor")
	}
	name, _ := m["name"].(string)
	typ, _ := m["type"].(string)
	if name == "" || len([]rune(name)) > 250 {
		return nil, errf(http.StatusBadRequest, "name is required (max 250 characters)")
	}
	if typ == "service" {
		svc, _ := m["service"].(string)
		metricName, _ := m["metric"].(string)
		op, _ := m["operator"].(string)
		s.mu.Lock()
		exists := s.services[svc]
		s.mu.Unlock()
		switch {
		case !exists:
			return nil, errf(http.StatusBadRequest, "service not found: %q", svc)
		case !metricNameRE.MatchString(metricName):
			return nil, errf(http.StatusBadRequest, "invalid metric: %q", metricName)
		case op != ">" && op != "<":
			return nil, errf(http.StatusBadRequest, "operator must be > or <")
		case m["warning"] == nil && m["critical"] == nil:
			return nil, errf(http.StatusBadRequest, "warning or critical is required")
		}
		if d, ok := m["duration"].(float64); ok && (d < 1 || d > 1440) {
			return nil, errf(http.StatusBadRequest, "duration must be in 1..1440")
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if id == "" {
		id = s.id()
		m["id"] = id
		raw, _ := json.Marshal(m)
		s.monitors = append(s.monitors, raw)
		return m, nil
	}
	for i, raw := range s.monitors {
		var old map[string]any
		json.Unmarshal(raw, &old)
		if old["id"] == id {
			m["id"] = id
			s.monitors[i], _ = json.Marshal(m)
			return m, nil
		}
	}
	return nil, errf(http.StatusNotFound, "monitor not found: %s", id)
}

var traceIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// searchTraces implements the documented subset of the trace search:
// serviceName, from/to (seconds), traceId, minLatencyMillis, page, perPage,
// order by LATENCY or START_AT.
func (s *Server) searchTraces(body []byte) (any, *apiError) {
	var p struct {
		ServiceName      string  `json:"serviceName"`
		From             int64   `json:"from"`
		To               int64   `json:"to"`
		TraceID          *string `json:"traceId"`
		MinLatencyMillis *int64  `json:"minLatencyMillis"`
		Page             *int    `json:"page"`
		PerPage          *int    `json:"perPage"`
		Order            struct {
			Column    *string `json:"column"`
			Direction *string `json:"direction"`
		} `json:"order"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, errf(http.StatusBadRequest, "malformed trace search: %v", err)
	}
	page, perPage := 1, 20
	if p.Page != nil {
		page = *p.Page
	}
	if p.PerPage != nil {
		perPage = *p.PerPage
	}
	switch {
	case p.ServiceName == "":
		return nil, errf(http.StatusBadRequest, "serviceName is required")
	case p.From > p.To:
		return nil, errf(http.StatusBadRequest, "from must not be after to")
	case p.TraceID != nil && !traceIDRE.MatchString(*p.TraceID):
		return nil, errf(http.StatusBadRequest, "traceId must be 32 lower-case hex digits")
	case page < 1 || perPage < 1 || perPage > 100:
		return nil, errf(http.StatusBadRequest, "page must be >= 1 and perPage in 1..100")
	case p.Order.Column != nil && *p.Order.Column != "LATENCY" && *p.Order.Column != "START_AT":
		return nil, errf(http.StatusBadRequest, "order.column must be LATENCY or START_AT")
	case p.Order.Direction != nil && *p.Order.Direction != "ASC" && *p.Order.Direction != "DESC":
		return nil, errf(http.StatusBadRequest, "order.direction must be ASC or DESC")
	}
	s.mu.Lock()
	var found []Trace
	for _, t := range s.traces {
		if t.ServiceName == p.ServiceName && t.StartAt >= p.From && t.StartAt <= p.To &&
			(p.MinLatencyMillis == nil || t.LatencyMillis >= *p.MinLatencyMillis) &&
			(p.TraceID == nil || t.TraceID == *p.TraceID) {
			found = append(found, t)
		}
	}
	s.mu.Unlock()
	byLatency := p.Order.Column != nil && *p.Order.Column == "LATENCY"
	asc := p.Order.Direction != nil && *p.Order.Direction == "ASC"
	sort.SliceStable(found, func(i, j int) bool {
		a, b := found[i].StartAt, found[j].StartAt
		if byLatency {
			a, b = found[i].LatencyMillis, found[j].LatencyMillis
		}
		if asc {
			return a < b
		}
		return a > b
	})
	lo := min((page-1)*perPage, len(found))
	hi := min(lo+perPage, len(found))
	return map[string]any{"results": found[lo:hi], "hasNextPage": hi < len(found)}, nil
}
