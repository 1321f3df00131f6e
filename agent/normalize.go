package agent

import (
	"math"
	"strconv"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// Normalisation
//
// Sources deliver series as the producer reports them; the pipeline turns
// every counter and histogram into per-window deltas, per raw series (source,
// name, kind, temporality, resource, attributes as delivered, before rules),
// so that series the rules later merge are each differenced on their own.
//
//   - Delta points are added as they are (a negative counter delta is dropped
//     and counted as reason="negative_delta").
//   - Cumulative points: delta = current − previous. A decrease, or a Start
//     different from the previous Start (when both are known), is a reset: the
//     new value is the count since the new start, so it is the delta.
//   - First sight of a cumulative series: when its Start is known and not
//     before the agent's start (the producer began while we were watching),
//     the whole value is the first delta and lands in the window of the
//     point; otherwise the point only sets the baseline and emits nothing (a
//     long-running producer's lifetime total is not a one-window spike).
//   - A cumulative point not newer than the previous one is a duplicate or
//     out of order: dropped, reason="out_of_order".
//   - A cumulative point too late for its window (see window.go) still moves
//     the baseline: its increments are dropped (reason="too_late") rather
//     than counted into a later window.
//   - Cumulative histograms: delta = current − previous bucket by bucket,
//     after downscaling the finer of the two to the coarser scale; a lower
//     count, or any bucket (or the zero bucket) going negative, is a reset.
//     The delta's min and max are the current ones when they moved in this
//     interval, else the bounds of the outermost non-empty delta buckets
//     (clamped to the cumulative min/max).
//   - Gauges keep last (by point time), min, max, sum and count per window.
//   - NaN and ±Inf gauge and counter values are dropped, reason="nan".
//
// The baseline of a cumulative series is forgotten after it has been silent
// for 2×lateness + 10 min; when it comes back it is a first sight again.
// With Settings.OnWindowState, baselines are saved with the windows and read
// back at start (durable.go): a restarted agent goes on from the last stored
// window instead of starting each series from a new baseline.

// rawState is the pipeline's memory of one raw series (kept small: there is
// one per series the agent sees).
type rawState struct {
	// Cumulative baseline; times are UnixNano, 0 for unknown.
	start     int64
	lastTime  int64
	lastValue float64
	// lastHist is the previous cumulative histogram as plain data: one
	// Data() per point instead of two (the subtraction's main cost), for
	// 8 bytes per bucket.
	lastHist *histogram.Data

	// Cache: the rule output for rs, and the aggregate of the last window.
	rs    *ruleSet
	out   *outSeries
	win   *window
	ag    *agg
	agGen uint32 // win.gen when ag was looked up
	// seen is the wall time (Unix seconds, good until 2106) of the last
	// batch with the series.
	seen uint32

	// Durability (durable.go): sid is the stable key of a cumulative series'
	// saved baseline; bw the window whose hand-over will save its baseline
	// (nil when none is pending); saved, whether the store holds a row.
	sid [16]byte
	bw  *window
	// adm is the output series the state was admitted under (max_series,
	// Pipeline.admit), nil when its metric had no limit.
	adm *outSeries

	hasBase bool
	// Error marking, from the raw attributes (constant for the series).
	isError, errTracked bool
	saved               bool
	// inOverflow: the last aggregate was a max_series overflow series.
	inOverflow bool
	// detached: p.raw does not hold the state (forgotten, or never kept), so
	// a position consume remembered must not use it.
	detached bool
}

// nanos is t as UnixNano, 0 for the zero time.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// markError classifies a raw series: tracked when it carries a status
// attribute (OTel http.response.status_code, the older http.status_code,
// rpc.grpc.status_code, Prometheus code, status or status_code labels, Cloud
// Monitoring's response_code and response_code_class on Cloud Run request
// metrics) or error.type; an error when an HTTP status is 5xx (or "5xx"), a gRPC status
// is one OTel counts as a server error (UNKNOWN, DEADLINE_EXCEEDED,
// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS), or error.type is
// non-empty.
func markError(attrs metric.Attrs) (isError, tracked bool) {
	for _, key := range [...]string{"http.response.status_code", "http.status_code", "code", "status", "status_code", "response_code", "response_code_class"} {
		v, ok := attrs.Get(key)
		if !ok {
			continue
		}
		tracked = true
		if is5xx(v) {
			isError = true
		}
	}
	if v, ok := attrs.Get("rpc.grpc.status_code"); ok {
		tracked = true
		switch v {
		case "2", "4", "12", "13", "14", "15":
			isError = true
		}
	}
	if v, ok := attrs.Get("error.type"); ok {
		tracked = true
		if v != "" {
			isError = true
		}
	}
	return isError, tracked
}

// is5xx reports whether v is an HTTP status 500–599 (or "5xx", as some
// Prometheus instrumentations aggregate).
func is5xx(v string) bool {
	if v == "5xx" || v == "5XX" {
		return true
	}
	n, err := strconv.Atoi(v)
	return err == nil && n >= 500 && n <= 599
}

// counterDelta applies a cumulative counter point to the baseline and returns
// the delta to count, or ok=false when the point only set the baseline.
func (st *rawState) counterDelta(pt *metric.Point, agentStart int64) (delta float64, ok bool) {
	start := nanos(pt.Start)
	prevStart, prevValue, had := st.start, st.lastValue, st.hasBase
	st.hasBase, st.start, st.lastTime, st.lastValue = true, start, pt.Time.UnixNano(), pt.Value
	switch {
	case !had:
		if start != 0 && start >= agentStart {
			return pt.Value, true
		}
		return 0, false
	case pt.Value < prevValue || startChanged(prevStart, start):
		return pt.Value, true
	}
	return pt.Value - prevValue, true
}

func startChanged(prev, cur int64) bool {
	return prev != 0 && cur != 0 && prev != cur
}

// histDelta applies a cumulative histogram point (whose histogram the
// pipeline owns) to the baseline and returns the delta histogram (owned by
// the caller), or nil when the point only set the baseline. scratch holds
// the bucket differences until the delta histogram is built from them
// (reused by the next call).
func (st *rawState) histDelta(pt *metric.Point, agentStart int64, maxSize int, maxScale int32, scratch *[]uint64) *histogram.Histogram {
	start := nanos(pt.Start)
	cur := pt.Hist.Data()
	prev, prevStart, had := st.lastHist, st.start, st.hasBase
	st.hasBase, st.start, st.lastTime, st.lastHist = true, start, pt.Time.UnixNano(), &cur
	if !had {
		if start != 0 && start >= agentStart {
			return pt.Hist
		}
		return nil
	}
	if startChanged(prevStart, start) {
		return pt.Hist
	}
	if d, ok := subtractHist(&cur, prev, maxSize, maxScale, scratch); ok {
		return d
	}
	return pt.Hist // reset
}

// subtractHist returns cur − prev, or ok=false when the result would be
// negative anywhere (the producer reset). The differences are computed in
// *scratch (grown as needed): the histogram built from them copies them.
func subtractHist(cur, prev *histogram.Data, maxSize int, maxScale int32, scratch *[]uint64) (*histogram.Histogram, bool) {
	cd, pd := *cur, *prev
	if cd.Count < pd.Count || cd.ZeroCount < pd.ZeroCount {
		return nil, false
	}
	scale := min(cd.Scale, pd.Scale)
	cpos, cneg := downscaleBuckets(cd.Positive, cd.Scale-scale), downscaleBuckets(cd.Negative, cd.Scale-scale)
	buf := *scratch
	if need := len(cpos.Counts) + len(cneg.Counts); cap(buf) < need {
		buf = make([]uint64, need)
		*scratch = buf
	}
	pos, ok := subtractBuckets(buf[:len(cpos.Counts)], cpos, downscaleBuckets(pd.Positive, pd.Scale-scale))
	if !ok {
		return nil, false
	}
	neg, ok := subtractBuckets(buf[len(cpos.Counts):len(cpos.Counts)+len(cneg.Counts)], cneg, downscaleBuckets(pd.Negative, pd.Scale-scale))
	if !ok {
		return nil, false
	}
	d := histogram.Data{
		Scale:         scale,
		ZeroThreshold: cd.ZeroThreshold,
		ZeroCount:     cd.ZeroCount - pd.ZeroCount,
		Positive:      pos,
		Negative:      neg,
		Count:         cd.Count - pd.Count,
		Sum:           cd.Sum - pd.Sum,
	}
	// The count must agree with the buckets; trust the buckets.
	if n := d.ZeroCount + total(pos.Counts) + total(neg.Counts); n != d.Count {
		d.Count = n
	}
	if d.Count > 0 {
		d.Min, d.Max = deltaMinMax(&d, cd, pd)
	} else {
		d.Sum = 0
	}
	h, err := histogram.FromData(d, maxSize, maxScale)
	if err != nil {
		return nil, false
	}
	return h, true
}

func total(c []uint64) uint64 {
	var n uint64
	for _, v := range c {
		n += v
	}
	return n
}

// deltaMinMax estimates the min and max of the observations between two
// cumulative snapshots.
func deltaMinMax(d *histogram.Data, cur, prev histogram.Data) (lo, hi float64) {
	lo, hi = lowestValue(d), highestValue(d)
	if cur.Max > prev.Max || prev.Count == 0 {
		hi = cur.Max
	} else {
		hi = min(hi, cur.Max)
	}
	if cur.Min < prev.Min || prev.Count == 0 {
		lo = cur.Min
	} else {
		lo = max(lo, cur.Min)
	}
	if lo > hi {
		lo = hi
	}
	return lo, hi
}

// bucketBound returns base^i at scale: the lower bound of bucket i (the
// upper bound of bucket i-1).
func bucketBound(i, scale int32) float64 {
	return math.Exp2(math.Ldexp(float64(i), -int(scale)))
}

func highestValue(d *histogram.Data) float64 {
	if i, ok := lastNonZero(d.Positive); ok {
		return bucketBound(i+1, d.Scale)
	}
	if d.ZeroCount > 0 {
		return 0
	}
	if i, ok := firstNonZero(d.Negative); ok {
		return -bucketBound(i, d.Scale)
	}
	return 0
}

func lowestValue(d *histogram.Data) float64 {
	if i, ok := lastNonZero(d.Negative); ok {
		return -bucketBound(i+1, d.Scale)
	}
	if d.ZeroCount > 0 {
		return 0
	}
	if i, ok := firstNonZero(d.Positive); ok {
		return bucketBound(i, d.Scale)
	}
	return 0
}

func lastNonZero(b histogram.Buckets) (int32, bool) {
	for j := len(b.Counts) - 1; j >= 0; j-- {
		if b.Counts[j] != 0 {
			return b.Offset + int32(j), true
		}
	}
	return 0, false
}

func firstNonZero(b histogram.Buckets) (int32, bool) {
	for j, c := range b.Counts {
		if c != 0 {
			return b.Offset + int32(j), true
		}
	}
	return 0, false
}

// downscaleBuckets merges buckets by 2^by: bucket i becomes i>>by (an
// arithmetic shift, so negative indexes round toward −∞ as OTel specifies).
func downscaleBuckets(b histogram.Buckets, by int32) histogram.Buckets {
	if by <= 0 || len(b.Counts) == 0 {
		return b
	}
	first := b.Offset >> by
	last := (b.Offset + int32(len(b.Counts)) - 1) >> by
	out := histogram.Buckets{Offset: first, Counts: make([]uint64, last-first+1)}
	for j, c := range b.Counts {
		out.Counts[((b.Offset+int32(j))>>by)-first] += c
	}
	return out
}

// subtractBuckets returns a − b, or ok=false if any bucket would go negative.
// The result's counts are a slice of dst, which has len(a.Counts).
func subtractBuckets(dst []uint64, a, b histogram.Buckets) (histogram.Buckets, bool) {
	for j, c := range b.Counts {
		if c == 0 {
			continue
		}
		i := b.Offset + int32(j) - a.Offset
		if i < 0 || int(i) >= len(a.Counts) || a.Counts[i] < c {
			return histogram.Buckets{}, false
		}
	}
	out := histogram.Buckets{Offset: a.Offset, Counts: dst}
	copy(out.Counts, a.Counts)
	for j, c := range b.Counts {
		if c != 0 {
			out.Counts[b.Offset+int32(j)-a.Offset] -= c
		}
	}
	// Trim empty ends so the delta keeps a compact range.
	lo, hi := 0, len(out.Counts)
	for lo < hi && out.Counts[lo] == 0 {
		lo++
	}
	for hi > lo && out.Counts[hi-1] == 0 {
		hi--
	}
	if lo == hi {
		return histogram.Buckets{}, true
	}
	out.Offset += int32(lo)
	out.Counts = out.Counts[lo:hi]
	return out, true
}
