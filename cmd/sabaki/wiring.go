package main

import (
	"time"

	"github.com/sabakiio/sabaki/exporters"
	"github.com/sabakiio/sabaki/sources"
)

// This file is the one explicit list of source and exporter types: adding a
// type is adding one entry here (no init() registration). Each entry builds a
// default config (decoded over by the loader, so every field has a default),
// and builds the component from the decoded config.

// sourceType is how the agent builds one `type:` under `sources:`.
type sourceType struct {
	// newConfig returns a pointer to the type's default config.
	newConfig func() any
	// build returns a sources.Source (pull) or a sources.PushSource (push).
	build func(cfg any, set sources.Settings) (any, error)
	// interval returns the collection interval and timeout of a pull source;
	// nil for push sources.
	interval func(cfg any) (interval, timeout time.Duration)
}

// exporterType is how the agent builds one `type:` under `exporters:`.
type exporterType struct {
	newConfig func() any
	build     func(cfg any, set exporters.Settings) (exporters.Exporter, error)
}

func sourceTypes() map[string]sourceType {
	return map[string]sourceType{
		"self": {
			newConfig: func() any { c := sources.DefaultSelfConfig(); return &c },
			build: func(cfg any, set sources.Settings) (any, error) {
				return sources.NewSelf(*cfg.(*sources.SelfConfig), set)
			},
			interval: func(cfg any) (time.Duration, time.Duration) {
				c := cfg.(*sources.SelfConfig)
				return c.Interval.D(), c.Timeout.D()
			},
		},
		"prometheus": {
			newConfig: func() any { c := sources.DefaultPrometheusConfig(); return &c },
			build: func(cfg any, set sources.Settings) (any, error) {
				return sources.NewPrometheus(*cfg.(*sources.PrometheusConfig), set)
			},
			interval: func(cfg any) (time.Duration, time.Duration) {
				c := cfg.(*sources.PrometheusConfig)
				return c.Interval.D(), c.Timeout.D()
			},
		},
		"otlp": {
			newConfig: func() any { c := sources.DefaultOTLPConfig(); return &c },
			build: func(cfg any, set sources.Settings) (any, error) {
				return sources.NewOTLP(*cfg.(*sources.OTLPConfig), set)
			},
		},
		"cloudmonitoring": {
			newConfig: func() any { c := sources.DefaultCloudMonitoringConfig(); return &c },
			build: func(cfg any, set sources.Settings) (any, error) {
				return sources.NewCloudMonitoring(*cfg.(*sources.CloudMonitoringConfig), set)
			},
			interval: func(cfg any) (time.Duration, time.Duration) {
				c := cfg.(*sources.CloudMonitoringConfig)
				return c.Interval.D(), c.Timeout.D()
			},
		},
	}
}

func exporterTypes() map[string]exporterType {
	return map[string]exporterType{
		"console": {
			newConfig: func() any { c := exporters.DefaultConsoleConfig(); return &c },
			build: func(cfg any, set exporters.Settings) (exporters.Exporter, error) {
				return exporters.NewConsole(*cfg.(*exporters.ConsoleConfig), set)
			},
		},
		"mackerel": {
			newConfig: func() any { c := exporters.DefaultMackerelConfig(); return &c },
			build: func(cfg any, set exporters.Settings) (exporters.Exporter, error) {
				return exporters.NewMackerel(*cfg.(*exporters.MackerelConfig), set)
			},
		},
		"otlp": {
			newConfig: func() any { c := exporters.DefaultOTLPConfig(); return &c },
			build: func(cfg any, set exporters.Settings) (exporters.Exporter, error) {
				return exporters.NewOTLP(*cfg.(*exporters.OTLPConfig), set)
			},
		},
		"remote_write": {
			newConfig: func() any { c := exporters.DefaultRemoteWriteConfig(); return &c },
			build: func(cfg any, set exporters.Settings) (exporters.Exporter, error) {
				return exporters.NewRemoteWrite(*cfg.(*exporters.RemoteWriteConfig), set)
			},
		},
	}
}
