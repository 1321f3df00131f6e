package exporters

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// tsdbFake is a remote-write receiver with a TSDB's rules for one series: a
// sample older than the series' newest is out of order, one at the same
// time with a different value is a duplicate (an identical one is
// accepted). Histograms compare by count and sum. rollback: one bad sample
// refuses the whole request (Prometheus 2); else the good samples are kept
// and the request still answers 400 (Mimir).
type tsdbFake struct {
	t        *testing.T
	srv      *httptest.Server
	rollback bool
	mu       sync.Mutex
	series   map[string][]tsdbPoint // by labels
	requests int
}

type tsdbPoint struct {
	t      int64
	v, sum float64 // v: the sample, or a histogram's count
}

func startTSDBFake(t *testing.T, rollback bool) *tsdbFake {
	f := &tsdbFake{t: t, rollback: rollback, series: map[string][]tsdbPoint{}}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		d := rwDecodeRequest(t, body)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.requests++
		next := map[string][]tsdbPoint{}
		var bad []string
		for _, s := range d.series {
			key := fmt.Sprint(s.labels)
			var pts []tsdbPoint
			for _, x := range s.samples {
				pts = append(pts, tsdbPoint{t: x.t, v: x.v})
			}
			for _, h := range s.hists {
				pts = append(pts, tsdbPoint{t: h.t, v: float64(h.n.Count), sum: h.n.Sum})
			}
			have := slices.Clone(f.series[key])
			ok := true
			for _, p := range pts {
				if n := len(have); n > 0 {
					last := have[n-1]
					switch {
					case p.t < last.t:
						bad = append(bad, "out of order sample")
						ok = false
					case p.t == last.t && (p.v != last.v || p.sum != last.sum):
						bad = append(bad, "duplicate sample for timestamp")
						ok = false
					case p.t == last.t:
						continue
					}
				}
				if !ok {
					break
				}
				have = append(have, p)
			}
			if ok {
				next[key] = have
			}
		}
		if len(bad) == 0 || !f.rollback {
			for k, v := range next {
				f.series[k] = v
			}
		}
		if len(bad) > 0 {
			http.Error(w, bad[0], http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// total is what increase() over all time gives for the series whose labels
// contain want: the sum of its rises, a drop being a reset.
func (f *tsdbFake) total(want string) (float64, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var sum float64
	n := 0
	for k, pts := range f.series {
		if !strings.Contains(k, want) {
			continue
		}
		n++
		prev := 0.0
		for _, p := range pts {
			if p.v >= prev {
				sum += p.v - prev
			} else {
				sum += p.v
			}
			prev = p.v
		}
	}
	return sum, n
}

// crashAfter lets n requests through, then fails every request like a
// process that died.
type crashAfter struct {
	n    atomic.Int64
	next http.RoundTripper
}

func (c *crashAfter) RoundTrip(r *http.Request) (*http.Response, error) {
	if c.n.Add(-1) < 0 {
		return nil, errors.New("simulated crash")
	}
	return c.next.RoundTrip(r)
}

// restartWindows are five one-minute windows of six counter series
// (route i counts 10·(w+1)+i in window w), two histogram series and a gauge.
func restartWindows(start time.Time) []*metric.Window {
	res := metric.NewAttrs(map[string]string{"service.name": "web", "service.instance.id": "vm-1"})
	var ws []*metric.Window
	for w := range 5 {
		win := &metric.Window{Start: start.Add(time.Duration(w) * time.Minute), Duration: time.Minute}
		for i := range 6 {
			win.Series = append(win.Series, metric.Aggregate{Name: "http.server.requests", Unit: "{request}", Kind: metric.Counter, Resource: res,
				Attrs: metric.NewAttrs(map[string]string{"http.route": fmt.Sprintf("/r%d", i)}), Sum: float64(10*(w+1) + i)})
		}
		for i := range 2 {
			h := histogram.New(0, 0)
			for j := range 100 + 10*w {
				h.Record(0.001 * float64(j+1+i))
			}
			win.Series = append(win.Series, metric.Aggregate{Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram, Resource: res,
				Attrs: metric.NewAttrs(map[string]string{"http.route": fmt.Sprintf("/h%d", i)}), Hist: h})
		}
		win.Series = append(win.Series, metric.Aggregate{Name: "db.connections", Unit: "{connection}", Kind: metric.Gauge, Resource: res, Last: float64(w)})
		ws = append(ws, win)
	}
	return ws
}

// TestRemoteWriteRestartResend: a process dies while sending window 2 (after
// k of its requests were accepted); the next process starts with empty
// totals and the outbox hands it window 2 again. The receiver answers 400
// for the series it already has. That must not drop the window nor be
// retried, and the totals the receiver ends with (increase() over all time)
// must equal the windows' deltas: nothing lost, nothing counted twice.
func TestRemoteWriteRestartResend(t *testing.T) {
	ws := restartWindows(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC))
	var wantCount, wantHist float64
	for _, w := range ws {
		for _, a := range w.Series {
			wantCount += a.Sum
			if a.Hist != nil {
				wantHist += float64(a.Hist.Count())
			}
		}
	}
	for _, rollback := range []bool{true, false} {
		for _, k := range []int{0, 1, 2, 3, 100} {
			t.Run(fmt.Sprintf("rollback=%v/accepted=%d", rollback, k), func(t *testing.T) {
				f := startTSDBFake(t, rollback)
				mod := func(c *RemoteWriteConfig) { c.MaxSamplesPerSend = 3 }
				a, _ := rwTestExporter(t, f.srv.URL, mod)
				for _, w := range ws[:2] {
					if err := a.Export(context.Background(), w); err != nil {
						t.Fatal(err)
					}
				}
				a.client.Transport = &crashAfter{next: a.client.Transport}
				a.client.Transport.(*crashAfter).n.Store(int64(k))
				errA := a.Export(context.Background(), ws[2])
				if k < 100 && errA == nil {
					t.Fatalf("window 2 went through before the crash")
				}

				logs := &syncBuffer{}
				cfg := DefaultRemoteWriteConfig()
				cfg.URL = f.srv.URL
				mod(&cfg)
				reg := prometheus.NewRegistry()
				b, err := NewRemoteWrite(cfg, Settings{Registerer: reg, Logger: slog.New(slog.NewTextHandler(logs, nil))})
				if err != nil {
					t.Fatal(err)
				}
				before := f.requests
				for _, w := range ws[2:] {
					if err := b.Export(context.Background(), w); err != nil {
						t.Fatalf("window %s after the restart: %v\n%s", w.Start, err, logs.String())
					}
				}
				got, n := f.total("http_server_requests_total")
				if n != 6 || got != wantCount {
					t.Errorf("counter total %v over %d series, want %v over 6", got, n, wantCount)
				}
				gotH, _ := f.total("http_server_request_duration_seconds")
				if gotH != wantHist {
					t.Errorf("histogram count total %v, want %v", gotH, wantHist)
				}
				held := counterValue(t, b.skipped.WithLabelValues("already_held"))
				if k > 0 && held == 0 {
					t.Errorf("no series counted as already held")
				}
				if held > 0 && !strings.Contains(logs.String(), "level=INFO msg=\"remote_write receiver already holds series of a re-sent window") {
					t.Errorf("held series not logged at info:\n%s", logs.String())
				}
				if strings.Contains(logs.String(), "level=WARN") || strings.Contains(logs.String(), "level=ERROR") {
					t.Errorf("a re-send after a restart logged a warning or error:\n%s", logs.String())
				}
				t.Logf("%v series held; requests after the restart %d", held, f.requests-before)
			})
		}
	}
}

// TestRemoteWriteHeldClassification: which refusals mean "already held".
func TestRemoteWriteHeldClassification(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		held   bool
	}{
		{400, "out of order sample", true},
		{400, "duplicate sample for timestamp", true},
		{400, "out of bounds", true},
		{400, "too old sample", true},
		{400, "the sample has been rejected because another sample with a more recent timestamp has already been ingested and out-of-order samples are not allowed (err-mimir-sample-out-of-order)", true},
		{409, "store locally for series: out of order sample", true},
		{400, "invalid metric name", false},
		{422, "out of order sample", false},
		{500, "out of order sample", false},
	} {
		t.Run(fmt.Sprint(tc.status, " ", tc.body), func(t *testing.T) {
			f := startRWFake(t)
			f.push(rwFakeAnswer{status: tc.status, body: tc.body})
			e, _ := rwTestExporter(t, f.srv.URL, nil)
			err := e.send(context.Background(), e.enc.request(nil))
			if isHeld(err) != tc.held {
				t.Errorf("held = %v, want %v (%v)", isHeld(err), tc.held, err)
			}
			if tc.held && !IsPermanent(err) {
				t.Errorf("a held refusal must be permanent for callers that do not look closer: %v", err)
			}
		})
	}
}

// TestRemoteWritePrometheusRestart is TestRemoteWriteRestartResend against a
// real Prometheus 2 (whose receiver refuses a whole request for one sample
// it already holds): the process dies after two of window 2's requests; the
// next one re-sends window 2 and goes on. What Prometheus ends up with,
// read back as raw samples, adds up to the windows' deltas exactly.
func TestRemoteWritePrometheusRestart(t *testing.T) {
	p := startPrometheus(t)
	start := time.Now().UTC().Truncate(time.Minute).Add(-8 * time.Minute)
	ws := restartWindows(start)
	mod := func(c *RemoteWriteConfig) { c.MaxSamplesPerSend = 3 }
	url := p.url + "/api/v1/write"
	a, _ := rwTestExporter(t, url, mod)
	for _, w := range ws[:2] {
		if err := a.Export(context.Background(), w); err != nil {
			t.Fatal(err)
		}
	}
	crash := &crashAfter{next: a.client.Transport}
	crash.n.Store(2)
	a.client.Transport = crash
	if err := a.Export(context.Background(), ws[2]); err == nil {
		t.Fatal("window 2 went through before the crash")
	}
	b, _ := rwTestExporter(t, url, mod)
	for _, w := range ws[2:] {
		if err := b.Export(context.Background(), w); err != nil {
			t.Fatalf("window %s after the restart: %v\n%s", w.Start, err, p.log.String())
		}
	}
	held := counterValue(t, b.skipped.WithLabelValues("already_held"))
	if held == 0 {
		t.Errorf("Prometheus refused nothing of the re-sent window: the test did not test the restart")
	}
	at := ws[4].End().Add(time.Second)
	var wantCount, wantHist float64
	for _, w := range ws {
		for _, a := range w.Series {
			wantCount += a.Sum
			if a.Hist != nil {
				wantHist += float64(a.Hist.Count())
			}
		}
	}
	if got := promIncrease(t, p, `http_server_requests_total{job="web"}`, at); got != wantCount {
		t.Errorf("counters: increase over all time %v, want %v", got, wantCount)
	}
	if got := promIncrease(t, p, `http_server_request_duration_seconds{job="web"}`, at); got != wantHist {
		t.Errorf("histograms: count increase over all time %v, want %v", got, wantHist)
	}
	t.Logf("%v series already held after the restart", held)
}

// promIncrease reads every raw sample of sel in the 20 minutes before at
// (histograms by their count) and adds up each series' rises, a drop being
// a reset: increase() over all time, without extrapolation.
func promIncrease(t *testing.T, p *promServer, sel string, at time.Time) float64 {
	t.Helper()
	v := neturl.Values{"query": {sel + "[20m]"}, "time": {strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64)}}
	resp, err := http.Get(p.url + "/api/v1/query?" + v.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Values     [][2]any `json:"values"`
				Histograms [][2]any `json:"histograms"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Status != "success" {
		t.Fatalf("query %s: %v %s", sel, err, body.Error)
	}
	total := 0.0
	for _, r := range body.Data.Result {
		var vals []float64
		for _, x := range r.Values {
			f, _ := strconv.ParseFloat(fmt.Sprint(x[1]), 64)
			vals = append(vals, f)
		}
		for _, x := range r.Histograms {
			m, _ := x[1].(map[string]any)
			f, _ := strconv.ParseFloat(fmt.Sprint(m["count"]), 64)
			vals = append(vals, f)
		}
		prev := 0.0
		for _, f := range vals {
			if f >= prev {
				total += f - prev
			} else {
				total += f
			}
			prev = f
		}
	}
	return total
}
