package main

import (
	"log/slog"
	"math"
	"runtime/debug"
	"testing"
)

// TestPipelineConfigMaxRawSeries: agent.max_raw_series reaches the
// pipeline; absent, it is the default (1,000,000).
func TestPipelineConfigMaxRawSeries(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want int
	}{
		{"default", "agent: {window: 60s}\n", 1_000_000},
		{"set", "agent: {max_raw_series: 5000}\n", 5000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, ps := parseConfig("test.yaml", []byte(tc.yaml), func(string) (string, bool) { return "", false }, false)
			if len(ps) > 0 {
				t.Fatalf("problems: %v", ps)
			}
			if got := pipelineConfig(cfg, nil).MaxRawSeries; got != tc.want {
				t.Errorf("MaxRawSeries = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestMemoryLimit: agent.memory_limit is validated, becomes the runtime's
// soft memory limit, and yields to GOMEMLIMIT.
func TestMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	for _, tc := range []struct {
		name    string
		yaml    string
		env     string
		want    int64 // limit in effect; -1: the previous one (untouched)
		problem bool
	}{
		{"default: no limit", "agent: {window: 60s}\n", "", -1, false},
		{"set", "agent: {memory_limit: 200MiB}\n", "", 200 << 20, false},
		{"GOMEMLIMIT wins", "agent: {memory_limit: 200MiB}\n", "300MiB", -1, false},
		{"too small", "agent: {memory_limit: 1MiB}\n", "", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetMemoryLimit(math.MaxInt64)
			cfg, ps := parseConfig("test.yaml", []byte(tc.yaml), func(string) (string, bool) { return "", false }, false)
			if tc.problem {
				if len(ps) == 0 {
					t.Fatal("no problem reported")
				}
				return
			}
			if len(ps) > 0 {
				t.Fatalf("problems: %v", ps)
			}
			getenv := func(k string) string {
				if k == "GOMEMLIMIT" {
					return tc.env
				}
				return ""
			}
			got := applyMemoryLimit(int64(cfg.Agent.MemoryLimit), getenv, slog.New(slog.DiscardHandler))
			want := tc.want
			if want < 0 {
				want = math.MaxInt64
			}
			if got != want || debug.SetMemoryLimit(-1) != want {
				t.Errorf("limit %d (runtime: %d), want %d", got, debug.SetMemoryLimit(-1), want)
			}
		})
	}
}
