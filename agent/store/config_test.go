package store

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

func tc(res, keep string) TierConfig {
	r, _ := config.ParseDuration(res)
	k, _ := config.ParseDuration(keep)
	return TierConfig{Resolution: config.Duration(r), Keep: config.Duration(k)}
}

func TestValidateRetention(t *testing.T) {
	tests := []struct {
		name   string
		tiers  []TierConfig
		window time.Duration
		want   []string // "field: message prefix"
	}{
		{"default", DefaultRetention(), time.Minute, nil},
		{"test tiers", []TierConfig{tc("1s", "1h"), tc("1m", "1d"), tc("1h", "30d")}, time.Second, nil},
		{"empty", nil, time.Minute, []string{": needs at least one tier"}},
		{"first not window", DefaultRetention(), 30 * time.Second, []string{"[0].resolution: must equal agent.window (30s)"}},
		{"not a multiple", []TierConfig{tc("1m", "14d"), tc("90s", "30d")}, time.Minute, []string{"[1].resolution: must be a multiple"}},
		{"descending", []TierConfig{tc("1h", "14d"), tc("1m", "30d")}, time.Hour, []string{"[1].resolution: must be a multiple"}},
		{"keep too short to roll up", []TierConfig{tc("1m", "30m"), tc("1h", "30d")}, time.Minute, []string{"[0].keep: must be longer than the next tier's resolution 1h"}},
		{"keep shrinks", []TierConfig{tc("1m", "14d"), tc("1h", "7d")}, time.Minute, []string{"[1].keep: must not be shorter"}},
		{"sub-second", []TierConfig{tc("500ms", "1h")}, 500 * time.Millisecond, []string{"[0].resolution: must be a whole number of seconds"}},
		{"zero keep", []TierConfig{tc("1m", "0s")}, time.Minute, []string{"[0].keep: must be positive"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateRetention(tc.tiers, tc.window)
			var got []string
			for _, e := range flattenErr(err) {
				var fe *config.FieldError
				if !errors.As(e, &fe) {
					t.Fatalf("not a FieldError: %v", e)
				}
				got = append(got, fe.Field+": "+fe.Err.Error())
			}
			if len(got) != len(tc.want) {
				t.Fatalf("errors %q, want %q", got, tc.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.want[i]) {
					t.Errorf("error %q, want prefix %q", got[i], tc.want[i])
				}
			}
		})
	}
}

func flattenErr(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flattenErr(e)...)
		}
		return out
	}
	return []error{err}
}

func TestStat(t *testing.T) {
	h := hist("/a", 1, 2, 3, 4).Hist
	hr := Row{Kind: metric.Histogram, Step: time.Minute, Agg: Agg{Hist: h, Count: 4, Sum: 10, Min: 1, Max: 4, ErrorCount: 1, ErrorTracked: true}}
	cr := Row{Kind: metric.Counter, Step: time.Minute, Agg: Agg{Sum: 120, ErrorCount: 6, ErrorTracked: true}}
	gr := Row{Kind: metric.Gauge, Step: time.Minute, Agg: Agg{Sum: 10, Count: 4, Last: 3, Min: 1, Max: 4}}
	empty := Row{Kind: metric.Histogram, Step: time.Minute}
	tests := []struct {
		row     Row
		stat    string
		want    float64
		ok      bool
		wantErr bool
	}{
		{hr, "count", 4, true, false},
		{hr, "sum", 10, true, false},
		{hr, "rate", 4.0 / 60, true, false},
		{hr, "mean", 2.5, true, false},
		{hr, "min", 1, true, false},
		{hr, "max", 4, true, false},
		{hr, "p100", 4, true, false},
		{hr, "p50", h.Quantile(0.5), true, false},
		{hr, "p99.9", h.Quantile(0.999), true, false},
		{hr, "error_ratio", 0.25, true, false},
		{hr, "last", 0, false, true},
		{empty, "p95", 0, false, false},
		{empty, "mean", 0, false, false},
		{empty, "count", 0, true, false},
		{cr, "sum", 120, true, false},
		{cr, "rate", 2, true, false},
		{cr, "count", 120, true, false},
		{cr, "error_ratio", 0.05, true, false},
		{cr, "p95", 0, false, true},
		{cr, "mean", 0, false, true},
		{Row{Kind: metric.Counter, Agg: Agg{Sum: 5}}, "error_ratio", 0, false, false},
		{gr, "last", 3, true, false},
		{gr, "mean", 2.5, true, false},
		{gr, "min", 1, true, false},
		{gr, "max", 4, true, false},
		{gr, "rate", 0, false, true},
		{gr, "error_ratio", 0, false, true},
		{gr, "median", 0, false, true},
		{gr, "p101", 0, false, true},
	}
	for _, tc := range tests {
		v, ok, err := Stat(tc.row, tc.stat)
		if (err != nil) != tc.wantErr || ok != tc.ok || (ok && v != tc.want) {
			t.Errorf("Stat(%s, %s) = %v, %v, %v; want %v, %v, err %v", tc.row.Kind, tc.stat, v, ok, err, tc.want, tc.ok, tc.wantErr)
		}
	}
	for stat, want := range map[string]float64{"p95": 0.95, "p99.9": 0.999, "p0": 0, "p100": 1} {
		if q, err := ParseQuantile(stat); err != nil || q != want {
			t.Errorf("ParseQuantile(%s) = %v, %v", stat, q, err)
		}
	}
	for _, bad := range []string{"p", "95", "p-1", "p1e1", "pNaN", "p100.5"} {
		if _, err := ParseQuantile(bad); err == nil {
			t.Errorf("ParseQuantile(%q) accepted", bad)
		}
	}
}

// TestReaderUsesWriterTiers: a reader opened without the config (sabaki
// query -data-dir) uses the tiers the writer recorded.
func TestReaderUsesWriterTiers(t *testing.T) {
	dir := t.TempDir()
	c := &clock{t: t0.Add(time.Hour)}
	s := open(t, dir, c, Tier{time.Second, time.Hour}, Tier{time.Minute, 24 * time.Hour})
	if err := s.Write(t.Context(), &metric.Window{Start: t0, Duration: time.Second, Series: []metric.Aggregate{counter("/a", 2)}}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir, Options{ReadOnly: true, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if len(r.tiers) != 2 || r.tiers[0].res != 1 || r.tiers[1].keep != 86400 {
		t.Errorf("reader tiers = %+v", r.tiers)
	}
	rows := query(t, r, Query{Metric: "http.requests", From: t0, To: c.now(), Step: time.Second})
	if len(rows) != 1 || rows[0].Agg.Sum != 2 {
		t.Errorf("rows = %+v", rows)
	}
}
