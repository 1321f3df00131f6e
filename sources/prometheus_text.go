package sources

import (
	"bytes"
	"math"
	"slices"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"

	"github.com/sabakiio/sabaki/metric"
)

// A fast path for the classic Prometheus text format (0.0.4), which is what
// most exporters answer when they speak no protobuf. expfmt's TextParser
// allocates a client_model message per family, metric, label pair and
// bucket and a pointer per optional scalar (about 62 allocations and
// 8.6 µs per series measured here); this parser converts the lines
// straight into promFamily, as the OpenMetrics fast path does.
//
// It accepts only the regular shape client libraries write: "# HELP name
// text" and "# TYPE name type" (lowercase counter, gauge, untyped, summary
// or histogram) before a family's samples, each family in one group,
// single spaces, "name{label="value",...} value [timestamp_ms]", every line
// ending in a newline. Anything else (blank or other comment lines, tabs,
// trailing commas, quoted UTF-8 names, a family split in two, fractional
// bucket counts, ...) makes it give up with errOMFallback and the caller
// hands the body to expfmt, which accepts or rejects it with its exact
// error: the fast path never changes what is accepted, only how quickly.
// FuzzText checks that against expfmt.

type textParser struct {
	c    *promConverter
	lp   omParser // label parsing and interning shared with OpenMetrics
	out  []metric.Series
	base string
	typ  dto.MetricType
	open bool
	// hasHelp and hasType say which metadata lines the open family had,
	// samples whether it had samples.
	hasHelp, hasType, samples bool
	seen                      map[string]dto.MetricType // families so far and their types
	byKey                     map[string]int            // summaries and histograms: labels without le/quantile -> metric index
	labels, ident             []promLabel               // scratch for one line
}

// parseTextFast converts a text-format body and appends the series to out;
// on an error (errOMFallback) the caller drops whatever it appended past
// len(out).
func (c *promConverter) parseTextFast(out []metric.Series, body []byte) ([]metric.Series, error) {
	if len(body) > 0 && body[len(body)-1] != '\n' {
		return nil, errOMFallback // expfmt rejects a last line without its newline
	}
	p := textParser{c: c, lp: omParser{c: c}, out: out, seen: map[string]dto.MetricType{}, byKey: map[string]int{}}
	for len(body) > 0 {
		i := bytes.IndexByte(body, '\n')
		line := body[:i]
		body = body[i+1:]
		var err error
		if len(line) > 0 && line[0] == '#' {
			err = p.meta(line)
		} else {
			err = p.sample(line)
		}
		if err != nil {
			return nil, err
		}
	}
	p.flush()
	return p.out, nil
}

func (p *textParser) flush() {
	if p.open {
		p.out = p.c.appendFamily(p.out, &p.c.fam)
		p.open = false
	}
}

var textTypes = map[string]dto.MetricType{
	"counter": dto.MetricType_COUNTER, "gauge": dto.MetricType_GAUGE, "untyped": dto.MetricType_UNTYPED,
	"summary": dto.MetricType_SUMMARY, "histogram": dto.MetricType_HISTOGRAM,
}

func (p *textParser) meta(line []byte) error {
	rest, ok := bytes.CutPrefix(line, []byte("# "))
	if !ok {
		return errOMFallback
	}
	kind, rest, ok := bytes.Cut(rest, []byte(" "))
	if !ok || string(kind) != "HELP" && string(kind) != "TYPE" {
		return errOMFallback // other comments, which expfmt ignores
	}
	name, arg, ok := bytes.Cut(rest, []byte(" "))
	if !ok || len(arg) == 0 || arg[0] == ' ' || arg[0] == '\t' || !omValidName(name) {
		return errOMFallback
	}
	if !p.open || string(name) != p.base {
		if _, ok := p.seen[string(name)]; ok || p.partOfSeen(string(name)) {
			return errOMFallback // a family split in two
		}
		p.flush()
		p.start(name)
	} else if p.samples {
		return errOMFallback // metadata after samples
	}
	f := &p.c.fam
	if string(kind) == "TYPE" {
		t, ok := textTypes[string(arg)]
		if !ok || p.hasType {
			return errOMFallback
		}
		p.typ, f.typ, p.hasType = t, t, true
		p.seen[p.base] = t
		return nil
	}
	if p.hasHelp {
		return errOMFallback
	}
	h, ok := textUnescapeHelp(arg)
	if !ok {
		return errOMFallback
	}
	f.help, p.hasHelp = p.c.internString(h), true
	return nil
}

func (p *textParser) start(name []byte) {
	f := &p.c.fam
	p.base = p.c.str(name)
	p.seen[p.base] = dto.MetricType_UNTYPED
	p.open, p.hasHelp, p.hasType, p.samples = true, false, false, false
	p.typ = dto.MetricType_UNTYPED
	f.name, f.help, f.unit, f.typ = p.base, "", "", dto.MetricType_UNTYPED
	f.metrics = f.metrics[:0]
	clear(p.byKey)
}

// partOfSeen reports whether expfmt would read name as the _count or _sum
// (or a histogram's _bucket) of a summary or histogram family seen before,
// and so put the line into that family.
func (p *textParser) partOfSeen(name string) bool {
	for _, suf := range [...]string{"_count", "_sum", "_bucket"} {
		base, ok := strings.CutSuffix(name, suf)
		if !ok || base == "" {
			continue
		}
		switch p.seen[base] {
		case dto.MetricType_HISTOGRAM:
			return true
		case dto.MetricType_SUMMARY:
			return suf != "_bucket"
		}
	}
	return false
}

// textUnescapeHelp resolves \\, \n and \" in HELP text as expfmt does;
// another escape (which expfmt rejects) sends the body to expfmt.
func textUnescapeHelp(b []byte) (string, bool) {
	if bytes.IndexByte(b, '\\') < 0 {
		return string(b), true
	}
	return resolveEscapes(b, true)
}

func (p *textParser) role(name []byte) (omRole, bool) {
	suffix, ok := bytes.CutPrefix(name, []byte(p.base))
	if !ok {
		return 0, false
	}
	if _, ok := p.seen[string(name)]; ok && len(suffix) > 0 {
		return 0, false // a family of that full name exists: expfmt would pick it
	}
	s := string(suffix)
	switch p.typ {
	case dto.MetricType_COUNTER, dto.MetricType_GAUGE, dto.MetricType_UNTYPED:
		return omValue, s == ""
	case dto.MetricType_SUMMARY:
		switch s {
		case "":
			return omQuantile, true
		case "_count":
			return omCount, true
		case "_sum":
			return omSum, true
		}
	case dto.MetricType_HISTOGRAM:
		switch s {
		case "_bucket":
			return omBucket, true
		case "_count":
			return omCount, true
		case "_sum":
			return omSum, true
		}
	}
	return 0, false
}

func (p *textParser) sample(line []byte) error {
	if !p.open {
		return errOMFallback // a sample without HELP or TYPE: an untyped family of its own
	}
	n := 0
	for n < len(line) && line[n] != '{' && line[n] != ' ' {
		n++
	}
	name := line[:n]
	if !omValidName(name) {
		return errOMFallback
	}
	role, ok := p.role(name)
	if !ok {
		return errOMFallback
	}
	line = line[n:]
	p.labels = p.labels[:0]
	var err error
	if len(line) > 0 && line[0] == '{' {
		if p.labels, line, err = p.lp.parseLabels(line, p.labels); err != nil {
			return err
		}
	}
	line, ok = bytes.CutPrefix(line, []byte(" "))
	if !ok {
		return errOMFallback
	}
	valStr, tsStr, hasTS := bytes.Cut(line, []byte(" "))
	val, ok := omFloat(valStr)
	if !ok {
		return errOMFallback
	}
	var tsMs int64
	if hasTS {
		if tsMs, ok = textTimestamp(tsStr); !ok {
			return errOMFallback
		}
	}

	// Split off le / quantile and find the metric this line belongs to.
	special := math.NaN()
	ident := p.labels
	for _, l := range ident {
		if l.name == "__name__" {
			return errOMFallback // reserved: expfmt rejects it
		}
	}
	if p.typ == dto.MetricType_SUMMARY || p.typ == dto.MetricType_HISTOGRAM {
		want := "le"
		if p.typ == dto.MetricType_SUMMARY {
			want = "quantile"
		}
		i := slices.IndexFunc(ident, func(l promLabel) bool { return l.name == want })
		switch {
		case (role == omBucket || role == omQuantile) != (i >= 0):
			return errOMFallback // a bucket without le, or le on _sum / _count
		case i >= 0:
			v, ok := omFloat([]byte(ident[i].value))
			if !ok || math.IsNaN(v) {
				return errOMFallback
			}
			special = v
			p.ident = append(append(p.ident[:0], ident[:i]...), ident[i+1:]...)
			ident = p.ident
		}
	}
	m := p.metricFor(ident)
	p.samples = true
	switch p.typ {
	case dto.MetricType_GAUGE, dto.MetricType_UNTYPED, dto.MetricType_COUNTER:
		// A line is a metric of its own: convert it now rather than
		// holding the family (~500 B a metric) until its end.
		m.value, m.timestampMs, m.hasTS = val, tsMs, hasTS
		p.out = p.c.appendFamily(p.out, &p.c.fam)
		p.c.fam.metrics = p.c.fam.metrics[:0]
		return nil
	}
	if hasTS {
		m.timestampMs, m.hasTS = tsMs, true
	}
	switch role {
	case omQuantile:
		m.quantiles = append(m.quantiles, promQuantile{special, val})
	case omBucket:
		c, ok := omWhole(val)
		if !ok {
			return errOMFallback // expfmt keeps fractional counts as floats
		}
		m.buckets = append(m.buckets, promBucket{cum: c, upper: special})
	case omCount:
		c, ok := omWhole(val)
		if !ok {
			return errOMFallback
		}
		m.count = c
	case omSum:
		m.sum = val
	}
	return nil
}

// metricFor returns the metric a line adds to, as expfmt's TextParser
// groups them: every counter, gauge and untyped line is a metric of its
// own; summary and histogram lines with the same labels (le and quantile
// aside) are one metric, labelled as its first line.
func (p *textParser) metricFor(ident []promLabel) *promMetric {
	f := &p.c.fam
	switch p.typ {
	case dto.MetricType_SUMMARY, dto.MetricType_HISTOGRAM:
	default:
		m := f.next()
		m.labels = append(m.labels, ident...)
		return m
	}
	key := p.lp.key(ident)
	if i, ok := p.byKey[string(key)]; ok {
		return &f.metrics[i]
	}
	m := f.next()
	m.labels = append(m.labels, ident...)
	m.hasHist = p.typ == dto.MetricType_HISTOGRAM
	p.byKey[string(key)] = len(f.metrics) - 1
	return m
}

// textTimestamp parses a timestamp in milliseconds: an optional minus and
// decimal digits (a plus sign and anything else go to expfmt).
func textTimestamp(b []byte) (int64, bool) {
	digits := b
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 {
		return 0, false
	}
	for _, ch := range digits {
		if ch < '0' || ch > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	return v, err == nil
}
