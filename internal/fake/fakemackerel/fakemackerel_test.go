package fakemackerel

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	mackerel "github.com/mackerelio/mackerel-client-go"
)

var now = time.Date(2026, 11, 25, 12, 0, 30, 0, time.UTC)

func newFake(t *testing.T, rules *Rules) (*Server, *mackerel.Client) {
	t.Helper()
	s := New(Options{
		Keys:     map[string]Perm{"rw": {Read: true, Write: true}, "ro": {Read: true}},
		Services: []string{"toitta"},
		Rules:    rules,
		Now:      func() time.Time { return now },
	})
	t.Cleanup(s.Close)
	c, err := mackerel.NewClientWithOptions("rw", s.URL, false)
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

func apiStatus(err error) int {
	var ae *mackerel.APIError
	if errors.As(err, &ae) {
		return ae.StatusCode
	}
	return 0
}

func TestServiceMetricRules(t *testing.T) {
	tests := []struct {
		name   string
		key    string
		svc    string
		values []*mackerel.MetricValue
		status int // 0 = success
	}{
		{"ok", "rw", "toitta", []*mackerel.MetricValue{{Name: "a.p95.x", Time: now.Unix(), Value: 1.5}}, 0},
		{"unknown key", "nope", "toitta", []*mackerel.MetricValue{{Name: "a", Time: now.Unix(), Value: 1}}, 403},
		{"read-only key", "ro", "toitta", []*mackerel.MetricValue{{Name: "a", Time: now.Unix(), Value: 1}}, 403},
		{"unknown service", "rw", "nosuch", []*mackerel.MetricValue{{Name: "a", Time: now.Unix(), Value: 1}}, 404},
		{"bad character", "rw", "toitta", []*mackerel.MetricValue{{Name: "a/b", Time: now.Unix(), Value: 1}}, 400},
		{"empty segment", "rw", "toitta", []*mackerel.MetricValue{{Name: "a..b", Time: now.Unix(), Value: 1}}, 400},
		{"trailing dot", "rw", "toitta", []*mackerel.MetricValue{{Name: "a.", Time: now.Unix(), Value: 1}}, 400},
		{"string value", "rw", "toitta", []*mackerel.MetricValue{{Name: "a", Time: now.Unix(), Value: "1"}}, 400},
		{"missing time (client omits 0)", "rw", "toitta", []*mackerel.MetricValue{{Name: "a", Time: 0, Value: 1}}, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, c := newFake(t, nil)
			c.APIKey = tc.key
			err := c.PostServiceMetricValuesContext(context.Background(), tc.svc, tc.values)
			if got := apiStatus(err); got != tc.status || (tc.status == 0 && err != nil) {
				t.Fatalf("status %d (err %v), want %d", got, err, tc.status)
			}
			if tc.status != 0 {
				var ae *mackerel.APIError
				errors.As(err, &ae)
				if ae.Message == "" || strings.HasPrefix(ae.Message, "4") {
					t.Fatalf("error message not taken from the JSON body: %q", ae.Message)
				}
				if len(s.Names(tc.svc)) != 0 {
					t.Fatal("a rejected post stored values")
				}
			}
		})
	}
}

func TestNaNIsNotJSON(t *testing.T) {
	s, _ := newFake(t, nil)
	req, _ := http.NewRequest(http.MethodPost, s.URL+"/api/v0/services/toitta/tsdb",
		strings.NewReader(`[{"name":"a","time":1764072000,"value":NaN}]`))
	req.Header.Set("X-Api-Key", "rw")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("NaN body: status %d, want 400", resp.StatusCode)
	}
}

func TestSlotsLastWriteWinsAndOldDiscarded(t *testing.T) {
	s, c := newFake(t, nil)
	ctx := context.Background()
	minute := now.Truncate(time.Minute).Unix()
	post := func(ts int64, v float64) {
		t.Helper()
		if err := c.PostServiceMetricValuesContext(ctx, "toitta", []*mackerel.MetricValue{{Name: "m", Time: ts, Value: v}}); err != nil {
			t.Fatal(err)
		}
	}
	post(minute, 1)
	post(minute+30, 2) // same minute: overwrites
	post(minute-25*3600, 3)
	post(minute+25*3600, 4)
	if v, ok := s.Value("toitta", "m", now); !ok || v != 2 {
		t.Fatalf("slot value = %v %v, want 2 (last write)", v, ok)
	}
	w, o, d := s.Stats()
	if w != 2 || o != 1 || d != 2 {
		t.Fatalf("writes/overwrites/discarded = %d/%d/%d, want 2/1/2", w, o, d)
	}
	if ps := s.Points("toitta", "m"); len(ps) != 1 {
		t.Fatalf("points %v", ps)
	}
	got, err := c.FetchServiceMetricValuesContext(ctx, "toitta", "m", minute-60, minute+60)
	if err != nil || len(got) != 1 {
		t.Fatalf("read back: %v %v", got, err)
	}
}

func TestFaults(t *testing.T) {
	s, c := newFake(t, nil)
	ctx := context.Background()
	vals := []*mackerel.MetricValue{{Name: "m", Time: now.Unix(), Value: 1}}

	s.FailNext(1, "", Fault{Status: 429, RetryAfter: "17"})
	var ra string
	c.HTTPClient.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := http.DefaultTransport.RoundTrip(r)
		if err == nil {
			ra = resp.Header.Get("Retry-After")
		}
		return resp, err
	})
	if err := c.PostServiceMetricValuesContext(ctx, "toitta", vals); apiStatus(err) != 429 || ra != "17" {
		t.Fatalf("scripted 429: err %v, Retry-After %q", err, ra)
	}
	s.FailNext(1, "/api/v0/services/", Fault{Reset: true})
	if err := c.PostServiceMetricValuesContext(ctx, "toitta", vals); err == nil || apiStatus(err) != 0 {
		t.Fatalf("connection reset: err %v", err)
	}
	s.FailBetween(now.Add(-time.Minute), now.Add(time.Minute), "", Fault{Status: 503})
	if err := c.PostServiceMetricValuesContext(ctx, "toitta", vals); apiStatus(err) != 503 {
		t.Fatalf("period 503: %v", err)
	}
	s.ClearFaults()
	s.FailNext(1, "", Fault{Delay: time.Second})
	c.HTTPClient.Timeout = 50 * time.Millisecond
	if err := c.PostServiceMetricValuesContext(ctx, "toitta", vals); err == nil {
		t.Fatal("slow response did not time out")
	}
	c.HTTPClient.Timeout = 5 * time.Second
	if err := c.PostServiceMetricValuesContext(ctx, "toitta", vals); err != nil {
		t.Fatalf("after faults: %v", err)
	}
	var failed int
	for _, p := range s.Posts() {
		if p.Status != 200 {
			failed++
		}
	}
	if failed != 3 {
		t.Fatalf("recorded %d failed posts, want 3 (429, reset, 503): %+v", failed, s.Posts())
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestRateLimit(t *testing.T) {
	for _, withHeader := range []bool{false, true} {
		r := DefaultRules()
		r.RateLimitPerMinute, r.RateLimitRetryAfter = 2, withHeader
		_, c := newFake(t, &r)
		var mu sync.Mutex
		var ra []string
		c.HTTPClient.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
			resp, err := http.DefaultTransport.RoundTrip(r)
			if err == nil {
				mu.Lock()
				ra = append(ra, resp.Header.Get("Retry-After"))
				mu.Unlock()
			}
			return resp, err
		})
		vals := []*mackerel.MetricValue{{Name: "m", Time: now.Unix(), Value: 1}}
		for i := range 3 {
			err := c.PostServiceMetricValuesContext(context.Background(), "toitta", vals)
			if want := map[bool]int{true: 429, false: 0}[i == 2]; apiStatus(err) != want {
				t.Fatalf("request %d: %v", i, err)
			}
		}
		if got := ra[2] == "30"; got != withHeader {
			t.Fatalf("Retry-After %q (header wanted: %v)", ra[2], withHeader)
		}
	}
}

func TestGraphDefsAnnotationsMonitorsHosts(t *testing.T) {
	s, c := newFake(t, nil)
	ctx := context.Background()
	good := &mackerel.GraphDefsParam{Name: "custom.cloudrun.latency", Unit: "milliseconds",
		Metrics: []*mackerel.GraphDefsMetric{{Name: "custom.cloudrun.latency.p95"}}}
	if err := c.CreateGraphDefsContext(ctx, []*mackerel.GraphDefsParam{good, good}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []*mackerel.GraphDefsParam{
		{Name: "cloudrun.latency", Metrics: []*mackerel.GraphDefsMetric{{Name: "cloudrun.latency.p95"}}},
		{Name: "custom.x", Unit: "ms", Metrics: []*mackerel.GraphDefsMetric{{Name: "custom.x.a"}}},
		{Name: "custom.x", Metrics: []*mackerel.GraphDefsMetric{{Name: "custom.x.*"}}},
		{Name: "custom.x", Metrics: []*mackerel.GraphDefsMetric{{Name: "custom.y.a"}}},
	} {
		if err := c.CreateGraphDefsContext(ctx, []*mackerel.GraphDefsParam{bad}); apiStatus(err) != 400 {
			t.Errorf("graph def %q: %v, want 400", bad.Name, err)
		}
	}
	if len(s.GraphDefs()) != 1 {
		t.Fatalf("graph defs %v", s.GraphDefs())
	}

	a := &mackerel.GraphAnnotation{Title: "p95 above 1s", Description: "trace: https://x", From: now.Unix(), To: now.Unix(), Service: "toitta"}
	if _, err := c.CreateGraphAnnotationContext(ctx, a); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []mackerel.GraphAnnotation{
		{Title: strings.Repeat("t", 251), From: 1, To: 1, Service: "toitta"},
		{Title: "t", Description: strings.Repeat("d", 1025), From: 1, To: 1, Service: "toitta"},
		{Title: "t", From: 2, To: 1, Service: "toitta"},
	} {
		if _, err := c.CreateGraphAnnotationContext(ctx, &bad); apiStatus(err) != 400 {
			t.Errorf("annotation %.20q: %v, want 400", bad.Title, err)
		}
	}
	if _, err := c.CreateGraphAnnotationContext(ctx, &mackerel.GraphAnnotation{Title: "t", From: 1, To: 1, Service: "nosuch"}); apiStatus(err) != 404 {
		t.Errorf("annotation for unknown service: %v", err)
	}
	found, err := c.FindGraphAnnotationsContext(ctx, "toitta", now.Unix()-60, now.Unix()+60)
	if err != nil || len(found) != 1 || found[0].ID == "" {
		t.Fatalf("FindGraphAnnotations: %v %v", found, err)
	}

	m := &mackerel.MonitorServiceMetric{Type: "service", Name: "p95 /api", Service: "toitta", Metric: "a.p95.x",
		Operator: ">", Warning: mackerel.ToPtr(1000.0), Duration: 5}
	created, err := c.CreateMonitorContext(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	m.Warning = mackerel.ToPtr(2000.0)
	if _, err := c.UpdateMonitorContext(ctx, created.MonitorID(), m); err != nil {
		t.Fatal(err)
	}
	ms, err := c.FindMonitorsContext(ctx)
	if err != nil || len(ms) != 1 || ms[0].(*mackerel.MonitorServiceMetric).Warning == nil || *ms[0].(*mackerel.MonitorServiceMetric).Warning != 2000 {
		t.Fatalf("FindMonitors: %v %v", ms, err)
	}

	id, err := c.CreateHostContext(ctx, &mackerel.CreateHostParam{Name: "cloudsql-main", CustomIdentifier: "sabaki/cloudsql/main", Meta: mackerel.HostMeta{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateHostContext(ctx, &mackerel.CreateHostParam{Name: "again", CustomIdentifier: "sabaki/cloudsql/main"}); apiStatus(err) != 400 {
		t.Fatalf("duplicate customIdentifier: %v", err)
	}
	if err := c.PostHostMetricValuesContext(ctx, []*mackerel.HostMetricValue{{HostID: id, MetricValue: &mackerel.MetricValue{Name: "custom.x.y", Time: now.Unix(), Value: 3}}}); err != nil {
		t.Fatal(err)
	}
	if v, ok := s.HostValue(id, "custom.x.y", now); !ok || v != 3 {
		t.Fatalf("host value %v %v", v, ok)
	}
}
