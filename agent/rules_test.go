package agent

import (
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

func TestRules(t *testing.T) {
	route := func(r string) metric.Attrs { return attrsOf("http.route", r, "user.id", "42", "tenant", "acme") }
	for _, tc := range []struct {
		name         string
		rules        []RuleConfig
		in           metric.Series
		wantName     string
		wantAttrs    metric.Attrs
		wantResource metric.Attrs
	}{
		{
			name: "replace_pattern: Next.js _rsc query",
			rules: []RuleConfig{{ReplacePattern: &ReplacePatternRule{
				Attribute: "http.route", Pattern: "_rsc=[a-z0-9]{5}", Replacement: "_rsc=*****"}}},
			in:        metric.Series{Name: "m", Attrs: route("/posts/[id]?_rsc=1x9zq")},
			wantName:  "m",
			wantAttrs: route("/posts/[id]?_rsc=*****"),
		},
		{
			name: "replace_pattern: groups and metric filter",
			rules: []RuleConfig{
				{ReplacePattern: &ReplacePatternRule{Attribute: "http.route", Pattern: `^/users/(\d+)$`, Replacement: "/users/:id", Metric: "http.*"}},
				{ReplacePattern: &ReplacePatternRule{Attribute: "tenant", Pattern: ".*", Replacement: "x", Metric: "other"}},
			},
			in:        metric.Series{Name: "http.server.request.duration", Attrs: route("/users/123")},
			wantName:  "http.server.request.duration",
			wantAttrs: route("/users/:id"),
		},
		{
			name:      "delete_attribute",
			rules:     []RuleConfig{{DeleteAttribute: &DeleteAttributeRule{Key: "user.id"}}},
			in:        metric.Series{Name: "m", Attrs: route("/")},
			wantName:  "m",
			wantAttrs: attrsOf("http.route", "/", "tenant", "acme"),
		},
		{
			name: "delete_attribute with where (no match keeps it)",
			rules: []RuleConfig{{DeleteAttribute: &DeleteAttributeRule{Key: "user.id",
				Where: map[string]string{"tenant": "internal"}}}},
			in:        metric.Series{Name: "m", Attrs: route("/")},
			wantName:  "m",
			wantAttrs: route("/"),
		},
		{
			name: "delete_attribute with where on a resource attribute, deleting from the resource",
			rules: []RuleConfig{{DeleteAttribute: &DeleteAttributeRule{Key: "host.id",
				Where: map[string]string{"cloud.platform": "gcp_cloud_run"}}}},
			in: metric.Series{Name: "m", Attrs: attrsOf("a", "1"),
				Resource: attrsOf("host.id", "abc", "cloud.platform", "gcp_cloud_run")},
			wantName:     "m",
			wantAttrs:    attrsOf("a", "1"),
			wantResource: attrsOf("cloud.platform", "gcp_cloud_run"),
		},
		{
			name:      "keep_attributes on point attributes only",
			rules:     []RuleConfig{{KeepAttributes: &KeepAttributesRule{Metric: "m", Keys: []string{"http.route", "tenant"}}}},
			in:        metric.Series{Name: "m", Attrs: route("/"), Resource: attrsOf("service.name", "s")},
			wantName:  "m",
			wantAttrs: attrsOf("http.route", "/", "tenant", "acme"), wantResource: attrsOf("service.name", "s"),
		},
		{
			name:      "keep_attributes for another metric does nothing",
			rules:     []RuleConfig{{KeepAttributes: &KeepAttributesRule{Metric: "other", Keys: []string{"x"}}}},
			in:        metric.Series{Name: "m", Attrs: route("/")},
			wantName:  "m",
			wantAttrs: route("/"),
		},
		{
			name: "rename_metric, later rules see the new name",
			rules: []RuleConfig{
				{RenameMetric: &RenameMetricRule{From: "old", To: "new"}},
				{DeleteAttribute: &DeleteAttributeRule{Key: "user.id", Metric: "new"}},
			},
			in:        metric.Series{Name: "old", Attrs: route("/")},
			wantName:  "new",
			wantAttrs: attrsOf("http.route", "/", "tenant", "acme"),
		},
		{
			name:      "hash_attribute",
			rules:     []RuleConfig{{HashAttribute: &HashAttributeRule{Key: "user.id"}}},
			in:        metric.Series{Name: "m", Attrs: route("/")},
			wantName:  "m",
			wantAttrs: attrsOf("http.route", "/", "tenant", "acme", "user.id", hashValue("", "user.id", "42")),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs, err := compileRules(tc.rules, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			tc.in.Kind = metric.Counter
			orig := tc.in.Attrs.Clone()
			out := rs.apply(&tc.in)
			if out.name() != tc.wantName || !out.attrs.Equal(tc.wantAttrs) {
				t.Errorf("got %s %v, want %s %v", out.name(), out.attrs, tc.wantName, tc.wantAttrs)
			}
			if tc.wantResource != nil && !out.meta.resource.Equal(tc.wantResource) {
				t.Errorf("resource %v, want %v", out.meta.resource, tc.wantResource)
			}
			if !tc.in.Attrs.Equal(orig) {
				t.Errorf("rules modified the caller's attributes: %v", tc.in.Attrs)
			}
		})
	}
}

func TestHashValue(t *testing.T) {
	a := hashValue("", "user.id", "42")
	if len(a) != 16 || strings.Trim(a, "0123456789abcdef") != "" {
		t.Errorf("hash %q is not 16 hex digits", a)
	}
	if a != hashValue("", "user.id", "42") || a == hashValue("", "user.id", "43") || a == hashValue("salt", "user.id", "42") {
		t.Error("hash is not stable, or ignores the value or the salt")
	}
	// Pinned: the hash must stay the same across releases, or stored series split.
	// sha256("\x00user.id\x0042")[:8] in hex.
	if a != "ef8b63f324da41bc" {
		t.Errorf("hash of 42 = %s, want ef8b63f324da41bc", a)
	}
}

// The Next.js example end to end: routes that differ only by the _rsc
// cache-busting token become one series.
func TestNextJSRoutesFoldIntoOneSeries(t *testing.T) {
	rules := []RuleConfig{{ReplacePattern: &ReplacePatternRule{Attribute: "http.route", Pattern: "_rsc=[a-z0-9]{5}", Replacement: "_rsc=*****"}}}
	h := newHarness(t, PipelineConfig{Rules: rules})
	for _, tok := range []string{"abcde", "12345", "zz9zz"} {
		h.consume(metric.Series{Name: "http.server.request.duration", Kind: metric.Histogram, Temporality: metric.Delta,
			Attrs: attrsOf("http.route", "/feed?_rsc="+tok), Points: []metric.Point{hpt(time.Second, newHist(0.1))}})
	}
	h.at(2 * time.Minute)
	w := h.take()[0]
	if len(w.Series) != 1 {
		t.Fatalf("%d series, want 1: %+v", len(w.Series), w.Series)
	}
	if v, _ := w.Series[0].Attrs.Get("http.route"); v != "/feed?_rsc=*****" || w.Series[0].Hist.Count() != 3 {
		t.Errorf("route %q count %d", v, w.Series[0].Hist.Count())
	}
}

func TestMaxSeriesOverflow(t *testing.T) {
	rules := []RuleConfig{
		{MaxSeries: &MaxSeriesRule{Metric: "*", Limit: 100}},
		{MaxSeries: &MaxSeriesRule{Metric: "req", Limit: 2}},
	}
	h := newHarness(t, PipelineConfig{Rules: rules, Resource: attrsOf("service.name", "s")})
	for i := range 5 {
		h.consume(metric.Series{Name: "req", Kind: metric.Counter, Temporality: metric.Delta,
			Attrs: attrsOf("user", string(rune('a'+i))), Points: []metric.Point{pt(time.Second, float64(i+1))}})
		h.consume(metric.Series{Name: "other", Kind: metric.Counter, Temporality: metric.Delta,
			Attrs: attrsOf("user", string(rune('a'+i))), Points: []metric.Point{pt(time.Second, 1)}})
	}
	// Known series keep their own aggregate in the same window.
	h.consume(metric.Series{Name: "req", Kind: metric.Counter, Temporality: metric.Delta,
		Attrs: attrsOf("user", "a"), Points: []metric.Point{pt(2*time.Second, 10)}})
	h.at(2 * time.Minute)
	w := h.take()[0]
	if a := find(w, "req", "user", "a"); a == nil || a.Sum != 11 {
		t.Errorf("series a = %+v", a)
	}
	if a := find(w, "req", "user", "b"); a == nil || a.Sum != 2 {
		t.Errorf("series b = %+v", a)
	}
	ov := find(w, "req", OverflowAttr, "true")
	if ov == nil || ov.Sum != 3+4+5 {
		t.Fatalf("overflow series = %+v", ov)
	}
	if v, _ := ov.Resource.Get("service.name"); v != "s" {
		t.Errorf("overflow series lost its resource: %v", ov.Resource)
	}
	n := 0
	for _, a := range w.Series {
		if a.Name == "other" {
			n++
		}
	}
	if n != 5 {
		t.Errorf("other: %d series, want 5 (limit 100)", n)
	}
	if got := metricValue(h.p.m.overflow); got != 3 {
		t.Errorf("overflow_series_total = %v, want 3", got)
	}
	if c := strings.Count(h.logs.String(), "max_series limit reached"); c != 1 {
		t.Errorf("overflow logged %d times, want once per window and metric", c)
	}
	// A new window starts counting again and logs again.
	h.consume(metric.Series{Name: "req", Kind: metric.Counter, Temporality: metric.Delta,
		Attrs: attrsOf("user", "e"), Points: []metric.Point{pt(2*time.Minute+time.Second, 1)}})
	h.at(4 * time.Minute)
	if a := find(h.take()[0], "req", "user", "e"); a == nil {
		t.Error("series e folded in a fresh window")
	}
}

func decodeRule(t *testing.T, src string) (RuleConfig, config.Problems) {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatal(err)
	}
	r := DefaultRuleConfig()
	return r, config.Decode(&n, "rules[0]", &r)
}

func TestRuleConfigDecode(t *testing.T) {
	for _, tc := range []struct {
		src  string
		want string // substring of the problem; empty: valid
	}{
		{`replace_pattern: {attribute: http.route, pattern: "_rsc=[a-z0-9]{5}", replacement: "_rsc=*****"}`, ""},
		{`delete_attribute: {key: enduser.id, where: {tenant: internal}}`, ""},
		{`keep_attributes: {metric: http.server.request.duration, keys: [http.route, http.request.method, tenant]}`, ""},
		{`rename_metric: {from: a, to: b}`, ""},
		{`hash_attribute: {key: user.id}`, ""},
		{`max_series: {metric: "*", limit: 5000}`, ""},
		{`replace_pattern: {attribute: a, pattern: "_rsc=[a-z", replacement: x}`, `invalid regular expression "_rsc=[a-z"`},
		{`max_series: {metric: "*", limit: 0}`, "rules[0].max_series.limit: must be at least 1"},
		{`{rename_metric: {from: a, to: b}, hash_attribute: {key: k}}`, "exactly one"},
		{`{}`, "exactly one"},
		{`delete_attribute: {kee: x}`, `did you mean "key"`},
		{`keep_attributes: {keys: [a]}`, "keep_attributes.metric: must not be empty"},
	} {
		_, ps := decodeRule(t, tc.src)
		got := ""
		if len(ps) > 0 {
			got = ps.Error()
		}
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s:\n got %q\nwant %q", tc.src, got, tc.want)
		}
	}
}

func TestSectionDefaultsAndValidate(t *testing.T) {
	a := DefaultAgentConfig()
	if a.Window.D() != time.Minute || a.Lateness.D() != 5*time.Minute || a.DataDir != "./data" ||
		a.AdminListen != "127.0.0.1:9469" || a.ShutdownTimeout.D() != 30*time.Second || a.Validate() != nil {
		t.Errorf("agent defaults = %+v", a)
	}
	a.Window = config.Duration(500 * time.Millisecond)
	if err := a.Validate(); err == nil || !strings.Contains(err.Error(), "window") {
		t.Errorf("window 500ms: %v", err)
	}
	r := DefaultResourceConfig()
	if len(r.Detect) != 2 || r.Validate() != nil {
		t.Errorf("resource defaults = %+v", r)
	}
	r.Detect = []string{"aws"}
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "detect[0]") {
		t.Errorf("unknown detector: %v", err)
	}
	h := DefaultHistogramConfig()
	if h.MaxSize != 160 || h.MaxScale != 20 || h.Validate() != nil {
		t.Errorf("histogram defaults = %+v", h)
	}
	h.MaxScale = 21
	if h.Validate() == nil {
		t.Error("max_scale 21 accepted")
	}
}
