package main

import (
	"context"
	"log/slog"

	"github.com/sabakiio/sabaki/agent"
	"github.com/sabakiio/sabaki/metric"
)

// detectResource returns the resource attributes every series gets: the
// configured detectors, then the static attributes. Detection never fails
// the start (the config loader already rejected unknown detectors).
func detectResource(ctx context.Context, cfg agent.ResourceConfig, log *slog.Logger) metric.Attrs {
	attrs, err := agent.DetectResource(ctx, cfg, agent.DetectSettings{Logger: log.With("component", "resource")})
	if err != nil {
		log.Warn("resource detection", "err", err)
		return metric.NewAttrs(cfg.Attributes)
	}
	return attrs
}
