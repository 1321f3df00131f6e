package exporters

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// promServer is a Prometheus started by a test.
type promServer struct {
	url string
	log *lockedBuffer
}

// lockedBuffer collects the child's output: os/exec copies into it from its
// own goroutine while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startPrometheus starts the prometheus binary (Debian package
// "prometheus") with the remote-write receiver, native histograms and
// exemplar storage, on a loopback port with a temporary TSDB. Without the
// binary the test is skipped loudly, or fails when CI=true.
func startPrometheus(t *testing.T) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		msg := "prometheus binary not found: install it (apt-get install -y prometheus) to run the remote-write integration test"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED — " + msg)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte("global:\n  scrape_interval: 1m\nscrape_configs: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	log := &lockedBuffer{}
	cmd := exec.CommandContext(ctx, bin,
		"--config.file="+cfg,
		"--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+addr,
		"--web.enable-remote-write-receiver",
		"--enable-feature=native-histograms,exemplar-storage",
	)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start prometheus: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", log.String())
		}
	})
	p := &promServer{url: "http://" + addr, log: log}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(p.url + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 60 s: %v\n%s", err, log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	return p
}

// query runs an instant query and returns the vector's samples as label
// sets and values (float samples) or histograms.
func (p *promServer) query(t *testing.T, q string, at time.Time) []promResult {
	t.Helper()
	v := url.Values{"query": {q}, "time": {strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64)}}
	resp, err := http.Get(p.url + "/api/v1/query?" + v.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  []any             `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("query %s: decode: %v", q, err)
	}
	if body.Status != "success" {
		t.Fatalf("query %s: %s", q, body.Error)
	}
	var out []promResult
	for _, r := range body.Data.Result {
		if len(r.Value) != 2 {
			continue // a histogram sample: queries here wrap it in a function
		}
		f, err := strconv.ParseFloat(fmt.Sprint(r.Value[1]), 64)
		if err != nil {
			t.Fatalf("query %s: value %v", q, r.Value[1])
		}
		out = append(out, promResult{labels: r.Metric, v: f})
	}
	return out
}

type promResult struct {
	labels map[string]string
	v      float64
}

// one runs a query that must return exactly one float sample.
func (p *promServer) one(t *testing.T, q string, at time.Time) float64 {
	t.Helper()
	r := p.query(t, q, at)
	if len(r) != 1 {
		t.Fatalf("query %s at %s: %d results, want 1: %+v", q, at.Format(time.RFC3339), len(r), r)
	}
	return r[0].v
}

// nativeBucket returns the bounds of the bucket that holds rank q·count in
// a native histogram, with Prometheus's own rule (first bucket whose
// cumulative count reaches the rank; zero bucket first, positive buckets
// ascending; negative buckets are not used by this test).
func nativeBucket(n histogram.Native, q float64) (lo, hi float64) {
	rank := q * float64(n.Count)
	cum := float64(n.ZeroCount)
	if cum >= rank && n.ZeroCount > 0 {
		return 0, n.ZeroThreshold
	}
	base := math.Exp2(math.Exp2(-float64(n.Schema)))
	idx, c := int64(0), int64(0)
	k := 0
	for i, sp := range n.PositiveSpans {
		if i == 0 {
			idx = int64(sp.Offset)
		} else {
			idx += int64(sp.Offset)
		}
		for j := uint32(0); j < sp.Length; j++ {
			c += n.PositiveDeltas[k]
			k++
			cum += float64(c)
			if cum >= rank {
				// Prometheus bucket idx covers (base^(idx-1), base^idx].
				return math.Pow(base, float64(idx-1)), math.Pow(base, float64(idx))
			}
			idx++
		}
	}
	return math.Inf(1), math.Inf(1)
}

// TestRemoteWritePrometheus sends a known workload into a real Prometheus
// (remote-write receiver, native histograms) and checks what Prometheus
// answers against the windows' own histograms:
//
//   - histogram_count of the cumulative native histogram at each window end
//     equals the windows' total count exactly, and histogram_count of the
//     difference of two consecutive samples equals that window's count;
//   - histogram_quantile(0.95) lies inside the bucket that holds the 0.95
//     rank (at the sent schema), and agrees with the sabaki estimate of the
//     same histogram within that bucket's width. That is the tolerance
//     because the two estimators differ only inside the bucket: Prometheus
//     2.42 interpolates linearly within a native bucket (newer versions
//     exponentially), sabaki log-linearly and clamps to [min, max]; at
//     schema s a bucket spans a relative width of 2^(2^-s) − 1 (4.4 % at
//     schema 4, 0.27 % at schema 8).
//   - a histogram finer than schema 8 is accepted (reduced to 8), and a
//     cumulative histogram whose schema drops mid-run (7 → 3) is not taken
//     for a counter reset;
//   - counters (rate over the windows), gauges, target_info, a revised
//     window and exemplars (trace IDs) arrive;
//   - the same windows written to sabaki's store read back (store.Query,
//     what `sabaki query` prints) with the same per-window counts and p95s
//     as Prometheus answers, and the same total.
func TestRemoteWritePrometheus(t *testing.T) {
	p := startPrometheus(t)
	e, _ := rwTestExporter(t, p.url+"/api/v1/write", func(c *RemoteWriteConfig) { c.MaxSamplesPerSend = 5 })

	const windows = 6
	t0 := time.Now().UTC().Truncate(time.Minute).Add(-(windows + 2) * time.Minute)
	res := metric.NewAttrs(map[string]string{"service.name": "web", "service.namespace": "shop", "service.instance.id": "vm-1", "cloud.region": "asia-northeast1"})
	r := rand.New(rand.NewPCG(7, 7))
	var ws []*metric.Window
	var traceIDs []string
	for i := range windows {
		start := t0.Add(time.Duration(i) * time.Minute)
		slow, fast, narrow, widening := histogram.New(0, 0), histogram.New(0, 0), histogram.New(0, 0), histogram.New(0, 0)
		// widening: narrow at first, then spread over five decades, so the
		// cumulative histogram's schema drops mid-run (7 → 3).
		for range 400 {
			if i < 3 {
				widening.Record(1 + r.Float64())
			} else {
				widening.Record(math.Pow(10, r.Float64()*5-3))
			}
		}
		for range 2000 + 300*i {
			slow.Record(math.Exp(r.NormFloat64()*0.7 + math.Log(0.2))) // ~200 ms
		}
		for range 5000 {
			fast.Record(math.Exp(r.NormFloat64()*0.3 + math.Log(0.01))) // ~10 ms
		}
		for range 100 {
			narrow.Record(1 + r.Float64()*0.001) // needs scale > 8
		}
		var tid [16]byte
		for j := range tid {
			tid[j] = byte(r.Uint32())
		}
		traceIDs = append(traceIDs, hex.EncodeToString(tid[:]))
		ws = append(ws, &metric.Window{Start: start, Duration: time.Minute, Series: []metric.Aggregate{
			{Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram, Resource: res,
				Attrs: metric.NewAttrs(map[string]string{"http.route": "/slow"}), Hist: slow,
				Exemplars: []metric.Exemplar{{TraceID: tid, SpanID: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, Value: slow.Max(), Time: start.Add(30 * time.Second)}}},
			{Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram, Resource: res,
				Attrs: metric.NewAttrs(map[string]string{"http.route": "/fast"}), Hist: fast},
			{Name: "calibration.ratio.spread", Unit: "1", Kind: metric.Histogram, Resource: res, Hist: narrow},
			{Name: "queue.wait", Unit: "s", Kind: metric.Histogram, Resource: res, Hist: widening},
			{Name: "http.server.requests", Unit: "{request}", Kind: metric.Counter, Resource: res, Sum: float64(60 * (i + 1))},
			{Name: "db.connections", Unit: "{connection}", Kind: metric.Gauge, Resource: res, Last: float64(10 + i)},
		}})
	}
	if narrow := ws[0].Series[2].Hist; narrow.Scale() <= 8 {
		t.Fatalf("test data: narrow histogram at scale %d, want > 8", narrow.Scale())
	}
	for _, w := range ws {
		if err := e.Export(context.Background(), w); err != nil {
			t.Fatalf("export window %s: %v\n%s", w.Start, err, p.log.String())
		}
	}
	// A late revision of window 3: 500 more slow requests. Prometheus must
	// accept it (stamped after the last sample).
	rev := *ws[3]
	rev.Revision = 1
	rev.Series = append([]metric.Aggregate(nil), ws[3].Series...)
	revSlow := ws[3].Series[0].Hist.Clone()
	for range 500 {
		revSlow.Record(math.Exp(r.NormFloat64()*0.7 + math.Log(0.2)))
	}
	rev.Series[0].Hist = revSlow
	if err := e.Export(context.Background(), &rev); err != nil {
		t.Fatalf("export revision: %v\n%s", err, p.log.String())
	}
	lastEnd := ws[windows-1].End()
	revAt := lastEnd.Add(time.Millisecond)

	const sel = `http_server_request_duration_seconds{job="shop/web",instance="vm-1",http_route="/slow"}`
	cum := histogram.New(0, 0)
	var quantileChecks int
	var maxRel float64
	var schemas []int32
	for i, w := range ws {
		cum.Merge(w.Series[0].Hist)
		at := w.End()
		if got, want := p.one(t, "histogram_count("+sel+")", at), float64(cum.Count()); got != want {
			t.Errorf("window %d: histogram_count = %g, want %g", i, got, want)
		}
		if got, want := p.one(t, "histogram_sum("+sel+")", at), cum.Sum(); math.Abs(got-want) > 1e-9*want {
			t.Errorf("window %d: histogram_sum = %g, want %g", i, got, want)
		}
		checkQuantile := func(what string, h *histogram.Histogram, query string) {
			t.Helper()
			got := p.one(t, query, at)
			n := h.Native()
			lo, hi := nativeBucket(n, 0.95)
			ours := h.Quantile(0.95)
			if got < lo*(1-1e-12) || got > hi*(1+1e-12) {
				t.Errorf("window %d %s: Prometheus p95 %g outside the rank's bucket (%g, %g] at schema %d", i, what, got, lo, hi, n.Schema)
			}
			if math.Abs(got-ours) > (hi-lo)*(1+1e-9) {
				t.Errorf("window %d %s: Prometheus p95 %g vs sabaki %g differ by more than the bucket width %g", i, what, got, ours, hi-lo)
			}
			quantileChecks++
			maxRel = max(maxRel, math.Abs(got-ours)/ours)
			schemas = append(schemas, n.Schema)
		}
		checkQuantile("cumulative", cum, "histogram_quantile(0.95, "+sel+")")
		if i > 0 {
			// The window alone: increase over [end-1m, end] holds exactly the
			// two samples at the window's start and end, so it is their
			// difference, without extrapolation. (Prometheus 2.42 has no
			// "-" between native histograms.)
			win := fmt.Sprintf("(increase(%s[1m]))", sel)
			if got, want := p.one(t, "histogram_count"+win, at), float64(w.Series[0].Hist.Count()); got != want {
				t.Errorf("window %d alone: histogram_count = %g, want %g", i, got, want)
			}
			checkQuantile("alone", w.Series[0].Hist, "histogram_quantile(0.95, "+win+")")
		}
		if got, want := p.one(t, `http_server_requests_total{job="shop/web"}`, at), float64(60*(i+1)*(i+2)/2); got != want {
			t.Errorf("window %d: counter = %g, want %g", i, got, want)
		}
		if got := p.one(t, `db_connections{job="shop/web"}`, at); got != float64(10+i) {
			t.Errorf("window %d: gauge = %g, want %d", i, got, 10+i)
		}
	}
	// The widening histogram: its cumulative schema dropped mid-run, which
	// Prometheus must not take for a counter reset: each window's increase
	// is its own count.
	var schemaSeen []int32
	wcum := histogram.New(0, 0)
	for i, w := range ws {
		wcum.Merge(w.Series[3].Hist)
		schemaSeen = append(schemaSeen, wcum.Native().Schema)
		if i == 0 {
			continue
		}
		if got := p.one(t, `histogram_count(increase(queue_wait_seconds[1m]))`, w.End()); got != 400 {
			t.Errorf("widening window %d (schema %d): increase count = %g, want 400", i, wcum.Native().Schema, got)
		}
	}
	if schemaSeen[0] == schemaSeen[len(schemaSeen)-1] {
		t.Errorf("test data: widening schema stayed %d", schemaSeen[0])
	}
	t.Logf("widening histogram cumulative schemas per window: %v", schemaSeen)
	// The first window counts too: its totals follow a zero 1 ms after the
	// window start, so increase() over the first window sees them. The
	// counter is exact (Prometheus does not extrapolate below a zero); the
	// histogram is extrapolated over the missing millisecond (×60/59.999).
	first := ws[0].End()
	if got := p.one(t, `increase(http_server_requests_total{job="shop/web"}[1m])`, first); got != 60 {
		t.Errorf("first window: counter increase = %g, want 60", got)
	}
	want0 := float64(ws[0].Series[0].Hist.Count())
	if got := p.one(t, "histogram_count(increase("+sel+"[1m]))", first); math.Abs(got-want0) > want0*1e-4 {
		t.Errorf("first window: histogram increase count = %g, want %g (±0.01%%)", got, want0)
	}
	// The narrow histogram arrived at schema 8 with its exact count.
	if got := p.one(t, `histogram_count(calibration_ratio_spread)`, lastEnd); got != float64(windows*100) {
		t.Errorf("narrow histogram count = %g, want %d", got, windows*100)
	}
	// The revision: 500 more observations, at 1 ms after the last sample.
	if got, want := p.one(t, "histogram_count("+sel+")", revAt), float64(cum.Count()+500); got != want {
		t.Errorf("after revision: histogram_count = %g, want %g", got, want)
	}
	if got := p.one(t, `target_info{job="shop/web",instance="vm-1"}`, lastEnd); got != 1 {
		t.Errorf("target_info = %g", got)
	}
	if r := p.query(t, `target_info{cloud_region="asia-northeast1"}`, lastEnd); len(r) != 1 {
		t.Errorf("target_info lacks resource attributes: %+v", r)
	}
	// rate over the whole run: the counter grew by Σ 60·(i+1) for i ≥ 1 between the first and last sample.
	if got := p.one(t, `sum(increase(http_server_requests_total[10m]))`, lastEnd); got <= 0 {
		t.Errorf("increase = %g, want > 0", got)
	}

	// Exemplars: every window's trace ID is queryable.
	v := url.Values{"query": {sel}, "start": {strconv.FormatInt(t0.Unix(), 10)}, "end": {strconv.FormatInt(revAt.Unix()+1, 10)}}
	resp, err := http.Get(p.url + "/api/v1/query_exemplars?" + v.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ex struct {
		Status string `json:"status"`
		Data   []struct {
			Exemplars []struct {
				Labels map[string]string `json:"labels"`
			} `json:"exemplars"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ex); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, d := range ex.Data {
		for _, e := range d.Exemplars {
			got[e.Labels["trace_id"]] = true
			if e.Labels["span_id"] != "0102030405060708" {
				t.Errorf("exemplar span_id = %q", e.Labels["span_id"])
			}
		}
	}
	for i, id := range traceIDs {
		// Prometheus 2.x's write handler appends a series' exemplars before
		// its histograms, so the exemplar that comes with a histogram
		// series' very first sample finds no series yet and is dropped
		// (newer receivers append them together). Every later one must be
		// there.
		if i == 0 {
			continue
		}
		if !got[id] {
			t.Errorf("window %d exemplar trace_id %s not in Prometheus (got %v)", i, id, got)
		}
	}
	checkAgainstStore(t, p, append(ws, &rev), sel, revAt)
	if strings.Contains(p.log.String(), "level=error") {
		t.Errorf("prometheus logged errors:\n%s", p.log.String())
	}
	t.Logf("checked %d windows, %d p95s against Prometheus: max relative difference %.4f%% (schemas %v)", windows, quantileChecks, 100*maxRel, schemas)
}

// checkAgainstStore writes the same windows (the revision included) into
// sabaki's store and compares what `sabaki query` reads back with what
// Prometheus answers: per window (Step 1m) the count of the window alone
// (increase over the window) and its p95; over the whole run the total
// count, revision included.
func checkAgainstStore(t *testing.T, p *promServer, ws []*metric.Window, sel string, revAt time.Time) {
	t.Helper()
	st, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, w := range ws {
		if err := st.Write(context.Background(), w); err != nil {
			t.Fatal(err)
		}
	}
	first, last := ws[0], ws[len(ws)-2] // the last entry is the revision of an earlier window
	rows, err := st.Query(context.Background(), store.Query{
		Metric: "http.server.request.duration", Where: map[string]string{"http.route": "/slow"},
		From: first.Start, To: last.End(), Step: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(ws)-1 {
		t.Fatalf("store rows = %d, want %d", len(rows), len(ws)-1)
	}
	revised := ws[len(ws)-1].Start
	var total uint64
	for i, r := range rows {
		total += r.Agg.Hist.Count()
		end := r.Time.Add(time.Minute)
		if i == 0 || r.Time.Equal(revised) {
			// Window 0 has no earlier sample to take an increase from; the
			// revised window's late points are in Prometheus's totals
			// (checked below), stamped after the last window.
			continue
		}
		win := fmt.Sprintf("(increase(%s[1m]))", sel)
		if got, want := p.one(t, "histogram_count"+win, end), float64(r.Agg.Hist.Count()); got != want {
			t.Errorf("store row %s: Prometheus count %g, store %g", r.Time.Format(time.TimeOnly), got, want)
		}
		got := p.one(t, "histogram_quantile(0.95, "+win+")", end)
		ours := r.Agg.Hist.Quantile(0.95)
		lo, hi := nativeBucket(r.Agg.Hist.Native(), 0.95)
		if math.Abs(got-ours) > (hi-lo)*(1+1e-9) {
			t.Errorf("store row %s: Prometheus p95 %g, store p95 %g, more than a bucket (%g) apart", r.Time.Format(time.TimeOnly), got, ours, hi-lo)
		}
	}
	if got := p.one(t, "histogram_count("+sel+")", revAt); got != float64(total) {
		t.Errorf("whole run: Prometheus count %g, store %d", got, total)
	}
}
