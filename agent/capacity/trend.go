package capacity

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/sabakiio/sabaki/internal/config"
)

// Limit is one capacity limit the trend is checked against, e.g.
//
//	limits:
//	  - {name: Cloud Run max instances, measure: instances_max, value: 100}
//	  - {name: Cloud SQL max_connections, measure: db_connections_max, value: 400}
//	  - {name: p95 SLO, measure: latency_p95_peak_hour, value: 0.8, group: service=web}
//
// Every limit is an upper bound on a daily measure (see Measures).
type Limit struct {
	Name    string  `yaml:"name" json:"name"`
	Measure string  `yaml:"measure" json:"measure"`
	Value   float64 `yaml:"value" json:"value"`
	// Group restricts the limit to one group label ("service=web"); empty
	// applies it to every group that has the measure.
	Group string `yaml:"group" json:"group,omitempty"`
}

// Validate checks one limit.
func (l *Limit) Validate() error {
	var errs []error
	if l.Name == "" {
		errs = append(errs, config.Field("name", "is required"))
	}
	if _, ok := measureOrder[l.Measure]; !ok {
		var names []string
		for _, m := range Measures {
			names = append(names, m.Name)
		}
		errs = append(errs, config.Field("measure", "unknown measure %q (want one of %s)", l.Measure, strings.Join(names, ", ")))
	}
	if !(l.Value > 0) || math.IsInf(l.Value, 0) {
		errs = append(errs, config.Field("value", "must be a positive number, got %v", l.Value))
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.Join(errs...)
}

// Trend is the fit of one daily measure of a group.
type Trend struct {
	Measure string `json:"measure"`
	Unit    string `json:"unit"`
	// Days is how many days had a value.
	Days int `json:"days"`
	// Slope is the Theil–Sen slope of the deseasonalised daily values, per
	// day; SlopeLow and SlopeHigh bound its 95 % confidence interval.
	Slope     float64 `json:"slope_per_day"`
	SlopeLow  float64 `json:"slope_per_day_low"`
	SlopeHigh float64 `json:"slope_per_day_high"`
	// Level is the trend's (deseasonalised) value at the report's Now.
	Level float64 `json:"level_now"`
	// GrowthPerMonth is Slope × 30 / Level (0.05 = +5 % a month).
	GrowthPerMonth float64 `json:"growth_per_month"`
	// Weekly are the weekday factors, Monday first (mean 1); nil with
	// fewer than 14 days. Seasonal says whether they differ by more than
	// 10 % between the busiest and the quietest weekday.
	Weekly   []float64 `json:"weekly_factors,omitempty"`
	Seasonal bool      `json:"weekly_cycle"`
	// Current is the highest value of the last 7 days.
	Current float64 `json:"current_7d_max"`
	// Limits are the projections against the limits on this measure.
	Limits []Projection `json:"limits,omitempty"`
	// line: a, b of the fit over day index since the first day (for charts).
	a, b  float64
	first time.Time
	peakF float64
}

// At returns the projected peak (trend × busiest weekday factor) on day t.
func (t *Trend) At(day time.Time) float64 {
	x := day.Sub(t.first).Hours() / 24
	return (t.a + t.b*x) * t.peakF
}

// Projection is a trend checked against a limit.
type Projection struct {
	Name  string  `json:"name"`
	Limit float64 `json:"limit"`
	// Headroom is 1 - Current/Limit: the share of the limit still free
	// today (negative when the last 7 days already went over).
	Headroom float64 `json:"headroom"`
	// Crossing is the projected day the busiest weekday's peak reaches the
	// limit, with the earliest and latest days of its 95 % interval (from
	// the slope's interval). Nil when not projected within the horizon.
	Crossing *time.Time `json:"crossing,omitempty"`
	Earliest *time.Time `json:"crossing_earliest,omitempty"`
	Latest   *time.Time `json:"crossing_latest,omitempty"`
	// Note says in words what the numbers mean ("already over", "not
	// within 2 years: the trend is flat", …).
	Note string `json:"note"`
}

// horizon bounds projections: beyond two years a straight line says little.
const horizon = 2 * 365

const method = `Trend: for each group and daily measure, weekday factors are the median ratio of each weekday's value to a first Theil–Sen line (with at least 14 days; normalised to mean 1), the values are divided by their weekday's factor, and a Theil–Sen line (median of all pairwise slopes, intercept the median residual) is fitted to them; a single spike moves neither. The slope's 95 % interval is Sen's rank interval (Kendall's S variance, ties ignored). A limit is projected on the busiest weekday: the crossing day is when (trend × largest weekday factor) reaches the limit, with the earliest and latest days from the slope's interval lines; projections beyond two years are not given. Headroom today is 1 − (highest value of the last 7 days)/limit. The interval covers the uncertainty of the slope only, not a change of regime (a launch, a marketing campaign, a new customer): treat the dates as the date the current trend would reach the limit. Peak request rate is the busiest hour's mean rate (the store keeps hourly rollups for months; 1-minute peaks, where minutes are still kept, run higher: compare peak_rate_1m with peak_rate_1h on recent days to size the gap).`

// trendMeasures are fitted for every group that has them.
var trendMeasures = []string{"peak_rate_1h", "latency_p95_peak_hour", "instances_max", "db_connections_max"}

func trends(g *Group, limits []Limit, now time.Time, units map[string]string) []*Trend {
	want := slices.Clone(trendMeasures)
	for _, l := range limits {
		if !slices.Contains(want, l.Measure) {
			want = append(want, l.Measure)
		}
	}
	var out []*Trend
	for _, m := range want {
		var xs, ys []float64
		var days []time.Time
		for _, d := range g.Days {
			if v, ok := d.Values[m]; ok {
				days = append(days, d.Start)
				ys = append(ys, v)
			}
		}
		if len(ys) < 3 {
			continue
		}
		first := days[0]
		for _, d := range days {
			xs = append(xs, d.Sub(first).Hours()/24)
		}
		t := fit(xs, ys, days)
		t.Measure, t.Unit, t.first = m, units[m], first
		xNow := now.UTC().Truncate(24*time.Hour).Sub(first).Hours() / 24
		t.Level = t.a + t.b*xNow
		if t.Level > 0 {
			t.GrowthPerMonth = t.Slope * 30 / t.Level
		}
		cut := now.Add(-7 * 24 * time.Hour)
		t.Current = math.Inf(-1)
		for i, d := range days {
			if !d.Before(cut) {
				t.Current = max(t.Current, ys[i])
			}
		}
		if math.IsInf(t.Current, -1) {
			t.Current = ys[len(ys)-1]
		}
		for _, l := range limits {
			if l.Measure != m || (l.Group != "" && l.Group != g.Label) {
				continue
			}
			t.Limits = append(t.Limits, project(t, l, xs, ys, now))
		}
		out = append(out, t)
	}
	return out
}

// fit computes the deseasonalised Theil–Sen trend.
func fit(xs, ys []float64, days []time.Time) *Trend {
	t := &Trend{Days: len(ys), peakF: 1}
	a0, b0 := theilSen(xs, ys)
	zs := ys
	if xs[len(xs)-1]-xs[0] >= 13 {
		var by [7][]float64
		for i, d := range days {
			base := a0 + b0*xs[i]
			if base > 0 {
				wd := (int(d.Weekday()) + 6) % 7
				by[wd] = append(by[wd], ys[i]/base)
			}
		}
		f := make([]float64, 7)
		sum, n := 0.0, 0
		for w := range by {
			if len(by[w]) == 0 {
				f[w] = math.NaN()
				continue
			}
			f[w] = median(by[w])
			sum += f[w]
			n++
		}
		if n == 7 && sum > 0 {
			for w := range f {
				f[w] /= sum / 7
			}
			t.Weekly = f
			t.Seasonal = slices.Max(f)-slices.Min(f) > 0.1
			t.peakF = slices.Max(f)
			zs = make([]float64, len(ys))
			for i, d := range days {
				zs[i] = ys[i] / f[(int(d.Weekday())+6)%7]
			}
		}
	}
	slopes := pairSlopes(xs, zs)
	t.a, t.b = lineFor(xs, zs, slopes)
	t.Slope = t.b
	t.SlopeLow, t.SlopeHigh = senIntervalOf(len(xs), slopes)
	return t
}

func project(t *Trend, l Limit, xs, ys []float64, now time.Time) Projection {
	p := Projection{Name: l.Name, Limit: l.Value, Headroom: 1 - t.Current/l.Value}
	if t.Current >= l.Value {
		p.Note = fmt.Sprintf("already reached: the last 7 days peaked at %s", fmtNum(t.Current))
		return p
	}
	xNow := now.UTC().Truncate(24*time.Hour).Sub(t.first).Hours() / 24
	cross := func(a, b float64) (float64, bool) {
		if b <= 0 {
			return 0, false
		}
		x := (l.Value/t.peakF - a) / b
		if x < xNow {
			x = xNow
		}
		return x, x-xNow <= horizon
	}
	day := func(x float64) *time.Time {
		d := t.first.Add(time.Duration(math.Ceil(x)) * 24 * time.Hour)
		return &d
	}
	x, ok := cross(t.a, t.b)
	if !ok {
		if t.b <= 0 {
			p.Note = "not projected to reach the limit: the trend is flat or falling"
		} else {
			p.Note = "not projected to reach the limit within two years"
		}
		if xe, ok := cross(intercept(xs, ys, t.SlopeHigh, t.peakF, t), t.SlopeHigh); ok {
			p.Earliest = day(xe)
			p.Note += fmt.Sprintf("; at the fastest growth in the 95 %% interval it would on %s", p.Earliest.Format(time.DateOnly))
		}
		return p
	}
	p.Crossing = day(x)
	if xe, ok := cross(intercept(xs, ys, t.SlopeHigh, t.peakF, t), t.SlopeHigh); ok {
		p.Earliest = day(min(xe, x))
	}
	if xl, ok := cross(intercept(xs, ys, t.SlopeLow, t.peakF, t), t.SlopeLow); ok {
		p.Latest = day(max(xl, x))
	}
	p.Note = fmt.Sprintf("projected in %d days", int(math.Ceil(x-xNow)))
	if p.Latest == nil {
		p.Note += "; the slowest growth in the 95 % interval does not reach it within two years"
	}
	return p
}

// intercept is the Theil–Sen intercept of the deseasonalised values for a
// given slope.
func intercept(xs, ys []float64, b, _ float64, t *Trend) float64 {
	res := make([]float64, len(ys))
	for i := range ys {
		z := ys[i]
		if t.Weekly != nil {
			z = ys[i] / t.Weekly[(int(t.first.AddDate(0, 0, int(xs[i])).Weekday())+6)%7]
		}
		res[i] = z - b*xs[i]
	}
	return median(res)
}

// theilSen returns the intercept and slope of the Theil–Sen line.
func theilSen(xs, ys []float64) (a, b float64) {
	return lineFor(xs, ys, pairSlopes(xs, ys))
}

// lineFor is the Theil–Sen line from the pairwise slopes (reordered).
func lineFor(xs, ys, slopes []float64) (a, b float64) {
	if len(slopes) == 0 {
		return median(ys), 0
	}
	b = quantileSelect(slopes, 0.5)
	res := make([]float64, len(ys))
	for i := range ys {
		res[i] = ys[i] - b*xs[i]
	}
	return median(res), b
}

func pairSlopes(xs, ys []float64) []float64 {
	n := len(xs)
	s := make([]float64, 0, n*(n-1)/2)
	for i := 0; i < n; i++ {
		for j := i + 1; j < n; j++ {
			if dx := xs[j] - xs[i]; dx != 0 {
				s = append(s, (ys[j]-ys[i])/dx)
			}
		}
	}
	return s
}

// senInterval is the 95 % confidence interval of the Theil–Sen slope (Sen
// 1968): the slopes at ranks (N ∓ C)/2 with C = 1.96·√(n(n−1)(2n+5)/18).
func senInterval(xs, ys []float64) (lo, hi float64) {
	s := pairSlopes(xs, ys)
	slices.Sort(s)
	return senIntervalSorted(len(xs), s)
}

func senIntervalSorted(points int, s []float64) (lo, hi float64) {
	l, u, ok := senRanks(points, len(s))
	if !ok {
		return 0, 0
	}
	return s[l], s[u]
}

// senIntervalOf is senIntervalSorted of unsorted slopes (reordered): a
// year of days has 66,000 pairwise slopes, and selecting two ranks is much
// cheaper than sorting them.
func senIntervalOf(points int, s []float64) (lo, hi float64) {
	l, u, ok := senRanks(points, len(s))
	if !ok {
		return 0, 0
	}
	return kth(s, l), kth(s, u)
}

func senRanks(points, slopes int) (l, u int, ok bool) {
	if slopes == 0 {
		return 0, 0, false
	}
	n := float64(points)
	c := 1.96 * math.Sqrt(n*(n-1)*(2*n+5)/18)
	N := float64(slopes)
	l = int(math.Floor((N - c) / 2))
	u = int(math.Ceil((N+c)/2)) - 1
	l = min(max(l, 0), slopes-1)
	u = min(max(u, 0), slopes-1)
	return l, u, true
}

// quantileSelect is quantileSorted of unsorted values (reordered).
func quantileSelect(s []float64, q float64) float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	pos := q * float64(len(s)-1)
	i := int(pos)
	if i >= len(s)-1 {
		return kth(s, len(s)-1)
	}
	frac := pos - float64(i)
	a := kth(s, i)
	b := kth(s, i+1)
	return a + frac*(b-a)
}

// kth returns the k-th smallest value of s (from 0), as s would hold at k
// once sorted; it reorders s (quickselect, Hoare partition, median of
// three). The values must not be NaN.
func kth(s []float64, k int) float64 {
	lo, hi := 0, len(s)-1
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if s[mid] < s[lo] {
			s[mid], s[lo] = s[lo], s[mid]
		}
		if s[hi] < s[lo] {
			s[hi], s[lo] = s[lo], s[hi]
		}
		if s[hi] < s[mid] {
			s[hi], s[mid] = s[mid], s[hi]
		}
		p := s[mid]
		i, j := lo, hi
		for i <= j {
			for s[i] < p {
				i++
			}
			for s[j] > p {
				j--
			}
			if i <= j {
				s[i], s[j] = s[j], s[i]
				i++
				j--
			}
		}
		switch {
		case k <= j:
			hi = j
		case k >= i:
			lo = i
		default:
			return s[k]
		}
	}
	return s[k]
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return quantileSorted(s, 0.5)
}

func fmtNum(v float64) string {
	if r := math.Round(v); r != 0 && math.Abs(v-r) < 1e-9*math.Abs(v) {
		v = r
	}
	switch {
	case v == math.Trunc(v) && math.Abs(v) < 1e15:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.1f", v)
	case math.Abs(v) >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3g", v)
}
