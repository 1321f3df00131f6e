// Package agent is sabaki's core: the pipeline that normalises, rewrites and
// aggregates every series into time windows (pipeline.go, normalize.go,
// rules.go, window.go), the scheduler that runs pull sources
// (scheduler.go), resource detection (resource.go) and the config sections
// of the agent (config.go).
package agent

import (
	"context"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/histogram"
	"github.com/sabakiio/sabaki/metric"
)

// PipelineConfig is what the pipeline needs from the config file.
type PipelineConfig struct {
	// Window is the aggregation window (agent.window); it cannot change on
	// Reload.
	Window time.Duration
	// Lateness is how long after its end a window still takes late points.
	Lateness time.Duration
	// Grace delays a window's first emission past its end; 0 means
	// window/10 clamped to [100ms, 5s].
	Grace time.Duration
	// Resource holds the static and detected resource attributes; a series'
	// own resource attributes win over them.
	Resource metric.Attrs
	Rules    []RuleConfig
	// MaxSize and MaxScale configure histograms the pipeline creates.
	MaxSize  int
	MaxScale int32
	// Quantiles choose a window's exemplars (default 0.5, 0.9, 0.95, 0.99).
	Quantiles []float64
	// MaxPendingPoints bounds the points of concurrent Consume calls;
	// beyond it Consume returns metric.ErrFull (default 1,000,000).
	MaxPendingPoints int
	// MaxWindowSeries bounds the series (after rules) held across the
	// windows in memory; points of further series are dropped,
	// reason="series_limit" (default 1,000,000).
	MaxWindowSeries int
	// MaxRawSeries bounds the raw series (before rules) the pipeline keeps
	// state for (default MaxWindowSeries). Beyond it, points of new
	// cumulative series are dropped, reason="max_series"; new gauge and
	// delta series are still aggregated, without keeping their state.
	MaxRawSeries int
}

// Settings are the pipeline's collaborators.
type Settings struct {
	Logger *slog.Logger
	// Registerer receives the sabaki_pipeline_* self-metrics; nil keeps them
	// private.
	Registerer prometheus.Registerer
	// Now is the wall clock (time.Now when nil).
	Now func() time.Time
	// OnWindow receives every closed window and every re-emission, from one
	// goroutine at a time (Run's or Flush's caller). It owns the window,
	// except that the window's histograms, attributes and exemplars must not
	// be modified (a re-emission may share them). It must not call Flush.
	// The pipeline keeps no reference to the window or its Series and does
	// not reuse them (the daemon's in-memory exporter queues hold windows
	// after the call): a window's memory is released when its last holder
	// drops it.
	OnWindow func(*metric.Window)
	// StartTime is the agent's start: a cumulative series first seen with a
	// Start not before it counts from zero (see normalize.go).
	StartTime time.Time
	// OnWindowState, when set, is called instead of OnWindow (same rules),
	// with the cumulative baselines that advance with the window (see
	// durable.go). The callee must store the window and the change in one
	// transaction, and return an error when it could not. w is nil when
	// Flush has only state to save. The change's keys and values are slices
	// of one buffer; the callee copies what it keeps beyond the call (the
	// store encodes the rows into its own record).
	OnWindowState func(w *metric.Window, change StateChange) error
	// LoadBaselines, when set with OnWindowState, is called once by
	// NewPipeline to read back what OnWindowState saved: fn for every
	// row (key and value valid during the call only).
	LoadBaselines func(fn func(key, value []byte) error) error
	// Journal, when set with OnWindowState, is a directory (created 0700)
	// where delta points are journalled until their window is stored, and
	// replayed from at start (journal.go).
	Journal string
}

// Drop reasons, the values of sabaki_pipeline_dropped_points_total{reason}.
const (
	DropNaN           = "nan"
	DropTooLate       = "too_late"
	DropFuture        = "future"
	DropOutOfOrder    = "out_of_order"
	DropNegativeDelta = "negative_delta"
	DropInvalid       = "invalid"
	DropSeriesLimit   = "series_limit"
	// DropMaxSeries: a new cumulative series that would fold into a
	// max_series overflow series, or beyond MaxRawSeries (its baseline is
	// not kept).
	DropMaxSeries = "max_series"
)

var dropReasons = []string{DropNaN, DropTooLate, DropFuture, DropOutOfOrder, DropNegativeDelta, DropInvalid, DropSeriesLimit, DropMaxSeries}

// Pipeline aggregates series into windows. It implements metric.Sink;
// Consume may be called from many goroutines.
type Pipeline struct {
	log      *slog.Logger
	now      func() time.Time
	onWindow func(*metric.Window)
	onState  func(*metric.Window, StateChange) error
	jr       *journal // nil without Settings.Journal
	jwm      int64    // journal watermark: windows up to it are stored
	// storedUpTo is the journal watermark found at start: the windows up
	// to it were emitted by an earlier process. This one does not know
	// what they hold, so a late point for one of them is too late (emitted
	// again, as revision 0 with only the late points, it would replace the
	// stored values).
	storedUpTo int64
	durable    bool  // onState is set: baselines are saved (durable.go)
	startNs    int64 // agent start, UnixNano

	window     time.Duration
	grace      time.Duration
	maxSize    int
	maxScale   int32
	maxPending int64
	maxSeries  int
	maxRaw     int
	pending    atomic.Int64

	// emitMu serialises emission (OnWindow calls) and is taken before mu.
	emitMu sync.Mutex

	mu       sync.Mutex
	lateness time.Duration
	cur      *ruleSet
	prev     *ruleSet
	switchAt int64 // windows with idx >= switchAt use cur, older ones prev
	raw      map[rawID]*rawState
	// byPos holds, per source, the raw state of each position of the
	// source's last batch (consume). Taken out of the map while a batch
	// uses it.
	byPos map[string][]posEntry
	// histScratch holds a cumulative histogram's bucket differences
	// (rawState.histDelta) until the delta histogram copies them.
	histScratch []uint64
	seed0       maphash.Seed
	seed1       maphash.Seed
	windows     map[int64]*window
	series      int // series across open windows, for MaxWindowSeries
	lastGC      time.Time

	// Durability (durable.go), under mu.
	loose    []baseMark            // baselines to save with the next window
	forget   [][16]byte            // saved baselines to delete with the next window
	restored map[[16]byte]restored // saved baselines not yet claimed

	// admitted counts, per metric with a max_series limit, the raw
	// cumulative series holding a state per output series (admit).
	admitted map[string]map[string]int32

	m pipelineMetrics
}

type pipelineMetrics struct {
	points      *prometheus.CounterVec
	dropped     map[string]prometheus.Counter
	overflow    prometheus.Counter
	rejected    prometheus.Counter
	windows     *prometheus.CounterVec
	windowLag   prometheus.Gauge
	rawSeries   prometheus.Gauge
	windowSerie prometheus.Gauge
	lockHold    prometheus.Gauge
	// Durability (durable.go, journal.go).
	baselinesSaved    prometheus.Counter
	baselinesRestored prometheus.Counter
	journalReplayed   prometheus.Counter
	journalErrors     prometheus.Counter
}

func newPipelineMetrics(reg prometheus.Registerer) (pipelineMetrics, error) {
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_pipeline_dropped_points_total",
		Help: "Points the pipeline dropped, by reason.",
	}, []string{"reason"})
	m := pipelineMetrics{
		points: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_pipeline_points_total", Help: "Points received by the pipeline, by source."}, []string{"source"}),
		dropped: map[string]prometheus.Counter{},
		overflow: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sabaki_pipeline_overflow_series_total",
			Help: "Series folded into an otel.metric.overflow series by a max_series rule (once per series and window)."}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sabaki_pipeline_rejected_batches_total",
			Help: "Batches refused with ErrFull because too many points were pending."}),
		windows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_pipeline_windows_total",
			Help: "Windows emitted; emission=first or revision (re-emitted after late points)."}, []string{"emission"}),
		windowLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sabaki_pipeline_window_lag_seconds",
			Help: "Wall time between the end of the last first-emitted window and its emission."}),
		rawSeries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sabaki_pipeline_active_series",
			Help: "Raw series the pipeline keeps state for (before rules)."}),
		windowSerie: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sabaki_pipeline_window_series",
			Help: "Series in the last first-emitted window (after rules)."}),
		lockHold: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sabaki_pipeline_emit_lock_seconds",
			Help: "How long the last emission held the pipeline lock (Consume waits meanwhile)."}),
		baselinesSaved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sabaki_pipeline_baselines_saved_total",
			Help: "Cumulative baselines saved with the windows (changed ones only)."}),
		baselinesRestored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sabaki_pipeline_baselines_restored_total",
			Help: "Saved cumulative baselines a series took up again after a restart."}),
		journalReplayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sabaki_pipeline_journal_replayed_points_total",
			Help: "Delta points replayed from the journal at start (windows not stored before a crash)."}),
		journalErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sabaki_pipeline_journal_write_errors_total",
			Help: "Requests whose delta points could not be journalled (they would not survive a crash)."}),
	}
	for _, r := range dropReasons {
		m.dropped[r] = dropped.WithLabelValues(r)
	}
	m.windows.WithLabelValues("first")
	m.windows.WithLabelValues("revision")
	for _, c := range []prometheus.Collector{m.points, dropped, m.overflow, m.rejected, m.windows, m.windowLag, m.rawSeries, m.windowSerie, m.lockHold,
		m.baselinesSaved, m.baselinesRestored, m.journalReplayed, m.journalErrors} {
		if err := reg.Register(c); err != nil {
			return m, fmt.Errorf("register pipeline metrics: %w", err)
		}
	}
	return m, nil
}

// DefaultQuantiles are the quantiles exemplars are chosen for.
var DefaultQuantiles = []float64{0.5, 0.9, 0.95, 0.99}

func (c *PipelineConfig) defaults() {
	if c.MaxSize == 0 {
		c.MaxSize = histogram.DefaultMaxSize
	}
	if c.MaxScale == 0 {
		c.MaxScale = histogram.DefaultMaxScale
	}
	if c.Quantiles == nil {
		c.Quantiles = DefaultQuantiles
	}
	if c.MaxPendingPoints == 0 {
		c.MaxPendingPoints = 1_000_000
	}
	if c.MaxWindowSeries == 0 {
		c.MaxWindowSeries = 1_000_000
	}
	if c.MaxRawSeries == 0 {
		c.MaxRawSeries = c.MaxWindowSeries
	}
	if c.Grace == 0 {
		c.Grace = min(max(c.Window/10, 100*time.Millisecond), 5*time.Second)
	}
}

func (c *PipelineConfig) validate() error {
	if c.Window < time.Second || c.Window%time.Second != 0 {
		return fmt.Errorf("window must be a whole number of seconds, at least 1s; got %s", c.Window)
	}
	if c.Lateness < 0 {
		return fmt.Errorf("lateness must not be negative; got %s", c.Lateness)
	}
	for _, q := range c.Quantiles {
		if !(q >= 0 && q <= 1) {
			return fmt.Errorf("quantile %v is not in [0, 1]", q)
		}
	}
	return nil
}

// NewPipeline builds a pipeline; Run must be called for windows to close.
func NewPipeline(cfg PipelineConfig, set Settings) (*Pipeline, error) {
	cfg.defaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	rs, err := compileRules(cfg.Rules, cfg.Resource, cfg.Quantiles)
	if err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	if set.Logger == nil {
		set.Logger = slog.New(slog.DiscardHandler)
	}
	if set.Now == nil {
		set.Now = time.Now
	}
	if set.OnWindow == nil {
		set.OnWindow = func(*metric.Window) {}
	}
	if set.Registerer == nil {
		set.Registerer = prometheus.NewRegistry()
	}
	if set.StartTime.IsZero() {
		set.StartTime = set.Now()
	}
	m, err := newPipelineMetrics(set.Registerer)
	if err != nil {
		return nil, err
	}
	p := &Pipeline{
		log: set.Logger, now: set.Now, onWindow: set.OnWindow, startNs: set.StartTime.UnixNano(),
		onState: set.OnWindowState, durable: set.OnWindowState != nil,
		window: cfg.Window, grace: cfg.Grace, maxSize: cfg.MaxSize, maxScale: cfg.MaxScale,
		maxPending: int64(cfg.MaxPendingPoints), maxSeries: cfg.MaxWindowSeries, maxRaw: cfg.MaxRawSeries,
		lateness: cfg.Lateness, cur: rs, prev: rs,
		raw: map[rawID]*rawState{}, byPos: map[string][]posEntry{}, windows: map[int64]*window{},
		seed0: maphash.MakeSeed(), seed1: maphash.MakeSeed(),
		restored: map[[16]byte]restored{}, admitted: map[string]map[string]int32{},
		m: m,
	}
	p.jwm = math.MinInt64
	if p.durable && set.LoadBaselines != nil {
		if err := p.loadBaselines(set.LoadBaselines, set.Now().UnixNano()); err != nil {
			return nil, err
		}
	}
	p.storedUpTo = p.jwm
	if p.durable && set.Journal != "" {
		jr, old, err := openJournal(set.Journal, p.log, p.m.journalErrors)
		if err != nil {
			return nil, fmt.Errorf("pipeline: %w", err)
		}
		p.jr = jr
		p.replayJournal(old)
	}
	return p, nil
}

// forgetAfter is how long a raw series may stay silent before its state
// (and saved baseline) is forgotten.
func (p *Pipeline) forgetAfter() time.Duration { return 2*p.lateness + 10*time.Minute }

// Reload swaps the rules, resource attributes, quantiles and lateness. Rules
// and resource apply from the next window on; windows already open (and late
// points for them) keep the rules they opened with. The window length cannot
// change without a restart.
func (p *Pipeline) Reload(cfg PipelineConfig) error {
	cfg.defaults()
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("pipeline reload: %w", err)
	}
	if cfg.Window != p.window {
		return fmt.Errorf("pipeline reload: agent.window changed from %s to %s; restart sabaki to change it", p.window, cfg.Window)
	}
	rs, err := compileRules(cfg.Rules, cfg.Resource, cfg.Quantiles)
	if err != nil {
		return fmt.Errorf("pipeline reload: %w", err)
	}
	next := p.windowIdx(p.now()) + 1
	p.mu.Lock()
	defer p.mu.Unlock()
	p.prev, p.cur, p.switchAt = p.cur, rs, next
	p.lateness = cfg.Lateness
	return nil
}

func (p *Pipeline) windowIdx(t time.Time) int64 {
	return floorDiv(t.UnixNano(), int64(p.window))
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// Consume implements metric.Sink. It returns an error wrapping metric.ErrFull
// when more than MaxPendingPoints are being consumed concurrently (a single
// batch is always accepted when nothing else is pending). Points it cannot
// use (NaN, too late, from the future) are dropped and counted, not
// reported as an error: the rest of the batch is kept.
func (p *Pipeline) Consume(ctx context.Context, b metric.Batch) error {
	n := int64(0)
	for i := range b.Series {
		n += int64(len(b.Series[i].Points))
	}
	if total := p.pending.Add(n); total > p.maxPending && total != n {
		p.pending.Add(-n)
		p.m.rejected.Inc()
		return fmt.Errorf("pipeline: %d points pending, batch of %d from %q refused: %w", total-n, n, b.Source, metric.ErrFull)
	}
	defer p.pending.Add(-n)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pipeline: %w", err)
	}
	now := p.now()
	if p.jr != nil {
		if err := p.journalBatch(&b, now); err != nil {
			p.m.rejected.Inc()
			return fmt.Errorf("pipeline: batch from %q refused: journalling its delta points: %v: %w", b.Source, err, metric.ErrFull)
		}
	}
	p.m.points.WithLabelValues(b.Source).Add(float64(n))
	p.consume(b, now)
	return nil
}

// consume aggregates b (already journalled, or replayed from the journal).
//
// A source sends its series in the same order scrape after scrape, so the
// raw state found for position i of a source's batch is remembered and tried
// first for position i of its next batch: at 105k series a lookup in p.raw
// misses the CPU caches (ctrl word, then key) and was 14 % of the agent's
// CPU. The remembered state is used only when its rawID equals the series'
// one and it is still in p.raw (rawState.detached); otherwise p.raw decides,
// as before. A batch from a source whose positions another batch is using
// (concurrent pushes) goes without.
func (p *Pipeline) consume(b metric.Batch, now time.Time) {
	bufp := keyBufs.Get().(*[]byte)
	var drops dropCounts
	p.mu.Lock()
	pos := p.byPos[b.Source]
	delete(p.byPos, b.Source)
	p.mu.Unlock()
	if n := len(b.Series); len(pos) < n {
		pos = append(pos, make([]posEntry, n-len(pos))...)
	} else {
		clear(pos[n:]) // states of a longer batch: not kept alive
		pos = pos[:n]
	}
	for i := range b.Series {
		s := &b.Series[i]
		e := &pos[i]
		if len(s.Points) == 0 {
			continue
		}
		if s.Kind < metric.Gauge || s.Kind > metric.Histogram || s.Name == "" {
			drops[idxInv] += len(s.Points)
			continue
		}
		key := appendRawKey((*bufp)[:0], b.Source, s)
		*bufp = key
		id := rawID{maphash.Bytes(p.seed0, key), maphash.Bytes(p.seed1, key)}
		hint := e.st
		if e.id != id {
			hint = nil
		}
		p.mu.Lock()
		e.st = p.consumeSeries(id, hint, key, s, now, &drops)
		p.mu.Unlock()
		e.id = id
	}
	keyBufs.Put(bufp)
	p.mu.Lock()
	p.byPos[b.Source] = pos
	p.mu.Unlock()
	for i, c := range drops {
		if c > 0 {
			p.m.dropped[dropReasons[i]].Add(float64(c))
		}
	}
}

// posEntry is the raw state remembered for one position of a source's batch.
type posEntry struct {
	id rawID
	st *rawState
}

type dropCounts [8]int

func dropIndex(reason string) int { return slices.Index(dropReasons, reason) }

var (
	idxNaN, idxTooLate, idxFuture      = dropIndex(DropNaN), dropIndex(DropTooLate), dropIndex(DropFuture)
	idxOutOfOrder, idxNegative, idxInv = dropIndex(DropOutOfOrder), dropIndex(DropNegativeDelta), dropIndex(DropInvalid)
	idxSeriesLimit, idxMaxSeries       = dropIndex(DropSeriesLimit), dropIndex(DropMaxSeries)
)

var keyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// rawID identifies a raw series by two independent 64-bit hashes of its
// encoded identity (appendRawKey) instead of the identity itself: 16 bytes
// per series instead of ~100. Two distinct series collide with probability
// 2^-128; among a million series, about 10^-27.
type rawID [2]uint64

// appendRawKey encodes a raw series identity: source, temporality and the
// identity as delivered.
func appendRawKey(dst []byte, source string, s *metric.Series) []byte {
	dst = append(dst, source...)
	dst = append(dst, 0, byte(s.Temporality), 0)
	return appendIdentity(dst, s.Name, s.Kind, s.Resource, s.Attrs)
}

// consumeSeries handles one series under p.mu. hint, when not nil, is the
// state consume remembered for the series' position with the same id. It
// returns the series' state when p.raw holds it, else nil.
func (p *Pipeline) consumeSeries(id rawID, hint *rawState, key []byte, s *metric.Series, now time.Time, drops *dropCounts) *rawState {
	cumulative := s.Kind != metric.Gauge && s.Temporality != metric.Delta
	st := hint
	if st == nil || st.detached {
		st = p.raw[id]
	}
	if st == nil {
		st = &rawState{}
		st.isError, st.errTracked = markError(s.Attrs)
		full := len(p.raw) >= p.maxRaw
		if cumulative {
			// A cumulative series needs its baseline kept: not admitted
			// beyond the raw limit, nor beyond its metric's max_series.
			if full || !p.admit(st, s, now) {
				drops[idxMaxSeries] += len(s.Points)
				return nil
			}
			if p.durable {
				st.sid = sidOf(key)
				p.claim(st, s.Kind)
			}
		}
		if !full {
			p.raw[id] = st
		} else { // a gauge or delta series: aggregated, its state not kept
			st.detached = true
		}
	}

	st.seen = uint32(now.Unix())
	// A window is closed for good once its end + lateness has passed.
	cutoff := now.Add(-p.lateness).UnixNano()
	var prev baseMark
	for i := range s.Points {
		pt := &s.Points[i]
		if pt.Time.IsZero() {
			cp := *pt // do not write to the caller's batch
			cp.Time = now
			pt = &cp
		}
		if pt.Time.Sub(now) > p.window {
			drops[idxFuture]++
			continue
		}
		at := pt.Time
		if !cumulative && s.Kind != metric.Gauge && !pt.Start.IsZero() && pt.Start.Before(pt.Time) {
			// A delta point covers (Start, Time]: what it counts happened
			// before Time, so it belongs to the window holding its last
			// instant. Without this, Cloud Monitoring's minute deltas, which
			// end exactly on the minute, would land one window late.
			at = pt.Time.Add(-1)
		}
		idx := p.windowIdx(at)
		tooLate := (idx+1)*int64(p.window) < cutoff || idx <= p.storedUpTo
		if cumulative && st.hasBase && pt.Time.UnixNano() <= st.lastTime {
			drops[idxOutOfOrder]++
			continue
		}
		switch s.Kind {
		case metric.Gauge:
			if bad(pt.Value) {
				drops[idxNaN]++
				continue
			}
			if tooLate {
				drops[idxTooLate]++
				continue
			}
			if a := p.aggFor(st, s, idx, drops); a != nil {
				a.addGauge(pt.Value, pt.Time)
				p.exemplars(a, pt)
			}
		case metric.Counter:
			if bad(pt.Value) {
				drops[idxNaN]++
				continue
			}
			delta := pt.Value
			if cumulative {
				if p.durable {
					prev = markOf(st)
				}
				// A too-late point still moves the baseline, so that its
				// increments are not counted again in a later window.
				delta, ok := st.counterDelta(pt, p.startNs)
				var a *agg
				if !ok {
					// first sight: the baseline only
				} else if tooLate {
					drops[idxTooLate]++
				} else if a = p.aggFor(st, s, idx, drops); a != nil {
					a.addCounter(delta, st)
					p.exemplars(a, pt)
				}
				if p.durable {
					p.trackedAgg(st, a, prev)
				}
				continue
			} else if delta < 0 {
				drops[idxNegative]++
				continue
			}
			if tooLate {
				drops[idxTooLate]++
				continue
			}
			if a := p.aggFor(st, s, idx, drops); a != nil {
				a.addCounter(delta, st)
				p.exemplars(a, pt)
			}
		case metric.Histogram:
			if pt.Hist == nil {
				drops[idxInv]++
				continue
			}
			h := pt.Hist
			if cumulative {
				if p.durable {
					prev = markOf(st)
				}
				h = st.histDelta(pt, p.startNs, p.maxSize, p.maxScale, &p.histScratch)
				var a *agg
				if h == nil {
					// first sight: the baseline only
				} else if tooLate {
					drops[idxTooLate]++
				} else if a = p.aggFor(st, s, idx, drops); a != nil {
					a.addHist(h, st, p.maxSize, p.maxScale)
					p.exemplars(a, pt)
				}
				if p.durable {
					p.trackedAgg(st, a, prev)
				}
				continue
			}
			if tooLate {
				drops[idxTooLate]++
				continue
			}
			if a := p.aggFor(st, s, idx, drops); a != nil {
				a.addHist(h, st, p.maxSize, p.maxScale)
				p.exemplars(a, pt)
			}
		}
	}
	if !cumulative && st.inOverflow {
		// Gauge and delta state is only a cache: none is kept for series
		// folded into an overflow series, whose number max_series does not
		// bound.
		st.detached = true
		delete(p.raw, id)
	}
	if st.detached {
		return nil
	}
	return st
}

func bad(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }

func (p *Pipeline) exemplars(a *agg, pt *metric.Point) {
	for i := range pt.Exemplars {
		a.addExemplar(&pt.Exemplars[i])
	}
}

func (p *Pipeline) windowEnd(idx int64) time.Time {
	return time.Unix(0, (idx+1)*int64(p.window))
}

// aggFor returns the aggregate of st's series in window idx, creating the
// window and the aggregate as needed; nil when the series limit drops it.
func (p *Pipeline) aggFor(st *rawState, s *metric.Series, idx int64, drops *dropCounts) *agg {
	w := st.win
	if w == nil || w.idx != idx || w.freed {
		w = p.windows[idx]
		if w == nil {
			rules := p.cur
			if idx < p.switchAt {
				rules = p.prev
			}
			// Size the maps like the previous window: growing a map of
			// 100k series rehashes it many times.
			hint := 0
			if pw := p.windows[idx-1]; pw != nil {
				hint = pw.len()
			}
			w = &window{idx: idx, start: time.Unix(0, idx*int64(p.window)).UTC(), rules: rules,
				series: make(map[string]*agg, hint), perMetric: map[string]int{}}
			p.windows[idx] = w
		}
		st.win, st.ag = w, nil
	}
	if w.emitted {
		w.dirty = true
	}
	if st.ag != nil && st.agGen == w.gen {
		return st.ag
	}
	if st.rs != w.rules {
		st.rs, st.out = w.rules, w.rules.apply(s)
	}
	out := st.out
	a := w.lookup(out.key)
	if a == nil {
		if out.limit > 0 && w.perMetric[out.name()] >= int(out.limit) {
			a = p.overflowAgg(w, out)
		} else if p.series >= p.maxSeries {
			drops[idxSeriesLimit]++
			return nil
		} else {
			a = &agg{out: out}
			w.add(out.key, a)
			w.perMetric[out.name()]++
			p.series++
		}
	}
	a.errTracked = a.errTracked || st.errTracked
	st.ag, st.agGen = a, w.gen
	st.inOverflow = a.out.overflowSeries
	return a
}

// admit decides whether a new cumulative series gets a state: always when
// its metric has no max_series limit; otherwise when its output series (as
// the rules of its first point's window make it) is among the first `limit`
// output series of the metric that hold baselines. A series folded into an
// overflow series would keep a baseline max_series does not bound. It
// caches the rule output in st.
func (p *Pipeline) admit(st *rawState, s *metric.Series, now time.Time) bool {
	at := s.Points[0].Time
	if at.IsZero() {
		at = now
	}
	idx := p.windowIdx(at)
	rules := p.cur
	if idx < p.switchAt {
		rules = p.prev
	}
	if w := p.windows[idx]; w != nil {
		rules = w.rules
	}
	st.rs, st.out = rules, rules.apply(s)
	out := st.out
	if out.limit == 0 {
		return true
	}
	set := p.admitted[out.name()]
	if set == nil {
		set = map[string]int32{}
		p.admitted[out.name()] = set
	}
	if _, ok := set[out.key]; !ok && len(set) >= int(out.limit) {
		return false
	}
	set[out.key]++
	st.adm = out
	return true
}

// release undoes admit when st is forgotten.
func (p *Pipeline) release(st *rawState) {
	if st.adm == nil {
		return
	}
	name := st.adm.name()
	set := p.admitted[name]
	if set[st.adm.key]--; set[st.adm.key] <= 0 {
		delete(set, st.adm.key)
		if len(set) == 0 {
			delete(p.admitted, name)
		}
	}
	st.adm = nil
}

func (p *Pipeline) overflowAgg(w *window, out *outSeries) *agg {
	p.m.overflow.Inc()
	if w.overflow == nil {
		w.overflow = map[string]bool{}
	}
	if !w.overflow[out.name()] {
		w.overflow[out.name()] = true
		p.log.Warn("max_series limit reached; further series fold into the overflow series",
			"metric", out.name(), "limit", out.limit, "window", w.start, "attribute", OverflowAttr+"=true")
	}
	ov := out.overflow()
	a := w.lookup(ov.key)
	if a == nil {
		a = &agg{out: ov}
		w.add(ov.key, a)
		p.series++
	}
	return a
}

// Run closes windows as wall time passes their end plus the grace, calls
// OnWindow for each (and for windows updated by late points), and forgets
// stale series. It returns when ctx is done, without flushing: the caller
// stops the sources and then calls Flush.
func (p *Pipeline) Run(ctx context.Context) error {
	tick := min(max(p.window/10, 50*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			p.tick(p.now())
		}
	}
}

// Flush emits every window not yet emitted (including the current, partial
// one) and every window with pending late updates, now. It is safe to call
// more than once and concurrently with Run.
func (p *Pipeline) Flush() {
	p.emit(p.now(), true)
}

// Close releases the pipeline's state. The pipeline must not be used after.
func (p *Pipeline) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.raw, p.windows = map[rawID]*rawState{}, map[int64]*window{}
	p.admitted = map[string]map[string]int32{}
	if p.jr != nil {
		p.jr.close()
	}
	return nil
}

func (p *Pipeline) tick(now time.Time) { p.emit(now, false) }

type emission struct {
	series   []metric.Aggregate
	start    time.Time
	revision int
	first    bool
	state    bool // state only, no window (Flush)
	ch       StateChange
	saved    int // baselines in ch
	wm       int64
}

// emit hands due windows to OnWindow in order. It holds p.mu briefly twice:
// to pick the due windows and snapshot their new aggregates, then (after
// sorting those outside the lock, in the previous window's order where it
// applies: orderAggs) to compact and render the windows. OnWindow
// runs outside p.mu, so Consume is held up by neither the sort nor the store
// or exporters.
func (p *Pipeline) emit(now time.Time, all bool) {
	p.emitMu.Lock()
	defer p.emitMu.Unlock()

	p.mu.Lock()
	held := time.Now()
	var due []*window
	for _, w := range p.windows {
		end := p.windowEnd(w.idx)
		switch {
		case !w.emitted && (all || !now.Before(end.Add(p.grace))):
			due = append(due, w)
		case w.emitted && w.dirty:
			due = append(due, w)
		}
	}
	if p.jr != nil && slices.ContainsFunc(due, func(w *window) bool { return !w.emitted }) {
		// A segment per first emission, released once it is stored.
		p.jr.mu.Lock()
		if err := p.jr.rotate(); err != nil {
			p.log.Error("rotating the delta journal", "err", err)
		}
		p.jr.mu.Unlock()
	}
	// In window order, first emissions and re-emissions alike: a series'
	// saved baseline must advance in the order of its windows (durable.go).
	slices.SortFunc(due, func(a, b *window) int { return int(a.idx - b.idx) })
	fresh := make([][]*agg, len(due))
	prevs := make([]*window, len(due))
	for i, w := range due {
		fresh[i] = w.snapshot()
		if pw := p.windows[w.idx-1]; !w.emitted && pw != nil && pw.emitted {
			prevs[i] = pw
		}
	}
	hold := time.Since(held)
	p.mu.Unlock()

	// An aggregate's identity never changes: sorting by it needs no lock.
	for i := range fresh {
		fresh[i], _ = orderAggs(fresh[i], prevs[i])
	}

	p.mu.Lock()
	held = time.Now()
	out := make([]emission, 0, len(due))
	for i, w := range due {
		newest := true // no later window emitted: w is the next one's previous
		for idx, o := range p.windows {
			if idx > w.idx && o.emitted {
				newest = false
			}
		}
		w.compact(fresh[i], newest)
		if w.emitted {
			w.revision++
		}
		e := emission{series: w.render(), start: w.start, revision: w.revision, first: !w.emitted, wm: noWatermark}
		if p.durable {
			if e.first && p.jr != nil {
				e.wm = w.idx // w.start in windows
			}
			e.ch, e.saved = p.collectState(w, i == 0, e.wm)
		}
		out = append(out, e)
		w.emitted, w.dirty = true, false
	}
	p.gc(now)
	if p.durable && all && len(out) == 0 && (len(p.loose) > 0 || len(p.forget) > 0) {
		out = append(out, emission{state: true, ch: encodeState(p.loose, p.forget, noWatermark), saved: len(p.loose)})
		p.loose, p.forget = nil, nil
	}
	hold += time.Since(held)
	p.mu.Unlock()
	if len(due) > 0 {
		p.m.lockHold.Set(hold.Seconds())
	}

	for i := range out {
		e := out[i]
		// What is handed over is released here as soon as the callee
		// returns, not when the last window of this tick has been handed
		// over: a tick may emit several windows of 100k series.
		out[i] = emission{}
		if e.state {
			if p.onState(nil, e.ch) == nil {
				p.m.baselinesSaved.Add(float64(e.saved))
			}
			continue
		}
		w := &metric.Window{Start: e.start, Duration: p.window, Revision: e.revision, Series: e.series}
		if e.first {
			p.m.windows.WithLabelValues("first").Inc()
			p.m.windowLag.Set(now.Sub(w.End()).Seconds())
			p.m.windowSerie.Set(float64(len(w.Series)))
		} else {
			p.m.windows.WithLabelValues("revision").Inc()
		}
		if p.durable {
			err := p.onState(w, e.ch)
			if err == nil {
				p.m.baselinesSaved.Add(float64(e.saved))
			}
			if err == nil && e.wm != noWatermark {
				p.jr.release(e.wm)
			}
			continue
		}
		p.onWindow(w)
	}
}

// gc frees windows past their lateness and forgets series silent for longer
// than 2×lateness + 10 min. It runs under p.mu.
func (p *Pipeline) gc(now time.Time) {
	freed := false
	for idx, w := range p.windows {
		if w.emitted && !w.dirty && p.windowEnd(idx).Add(p.lateness).Before(now) {
			w.freed = true
			p.series -= w.len()
			delete(p.windows, idx)
			freed = true
		}
	}
	if !freed && now.Sub(p.lastGC) < time.Minute {
		return
	}
	p.lastGC = now
	stale := p.forgetAfter()
	// Without a baseline (gauges, deltas) the state is a cache of the rule
	// output: forgotten sooner.
	cache := max(2*p.window, 10*time.Second)
	for k, st := range p.raw {
		silent := time.Duration(int32(uint32(now.Unix())-st.seen)) * time.Second
		if (silent > stale || (!st.hasBase && silent > cache)) && st.bw == nil {
			if st.saved {
				p.forget = append(p.forget, st.sid)
			}
			p.release(st)
			st.detached = true // consume's remembered positions must not use it
			delete(p.raw, k)
			continue
		}
		if st.win != nil && st.win.freed {
			st.win, st.ag = nil, nil
		}
	}
	if p.switchAt > 0 && p.prev != p.cur && len(p.windows) > 0 {
		oldest := int64(math.MaxInt64)
		for idx := range p.windows {
			oldest = min(oldest, idx)
		}
		if oldest >= p.switchAt && p.windowIdx(now.Add(-p.lateness-p.window)) >= p.switchAt {
			p.prev = p.cur
		}
	}
	for sid, r := range p.restored {
		if now.UnixNano()-r.t > int64(stale) {
			p.forget = append(p.forget, sid)
			delete(p.restored, sid)
		}
	}
	p.m.rawSeries.Set(float64(len(p.raw)))
}
