package fakegcp

import (
	"context"
	"errors"
	"testing"
	"time"

	monitoring "cloud.google.com/go/monitoring/apiv3/v2"
	"cloud.google.com/go/monitoring/apiv3/v2/monitoringpb"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

var t0 = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)

// client is the real gapic client on the fake, as sabaki uses it.
func client(t *testing.T) (*Server, *monitoring.MetricClient) {
	t.Helper()
	srv := New(t0.Add(time.Hour))
	srv.Load(Scenario{Project: "demo", Start: t0, Duration: time.Hour, Services: 2, SQLInstances: 1, Seed: 1})
	addr, err := srv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	c, err := monitoring.NewMetricClient(context.Background(), option.WithEndpoint(addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return srv, c
}

func list(c *monitoring.MetricClient, req *monitoringpb.ListTimeSeriesRequest) ([]*monitoringpb.TimeSeries, error) {
	it := c.ListTimeSeries(context.Background(), req)
	var out []*monitoringpb.TimeSeries
	for {
		ts, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, ts)
	}
}

func TestFakeRules(t *testing.T) {
	_, c := client(t)
	iv := &monitoringpb.TimeInterval{StartTime: Timestamp(t0.Add(10 * time.Minute)), EndTime: Timestamp(t0.Add(20 * time.Minute))}
	tests := []struct {
		name   string
		req    *monitoringpb.ListTimeSeriesRequest
		code   codes.Code
		series int
	}{
		{"one metric type", &monitoringpb.ListTimeSeriesRequest{Name: "projects/demo", Filter: `metric.type = "` + RunInstanceCount + `"`, Interval: iv}, codes.OK, 4},
		{"resource label filter", &monitoringpb.ListTimeSeriesRequest{Name: "projects/demo",
			Filter: `metric.type = "` + RunInstanceCount + `" AND resource.labels.service_name = "web-1"`, Interval: iv}, codes.OK, 2},
		{"metric label one_of", &monitoringpb.ListTimeSeriesRequest{Name: "projects/demo",
			Filter: `metric.type = "` + RunInstanceCount + `" AND (metric.labels.state = one_of("active"))`, Interval: iv}, codes.OK, 2},
		{"no metric type", &monitoringpb.ListTimeSeriesRequest{Name: "projects/demo", Filter: `resource.type = "cloud_run_revision"`, Interval: iv}, codes.InvalidArgument, 0},
		{"OR", &monitoringpb.ListTimeSeriesRequest{Name: "projects/demo", Filter: `metric.type = "a" OR metric.type = "b"`, Interval: iv}, codes.InvalidArgument, 0},
		{"no end time", &monitoringpb.ListTimeSeriesRequest{Name: "projects/demo", Filter: `metric.type = "` + RunInstanceCount + `"`,
			Interval: &monitoringpb.TimeInterval{}}, codes.InvalidArgument, 0},
		{"unknown project", &monitoringpb.ListTimeSeriesRequest{Name: "projects/other", Filter: `metric.type = "` + RunInstanceCount + `"`, Interval: iv}, codes.PermissionDenied, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := list(c, tt.req)
			if status.Code(err) != tt.code {
				t.Fatalf("code %v (%v), want %v", status.Code(err), err, tt.code)
			}
			if len(got) != tt.series {
				t.Errorf("%d series, want %d", len(got), tt.series)
			}
		})
	}
}

func TestFakeIntervalOrderAndPaging(t *testing.T) {
	srv, c := client(t)
	req := &monitoringpb.ListTimeSeriesRequest{Name: "projects/demo", Filter: `metric.type = "` + RunInstanceCount + `"`,
		Interval: &monitoringpb.TimeInterval{StartTime: Timestamp(t0.Add(10 * time.Minute)), EndTime: Timestamp(t0.Add(20 * time.Minute))},
		PageSize: 7}
	series, err := list(c, req)
	if err != nil {
		t.Fatal(err)
	}
	// 4 series × 10 points in (10m, 20m], pages of 7 points: a series is
	// split across pages and its header repeats.
	points := 0
	for _, ts := range series {
		for i, p := range ts.Points {
			end := p.Interval.EndTime.AsTime()
			if !end.After(t0.Add(10*time.Minute)) || end.After(t0.Add(20*time.Minute)) {
				t.Fatalf("point at %s outside (10m, 20m]", end)
			}
			if i > 0 && !end.Before(ts.Points[i-1].Interval.EndTime.AsTime()) {
				t.Fatal("points not newest first")
			}
		}
		points += len(ts.Points)
	}
	if points != 40 || len(series) <= 4 {
		t.Errorf("%d points in %d series pieces, want 40 points in more than 4 pieces", points, len(series))
	}
	if n := srv.CallCount("ListTimeSeries", RunInstanceCount); n != 6 {
		t.Errorf("%d pages, want 6 (40 points / 7)", n)
	}
	// HEADERS: series without points.
	req.View, req.PageSize = monitoringpb.ListTimeSeriesRequest_HEADERS, 0
	series, err = list(c, req)
	if err != nil || len(series) != 4 || len(series[0].Points) != 0 {
		t.Errorf("HEADERS: %d series, err %v", len(series), err)
	}
}

func TestFakeLateVisibilityAndFaults(t *testing.T) {
	srv := New(t0)
	srv.Load(Scenario{Project: "demo", Start: t0, Duration: 30 * time.Minute, Services: 1, LateEvery: 2, Seed: 2})
	addr, err := srv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	c, err := monitoring.NewMetricClient(context.Background(), option.WithEndpoint(addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := &monitoringpb.ListTimeSeriesRequest{Name: "projects/demo", Filter: `metric.type = "` + RunBillableTime + `"`,
		Interval: &monitoringpb.TimeInterval{StartTime: Timestamp(t0), EndTime: Timestamp(t0.Add(10 * time.Minute))}}
	count := func() int {
		s, err := list(c, req)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, ts := range s {
			n += len(ts.Points)
		}
		return n
	}
	srv.SetNow(t0.Add(12 * time.Minute))
	early := count()
	srv.SetNow(t0.Add(15 * time.Minute))
	if late := count(); early >= 10 || late != 10 {
		t.Errorf("visible points: %d at +12m, %d at +15m; want fewer than 10, then 10", early, late)
	}
	// (UNAVAILABLE would be retried by the gapic client's defaults.)
	srv.Fail(Fault{Method: "ListTimeSeries", Code: codes.PermissionDenied, Times: 1})
	if _, err := list(c, req); status.Code(err) != codes.PermissionDenied {
		t.Errorf("scripted fault: %v", err)
	}
	if _, err := list(c, req); err != nil {
		t.Errorf("fault fired more than Times: %v", err)
	}
}
