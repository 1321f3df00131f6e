// Package sources holds sabaki's inputs: one file per source with its config.
// Pull sources are called by the agent's scheduler; push sources (the OTLP
// receiver) run their own listeners and feed the same pipeline.
//
// sources never imports exporters (and vice versa); both speak the types of
// package metric.
package sources

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/metric"
)

// Source is a pull source. The scheduler calls Collect once per interval with
// a context that carries the per-collection timeout.
//
// Contract:
//   - Collect honours ctx cancellation and returns promptly when it is done.
//   - at is the scheduler's tick time; sources that have no timestamps of their
//     own (a Prometheus text exposition without timestamps) stamp points with
//     it rather than calling time.Now.
//   - Collect is never called concurrently for the same Source.
//   - On a partial failure Collect returns the data it has and a *PartialError;
//     the agent keeps the data and counts the failure.
type Source interface {
	Name() string
	Collect(ctx context.Context, at time.Time) (metric.Batch, error)
}

// Closer is implemented by pull sources that hold connections; the agent calls
// Close once after the last Collect.
type Closer interface {
	Close() error
}

// PushSource receives data on its own (a listener) and hands it to sink.
//
// Contract:
//   - Start returns once the source is ready to receive (listeners bound), or
//     an error saying what failed (e.g. "listen 127.0.0.1:4317: address already in use").
//   - Shutdown stops accepting new data, waits for in-flight requests until ctx
//     expires, and is safe to call without Start and more than once.
type PushSource interface {
	Name() string
	Start(ctx context.Context, sink metric.Sink) error
	Shutdown(ctx context.Context) error
}

// PartialError reports that a collection failed in part; the returned batch
// holds what succeeded.
type PartialError struct {
	Failed int // how many units (targets, metric types) failed
	Err    error
}

func (e *PartialError) Error() string {
	return fmt.Sprintf("partial failure (%d failed): %v", e.Failed, e.Err)
}

func (e *PartialError) Unwrap() error { return e.Err }

// IsPartial reports whether err is (or wraps) a *PartialError.
func IsPartial(err error) bool {
	var p *PartialError
	return errors.As(err, &p)
}

// Common holds the keys every entry under `sources:` has; each source's config
// struct embeds it with `yaml:",inline"`.
type Common struct {
	Type string `yaml:"type"`
	// Name identifies the source in logs, self-metrics and the store; it
	// defaults to the type.
	Name string `yaml:"name"`
}

// StateStore keeps small per-source state (a read cursor) across restarts; the
// agent's store implements it.
type StateStore interface {
	GetState(ctx context.Context, key string) ([]byte, bool, error)
	PutState(ctx context.Context, key string, value []byte) error
}

// Settings is what the agent hands every source it builds.
type Settings struct {
	Logger *slog.Logger
	// Registerer is where a source registers its self-metrics (sabaki_*).
	Registerer prometheus.Registerer
	// State persists cursors; nil in `sabaki validate`.
	State StateStore
}
