package exporters

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

var update = flag.Bool("update", false, "rewrite golden files")

func consoleWindow() *metric.Window {
	h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
	for i := 1; i <= 1000; i++ {
		h.Record(float64(i) / 1000) // 1 ms … 1 s
	}
	return &metric.Window{
		Start:    time.Date(2026, 11, 25, 21, 14, 0, 0, time.UTC),
		Duration: time.Minute,
		Series: []metric.Aggregate{
			{Name: "sabaki_pipeline_points_total", Kind: metric.Counter, Sum: 120, Attrs: metric.Attrs{{Key: "source", Value: "self"}}},
			{Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram, Hist: h,
				Resource: metric.Attrs{{Key: "service.name", Value: "toitta"}},
				Attrs:    metric.Attrs{{Key: "http.route", Value: "/a"}}, ErrorTracked: true, ErrorCount: 3},
			{Name: "go_goroutines", Kind: metric.Gauge, Last: 12, Min: 10, Max: 14, Sum: 48, Count: 4},
			{Name: "process_open_fds", Kind: metric.Gauge, Last: 9, Min: 9, Max: 9, Sum: 9, Count: 1},
			{Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram,
				Hist:  histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale),
				Attrs: metric.Attrs{{Key: "http.route", Value: "/idle"}}},
		},
	}
}

func TestConsoleGolden(t *testing.T) {
	tests := []struct {
		name   string
		cfg    func(*ConsoleConfig)
		window func() *metric.Window
	}{
		{"all", func(c *ConsoleConfig) { c.MaxSeries = 0 }, consoleWindow},
		{"top2", func(c *ConsoleConfig) { c.MaxSeries = 2 }, consoleWindow},
		{"prefix", func(c *ConsoleConfig) { c.Metrics = []string{"http."} }, consoleWindow},
		{"revision", func(c *ConsoleConfig) {}, func() *metric.Window {
			w := consoleWindow()
			w.Revision = 2
			w.Series = w.Series[:1]
			return w
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			cfg := DefaultConsoleConfig()
			tc.cfg(&cfg)
			cfg.Writer = &buf
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			c, err := NewConsole(cfg, Settings{})
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Export(context.Background(), tc.window()); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "console-"+tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if buf.String() != string(want) {
				t.Errorf("output differs from %s:\ngot:\n%s\nwant:\n%s", golden, buf.String(), want)
			}
		})
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, os.ErrClosed }

func TestConsoleWriteErrorIsPermanent(t *testing.T) {
	cfg := DefaultConsoleConfig()
	cfg.Writer = failWriter{}
	c, _ := NewConsole(cfg, Settings{})
	err := c.Export(context.Background(), consoleWindow())
	if !IsPermanent(err) {
		t.Errorf("err = %v, want a permanent error", err)
	}
}

func TestConsoleConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  ConsoleConfig
		want string
	}{
		{ConsoleConfig{Output: "stdout"}, ""},
		{ConsoleConfig{Output: "file"}, `output: must be stdout or stderr, not "file"`},
		{ConsoleConfig{Output: "stderr", MaxSeries: -1}, "max_series: must not be negative"},
	} {
		err := tc.cfg.Validate()
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("Validate(%+v) = %q, want %q", tc.cfg, got, tc.want)
		}
	}
}
