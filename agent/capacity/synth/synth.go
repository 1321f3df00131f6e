// Package synth writes a synthetic store for the capacity report's tests and
// benchmarks: months of Cloud Run, Cloud SQL, application and LLM metrics
// with a known linear growth, a weekly and a daily cycle and a few spikes,
// through store.Write with fixed timestamps (so the result is the same on
// every run and machine).
//
// Older days are written as 1-hour windows straight into the store's 1-hour
// tier (as a backfill would), the last MinuteDays days as 1-minute windows
// with exemplars; Maintain then rolls the minutes up, so the store looks like
// one a daemon kept for months.
package synth

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// Service is one synthetic service: its request rate on day d (counted from
// Start) at the busiest hour of an average weekday is Base + Growth·d req/s.
type Service struct {
	Name   string
	Base   float64
	Growth float64 // req/s per day
	Routes []string
}

// Options describe the data.
type Options struct {
	Start      time.Time // midnight UTC
	Days       int
	MinuteDays int // the last days written as 1-minute windows
	Services   []Service
	// SpikeDays are days (from Start) with one hour at 03:00 UTC at five
	// times the busiest hour's rate.
	SpikeDays []int
	// Extra adds series without Cloud Run/SQL/LLM metrics: only the app
	// histogram for each route (for the benchmark's series count).
	AppOnly bool
	// LatencyPoints, if set, spreads each window's requests over this many
	// latencies (a log-normal shape) instead of the 20 of latencyShape: a
	// dense histogram (~LatencyPoints buckets), as a busy route has.
	LatencyPoints int
}

// Default is the data the golden tests use: 91 days from Monday 2026-06-01,
// two services, the last 2 days in minutes, spikes on days 20, 45 and 70.
func Default() Options {
	return Options{
		Start:      time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC),
		Days:       91,
		MinuteDays: 2,
		Services: []Service{
			{Name: "web", Base: 20, Growth: 0.2, Routes: []string{"/", "/items/{id}"}},
			{Name: "api", Base: 5, Growth: 0.05, Routes: []string{"/v1/search"}},
		},
		SpikeDays: []int{20, 45, 70},
	}
}

// Tiers are the retention tiers the synthetic store is opened with: minutes
// for MinuteDays, hours for 400 days, days for 5 years.
func Tiers(o Options) []store.Tier {
	return []store.Tier{
		{Resolution: time.Minute, Keep: time.Duration(max(o.MinuteDays, 1)) * 24 * time.Hour},
		{Resolution: time.Hour, Keep: 400 * 24 * time.Hour},
		{Resolution: 24 * time.Hour, Keep: 5 * 365 * 24 * time.Hour},
	}
}

// End is the instant after the data: Start + Days.
func (o Options) End() time.Time { return o.Start.AddDate(0, 0, o.Days) }

// Weekday is the weekly factor (mean 1 over a week): weekdays 1.12,
// weekends 0.7.
func Weekday(t time.Time) float64 {
	if wd := t.Weekday(); wd == time.Saturday || wd == time.Sunday {
		return 0.7
	}
	return 1.12
}

// Hourly is the daily shape, 1 at 14:00 UTC, 0.3 at night.
func Hourly(hour float64) float64 {
	return 0.3 + 0.7*math.Max(0, math.Sin(math.Pi*(hour-6)/16))
}

// Rate is a service's request rate at t (req/s), spikes included.
func (o Options) Rate(s Service, t time.Time) float64 {
	d := t.Sub(o.Start).Hours() / 24
	day := math.Floor(d)
	r := (s.Base + s.Growth*day) * Weekday(t) * Hourly(float64(t.Hour())+float64(t.Minute())/60)
	for _, sd := range o.SpikeDays {
		if int(day) == sd && t.Hour() == 3 {
			r = 5 * (s.Base + s.Growth*day) * Weekday(t)
		}
	}
	return r
}

// Generate writes the data into a new store in dir and leaves it rolled up
// as of End. It returns the store closed.
func Generate(ctx context.Context, dir string, o Options) error {
	end := o.End()
	st, err := store.Open(dir, store.Options{Tiers: Tiers(o), Now: func() time.Time { return end }})
	if err != nil {
		return err
	}
	defer st.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	minuteFrom := end.AddDate(0, 0, -o.MinuteDays)
	for t := o.Start; t.Before(minuteFrom); t = t.Add(time.Hour) {
		if err := st.Write(ctx, window(o, t, time.Hour, rng)); err != nil {
			return fmt.Errorf("synth: %w", err)
		}
	}
	for t := minuteFrom; t.Before(end); t = t.Add(time.Minute) {
		if err := st.Write(ctx, window(o, t, time.Minute, rng)); err != nil {
			return fmt.Errorf("synth: %w", err)
		}
	}
	if err := st.Maintain(ctx, end); err != nil {
		return fmt.Errorf("synth: maintain: %w", err)
	}
	return st.Close()
}

// latencyQuantiles spreads a window's requests over fixed points of a
// log-normal-ish latency distribution (seconds), scaled with load.
var latencyShape = []float64{0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1, 1.05, 1.1, 1.2, 1.3, 1.45, 1.6, 1.8, 2.1, 2.5, 3, 3.8, 5, 8}

// denseShape is n latency factors at evenly spaced quantiles of a
// log-normal distribution (σ 0.8), median 1.
func denseShape(n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		q := (float64(i) + 0.5) / float64(n)
		out[i] = math.Exp(0.8 * math.Sqrt2 * math.Erfinv(2*q-1))
	}
	return out
}

func window(o Options, t time.Time, dur time.Duration, rng *rand.Rand) *metric.Window {
	w := &metric.Window{Start: t, Duration: dur}
	secs := dur.Seconds()
	samples := uint64(dur / time.Minute)
	mid := t.Add(dur / 2)
	var total float64
	for si, s := range o.Services {
		// ±5 % noise on every window, so the trend's interval is not empty.
		rate := o.Rate(s, mid) * (1 + 0.1*(rng.Float64()-0.5))
		total += rate
		res := metric.NewAttrs(map[string]string{"service.name": s.Name})
		for ri, route := range s.Routes {
			share := 1.0 / float64(len(s.Routes))
			n := uint64(math.Round(rate * share * secs))
			h := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
			base := 0.04 * (1 + rate/50) * (1 + float64(ri)*0.5)
			shape := latencyShape
			if o.LatencyPoints > 0 {
				shape = denseShape(o.LatencyPoints)
			}
			per := n / uint64(len(shape))
			rest := n - per*uint64(len(shape))
			for i, f := range shape {
				c := per
				if uint64(i) < rest {
					c++
				}
				h.RecordN(base*f, c)
			}
			a := metric.Aggregate{Name: "http.server.request.duration", Unit: "s", Kind: metric.Histogram, Resource: res,
				Attrs: metric.NewAttrs(map[string]string{"http.route": route, "http.request.method": "GET"}),
				Hist:  h, Count: h.Count(), Sum: h.Sum(), Min: h.Min(), Max: h.Max(),
				ErrorCount: uint64(math.Round(float64(n) * 0.002)), ErrorTracked: true}
			if dur == time.Minute && n > 0 {
				var tid [16]byte
				var sid [8]byte
				u := uint64(t.Unix())*16 + uint64(si*4+ri)
				for i := range 8 {
					tid[8+i] = byte(u >> (8 * (7 - i)))
					sid[i] = byte(u >> (8 * (7 - i)))
				}
				tid[0] = 0xab
				a.Exemplars = []metric.Exemplar{{TraceID: tid, SpanID: sid, Value: h.Max(), Time: t.Add(dur / 3)}}
			}
			w.Series = append(w.Series, a)
		}
		if o.AppOnly {
			continue
		}
		run := metric.NewAttrs(map[string]string{"service_name": s.Name, "location": "asia-northeast1"})
		active := math.Ceil(rate / 8)
		for _, st := range []struct {
			state string
			v     float64
		}{{"active", active}, {"idle", 1}} {
			w.Series = append(w.Series, gauge("run.googleapis.com/container/instance_count", "1", run,
				metric.NewAttrs(map[string]string{"state": st.state}), st.v, samples))
		}
		cpu := histogram.New(histogram.DefaultMaxSize, histogram.DefaultMaxScale)
		util := math.Min(0.95, 0.2+rate/active/20)
		for _, f := range []float64{0.8, 0.9, 1, 1.1, 1.2} {
			cpu.RecordN(util*f, uint64(active)*samples)
		}
		w.Series = append(w.Series, metric.Aggregate{Name: "run.googleapis.com/container/cpu/utilizations", Unit: "10^2.%", Kind: metric.Histogram,
			Resource: run, Hist: cpu, Count: cpu.Count(), Sum: cpu.Sum(), Min: cpu.Min(), Max: cpu.Max()})
		if si == 0 {
			toks := float64(uint64(rate * secs * 0.01))
			for _, tt := range []struct {
				typ string
				per float64
			}{{"input", 800}, {"output", 200}} {
				w.Series = append(w.Series, metric.Aggregate{Name: "gen_ai.client.token.usage", Unit: "{token}", Kind: metric.Counter, Resource: res,
					Attrs: metric.NewAttrs(map[string]string{"gen_ai.request.model": "gpt-4o-mini", "gen_ai.token.type": tt.typ}),
					Sum:   toks * tt.per, Count: 1})
			}
		}
	}
	if !o.AppOnly {
		db := metric.NewAttrs(map[string]string{"database_id": "proj:main"})
		w.Series = append(w.Series,
			gauge("cloudsql.googleapis.com/database/postgresql/num_backends", "1", db, metric.NewAttrs(map[string]string{"database": "app"}), math.Round(10+total/2), samples),
			gauge("cloudsql.googleapis.com/database/cpu/utilization", "10^2.%", db, nil, math.Min(1, 0.1+total/200), samples))
	}
	return w
}

func gauge(name, unit string, res, attrs metric.Attrs, v float64, samples uint64) metric.Aggregate {
	return metric.Aggregate{Name: name, Unit: unit, Kind: metric.Gauge, Resource: res, Attrs: attrs,
		Sum: v * float64(samples), Count: samples, Last: v, Min: v, Max: v}
}
