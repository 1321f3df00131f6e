package store

import (
	"fmt"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/metric"
)

// TestWriteSlotConflicts: a first emission (revision 0) goes in with INSERT
// OR IGNORE and falls back to the upsert when its slot already holds some of
// its series (insertHead); the result must be the upsert's in every case,
// including batches of more than headBatch rows that conflict in part.
func TestWriteSlotConflicts(t *testing.T) {
	type emission struct {
		rev    int
		routes []string
		value  float64
	}
	many := func(from, to int) []string {
		var r []string
		for i := from; i < to; i++ {
			r = append(r, fmt.Sprintf("/r%d", i))
		}
		return r
	}
	tests := []struct {
		name   string
		writes []emission
		want   map[string]float64
	}{
		{"rev 0 twice: the second replaces", []emission{{0, []string{"/a"}, 1}, {0, []string{"/a"}, 2}}, map[string]float64{"/a": 2}},
		{"rev 0 after rev 1 is ignored", []emission{{1, []string{"/a"}, 5}, {0, []string{"/a"}, 1}}, map[string]float64{"/a": 5}},
		{"rev 1 after rev 0 replaces", []emission{{0, []string{"/a"}, 1}, {1, []string{"/a"}, 5}}, map[string]float64{"/a": 5}},
		{"a series twice in one window: the last wins", []emission{{0, []string{"/a", "/b", "/a"}, 3}}, map[string]float64{"/a": 3, "/b": 3}},
		{"partial overlap", []emission{{0, []string{"/a", "/b"}, 1}, {0, []string{"/a", "/c"}, 2}}, map[string]float64{"/a": 2, "/b": 1, "/c": 2}},
		{"partial overlap past a batch", []emission{{0, many(0, 300), 1}, {0, many(250, 600), 2}}, nil},
		{"stale rev 0 past a batch", []emission{{1, many(0, 300), 4}, {0, many(100, 400), 1}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, t.TempDir(), &clock{t: t0.Add(5 * time.Minute)})
			want := tc.want
			build := want == nil
			if build {
				want = map[string]float64{}
			}
			for _, e := range tc.writes {
				var aggs []metric.Aggregate
				for i, r := range e.routes {
					v := e.value
					if len(e.routes) == 3 && i == 0 {
						v = 99 // overwritten by the window's later /a
					}
					aggs = append(aggs, counter(r, v))
				}
				write(t, s, win(t0, e.rev, aggs...))
			}
			if build { // the many(...) cases: replay the revision rule
				rev := map[string]int{}
				for _, e := range tc.writes {
					for _, r := range e.routes {
						if old, ok := rev[r]; !ok || e.rev >= old {
							rev[r], want[r] = e.rev, e.value
						}
					}
				}
			}
			got := map[string]float64{}
			for _, row := range query(t, s, Query{Metric: "http.requests", From: t0, To: t0.Add(time.Minute)}) {
				got[row.Attributes["http.route"]] = row.Agg.Sum
			}
			if len(got) != len(want) {
				t.Fatalf("%d series stored, want %d", len(got), len(want))
			}
			for r, v := range want {
				if got[r] != v {
					t.Errorf("%s = %v, want %v", r, got[r], v)
				}
			}
		})
	}
}

// TestWriteSeriesTwice: new series go in by INSERT OR IGNORE (insertSeries);
// a series a window carries twice keeps the later unit, as the upsert did,
// in a short batch and in a full one.
func TestWriteSeriesTwice(t *testing.T) {
	for _, n := range []int{1, seriesBatch + 10} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			s := open(t, t.TempDir(), &clock{t: t0.Add(5 * time.Minute)})
			var aggs []metric.Aggregate
			for i := range n {
				aggs = append(aggs, counter(fmt.Sprintf("/r%d", i), 1))
			}
			again := counter("/r0", 2)
			again.Unit = "{call}"
			write(t, s, win(t0, 0, append(aggs, again)...))
			rows := query(t, s, Query{Metric: "http.requests", From: t0, To: t0.Add(time.Minute)})
			if len(rows) != n {
				t.Fatalf("%d series, want %d", len(rows), n)
			}
			for _, r := range rows {
				want := "{request}"
				if r.Attributes["http.route"] == "/r0" {
					want = "{call}"
					if r.Agg.Sum != 2 {
						t.Errorf("/r0 sum = %v, want 2", r.Agg.Sum)
					}
				}
				if r.Unit != want {
					t.Errorf("%s unit = %q, want %q", r.Attributes["http.route"], r.Unit, want)
				}
			}
		})
	}
}
