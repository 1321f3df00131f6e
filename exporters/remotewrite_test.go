package exporters

import (
	"context"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang/snappy"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// rwDecoded is a decoded WriteRequest (only what the exporter sends).
type rwDecoded struct {
	series   []rwDecodedSeries
	metadata []rwDecodedMeta
}

type rwDecodedSeries struct {
	labels    map[string]string
	samples   []rwSample
	hists     []rwDecodedHist
	exemplars []rwExemplar
}

type rwDecodedHist struct {
	n histogram.Native
	t int64
}

type rwDecodedMeta struct {
	typ                int
	family, help, unit string
}

// rwFields walks one protobuf message, calling f for each field.
func rwFields(t *testing.T, b []byte, f func(num protowire.Number, typ protowire.Type, v uint64, bs []byte)) {
	t.Helper()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				t.Fatal("bad varint")
			}
			f(num, typ, v, nil)
			b = b[n:]
		case protowire.Fixed64Type:
			v, n := protowire.ConsumeFixed64(b)
			if n < 0 {
				t.Fatal("bad fixed64")
			}
			f(num, typ, v, nil)
			b = b[n:]
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				t.Fatal("bad bytes")
			}
			f(num, typ, 0, v)
			b = b[n:]
		default:
			t.Fatalf("unexpected wire type %d for field %d", typ, num)
		}
	}
}

func rwDecodeLabel(t *testing.T, b []byte) rwLabel {
	var l rwLabel
	rwFields(t, b, func(num protowire.Number, _ protowire.Type, _ uint64, bs []byte) {
		switch num {
		case 1:
			l.name = string(bs)
		case 2:
			l.value = string(bs)
		}
	})
	return l
}

func rwDecodeRequest(t *testing.T, compressed []byte) rwDecoded {
	t.Helper()
	raw, err := snappy.Decode(nil, compressed)
	if err != nil {
		t.Fatalf("snappy: %v", err)
	}
	var out rwDecoded
	rwFields(t, raw, func(num protowire.Number, _ protowire.Type, _ uint64, bs []byte) {
		switch num {
		case 1:
			s := rwDecodedSeries{labels: map[string]string{}}
			var prev string
			rwFields(t, bs, func(num protowire.Number, _ protowire.Type, _ uint64, bs []byte) {
				switch num {
				case 1:
					l := rwDecodeLabel(t, bs)
					if l.name <= prev {
						t.Errorf("labels not sorted: %q after %q", l.name, prev)
					}
					prev = l.name
					s.labels[l.name] = l.value
				case 2:
					var smp rwSample
					rwFields(t, bs, func(num protowire.Number, _ protowire.Type, v uint64, _ []byte) {
						switch num {
						case 1:
							smp.v = math.Float64frombits(v)
						case 2:
							smp.t = int64(v)
						}
					})
					s.samples = append(s.samples, smp)
				case 3:
					var ex rwExemplar
					rwFields(t, bs, func(num protowire.Number, _ protowire.Type, v uint64, bs []byte) {
						switch num {
						case 1:
							ex.labels = append(ex.labels, rwDecodeLabel(t, bs))
						case 2:
							ex.v = math.Float64frombits(v)
						case 3:
							ex.t = int64(v)
						}
					})
					s.exemplars = append(s.exemplars, ex)
				case 4:
					s.hists = append(s.hists, rwDecodeHist(t, bs))
				}
			})
			out.series = append(out.series, s)
		case 3:
			var m rwDecodedMeta
			rwFields(t, bs, func(num protowire.Number, _ protowire.Type, v uint64, bs []byte) {
				switch num {
				case 1:
					m.typ = int(v)
				case 2:
					m.family = string(bs)
				case 4:
					m.help = string(bs)
				case 5:
					m.unit = string(bs)
				}
			})
			out.metadata = append(out.metadata, m)
		default:
			t.Errorf("unexpected WriteRequest field %d", num)
		}
	})
	return out
}

func rwDecodeHist(t *testing.T, b []byte) rwDecodedHist {
	var h rwDecodedHist
	packed := func(bs []byte) []int64 {
		var out []int64
		for len(bs) > 0 {
			v, n := protowire.ConsumeVarint(bs)
			if n < 0 {
				t.Fatal("bad packed varint")
			}
			out = append(out, protowire.DecodeZigZag(v))
			bs = bs[n:]
		}
		return out
	}
	span := func(bs []byte) histogram.Span {
		var sp histogram.Span
		rwFields(t, bs, func(num protowire.Number, _ protowire.Type, v uint64, _ []byte) {
			switch num {
			case 1:
				sp.Offset = int32(protowire.DecodeZigZag(v))
			case 2:
				sp.Length = uint32(v)
			}
		})
		return sp
	}
	rwFields(t, b, func(num protowire.Number, typ protowire.Type, v uint64, bs []byte) {
		switch num {
		case 1:
			h.n.Count = v
		case 3:
			h.n.Sum = math.Float64frombits(v)
		case 4:
			h.n.Schema = int32(protowire.DecodeZigZag(v))
		case 5:
			h.n.ZeroThreshold = math.Float64frombits(v)
		case 6:
			h.n.ZeroCount = v
		case 8:
			h.n.NegativeSpans = append(h.n.NegativeSpans, span(bs))
		case 9:
			h.n.NegativeDeltas = append(h.n.NegativeDeltas, packed(bs)...)
		case 11:
			h.n.PositiveSpans = append(h.n.PositiveSpans, span(bs))
		case 12:
			h.n.PositiveDeltas = append(h.n.PositiveDeltas, packed(bs)...)
		case 15:
			h.t = int64(v)
		default:
			t.Errorf("unexpected Histogram field %d (wire type %d)", num, typ)
		}
	})
	return h
}

// rwFake is a remote-write receiver that checks the protocol headers,
// decodes every request and answers with scripted statuses.
type rwFake struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	reqs   []rwDecoded
	hdrs   []http.Header
	sizes  []int // compressed body bytes
	script []rwFakeAnswer
}

type rwFakeAnswer struct {
	status     int
	retryAfter string
	body       string
}

func startRWFake(t *testing.T) *rwFake {
	f := &rwFake{t: t}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, want := range map[string]string{
			"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf", "X-Prometheus-Remote-Write-Version": "0.1.0",
		} {
			if got := r.Header.Get(k); got != want {
				t.Errorf("header %s = %q, want %q", k, got, want)
			}
		}
		body, _ := io.ReadAll(r.Body)
		d := rwDecodeRequest(t, body)
		f.mu.Lock()
		f.reqs = append(f.reqs, d)
		f.hdrs = append(f.hdrs, r.Header.Clone())
		f.sizes = append(f.sizes, len(body))
		var a rwFakeAnswer
		if len(f.script) > 0 {
			a, f.script = f.script[0], f.script[1:]
		}
		f.mu.Unlock()
		if a.status == 0 {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if a.retryAfter != "" {
			w.Header().Set("Retry-After", a.retryAfter)
		}
		http.Error(w, a.body, a.status)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *rwFake) push(a ...rwFakeAnswer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script = append(f.script, a...)
}

func (f *rwFake) requests() []rwDecoded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reqs)
}

// all returns every series received, keyed by __name__ and labels.
func (f *rwFake) all() []rwDecodedSeries {
	var out []rwDecodedSeries
	for _, r := range f.requests() {
		out = append(out, r.series...)
	}
	return out
}

func rwFind(ss []rwDecodedSeries, match map[string]string) []rwDecodedSeries {
	var out []rwDecodedSeries
outer:
	for _, s := range ss {
		for k, v := range match {
			if s.labels[k] != v {
				continue outer
			}
		}
		out = append(out, s)
	}
	return out
}

func rwTestExporter(t *testing.T, url string, mod func(*RemoteWriteConfig)) (*RemoteWrite, *prometheus.Registry) {
	t.Helper()
	cfg := DefaultRemoteWriteConfig()
	cfg.URL = url
	if mod != nil {
		mod(&cfg)
	}
	reg := prometheus.NewRegistry()
	e, err := NewRemoteWrite(cfg, Settings{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Shutdown(context.Background()) })
	return e, reg
}

func TestPromNames(t *testing.T) {
	for _, tc := range []struct {
		name, unit string
		kind       metric.Kind
		want       string
	}{
		{"http.server.request.duration", "s", metric.Histogram, "http_server_request_duration_seconds"},
		{"http.server.requests", "{request}", metric.Counter, "http_server_requests_total"},
		{"http.server.requests.total", "", metric.Counter, "http_server_requests_total"},
		{"process.memory.usage", "By", metric.Gauge, "process_memory_usage_bytes"},
		{"network.io", "By/s", metric.Gauge, "network_io_bytes_per_second"},
		{"system.cpu.utilization", "1", metric.Gauge, "system_cpu_utilization_ratio"},
		{"cpu.seconds", "s", metric.Counter, "cpu_seconds_total"},
		{"db.latency", "ms", metric.Histogram, "db_latency_milliseconds"},
		{"cloudsql.googleapis.com/database/cpu/utilization", "10^2.%", metric.Gauge, "cloudsql_googleapis_com_database_cpu_utilization_10_2"},
		{"1st.metric", "", metric.Gauge, "_1st_metric"},
		{"llm.tokens", "{token}", metric.Counter, "llm_tokens_total"},
		{"queue.size", "1", metric.Counter, "queue_size_total"},
	} {
		if got := promMetricName(tc.name, tc.unit, tc.kind == metric.Counter, tc.kind == metric.Gauge); got != tc.want {
			t.Errorf("promMetricName(%q, %q, %s) = %q, want %q", tc.name, tc.unit, tc.kind, got, tc.want)
		}
	}
	for in, want := range map[string]string{
		"http.route": "http_route", "http.response.status_code": "http_response_status_code",
		"2xx": "key_2xx", "__meta": "key__meta", "_private": "_private", "": "key_empty", "日本": "key__",
	} {
		if got := promLabelName(in); got != want {
			t.Errorf("promLabelName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestRemoteWriteEncoding sends windows to the decoding fake and checks the
// translation: names, job/instance/target_info, cumulative counters and
// native histograms (bucket for bucket), gauges, exemplars, metadata,
// splitting by max_samples_per_send, and a revised window.
func TestRemoteWriteEncoding(t *testing.T) {
	f := startRWFake(t)
	e, reg := rwTestExporter(t, f.srv.URL, func(c *RemoteWriteConfig) {
		c.MaxSamplesPerSend = 3
		c.BearerToken = "tok-secret"
		c.Headers = map[string]Secret{"X-Scope-OrgID": "team-a"}
	})
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	var ws []*metric.Window
	for i := range 3 {
		w := otlpTestWindow(t0.Add(time.Duration(i)*time.Minute), uint64(i+1))
		w.Series[3].Last = float64(100 + i)
		ws = append(ws, w)
		if err := e.Export(context.Background(), w); err != nil {
			t.Fatal(err)
		}
	}
	reqs := f.requests()
	// Per window: 2 latency + 1 counter + 1 gauge + 1 db histogram + 2
	// target_info = 7 samples; the first window has 4 more, the zeros
	// before each counter's and histogram's first total.
	total := 0
	for i, r := range reqs {
		n := 0
		for _, s := range r.series {
			n += len(s.samples) + len(s.hists)
		}
		if n > 3 {
			t.Errorf("request %d holds %d samples, max 3", i, n)
		}
		total += n
	}
	if total != 7*3+4 || len(reqs) < total/3 {
		t.Errorf("%d samples in %d requests, want 25 in at least 9", total, len(reqs))
	}
	f.mu.Lock()
	if got := f.hdrs[0].Get("Authorization"); got != "Bearer tok-secret" {
		t.Errorf("Authorization = %q", got)
	}
	if got := f.hdrs[0].Get("X-Scope-OrgID"); got != "team-a" {
		t.Errorf("X-Scope-OrgID = %q", got)
	}
	f.mu.Unlock()

	all := f.all()
	lat := rwFind(all, map[string]string{"__name__": "http_server_request_duration_seconds", "http_route": "/a"})
	if len(lat) != 3 {
		t.Fatalf("latency /a series = %d, want 3", len(lat))
	}
	merged := histogram.New(0, 0)
	for i, s := range lat {
		merged.Merge(ws[i].Series[0].Hist)
		if s.labels["job"] != "web" || s.labels["instance"] != "i-1" {
			t.Errorf("job/instance = %q/%q", s.labels["job"], s.labels["instance"])
		}
		if i == 0 {
			// The series' first total comes after an empty histogram 1 ms
			// after its start.
			if len(s.hists) != 2 || s.hists[0].n.Count != 0 || len(s.hists[0].n.PositiveSpans) != 0 ||
				s.hists[0].t != ws[0].Start.UnixMilli()+1 || s.hists[0].n.Schema != merged.Native().Schema {
				t.Fatalf("first window: %+v, want a zero histogram at start+1ms, then the total", s.hists)
			}
			s.hists = s.hists[1:]
		}
		if len(s.hists) != 1 || len(s.samples) != 0 {
			t.Fatalf("series %d: %d histograms, %d samples", i, len(s.hists), len(s.samples))
		}
		want := merged.Native()
		if got := s.hists[0].n; !rwNativeEqual(got, want) {
			t.Errorf("window %d histogram = %+v, want cumulative %+v", i, got, want)
		}
		if s.hists[0].t != ws[i].End().UnixMilli() {
			t.Errorf("window %d histogram time = %d, want window end", i, s.hists[0].t)
		}
		if len(s.exemplars) != 1 {
			t.Fatalf("exemplars = %d", len(s.exemplars))
		}
		ex := s.exemplars[0]
		tid := otlpTraceID(1)
		wantLabels := []rwLabel{{"span_id", "0908070605040302"}, {"trace_id", hex.EncodeToString(tid[:])}, {"user_tier", "gold"}}
		if !slices.Equal(ex.labels, wantLabels) || ex.v != 1.5 || ex.t != ws[i].Start.Add(10*time.Second).UnixMilli() {
			t.Errorf("exemplar = %+v, want labels %v", ex, wantLabels)
		}
	}
	db := rwFind(all, map[string]string{"__name__": "db_client_operation_duration_seconds"})
	if len(db) != 3 || db[0].labels["job"] != "db" || db[0].labels["instance"] != "" {
		t.Fatalf("db series = %+v", db)
	}
	if n := db[0].hists[1].n; n.ZeroCount != 3 || len(n.NegativeSpans) == 0 {
		t.Errorf("db histogram lost zeros or negatives: %+v", n)
	}
	ctr := rwFind(all, map[string]string{"__name__": "http_server_requests_total"})
	for i, s := range ctr {
		if i == 0 {
			if len(s.samples) != 2 || s.samples[0] != (rwSample{0, ws[0].Start.UnixMilli() + 1}) {
				t.Fatalf("first counter samples = %+v, want a zero at start+1ms first", s.samples)
			}
			s.samples = s.samples[1:]
		}
		if len(s.samples) != 1 || s.samples[0].v != 42*float64(i+1) || s.samples[0].t != ws[i].End().UnixMilli() {
			t.Errorf("counter window %d = %+v, want total %d", i, s.samples, 42*(i+1))
		}
	}
	g := rwFind(all, map[string]string{"__name__": "process_memory_usage_bytes"})
	for i, s := range g {
		if len(s.samples) != 1 || s.samples[0].v != float64(100+i) {
			t.Errorf("gauge window %d = %+v", i, s.samples)
		}
	}
	ti := rwFind(all, map[string]string{"__name__": "target_info", "job": "web"})
	if len(ti) != 3 || ti[0].labels["instance"] != "i-1" || ti[0].samples[0].v != 1 || ti[0].labels["service_name"] != "" {
		t.Errorf("target_info = %+v", ti)
	}
	metaSeen := map[string]rwDecodedMeta{}
	for _, r := range reqs {
		for _, m := range r.metadata {
			metaSeen[m.family] = m
		}
	}
	if m := metaSeen["http_server_request_duration_seconds"]; m.typ != rwTypeHistogram || m.unit != "seconds" || m.help != "request latency" {
		t.Errorf("histogram metadata = %+v", m)
	}
	if m := metaSeen["http_server_requests_total"]; m.typ != rwTypeCounter {
		t.Errorf("counter metadata = %+v", m)
	}

	// A revision of window 1: totals grow, stamped 1 ms after the last
	// sample; the gauge value of the past cannot be sent.
	before := len(f.all())
	rev := otlpTestWindow(t0.Add(time.Minute), 2)
	rev.Revision = 1
	rev.Series[2].Sum += 8
	if err := e.Export(context.Background(), rev); err != nil {
		t.Fatal(err)
	}
	after := f.all()[before:]
	if got := rwFind(after, map[string]string{"__name__": "process_memory_usage_bytes"}); len(got) != 0 {
		t.Errorf("revised gauge was sent: %+v", got)
	}
	c := rwFind(after, map[string]string{"__name__": "http_server_requests_total"})
	if len(c) != 1 || c[0].samples[0].v != 42*3+8 || c[0].samples[0].t != ws[2].End().UnixMilli()+1 {
		t.Errorf("revised counter = %+v, want %d at last+1ms", c, 42*3+8)
	}
	if got, _ := gatheredSum(t, reg, "sabaki_exporter_remote_write_skipped_total"); got != 3 {
		t.Errorf("skipped = %g, want 3 (gauge and two target_info)", got)
	}
}

func rwNativeEqual(a, b histogram.Native) bool {
	return a.Schema == b.Schema && a.ZeroThreshold == b.ZeroThreshold && a.ZeroCount == b.ZeroCount && a.Count == b.Count &&
		a.Sum == b.Sum && slices.Equal(a.PositiveSpans, b.PositiveSpans) && slices.Equal(a.NegativeSpans, b.NegativeSpans) &&
		slices.Equal(a.PositiveDeltas, b.PositiveDeltas) && slices.Equal(a.NegativeDeltas, b.NegativeDeltas)
}

// TestRemoteWriteErrors maps statuses per the Remote-Write spec.
func TestRemoteWriteErrors(t *testing.T) {
	w := otlpTestWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 1)
	for _, tc := range []struct {
		a          rwFakeAnswer
		permanent  bool
		retryAfter float64
	}{
		{rwFakeAnswer{status: 500}, false, 0},
		{rwFakeAnswer{status: 503, retryAfter: "20"}, false, 20},
		{rwFakeAnswer{status: 429, retryAfter: "5"}, false, 5},
		{rwFakeAnswer{status: 400, body: "invalid label name"}, true, 0}, // "out of order": TestRemoteWriteRestartResend
		{rwFakeAnswer{status: 401}, true, 0},
		{rwFakeAnswer{status: 404}, true, 0},
		{rwFakeAnswer{status: 413}, true, 0},
	} {
		t.Run(fmt.Sprint(tc.a.status), func(t *testing.T) {
			f := startRWFake(t)
			f.push(tc.a)
			e, _ := rwTestExporter(t, f.srv.URL, func(c *RemoteWriteConfig) { c.BasicAuth = BasicAuth{"u", "pw-secret"} })
			err := e.Export(context.Background(), w)
			if err == nil {
				t.Fatal("no error")
			}
			if IsPermanent(err) != tc.permanent {
				t.Errorf("permanent = %v, want %v: %v", IsPermanent(err), tc.permanent, err)
			}
			var ra RetryAfter
			secs, ok := 0.0, false
			if errors.As(err, &ra) {
				secs, ok = ra.RetryAfter()
			}
			if ok != (tc.retryAfter > 0) || secs != tc.retryAfter {
				t.Errorf("retry after = %v %v, want %v", secs, ok, tc.retryAfter)
			}
			if strings.Contains(err.Error(), "pw-secret") {
				t.Errorf("error reveals the password: %v", err)
			}
			if tc.a.body != "" && !strings.Contains(err.Error(), tc.a.body) {
				t.Errorf("error %q lacks the server's message", err)
			}
		})
	}
	t.Run("connection-refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		e, _ := rwTestExporter(t, "http://"+addr+"/api/v1/write", nil)
		if err := e.Export(context.Background(), w); err == nil || IsPermanent(err) {
			t.Errorf("connection refused: %v, want retryable", err)
		}
	})
}

// TestRemoteWriteRetrySendsTheRest: when the second request of a window
// fails, the retry sends only the series not yet accepted, with the same
// values (the cumulative totals are not advanced twice).
func TestRemoteWriteRetrySendsTheRest(t *testing.T) {
	f := startRWFake(t)
	f.push(rwFakeAnswer{}, rwFakeAnswer{status: 503})
	e, _ := rwTestExporter(t, f.srv.URL, func(c *RemoteWriteConfig) { c.MaxSamplesPerSend = 4 })
	w := otlpTestWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 1)
	if err := e.Export(context.Background(), w); err == nil {
		t.Fatal("want the scripted 503")
	}
	if err := e.Export(context.Background(), w); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	if len(reqs) < 3 || !rwSameSeries(reqs[1].series, reqs[2].series) {
		t.Fatalf("retry did not start with exactly the failed request: %d requests", len(reqs))
	}
	// Every series arrives exactly once among the accepted requests.
	seen := map[string]int{}
	for i, r := range reqs {
		if i == 1 {
			continue // the failed one
		}
		for _, s := range r.series {
			seen[fmt.Sprint(s.labels)]++
		}
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("series %s accepted %d times", k, n)
		}
	}
	if len(seen) != 7 {
		t.Errorf("%d distinct series accepted, want 7", len(seen))
	}
}

func rwSameSeries(a, b []rwDecodedSeries) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if fmt.Sprint(a[i]) != fmt.Sprint(b[i]) {
			return false
		}
	}
	return true
}

func TestRemoteWriteEmptySecretsRefuseToStart(t *testing.T) {
	for _, mod := range []func(*RemoteWriteConfig){
		func(c *RemoteWriteConfig) { c.BasicAuth = BasicAuth{Username: "u"} },
		func(c *RemoteWriteConfig) { c.Headers = map[string]Secret{"X-Scope-OrgID": " "} },
	} {
		cfg := DefaultRemoteWriteConfig()
		cfg.URL = "http://127.0.0.1:9090/api/v1/write"
		mod(&cfg)
		if _, err := NewRemoteWrite(cfg, Settings{}); err == nil || !strings.Contains(err.Error(), "empty value") {
			t.Errorf("NewRemoteWrite = %v, want an empty-value error", err)
		}
	}
}

func TestRemoteWriteConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*RemoteWriteConfig)
		want string
	}{
		{"ok", func(c *RemoteWriteConfig) {}, ""},
		{"no url", func(c *RemoteWriteConfig) { c.URL = "" }, "url: must be set"},
		{"bad scheme", func(c *RemoteWriteConfig) { c.URL = "ftp://x/y" }, "url: must be an http"},
		{"credentials in url", func(c *RemoteWriteConfig) { c.URL = "https://u:p@x/api/v1/push" }, "must not carry credentials"},
		{"bearer and basic", func(c *RemoteWriteConfig) { c.BearerToken = "t"; c.BasicAuth = BasicAuth{"u", "p"} }, "cannot be combined"},
		{"basic without password is for NewRemoteWrite", func(c *RemoteWriteConfig) { c.BasicAuth = BasicAuth{Username: "u"} }, ""},
		{"password without user", func(c *RemoteWriteConfig) { c.BasicAuth = BasicAuth{Password: "p"} }, "basic_auth.username"},
		{"reserved header", func(c *RemoteWriteConfig) { c.Headers = map[string]Secret{"Content-Encoding": "gzip"} }, "is set by the exporter"},
		{"authorization twice", func(c *RemoteWriteConfig) {
			c.BearerToken = "t"
			c.Headers = map[string]Secret{"Authorization": "x"}
		}, "conflicts"},
		{"zero samples", func(c *RemoteWriteConfig) { c.MaxSamplesPerSend = 0 }, "max_samples_per_send"},
		{"zero timeout", func(c *RemoteWriteConfig) { c.Timeout = 0 }, "timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultRemoteWriteConfig()
			c.URL = "https://mimir.example.com/api/v1/push"
			tc.mod(&c)
			err := c.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
	c := DefaultRemoteWriteConfig()
	c.URL, c.BasicAuth, c.Headers = "https://x/api/v1/push", BasicAuth{"user", "pw-secret"}, map[string]Secret{"X-Token": "hdr-secret"}
	if s := fmt.Sprintf("%v %+v %#v", c, c, c); strings.Contains(s, "pw-secret") || strings.Contains(s, "hdr-secret") {
		t.Errorf("String reveals secrets: %s", s)
	}
}

// TestRemoteWriteTLS: a server with a private CA is trusted through
// tls.ca_file and refused without it.
func TestRemoteWriteTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	srv.StartTLS()
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	w := otlpTestWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 1)
	e, _ := rwTestExporter(t, srv.URL, func(c *RemoteWriteConfig) { c.TLS.CAFile = ca })
	if err := e.Export(context.Background(), w); err != nil {
		t.Errorf("with ca_file: %v", err)
	}
	e2, _ := rwTestExporter(t, srv.URL, nil)
	if err := e2.Export(context.Background(), w); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("without ca_file: %v, want a certificate error", err)
	}
}

// TestRebuildSameRegistry: an exporter rebuilt with the same name on the
// same registry (config reload) reuses its self-metrics.
func TestRebuildSameRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	for range 2 {
		rc := DefaultRemoteWriteConfig()
		rc.URL = "http://127.0.0.1:9090/api/v1/write"
		if _, err := NewRemoteWrite(rc, Settings{Registerer: reg}); err != nil {
			t.Fatal(err)
		}
		oc := DefaultOTLPConfig()
		oc.Endpoint, oc.Insecure = "127.0.0.1:4317", true
		e, err := NewOTLP(oc, Settings{Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		_ = e.Shutdown(context.Background())
	}
}

// TestRemoteWriteRefusedRequestDoesNotStopTheRest: a 400 on one request of a
// window still lets the others through; the refusal is returned (permanent)
// at the end.
func TestRemoteWriteRefusedRequestDoesNotStopTheRest(t *testing.T) {
	f := startRWFake(t)
	f.push(rwFakeAnswer{status: 400, body: "invalid label name"})
	e, _ := rwTestExporter(t, f.srv.URL, func(c *RemoteWriteConfig) { c.MaxSamplesPerSend = 4 })
	err := e.Export(context.Background(), otlpTestWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 1))
	if err == nil || !IsPermanent(err) || !strings.Contains(err.Error(), "invalid label name") {
		t.Fatalf("Export = %v, want the permanent refusal", err)
	}
	n := 0
	for _, r := range f.requests() {
		n += len(r.series)
	}
	if len(f.requests()) < 2 || n != 7 {
		t.Errorf("%d requests with %d series, want every series sent once", len(f.requests()), n)
	}
}
