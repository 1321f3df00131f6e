package exporters

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	mackerel "github.com/mackerelio/mackerel-client-go"
	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

// APIKey is a secret that never prints: %v, %s, slog and YAML output show
// "<redacted>". Use Reveal to send it.
type APIKey string

// String redacts the key.
func (k APIKey) String() string { return "<redacted>" }

// GoString redacts the key (for %#v).
func (k APIKey) GoString() string { return `"<redacted>"` }

// LogValue redacts the key in slog output.
func (k APIKey) LogValue() slog.Value { return slog.StringValue("<redacted>") }

// MarshalYAML redacts the key when a config is printed.
func (k APIKey) MarshalYAML() (any, error) { return "<redacted>", nil }

// MarshalText redacts the key in JSON and text encodings.
func (k APIKey) MarshalText() ([]byte, error) { return []byte("<redacted>"), nil }

// UnmarshalYAML reads the key as a plain string.
func (k *APIKey) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	*k = APIKey(s)
	return nil
}

// Reveal returns the key itself.
func (k APIKey) Reveal() string { return string(k) }

// MackerelAnnotate asks for a graph annotation with trace links when a stat
// of a metric crosses a threshold in a minute.
type MackerelAnnotate struct {
	// Metric is the sabaki metric name (before mapping), or a path.Match
	// pattern ("http.server.*").
	Metric string `yaml:"metric"`
	// Stat is one of the exported stats: p95, mean, max, error_ratio, ...
	Stat string `yaml:"stat"`
	// Above is the threshold. A duration ("1s", "250ms") compares with a
	// duration stat; a plain number compares with the value as posted
	// (milliseconds for durations, a ratio for error_ratio).
	Above Threshold `yaml:"above"`
}

// MackerelHost maps series to Mackerel hosts: every series whose resource
// has ResourceAttribute (and whose name matches Metrics, when given) is
// posted as a custom metric of the host registered for that attribute's
// value, with customIdentifier "sabaki/<attribute>/<value>" (found or
// created once). Each host is a Mackerel host for billing.
type MackerelHost struct {
	ResourceAttribute string `yaml:"resource_attribute"`
	// Metrics are path.Match patterns on sabaki metric names; empty = all.
	Metrics []string `yaml:"metrics"`
	// Roles are role full names ("service:role") given to created hosts.
	Roles []string `yaml:"roles"`
}

// Threshold is a number or a duration; durations are kept in milliseconds,
// the unit the exporter posts durations in.
type Threshold struct {
	Value      float64
	IsDuration bool
	set        bool
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (t *Threshold) UnmarshalYAML(n *yaml.Node) error {
	if f, err := strconv.ParseFloat(n.Value, 64); err == nil {
		*t = Threshold{Value: f, set: true}
		return nil
	}
	d, err := config.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: threshold %q is neither a number nor a duration", n.Line, n.Value)
	}
	*t = Threshold{Value: float64(d) / float64(time.Millisecond), IsDuration: true, set: true}
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (t Threshold) MarshalYAML() (any, error) {
	if t.IsDuration {
		return time.Duration(t.Value * float64(time.Millisecond)).String(), nil
	}
	return t.Value, nil
}

func (t Threshold) String() string {
	if t.IsDuration {
		return time.Duration(t.Value * float64(time.Millisecond)).String()
	}
	return strconv.FormatFloat(t.Value, 'g', -1, 64)
}

// MackerelConfig configures the mackerel exporter: every window becomes
// Mackerel service metrics, one value per name per minute.
type MackerelConfig struct {
	Common `yaml:",inline"`
	// Service is the Mackerel service the metrics are posted to; it must
	// exist in the organisation.
	Service string `yaml:"service"`
	// APIKey needs write permission; take it from ${MACKEREL_APIKEY}.
	APIKey APIKey `yaml:"api_key"`
	// BaseURL of the API (other regions, tests).
	BaseURL string `yaml:"base_url"`
	// Quantiles exported for histograms, as pXX stats.
	Quantiles []float64 `yaml:"quantiles"`
	// Stats exported besides the quantiles: count, rate, mean, min, max,
	// sum, error_ratio.
	Stats []string `yaml:"stats"`
	// Prefix is prepended to every metric name ("sabaki." → sabaki.http...).
	Prefix string `yaml:"prefix"`
	// ResourceKey lists resource attributes whose values join the series
	// key, before the point attributes' values. The default holds the GCP
	// resource labels that name a Cloud Run service (service_name) and a
	// Cloud SQL instance (database_id), so their series stay apart.
	ResourceKey []string `yaml:"resource_key"`
	// KeyIgnore lists point attributes left out of the series key (series
	// that differ only in them are merged). The default drops the OTLP
	// instrumentation scope, which names the library, not the series.
	KeyIgnore []string `yaml:"key_ignore"`
	// Org is the Mackerel organisation name, substituted for {org}.
	Org string `yaml:"org"`
	// TraceURLTemplate makes a trace link from {org} and {trace_id} (32 hex
	// digits). Mackerel does not document its trace page URL; the default is
	// the best guess and should be checked against a live organisation.
	TraceURLTemplate string `yaml:"trace_url_template"`
	// TraceService is the APM service name searched (POST /api/v0/traces)
	// for a slow trace when a breaching window kept no exemplar; default:
	// Service.
	TraceService string `yaml:"trace_service"`
	// Hosts sends the series of machine-like things (a Cloud SQL instance, a
	// Cloud Run service) as custom metrics of a Mackerel host each, with
	// graph definitions, instead of as service metrics.
	Hosts []MackerelHost `yaml:"hosts"`
	// Monitors are service-metric monitors the exporter creates or updates
	// (matched by name) at its first contact with Mackerel.
	Monitors []MackerelMonitor `yaml:"monitors"`
	// ExemplarsURL is where people reach sabaki's /api/v1/exemplars (for
	// monitor memos); empty leaves the link out.
	ExemplarsURL string `yaml:"exemplars_url"`
	// Annotate lists the thresholds that create graph annotations.
	Annotate []MackerelAnnotate `yaml:"annotate"`
	// AnnotateEvery is the least time between two annotations for the same
	// metric and stat.
	AnnotateEvery config.Duration `yaml:"annotate_every"`
	// MaxPointsPerPost and MaxBytesPerPost bound one POST (Mackerel documents
	// no limit; its developers asked for medium-sized requests, and its
	// fluentd plugin uses 100 KB).
	MaxPointsPerPost int          `yaml:"max_points_per_post"`
	MaxBytesPerPost  config.Bytes `yaml:"max_bytes_per_post"`
	// Timeout bounds one HTTP request.
	Timeout config.Duration `yaml:"timeout"`
	Outbox  OutboxConfig    `yaml:"outbox"`
}

// DefaultMackerelTraceURLTemplate is the (unverified) Mackerel APM trace page.
const DefaultMackerelTraceURLTemplate = "https://mackerel.io/orgs/{org}/tracing/traces/{trace_id}"

// DefaultMackerelConfig returns the defaults.
func DefaultMackerelConfig() MackerelConfig {
	return MackerelConfig{
		Common:           Common{Type: "mackerel"},
		BaseURL:          "https://api.mackerelio.com",
		Quantiles:        []float64{0.5, 0.9, 0.95, 0.99},
		Stats:            []string{"count", "rate", "mean", "max", "error_ratio"},
		ResourceKey:      []string{"service_name", "database_id"},
		KeyIgnore:        []string{"otel.scope.name", "otel.scope.version"},
		TraceURLTemplate: DefaultMackerelTraceURLTemplate,
		AnnotateEvery:    config.Duration(30 * time.Minute),
		MaxPointsPerPost: 1000,
		MaxBytesPerPost:  100 << 10,
		Timeout:          config.Duration(30 * time.Second),
		Outbox:           DefaultOutboxConfig(),
	}
}

var (
	mackerelStats = []string{"count", "rate", "mean", "min", "max", "sum", "error_ratio"}
	serviceNameOK = func(s string) bool {
		return len(s) >= 2 && len(s) <= 63 && isAlnum(s[0]) && strings.Trim(s, nameChars) == ""
	}
	nameChars        = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
	errNoMackerelKey = errors.New("is empty (set it from ${MACKEREL_APIKEY})")
)

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// Validate checks the config.
func (c *MackerelConfig) Validate() error {
	var errs []error
	if !serviceNameOK(c.Service) {
		errs = append(errs, config.Field("service", "must be a Mackerel service name: 2-63 of [A-Za-z0-9_-], starting with a letter or digit"))
	}
	if u, err := url.Parse(c.BaseURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		errs = append(errs, config.Field("base_url", "must be an http(s) URL"))
	}
	for i, q := range c.Quantiles {
		if !(q > 0 && q < 1) || len(quantileStat(q)) > 8 {
			errs = append(errs, config.Field(fmt.Sprintf("quantiles[%d]", i), "must be in (0, 1) with at most 6 decimals"))
		}
	}
	for i, s := range c.Stats {
		if !slices.Contains(mackerelStats, s) {
			errs = append(errs, config.Field(fmt.Sprintf("stats[%d]", i), "unknown stat %q (one of %s)", s, strings.Join(mackerelStats, ", ")))
		}
	}
	if c.Prefix != "" && cleanMetricName(c.Prefix) != strings.TrimSuffix(c.Prefix, ".") {
		errs = append(errs, config.Field("prefix", "may only use [A-Za-z0-9._-] without empty segments"))
	}
	if len(c.Annotate) > 0 {
		if !strings.Contains(c.TraceURLTemplate, "{trace_id}") {
			errs = append(errs, config.Field("trace_url_template", "must contain {trace_id}"))
		}
		if strings.Contains(c.TraceURLTemplate, "{org}") && c.Org == "" {
			errs = append(errs, config.Field("org", "is required by trace_url_template's {org}"))
		}
		if c.AnnotateEvery <= 0 {
			errs = append(errs, config.Field("annotate_every", "must be positive"))
		}
	}
	stats := c.statNames()
	for i, a := range c.Annotate {
		p := fmt.Sprintf("annotate[%d]", i)
		if a.Metric == "" {
			errs = append(errs, config.Field(p+".metric", "is required"))
		} else if _, err := path.Match(a.Metric, ""); err != nil {
			errs = append(errs, config.Field(p+".metric", "bad pattern: %v", err))
		}
		if !slices.Contains(stats, a.Stat) {
			errs = append(errs, config.Field(p+".stat", "must be one of the exported stats (%s)", strings.Join(stats, ", ")))
		}
		if !a.Above.set {
			errs = append(errs, config.Field(p+".above", "is required"))
		}
	}
	for i, h := range c.Hosts {
		p := fmt.Sprintf("hosts[%d]", i)
		if h.ResourceAttribute == "" {
			errs = append(errs, config.Field(p+".resource_attribute", "is required"))
		}
		for j, m := range h.Metrics {
			if _, err := path.Match(m, ""); err != nil {
				errs = append(errs, config.Field(fmt.Sprintf("%s.metrics[%d]", p, j), "bad pattern: %v", err))
			}
		}
		for j, r := range h.Roles {
			svc, role, ok := strings.Cut(r, ":")
			if !ok || !serviceNameOK(svc) || !serviceNameOK(role) {
				errs = append(errs, config.Field(fmt.Sprintf("%s.roles[%d]", p, j), "must be service:role"))
			}
		}
	}
	errs = append(errs, c.validateMonitors()...)
	if c.MaxPointsPerPost < 1 {
		errs = append(errs, config.Field("max_points_per_post", "must be positive"))
	}
	if c.MaxBytesPerPost < 4<<10 {
		errs = append(errs, config.Field("max_bytes_per_post", "must be at least 4KiB"))
	}
	if c.Timeout <= 0 {
		errs = append(errs, config.Field("timeout", "must be positive"))
	}
	if err := c.Outbox.Validate(); err != nil {
		errs = append(errs, config.Join("outbox", err))
	}
	return errors.Join(errs...)
}

// statNames lists every stat suffix the config exports for histograms.
func (c *MackerelConfig) statNames() []string {
	s := slices.Clone(c.Stats)
	for _, q := range c.Quantiles {
		s = append(s, quantileStat(q))
	}
	return s
}

// quantileStat names a quantile: 0.5 → p50, 0.95 → p95, 0.999 → p999.
func quantileStat(q float64) string {
	d := strings.TrimPrefix(strconv.FormatFloat(q, 'f', -1, 64), "0.")
	if len(d) == 1 {
		d += "0"
	}
	return "p" + d
}

// Mackerel posts windows as Mackerel service metrics.
//
// Mapping (README "Mackerel"): for a series of metric M with point
// attributes A, the names are `<prefix>M.<stat>.<key>`, where key is the
// values of A (in attribute-key order, plus the configured resource_key
// attributes) joined by "_", every character outside [A-Za-z0-9_-] replaced
// by "_" ("/api/users/:id" → "api_users_id"), and "all" when there are none.
// Mackerel groups service metrics into one graph by the name before the last
// dot, so each graph is one metric and stat with one line per series. Series
// whose keys collide are merged (counts added, histograms merged).
//   - histograms: count, rate (per second), mean, pXX, max, error_ratio
//     (when the pipeline tracked errors), min and sum on request;
//   - counters: count (the increase), rate, error_ratio;
//   - gauges: `<prefix>M.<key>`, the mean of the window's samples.
//
// Values of unit "s" (and "ms", "us", "ns") are posted in milliseconds,
// Mackerel's unit for latency. NaN and ±Inf are never sent (an empty
// histogram posts count 0 and rate 0 only). Each minute gets one value per
// name at the minute's start time: windows shorter than a minute are merged
// per minute and the minute is re-posted as each window closes (Mackerel
// keeps the last value posted for a minute), so its last post covers the
// whole minute; a journal next to the outbox keeps those windows across a
// restart (mackerel_minutes.go).
type Mackerel struct {
	cfg    MackerelConfig
	name   string
	client *mackerel.Client
	log    *slog.Logger
	now    func() time.Time
	stats  []string
	m      mackerelMetrics

	mu             sync.Mutex
	minutes        map[int64]*minuteWindows // sub-minute windows by minute
	journal        *minuteJournal           // their copy on disk; nil without a data directory
	newestMinute   int64                    // unix seconds of the newest minute seen
	lastAnnotAt    map[string]time.Time     // by metric and stat
	hostIDs        map[string]string        // customIdentifier → host ID
	graphDefs      map[string]bool          // graph definitions created
	monitorsSynced bool
}

// NewMackerel builds the exporter. It does not contact Mackerel. With
// set.DataDir it replays the sub-minute journal a previous run left in
// DataDir/outbox/<name>/ (see mackerel_minutes.go).
func NewMackerel(cfg MackerelConfig, set Settings) (*Mackerel, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("mackerel exporter: %w", err)
	}
	// An empty key is a problem of the environment the config is run in,
	// not of the file (examples validate without secrets): refuse to start.
	if cfg.APIKey == "" {
		return nil, fmt.Errorf("mackerel exporter: api_key %w", errNoMackerelKey)
	}
	name := cfg.Name
	if name == "" {
		name = "mackerel"
	}
	client, err := mackerel.NewClientWithOptions(cfg.APIKey.Reveal(), cfg.BaseURL, false)
	if err != nil {
		return nil, fmt.Errorf("mackerel exporter: base_url: %w", err)
	}
	e := &Mackerel{
		cfg: cfg, name: name, client: client, now: time.Now,
		stats: cfg.statNames(), minutes: map[int64]*minuteWindows{}, lastAnnotAt: map[string]time.Time{},
		hostIDs: map[string]string{}, graphDefs: map[string]bool{},
	}
	e.log = set.Logger
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	client.HTTPClient = &http.Client{
		Timeout:   cfg.Timeout.D(),
		Transport: &retryAfterTransport{next: http.DefaultTransport, bytes: e.m.addBytes},
	}
	// The client logs only in verbose mode (which dumps requests, key
	// included): keep it off and route any output to our logger at debug.
	client.Verbose = false
	client.PrioritizedLogger = nil
	if set.DataDir != "" {
		e.journal = &minuteJournal{dir: filepath.Join(set.DataDir, "outbox", name), log: e.log}
		newest, err := e.journal.load(e.minutes)
		if err != nil {
			return nil, fmt.Errorf("mackerel exporter: %w", err)
		}
		e.newestMinute = newest
		horizon := newest - int64(subMinuteKeep/time.Second)
		for k := range e.minutes {
			if k < horizon {
				delete(e.minutes, k)
			}
		}
		e.journal.dropBefore(horizon)
		if len(e.minutes) > 0 {
			e.log.Info("sub-minute windows of recent minutes recovered; their minutes are posted whole", "minutes", len(e.minutes))
		}
	}
	if err := e.m.register(set.Registerer, name); err != nil {
		return nil, fmt.Errorf("mackerel exporter: registering self-metrics: %w", err)
	}
	return e, nil
}

// Name returns the configured name.
func (e *Mackerel) Name() string { return e.name }

// Shutdown has nothing to flush: windows wait in the outbox.
func (e *Mackerel) Shutdown(context.Context) error { return nil }

// Export posts the window's minute. See the type's doc for the mapping.
func (e *Mackerel) Export(ctx context.Context, w *metric.Window) error {
	minute, aggs, seconds, ok := e.minuteOf(w)
	if !ok {
		e.m.skipped.Inc()
		e.log.Warn("late sub-minute window not posted: its minute's other windows are no longer kept",
			"window", fmtTime(w.Start), "keep", subMinuteKeep.String())
		return nil
	}
	aggs, hosts := e.splitHosts(aggs)
	series := e.mapSeries(aggs, "", "")
	values := e.values(series, minute, seconds, metricName)
	if err := e.post(ctx, values); err != nil {
		return err
	}
	for _, h := range hosts {
		if err := e.exportHost(ctx, h, minute, seconds); err != nil {
			return err
		}
		series = append(series, h.series...)
	}
	e.annotate(ctx, series, minute, seconds)
	e.syncMonitorsOnce(ctx)
	return nil
}

// subMinuteKeep is how far behind the newest minute the sub-minute windows
// are kept for re-merging: beyond the agent's default lateness (5m).
const subMinuteKeep = 10 * time.Minute

// minuteOf returns the minute w belongs to and the aggregates to post for
// it: w's own when w covers a minute or more, else the merge of every window
// of that minute the exporter has (a later revision replacing an earlier
// one), after recording w in the journal (mackerel_minutes.go). Sub-minute
// windows are kept for subMinuteKeep behind the newest minute; a window for
// an older minute is not posted (ok false): alone it would overwrite the
// whole minute's value with a part of it.
func (e *Mackerel) minuteOf(w *metric.Window) (minute time.Time, aggs []metric.Aggregate, seconds float64, ok bool) {
	minute = w.Start.Truncate(time.Minute)
	if w.Duration >= time.Minute || w.Duration <= 0 {
		return minute, w.Series, max(w.Duration.Seconds(), 60), true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	key := minute.Unix()
	e.newestMinute = max(e.newestMinute, key)
	horizon := e.newestMinute - int64(subMinuteKeep/time.Second)
	for k := range e.minutes {
		if k < horizon {
			delete(e.minutes, k)
			if e.journal != nil {
				if err := os.Remove(e.journal.minutePath(k)); err != nil && !errors.Is(err, os.ErrNotExist) {
					e.log.Warn("removing old sub-minute journal file", "err", err)
				}
			}
		}
	}
	mw := e.minutes[key]
	if mw == nil {
		if key < horizon {
			return minute, nil, 0, false
		}
		mw = newMinuteWindows()
		e.minutes[key] = mw
	}
	start := w.Start.UnixNano()
	if mw.put(cloneWindow(w)) && e.journal != nil {
		if rev, done := mw.journaled[start]; !done || rev != w.Revision {
			if err := e.journal.append(key, w); err != nil {
				e.m.journalFailures.Inc()
				e.log.Error("sub-minute window not journaled; posting it anyway, but a restart within its minute would post the minute without it",
					"window", fmtTime(w.Start), "err", err)
			} else {
				mw.journaled[start] = w.Revision
			}
		}
	}
	for _, s := range mw.sortedStarts() {
		win := mw.windows[s]
		aggs = append(aggs, win.Series...)
		seconds += win.Duration.Seconds()
	}
	return minute, aggs, seconds, true
}

// cloneWindow copies what Export keeps beyond the call (the contract forbids
// keeping w).
func cloneWindow(w *metric.Window) *metric.Window {
	c := *w
	c.Series = slices.Clone(w.Series)
	for i := range c.Series {
		if h := c.Series[i].Hist; h != nil {
			c.Series[i].Hist = h.Clone()
		}
		c.Series[i].Exemplars = slices.Clone(c.Series[i].Exemplars)
	}
	return &c
}

// mseries is one mapped series: the merge of the aggregates that share a
// metric and key.
type mseries struct {
	metric    string // sabaki name
	base      string // cleaned prefix+metric
	key       string
	kind      metric.Kind
	unit      string
	scale     float64 // to milliseconds for durations, else 1
	sum       float64
	count     uint64
	min, max  float64
	hist      *histogram.Histogram
	errCount  uint64
	errKnown  bool
	exemplars []metric.Exemplar
}

// mapSeries groups aggregates by posted name; prefix is "" for service
// metrics and "custom." for host metrics, whose key leaves out the host's
// own attribute (skip).
func (e *Mackerel) mapSeries(aggs []metric.Aggregate, prefix, skip string) []*mseries {
	byName := map[string]*mseries{}
	var out []*mseries
	for i := range aggs {
		a := &aggs[i]
		if a.Kind != metric.Gauge && a.Kind != metric.Counter && a.Kind != metric.Histogram {
			continue
		}
		base := cleanMetricName(prefix + e.cfg.Prefix + "." + a.Name)
		key := e.seriesKey(a, skip)
		id := base + "\x00" + key + "\x00" + a.Kind.String()
		s := byName[id]
		if s == nil {
			s = &mseries{metric: a.Name, base: base, key: key, kind: a.Kind, unit: a.Unit, scale: unitScale(a.Unit),
				min: math.Inf(1), max: math.Inf(-1), errKnown: true}
			byName[id] = s
			out = append(out, s)
		}
		s.sum += a.Sum
		s.count += a.Count
		s.errCount += a.ErrorCount
		s.errKnown = s.errKnown && a.ErrorTracked
		s.exemplars = append(s.exemplars, a.Exemplars...)
		if a.Kind == metric.Gauge && a.Count > 0 {
			s.min, s.max = math.Min(s.min, a.Min), math.Max(s.max, a.Max)
		}
		if a.Kind == metric.Gauge && a.Count == 0 { // a gauge without sample count: its last value
			s.sum += a.Last
			s.count++
		}
		if a.Hist != nil {
			if s.hist == nil {
				s.hist = a.Hist.Clone()
			} else {
				s.hist.Merge(a.Hist)
			}
		}
	}
	return out
}

// seriesKey is the last name segment: attribute values joined by "_".
func (e *Mackerel) seriesKey(a *metric.Aggregate, skip string) string {
	var parts []string
	for _, k := range e.cfg.ResourceKey {
		if v, ok := a.Resource.Get(k); ok && k != skip {
			parts = append(parts, v)
		}
	}
	for _, kv := range a.Attrs {
		if !slices.Contains(e.cfg.KeyIgnore, kv.Key) {
			parts = append(parts, kv.Value)
		}
	}
	return cleanKey(strings.Join(parts, "_"))
}

// cleanKey makes s one name segment of [A-Za-z0-9_-]: other characters
// become "_", runs of "_" collapse, leading and trailing "_" go; empty is
// "all". Keys longer than 96 characters are cut and suffixed with a hash of
// the whole, so distinct long keys stay distinct.
func cleanKey(s string) string {
	var b strings.Builder
	under := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isAlnum(c) || c == '-' {
			b.WriteByte(c)
			under = false
			continue
		}
		if !under {
			b.WriteByte('_')
			under = true
		}
	}
	k := strings.Trim(b.String(), "_")
	if k == "" {
		return "all"
	}
	if len(k) > 96 {
		h := fnv.New32a()
		h.Write([]byte(s))
		k = k[:87] + "-" + hex.EncodeToString(h.Sum(nil))
	}
	return k
}

// cleanMetricName keeps [A-Za-z0-9._-] (others become "_") and removes empty
// segments. Cloud Monitoring types lose their API host and "/" separates
// segments, as in Mackerel's own GCP integration:
// "cloudsql.googleapis.com/database/cpu/utilization" →
// "cloudsql.database.cpu.utilization".
func cleanMetricName(s string) string {
	s = strings.ReplaceAll(s, ".googleapis.com/", ".")
	s = strings.ReplaceAll(s, "/", ".")
	b := []byte(s)
	for i, c := range b {
		if !(isAlnum(c) || c == '.' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	segs := strings.Split(string(b), ".")
	segs = slices.DeleteFunc(segs, func(s string) bool { return s == "" })
	return strings.Join(segs, ".")
}

// unitScale converts durations to milliseconds.
func unitScale(unit string) float64 {
	switch unit {
	case "s":
		return 1000
	case "ms":
		return 1
	case "us":
		return 1e-3
	case "ns":
		return 1e-6
	}
	return 1
}

// statValue computes one stat of a series; ok is false when the stat does
// not apply or is not a finite number.
func (e *Mackerel) statValue(s *mseries, stat string, seconds float64) (float64, bool) {
	var v float64
	switch s.kind {
	case metric.Gauge:
		if stat != "" || s.count == 0 {
			return 0, false
		}
		v = s.sum / float64(s.count) * s.scale
	case metric.Counter:
		switch stat {
		case "count", "sum":
			v = s.sum
		case "rate":
			v = s.sum / seconds
		case "error_ratio":
			if !s.errKnown || s.sum <= 0 {
				return 0, false
			}
			v = float64(s.errCount) / s.sum
		default:
			return 0, false
		}
	case metric.Histogram:
		h := s.hist
		n := uint64(0)
		if h != nil {
			n = h.Count()
		}
		switch stat {
		case "count":
			v = float64(n)
		case "rate":
			v = float64(n) / seconds
		case "error_ratio":
			if !s.errKnown || n == 0 {
				return 0, false
			}
			v = float64(s.errCount) / float64(n)
		default:
			if n == 0 {
				return 0, false
			}
			switch stat {
			case "mean":
				v = h.Mean() * s.scale
			case "min":
				v = h.Min() * s.scale
			case "max":
				v = h.Max() * s.scale
			case "sum":
				v = h.Sum() * s.scale
			default:
				q, ok := e.quantileOf(stat)
				if !ok {
					return 0, false
				}
				v = h.Quantile(q) * s.scale
			}
		}
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, false
	}
	return v, true
}

func (e *Mackerel) quantileOf(stat string) (float64, bool) {
	for _, q := range e.cfg.Quantiles {
		if quantileStat(q) == stat {
			return q, true
		}
	}
	return 0, false
}

// metricName is the posted name of a stat of s ("" for a gauge's own value).
func metricName(s *mseries, stat string) string {
	if stat == "" {
		return s.base + "." + s.key
	}
	return s.base + "." + stat + "." + s.key
}

// values builds the points of one minute, sorted by name (stable posts).
func (e *Mackerel) values(series []*mseries, minute time.Time, seconds float64, name func(*mseries, string) string) []*mackerel.MetricValue {
	var out []*mackerel.MetricValue
	t := minute.Unix()
	seen := map[string]bool{}
	add := func(name string, v float64) {
		if seen[name] { // a gauge and a stat name can only collide through odd keys; first wins
			return
		}
		seen[name] = true
		out = append(out, &mackerel.MetricValue{Name: name, Time: t, Value: v})
	}
	for _, s := range series {
		if s.kind == metric.Gauge {
			if v, ok := e.statValue(s, "", seconds); ok {
				add(name(s, ""), v)
			}
			continue
		}
		for _, stat := range e.stats {
			if v, ok := e.statValue(s, stat, seconds); ok {
				add(name(s, stat), v)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// post sends values in batches within max_points_per_post and
// max_bytes_per_post. A failure after some batches went through returns the
// error; the outbox re-sends the whole minute, which overwrites the same
// values.
func (e *Mackerel) post(ctx context.Context, values []*mackerel.MetricValue) error {
	for len(values) > 0 {
		n, size := 0, 2
		for n < len(values) && n < e.cfg.MaxPointsPerPost {
			// {"name":"…","time":1764072000,"value":…}, : about 50 bytes besides the name
			s := len(values[n].Name) + 60
			if n > 0 && size+s > int(e.cfg.MaxBytesPerPost) {
				break
			}
			size += s
			n++
		}
		if err := e.call(ctx, "posting service metrics", func(ctx context.Context) error {
			return e.client.PostServiceMetricValuesContext(ctx, e.cfg.Service, values[:n])
		}); err != nil {
			return err
		}
		e.m.posted(n)
		values = values[n:]
	}
	return nil
}

// call runs one API call and classifies its error: 429, 408 and 5xx and
// network errors are retryable (with the server's Retry-After, which
// mackerel-client-go does not surface, read by our transport); other 4xx
// are Permanent. The API key is removed from any error text.
func (e *Mackerel) call(ctx context.Context, what string, f func(ctx context.Context) error) error {
	box := &retryAfterBox{}
	err := f(context.WithValue(ctx, retryAfterKey{}, box))
	if err == nil {
		e.m.request("ok")
		return nil
	}
	var ae *mackerel.APIError
	if errors.As(err, &ae) {
		e.m.request(strconv.Itoa(ae.StatusCode))
		me := &MackerelError{Op: what, Status: ae.StatusCode, Message: e.redact(ae.Message)}
		me.retryAfter, me.hasRetryAfter = box.get()
		switch {
		case ae.StatusCode == http.StatusTooManyRequests, ae.StatusCode == http.StatusRequestTimeout, ae.StatusCode >= 500:
			return me
		default:
			return Permanent(me)
		}
	}
	e.m.request("error")
	var je *json.UnsupportedValueError
	if errors.As(err, &je) {
		return Permanent(fmt.Errorf("mackerel: %s: %s", what, e.redact(err.Error())))
	}
	return &MackerelError{Op: what, Message: e.redact(err.Error())}
}

func (e *Mackerel) redact(s string) string {
	if k := e.cfg.APIKey.Reveal(); len(k) >= 4 {
		s = strings.ReplaceAll(s, k, "<redacted>")
	}
	return s
}

// MackerelError is a failed Mackerel API call. Status is 0 for network
// errors. It carries the Retry-After of a 429 or 503 when the server sent one.
type MackerelError struct {
	Op            string
	Status        int
	Message       string
	retryAfter    float64
	hasRetryAfter bool
}

func (e *MackerelError) Error() string {
	if e.Status == 0 {
		return fmt.Sprintf("mackerel: %s: %s", e.Op, e.Message)
	}
	return fmt.Sprintf("mackerel: %s: HTTP %d: %s", e.Op, e.Status, e.Message)
}

// RetryAfter implements exporters.RetryAfter.
func (e *MackerelError) RetryAfter() (float64, bool) { return e.retryAfter, e.hasRetryAfter }

type retryAfterKey struct{}

type retryAfterBox struct {
	mu  sync.Mutex
	s   float64
	set bool
}

func (b *retryAfterBox) get() (float64, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.s, b.set
}

// retryAfterTransport records the Retry-After header of a response in the
// box the request's context carries, and counts the bytes sent.
type retryAfterTransport struct {
	next  http.RoundTripper
	bytes func(n int64)
}

func (t *retryAfterTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.ContentLength > 0 {
		t.bytes(r.ContentLength)
	}
	resp, err := t.next.RoundTrip(r)
	if err != nil {
		return resp, err
	}
	if box, ok := r.Context().Value(retryAfterKey{}).(*retryAfterBox); ok {
		if s, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			box.mu.Lock()
			box.s, box.set = s, true
			box.mu.Unlock()
		}
	}
	return resp, nil
}

// parseRetryAfter reads delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (float64, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && s >= 0 && !math.IsInf(s, 0) {
		return s, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return math.Max(t.Sub(now).Seconds(), 0), true
	}
	return 0, false
}

// annotate creates, for each annotate rule, one graph annotation when a
// series of the minute breaches the threshold and the rule has not fired
// within annotate_every. The description lists the breaching series and
// trace links of their exemplars (or, without exemplars, of the slowest
// traces the trace search finds in that minute). Annotations are best
// effort: a failure is logged and counted, and the metrics stay posted.
func (e *Mackerel) annotate(ctx context.Context, series []*mseries, minute time.Time, seconds float64) {
	for _, rule := range e.cfg.Annotate {
		type breach struct {
			s *mseries
			v float64
		}
		var hits []breach
		for _, s := range series {
			if ok, _ := path.Match(rule.Metric, s.metric); !ok {
				continue
			}
			v, ok := e.statValue(s, rule.Stat, seconds)
			if !ok || v <= rule.Above.Value {
				continue
			}
			hits = append(hits, breach{s, v})
		}
		if len(hits) == 0 {
			continue
		}
		sort.Slice(hits, func(i, j int) bool { return hits[i].v > hits[j].v })
		rk := rule.Metric + "\x00" + rule.Stat
		e.mu.Lock()
		last, fired := e.lastAnnotAt[rk]
		e.mu.Unlock()
		if !fired {
			last, fired = e.priorAnnotation(ctx, rule, minute)
			if fired {
				e.mu.Lock()
				e.lastAnnotAt[rk] = last
				e.mu.Unlock()
			}
		}
		if fired && minute.Sub(last) < e.cfg.AnnotateEvery.D() && minute.Sub(last) > -e.cfg.AnnotateEvery.D() {
			e.m.annotation("rate_limited")
			continue
		}
		unit := ""
		if hits[0].s.scale != 1 || rule.Above.IsDuration {
			unit = " ms"
		}
		title := fmt.Sprintf("%s %s above %s: %s%s (%s)", hits[0].s.metric, rule.Stat, rule.Above,
			fmtValue(hits[0].v), unit, hits[0].s.key)
		if len(hits) > 1 {
			title += fmt.Sprintf(" and %d more series", len(hits)-1)
		}
		var desc strings.Builder
		for _, h := range hits {
			urls := e.traceURLs(ctx, h.s, minute, rule.Above.Value)
			line := fmt.Sprintf("%s %s=%s%s", h.s.key, rule.Stat, fmtValue(h.v), unit)
			for _, u := range urls {
				line += " " + u
			}
			if desc.Len()+len(line)+1 > 1024 {
				break
			}
			if desc.Len() > 0 {
				desc.WriteByte('\n')
			}
			desc.WriteString(line)
		}
		a := &mackerel.GraphAnnotation{
			Title: truncateRunes(title, 250), Description: desc.String(),
			From: minute.Unix(), To: minute.Unix() + 60, Service: e.cfg.Service,
		}
		err := e.call(ctx, "creating graph annotation", func(ctx context.Context) error {
			_, err := e.client.CreateGraphAnnotationContext(ctx, a)
			return err
		})
		if err != nil {
			e.m.annotation("failed")
			e.log.Warn("graph annotation not created", "metric", hits[0].s.metric, "stat", rule.Stat, "minute", fmtTime(minute), "err", err)
			continue
		}
		e.m.annotation("created")
		e.mu.Lock()
		e.lastAnnotAt[rk] = minute
		e.mu.Unlock()
	}
}

// priorAnnotation finds the newest annotation a previous process made for
// rule within annotate_every of minute, so that a restart does not annotate
// again what was annotated just before it: the window in flight at a kill -9
// is re-sent, and with sub-minute windows the minute in progress is
// re-posted. It is asked once per rule and process (until the rule fires);
// a failed lookup is logged at debug and treated as none.
func (e *Mackerel) priorAnnotation(ctx context.Context, rule MackerelAnnotate, minute time.Time) (time.Time, bool) {
	every := int64(e.cfg.AnnotateEvery.D() / time.Second)
	var found []*mackerel.GraphAnnotation
	err := e.call(ctx, "finding graph annotations", func(ctx context.Context) error {
		var err error
		found, err = e.client.FindGraphAnnotationsContext(ctx, e.cfg.Service, minute.Unix()-every, minute.Unix()+60)
		return err
	})
	if err != nil {
		e.log.Debug("graph annotation lookup failed", "err", err)
		return time.Time{}, false
	}
	var newest int64
	ok := false
	mark := " " + rule.Stat + " above " + rule.Above.String() + ": "
	for _, a := range found {
		metric, _, _ := strings.Cut(a.Title, " ")
		if m, _ := path.Match(rule.Metric, metric); !m || !strings.Contains(a.Title, mark) {
			continue
		}
		if !ok || a.From > newest {
			newest, ok = a.From, true
		}
	}
	return time.Unix(newest, 0), ok
}

// traceURLs returns up to three trace links for a breaching series: its
// exemplars with a trace, slowest first, else the slowest traces the
// Mackerel trace search finds in the minute above the threshold.
func (e *Mackerel) traceURLs(ctx context.Context, s *mseries, minute time.Time, aboveMs float64) []string {
	ex := slices.Clone(s.exemplars)
	ex = slices.DeleteFunc(ex, func(x metric.Exemplar) bool { return !x.HasTrace() })
	sort.SliceStable(ex, func(i, j int) bool { return ex[i].Value > ex[j].Value })
	var ids []string
	for _, x := range ex {
		id := hex.EncodeToString(x.TraceID[:])
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
		if len(ids) == 3 {
			break
		}
	}
	if len(ids) == 0 {
		svc := e.cfg.TraceService
		if svc == "" {
			svc = e.cfg.Service
		}
		param := &mackerel.ListTracesParam{ServiceName: svc, From: minute.Unix(), To: minute.Unix() + 60,
			Page: mackerel.ToPtr(1), PerPage: mackerel.ToPtr(3),
			Order: mackerel.TraceOrder{Column: mackerel.ToPtr(mackerel.TraceOrderColumnLATENCY), Direction: mackerel.ToPtr(mackerel.OrderDirectionDESC)}}
		if s.scale != 1 {
			ms := int64(aboveMs)
			param.MinLatencyMillis = &ms
		}
		var res *mackerel.ListTracesResponse
		err := e.call(ctx, "searching traces", func(ctx context.Context) error {
			var err error
			res, err = e.client.ListTracesContext(ctx, param)
			return err
		})
		if err != nil {
			e.log.Debug("trace search failed", "err", err)
			return nil
		}
		for _, r := range res.Results {
			ids = append(ids, r.TraceID)
		}
	}
	urls := make([]string, 0, len(ids))
	for _, id := range ids {
		urls = append(urls, MackerelTraceURL(e.cfg.TraceURLTemplate, e.cfg.Org, id))
	}
	return urls
}

// hostSeries is what one host gets from a window.
type hostSeries struct {
	rule       *MackerelHost
	identifier string // customIdentifier
	name       string // the attribute's value
	aggs       []metric.Aggregate
	series     []*mseries
}

// splitHosts takes the aggregates that belong to a host out of aggs.
func (e *Mackerel) splitHosts(aggs []metric.Aggregate) ([]metric.Aggregate, []*hostSeries) {
	if len(e.cfg.Hosts) == 0 {
		return aggs, nil
	}
	var rest []metric.Aggregate
	byID := map[string]*hostSeries{}
	var hosts []*hostSeries
	for _, a := range aggs {
		var hs *hostSeries
		for i := range e.cfg.Hosts {
			rule := &e.cfg.Hosts[i]
			v, ok := a.Resource.Get(rule.ResourceAttribute)
			if !ok || v == "" || !matchAny(rule.Metrics, a.Name) {
				continue
			}
			id := "sabaki/" + rule.ResourceAttribute + "/" + v
			if hs = byID[id]; hs == nil {
				hs = &hostSeries{rule: rule, identifier: id, name: v}
				byID[id] = hs
				hosts = append(hosts, hs)
			}
			break
		}
		if hs == nil {
			rest = append(rest, a)
			continue
		}
		hs.aggs = append(hs.aggs, a)
	}
	return rest, hosts
}

func matchAny(patterns []string, name string) bool {
	if len(patterns) == 0 {
		return true
	}
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// exportHost posts one host's minute as custom.* host metrics, registering
// the host and creating graph definitions the first time they are needed.
func (e *Mackerel) exportHost(ctx context.Context, h *hostSeries, minute time.Time, seconds float64) error {
	id, err := e.hostID(ctx, h)
	if err != nil {
		return err
	}
	h.series = e.mapSeries(h.aggs, "custom.", h.rule.ResourceAttribute)
	if err := e.ensureGraphDefs(ctx, h.series); err != nil {
		return err
	}
	values := e.values(h.series, minute, seconds, hostMetricName)
	for len(values) > 0 {
		n := min(len(values), e.cfg.MaxPointsPerPost, max(1, int(e.cfg.MaxBytesPerPost)/(len(values[0].Name)+80)))
		hv := make([]*mackerel.HostMetricValue, n)
		for i, v := range values[:n] {
			hv[i] = &mackerel.HostMetricValue{HostID: id, MetricValue: v}
		}
		if err := e.call(ctx, "posting host metrics", func(ctx context.Context) error {
			return e.client.PostHostMetricValuesContext(ctx, hv)
		}); err != nil {
			return err
		}
		e.m.posted(n)
		values = values[n:]
	}
	return nil
}

// hostID finds the host by customIdentifier, or registers it.
func (e *Mackerel) hostID(ctx context.Context, h *hostSeries) (string, error) {
	e.mu.Lock()
	id, ok := e.hostIDs[h.identifier]
	e.mu.Unlock()
	if ok {
		return id, nil
	}
	err := e.call(ctx, "finding host "+h.identifier, func(ctx context.Context) error {
		found, err := e.client.FindHostsContext(ctx, &mackerel.FindHostsParam{CustomIdentifier: h.identifier})
		if err == nil && len(found) > 0 {
			id = found[0].ID
		}
		return err
	})
	if err != nil {
		return "", err
	}
	if id == "" {
		err = e.call(ctx, "registering host "+h.identifier, func(ctx context.Context) error {
			var err error
			id, err = e.client.CreateHostContext(ctx, &mackerel.CreateHostParam{
				Name: h.name, CustomIdentifier: h.identifier, Meta: mackerel.HostMeta{},
				RoleFullnames: h.rule.Roles, Memo: "registered by sabaki for " + h.rule.ResourceAttribute + "=" + h.name,
			})
			return err
		})
		if err != nil {
			return "", err
		}
		e.log.Info("registered Mackerel host", "custom_identifier", h.identifier, "host_id", id)
	}
	e.mu.Lock()
	e.hostIDs[h.identifier] = id
	e.mu.Unlock()
	return id, nil
}

// Host metrics follow the graph-definition rules (a wildcard in a metric
// name must also be in its graph's name), so they are named
// custom.<metric>[.<group>].<key>.<stat> and each graph is
// custom.<metric>[.<group>].# with one line per series and stat, the legend
// grouped by series:
//   - gauges: no group, stat "value";
//   - histogram distribution stats (mean, min, max, sum, pXX): group
//     "latency" for durations, else "dist";
//   - count, rate, error_ratio: each its own group (they differ in unit).

// hostGroup is the group segment of a stat of s.
func hostGroup(s *mseries, stat string) string {
	switch {
	case s.kind == metric.Gauge:
		return ""
	case stat == "count" || stat == "rate" || stat == "error_ratio" || s.kind == metric.Counter:
		return stat
	case s.scale != 1 || s.unit == "ms":
		return "latency"
	}
	return "dist"
}

func hostGraphName(s *mseries, stat string) string {
	if g := hostGroup(s, stat); g != "" {
		return s.base + "." + g
	}
	return s.base
}

// hostMetricName is the posted name of a stat of a host series.
func hostMetricName(s *mseries, stat string) string {
	if stat == "" {
		stat = "value"
	}
	return hostGraphName(s, stat) + "." + s.key + "." + stat
}

// ensureGraphDefs creates, once per process, the graph definitions of the
// series' stats with their units. Mackerel upserts by name, so a restart
// re-creating them is harmless.
func (e *Mackerel) ensureGraphDefs(ctx context.Context, series []*mseries) error {
	byName := map[string]*mackerel.GraphDefsParam{}
	var defs []*mackerel.GraphDefsParam
	e.mu.Lock()
	for _, s := range series {
		stats := e.stats
		if s.kind == metric.Gauge {
			stats = []string{""}
		}
		for _, stat := range stats {
			if s.kind == metric.Counter && !slices.Contains([]string{"count", "sum", "rate", "error_ratio"}, stat) {
				continue
			}
			name := hostGraphName(s, stat)
			metricStat := stat
			if metricStat == "" {
				metricStat = "value"
			}
			m := &mackerel.GraphDefsMetric{Name: name + ".#." + metricStat, DisplayName: "%1 " + metricStat}
			if d := byName[name]; d != nil {
				if !slices.ContainsFunc(d.Metrics, func(x *mackerel.GraphDefsMetric) bool { return x.Name == m.Name }) {
					d.Metrics = append(d.Metrics, m)
				}
				continue
			}
			if e.graphDefs[name] {
				continue
			}
			d := &mackerel.GraphDefsParam{
				Name: name + ".#", DisplayName: strings.TrimPrefix(name, "custom."), Unit: graphUnit(s, stat),
				Metrics: []*mackerel.GraphDefsMetric{m},
			}
			byName[name] = d
			defs = append(defs, d)
		}
	}
	for name := range byName {
		e.graphDefs[name] = true
	}
	e.mu.Unlock()
	if len(defs) == 0 {
		return nil
	}
	err := e.call(ctx, "creating graph definitions", func(ctx context.Context) error {
		return e.client.CreateGraphDefsContext(ctx, defs)
	})
	if err != nil {
		e.mu.Lock()
		for name := range byName {
			delete(e.graphDefs, name)
		}
		e.mu.Unlock()
	}
	return err
}

// graphUnit is the Mackerel graph unit of a stat of s.
func graphUnit(s *mseries, stat string) string {
	switch stat {
	case "count":
		if s.kind == metric.Histogram {
			return "integer"
		}
	case "error_ratio":
		return "float"
	case "rate":
		if s.unit == "By" {
			return "bytes/sec"
		}
		return "float"
	}
	switch {
	case s.scale != 1 || s.unit == "ms":
		return "milliseconds"
	case s.unit == "By":
		return "bytes"
	case s.unit == "%":
		return "percentage"
	}
	return "float"
}

// fmtValue prints a value for people: whole numbers from 1000 up, else four
// significant digits.
func fmtValue(v float64) string {
	if math.Abs(v) >= 1000 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// MackerelTraceURL fills a trace URL template's {org} and {trace_id}.
func MackerelTraceURL(template, org, traceID string) string {
	return strings.NewReplacer("{org}", url.PathEscape(org), "{trace_id}", traceID).Replace(template)
}

func truncateRunes(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// mackerelMetrics are the exporter's self-metrics.
type mackerelMetrics struct {
	requests    *prometheus.CounterVec // by status
	points      prometheus.Counter
	posts       prometheus.Counter
	bytes       prometheus.Counter
	annotations *prometheus.CounterVec
	skipped     prometheus.Counter
	// journalFailures counts sub-minute windows that could not be written
	// to the journal.
	journalFailures prometheus.Counter
	name            string
}

func (m *mackerelMetrics) register(reg prometheus.Registerer, name string) error {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_mackerel_requests_total", Help: "Mackerel API requests by outcome (ok, HTTP status, error).",
	}, []string{"exporter", "status"})
	points := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_mackerel_points_total", Help: "Service metric values Mackerel accepted.",
	}, []string{"exporter"})
	posts := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_mackerel_posts_total", Help: "Service metric posts Mackerel accepted.",
	}, []string{"exporter"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_mackerel_sent_bytes_total", Help: "Request body bytes sent to Mackerel.",
	}, []string{"exporter"})
	annotations := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_mackerel_annotations_total", Help: "Graph annotations by outcome (created, rate_limited, failed).",
	}, []string{"exporter", "outcome"})
	skipped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_mackerel_late_windows_skipped_total", Help: "Sub-minute windows that arrived too late to be merged into their minute.",
	}, []string{"exporter"})
	journal := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_mackerel_journal_failures_total", Help: "Sub-minute windows that could not be written to the journal that keeps them across restarts.",
	}, []string{"exporter"})
	for _, c := range []**prometheus.CounterVec{&requests, &points, &posts, &bytes, &annotations, &skipped, &journal} {
		var err error
		if *c, err = registerCounterVec(reg, *c); err != nil {
			return err
		}
	}
	m.name = name
	m.requests, m.annotations = requests, annotations
	m.points, m.posts, m.bytes = points.WithLabelValues(name), posts.WithLabelValues(name), bytes.WithLabelValues(name)
	m.skipped = skipped.WithLabelValues(name)
	m.journalFailures = journal.WithLabelValues(name)
	return nil
}

func (m *mackerelMetrics) request(status string) { m.requests.WithLabelValues(m.name, status).Inc() }
func (m *mackerelMetrics) posted(points int)     { m.posts.Inc(); m.points.Add(float64(points)) }
func (m *mackerelMetrics) addBytes(n int64)      { m.bytes.Add(float64(n)) }
func (m *mackerelMetrics) annotation(outcome string) {
	m.annotations.WithLabelValues(m.name, outcome).Inc()
}

// registerCounterVec registers c on reg, or returns the vector already
// registered under the same name (several exporters share one vector).
// A nil reg leaves c unregistered.
func registerCounterVec(reg prometheus.Registerer, c *prometheus.CounterVec) (*prometheus.CounterVec, error) {
	if reg == nil {
		return c, nil
	}
	if err := reg.Register(c); err != nil {
		are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err)
		if !ok {
			return nil, err
		}
		existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
		if !ok {
			return nil, err
		}
		return existing, nil
	}
	return c, nil
}
