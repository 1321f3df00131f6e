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
		// The same windows as a packed chunk's records left encoded
		// (decodeOptions.lazy): added straight from the bit-packed counts.
		lazy := func(d *hdata) *hdata {
			var l hdata
			if err := (&packedReader{lazy: true}).read(appendPacked(nil, d), &l); err != nil {
				t.Fatal(err)
			}
			l.count = d.count
			return &l
		}
		acc = newHistAcc(lazy(ds[0]))
		for _, d := range ds[1:] {
			acc.add(lazy(d), false)
		}
		if got, err = acc.histogram(); err != nil {
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

// TestHistAccPackedCorrupt: packed counts that a bitmap puts past the
// buckets, or that do not add up to the count, are an error, not a silent
// merge.
func TestHistAccPackedCorrupt(t *testing.T) {
	h := histogram.New(histogram.DefaultMaxSize, 3)
	for _, v := range []float64{1, 1.1, 5, 5, 5, 90, 91, 300} {
		h.Record(v)
	}
	d := toHData(h)
	rec := appendPacked(nil, d)
	read := func(rec []byte) *hdata {
		var l hdata
		if err := (&packedReader{lazy: true}).read(rec, &l); err != nil {
			t.Fatal(err)
		}
		l.count = d.count
		return &l
	}
	if l := read(rec); !l.packed || l.lz[0].bm == nil {
		t.Fatalf("record not read as bitmap-packed: %+v", l)
	}
	acc := newHistAcc(read(rec))
	acc.add(read(rec), false)
	if _, err := acc.histogram(); err != nil {
		t.Fatalf("good records: %v", err)
	}
	// A wrong count.
	l := read(rec)
	l.count++
	acc = newHistAcc(read(rec))
	acc.add(l, false)
	if _, err := acc.histogram(); err == nil {
		t.Fatal("counts not adding up were merged")
	}
	// The bitmap's last byte with a bit past the buckets: the record says
	// n buckets, the bitmap marks bucket n (its padding bits).
	n := len(d.pos.counts)
	if n%8 == 0 {
		t.Fatalf("no padding bit with %d buckets: change the test data", n)
	}
	l = read(rec)
	bm := append([]byte(nil), l.lz[0].bm...)
	bm[len(bm)-1] |= 1 << (n % 8)
	l.lz[0].bm = bm
	acc = newHistAcc(read(rec))
	acc.add(l, false)
	if _, err := acc.histogram(); err == nil {
		t.Fatal("a bitmap bit past the buckets was merged")
	}
}
