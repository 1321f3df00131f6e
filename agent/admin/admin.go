// Package admin is the agent's admin HTTP endpoint: /metrics (the agent's
// own client_golang registry), /healthz (the process is alive), /readyz
// (ready to receive: sources started, store open, no exporter outbox close
// to its bounds; with each outbox's depth) and /api/v1/exemplars.
// It binds agent.admin_listen, loopback by default. When the bound address
// is a loopback address it also serves the Go runtime profiles under
// /debug/pprof/ (for measuring the agent under load); a non-loopback
// listener never exposes them.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check reports whether one part of the agent is ready; a non-nil error is
// its reason for not being ready.
type Check func() error

// Status is a Check that also describes the part's state (an exporter's
// outbox depth): /readyz shows detail on a line of its own whether or not
// the part is ready.
type Status func() (detail string, err error)

// Settings configures a Server.
type Settings struct {
	Logger   *slog.Logger
	Gatherer prometheus.Gatherer
	// Registerer, when set, gets the promhttp handler's own metrics.
	Registerer prometheus.Registerer
}

// Server is the admin HTTP server. Build it with Listen (which binds, so a
// port in use fails at startup), add readiness checks and handlers, then
// Serve.
type Server struct {
	ln     net.Listener
	mux    *http.ServeMux
	srv    *http.Server
	logger *slog.Logger

	mu     sync.Mutex
	checks []namedCheck
}

type namedCheck struct {
	name string
	fn   Status
}

// Listen binds addr and prepares the handlers. Until a check is added,
// /readyz answers 503 "starting".
func Listen(addr string, set Settings) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin listener: %w", err)
	}
	s := &Server{ln: ln, mux: http.NewServeMux(), logger: set.Logger}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	var h http.Handler = promhttp.HandlerFor(set.Gatherer, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
	if set.Registerer != nil {
		h = promhttp.InstrumentMetricHandler(set.Registerer, h)
	}
	s.mux.Handle("GET /metrics", h)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET /{$}", s.index)
	if servesProfiles(ln.Addr()) {
		s.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		s.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
		s.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		s.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	}
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// servesProfiles reports whether /debug/pprof/ is served on addr: only on a
// loopback address, since profiles reveal memory contents and cost CPU.
func servesProfiles(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// Addr returns the bound address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// AddCheck adds a readiness check; /readyz is 200 only when every check
// passes. Checks must be fast: they run on every request.
func (s *Server) AddCheck(name string, fn Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = append(s.checks, namedCheck{name, func() (string, error) { return "", fn() }})
}

// AddStatus adds a readiness check with a description (see Status),
// replacing any check of the same name (an exporter restarted on reload).
// Like checks, statuses must be fast.
func (s *Server) AddStatus(name string, fn Status) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = slices.DeleteFunc(s.checks, func(c namedCheck) bool { return c.name == name })
	s.checks = append(s.checks, namedCheck{name, fn})
}

// RemoveCheck removes the checks named name (a component being replaced on reload).
func (s *Server) RemoveCheck(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks = slices.DeleteFunc(s.checks, func(c namedCheck) bool { return c.name == name })
}

// Handle adds a handler (e.g. "GET /api/v1/exemplars"). Call before Serve.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Serve serves until Shutdown; it returns nil after a Shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin server: %w", err)
	}
	return nil
}

// Shutdown stops the server, waiting for in-flight requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	s.ln.Close()
	return err
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	checks := slices.Clone(s.checks)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(checks) == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready: starting")
		return
	}
	var failed, details []string
	for _, c := range checks {
		detail, err := c.fn()
		if err != nil {
			failed = append(failed, c.name+": "+err.Error())
		}
		if detail != "" {
			details = append(details, c.name+": "+detail)
		}
	}
	if len(failed) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		for _, f := range failed {
			fmt.Fprintln(w, "not ready: "+f)
		}
	} else {
		fmt.Fprintln(w, "ready")
	}
	for _, d := range details {
		fmt.Fprintln(w, d)
	}
}

func (s *Server) index(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "sabaki admin: /metrics /healthz /readyz /api/v1/exemplars?metric=M&from=1h&to=now")
}

// WriteJSON writes v as JSON with status code; handlers of the /api use it.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
