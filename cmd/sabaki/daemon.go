package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sabakiio/sabaki/agent"
	"github.com/sabakiio/sabaki/agent/admin"
	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/exporters"
	"github.com/sabakiio/sabaki/metric"
)

// errDrainTimeout reports that shutdown_timeout ended before every exporter
// drained; what is left stays in the outboxes for the next start.
var errDrainTimeout = errors.New("shutdown_timeout reached before every exporter drained")

type daemonOptions struct {
	Logger *slog.Logger
	// Stdout is where the console exporter writes when its output is stdout.
	Stdout io.Writer
}

// daemon is a running agent: store, pipeline, sources, exporters and the
// admin server, wired as the data-flow picture in README.md draws them.
type daemon struct {
	log     *slog.Logger
	stdout  io.Writer
	reg     *prometheus.Registry
	cfgPath string
	start   time.Time

	lock  *dirLock
	admin *admin.Server
	store *store.Store
	pipe  *agent.Pipeline
	// writes holds windows whose store write failed and writes them again
	// (storeretry.go).
	writes *storeRetry
	// enq holds windows an exporter's outbox refused and offers them again
	// (enqueueretry.go).
	enq *enqueueRetry

	runCtx    context.Context
	runCancel context.CancelFunc
	bg        sync.WaitGroup // pipeline Run, maintenance, admin Serve

	// mu guards cfg, exps and srcs, which a reload replaces. OnWindow holds
	// it while handing a window to the exporters, so a queue is never used
	// after it was shut down.
	mu   sync.Mutex
	cfg  *Config
	exps []*runningExporter
	srcs *sourceSet

	ready atomic.Bool

	m daemonMetrics
}

type runningExporter struct {
	name   string
	typ    string
	cfg    any
	q      exportQueue
	reg    *trackingRegisterer
	cancel context.CancelFunc
	done   chan struct{}
}

type daemonMetrics struct {
	reloads      *prometheus.CounterVec
	enqueueFails *prometheus.CounterVec
}

// startDaemon builds and starts everything, in the order exporters → store →
// pipeline → sources, after claiming the data directory and binding the admin
// listener. On any failure it stops what it started and returns one error
// naming what failed; nothing is left running.
func startDaemon(ctx context.Context, cfg *Config, cfgPath string, opt daemonOptions) (_ *daemon, err error) {
	d := &daemon{log: opt.Logger, stdout: opt.Stdout, cfg: cfg, cfgPath: cfgPath, start: time.Now(), reg: prometheus.NewRegistry()}
	if d.stdout == nil {
		d.stdout = os.Stdout
	}
	d.runCtx, d.runCancel = context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		if err != nil {
			d.abort()
		}
	}()
	d.registerSelfMetrics()
	applyMemoryLimit(int64(cfg.Agent.MemoryLimit), os.Getenv, d.log)

	dataDir := cfg.Agent.DataDir
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	if d.lock, err = lockDataDir(dataDir); err != nil {
		return nil, err
	}
	if d.admin, err = admin.Listen(cfg.Agent.AdminListen, admin.Settings{Logger: d.log, Gatherer: d.reg, Registerer: d.reg}); err != nil {
		return nil, fmt.Errorf("agent.admin_listen: %w", err)
	}
	d.admin.AddCheck("agent", func() error {
		if !d.ready.Load() {
			return errors.New("starting")
		}
		return nil
	})
	d.bg.Go(func() {
		if err := d.admin.Serve(); err != nil {
			d.log.Error("admin server stopped", "err", err)
		}
	})

	// Build everything that can fail on its config before starting any of it.
	exps, err := d.buildExporters(cfg)
	if err != nil {
		return nil, err
	}
	srcs, err := d.buildSources(cfg)
	if err != nil {
		discardExporters(exps, d.log)
		return nil, err
	}

	// 1. exporters
	d.exps = exps
	d.startExporters(exps)

	// 2. store
	if d.store, err = store.Open(store.Dir(dataDir), store.Options{Tiers: store.Tiers(cfg.Retention), Logger: d.log.With("component", "store")}); err != nil {
		return nil, fmt.Errorf("opening the store in %s: %w", dataDir, err)
	}
	// Windows whose store write fails wait in memory and are written again;
	// /readyz shows how many (storeretry.go).
	var keep time.Duration
	if len(cfg.Retention) > 0 {
		keep = cfg.Retention[0].Keep.D()
	}
	d.writes = newStoreRetry(d.store, d.log.With("component", "store"), d.reg, keep, func(wm int64) {
		if d.pipe != nil {
			d.pipe.ReleaseJournal(wm)
		}
	})
	d.admin.AddStatus("store", d.writes.status)
	d.admin.AddStatus("exporter queues", d.enq.status)
	d.admin.Handle("GET /api/v1/exemplars", exemplarsHandler(d.store, d.log))
	// Windows stored but not queued for an exporter (kill -9 between the
	// two) are queued now, before new ones (replay.go).
	replayCommitted(d.runCtx, d.store, exps, cfg.Histogram, d.enq, d.log)

	// 3. pipeline
	res := detectResource(d.runCtx, cfg.Resource, d.log)
	// The pipeline saves cumulative baselines with each window, in the
	// window's transaction, and reads them back here: a restart (even after
	// kill -9) goes on counting from the last stored window.
	if d.pipe, err = agent.NewPipeline(pipelineConfig(cfg, res), agent.Settings{
		Logger: d.log.With("component", "pipeline"), Registerer: d.reg,
		OnWindowState: d.onWindowState, StartTime: d.start,
		LoadBaselines: func(fn func(key, value []byte) error) error { return d.store.ScanBaselines(d.runCtx, fn) },
		// Delta points (OTLP delta) acknowledged into open windows are
		// journalled until their window is stored, and replayed here.
		Journal: filepath.Join(dataDir, "journal"),
	}); err != nil {
		return nil, err
	}
	d.bg.Go(func() { d.pipe.Run(d.runCtx) })
	d.bg.Go(d.maintain)
	d.bg.Go(func() { d.writes.run(d.runCtx) })
	d.bg.Go(func() { d.enq.run(d.runCtx, d.eachExporter) })

	// 4. sources
	if err := srcs.start(d.runCtx, d.pipe); err != nil {
		return nil, err
	}
	d.srcs = srcs

	d.ready.Store(true)
	d.log.Info("sabaki started",
		"version", version, "config", configName(cfgPath), "data_dir", dataDir,
		"admin", "http://"+d.admin.Addr().String(), "window", cfg.Agent.Window.String(),
		"sources", len(cfg.Sources), "exporters", len(cfg.Exporters))
	return d, nil
}

func configName(path string) string {
	if path == "" {
		return defaultConfigName
	}
	return path
}

// pipelineConfig maps the config file onto the pipeline's config.
func pipelineConfig(cfg *Config, res metric.Attrs) agent.PipelineConfig {
	return agent.PipelineConfig{
		Window:   cfg.Agent.Window.D(),
		Lateness: cfg.Agent.Lateness.D(),
		Resource: res,
		Rules:    cfg.Rules,
		MaxSize:  cfg.Histogram.MaxSize,
		MaxScale: cfg.Histogram.MaxScale,

		MaxRawSeries: cfg.Agent.MaxRawSeries,
	}
}

func (d *daemon) registerSelfMetrics() {
	d.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "sabaki_build_info",
		Help:        "Always 1; the labels say which sabaki is running.",
		ConstLabels: prometheus.Labels{"version": version, "commit": buildCommit(), "goversion": runtime.Version()},
	})
	build.Set(1)
	d.m = daemonMetrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_agent_config_reloads_total", Help: "SIGHUP config reloads, by result (ok, rejected)."}, []string{"result"}),
		enqueueFails: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sabaki_agent_enqueue_errors_total",
			Help: "Closed windows an exporter's queue did not take when handed over (refused, or earlier windows still waiting); an outbox's wait in memory and are offered again (sabaki_agent_enqueue_pending_windows)."}, []string{"exporter"}),
	}
	d.m.reloads.WithLabelValues("ok")
	d.m.reloads.WithLabelValues("rejected")
	d.reg.MustRegister(build, d.m.reloads, d.m.enqueueFails)
	d.enq = newEnqueueRetry(d.log.With("component", "exporters"), d.reg, d.m.enqueueFails)
}

// applyMemoryLimit makes agent.memory_limit the Go runtime's soft memory
// limit, unless it is 0 or GOMEMLIMIT is set (the environment wins, as
// SABAKI_DATA_DIR does over data_dir). It returns the limit in effect.
func applyMemoryLimit(limit int64, getenv func(string) string, log *slog.Logger) int64 {
	if limit <= 0 {
		return debug.SetMemoryLimit(-1)
	}
	if v := getenv("GOMEMLIMIT"); v != "" {
		log.Info("agent.memory_limit not applied: GOMEMLIMIT is set", "GOMEMLIMIT", v, "memory_limit", limit)
		return debug.SetMemoryLimit(-1)
	}
	debug.SetMemoryLimit(limit)
	return limit
}

// onWindowState receives every closed (or re-emitted) window from the
// pipeline: it goes to the store with the baselines that advance with it
// (one transaction), then to every exporter's queue. A window the store
// does not take (a full disk) waits in memory and is written again, in
// order, every later window behind it (storeretry.go); the error is
// returned so that the pipeline keeps the window's delta journal until
// then. The exporters get the window now, whatever the store did; one
// whose outbox refuses it (a full disk) gets it later, in order: the
// window waits in memory, every later one for that exporter behind it
// (enqueueretry.go).
func (d *daemon) onWindowState(w *metric.Window, ch agent.StateChange) error {
	storeErr := d.writes.Write(w, ch)
	if w == nil {
		return storeErr
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.exps {
		switch err := d.enq.Offer(e.name, e.q, w); {
		case err == nil, errors.Is(err, errEnqueueWaiting):
		case retryableEnqueue(err):
			d.log.Error("queueing window for exporter failed; kept in memory and offered again until the outbox takes it",
				"exporter", e.name, "window", w.Start, "err", err)
		default:
			d.log.Error("queueing window for exporter failed", "exporter", e.name, "window", w.Start, "err", err)
		}
	}
	return storeErr
}

// eachExporter calls fn for every running exporter's queue, holding d.mu
// (so a queue is not shut down meanwhile): the retries of refused windows.
func (d *daemon) eachExporter(fn func(name string, q exportQueue)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.exps {
		fn(e.name, e.q)
	}
}

// maintain runs store maintenance (compaction, rollups, retention) once a
// minute.
func (d *daemon) maintain() {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-d.runCtx.Done():
			return
		case now := <-t.C:
			if err := d.store.Maintain(d.runCtx, now); err != nil && d.runCtx.Err() == nil {
				d.log.Error("store maintenance failed", "err", err)
			}
		}
	}
}

func (d *daemon) buildExporters(cfg *Config) ([]*runningExporter, error) {
	types := exporterTypes()
	var out []*runningExporter
	for _, e := range cfg.Exporters {
		if c, ok := e.Config.(*exporters.ConsoleConfig); ok && c.Writer == nil && c.Output == "stdout" {
			c.Writer = d.stdout
		}
		reg := newTrackingRegisterer(d.reg)
		set := exporters.Settings{Logger: d.log.With("exporter", e.Name), Registerer: reg, DataDir: cfg.Agent.DataDir}
		exp, err := types[e.Type].build(e.Config, set)
		if err != nil {
			reg.unregisterAll()
			discardExporters(out, d.log)
			return nil, fmt.Errorf("%s (exporter %s): %w", e.Path, e.Name, err)
		}
		var q exportQueue
		if oc, ok := outboxConfigOf(e.Config); ok {
			ob, err := exporters.NewOutbox(oc, exp, set)
			if err != nil {
				exp.Shutdown(context.Background())
				reg.unregisterAll()
				discardExporters(out, d.log)
				return nil, fmt.Errorf("%s (exporter %s): %w", e.Path, e.Name, err)
			}
			q = ob
		} else {
			q = newMemQueue(exp, d.log, d.reg)
		}
		out = append(out, &runningExporter{name: e.Name, typ: e.Type, cfg: e.Config, q: q, reg: reg})
	}
	return out, nil
}

// discardExporters releases exporters that were built but never started
// (a later one failed to build): their queues are closed without sending,
// so whatever an outbox holds stays on disk for the next start.
func discardExporters(exps []*runningExporter, log *slog.Logger) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // nothing to drain: an outbox's Shutdown without Run sends only until ctx ends
	stopExporters(ctx, exps, log)
}

func (d *daemon) startExporters(exps []*runningExporter) {
	for _, e := range exps {
		d.enq.add(e.name)
		// /readyz shows each outbox's depth and is not ready when one is
		// close to its bounds (agent/admin/outbox.go).
		if ob, ok := e.q.(*exporters.Outbox); ok && d.admin != nil {
			if oc, ok := outboxConfigOf(e.cfg); ok {
				d.admin.AddStatus("outbox "+e.name, admin.OutboxStatus(ob, int64(oc.MaxBytes), oc.MaxAge.D()))
			}
		}
		ctx, cancel := context.WithCancel(d.runCtx)
		e.cancel, e.done = cancel, make(chan struct{})
		go func() {
			defer close(e.done)
			e.q.Run(ctx)
		}()
	}
}

// stopExporters drains every queue until ctx ends, in parallel; what an
// outbox could not send stays on disk for the next start.
func stopExporters(ctx context.Context, exps []*runningExporter, log *slog.Logger) error {
	var wg sync.WaitGroup
	var timedOut atomic.Bool
	for _, e := range exps {
		wg.Go(func() {
			if err := e.q.Shutdown(ctx); err != nil {
				log.Error("exporter shutdown", "exporter", e.name, "err", err)
			}
			if ctx.Err() != nil {
				timedOut.Store(true)
			}
			if e.cancel != nil {
				e.cancel()
				<-e.done
			}
			e.reg.unregisterAll()
		})
	}
	wg.Wait()
	if timedOut.Load() {
		return errDrainTimeout
	}
	return nil
}

// shutdown stops sources, flushes the open window into the store and the
// exporter queues, drains the exporters within agent.shutdown_timeout and
// closes the store.
func (d *daemon) shutdown() error {
	d.ready.Store(false)
	d.mu.Lock()
	timeout := d.cfg.Agent.ShutdownTimeout.D()
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	d.mu.Lock()
	srcs := d.srcs
	d.srcs = nil
	d.mu.Unlock()
	srcs.stop(ctx)

	d.pipe.Flush()
	d.runCancel() // stops pipeline Run, maintenance and store retries; Flush already emitted
	// A last try for windows still waiting for the store (a full disk).
	d.writes.finish(ctx)
	d.mu.Lock()
	exps := d.exps
	d.exps = nil
	d.mu.Unlock()
	// A last offer of windows an outbox refused; the rest is replayed from
	// the store at the next start.
	for _, e := range exps {
		d.enq.finish(e.name, e.q)
	}
	drainErr := stopExporters(ctx, exps, d.log)
	d.pipe.Close()
	var errs []error
	if err := d.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing the store: %w", err))
	}
	if err := d.admin.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stopping the admin server: %w", err))
	}
	d.bg.Wait()
	d.lock.release()
	if drainErr != nil {
		errs = append(errs, drainErr)
	}
	return errors.Join(errs...)
}

// abort undoes a failed start: everything started so far is stopped.
func (d *daemon) abort() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if d.srcs != nil {
		d.srcs.stop(ctx)
	}
	d.runCancel()
	stopExporters(ctx, d.exps, d.log)
	if d.pipe != nil {
		d.pipe.Close()
	}
	if d.store != nil {
		d.store.Close()
	}
	if d.admin != nil {
		d.admin.Shutdown(ctx)
	}
	d.bg.Wait()
	d.lock.release()
}

// reload re-reads the config file on SIGHUP. A config with problems is
// rejected (every problem logged) and the running one stays. Otherwise:
// rules, resource attributes and lateness swap in the pipeline from the next
// window; sources and exporters whose entries changed are restarted (the
// others keep running untouched); changes to the rest of agent:, retention:
// and histogram: need a restart and are reported as such.
func (d *daemon) reload() bool {
	name := configName(d.cfgPath)
	d.log.Info("reloading config", "config", name)
	cfg, ps := loadConfig(d.cfgPath)
	if len(ps) > 0 {
		for _, p := range ps {
			d.log.Error("config reload rejected, keeping the running config: " + formatProblem(name, p))
		}
		d.m.reloads.WithLabelValues("rejected").Inc()
		return false
	}
	d.mu.Lock()
	old := d.cfg
	d.mu.Unlock()
	restartOnly := []string{}
	a, b := old.Agent, cfg.Agent
	a.Lateness, b.Lateness = 0, 0
	if a != b {
		restartOnly = append(restartOnly, "agent")
	}
	if !reflect.DeepEqual(old.Retention, cfg.Retention) {
		restartOnly = append(restartOnly, "retention")
	}
	if old.Histogram != cfg.Histogram {
		restartOnly = append(restartOnly, "histogram")
	}
	if len(restartOnly) > 0 {
		d.log.Error("config reload rejected, keeping the running config: these sections changed and need a restart", "sections", restartOnly)
		d.m.reloads.WithLabelValues("rejected").Inc()
		return false
	}
	res := detectResource(d.runCtx, cfg.Resource, d.log)
	if err := d.pipe.Reload(pipelineConfig(cfg, res)); err != nil {
		d.log.Error("config reload rejected, keeping the running config", "err", err)
		d.m.reloads.WithLabelValues("rejected").Inc()
		return false
	}

	// Exporters: keep the unchanged ones, restart the rest.
	if err := d.reloadExporters(cfg); err != nil {
		d.log.Error("config reload: exporters", "err", err)
	}
	if err := d.reloadSources(cfg); err != nil {
		d.log.Error("config reload: sources", "err", err)
	}
	d.mu.Lock()
	d.cfg = cfg
	d.mu.Unlock()
	d.m.reloads.WithLabelValues("ok").Inc()
	d.log.Info("config reloaded", "config", name)
	return true
}

// healthy is what the systemd watchdog pings on: the agent finished starting
// and is not shutting down. (Windows are not a liveness signal: a config
// whose sources have nothing to say emits none.)
func (d *daemon) healthy() bool { return d.ready.Load() }

func (d *daemon) reloadExporters(cfg *Config) error {
	d.mu.Lock()
	current := d.exps
	d.mu.Unlock()
	keep := map[string]*runningExporter{}
	for _, e := range current {
		keep[e.name] = e
	}
	var next []*runningExporter
	var changed []exporterEntry
	for _, e := range cfg.Exporters {
		if r, ok := keep[e.Name]; ok && r.typ == e.Type && sameConfig(r.cfg, e.Config) {
			next = append(next, r)
			delete(keep, e.Name)
			continue
		}
		changed = append(changed, e)
	}
	// Stop the removed or changed ones first: an outbox directory is owned by
	// one Outbox at a time.
	var stop []*runningExporter
	for _, r := range keep {
		stop = append(stop, r)
	}
	d.mu.Lock()
	d.exps = next
	d.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.Agent.ShutdownTimeout.D())
	defer cancel()
	stopExporters(ctx, stop, d.log)
	for _, r := range stop {
		d.admin.RemoveCheck("outbox " + r.name)
	}
	built, err := d.buildExporters(&Config{Agent: cfg.Agent, Exporters: changed})
	if err != nil {
		return err
	}
	d.startExporters(built)
	d.mu.Lock()
	// Under d.mu, so that a window stored meanwhile is either replayed or
	// queued by onWindowState once the new exporters are in d.exps.
	replayCommitted(d.runCtx, d.store, built, cfg.Histogram, d.enq, d.log)
	d.exps = append(d.exps, built...)
	d.mu.Unlock()
	// Windows waiting for an exporter the new config dropped are given up
	// (counted); a restarted one's are offered to its new outbox.
	names := map[string]bool{}
	for _, e := range cfg.Exporters {
		names[e.Name] = true
	}
	d.enq.prune(func(name string) bool { return names[name] })
	if len(stop)+len(built) > 0 {
		d.log.Info("exporters restarted", "stopped", len(stop), "started", len(built))
	}
	return nil
}

func (d *daemon) reloadSources(cfg *Config) error {
	d.mu.Lock()
	old := d.cfg
	d.mu.Unlock()
	if len(old.Sources) == len(cfg.Sources) {
		same := true
		for i := range cfg.Sources {
			if old.Sources[i].Name != cfg.Sources[i].Name || !sameConfig(old.Sources[i].Config, cfg.Sources[i].Config) {
				same = false
			}
		}
		if same {
			return nil
		}
	}
	srcs, err := d.buildSources(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.Agent.ShutdownTimeout.D())
	defer cancel()
	d.mu.Lock()
	prev := d.srcs
	d.mu.Unlock()
	prev.stop(ctx)
	if err := srcs.start(d.runCtx, d.pipe); err != nil {
		// The new set could not start (a port in use): bring the old set back.
		d.log.Error("new sources failed to start; restarting the previous ones", "err", err)
		back, berr := d.buildSources(old)
		if berr == nil {
			berr = back.start(d.runCtx, d.pipe)
		}
		if berr != nil {
			return fmt.Errorf("restarting the previous sources: %w", berr)
		}
		srcs = back
	}
	d.mu.Lock()
	d.srcs = srcs
	d.mu.Unlock()
	d.log.Info("sources restarted", "sources", len(srcs.pull)+len(srcs.push))
	return nil
}

func sameConfig(a, b any) bool { return reflect.DeepEqual(a, b) }
