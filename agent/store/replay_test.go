package store

import (
	"context"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// TestReadWindowRoundTrip writes windows as the daemon does (with baselines)
// and reads them back: every field an exporter sends comes back, under the
// latest revision stored.
func TestReadWindowRoundTrip(t *testing.T) {
	c := &clock{t: t0.Add(10 * time.Minute)}
	s := open(t, t.TempDir(), c)
	ctx := context.Background()

	ex := []metric.Exemplar{
		{TraceID: [16]byte{1, 2}, SpanID: [8]byte{3}, Value: 2.5, Time: t0.Add(time.Second), Attrs: metric.NewAttrs(map[string]string{"user": "a"})},
		{TraceID: [16]byte{4}, SpanID: [8]byte{5}, Value: 0.1},
	}
	h := hist("/a", 0.1, 0.2, 2.5, -1)
	h.Exemplars = ex
	c1 := counter("/a", 10)
	c1.ErrorCount, c1.ErrorTracked = 3, true
	c1.Description = "requests served"
	w0 := win(t0, 0, c1, counter("/b", 1), gauge("i1", 1, 5, 2), h)
	if err := s.WriteWithState(ctx, w0, []StateRow{{Key: make([]byte, 16), Value: []byte{1}}}, nil); err != nil {
		t.Fatal(err)
	}
	c2 := counter("/a", 4)
	c2.Description = c1.Description // a series' description is stored once, not per window
	w1 := win(t0.Add(time.Minute), 0, c2)
	write(t, s, w1)
	// A re-emission of the first window, whole, with one more series.
	w0r := win(t0, 1, c1, counter("/b", 2), gauge("i1", 1, 5, 2), h, counter("/c", 7))
	write(t, s, w0r)

	keys, err := s.WindowKeys(ctx, t0)
	if err != nil {
		t.Fatal(err)
	}
	want := []WindowKey{{Start: t0, Duration: time.Minute, Revision: 1}, {Start: t0.Add(time.Minute), Duration: time.Minute, Revision: 0}}
	if !reflect.DeepEqual(keys, want) {
		t.Fatalf("WindowKeys = %v, want %v", keys, want)
	}
	if keys, err := s.WindowKeys(ctx, t0.Add(30*time.Second)); err != nil || len(keys) != 1 || !keys[0].Start.Equal(t0.Add(time.Minute)) {
		t.Fatalf("WindowKeys(from the second window) = %v, %v", keys, err)
	}

	for _, tc := range []struct {
		name string
		want *metric.Window
	}{
		{"revised", w0r},
		{"first emission", w1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.ReadWindow(ctx, tc.want.Start, ReadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got == nil {
				t.Fatal("window not found")
			}
			if !got.Start.Equal(tc.want.Start) || got.Duration != tc.want.Duration || got.Revision != tc.want.Revision {
				t.Fatalf("window %s/%s rev %d, want %s/%s rev %d", got.Start, got.Duration, got.Revision, tc.want.Start, tc.want.Duration, tc.want.Revision)
			}
			if len(got.Series) != len(tc.want.Series) {
				t.Fatalf("%d series, want %d", len(got.Series), len(tc.want.Series))
			}
			for _, w := range tc.want.Series {
				g := findAgg(got, w)
				if g == nil {
					t.Fatalf("series %s %v missing", w.Name, w.Attrs)
				}
				if w.Hist != nil {
					if g.Hist == nil || !reflect.DeepEqual(g.Hist.Data(), w.Hist.Data()) {
						t.Errorf("%s: histogram %+v, want %+v", w.Name, g.Hist.Data(), w.Hist.Data())
					}
					if g.Hist.MaxSize() != histogram.DefaultMaxSize || g.Hist.MaxScale() != histogram.DefaultMaxScale {
						t.Errorf("%s: histogram limits %d/%d", w.Name, g.Hist.MaxSize(), g.Hist.MaxScale())
					}
				}
				gc, wc := *g, w
				gc.Hist, wc.Hist = nil, nil
				if !reflect.DeepEqual(gc, wc) {
					t.Errorf("series %s:\n got %+v\nwant %+v", w.Name, gc, wc)
				}
			}
		})
	}

	if w, err := s.ReadWindow(ctx, t0.Add(5*time.Minute), ReadOptions{}); err != nil || w != nil {
		t.Fatalf("ReadWindow(absent) = %v, %v; want nil, nil", w, err)
	}
}

func TestParseAttrsFast(t *testing.T) {
	for _, m := range []map[string]string{
		nil,
		{"a": "b"},
		{"service.name": "toitta", "http.route": "/a,b:c", "z": ""},
		{"q": `say "hi"`, "html": "<a&b>", "uni": "日本\n"},
		{"": "empty key"},
	} {
		raw := attrsJSON(metric.NewAttrs(m))
		want, err := parseAttrs(raw)
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseAttrsFast([]byte(raw))
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("parseAttrsFast(%s) = %v, %v; want %v", raw, got, err, want)
		}
	}
	if _, err := parseAttrsFast([]byte(`{"a":`)); err == nil {
		t.Error("parseAttrsFast accepted a truncated object")
	}
}

func findAgg(w *metric.Window, a metric.Aggregate) *metric.Aggregate {
	for i := range w.Series {
		g := &w.Series[i]
		if g.Name == a.Name && g.Kind == a.Kind && reflect.DeepEqual(g.Attrs, a.Attrs) && reflect.DeepEqual(g.Resource, a.Resource) {
			return g
		}
	}
	return nil
}

// replayWindow is a window of n series, 90 % counters and 10 % histograms.
func replayWindow(start time.Time, n int) *metric.Window {
	w := win(start, 0)
	for i := range n {
		route := "/r" + itoa(i)
		if i%10 == 0 {
			w.Series = append(w.Series, hist(route, 0.01, 0.2, float64(i%7)))
		} else {
			w.Series = append(w.Series, counter(route, float64(i)))
		}
	}
	return w
}

// BenchmarkReadWindow reads back a window of 105,000 series, what a restart
// costs per window it replays.
func BenchmarkReadWindow(b *testing.B) {
	c := &clock{t: t0.Add(10 * time.Minute)}
	s, err := Open(b.TempDir(), Options{Now: c.now, Grace: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	const n = 105_000
	if err := s.Write(ctx, replayWindow(t0, n)); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		got, err := s.ReadWindow(ctx, t0, ReadOptions{})
		if err != nil || len(got.Series) != n {
			b.Fatalf("%d series, %v", len(got.Series), err)
		}
	}
}

// BenchmarkWindowKeys lists the windows of a head table holding 10 windows
// of 105,000 series: what every start costs, replay or not.
func BenchmarkWindowKeys(b *testing.B) {
	c := &clock{t: t0.Add(10 * time.Minute)}
	s, err := Open(b.TempDir(), Options{Now: c.now, Grace: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	w := replayWindow(t0, 105_000)
	for i := range 10 {
		w.Start = t0.Add(time.Duration(i) * time.Minute)
		if err := s.Write(ctx, w); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		keys, err := s.WindowKeys(ctx, time.Time{})
		if err != nil || len(keys) != 10 {
			b.Fatalf("%d keys, %v", len(keys), err)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
