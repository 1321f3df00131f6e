package exporters

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/sabakiio/sabaki/internal/fake/fakeotlp"
)

// TestOTLPAndRemoteWriteThroughOutbox drives both exporters the way the
// agent does, through the durable outbox: the window goes to disk and back
// (histograms intact, bucket for bucket), a throttled first attempt makes
// the outbox wait exactly what the server asked (RetryInfo 7 s, Retry-After
// 3 s, plus at most 10 % jitter), and the retry delivers.
func TestOTLPAndRemoteWriteThroughOutbox(t *testing.T) {
	w := otlpTestWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 1)
	w.Start = time.Now().UTC().Truncate(time.Minute) // inside the outbox's max_age

	run := func(t *testing.T, exp Exporter, delivered func() bool) time.Duration {
		t.Helper()
		o, err := NewOutbox(DefaultOutboxConfig(), exp, Settings{DataDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var slept []time.Duration
		o.sleep = func(ctx context.Context, d time.Duration) error {
			mu.Lock()
			slept = append(slept, d)
			mu.Unlock()
			return ctx.Err()
		}
		if err := o.Enqueue(w); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = o.Run(ctx); close(done) }()
		deadline := time.Now().Add(10 * time.Second)
		for !delivered() {
			if time.Now().After(deadline) {
				t.Fatal("window not delivered through the outbox")
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		<-done
		_ = o.Shutdown(context.Background())
		mu.Lock()
		defer mu.Unlock()
		if len(slept) == 0 {
			t.Fatal("the outbox never waited")
		}
		return slept[0]
	}

	t.Run("otlp", func(t *testing.T) {
		fake := fakeotlp.Start(t, fakeotlp.Options{})
		fake.Push(fakeotlp.Response{GRPCCode: codes.ResourceExhausted, RetryDelay: 7 * time.Second})
		e, _ := otlpTestExporter(t, func(c *OTLPConfig) { c.Endpoint, c.Headers = fake.GRPCAddr, nil })
		wait := run(t, e, func() bool { return len(fake.Requests()) >= 3 })
		if wait < 7*time.Second || wait > 7700*time.Millisecond {
			t.Errorf("outbox waited %s, want RetryInfo's 7 s (+≤10 %%)", wait)
		}
		retried := fake.Requests()[1] // [0] was refused
		lat := otlpFindMetric(retried.GetResourceMetrics()[0].GetScopeMetrics()[0].GetMetrics(), "http.server.request.duration")
		if len(lat) != 1 {
			t.Fatalf("retried request holds %d latency metrics", len(lat))
		}
		for i, p := range lat[0].GetExponentialHistogram().GetDataPoints() {
			checkExpPoint(t, p, w.Series[i].Hist)
		}
	})
	t.Run("remote_write", func(t *testing.T) {
		f := startRWFake(t)
		f.push(rwFakeAnswer{status: 503, retryAfter: "3"})
		e, _ := rwTestExporter(t, f.srv.URL, nil)
		wait := run(t, e, func() bool { return len(f.requests()) >= 2 })
		if wait < 3*time.Second || wait > 3300*time.Millisecond {
			t.Errorf("outbox waited %s, want Retry-After's 3 s (+≤10 %%)", wait)
		}
		got := rwFind(f.requests()[1].series, map[string]string{"__name__": "http_server_request_duration_seconds", "http_route": "/a"})
		if len(got) != 1 || !rwNativeEqual(got[0].hists[1].n, w.Series[0].Hist.Native()) {
			t.Errorf("histogram after the outbox = %+v, want %+v", got, w.Series[0].Hist.Native())
		}
	})
}
