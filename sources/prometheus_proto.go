package sources

import (
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// The Prometheus protobuf exposition (io.prometheus.client.MetricFamily,
// varint-length delimited) is decoded here directly into reusable structs
// instead of through client_model's generated types: the generated decoder
// allocates a message per label, bucket and span and a pointer per optional
// scalar, which made decoding about 80% of a scrape's cost. Field numbers
// follow client_model v0.6 metrics.proto; unknown fields are skipped, and
// repeated scalars are read packed or unpacked. The text formats still go
// through expfmt's parsers and are adapted by promFamily.fromDTO, so both
// paths share one conversion (and a test checks they agree).

// promFamily is one metric family, reused from family to family.
type promFamily struct {
	name, help, unit string
	typ              dto.MetricType
	metrics          []promMetric
}

type promLabel struct{ name, value string }

type promQuantile struct{ q, v float64 }

type promBucket struct {
	cum         uint64
	cumFloat    float64
	hasCumFloat bool
	upper       float64
	exemplar    promExemplarRaw
	hasExemplar bool
}

type promExemplarRaw struct {
	labels []promLabel
	value  float64
	ts     time.Time
	hasTS  bool
}

// promMetric is one sample of a family (client_model Metric), flattened.
type promMetric struct {
	labels      []promLabel
	timestampMs int64
	hasTS       bool

	// Counter, gauge, untyped.
	value       float64
	exemplar    promExemplarRaw
	hasExemplar bool
	// Counter, summary, histogram.
	created time.Time

	// Summary and histogram.
	count         uint64
	countFloat    float64
	hasCountFloat bool
	sum           float64
	quantiles     []promQuantile

	// Histogram.
	hasHist              bool
	buckets              []promBucket
	schema               int32
	zt                   float64
	zc                   uint64
	zcf                  float64
	posSpans, negSpans   []histogram.Span
	posDeltas, negDeltas []int64
	posCounts, negCounts []float64
	exemplars            []promExemplarRaw
}

// reset clears m keeping its slices' storage.
func (m *promMetric) reset() {
	*m = promMetric{
		labels:    m.labels[:0],
		quantiles: m.quantiles[:0],
		buckets:   m.buckets[:0],
		posSpans:  m.posSpans[:0], negSpans: m.negSpans[:0],
		posDeltas: m.posDeltas[:0], negDeltas: m.negDeltas[:0],
		posCounts: m.posCounts[:0], negCounts: m.negCounts[:0],
		exemplars: m.exemplars[:0],
	}
}

// next returns the next metric slot of f, reset.
func (f *promFamily) next() *promMetric {
	if len(f.metrics) < cap(f.metrics) {
		f.metrics = f.metrics[:len(f.metrics)+1]
	} else {
		f.metrics = append(f.metrics, promMetric{})
	}
	m := &f.metrics[len(f.metrics)-1]
	m.reset()
	return m
}

// fromDTO fills f from a family decoded by expfmt (text formats).
func (f *promFamily) fromDTO(mf *dto.MetricFamily) {
	f.name, f.help, f.unit, f.typ = mf.GetName(), mf.GetHelp(), mf.GetUnit(), mf.GetType()
	f.metrics = f.metrics[:0]
	for _, dm := range mf.GetMetric() {
		if dm == nil {
			continue
		}
		m := f.next()
		for _, l := range dm.GetLabel() {
			m.labels = append(m.labels, promLabel{l.GetName(), l.GetValue()})
		}
		if dm.TimestampMs != nil {
			m.timestampMs, m.hasTS = dm.GetTimestampMs(), true
		}
		switch f.typ {
		case dto.MetricType_COUNTER:
			c := dm.GetCounter()
			m.value, m.created = c.GetValue(), promCreated(c.GetCreatedTimestamp())
			if e := c.GetExemplar(); e != nil {
				m.exemplar, m.hasExemplar = exemplarFromDTO(e, nil), true
			}
		case dto.MetricType_GAUGE:
			m.value = dm.GetGauge().GetValue()
		case dto.MetricType_UNTYPED:
			m.value = dm.GetUntyped().GetValue()
		case dto.MetricType_SUMMARY:
			s := dm.GetSummary()
			m.count, m.sum, m.created = s.GetSampleCount(), s.GetSampleSum(), promCreated(s.GetCreatedTimestamp())
			for _, q := range s.GetQuantile() {
				m.quantiles = append(m.quantiles, promQuantile{q.GetQuantile(), q.GetValue()})
			}
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			h := dm.GetHistogram()
			if h == nil {
				continue
			}
			m.hasHist = true
			m.count, m.sum, m.created = h.GetSampleCount(), h.GetSampleSum(), promCreated(h.GetCreatedTimestamp())
			if h.SampleCountFloat != nil {
				m.countFloat, m.hasCountFloat = h.GetSampleCountFloat(), true
			}
			for _, b := range h.GetBucket() {
				pb := promBucket{cum: b.GetCumulativeCount(), upper: b.GetUpperBound()}
				if b.CumulativeCountFloat != nil {
					pb.cumFloat, pb.hasCumFloat = b.GetCumulativeCountFloat(), true
				}
				if e := b.GetExemplar(); e != nil {
					pb.exemplar, pb.hasExemplar = exemplarFromDTO(e, nil), true
				}
				m.buckets = append(m.buckets, pb)
			}
			m.schema, m.zt, m.zc, m.zcf = h.GetSchema(), h.GetZeroThreshold(), h.GetZeroCount(), h.GetZeroCountFloat()
			for _, sp := range h.GetPositiveSpan() {
				m.posSpans = append(m.posSpans, histogram.Span{Offset: sp.GetOffset(), Length: sp.GetLength()})
			}
			for _, sp := range h.GetNegativeSpan() {
				m.negSpans = append(m.negSpans, histogram.Span{Offset: sp.GetOffset(), Length: sp.GetLength()})
			}
			m.posDeltas = append(m.posDeltas, h.GetPositiveDelta()...)
			m.negDeltas = append(m.negDeltas, h.GetNegativeDelta()...)
			m.posCounts = append(m.posCounts, h.GetPositiveCount()...)
			m.negCounts = append(m.negCounts, h.GetNegativeCount()...)
			for _, e := range h.GetExemplars() {
				m.exemplars = append(m.exemplars, exemplarFromDTO(e, nil))
			}
		}
	}
}

func exemplarFromDTO(e *dto.Exemplar, dst []promLabel) promExemplarRaw {
	x := promExemplarRaw{value: e.GetValue(), labels: dst}
	for _, l := range e.GetLabel() {
		x.labels = append(x.labels, promLabel{l.GetName(), l.GetValue()})
	}
	if e.Timestamp != nil {
		x.ts, x.hasTS = e.GetTimestamp().AsTime(), true
	}
	return x
}

var errPromProto = errors.New("malformed protobuf")

// parseProto decodes a delimited protobuf exposition, converts it and
// appends the series to out.
func (c *promConverter) parseProto(out []metric.Series, body []byte) ([]metric.Series, error) {
	c.nlabel = 0
	defer c.trimLabelPos()
	for n := 0; len(body) > 0; n++ {
		size, k := protowire.ConsumeVarint(body)
		if k < 0 || size > uint64(len(body)-k) {
			return out, fmt.Errorf("metric family %d: bad length prefix: %w", n, errPromProto)
		}
		msg := body[k : k+int(size)]
		body = body[k+int(size):]
		var err error
		if out, err = c.decodeFamily(out, msg); err != nil {
			return out, fmt.Errorf("metric family %d: %w", n, err)
		}
	}
	return out, nil
}

// pbField reads one field of msg: its number, wire type, the value for
// scalar types (varint or fixed64 bits) or the bytes, and the rest of msg.
func pbField(msg []byte) (num protowire.Number, typ protowire.Type, v uint64, b []byte, rest []byte, err error) {
	num, typ, n := protowire.ConsumeTag(msg)
	if n < 0 {
		return 0, 0, 0, nil, nil, errPromProto
	}
	msg = msg[n:]
	switch typ {
	case protowire.VarintType:
		v, n = protowire.ConsumeVarint(msg)
	case protowire.Fixed64Type:
		v, n = protowire.ConsumeFixed64(msg)
	case protowire.Fixed32Type:
		var v32 uint32
		v32, n = protowire.ConsumeFixed32(msg)
		v = uint64(v32)
	case protowire.BytesType:
		b, n = protowire.ConsumeBytes(msg)
	default:
		n = protowire.ConsumeFieldValue(num, typ, msg)
	}
	if n < 0 {
		return 0, 0, 0, nil, nil, errPromProto
	}
	return num, typ, v, b, msg[n:], nil
}

// decodeFamily converts one family metric by metric and appends the series
// to out. A first pass reads the family's own fields (name, help, type and
// unit, which is field 5, after the metrics) and checks the framing; the
// second decodes each metric into one reused promMetric and converts it at
// once. Holding a whole family decoded instead kept ~500 B per metric of the
// largest family per target alive between scrapes (29 MB at 50 targets of
// 2,100 series).
func (c *promConverter) decodeFamily(out []metric.Series, msg []byte) ([]metric.Series, error) {
	f := &c.fam
	f.name, f.help, f.unit, f.typ = "", "", "", dto.MetricType_COUNTER
	f.metrics = f.metrics[:0]
	for rest := msg; len(rest) > 0; {
		num, typ, v, b, r, err := pbField(rest)
		if err != nil {
			return out, err
		}
		rest = r
		switch {
		case num == 1 && typ == protowire.BytesType:
			f.name = c.str(b)
		case num == 2 && typ == protowire.BytesType:
			f.help = c.str(b)
		case num == 3 && typ == protowire.VarintType:
			f.typ = dto.MetricType(int32(v))
		case num == 5 && typ == protowire.BytesType:
			f.unit = c.str(b)
		}
	}
	if f.name == "" || !utf8.ValidString(f.name) {
		return out, fmt.Errorf("invalid metric name %q", f.name)
	}
	for rest := msg; len(rest) > 0; {
		num, typ, _, b, r, _ := pbField(rest) // the first pass checked the framing
		rest = r
		if num != 4 || typ != protowire.BytesType {
			continue
		}
		f.metrics = f.metrics[:0]
		if err := c.decodeMetric(f.next(), b); err != nil {
			return out, fmt.Errorf("%s: %w", f.name, err)
		}
		out = c.appendFamily(out, f)
	}
	return out, nil
}

// decodeLabel decodes a label pair. A metric's labels (byPos) are first
// compared with the pair at the same place in the target's previous scrape
// (c.labelPos): an exposition repeats its labels in the same order scrape
// after scrape, and two short comparisons cost less than two intern-table
// lookups and the UTF-8 checks (together 5–6 % of the agent's CPU at 105k
// series). Only pairs that passed the checks are remembered. Exemplar
// labels, which change every scrape, skip it.
func (c *promConverter) decodeLabel(b []byte, byPos bool) (promLabel, error) {
	var l promLabel
	var name, value []byte
	for len(b) > 0 {
		num, typ, _, v, rest, err := pbField(b)
		if err != nil {
			return l, err
		}
		b = rest
		if typ != protowire.BytesType {
			continue
		}
		switch num {
		case 1:
			name = v
		case 2:
			value = v
		}
	}
	k := c.nlabel
	if byPos {
		c.nlabel++
		if k < len(c.labelPos) {
			if p := c.labelPos[k]; p.name != "" && p.name == string(name) && p.value == string(value) {
				return p, nil
			}
		}
	}
	l.name, l.value = c.str(name), c.str(value)
	if l.name == "" || !utf8.ValidString(l.name) {
		return l, fmt.Errorf("invalid label name %q", l.name)
	}
	if !utf8.ValidString(l.value) {
		return l, fmt.Errorf("invalid label value %q", l.value)
	}
	if byPos {
		if k >= len(c.labelPos) {
			c.labelPos = append(c.labelPos, make([]promLabel, k+1-len(c.labelPos))...)
		}
		c.labelPos[k] = l
	}
	return l, nil
}

func (c *promConverter) decodeMetric(m *promMetric, msg []byte) error {
	for len(msg) > 0 {
		num, typ, v, b, rest, err := pbField(msg)
		if err != nil {
			return err
		}
		msg = rest
		switch {
		case num == 1 && typ == protowire.BytesType:
			l, err := c.decodeLabel(b, true)
			if err != nil {
				return err
			}
			m.labels = append(m.labels, l)
		case (num == 2 || num == 5) && typ == protowire.BytesType: // gauge, untyped: value = 1
			if m.value, err = pbDouble(b, 1); err != nil {
				return err
			}
		case num == 3 && typ == protowire.BytesType:
			err = c.decodeCounter(m, b)
		case num == 4 && typ == protowire.BytesType:
			err = c.decodeSummary(m, b)
		case num == 7 && typ == protowire.BytesType:
			m.hasHist = true
			err = c.decodeHistogram(m, b)
		case num == 6 && typ == protowire.VarintType:
			m.timestampMs, m.hasTS = int64(v), true
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// pbDouble returns the double field want of a small message (Gauge,
// Untyped).
func pbDouble(msg []byte, want protowire.Number) (float64, error) {
	var out float64
	for len(msg) > 0 {
		num, typ, v, _, rest, err := pbField(msg)
		if err != nil {
			return 0, err
		}
		msg = rest
		if num == want && typ == protowire.Fixed64Type {
			out = math.Float64frombits(v)
		}
	}
	return out, nil
}

// pbTimestamp decodes a google.protobuf.Timestamp like its AsTime does
// (out-of-range nanos are normalised); valid reports what its IsValid would.
func pbTimestamp(msg []byte) (t time.Time, valid bool, err error) {
	var sec, nsec int64
	for len(msg) > 0 {
		num, typ, v, _, rest, err := pbField(msg)
		if err != nil {
			return time.Time{}, false, err
		}
		msg = rest
		if typ != protowire.VarintType {
			continue
		}
		switch num {
		case 1:
			sec = int64(v)
		case 2:
			nsec = int64(int32(v))
		}
	}
	const minSec, maxSec = -62135596800, 253402300799 // 0001-01-01 .. 9999-12-31, as timestamppb
	valid = sec >= minSec && sec <= maxSec && nsec >= 0 && nsec < 1e9
	return time.Unix(sec, nsec).UTC(), valid, nil
}

// pbCreated decodes a created timestamp as a point's Start (zero when
// invalid or not positive, as promCreated).
func pbCreated(b []byte) (time.Time, error) {
	t, valid, err := pbTimestamp(b)
	if err != nil || !valid || t.Unix() <= 0 {
		return time.Time{}, err
	}
	return t, nil
}

func (c *promConverter) decodeCounter(m *promMetric, msg []byte) error {
	for len(msg) > 0 {
		num, typ, v, b, rest, err := pbField(msg)
		if err != nil {
			return err
		}
		msg = rest
		switch {
		case num == 1 && typ == protowire.Fixed64Type:
			m.value = math.Float64frombits(v)
		case num == 2 && typ == protowire.BytesType:
			if m.exemplar, err = c.decodeExemplar(b, m.exemplar.labels[:0]); err != nil {
				return err
			}
			m.hasExemplar = true
		case num == 3 && typ == protowire.BytesType:
			if m.created, err = pbCreated(b); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *promConverter) decodeExemplar(msg []byte, labels []promLabel) (promExemplarRaw, error) {
	x := promExemplarRaw{labels: labels}
	for len(msg) > 0 {
		num, typ, v, b, rest, err := pbField(msg)
		if err != nil {
			return x, err
		}
		msg = rest
		switch {
		case num == 1 && typ == protowire.BytesType:
			l, err := c.decodeLabel(b, false)
			if err != nil {
				return x, err
			}
			x.labels = append(x.labels, l)
		case num == 2 && typ == protowire.Fixed64Type:
			x.value = math.Float64frombits(v)
		case num == 3 && typ == protowire.BytesType:
			if x.ts, _, err = pbTimestamp(b); err != nil {
				return x, err
			}
			x.hasTS = true
		}
	}
	return x, nil
}

func (c *promConverter) decodeSummary(m *promMetric, msg []byte) error {
	for len(msg) > 0 {
		num, typ, v, b, rest, err := pbField(msg)
		if err != nil {
			return err
		}
		msg = rest
		switch {
		case num == 1 && typ == protowire.VarintType:
			m.count = v
		case num == 2 && typ == protowire.Fixed64Type:
			m.sum = math.Float64frombits(v)
		case num == 3 && typ == protowire.BytesType:
			var q promQuantile
			for len(b) > 0 {
				qn, qt, qv, _, qrest, err := pbField(b)
				if err != nil {
					return err
				}
				b = qrest
				if qt == protowire.Fixed64Type && qn == 1 {
					q.q = math.Float64frombits(qv)
				} else if qt == protowire.Fixed64Type && qn == 2 {
					q.v = math.Float64frombits(qv)
				}
			}
			m.quantiles = append(m.quantiles, q)
		case num == 4 && typ == protowire.BytesType:
			if m.created, err = pbCreated(b); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *promConverter) decodeHistogram(m *promMetric, msg []byte) error {
	for len(msg) > 0 {
		num, typ, v, b, rest, err := pbField(msg)
		if err != nil {
			return err
		}
		msg = rest
		switch num {
		case 1:
			if typ == protowire.VarintType {
				m.count = v
			}
		case 4:
			if typ == protowire.Fixed64Type {
				m.countFloat, m.hasCountFloat = math.Float64frombits(v), true
			}
		case 2:
			if typ == protowire.Fixed64Type {
				m.sum = math.Float64frombits(v)
			}
		case 3:
			if typ == protowire.BytesType {
				err = c.decodeBucket(m, b)
			}
		case 15:
			if typ == protowire.BytesType {
				m.created, err = pbCreated(b)
			}
		case 5:
			if typ == protowire.VarintType {
				m.schema = int32(protowire.DecodeZigZag(v & math.MaxUint32))
			}
		case 6:
			if typ == protowire.Fixed64Type {
				m.zt = math.Float64frombits(v)
			}
		case 7:
			if typ == protowire.VarintType {
				m.zc = v
			}
		case 8:
			if typ == protowire.Fixed64Type {
				m.zcf = math.Float64frombits(v)
			}
		case 9, 12:
			if typ == protowire.BytesType {
				sp, err := pbSpan(b)
				if err != nil {
					return err
				}
				if num == 9 {
					m.negSpans = append(m.negSpans, sp)
				} else {
					m.posSpans = append(m.posSpans, sp)
				}
			}
		case 10:
			m.negDeltas, err = pbSint64s(m.negDeltas, typ, v, b)
		case 13:
			m.posDeltas, err = pbSint64s(m.posDeltas, typ, v, b)
		case 11:
			m.negCounts, err = pbDoubles(m.negCounts, typ, v, b)
		case 14:
			m.posCounts, err = pbDoubles(m.posCounts, typ, v, b)
		case 16:
			if typ == protowire.BytesType {
				var x promExemplarRaw
				if n := len(m.exemplars); n < cap(m.exemplars) {
					x.labels = m.exemplars[:n+1][n].labels[:0]
				}
				if x, err = c.decodeExemplar(b, x.labels); err == nil {
					m.exemplars = append(m.exemplars, x)
				}
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *promConverter) decodeBucket(m *promMetric, msg []byte) error {
	var bk promBucket
	if n := len(m.buckets); n < cap(m.buckets) {
		bk.exemplar.labels = m.buckets[:n+1][n].exemplar.labels[:0]
	}
	for len(msg) > 0 {
		num, typ, v, b, rest, err := pbField(msg)
		if err != nil {
			return err
		}
		msg = rest
		switch {
		case num == 1 && typ == protowire.VarintType:
			bk.cum = v
		case num == 4 && typ == protowire.Fixed64Type:
			bk.cumFloat, bk.hasCumFloat = math.Float64frombits(v), true
		case num == 2 && typ == protowire.Fixed64Type:
			bk.upper = math.Float64frombits(v)
		case num == 3 && typ == protowire.BytesType:
			if bk.exemplar, err = c.decodeExemplar(b, bk.exemplar.labels); err != nil {
				return err
			}
			bk.hasExemplar = true
		}
	}
	m.buckets = append(m.buckets, bk)
	return nil
}

func pbSpan(msg []byte) (histogram.Span, error) {
	var sp histogram.Span
	for len(msg) > 0 {
		num, typ, v, _, rest, err := pbField(msg)
		if err != nil {
			return sp, err
		}
		msg = rest
		if typ != protowire.VarintType {
			continue
		}
		switch num {
		case 1:
			sp.Offset = int32(protowire.DecodeZigZag(v & math.MaxUint32))
		case 2:
			sp.Length = uint32(v)
		}
	}
	return sp, nil
}

// pbSint64s appends a repeated sint64 field, packed or not.
func pbSint64s(dst []int64, typ protowire.Type, v uint64, b []byte) ([]int64, error) {
	switch typ {
	case protowire.VarintType:
		return append(dst, protowire.DecodeZigZag(v)), nil
	case protowire.BytesType:
		for len(b) > 0 {
			x, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return dst, errPromProto
			}
			dst = append(dst, protowire.DecodeZigZag(x))
			b = b[n:]
		}
	}
	return dst, nil
}

// pbDoubles appends a repeated double field, packed or not.
func pbDoubles(dst []float64, typ protowire.Type, v uint64, b []byte) ([]float64, error) {
	switch typ {
	case protowire.Fixed64Type:
		return append(dst, math.Float64frombits(v)), nil
	case protowire.BytesType:
		if len(b)%8 != 0 {
			return dst, errPromProto
		}
		for len(b) > 0 {
			x, _ := protowire.ConsumeFixed64(b)
			dst = append(dst, math.Float64frombits(x))
			b = b[8:]
		}
	}
	return dst, nil
}
