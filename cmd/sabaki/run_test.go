package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/agent/store"
)

// TestMain lets the tests run the real command as a child process: the test
// binary re-executes itself with SABAKI_TEST_MAIN=1 and behaves as `sabaki`
// (with -race when the tests run with -race).
func TestMain(m *testing.M) {
	if os.Getenv("SABAKI_TEST_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

// agentProc is a `sabaki run` child process.
type agentProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	mu     sync.Mutex
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan struct{}
	code   int
}

func startAgent(t *testing.T, args ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"run"}, args...)...)
	cmd.Env = append(os.Environ(), "SABAKI_TEST_MAIN=1", "MACKEREL_APIKEY=", "SABAKI_DATA_DIR=")
	p := &agentProc{t: t, cmd: cmd, done: make(chan struct{})}
	outR, _ := cmd.StdoutPipe()
	errR, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	copyTo := func(dst *bytes.Buffer, r io.Reader) {
		defer wg.Done()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			p.mu.Lock()
			dst.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}
	wg.Add(2)
	go copyTo(&p.stdout, outR)
	go copyTo(&p.stderr, errR)
	go func() {
		wg.Wait()
		err := cmd.Wait()
		p.code = cmd.ProcessState.ExitCode()
		_ = err
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *agentProc) output() (stdout, stderr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String(), p.stderr.String()
}

// waitFor waits until cond holds on the output, failing after timeout.
func (p *agentProc) waitFor(what string, timeout time.Duration, cond func(stdout, stderr string) bool) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond(p.output()) {
			return
		}
		select {
		case <-p.done:
			if cond(p.output()) {
				return
			}
			out, errs := p.output()
			p.t.Fatalf("agent exited (code %d) before %s\nstdout:\n%s\nstderr:\n%s", p.code, what, out, errs)
		case <-time.After(50 * time.Millisecond):
		}
	}
	out, errs := p.output()
	p.t.Fatalf("timed out waiting for %s\nstdout:\n%s\nstderr:\n%s", what, out, errs)
}

func (p *agentProc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		out, errs := p.output()
		p.t.Fatalf("agent did not exit within %s\nstdout:\n%s\nstderr:\n%s", timeout, out, errs)
		return -1
	}
}

var adminRE = regexp.MustCompile(`"admin":"http://([^"]+)"`)

func writeConfig(t *testing.T, path, dataDir, admin string) {
	t.Helper()
	cfg := fmt.Sprintf(`agent:
  window: 1s
  lateness: 2s
  data_dir: %s
  admin_listen: %s
  shutdown_timeout: 5s
resource:
  detect: [env]
  attributes: {service.name: sabaki-test}
sources:
  - type: self
    interval: 1s
    timeout: 1s
exporters:
  - type: console
    max_series: 3
    metrics: [sabaki_]
`, dataDir, admin)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRunLifecycle runs `sabaki run` as a process: console summaries, admin
// endpoints, SIGHUP with a broken and then a good config, a second agent on
// the same data directory and on the same port, and SIGTERM storing the last
// window.
func TestRunLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the agent as a process")
	}
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	cfgPath := filepath.Join(dir, "sabaki.yaml")
	writeConfig(t, cfgPath, dataDir, "127.0.0.1:0")

	a := startAgent(t, "-config", cfgPath)
	a.waitFor("the started line", 20*time.Second, func(_, e string) bool { return adminRE.MatchString(e) })
	_, stderr := a.output()
	base := "http://" + adminRE.FindStringSubmatch(stderr)[1]

	// Console summaries of the self-metrics, one per 1 s window.
	a.waitFor("two console summaries", 20*time.Second, func(o, _ string) bool {
		return strings.Count(o, "window ") >= 2 && strings.Contains(o, "sabaki_pipeline_points_total")
	})

	if code, body := httpGet(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz = %d %q", code, body)
	}
	code, body := httpGet(t, base+"/metrics")
	for _, want := range []string{"sabaki_pipeline_points_total", "sabaki_build_info", "go_goroutines", "process_start_time_seconds"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %s", code, want)
		}
	}
	var hout, herr bytes.Buffer
	if code := run([]string{"health", "-addr", strings.TrimPrefix(base, "http://")}, &hout, &herr); code != 0 || !strings.HasSuffix(hout.String(), "/readyz: ready\n") {
		t.Errorf("sabaki health = %d %q %q", code, hout.String(), herr.String())
	}
	if code, body := httpGet(t, base+"/api/v1/exemplars?metric=sabaki_pipeline_points_total&from=5m"); code != 200 || !strings.HasPrefix(body, "[") {
		t.Errorf("/api/v1/exemplars = %d %q", code, body)
	}
	if code, _ := httpGet(t, base+"/api/v1/exemplars"); code != 400 {
		t.Errorf("/api/v1/exemplars without metric = %d, want 400", code)
	}

	// A second agent on the same data directory fails at once, clearly.
	t.Run("second run on the data dir", func(t *testing.T) {
		b := startAgent(t, "-config", cfgPath)
		if code := b.wait(20 * time.Second); code != 1 {
			t.Errorf("exit code = %d, want 1", code)
		}
		_, e := b.output()
		if !strings.Contains(e, "is in use by another sabaki process (pid") || strings.Count(strings.TrimSpace(e), "\n") != 0 {
			t.Errorf("stderr = %q, want one line saying the data directory is in use", e)
		}
	})
	// Another data directory but the first agent's admin port.
	t.Run("port in use", func(t *testing.T) {
		other := filepath.Join(dir, "other.yaml")
		writeConfig(t, other, filepath.Join(dir, "data2"), strings.TrimPrefix(base, "http://"))
		b := startAgent(t, "-config", other)
		if code := b.wait(20 * time.Second); code != 1 {
			t.Errorf("exit code = %d, want 1", code)
		}
		_, e := b.output()
		if !strings.Contains(e, "agent.admin_listen") || !strings.Contains(e, "address already in use") || strings.Count(strings.TrimSpace(e), "\n") != 0 {
			t.Errorf("stderr = %q, want one line naming agent.admin_listen and the port in use", e)
		}
	})

	// SIGHUP with a broken config: logged, the agent keeps running.
	good, _ := os.ReadFile(cfgPath)
	if err := os.WriteFile(cfgPath, append(good, []byte("bogus_section: 1\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	a.cmd.Process.Signal(syscall.SIGHUP)
	a.waitFor("the rejected reload", 10*time.Second, func(_, e string) bool {
		return strings.Contains(e, "config reload rejected") && strings.Contains(e, `bogus_section: unknown key \"bogus_section\"`)
	})
	before := strings.Count(func() string { o, _ := a.output(); return o }(), "window ")
	a.waitFor("summaries after the rejected reload", 10*time.Second, func(o, _ string) bool { return strings.Count(o, "window ") > before+1 })
	if code, _ := httpGet(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz after a rejected reload = %d", code)
	}

	// SIGHUP with a good config (a changed exporter and source): applied,
	// both restarted, and windows keep coming.
	changed := bytes.Replace(good, []byte("max_series: 3"), []byte("max_series: 2"), 1)
	changed = bytes.Replace(changed, []byte("interval: 1s"), []byte("interval: 2s"), 1)
	if err := os.WriteFile(cfgPath, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	a.cmd.Process.Signal(syscall.SIGHUP)
	a.waitFor("the reload", 10*time.Second, func(_, e string) bool {
		return strings.Contains(e, `"msg":"config reloaded"`) && strings.Contains(e, `"msg":"sources restarted"`) && strings.Contains(e, `"msg":"exporters restarted"`)
	})
	before = strings.Count(func() string { o, _ := a.output(); return o }(), "sabaki_pipeline_points_total")
	a.waitFor("self-metrics after the reload", 10*time.Second, func(o, _ string) bool {
		return strings.Count(o, "sabaki_pipeline_points_total") > before
	})
	if _, body := httpGet(t, base+"/metrics"); !strings.Contains(body, `sabaki_source_collect_duration_seconds_count{source="self"}`) {
		t.Errorf("/metrics after the reload lacks the new scheduler's metrics")
	}

	// SIGTERM: exit 0, and the last window is in the store.
	a.cmd.Process.Signal(syscall.SIGTERM)
	if code := a.wait(20 * time.Second); code != 0 {
		_, e := a.output()
		t.Fatalf("exit code after SIGTERM = %d, want 0\n%s", code, e)
	}
	_, e := a.output()
	var stoppedAt time.Time
	for _, line := range strings.Split(e, "\n") {
		var rec struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "shutting down" {
			stoppedAt = rec.Time
		}
	}
	if stoppedAt.IsZero() {
		t.Fatalf("no shutting down line in\n%s", e)
	}
	st, err := store.Open(store.Dir(dataDir), store.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rows, err := st.Query(context.Background(), store.Query{
		Metric: "sabaki_pipeline_points_total", From: stoppedAt.Add(-time.Minute), To: stoppedAt.Add(time.Minute), Step: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	var last time.Time
	for _, r := range rows {
		if r.Time.After(last) {
			last = r.Time
		}
	}
	// What was flushed at SIGTERM reached both the store and the console:
	// the last window the console printed is the last one stored, and it is
	// at most one window before the shutdown (the open window may be empty).
	o, _ := a.output()
	m := regexp.MustCompile(`window (\S+)/1s`).FindAllStringSubmatch(o, -1)
	lastPrinted, _ := time.Parse(time.RFC3339, m[len(m)-1][1])
	if !last.Equal(lastPrinted) {
		t.Errorf("last stored window %s, last printed %s", last.Format(time.RFC3339), lastPrinted.Format(time.RFC3339))
	}
	if want := stoppedAt.Truncate(time.Second).Add(-time.Second); last.Before(want) {
		t.Errorf("last stored window %s, want at least %s (shutdown at %s)", last.Format(time.RFC3339), want.Format(time.RFC3339), stoppedAt.Format(time.RFC3339Nano))
	}

	// sabaki query reads the agent's own history back.
	var qout, qerr bytes.Buffer
	if code := run([]string{"query", "-data-dir", dataDir, "-metric", "sabaki_pipeline_points_total", "-stat", "sum", "-from", "10m", "-step", "1h", "-o", "json"}, &qout, &qerr); code != 0 {
		t.Fatalf("query: exit %d: %s", code, qerr.String())
	}
	var qrows []struct {
		Metric string  `json:"metric"`
		Stat   string  `json:"stat"`
		Value  float64 `json:"value"`
	}
	if err := json.Unmarshal(qout.Bytes(), &qrows); err != nil || len(qrows) == 0 || qrows[0].Value <= 0 {
		t.Errorf("query -o json = %s (%v), want the points counted", qout.String(), err)
	}
}

func TestRunBadConfig(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "bad.yaml")
	os.WriteFile(cfgPath, []byte("agent:\n  windw: 1s\n"), 0o600)
	var out, errb bytes.Buffer
	if code := run([]string{"run", "-config", cfgPath}, &out, &errb); code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if !strings.Contains(errb.String(), cfgPath+`:2:3: agent.windw: unknown key \"windw\" (did you mean \"window\"?)`) {
		t.Errorf("stderr = %q", errb.String())
	}
}

func TestRunUnwritableDataDir(t *testing.T) {
	// A path below a regular file cannot be created, even by root.
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	cfgPath := filepath.Join(dir, "c.yaml")
	writeConfig(t, cfgPath, filepath.Join(file, "data"), "127.0.0.1:0")
	var out, errb bytes.Buffer
	if code := run([]string{"run", "-config", cfgPath}, &out, &errb); code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if !strings.Contains(errb.String(), "creating data directory") || strings.Count(strings.TrimSpace(errb.String()), "\n") != 0 {
		t.Errorf("stderr = %q, want one line about the data directory", errb.String())
	}
}

func TestHealthNoAgent(t *testing.T) {
	var out, errb bytes.Buffer
	// Port 1 on loopback: nothing listens there.
	if code := run([]string{"health", "-addr", "127.0.0.1:1"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "connection refused") {
		t.Errorf("health without an agent = %d %q", code, errb.String())
	}
}

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !regexp.MustCompile(`^sabaki \S+ \(commit \S+, go1\.\S+, \w+/\w+\)\n$`).MatchString(out.String()) {
		t.Errorf("version output %q", out.String())
	}
}

func TestUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(nil, &out, &errb); code != 2 || !strings.Contains(errb.String(), "Usage:") {
		t.Errorf("no args: exit %d, stderr %q", code, errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := run([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d, stderr %q", code, errb.String())
	}
}

// TestRunNeverLogsAPIKey runs the agent with a Mackerel exporter that cannot
// reach its API (every send fails and is logged) and checks the key appears
// neither in the logs nor on /metrics.
func TestRunNeverLogsAPIKey(t *testing.T) {
	if _, ok := exporterTypes()["mackerel"]; !ok {
		t.Fatal("mackerel exporter not wired")
	}
	const key = "sabakiTESTkey0123456789secret"
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "sabaki.yaml")
	cfg := fmt.Sprintf(`agent:
  window: 1s
  data_dir: %s
  admin_listen: 127.0.0.1:0
  shutdown_timeout: 2s
resource: {detect: []}
sources:
  - {type: self, interval: 1s, timeout: 1s}
exporters:
  - type: mackerel
    service: sabaki-test
    api_key: ${SABAKI_TEST_KEY}
    base_url: http://127.0.0.1:1
    outbox: {initial_backoff: 100ms, max_backoff: 200ms}
`, filepath.Join(dir, "data"))
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	t.Setenv("SABAKI_TEST_KEY", key)
	a := startAgent(t, "-config", cfgPath, "-log-level", "debug")
	a.waitFor("a failed send", 30*time.Second, func(_, e string) bool {
		return adminRE.MatchString(e) && strings.Contains(e, "connection refused")
	})
	_, e := a.output()
	base := "http://" + adminRE.FindStringSubmatch(e)[1]
	_, metrics := httpGet(t, base+"/metrics")
	a.cmd.Process.Signal(syscall.SIGTERM)
	a.wait(20 * time.Second)
	o, e := a.output()
	for what, text := range map[string]string{"stderr": e, "stdout": o, "/metrics": metrics} {
		if strings.Contains(text, key) || strings.Contains(text, key[:12]) {
			t.Errorf("the API key appears in %s:\n%s", what, text)
		}
	}
}

// TestRunExporterBuildFails: an exporter that cannot be built (a Mackerel
// exporter without its key) after one that was built fails the start with
// one line, promptly, and leaves the data directory free.
func TestRunExporterBuildFails(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`agent:
  window: 1s
  data_dir: %s
  admin_listen: 127.0.0.1:0
resource: {detect: []}
sources:
  - type: self
exporters:
  - type: console
  - type: mackerel
    service: sabaki-test
    api_key: ${SABAKI_TEST_UNSET_KEY}
    outbox: {initial_backoff: 100ms}
`, filepath.Join(dir, "data"))), 0o600)
	done := make(chan int, 1)
	var out, errb bytes.Buffer
	go func() { done <- run([]string{"run", "-config", cfgPath}, &out, &errb) }()
	select {
	case code := <-done:
		if code != 1 {
			t.Errorf("exit code = %d, want 1", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return: a failed start hangs")
	}
	if e := strings.TrimSpace(errb.String()); !strings.Contains(e, "exporters[1]") || strings.Contains(e, "\n") {
		t.Errorf("stderr = %q, want one line naming exporters[1]", e)
	}
	// Nothing is left holding the data directory.
	l, err := lockDataDir(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatalf("data directory still locked: %v", err)
	}
	l.release()
}

// TestRunReceiverPortInUse: the OTLP receiver's port is taken; the start
// fails with one line naming the source and the address, after stopping the
// exporters and store it had started.
func TestRunReceiverPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`agent:
  window: 1s
  data_dir: %s
  admin_listen: 127.0.0.1:0
resource: {detect: []}
sources:
  - type: self
  - type: otlp
    grpc_listen: ""
    http_listen: %s
exporters:
  - type: console
`, filepath.Join(dir, "data"), ln.Addr())), 0o600)
	var out, errb bytes.Buffer
	if code := run([]string{"run", "-config", cfgPath}, &out, &errb); code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	e := strings.TrimSpace(errb.String())
	if !strings.Contains(e, "otlp") || !strings.Contains(e, ln.Addr().String()) || !strings.Contains(e, "address already in use") || strings.Contains(e, "\n") {
		t.Errorf("stderr = %q, want one line naming the otlp source and %s in use", e, ln.Addr())
	}
	l, err := lockDataDir(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatalf("data directory still locked: %v", err)
	}
	l.release()
}

// TestRunWithoutGoogleCredentials: a configured cloudmonitoring source on a
// machine without Google credentials stays off with a warning saying what
// it looked for; the rest of the agent starts and runs.
func TestRunWithoutGoogleCredentials(t *testing.T) {
	dir := t.TempDir()
	// An unreadable credentials file makes the lookup fail without probing
	// the metadata server (tests send nothing beyond loopback).
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", filepath.Join(dir, "missing.json"))
	cfgPath := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`agent:
  window: 1s
  data_dir: %s
  admin_listen: 127.0.0.1:0
resource: {detect: []}
sources:
  - type: self
    interval: 1s
    timeout: 500ms
  - type: cloudmonitoring
    project: demo
exporters:
  - type: console
`, filepath.Join(dir, "data"))), 0o600)
	p := startAgent(t, "-config", cfgPath)
	p.waitFor("a console window", 30*time.Second, func(stdout, stderr string) bool {
		return strings.Contains(stdout, "window ")
	})
	if _, errs := p.output(); !strings.Contains(errs, "no Google credentials") || !strings.Contains(errs, "missing.json") {
		t.Errorf("stderr does not say the source is off and why:\n%s", errs)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(30 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}
