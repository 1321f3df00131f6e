package agent

import (
	"math"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// FuzzJournalRecord: decoding a journal record or a saved baseline never
// panics whatever the bytes (a torn or corrupt file), and a record that
// decodes re-encodes to a batch with the same series.
func FuzzJournalRecord(f *testing.F) {
	h := histogram.New(160, 20)
	for _, v := range []float64{0.001, 0.2, 3, -1, 0} {
		h.Record(v)
	}
	now := time.Unix(1_800_000_000, 0)
	s := []metric.Series{
		{Name: "requests", Unit: "{request}", Kind: metric.Counter, Temporality: metric.Delta, Resource: attrsOf("service.name", "app"),
			Attrs: attrsOf("route", "/a"), Points: []metric.Point{{Start: now.Add(-time.Second), Time: now, Value: 3}, {Value: math.Inf(1)}}},
		{Name: "latency", Kind: metric.Histogram, Temporality: metric.Delta, Points: []metric.Point{{Time: now, Hist: h}, {Time: now}}},
	}
	rec := appendString(nil, "otlp")
	for i := range s {
		rec = appendSeries(rec, &s[i], now)
	}
	f.Add(rec)
	f.Add(rec[:len(rec)-5])
	d := h.Data()
	f.Add(appendBaseline(nil, &baseMark{start: 1, t: 2, hist: &d}))
	f.Add(appendBaseline(nil, &baseMark{start: 1, t: 2, value: 7}))
	f.Fuzz(func(t *testing.T, b []byte) {
		var st rawState
		_ = st.restoreBaseline(b, metric.Histogram)
		_ = st.restoreBaseline(b, metric.Counter)
		_, _ = baselineTime(b)
		batch, err := decodeRecord(b, 160, 20)
		if err != nil {
			return
		}
		again := appendString(nil, batch.Source)
		for i := range batch.Series {
			again = appendSeries(again, &batch.Series[i], now)
		}
		batch2, err := decodeRecord(again, 160, 20)
		if err != nil || len(batch2.Series) != len(batch.Series) {
			t.Fatalf("re-encoded record: %d series, %v; want %d", len(batch2.Series), err, len(batch.Series))
		}
	})
}
