package main

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/exporters"
	"github.com/sabakiio/sabaki/metric"
)

// exportQueue is what the daemon hands closed windows to, one per exporter:
// an *exporters.Outbox (durable, for every exporter whose config has an
// `outbox:` section) or a memQueue (the console exporter: replaying old
// windows to a terminal after a restart helps nobody).
type exportQueue interface {
	Name() string
	Enqueue(w *metric.Window) error
	Run(ctx context.Context) error
	Shutdown(ctx context.Context) error
}

// outboxConfigOf returns the exporters.OutboxConfig field of an exporter's
// config, if it has one.
func outboxConfigOf(cfg any) (exporters.OutboxConfig, bool) {
	v := reflect.ValueOf(cfg)
	for v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return exporters.OutboxConfig{}, false
	}
	for i := 0; i < v.NumField(); i++ {
		if oc, ok := v.Field(i).Interface().(exporters.OutboxConfig); ok && v.Type().Field(i).IsExported() {
			return oc, true
		}
	}
	return exporters.OutboxConfig{}, false
}

// memQueue sends windows to an exporter from a bounded in-memory channel;
// when the exporter cannot keep up, new windows are dropped and counted.
type memQueue struct {
	exp     exporters.Exporter
	log     *slog.Logger
	ch      chan *metric.Window
	dropped prometheus.Counter
	sent    prometheus.Counter

	once    sync.Once
	started atomic.Bool
	done    chan struct{}
}

func newMemQueue(exp exporters.Exporter, log *slog.Logger, reg prometheus.Registerer) *memQueue {
	dropped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_memqueue_dropped_windows_total",
		Help: "Windows an in-memory exporter queue (console) dropped because the exporter could not keep up or failed.",
	}, []string{"exporter"})
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sabaki_exporter_memqueue_sent_windows_total",
		Help: "Windows an in-memory exporter queue (console) handed to its exporter successfully.",
	}, []string{"exporter"})
	dropped = registerOrExisting(reg, dropped)
	sent = registerOrExisting(reg, sent)
	return &memQueue{
		exp: exp, log: log, ch: make(chan *metric.Window, 16),
		dropped: dropped.WithLabelValues(exp.Name()), sent: sent.WithLabelValues(exp.Name()),
		done: make(chan struct{}),
	}
}

// registerOrExisting registers c, or returns the collector already registered
// under the same descriptors (several queues share one vector).
func registerOrExisting[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}

func (q *memQueue) Name() string { return q.exp.Name() }

func (q *memQueue) Enqueue(w *metric.Window) error {
	select {
	case q.ch <- w:
		return nil
	default:
		q.dropped.Inc()
		return fmt.Errorf("exporter %s: in-memory queue full, window %s dropped", q.exp.Name(), w.Start.UTC().Format("15:04:05"))
	}
}

// Run sends until ctx ends or Shutdown closed the queue and it is drained.
func (q *memQueue) Run(ctx context.Context) error {
	q.started.Store(true)
	defer close(q.done)
	for {
		select {
		case <-ctx.Done():
			return nil
		case w, ok := <-q.ch:
			if !ok {
				return nil
			}
			if err := q.exp.Export(ctx, w); err != nil {
				q.dropped.Inc()
				q.log.Warn("export failed; window dropped", "exporter", q.exp.Name(), "window", w.Start, "err", err)
				continue
			}
			q.sent.Inc()
		}
	}
}

// Shutdown closes the queue, waits for Run to send what is queued (until ctx
// ends) and shuts the exporter down. Enqueue must not be called after.
func (q *memQueue) Shutdown(ctx context.Context) error {
	q.once.Do(func() { close(q.ch) })
	if q.started.Load() {
		select {
		case <-q.done:
		case <-ctx.Done():
		}
	}
	return q.exp.Shutdown(ctx)
}
