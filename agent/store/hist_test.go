package store

import (
	"math"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/sabakiio/sabaki/histogram"
)

// TestHistAccMatchesMerge checks that accumulating stored windows gives
// exactly what building a histogram per window and merging them gives:
// scales that differ and move, negatives, empty windows, ranges that force
// downscaling, and accumulators merged into each other (a group's row).
func TestHistAccMatchesMerge(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	window := func() *hdata {
		h := histogram.New(histogram.DefaultMaxSize, int32(r.IntN(25))-4)
		switch r.IntN(6) {
		case 0: // empty
		case 1: // zeros and negatives
			for range r.IntN(50) {
				h.Record(r.NormFloat64() * 3)
			}
			h.Record(0)
		case 2: // a huge range: downscales
			for range 30 {
				h.Record(math.Exp(r.NormFloat64() * 20))
			}
		default:
			for range 1 + r.IntN(300) {
				h.Record(math.Exp(r.NormFloat64()*0.5 - 2 + float64(r.IntN(3))))
			}
		}
		d := toHData(h)
		if !d.eligible() {
			t.Fatalf("window not eligible: %+v", d)
		}
		return d
	}
	same := func(t *testing.T, got, want *histogram.Histogram) {
		t.Helper()
		g, w := got.Data(), want.Data()
		if !reflect.DeepEqual(g, w) || got.MaxSize() != want.MaxSize() || got.MaxScale() != want.MaxScale() {
			t.Fatalf("accumulated %+v (size %d scale %d)\nmerged      %+v (size %d scale %d)", g, got.MaxSize(), got.MaxScale(), w, want.MaxSize(), want.MaxScale())
		}
	}
	for range 300 {
		n := 1 + r.IntN(6)
		var ds []*hdata
		for range n {
			ds = append(ds, window())
		}
		want, err := ds[0].histogram()
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds[1:] {
			h, err := d.histogram()
			if err != nil {
				t.Fatal(err)
			}
			want.Merge(h)
		}
		acc := newHistAcc(ds[0])
		for _, d := range ds[1:] {
			acc.add(d, false)
		}
		got, err := acc.histogram()
		if err != nil {
			t.Fatal(err)
		}
		same(t, got, want)
		// Split in two accumulators merged, as a group merges its series.
		k := 1 + r.IntN(n)
		a, b := newHistAcc(ds[0]), (*histAcc)(nil)
		for _, d := range ds[1:k] {
			a.add(d, false)
		}
		wantA, _ := ds[0].histogram()
		for _, d := range ds[1:k] {
			h, _ := d.histogram()
			wantA.Merge(h)
		}
		if k < n {
			b = newHistAcc(ds[k])
			wantB, _ := ds[k].histogram()
			for _, d := range ds[k+1:] {
				b.add(d, false)
				h, _ := d.histogram()
				wantB.Merge(h)
			}
			a.merge(b)
			wantA.Merge(wantB)
		}
		got, err = a.histogram()
		if err != nil {
			t.Fatal(err)
		}
		same(t, got, wantA)
	}
}

// TestHistAccBadCounts: a window whose counts do not add up to its count
// is an error, as FromData makes it.
func TestHistAccBadCounts(t *testing.T) {
	d := hdata{scale: 3, pos: buckets{offset: 2, counts: []uint64{0, 4, 1}}, count: 7, zeroCount: 1, min: 0, max: 1.5}
	if _, err := d.histogram(); err == nil {
		t.Fatal("FromData took it")
	}
	a := newHistAcc(&hdata{scale: 3, count: 1, zeroCount: 1})
	a.add(&d, false)
	if _, err := a.histogram(); err == nil {
		t.Fatal("accumulated without an error")
	}
}

func TestHistEligible(t *testing.T) {
	ok := hdata{scale: 3, pos: buckets{offset: 2, counts: []uint64{0, 4, 1}}, count: 6, zeroCount: 1, min: 0, max: 1.5}
	tests := []struct {
		name string
		edit func(d *hdata)
		want bool
	}{
		{"plain", func(d *hdata) {}, true},
		{"zero threshold", func(d *hdata) { d.zeroThreshold = 1e-9 }, false},

		{"min and max unknown", func(d *hdata) { d.max = 0 }, false},
		{"NaN", func(d *hdata) { d.min = math.NaN() }, false},
		{"scale too fine", func(d *hdata) { d.scale = 21 }, false},
		{"index out of range", func(d *hdata) { d.scale = -10; d.pos.offset = 5 }, false},
	}
	for _, tc := range tests {
		d := ok
		tc.edit(&d)
		if got := d.eligible(); got != tc.want {
			t.Errorf("%s: eligible %v, want %v", tc.name, got, tc.want)
		}
	}
}
