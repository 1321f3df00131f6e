package store

import (
	"fmt"

	"github.com/sabakiio/sabaki/histogram"
)

// toHData converts a histogram into the chunk codec's form. Bucket slices are
// shared with the returned Data, never modified.
func toHData(h *histogram.Histogram) *hdata {
	d := h.Data()
	return &hdata{
		scale:         d.Scale,
		zeroThreshold: d.ZeroThreshold,
		zeroCount:     d.ZeroCount,
		pos:           buckets{offset: d.Positive.Offset, counts: d.Positive.Counts},
		neg:           buckets{offset: d.Negative.Offset, counts: d.Negative.Counts},
		count:         d.Count,
		sum:           d.Sum,
		min:           d.Min,
		max:           d.Max,
	}
}

// histogram rebuilds the histogram. Its limits are the package defaults or
// larger when the stored one needs it (a config with a bigger max_size), so
// nothing is downscaled on the way out.
func (d *hdata) histogram() (*histogram.Histogram, error) {
	size := max(histogram.DefaultMaxSize, len(d.pos.counts), len(d.neg.counts))
	scale := max(int32(histogram.DefaultMaxScale), d.scale)
	h, err := histogram.FromData(histogram.Data{
		Scale:         d.scale,
		ZeroThreshold: d.zeroThreshold,
		ZeroCount:     d.zeroCount,
		Positive:      histogram.Buckets{Offset: d.pos.offset, Counts: d.pos.counts},
		Negative:      histogram.Buckets{Offset: d.neg.offset, Counts: d.neg.counts},
		Count:         d.count,
		Sum:           d.sum,
		Min:           d.min,
		Max:           d.max,
	}, size, scale)
	if err != nil {
		return nil, fmt.Errorf("%w: histogram: %v", errCorrupt, err)
	}
	return h, nil
}
