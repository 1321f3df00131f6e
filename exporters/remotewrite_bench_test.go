package exporters

import (
	"testing"
	"time"
)

// BenchmarkRemoteWriteEncode measures translating and encoding one window of
// 1,000 histogram series (cumulating, names and labels, native histogram
// conversion, protobuf, snappy), without the HTTP round trip.
//
//	go test ./exporters -run '^$' -bench 'Encode|OTLPBuild' -benchtime=200ms -count=3
func BenchmarkRemoteWriteEncode(b *testing.B) {
	cfg := DefaultRemoteWriteConfig()
	cfg.URL = "http://127.0.0.1:9/api/v1/write"
	e, err := NewRemoteWrite(cfg, Settings{})
	if err != nil {
		b.Fatal(err)
	}
	base := sizeWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 1)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		w := *base
		w.Start = base.Start.Add(time.Duration(i) * time.Minute)
		series := e.build(&w)
		body := e.enc.request(series)
		b.SetBytes(int64(len(body)))
		for j := range series {
			e.cum.commit(series[j].key, series[j].t)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/series")
}

// BenchmarkOTLPBuild measures turning one window of 1,000 histogram series
// into OTLP metricdata (the library then converts it to protobuf and
// compresses it).
func BenchmarkOTLPBuild(b *testing.B) {
	cfg := DefaultOTLPConfig()
	cfg.Endpoint, cfg.Insecure = "127.0.0.1:9", true
	e, err := NewOTLP(cfg, Settings{})
	if err != nil {
		b.Fatal(err)
	}
	w := sizeWindow(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 1)
	b.ReportAllocs()
	for b.Loop() {
		if parts := e.build(w); len(parts) != 1 {
			b.Fatal(len(parts))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/series")
}
