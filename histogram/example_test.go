package histogram_test

import (
	"fmt"

	"github.com/sabakiio/sabaki/histogram"
)

func Example() {
	h := histogram.New(0, 0) // 160 buckets per sign, starting at scale 20
	for i := 1; i <= 1000; i++ {
		h.Record(float64(i) / 1000) // 1 ms .. 1 s
	}
	fmt.Println("count", h.Count(), "scale", h.Scale(), "min", h.Min(), "max", h.Max())
	fmt.Printf("p50 %.4f (midpoint %.4f, bound ±%.2f%%)\n", h.Quantile(0.5), h.QuantileMidpoint(0.5), 100*h.RelativeError())
	fmt.Printf("share <= 0.25: %.3f\n", h.FractionBelow(0.25))

	// A second source at another resolution merges exactly.
	o := histogram.New(0, 0)
	o.Record(5)
	h.Merge(o)
	fmt.Println("merged count", h.Count(), "max", h.Max())
	// Output:
	// count 1000 scale 4 min 0.001 max 1
	// p50 0.4995 (midpoint 0.4892, bound ±2.17%)
	// share <= 0.25: 0.250
	// merged count 1001 max 5
}

func ExampleFromNative() {
	// A client_golang-style native histogram: schema 3, two spans.
	n := histogram.Native{
		Schema: 3, ZeroThreshold: 0x1p-128, ZeroCount: 1, Count: 10, Sum: 12.5,
		PositiveSpans:  []histogram.Span{{Offset: 1, Length: 2}, {Offset: 3, Length: 1}},
		PositiveDeltas: []int64{3, 1, -2}, // counts 3, 4, 2
	}
	h, err := histogram.FromNative(n, 0, 0)
	if err != nil {
		fmt.Println(err)
		return
	}
	d := h.Data()
	fmt.Println("scale", d.Scale, "offset", d.Positive.Offset, "counts", d.Positive.Counts, "zero", d.ZeroCount)
	// Output:
	// scale 3 offset 0 counts [3 4 0 0 0 2] zero 1
}
