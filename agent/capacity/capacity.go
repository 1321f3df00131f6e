// Package capacity turns the months of windows in sabaki's store into a
// capacity-planning report: per group (service, route, …) and per day and
// week, the peak request rate, latency at the peak hour, errors, Cloud Run
// instances and utilisation, Cloud SQL connections and CPU, and LLM tokens;
// a robust trend of the daily peaks with weekly seasonality; and, for each
// configured limit, the projected date it is crossed.
//
// Every latency figure is a quantile of an exactly merged histogram (the
// hour's, the day's, the week's observations), never an average of
// percentiles. Build reads the store only through store.Query and
// store.Exemplars, so it works on a store opened ReadOnly beside a running
// daemon and on a copied data directory.
//
// The report is deterministic for a given store, range and options: groups,
// periods and measures come out in a fixed order, so the CSV and JSON outputs
// can be compared byte for byte.
package capacity

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// ErrEmptyStore is returned (wrapped) when the store holds no metric the
// report knows.
var ErrEmptyStore = errors.New("the store holds none of the metrics a capacity report reads")

// ErrNoData is returned (wrapped) when the known metrics have no point in the
// requested range.
var ErrNoData = errors.New("no data in the requested range")

// Options configure Build.
type Options struct {
	// From and To bound the report: [From, To). Days and weeks are UTC;
	// From is aligned down to midnight UTC.
	From, To time.Time
	// Now is the clock for "today" (headroom, trace retention). Default: To.
	Now time.Time
	// GroupBy lists the attributes rows are grouped by: an alias (service,
	// route, method, status, tenant, model, database — see Aliases) or a
	// raw attribute key. Empty means one group for everything.
	GroupBy []string
	// MinuteFrom is where the store still holds its first (finest) tier:
	// 1-minute peaks are computed for the days from here on. Zero means
	// From - i.e. assume minutes everywhere.
	MinuteFrom time.Time
	// Limits are checked against the trend.
	Limits []Limit
	// TraceURL makes a link from a trace ID (hex); nil lists trace IDs
	// without links.
	TraceURL func(traceID string) string
	// TraceRetention is how long traces stay viewable (Mackerel: 14 days);
	// exemplars older than Now - TraceRetention are not linked. Default
	// 14d; callers pass less when the store's first tier (which keeps the
	// exemplars) is shorter.
	TraceRetention time.Duration
	// Progress, if set, is called after each step with the steps done and
	// the total.
	Progress func(done, total int)
}

// Aliases map a group-by name to the attribute keys that carry it, in order
// of preference: the OpenTelemetry semantic convention, then the GCP label.
var Aliases = map[string][]string{
	"service":  {"service.name", "service_name"},
	"route":    {"http.route", "route"},
	"method":   {"http.request.method", "method"},
	"status":   {"http.response.status_code", "response_code_class", "code"},
	"tenant":   {"tenant"},
	"model":    {"gen_ai.request.model"},
	"database": {"database_id"},
	"revision": {"service.version", "revision_name"},
	"region":   {"cloud.region", "location", "region"},
}

func aliasKeys(name string) []string {
	if ks, ok := Aliases[name]; ok {
		return ks
	}
	return []string{name}
}

// Report is the result of Build.
type Report struct {
	From, To time.Time
	Now      time.Time
	GroupBy  []string
	// Used lists, per family, the metric the figures come from.
	Used []Used
	// Missing names the measures the store could not give, and why.
	Missing []Missing
	Groups  []*Group
	// Method states how the trend, forecast and uncertainty were computed.
	Method string
}

// Used names the stored metric a family of measures was computed from.
type Used struct {
	Family string `json:"family"`
	Metric string `json:"metric"`
	Kind   string `json:"kind"`
	Unit   string `json:"unit"`
}

// Missing is a family of measures the store could not give.
type Missing struct {
	Family   string   `json:"family"`
	Measures []string `json:"measures"`
	Reason   string   `json:"reason"`
}

// Group is one row group of the report.
type Group struct {
	// Label is "key=value,key=value" over the group-by names (aliases
	// shown by their alias), or "all".
	Label string
	Attrs map[string]string
	Days  []*Period
	Weeks []*Period
	// Trends are the fits of daily measures (peak rate, p95 at peak,
	// instances, connections, …) with their limit projections.
	Trends []*Trend
	// Worst lists exemplars of the slowest windows still within the trace
	// retention, slowest first.
	Worst []WorstWindow

	// wk holds week values computed from the raw data (merged histograms,
	// per-step quantiles), which folding days could not give exactly.
	wk map[int64]map[string]float64
}

// Period is one day or week of a group.
type Period struct {
	Start  time.Time
	Values map[string]float64
	// PeakHour is the start of the hour with the most requests.
	PeakHour time.Time
}

// WorstWindow is one slow window with a trace behind it.
type WorstWindow struct {
	Time    time.Time `json:"time"`
	Value   float64   `json:"value"`
	Unit    string    `json:"unit"`
	TraceID string    `json:"trace_id"`
	URL     string    `json:"url,omitempty"`
}

// Measure documents one measure name.
type Measure struct {
	Name, Family, Unit, Desc string
}

// Measures is the catalogue of the measures a report can hold, in output
// order. LLM token measures are llm_tokens_<gen_ai.token.type> and sort
// after these.
var Measures = []Measure{
	{"requests", "requests", "1", "requests in the period"},
	{"peak_rate_1m", "requests", "req/s", "highest 1-minute request rate (only where the store still holds minutes)"},
	{"rate_1m_p99", "requests", "req/s", "p99 of the period's 1-minute request rates (minutes with requests)"},
	{"peak_rate_1h", "requests", "req/s", "highest hourly mean request rate (every day; the trend's basis)"},
	{"peak_hour_utc", "requests", "h", "hour of day (UTC) of the busiest hour"},
	{"latency_p50_peak_hour", "latency", "", "p50 latency of the busiest hour (merged histogram)"},
	{"latency_p95_peak_hour", "latency", "", "p95 latency of the busiest hour"},
	{"latency_p99_peak_hour", "latency", "", "p99 latency of the busiest hour"},
	{"latency_p50", "latency", "", "p50 latency over the period (merged histogram)"},
	{"latency_p95", "latency", "", "p95 latency over the period"},
	{"latency_p99", "latency", "", "p99 latency over the period"},
	{"error_ratio", "errors", "1", "errors / requests (5xx or error.type)"},
	{"instances_max", "instances", "1", "Cloud Run instances, highest total (minutes; hourly: sum of per-series maxima, an upper bound)"},
	{"instances_p95", "instances", "1", "Cloud Run instances, p95 of the per-step totals"},
	{"cpu_utilization_p95", "cloudrun_cpu", "1", "Cloud Run container CPU utilization, p95 (merged distribution)"},
	{"memory_utilization_p95", "cloudrun_memory", "1", "Cloud Run container memory utilization, p95"},
	{"db_connections_max", "db_connections", "1", "Cloud SQL backends (connections), highest total"},
	{"db_connections_p95", "db_connections", "1", "Cloud SQL backends, p95 of the per-step totals"},
	{"db_cpu_utilization_p95", "db_cpu", "1", "Cloud SQL CPU utilization, p95 of the per-step values"},
}

var measureOrder = func() map[string]int {
	m := map[string]int{}
	for i, x := range Measures {
		m[x.Name] = i
	}
	return m
}()

// SortMeasures orders measure names as the catalogue does (LLM token
// measures last, by name).
func SortMeasures(names []string) {
	sort.Slice(names, func(i, j int) bool {
		a, aok := measureOrder[names[i]]
		b, bok := measureOrder[names[j]]
		switch {
		case aok && bok:
			return a < b
		case aok != bok:
			return aok
		}
		return names[i] < names[j]
	})
}

// family is one kind of figure and the metrics that can give it, in order of
// preference.
type family struct {
	name     string
	measures []string
	metrics  []string
	// fixed group keys added to the user's (Cloud SQL: database).
	fixed []string
	// own: the family ignores the user's group-by (a database is shared).
	own bool
}

var families = []family{
	{name: "requests", measures: []string{"requests", "peak_rate_1m", "rate_1m_p99", "peak_rate_1h", "peak_hour_utc", "latency_p50_peak_hour", "latency_p95_peak_hour", "latency_p99_peak_hour", "latency_p50", "latency_p95", "latency_p99", "error_ratio"},
		metrics: []string{"http.server.request.duration", "http_server_request_duration_seconds", "run.googleapis.com/request_latencies", "run.googleapis.com/request_count"}},
	{name: "instances", measures: []string{"instances_max", "instances_p95"}, metrics: []string{"run.googleapis.com/container/instance_count"}},
	{name: "cloudrun_cpu", measures: []string{"cpu_utilization_p95"}, metrics: []string{"run.googleapis.com/container/cpu/utilizations"}},
	{name: "cloudrun_memory", measures: []string{"memory_utilization_p95"}, metrics: []string{"run.googleapis.com/container/memory/utilizations"}},
	{name: "db_connections", measures: []string{"db_connections_max", "db_connections_p95"}, metrics: []string{"cloudsql.googleapis.com/database/postgresql/num_backends"}, fixed: []string{"database"}, own: true},
	{name: "db_cpu", measures: []string{"db_cpu_utilization_p95"}, metrics: []string{"cloudsql.googleapis.com/database/cpu/utilization"}, fixed: []string{"database"}, own: true},
	{name: "llm_tokens", measures: []string{"llm_tokens_<type>"}, metrics: []string{"gen_ai.client.token.usage"}, fixed: []string{"model"}},
}

// builder holds the state of one Build.
type builder struct {
	st       *store.Store
	opts     Options
	from, to time.Time
	minute   time.Time
	groups   map[string]*Group
	units    map[string]string // measure → unit
	done     int
	total    int
	seenKeys map[string]bool // group-by names some series carried
}

// Build computes the report from the store.
func Build(ctx context.Context, st *store.Store, opts Options) (*Report, error) {
	if !opts.From.Before(opts.To) {
		return nil, fmt.Errorf("capacity: empty range %s – %s", opts.From.Format(time.RFC3339), opts.To.Format(time.RFC3339))
	}
	if opts.Now.IsZero() {
		opts.Now = opts.To
	}
	if opts.TraceRetention <= 0 {
		opts.TraceRetention = 14 * 24 * time.Hour
	}
	from := opts.From.UTC().Truncate(24 * time.Hour)
	b := &builder{st: st, opts: opts, from: from, to: opts.To.UTC(), groups: map[string]*Group{}, units: map[string]string{}, seenKeys: map[string]bool{}}
	b.minute = opts.MinuteFrom.UTC()
	if b.minute.Before(from) {
		b.minute = from
	}
	// Whole days of minutes only: a day half in minutes would show a peak
	// of half a day.
	if t := b.minute.Truncate(24 * time.Hour); t.Before(b.minute) {
		b.minute = t.Add(24 * time.Hour)
	}
	if b.minute.After(b.to) {
		b.minute = b.to
	}
	ms, err := st.Metrics(ctx)
	if err != nil {
		return nil, fmt.Errorf("capacity: listing metrics: %w", err)
	}
	byName := map[string]store.MetricInfo{}
	for _, m := range ms {
		if _, ok := byName[m.Name]; !ok {
			byName[m.Name] = m
		}
	}
	rep := &Report{From: from, To: b.to, Now: opts.Now.UTC(), GroupBy: slices.Clone(opts.GroupBy)}
	type job struct {
		f    family
		info store.MetricInfo
	}
	var jobs []job
	for _, f := range families {
		var found *store.MetricInfo
		for _, name := range f.metrics {
			if m, ok := byName[name]; ok {
				found = &m
				break
			}
		}
		if found == nil {
			rep.Missing = append(rep.Missing, Missing{Family: f.name, Measures: f.measures, Reason: "no " + strings.Join(f.metrics, " or ") + " in the store"})
			continue
		}
		jobs = append(jobs, job{f, *found})
		rep.Used = append(rep.Used, Used{Family: f.name, Metric: found.Name, Kind: found.Kind.String(), Unit: found.Unit})
	}
	if len(jobs) == 0 {
		return nil, fmt.Errorf("capacity: %w (looked for %s)", ErrEmptyStore, knownMetrics())
	}
	b.total = len(jobs)*2 + 2
	for _, j := range jobs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var err error
		switch j.f.name {
		case "requests":
			err = b.requests(ctx, j.f, j.info)
		case "instances", "db_connections":
			err = b.gauge(ctx, j.f, j.info, true)
		case "db_cpu":
			err = b.gauge(ctx, j.f, j.info, false)
		case "cloudrun_cpu", "cloudrun_memory":
			err = b.utilization(ctx, j.f, j.info)
		case "llm_tokens":
			err = b.tokens(ctx, j.f, j.info)
		}
		if err != nil {
			return nil, fmt.Errorf("capacity: reading %s: %w", j.info.Name, err)
		}
	}
	if len(b.groups) == 0 {
		return nil, fmt.Errorf("capacity: %w: %s – %s (the store holds %s)", ErrNoData, from.Format(time.DateOnly), b.to.Format(time.RFC3339), usedNames(rep.Used))
	}
	for _, g := range opts.GroupBy {
		if !b.seenKeys[g] {
			return nil, fmt.Errorf("capacity: unknown group-by attribute %q: no series of %s carries %s", g, usedNames(rep.Used), strings.Join(aliasKeys(g), " or "))
		}
	}
	for _, g := range b.groups {
		rep.Groups = append(rep.Groups, g)
	}
	sort.Slice(rep.Groups, func(i, j int) bool { return rep.Groups[i].Label < rep.Groups[j].Label })
	for _, g := range rep.Groups {
		sort.Slice(g.Days, func(i, j int) bool { return g.Days[i].Start.Before(g.Days[j].Start) })
		g.Weeks = weeks(g.Days)
		for _, w := range g.Weeks {
			for m, v := range g.wk[w.Start.Unix()] {
				w.Values[m] = v
			}
		}
	}
	b.step()
	if err := b.worst(ctx, rep); err != nil {
		return nil, err
	}
	b.step()
	// Groups' trends are independent (a few Theil–Sen fits of up to
	// ~66,000 pairwise slopes each): fitted on all cores.
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(rep.Groups)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(rep.Groups); i = int(next.Add(1) - 1) {
				g := rep.Groups[i]
				g.Trends = trends(g, opts.Limits, rep.Now, b.units)
			}
		})
	}
	wg.Wait()
	rep.Missing = append(rep.Missing, b.absent(rep)...)
	rep.Method = method
	return rep, nil
}

func knownMetrics() string {
	var all []string
	for _, f := range families {
		all = append(all, f.metrics...)
	}
	return strings.Join(all, ", ")
}

func usedNames(u []Used) string {
	var s []string
	for _, x := range u {
		s = append(s, x.Metric)
	}
	return strings.Join(s, ", ")
}

// query runs a store query, split by time over the available CPUs when it
// spans weeks: decoding the stored points is most of a report's work, and
// the store serves concurrent readers. Parts split on whole days, so no
// step straddles two; rows come back in time order of the parts.
func (b *builder) query(ctx context.Context, q store.Query) ([]store.Row, error) {
	const day = 24 * time.Hour
	parts := runtime.GOMAXPROCS(0)
	span := q.To.Sub(q.From)
	if parts < 2 || span < 28*day || day%max(q.Step, time.Second) != 0 {
		return b.st.Query(ctx, q)
	}
	per := (span/time.Duration(parts) + day - 1).Truncate(day)
	var qs []store.Query
	for from := q.From; from.Before(q.To); {
		to := from.Truncate(day).Add(per)
		if !to.Before(q.To) {
			to = q.To
		}
		p := q
		p.From, p.To = from, to
		qs = append(qs, p)
		from = to
	}
	res := make([][]store.Row, len(qs))
	errs := make([]error, len(qs))
	var wg sync.WaitGroup
	for i := range qs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], errs[i] = b.st.Query(ctx, qs[i])
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var rows []store.Row
	for _, r := range res {
		rows = append(rows, r...)
	}
	return rows, nil
}

// groupKey identifies a store group (a row's group-by values).
func groupKey(keys []string, attrs map[string]string) string {
	var sb strings.Builder
	for _, k := range keys {
		if v, ok := attrs[k]; ok {
			sb.WriteString(k)
			sb.WriteByte(0)
			sb.WriteString(v)
		}
		sb.WriteByte(0)
	}
	return sb.String()
}

func (b *builder) step() {
	b.done++
	if b.opts.Progress != nil {
		b.opts.Progress(min(b.done, b.total), b.total)
	}
}

// queryKeys is the GroupBy of a query for a family: every alias key of the
// user's group-by names (unless the family has its own grouping) and of the
// family's fixed names.
func (b *builder) names(f family) []string {
	var names []string
	if !f.own {
		names = append(names, b.opts.GroupBy...)
	}
	return append(names, f.fixed...)
}

func queryKeys(names []string, extra ...string) []string {
	var keys []string
	for _, n := range names {
		keys = append(keys, aliasKeys(n)...)
	}
	return append(keys, extra...)
}

// label resolves a row's attributes to the group label and attributes, and
// notes which group-by names were seen.
func (b *builder) label(f family, names []string, attrs map[string]string) (string, map[string]string) {
	label, out := b.labelOf(names, attrs)
	for n := range out {
		if !slices.Contains(f.fixed, n) {
			b.seenKeys[n] = true
		}
	}
	return label, out
}

// labelOf is label without noting anything: safe from concurrent queries.
func (b *builder) labelOf(names []string, attrs map[string]string) (string, map[string]string) {
	out := map[string]string{}
	var parts []string
	for _, n := range names {
		for _, k := range aliasKeys(n) {
			if v, ok := attrs[k]; ok {
				out[n] = v
				parts = append(parts, n+"="+v)
				break
			}
		}
	}
	if len(parts) == 0 {
		return "all", out
	}
	return strings.Join(parts, ","), out
}

func (b *builder) group(label string, attrs map[string]string) *Group {
	g := b.groups[label]
	if g == nil {
		g = &Group{Label: label, Attrs: attrs}
		b.groups[label] = g
	}
	return g
}

func (g *Group) day(t time.Time) *Period {
	d := t.UTC().Truncate(24 * time.Hour)
	for i := len(g.Days) - 1; i >= 0; i-- {
		if g.Days[i].Start.Equal(d) {
			return g.Days[i]
		}
	}
	p := &Period{Start: d, Values: map[string]float64{}}
	g.Days = append(g.Days, p)
	return p
}

// weekStart is the Monday (UTC) starting t's ISO week.
func weekStart(t time.Time) time.Time {
	d := t.UTC().Truncate(24 * time.Hour)
	return d.AddDate(0, 0, -((int(d.Weekday()) + 6) % 7))
}

// setWeek records a week value computed from the raw data.
func (b *builder) setWeek(g *Group, week time.Time, measure string, v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return
	}
	if g.wk == nil {
		g.wk = map[int64]map[string]float64{}
	}
	k := weekStart(week).Unix()
	if g.wk[k] == nil {
		g.wk[k] = map[string]float64{}
	}
	g.wk[k][measure] = v
}

func (b *builder) set(g *Group, day time.Time, measure, unit string, v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return
	}
	g.day(day).Values[measure] = v
	if _, ok := b.units[measure]; !ok {
		b.units[measure] = unit
	}
}

// hourAcc is one group's hour of a request metric.
type hourAcc struct {
	t       time.Time
	count   float64
	errs    float64
	tracked bool
}

// requests reads the request metric so that a year of hourly histograms is
// not decoded bucket by bucket: the hourly tier once, for every hour's count
// and the histogram of each day's busiest hour (store.Query.Peak), and at
// the same time whole days from the store's daily rollups. Every histogram
// is still an exact merge of the stored windows.
func (b *builder) requests(ctx context.Context, f family, info store.MetricInfo) error {
	names := b.names(f)
	keys := queryKeys(names)
	// One read of the hourly tier: every hour's count, and the histogram
	// of each store group's busiest hour of each day (store.Query.Peak).
	// The days' histograms (the daily tier) are read at the same time:
	// neither read keeps both cores busy all the time on its own.
	q := store.Query{Metric: info.Name, GroupBy: keys, From: b.from, To: b.to, Step: time.Hour, CountsOnly: true}
	type result struct {
		rows []store.Row
		err  error
	}
	daysRead := make(chan result, 1)
	if info.Kind == metric.Histogram {
		q.Peak = 24 * time.Hour
		go func() {
			rows, err := b.query(ctx, store.Query{Metric: info.Name, GroupBy: keys, From: b.from, To: b.to, Step: 24 * time.Hour, Rollups: true})
			daysRead <- result{rows, err}
		}()
	}
	rows, err := b.query(ctx, q)
	if err != nil {
		if info.Kind == metric.Histogram {
			<-daysRead
		}
		return err
	}
	b.step()
	type gkey struct {
		label string
		t     int64
	}
	labels := map[string]map[string]string{}
	// A label is one store group unless series spell its key differently
	// (service.name and service_name): then the store's busiest hour of
	// each group is not the label's, and its hours are read again below.
	storeGroups := map[string]map[string]bool{}
	peakHist := map[gkey]*histogram.Histogram{}
	// A label's hours, in the order first seen (time order but where a
	// label's store groups interleave), indexed by time.
	type labelHours struct {
		hours []hourAcc
		at    map[int64]int
	}
	byLabel := map[string]*labelHours{}
	// Rows come group by group, a group's rows sharing one attributes map:
	// the label is resolved once per run of them.
	var lastAttrs uintptr
	var label string
	var lh *labelHours
	for i := range rows {
		r := &rows[i]
		if p := reflect.ValueOf(r.Attributes).Pointer(); lh == nil || p != lastAttrs {
			var attrs map[string]string
			label, attrs = b.label(f, names, r.Attributes)
			labels[label] = attrs
			if storeGroups[label] == nil {
				storeGroups[label] = map[string]bool{}
				byLabel[label] = &labelHours{at: map[int64]int{}}
			}
			storeGroups[label][groupKey(keys, r.Attributes)] = true
			lastAttrs, lh = p, byLabel[label]
		}
		t := r.Time.Unix()
		if r.Agg.Hist != nil {
			peakHist[gkey{label, t}] = r.Agg.Hist
		}
		j, ok := lh.at[t]
		if !ok {
			j = len(lh.hours)
			lh.at[t] = j
			lh.hours = append(lh.hours, hourAcc{t: r.Time})
		}
		h := &lh.hours[j]
		if r.Kind == metric.Histogram {
			h.count += float64(r.Agg.Count)
		} else {
			h.count += r.Agg.Sum
		}
		h.errs += float64(r.Agg.ErrorCount)
		h.tracked = h.tracked || r.Agg.ErrorTracked
	}
	// Per group and day: fold the hours.
	type dayAcc struct {
		day         time.Time
		count, errs float64
		tracked     bool
		peak        *hourAcc
	}
	days := map[string][]*dayAcc{}
	labelOrder := make([]string, 0, len(byLabel))
	for label := range byLabel {
		labelOrder = append(labelOrder, label)
	}
	slices.Sort(labelOrder)
	for _, label := range labelOrder {
		hs := byLabel[label].hours
		if !slices.IsSortedFunc(hs, func(a, b hourAcc) int { return a.t.Compare(b.t) }) {
			slices.SortFunc(hs, func(a, b hourAcc) int { return a.t.Compare(b.t) })
		}
		var cur *dayAcc
		for i := range hs {
			h := &hs[i]
			d := h.t.UTC().Truncate(24 * time.Hour)
			if cur == nil || !d.Equal(cur.day) {
				cur = &dayAcc{day: d}
				days[label] = append(days[label], cur)
			}
			cur.count += h.count
			cur.errs += h.errs
			cur.tracked = cur.tracked || h.tracked
			if cur.peak == nil || h.count > cur.peak.count {
				cur.peak = h
			}
		}
	}
	// Latency: the peak hours' histograms, and the days' (weeks merge days).
	dayHist := map[gkey]*histogram.Histogram{}
	if info.Kind == metric.Histogram {
		// Peak hours whose histogram the first read did not bring: of
		// labels made of several store groups, or (should a store group's
		// busiest hour differ from what the rows add up to) any other.
		peaks := map[string][]time.Time{}
		for label, ds := range days {
			multi := len(storeGroups[label]) > 1
			for _, d := range ds {
				k := gkey{label, d.peak.t.Unix()}
				if multi {
					delete(peakHist, k)
				}
				if peakHist[k] == nil {
					peaks[label] = append(peaks[label], d.peak.t)
				}
			}
			if multi {
				for k := range peakHist {
					if k.label == label {
						delete(peakHist, k)
					}
				}
			}
		}
		merge := func(into map[gkey]*histogram.Histogram, rows []store.Row) {
			for i := range rows {
				r := &rows[i]
				if r.Agg.Hist == nil {
					continue
				}
				label, _ := b.labelOf(names, r.Attributes)
				k := gkey{label, r.Time.Unix()}
				if h := into[k]; h == nil {
					into[k] = r.Agg.Hist
				} else {
					h.Merge(r.Agg.Hist)
				}
			}
		}
		if len(peaks) > 0 {
			rows, err = b.query(ctx, store.Query{Metric: info.Name, GroupBy: keys, From: b.from, To: b.to, Step: time.Hour,
				Steps: func(attrs map[string]string) []time.Time {
					label, _ := b.labelOf(names, attrs)
					return peaks[label]
				}})
			if err != nil {
				return err
			}
			merge(peakHist, rows)
		}
		days := <-daysRead
		if days.err != nil {
			return days.err
		}
		merge(dayHist, days.rows)
		rows = nil
	}
	unit := info.Unit
	for _, label := range labelOrder {
		g := b.group(label, labels[label])
		var wh *histogram.Histogram
		var wt time.Time
		flushWeek := func() {
			if wh != nil && wh.Count() > 0 {
				b.setWeek(g, wt, "latency_p50", wh.Quantile(0.5))
				b.setWeek(g, wt, "latency_p95", wh.Quantile(0.95))
				b.setWeek(g, wt, "latency_p99", wh.Quantile(0.99))
			}
			wh = nil
		}
		for _, cur := range days[label] {
			curDay := cur.day
			if ws := weekStart(curDay); !ws.Equal(wt) {
				flushWeek()
				wt = ws
			}
			b.set(g, curDay, "requests", "1", cur.count)
			b.set(g, curDay, "peak_rate_1h", "req/s", cur.peak.count/3600)
			b.set(g, curDay, "peak_hour_utc", "h", float64(cur.peak.t.UTC().Hour()))
			g.day(curDay).PeakHour = cur.peak.t.UTC()
			if ph := peakHist[gkey{label, cur.peak.t.Unix()}]; ph != nil && ph.Count() > 0 {
				b.set(g, curDay, "latency_p50_peak_hour", unit, ph.Quantile(0.5))
				b.set(g, curDay, "latency_p95_peak_hour", unit, ph.Quantile(0.95))
				b.set(g, curDay, "latency_p99_peak_hour", unit, ph.Quantile(0.99))
			}
			if h := dayHist[gkey{label, curDay.Unix()}]; h != nil {
				if h.Count() > 0 {
					b.set(g, curDay, "latency_p50", unit, h.Quantile(0.5))
					b.set(g, curDay, "latency_p95", unit, h.Quantile(0.95))
					b.set(g, curDay, "latency_p99", unit, h.Quantile(0.99))
				}
				if wh == nil {
					wh = h.Clone()
				} else {
					wh.Merge(h)
				}
			}
			if cur.tracked && cur.count > 0 {
				b.set(g, curDay, "error_ratio", "1", cur.errs/cur.count)
			}
		}
		flushWeek()
	}
	// 1-minute peaks where the store still holds minutes.
	if !b.minute.Before(b.to) {
		b.step()
		return nil
	}
	rows, err = b.query(ctx, store.Query{Metric: info.Name, GroupBy: keys, From: b.minute, To: b.to, Step: time.Minute, CountsOnly: true})
	if err != nil {
		return err
	}
	b.step()
	type mkey struct {
		label string
		day   int64
	}
	perMin := map[gkey]float64{}
	for i := range rows {
		r := &rows[i]
		label, _ := b.label(f, names, r.Attributes)
		c := r.Agg.Sum
		if r.Kind == metric.Histogram {
			c = float64(r.Agg.Count)
		}
		perMin[gkey{label, r.Time.Unix()}] += c
	}
	rates := map[mkey][]float64{}
	wrates := map[mkey][]float64{}
	for k, c := range perMin {
		d := k.t - k.t%86400
		rates[mkey{k.label, d}] = append(rates[mkey{k.label, d}], c/60)
		w := weekStart(time.Unix(k.t, 0)).Unix()
		wrates[mkey{k.label, w}] = append(wrates[mkey{k.label, w}], c/60)
	}
	for k, rs := range wrates {
		if g := b.groups[k.label]; g != nil {
			slices.Sort(rs)
			b.setWeek(g, time.Unix(k.day, 0), "rate_1m_p99", quantileSorted(rs, 0.99))
		}
	}
	for k, rs := range rates {
		g := b.groups[k.label]
		if g == nil {
			continue
		}
		slices.Sort(rs)
		day := time.Unix(k.day, 0).UTC()
		b.set(g, day, "peak_rate_1m", "req/s", rs[len(rs)-1])
		b.set(g, day, "rate_1m_p99", "req/s", quantileSorted(rs, 0.99))
	}
	return nil
}

// gauge computes per-step totals of a gauge metric per group: sum (across the
// group's series) of each series' mean in the step, and the sum of their
// maxima (exact with one sample per series and step, an upper bound
// otherwise). sum=false takes the largest series instead (a utilization).
func (b *builder) gauge(ctx context.Context, f family, info store.MetricInfo, sum bool) error {
	names := b.names(f)
	prefix := map[string]string{"instances": "instances", "db_connections": "db_connections", "db_cpu": "db_cpu_utilization"}[f.name]
	type gkey struct {
		label string
		t     int64
	}
	type tot struct{ mean, max float64 }
	// Hours: one row per series (the store merges a group's series into
	// one mean and one maximum, but a total needs each series' own).
	// Minutes: one row per group, whose Last is the sum of the series'
	// last values — the total at that minute when each series has one
	// sample a minute (Cloud Monitoring's gauges), without a row per series.
	collect := func(from, to time.Time, step time.Duration) (map[gkey]*tot, error) {
		q := store.Query{Metric: info.Name, From: from, To: to, Step: step}
		perGroup := step == time.Minute
		if perGroup {
			q.GroupBy = queryKeys(names)
		}
		rows, err := b.query(ctx, q)
		if err != nil {
			return nil, err
		}
		out := map[gkey]*tot{}
		for i := range rows {
			r := &rows[i]
			if r.Agg.Count == 0 {
				continue
			}
			label, attrs := b.label(f, names, r.Attributes)
			b.group(label, attrs)
			k := gkey{label, r.Time.Unix()}
			t := out[k]
			if t == nil {
				t = &tot{}
				out[k] = t
			}
			if perGroup {
				if sum {
					t.mean, t.max = r.Agg.Last, r.Agg.Last
				} else {
					t.mean, t.max = r.Agg.Max, r.Agg.Max
				}
				continue
			}
			mean := r.Agg.Sum / float64(r.Agg.Count)
			if sum {
				t.mean += mean
				t.max += r.Agg.Max
			} else {
				t.mean = max(t.mean, mean)
				t.max = max(t.max, r.Agg.Max)
			}
		}
		return out, nil
	}
	var parts []map[gkey]*tot
	if b.from.Before(b.minute) {
		m, err := collect(b.from, b.minute, time.Hour)
		if err != nil {
			return err
		}
		parts = append(parts, m)
	}
	b.step()
	if b.minute.Before(b.to) {
		m, err := collect(b.minute, b.to, time.Minute)
		if err != nil {
			return err
		}
		parts = append(parts, m)
	}
	b.step()
	type dkey struct {
		label string
		day   int64
	}
	days := map[dkey][]tot{}
	wks := map[dkey][]float64{}
	for _, m := range parts {
		for k, t := range m {
			d := dkey{k.label, k.t - k.t%86400}
			days[d] = append(days[d], *t)
			w := dkey{k.label, weekStart(time.Unix(k.t, 0)).Unix()}
			wks[w] = append(wks[w], t.mean)
		}
	}
	for k, ms := range wks {
		slices.Sort(ms)
		b.setWeek(b.groups[k.label], time.Unix(k.day, 0), prefix+"_p95", quantileSorted(ms, 0.95))
	}
	for k, ts := range days {
		g := b.groups[k.label]
		day := time.Unix(k.day, 0).UTC()
		means := make([]float64, len(ts))
		mx := math.Inf(-1)
		for i, t := range ts {
			means[i] = t.mean
			mx = max(mx, t.max)
		}
		slices.Sort(means)
		if sum {
			b.set(g, day, prefix+"_max", info.Unit, mx)
			b.set(g, day, prefix+"_p95", info.Unit, quantileSorted(means, 0.95))
		} else {
			b.set(g, day, prefix+"_p95", info.Unit, quantileSorted(means, 0.95))
		}
	}
	return nil
}

// utilization merges a distribution metric per group and day.
func (b *builder) utilization(ctx context.Context, f family, info store.MetricInfo) error {
	names := b.names(f)
	rows, err := b.query(ctx, store.Query{Metric: info.Name, GroupBy: queryKeys(names), From: b.from, To: b.to, Step: 24 * time.Hour})
	if err != nil {
		return err
	}
	b.step()
	measure := map[string]string{"cloudrun_cpu": "cpu_utilization_p95", "cloudrun_memory": "memory_utilization_p95"}[f.name]
	hists := map[string]map[int64]*histogram.Histogram{}
	for i := range rows {
		r := &rows[i]
		if r.Agg.Hist == nil || r.Agg.Hist.Count() == 0 {
			continue
		}
		label, attrs := b.label(f, names, r.Attributes)
		b.group(label, attrs)
		if hists[label] == nil {
			hists[label] = map[int64]*histogram.Histogram{}
		}
		if h := hists[label][r.Time.Unix()]; h != nil {
			h.Merge(r.Agg.Hist)
		} else {
			hists[label][r.Time.Unix()] = r.Agg.Hist
		}
	}
	for label, byDay := range hists {
		wk := map[int64]*histogram.Histogram{}
		for t, h := range byDay {
			b.set(b.groups[label], time.Unix(t, 0), measure, info.Unit, h.Quantile(0.95))
			ws := weekStart(time.Unix(t, 0)).Unix()
			if w := wk[ws]; w != nil {
				w.Merge(h)
			} else {
				wk[ws] = h.Clone()
			}
		}
		for ws, h := range wk {
			b.setWeek(b.groups[label], time.Unix(ws, 0), measure, h.Quantile(0.95))
		}
	}
	b.step()
	return nil
}

// tokens sums LLM token usage per group, model and token type per day.
func (b *builder) tokens(ctx context.Context, f family, info store.MetricInfo) error {
	names := b.names(f)
	rows, err := b.query(ctx, store.Query{Metric: info.Name, GroupBy: queryKeys(names, "gen_ai.token.type"), From: b.from, To: b.to, Step: 24 * time.Hour})
	if err != nil {
		return err
	}
	b.step()
	for i := range rows {
		r := &rows[i]
		label, attrs := b.label(f, names, r.Attributes)
		g := b.group(label, attrs)
		typ := r.Attributes["gen_ai.token.type"]
		if typ == "" {
			typ = "total"
		}
		v, ok, err := store.Stat(*r, "sum")
		if err != nil || !ok {
			continue
		}
		m := "llm_tokens_" + typ
		p := g.day(r.Time)
		p.Values[m] += v
		b.units[m] = "{token}"
	}
	b.step()
	return nil
}

// weeks folds days into ISO weeks (Monday to Sunday, UTC): counts add,
// maxima take the maximum, the peak-hour measures come from the week's
// busiest hour, and the error ratio is the week's errors over its requests.
// Quantiles are then replaced by the values Build computed from the week's
// own data (merged histograms, all its steps).
func weeks(days []*Period) []*Period {
	var out []*Period
	var cur *Period
	var peakReq float64
	for _, d := range days {
		wd := (int(d.Start.Weekday()) + 6) % 7 // Monday = 0
		ws := d.Start.AddDate(0, 0, -wd)
		if cur == nil || !cur.Start.Equal(ws) {
			cur = &Period{Start: ws, Values: map[string]float64{}}
			out = append(out, cur)
			peakReq = -1
		}
		for m, v := range d.Values {
			switch {
			case m == "requests" || strings.HasPrefix(m, "llm_tokens_"):
				cur.Values[m] += v
			case m == "error_ratio":
				// weighted below
			case strings.HasSuffix(m, "_peak_hour") || m == "peak_hour_utc":
				// taken from the week's busiest day below
			default:
				if old, ok := cur.Values[m]; !ok || v > old {
					cur.Values[m] = v
				}
			}
		}
		if r, ok := d.Values["peak_rate_1h"]; ok && r > peakReq {
			peakReq = r
			cur.PeakHour = d.PeakHour
			for m, v := range d.Values {
				if strings.HasSuffix(m, "_peak_hour") || m == "peak_hour_utc" {
					cur.Values[m] = v
				}
			}
		}
	}
	// Error ratio: errors over requests of the whole week.
	for _, w := range out {
		var errs, reqs float64
		tracked := false
		for _, d := range days {
			if d.Start.Before(w.Start) || !d.Start.Before(w.Start.AddDate(0, 0, 7)) {
				continue
			}
			if er, ok := d.Values["error_ratio"]; ok {
				tracked = true
				errs += er * d.Values["requests"]
				reqs += d.Values["requests"]
			}
		}
		if tracked && reqs > 0 {
			w.Values["error_ratio"] = errs / reqs
		}
	}
	return out
}

// quantileSorted is the nearest-rank-interpolated quantile of sorted values.
func quantileSorted(s []float64, q float64) float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(s)-1)
	i := int(pos)
	if i >= len(s)-1 {
		return s[len(s)-1]
	}
	frac := pos - float64(i)
	return s[i] + frac*(s[i+1]-s[i])
}

// worst finds, per group, the slowest exemplars of its slowest busy hours
// still within the trace retention: the peak hours of the three days with
// the highest p99 at the peak hour. Reading only those hours keeps the
// exemplar scan small on a store with weeks of minutes.
func (b *builder) worst(ctx context.Context, rep *Report) error {
	var info *Used
	for i := range rep.Used {
		if rep.Used[i].Family == "requests" && rep.Used[i].Kind == metric.Histogram.String() {
			info = &rep.Used[i]
		}
	}
	if info == nil {
		return nil
	}
	cutoff := rep.Now.Add(-b.opts.TraceRetention)
	want := map[int64]map[string]bool{} // hour → groups
	for _, g := range rep.Groups {
		var cand []*Period
		for _, d := range g.Days {
			if _, ok := d.Values["latency_p99_peak_hour"]; ok && !d.PeakHour.Before(cutoff) {
				cand = append(cand, d)
			}
		}
		sort.SliceStable(cand, func(i, j int) bool {
			return cand[i].Values["latency_p99_peak_hour"] > cand[j].Values["latency_p99_peak_hour"]
		})
		for _, d := range cand[:min(3, len(cand))] {
			h := d.PeakHour.Unix()
			if want[h] == nil {
				want[h] = map[string]bool{}
			}
			want[h][g.Label] = true
		}
	}
	hours := make([]int64, 0, len(want))
	for h := range want {
		hours = append(hours, h)
	}
	slices.Sort(hours)
	f := families[0]
	names := b.names(f)
	per := map[string][]WorstWindow{}
	for _, h := range hours {
		from := time.Unix(h, 0).UTC()
		exs, err := b.st.Exemplars(ctx, store.Query{Metric: info.Metric, GroupBy: queryKeys(names), From: from, To: from.Add(time.Hour)})
		if err != nil {
			return fmt.Errorf("capacity: reading exemplars: %w", err)
		}
		for _, e := range exs {
			if !e.Exemplar.HasTrace() {
				continue
			}
			label, _ := b.label(f, names, e.Attributes)
			if !want[h][label] {
				continue
			}
			w := WorstWindow{Time: e.Time, Value: e.Exemplar.Value, Unit: info.Unit, TraceID: e.TraceIDHex()}
			if b.opts.TraceURL != nil {
				w.URL = b.opts.TraceURL(w.TraceID)
			}
			per[label] = append(per[label], w)
		}
	}
	for _, g := range rep.Groups {
		ws := per[g.Label]
		sort.SliceStable(ws, func(i, j int) bool {
			if ws[i].Value != ws[j].Value {
				return ws[i].Value > ws[j].Value
			}
			return ws[i].Time.Before(ws[j].Time)
		})
		// One per window: the slowest.
		var out []WorstWindow
		seen := map[int64]bool{}
		for _, w := range ws {
			if seen[w.Time.Unix()] {
				continue
			}
			seen[w.Time.Unix()] = true
			out = append(out, w)
			if len(out) == 5 {
				break
			}
		}
		g.Worst = out
	}
	return nil
}

// absent names the measures of the families found that no period got, with
// the reason.
func (b *builder) absent(rep *Report) []Missing {
	have := map[string]bool{}
	for _, g := range rep.Groups {
		for _, d := range g.Days {
			for m := range d.Values {
				have[m] = true
			}
		}
	}
	var out []Missing
	for _, u := range rep.Used {
		for _, f := range families {
			if f.name != u.Family || f.name == "llm_tokens" {
				continue
			}
			var miss []string
			for _, m := range f.measures {
				if !have[m] {
					miss = append(miss, m)
				}
			}
			if len(miss) == 0 {
				continue
			}
			// Say why, measure by measure where the reason differs.
			why := map[string][]string{}
			for _, m := range miss {
				var r string
				switch {
				case m == "peak_rate_1m" || m == "rate_1m_p99":
					r = "the range has no day the store still keeps in minutes (first retention tier, -minutes)"
				case strings.HasPrefix(m, "latency_"):
					r = u.Metric + " is a " + u.Kind + ", not a histogram"
				case m == "error_ratio":
					r = u.Metric + " carries no error information (http.response.status_code, error.type or a 5xx code label)"
				default:
					r = u.Metric + " has no point in the range"
				}
				why[r] = append(why[r], m)
			}
			reasons := make([]string, 0, len(why))
			for r := range why {
				reasons = append(reasons, r)
			}
			sort.Slice(reasons, func(i, j int) bool { return measureOrder[why[reasons[i]][0]] < measureOrder[why[reasons[j]][0]] })
			for _, r := range reasons {
				out = append(out, Missing{Family: u.Family, Measures: why[r], Reason: r})
			}
		}
	}
	return out
}
