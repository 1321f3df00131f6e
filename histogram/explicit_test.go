package histogram

import (
	"math"
	"slices"
	"testing"
)

// bucketize counts vs into explicit buckets (upper-inclusive).
func bucketize(bounds, vs []float64) (counts []uint64, sum float64) {
	counts = make([]uint64, len(bounds)+1)
	for _, v := range vs {
		i, _ := slices.BinarySearch(bounds, v) // first bound >= v
		counts[i]++
		sum += v
	}
	return counts, sum
}

func gcpExponential(n int, growth, scale float64) []float64 {
	b := make([]float64, n+1)
	for i := range b {
		b[i] = scale * math.Pow(growth, float64(i))
	}
	return b
}

func gcpLinear(n int, width, offset float64) []float64 {
	b := make([]float64, n+1)
	for i := range b {
		b[i] = offset + width*float64(i)
	}
	return b
}

// TestFromExplicitError measures the quantile error of explicit buckets
// converted to exponential ones, against the exact quantiles, and checks it
// against the documented bound: the explicit bucket's own width (the
// conversion moves observations only within their explicit bucket) plus the
// exponential bucket's.
func TestFromExplicitError(t *testing.T) {
	classic := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10} // client_golang DefBuckets
	cases := []struct {
		name   string
		bounds []float64
		data   string
		scaleV float64
		exact  bool
	}{
		{"prom-default", classic, "lognormal", 1, false},
		{"gcp-exp-2", gcpExponential(30, 2, 0x1p-13), "lognormal", 1, true},
		{"gcp-exp-4", gcpExponential(15, 4, 0x1p-14), "lognormal", 1, true},
		{"gcp-exp-1.5", gcpExponential(40, 1.5, 0.0001), "lognormal", 1, false},
		{"gcp-exp-1.1", gcpExponential(150, 1.1, 0.0001), "pareto", 1, false},
		{"gcp-linear", gcpLinear(100, 0.01, 0), "uniform", 1, false},
		{"otel-default", []float64{0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000}, "lognormal", 1000, false},
	}
	qs := []float64{0.5, 0.9, 0.95, 0.99}
	for _, c := range cases {
		vs := dataset(c.data, 50000)
		for i := range vs {
			vs[i] *= c.scaleV
		}
		counts, sum := bucketize(c.bounds, vs)
		h, err := FromExplicit(c.bounds, counts, sum, 0, 0)
		if err != nil {
			t.Fatal(c.name, err)
		}
		if h.Count() != uint64(len(vs)) || h.Sum() != sum {
			t.Fatalf("%s: count %d sum %v", c.name, h.Count(), h.Sum())
		}
		sorted := slices.Clone(vs)
		slices.Sort(sorted)
		var maxErr float64
		for _, q := range qs {
			x := exactQuantile(sorted, q)
			est := h.Quantile(q)
			e := math.Abs(est-x) / x
			maxErr = max(maxErr, e)
			// Bound: the explicit bucket holding x, widened by one
			// exponential bucket on each side.
			i, _ := slices.BinarySearch(c.bounds, x)
			if i == 0 || i == len(c.bounds) {
				continue // open-ended bucket: no bound
			}
			lo, hi := c.bounds[i-1], c.bounds[i]
			base := math.Exp2(math.Exp2(-float64(h.Scale())))
			if lo > 0 && (est < lo/base || est > hi*base) {
				t.Errorf("%s q=%v: estimate %v outside explicit bucket (%v, %v] widened by base %v", c.name, q, est, lo, hi, base)
			}
		}
		// Exactness: power-of-two bounds give the histogram of the values.
		if c.exact {
			ref := NewAtScale(160, h.Scale())
			for _, v := range vs {
				if v > c.bounds[0] && v <= c.bounds[len(c.bounds)-1] {
					ref.Record(v)
				}
			}
			hd, rd := h.Data(), ref.Data()
			if !slices.Equal(hd.Positive.Counts, rd.Positive.Counts) || hd.Positive.Offset != rd.Positive.Offset {
				t.Errorf("%s: not exact", c.name)
			}
		}
		t.Logf("%-13s scale %2d: quantile max relative error %.2f%% (p50..p99)", c.name, h.Scale(), 100*maxErr)
	}
}
