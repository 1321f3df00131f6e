package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sabakiio/sabaki/agent"
	"github.com/sabakiio/sabaki/metric"
	"github.com/sabakiio/sabaki/sources"
)

// sourceSet is the built sources of one config: pull sources for the
// scheduler, push sources with their own listeners. A reload replaces the
// whole set; its self-metrics are registered through reg so they can be
// unregistered with it.
type sourceSet struct {
	pull []agent.ScheduledSource
	push []sources.PushSource
	reg  *trackingRegisterer
	log  *slog.Logger

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started []sources.PushSource
}

func (d *daemon) buildSources(cfg *Config) (*sourceSet, error) {
	types := sourceTypes()
	set := &sourceSet{reg: newTrackingRegisterer(d.reg), log: d.log}
	for _, e := range cfg.Sources {
		t := types[e.Type]
		ss := sources.Settings{Logger: d.log.With("source", e.Name), Registerer: set.reg, State: storeState{d}}
		if e.Type == "self" {
			ss.Registerer = d.reg // the self source gathers the whole registry
		}
		built, err := t.build(e.Config, ss)
		if errors.Is(err, sources.ErrNoGCPCredentials) {
			// No credentials is a fact about this machine, not a broken
			// config: the source stays off, says exactly what it looked
			// for, and the rest of the agent runs.
			d.log.Warn("source disabled: no Google credentials", "source", e.Name, "path", e.Path, "err", err)
			continue
		}
		if err != nil {
			set.discard()
			return nil, fmt.Errorf("%s (source %s): %w", e.Path, e.Name, err)
		}
		switch s := built.(type) {
		case sources.PushSource:
			set.push = append(set.push, s)
		case sources.Source:
			iv, to := t.interval(e.Config)
			set.pull = append(set.pull, agent.ScheduledSource{Source: s, Interval: iv, Timeout: to})
		default:
			set.discard()
			return nil, fmt.Errorf("%s: source type %s built a %T, neither a Source nor a PushSource", e.Path, e.Type, built)
		}
	}
	return set, nil
}

// start starts the push sources (their listeners are bound when Start
// returns, so a port in use fails here) and then the pull scheduler.
func (s *sourceSet) start(ctx context.Context, sink metric.Sink) error {
	for _, p := range s.push {
		if err := p.Start(ctx, sink); err != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			for _, q := range s.started {
				q.Shutdown(sctx)
			}
			cancel()
			s.started = nil
			s.discard()
			return fmt.Errorf("starting source %s: %w", p.Name(), err)
		}
		s.started = append(s.started, p)
	}
	if len(s.pull) == 0 {
		return nil
	}
	sched, err := agent.NewScheduler(s.pull, sink, agent.SchedulerSettings{Logger: s.log.With("component", "scheduler"), Registerer: s.reg})
	if err != nil {
		s.stop(context.Background())
		return err
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.wg.Go(func() {
		if err := sched.Run(ctx); err != nil {
			s.log.Warn("stopping pull sources", "err", err)
		}
	})
	return nil
}

// stop stops the scheduler (waiting for running collections; it closes the
// pull sources) and shuts the push sources down until ctx ends. Safe on a
// nil or unstarted set.
func (s *sourceSet) stop(ctx context.Context) {
	if s == nil {
		return
	}
	if s.cancel != nil {
		s.cancel()
		s.wg.Wait()
	} else {
		s.closePull()
	}
	for _, p := range s.started {
		if err := p.Shutdown(ctx); err != nil {
			s.log.Error("source shutdown", "source", p.Name(), "err", err)
		}
	}
	s.started = nil
	s.reg.unregisterAll()
}

// discard releases a set that was built but never started.
func (s *sourceSet) discard() {
	s.closePull()
	s.reg.unregisterAll()
}

func (s *sourceSet) closePull() {
	for _, p := range s.pull {
		if c, ok := p.Source.(sources.Closer); ok {
			c.Close()
		}
	}
}

// trackingRegisterer registers on the agent's registry and remembers what
// it registered, so a component replaced on reload can take its self-metrics
// with it (the new one registers the same names again).
type trackingRegisterer struct {
	reg prometheus.Registerer
	mu  sync.Mutex
	cs  []prometheus.Collector
}

func newTrackingRegisterer(reg prometheus.Registerer) *trackingRegisterer {
	return &trackingRegisterer{reg: reg}
}

func (t *trackingRegisterer) Register(c prometheus.Collector) error {
	if err := t.reg.Register(c); err != nil {
		return err
	}
	t.mu.Lock()
	t.cs = append(t.cs, c)
	t.mu.Unlock()
	return nil
}

func (t *trackingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := t.Register(c); err != nil {
			panic(err)
		}
	}
}

func (t *trackingRegisterer) Unregister(c prometheus.Collector) bool {
	t.mu.Lock()
	for i, x := range t.cs {
		if x == c {
			t.cs = append(t.cs[:i], t.cs[i+1:]...)
			break
		}
	}
	t.mu.Unlock()
	return t.reg.Unregister(c)
}

func (t *trackingRegisterer) unregisterAll() {
	t.mu.Lock()
	cs := t.cs
	t.cs = nil
	t.mu.Unlock()
	for _, c := range cs {
		t.reg.Unregister(c)
	}
}

// storeState is the sources' StateStore: the daemon's store, which opens
// after the sources are built (they are built first so a bad source config
// fails before anything starts) and before any of them starts.
type storeState struct{ d *daemon }

var errStoreNotOpen = errors.New("the store is not open yet")

func (s storeState) GetState(ctx context.Context, key string) ([]byte, bool, error) {
	if s.d.store == nil {
		return nil, false, errStoreNotOpen
	}
	return s.d.store.GetState(ctx, key)
}

func (s storeState) PutState(ctx context.Context, key string, value []byte) error {
	if s.d.store == nil {
		return errStoreNotOpen
	}
	return s.d.store.PutState(ctx, key, value)
}
