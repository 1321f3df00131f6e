package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"cloud.google.com/go/monitoring/apiv3/v2/monitoringpb"
	"github.com/prometheus/client_golang/prometheus"
	metricpb "google.golang.org/genproto/googleapis/api/metric"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

// Cloud Monitoring presets: the metric types a capacity planner and an
// on-call engineer need from Cloud Run and Cloud SQL for PostgreSQL. Stored
// names are the metric types themselves.
var cloudMonitoringPresets = map[string][]string{
	"cloudrun": {
		"run.googleapis.com/request_count",
		"run.googleapis.com/request_latencies",
		"run.googleapis.com/container/instance_count",
		"run.googleapis.com/container/cpu/utilizations",
		"run.googleapis.com/container/memory/utilizations",
		"run.googleapis.com/container/billable_instance_time",
		"run.googleapis.com/container/startup_latencies",
		"run.googleapis.com/container/max_request_concurrencies",
		"run.googleapis.com/container/network/sent_bytes_count",
		"run.googleapis.com/container/network/received_bytes_count",
	},
	"cloudsql": {
		"cloudsql.googleapis.com/database/cpu/utilization",
		"cloudsql.googleapis.com/database/memory/utilization",
		"cloudsql.googleapis.com/database/disk/utilization",
		"cloudsql.googleapis.com/database/disk/bytes_used",
		"cloudsql.googleapis.com/database/postgresql/num_backends",
		"cloudsql.googleapis.com/database/postgresql/transaction_count",
		"cloudsql.googleapis.com/database/postgresql/deadlock_count",
		"cloudsql.googleapis.com/database/replication/replica_lag",
		// Query Insights (returns nothing unless enabled on the instance).
		"cloudsql.googleapis.com/database/postgresql/insights/aggregate/latencies",
	},
}

// CloudMonitoringPresetTypes returns the metric types of a preset (nil for
// an unknown name), for documentation and tests.
func CloudMonitoringPresetTypes(preset string) []string {
	return slices.Clone(cloudMonitoringPresets[preset])
}

// CloudMonitoringConfig configures the `cloudmonitoring` source.
type CloudMonitoringConfig struct {
	Common `yaml:",inline"`
	// Project, or Projects, are the Google Cloud projects read. When both are
	// empty the project of the credentials is used.
	Project  string   `yaml:"project"`
	Projects []string `yaml:"projects"`
	// Presets name metric type sets (cloudrun, cloudsql). When neither
	// presets nor metric_types are given, both presets are read.
	Presets []string `yaml:"presets"`
	// MetricTypes are extra metric types; one ending in "/" is a prefix,
	// expanded by listing metric descriptors (cached for an hour).
	MetricTypes []string `yaml:"metric_types"`
	// Filter adds a Monitoring filter clause, keyed by preset name or by a
	// metric type prefix (the longest matching prefix wins over a preset),
	// e.g. {cloudrun: 'resource.labels.service_name = one_of("web", "api")'}.
	Filter map[string]string `yaml:"filter"`
	// Interval between polls; one ListTimeSeries walk per metric type per
	// project per interval. Timeout bounds one poll, retries included.
	Interval config.Duration `yaml:"interval"`
	Timeout  config.Duration `yaml:"timeout"`
	// Delay shifts the end of each read window back from the poll time.
	Delay config.Duration `yaml:"delay"`
	// Lookback is how far each read reaches back before the previous read's
	// end, so points that became visible late are picked up (deduplicated by
	// series and end time). The effective lookback is at least the metric's
	// ingest delay plus its sample period, from its descriptor.
	Lookback config.Duration `yaml:"lookback"`
	// Backfill is how much history the first start reads.
	Backfill config.Duration `yaml:"backfill"`
	// CredentialsFile is a service account or external account JSON file;
	// empty means Application Default Credentials.
	CredentialsFile string `yaml:"credentials_file"`
	// Credentials "none" disables authentication (an emulator or fake; with
	// an endpoint the connection is plaintext).
	Credentials string `yaml:"credentials"`
	// Endpoint overrides monitoring.googleapis.com:443.
	Endpoint string `yaml:"endpoint"`
	// PageSize is the points per ListTimeSeries page (0: the API's default).
	PageSize int `yaml:"page_size"`
	// Concurrency is how many metric types are read at once.
	Concurrency int `yaml:"concurrency"`
}

// DefaultCloudMonitoringConfig returns the defaults: a 60 s interval with a
// 50 s timeout, a 5 min lookback, a 1 h first backfill.
func DefaultCloudMonitoringConfig() CloudMonitoringConfig {
	return CloudMonitoringConfig{
		Common:      Common{Type: "cloudmonitoring"},
		Interval:    config.Duration(60 * time.Second),
		Timeout:     config.Duration(50 * time.Second),
		Lookback:    config.Duration(5 * time.Minute),
		Backfill:    config.Duration(time.Hour),
		Concurrency: 4,
	}
}

// gcpRetention is how far back Cloud Monitoring keeps raw points.
const gcpRetention = 6 * 7 * 24 * time.Hour

// Validate implements config.Validator.
func (c *CloudMonitoringConfig) Validate() error {
	var errs []error
	if c.Interval <= 0 {
		errs = append(errs, config.Field("interval", "must be positive"))
	}
	if c.Timeout <= 0 || c.Timeout > c.Interval {
		errs = append(errs, config.Field("timeout", "must be positive and at most the interval (%s)", c.Interval))
	}
	if c.Delay < 0 {
		errs = append(errs, config.Field("delay", "must not be negative"))
	}
	if c.Lookback < 0 {
		errs = append(errs, config.Field("lookback", "must not be negative"))
	}
	if c.Backfill < 0 || c.Backfill.D() > gcpRetention {
		errs = append(errs, config.Field("backfill", "must be between 0 and 6w (what Cloud Monitoring keeps)"))
	}
	if c.Project != "" && len(c.Projects) > 0 {
		errs = append(errs, config.Field("projects", "set project or projects, not both"))
	}
	for i, p := range c.projects() {
		if strings.ContainsAny(p, "/ ") {
			errs = append(errs, config.Field(fmt.Sprintf("projects[%d]", i), "%q is not a project ID", p))
		}
	}
	for i, p := range c.Presets {
		if _, ok := cloudMonitoringPresets[p]; !ok {
			errs = append(errs, config.Field(fmt.Sprintf("presets[%d]", i), "unknown preset %q (known: cloudrun, cloudsql)", p))
		}
	}
	for i, t := range c.MetricTypes {
		if !strings.Contains(t, "/") || strings.ContainsAny(t, " \"") {
			errs = append(errs, config.Field(fmt.Sprintf("metric_types[%d]", i),
				"%q is not a metric type (e.g. run.googleapis.com/request_count, or a prefix ending in /)", t))
		}
	}
	for k := range c.Filter {
		if _, ok := cloudMonitoringPresets[k]; !ok && !strings.Contains(k, "/") && !strings.Contains(k, ".") {
			errs = append(errs, config.Field("filter."+k, "key must be a preset name or a metric type prefix"))
		}
	}
	switch c.Credentials {
	case "", "adc", "none":
	default:
		errs = append(errs, config.Field("credentials", "must be adc (default) or none"))
	}
	if c.Credentials == "none" && c.CredentialsFile != "" {
		errs = append(errs, config.Field("credentials_file", "cannot be used with credentials: none"))
	}
	if c.PageSize < 0 {
		errs = append(errs, config.Field("page_size", "must not be negative"))
	}
	if c.Concurrency <= 0 {
		errs = append(errs, config.Field("concurrency", "must be positive"))
	}
	return errors.Join(errs...)
}

func (c *CloudMonitoringConfig) projects() []string {
	if c.Project != "" {
		return []string{c.Project}
	}
	return c.Projects
}

// CloudMonitoring reads Cloud Monitoring time series (Cloud Run, Cloud SQL,
// any metric type) and turns them into sabaki series: names are the metric
// types, resource labels go to Series.Resource and metric labels to
// Series.Attrs under their GCP names.
//
// Polling: per (project, metric type) one ListTimeSeries walk (all pages,
// view FULL, raw points) per Collect, over (cursor − lookback, at − delay];
// reads are (start, end] so windows tile, and the lookback re-reads recent
// minutes so late points are picked up. A point is accepted once per
// (series, end time); the cursor and the accepted end times inside the
// lookback are kept in the state store so a restart continues where it
// stopped. Kinds: DELTA → Delta counters/histograms; GAUGE → gauges, GAUGE
// distributions → Delta histograms of one sample period; CUMULATIVE scalars →
// Cumulative counters (the pipeline differences them); CUMULATIVE
// distributions are differenced here, bucket by bucket in GCP's own layout,
// because differencing after conversion would subtract two re-bucketed
// approximations (see cloudmonitoring_convert.go).
type CloudMonitoring struct {
	cfg      CloudMonitoringConfig
	log      *slog.Logger
	state    StateStore
	api      gcpMetricAPI
	projects []string
	m        *gcpMetrics

	// backoff is the first retry delay (doubling, with jitter).
	backoff time.Duration
	// maxRange caps one live read; a longer gap (after downtime) is read
	// over several polls, so a poll's memory and duration stay bounded and
	// a gap never makes every poll time out.
	maxRange time.Duration

	streams map[string]*gcpStream // by project + " " + metric type
	// bstreams are Backfill's streams: separate from the live cursor.
	bstreams map[string]*gcpStream
	prefixes map[string]*gcpPrefix // by project + " " + prefix
	logged   sync.Map              // first BucketOptions logged per metric type
	layouts  gcpLayouts
}

type gcpPrefix struct {
	types   []string
	fetched time.Time
}

// NewCloudMonitoring builds the source. Without credentials (and without
// `credentials: none`) it returns an error naming what it looked for, which
// the agent logs while the rest of it runs.
func NewCloudMonitoring(cfg CloudMonitoringConfig, set Settings) (*CloudMonitoring, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cloudmonitoring config: %w", err)
	}
	if cfg.Name == "" {
		cfg.Name = cfg.Type
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	api, credProject, err := newGapicMetricAPI(ctx, &cfg)
	if err != nil {
		return nil, fmt.Errorf("cloudmonitoring source %q: %w", cfg.Name, err)
	}
	c, err := newCloudMonitoring(cfg, set, api, credProject)
	if err != nil {
		_ = api.Close()
		return nil, err
	}
	return c, nil
}

func newCloudMonitoring(cfg CloudMonitoringConfig, set Settings, api gcpMetricAPI, credProject string) (*CloudMonitoring, error) {
	if cfg.Name == "" {
		cfg.Name = cfg.Type
	}
	log := set.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	projects := cfg.projects()
	if len(projects) == 0 && credProject != "" {
		projects = []string{credProject}
	}
	if len(projects) == 0 {
		return nil, fmt.Errorf("cloudmonitoring source %q: no project: set `project` (the credentials carry none)", cfg.Name)
	}
	if len(cfg.Presets) == 0 && len(cfg.MetricTypes) == 0 {
		cfg.Presets = []string{"cloudrun", "cloudsql"}
	}
	m, err := newGCPMetrics(set.Registerer)
	if err != nil {
		return nil, fmt.Errorf("cloudmonitoring source %q: register self-metrics: %w", cfg.Name, err)
	}
	return &CloudMonitoring{
		cfg:      cfg,
		log:      log, // the agent scopes it with the source name
		state:    set.State,
		api:      api,
		projects: projects,
		m:        m,
		backoff:  time.Second,
		maxRange: 6 * time.Hour,
		streams:  map[string]*gcpStream{},
		bstreams: map[string]*gcpStream{},
		prefixes: map[string]*gcpPrefix{},
	}, nil
}

// Name implements Source.
func (c *CloudMonitoring) Name() string { return c.cfg.Name }

// Close releases the API connection.
func (c *CloudMonitoring) Close() error { return c.api.Close() }

// Collect implements Source: one read per (project, metric type), in
// parallel up to `concurrency`. A failing metric type never blocks the
// others: its error is returned in a *PartialError next to the data of the
// rest, and its cursor stays put so the next poll covers the gap.
func (c *CloudMonitoring) Collect(ctx context.Context, at time.Time) (metric.Batch, error) {
	if c.state == nil && len(c.streams) == 0 {
		c.log.Warn("no state store: the read cursor is not kept across restarts (a restart backfills `backfill` again)")
	}
	streams, errs := c.resolve(ctx, at, c.streams)
	batch := metric.Batch{Source: c.cfg.Name}
	var mu sync.Mutex
	failed := len(errs)
	sem := make(chan struct{}, c.cfg.Concurrency)
	var wg sync.WaitGroup
	for _, st := range streams {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			series, err := c.poll(ctx, st, at)
			mu.Lock()
			defer mu.Unlock()
			batch.Series = append(batch.Series, series...)
			if err != nil {
				failed++
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	if failed > 0 {
		return batch, &PartialError{Failed: failed, Err: errors.Join(errs...)}
	}
	return batch, nil
}

// Backfill reads (from, to] of every configured project and metric type and
// hands the converted series to emit, one batch per metric type. It neither
// reads nor moves the live cursor. Called with consecutive ranges (chunks of
// a long history), it keeps the baselines of cumulative series across calls.
// A metric type failing with a permission, not-found or invalid-argument
// error is reported once and skipped in later calls; other failures (after
// retries) are returned in a *PartialError once the rest was read; an error
// from emit stops the backfill.
func (c *CloudMonitoring) Backfill(ctx context.Context, from, to time.Time, emit func(metric.Batch) error) error {
	streams, errs := c.resolve(ctx, to, c.bstreams)
	failed := len(errs)
	for _, st := range streams {
		if st.failing {
			continue
		}
		if err := c.describe(ctx, st, to); err != nil {
			if err := c.fail(st, to, "get metric descriptor", err); err != nil {
				failed++
				errs = append(errs, err)
			}
			continue
		}
		raw, err := c.list(ctx, st, from, to)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := c.fail(st, to, "list time series", err); err != nil {
				failed++
				errs = append(errs, err)
			}
			continue
		}
		series, _ := c.convert(st, raw, from)
		st.prune(from, to, 0)
		if len(series) == 0 {
			continue
		}
		if err := emit(metric.Batch{Source: c.cfg.Name, Series: series}); err != nil {
			return err
		}
	}
	if failed > 0 {
		return &PartialError{Failed: failed, Err: errors.Join(errs...)}
	}
	return nil
}

// metricTypes returns the configured exact metric types and prefixes.
func (c *CloudMonitoring) metricTypes() (exact, prefixes []string) {
	seen := map[string]bool{}
	for _, p := range c.cfg.Presets {
		for _, t := range cloudMonitoringPresets[p] {
			if !seen[t] {
				seen[t] = true
				exact = append(exact, t)
			}
		}
	}
	for _, t := range c.cfg.MetricTypes {
		if strings.HasSuffix(t, "/") {
			prefixes = append(prefixes, t)
		} else if !seen[t] {
			seen[t] = true
			exact = append(exact, t)
		}
	}
	return exact, prefixes
}

// resolve returns the streams to poll now, expanding prefixes through
// ListMetricDescriptors (cached for an hour).
func (c *CloudMonitoring) resolve(ctx context.Context, at time.Time, streams map[string]*gcpStream) ([]*gcpStream, []error) {
	exact, prefixes := c.metricTypes()
	var errs []error
	var out []*gcpStream
	for _, project := range c.projects {
		types := slices.Clone(exact)
		for _, pre := range prefixes {
			key := project + " " + pre
			p := c.prefixes[key]
			if p == nil || at.Sub(p.fetched) >= time.Hour {
				var ds []*metricpb.MetricDescriptor
				err := c.retry(ctx, "ListMetricDescriptors", pre, func(ctx context.Context) error {
					var err error
					ds, err = c.api.ListMetricDescriptors(ctx, project, pre)
					return err
				})
				if err != nil {
					c.m.errors.WithLabelValues(c.cfg.Name, pre, status.Code(err).String()).Inc()
					errs = append(errs, fmt.Errorf("project %s: list metric descriptors %s*: %w", project, pre, err))
					if p == nil {
						continue
					}
				} else {
					p = &gcpPrefix{fetched: at}
					for _, d := range ds {
						if d.GetValueType() != metricpb.MetricDescriptor_STRING {
							p.types = append(p.types, d.GetType())
						}
					}
					c.prefixes[key] = p
				}
			}
			for _, t := range p.types {
				if !slices.Contains(types, t) {
					types = append(types, t)
				}
			}
		}
		for _, t := range types {
			key := project + " " + t
			st := streams[key]
			if st == nil {
				st = newGCPStream(project, t, c.filterFor(t))
				streams[key] = st
			}
			out = append(out, st)
		}
	}
	return out, errs
}

// filterFor builds the ListTimeSeries filter of a metric type: the type,
// plus the configured clause of the longest matching prefix key, else of
// the preset that lists the type.
func (c *CloudMonitoring) filterFor(metricType string) string {
	f := fmt.Sprintf("metric.type = %q", metricType)
	best, clause := "", ""
	for k, v := range c.cfg.Filter {
		if _, isPreset := cloudMonitoringPresets[k]; !isPreset && strings.HasPrefix(metricType, k) && len(k) > len(best) {
			best, clause = k, v
		}
	}
	if clause == "" {
		for _, p := range slices.Sorted(maps.Keys(cloudMonitoringPresets)) {
			if v, ok := c.cfg.Filter[p]; ok && slices.Contains(c.cfg.Presets, p) && slices.Contains(cloudMonitoringPresets[p], metricType) {
				clause = v
				break
			}
		}
	}
	if strings.TrimSpace(clause) != "" {
		f += " AND (" + clause + ")"
	}
	return f
}

// window returns the read window of st at poll time at: (start, end].
func (c *CloudMonitoring) window(st *gcpStream, at time.Time) (start, end time.Time) {
	end = at.Add(-c.cfg.Delay.D()).Truncate(time.Second)
	if st.cursor.IsZero() {
		start = end.Add(-c.cfg.Backfill.D())
	} else {
		start = st.cursor.Add(-st.lookback(c.cfg.Lookback.D()))
	}
	if oldest := at.Add(-gcpRetention); start.Before(oldest) {
		start = oldest
	}
	if end.Sub(start) > c.maxRange {
		end = start.Add(c.maxRange)
	}
	return start, end
}

// poll reads one stream's window and converts the new points.
func (c *CloudMonitoring) poll(ctx context.Context, st *gcpStream, at time.Time) ([]metric.Series, error) {
	if at.Before(st.disabledUntil) {
		return nil, nil
	}
	if err := c.loadState(ctx, st); err != nil {
		c.log.Warn("cannot load cursor; starting with a backfill", "project", st.project, "metric_type", st.metricType, "err", err)
	}
	if err := c.describe(ctx, st, at); err != nil {
		return nil, c.fail(st, at, "get metric descriptor", err)
	}
	start, end := c.window(st, at)
	if gap := at.Sub(start); gap > c.cfg.Lookback.D()+2*c.cfg.Interval.D() && !st.gapLogged {
		// The live pipeline keeps only points within agent.lateness; older
		// ones are counted as too late there. `sabaki backfill` stores them.
		st.gapLogged = true
		c.log.Info("reading a gap since the last read", "project", st.project, "metric_type", st.metricType,
			"from", start, "gap", gap.Round(time.Second).String(), "step", c.maxRange.String())
	}
	if !start.Before(end) {
		if st.cursor.IsZero() {
			st.cursor = end // no backfill: read from now on
		}
		return nil, nil
	}
	raw, err := c.list(ctx, st, start, end)
	if err != nil {
		return nil, c.fail(st, at, "list time series", err)
	}
	if st.failing {
		c.log.Info("metric type readable again", "project", st.project, "metric_type", st.metricType)
		st.failing = false
	}
	series, newest := c.convert(st, raw, start)
	st.cursor = end
	st.prune(start, end, st.lookback(c.cfg.Lookback.D()))
	if !newest.IsZero() {
		c.m.lag.WithLabelValues(c.cfg.Name, st.metricType).Set(at.Sub(newest).Seconds())
	}
	if err := c.saveState(ctx, st); err != nil {
		c.log.Warn("cannot save cursor", "project", st.project, "metric_type", st.metricType, "err", err)
	}
	return series, nil
}

// fail records a failed read. Permission, not-found and invalid-argument
// errors are reported once per (project, metric type) and the stream is
// retried hourly without further noise; transient errors (after retries)
// are returned every time.
func (c *CloudMonitoring) fail(st *gcpStream, at time.Time, what string, err error) error {
	code := status.Code(err)
	c.m.errors.WithLabelValues(c.cfg.Name, st.metricType, code.String()).Inc()
	err = fmt.Errorf("project %s, metric type %s: %s: %w", st.project, st.metricType, what, err)
	switch code {
	case codes.PermissionDenied, codes.NotFound, codes.InvalidArgument, codes.Unauthenticated:
		st.disabledUntil = at.Add(time.Hour)
		if st.failing {
			c.log.Debug("metric type still failing", "err", err)
			return nil
		}
		st.failing = true
		hint := ""
		if code == codes.PermissionDenied || code == codes.Unauthenticated {
			hint = " (the credentials need roles/monitoring.viewer on the project)"
		}
		c.log.Warn("metric type not readable; retrying hourly"+hint, "project", st.project, "metric_type", st.metricType, "err", err)
		return err
	}
	return err
}

// describe fetches (hourly) the metric descriptor for its ingest delay,
// sample period, unit and description. Transient failures keep the cached
// or default values: the time series themselves carry kind and type.
func (c *CloudMonitoring) describe(ctx context.Context, st *gcpStream, at time.Time) error {
	if st.desc != nil && at.Sub(st.descAt) < time.Hour {
		return nil
	}
	var d *metricpb.MetricDescriptor
	err := c.retry(ctx, "GetMetricDescriptor", st.metricType, func(ctx context.Context) error {
		var err error
		d, err = c.api.GetMetricDescriptor(ctx, st.project, st.metricType)
		return err
	})
	if err != nil {
		switch status.Code(err) {
		case codes.PermissionDenied, codes.NotFound, codes.Unauthenticated, codes.InvalidArgument:
			return err
		}
		c.log.Debug("metric descriptor unavailable; using defaults", "metric_type", st.metricType, "err", err)
		return nil
	}
	st.desc, st.descAt = d, at
	return nil
}

// list walks every page of one read, retrying each page on quota and
// server errors, and returns the series merged by identity (a FULL page can
// end inside a series, whose header then repeats on the next page).
func (c *CloudMonitoring) list(ctx context.Context, st *gcpStream, start, end time.Time) ([]*monitoringpb.TimeSeries, error) {
	req := &monitoringpb.ListTimeSeriesRequest{
		Name:   "projects/" + st.project,
		Filter: st.filter,
		Interval: &monitoringpb.TimeInterval{
			StartTime: timestamppb.New(start),
			EndTime:   timestamppb.New(end),
		},
		View:     monitoringpb.ListTimeSeriesRequest_FULL,
		PageSize: int32(c.cfg.PageSize),
	}
	var out []*monitoringpb.TimeSeries
	index := map[uint64]int{}
	for {
		var resp *monitoringpb.ListTimeSeriesResponse
		err := c.retry(ctx, "ListTimeSeries", st.metricType, func(ctx context.Context) error {
			var err error
			resp, err = c.api.ListTimeSeriesPage(ctx, req)
			return err
		})
		if err != nil {
			return nil, err
		}
		c.m.pages.WithLabelValues(c.cfg.Name, st.metricType).Inc()
		c.m.series.WithLabelValues(c.cfg.Name, st.metricType).Add(float64(len(resp.GetTimeSeries())))
		for _, e := range resp.GetExecutionErrors() {
			c.log.Warn("partial result from Cloud Monitoring", "project", st.project, "metric_type", st.metricType, "err", e.GetMessage())
		}
		for _, ts := range resp.GetTimeSeries() {
			c.m.points.WithLabelValues(c.cfg.Name, st.metricType, "returned").Add(float64(len(ts.GetPoints())))
			h := gcpSeriesHash(ts)
			if i, ok := index[h]; ok {
				out[i].Points = append(out[i].Points, ts.GetPoints()...)
				continue
			}
			index[h] = len(out)
			out = append(out, ts)
		}
		if resp.GetNextPageToken() == "" {
			return out, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// retry calls fn until it succeeds, fails with a non-retryable code, or
// the next backoff would pass ctx's deadline. RESOURCE_EXHAUSTED (429),
// UNAVAILABLE (503), INTERNAL (500), ABORTED and DEADLINE_EXCEEDED from the
// server are retried. Every attempt is counted as an API call.
func (c *CloudMonitoring) retry(ctx context.Context, method, metricType string, fn func(context.Context) error) error {
	delay := c.backoff
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		code := status.Code(err)
		c.m.calls.WithLabelValues(c.cfg.Name, method, metricType, code.String()).Inc()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		switch code {
		case codes.ResourceExhausted, codes.Unavailable, codes.Internal, codes.Aborted, codes.DeadlineExceeded:
		default:
			return err
		}
		d := delay + time.Duration(rand.Int64N(int64(delay)/2+1))
		if ra := gcpRetryDelay(err); ra > d {
			d = ra // the server's RetryInfo (quota errors) wins over our backoff
		}
		dl, hasDeadline := ctx.Deadline()
		if hasDeadline && time.Until(dl) < d || !hasDeadline && attempt >= 5 {
			return err
		}
		c.log.Debug("retrying Cloud Monitoring call", "method", method, "metric_type", metricType, "code", code.String(), "in", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		delay = min(2*delay, 30*time.Second)
	}
}

// gcpRetryDelay returns the delay of a google.rpc.RetryInfo detail of err,
// or 0.
func gcpRetryDelay(err error) time.Duration {
	st, ok := status.FromError(err)
	if !ok {
		return 0
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// gcpMetrics are the source's self-metrics.
type gcpMetrics struct {
	calls  *prometheus.CounterVec
	pages  *prometheus.CounterVec
	series *prometheus.CounterVec
	points *prometheus.CounterVec
	errors *prometheus.CounterVec
	lag    *prometheus.GaugeVec
}

func newGCPMetrics(reg prometheus.Registerer) (*gcpMetrics, error) {
	m := &gcpMetrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_cloudmonitoring_api_calls_total",
			Help: "Cloud Monitoring API calls (every page and retry), by method, metric type and gRPC code.",
		}, []string{"source", "method", "metric_type", "code"}),
		pages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_cloudmonitoring_pages_total",
			Help: "ListTimeSeries pages read.",
		}, []string{"source", "metric_type"}),
		series: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_cloudmonitoring_time_series_returned_total",
			Help: "Time series returned by ListTimeSeries: the unit Cloud Monitoring bills reads by.",
		}, []string{"source", "metric_type"}),
		points: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_cloudmonitoring_points_total",
			Help: "Points returned, and of those accepted, duplicate (already read in an overlapping window) or invalid.",
		}, []string{"source", "metric_type", "result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_cloudmonitoring_errors_total",
			Help: "Reads that failed after retries, by metric type and gRPC code.",
		}, []string{"source", "metric_type", "code"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sabaki_cloudmonitoring_data_lag_seconds",
			Help: "Poll time minus the end time of the newest point read, by metric type.",
		}, []string{"source", "metric_type"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	m.calls, err = registerOrReuse(reg, m.calls)
	if err != nil {
		return nil, err
	}
	if m.pages, err = registerOrReuse(reg, m.pages); err != nil {
		return nil, err
	}
	if m.series, err = registerOrReuse(reg, m.series); err != nil {
		return nil, err
	}
	if m.points, err = registerOrReuse(reg, m.points); err != nil {
		return nil, err
	}
	if m.errors, err = registerOrReuse(reg, m.errors); err != nil {
		return nil, err
	}
	if m.lag, err = registerOrReuse(reg, m.lag); err != nil {
		return nil, err
	}
	return m, nil
}

// registerOrReuse registers c, or returns the collector already registered
// under the same name (a second cloudmonitoring source shares the vectors,
// told apart by the source label).
func registerOrReuse[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
