package agent

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/metric"
)

// A window's aggregates are put in the previous window's order by their
// rank (orderAggs), series new in the window and those added between the
// snapshot and the compaction sorted in: the compacted window and what is
// emitted must be in identity order and complete whatever the overlap
// with the previous window.
func TestSnapshotOrder(t *testing.T) {
	for _, tc := range []struct {
		name      string
		prev, cur [2]int // route ranges [from, to) of windows 0 and 1
		late      [2]int // added to window 1 between snapshot and compaction
		placed    bool   // window 1 is large enough to be placed by rank
	}{
		{name: "same series", prev: [2]int{0, 2000}, cur: [2]int{0, 2000}, placed: true},
		{name: "half new", prev: [2]int{0, 2000}, cur: [2]int{1000, 3000}, placed: true},
		{name: "late new and old", prev: [2]int{0, 2000}, cur: [2]int{500, 2500}, late: [2]int{2400, 2700}, placed: true},
		{name: "small window sorted", prev: [2]int{0, 100}, cur: [2]int{50, 150}},
		{name: "no overlap", prev: [2]int{0, 2000}, cur: [2]int{5000, 7000}, placed: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := t0
			p, err := NewPipeline(PipelineConfig{Window: time.Minute, Lateness: 2 * time.Minute},
				Settings{Now: func() time.Time { return now }, StartTime: t0})
			if err != nil {
				t.Fatal(err)
			}
			send := func(at time.Time, r [2]int, v float64) {
				var b metric.Batch
				for i := r[0]; i < r[1]; i++ {
					// Delta counters and gauges, in an order unlike the
					// identity order.
					route := fmt.Sprintf("/r/%d", (i*7919)%100000)
					b.Series = append(b.Series, metric.Series{Name: "requests", Kind: metric.Counter, Temporality: metric.Delta,
						Attrs: attrsOf("route", route), Points: []metric.Point{{Time: at, Value: v}}})
					if i%3 == 0 {
						b.Series = append(b.Series, metric.Series{Name: "inflight", Kind: metric.Gauge,
							Attrs: attrsOf("route", route), Points: []metric.Point{{Time: at, Value: v}}})
					}
				}
				if err := p.Consume(context.Background(), b); err != nil {
					t.Fatal(err)
				}
			}
			send(t0.Add(10*time.Second), tc.prev, 1)
			now = t0.Add(70 * time.Second)
			p.tick(now)
			send(t0.Add(80*time.Second), tc.cur, 2)

			// emit's steps, with points arriving between them.
			p.mu.Lock()
			idx := p.windowIdx(t0.Add(80 * time.Second))
			w := p.windows[idx]
			fresh := w.snapshot()
			prev := p.windows[idx-1]
			p.mu.Unlock()
			if tc.late[1] > 0 {
				send(t0.Add(85*time.Second), tc.late, 3) // after the snapshot
			}
			fresh, placed := orderAggs(fresh, prev)
			// Series of both windows are placed by rank (unless the window
			// is small enough to sort).
			wantPlaced := 0
			for i := max(tc.prev[0], tc.cur[0]); i < min(tc.prev[1], tc.cur[1]); i++ {
				wantPlaced++ // the counter
				if i%3 == 0 {
					wantPlaced++ // and the gauge
				}
			}
			if !tc.placed {
				wantPlaced = 0
			}
			if placed != wantPlaced {
				t.Errorf("aggregates placed by rank = %d, want %d", placed, wantPlaced)
			}
			p.mu.Lock()
			w.compact(fresh, true)
			out := w.render()
			p.mu.Unlock()

			want := map[string]bool{}
			for _, r := range [][2]int{tc.cur, tc.late} {
				for i := r[0]; i < r[1]; i++ {
					want[fmt.Sprintf("/r/%d", (i*7919)%100000)] = true
				}
			}
			counters := 0
			for _, a := range out {
				if a.Kind == metric.Counter {
					counters++
				}
			}
			if counters != len(want) {
				t.Errorf("%d counter series emitted, want %d", counters, len(want))
			}
			keys := func(as []agg, cs []cagg) (g, c []string) {
				for i := range as {
					g = append(g, as[i].out.key)
				}
				for i := range cs {
					c = append(c, cs[i].out.key)
				}
				return g, c
			}
			g, c := keys(w.closed, w.closedC)
			if !slices.IsSorted(g) || !slices.IsSorted(c) {
				t.Error("compacted window not in identity order")
			}
			if len(c) != len(want) || len(w.series) != 0 {
				t.Errorf("compacted %d counters (%d left in the map), want %d", len(c), len(w.series), len(want))
			}
			for _, a := range out {
				if a.Kind != metric.Counter {
					continue
				}
				route, _ := a.Attrs.Get("route")
				if _, ok := want[route]; !ok {
					t.Errorf("unexpected series %s", route)
				}
			}
		})
	}
}

// A re-emission of an older window, whose series sit at other ranks,
// leaves the ranks of the newest emitted window alone: the next window is
// still placed by them.
func TestRankAfterRevision(t *testing.T) {
	now := t0
	p, err := NewPipeline(PipelineConfig{Window: time.Minute, Lateness: 3 * time.Minute},
		Settings{Now: func() time.Time { return now }, StartTime: t0})
	if err != nil {
		t.Fatal(err)
	}
	send := func(at time.Time, n int) {
		var b metric.Batch
		for i := range n {
			b.Series = append(b.Series, metric.Series{Name: "requests", Kind: metric.Counter, Temporality: metric.Delta,
				Attrs: attrsOf("route", fmt.Sprintf("/r/%d", (i*7919)%100000)), Points: []metric.Point{{Time: at, Value: 1}}})
		}
		if err := p.Consume(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
	for m := range 2 { // windows 0 (with 500 more series) and 1 emitted
		send(t0.Add(time.Duration(m)*time.Minute+10*time.Second), 2500-500*m)
		now = t0.Add(time.Duration(m)*time.Minute + 70*time.Second)
		p.tick(now)
	}
	send(t0.Add(20*time.Second), 2500) // late for window 0, re-emitted
	send(t0.Add(2*time.Minute+10*time.Second), 2000)
	now = t0.Add(2*time.Minute + 30*time.Second)
	p.tick(now)
	if got := metricValue(p.m.windows.WithLabelValues("revision")); got != 1 {
		t.Fatalf("revisions = %v, want 1", got)
	}
	idx := p.windowIdx(now)
	p.mu.Lock()
	fresh := p.windows[idx].snapshot()
	prev := p.windows[idx-1]
	p.mu.Unlock()
	if _, placed := orderAggs(fresh, prev); placed != 2000 {
		t.Errorf("placed by rank %d of 2000 after an older window's revision", placed)
	}
}
