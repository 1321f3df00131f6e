// Package exporters holds sabaki's outputs: one file per exporter with its
// config, and the durable outbox that every exporter sends from.
//
// exporters never imports sources (and vice versa); both speak the types of
// package metric.
package exporters

import (
	"context"
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/metric"
)

// Exporter sends closed windows to one destination.
//
// Contract:
//   - Export is called by one goroutine at a time (the exporter's outbox), in
//     window order; a window may arrive again with a higher Revision when late
//     points updated it, and after a restart the last in-flight window may be
//     re-sent. Destinations that keep the last value per slot (Mackerel)
//     absorb both.
//   - Export returns nil when the destination accepted the window, an error
//     wrapped with Permanent when retrying cannot help (HTTP 4xx other than
//     429, invalid argument), and any other error when a retry may succeed.
//   - Export must not keep references to w after it returns.
//   - Shutdown flushes what the exporter buffers itself, honours ctx's
//     deadline, and is safe to call more than once.
type Exporter interface {
	Name() string
	Export(ctx context.Context, w *metric.Window) error
	Shutdown(ctx context.Context) error
}

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying; the outbox drops the window,
// logs it and counts the drop.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err: err}
}

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// RetryAfter is implemented by errors that carry a server's Retry-After hint.
type RetryAfter interface {
	RetryAfter() (seconds float64, ok bool)
}

// Common holds the keys every entry under `exporters:` has; each exporter's
// config struct embeds it with `yaml:",inline"`.
type Common struct {
	Type string `yaml:"type"`
	// Name identifies the exporter in logs, self-metrics and its outbox
	// directory; it defaults to the type.
	Name string `yaml:"name"`
}

// Settings is what the agent hands every exporter it builds.
type Settings struct {
	Logger *slog.Logger
	// Registerer is where an exporter registers its self-metrics (sabaki_*).
	Registerer prometheus.Registerer
	// DataDir is the agent's data directory; an exporter's outbox lives in
	// DataDir/outbox/<name>.
	DataDir string
}
