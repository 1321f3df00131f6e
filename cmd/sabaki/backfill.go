package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/sabakiio/sabaki/agent"
	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/internal/timerange"
	"github.com/sabakiio/sabaki/metric"
	"github.com/sabakiio/sabaki/sources"
)

// backfiller is implemented by sources that can read history they still
// hold (the Cloud Monitoring source: about six weeks).
type backfiller interface {
	Backfill(ctx context.Context, from, to time.Time, emit func(metric.Batch) error) error
}

const backfillUsage = `Usage: sabaki backfill -source NAME [-config FILE] [-from 42d] [-to now] [-chunk 6h]

Imports the history a source still holds (Cloud Monitoring keeps about six
weeks) into the store, aggregated into windows and rolled up like live data.
The daemon must be stopped (the data directory is locked while it runs).
Exporters are not involved: they send only what the running agent produces.

`

// runBackfill implements `sabaki backfill`: it reads (from, to] from the
// named source in chunks, runs each chunk through the pipeline (same rules,
// resource attributes and window as the daemon) and writes the closed
// windows to the store, with a progress line on a terminal.
func runBackfill(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("backfill", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, backfillUsage); fs.PrintDefaults() }
	cfgPath := fs.String("config", "", "config file (default: the embedded default config)")
	name := fs.String("source", "", "name of the source to backfill (its `name`, or its type when unnamed)")
	fromS := fs.String("from", "42d", "start: a duration back from now (42d), an RFC 3339 time or Unix seconds")
	toS := fs.String("to", "now", "end, same forms as -from")
	chunkS := fs.String("chunk", "6h", "history read and aggregated per step (a multiple of agent.window)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *name == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	log, err := newLogger(stderr, *level)
	if err != nil {
		fmt.Fprintf(stderr, "sabaki backfill: %v\n", err)
		return 2
	}
	chunk, err := config.ParseDuration(*chunkS)
	if err != nil || chunk <= 0 {
		fmt.Fprintf(stderr, "sabaki backfill: -chunk %q: must be a positive duration\n", *chunkS)
		return 2
	}
	now := time.Now()
	from, err := timerange.Parse(*fromS, now)
	if err != nil {
		fmt.Fprintf(stderr, "sabaki backfill: -from: %v\n", err)
		return 2
	}
	to, err := timerange.Parse(*toS, now)
	if err != nil {
		fmt.Fprintf(stderr, "sabaki backfill: -to: %v\n", err)
		return 2
	}

	cfg, problems := loadConfig(*cfgPath)
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(stderr, formatProblem(configName(*cfgPath), p))
		}
		return 1
	}
	var entry *sourceEntry
	var names []string
	for i := range cfg.Sources {
		names = append(names, cfg.Sources[i].Name)
		if cfg.Sources[i].Name == *name {
			entry = &cfg.Sources[i]
		}
	}
	if entry == nil {
		fmt.Fprintf(stderr, "sabaki backfill: no source named %q in %s (sources: %v)\n", *name, configName(*cfgPath), names)
		return 1
	}
	window := cfg.Agent.Window.D()
	if chunk%window != 0 {
		fmt.Fprintf(stderr, "sabaki backfill: -chunk %s must be a multiple of agent.window (%s)\n", chunk, window)
		return 2
	}
	from, to = alignTime(from, window), alignTime(to, window)
	if !from.Before(to) {
		fmt.Fprintf(stderr, "sabaki backfill: -from %s is not before -to %s\n", from.Format(time.RFC3339), to.Format(time.RFC3339))
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := backfill(ctx, cfg, entry, from, to, chunk, log, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "sabaki backfill: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "backfilled source %s from %s to %s: %d points, %d windows written, %d chunks with errors\n",
		entry.Name, from.Format(time.RFC3339), to.Format(time.RFC3339), res.points, res.windows, res.failedChunks)
	if res.failedChunks > 0 {
		return 1
	}
	return 0
}

type backfillResult struct {
	points, windows, failedChunks int
}

// backfill does the work of runBackfill once the flags and config are read.
func backfill(ctx context.Context, cfg *Config, entry *sourceEntry, from, to time.Time, chunk time.Duration,
	log *slog.Logger, progress io.Writer) (backfillResult, error) {
	var res backfillResult
	t, ok := sourceTypes()[entry.Type]
	if !ok {
		return res, fmt.Errorf("source %s: unknown type %s", entry.Name, entry.Type)
	}
	built, err := t.build(entry.Config, sources.Settings{Logger: log.With("source", entry.Name)})
	if err != nil {
		return res, fmt.Errorf("source %s: %w", entry.Name, err)
	}
	if c, ok := built.(sources.Closer); ok {
		defer c.Close()
	}
	bf, ok := built.(backfiller)
	if !ok {
		return res, fmt.Errorf("source %s (type %s) holds no history to backfill", entry.Name, entry.Type)
	}

	dataDir := cfg.Agent.DataDir
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return res, fmt.Errorf("creating data directory: %w", err)
	}
	lock, err := lockDataDir(dataDir)
	if err != nil {
		return res, err
	}
	defer lock.release()
	st, err := store.Open(store.Dir(dataDir), store.Options{Tiers: store.Tiers(cfg.Retention), Logger: log.With("component", "store")})
	if err != nil {
		return res, fmt.Errorf("opening the store in %s: %w", dataDir, err)
	}
	defer st.Close()

	pcfg := pipelineConfig(cfg, detectResource(ctx, cfg.Resource, log))
	if res, err = importHistory(ctx, bf, st, pcfg, from, to, chunk, entry.Name, log, progress); err != nil {
		return res, err
	}
	// Roll the imported windows up into the coarser tiers now.
	if err := st.Maintain(ctx, time.Now()); err != nil {
		return res, fmt.Errorf("rolling up: %w", err)
	}
	return res, nil
}

// alignTime rounds t down to a multiple of d since the Unix epoch (windows
// are aligned that way).
func alignTime(t time.Time, d time.Duration) time.Time {
	ns := t.UnixNano()
	r := ns % int64(d)
	if r < 0 {
		r += int64(d)
	}
	return time.Unix(0, ns-r).UTC()
}

// windowWriter is where imported windows go (*store.Store).
type windowWriter interface {
	Write(ctx context.Context, w *metric.Window) error
}

// importHistory reads (from, to] from bf in chunks, runs each chunk through a
// pipeline built from pcfg on a clock that follows the chunks, and writes
// every window to st. At the end of a chunk all its windows are closed
// (Flush); the lateness covers a whole chunk so no point of it is dropped as
// too late. The daemon can call it with its own open store to fill a gap
// longer than agent.lateness (the live pipeline drops older points).
// A progress line goes to progress when it is a terminal.
func importHistory(ctx context.Context, bf backfiller, st windowWriter, pcfg agent.PipelineConfig, from, to time.Time,
	chunk time.Duration, name string, log *slog.Logger, progress io.Writer) (backfillResult, error) {
	var res backfillResult
	var mu sync.Mutex
	clock := from
	var writeErr error
	pcfg.Lateness = chunk + 2*pcfg.Window
	pipe, err := agent.NewPipeline(pcfg, agent.Settings{
		Logger: log.With("component", "pipeline"),
		Now: func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			return clock
		},
		OnWindow: func(w *metric.Window) {
			if err := st.Write(ctx, w); err != nil && writeErr == nil {
				writeErr = err
			}
			res.windows++
		},
		StartTime: from,
	})
	if err != nil {
		return res, err
	}
	defer pipe.Close()

	total := int((to.Sub(from) + chunk - 1) / chunk)
	tty := isTerminal(progress)
	n := 0
	for lo := from; lo.Before(to); lo = lo.Add(chunk) {
		hi := lo.Add(chunk)
		if hi.After(to) {
			hi = to
		}
		mu.Lock()
		clock = hi
		mu.Unlock()
		err := bf.Backfill(ctx, lo, hi, func(b metric.Batch) error {
			for _, s := range b.Series {
				res.points += len(s.Points)
			}
			return pipe.Consume(ctx, b)
		})
		pipe.Flush()
		if ctx.Err() != nil {
			return res, fmt.Errorf("interrupted at %s: %w", lo.Format(time.RFC3339), ctx.Err())
		}
		if err != nil {
			var pe *sources.PartialError
			if !errors.As(err, &pe) {
				return res, fmt.Errorf("reading %s..%s: %w", lo.Format(time.RFC3339), hi.Format(time.RFC3339), err)
			}
			res.failedChunks++
			log.Warn("part of a chunk failed; the rest was imported", "from", lo, "to", hi, "err", err)
		}
		if writeErr != nil {
			return res, fmt.Errorf("writing to the store: %w", writeErr)
		}
		n++
		if tty {
			fmt.Fprintf(progress, "\rbackfill %s: %s %3d%% (%d/%d chunks, %d points, %d windows)",
				name, hi.Format("2006-01-02 15:04"), 100*n/total, n, total, res.points, res.windows)
		}
	}
	if tty {
		fmt.Fprintln(progress)
	}
	return res, nil
}
