package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration that reads Go durations ("90s", "1h30m") plus
// days and years ("14d", "400d", "5y"; a year is 365 days), as retention and
// query ranges need. It writes back in the same form.
type Duration time.Duration

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return FormatDuration(time.Duration(d)), nil }

// String formats the duration like FormatDuration.
func (d Duration) String() string { return FormatDuration(time.Duration(d)) }

// ParseDuration parses a Go duration with optional leading day ("d") and year
// ("y") parts: "5y", "14d", "1d12h", "90s".
func ParseDuration(s string) (time.Duration, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("invalid duration %q: empty", orig)
	}
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var total time.Duration
	for _, u := range []struct {
		suffix byte
		d      time.Duration
	}{{'y', 365 * 24 * time.Hour}, {'d', 24 * time.Hour}} {
		i := strings.IndexByte(s, u.suffix)
		if i < 0 {
			continue
		}
		n, err := strconv.ParseFloat(s[:i], 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("invalid duration %q (use e.g. 90s, 5m, 24h, 14d, 5y)", orig)
		}
		total += time.Duration(n * float64(u.d))
		s = s[i+1:]
	}
	if s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q (use e.g. 90s, 5m, 24h, 14d, 5y)", orig)
		}
		total += d
	}
	if neg {
		total = -total
	}
	return total, nil
}

// FormatDuration prints whole days as "Nd" and whole years as "Ny", else Go's form.
func FormatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	switch {
	case d != 0 && d%(365*day) == 0:
		return strconv.FormatInt(int64(d/(365*day)), 10) + "y"
	case d != 0 && d%day == 0:
		return strconv.FormatInt(int64(d/day), 10) + "d"
	}
	return d.String()
}

// Bytes is a size that reads "512", "64KiB", "10MiB", "1GiB", "5MB".
type Bytes int64

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *Bytes) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseBytes(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = Bytes(v)
	return nil
}

// ParseBytes parses a byte size with an optional unit (B, KB, MB, GB, KiB, MiB, GiB).
func ParseBytes(s string) (int64, error) {
	t := strings.TrimSpace(s)
	units := []struct {
		s string
		m int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(t, u.s) {
			mult, t = u.m, strings.TrimSpace(strings.TrimSuffix(t, u.s))
			break
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q (use e.g. 512KiB, 64MiB, 1GiB)", s)
	}
	return int64(n * float64(mult)), nil
}
