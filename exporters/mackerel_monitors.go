package exporters

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	mackerel "github.com/mackerelio/mackerel-client-go"

	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/metric"
)

// MackerelMonitor is a Mackerel service-metric monitor on one exported
// stat of one series, created or updated by the exporter (matched by name).
type MackerelMonitor struct {
	// Name identifies the monitor in Mackerel; sabaki owns monitors with
	// these names and overwrites changes made in the UI.
	Name string `yaml:"name"`
	// Metric and Stat select the exported value (stat "" for a gauge).
	Metric string `yaml:"metric"`
	Stat   string `yaml:"stat"`
	// Series holds the series' attributes (as in the series key: the
	// resource_key attributes it has and its point attributes); empty means
	// the series without attributes ("all").
	Series map[string]string `yaml:"series"`
	// Operator is ">" (alert above, the default) or "<".
	Operator string `yaml:"operator"`
	// Warning and Critical are thresholds like annotate's above: a duration
	// for durations (posted in ms), else a number.
	Warning  *Threshold `yaml:"warning"`
	Critical *Threshold `yaml:"critical"`
	// Duration is the span Mackerel averages before comparing (whole
	// minutes, 1m to 1440m; default 1m).
	Duration config.Duration `yaml:"duration"`
	// MaxCheckAttempts is how many consecutive breaches alert (1-10; default 1).
	MaxCheckAttempts uint64 `yaml:"max_check_attempts"`
	// NotificationInterval re-notifies while the alert is open (≥ 10m; 0 = never).
	NotificationInterval config.Duration `yaml:"notification_interval"`
	Memo                 string          `yaml:"memo"`
}

// validateMonitors checks the monitors section.
func (c *MackerelConfig) validateMonitors() []error {
	var errs []error
	names := map[string]bool{}
	stats := append(c.statNames(), "")
	for i, m := range c.Monitors {
		p := fmt.Sprintf("monitors[%d]", i)
		switch {
		case m.Name == "" || len([]rune(m.Name)) > 250:
			errs = append(errs, config.Field(p+".name", "is required (at most 250 characters)"))
		case names[m.Name]:
			errs = append(errs, config.Field(p+".name", "duplicate monitor name %q", m.Name))
		}
		names[m.Name] = true
		if m.Metric == "" {
			errs = append(errs, config.Field(p+".metric", "is required"))
		}
		if !slices.Contains(stats, m.Stat) {
			errs = append(errs, config.Field(p+".stat", "must be an exported stat (%s) or empty for a gauge", strings.Join(c.statNames(), ", ")))
		}
		if m.Operator != "" && m.Operator != ">" && m.Operator != "<" {
			errs = append(errs, config.Field(p+".operator", "must be > or <"))
		}
		if m.Warning == nil && m.Critical == nil {
			errs = append(errs, config.Field(p, "needs warning or critical"))
		}
		if d := m.Duration.D(); d != 0 && (d < time.Minute || d > 1440*time.Minute || d%time.Minute != 0) {
			errs = append(errs, config.Field(p+".duration", "must be whole minutes from 1m to 1440m"))
		}
		if m.MaxCheckAttempts > 10 {
			errs = append(errs, config.Field(p+".max_check_attempts", "must be 1 to 10"))
		}
		if d := m.NotificationInterval.D(); d != 0 && (d < 10*time.Minute || d%time.Minute != 0) {
			errs = append(errs, config.Field(p+".notification_interval", "must be 0 or whole minutes of at least 10m"))
		}
		if len([]rune(m.Memo)) > 200 {
			errs = append(errs, config.Field(p+".memo", "at most 200 characters (sabaki adds its own lines)"))
		}
	}
	if len(c.Monitors) > 0 && c.ExemplarsURL != "" {
		if u, err := url.Parse(c.ExemplarsURL); err != nil || u.Host == "" {
			errs = append(errs, config.Field("exemplars_url", "must be an absolute URL"))
		}
	}
	return errs
}

// MonitorChange is what SyncMonitors did, or would do in a dry run.
type MonitorChange struct {
	Action string // "create", "update" or "unchanged"
	Name   string
	Metric string // the Mackerel metric name monitored
	ID     string // empty for a create
	Diff   string // for an update: the fields that differ
}

// desiredMonitor builds the Mackerel monitor of m.
func (e *Mackerel) desiredMonitor(m MackerelMonitor) *mackerel.MonitorServiceMetric {
	s := &mseries{base: cleanMetricName(e.cfg.Prefix + "." + m.Metric), key: e.monitorKey(m.Series)}
	name := metricName(s, m.Stat)
	op := m.Operator
	if op == "" {
		op = ">"
	}
	val := func(t *Threshold) *float64 {
		if t == nil {
			return nil
		}
		v := t.Value
		return &v
	}
	memo := strings.TrimSpace(m.Memo)
	if memo != "" {
		memo += "\n"
	}
	memo += fmt.Sprintf("Managed by sabaki (exporter %s): %s %s", e.name, m.Metric, m.Stat)
	if len(m.Series) > 0 {
		memo += " of " + fmtSeries(m.Series)
	}
	memo += "."
	if e.cfg.ExemplarsURL != "" {
		q := url.Values{"metric": {m.Metric}}
		keys := make([]string, 0, len(m.Series))
		for k := range m.Series {
			keys = append(keys, k)
		}
		sort.Strings(keys) // a stable memo, or every sync would update it
		for _, k := range keys {
			q.Add("where", k+"="+m.Series[k])
		}
		memo += "\nSlow traces (exemplars): " + e.cfg.ExemplarsURL + "?" + q.Encode()
	} else {
		memo += "\nSlow traces: `sabaki query -metric " + m.Metric + " -exemplars`, or the Mackerel trace list of the alert's minutes."
	}
	return &mackerel.MonitorServiceMetric{
		Type: "service", Name: m.Name, Memo: memo, Service: e.cfg.Service, Metric: name, Operator: op,
		Warning: val(m.Warning), Critical: val(m.Critical), Duration: max(1, uint64(m.Duration.D()/time.Minute)),
		MaxCheckAttempts: max(1, m.MaxCheckAttempts), NotificationInterval: uint64(m.NotificationInterval.D() / time.Minute),
	}
}

func fmtSeries(attrs map[string]string) string {
	keys := make([]string, 0, len(attrs))
	for k := range attrs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + attrs[k]
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// monitorKey is the series key of the attributes: resource_key ones first,
// then the rest in key order, as seriesKey builds it.
func (e *Mackerel) monitorKey(attrs map[string]string) string {
	var res metric.Attrs
	rest := map[string]string{}
	for k, v := range attrs {
		rest[k] = v
	}
	for _, k := range e.cfg.ResourceKey {
		if v, ok := rest[k]; ok {
			res = append(res, metric.Attr{Key: k, Value: v})
			delete(rest, k)
		}
	}
	var parts []string
	for _, kv := range res {
		parts = append(parts, kv.Value)
	}
	for _, kv := range metric.NewAttrs(rest) {
		if slices.Contains(e.cfg.KeyIgnore, kv.Key) {
			continue
		}
		parts = append(parts, kv.Value)
	}
	return cleanKey(strings.Join(parts, "_"))
}

// SyncMonitors makes the configured monitors exist in Mackerel as
// configured, matching existing monitors by name; with dryRun it only
// reports what it would change. Monitors not in the config are left alone.
func (e *Mackerel) SyncMonitors(ctx context.Context, dryRun bool) ([]MonitorChange, error) {
	if len(e.cfg.Monitors) == 0 {
		return nil, nil
	}
	var existing []mackerel.Monitor
	if err := e.call(ctx, "listing monitors", func(ctx context.Context) error {
		var err error
		existing, err = e.client.FindMonitorsContext(ctx)
		return err
	}); err != nil {
		return nil, err
	}
	byName := map[string]mackerel.Monitor{}
	for _, m := range existing {
		byName[m.MonitorName()] = m
	}
	var changes []MonitorChange
	var errs []error
	for _, m := range e.cfg.Monitors {
		want := e.desiredMonitor(m)
		ch := MonitorChange{Name: m.Name, Metric: want.Metric}
		old, ok := byName[m.Name]
		if ok {
			have, isService := old.(*mackerel.MonitorServiceMetric)
			if !isService {
				errs = append(errs, fmt.Errorf("monitor %q exists with type %s; sabaki manages only service-metric monitors", m.Name, old.MonitorType()))
				continue
			}
			ch.ID = have.ID
			if ch.Diff = monitorDiff(have, want); ch.Diff == "" {
				ch.Action = "unchanged"
				changes = append(changes, ch)
				continue
			}
			ch.Action = "update"
		} else {
			ch.Action = "create"
		}
		changes = append(changes, ch)
		if dryRun {
			continue
		}
		err := e.call(ctx, ch.Action+" monitor "+m.Name, func(ctx context.Context) error {
			var err error
			if ch.Action == "create" {
				_, err = e.client.CreateMonitorContext(ctx, want)
			} else {
				_, err = e.client.UpdateMonitorContext(ctx, ch.ID, want)
			}
			return err
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		e.log.Info("Mackerel monitor "+ch.Action+"d", "monitor", m.Name, "metric", want.Metric, "diff", ch.Diff)
	}
	return changes, errors.Join(errs...)
}

// monitorDiff lists the fields of want that differ from have.
func monitorDiff(have, want *mackerel.MonitorServiceMetric) string {
	var d []string
	f := func(name string, a, b any) {
		if fmt.Sprint(a) != fmt.Sprint(b) {
			d = append(d, fmt.Sprintf("%s: %v → %v", name, a, b))
		}
	}
	ptr := func(p *float64) any {
		if p == nil {
			return "none"
		}
		return *p
	}
	f("service", have.Service, want.Service)
	f("metric", have.Metric, want.Metric)
	f("operator", have.Operator, want.Operator)
	f("warning", ptr(have.Warning), ptr(want.Warning))
	f("critical", ptr(have.Critical), ptr(want.Critical))
	f("duration", have.Duration, want.Duration)
	f("maxCheckAttempts", have.MaxCheckAttempts, want.MaxCheckAttempts)
	f("notificationInterval", have.NotificationInterval, want.NotificationInterval)
	if have.Memo != want.Memo {
		d = append(d, "memo")
	}
	return strings.Join(d, "; ")
}

// syncMonitorsOnce runs SyncMonitors until it succeeds once per process;
// Export calls it, so monitors follow the first successful contact.
func (e *Mackerel) syncMonitorsOnce(ctx context.Context) {
	e.mu.Lock()
	done := e.monitorsSynced
	e.mu.Unlock()
	if done || len(e.cfg.Monitors) == 0 {
		return
	}
	if _, err := e.SyncMonitors(ctx, false); err != nil {
		e.log.Warn("syncing Mackerel monitors failed; will retry with the next window", "err", err)
		return
	}
	e.mu.Lock()
	e.monitorsSynced = true
	e.mu.Unlock()
}
