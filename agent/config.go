package agent

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"regexp/syntax"
	"time"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/internal/config"
)

// AgentConfig is the `agent:` section.
type AgentConfig struct {
	// Window is the aggregation window; windows are aligned to the Unix
	// epoch (a 60s window starts on the minute).
	Window config.Duration `yaml:"window"`
	// Lateness is how long after a window closed a late point still updates
	// it (the window is then re-emitted with a higher Revision).
	Lateness config.Duration `yaml:"lateness"`
	// DataDir holds the store and the exporters' outboxes. The loader lets
	// SABAKI_DATA_DIR override it.
	DataDir string `yaml:"data_dir"`
	// AdminListen is the admin HTTP address (/metrics, /healthz, /api/v1).
	AdminListen string `yaml:"admin_listen"`
	// ShutdownTimeout bounds the flush and drain on SIGTERM.
	ShutdownTimeout config.Duration `yaml:"shutdown_timeout"`
	// MaxRawSeries bounds the raw series (before rules) the pipeline keeps
	// state for (PipelineConfig.MaxRawSeries): beyond it, points of new
	// cumulative series are dropped (reason="max_series") and new gauge and
	// delta series are aggregated without keeping state. It bounds the
	// pipeline's memory (about 700 bytes per cumulative series).
	MaxRawSeries int `yaml:"max_raw_series"`
	// MemoryLimit, when not 0, is a soft limit on the memory of the Go
	// runtime (runtime/debug.SetMemoryLimit, what GOMEMLIMIT sets; that
	// variable wins when both are set): nearing it, the garbage collector
	// runs more often, trading CPU for a lower peak. Without it the heap
	// may grow to twice what is live, and what is live peaks while a
	// window closes. It is soft: live data above it is not refused (the
	// collector then limits itself to about half the CPU). 0, the default,
	// keeps the runtime's default (no limit).
	MemoryLimit config.Bytes `yaml:"memory_limit"`
}

// minMemoryLimit is the smallest agent.memory_limit accepted: below it the
// collector would run nearly all the time even for a few series.
const minMemoryLimit = 32 << 20

// maxRawSeriesLimit is the largest agent.max_raw_series accepted: beyond
// it the pipeline's per-series state alone would need tens of GB.
const maxRawSeriesLimit = 100_000_000

// DefaultAgentConfig returns the defaults of the `agent:` section.
func DefaultAgentConfig() AgentConfig {
	return AgentConfig{
		Window:          config.Duration(60 * time.Second),
		Lateness:        config.Duration(5 * time.Minute),
		DataDir:         "./data",
		AdminListen:     "127.0.0.1:9469",
		ShutdownTimeout: config.Duration(30 * time.Second),
		MaxRawSeries:    1_000_000,
	}
}

// Validate checks the section.
func (c *AgentConfig) Validate() error {
	var errs []error
	if c.Window.D() < time.Second {
		errs = append(errs, config.Field("window", "must be at least 1s, got %s", c.Window))
	} else if c.Window.D()%time.Second != 0 {
		errs = append(errs, config.Field("window", "must be a whole number of seconds, got %s", c.Window))
	}
	if c.Lateness.D() < 0 {
		errs = append(errs, config.Field("lateness", "must not be negative"))
	}
	if c.DataDir == "" {
		errs = append(errs, config.Field("data_dir", "must not be empty"))
	}
	if c.ShutdownTimeout.D() <= 0 {
		errs = append(errs, config.Field("shutdown_timeout", "must be positive"))
	}
	if c.MaxRawSeries < 1 || c.MaxRawSeries > maxRawSeriesLimit {
		errs = append(errs, config.Field("max_raw_series", "must be between 1 and %d, got %d", maxRawSeriesLimit, c.MaxRawSeries))
	}
	if c.MemoryLimit != 0 && c.MemoryLimit < minMemoryLimit {
		errs = append(errs, config.Field("memory_limit", "must be 0 (no limit) or at least 32MiB, got %d bytes", int64(c.MemoryLimit)))
	}
	return errors.Join(errs...)
}

// ResourceConfig is the `resource:` section: attributes added to every
// series that does not carry them itself.
type ResourceConfig struct {
	// Detect lists detectors run at start, in order: "env" (Cloud Run and
	// OTEL_* variables) and "gcp" (the metadata server). Later detectors and
	// static Attributes override earlier ones.
	Detect []string `yaml:"detect"`
	// Attributes are static resource attributes; they win over detection.
	Attributes map[string]string `yaml:"attributes"`
}

// DefaultResourceConfig returns the defaults of the `resource:` section.
func DefaultResourceConfig() ResourceConfig {
	return ResourceConfig{Detect: []string{"env", "gcp"}}
}

// Validate checks the section.
func (c *ResourceConfig) Validate() error {
	var errs []error
	for i, d := range c.Detect {
		if d != "env" && d != "gcp" {
			errs = append(errs, config.Field(fmt.Sprintf("detect[%d]", i), "unknown detector %q (known: env, gcp)", d))
		}
	}
	for k := range c.Attributes {
		if k == "" {
			errs = append(errs, config.Field("attributes", "attribute key must not be empty"))
		}
	}
	return errors.Join(errs...)
}

// HistogramConfig is the `histogram:` section.
type HistogramConfig struct {
	// MaxSize is the number of buckets per sign before a histogram downscales.
	MaxSize int `yaml:"max_size"`
	// MaxScale is the finest scale a histogram starts at.
	MaxScale int32 `yaml:"max_scale"`
}

// DefaultHistogramConfig returns the defaults of the `histogram:` section.
func DefaultHistogramConfig() HistogramConfig {
	return HistogramConfig{MaxSize: histogram.DefaultMaxSize, MaxScale: histogram.DefaultMaxScale}
}

// Validate checks the section.
func (c *HistogramConfig) Validate() error {
	var errs []error
	if c.MaxSize < 2 || c.MaxSize > 16384 {
		errs = append(errs, config.Field("max_size", "must be between 2 and 16384, got %d", c.MaxSize))
	}
	if c.MaxScale < -10 || c.MaxScale > 20 {
		errs = append(errs, config.Field("max_scale", "must be between -10 and 20, got %d", c.MaxScale))
	}
	return errors.Join(errs...)
}

// RuleConfig is one entry under `rules:`; exactly one of its fields is set.
// Rules are applied in order to every series (see rules.go).
type RuleConfig struct {
	ReplacePattern  *ReplacePatternRule  `yaml:"replace_pattern"`
	DeleteAttribute *DeleteAttributeRule `yaml:"delete_attribute"`
	KeepAttributes  *KeepAttributesRule  `yaml:"keep_attributes"`
	RenameMetric    *RenameMetricRule    `yaml:"rename_metric"`
	HashAttribute   *HashAttributeRule   `yaml:"hash_attribute"`
	MaxSeries       *MaxSeriesRule       `yaml:"max_series"`
}

// ReplacePatternRule rewrites the value of an attribute with an RE2 pattern
// (Go regexp.ReplaceAllString: $1 refers to a group).
type ReplacePatternRule struct {
	Attribute   string `yaml:"attribute"`
	Pattern     string `yaml:"pattern"`
	Replacement string `yaml:"replacement"`
	// Metric limits the rule to matching metric names (a glob, `*` matches
	// any run of characters); empty means every metric.
	Metric string `yaml:"metric"`
}

// DeleteAttributeRule removes an attribute (point or resource).
type DeleteAttributeRule struct {
	Key string `yaml:"key"`
	// Where restricts the rule to series whose attributes (point or
	// resource) have all these values.
	Where  map[string]string `yaml:"where"`
	Metric string            `yaml:"metric"`
}

// KeepAttributesRule keeps only the listed point attributes of a metric;
// series that then share their attributes are merged.
type KeepAttributesRule struct {
	Metric string   `yaml:"metric"`
	Keys   []string `yaml:"keys"`
}

// RenameMetricRule renames a metric.
type RenameMetricRule struct {
	From string `yaml:"from"`
	To   string `yaml:"to"`
}

// HashAttributeRule replaces an attribute's value with a stable hash.
type HashAttributeRule struct {
	Key    string `yaml:"key"`
	Metric string `yaml:"metric"`
	// Salt is mixed into the hash; without one, a short value (a numeric
	// user ID) can be recovered by hashing every candidate. Use ${ENV}.
	Salt string `yaml:"salt"`
}

// MaxSeriesRule caps the series of a metric per window.
type MaxSeriesRule struct {
	// Metric is a name, or "*" for each metric separately.
	Metric string `yaml:"metric"`
	Limit  int    `yaml:"limit"`
}

// DefaultRuleConfig returns an empty rule (no defaults apply).
func DefaultRuleConfig() RuleConfig { return RuleConfig{} }

// Validate checks that exactly one rule is set and that it is well formed.
func (c *RuleConfig) Validate() error {
	n := 0
	for _, set := range []bool{c.ReplacePattern != nil, c.DeleteAttribute != nil, c.KeepAttributes != nil,
		c.RenameMetric != nil, c.HashAttribute != nil, c.MaxSeries != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return config.Field("", "a rule must set exactly one of replace_pattern, delete_attribute, keep_attributes, rename_metric, hash_attribute, max_series (found %d)", n)
	}
	var errs []error
	metricGlob := func(field, m string) {
		if _, err := path.Match(m, ""); err != nil {
			errs = append(errs, config.Field(field, "invalid metric pattern %q: %v", m, err))
		}
	}
	switch {
	case c.ReplacePattern != nil:
		r := c.ReplacePattern
		if r.Attribute == "" {
			errs = append(errs, config.Field("replace_pattern.attribute", "must not be empty"))
		}
		if r.Pattern == "" {
			errs = append(errs, config.Field("replace_pattern.pattern", "must not be empty"))
		} else if _, err := regexp.Compile(r.Pattern); err != nil {
			errs = append(errs, config.Field("replace_pattern.pattern", "invalid regular expression %q: %v", r.Pattern, unwrapRegexpErr(err)))
		}
		metricGlob("replace_pattern.metric", r.Metric)
	case c.DeleteAttribute != nil:
		if c.DeleteAttribute.Key == "" {
			errs = append(errs, config.Field("delete_attribute.key", "must not be empty"))
		}
		metricGlob("delete_attribute.metric", c.DeleteAttribute.Metric)
	case c.KeepAttributes != nil:
		if c.KeepAttributes.Metric == "" {
			errs = append(errs, config.Field("keep_attributes.metric", "must not be empty (use \"*\" for every metric)"))
		}
		metricGlob("keep_attributes.metric", c.KeepAttributes.Metric)
	case c.RenameMetric != nil:
		if c.RenameMetric.From == "" {
			errs = append(errs, config.Field("rename_metric.from", "must not be empty"))
		}
		if c.RenameMetric.To == "" {
			errs = append(errs, config.Field("rename_metric.to", "must not be empty"))
		}
	case c.HashAttribute != nil:
		if c.HashAttribute.Key == "" {
			errs = append(errs, config.Field("hash_attribute.key", "must not be empty"))
		}
		metricGlob("hash_attribute.metric", c.HashAttribute.Metric)
	case c.MaxSeries != nil:
		if c.MaxSeries.Metric == "" {
			errs = append(errs, config.Field("max_series.metric", "must not be empty (use \"*\" for every metric)"))
		}
		if c.MaxSeries.Limit < 1 {
			errs = append(errs, config.Field("max_series.limit", "must be at least 1, got %d", c.MaxSeries.Limit))
		}
	}
	return errors.Join(errs...)
}

// unwrapRegexpErr drops regexp's own "error parsing regexp: " prefix, since
// the message already says what is being parsed.
func unwrapRegexpErr(err error) error {
	var se *syntax.Error
	if errors.As(err, &se) {
		return fmt.Errorf("%s: `%s`", se.Code, se.Expr)
	}
	return err
}
