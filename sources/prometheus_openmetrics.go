package sources

import (
	"bytes"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"

	"github.com/sabakiio/sabaki/metric"
)

// A fast path for OpenMetrics 1.0 text. expfmt's OpenMetrics parser checks
// every line against the ABNF grammar with a general parser: measured here
// at about 18 ms per series (37 s for a 2,000-series exposition), far beyond
// any scrape timeout, while OpenMetrics is what non-Go clients (Python,
// Java, Node's prom-client) answer with, exemplars included. This parser
// handles the well-formed expositions those libraries write (TYPE before
// samples; counters, gauges, unknown, summaries, histograms; exemplars;
// _created) directly into promFamily. Anything it does not recognise makes
// it give up (errOMFallback) and the caller hands the body to expfmt,
// which accepts or rejects it with its exact error: the fast path never
// changes what is accepted, only how quickly. A test checks both paths give
// the same series.

var errOMFallback = errors.New("openmetrics: outside the fast path")

// omState is the per-metric bookkeeping the OpenMetrics rules need.
type omState struct {
	hasValue, hasCreated bool
}

type omParser struct {
	c       *promConverter
	out     []metric.Series
	base    string // family name from the TYPE line
	typ     dto.MetricType
	open    bool // a family is being collected
	seen    map[string]bool
	byKey   map[string]int // metric identity (labels without le/quantile) -> index
	states  []omState
	labels  []promLabel // scratch for one line
	ident   []promLabel // scratch: labels without le / quantile
	exLabel []promLabel
	keyBuf  []byte
}

// parseOpenMetricsFast converts an OpenMetrics body and appends the series to
// out; on an error the caller drops whatever it appended past len(out).
func (c *promConverter) parseOpenMetricsFast(out []metric.Series, body []byte) ([]metric.Series, error) {
	p := omParser{c: c, out: out, seen: map[string]bool{}, byKey: map[string]int{}}
	for len(body) > 0 {
		i := bytes.IndexByte(body, '\n')
		if i < 0 {
			return nil, errOMFallback // OpenMetrics ends every line, # EOF included
		}
		line := body[:i]
		body = body[i+1:]
		if string(line) == "# EOF" {
			if len(body) != 0 {
				return nil, errOMFallback
			}
			if err := p.flush(); err != nil {
				return nil, err
			}
			return p.out, nil
		}
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
	return nil, errOMFallback // no # EOF
}

func (p *omParser) flush() error {
	if !p.open {
		return nil
	}
	if p.typ == dto.MetricType_COUNTER {
		for _, st := range p.states {
			if st.hasCreated && !st.hasValue {
				return errOMFallback // a _created without its _total
			}
		}
	}
	f := &p.c.fam
	if p.typ == dto.MetricType_COUNTER {
		f.name = p.base + "_total"
	}
	p.out = p.c.appendFamily(p.out, f)
	p.open = false
	return nil
}

var omTypes = map[string]dto.MetricType{
	"counter": dto.MetricType_COUNTER, "gauge": dto.MetricType_GAUGE, "unknown": dto.MetricType_UNTYPED,
	"summary": dto.MetricType_SUMMARY, "histogram": dto.MetricType_HISTOGRAM,
}

func (p *omParser) meta(line []byte) error {
	rest, ok := bytes.CutPrefix(line, []byte("# "))
	if !ok {
		return errOMFallback
	}
	kind, rest, ok := bytes.Cut(rest, []byte(" "))
	if !ok {
		return errOMFallback
	}
	name, arg, ok := bytes.Cut(rest, []byte(" "))
	if !ok || !omValidName(name) {
		return errOMFallback
	}
	if !p.open || string(name) != p.base {
		if p.seen[string(name)] {
			return errOMFallback // a family split in two
		}
		if err := p.flush(); err != nil {
			return err
		}
		p.start(name)
	} else if len(p.c.fam.metrics) > 0 {
		return errOMFallback // metadata after samples
	}
	f := &p.c.fam
	switch string(kind) {
	case "TYPE":
		t, ok := omTypes[string(arg)]
		if !ok {
			return errOMFallback // gaugehistogram, stateset, info
		}
		p.typ, f.typ = t, t
	case "HELP":
		h, ok := omUnescape(arg, false)
		if !ok {
			return errOMFallback
		}
		f.help = h
	case "UNIT":
		if len(arg) > 0 && !bytes.HasSuffix(name, append([]byte("_"), arg...)) {
			return errOMFallback // OpenMetrics wants the unit as the name's suffix
		}
		f.unit = p.c.str(arg)
	default:
		return errOMFallback
	}
	return nil
}

func (p *omParser) start(name []byte) {
	f := &p.c.fam
	p.base = p.c.str(name)
	p.seen[p.base] = true
	p.open = true
	p.typ = -1
	f.name, f.help, f.unit, f.typ = p.base, "", "", dto.MetricType_UNTYPED
	f.metrics = f.metrics[:0]
	p.states = p.states[:0]
	clear(p.byKey)
}

// omRole is what a sample line is within its family.
type omRole uint8

const (
	omValue omRole = iota
	omCreated
	omQuantile
	omBucket
	omCount
	omSum
)

func (p *omParser) role(name []byte) (omRole, bool) {
	suffix, ok := bytes.CutPrefix(name, []byte(p.base))
	if !ok {
		return 0, false
	}
	s := string(suffix)
	switch p.typ {
	case dto.MetricType_COUNTER:
		switch s {
		case "_total":
			return omValue, true
		case "_created":
			return omCreated, true
		}
	case dto.MetricType_GAUGE, dto.MetricType_UNTYPED:
		return omValue, s == ""
	case dto.MetricType_SUMMARY:
		switch s {
		case "":
			return omQuantile, true
		case "_count":
			return omCount, true
		case "_sum":
			return omSum, true
		case "_created":
			return omCreated, true
		}
	case dto.MetricType_HISTOGRAM:
		switch s {
		case "_bucket":
			return omBucket, true
		case "_count":
			return omCount, true
		case "_sum":
			return omSum, true
		case "_created":
			return omCreated, true
		}
	}
	return 0, false
}

func (p *omParser) sample(line []byte) error {
	if !p.open || p.typ < 0 {
		return errOMFallback // samples without a TYPE line
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
		if p.labels, line, err = p.parseLabels(line, p.labels); err != nil {
			return err
		}
	}
	line, ok = bytes.CutPrefix(line, []byte(" "))
	if !ok {
		return errOMFallback
	}
	valStr, line, more := bytes.Cut(line, []byte(" "))
	if more && len(line) == 0 {
		return errOMFallback // a trailing space, which OpenMetrics does not allow
	}
	var tsStr, exPart []byte
	if len(line) > 0 && line[0] != '#' {
		tsStr, line, more = bytes.Cut(line, []byte(" "))
		if more && len(line) == 0 {
			return errOMFallback
		}
	}
	if len(line) > 0 {
		if exPart, ok = bytes.CutPrefix(line, []byte("# ")); !ok {
			return errOMFallback
		}
	}
	val, ok := omFloat(valStr)
	if !ok {
		return errOMFallback
	}
	var tsMs int64
	hasTS := tsStr != nil
	if hasTS {
		f, ok := omFloat(tsStr)
		if !ok || math.IsNaN(f) || math.IsInf(f, 0) {
			return errOMFallback
		}
		tsMs = int64(math.Round(f * 1000))
	}

	// Split off le / quantile and find the metric this line belongs to.
	special := math.NaN()
	ident := p.labels
	if role == omBucket || role == omQuantile {
		want := "le"
		if role == omQuantile {
			want = "quantile"
		}
		i := slices.IndexFunc(ident, func(l promLabel) bool { return l.name == want })
		if i < 0 {
			return errOMFallback
		}
		v, ok := omFloat([]byte(ident[i].value))
		if !ok || math.IsNaN(v) || (role == omQuantile && (v < 0 || v > 1)) {
			return errOMFallback
		}
		special = v
		p.ident = append(append(p.ident[:0], ident[:i]...), ident[i+1:]...)
		ident = p.ident
	}
	m, st, err := p.metricFor(role, ident)
	if err != nil {
		return err
	}
	if exPart != nil {
		if role != omValue && role != omBucket || p.typ != dto.MetricType_COUNTER && p.typ != dto.MetricType_HISTOGRAM {
			return errOMFallback // exemplars only on counter values and buckets
		}
	}
	var ex promExemplarRaw
	if exPart != nil {
		if ex, err = p.parseExemplar(exPart); err != nil {
			return err
		}
	}
	switch p.typ {
	case dto.MetricType_GAUGE, dto.MetricType_UNTYPED:
		m.value, m.timestampMs, m.hasTS = val, tsMs, hasTS
	case dto.MetricType_COUNTER:
		switch role {
		case omValue:
			if math.IsNaN(val) || val < 0 {
				return errOMFallback
			}
			m.value, m.timestampMs, m.hasTS = val, tsMs, hasTS
			m.exemplar, m.hasExemplar = ex, exPart != nil
			st.hasValue = true
		case omCreated:
			t, ok := omTimestamp(valStr)
			if !ok || hasTS {
				return errOMFallback
			}
			m.created, st.hasCreated = omStart(t), true
		}
	case dto.MetricType_SUMMARY, dto.MetricType_HISTOGRAM:
		if role != omCreated && hasTS {
			m.timestampMs, m.hasTS = tsMs, true
		}
		switch role {
		case omQuantile:
			if !math.IsNaN(val) && val < 0 {
				return errOMFallback
			}
			m.quantiles = append(m.quantiles, promQuantile{special, val})
		case omBucket:
			c, ok := omWhole(val)
			if !ok {
				return errOMFallback
			}
			m.buckets = append(m.buckets, promBucket{cum: c, upper: special, exemplar: ex, hasExemplar: exPart != nil})
		case omCount:
			c, ok := omWhole(val)
			if !ok {
				return errOMFallback
			}
			m.count = c
		case omSum:
			if math.IsNaN(val) || val < 0 {
				return errOMFallback
			}
			m.sum = val
		case omCreated:
			t, ok := omTimestamp(valStr)
			if !ok {
				return errOMFallback
			}
			m.created = omStart(t)
		}
	}
	return nil
}

// metricFor returns the metric a line adds to, creating it as expfmt does.
func (p *omParser) metricFor(role omRole, ident []promLabel) (*promMetric, *omState, error) {
	f := &p.c.fam
	key := p.key(ident)
	i, ok := p.byKey[string(key)]
	fresh := !ok
	switch p.typ {
	case dto.MetricType_GAUGE, dto.MetricType_UNTYPED:
		fresh = true // every line is its own metric
	case dto.MetricType_COUNTER:
		if ok && (role == omValue && p.states[i].hasValue || role == omCreated && p.states[i].hasCreated) {
			fresh = true
		}
	}
	if fresh {
		m := f.next()
		m.labels = append(m.labels, ident...)
		if p.typ == dto.MetricType_SUMMARY || p.typ == dto.MetricType_HISTOGRAM {
			m.hasHist = p.typ == dto.MetricType_HISTOGRAM
		}
		p.states = append(p.states, omState{})
		i = len(f.metrics) - 1
		p.byKey[string(key)] = i
	}
	return &f.metrics[i], &p.states[i], nil
}

// key encodes a label set for byKey, into a buffer the next call reuses
// (a map lookup with string(key) does not allocate).
func (p *omParser) key(ls []promLabel) []byte {
	p.keyBuf = p.keyBuf[:0]
	if !slices.IsSortedFunc(ls, func(a, b promLabel) int { return strings.Compare(a.name, b.name) }) {
		ls = slices.SortedFunc(slices.Values(ls), func(a, b promLabel) int { return strings.Compare(a.name, b.name) })
	}
	for _, l := range ls {
		p.keyBuf = append(p.keyBuf, l.name...)
		p.keyBuf = append(p.keyBuf, 0xff)
		p.keyBuf = append(p.keyBuf, l.value...)
		p.keyBuf = append(p.keyBuf, 0xff)
	}
	return p.keyBuf
}

// parseLabels reads {name="value",...} from the start of b.
func (p *omParser) parseLabels(b []byte, dst []promLabel) ([]promLabel, []byte, error) {
	b = b[1:]
	if len(b) > 0 && b[0] == '}' {
		return dst, b[1:], nil
	}
	for {
		n := 0
		for n < len(b) && b[n] != '=' {
			n++
		}
		name := b[:n]
		if n == len(b) || !omValidLabelName(name) || n+1 >= len(b) || b[n+1] != '"' {
			return nil, nil, errOMFallback
		}
		b = b[n+2:]
		end := -1
		for i := 0; i < len(b); i++ {
			if b[i] == '\\' {
				i++
				continue
			}
			if b[i] == '"' {
				end = i
				break
			}
		}
		if end < 0 {
			return nil, nil, errOMFallback
		}
		var (
			val string
			ok  bool
		)
		if raw := b[:end]; bytes.IndexByte(raw, '\\') < 0 {
			if !utf8.Valid(raw) {
				return nil, nil, errOMFallback
			}
			val = p.c.str(raw) // interned without a copy when seen before
		} else if val, ok = omUnescape(raw, true); !ok || !utf8.ValidString(val) {
			return nil, nil, errOMFallback
		} else {
			val = p.c.internString(val)
		}
		for _, l := range dst {
			if l.name == string(name) {
				return nil, nil, errOMFallback // duplicate label
			}
		}
		dst = append(dst, promLabel{p.c.str(name), val})
		b = b[end+1:]
		if len(b) == 0 {
			return nil, nil, errOMFallback
		}
		switch b[0] {
		case '}':
			return dst, b[1:], nil
		case ',':
			b = b[1:]
			if len(b) == 0 || b[0] == '}' {
				return nil, nil, errOMFallback
			}
		default:
			return nil, nil, errOMFallback
		}
	}
}

func (p *omParser) parseExemplar(b []byte) (promExemplarRaw, error) {
	if len(b) == 0 || b[0] != '{' {
		return promExemplarRaw{}, errOMFallback
	}
	labels, rest, err := p.parseLabels(b, p.exLabel[:0])
	if err != nil {
		return promExemplarRaw{}, err
	}
	runes := 0
	for _, l := range labels {
		runes += utf8.RuneCountInString(l.name) + utf8.RuneCountInString(l.value)
	}
	if runes > 128 {
		return promExemplarRaw{}, errOMFallback
	}
	rest, ok := bytes.CutPrefix(rest, []byte(" "))
	if !ok {
		return promExemplarRaw{}, errOMFallback
	}
	valStr, tsStr, hasTS := bytes.Cut(rest, []byte(" "))
	v, ok := omFloat(valStr)
	if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
		return promExemplarRaw{}, errOMFallback
	}
	x := promExemplarRaw{labels: slices.Clone(labels), value: v}
	if hasTS {
		if x.ts, ok = omTimestamp(tsStr); !ok {
			return promExemplarRaw{}, errOMFallback
		}
		x.hasTS = true
	}
	return x, nil
}

// omFloat parses a plain decimal number or NaN / ±Inf (other spellings the
// grammar allows are left to expfmt).
func omFloat(b []byte) (float64, bool) {
	switch string(b) {
	case "NaN":
		return math.NaN(), true
	case "+Inf", "Inf":
		return math.Inf(1), true
	case "-Inf":
		return math.Inf(-1), true
	case "":
		return 0, false
	}
	for _, ch := range b {
		if !(ch >= '0' && ch <= '9' || ch == '.' || ch == 'e' || ch == 'E' || ch == '+' || ch == '-') {
			return 0, false
		}
	}
	f, err := strconv.ParseFloat(string(b), 64)
	return f, err == nil
}

// omTimestamp parses a timestamp in seconds exactly, as expfmt's exact
// decimal path does: digits with an optional fraction and an optional
// exponent in [-18, 18] (client_golang writes 1.7956435477316258e+09);
// other forms are left to expfmt.
func omTimestamp(b []byte) (time.Time, bool) {
	neg := false
	switch {
	case len(b) > 0 && b[0] == '-':
		neg, b = true, b[1:]
	case len(b) > 0 && b[0] == '+':
		b = b[1:]
	}
	exp := 0
	if i := bytes.IndexAny(b, "eE"); i >= 0 {
		e, err := strconv.Atoi(string(b[i+1:]))
		if err != nil || e < -18 || e > 18 {
			return time.Time{}, false
		}
		exp, b = e, b[:i]
	}
	secPart, fracPart, _ := bytes.Cut(b, []byte("."))
	digits := string(secPart) + string(fracPart)
	if digits == "" {
		return time.Time{}, false
	}
	for _, ch := range []byte(digits) {
		if ch < '0' || ch > '9' {
			return time.Time{}, false
		}
	}
	var sec, frac string
	switch dec := len(secPart) + exp; {
	case dec <= 0:
		sec, frac = "0", strings.Repeat("0", -dec)+digits
	case dec >= len(digits):
		sec = digits + strings.Repeat("0", dec-len(digits))
	default:
		sec, frac = digits[:dec], digits[dec:]
	}
	s, err := strconv.ParseInt(sec, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	if len(frac) > 9 {
		frac = frac[:9]
	}
	frac += strings.Repeat("0", 9-len(frac))
	ns, err := strconv.ParseInt(frac, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	if neg {
		s, ns = -s, -ns
	}
	return time.Unix(s, ns).UTC(), true
}

// omStart is a created timestamp as a point's Start (zero when not
// positive, as promCreated).
func omStart(t time.Time) time.Time {
	if t.Unix() <= 0 {
		return time.Time{}
	}
	return t
}

func omWhole(v float64) (uint64, bool) {
	if math.IsNaN(v) || v < 0 || v >= 1<<63 || v != math.Trunc(v) {
		return 0, false
	}
	return uint64(v), true
}

// omUnescape resolves \\, \" and \n (label values and HELP text). A bare
// double quote is not an OpenMetrics normal-char (the ABNF's escaped-string
// excludes it), so it sends the body to the strict parser.
func omUnescape(b []byte, quoted bool) (string, bool) {
	if bytes.IndexByte(b, '"') >= 0 && bytes.IndexByte(b, '\\') < 0 {
		return "", false
	}
	if bytes.IndexByte(b, '\\') < 0 {
		if quoted && bytes.IndexByte(b, '\n') >= 0 {
			return "", false
		}
		return string(b), true
	}
	return resolveEscapes(b, false)
}

// resolveEscapes resolves the escapes \\, \" and \n that the Prometheus text
// format and OpenMetrics share; any other escape, a trailing backslash, or
// (unless bareQuote) an unescaped double quote fails, and the caller sends
// the body to the strict parser.
func resolveEscapes(b []byte, bareQuote bool) (string, bool) {
	var sb strings.Builder
	for i := 0; i < len(b); i++ {
		ch := b[i]
		if ch == '"' && !bareQuote {
			return "", false
		}
		if ch != '\\' {
			sb.WriteByte(ch)
			continue
		}
		i++
		if i == len(b) {
			return "", false
		}
		switch b[i] {
		case '\\':
			sb.WriteByte('\\')
		case '"':
			sb.WriteByte('"')
		case 'n':
			sb.WriteByte('\n')
		default:
			return "", false
		}
	}
	return sb.String(), true
}

func omValidName(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for i, ch := range b {
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch == '_' || ch == ':' || i > 0 && ch >= '0' && ch <= '9') {
			return false
		}
	}
	return true
}

func omValidLabelName(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for i, ch := range b {
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch == '_' || i > 0 && ch >= '0' && ch <= '9') {
			return false
		}
	}
	return true
}
