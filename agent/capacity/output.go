package capacity

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"
)

// CSVHeader is the header of the CSV output. The columns are stable:
//
//   - period: "day" or "week" (ISO weeks, Monday to Sunday, UTC);
//   - start: the period's first day, YYYY-MM-DD (UTC);
//   - group: "key=value,…" over the -group-by names, or "all";
//   - measure: a name from Measures, or llm_tokens_<gen_ai.token.type>;
//   - value: a number (integers without a decimal point, others with up
//     to 7 significant digits);
//   - unit: the stored metric's unit (UCUM, e.g. "s", "ms", "1") or
//     "req/s", "h".
//
// One row per period × group × measure, ordered by group, period (days
// first), start, then measure in catalogue order. A measure the store could
// not give has no rows; the JSON and HTML outputs (and the command's stderr)
// name it.
var CSVHeader = []string{"period", "start", "group", "measure", "value", "unit"}

// WriteCSV writes the report's days and weeks as tidy CSV.
func WriteCSV(w io.Writer, r *Report) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(CSVHeader); err != nil {
		return err
	}
	units := r.units()
	for _, g := range r.Groups {
		for _, pp := range []struct {
			name string
			ps   []*Period
		}{{"day", g.Days}, {"week", g.Weeks}} {
			for _, p := range pp.ps {
				for _, m := range p.measures() {
					if err := cw.Write([]string{pp.name, p.Start.Format(time.DateOnly), g.Label, m, FormatValue(p.Values[m]), units[m]}); err != nil {
						return err
					}
				}
			}
		}
	}
	cw.Flush()
	return cw.Error()
}

func (p *Period) measures() []string {
	ms := make([]string, 0, len(p.Values))
	for m := range p.Values {
		ms = append(ms, m)
	}
	SortMeasures(ms)
	return ms
}

// units returns each measure's unit as reported.
func (r *Report) units() map[string]string {
	u := map[string]string{}
	for _, m := range Measures {
		if m.Unit != "" {
			u[m.Name] = m.Unit
		}
	}
	for _, x := range r.Used {
		if x.Family == "requests" {
			for _, m := range []string{"latency_p50_peak_hour", "latency_p95_peak_hour", "latency_p99_peak_hour", "latency_p50", "latency_p95", "latency_p99"} {
				u[m] = x.Unit
			}
		}
		switch x.Family {
		case "instances":
			u["instances_max"], u["instances_p95"] = x.Unit, x.Unit
		case "db_connections":
			u["db_connections_max"], u["db_connections_p95"] = x.Unit, x.Unit
		case "db_cpu":
			u["db_cpu_utilization_p95"] = x.Unit
		case "cloudrun_cpu":
			u["cpu_utilization_p95"] = x.Unit
		case "cloudrun_memory":
			u["memory_utilization_p95"] = x.Unit
		}
	}
	for _, g := range r.Groups {
		for _, d := range g.Days {
			for m := range d.Values {
				if _, ok := u[m]; !ok {
					u[m] = "{token}"
				}
			}
		}
	}
	return u
}

// FormatValue formats a value as the CSV and JSON outputs do: integers
// plainly, other values to 7 significant digits.
func FormatValue(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 7, 64)
}

func round7(v float64) float64 {
	f, _ := strconv.ParseFloat(FormatValue(v), 64)
	return f
}

type jsonReport struct {
	From    string            `json:"from"`
	To      string            `json:"to"`
	Now     string            `json:"now"`
	GroupBy []string          `json:"group_by"`
	Used    []Used            `json:"used"`
	Missing []Missing         `json:"missing"`
	Units   map[string]string `json:"units"`
	Method  string            `json:"method"`
	Groups  []jsonGroup       `json:"groups"`
}

type jsonGroup struct {
	Group      string            `json:"group"`
	Attributes map[string]string `json:"attributes"`
	Days       []jsonPeriod      `json:"days"`
	Weeks      []jsonPeriod      `json:"weeks"`
	Trends     []*Trend          `json:"trends"`
	Worst      []WorstWindow     `json:"worst_windows"`
}

type jsonPeriod struct {
	Start    string             `json:"start"`
	PeakHour string             `json:"peak_hour,omitempty"`
	Values   map[string]float64 `json:"values"`
}

// WriteJSON writes the report with its trends and forecasts as one JSON
// document (indented, keys in a fixed order).
func WriteJSON(w io.Writer, r *Report) error {
	jr := jsonReport{
		From: r.From.Format(time.RFC3339), To: r.To.Format(time.RFC3339), Now: r.Now.Format(time.RFC3339),
		GroupBy: nonNilStrings(r.GroupBy), Used: r.Used, Missing: r.Missing, Units: r.units(), Method: r.Method,
		Groups: []jsonGroup{},
	}
	if jr.Used == nil {
		jr.Used = []Used{}
	}
	if jr.Missing == nil {
		jr.Missing = []Missing{}
	}
	conv := func(ps []*Period) []jsonPeriod {
		out := make([]jsonPeriod, 0, len(ps))
		for _, p := range ps {
			jp := jsonPeriod{Start: p.Start.Format(time.DateOnly), Values: map[string]float64{}}
			if !p.PeakHour.IsZero() {
				jp.PeakHour = p.PeakHour.Format(time.RFC3339)
			}
			for m, v := range p.Values {
				jp.Values[m] = round7(v)
			}
			out = append(out, jp)
		}
		return out
	}
	for _, g := range r.Groups {
		jg := jsonGroup{Group: g.Label, Attributes: g.Attrs, Days: conv(g.Days), Weeks: conv(g.Weeks), Trends: roundTrends(g.Trends), Worst: g.Worst}
		if jg.Attributes == nil {
			jg.Attributes = map[string]string{}
		}
		if jg.Trends == nil {
			jg.Trends = []*Trend{}
		}
		if jg.Worst == nil {
			jg.Worst = []WorstWindow{}
		}
		jr.Groups = append(jr.Groups, jg)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(jr); err != nil {
		return fmt.Errorf("writing JSON: %w", err)
	}
	return nil
}

func roundTrends(ts []*Trend) []*Trend {
	out := make([]*Trend, len(ts))
	for i, t := range ts {
		c := *t
		c.Slope, c.SlopeLow, c.SlopeHigh = round7(c.Slope), round7(c.SlopeLow), round7(c.SlopeHigh)
		c.Level, c.GrowthPerMonth, c.Current = round7(c.Level), round7(c.GrowthPerMonth), round7(c.Current)
		if c.Weekly != nil {
			c.Weekly = make([]float64, len(t.Weekly))
			for j, f := range t.Weekly {
				c.Weekly[j] = round7(f)
			}
		}
		c.Limits = make([]Projection, len(t.Limits))
		for j, p := range t.Limits {
			p.Headroom = round7(p.Headroom)
			c.Limits[j] = p
		}
		out[i] = &c
	}
	return out
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
