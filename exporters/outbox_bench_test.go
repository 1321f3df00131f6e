package exporters

import (
	"testing"
	"time"
)

// BenchmarkOutboxEnqueue measures writing (encode, frame, write, fsync) one
// minute of 1,000 latency series.
func BenchmarkOutboxEnqueue(b *testing.B) {
	o, err := NewOutbox(DefaultOutboxConfig(), &recExporter{name: "bench"}, Settings{DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	// A recent start (the outbox drops windows past max_age), and a new
	// revision each time (it drops a window it already accepted).
	w := realisticWindow(time.Now().Truncate(time.Minute), 1000)
	p, _ := encodeWindow(w)
	for b.Loop() {
		w.Revision++
		if err := o.Enqueue(w); err != nil {
			b.Fatal(err)
		}
	}
	if o.Depth() != w.Revision {
		b.Fatalf("%d windows queued of %d enqueued", o.Depth(), w.Revision)
	}
	b.ReportMetric(float64(len(p)), "bytes/window")
}

// BenchmarkOutboxEncode measures the encoding alone.
func BenchmarkOutboxEncode(b *testing.B) {
	w := realisticWindow(t0, 1000)
	for b.Loop() {
		if _, err := encodeWindow(w); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMackerelMinute measures mapping one minute of 1,000 latency
// series to Mackerel values (no network).
func BenchmarkMackerelMinute(b *testing.B) {
	cfg := DefaultMackerelConfig()
	cfg.Service, cfg.APIKey = "toitta", "k"
	e, err := NewMackerel(cfg, Settings{})
	if err != nil {
		b.Fatal(err)
	}
	w := realisticWindow(t0, 1000)
	for b.Loop() {
		minute, aggs, seconds, _ := e.minuteOf(w)
		_ = e.values(e.mapSeries(aggs, "", ""), minute, seconds, metricName)
	}
}

// BenchmarkOutboxEncode10k encodes one minute of 10,000 latency series and
// reports the record size (what sizes the default outbox max_bytes).
func BenchmarkOutboxEncode10k(b *testing.B) {
	w := realisticWindow(t0, 10000)
	var n int
	for b.Loop() {
		p, err := encodeWindow(w)
		if err != nil {
			b.Fatal(err)
		}
		n = len(p) + frameHeader
	}
	b.ReportMetric(float64(n), "bytes/window")
}

// BenchmarkOutboxDecode10k decodes one minute of 10,000 latency series, as
// the outbox does before each send.
func BenchmarkOutboxDecode10k(b *testing.B) {
	p, err := encodeWindow(realisticWindow(t0, 10000))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		w, err := decodeWindow(p)
		if err != nil || len(w.Series) != 10000 {
			b.Fatalf("%v", err)
		}
	}
}
