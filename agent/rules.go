package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/sabakiio/sabaki/metric"
)

// Rules
//
// The `rules:` list is applied in order to every series, once per series and
// rule set (the result is cached with the series' state, so a rule costs
// nothing per point):
//
//   - replace_pattern: the value of `attribute` (a point attribute, or a
//     resource attribute when the point has none by that key) is rewritten
//     with regexp.ReplaceAllString (RE2; `$1` names a group).
//   - delete_attribute: removes `key` from the point attributes and the
//     resource attributes, when every `where` pair matches (looked up in the
//     point attributes, then the resource).
//   - keep_attributes: keeps only `keys` among the point attributes (resource
//     attributes are untouched); series that become equal merge.
//   - rename_metric: renames a metric; later rules see the new name.
//   - hash_attribute: replaces the value with the first 16 hex digits of
//     SHA-256(salt NUL key NUL value): stable across restarts and agents,
//     unreadable, and still distinct per value (64 bits). Point attribute
//     first, else resource.
//   - max_series: caps the number of series of a metric per window. It is a
//     limit, not a transformation: it applies after all other rules, to the
//     final metric name (a rule naming the metric exactly wins over "*" or
//     another glob; among equals the first wins). When a window already holds
//     `limit` series of that metric, each further series is folded into one
//     series with the same resource and the single attribute
//     otel.metric.overflow=true (as the OTel SDK does), counted in
//     sabaki_pipeline_overflow_series_total and logged once per window and
//     metric.
//
// `metric` filters are globs (path.Match: `*` matches any run of characters,
// dots included); empty or "*" match every metric.

// OverflowAttr is the attribute of the series that absorbs series beyond a
// max_series limit.
const OverflowAttr = "otel.metric.overflow"

type rule interface {
	apply(t *transform)
}

// transform is the mutable identity of a series while rules run.
type transform struct {
	name     string
	resource metric.Attrs
	attrs    metric.Attrs
}

func (t *transform) get(key string) (string, bool) {
	if v, ok := t.attrs.Get(key); ok {
		return v, true
	}
	return t.resource.Get(key)
}

// set replaces the value of key in the point attributes, or in the resource
// when only the resource has it.
func (t *transform) set(key, value string) {
	for _, a := range []*metric.Attrs{&t.attrs, &t.resource} {
		if i := attrIndex(*a, key); i >= 0 {
			(*a)[i].Value = value
			return
		}
	}
}

func attrIndex(a metric.Attrs, key string) int {
	i, ok := slices.BinarySearchFunc(a, key, func(x metric.Attr, k string) int { return strings.Compare(x.Key, k) })
	if !ok {
		return -1
	}
	return i
}

type metricMatcher struct {
	pattern string
	glob    bool
}

func newMetricMatcher(p string) metricMatcher {
	if p == "*" {
		p = ""
	}
	return metricMatcher{pattern: p, glob: strings.ContainsAny(p, `*?[\`)}
}

func (m metricMatcher) match(name string) bool {
	switch {
	case m.pattern == "":
		return true
	case m.glob:
		ok, _ := path.Match(m.pattern, name)
		return ok
	}
	return m.pattern == name
}

type replaceRule struct {
	metric metricMatcher
	key    string
	re     *regexp.Regexp
	repl   string
}

func (r *replaceRule) apply(t *transform) {
	if !r.metric.match(t.name) {
		return
	}
	if v, ok := t.get(r.key); ok {
		if nv := r.re.ReplaceAllString(v, r.repl); nv != v {
			t.set(r.key, nv)
		}
	}
}

type deleteRule struct {
	metric metricMatcher
	key    string
	where  metric.Attrs
}

func (r *deleteRule) apply(t *transform) {
	if !r.metric.match(t.name) {
		return
	}
	for _, w := range r.where {
		if v, ok := t.get(w.Key); !ok || v != w.Value {
			return
		}
	}
	if i := attrIndex(t.attrs, r.key); i >= 0 {
		t.attrs = slices.Delete(t.attrs, i, i+1)
	}
	if i := attrIndex(t.resource, r.key); i >= 0 {
		t.resource = slices.Delete(t.resource, i, i+1)
	}
}

type keepRule struct {
	metric metricMatcher
	keys   map[string]bool
}

func (r *keepRule) apply(t *transform) {
	if !r.metric.match(t.name) {
		return
	}
	t.attrs = slices.DeleteFunc(t.attrs, func(a metric.Attr) bool { return !r.keys[a.Key] })
}

type renameRule struct{ from, to string }

func (r *renameRule) apply(t *transform) {
	if t.name == r.from {
		t.name = r.to
	}
}

type hashRule struct {
	metric metricMatcher
	key    string
	salt   string
}

func (r *hashRule) apply(t *transform) {
	if !r.metric.match(t.name) {
		return
	}
	if v, ok := t.get(r.key); ok {
		t.set(r.key, hashValue(r.salt, r.key, v))
	}
}

// hashValue is the hash_attribute function: the first 16 hex digits of
// SHA-256(salt NUL key NUL value).
func hashValue(salt, key, value string) string {
	h := sha256.New()
	h.Write([]byte(salt))
	h.Write([]byte{0})
	h.Write([]byte(key))
	h.Write([]byte{0})
	h.Write([]byte(value))
	var sum [sha256.Size]byte
	return hex.EncodeToString(h.Sum(sum[:0])[:8])
}

type limitRule struct {
	metric metricMatcher
	limit  int
}

// ruleSet is a compiled rules list plus the pipeline-wide resource; a window
// uses the rule set that was current when it opened, so a reload takes
// effect from the next window on.
type ruleSet struct {
	rules    []rule
	limits   []limitRule
	resource metric.Attrs
	// quantiles choose a window's exemplars.
	quantiles []float64
	// resources interns the resource attributes after the rules: thousands
	// of series share a handful of resources. Used under the pipeline lock.
	resources map[string]metric.Attrs
	strings   map[string]string
	metas     map[metaKey]*seriesMeta
}

// metaKey identifies a seriesMeta: unit, description and an interned
// resource (by its first element).
type metaKey struct {
	unit, desc string
	res        *metric.Attr
	n          int
}

// maxInterned bounds the resource interning table.
const maxInterned = 10000

func compileRules(cfgs []RuleConfig, resource metric.Attrs, quantiles []float64) (*ruleSet, error) {
	rs := &ruleSet{resource: resource.Clone(), quantiles: slices.Clone(quantiles), resources: map[string]metric.Attrs{}, strings: map[string]string{}, metas: map[metaKey]*seriesMeta{}}
	rs.resource.Sort()
	for i := range cfgs {
		c := &cfgs[i]
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("rules[%d]: %w", i, err)
		}
		switch {
		case c.ReplacePattern != nil:
			r := c.ReplacePattern
			re, err := regexp.Compile(r.Pattern)
			if err != nil {
				return nil, fmt.Errorf("rules[%d]: replace_pattern: invalid regular expression %q: %w", i, r.Pattern, err)
			}
			rs.rules = append(rs.rules, &replaceRule{metric: newMetricMatcher(r.Metric), key: r.Attribute, re: re, repl: r.Replacement})
		case c.DeleteAttribute != nil:
			r := c.DeleteAttribute
			rs.rules = append(rs.rules, &deleteRule{metric: newMetricMatcher(r.Metric), key: r.Key, where: metric.NewAttrs(r.Where)})
		case c.KeepAttributes != nil:
			r := c.KeepAttributes
			keys := make(map[string]bool, len(r.Keys))
			for _, k := range r.Keys {
				keys[k] = true
			}
			rs.rules = append(rs.rules, &keepRule{metric: newMetricMatcher(r.Metric), keys: keys})
		case c.RenameMetric != nil:
			rs.rules = append(rs.rules, &renameRule{from: c.RenameMetric.From, to: c.RenameMetric.To})
		case c.HashAttribute != nil:
			r := c.HashAttribute
			rs.rules = append(rs.rules, &hashRule{metric: newMetricMatcher(r.Metric), key: r.Key, salt: r.Salt})
		case c.MaxSeries != nil:
			rs.limits = append(rs.limits, limitRule{metric: newMetricMatcher(c.MaxSeries.Metric), limit: c.MaxSeries.Limit})
		}
	}
	return rs, nil
}

// outSeries is a series' identity after the rules: what a window aggregates
// by. There is one per raw series (kept small: 64 bytes).
type outSeries struct {
	// key is the identity (name, kind, resource, attrs) as a string; windows
	// are maps by it and output is sorted by it. The name is its first
	// nameLen bytes; attrs are substrings of it.
	key   string
	attrs metric.Attrs
	// meta holds what thousands of series share: unit, description,
	// resource.
	meta *seriesMeta
	// limit is the max_series limit of the metric, 0 for none.
	limit   int32
	nameLen uint32
	kind    metric.Kind
	// overflowSeries: this is a metric's otel.metric.overflow series.
	overflowSeries bool
	// rank is the series' index in the closed (gauges) or closedC slice of
	// the window that was compacted last with it (window.go, orderAggs);
	// written by emit, under emitMu.
	rank uint32
}

// seriesMeta is the shared part of output series.
type seriesMeta struct {
	unit, desc string
	resource   metric.Attrs
}

func (o *outSeries) name() string { return o.key[:o.nameLen] }

// meta returns the shared meta of (unit, desc, resource), resource being
// interned. Used under the pipeline lock.
func (rs *ruleSet) meta(unit, desc string, resource metric.Attrs) *seriesMeta {
	k := metaKey{unit: unit, desc: desc, n: len(resource)}
	if len(resource) > 0 {
		k.res = &resource[0]
	}
	if m, ok := rs.metas[k]; ok {
		return m
	}
	m := &seriesMeta{unit: rs.internString(unit), desc: rs.internString(desc), resource: resource}
	if len(rs.metas) < maxInterned {
		k.unit, k.desc = m.unit, m.desc
		rs.metas[k] = m
	}
	return m
}

// apply runs the rules on a series as a source produced it.
func (rs *ruleSet) apply(s *metric.Series) *outSeries {
	t := transform{name: s.Name}
	// The series' own resource attributes win over the agent's resource.
	t.resource = make(metric.Attrs, 0, len(s.Resource)+len(rs.resource))
	t.resource = append(t.resource, rs.resource...)
	t.resource = append(t.resource, s.Resource...)
	t.resource.Sort() // stable: on duplicate keys the later (the series') wins
	t.attrs = s.Attrs.Clone()
	for _, r := range rs.rules {
		r.apply(&t)
	}
	t.resource = rs.intern(t.resource)
	o := &outSeries{kind: s.Kind, meta: rs.meta(s.Unit, s.Description, t.resource)}
	// The name and the point attributes are re-sliced out of the key, one
	// allocation for the whole identity: the pipeline keeps nothing that
	// points into the source's batch.
	o.key, o.nameLen, o.attrs = identity(t.name, s.Kind, t.resource, t.attrs)
	o.limit = int32(min(rs.limitFor(o.name()), math.MaxInt32))
	return o
}

// identity encodes a series identity (see appendIdentity) and returns the
// name and attributes as substrings of the encoding.
func identity(name string, kind metric.Kind, resource, attrs metric.Attrs) (string, uint32, metric.Attrs) {
	buf := appendIdentity(nil, name, kind, resource, attrs)
	key := string(buf)
	out := make(metric.Attrs, len(attrs))
	// The point attributes are the tail of the key: k 1 v 2 ...
	off := len(key)
	for i := len(attrs) - 1; i >= 0; i-- {
		off -= len(attrs[i].Value) + 1
		v := key[off : off+len(attrs[i].Value)]
		off -= len(attrs[i].Key) + 1
		out[i] = metric.Attr{Key: key[off : off+len(attrs[i].Key)], Value: v}
	}
	return key, uint32(len(name)), out
}

// intern returns the shared copy of a resource (copied out of the batch the
// first time it is seen): thousands of series share a handful of resources.
// Used under the pipeline lock.
func (rs *ruleSet) intern(r metric.Attrs) metric.Attrs {
	enc := appendAttrs(nil, r)
	if c, ok := rs.resources[string(enc)]; ok {
		return c
	}
	c := make(metric.Attrs, len(r))
	for i, kv := range r {
		c[i] = metric.Attr{Key: strings.Clone(kv.Key), Value: strings.Clone(kv.Value)}
	}
	if len(rs.resources) < maxInterned {
		rs.resources[string(enc)] = c
	}
	return c
}

// internString shares units and descriptions across series.
func (rs *ruleSet) internString(v string) string {
	if v == "" {
		return ""
	}
	if c, ok := rs.strings[v]; ok {
		return c
	}
	c := strings.Clone(v)
	if len(rs.strings) < maxInterned {
		rs.strings[c] = c
	}
	return c
}

func (rs *ruleSet) limitFor(name string) int {
	glob := 0
	for _, l := range rs.limits {
		if !l.metric.match(name) {
			continue
		}
		if l.metric.pattern == name {
			return l.limit
		}
		if glob == 0 {
			glob = l.limit
		}
	}
	return glob
}

// overflow returns the series that absorbs o's metric beyond its limit.
func (o *outSeries) overflow() *outSeries {
	v := &outSeries{meta: o.meta, kind: o.kind, overflowSeries: true}
	v.key, v.nameLen, v.attrs = identity(o.name(), o.kind, o.meta.resource, metric.Attrs{{Key: OverflowAttr, Value: "true"}})
	return v
}

// appendIdentity encodes a series identity. The separators are bytes that
// cannot be confused with each other, so distinct identities never collide.
func appendIdentity(dst []byte, name string, kind metric.Kind, resource, attrs metric.Attrs) []byte {
	dst = append(dst, name...)
	dst = append(dst, 0, byte(kind), 0)
	dst = appendAttrs(dst, resource)
	dst = append(dst, 0)
	return appendAttrs(dst, attrs)
}

func appendAttrs(dst []byte, a metric.Attrs) []byte {
	for _, kv := range a {
		dst = append(dst, kv.Key...)
		dst = append(dst, 1)
		dst = append(dst, kv.Value...)
		dst = append(dst, 2)
	}
	return dst
}
