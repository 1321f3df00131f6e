// Package e2e runs the real sabaki binary as a process, with a config file,
// loopback ports and temporary directories, against load from
// internal/loadgen and the fakes under internal/fake, and checks end to end
// that nothing is lost or counted twice.
//
// `go test ./internal/e2e` (and so `make test`) runs the short set;
// `SABAKI_E2E=full go test ./internal/e2e` (`make e2e`) runs every scenario
// at full length. Which scenario runs where is in each test's doc comment.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// sabakiBin is the sabaki built once for the whole run by TestMain.
var sabakiBin string

func TestMain(m *testing.M) {
	// SABAKI_E2E_BINARY runs a binary built elsewhere (a release build,
	// or one built from a clean checkout while the tree is mid-edit).
	if b := os.Getenv("SABAKI_E2E_BINARY"); b != "" {
		sabakiBin = b
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "sabaki-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sabakiBin = filepath.Join(dir, "sabaki")
	build := exec.Command("go", "build", "-o", sabakiBin, "github.com/sabakiio/sabaki/cmd/sabaki")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building sabaki:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// full reports whether the full-length set was asked for (make e2e).
func full() bool { return os.Getenv("SABAKI_E2E") == "full" }

// freePort returns a loopback port that was free a moment ago, chosen
// below the kernel's ephemeral range (32768–60999 by default), so that no
// listener on port 0 (the load generator's, other tests') and no outgoing
// connection can be given it before the agent binds it.
func freePort(t testing.TB) string {
	t.Helper()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		ln.Close()
		return ln.Addr().String()
	}
	t.Fatal("no free loopback port in 20000–31999")
	return ""
}

// syncBuffer is a bytes.Buffer safe for a process's output and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// agent is one running `sabaki run`.
type agent struct {
	t       testing.TB
	cmd     *exec.Cmd
	out     *syncBuffer
	admin   string
	dataDir string
	cfgPath string
	done    chan struct{}
	err     error
	// peakRSS is VmHWM in KiB, read just before the process ended (or
	// on demand with PeakRSS).
	peakRSS int64
	// counts are the window counters read just before stop or kill9.
	counts windowCounts
}

// windowCounts are an agent's window counters (from /metrics).
type windowCounts struct {
	// storeErrs are windows the store did not take when handed over
	// (they wait and are written again); storeLost those given up.
	// refused are windows an outbox did not take when handed over (they
	// wait and are offered again); enqLost those given up.
	closed, revised, sent, dropped, storeErrs, storeLost, refused, enqLost float64
	// pointDrops are the pipeline's dropped points by reason.
	pointDrops map[string]float64
}

func (a *agent) readCounts() windowCounts {
	return windowCounts{
		closed:     a.metricWhere("sabaki_pipeline_windows_total", `emission="first"`),
		revised:    a.metricWhere("sabaki_pipeline_windows_total", `emission="revision"`),
		sent:       a.metricWhere("sabaki_exporter_sent_windows_total"),
		dropped:    a.metricWhere("sabaki_exporter_dropped_windows_total"),
		storeErrs:  a.metricWhere("sabaki_agent_store_write_errors_total"),
		storeLost:  a.metricWhere("sabaki_agent_store_windows_abandoned_total"),
		refused:    a.metricWhere("sabaki_agent_enqueue_errors_total"),
		enqLost:    a.metricWhere("sabaki_agent_enqueue_windows_abandoned_total"),
		pointDrops: a.pointDrops(),
	}
}

// pointDrops reads sabaki_pipeline_dropped_points_total by reason (the
// reasons with a non-zero count).
func (a *agent) pointDrops() map[string]float64 {
	m := map[string]float64{}
	for _, r := range []string{"nan", "too_late", "future", "out_of_order", "negative_delta", "invalid", "series_limit", "max_series"} {
		if v := a.metricWhere("sabaki_pipeline_dropped_points_total", `reason="`+r+`"`); v > 0 {
			m[r] = v
		}
	}
	return m
}

func (c windowCounts) add(d windowCounts) windowCounts {
	drops := map[string]float64{}
	for _, m := range []map[string]float64{c.pointDrops, d.pointDrops} {
		for r, v := range m {
			drops[r] += v
		}
	}
	return windowCounts{c.closed + d.closed, c.revised + d.revised, c.sent + d.sent, c.dropped + d.dropped,
		c.storeErrs + d.storeErrs, c.storeLost + d.storeLost, c.refused + d.refused, c.enqLost + d.enqLost, drops}
}

// figures logs a scenario's summary in one greppable line (FIGURES): the
// windows the pipeline closed (and revised), sent to Mackerel, lost (store
// writes given up, exporter drops, enqueues given up; and the store writes
// that failed and the enqueues refused, both retried), the observations lost
// and counted twice end to end, and the peak RSS. Counters are read just
// before each stop or kill, so windows flushed at shutdown are not in them.
func figures(t testing.TB, c windowCounts, lostObs, dupObs float64, peakKiB int64) {
	t.Helper()
	t.Logf("FIGURES %s: windows closed %v (revised %v), sent to Mackerel %v, lost %v (store writes given up %v of %v failed, exporter drops %v, enqueues given up %v of %v refused); observations lost %v, counted twice %v; points dropped by the pipeline %v; peak RSS %.1f MiB",
		t.Name(), c.closed, c.revised, c.sent, c.storeLost+c.dropped+c.enqLost, c.storeLost, c.storeErrs, c.dropped, c.enqLost, c.refused, lostObs, dupObs, c.pointDrops, float64(peakKiB)/1024)
}

// lostDup splits got − want into what is missing and what is in excess.
func lostDup(want, got float64) (lost, dup float64) {
	return max(want-got, 0), max(got-want, 0)
}

// env is a scenario's directory and ports.
type env struct {
	dir, dataDir, admin, otlpHTTP, otlpGRPC string
	// started is set once an agent of this env has been ready: from then
	// on its ports are in use by the test's senders and cannot change.
	started bool
}

// repick chooses new ports for the env and rewrites them in the config
// file at cfgPath.
func (e *env) repick(t testing.TB, cfgPath string) {
	t.Helper()
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	for _, p := range []*string{&e.admin, &e.otlpHTTP, &e.otlpGRPC} {
		np := freePort(t)
		cfg = strings.ReplaceAll(cfg, *p, np)
		*p = np
	}
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newEnv(t testing.TB) *env {
	dir := t.TempDir()
	return &env{dir: dir, dataDir: filepath.Join(dir, "data"), admin: freePort(t),
		otlpHTTP: freePort(t), otlpGRPC: freePort(t)}
}

// agentSection is the agent: and retention: of every scenario: 1 s windows,
// a 1 s first tier.
func (e *env) agentSection() string {
	return fmt.Sprintf(`agent:
  window: 1s
  lateness: 3s
  data_dir: %s
  admin_listen: %s
  shutdown_timeout: 10s
retention:
  - {resolution: 1s, keep: 1d}
  - {resolution: 1h, keep: 30d}
`, e.dataDir, e.admin)
}

func (e *env) otlpSource(extra string) string {
	return fmt.Sprintf(`  - type: otlp
    grpc_listen: %s
    http_listen: %s
%s`, e.otlpGRPC, e.otlpHTTP, extra)
}

func (e *env) writeConfig(t testing.TB, body string) string {
	t.Helper()
	p := filepath.Join(e.dir, "sabaki.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// start runs `sabaki run -config cfg` and waits for /readyz.
// A first start that fails because a port was taken between freePort and
// the agent's bind (another test on the machine) is retried on new ports,
// up to three times.
func (e *env) start(t testing.TB, cfgPath string, setup func(*exec.Cmd)) *agent {
	t.Helper()
	for attempt := 1; ; attempt++ {
		if a := e.startOnce(t, cfgPath, setup, !e.started && attempt <= 3); a != nil {
			e.started = true
			return a
		}
		t.Logf("a port was taken before the agent bound it; new ports (attempt %d)", attempt)
		e.repick(t, cfgPath)
	}
}

// startOnce is start without the retry: it returns nil (retry allowed)
// when the agent exited because an address was already in use.
func (e *env) startOnce(t testing.TB, cfgPath string, setup func(*exec.Cmd), mayRetry bool) *agent {
	t.Helper()
	a := &agent{t: t, out: &syncBuffer{}, admin: e.admin, dataDir: e.dataDir, cfgPath: cfgPath, done: make(chan struct{})}
	a.cmd = exec.Command(sabakiBin, "run", "-config", cfgPath)
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	if setup != nil {
		setup(a.cmd)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		a.err = a.cmd.Wait()
		close(a.done)
	}()
	t.Cleanup(func() {
		select {
		case <-a.done:
		default:
			a.cmd.Process.Kill()
			<-a.done
		}
		if t.Failed() {
			t.Logf("agent output:\n%s", tail(a.out.String(), 60))
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-a.done:
			if mayRetry && strings.Contains(a.out.String(), "address already in use") {
				return nil
			}
			t.Fatalf("sabaki exited before ready (%v):\n%s", a.err, a.out.String())
		default:
		}
		resp, err := http.Get("http://" + a.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return a
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sabaki not ready after 60 s:\n%s", a.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// PeakRSS returns VmHWM of the running process in KiB.
func (a *agent) PeakRSS() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid))
	if err != nil {
		return a.peakRSS
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			a.peakRSS = v
		}
	}
	return a.peakRSS
}

// stop sends SIGTERM and waits for a clean exit.
func (a *agent) stop() {
	a.t.Helper()
	a.PeakRSS()
	a.counts = a.readCounts()
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(60 * time.Second):
		a.t.Fatalf("sabaki did not stop within 60 s of SIGTERM:\n%s", tail(a.out.String(), 40))
	}
	if a.err != nil {
		a.t.Fatalf("sabaki exited with %v:\n%s", a.err, tail(a.out.String(), 40))
	}
}

// kill9 sends SIGKILL and waits for the process to be gone.
func (a *agent) kill9() {
	a.PeakRSS()
	a.counts = a.readCounts()
	a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.done
}

func (a *agent) signal(s os.Signal) { a.cmd.Process.Signal(s) }

// waitLog waits until the agent's output contains s.
func (a *agent) waitLog(s string, within time.Duration) bool {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if strings.Contains(a.out.String(), s) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// metricValue reads one sample of the agent's /metrics (sum over the
// series whose line starts with prefix).
func (a *agent) metricValue(prefix string) float64 {
	resp, err := http.Get("http://" + a.admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	var sum float64
	for _, l := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(l, prefix) {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// metricWhere sums the samples of the agent's /metrics named name (exactly)
// whose labels contain every one of labels (each written as `k="v"`).
func (a *agent) metricWhere(name string, labels ...string) float64 {
	resp, err := http.Get("http://" + a.admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	var sum float64
next:
	for _, l := range strings.Split(buf.String(), "\n") {
		if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
			continue
		}
		f := strings.Fields(l)
		for _, lb := range labels {
			if !strings.Contains(f[0], lb) {
				continue next
			}
		}
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}

// healthy reports whether the process is still running and answers
// /healthz with 200.
func (a *agent) healthy() bool {
	select {
	case <-a.done:
		return false
	default:
	}
	resp, err := http.Get("http://" + a.admin + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// row is one row of `sabaki query -o json`.
type row struct {
	Time       time.Time         `json:"time"`
	Metric     string            `json:"metric"`
	Attributes map[string]string `json:"attributes"`
	Stat       string            `json:"stat"`
	Value      float64           `json:"value"`
}

// query runs `sabaki query -data-dir D -o json args...` and decodes it.
func query(t testing.TB, dataDir string, args ...string) []row {
	t.Helper()
	out, stderr, code := runSabaki(t, append([]string{"query", "-data-dir", dataDir, "-o", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("sabaki query %v: exit %d: %s", args, code, stderr)
	}
	var rows []row
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("sabaki query %v: %v\n%s", args, err, out)
	}
	return rows
}

// queryOrNone is query for a metric that may be absent from the store:
// no rows when `sabaki query` answers that there is no such metric.
func queryOrNone(t testing.TB, dataDir string, args ...string) []row {
	t.Helper()
	out, stderr, code := runSabaki(t, append([]string{"query", "-data-dir", dataDir, "-o", "json"}, args...)...)
	if code != 0 && strings.Contains(stderr, "no metric") {
		return nil
	}
	if code != 0 {
		t.Fatalf("sabaki query %v: exit %d: %s", args, code, stderr)
	}
	var rows []row
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("sabaki query %v: %v\n%s", args, err, out)
	}
	return rows
}

// runSabaki runs the binary with args and returns stdout, stderr and the
// exit code.
func runSabaki(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sabakiBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running sabaki %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// sumStat adds the values of the rows with the given stat.
func sumStat(rows []row, stat string) float64 {
	var s float64
	for _, r := range rows {
		if r.Stat == stat {
			s += r.Value
		}
	}
	return s
}

// waitFor polls cond until it holds or within passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
