package sources

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

// PrometheusConfig configures a Prometheus scrape source (type "prometheus").
//
// Every target is scraped once per interval, all targets of the source
// concurrently, within the scheduler's per-collection timeout. Targets that
// need a different interval or credentials go into a second source entry.
type PrometheusConfig struct {
	Common `yaml:",inline"`
	// Targets are URLs ("http://127.0.0.1:3000/metrics") or host:port
	// ("127.0.0.1:3000", scraped at http://host:port/metrics).
	Targets []string `yaml:"targets"`
	// FileSD lists Prometheus file_sd files (JSON or YAML: a list of
	// {targets: [...], labels: {...}}). They are re-read when they change,
	// checked at every collection. Labels __scheme__ and __metrics_path__
	// select the URL; other labels starting with "__" are dropped.
	FileSD []string `yaml:"file_sd"`
	// Interval between scrapes; Timeout bounds one collection (all targets).
	Interval config.Duration `yaml:"interval"`
	Timeout  config.Duration `yaml:"timeout"`
	// Labels are added to every series of every static target as resource
	// attributes, next to job (the source name) and instance (host:port).
	Labels map[string]string `yaml:"labels"`
	// HonorLabels decides conflicts between an exposed label and a target
	// label (job, instance, labels above, file_sd labels), as in Prometheus:
	// false (default) keeps the target's value and renames the exposed one to
	// exported_<name>; true keeps the exposed value and drops the target label
	// from that series.
	HonorLabels bool `yaml:"honor_labels"`
	// HonorTimestamps uses timestamps present in the exposition (default
	// true); otherwise every point is stamped with the scheduler's tick.
	HonorTimestamps bool `yaml:"honor_timestamps"`
	// BearerToken or BearerTokenFile (re-read at every scrape) sends
	// "Authorization: Bearer ..."; BasicAuth sends basic credentials.
	BearerToken     string               `yaml:"bearer_token"`
	BearerTokenFile string               `yaml:"bearer_token_file"`
	BasicAuth       *PrometheusBasicAuth `yaml:"basic_auth"`
	TLS             PrometheusTLS        `yaml:"tls"`
	// BodySizeLimit caps the uncompressed size of one exposition; a larger
	// body fails that target's scrape (up=0) with a clear error.
	BodySizeLimit config.Bytes `yaml:"body_size_limit"`
}

// PrometheusBasicAuth is HTTP basic authentication; PasswordFile is re-read
// at every scrape.
type PrometheusBasicAuth struct {
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
}

// PrometheusTLS configures TLS towards https targets.
type PrometheusTLS struct {
	CAFile             string `yaml:"ca_file"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
}

// DefaultPrometheusConfig returns the defaults: 15 s interval, 10 s timeout,
// 64 MiB body limit, exposition timestamps honoured.
func DefaultPrometheusConfig() PrometheusConfig {
	return PrometheusConfig{
		Common:          Common{Type: "prometheus"},
		Interval:        config.Duration(15 * time.Second),
		Timeout:         config.Duration(10 * time.Second),
		HonorTimestamps: true,
		BodySizeLimit:   64 << 20,
	}
}

// Validate checks the config; problems name the offending field.
func (c *PrometheusConfig) Validate() error {
	var errs []error
	if len(c.Targets) == 0 && len(c.FileSD) == 0 {
		errs = append(errs, config.Field("targets", "must list at least one target (or set file_sd)"))
	}
	for i, t := range c.Targets {
		if _, _, err := parsePromTarget(t, nil); err != nil {
			errs = append(errs, config.Field(fmt.Sprintf("targets[%d]", i), "%v", err))
		}
	}
	for i, f := range c.FileSD {
		if strings.TrimSpace(f) == "" {
			errs = append(errs, config.Field(fmt.Sprintf("file_sd[%d]", i), "must not be empty"))
		}
	}
	if c.Interval <= 0 {
		errs = append(errs, config.Field("interval", "must be positive"))
	}
	if c.Timeout <= 0 {
		errs = append(errs, config.Field("timeout", "must be positive"))
	} else if c.Interval > 0 && c.Timeout > c.Interval {
		errs = append(errs, config.Field("timeout", "must not exceed interval (%s)", c.Interval))
	}
	for k := range c.Labels {
		if k == "" || strings.HasPrefix(k, "__") {
			errs = append(errs, config.Field("labels", "invalid label name %q", k))
		}
	}
	if c.BearerToken != "" && c.BearerTokenFile != "" {
		errs = append(errs, config.Field("bearer_token_file", "set either bearer_token or bearer_token_file, not both"))
	}
	if c.BasicAuth != nil {
		if c.BearerToken != "" || c.BearerTokenFile != "" {
			errs = append(errs, config.Field("basic_auth", "cannot be combined with a bearer token"))
		}
		if c.BasicAuth.Username == "" {
			errs = append(errs, config.Field("basic_auth.username", "must not be empty"))
		}
		if c.BasicAuth.Password != "" && c.BasicAuth.PasswordFile != "" {
			errs = append(errs, config.Field("basic_auth.password_file", "set either password or password_file, not both"))
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		errs = append(errs, config.Field("tls", "cert_file and key_file must be set together"))
	}
	if c.BodySizeLimit <= 0 {
		errs = append(errs, config.Field("body_size_limit", "must be positive"))
	}
	return errors.Join(errs...)
}

// Accept header in Prometheus' order: delimited protobuf first (the only
// format that carries native histograms), then OpenMetrics 1.0.0 and 0.0.1
// (exemplars, _created), then the classic text format.
const promAccept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5," +
	"application/openmetrics-text;version=1.0.0;q=0.4," +
	"application/openmetrics-text;version=0.0.1;q=0.3," +
	"text/plain;version=0.0.4;q=0.2,*/*;q=0.1"

// promFailureLogEvery is how often a target that keeps failing is logged again:
// the first failure and the recovery are logged at once, repeats are
// summarised (as vmagent's suppressScrapeErrorsDelay does).
const promFailureLogEvery = 10 * time.Minute

// Prometheus scrapes Prometheus exposition endpoints.
//
// What the pipeline sees per target and collection: one series per exposed
// sample (counters cumulative with Start from _created when exposed, gauges,
// summaries as quantile gauges plus _sum/_count counters, histograms as
// exponential histograms), plus the gauges up, scrape_duration_seconds and
// scrape_samples_scraped. Resource attributes are job (the source name),
// instance (host:port) and the configured labels.
//
// Staleness: when a series disappears from a target (or the target fails),
// the source simply stops emitting it; there is no stale marker in sabaki's
// model. The pipeline therefore sees no further points: a gauge has no value
// in later windows, a counter contributes no delta, and if the series comes
// back with a lower value the pipeline's reset detection starts it anew.
// Disappearances are counted in sabaki_prometheus_stale_series_total.
//
// Memory: a batch's slices (series, points, attributes) are reused by the
// next Collect, so a batch is valid until then; the scheduler hands each
// batch to the pipeline, which copies what it keeps (metric.Sink), before it
// collects again. Histograms are fresh in every batch: their ownership
// passes to the sink. Reusing the batch's memory instead of allocating
// ~40 MB per collection at 105,000 series is most of what keeps the agent's
// garbage collection cheap at that scale.
type Prometheus struct {
	cfg    PrometheusConfig
	name   string
	log    *slog.Logger
	client *http.Client
	m      *promMetrics
	now    func() time.Time

	mu      sync.Mutex
	static  []promTargetSpec
	sd      map[string]*fileSDState
	targets map[string]*promTarget

	// convMu serialises the conversion of the targets' bodies into the
	// batch being built: targets are fetched concurrently and converted one
	// at a time straight into series and arena, so the batch is built once
	// instead of per target and then copied.
	convMu sync.Mutex
	series []metric.Series // the previous batch's series, reused
	arena  promArena
	perm   []int32 // orderByTarget's scratch

	// bufs are body buffers not in use. A buffer is held from a target's
	// fetch to the end of its conversion, so at most as many exist as
	// targets are scraped at once (16), instead of one per target.
	bufMu sync.Mutex
	bufs  []*bytes.Buffer
	// gzips are gzip readers not in use: a new one allocates ~40 KB of
	// decompressor state, per target per scrape.
	gzips sync.Pool
}

// gzipReader returns a gzip reader of r, reusing one from p.gzips.
func (p *Prometheus) gzipReader(r io.Reader) (*gzip.Reader, error) {
	if gz, ok := p.gzips.Get().(*gzip.Reader); ok {
		if err := gz.Reset(r); err != nil {
			p.gzips.Put(gz)
			return nil, err
		}
		return gz, nil
	}
	return gzip.NewReader(r)
}

// promMaxScrapes bounds the targets of one source scraped at once.
const promMaxScrapes = 16

func (p *Prometheus) getBuf() *bytes.Buffer {
	p.bufMu.Lock()
	defer p.bufMu.Unlock()
	if n := len(p.bufs); n > 0 {
		b := p.bufs[n-1]
		p.bufs = p.bufs[:n-1]
		return b
	}
	return &bytes.Buffer{}
}

// putBuf keeps b for another fetch, unless it is large and was mostly
// unused this time (a target that shrank).
func (p *Prometheus) putBuf(b *bytes.Buffer) {
	if b.Cap() > 4<<20 && b.Len() < b.Cap()/4 {
		return
	}
	b.Reset()
	p.bufMu.Lock()
	defer p.bufMu.Unlock()
	if len(p.bufs) < promMaxScrapes {
		p.bufs = append(p.bufs, b)
	}
}

var _ Source = (*Prometheus)(nil)

// promTargetSpec is one target as configured: its URL and extra labels.
type promTargetSpec struct {
	url      string
	instance string
	labels   map[string]string
}

func (s promTargetSpec) key() string {
	keys := make([]string, 0, len(s.labels))
	for k, v := range s.labels {
		keys = append(keys, k+"="+v)
	}
	slices.Sort(keys)
	return s.url + "\x00" + strings.Join(keys, "\x00")
}

type fileSDState struct {
	mod   time.Time
	size  int64
	specs []promTargetSpec
	err   string // last load error, logged once
}

// promTarget is one target with its scrape state; only the goroutine that
// scrapes it touches the state during a collection.
type promTarget struct {
	spec     promTargetSpec
	resource metric.Attrs
	// loopback: the target's host is a loopback address or localhost, so
	// its body is asked for uncompressed (fetch).
	loopback bool

	// seen and next hold the identity hashes of the series of the previous
	// and the current scrape, sorted (8 bytes a series, against ~50 in a
	// map); order those of the previous scrape as exposed.
	seen, next, order []uint64
	// exemplars of the previous successful scrape (promDedupExemplars)
	exSeen, exNext map[uint64]struct{}
	conv           promConverter

	failures int
	down     bool
	lastLog  time.Time
}

// NewPrometheus builds the source. It opens no connection; the first scrape
// happens on the first Collect.
func NewPrometheus(cfg PrometheusConfig, set Settings) (*Prometheus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("prometheus source: %w", err)
	}
	name := cmp.Or(cfg.Name, "prometheus")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true // we ask for gzip and enforce the limit on the uncompressed body
	tr.MaxIdleConnsPerHost = 2
	tlsCfg, err := promTLSConfig(cfg.TLS)
	if err != nil {
		return nil, fmt.Errorf("prometheus source %q: %w", name, err)
	}
	tr.TLSClientConfig = tlsCfg
	logger := set.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	p := &Prometheus{
		cfg:     cfg,
		name:    name,
		log:     logger,
		client:  &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return nil }},
		m:       newPromMetrics(set.Registerer),
		now:     time.Now,
		sd:      map[string]*fileSDState{},
		targets: map[string]*promTarget{},
	}
	for _, t := range cfg.Targets {
		u, inst, _ := parsePromTarget(t, nil)
		p.static = append(p.static, promTargetSpec{url: u, instance: inst, labels: cfg.Labels})
	}
	return p, nil
}

func promTLSConfig(c PrometheusTLS) (*tls.Config, error) {
	t := &tls.Config{ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify, MinVersion: tls.VersionTLS12} //nolint:gosec // opt-in by config
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.ca_file %s: no PEM certificate found", c.CAFile)
		}
		t.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load tls.cert_file/key_file: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}

// parsePromTarget turns a configured target into a URL and its instance
// (host:port). labels may hold file_sd's __scheme__ and __metrics_path__.
func parsePromTarget(t string, labels map[string]string) (string, string, error) {
	t = strings.TrimSpace(t)
	if t == "" {
		return "", "", errors.New("empty target")
	}
	if !strings.Contains(t, "://") {
		scheme := cmp.Or(labels["__scheme__"], "http")
		path := cmp.Or(labels["__metrics_path__"], "/metrics")
		t = scheme + "://" + t + path
	}
	u, err := url.Parse(t)
	if err != nil {
		return "", "", fmt.Errorf("invalid target %q: %w", t, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", "", fmt.Errorf("target %q: scheme must be http or https", t)
	}
	if u.Host == "" {
		return "", "", fmt.Errorf("target %q: missing host", t)
	}
	inst := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		inst = net.JoinHostPort(u.Hostname(), port)
	}
	return u.String(), inst, nil
}

// Name returns the configured source name.
func (p *Prometheus) Name() string { return p.name }

// Close releases idle connections.
func (p *Prometheus) Close() error {
	p.client.CloseIdleConnections()
	return nil
}

type promScrapeResult struct {
	t        *promTarget
	start, n int // series converted: p.series[start:start+n]
	duration time.Duration
	err      error
}

// Collect scrapes every target concurrently and returns all their series.
// A failing target yields up=0 and a *PartialError; the other targets' data
// is returned. The batch is valid until the next Collect (see Prometheus).
func (p *Prometheus) Collect(ctx context.Context, at time.Time) (metric.Batch, error) {
	targets := p.currentTargets()
	clear(p.series) // drop the previous batch's references
	p.series = p.series[:0]
	p.arena.reset()
	results := make([]promScrapeResult, len(targets))
	var wg sync.WaitGroup
	sem := make(chan struct{}, promMaxScrapes)
	for i, t := range targets {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			start, n, d, err := p.scrape(ctx, t, at)
			results[i] = promScrapeResult{t: t, start: start, n: n, duration: d, err: err}
		})
	}
	wg.Wait()
	p.orderByTarget(results)

	b := metric.Batch{Source: p.name, Series: slices.Grow(p.series, 3*len(results))}
	var errs []error
	for _, r := range results {
		up := 1.0
		if r.err != nil {
			up = 0
			errs = append(errs, fmt.Errorf("scrape %s: %w", r.t.spec.url, r.err))
			p.noteFailure(r.t, r.err)
		} else {
			p.noteSuccess(r.t)
		}
		n := float64(r.n)
		inst := r.t.spec.instance
		p.m.up.WithLabelValues(p.name, inst).Set(up)
		p.m.duration.WithLabelValues(p.name, inst).Set(r.duration.Seconds())
		p.m.samples.WithLabelValues(p.name, inst).Set(n)
		for _, s := range [...]struct {
			name string
			v    float64
		}{{"up", up}, {"scrape_duration_seconds", r.duration.Seconds()}, {"scrape_samples_scraped", n}} {
			b.Series = append(b.Series, metric.Series{
				Name: s.name, Kind: metric.Gauge, Resource: r.t.resource,
				Points: p.arena.point(metric.Point{Time: at, Value: s.v}),
			})
		}
	}
	p.series = b.Series
	if len(errs) > 0 {
		return b, &PartialError{Failed: len(errs), Err: errors.Join(errs...)}
	}
	return b, nil
}

func (p *Prometheus) noteFailure(t *promTarget, err error) {
	now := p.now()
	t.failures++
	p.m.failures.WithLabelValues(p.name, t.spec.instance).Inc()
	switch {
	case !t.down:
		t.down, t.lastLog = true, now
		p.log.Warn("scrape failing", "target", t.spec.url, "err", err)
	case now.Sub(t.lastLog) >= promFailureLogEvery:
		t.lastLog = now
		p.log.Warn("scrape still failing", "target", t.spec.url, "failures", t.failures,
			"window", promFailureLogEvery.String(), "last_err", err)
	}
}

func (p *Prometheus) noteSuccess(t *promTarget) {
	if t.down {
		p.log.Info("scrape recovered", "target", t.spec.url, "failures", t.failures)
	}
	t.down, t.failures = false, 0
}

// currentTargets reloads changed file_sd files and returns the targets,
// keeping the scrape state of those that persist.
func (p *Prometheus) currentTargets() []*promTarget {
	p.mu.Lock()
	defer p.mu.Unlock()
	specs := slices.Clone(p.static)
	for _, path := range p.cfg.FileSD {
		specs = append(specs, p.loadFileSD(path)...)
	}
	next := make(map[string]*promTarget, len(specs))
	out := make([]*promTarget, 0, len(specs))
	for _, s := range specs {
		k := s.key()
		if _, dup := next[k]; dup {
			continue
		}
		t, ok := p.targets[k]
		if !ok {
			t = &promTarget{spec: s, resource: p.resourceFor(s), loopback: promLoopback(s.url)}
		}
		next[k] = t
		out = append(out, t)
	}
	for k, t := range p.targets {
		if _, ok := next[k]; !ok {
			p.m.forget(p.name, t.spec.instance)
		}
	}
	p.targets = next
	return out
}

func (p *Prometheus) resourceFor(s promTargetSpec) metric.Attrs {
	m := map[string]string{}
	for k, v := range s.labels {
		if !strings.HasPrefix(k, "__") {
			m[k] = v
		}
	}
	m["job"] = p.name
	m["instance"] = s.instance
	return metric.NewAttrs(m)
}

// fileSDGroup is one entry of a Prometheus file_sd file.
type fileSDGroup struct {
	Targets []string          `yaml:"targets" json:"targets"`
	Labels  map[string]string `yaml:"labels" json:"labels"`
}

func (p *Prometheus) loadFileSD(path string) []promTargetSpec {
	st := p.sd[path]
	if st == nil {
		st = &fileSDState{}
		p.sd[path] = st
	}
	fi, err := os.Stat(path)
	if err != nil {
		p.sdError(st, path, fmt.Errorf("stat: %w", err))
		return st.specs // keep the last good list
	}
	if fi.ModTime().Equal(st.mod) && fi.Size() == st.size {
		return st.specs
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		p.sdError(st, path, fmt.Errorf("read: %w", err))
		return st.specs
	}
	var groups []fileSDGroup
	if ext := strings.ToLower(filepath.Ext(path)); ext == ".json" {
		err = json.Unmarshal(raw, &groups)
	} else {
		err = yaml.Unmarshal(raw, &groups)
	}
	if err != nil {
		p.sdError(st, path, fmt.Errorf("decode: %w", err))
		return st.specs
	}
	var specs []promTargetSpec
	for _, g := range groups {
		labels := map[string]string{}
		for k, v := range p.cfg.Labels {
			labels[k] = v
		}
		for k, v := range g.Labels {
			labels[k] = v
		}
		for _, t := range g.Targets {
			u, inst, err := parsePromTarget(t, labels)
			if err != nil {
				p.sdError(st, path, err)
				continue
			}
			specs = append(specs, promTargetSpec{url: u, instance: inst, labels: labels})
		}
	}
	st.mod, st.size, st.specs, st.err = fi.ModTime(), fi.Size(), specs, ""
	p.log.Info("file_sd loaded", "file", path, "targets", len(specs))
	return specs
}

func (p *Prometheus) sdError(st *fileSDState, path string, err error) {
	if st.err == err.Error() {
		return
	}
	st.err = err.Error()
	p.log.Warn("file_sd unusable, keeping the previous targets", "file", path, "err", err)
}

// scrape fetches one target and converts its exposition, appending its
// series to p.series. It returns where in p.series they start and how many
// it added (none on an error), and how long the scrape took, not counting
// the wait for p.convMu.
func (p *Prometheus) scrape(ctx context.Context, t *promTarget, at time.Time) (int, int, time.Duration, error) {
	start := p.now()
	buf := p.getBuf()
	defer p.putBuf(buf)
	format, err := p.fetch(ctx, t, buf)
	if err != nil {
		return 0, 0, p.now().Sub(start), err
	}
	fetched := p.now()
	p.convMu.Lock()
	defer p.convMu.Unlock()
	convStart := p.now()
	conv := &t.conv // reused: its intern table and decode buffers carry over
	conv.resource, conv.at, conv.dropped, conv.arena = t.resource, at, nil, &p.arena
	conv.honorLabels, conv.honorTimestamps = p.cfg.HonorLabels, p.cfg.HonorTimestamps
	n0 := len(p.series)
	out, err := conv.parse(p.series, buf.Bytes(), format)
	conv.arena = nil
	for reason, n := range conv.dropped {
		p.m.dropped.WithLabelValues(p.name, reason).Add(float64(n))
	}
	took := fetched.Sub(start) + p.now().Sub(convStart)
	if err != nil {
		clear(out[n0:])
		p.series = out[:n0]
		return 0, 0, took, err
	}
	p.series = out
	series := out[n0:]
	p.trackStaleness(t, series)
	promDedupExemplars(t, series)
	return n0, len(series), took, nil
}

// orderByTarget puts the targets' series in p.series in the order of
// results (the targets' order), each target's in exposition order. Targets
// are converted in the order their fetches finish, which changes from one
// collection to the next; a batch in a stable order lets the pipeline find
// each series' state by its position in the previous batch instead of a
// hash-map lookup that misses the CPU caches at 105k series. The series
// are permuted in place (one int32 per series of scratch).
func (p *Prometheus) orderByTarget(results []promScrapeResult) {
	total, sorted := 0, true
	for _, r := range results {
		sorted = sorted && r.start == total
		total += r.n
	}
	if sorted || total != len(p.series) {
		return
	}
	// src[i] is where the series that belongs at i is now.
	src := slices.Grow(p.perm[:0], total)[:total]
	at := 0
	for _, r := range results {
		for j := range r.n {
			src[at+j] = int32(r.start + j)
		}
		at += r.n
	}
	// Follow each cycle once, moving every series one time (a swap per
	// step moved each three times: 3 % of the agent's CPU at 105k series);
	// filled slots are marked -1.
	for i := range src {
		if src[i] < 0 || int(src[i]) == i {
			continue
		}
		tmp := p.series[i]
		for j := i; ; {
			k := int(src[j])
			src[j] = -1
			if k == i {
				p.series[j] = tmp
				break
			}
			p.series[j] = p.series[k]
			j = k
		}
	}
	p.perm = src[:0]
}

// fetch reads one target's exposition into buf and returns its format.
func (p *Prometheus) fetch(ctx context.Context, t *promTarget, buf *bytes.Buffer) (expfmt.Format, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.spec.url, nil)
	if err != nil {
		return "", fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", promAccept)
	if t.loopback {
		// Compression on a loopback connection saves no bandwidth and
		// costs both sides CPU: inflating was 12 % of the agent's CPU at
		// 105k series (50 loopback targets), and the target deflates every
		// scrape. A target elsewhere is asked for gzip, as Prometheus does.
		req.Header.Set("Accept-Encoding", "identity")
	} else {
		req.Header.Set("Accept-Encoding", "gzip")
	}
	req.Header.Set("User-Agent", "sabaki")
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", strconv.FormatFloat(p.cfg.Timeout.D().Seconds(), 'f', -1, 64))
	if err := p.authorize(req); err != nil {
		return "", err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return "", fmt.Errorf("server returned HTTP status %s", resp.Status)
	}
	var body io.Reader = resp.Body
	if strings.EqualFold(resp.Header.Get("Content-Encoding"), "gzip") {
		gz, err := p.gzipReader(resp.Body)
		if err != nil {
			return "", fmt.Errorf("read gzip body: %w", err)
		}
		defer p.gzips.Put(gz)
		body = gz
	}
	limit := int64(p.cfg.BodySizeLimit)
	n, err := buf.ReadFrom(io.LimitReader(body, limit+1))
	if err != nil {
		return "", fmt.Errorf("read body: %w", err)
	}
	if n > limit {
		return "", fmt.Errorf("body exceeds body_size_limit (%s uncompressed); raise body_size_limit or expose fewer series", appFormatBytes(limit))
	}
	return expfmt.ResponseFormat(resp.Header), nil
}

// promLoopback reports whether a target URL's host is localhost or a
// loopback IP address.
func promLoopback(target string) bool {
	u, err := url.Parse(target)
	if err != nil {
		return false
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (p *Prometheus) authorize(req *http.Request) error {
	switch {
	case p.cfg.BearerToken != "":
		req.Header.Set("Authorization", "Bearer "+p.cfg.BearerToken)
	case p.cfg.BearerTokenFile != "":
		tok, err := os.ReadFile(p.cfg.BearerTokenFile)
		if err != nil {
			return fmt.Errorf("read bearer_token_file: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	case p.cfg.BasicAuth != nil:
		pw := p.cfg.BasicAuth.Password
		if f := p.cfg.BasicAuth.PasswordFile; f != "" {
			b, err := os.ReadFile(f)
			if err != nil {
				return fmt.Errorf("read basic_auth.password_file: %w", err)
			}
			pw = strings.TrimSpace(string(b))
		}
		req.SetBasicAuth(p.cfg.BasicAuth.Username, pw)
	}
	return nil
}

var promSeed = maphash.MakeSeed()

// trackStaleness counts series that were in the previous successful scrape
// of t and are not in this one. A target exposes the same series in the
// same order scrape after scrape: then nothing is gone and nothing needs
// sorting (the sort was 2 % of the agent's CPU at 105k series).
func (p *Prometheus) trackStaleness(t *promTarget, series []metric.Series) {
	var h maphash.Hash
	h.SetSeed(promSeed)
	t.next = t.next[:0]
	for i := range series {
		h.Reset()
		h.WriteString(series[i].Name)
		for _, a := range series[i].Attrs {
			h.WriteByte(0)
			h.WriteString(a.Key)
			h.WriteByte(0)
			h.WriteString(a.Value)
		}
		t.next = append(t.next, h.Sum64())
	}
	if t.seen != nil && slices.Equal(t.next, t.order) {
		return // t.seen holds the same hashes, sorted
	}
	t.order = append(t.order[:0], t.next...)
	slices.Sort(t.next)
	gone, j := 0, 0
	for _, k := range t.seen {
		for j < len(t.next) && t.next[j] < k {
			j++
		}
		if j == len(t.next) || t.next[j] != k {
			gone++
		}
	}
	if gone > 0 {
		p.m.stale.WithLabelValues(p.name).Add(float64(gone))
	}
	t.seen, t.next = t.next, t.seen
}

// promDedupExemplars drops exemplars the target already exposed in its
// previous successful scrape. An exposition keeps showing an exemplar until
// a newer one replaces it (client_golang keeps one per bucket and a few
// per native histogram), so without this the same trace would be attached
// to every later window, as if it had been slow in each. Identity is the
// trace and span ID, value and timestamp, which needs no clock agreement
// with the target.
func promDedupExemplars(t *promTarget, series []metric.Series) {
	if t.exSeen == nil {
		t.exSeen, t.exNext = map[uint64]struct{}{}, map[uint64]struct{}{}
	}
	clear(t.exNext)
	var h maphash.Hash
	h.SetSeed(promSeed)
	for i := range series {
		for j := range series[i].Points {
			pt := &series[i].Points[j]
			if len(pt.Exemplars) == 0 {
				continue
			}
			kept := pt.Exemplars[:0]
			for _, e := range pt.Exemplars {
				h.Reset()
				h.WriteString(series[i].Name)
				h.Write(e.TraceID[:])
				h.Write(e.SpanID[:])
				var b [16]byte
				binary.LittleEndian.PutUint64(b[:8], math.Float64bits(e.Value))
				binary.LittleEndian.PutUint64(b[8:], uint64(e.Time.UnixNano()))
				h.Write(b[:])
				k := h.Sum64()
				t.exNext[k] = struct{}{}
				if _, old := t.exSeen[k]; !old {
					kept = append(kept, e)
				}
			}
			if len(kept) == 0 {
				kept = nil
			}
			pt.Exemplars = kept
		}
	}
	t.exSeen, t.exNext = t.exNext, t.exSeen
}

func appFormatBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// promMetrics are the source's self-metrics, shared by all prometheus
// sources registered on the same Registerer.
type promMetrics struct {
	up, duration, samples *prometheus.GaugeVec
	failures              *prometheus.CounterVec
	stale                 *prometheus.CounterVec
	dropped               *prometheus.CounterVec
}

func newPromMetrics(reg prometheus.Registerer) *promMetrics {
	return &promMetrics{
		up: appRegister(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sabaki_prometheus_target_up", Help: "1 when the last scrape of the target succeeded, 0 otherwise.",
		}, []string{"source", "instance"})),
		duration: appRegister(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sabaki_prometheus_scrape_duration_seconds", Help: "Duration of the last scrape of the target.",
		}, []string{"source", "instance"})),
		samples: appRegister(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sabaki_prometheus_scrape_samples", Help: "Series produced by the last scrape of the target.",
		}, []string{"source", "instance"})),
		failures: appRegister(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_prometheus_scrape_failures_total", Help: "Failed scrapes per target.",
		}, []string{"source", "instance"})),
		stale: appRegister(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_prometheus_stale_series_total", Help: "Series that disappeared from a target between two successful scrapes.",
		}, []string{"source"})),
		dropped: appRegister(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_prometheus_dropped_series_total", Help: "Exposed series that could not be converted, by reason.",
		}, []string{"source", "reason"})),
	}
}

func (m *promMetrics) forget(source, instance string) {
	m.up.DeleteLabelValues(source, instance)
	m.duration.DeleteLabelValues(source, instance)
	m.samples.DeleteLabelValues(source, instance)
	m.failures.DeleteLabelValues(source, instance)
}

// appRegister registers c, or returns the collector already registered
// under the same descriptor (two sources of one type share their vectors).
func appRegister[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}

// promConverter turns decoded metric families into sabaki series. The
// protobuf format is decoded by decodeFamily straight into the reusable
// promFamily; the OpenMetrics and classic text formats by their fast paths
// (prometheus_openmetrics.go, prometheus_text.go), or, for what those do
// not handle, by expfmt's parsers and an adapter from client_model types;
// all meet in appendFamily, so the mapping is the same whatever the format.
type promConverter struct {
	resource        metric.Attrs
	at              time.Time
	honorLabels     bool
	honorTimestamps bool
	// intern holds label names and values seen before (kept per target
	// across scrapes): repeated strings cost no allocation.
	intern map[string]string
	// labelPos holds the metric labels of the target's previous protobuf
	// scrape in exposition order (decodeLabel), nlabel counts those of the
	// current one.
	labelPos []promLabel
	nlabel   int
	// dropped counts exposed series that were skipped, by reason.
	dropped map[string]int
	// arena, when set, provides the series' points and attributes (see
	// promArena); nil allocates each.
	arena *promArena

	fam promFamily
}

// promArena hands out the points and attributes of a collection's series
// from two slabs that the next collection reuses, instead of two small
// allocations per series per scrape (2 × 105,000 every 5 s at 50 targets of
// 2,100 series). A slab that fills up is replaced by a larger one; series
// already handed out keep the old one alive until the batch is dropped.
type promArena struct {
	points []metric.Point
	labels []metric.Attr
	// used counts the attributes handed out since reset, over all slabs.
	used int
}

// reset makes the slabs reusable. The previous batch must no longer be in
// use. Slabs far larger than the last collection needed are dropped.
func (a *promArena) reset() {
	clear(a.points) // drop references to handed-over histograms and exemplars
	if cap(a.points) > 1<<16 && len(a.points) < cap(a.points)/4 {
		a.points = nil
	}
	switch {
	case cap(a.labels) < a.used: // one slab for all of them next time
		a.labels = make([]metric.Attr, 0, a.used+a.used/4)
	case cap(a.labels) > 1<<16 && a.used < cap(a.labels)/4:
		a.labels = nil
	}
	a.points, a.labels, a.used = a.points[:0], a.labels[:0], 0
}

// point returns a one-point slice holding pt.
func (a *promArena) point(pt metric.Point) []metric.Point {
	if a == nil {
		return []metric.Point{pt}
	}
	a.points = append(a.points, pt)
	n := len(a.points)
	return a.points[n-1 : n : n]
}

// attrs returns an empty Attrs with room for n attributes.
func (a *promArena) attrs(n int) metric.Attrs {
	if a == nil {
		return make(metric.Attrs, 0, n)
	}
	a.used += n
	l := len(a.labels)
	if cap(a.labels)-l < n {
		a.labels, l = make([]metric.Attr, 0, max(2*cap(a.labels), n, 1024)), 0
	}
	a.labels = a.labels[:l+n]
	return a.labels[l : l : l+n]
}

// promInternMax bounds a target's intern table; it is cleared beyond.
const promInternMax = 1 << 16

// internString is str for a string already allocated.
func (c *promConverter) internString(s string) string {
	if v, ok := c.intern[s]; ok {
		return v
	}
	if c.intern == nil || len(c.intern) >= promInternMax {
		c.intern = make(map[string]string, 1024)
	}
	c.intern[s] = s
	return s
}

// trimLabelPos drops the remembered labels past those of the scrape just
// decoded.
func (c *promConverter) trimLabelPos() {
	if c.nlabel < len(c.labelPos) {
		clear(c.labelPos[c.nlabel:])
		c.labelPos = c.labelPos[:c.nlabel]
	}
}

func (c *promConverter) str(b []byte) string {
	if s, ok := c.intern[string(b)]; ok {
		return s
	}
	s := string(b)
	if c.intern == nil || len(c.intern) >= promInternMax {
		c.intern = make(map[string]string, 1024)
	}
	c.intern[s] = s
	return s
}

// parse decodes an exposition body in the given format (FmtUnknown falls
// back to the classic text format), converts every family and appends the
// series to out. On an error the caller drops whatever was appended past
// len(out).
func (c *promConverter) parse(out []metric.Series, body []byte, format expfmt.Format) ([]metric.Series, error) {
	what := "text"
	switch format.FormatType() {
	case expfmt.TypeProtoDelim:
		res, err := c.parseProto(out, body)
		if err != nil {
			return res, fmt.Errorf("parse protobuf exposition: %w", err)
		}
		return res, nil
	case expfmt.TypeOpenMetrics:
		what = "OpenMetrics"
		res, err := c.parseOpenMetricsFast(out, body)
		if err == nil {
			return res, nil
		}
		c.dropped = nil // the slow path below counts again
	default:
		if format.FormatType() != expfmt.TypeTextPlain {
			format = expfmt.FmtText
		}
		res, err := c.parseTextFast(out, body)
		if err == nil {
			return res, nil
		}
		c.dropped = nil
	}
	dec := expfmt.NewDecoder(bytes.NewReader(body), format)
	var mf dto.MetricFamily
	for {
		err := dec.Decode(&mf)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return out, fmt.Errorf("parse %s exposition: %w", what, err)
		}
		c.fam.fromDTO(&mf)
		out = c.appendFamily(out, &c.fam)
	}
	return out, nil
}

func (c *promConverter) drop(reason string) {
	if c.dropped == nil {
		c.dropped = map[string]int{}
	}
	c.dropped[reason]++
}

// promUnits maps OpenMetrics unit names to UCUM, as OTel writes them.
var promUnits = map[string]string{
	"seconds": "s", "milliseconds": "ms", "microseconds": "us", "nanoseconds": "ns",
	"bytes": "By", "ratio": "1", "percent": "%", "celsius": "Cel",
}

func (c *promConverter) appendFamily(out []metric.Series, f *promFamily) []metric.Series {
	unit := f.unit
	if u, ok := promUnits[unit]; ok {
		unit = u
	}
	for i := range f.metrics {
		m := &f.metrics[i]
		attrs, res := c.labels(m.labels, "", "")
		ts := c.at
		if c.honorTimestamps && m.hasTS {
			ts = time.UnixMilli(m.timestampMs)
		}
		base := metric.Series{Name: f.name, Unit: unit, Description: f.help, Resource: res, Attrs: attrs}
		switch f.typ {
		case dto.MetricType_COUNTER:
			s := base
			s.Kind, s.Temporality = metric.Counter, metric.Cumulative
			pt := metric.Point{Start: m.created, Time: ts, Value: m.value}
			if m.hasExemplar {
				pt.Exemplars = []metric.Exemplar{m.exemplar.convert(ts)}
			}
			s.Points = c.arena.point(pt)
			out = append(out, s)
		case dto.MetricType_GAUGE, dto.MetricType_UNTYPED:
			s := base
			s.Kind = metric.Gauge
			s.Points = c.arena.point(metric.Point{Time: ts, Value: m.value})
			out = append(out, s)
		case dto.MetricType_SUMMARY:
			out = c.appendSummary(out, base, m, ts)
		case dto.MetricType_HISTOGRAM:
			pt, err := promHistogram(m, ts)
			if err != nil {
				c.drop("invalid_histogram")
				continue
			}
			s := base
			s.Kind, s.Temporality = metric.Histogram, metric.Cumulative
			s.Points = c.arena.point(pt)
			out = append(out, s)
		default: // GAUGE_HISTOGRAM: a snapshot, not a cumulative distribution; no faithful mapping
			c.drop("unsupported_type")
		}
	}
	return out
}

func (c *promConverter) appendSummary(out []metric.Series, base metric.Series, m *promMetric, ts time.Time) []metric.Series {
	for _, q := range m.quantiles {
		s := base
		s.Kind = metric.Gauge
		s.Attrs, s.Resource = c.labels(m.labels, "quantile", strconv.FormatFloat(q.q, 'f', -1, 64))
		s.Points = c.arena.point(metric.Point{Time: ts, Value: q.v})
		out = append(out, s)
	}
	count := float64(m.count)
	if m.hasCountFloat {
		count = m.countFloat
	}
	s := base
	s.Name, s.Kind, s.Temporality = base.Name+"_sum", metric.Counter, metric.Cumulative
	s.Points = c.arena.point(metric.Point{Start: m.created, Time: ts, Value: m.sum})
	out = append(out, s)
	s.Name = base.Name + "_count"
	s.Points = c.arena.point(metric.Point{Start: m.created, Time: ts, Value: count})
	out = append(out, s)
	return out
}

// labels returns the point attributes (plus one extra pair when extraKey is
// set) and the resource to use, applying honor_labels on conflicts between
// exposed and target labels.
func (c *promConverter) labels(lp []promLabel, extraKey, extraVal string) (metric.Attrs, metric.Attrs) {
	n := len(lp)
	if extraKey != "" {
		n++
	}
	attrs := c.arena.attrs(n)
	res := c.resource
	for _, l := range lp {
		k := l.name
		if _, clash := c.resource.Get(k); clash {
			if c.honorLabels {
				res = promWithoutKey(res, k)
			} else {
				k = "exported_" + k
			}
		}
		attrs = append(attrs, metric.Attr{Key: k, Value: l.value})
	}
	if extraKey != "" {
		attrs = append(attrs, metric.Attr{Key: extraKey, Value: extraVal})
	}
	if !slices.IsSortedFunc(attrs, func(a, b metric.Attr) int { return strings.Compare(a.Key, b.Key) }) {
		attrs.Sort()
	}
	return attrs, res
}

func promWithoutKey(a metric.Attrs, key string) metric.Attrs {
	out := make(metric.Attrs, 0, len(a))
	for _, kv := range a {
		if kv.Key != key {
			out = append(out, kv)
		}
	}
	return out
}

// promCreated returns a created timestamp as a point's Start; zero when absent.
func promCreated(ts *timestamppb.Timestamp) time.Time {
	if ts == nil || !ts.IsValid() || ts.GetSeconds() <= 0 {
		return time.Time{}
	}
	return ts.AsTime()
}

// promIsNative follows Prometheus: a histogram is native when it has spans
// or a zero bucket (client_golang adds an empty span to an empty one).
func promIsNative(m *promMetric) bool {
	return len(m.posSpans) > 0 || len(m.negSpans) > 0 || m.zt > 0 || m.zc > 0 || m.zcf > 0
}

// promHistogram converts a histogram metric into a point. A family exposing
// both the native and the classic form (client_golang with Buckets and
// NativeHistogramBucketFactor) is read as native: it is exact and finer;
// the classic buckets are used only when no native form is present.
func promHistogram(m *promMetric, ts time.Time) (metric.Point, error) {
	if !m.hasHist {
		return metric.Point{}, errors.New("histogram sample without histogram data")
	}
	var (
		hist *histogram.Histogram
		err  error
	)
	if promIsNative(m) {
		hist, err = promNative(m)
	} else {
		hist, err = promClassic(m)
	}
	if err != nil {
		return metric.Point{}, err
	}
	pt := metric.Point{Start: m.created, Time: ts, Hist: hist}
	for i := range m.exemplars {
		pt.Exemplars = append(pt.Exemplars, m.exemplars[i].convert(ts))
	}
	for i := range m.buckets {
		if b := &m.buckets[i]; b.hasExemplar {
			if x := b.exemplar.convert(ts); !promHasExemplar(pt.Exemplars, x) {
				pt.Exemplars = append(pt.Exemplars, x)
			}
		}
	}
	return pt, nil
}

func promHasExemplar(es []metric.Exemplar, x metric.Exemplar) bool {
	for _, e := range es {
		if e.TraceID == x.TraceID && e.SpanID == x.SpanID && e.Value == x.Value && e.Time.Equal(x.Time) {
			return true
		}
	}
	return false
}

// promNative converts a native histogram. histogram.FromNative takes the
// Prometheus layout as is (schema = scale, Prometheus index = OTel index+1,
// the zero threshold kept); float histograms are accepted when their counts
// are whole numbers.
func promNative(m *promMetric) (*histogram.Histogram, error) {
	n := histogram.Native{
		Schema:         m.schema,
		ZeroThreshold:  m.zt,
		ZeroCount:      m.zc,
		Count:          m.count,
		Sum:            m.sum,
		PositiveSpans:  m.posSpans,
		NegativeSpans:  m.negSpans,
		PositiveDeltas: m.posDeltas,
		NegativeDeltas: m.negDeltas,
	}
	if m.hasCountFloat || len(m.posCounts) > 0 || len(m.negCounts) > 0 {
		var err error
		if n.Count, err = promWholeCount(m.countFloat); err != nil {
			return nil, err
		}
		if n.ZeroCount, err = promWholeCount(m.zcf); err != nil {
			return nil, err
		}
		if n.PositiveDeltas, err = promFloatDeltas(m.posCounts); err != nil {
			return nil, err
		}
		if n.NegativeDeltas, err = promFloatDeltas(m.negCounts); err != nil {
			return nil, err
		}
	}
	hist, err := histogram.FromNative(n, histogram.DefaultMaxSize, histogram.DefaultMaxScale)
	if err != nil {
		return nil, fmt.Errorf("native histogram: %w", err)
	}
	return hist, nil
}

func promWholeCount(f float64) (uint64, error) {
	if f < 0 || f != math.Trunc(f) || f > 1<<53 {
		return 0, fmt.Errorf("float histogram count %v is not a whole number", f)
	}
	return uint64(f), nil
}

func promFloatDeltas(counts []float64) ([]int64, error) {
	out := make([]int64, len(counts))
	var prev int64
	for i, f := range counts {
		c, err := promWholeCount(f)
		if err != nil {
			return nil, err
		}
		out[i] = int64(c) - prev
		prev = int64(c)
	}
	return out, nil
}

// promClassic converts cumulative `le` buckets into per-bucket counts (the
// last one the +Inf overflow) and then into an exponential histogram.
func promClassic(m *promMetric) (*histogram.Histogram, error) {
	count := m.count
	if m.hasCountFloat {
		var err error
		if count, err = promWholeCount(m.countFloat); err != nil {
			return nil, err
		}
	}
	bounds := make([]float64, 0, len(m.buckets))
	counts := make([]uint64, 0, len(m.buckets)+1)
	var prev uint64
	for i := range m.buckets {
		b := &m.buckets[i]
		cum := b.cum
		if b.hasCumFloat {
			var err error
			if cum, err = promWholeCount(b.cumFloat); err != nil {
				return nil, err
			}
		}
		ub := b.upper
		if math.IsNaN(ub) {
			return nil, errors.New("classic histogram: NaN bucket bound")
		}
		if cum < prev {
			return nil, fmt.Errorf("classic histogram: cumulative count decreases at le=%v", ub)
		}
		if len(bounds) > 0 && ub <= bounds[len(bounds)-1] {
			return nil, fmt.Errorf("classic histogram: bucket bounds not increasing at le=%v", ub)
		}
		if math.IsInf(ub, +1) {
			break // the +Inf bucket equals the count; the overflow is computed below
		}
		bounds = append(bounds, ub)
		counts = append(counts, cum-prev)
		prev = cum
	}
	if count < prev {
		return nil, fmt.Errorf("classic histogram: count %d below the last bucket's %d", count, prev)
	}
	counts = append(counts, count-prev)
	hist, err := histogram.FromExplicit(bounds, counts, m.sum, histogram.DefaultMaxSize, histogram.DefaultMaxScale)
	if err != nil {
		return nil, fmt.Errorf("classic histogram: %w", err)
	}
	return hist, nil
}

// convert turns an exposed exemplar into a metric.Exemplar: trace_id and
// span_id labels (hex) become the trace context, other labels its
// attributes; without a timestamp it takes the sample's.
func (e *promExemplarRaw) convert(ts time.Time) metric.Exemplar {
	x := metric.Exemplar{Value: e.value, Time: ts}
	if e.hasTS {
		x.Time = e.ts
	}
	for _, l := range e.labels {
		switch k, v := l.name, l.value; {
		case k == "trace_id" && promHexID(x.TraceID[:], v):
		case k == "span_id" && promHexID(x.SpanID[:], v):
		default:
			x.Attrs = append(x.Attrs, metric.Attr{Key: k, Value: v})
		}
	}
	x.Attrs.Sort()
	return x
}

// promHexID decodes a hex ID right-aligned into dst (a 64-bit trace ID
// fills the low half of a 128-bit one, as Jaeger and Zipkin do). It reports
// false when v is not hex or is too long.
func promHexID(dst []byte, v string) bool {
	if len(v) == 0 || len(v)%2 != 0 || len(v)/2 > len(dst) {
		return false
	}
	var tmp [16]byte
	n, err := hex.Decode(tmp[:], []byte(v))
	if err != nil {
		return false
	}
	clear(dst)
	copy(dst[len(dst)-n:], tmp[:n])
	return true
}
