package exporters

// Pieces shared by the OTLP and remote-write exporters: client TLS settings,
// header handling that never reveals a value, and the error type that carries
// a server's status and Retry-After hint to the outbox.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/sabakiio/sabaki/internal/config"
)

// TLSConfig is the client side of TLS for exporters that dial a remote
// endpoint. With every field empty the system roots verify the server.
type TLSConfig struct {
	// CAFile is a PEM bundle that replaces the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate and its key (mTLS); both
	// or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName overrides the name checked against the server certificate.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify disables certificate verification (tests only).
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// IsZero reports whether no TLS setting was given.
func (c TLSConfig) IsZero() bool { return c == TLSConfig{} }

// Validate implements config.Validator. Files are read when the exporter is
// built (a missing file is a problem of the machine, not of the config).
func (c *TLSConfig) Validate() error {
	if (c.CertFile == "") != (c.KeyFile == "") {
		return config.Field("cert_file", "cert_file and key_file must be set together")
	}
	return nil
}

// Load builds the *tls.Config (TLS 1.2 or later).
func (c TLSConfig) Load() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify} //nolint:gosec // opt-in for tests
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read tls ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca_file %s: no PEM certificate found", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load tls client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Secret is a config value that never prints: %v, %s, %#v, slog, JSON and
// YAML output show "<redacted>". Reveal returns the value to send.
type Secret string

// String redacts the secret.
func (s Secret) String() string { return "<redacted>" }

// GoString redacts the secret (for %#v).
func (s Secret) GoString() string { return `"<redacted>"` }

// LogValue redacts the secret in slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue("<redacted>") }

// MarshalYAML redacts the secret when a config is printed.
func (s Secret) MarshalYAML() (any, error) { return "<redacted>", nil }

// MarshalText redacts the secret in JSON and text encodings.
func (s Secret) MarshalText() ([]byte, error) { return []byte("<redacted>"), nil }

// UnmarshalYAML reads the secret as a plain string.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	var v string
	if err := n.Decode(&v); err != nil {
		return err
	}
	*s = Secret(v)
	return nil
}

// Reveal returns the secret itself.
func (s Secret) Reveal() string { return string(s) }

// revealHeaders returns headers as plain strings for a client (never nil,
// so that OTEL_EXPORTER_OTLP_HEADERS cannot add any).
func revealHeaders(h map[string]Secret) map[string]string {
	out := make(map[string]string, len(h))
	for k, v := range h {
		out[k] = v.Reveal()
	}
	return out
}

// validateHeaders checks header names and that no value holds a line
// break. An empty value is not a problem of the file (examples validate
// without secrets): emptySecrets reports it when the exporter is built.
func validateHeaders(field string, h map[string]Secret) error {
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(h)) {
		if k == "" || strings.ContainsAny(k, " \t\r\n:") {
			errs = append(errs, config.Field(field, "invalid header name %q", k))
			continue
		}
		if strings.ContainsAny(h[k].Reveal(), "\r\n") {
			errs = append(errs, config.Field(field+"."+k, "value must not contain a line break"))
		}
	}
	return errors.Join(errs...)
}

// emptySecrets returns an error naming the headers whose value is empty:
// the environment variable the config names is unset, and the exporter
// refuses to start rather than send requests every server would refuse.
func emptySecrets(field string, h map[string]Secret) error {
	var empty []string
	for _, k := range slices.Sorted(maps.Keys(h)) {
		if strings.TrimSpace(h[k].Reveal()) == "" {
			empty = append(empty, field+"."+k)
		}
	}
	if len(empty) > 0 {
		return fmt.Errorf("%s: empty value (is the environment variable it names set?)", strings.Join(empty, ", "))
	}
	return nil
}

// redactedHeaders renders headers as "{A: <redacted>, B: <redacted>}" for
// String methods: the names help debugging, the values are secrets.
func redactedHeaders(h map[string]Secret) string {
	keys := slices.Sorted(maps.Keys(h))
	for i, k := range keys {
		keys[i] = k + ": <redacted>"
	}
	return "{" + strings.Join(keys, ", ") + "}"
}

// isLoopbackHost reports whether host (a name or an IP, without port) is a
// loopback address, so plaintext to it never leaves the machine.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// remoteError is a failed send with what the server said: the HTTP status or
// gRPC code, and its Retry-After / RetryInfo hint. It implements RetryAfter
// so the outbox can wait as long as the server asked.
type remoteError struct {
	err   error
	after time.Duration // 0: no hint
}

func (e *remoteError) Error() string { return e.err.Error() }
func (e *remoteError) Unwrap() error { return e.err }

// RetryAfter implements RetryAfter.
func (e *remoteError) RetryAfter() (float64, bool) {
	if e.after <= 0 {
		return 0, false
	}
	return e.after.Seconds(), true
}

var _ RetryAfter = (*remoteError)(nil)

// remoteRetryAfter reads an HTTP Retry-After header: delay-seconds or an
// HTTP-date (RFC 9110 §10.2.3). It returns 0 when absent or unreadable.
func remoteRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil && s >= 0 {
		return time.Duration(s * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// classifyHTTP maps an HTTP status to the outbox's two outcomes: 5xx, 429
// and 408 are worth retrying (honouring Retry-After), every other non-2xx
// status is permanent. err describes the failure; the result wraps it.
func classifyHTTP(status int, retryAfter time.Duration, err error) error {
	switch {
	case status >= 500, status == http.StatusTooManyRequests, status == http.StatusRequestTimeout:
		return &remoteError{err: err, after: retryAfter}
	default:
		return Permanent(&remoteError{err: err})
	}
}

// bodySnippet returns at most 256 bytes of a response body for an error
// message, on one line.
func bodySnippet(b []byte) string {
	const limit = 256
	s := strings.TrimSpace(string(b))
	if len(s) > limit {
		s = s[:limit] + "…"
	}
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return "(empty body)"
	}
	return s
}

// remoteRegister registers c on reg, or returns the collector already
// registered under the same description (an exporter rebuilt on reload with
// the same name keeps counting on the same series). A nil reg registers
// nothing.
func remoteRegister[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
