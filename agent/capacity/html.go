package capacity

import (
	"fmt"
	"html/template"
	"io"
	"math"
	"strings"
	"time"
)

// The charts are hand-written SVG rather than gonum.org/v1/plot: four line
// charts with a trend and a limit line need a few dozen lines of SVG, while
// plot would add gonum, x/image, fonts and a PDF writer to the agent's
// binary (DESIGN.md §7 caps it at 30 MB) for text rendered the browser can
// do itself.

// chartMeasures are drawn for each group that has them.
var chartMeasures = []struct{ measure, title string }{
	{"peak_rate_1h", "Peak request rate (busiest hour, req/s)"},
	{"latency_p95_peak_hour", "p95 latency at the peak hour"},
	{"instances_max", "Cloud Run instances (max)"},
	{"db_connections_max", "Cloud SQL connections (max)"},
}

type htmlGroup struct {
	Label   string
	Summary []htmlCell
	Charts  []template.HTML
	Worst   []WorstWindow
	Weeks   []htmlWeek
	WeekCol []string
}

type htmlCell struct{ Value, Title string }

type htmlWeek struct {
	Start  string
	Values []string
}

type htmlLimit struct {
	Group, Name, Measure, Limit, Current, Headroom, Crossing, Note string
	Over                                                           bool
}

type htmlData struct {
	From, To, Now, GroupBy string
	Used                   []Used
	Missing                []Missing
	SummaryCols            []string
	Groups                 []htmlGroup
	Limits                 []htmlLimit
	Method                 string
}

var summaryCols = []struct{ measure, title string }{
	{"peak_rate_1h", "peak rate 1 h (req/s)"},
	{"peak_rate_1m", "peak rate 1 min (req/s)"},
	{"latency_p95_peak_hour", "p95 at peak"},
	{"error_ratio", "error ratio"},
	{"instances_max", "instances max"},
	{"cpu_utilization_p95", "CPU p95"},
	{"db_connections_max", "DB conns max"},
	{"db_cpu_utilization_p95", "DB CPU p95"},
	{"llm_tokens", "LLM tokens / day"},
}

// WriteHTML writes the report as one self-contained HTML page: the summary
// table (last 7 days per group), the limits with their projected dates,
// then per group SVG charts of the daily measures with the trend and the
// limit lines, links to example traces of the slowest windows, and the
// weekly table.
func WriteHTML(w io.Writer, r *Report) error {
	units := r.units()
	d := htmlData{
		From: r.From.Format(time.DateOnly), To: r.To.Format(time.RFC3339), Now: r.Now.Format(time.RFC3339),
		GroupBy: strings.Join(r.GroupBy, ", "), Used: r.Used, Missing: r.Missing, Method: r.Method,
	}
	if d.GroupBy == "" {
		d.GroupBy = "(none)"
	}
	for _, c := range summaryCols {
		d.SummaryCols = append(d.SummaryCols, c.title)
	}
	d.SummaryCols = append(d.SummaryCols, "growth / month")
	cut := r.Now.Add(-7 * 24 * time.Hour)
	for _, g := range r.Groups {
		hg := htmlGroup{Label: g.Label, Worst: g.Worst}
		for _, c := range summaryCols {
			v, ok := math.Inf(-1), false
			for _, p := range g.Days {
				if p.Start.Before(cut) {
					continue
				}
				if c.measure == "llm_tokens" {
					sum, has := 0.0, false
					for m, x := range p.Values {
						if strings.HasPrefix(m, "llm_tokens_") {
							sum, has = sum+x, true
						}
					}
					if has {
						v, ok = max(v, sum), true
					}
				} else if x, has := p.Values[c.measure]; has {
					v, ok = max(v, x), true
				}
			}
			cell := htmlCell{Value: "–", Title: "not in the store for this group"}
			if ok {
				cell = htmlCell{Value: withUnit(v, units[c.measure]), Title: "highest of the last 7 days"}
			}
			hg.Summary = append(hg.Summary, cell)
		}
		growth := htmlCell{Value: "–", Title: "fewer than 3 days"}
		for _, t := range g.Trends {
			if t.Measure == "peak_rate_1h" {
				growth = htmlCell{Value: fmt.Sprintf("%+.1f %%", t.GrowthPerMonth*100),
					Title: fmt.Sprintf("Theil–Sen slope %s req/s per day (95 %%: %s – %s)", fmtNum(t.Slope), fmtNum(t.SlopeLow), fmtNum(t.SlopeHigh))}
			}
			for _, p := range t.Limits {
				hl := htmlLimit{Group: g.Label, Name: p.Name, Measure: t.Measure, Limit: withUnit(p.Limit, t.Unit),
					Current: withUnit(t.Current, t.Unit), Headroom: fmt.Sprintf("%.0f %%", p.Headroom*100), Note: p.Note, Over: p.Headroom <= 0}
				switch {
				case p.Crossing != nil:
					hl.Crossing = p.Crossing.Format(time.DateOnly)
					if p.Earliest != nil && p.Latest != nil {
						hl.Crossing += fmt.Sprintf(" (%s – %s)", p.Earliest.Format(time.DateOnly), p.Latest.Format(time.DateOnly))
					}
				case p.Headroom <= 0:
					hl.Crossing = "reached"
				default:
					hl.Crossing = "–"
				}
				d.Limits = append(d.Limits, hl)
			}
		}
		hg.Summary = append(hg.Summary, growth)
		for _, c := range chartMeasures {
			if svg := chart(r, g, c.measure, c.title, units[c.measure]); svg != "" {
				hg.Charts = append(hg.Charts, svg)
			}
		}
		var cols []string
		weekCols := []string{"requests", "peak_rate_1h", "peak_rate_1m", "latency_p95_peak_hour", "latency_p99", "error_ratio", "instances_max", "db_connections_max"}
		if len(g.Weeks) > 0 {
			for _, m := range g.Weeks[len(g.Weeks)-1].measures() {
				if strings.HasPrefix(m, "llm_tokens_") {
					weekCols = append(weekCols, m)
				}
			}
		}
		for _, m := range weekCols {
			for _, wk := range g.Weeks {
				if _, ok := wk.Values[m]; ok {
					cols = append(cols, m)
					break
				}
			}
		}
		hg.WeekCol = cols
		for _, wk := range g.Weeks {
			row := htmlWeek{Start: wk.Start.Format(time.DateOnly)}
			for _, m := range cols {
				if v, ok := wk.Values[m]; ok {
					row.Values = append(row.Values, withUnit(v, units[m]))
				} else {
					row.Values = append(row.Values, "–")
				}
			}
			hg.Weeks = append(hg.Weeks, row)
		}
		d.Groups = append(d.Groups, hg)
	}
	if err := page.Execute(w, d); err != nil {
		return fmt.Errorf("writing HTML: %w", err)
	}
	return nil
}

// withUnit formats a value for people: seconds as ms, ratios as percent.
func withUnit(v float64, unit string) string {
	switch unit {
	case "s":
		if v < 1 {
			return fmtNum(v*1000) + " ms"
		}
		return fmtNum(v) + " s"
	case "ms":
		return fmtNum(v) + " ms"
	case "10^2.%":
		return fmt.Sprintf("%.0f %%", v*100)
	case "1", "req/s", "{token}", "h", "":
		switch {
		case unit == "1" && v < 1 && v > 0:
			return fmt.Sprintf("%.2f %%", v*100)
		case math.Abs(v) >= 1e9:
			return fmt.Sprintf("%.3g G", v/1e9)
		case math.Abs(v) >= 1e6:
			return fmt.Sprintf("%.3g M", v/1e6)
		case math.Abs(v) >= 1e5:
			return fmt.Sprintf("%.0f k", v/1e3)
		}
		return fmtNum(v)
	}
	return fmtNum(v) + " " + unit
}

const (
	chartW, chartH                   = 960, 250
	padL, padR, padT, padB           = 64, 170, 28, 30
	colData, colMinute, colTrend     = "#2563eb", "#f59e0b", "#059669"
	colLimit, colToday, colGridLines = "#dc2626", "#6b7280", "#e5e7eb"
)

// chart draws one measure of a group: the daily values, the 1-minute peaks
// (for peak_rate_1h), the trend on the busiest weekday extended a quarter of
// the range past the end, and the limits on the measure.
func chart(r *Report, g *Group, measure, title, unit string) template.HTML {
	type pt struct {
		t time.Time
		v float64
	}
	var data, minute []pt
	for _, d := range g.Days {
		if v, ok := d.Values[measure]; ok {
			data = append(data, pt{d.Start, v})
		}
		if measure == "peak_rate_1h" {
			if v, ok := d.Values["peak_rate_1m"]; ok {
				minute = append(minute, pt{d.Start, v})
			}
		}
	}
	if len(data) == 0 {
		return ""
	}
	var tr *Trend
	for _, t := range g.Trends {
		if t.Measure == measure {
			tr = t
		}
	}
	x0 := r.From
	x1 := r.To.Add(r.To.Sub(r.From) / 4)
	ymax := 0.0
	for _, p := range data {
		ymax = max(ymax, p.v)
	}
	for _, p := range minute {
		ymax = max(ymax, p.v)
	}
	var limits []Projection
	if tr != nil {
		ymax = max(ymax, tr.At(x1))
		limits = tr.Limits
		for _, l := range limits {
			ymax = max(ymax, l.Limit)
		}
	}
	if ymax <= 0 {
		ymax = 1
	}
	step := niceStep(ymax / 4)
	ymax = math.Ceil(ymax*1.05/step) * step
	plotW, plotH := float64(chartW-padL-padR), float64(chartH-padT-padB)
	X := func(t time.Time) float64 {
		return padL + plotW*t.Sub(x0).Seconds()/x1.Sub(x0).Seconds()
	}
	Y := func(v float64) float64 { return padT + plotH*(1-v/ymax) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="%s">`, chartW, chartH, chartW, chartH, template.HTMLEscapeString(title))
	fmt.Fprintf(&b, `<text x="%d" y="16" class="title">%s</text>`, padL, template.HTMLEscapeString(title))
	// Horizontal grid and y labels.
	for v := 0.0; v <= ymax+step/2; v += step {
		y := Y(v)
		fmt.Fprintf(&b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="%s"/>`, padL, padL+plotW, y, y, colGridLines)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" class="ylab">%s</text>`, padL-6, y+4, template.HTMLEscapeString(withUnit(v, unit)))
	}
	// Date ticks: month starts over long ranges, Mondays otherwise.
	span := x1.Sub(x0)
	for t := x0; t.Before(x1); t = t.AddDate(0, 0, 1) {
		tick := false
		label := ""
		if span > 70*24*time.Hour {
			tick, label = t.Day() == 1, t.Format("Jan 2006")
		} else {
			tick, label = t.Weekday() == time.Monday, t.Format("Jan 2")
		}
		if !tick {
			continue
		}
		x := X(t)
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="%s"/>`, x, x, padT, padT+plotH, colGridLines)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="xlab">%s</text>`, x, chartH-10, label)
	}
	// Today.
	if nx := X(r.Now); nx >= padL && nx <= padL+plotW {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="%s" stroke-dasharray="2 3"/>`, nx, nx, padT, padT+plotH, colToday)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="note">today</text>`, nx+3, padT+10)
	}
	// Data.
	var pts []string
	for _, p := range data {
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", X(p.t.Add(12*time.Hour)), Y(p.v)))
	}
	fmt.Fprintf(&b, `<polyline class="data" fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`, colData, strings.Join(pts, " "))
	for _, p := range minute {
		fmt.Fprintf(&b, `<circle class="minute" cx="%.1f" cy="%.1f" r="2.5" fill="%s"/>`, X(p.t.Add(12*time.Hour)), Y(p.v), colMinute)
	}
	legendY := padT + 4
	legend := func(color, dash, text string) {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="%s" stroke-width="2" stroke-dasharray="%s"/>`, padL+plotW+10, padL+plotW+28, legendY, legendY, color, dash)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="legend">%s</text>`, padL+plotW+32, legendY+4, template.HTMLEscapeString(text))
		legendY += 16
	}
	legend(colData, "", "daily value")
	if len(minute) > 0 {
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%d" r="3" fill="%s"/>`, padL+plotW+19, legendY, colMinute)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" class="legend">1-minute peak</text>`, padL+plotW+32, legendY+4)
		legendY += 16
	}
	if tr != nil {
		fmt.Fprintf(&b, `<line class="trend" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5" stroke-dasharray="6 4"/>`,
			X(tr.first), Y(tr.At(tr.first)), X(x1), Y(tr.At(x1)), colTrend)
		legend(colTrend, "6 4", "trend (busiest weekday)")
	}
	for _, l := range limits {
		y := Y(l.Limit)
		fmt.Fprintf(&b, `<line class="limit" x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5"/>`, padL, padL+plotW, y, y, colLimit)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="limitlab">%s</text>`, padL+plotW-4, y-4, template.HTMLEscapeString(l.Name+" "+withUnit(l.Limit, unit)))
		if l.Crossing != nil && !l.Crossing.After(x1) {
			cx := X(*l.Crossing)
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="4" fill="none" stroke="%s" stroke-width="2"/>`, cx, y, colLimit)
		}
	}
	if len(limits) > 0 {
		legend(colLimit, "", "limit")
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// niceStep rounds a raw tick step up to 1, 2 or 5 × 10^n.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

var page = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>sabaki capacity report {{.From}} – {{.To}}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1180px; color: #111827; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #e5e7eb; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: #4b5563; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #e5e7eb; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f9fafb; font-weight: 600; } td:first-child, th:first-child, .t { text-align: left; }
td.over { color: #b91c1c; font-weight: 600; }
.missing { background: #fffbeb; border: 1px solid #fcd34d; padding: 8px 12px; border-radius: 4px; }
.chart text { font: 11px system-ui, sans-serif; fill: #374151; }
.chart .title { font-size: 13px; font-weight: 600; fill: #111827; }
.chart .ylab { text-anchor: end; } .chart .xlab { text-anchor: middle; }
.chart .limitlab { text-anchor: end; fill: #b91c1c; } .chart .note { fill: #6b7280; }
.method { color: #374151; font-size: 13px; max-width: 900px; }
code { font-size: 12px; }
</style>
</head>
<body>
<h1>Capacity report</h1>
<p class="meta">{{.From}} to {{.To}} · generated as of {{.Now}} · grouped by {{.GroupBy}}</p>

<h2>Summary (highest value of the last 7 days)</h2>
<table class="summary">
<tr><th>group</th>{{range .SummaryCols}}<th>{{.}}</th>{{end}}</tr>
{{range .Groups}}<tr><td>{{.Label}}</td>{{range .Summary}}<td title="{{.Title}}">{{.Value}}</td>{{end}}</tr>
{{end}}</table>

{{if .Limits}}<h2>Limits</h2>
<table class="limits">
<tr><th>group</th><th class="t">limit</th><th class="t">measure</th><th>value</th><th>last 7 days</th><th>headroom today</th><th>projected crossing (95 % range)</th><th class="t">note</th></tr>
{{range .Limits}}<tr><td>{{.Group}}</td><td class="t">{{.Name}}</td><td class="t"><code>{{.Measure}}</code></td><td>{{.Limit}}</td><td>{{.Current}}</td><td{{if .Over}} class="over"{{end}}>{{.Headroom}}</td><td>{{.Crossing}}</td><td class="t">{{.Note}}</td></tr>
{{end}}</table>
{{end}}

{{if .Missing}}<div class="missing"><strong>Not in the store:</strong>
<ul>{{range .Missing}}<li>{{.Family}} ({{range $i, $m := .Measures}}{{if $i}}, {{end}}{{$m}}{{end}}): {{.Reason}}</li>{{end}}</ul></div>{{end}}

{{range .Groups}}
<h2>{{.Label}}</h2>
{{range .Charts}}{{.}}
{{end}}
{{if .Worst}}<h3>Slowest windows with a trace (within the 14-day trace retention)</h3>
<table class="worst"><tr><th>window</th><th>latency</th><th class="t">trace</th></tr>
{{range .Worst}}<tr><td>{{.Time.Format "2006-01-02 15:04 UTC"}}</td><td>{{printf "%.3f" .Value}} {{.Unit}}</td><td class="t">{{if .URL}}<a href="{{.URL}}">{{.TraceID}}</a>{{else}}<code>{{.TraceID}}</code>{{end}}</td></tr>
{{end}}</table>{{end}}
{{if .Weeks}}<details><summary>Weekly figures</summary>
<table class="weeks"><tr><th>week of</th>{{range .WeekCol}}<th>{{.}}</th>{{end}}</tr>
{{range .Weeks}}<tr><td>{{.Start}}</td>{{range .Values}}<td>{{.}}</td>{{end}}</tr>
{{end}}</table></details>{{end}}
{{end}}

<h2>Sources and method</h2>
<table class="used"><tr><th>family</th><th class="t">metric</th><th class="t">kind</th><th class="t">unit</th></tr>
{{range .Used}}<tr><td>{{.Family}}</td><td class="t"><code>{{.Metric}}</code></td><td class="t">{{.Kind}}</td><td class="t">{{.Unit}}</td></tr>
{{end}}</table>
<p class="method">{{.Method}}</p>
</body>
</html>
`))
