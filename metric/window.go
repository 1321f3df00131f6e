package metric

import (
	"errors"
	"time"

	"github.com/sabakiio/sabaki/histogram"
)

// ErrFull is returned (wrapped) by a Sink that cannot take more data now.
var ErrFull = errors.New("pipeline full")

// Window is the aggregate of every series over one closed time window
// [Start, Start+Duration). A window can be emitted again when late points
// update it (Revision > 0); a re-emitted window carries the whole window, not
// only the change, so a receiver that keeps the last value per slot (Mackerel,
// the store) simply overwrites.
type Window struct {
	Start    time.Time
	Duration time.Duration
	// Revision is 0 for the first emission and grows with each re-emission.
	Revision int
	Series   []Aggregate
}

// End returns the exclusive end of the window.
func (w *Window) End() time.Time { return w.Start.Add(w.Duration) }

// Aggregate is one series' summary over a window, after rules were applied.
type Aggregate struct {
	Name        string
	Unit        string
	Description string
	Kind        Kind
	Resource    Attrs
	Attrs       Attrs

	// Counter: Sum is the delta over the window (never negative).
	// Gauge: Sum and Count give the mean of the samples; Last, Min, Max.
	Sum   float64
	Count uint64
	Last  float64
	Min   float64
	Max   float64

	// Hist holds a Histogram series' merged observations in the window.
	Hist *histogram.Histogram

	// ErrorCount counts the observations (histogram) or increments (counter)
	// that came from points marked as errors (http.response.status_code >= 500
	// or error.type set) before the attribute rules dropped those attributes.
	// ErrorTracked says whether the series carried that information at all:
	// without it error_ratio is unknown, not zero.
	ErrorCount   uint64
	ErrorTracked bool

	// Exemplars kept for the window: the maximum and one at or above each
	// exported quantile, at most a handful.
	Exemplars []Exemplar
}
