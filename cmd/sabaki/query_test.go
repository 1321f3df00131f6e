package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

var updateQuery = flag.Bool("update-query", false, "rewrite testdata/query golden files")

var queryT0 = time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)

// queryStore writes three hours of windows into a store under a temp data
// dir: a latency histogram per route with exemplars, a request counter and an
// instance-count gauge, for two services.
func queryStore(t *testing.T) string {
	t.Helper()
	dataDir := t.TempDir()
	st, err := store.Open(store.Dir(dataDir), store.Options{Now: func() time.Time { return queryT0.Add(4 * time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for m := range 180 {
		start := queryT0.Add(time.Duration(m) * time.Minute)
		var aggs []metric.Aggregate
		for si, svc := range []string{"api", "web"} {
			res := metric.NewAttrs(map[string]string{"service.name": svc, "cloud.region": "asia-northeast1"})
			for ri, route := range []string{"/a", "/b"} {
				h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
				n := 10 + ri*5 + si
				for i := range n {
					h.Record(0.01 * float64(1+(i*7+m)%20) * float64(1+ri))
				}
				a := metric.Aggregate{Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram, Resource: res,
					Attrs: metric.NewAttrs(map[string]string{"http.route": route}), Hist: h, ErrorTracked: route == "/a", ErrorCount: uint64(m % 2)}
				if m%60 == 7 {
					a.Exemplars = []metric.Exemplar{{TraceID: [16]byte{0xab, byte(m), byte(si), byte(ri)}, SpanID: [8]byte{0xcd, byte(m)}, Value: h.Max(), Time: start.Add(10 * time.Second)}}
				}
				aggs = append(aggs, a)
				aggs = append(aggs, metric.Aggregate{Name: "http.requests", Unit: "{request}", Kind: metric.Counter, Resource: res,
					Attrs: metric.NewAttrs(map[string]string{"http.route": route}), Sum: float64(n), Count: uint64(n)})
			}
			v := float64(1 + (m/30+si)%3)
			aggs = append(aggs, metric.Aggregate{Name: "run.instances", Unit: "{instance}", Kind: metric.Gauge, Resource: res,
				Sum: v, Count: 1, Last: v, Min: v, Max: v})
		}
		if err := st.Write(context.Background(), &metric.Window{Start: start, Duration: time.Minute, Series: aggs}); err != nil {
			t.Fatal(err)
		}
	}
	return dataDir
}

func TestQueryCommand(t *testing.T) {
	dataDir := queryStore(t)
	defer func(f func() time.Time) { queryNow = f }(queryNow)
	queryNow = func() time.Time { return queryT0.Add(3 * time.Hour) }
	rng := []string{"-from", "2026-11-02T00:00:00Z", "-to", "2026-11-02T03:00:00Z"}
	tests := []struct {
		name     string
		args     []string
		wantCode int
	}{
		{"metrics", nil, 0},
		{"metrics_json", []string{"-o", "json"}, 0},
		{"metrics_csv", []string{"-o", "csv"}, 0},
		{"latency_table", append([]string{"-metric", "http.server.request.duration", "-stat", "count,p50,p95,max,error_ratio"}, rng...), 0},
		{"latency_json", append([]string{"-metric", "http.server.request.duration", "-stat", "p95,error_ratio", "-o", "json"}, rng...), 0},
		{"latency_csv", append([]string{"-metric", "http.server.request.duration", "-stat", "count,mean,p99", "-o", "csv"}, rng...), 0},
		{"latency_group_by_route", append([]string{"-metric", "http.server.request.duration", "-group-by", "http.route", "-stat", "count,rate,p95"}, rng...), 0},
		{"latency_where_minutes", []string{"-metric", "http.server.request.duration", "-where", "http.route=/b", "-where", "service.name=web",
			"-from", "2026-11-02T01:00:00Z", "-to", "2026-11-02T01:03:00Z", "-step", "1m", "-stat", "count,min,max", "-o", "json"}, 0},
		{"latency_default_range", []string{"-metric", "http.server.request.duration", "-group-by", "service.name", "-step", "1d"}, 0},
		{"requests_default_stat", append([]string{"-metric", "http.requests", "-group-by", "service.name,http.route"}, rng...), 0},
		{"instances", append([]string{"-metric", "run.instances", "-stat", "last,min,max,mean", "-group-by", "cloud.region", "-step", "30m"}, rng...), 0},
		{"exemplars_json", append([]string{"-metric", "http.server.request.duration", "-exemplars", "-where", "http.route=/a", "-o", "json"}, rng...), 0},
		{"exemplars_table", append([]string{"-metric", "http.server.request.duration", "-exemplars"}, rng...), 0},
		{"unknown_metric", []string{"-metric", "http.server.request.durations"}, 1},
		{"stat_for_wrong_kind", []string{"-metric", "http.requests", "-stat", "p95"}, 2},
		{"bad_stat", []string{"-metric", "http.requests", "-stat", "median"}, 2},
		{"bad_from", []string{"-metric", "http.requests", "-from", "yesterday"}, 2},
		{"empty_range", []string{"-metric", "http.requests", "-from", "1h", "-to", "2h"}, 2},
		{"bad_where", []string{"-metric", "http.requests", "-where", "route"}, 2},
		{"no_rows_json", []string{"-metric", "http.requests", "-from", "2020-01-01T00:00:00Z", "-to", "2020-01-02T00:00:00Z", "-o", "json"}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := runQuery(append([]string{"-data-dir", dataDir}, tc.args...), &stdout, &stderr)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.wantCode, stderr.String())
			}
			got := stdout.String()
			if code != 0 || got == "" {
				got += "--- stderr\n" + strings.ReplaceAll(stderr.String(), dataDir, "DATA")
			}
			golden(t, filepath.Join("testdata", "query", tc.name+".golden"), got)
		})
	}
}

func golden(t *testing.T, path, got string) {
	t.Helper()
	if *updateQuery {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestQueryCommand -update-query)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// TestQueryJSONContract checks the documented JSON shapes field by field, so
// a golden-file update cannot change them by accident.
func TestQueryJSONContract(t *testing.T) {
	dataDir := queryStore(t)
	run := func(args ...string) []map[string]any {
		t.Helper()
		var stdout, stderr bytes.Buffer
		if code := runQuery(append([]string{"-data-dir", dataDir, "-from", "2026-11-02T00:00:00Z", "-to", "2026-11-02T03:00:00Z"}, args...), &stdout, &stderr); code != 0 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		var out []map[string]any
		if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
			t.Fatal(err)
		}
		if len(out) == 0 {
			t.Fatal("no rows")
		}
		return out
	}
	keys := func(m map[string]any) string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		return strings.Join(sortedCopy(ks), ",")
	}
	rows := run("-metric", "http.server.request.duration", "-stat", "count,error_ratio", "-o", "json", "-group-by", "http.route")
	if k := keys(rows[0]); k != "attributes,metric,stat,time,value" {
		t.Errorf("stat row keys = %s", k)
	}
	for _, r := range rows {
		if r["stat"] == "error_ratio" && r["attributes"].(map[string]any)["http.route"] == "/b" {
			t.Errorf("error_ratio printed for a route without error information: %v", r)
		}
		if v := r["value"].(float64); r["stat"] == "count" && v != float64(int64(v)) {
			t.Errorf("count %v is not an integer", v)
		}
		if r["stat"] == "error_ratio" && (r["value"].(float64) < 0 || r["value"].(float64) > 1) {
			t.Errorf("error_ratio %v outside 0–1", r["value"])
		}
		if _, err := time.Parse(time.RFC3339, r["time"].(string)); err != nil {
			t.Error(err)
		}
	}
	if k := keys(run("-o", "json")[0]); k != "kind,metric,series,unit" {
		t.Errorf("metric list keys = %s", k)
	}
	if k := keys(run("-metric", "http.server.request.duration", "-exemplars", "-o", "json")[0]); k != "attributes,metric,span_id,time,trace_id,value" {
		t.Errorf("exemplar keys = %s", k)
	}
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func TestQueryMissingStore(t *testing.T) {
	var stdout, stderr bytes.Buffer
	dir := filepath.Join(t.TempDir(), "none")
	if code := runQuery([]string{"-data-dir", dir, "-metric", "x"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "no sabaki store in "+filepath.Join(dir, "store")) {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}

func TestQueryWithConfig(t *testing.T) {
	dataDir := queryStore(t)
	cfg := filepath.Join(t.TempDir(), "sabaki.yaml")
	if err := os.WriteFile(cfg, []byte("agent:\n  data_dir: "+dataDir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := runQuery([]string{"-config", cfg, "-o", "csv"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "http.requests,counter,{request},4") {
		t.Errorf("metric list via -config:\n%s", stdout.String())
	}
	stdout.Reset()
	stderr.Reset()
	os.WriteFile(cfg, []byte("agent:\n  data_dirr: x\n"), 0o600)
	if code := runQuery([]string{"-config", cfg}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), cfg+":2:3: agent.data_dirr: unknown key") {
		t.Errorf("bad config: exit %d, stderr %q", code, stderr.String())
	}
	if code := runQuery([]string{"-config", cfg, "-data-dir", dataDir}, &stdout, &stderr); code != 2 {
		t.Errorf("-config with -data-dir: exit %d", code)
	}
}

func TestQueryExemplarTraceURL(t *testing.T) {
	dataDir := queryStore(t)
	cfg := filepath.Join(t.TempDir(), "sabaki.yaml")
	os.WriteFile(cfg, []byte("agent:\n  data_dir: "+dataDir+"\nexporters:\n  - type: mackerel\n    api_key: k\n    service: toitta\n    org: my-org\n"), 0o600)
	var stdout, stderr bytes.Buffer
	if code := runQuery([]string{"-config", cfg, "-metric", "http.server.request.duration", "-exemplars", "-o", "json",
		"-from", "2026-11-02T00:00:00Z", "-to", "2026-11-02T00:10:00Z", "-where", "http.route=/a", "-where", "service.name=api"}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var out []map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil || len(out) != 1 {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	if got, want := out[0]["trace_url"], "https://mackerel.io/orgs/my-org/tracing/traces/ab070000000000000000000000000000"; got != want {
		t.Errorf("trace_url = %v, want %v", got, want)
	}
}
