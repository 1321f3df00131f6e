package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/internal/fake/fakegcp"
)

type queryRow struct {
	Time       string            `json:"time"`
	Metric     string            `json:"metric"`
	Attributes map[string]string `json:"attributes"`
	Stat       string            `json:"stat"`
	Value      float64           `json:"value"`
}

func queryJSON(t *testing.T, args ...string) []queryRow {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(append([]string{"query", "-o", "json"}, args...), &out, &errb); code != 0 {
		t.Fatalf("query %v: exit %d: %s", args, code, errb.String())
	}
	var rows []queryRow
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil {
		t.Fatalf("query output: %v\n%s", err, out.String())
	}
	return rows
}

// TestBackfillQuery imports a day of Cloud Run and Cloud SQL data from the
// fake Cloud Monitoring through the real client, the pipeline and the store,
// then reads it back with `sabaki query`: request counts exact, p95 per
// service and hour within the conversion bound, instance counts and Cloud SQL
// CPU exact.
func TestBackfillQuery(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Minute)
	start := now.Add(-24*time.Hour - 10*time.Minute)
	srv := fakegcp.New(now)
	truth := srv.Load(fakegcp.Scenario{Project: "demo", Start: start, Duration: 24 * time.Hour, Services: 2, SQLInstances: 1, Seed: 7})
	addr, err := srv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()

	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "sabaki.yaml")
	cfg := fmt.Sprintf(`agent:
  data_dir: %s
resource:
  detect: []
sources:
  - type: cloudmonitoring
    name: gcp
    project: demo
    presets: [cloudrun, cloudsql]
    endpoint: %s
    credentials: none
exporters:
  - type: console
`, filepath.Join(dir, "data"), addr)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"backfill", "-config", cfgFile, "-source", "gcp", "-from", "26h", "-chunk", "6h"}, &out, &errb); code != 0 {
		t.Fatalf("backfill: exit %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	}
	t.Log(strings.TrimSpace(out.String()))
	if calls := srv.CallCount("ListTimeSeries", ""); calls != 5*19 {
		t.Errorf("ListTimeSeries calls = %d, want 5 chunks × 19 metric types", calls)
	}

	// request_count: exact per service.
	rows := queryJSON(t, "-config", cfgFile, "-metric", "run.googleapis.com/request_count", "-group-by", "service_name",
		"-stat", "sum", "-from", "26h", "-step", "1h")
	got := map[string]float64{}
	for _, r := range rows {
		got[r.Attributes["service_name"]] += r.Value
	}
	for svc, n := range truth.Requests {
		if got[svc] != float64(n) {
			t.Errorf("query request_count %s = %v, want %d", svc, got[svc], n)
		}
	}

	// request_latencies p95 per service and hour; count exact.
	rows = queryJSON(t, "-config", cfgFile, "-metric", "run.googleapis.com/request_latencies", "-group-by", "service_name",
		"-stat", "p95,count", "-from", "26h", "-step", "1h")
	checked := 0
	type key struct{ svc, time string }
	p95 := map[key]float64{}
	counts := map[key]float64{}
	for _, r := range rows {
		k := key{r.Attributes["service_name"], r.Time}
		if r.Stat == "p95" {
			p95[k] = r.Value
		} else {
			counts[k] = r.Value
		}
	}
	for k, est := range p95 {
		ts, err := time.Parse(time.RFC3339, k.time)
		if err != nil {
			t.Fatalf("row time %q: %v", k.time, err)
		}
		// Samples whose delta point (start, end] lies in the hour: a
		// delta point belongs to the window holding its last instant.
		var samples []float64
		for end, s := range truth.LatenciesByTime[k.svc] {
			if e := time.Unix(end, 0).Add(-1); !e.Before(ts) && e.Before(ts.Add(time.Hour)) {
				samples = append(samples, s...)
			}
		}
		if len(samples) == 0 {
			continue
		}
		if counts[k] != float64(len(samples)) {
			t.Errorf("%s %s: count %v, want %d", k.svc, k.time, counts[k], len(samples))
		}
		slices.Sort(samples)
		exact := samples[(95*len(samples)+99)/100-1]
		// Growth 1.4 buckets: an observation can move within its bucket
		// (≤ 40 %), plus the stored histogram's own relative error (≤ 10 %
		// at the scales 160 buckets allow here).
		bound := 0.4 + 0.1
		if rel := (est - exact) / exact; rel > bound || rel < -bound {
			t.Errorf("%s %s: p95 %.1f ms, exact %.1f ms (error %.2f)", k.svc, k.time, est, exact, rel)
		}
		checked++
	}
	if checked < 40 {
		t.Errorf("only %d hourly p95 rows checked", checked)
	}

	// Instance count (gauge): the hourly max of state=active equals the input.
	rows = queryJSON(t, "-config", cfgFile, "-metric", "run.googleapis.com/container/instance_count", "-where", "state=active",
		"-group-by", "service_name", "-stat", "max", "-from", "26h", "-step", "1h")
	checkMax := func(name string, rows []queryRow, want func(string) map[int64]float64, attr string) {
		t.Helper()
		n := 0
		for _, r := range rows {
			ts, _ := time.Parse(time.RFC3339, r.Time)
			var m float64
			for end, v := range want(r.Attributes[attr]) {
				if e := time.Unix(end, 0); !e.Before(ts) && e.Before(ts.Add(time.Hour)) {
					m = max(m, v)
				}
			}
			if r.Value != m {
				t.Errorf("%s %s %s: max %v, want %v", name, r.Attributes[attr], r.Time, r.Value, m)
			}
			n++
		}
		if n < 24 {
			t.Errorf("%s: %d rows", name, n)
		}
	}
	checkMax("instance_count", rows, func(svc string) map[int64]float64 {
		out := map[int64]float64{}
		for k, v := range truth.ActiveInstances[svc] {
			out[k] = float64(v)
		}
		return out
	}, "service_name")
	rows = queryJSON(t, "-config", cfgFile, "-metric", "cloudsql.googleapis.com/database/cpu/utilization",
		"-group-by", "database_id", "-stat", "max", "-from", "26h", "-step", "1h")
	checkMax("cpu/utilization", rows, func(db string) map[int64]float64 { return truth.CPU[db] }, "database_id")
	rows = queryJSON(t, "-config", cfgFile, "-metric", "cloudsql.googleapis.com/database/postgresql/num_backends",
		"-where", "database=postgres", "-stat", "max", "-from", "26h", "-step", "1h")
	if len(rows) < 24 || rows[0].Value != 1 {
		t.Errorf("num_backends{database=postgres}: %d rows, first %+v", len(rows), rows)
	}
}

// TestRunCloudMonitoringLive runs `sabaki run` as a process against the fake
// (real time, polling every 2 s with a 5 min lookback, so every point is
// re-read many times), stops it, and checks with `sabaki query` that each
// minute's request count was stored exactly once.
func TestRunCloudMonitoringLive(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Minute)
	srv := fakegcp.New(now)
	truth := srv.Load(fakegcp.Scenario{Project: "demo", Start: now.Add(-20 * time.Minute), Duration: 30 * time.Minute,
		Services: 2, SQLInstances: 1, Seed: 8})
	srv.UseWallClock()
	addr, err := srv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "sabaki.yaml")
	cfg := fmt.Sprintf(`agent:
  data_dir: %s
  admin_listen: 127.0.0.1:0
  lateness: 5m
resource:
  detect: []
sources:
  - type: cloudmonitoring
    name: gcp
    project: demo
    endpoint: %s
    credentials: none
    interval: 2s
    timeout: 2s
    lookback: 5m
    backfill: 10m
exporters:
  - type: console
    max_series: 1
`, filepath.Join(dir, "data"), addr)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	p := startAgent(t, "-config", cfgFile)
	p.waitFor("polls", 20*time.Second, func(string, string) bool {
		return srv.CallCount("ListTimeSeries", fakegcp.RunRequestCount) >= 4
	})
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(30 * time.Second); code != 0 {
		_, errs := p.output()
		t.Fatalf("exit %d\n%s", code, errs)
	}
	t1 := time.Now()
	// Minutes whose points were visible at the first poll and still inside
	// the lateness (first poll at t0), up to those surely visible at the end.
	from := t0.Add(-4 * time.Minute).Truncate(time.Minute)
	to := t1.Add(-2 * time.Minute).Truncate(time.Minute)
	rows := queryJSON(t, "-config", cfgFile, "-metric", "run.googleapis.com/request_count", "-group-by", "service_name",
		"-stat", "sum", "-from", from.Format(time.RFC3339), "-to", to.Format(time.RFC3339), "-step", "1m")
	got := map[string]float64{}
	for _, r := range rows {
		got[r.Attributes["service_name"]] += r.Value
	}
	for svc, byEnd := range truth.LatenciesByTime {
		want := 0
		for end, samples := range byEnd {
			if e := time.Unix(end, 0).Add(-1); !e.Before(from) && e.Before(to) {
				want += len(samples)
			}
		}
		if got[svc] != float64(want) || want == 0 {
			t.Errorf("%s: stored request_count %v over %s..%s, want %d (each point once)", svc, got[svc], from.Format("15:04"), to.Format("15:04"), want)
		}
	}
	t.Logf("%d ListTimeSeries calls for request_count over %s", srv.CallCount("ListTimeSeries", fakegcp.RunRequestCount), t1.Sub(t0).Round(time.Second))
}
