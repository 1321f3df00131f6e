package loadgen

import (
	"net/http"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// TestTargetsCount checks that what a target exposes (read back as a
// scraper would, in protobuf) is what Totals says was generated, and that
// the histograms are native at NativeSchema.
func TestTargetsCount(t *testing.T) {
	tg, err := StartTargets(TargetsConfig{Targets: 2, Counters: 3, Gauges: 2, Histograms: 2, Seed: 1, KeepValues: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	tg.Step(30)
	tg.Step(30)
	want := tg.Totals()
	var obs, errs uint64
	var incr float64
	for _, u := range tg.URLs() {
		req, _ := http.NewRequest("GET", u, nil)
		req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeProtoDelim)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		dec := expfmt.NewDecoder(resp.Body, expfmt.ResponseFormat(resp.Header))
		for {
			var mf dto.MetricFamily
			if err := dec.Decode(&mf); err != nil {
				break
			}
			for _, m := range mf.GetMetric() {
				switch mf.GetName() {
				case "loadgen_request_duration_seconds":
					h := m.GetHistogram()
					if h.GetSchema() != NativeSchema {
						t.Errorf("schema %d, want %d", h.GetSchema(), NativeSchema)
					}
					obs += h.GetSampleCount()
					for _, lp := range m.GetLabel() {
						if lp.GetName() == "code" && lp.GetValue() == "500" {
							errs += h.GetSampleCount()
						}
					}
				case "loadgen_events_total":
					incr += m.GetCounter().GetValue()
				}
			}
		}
		resp.Body.Close()
	}
	if obs != want.Observations || errs != want.Errors || incr != want.CounterIncrements {
		t.Errorf("exposed %d observations (%d errors), %v increments; Totals says %+v", obs, errs, incr, want)
	}
	if tg.MinScrapes() != 1 {
		t.Errorf("scrapes %v, want 1 each", tg.Scrapes())
	}
	if q := tg.Quantile(0.5); q <= 0 {
		t.Errorf("median %v", q)
	}
}
