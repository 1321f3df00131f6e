package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// runAgent implements `sabaki run`: load the config, start the daemon, and
// serve signals until SIGTERM or SIGINT.
func runAgent(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "config `FILE` (default: the embedded default config)")
	level := fs.String("log-level", "info", "log `level`: debug, info, warn, error")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: sabaki run [-config FILE] [-log-level LEVEL]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sabaki run: unexpected argument %q (did you mean -config %s?)\n", fs.Arg(0), fs.Arg(0))
		return 2
	}
	logger, err := newLogger(stderr, *level)
	if err != nil {
		fmt.Fprintln(stderr, "sabaki run:", err)
		return 2
	}

	cfg, ps := loadConfig(*cfgPath)
	if len(ps) > 0 {
		name := *cfgPath
		if name == "" {
			name = defaultConfigName
		}
		for _, p := range ps {
			logger.Error("invalid config: " + formatProblem(name, p))
		}
		return 1
	}

	// Signals are subscribed before anything starts, so a SIGTERM during
	// startup is not lost (it is handled once startup finished or failed).
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := startDaemon(ctx, cfg, *cfgPath, daemonOptions{Logger: logger, Stdout: stdout})
	if err != nil {
		logger.Error("sabaki could not start: " + err.Error())
		return 1
	}
	notify := newNotifier(os.Getenv)
	if err := notify.ready(); err != nil {
		logger.Warn("telling systemd we are ready", "err", err)
	}
	stopWatchdog := make(chan struct{})
	go notify.watchdogLoop(stopWatchdog, d.healthy)
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			if d.reload() {
				notify.status("running (config reloaded " + time.Now().UTC().Format(time.RFC3339) + ")")
			} else {
				notify.status("running (last reload rejected " + time.Now().UTC().Format(time.RFC3339) + ", see the log)")
			}
			continue
		}
		logger.Info("shutting down", "signal", sig.String())
		break
	}
	close(stopWatchdog)
	notify.stopping()
	if err := d.shutdown(); err != nil {
		logger.Error("shutdown incomplete: " + err.Error())
		if errors.Is(err, errDrainTimeout) {
			return 0 // unsent windows stay in the outboxes for the next start
		}
		return 1
	}
	logger.Info("stopped")
	return 0
}
