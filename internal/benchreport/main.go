// Command benchreport writes sabaki's benchmark report as markdown (`make
// bench-report`): the component benchmarks (histogram against go-expohisto
// and the OTel SDK, ingest per data point, store bytes per point, export
// sizes) from `go test -bench`, then the whole agent beside Prometheus in
// agent mode scraping the same targets (internal/loadgen), with CPU time per
// sample from /proc/<pid>/stat and peak RSS (VmHWM), and a scale curve.
//
//	go run ./internal/benchreport -out bench-report.md
//
// It takes minutes; -quick shortens every phase (for trying it out).
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sabakiio/sabaki/internal/fake/fakemackerel"
	"github.com/sabakiio/sabaki/internal/loadgen"
)

func main() {
	out := flag.String("out", "", "write the report to this file (default stdout)")
	quick := flag.Bool("quick", false, "short phases, for trying the tool out")
	skipGo := flag.Bool("skip-go-bench", false, "skip the go test benchmarks")
	measure := flag.Duration("measure", 3*time.Minute, "measured period of the side-by-side run")
	scales := flag.String("scales", "105k,10k,1k", "side-by-side scales to run, comma-separated (105k, 10k, 1k)")
	sabakiEnv := flag.String("sabaki-env", "", "extra environment for the sabaki process only, space-separated (e.g. \"GOGC=50\"), to compare runtime settings")
	baseline := flag.String("baseline", "", "a sabaki source tree (e.g. an older commit's `git archive`) built and run as a third process, sabaki-base, beside sabaki and Prometheus in the same run")
	profile := flag.String("profile", "", "save sabaki's CPU profile over the measured period and its heap profile at its end into this directory (from the admin server's /debug/pprof/)")
	flag.Parse()
	var w bytes.Buffer
	r := &report{w: &w, quick: *quick, measure: *measure, scales: strings.Split(*scales, ","), profileDir: *profile,
		sabakiEnv: strings.Fields(*sabakiEnv), baseline: *baseline}
	if r.quick {
		r.measure = 30 * time.Second
	}
	r.header()
	if !*skipGo {
		r.goBenches()
	}
	r.agentVsPrometheus()
	if *out == "" {
		os.Stdout.Write(w.Bytes())
		return
	}
	if err := os.WriteFile(*out, w.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
	log.Printf("wrote %s", *out)
}

type report struct {
	notes   []string
	w       io.Writer
	quick   bool
	measure time.Duration
	// scales selects the side-by-side scales by name; profileDir, when set,
	// receives sabaki's profiles (<scale>-cpu.pprof, <scale>-heap.pprof).
	scales     []string
	profileDir string
	// sabakiEnv is added to sabaki's environment (not Prometheus's).
	sabakiEnv []string
	// baseline is the source tree of sabaki-base (-baseline).
	baseline string
}

func (r *report) printf(format string, args ...any) { fmt.Fprintf(r.w, format, args...) }

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			return strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
		}
	}
	return "?"
}

func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "MemTotal:") {
			return strings.TrimSpace(strings.TrimPrefix(l, "MemTotal:"))
		}
	}
	return "?"
}

func (r *report) header() {
	r.printf("# sabaki benchmark report\n\n")
	r.printf("- date: %s\n", time.Now().UTC().Format(time.RFC3339))
	r.printf("- machine: %s, %d CPUs (runtime.NumCPU), %s RAM, %s/%s, %s\n", cpuModel(), runtime.NumCPU(), memTotal(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	r.printf("- load average at start: %s (the machine is shared: compare ratios measured in one run, not absolute times across runs)\n", loadavg())
	r.printf("- command: `go run ./internal/benchreport` (`make bench-report`)\n")
	if len(r.sabakiEnv) > 0 {
		r.printf("- sabaki's extra environment: `%s`\n", strings.Join(r.sabakiEnv, " "))
	}
	r.printf("\n")
}

// benchLine is one parsed `go test -bench` result.
type benchLine struct {
	name    string
	metrics [][2]string // value, unit
}

var (
	benchRE = regexp.MustCompile(`^(Benchmark\S+)\s+(\d+)\s+(.*)$`)
	// A benchmark that logs gets its name and its results on two lines.
	benchNameRE    = regexp.MustCompile(`^(Benchmark\S+)\s*$`)
	benchResultsRE = regexp.MustCompile(`^\s*(\d+)\s+(.*ns/op.*)$`)
)

func runBench(pkg, pattern, benchtime string) ([]benchLine, string, error) {
	args := []string{"test", "-run", "^$", "-bench", pattern, "-benchmem", "-benchtime", benchtime, "-count", "1", pkg}
	cmd := exec.Command("go", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var lines []benchLine
	sc := bufio.NewScanner(&out)
	pending := ""
	for sc.Scan() {
		m := benchRE.FindStringSubmatch(sc.Text())
		if n := benchNameRE.FindStringSubmatch(sc.Text()); n != nil {
			pending = n[1]
			continue
		}
		if m == nil && pending != "" {
			if res := benchResultsRE.FindStringSubmatch(sc.Text()); res != nil {
				m = []string{"", pending, res[1], res[2]}
				pending = ""
			}
		}
		if m == nil {
			continue
		}
		f := strings.Fields(m[3])
		bl := benchLine{name: strings.TrimPrefix(m[1], "Benchmark")}
		for i := 0; i+1 < len(f); i += 2 {
			bl.metrics = append(bl.metrics, [2]string{f[i], f[i+1]})
		}
		lines = append(lines, bl)
	}
	return lines, "go " + strings.Join(args, " "), err
}

func (r *report) benchTable(title, pkg, pattern, benchtime string) {
	log.Printf("bench %s %s", pkg, pattern)
	r.printf("### %s\n\n", title)
	lines, cmd, err := runBench(pkg, pattern, benchtime)
	r.printf("`%s` (load average after: %s)\n\n", cmd, loadavg())
	if err != nil {
		r.printf("**the benchmark run failed: %v** (rows below are what completed)\n\n", err)
	}
	r.printf("| benchmark | results |\n|---|---|\n")
	for _, l := range lines {
		var parts []string
		for _, m := range l.metrics {
			parts = append(parts, m[0]+" "+m[1])
		}
		r.printf("| %s | %s |\n", l.name, strings.Join(parts, ", "))
	}
	r.printf("\n")
}

func (r *report) goBenches() {
	bt := "200ms"
	if r.quick {
		bt = "50ms"
	}
	r.printf("## Components (`go test -bench`)\n\n")
	r.benchTable("Histogram: sabaki vs go-expohisto vs OTel SDK vs client_golang", "./internal/benchcmp", ".", bt)
	r.benchTable("Ingest per data point: OTLP (protobuf export request → batch; and over HTTP)", "./sources", "OTLP", bt)
	r.benchTable("Ingest per data point: scrape (2,000 series body → batch)", "./sources", "PrometheusParse", bt)
	r.benchTable("Pipeline: Consume per point", "./agent", "Consume", bt)
	r.benchTable("Store: bytes on disk per 1-minute point (B/point; histogram_latency is the latency histogram)", "./agent/store", "DiskBytesPerPoint|RollupHistogramBytes", "1x")
	r.benchTable("Export: outbox bytes per window (10k series: divide by 10 for 1,000), Mackerel minute mapping, remote write and OTLP encoding", "./exporters", ".", bt)
}

// proc is a measured child process.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *bytes.Buffer
	// sabaki only: its admin address and fake Mackerel.
	admin string
	mk    *fakemackerel.Server
}

// cpuTicks is utime+stime of pid in clock ticks (USER_HZ, 100 on Linux).
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st, nil
}

func vmHWM(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

func freePort() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// sink is a remote-write receiver that counts and discards.
type sink struct {
	reqs, bytes atomic.Int64
	addr        string
}

func startSink() *sink {
	s := &sink{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	s.addr = ln.Addr().String()
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		s.reqs.Add(1)
		s.bytes.Add(n)
		w.WriteHeader(http.StatusNoContent)
	}))
	return s
}

type scale struct {
	name                           string
	targets, counters, gauges, hst int
}

func (r *report) agentVsPrometheus() {
	dir, err := os.MkdirTemp("", "sabaki-bench")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "sabaki")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./cmd/sabaki")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		log.Fatalf("building sabaki: %v", err)
	}
	baseBin := ""
	if r.baseline != "" {
		baseBin = filepath.Join(dir, "sabaki-base")
		build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", baseBin, "./cmd/sabaki")
		build.Dir = r.baseline
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			log.Fatalf("building sabaki-base in %s: %v", r.baseline, err)
		}
	}
	promBin, _ := exec.LookPath("prometheus")
	promVersion := "not installed"
	if promBin != "" {
		out, _ := exec.Command(promBin, "--version").CombinedOutput()
		promVersion = strings.SplitN(string(out), "\n", 2)[0]
	}

	r.printf("## The whole agent beside Prometheus in agent mode\n\n")
	r.printf("Both scrape the same client_golang targets (internal/loadgen: counters, gauges and native histograms with exemplars, factor 1.1, values moving every 5 s) every 5 s, in the same run. ")
	r.printf("sabaki: the built binary (`go build -trimpath -ldflags '-s -w'`), 60 s windows, the store, and the Mackerel exporter (with its on-disk outbox) posting to an in-process fake Mackerel. ")
	r.printf("Prometheus: `%s` with `--enable-feature=agent,native-histograms`, remote-writing (`send_native_histograms: true`) to an in-process sink that discards. ", promVersion)
	r.printf("CPU is utime+stime from /proc/<pid>/stat over the measured period (after a warm-up of two scrape intervals and the first window), divided by the samples scraped in that period (series per scrape × scrapes answered); peak RSS is VmHWM at the end.\n\n")
	if baseBin != "" {
		r.printf("sabaki-base is built from another source tree (-baseline %s) and runs beside the others with the same configuration; for both sabaki rows, samples are the points their pipelines received (sabaki_pipeline_points_total) in the measured period, and scrapes that divided by the series per target plus 3 (up, scrape_duration_seconds, scrape_samples_scraped).\n\n", filepath.Base(r.baseline))
	}
	r.printf("| series | process | scrapes | samples | CPU s | CPU µs/sample | peak RSS MiB | load avg |\n|---|---|---|---|---|---|---|---|\n")

	scales := []scale{
		// Each histogram has a 200 and a 500 series: 50 × (1,000 +
		// 1,000 + 2 × 50) = 105,000, the 50 targets × 2,100.
		{"105k", 50, 1000, 1000, 50},
		{"10k", 5, 950, 950, 50},
		{"1k", 1, 475, 475, 25},
	}
	for i, sc := range scales {
		if !slices.Contains(r.scales, sc.name) {
			continue
		}
		measure := r.measure
		if i > 0 {
			measure = max(measure/3, 30*time.Second)
		}
		r.sideBySide(dir, bin, baseBin, promBin, sc, measure)
	}
	r.printf("\nThe measured periods: %v for 105k series, a third of it (at least 30 s) for the smaller scales.\n\n", r.measure)
	for _, n := range r.notes {
		r.printf("- %s\n", n)
	}
}

func (r *report) sideBySide(dir, bin, baseBin, promBin string, sc scale, measure time.Duration) {
	log.Printf("side by side: %s series, %v", sc.name, measure)
	tg, err := loadgen.StartTargets(loadgen.TargetsConfig{Targets: sc.targets, Counters: sc.counters, Gauges: sc.gauges, Histograms: sc.hst, Seed: 7})
	if err != nil {
		log.Fatal(err)
	}
	defer tg.Close()
	tg.Step(2) // error series exist from the start
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				tg.Step(2)
			}
		}
	}()
	series := tg.Series()
	var hostports []string
	for _, u := range tg.URLs() {
		hostports = append(hostports, strings.TrimSuffix(strings.TrimPrefix(u, "http://"), "/metrics"))
	}

	sab := r.newSabaki("sabaki", bin, filepath.Join(dir, "sabaki-"+sc.name), tg.URLs(), r.sabakiEnv)
	defer sab.mk.Close()
	adminAddr := sab.admin
	var base *proc
	if baseBin != "" {
		base = r.newSabaki("sabaki-base", baseBin, filepath.Join(dir, "sabaki-base-"+sc.name), tg.URLs(), nil)
		defer base.mk.Close()
	}

	// Prometheus
	var prom *proc
	snk := startSink()
	if promBin != "" {
		pdir := filepath.Join(dir, "prom-"+sc.name)
		os.MkdirAll(pdir, 0o700)
		pcfg := fmt.Sprintf(`global:
  scrape_interval: 5s
  scrape_timeout: 5s
scrape_configs:
  - job_name: bench
    static_configs:
      - targets: [%s]
remote_write:
  - url: http://%s/api/v1/write
    send_native_histograms: true
`, strings.Join(hostports, ", "), snk.addr)
		os.WriteFile(filepath.Join(pdir, "prometheus.yml"), []byte(pcfg), 0o600)
		prom = &proc{name: "prometheus", log: &bytes.Buffer{}}
		prom.cmd = exec.Command(promBin, "--enable-feature=agent,native-histograms",
			"--config.file="+filepath.Join(pdir, "prometheus.yml"), "--storage.agent.path="+filepath.Join(pdir, "data"),
			"--web.listen-address="+freePort())
		prom.cmd.Stdout, prom.cmd.Stderr = prom.log, prom.log
	}
	procs := []*proc{sab}
	if base != nil {
		procs = append(procs, base)
	}
	if prom != nil {
		procs = append(procs, prom)
	}
	for _, p := range procs {
		if err := p.cmd.Start(); err != nil {
			log.Fatalf("starting %s: %v", p.name, err)
		}
	}
	defer func() {
		for _, p := range procs {
			p.cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { p.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				p.cmd.Process.Kill()
				<-done
			}
		}
	}()

	warm := 70 * time.Second
	if r.quick {
		warm = 15 * time.Second
	}
	time.Sleep(warm)
	ticks0 := map[string]int64{}
	for _, p := range procs {
		ticks0[p.name], _ = cpuTicks(p.cmd.Process.Pid)
	}
	s0, p0 := sum(tg.Scrapes()), tg.PrometheusScrapes()
	points0 := map[string]float64{}
	for _, p := range procs {
		if p.admin != "" {
			points0[p.name] = pipelinePoints(p.admin)
		}
	}
	la0 := loadavg()
	profDone := r.startProfiles(adminAddr, sc.name, measure)
	time.Sleep(measure)
	<-profDone
	s1, p1 := sum(tg.Scrapes()), tg.PrometheusScrapes()
	la1 := loadavg()
	perTarget := float64(series) / float64(sc.targets)
	for _, p := range procs {
		t1, err := cpuTicks(p.cmd.Process.Pid)
		if err != nil {
			r.printf("| %d | %s | exited: %v |\n%s\n", series, p.name, err, tailLog(p.log))
			continue
		}
		scrapes := s1 - s0
		if p.name == "prometheus" {
			scrapes = p1 - p0
		}
		samples := float64(scrapes) * perTarget
		if base != nil && p.admin != "" { // two sabakis share the targets' scrape count
			samples = pipelinePoints(p.admin) - points0[p.name]
			scrapes = int64(math.Round(samples / (perTarget + 3))) // + up, scrape_duration_seconds, scrape_samples_scraped
		}
		cpu := float64(t1-ticks0[p.name]) / 100
		perSample := "—"
		if samples > 0 {
			perSample = fmt.Sprintf("%.2f", cpu/samples*1e6)
		}
		r.printf("| %d | %s | %d | %.0f | %.1f | %s | %.1f | %s → %s |\n", series, p.name, scrapes, samples, cpu, perSample,
			float64(vmHWM(p.cmd.Process.Pid))/1024, la0, la1)
	}
	if prom != nil {
		log.Printf("remote-write sink: %d requests, %d bytes", snk.reqs.Load(), snk.bytes.Load())
	}
	for _, p := range procs {
		if p.admin != "" {
			log.Printf("%s: fake Mackerel: %d posts", p.name, len(p.mk.Posts()))
			r.notes = append(r.notes, fmt.Sprintf("%s series: %s %s; fake Mackerel answered %d posts", sc.name, p.name, selfMetrics(p.admin), len(p.mk.Posts())))
		}
	}
}

// newSabaki prepares a sabaki process (not started) in dir, scraping urls,
// with its own fake Mackerel and admin address.
func (r *report) newSabaki(name, bin, dir string, urls []string, env []string) *proc {
	mk := fakemackerel.New(fakemackerel.Options{Keys: map[string]fakemackerel.Perm{"k": {Read: true, Write: true}}, Services: []string{"bench"}})
	os.MkdirAll(dir, 0o700)
	adminAddr := freePort()
	cfg := fmt.Sprintf(`agent:
  window: 60s
  data_dir: %s
  admin_listen: %s
sources:
  - type: prometheus
    name: bench
    targets: [%s]
    interval: 5s
    timeout: 5s
exporters:
  - type: mackerel
    service: bench
    api_key: k
    base_url: %s
`, filepath.Join(dir, "data"), adminAddr, strings.Join(urls, ", "), mk.URL)
	cfgPath := filepath.Join(dir, "sabaki.yaml")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	p := &proc{name: name, log: &bytes.Buffer{}, admin: adminAddr, mk: mk}
	p.cmd = exec.Command(bin, "run", "-config", cfgPath)
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	return p
}

// pipelinePoints is sabaki_pipeline_points_total{source="bench"} of the
// sabaki at admin (0 when unreadable).
func pipelinePoints(admin string) float64 {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, `sabaki_pipeline_points_total{source="bench"} `); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// startProfiles fetches sabaki's CPU profile over the next measure (less a
// second, so it ends inside the period) and then its heap profile into
// r.profileDir; the returned channel closes when both are saved. Without
// -profile it is closed at once.
func (r *report) startProfiles(admin, scale string, measure time.Duration) <-chan struct{} {
	done := make(chan struct{})
	if r.profileDir == "" {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		if err := os.MkdirAll(r.profileDir, 0o755); err != nil {
			log.Printf("profile dir: %v", err)
			return
		}
		secs := max(int(measure.Seconds())-1, 1)
		fetchProfile(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", admin, secs), filepath.Join(r.profileDir, scale+"-cpu.pprof"))
		fetchProfile("http://"+admin+"/debug/pprof/heap", filepath.Join(r.profileDir, scale+"-heap.pprof"))
	}()
	return done
}

func fetchProfile(url, path string) {
	resp, err := http.Get(url)
	if err != nil {
		log.Printf("profile %s: %v", url, err)
		return
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		log.Printf("profile %s: status %d, %v", url, resp.StatusCode, err)
		return
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		log.Printf("profile: %v", err)
		return
	}
	log.Printf("saved %s", path)
}

// selfMetrics summarises sabaki's own counters at the end of a run.
func selfMetrics(admin string) string {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return "(/metrics: " + err.Error() + ")"
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	want := []string{"sabaki_pipeline_windows_total", "sabaki_pipeline_active_series", "sabaki_exporter_enqueued_windows_total",
		"sabaki_exporter_sent_windows_total", "sabaki_exporter_send_failures_total", "sabaki_exporter_outbox_windows",
		"sabaki_agent_store_write_errors_total", "go_memstats_heap_inuse_bytes", "go_memstats_heap_sys_bytes",
		"go_memstats_heap_released_bytes", "go_memstats_next_gc_bytes", "go_memstats_sys_bytes", "process_resident_memory_bytes",
		"sabaki_source_collect_duration_seconds_sum", "sabaki_source_collect_duration_seconds_count", "sabaki_pipeline_emit_lock_seconds",
		"sabaki_source_collect_errors_total"}
	var parts []string
	for _, l := range strings.Split(string(b), "\n") {
		for _, w := range want {
			if strings.HasPrefix(l, w) {
				parts = append(parts, "`"+l+"`")
			}
		}
	}
	return strings.Join(parts, ", ")
}

func sum(v []int64) int64 {
	var s int64
	for _, x := range v {
		s += x
	}
	return s
}

func tailLog(b *bytes.Buffer) string {
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return "```\n" + strings.Join(lines, "\n") + "\n```"
}
