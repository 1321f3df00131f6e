package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/agent"
	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/metric"
)

// stateWriter is what storeRetry writes through: the store's
// WriteWithState (a window and its baseline changes in one transaction; w
// nil for baselines only).
type stateWriter interface {
	WriteWithState(ctx context.Context, w *metric.Window, put []store.StateRow, del [][]byte) error
}

// Give-up reasons, the values of
// sabaki_agent_store_windows_abandoned_total{reason}.
const (
	abandonMaxWindows = "max_windows" // more windows waiting than maxPendingWindows
	abandonMaxBytes   = "max_bytes"   // the waiting windows' estimated memory past maxPendingBytes
	abandonRetention  = "retention"   // the window left the first tier's retention while waiting
	abandonShutdown   = "shutdown"    // still waiting when the agent stopped
)

// Bounds of what waits for the store. A day of one-minute windows; 256 MiB
// is about ten windows of a 105,000-series agent (about 25 MB each) and
// days of windows of a small one.
const (
	maxPendingWindows = 1440
	maxPendingBytes   = 256 << 20
	retryMinBackoff   = time.Second
	retryMaxBackoff   = 30 * time.Second
	storeWriteTimeout = 30 * time.Second
)

// storeRetry writes closed windows to the store and keeps, in memory, the
// ones whose write failed (a full disk, an I/O error), to write them again
// until the store takes them. Nothing already acknowledged to a source is
// then lost to a store that fails for a while: the pipeline's delta journal
// keeps a window's delta points until the window is stored, and the
// baselines stored with later windows never run ahead of one still
// waiting.
//
// The contract, and why:
//
//   - Windows are written in the order they were handed over (first
//     emissions and revisions alike). While one waits, every later window
//     waits behind it: a window's baseline changes must reach the store
//     after those of every earlier window (a later row for a series wins),
//     or a retried window would move its series' saved baselines back. The
//     journal watermark saved with a window is the same: stored early it
//     would tell a restarted agent to skip delta points not yet stored.
//   - Write returns an error for a window that did not reach the store
//     (failed, or queued behind one that did), so the pipeline keeps the
//     delta journal for it. When a waiting window is stored later, release
//     is called with its journal watermark (agent.StateChange.Watermark).
//   - A waiting window is written again when the next window is handed
//     over, and between windows with a backoff (1 s doubling to 30 s).
//   - What waits is bounded: maxPendingWindows, maxPendingBytes (an
//     estimate of the windows' memory), and the first tier's retention (a
//     window past it would be deleted at once). Past a bound the oldest
//     window is given up: logged and counted with the reason. Its data is
//     then missing from the store (the exporters had it); its baseline
//     changes are not stored either, so later windows' baselines carry on
//     past it, and its delta points are replayed from the journal only if
//     the agent restarts before a later window is stored.
//   - At shutdown what still waits gets one more try; what is left is
//     counted (reason "shutdown") and logged: its baselines and journal were
//     not advanced, so the next start counts it again.
type storeRetry struct {
	st      stateWriter
	log     *slog.Logger
	release func(wm int64) // deletes journal segments up to a stored watermark
	now     func() time.Time
	maxAge  time.Duration // the first tier's keep; 0: no age bound

	maxWindows int
	maxBytes   int64

	// The queue's size for /readyz and /metrics, which must not wait for
	// mu while a write holds it (publishLocked).
	nPending, bPending, oldest atomic.Int64

	mu      sync.Mutex
	q       []pendingWrite
	bytes   int64
	backoff time.Duration
	next    time.Time     // earliest background retry
	wake    chan struct{} // a window started waiting

	m storeRetryMetrics
}

type storeRetryMetrics struct {
	writeErrors prometheus.Counter
	pending     prometheus.GaugeFunc
	pendingB    prometheus.GaugeFunc
	retries     *prometheus.CounterVec
	abandoned   *prometheus.CounterVec
}

// pendingWrite is a window (nil: baselines only) waiting for the store, with
// its own copy of the baseline changes.
type pendingWrite struct {
	w        *metric.Window
	put      []store.StateRow
	del      [][]byte
	wm       int64 // journal watermark, when hasWM
	hasWM    bool
	bytes    int64
	failedAt time.Time
	attempts int
}

func (p *pendingWrite) describe() string {
	if p.w == nil {
		return "baselines only"
	}
	return p.w.Start.UTC().Format(time.RFC3339)
}

// newStoreRetry builds the writer and registers its metrics on reg. release
// may be nil (no journal).
func newStoreRetry(st stateWriter, log *slog.Logger, reg prometheus.Registerer, maxAge time.Duration, release func(int64)) *storeRetry {
	s := &storeRetry{st: st, log: log, release: release, now: time.Now, maxAge: maxAge,
		maxWindows: maxPendingWindows, maxBytes: maxPendingBytes, backoff: retryMinBackoff, wake: make(chan struct{}, 1)}
	if s.release == nil {
		s.release = func(int64) {}
	}
	s.m = storeRetryMetrics{
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "sabaki_agent_store_write_errors_total",
			Help: "Closed windows not stored when handed over (the write failed, or earlier windows were still waiting); they wait in memory and are written again (sabaki_agent_store_pending_windows)."}),
		pending: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sabaki_agent_store_pending_windows", Help: "Closed windows waiting in memory to be written to the store after a failed write."},
			func() float64 { n, _, _ := s.pendingStats(); return float64(n) }),
		pendingB: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "sabaki_agent_store_pending_bytes", Help: "Estimated memory of the windows waiting for the store."},
			func() float64 { _, b, _ := s.pendingStats(); return float64(b) }),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_agent_store_retries_total", Help: "Writes of waiting windows to the store, by result (stored, failed)."}, []string{"result"}),
		abandoned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_agent_store_windows_abandoned_total",
			Help: "Windows given up on after failed store writes, by reason (max_windows, max_bytes, retention, shutdown)."}, []string{"reason"}),
	}
	for _, r := range []string{"stored", "failed"} {
		s.m.retries.WithLabelValues(r)
	}
	for _, r := range []string{abandonMaxWindows, abandonMaxBytes, abandonRetention, abandonShutdown} {
		s.m.abandoned.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(s.m.writeErrors, s.m.pending, s.m.pendingB, s.m.retries, s.m.abandoned)
	}
	return s
}

// errWaiting: the window was not written because earlier ones still wait.
var errWaiting = errors.New("waiting behind earlier windows the store has not taken yet")

// Write stores w (nil: baselines only) with ch, after every window still
// waiting; an error means w is not stored yet and waits (see storeRetry).
// ch's rows are copied when w has to wait.
func (s *storeRetry) Write(w *metric.Window, ch agent.StateChange) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.q) > 0 {
		s.drainLocked(context.Background())
	}
	wm, hasWM := ch.Watermark()
	if len(s.q) == 0 {
		put := make([]store.StateRow, len(ch.Put))
		for i, r := range ch.Put {
			put[i] = store.StateRow{Key: r.Key, Value: r.Value}
		}
		ctx, cancel := context.WithTimeout(context.Background(), storeWriteTimeout)
		err := s.st.WriteWithState(ctx, w, put, ch.Delete)
		cancel()
		if err == nil {
			return nil
		}
		s.m.writeErrors.Inc()
		s.logFailed(w, len(put), err)
		s.enqueueLocked(w, ch, wm, hasWM)
		return err
	}
	s.m.writeErrors.Inc()
	s.enqueueLocked(w, ch, wm, hasWM)
	return errWaiting
}

func (s *storeRetry) logFailed(w *metric.Window, baselines int, err error) {
	if w == nil {
		s.log.Error("saving baselines failed; kept in memory and written again until the store takes them", "baselines", baselines, "err", err)
		return
	}
	s.log.Error("storing window failed; kept in memory and written again until the store takes it", "window", w.Start, "series", len(w.Series), "err", err)
}

// enqueueLocked adds a copy of what w needs to be stored, then applies the
// bounds.
func (s *storeRetry) enqueueLocked(w *metric.Window, ch agent.StateChange, wm int64, hasWM bool) {
	p := pendingWrite{w: w, wm: wm, hasWM: hasWM, failedAt: s.now()}
	n := 0
	for _, r := range ch.Put {
		n += len(r.Key) + len(r.Value)
	}
	for _, k := range ch.Delete {
		n += len(k)
	}
	// One buffer for every key and value: the pipeline's rows are slices of
	// its buffer, valid during the call only.
	buf := make([]byte, 0, n)
	p.put = make([]store.StateRow, len(ch.Put))
	for i, r := range ch.Put {
		off := len(buf)
		buf = append(buf, r.Key...)
		k := buf[off:len(buf):len(buf)]
		off = len(buf)
		buf = append(buf, r.Value...)
		p.put[i] = store.StateRow{Key: k, Value: buf[off:len(buf):len(buf)]}
	}
	if len(ch.Delete) > 0 {
		p.del = make([][]byte, len(ch.Delete))
		for i, k := range ch.Delete {
			off := len(buf)
			buf = append(buf, k...)
			p.del[i] = buf[off:len(buf):len(buf)]
		}
	}
	p.bytes = int64(n) + int64(len(p.put))*48 + int64(len(p.del))*24 + windowBytes(w)
	s.q = append(s.q, p)
	s.bytes += p.bytes
	if len(s.q) == 1 {
		s.backoff = retryMinBackoff
		s.next = s.now().Add(s.backoff)
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	s.boundLocked()
	s.publishLocked()
}

// windowBytes estimates the memory a window keeps alive: an aggregate,
// its histogram's buckets and its exemplars (attributes are shared with the
// pipeline's series and not counted).
func windowBytes(w *metric.Window) int64 {
	if w == nil {
		return 0
	}
	n := int64(64)
	for i := range w.Series {
		a := &w.Series[i]
		n += 208 + int64(len(a.Exemplars))*96
		if a.Hist != nil {
			d := a.Hist.Data()
			n += 96 + 8*int64(len(d.Positive.Counts)+len(d.Negative.Counts))
		}
	}
	return n
}

// boundLocked gives up the oldest waiting windows past the bounds.
func (s *storeRetry) boundLocked() {
	now := s.now()
	for len(s.q) > 0 {
		p := &s.q[0]
		reason := ""
		switch {
		case s.maxAge > 0 && p.w != nil && now.Sub(p.w.End()) > s.maxAge:
			reason = abandonRetention
		case len(s.q) > s.maxWindows:
			reason = abandonMaxWindows
		case s.bytes > s.maxBytes && len(s.q) > 1:
			reason = abandonMaxBytes
		default:
			return
		}
		s.abandonLocked(reason)
	}
}

// abandonLocked gives up the oldest waiting window.
func (s *storeRetry) abandonLocked(reason string) {
	p := s.q[0]
	s.q[0] = pendingWrite{}
	s.q = s.q[1:]
	s.bytes -= p.bytes
	s.publishLocked()
	s.m.abandoned.WithLabelValues(reason).Inc()
	series := 0
	if p.w != nil {
		series = len(p.w.Series)
	}
	s.log.Error("gave up storing a window after failed store writes; its data is missing from the store (the exporters had it)",
		"window", p.describe(), "series", series, "reason", reason, "attempts", p.attempts, "waiting_since", p.failedAt)
}

// drainLocked writes waiting windows in order until one fails or none is
// left. It reports whether the queue is empty.
func (s *storeRetry) drainLocked(ctx context.Context) bool {
	s.boundLocked()
	for len(s.q) > 0 {
		p := &s.q[0]
		wctx, cancel := context.WithTimeout(ctx, storeWriteTimeout)
		err := s.st.WriteWithState(wctx, p.w, p.put, p.del)
		cancel()
		p.attempts++
		if err != nil {
			if ctx.Err() != nil {
				return false // stopping: not a store failure
			}
			s.m.retries.WithLabelValues("failed").Inc()
			s.backoff = min(2*s.backoff, retryMaxBackoff)
			s.next = s.now().Add(s.backoff)
			if p.attempts == 1 || p.attempts%10 == 0 {
				s.log.Warn("writing a waiting window to the store failed again", "window", p.describe(), "attempts", p.attempts,
					"waiting", len(s.q), "next_try_in", s.backoff.String(), "err", err)
			}
			return false
		}
		s.m.retries.WithLabelValues("stored").Inc()
		s.log.Info("stored a window after failed store writes", "window", p.describe(), "attempts", p.attempts,
			"waited", s.now().Sub(p.failedAt).Round(time.Millisecond).String(), "still_waiting", len(s.q)-1)
		if p.hasWM {
			s.release(p.wm)
		}
		s.bytes -= p.bytes
		s.q[0] = pendingWrite{}
		s.q = s.q[1:]
		s.publishLocked()
	}
	s.q = nil // drop the drained backing array
	s.backoff = retryMinBackoff
	return true
}

// run retries waiting windows with backoff until ctx ends.
func (s *storeRetry) run(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		s.mu.Lock()
		wait := time.Hour
		if len(s.q) > 0 {
			wait = max(s.next.Sub(s.now()), 0)
		}
		s.mu.Unlock()
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-t.C:
			s.retry(ctx)
		}
	}
}

// retry writes the waiting windows if their backoff has passed.
func (s *storeRetry) retry(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.q) > 0 && !s.now().Before(s.next) {
		s.drainLocked(ctx)
	}
}

// finish makes a last attempt at what still waits, at shutdown, and gives
// up on the rest (counted, logged): its baselines and journal stayed
// behind, so the next start counts it again.
func (s *storeRetry) finish(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.q) == 0 || s.drainLocked(ctx) {
		return
	}
	n := len(s.q)
	for len(s.q) > 0 {
		s.abandonLocked(abandonShutdown)
	}
	s.log.Error("windows still not stored at shutdown; their cumulative increments are counted again and their delta points replayed from the journal at the next start", "windows", n)
}

// publishLocked makes the queue's size readable without mu.
func (s *storeRetry) publishLocked() {
	s.nPending.Store(int64(len(s.q)))
	s.bPending.Store(s.bytes)
	if len(s.q) > 0 {
		s.oldest.Store(s.q[0].failedAt.UnixNano())
	}
}

// pendingStats returns the waiting windows, their estimated bytes and the
// oldest one's first failure, without waiting for a write in progress.
func (s *storeRetry) pendingStats() (int, int64, time.Time) {
	n := s.nPending.Load()
	if n == 0 {
		return 0, 0, time.Time{}
	}
	return int(n), s.bPending.Load(), time.Unix(0, s.oldest.Load())
}

// status is the store's /readyz line: ready unless the waiting windows are
// close to a bound (three quarters), with their count when any wait.
func (s *storeRetry) status() (string, error) {
	n, b, since := s.pendingStats()
	if n == 0 {
		return "", nil
	}
	detail := fmt.Sprintf("%d windows (%.1f MiB) waiting to be stored since %s", n, float64(b)/(1<<20), since.UTC().Format(time.RFC3339))
	if int64(n)*4 >= int64(s.maxWindows)*3 || b*4 >= s.maxBytes*3 {
		return detail, errors.New("store writes failing; waiting windows close to their bound")
	}
	return detail, nil
}
