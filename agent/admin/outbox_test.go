package admin

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/exporters"
)

// The daemon hands its outboxes to OutboxStatus.
var _ Queue = (*exporters.Outbox)(nil)

type fakeQueue struct {
	n   int
	b   int64
	age time.Duration
}

func (q *fakeQueue) Depth() int               { return q.n }
func (q *fakeQueue) Bytes() int64             { return q.b }
func (q *fakeQueue) OldestAge() time.Duration { return q.age }

func TestReadyzOutboxes(t *testing.T) {
	const maxBytes = 100 << 20
	for _, tc := range []struct {
		name string
		q    fakeQueue
		code int
		body string
	}{
		{"empty", fakeQueue{}, 200, "ready\n" +
			"outbox mackerel: 0 windows, 0 B (0.0% of max_bytes 100.0 MiB), oldest 0s (0.0% of max_age 24h0m0s)\n" +
			"outbox otlp: 0 windows, 0 B (0.0% of max_bytes 100.0 MiB), oldest 0s (0.0% of max_age 24h0m0s)\n"},
		{"backlog within bounds", fakeQueue{n: 60, b: 27 << 10, age: time.Hour}, 200, "ready\n" +
			"outbox mackerel: 60 windows, 27.0 KiB (0.0% of max_bytes 100.0 MiB), oldest 1h0m0s (4.2% of max_age 24h0m0s)\n" +
			"outbox otlp: 0 windows, 0 B (0.0% of max_bytes 100.0 MiB), oldest 0s (0.0% of max_age 24h0m0s)\n"},
		{"past 90% of max_bytes", fakeQueue{n: 5000, b: 95 << 20, age: time.Hour}, 503,
			"not ready: outbox mackerel: outbox holds 95.0 MiB, over 90% of max_bytes 100.0 MiB: the destination is not taking data and the oldest windows will soon be dropped\n" +
				"outbox mackerel: 5000 windows, 95.0 MiB (95.0% of max_bytes 100.0 MiB), oldest 1h0m0s (4.2% of max_age 24h0m0s)\n" +
				"outbox otlp: 0 windows, 0 B (0.0% of max_bytes 100.0 MiB), oldest 0s (0.0% of max_age 24h0m0s)\n"},
		{"past 90% of max_age", fakeQueue{n: 1300, b: 1 << 20, age: 22 * time.Hour}, 503,
			"not ready: outbox mackerel: oldest unsent window is 22h0m0s old, over 90% of max_age 24h0m0s: the destination is not taking data and it will soon be dropped\n" +
				"outbox mackerel: 1300 windows, 1.0 MiB (1.0% of max_bytes 100.0 MiB), oldest 22h0m0s (91.7% of max_age 24h0m0s)\n" +
				"outbox otlp: 0 windows, 0 B (0.0% of max_bytes 100.0 MiB), oldest 0s (0.0% of max_age 24h0m0s)\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Listen("127.0.0.1:0", Settings{Gatherer: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			go s.Serve()
			defer s.Shutdown(context.Background())
			s.AddCheck("agent", func() error { return nil })
			q := tc.q
			s.AddStatus("outbox mackerel", OutboxStatus(&q, maxBytes, 24*time.Hour))
			s.AddStatus("outbox otlp", OutboxStatus(&fakeQueue{}, maxBytes, 24*time.Hour))
			code, body := get(t, "http://"+s.Addr().String()+"/readyz")
			if code != tc.code || body != tc.body {
				t.Errorf("/readyz = %d\n%s\nwant %d\n%s", code, body, tc.code, tc.body)
			}
		})
	}
}

// TestAddStatusReplaces: an exporter restarted on reload replaces its
// status instead of adding a second one; RemoveCheck removes it.
func TestAddStatusReplaces(t *testing.T) {
	s, err := Listen("127.0.0.1:0", Settings{Gatherer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	defer s.Shutdown(context.Background())
	url := "http://" + s.Addr().String() + "/readyz"
	s.AddCheck("agent", func() error { return nil })
	s.AddStatus("outbox m", func() (string, error) { return "old", nil })
	s.AddStatus("outbox m", func() (string, error) { return "new", nil })
	if code, body := get(t, url); code != 200 || body != "ready\noutbox m: new\n" {
		t.Errorf("/readyz = %d %q", code, body)
	}
	s.RemoveCheck("outbox m")
	if code, body := get(t, url); code != 200 || body != "ready\n" {
		t.Errorf("after RemoveCheck /readyz = %d %q", code, body)
	}
}
