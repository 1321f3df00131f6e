package exporters

// Remote-Write 1.0 protobuf encoding with protowire. Field numbers are those
// of prometheus/prometheus prompb/remote.proto and prompb/types.proto:
//
//	WriteRequest   { repeated TimeSeries timeseries = 1; repeated MetricMetadata metadata = 3; }
//	TimeSeries     { repeated Label labels = 1; repeated Sample samples = 2;
//	                 repeated Exemplar exemplars = 3; repeated Histogram histograms = 4; }
//	Label          { string name = 1; string value = 2; }
//	Sample         { double value = 1; int64 timestamp = 2; }
//	Exemplar       { repeated Label labels = 1; double value = 2; int64 timestamp = 3; }
//	Histogram      { oneof count { uint64 count_int = 1; double count_float = 2; }
//	                 double sum = 3; sint32 schema = 4; double zero_threshold = 5;
//	                 oneof zero_count { uint64 zero_count_int = 6; double zero_count_float = 7; }
//	                 repeated BucketSpan negative_spans = 8; repeated sint64 negative_deltas = 9;
//	                 repeated double negative_counts = 10; repeated BucketSpan positive_spans = 11;
//	                 repeated sint64 positive_deltas = 12; repeated double positive_counts = 13;
//	                 ResetHint reset_hint = 14; int64 timestamp = 15; }
//	BucketSpan     { sint32 offset = 1; uint32 length = 2; }
//	MetricMetadata { MetricType type = 1; string metric_family_name = 2; string help = 4; string unit = 5; }
//
// Histograms are sent as integer histograms (count_int, zero_count_int,
// delta-encoded buckets), reset_hint UNKNOWN: the receiver detects resets.

import (
	"math"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sabakiio/sabaki/histogram"
)

// rwEncoder encodes WriteRequests, reusing its scratch buffers: a nested
// message is built in the buffer of its depth, then appended length-prefixed
// to its parent.
type rwEncoder struct {
	raw  []byte
	ts   []byte // TimeSeries / MetricMetadata
	sub  []byte // Sample, Label, Exemplar, Histogram
	leaf []byte // Label inside Exemplar, BucketSpan
}

// request returns the snappy-compressed WriteRequest for series, with the
// metadata of each family present.
func (e *rwEncoder) request(series []rwSeries) []byte {
	e.raw = e.raw[:0]
	seen := map[string]bool{}
	for i := range series {
		e.ts = e.appendSeries(e.ts[:0], &series[i])
		e.raw = rwAppendMsg(e.raw, 1, e.ts)
	}
	for i := range series {
		s := &series[i]
		if seen[s.family] {
			continue
		}
		seen[s.family] = true
		b := e.ts[:0]
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(s.typ))
		b = rwAppendStr(b, 2, s.family)
		b = rwAppendStr(b, 4, s.help)
		b = rwAppendStr(b, 5, s.unit)
		e.ts = b
		e.raw = rwAppendMsg(e.raw, 3, e.ts)
	}
	return snappyEncode(e.raw)
}

func (e *rwEncoder) appendSeries(b []byte, s *rwSeries) []byte {
	for _, l := range s.labels {
		e.sub = rwAppendLabel(e.sub[:0], l)
		b = rwAppendMsg(b, 1, e.sub)
	}
	for _, smp := range s.samples {
		m := e.sub[:0]
		m = rwAppendDouble(m, 1, smp.v)
		m = rwAppendInt64(m, 2, smp.t)
		e.sub = m
		b = rwAppendMsg(b, 2, e.sub)
	}
	for _, ex := range s.exemplars {
		m := e.sub[:0]
		for _, l := range ex.labels {
			e.leaf = rwAppendLabel(e.leaf[:0], l)
			m = rwAppendMsg(m, 1, e.leaf)
		}
		m = rwAppendDouble(m, 2, ex.v)
		m = rwAppendInt64(m, 3, ex.t)
		e.sub = m
		b = rwAppendMsg(b, 3, e.sub)
	}
	for i := range s.hists {
		e.sub = e.appendHistogram(e.sub[:0], &s.hists[i].n, s.hists[i].t)
		b = rwAppendMsg(b, 4, e.sub)
	}
	return b
}

func (e *rwEncoder) appendHistogram(b []byte, h *histogram.Native, t int64) []byte {
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, h.Count)
	b = rwAppendDouble(b, 3, h.Sum)
	b = protowire.AppendTag(b, 4, protowire.VarintType)
	b = protowire.AppendVarint(b, protowire.EncodeZigZag(int64(h.Schema)))
	b = rwAppendDouble(b, 5, h.ZeroThreshold)
	b = protowire.AppendTag(b, 6, protowire.VarintType)
	b = protowire.AppendVarint(b, h.ZeroCount)
	b = e.appendSpans(b, 8, h.NegativeSpans)
	b = rwAppendPackedSint64(b, 9, h.NegativeDeltas)
	b = e.appendSpans(b, 11, h.PositiveSpans)
	b = rwAppendPackedSint64(b, 12, h.PositiveDeltas)
	// reset_hint (14) stays UNKNOWN.
	b = rwAppendInt64(b, 15, t)
	return b
}

func (e *rwEncoder) appendSpans(b []byte, field protowire.Number, spans []histogram.Span) []byte {
	for _, sp := range spans {
		m := e.leaf[:0]
		m = protowire.AppendTag(m, 1, protowire.VarintType)
		m = protowire.AppendVarint(m, protowire.EncodeZigZag(int64(sp.Offset)))
		m = protowire.AppendTag(m, 2, protowire.VarintType)
		m = protowire.AppendVarint(m, uint64(sp.Length))
		e.leaf = m
		b = rwAppendMsg(b, field, e.leaf)
	}
	return b
}

func rwAppendLabel(b []byte, l rwLabel) []byte {
	b = rwAppendStr(b, 1, l.name)
	return rwAppendStr(b, 2, l.value)
}

func rwAppendMsg(b []byte, field protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

func rwAppendStr(b []byte, field protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func rwAppendDouble(b []byte, field protowire.Number, v float64) []byte {
	b = protowire.AppendTag(b, field, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, math.Float64bits(v))
}

func rwAppendInt64(b []byte, field protowire.Number, v int64) []byte {
	b = protowire.AppendTag(b, field, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

func rwAppendPackedSint64(b []byte, field protowire.Number, vs []int64) []byte {
	if len(vs) == 0 {
		return b
	}
	n := 0
	for _, v := range vs {
		n += protowire.SizeVarint(protowire.EncodeZigZag(v))
	}
	b = protowire.AppendTag(b, field, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	for _, v := range vs {
		b = protowire.AppendVarint(b, protowire.EncodeZigZag(v))
	}
	return b
}
