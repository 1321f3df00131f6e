package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/sabakiio/sabaki/agent/capacity/synth"
	"github.com/sabakiio/sabaki/agent/store"
)

var updateExport = flag.Bool("update-export", false, "rewrite testdata/export golden files")

// exportConfig is a config for the synthetic store: its data dir, the
// retention it was written with (1-minute points for 2 days) and a Mackerel
// exporter whose trace URL template the report's links use.
const exportConfig = `agent:
  data_dir: %s
retention:
  - {resolution: 1m, keep: 2d}
  - {resolution: 1h, keep: 400d}
  - {resolution: 1d, keep: 5y}
exporters:
  - type: mackerel
    service: toitta
    api_key: dummy
    org: example
`

const exportLimits = `limits:
  - {name: Cloud Run max instances, measure: instances_max, value: 12}
  - {name: Cloud SQL max_connections, measure: db_connections_max, value: 40}
  - {name: p95 SLO, measure: latency_p95_peak_hour, value: 0.6, group: service=web}
`

func TestExportCapacity(t *testing.T) {
	o := synth.Default()
	dataDir := t.TempDir()
	if err := synth.Generate(context.Background(), store.Dir(dataDir), o); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "sabaki.yaml")
	exportWriteFile(t, cfg, strings.Replace(exportConfig, "%s", dataDir, 1))
	limits := filepath.Join(dir, "limits.yaml")
	exportWriteFile(t, limits, exportLimits)
	old := exportNow
	exportNow = func() time.Time { return o.End() }
	t.Cleanup(func() { exportNow = old })
	base := []string{"export", "capacity", "-config", cfg, "-limits", limits, "-from", "2026-06-01", "-quiet"}

	for _, format := range []string{"csv", "json"} {
		t.Run("golden_"+format, func(t *testing.T) {
			out, errOut, code := exportRun(append(base, "-format", format)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			exportGolden(t, filepath.Join("testdata", "export", "capacity."+format), out)
		})
	}

	t.Run("html", func(t *testing.T) {
		outFile := filepath.Join(dir, "report.html")
		_, errOut, code := exportRun(append(base, "-out", outFile)...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		data, err := os.ReadFile(outFile)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := html.Parse(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		count := map[string]int{}
		var classes []string
		var walk func(n *html.Node)
		walk = func(n *html.Node) {
			if n.Type == html.ElementNode {
				count[n.Data]++
				for _, a := range n.Attr {
					if a.Key == "class" {
						classes = append(classes, n.Data+"."+a.Val)
					}
					if n.Data == "a" && a.Key == "href" && !strings.HasPrefix(a.Val, "https://mackerel.io/orgs/example/tracing/traces/ab") {
						t.Errorf("trace link %q does not use the config's template", a.Val)
					}
				}
			}
			for c := n.FirstChild; c != nil; c = c.NextSibling {
				walk(c)
			}
		}
		walk(doc)
		// 3 groups with charts: web and api (rate, p95, instances), the
		// database (connections).
		if count["svg"] != 7 {
			t.Errorf("svg charts = %d, want 7", count["svg"])
		}
		for _, want := range []string{"table.summary", "table.limits", "polyline.data", "line.trend", "line.limit", "circle.minute", "table.worst"} {
			found := false
			for _, c := range classes {
				found = found || c == want
			}
			if !found {
				t.Errorf("no %s in the HTML", want)
			}
		}
		if count["a"] == 0 {
			t.Error("no trace links")
		}
		if count["script"] != 0 || count["link"] != 0 || bytes.Contains(data, []byte(`src="http`)) {
			t.Error("the page is not self-contained")
		}
		// The summary table comes before the first chart.
		if s, c := bytes.Index(data, []byte(`class="summary"`)), bytes.Index(data, []byte("<svg")); s < 0 || s > c {
			t.Error("summary table is not first")
		}
		if !bytes.Contains(data, []byte("memory_utilization_p95")) {
			t.Error("missing measures are not named")
		}
	})

	t.Run("copied_data_dir", func(t *testing.T) {
		cp := t.TempDir()
		exportCopyDir(t, store.Dir(dataDir), store.Dir(cp))
		cfg2 := filepath.Join(cp, "sabaki.yaml")
		exportWriteFile(t, cfg2, strings.Replace(exportConfig, "%s", cp, 1))
		args := exportReplace(base, cfg, cfg2)
		out, errOut, code := exportRun(append(args, "-format", "csv")...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		want, _ := os.ReadFile(filepath.Join("testdata", "export", "capacity.csv"))
		if out != string(want) {
			t.Error("report from the copied data dir differs from the golden file")
		}
	})

	t.Run("beside_a_writer", func(t *testing.T) {
		// A writer holds the store (as `sabaki run` does): export still reads.
		st, err := store.Open(store.Dir(dataDir), store.Options{Tiers: synth.Tiers(o), Now: func() time.Time { return o.End() }})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		out, errOut, code := exportRun(append(base, "-format", "csv")...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if !strings.HasPrefix(out, "period,start,group,measure,value,unit\n") || strings.Count(out, "\n") < 1000 {
			t.Errorf("short report beside a writer: %d lines", strings.Count(out, "\n"))
		}
	})

	t.Run("minutes_off", func(t *testing.T) {
		out, errOut, code := exportRun(append(base, "-format", "csv", "-minutes", "0")...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if strings.Contains(out, "peak_rate_1m") || !strings.Contains(out, "peak_rate_1h") {
			t.Error("-minutes 0 still reports 1-minute peaks, or lost the hourly ones")
		}
	})

	t.Run("missing_named_on_stderr", func(t *testing.T) {
		args := exportReplace(base, "-quiet", "-group-by=service")
		_, errOut, code := exportRun(append(args, "-format", "csv")...)
		if code != 0 || !strings.Contains(errOut, "not in the store: cloudrun_memory (memory_utilization_p95): no run.googleapis.com/container/memory/utilizations in the store") {
			t.Errorf("exit %d, stderr %q", code, errOut)
		}
	})

	emptyDir := t.TempDir()
	st, err := store.Open(store.Dir(emptyDir), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	errs := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"empty_store", []string{"export", "capacity", "-data-dir", emptyDir}, 1, "the store holds none of the metrics a capacity report reads (looked for http.server.request.duration"},
		{"no_store", []string{"export", "capacity", "-data-dir", filepath.Join(dir, "nothing")}, 1, "no store in " + store.Dir(filepath.Join(dir, "nothing"))},
		{"range_without_data", append(exportReplace(base, "2026-06-01", "2025-01-01"), "-to", "2025-02-01"), 1, "no data in the requested range: 2025-01-01"},
		{"unknown_group_by", append(base, "-group-by", "tenant"), 1, `unknown group-by attribute "tenant": no series of http.server.request.duration`},
		{"unwritable_output", append(base, "-out", filepath.Join(dir, "no", "such", "dir", "r.csv")), 1, "cannot write " + filepath.Join(dir, "no", "such", "dir", "r.csv")},
		{"bad_format", append(base, "-format", "pdf"), 2, `-format "pdf": want csv, json or html`},
		{"bad_limits", exportReplace(base, limits, exportWriteTemp(t, dir, "bad.yaml", "limits:\n  - {name: x, measure: instances, value: -1}\n")), 2, `unknown measure "instances"`},
		{"bad_minutes", append(base, "-minutes", "soon"), 2, `-minutes "soon"`},
		{"not_capacity", []string{"export", "usage"}, 2, `want "sabaki export capacity [flags]"`},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := exportRun(tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, errOut, tc.code, tc.want)
			}
		})
	}
}

func exportRun(args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return o.String(), e.String(), code
}

func exportGolden(t *testing.T, path, got string) {
	t.Helper()
	if *updateExport {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update-export)", err)
	}
	if got != string(want) {
		gl, wl := strings.Split(got, "\n"), strings.Split(string(want), "\n")
		for i := range min(len(gl), len(wl)) {
			if gl[i] != wl[i] {
				t.Fatalf("%s differs at line %d:\n got %s\nwant %s", path, i+1, gl[i], wl[i])
			}
		}
		t.Fatalf("%s: %d lines, want %d", path, len(gl), len(wl))
	}
}

func exportWriteFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func exportWriteTemp(t *testing.T, dir, name, s string) string {
	p := filepath.Join(dir, name)
	exportWriteFile(t, p, s)
	return p
}

func exportReplace(s []string, old, new string) []string {
	out := make([]string, len(s))
	for i, x := range s {
		if x == old {
			x = new
		}
		out[i] = x
	}
	return out
}

func exportCopyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "LOCK" {
			continue
		}
		in, err := os.Open(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(filepath.Join(to, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		in.Close()
		out.Close()
	}
}

func TestExportProgress(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, false)
	p.set(3, 10)
	p.done()
	if buf.Len() != 0 {
		t.Errorf("progress on a non-terminal wrote %q", buf.String())
	}
	p = &progress{w: &buf, on: true}
	p.set(3, 10)
	p.set(3, 10) // unchanged: not redrawn
	if got := buf.String(); got != "\rexport capacity [=========                     ] 3/10" {
		t.Errorf("bar %q", got)
	}
	p.done()
	if !strings.HasSuffix(buf.String(), "\r") {
		t.Errorf("bar not cleared: %q", buf.String())
	}
}
