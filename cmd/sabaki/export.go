package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sabakiio/sabaki/agent/capacity"
	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/exporters"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/internal/timerange"
)

// exportNow is the clock -from/-to count back from (tests pin it).
var exportNow = time.Now

const exportUsage = `usage: sabaki export capacity [-config FILE | -data-dir DIR] [-from 90d] [-to now]
                              [-group-by service] [-format csv|json|html] [-out FILE]
                              [-limits FILE] [-minutes 7d] [-quiet]

Reads the store (also while "sabaki run" writes it, or a copied data
directory) and writes a capacity-planning report: per group and per day and
week the peak request rate (busiest hour; busiest minute where the store still
keeps minutes), requests, latency p50/p95/p99 at the peak hour and over the
period (merged histograms), error ratio, Cloud Run instances and CPU/memory
utilization, Cloud SQL connections and CPU, LLM tokens per model; a Theil–Sen
trend of the daily peaks with weekly seasonality; and, for each limit in
-limits, the projected date it is crossed and the headroom today. Measures the
store cannot give are named on stderr and in the JSON and HTML.

-group-by: comma-separated; service, route, method, status, tenant, model,
database, revision, region (each maps to its OpenTelemetry and GCP attribute
names) or any attribute key. Cloud SQL figures are always per database.

-format: csv (tidy: period,start,group,measure,value,unit), json (the same
plus trends and forecasts) or html (one self-contained page with SVG charts).
Default: from the -out extension, else csv.

-limits FILE: YAML, e.g.
  limits:
    - {name: Cloud Run max instances, measure: instances_max, value: 100}
    - {name: Cloud SQL max_connections, measure: db_connections_max, value: 400}
    - {name: p95 SLO, measure: latency_p95_peak_hour, value: 0.8, group: service=web}

flags:
`

// limitsFile is the -limits file.
type limitsFile struct {
	Limits []capacity.Limit `yaml:"limits"`
}

// Validate checks every limit.
func (f *limitsFile) Validate() error {
	var errs []error
	for i := range f.Limits {
		errs = append(errs, config.Join(fmt.Sprintf("limits[%d]", i), f.Limits[i].Validate()))
	}
	return errors.Join(errs...)
}

// runExport implements `sabaki export capacity`. Exit status: 0 written, 1
// the store could not be read, held no data or the output could not be
// written, 2 bad flags.
func runExport(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "capacity" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
			fmt.Fprint(stdout, exportUsage)
			return 0
		}
		fmt.Fprint(stderr, "sabaki export: want \"sabaki export capacity [flags]\"\n\n"+exportUsage)
		return 2
	}
	var (
		from, to, groupBy, format, out, dataDir, configFile, limitsPath, minutesFlag string
		quiet                                                                        bool
	)
	fs := flag.NewFlagSet("export capacity", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, exportUsage)
		fs.PrintDefaults()
	}
	fs.StringVar(&from, "from", "90d", "start of the range (days start at midnight UTC)")
	fs.StringVar(&to, "to", "now", "end of the range (exclusive)")
	fs.StringVar(&groupBy, "group-by", "service", "group by these `names` (comma-separated; empty: one group)")
	fs.StringVar(&format, "format", "", "csv, json or html (default: from -out, else csv)")
	fs.StringVar(&out, "out", "", "write to this `file` (default: standard output)")
	fs.StringVar(&dataDir, "data-dir", "", "agent data directory (default: agent.data_dir of -config, else $SABAKI_DATA_DIR, else ./data)")
	fs.StringVar(&configFile, "config", "", "read agent.data_dir, retention and the Mackerel trace URL from this config `file`")
	fs.StringVar(&limitsPath, "limits", "", "YAML `file` with a limits: list")
	fs.BoolVar(&quiet, "quiet", false, "no progress bar and no notes on stderr")
	fs.StringVar(&minutesFlag, "minutes", "7d", "compute 1-minute peaks over this last stretch (at most what the first retention tier keeps; 0: none). Reading minutes decodes every minute of every series, the slowest part of the report")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	usageErr := func(f string, a ...any) int {
		fmt.Fprintf(stderr, "sabaki export: "+f+"\n", a...)
		return 2
	}
	fail := func(f string, a ...any) int {
		fmt.Fprintf(stderr, "sabaki export: "+f+"\n", a...)
		return 1
	}
	if fs.NArg() > 0 {
		return usageErr("unexpected argument %q", fs.Arg(0))
	}
	if format == "" {
		switch strings.ToLower(filepath.Ext(out)) {
		case ".html", ".htm":
			format = "html"
		case ".json":
			format = "json"
		default:
			format = "csv"
		}
	}
	switch format {
	case "csv", "json", "html":
	default:
		return usageErr("-format %q: want csv, json or html", format)
	}
	var minutes time.Duration
	if minutesFlag != "0" {
		var err error
		if minutes, err = timerange.ParseStep(minutesFlag); err != nil {
			return usageErr("-minutes %q: want a duration such as 7d, or 0", minutesFlag)
		}
	}
	now := exportNow().UTC()
	rng, err := timerange.ParseRange(from, to, "90d", "now", now)
	if err != nil {
		return usageErr("%v", err)
	}
	var names []string
	for _, k := range strings.Split(groupBy, ",") {
		if k = strings.TrimSpace(k); k != "" {
			names = append(names, k)
		}
	}
	if dataDir != "" && configFile != "" {
		return usageErr("give -data-dir or -config, not both")
	}
	var limits []capacity.Limit
	if limitsPath != "" {
		var problems config.Problems
		limits, problems = readLimits(limitsPath)
		if len(problems) > 0 {
			for _, p := range problems {
				fmt.Fprintln(stderr, p.Format(limitsPath))
			}
			return 2
		}
	}
	retention := store.DefaultRetention()
	var traceURL func(string) string
	if configFile != "" {
		cfg, ps := loadConfig(configFile)
		if len(ps) > 0 {
			for _, p := range ps {
				fmt.Fprintln(stderr, p.Format(configFile))
			}
			return 1
		}
		dataDir = cfg.Agent.DataDir
		retention = cfg.Retention
		for _, e := range cfg.Exporters {
			if mc, ok := e.Config.(*exporters.MackerelConfig); ok && mc.TraceURLTemplate != "" {
				if strings.Contains(mc.TraceURLTemplate, "{org}") && mc.Org == "" {
					continue
				}
				tmpl, org := mc.TraceURLTemplate, mc.Org
				traceURL = func(id string) string { return exporters.MackerelTraceURL(tmpl, org, id) }
				break
			}
		}
	}
	if dataDir == "" {
		dataDir = os.Getenv("SABAKI_DATA_DIR")
	}
	if dataDir == "" {
		dataDir = "./data"
	}
	tiers := store.Tiers(retention)
	// Fail on an unwritable -out before the long read, not after it.
	var outFile *os.File
	if out != "" {
		outFile, err = os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*")
		if err != nil {
			return fail("cannot write %s: %v", out, errors.Unwrap(err))
		}
		defer func() {
			if outFile != nil {
				outFile.Close()
				os.Remove(outFile.Name())
			}
		}()
	}
	dir := store.Dir(dataDir)
	if _, err := os.Stat(filepath.Join(dir, "sabaki.db")); err != nil {
		return fail("no store in %s (is -data-dir or -config right? sabaki run creates it)", dir)
	}
	st, err := store.Open(dir, store.Options{ReadOnly: true, Tiers: tiers, Now: exportNow})
	if err != nil {
		return fail("%v", err)
	}
	defer st.Close()
	// A report that ends in the past is as of its end: "today", the last 7
	// days and the trace retention count from there.
	asOf := now
	if rng.To.Before(asOf) {
		asOf = rng.To
	}
	bar := newProgress(stderr, quiet)
	opts := capacity.Options{
		From: rng.From, To: rng.To, Now: asOf, GroupBy: names, Limits: limits, TraceURL: traceURL,
		MinuteFrom: now.Add(-min(tiers[0].Keep, minutes)), Progress: bar.set,
		// Exemplars are kept with the first tier's points.
		TraceRetention: min(14*24*time.Hour, tiers[0].Keep),
	}
	rep, err := capacity.Build(context.Background(), st, opts)
	bar.done()
	if err != nil {
		msg := strings.TrimPrefix(err.Error(), "capacity: ")
		if errors.Is(err, capacity.ErrEmptyStore) {
			msg += " in " + dir
		}
		return fail("%s", msg)
	}
	w := stdout
	if outFile != nil {
		w = outFile
	}
	switch format {
	case "csv":
		err = capacity.WriteCSV(w, rep)
	case "json":
		err = capacity.WriteJSON(w, rep)
	case "html":
		err = capacity.WriteHTML(w, rep)
	}
	if err != nil {
		return fail("writing the report: %v", err)
	}
	if outFile != nil {
		if err := outFile.Chmod(0o644); err != nil {
			return fail("writing %s: %v", out, err)
		}
		if err := outFile.Close(); err != nil {
			return fail("writing %s: %v", out, err)
		}
		if err := os.Rename(outFile.Name(), out); err != nil {
			return fail("writing %s: %v", out, errors.Unwrap(err))
		}
		outFile = nil
	}
	if !quiet {
		for _, m := range rep.Missing {
			fmt.Fprintf(stderr, "sabaki export: not in the store: %s (%s): %s\n", m.Family, strings.Join(m.Measures, ", "), m.Reason)
		}
		if out != "" {
			fmt.Fprintf(stderr, "sabaki export: wrote %s (%s, %d groups, %s – %s)\n", out, format, len(rep.Groups), rep.From.Format(time.DateOnly), rep.To.Format(time.DateOnly))
		}
	}
	return 0
}

// readLimits reads a -limits file strictly.
func readLimits(path string) ([]capacity.Limit, config.Problems) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, config.Problems{{Msg: fmt.Sprintf("reading limits: %v", errors.Unwrap(err))}}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, config.Problems{{Msg: fmt.Sprintf("parsing limits: %v", err)}}
	}
	if len(root.Content) == 0 {
		return nil, nil
	}
	var f limitsFile
	if ps := config.Decode(root.Content[0], "", &f); len(ps) > 0 {
		return nil, ps
	}
	return f.Limits, nil
}

// progress draws a bar on stderr when it is a terminal.
type progress struct {
	w    io.Writer
	on   bool
	last string
}

func newProgress(w io.Writer, quiet bool) *progress {
	p := &progress{w: w}
	if f, ok := w.(*os.File); ok && !quiet {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.on = true
		}
	}
	return p
}

func (p *progress) set(done, total int) {
	if !p.on || total <= 0 {
		return
	}
	const width = 30
	n := done * width / total
	s := fmt.Sprintf("\rexport capacity [%s%s] %d/%d", strings.Repeat("=", n), strings.Repeat(" ", width-n), done, total)
	if s != p.last {
		io.WriteString(p.w, s)
		p.last = s
	}
}

func (p *progress) done() {
	if p.on && p.last != "" {
		io.WriteString(p.w, "\r"+strings.Repeat(" ", len(p.last))+"\r")
	}
}
