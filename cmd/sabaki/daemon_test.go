package main

import (
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
