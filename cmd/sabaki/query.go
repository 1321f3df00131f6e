package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/exporters"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/internal/timerange"
)

// queryNow is the clock -from/-to durations count back from (tests pin it).
var queryNow = time.Now

const queryUsage = `usage: sabaki query -metric M [-where k=v ...] [-group-by k1,k2] [-stat p95]
                    [-from 24h] [-to now] [-step 1h] [-o table|json|csv]
                    [-data-dir DIR | -config FILE] [-exemplars]
       sabaki query [-o table|json|csv]      (lists the stored metrics)

Reads the store, also while "sabaki run" writes it, and prints one value per
step and series. Rows start on multiples of -step since the Unix epoch (UTC);
each merges every stored window that starts in it, from the finest retention
tier that still holds it (a 1 h p95 is the p95 of all the hour's
observations). Without -group-by every series (resource + point attributes)
is its own row; -group-by merges the series sharing those attribute values.

-from/-to: now, a duration back from now (30m, 24h, 90d), RFC 3339, or Unix
seconds. -stat (comma-separated for several): count, sum, rate (per second),
mean, min, max, p50, p90, p95, p99, p<any> such as p99.9, last, error_ratio.
Default: p95 for histograms, sum for counters, last for gauges.

-o json prints [{"time","metric","attributes","stat","value"}]; a value that
is unknown (error_ratio of a series without error information, quantiles of
an empty histogram) is left out. With -exemplars:
[{"time","metric","attributes","value","trace_id","span_id"}], time being the
window start, plus "trace_url" when -config has a Mackerel exporter (its
trace_url_template). Without -metric: [{"metric","kind","unit","series"}].

flags:
`

// whereFlag collects repeated -where k=v.
type whereFlag map[string]string

func (w whereFlag) String() string { return "" }

func (w whereFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want key=value, got %q", s)
	}
	w[k] = v
	return nil
}

type queryOpts struct {
	metric, groupBy, stat, from, to, step, output, dataDir, configFile string
	where                                                              whereFlag
	exemplars                                                          bool
}

// runQuery implements `sabaki query`. Exit status: 0 success (also when no
// rows match), 1 the store could not be read or the metric is unknown, 2 bad
// flags.
func runQuery(args []string, stdout, stderr io.Writer) int {
	o := queryOpts{where: whereFlag{}}
	fs := flag.NewFlagSet("query", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, queryUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.metric, "metric", "", "metric name; without it, list the stored metrics")
	fs.Var(o.where, "where", "keep series whose resource or point attribute `k=v` (repeatable)")
	fs.StringVar(&o.groupBy, "group-by", "", "merge series sharing these attribute `keys` (comma-separated)")
	fs.StringVar(&o.stat, "stat", "", "statistic(s) to print, comma-separated (default by kind)")
	fs.StringVar(&o.from, "from", "24h", "start of the range")
	fs.StringVar(&o.to, "to", "now", "end of the range (exclusive)")
	fs.StringVar(&o.step, "step", "1h", "row width, e.g. 1m, 1h, 1d")
	fs.StringVar(&o.output, "o", "table", "output format: table, json or csv")
	fs.StringVar(&o.dataDir, "data-dir", "", "agent data directory (default: agent.data_dir of -config, else $SABAKI_DATA_DIR, else ./data)")
	fs.StringVar(&o.configFile, "config", "", "read agent.data_dir from this config `file`")
	fs.BoolVar(&o.exemplars, "exemplars", false, "list the exemplars (trace IDs) of the matching windows instead of stats")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "sabaki query: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q (flags go before it? use -metric NAME)", fs.Arg(0))
	}
	switch o.output {
	case "table", "json", "csv":
	default:
		return usageErr("-o %q: want table, json or csv", o.output)
	}
	now := queryNow()
	rng, err := timerange.ParseRange(o.from, o.to, "24h", "now", now)
	if err != nil {
		return usageErr("%v", err)
	}
	step, err := timerange.ParseStep(o.step)
	if err != nil || step%time.Second != 0 {
		return usageErr("-step %q: want a positive whole number of seconds, e.g. 1m, 1h, 1d", o.step)
	}
	var stats []string
	for _, s := range strings.Split(o.stat, ",") {
		if s = strings.TrimSpace(s); s != "" {
			if !store.ValidStat(s) {
				return usageErr("-stat %q: want count, sum, rate, mean, min, max, last, error_ratio or a quantile such as p95, p99.9", s)
			}
			stats = append(stats, s)
		}
	}
	var groupBy []string
	for _, k := range strings.Split(o.groupBy, ",") {
		if k = strings.TrimSpace(k); k != "" {
			groupBy = append(groupBy, k)
		}
	}
	if o.dataDir != "" && o.configFile != "" {
		return usageErr("give -data-dir or -config, not both")
	}
	dataDir := o.dataDir
	var tiers []store.Tier
	var traceURL func(traceID string) string
	if o.configFile != "" {
		cfg, ps := loadConfig(o.configFile)
		if len(ps) > 0 {
			for _, p := range ps {
				fmt.Fprintln(stderr, p.Format(o.configFile))
			}
			return 1
		}
		dataDir = cfg.Agent.DataDir
		tiers = store.Tiers(cfg.Retention)
		traceURL = traceURLOf(cfg)
	}
	if dataDir == "" {
		dataDir = os.Getenv("SABAKI_DATA_DIR")
	}
	if dataDir == "" {
		dataDir = "./data"
	}
	st, err := store.Open(store.Dir(dataDir), store.Options{ReadOnly: true, Tiers: tiers, Now: queryNow})
	if err != nil {
		fmt.Fprintf(stderr, "sabaki query: %v\n", err)
		return 1
	}
	defer st.Close()
	ctx := context.Background()
	metrics, err := st.Metrics(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "sabaki query: %v\n", err)
		return 1
	}
	if o.metric == "" {
		return printMetrics(stdout, stderr, o.output, metrics)
	}
	var info *store.MetricInfo
	for i := range metrics {
		if metrics[i].Name == o.metric {
			info = &metrics[i]
			break
		}
	}
	if info == nil {
		msg := fmt.Sprintf("sabaki query: no metric %q in %s", o.metric, store.Dir(dataDir))
		if s := closestMetric(o.metric, metrics); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		fmt.Fprintln(stderr, msg+`; run "sabaki query" without -metric to list them`)
		return 1
	}
	q := store.Query{Metric: o.metric, Where: o.where, GroupBy: groupBy, From: rng.From, To: rng.To, Step: step}
	if o.exemplars {
		rows, err := st.Exemplars(ctx, q)
		if err != nil {
			fmt.Fprintf(stderr, "sabaki query: %v\n", err)
			return 1
		}
		return printExemplars(stdout, stderr, o.output, o.metric, groupBy, rows, traceURL)
	}
	if len(stats) == 0 {
		stats = []string{store.DefaultStat(info.Kind)}
	}
	for _, s := range stats {
		if _, _, err := store.Stat(store.Row{Kind: info.Kind}, s); err != nil {
			return usageErr("%s is a %s: %v", o.metric, info.Kind, err)
		}
	}
	rows, err := st.Query(ctx, q)
	if err != nil {
		fmt.Fprintf(stderr, "sabaki query: %v\n", err)
		return 1
	}
	return printRows(stdout, stderr, o.output, o.metric, info.Unit, groupBy, stats, rows)
}

// attrColumns returns the attribute keys to print as columns: the group-by
// keys in their order, or every key the rows carry, sorted.
func attrColumns(groupBy []string, attrs []map[string]string) []string {
	if len(groupBy) > 0 {
		return groupBy
	}
	seen := map[string]bool{}
	var keys []string
	for _, m := range attrs {
		for k := range m {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)
	return keys
}

// formatValue prints integers exactly and other values with up to 6
// significant digits (table) or in full (csv).
func formatValue(v float64, full bool) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	if full {
		return strconv.FormatFloat(v, 'g', -1, 64)
	}
	return strconv.FormatFloat(v, 'g', 6, 64)
}

type statJSON struct {
	Time       string            `json:"time"`
	Metric     string            `json:"metric"`
	Attributes map[string]string `json:"attributes"`
	Stat       string            `json:"stat"`
	Value      float64           `json:"value"`
}

func printRows(stdout, stderr io.Writer, format, name, unit string, groupBy, stats []string, rows []store.Row) int {
	attrs := make([]map[string]string, len(rows))
	for i, r := range rows {
		attrs[i] = r.Attributes
	}
	cols := attrColumns(groupBy, attrs)
	type cell struct {
		v  float64
		ok bool
	}
	vals := make([][]cell, len(rows))
	for i, r := range rows {
		vals[i] = make([]cell, len(stats))
		for j, s := range stats {
			v, ok, err := store.Stat(r, s)
			vals[i][j] = cell{v, ok && err == nil && !math.IsNaN(v) && !math.IsInf(v, 0)}
		}
	}
	switch format {
	case "json":
		out := make([]statJSON, 0, len(rows)*len(stats))
		for i, r := range rows {
			for j, s := range stats {
				if vals[i][j].ok {
					out = append(out, statJSON{Time: r.Time.Format(time.RFC3339), Metric: name, Attributes: nonNil(r.Attributes), Stat: s, Value: vals[i][j].v})
				}
			}
		}
		return writeJSON(stdout, stderr, out)
	case "csv":
		w := csv.NewWriter(stdout)
		w.Write(slices.Concat([]string{"time", "metric"}, cols, stats))
		for i, r := range rows {
			rec := []string{r.Time.Format(time.RFC3339), name}
			for _, k := range cols {
				rec = append(rec, r.Attributes[k])
			}
			for j := range stats {
				if vals[i][j].ok {
					rec = append(rec, formatValue(vals[i][j].v, true))
				} else {
					rec = append(rec, "")
				}
			}
			w.Write(rec)
		}
		w.Flush()
		return flushErr(stderr, w.Error())
	}
	if len(rows) == 0 {
		fmt.Fprintf(stderr, "no data for %s in this range\n", name)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	head := slices.Concat([]string{"time"}, cols)
	for _, s := range stats {
		if unit != "" && unit != "1" && !slices.Contains([]string{"count", "rate", "error_ratio"}, s) {
			s += " (" + unit + ")"
		}
		head = append(head, s)
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for i, r := range rows {
		rec := []string{r.Time.Format(time.RFC3339)}
		for _, k := range cols {
			rec = append(rec, r.Attributes[k])
		}
		for j := range stats {
			if vals[i][j].ok {
				rec = append(rec, formatValue(vals[i][j].v, false))
			} else {
				rec = append(rec, "-")
			}
		}
		fmt.Fprintln(tw, strings.Join(rec, "\t"))
	}
	return flushErr(stderr, tw.Flush())
}

type exemplarOut struct {
	Time       string            `json:"time"`
	Metric     string            `json:"metric"`
	Attributes map[string]string `json:"attributes"`
	Value      float64           `json:"value"`
	TraceID    string            `json:"trace_id"`
	SpanID     string            `json:"span_id"`
	TraceURL   string            `json:"trace_url,omitempty"`
}

// traceURLOf returns the trace link maker of the config's first Mackerel
// exporter, or nil.
func traceURLOf(cfg *Config) func(string) string {
	for _, e := range cfg.Exporters {
		mc, ok := e.Config.(*exporters.MackerelConfig)
		if !ok || mc.TraceURLTemplate == "" || (mc.Org == "" && strings.Contains(mc.TraceURLTemplate, "{org}")) {
			continue
		}
		return func(id string) string { return exporters.MackerelTraceURL(mc.TraceURLTemplate, mc.Org, id) }
	}
	return nil
}

func printExemplars(stdout, stderr io.Writer, format, name string, groupBy []string, rows []store.ExemplarRow, traceURL func(string) string) int {
	attrs := make([]map[string]string, len(rows))
	for i, r := range rows {
		attrs[i] = r.Attributes
	}
	cols := attrColumns(groupBy, attrs)
	tail := []string{"value", "trace_id", "span_id"}
	if traceURL != nil {
		tail = append(tail, "trace_url")
	}
	fields := func(r store.ExemplarRow, full bool) []string {
		f := []string{formatValue(r.Exemplar.Value, full), r.TraceIDHex(), r.SpanIDHex()}
		if traceURL != nil {
			f = append(f, traceURL(r.TraceIDHex()))
		}
		return f
	}
	switch format {
	case "json":
		out := make([]exemplarOut, 0, len(rows))
		for _, r := range rows {
			e := exemplarOut{Time: r.Time.Format(time.RFC3339), Metric: name, Attributes: nonNil(r.Attributes),
				Value: r.Exemplar.Value, TraceID: r.TraceIDHex(), SpanID: r.SpanIDHex()}
			if traceURL != nil {
				e.TraceURL = traceURL(e.TraceID)
			}
			out = append(out, e)
		}
		return writeJSON(stdout, stderr, out)
	case "csv":
		w := csv.NewWriter(stdout)
		w.Write(slices.Concat([]string{"time", "metric"}, cols, tail))
		for _, r := range rows {
			rec := []string{r.Time.Format(time.RFC3339), name}
			for _, k := range cols {
				rec = append(rec, r.Attributes[k])
			}
			w.Write(append(rec, fields(r, true)...))
		}
		w.Flush()
		return flushErr(stderr, w.Error())
	}
	if len(rows) == 0 {
		fmt.Fprintf(stderr, "no exemplars for %s in this range\n", name)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(slices.Concat([]string{"time"}, cols, tail), "\t"))
	for _, r := range rows {
		rec := []string{r.Time.Format(time.RFC3339)}
		for _, k := range cols {
			rec = append(rec, r.Attributes[k])
		}
		fmt.Fprintln(tw, strings.Join(append(rec, fields(r, false)...), "\t"))
	}
	return flushErr(stderr, tw.Flush())
}

type metricJSON struct {
	Metric string `json:"metric"`
	Kind   string `json:"kind"`
	Unit   string `json:"unit"`
	Series int    `json:"series"`
}

func printMetrics(stdout, stderr io.Writer, format string, ms []store.MetricInfo) int {
	switch format {
	case "json":
		out := make([]metricJSON, 0, len(ms))
		for _, m := range ms {
			out = append(out, metricJSON{m.Name, m.Kind.String(), m.Unit, m.Series})
		}
		return writeJSON(stdout, stderr, out)
	case "csv":
		w := csv.NewWriter(stdout)
		w.Write([]string{"metric", "kind", "unit", "series"})
		for _, m := range ms {
			w.Write([]string{m.Name, m.Kind.String(), m.Unit, strconv.Itoa(m.Series)})
		}
		w.Flush()
		return flushErr(stderr, w.Error())
	}
	if len(ms) == 0 {
		fmt.Fprintln(stderr, "the store holds no metrics yet")
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tkind\tunit\tseries")
	for _, m := range ms {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", m.Name, m.Kind, m.Unit, m.Series)
	}
	return flushErr(stderr, tw.Flush())
}

func writeJSON(stdout, stderr io.Writer, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return flushErr(stderr, enc.Encode(v))
}

func flushErr(stderr io.Writer, err error) int {
	if err != nil {
		fmt.Fprintf(stderr, "sabaki query: writing output: %v\n", err)
		return 1
	}
	return 0
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// closestMetric suggests a stored metric name for a typo.
func closestMetric(name string, ms []store.MetricInfo) string {
	best, bestD := "", len(name)/3+2
	for _, m := range ms {
		if d := config.EditDistance(name, m.Name); d < bestD {
			best, bestD = m.Name, d
		}
	}
	return best
}
