package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/exporters"
	"github.com/sabakiio/sabaki/metric"
)

// Give-up reasons of sabaki_agent_enqueue_windows_abandoned_total{reason}
// besides the store retry queue's max_windows, max_bytes and shutdown.
const (
	abandonRemoved = "removed" // the exporter left the config (reload)
)

// errEnqueueWaiting: the window was not offered to the exporter's outbox
// because earlier windows for it still wait.
var errEnqueueWaiting = errors.New("waiting behind earlier windows the exporter's outbox has not taken yet")

// enqueueRetry keeps, per exporter, the closed windows its outbox refused
// (a full disk, an I/O error) and offers them again until the outbox takes
// them, so that an exporter gets every window once the disk has room again,
// without a restart. It is the exporters' side of storeRetry and follows
// its design.
//
// The contract, and why:
//
//   - Only a write failure is retried: an error wrapping exporters.ErrWrite
//     or an *fs.PathError (open, write, fsync of a segment: ENOSPC, EFBIG,
//     EIO, EDQUOT). The
//     outbox's other refusals are final and counted by the outbox itself
//     (a window larger than max_bytes: dropped{reason="bytes"}) or are a
//     shutdown (closed); offering them again would not change the answer.
//   - Per exporter, windows reach the outbox in the order they were handed
//     over. While one waits, every later window for that exporter waits
//     behind it: the outbox sends in queue order, and its exporters care
//     about order (remote_write accumulates cumulative totals from deltas
//     and a receiver refuses samples older than the ones it holds;
//     Mackerel's minute journal merges a minute's windows as they come).
//     Exporters do not wait for each other.
//   - A waiting window is offered again when the next window is handed
//     over, and between windows with a backoff (1 s doubling to 30 s, per
//     exporter).
//   - Offering twice is harmless: the outbox drops a window it already
//     accepted with the same or a later revision (its marks). So a window
//     the restart replay (replayCommitted) or a reload's replay queued from
//     the store meanwhile is dropped from here without being sent twice.
//   - What waits is bounded per exporter like the store retry queue:
//     maxPendingWindows and maxPendingBytes (estimated by windowBytes; the
//     windows are the very ones the store retry queue may also hold, so
//     the memory is shared, not doubled). Age needs no bound of its own:
//     the outbox drops, counts and logs a window older than its max_age
//     when it is offered. Past a bound the oldest window is given up:
//     logged with the reason and counted in
//     sabaki_agent_enqueue_windows_abandoned_total{exporter,reason}.
//   - At shutdown what still waits gets one more offer; the rest is given
//     up (reason "shutdown"). What the store holds of it is replayed to the
//     outbox at the next start (replayCommitted, within max_age).
//
// Locking: the daemon calls Offer and retry with d.mu held, then mu is
// taken (d.mu before mu, always). Readers of the sizes (/readyz, /metrics)
// take only statMu, never waiting for an fsync.
type enqueueRetry struct {
	log *slog.Logger
	now func() time.Time

	maxWindows int
	maxBytes   int64

	mu   sync.Mutex
	qs   map[string]*enqueueQueue // by exporter name
	wake chan struct{}            // a window started waiting

	statMu sync.Mutex
	stats  map[string]enqueueStat

	m enqueueRetryMetrics
}

type enqueueQueue struct {
	q       []pendingEnqueue
	bytes   int64
	backoff time.Duration
	next    time.Time // earliest background retry
}

type enqueueStat struct {
	n      int
	bytes  int64
	oldest time.Time
}

type pendingEnqueue struct {
	w        *metric.Window
	bytes    int64
	failedAt time.Time
	attempts int
}

type enqueueRetryMetrics struct {
	handErrors *prometheus.CounterVec
	pending    *prometheus.GaugeVec
	pendingB   *prometheus.GaugeVec
	retries    *prometheus.CounterVec
	abandoned  *prometheus.CounterVec
}

// newEnqueueRetry builds the queue and registers its metrics on reg (nil:
// not registered). handErrors is the daemon's
// sabaki_agent_enqueue_errors_total{exporter}.
func newEnqueueRetry(log *slog.Logger, reg prometheus.Registerer, handErrors *prometheus.CounterVec) *enqueueRetry {
	r := &enqueueRetry{log: log, now: time.Now, maxWindows: maxPendingWindows, maxBytes: maxPendingBytes,
		qs: map[string]*enqueueQueue{}, wake: make(chan struct{}, 1), stats: map[string]enqueueStat{}}
	r.m = enqueueRetryMetrics{
		handErrors: handErrors,
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sabaki_agent_enqueue_pending_windows",
			Help: "Closed windows waiting in memory for an exporter's outbox, which refused them (a full disk) or an earlier one."}, []string{"exporter"}),
		pendingB: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sabaki_agent_enqueue_pending_bytes",
			Help: "Estimated memory of the windows waiting for an exporter's outbox (shared with the windows waiting for the store)."}, []string{"exporter"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_agent_enqueue_retries_total",
			Help: "Offers of waiting windows to an exporter's outbox, by result (queued, failed)."}, []string{"exporter", "result"}),
		abandoned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_agent_enqueue_windows_abandoned_total",
			Help: "Windows given up on after an exporter's outbox refused them, by reason (max_windows, max_bytes, shutdown, removed)."}, []string{"exporter", "reason"}),
	}
	if reg != nil {
		reg.MustRegister(r.m.pending, r.m.pendingB, r.m.retries, r.m.abandoned)
	}
	return r
}

// retryableEnqueue reports whether an outbox's Enqueue error is a write
// failure worth offering the window again for (see enqueueRetry).
func retryableEnqueue(err error) bool {
	var pe *fs.PathError
	return errors.Is(err, exporters.ErrWrite) || errors.As(err, &pe)
}

// add registers an exporter's metric series (zero), so that a dashboard
// sees them before anything fails.
func (r *enqueueRetry) add(name string) {
	for _, res := range []string{"queued", "failed"} {
		r.m.retries.WithLabelValues(name, res)
	}
	for _, reason := range []string{abandonMaxWindows, abandonMaxBytes, abandonShutdown, abandonRemoved} {
		r.m.abandoned.WithLabelValues(name, reason)
	}
	r.m.pending.WithLabelValues(name)
	r.m.pendingB.WithLabelValues(name)
}

// Offer hands w to q (the outbox of exporter name) after every window
// still waiting for it. A window the outbox refuses with a write error,
// or one that has to wait behind earlier ones, is kept and offered again;
// the error says why it was not queued now. Another refusal is returned
// and w is not kept. The caller holds d.mu (q stays valid).
func (r *enqueueRetry) Offer(name string, q exportQueue, w *metric.Window) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	eq := r.qs[name]
	if eq != nil && len(eq.q) > 0 {
		r.drainLocked(name, eq, q)
	}
	if eq != nil && len(eq.q) > 0 {
		r.m.handErrors.WithLabelValues(name).Inc()
		r.keepLocked(name, w)
		return errEnqueueWaiting
	}
	err := q.Enqueue(w)
	if err == nil {
		return nil
	}
	r.m.handErrors.WithLabelValues(name).Inc()
	if !retryableEnqueue(err) {
		return err
	}
	r.keepLocked(name, w)
	return err
}

// keepLocked appends w to name's waiting windows, then applies the bounds.
func (r *enqueueRetry) keepLocked(name string, w *metric.Window) {
	eq := r.qs[name]
	if eq == nil {
		eq = &enqueueQueue{}
		r.qs[name] = eq
	}
	p := pendingEnqueue{w: w, bytes: windowBytes(w), failedAt: r.now()}
	eq.q = append(eq.q, p)
	eq.bytes += p.bytes
	if len(eq.q) == 1 {
		eq.backoff = retryMinBackoff
		eq.next = r.now().Add(eq.backoff)
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
	for len(eq.q) > 0 {
		switch {
		case len(eq.q) > r.maxWindows:
			r.abandonLocked(name, eq, abandonMaxWindows)
		case eq.bytes > r.maxBytes && len(eq.q) > 1:
			r.abandonLocked(name, eq, abandonMaxBytes)
		default:
			r.publishLocked(name, eq)
			return
		}
	}
	r.publishLocked(name, eq)
}

// abandonLocked gives up the oldest window waiting for name's outbox.
func (r *enqueueRetry) abandonLocked(name string, eq *enqueueQueue, reason string) {
	p := eq.q[0]
	eq.q[0] = pendingEnqueue{}
	eq.q = eq.q[1:]
	eq.bytes -= p.bytes
	r.publishLocked(name, eq)
	r.m.abandoned.WithLabelValues(name, reason).Inc()
	r.log.Error("gave up queueing a window for an exporter after its outbox refused it; the exporter does not get it from this process (a restart replays it from the store, within max_age)",
		"exporter", name, "window", p.w.Start, "revision", p.w.Revision, "series", len(p.w.Series), "reason", reason,
		"attempts", p.attempts, "waiting_since", p.failedAt)
}

// drainLocked offers name's waiting windows to q in order until one is
// refused with a write error or none is left. It reports whether none is
// left.
func (r *enqueueRetry) drainLocked(name string, eq *enqueueQueue, q exportQueue) bool {
	for len(eq.q) > 0 {
		p := &eq.q[0]
		err := q.Enqueue(p.w)
		p.attempts++
		if err != nil && retryableEnqueue(err) {
			r.m.retries.WithLabelValues(name, "failed").Inc()
			eq.backoff = min(2*eq.backoff, retryMaxBackoff)
			eq.next = r.now().Add(eq.backoff)
			if p.attempts == 1 || p.attempts%10 == 0 {
				r.log.Warn("queueing a waiting window for an exporter failed again", "exporter", name, "window", p.w.Start,
					"attempts", p.attempts, "waiting", len(eq.q), "next_try_in", eq.backoff.String(), "err", err)
			}
			return false
		}
		if err != nil {
			// Refused for good now (the outbox counted and logged it).
			r.log.Error("gave up queueing a waiting window for an exporter: its outbox refused it for good", "exporter", name,
				"window", p.w.Start, "attempts", p.attempts, "err", err)
		} else {
			r.m.retries.WithLabelValues(name, "queued").Inc()
			r.log.Info("queued a window for an exporter after its outbox refused it", "exporter", name, "window", p.w.Start,
				"revision", p.w.Revision, "attempts", p.attempts, "waited", r.now().Sub(p.failedAt).Round(time.Millisecond).String(),
				"still_waiting", len(eq.q)-1)
		}
		eq.bytes -= p.bytes
		eq.q[0] = pendingEnqueue{}
		eq.q = eq.q[1:]
		r.publishLocked(name, eq)
	}
	eq.q = nil // drop the drained backing array
	eq.backoff = retryMinBackoff
	return true
}

// run offers waiting windows again with backoff until ctx ends; each(fn)
// calls fn for every running exporter's queue, holding d.mu.
func (r *enqueueRetry) run(ctx context.Context, each func(fn func(name string, q exportQueue))) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		r.mu.Lock()
		wait := time.Hour
		for _, eq := range r.qs {
			if len(eq.q) > 0 {
				wait = min(wait, max(eq.next.Sub(r.now()), 0))
			}
		}
		r.mu.Unlock()
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-t.C:
			each(r.retry)
		}
	}
}

// retry offers name's waiting windows to q if their backoff has passed.
func (r *enqueueRetry) retry(name string, q exportQueue) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if eq := r.qs[name]; eq != nil && len(eq.q) > 0 && !r.now().Before(eq.next) {
		r.drainLocked(name, eq, q)
	}
}

// finish makes a last offer of what waits for name's outbox, at shutdown,
// and gives up the rest (counted, logged).
func (r *enqueueRetry) finish(name string, q exportQueue) {
	r.mu.Lock()
	defer r.mu.Unlock()
	eq := r.qs[name]
	if eq == nil || len(eq.q) == 0 || r.drainLocked(name, eq, q) {
		return
	}
	n := len(eq.q)
	for len(eq.q) > 0 {
		r.abandonLocked(name, eq, abandonShutdown)
	}
	r.log.Error("windows still not queued for an exporter at shutdown; the next start replays what the store holds of them (within max_age)",
		"exporter", name, "windows", n)
}

// prune gives up what waits for exporters no longer configured (a reload
// removed them).
func (r *enqueueRetry) prune(keep func(name string) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, eq := range r.qs {
		if keep(name) {
			continue
		}
		for len(eq.q) > 0 {
			r.abandonLocked(name, eq, abandonRemoved)
		}
		delete(r.qs, name)
		r.statMu.Lock()
		delete(r.stats, name)
		r.statMu.Unlock()
	}
}

// publishLocked makes name's queue size readable without mu.
func (r *enqueueRetry) publishLocked(name string, eq *enqueueQueue) {
	st := enqueueStat{n: len(eq.q), bytes: eq.bytes}
	if len(eq.q) > 0 {
		st.oldest = eq.q[0].failedAt
	}
	r.statMu.Lock()
	r.stats[name] = st
	r.statMu.Unlock()
	r.m.pending.WithLabelValues(name).Set(float64(st.n))
	r.m.pendingB.WithLabelValues(name).Set(float64(st.bytes))
}

// pending returns the windows waiting for name's outbox.
func (r *enqueueRetry) pending(name string) int {
	r.statMu.Lock()
	defer r.statMu.Unlock()
	return r.stats[name].n
}

// status is the /readyz line of the windows waiting for outboxes: ready
// unless an exporter's waiting windows are close to a bound (three
// quarters), as the store retry queue's line.
func (r *enqueueRetry) status() (string, error) {
	r.statMu.Lock()
	names := make([]string, 0, len(r.stats))
	for name, st := range r.stats {
		if st.n > 0 {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var parts, full []string
	for _, name := range names {
		st := r.stats[name]
		parts = append(parts, fmt.Sprintf("%s: %d windows (%.1f MiB) waiting for the outbox since %s",
			name, st.n, float64(st.bytes)/(1<<20), st.oldest.UTC().Format(time.RFC3339)))
		if int64(st.n)*4 >= int64(r.maxWindows)*3 || st.bytes*4 >= r.maxBytes*3 {
			full = append(full, name)
		}
	}
	r.statMu.Unlock()
	if len(parts) == 0 {
		return "", nil
	}
	detail := strings.Join(parts, "; ")
	if len(full) > 0 {
		return detail, fmt.Errorf("outbox writes failing for %s; waiting windows close to their bound", strings.Join(full, ", "))
	}
	return detail, nil
}
