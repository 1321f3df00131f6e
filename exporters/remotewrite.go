package exporters

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/golang/snappy"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

// RemoteWriteConfig configures the Prometheus remote-write exporter (type
// "remote_write"): Remote-Write 1.0 to Prometheus, Grafana Mimir,
// VictoriaMetrics, Thanos Receive or Cortex.
type RemoteWriteConfig struct {
	Common `yaml:",inline"`
	// URL is the receiver's write endpoint, e.g.
	// http://127.0.0.1:9090/api/v1/write (Prometheus with
	// --web.enable-remote-write-receiver), https://mimir/api/v1/push.
	URL string `yaml:"url"`
	// Headers are added to every request (e.g. X-Scope-OrgID for Mimir
	// tenants). Values are secrets: never logged.
	Headers map[string]Secret `yaml:"headers"`
	// BearerToken is sent as "Authorization: Bearer …".
	BearerToken Secret `yaml:"bearer_token"`
	// BasicAuth is sent as "Authorization: Basic …".
	BasicAuth BasicAuth `yaml:"basic_auth"`
	// TLS configures server verification and a client certificate.
	TLS TLSConfig `yaml:"tls"`
	// MaxSamplesPerSend splits a window into requests of at most this many
	// samples (a histogram counts as one).
	MaxSamplesPerSend int `yaml:"max_samples_per_send"`
	// Timeout bounds one request.
	Timeout config.Duration `yaml:"timeout"`
	// PromoteResourceAttributes are resource attributes copied onto every
	// series as labels (besides job and instance), e.g. cloud.region; all
	// resource attributes are always on target_info.
	PromoteResourceAttributes []string `yaml:"promote_resource_attributes"`
	// MaxRevisionAge is how long after its end a window re-emitted with
	// late points can still correct the cumulative totals; keep it at least
	// agent.lateness plus one window.
	MaxRevisionAge config.Duration `yaml:"max_revision_age"`
	// Outbox configures the durable queue the exporter sends from.
	Outbox OutboxConfig `yaml:"outbox"`
}

// BasicAuth is HTTP basic authentication; the password is a secret.
type BasicAuth struct {
	Username string `yaml:"username"`
	Password Secret `yaml:"password"`
}

// DefaultRemoteWriteConfig returns the defaults: 2,000 samples per request
// (Prometheus's own default), 30 s timeout, revisions accepted for 6 min.
func DefaultRemoteWriteConfig() RemoteWriteConfig {
	return RemoteWriteConfig{
		Common:            Common{Type: "remote_write", Name: "remote_write"},
		MaxSamplesPerSend: 2000,
		Timeout:           config.Duration(30 * time.Second),
		MaxRevisionAge:    config.Duration(6 * time.Minute),
		Outbox:            DefaultOutboxConfig(),
	}
}

// String describes the config without secrets.
func (c RemoteWriteConfig) String() string {
	auth := "none"
	switch {
	case c.BearerToken != "":
		auth = "bearer <redacted>"
	case c.BasicAuth.Username != "":
		auth = "basic " + c.BasicAuth.Username + ":<redacted>"
	}
	return fmt.Sprintf("remote_write{name=%s url=%s headers=%s auth=%s max_samples_per_send=%d timeout=%s}",
		c.Name, c.URL, redactedHeaders(c.Headers), auth, c.MaxSamplesPerSend, c.Timeout)
}

// rwReservedHeaders are set by the exporter; configuring them would break
// the protocol.
var rwReservedHeaders = []string{"Content-Encoding", "Content-Type", "X-Prometheus-Remote-Write-Version", "Content-Length"}

// Validate implements config.Validator.
func (c *RemoteWriteConfig) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, config.Field("url", "must be set (e.g. http://127.0.0.1:9090/api/v1/write)"))
	} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, config.Field("url", "must be an http or https URL with a host"))
	} else if u.User != nil {
		errs = append(errs, config.Field("url", "must not carry credentials; use basic_auth"))
	}
	if c.BearerToken != "" && (c.BasicAuth != BasicAuth{}) {
		errs = append(errs, config.Field("bearer_token", "cannot be combined with basic_auth"))
	}
	if c.BasicAuth.Password != "" && c.BasicAuth.Username == "" {
		errs = append(errs, config.Field("basic_auth.username", "must be set with a password"))
	}
	for k := range c.Headers {
		for _, r := range rwReservedHeaders {
			if strings.EqualFold(k, r) {
				errs = append(errs, config.Field("headers."+k, "is set by the exporter"))
			}
		}
		if strings.EqualFold(k, "Authorization") && (c.BearerToken != "" || c.BasicAuth != BasicAuth{}) {
			errs = append(errs, config.Field("headers."+k, "conflicts with bearer_token/basic_auth"))
		}
	}
	if c.MaxSamplesPerSend <= 0 {
		errs = append(errs, config.Field("max_samples_per_send", "must be positive"))
	}
	if c.Timeout <= 0 {
		errs = append(errs, config.Field("timeout", "must be positive"))
	}
	if c.MaxRevisionAge < 0 {
		errs = append(errs, config.Field("max_revision_age", "must not be negative"))
	}
	errs = append(errs, validateHeaders("headers", c.Headers), config.Join("tls", c.TLS.Validate()), config.Join("outbox", c.Outbox.Validate()))
	return errors.Join(errs...)
}

// RemoteWrite sends closed windows with the Prometheus Remote-Write 1.0
// protocol (https://prometheus.io/docs/specs/prw/remote_write_spec/):
// a snappy-compressed prometheus.WriteRequest protobuf per request, encoded
// here with protowire (field numbers of prompb/types.proto and remote.proto)
// rather than by importing the Prometheus module.
//
// What Prometheus gets:
//   - Counters as cumulative "<name>_total" samples and histograms as
//     cumulative native histograms (integer buckets, schema = scale clamped
//     to 8), both accumulated in memory from the windows' deltas (see
//     cumulator: a restart is a counter reset, which rate() and increase()
//     handle); gauges as the window's last value. Samples are stamped with
//     the window end; a series' first total is preceded by a zero 1 ms
//     after its start, so rate() and increase() count its first window.
//   - Names per the OTel → Prometheus conventions (remotewrite_names.go);
//     resource attributes give job (service.namespace/service.name) and
//     instance (service.instance.id, else host.name), the ones listed in
//     promote_resource_attributes become labels, and all of them are on a
//     target_info series per resource.
//   - Exemplars with trace_id and span_id labels (hex) and as many of their
//     filtered attributes as fit the 128-character exemplar label limit.
//   - Metric metadata (type, unit, help) for each family in the request.
//
// Series that translate to the same labels are merged (counters and
// histograms add up, a gauge keeps the last). A window re-emitted with late
// points updates the totals; since Prometheus rejects samples older than
// the newest one of a series, the revised totals are stamped 1 ms after the
// last accepted sample, and revised gauge values, which cannot be moved, are
// skipped and counted.
//
// Errors follow the spec: 5xx and 429 are retryable (with Retry-After),
// other 4xx are Permanent; network errors are retryable. A 400 (409 from
// Thanos Receive) saying a sample is out of order, a duplicate or too old
// is different: the receiver already holds samples of those series at or
// after that time. That is what a window re-sent after a restart gets for
// the series a previous process had delivered (the outbox re-sends the
// window in flight at a crash). Like Prometheus and vmagent, such a request
// is not retried; unlike a refusal for bad data it is not counted as lost:
// the series the receiver already holds are found (see sendChunk), counted
// in sabaki_exporter_remote_write_skipped_total{reason="already_held"}, and
// their running totals restart from the next window, so the totals a
// restarted process sends never count the held window a second time.
type RemoteWrite struct {
	name   string
	cfg    RemoteWriteConfig
	logger *slog.Logger
	client *http.Client
	cum    *cumulator
	// lastT is the timestamp of the last accepted sample of each gauge and
	// target_info series (counters and histograms keep theirs in cum).
	lastT map[string]time.Time
	// done holds the series of the window being retried that were already
	// accepted, so a retry after a failed split request sends only the rest.
	done struct {
		start    time.Time
		revision int
		keys     map[string]bool
	}
	enc rwEncoder
	// sentOne is set once the receiver accepted a request of this process:
	// refusals as already held before that are the expected re-send of the
	// window in flight at a restart (logged at info), later ones are not.
	sentOne bool

	samples *prometheus.CounterVec
	skipped *prometheus.CounterVec
	bytes   prometheus.Counter
}

var _ Exporter = (*RemoteWrite)(nil)

// NewRemoteWrite builds the remote-write exporter.
func NewRemoteWrite(cfg RemoteWriteConfig, set Settings) (*RemoteWrite, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("remote_write exporter config: %w", err)
	}
	// Empty secrets are a problem of the environment (an unset variable),
	// not of the file: validate accepts them, starting refuses.
	if err := emptySecrets("headers", cfg.Headers); err != nil {
		return nil, fmt.Errorf("remote_write exporter %q: %w", cfg.Name, err)
	}
	if cfg.BasicAuth.Username != "" && cfg.BasicAuth.Password == "" {
		return nil, fmt.Errorf("remote_write exporter %q: basic_auth.password: empty value (is the environment variable it names set?)", cfg.Name)
	}
	name := cfg.Name
	if name == "" {
		name = "remote_write"
	}
	logger := set.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if strings.HasPrefix(cfg.URL, "https:") {
		tc, err := cfg.TLS.Load()
		if err != nil {
			return nil, fmt.Errorf("remote_write exporter %q: %w", name, err)
		}
		tr.TLSClientConfig = tc
	} else if u, _ := url.Parse(cfg.URL); !isLoopbackHost(u.Hostname()) && (cfg.BearerToken != "" || cfg.BasicAuth != BasicAuth{} || len(cfg.Headers) > 0) {
		logger.Warn("remote_write sends credentials over plaintext HTTP to a non-loopback host", "exporter", name, "host", u.Host)
	}
	lbl := prometheus.Labels{"exporter": name}
	e := &RemoteWrite{
		name:   name,
		cfg:    cfg,
		logger: logger.With("exporter", name),
		client: &http.Client{Transport: tr, Timeout: cfg.Timeout.D()},
		cum:    newCumulator(cfg.MaxRevisionAge.D()),
		lastT:  map[string]time.Time{},
		samples: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_exporter_remote_write_samples_total", ConstLabels: lbl,
			Help: "Samples, histograms and exemplars accepted by the remote-write receiver.",
		}, []string{"kind"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_exporter_remote_write_skipped_total", ConstLabels: lbl,
			Help: "Points not sent: revised gauge values older than the last sample (out_of_order), revisions after max_revision_age (too_late), series the receiver already held at that time (already_held: a window re-sent after a restart).",
		}, []string{"reason"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sabaki_exporter_remote_write_sent_bytes_total", ConstLabels: lbl,
			Help: "Compressed request bytes accepted by the remote-write receiver.",
		}),
	}
	var err error
	if e.samples, err = remoteRegister(set.Registerer, e.samples); err == nil {
		if e.skipped, err = remoteRegister(set.Registerer, e.skipped); err == nil {
			e.bytes, err = remoteRegister(set.Registerer, e.bytes)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("remote_write exporter %q: register self-metrics: %w", name, err)
	}
	return e, nil
}

// Name implements Exporter.
func (e *RemoteWrite) Name() string { return e.name }

// Shutdown implements Exporter. Nothing is buffered; idle connections close.
func (e *RemoteWrite) Shutdown(context.Context) error {
	e.client.CloseIdleConnections()
	return nil
}

// Export implements Exporter: it translates w and sends it in requests of at
// most max_samples_per_send samples.
func (e *RemoteWrite) Export(ctx context.Context, w *metric.Window) error {
	if !e.done.start.Equal(w.Start) || e.done.revision != w.Revision {
		e.done.start, e.done.revision, e.done.keys = w.Start, w.Revision, map[string]bool{}
	}
	series := e.build(w)
	// A request refused for good (4xx: an out-of-order sample, a duplicate
	// after a restart) does not stop the other requests of the window: they
	// are sent, and the first refusal is returned at the end, so the outbox
	// drops the window only once everything else got through.
	var refused error
	held, resent := 0, !e.sentOne
	var heldErr error
	for len(series) > 0 {
		n, count := 0, 0
		for n < len(series) && (n == 0 || count+series[n].size() <= e.cfg.MaxSamplesPerSend) {
			count += series[n].size()
			n++
		}
		chunk := series[:n]
		series = series[n:]
		h, herr, err := e.sendChunk(ctx, chunk)
		held += h
		if herr != nil {
			heldErr = herr
		}
		if err != nil {
			err = fmt.Errorf("remote_write window %s to %s: %w", w.Start.UTC().Format(time.RFC3339), e.cfg.URL, err)
			if !IsPermanent(err) {
				return err
			}
			if refused == nil {
				refused = err
			}
			for i := range chunk {
				e.done.keys[chunk[i].key] = true
			}
		}
	}
	if held > 0 {
		e.skipped.WithLabelValues("already_held").Add(float64(held))
		attrs := []any{"window", w.Start.UTC().Format(time.RFC3339), "revision", w.Revision, "series", held, "receiver", bodyOf(heldErr)}
		if resent {
			e.logger.Info("remote_write receiver already holds series of a re-sent window (delivered before a restart); not sent again", attrs...)
		} else {
			e.logger.Warn("remote_write receiver refused series as out of order or duplicate: it already holds newer samples (another writer of the same series?); their totals restart from the next window", attrs...)
		}
	}
	return refused
}

// sendChunk sends one request of series (sorted by labels). When the
// receiver refuses it as already holding some of the samples (isHeld), it
// finds those series with a binary search and sends the rest, relying on
// how they came to be held: a process sends a window's series in label order
// and stops at a crash, so the series a re-sent window finds already held
// are the first ones. Each probe sends the unknown tail [mid, hi): accepted,
// the boundary is before mid; refused, the series at mid is held. That
// takes about log2(len) requests, and works whether the receiver rejects a
// whole request for one bad sample (Prometheus 2) or keeps the good ones
// (Mimir; re-sending them is an identical duplicate, which is accepted).
// Should the held series not be a prefix (a rare refusal in the middle of a
// window for another reason), a few unheld series may be taken as held: they
// miss one window, they are never counted twice.
//
// Held series are marked done for this window and their running totals are
// forgotten, so their next total starts from zero just after the next
// window's start, after the receiver's last sample. It returns the number of
// held series, the refusal that showed them, and any other error.
func (e *RemoteWrite) sendChunk(ctx context.Context, chunk []rwSeries) (held int, heldErr, err error) {
	err = e.sendAccepted(ctx, chunk)
	if err == nil || !isHeld(err) {
		return 0, nil, err
	}
	heldErr = err
	lo, hi := 1, len(chunk) // chunk[:lo] held, chunk[hi:] accepted, [lo, hi) unknown
	for lo < hi {
		mid := (lo + hi) / 2
		err := e.sendAccepted(ctx, chunk[mid:hi])
		switch {
		case err == nil:
			hi = mid
		case isHeld(err):
			lo = mid + 1
		default:
			e.forgetHeld(chunk[:lo])
			return lo, heldErr, err
		}
	}
	e.forgetHeld(chunk[:lo])
	return lo, heldErr, nil
}

// sendAccepted sends series in one request and records them as accepted
// when the receiver took them.
func (e *RemoteWrite) sendAccepted(ctx context.Context, series []rwSeries) error {
	body := e.enc.request(series)
	if err := e.send(ctx, body); err != nil {
		return err
	}
	e.sentOne = true
	e.bytes.Add(float64(len(body)))
	for i := range series {
		s := &series[i]
		e.done.keys[s.key] = true
		if s.counterLike {
			e.cum.commit(s.key, s.t)
		} else if s.t.After(e.lastT[s.key]) {
			e.lastT[s.key] = s.t
		}
		e.samples.WithLabelValues("sample").Add(float64(len(s.samples)))
		e.samples.WithLabelValues("histogram").Add(float64(len(s.hists)))
		e.samples.WithLabelValues("exemplar").Add(float64(len(s.exemplars)))
	}
	return nil
}

// forgetHeld marks series the receiver already holds as done for this
// window and restarts their totals.
func (e *RemoteWrite) forgetHeld(series []rwSeries) {
	for i := range series {
		s := &series[i]
		e.done.keys[s.key] = true
		if s.counterLike {
			e.cum.forget(s.key)
		} else if s.t.After(e.lastT[s.key]) {
			e.lastT[s.key] = s.t
		}
	}
}

// rwHeldError is a refusal (400, or 409 from Thanos Receive) saying the
// receiver holds samples of a series at or after the refused one's time.
type rwHeldError struct {
	status int
	msg    string
}

func (e *rwHeldError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.status, e.msg) }

// heldMarkers are the receivers' words for a sample at or before one they
// hold: Prometheus ("out of order sample", "duplicate sample for
// timestamp", "out of bounds", "too old sample"), Mimir and Cortex
// ("err-mimir-sample-out-of-order", "…-duplicate-timestamp",
// "…-timestamp-too-old"), Thanos Receive (409 with Prometheus's words).
var heldMarkers = []string{"out of order", "out-of-order", "duplicate sample", "duplicate-timestamp", "out of bounds", "too old", "too-old"}

// isHeld reports whether err is a refusal as already held.
func isHeld(err error) bool {
	var h *rwHeldError
	return errors.As(err, &h)
}

func bodyOf(err error) string {
	var h *rwHeldError
	if errors.As(err, &h) {
		return h.msg
	}
	return ""
}

// send POSTs one encoded request.
func (e *RemoteWrite) send(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return Permanent(fmt.Errorf("build request: %w", err))
	}
	for k, v := range e.cfg.Headers {
		req.Header.Set(k, v.Reveal())
	}
	req.Header.Set("Content-Encoding", "snappy")
	req.Header.Set("Content-Type", "application/x-protobuf")
	req.Header.Set("X-Prometheus-Remote-Write-Version", "0.1.0")
	req.Header.Set("User-Agent", "sabaki")
	switch {
	case e.cfg.BearerToken != "":
		req.Header.Set("Authorization", "Bearer "+e.cfg.BearerToken.Reveal())
	case e.cfg.BasicAuth.Username != "":
		req.SetBasicAuth(e.cfg.BasicAuth.Username, e.cfg.BasicAuth.Password.Reveal())
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return fmt.Errorf("post: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 == 2 {
		return nil
	}
	if resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusConflict {
		lower := strings.ToLower(string(msg))
		for _, m := range heldMarkers {
			if strings.Contains(lower, m) {
				// Permanent for any caller that does not look closer.
				return Permanent(&rwHeldError{status: resp.StatusCode, msg: bodySnippet(msg)})
			}
		}
	}
	return classifyHTTP(resp.StatusCode, remoteRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
		fmt.Errorf("HTTP %d: %s", resp.StatusCode, bodySnippet(msg)))
}

// rwSeries is one time series of a request.
type rwSeries struct {
	key         string // label identity
	labels      []rwLabel
	counterLike bool      // counter or histogram (cumulative state in cum)
	t           time.Time // timestamp of its sample or histogram
	samples     []rwSample
	hists       []rwHist
	exemplars   []rwExemplar
	family      string
	typ         int // MetricMetadata.MetricType
	unit, help  string
}

func (s *rwSeries) size() int { return len(s.samples) + len(s.hists) }

type rwLabel struct{ name, value string }

type rwHist struct {
	n histogram.Native
	t int64 // ms
}

type rwSample struct {
	v float64
	t int64 // ms
}

type rwExemplar struct {
	labels []rwLabel
	v      float64
	t      int64
}

// MetricMetadata.MetricType values (prompb/types.proto).
const (
	rwTypeCounter   = 1
	rwTypeGauge     = 2
	rwTypeHistogram = 3
)

type rwResource struct{ labels []rwLabel }

type rwFamilyKey struct {
	name, unit string
	kind       metric.Kind
}

// rwGroup is the merged delta of the aggregates that map to one label set.
type rwGroup struct {
	s    rwSeries
	kind metric.Kind
	sum  float64
	last float64
	hist *histogram.Histogram
	ex   []metric.Exemplar
}

// build translates a window into series sorted by labels, ready to send;
// series already accepted for this window revision are left out.
func (e *RemoteWrite) build(w *metric.Window) []rwSeries {
	tooLate := e.cum.begin(w)
	end := w.End()
	horizon := end.Add(-cumIdleTTL)
	for k, t := range e.lastT {
		if t.Before(horizon) {
			delete(e.lastT, k)
		}
	}
	groups := map[string]*rwGroup{}
	var order []*rwGroup
	targets := map[string]*rwGroup{}
	resources := map[string]*rwResource{} // per resource: its labels (translated once)
	families := map[rwFamilyKey]string{}
	for i := range w.Series {
		a := &w.Series[i]
		if a.Kind == metric.Histogram && (a.Hist == nil || a.Hist.Count() == 0) {
			continue
		}
		rk := attrsKey(a.Resource)
		res := resources[rk]
		if res == nil {
			res = &rwResource{labels: e.resourceLabels(a.Resource)}
			if tl := e.targetInfo(a.Resource); tl != nil {
				tk := rwLabelsKey(tl)
				if targets[tk] == nil {
					targets[tk] = &rwGroup{kind: metric.Gauge, last: 1, s: rwSeries{key: tk, labels: tl, family: "target_info", typ: rwTypeGauge,
						help: "Target metadata: the resource attributes of the series with the same job and instance."}}
				}
			}
			resources[rk] = res
		}
		fk := rwFamilyKey{a.Name, a.Unit, a.Kind}
		family, ok := families[fk]
		if !ok {
			family = promMetricName(a.Name, a.Unit, a.Kind == metric.Counter, a.Kind == metric.Gauge)
			families[fk] = family
		}
		labels := make([]rwLabel, 0, len(res.labels)+1+len(a.Attrs))
		labels = append(append(labels, res.labels...), rwLabel{"__name__", family})
		for _, kv := range a.Attrs {
			n := promLabelName(kv.Key)
			if n == "job" || n == "instance" {
				n = "exported_" + n
			}
			labels = append(labels, rwLabel{n, kv.Value})
		}
		labels = rwNormalize(labels)
		key := rwLabelsKey(labels)
		g := groups[key]
		if g == nil {
			typ := rwTypeGauge
			switch a.Kind {
			case metric.Counter:
				typ = rwTypeCounter
			case metric.Histogram:
				typ = rwTypeHistogram
			}
			g = &rwGroup{kind: a.Kind, s: rwSeries{key: key, labels: labels, family: family, typ: typ, help: a.Description}}
			g.s.unit, _ = promUnit(a.Unit)
			groups[key] = g
			order = append(order, g)
		} else if g.kind != a.Kind {
			e.logger.Warn("series of different kinds translate to the same labels; keeping the first", "labels", key, "kind", a.Kind)
			continue
		}
		g.sum += a.Sum
		g.last = a.Last
		if a.Hist != nil {
			if g.hist == nil {
				g.hist = a.Hist.Clone()
			} else {
				g.hist.Merge(a.Hist)
			}
		}
		g.ex = append(g.ex, a.Exemplars...)
	}
	for _, k := range slices.Sorted(maps.Keys(targets)) {
		order = append(order, targets[k])
	}

	out := make([]rwSeries, 0, len(order))
	for _, g := range order {
		s := g.s
		if e.done.keys[s.key] {
			continue
		}
		switch g.kind {
		case metric.Gauge:
			s.t = end
			if !s.t.After(e.lastT[s.key]) {
				e.skipped.WithLabelValues("out_of_order").Inc()
				continue
			}
			s.samples = []rwSample{{v: g.last, t: s.t.UnixMilli()}}
		case metric.Counter, metric.Histogram:
			if tooLate {
				e.skipped.WithLabelValues("too_late").Inc()
				continue
			}
			fresh := e.cum.lastTime(s.key).IsZero()
			p := e.cum.add(s.key, w, g.sum, g.hist)
			s.counterLike, s.t = true, p.Time
			// A series' first total is preceded by a zero just after its
			// start (what Prometheus 3 calls created-timestamp zero
			// injection), so increase() and rate() count the first window
			// too. 1 ms after the start, not at it: the previous run's last
			// sample may sit exactly at this window's start.
			zero := p.Start.Add(time.Millisecond)
			fresh = fresh && zero.Before(p.Time)
			if g.kind == metric.Counter {
				if fresh {
					s.samples = append(s.samples, rwSample{v: 0, t: zero.UnixMilli()})
				}
				s.samples = append(s.samples, rwSample{v: p.Sum, t: p.Time.UnixMilli()})
			} else {
				n := p.Hist.Native()
				if fresh {
					s.hists = append(s.hists, rwHist{n: histogram.Native{Schema: n.Schema, ZeroThreshold: n.ZeroThreshold}, t: zero.UnixMilli()})
				}
				s.hists = append(s.hists, rwHist{n: n, t: p.Time.UnixMilli()})
			}
		}
		if s.t.Equal(end) {
			// Exemplars of a revised window are older than ones already
			// sent for the series; Prometheus would drop them as out of
			// order (they stay in the store).
			s.exemplars = rwExemplars(g.ex)
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b rwSeries) int { return strings.Compare(a.key, b.key) })
	return out
}

// resourceLabels returns job, instance and the promoted resource attributes.
func (e *RemoteWrite) resourceLabels(res metric.Attrs) []rwLabel {
	var out []rwLabel
	if job := rwJob(res); job != "" {
		out = append(out, rwLabel{"job", job})
	}
	if inst := rwInstance(res); inst != "" {
		out = append(out, rwLabel{"instance", inst})
	}
	for _, k := range e.cfg.PromoteResourceAttributes {
		if v, ok := res.Get(k); ok {
			out = append(out, rwLabel{promLabelName(k), v})
		}
	}
	return out
}

// targetInfo returns the labels of the resource's target_info series, or nil
// when the resource has neither job nor instance to join on.
func (e *RemoteWrite) targetInfo(res metric.Attrs) []rwLabel {
	job, inst := rwJob(res), rwInstance(res)
	if job == "" && inst == "" {
		return nil
	}
	labels := []rwLabel{{"__name__", "target_info"}}
	if job != "" {
		labels = append(labels, rwLabel{"job", job})
	}
	if inst != "" {
		labels = append(labels, rwLabel{"instance", inst})
	}
	for _, kv := range res {
		switch kv.Key {
		case "service.name", "service.namespace", "service.instance.id":
			continue
		}
		n := promLabelName(kv.Key)
		if n == "job" || n == "instance" {
			n = "exported_" + n
		}
		labels = append(labels, rwLabel{n, kv.Value})
	}
	return rwNormalize(labels)
}

func rwJob(res metric.Attrs) string {
	name, _ := res.Get("service.name")
	if name == "" {
		return ""
	}
	if ns, _ := res.Get("service.namespace"); ns != "" {
		return ns + "/" + name
	}
	return name
}

func rwInstance(res metric.Attrs) string {
	if id, _ := res.Get("service.instance.id"); id != "" {
		return id
	}
	h, _ := res.Get("host.name")
	return h
}

// rwNormalize sorts labels by name, joins the values of names that collided
// after translation with ";" (as the OTel translator does) and drops empty
// values (an empty label is no label in Prometheus).
func rwNormalize(ls []rwLabel) []rwLabel {
	slices.SortStableFunc(ls, func(a, b rwLabel) int { return strings.Compare(a.name, b.name) })
	out := ls[:0]
	for _, l := range ls {
		if l.value == "" {
			continue
		}
		if n := len(out); n > 0 && out[n-1].name == l.name {
			if l.name != "__name__" && l.name != "job" && l.name != "instance" {
				out[n-1].value += ";" + l.value
			}
			continue
		}
		out = append(out, l)
	}
	return out
}

func rwLabelsKey(ls []rwLabel) string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.name)
		b.WriteByte(0)
		b.WriteString(l.value)
		b.WriteByte(0)
	}
	return b.String()
}

// rwExemplarLabelLimit is the OpenMetrics limit Prometheus enforces on the
// total length of an exemplar's label names and values (in runes).
const rwExemplarLabelLimit = 128

func rwExemplars(es []metric.Exemplar) []rwExemplar {
	var out []rwExemplar
	for _, e := range es {
		var ls []rwLabel
		size := 0
		add := func(n, v string) {
			if l := utf8.RuneCountInString(n) + utf8.RuneCountInString(v); size+l <= rwExemplarLabelLimit && v != "" {
				ls = append(ls, rwLabel{n, v})
				size += l
			}
		}
		if e.HasTrace() {
			add("trace_id", hex.EncodeToString(e.TraceID[:]))
		}
		if e.SpanID != [8]byte{} {
			add("span_id", hex.EncodeToString(e.SpanID[:]))
		}
		for _, kv := range e.Attrs {
			add(promLabelName(kv.Key), kv.Value)
		}
		if len(ls) == 0 && !e.HasTrace() {
			continue
		}
		slices.SortFunc(ls, func(a, b rwLabel) int { return strings.Compare(a.name, b.name) })
		out = append(out, rwExemplar{labels: ls, v: e.Value, t: e.Time.UnixMilli()})
	}
	slices.SortStableFunc(out, func(a, b rwExemplar) int { return cmpInt64(a.t, b.t) })
	return out
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// snappyEncode compresses a request body with snappy's block format, as
// Remote-Write requires.
func snappyEncode(raw []byte) []byte { return snappy.Encode(nil, raw) }
