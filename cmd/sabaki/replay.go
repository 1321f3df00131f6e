package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/sabakiio/sabaki/agent"
	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/exporters"
	"github.com/sabakiio/sabaki/metric"
)

// replayCommitted hands each outbox the windows the store committed that the
// outbox never accepted: onWindowState stores a window (with the baselines
// that advance with it) and then enqueues it, so a kill -9 between the two
// leaves the window in the store only, as does a stop while windows an
// outbox refused (disk full) still waited in memory (enqueueretry.go). The
// daemon calls it after opening the store and before the pipeline runs, and
// for exporters a reload restarted (the windows stored while they were
// stopped).
//
// With enq (nil in tests without one) the windows go through enq.Offer: one
// the outbox refuses with a write error (the disk still full at start)
// waits in memory and is offered again, with every later one for that
// exporter behind it, instead of staying unsent until the next restart.
//
// Only windows within the outbox's max_age and still in the store's head
// table (about Grace, 10 min, after their chunk ends) are replayed; a window
// the outbox accepted with the same or a later revision is not, and Enqueue
// drops it anyway if it comes twice. A Fresh outbox (new, or kept by a sabaki
// without marks) is not sent the store's history: what the store holds is
// marked accepted.
//
// Failures are logged, not returned: the agent starts without the replay
// rather than not at all.
func replayCommitted(ctx context.Context, st *store.Store, exps []*runningExporter, hc agent.HistogramConfig, enq *enqueueRetry, log *slog.Logger) {
	type target struct {
		e     *runningExporter
		ob    *exporters.Outbox
		from  time.Time
		fresh bool
		n     int
		kept  int // refused (a write error) or behind a refused one: waiting in enq
	}
	began := time.Now()
	var ts []*target
	from := began
	for _, e := range exps {
		ob, ok := outboxOf(e.q)
		if !ok {
			continue
		}
		oc, _ := outboxConfigOf(e.cfg)
		t := &target{e: e, ob: ob, from: began.Add(-oc.MaxAge.D()), fresh: ob.Fresh()}
		ts = append(ts, t)
		if t.from.Before(from) {
			from = t.from
		}
	}
	if len(ts) == 0 {
		return
	}
	keys, err := st.WindowKeys(ctx, from)
	if err != nil {
		log.Error("listing stored windows to replay to exporters failed; a window a crash kept from an exporter stays unsent", "err", err)
		return
	}
	for _, t := range ts {
		if !t.fresh {
			continue
		}
		marks := make([]exporters.WindowKey, len(keys))
		for i, k := range keys {
			marks[i] = exporters.WindowKey(k)
		}
		if err := t.ob.MarkAccepted(marks); err != nil {
			log.Error("marking stored windows as sent failed; they may be sent to this exporter after the next restart", "exporter", t.e.name, "err", err)
		}
	}
	opt := store.ReadOptions{HistMaxSize: hc.MaxSize, HistMaxScale: hc.MaxScale}
	for _, k := range keys {
		var w *metric.Window
		for _, t := range ts {
			key := exporters.WindowKey(k)
			if t.fresh || k.Start.Before(t.from) || t.ob.Accepted(key) {
				continue
			}
			if w == nil {
				if w, err = st.ReadWindow(ctx, k.Start, opt); err != nil {
					log.Error("reading a stored window back failed; it is not replayed", "window", k.Start, "err", err)
					break
				}
				if w == nil {
					break // compacted meanwhile
				}
			}
			var err error
			if enq != nil {
				err = enq.Offer(t.e.name, t.e.q, w)
			} else {
				err = t.ob.Enqueue(w)
			}
			if enq != nil && (errors.Is(err, errEnqueueWaiting) || retryableEnqueue(err)) {
				if t.kept == 0 {
					log.Error("replaying a stored window to an exporter failed; kept in memory and offered again until the outbox takes it",
						"exporter", t.e.name, "window", k.Start, "err", err)
				}
				t.kept++
				continue
			}
			if err != nil {
				log.Error("replaying a stored window to an exporter failed", "exporter", t.e.name, "window", k.Start, "err", err)
				continue
			}
			t.n++
		}
	}
	for _, t := range ts {
		if t.n > 0 {
			log.Info("replayed stored windows the exporter had not received (the agent stopped between storing and queueing them)",
				"exporter", t.e.name, "windows", t.n, "took", time.Since(began).Round(time.Millisecond).String())
		}
		if t.kept > 0 {
			log.Warn("stored windows the exporter had not received wait in memory: its outbox refused them", "exporter", t.e.name, "windows", t.kept)
		}
	}
}

// outboxOf returns the outbox behind an exporter's queue, if it has one (a
// test's fault hook wraps one and says so with an outbox method).
func outboxOf(q exportQueue) (*exporters.Outbox, bool) {
	switch v := q.(type) {
	case *exporters.Outbox:
		return v, true
	case interface{ outbox() *exporters.Outbox }:
		return v.outbox(), true
	}
	return nil, false
}
