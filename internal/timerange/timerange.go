// Package timerange parses the -from and -to values that every command
// (query, export capacity, backfill) and the admin API accept, so a range
// means the same everywhere:
//
//   - "now" (or an empty string, meaning the default the caller chose);
//   - a duration back from now: "30m", "24h", "90d", "5y", "1d12h"
//     (config.ParseDuration: a day is 24 h, a year 365 days); a leading "-"
//     is accepted and means the same ("-24h" is 24 h ago);
//   - an RFC 3339 timestamp: "2026-11-25T10:00:00Z", "2026-11-25T10:00:00.5+09:00";
//   - a date alone: "2026-11-25" (midnight UTC);
//   - Unix seconds: "1764064800" (fractions allowed: "1764064800.25").
//
// Results are in UTC.
package timerange

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/sabakiio/sabaki/internal/config"
)

// Parse returns the instant s denotes, relative to now for durations.
func Parse(s string, now time.Time) (time.Time, error) {
	v := strings.TrimSpace(s)
	if v == "" || strings.EqualFold(v, "now") {
		return now.UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t.UTC(), nil
	}
	if isNumber(v) {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) || f > 1<<40 {
			return time.Time{}, fmt.Errorf("invalid time %q: Unix seconds out of range", s)
		}
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(math.Round(frac*1e9))).UTC(), nil
	}
	d, err := config.ParseDuration(strings.TrimPrefix(v, "-"))
	if err != nil || strings.HasPrefix(strings.TrimPrefix(v, "-"), "-") {
		return time.Time{}, fmt.Errorf("invalid time %q (use now, a duration back from now such as 30m, 24h, 90d, an RFC 3339 time such as 2026-11-25T10:00:00Z, or Unix seconds)", s)
	}
	return now.Add(-d).UTC(), nil
}

func isNumber(s string) bool {
	if s == "" {
		return false
	}
	dot := false
	for i, c := range s {
		switch {
		case c >= '0' && c <= '9':
		case c == '.' && !dot && i > 0:
			dot = true
		default:
			return false
		}
	}
	return true
}

// Range is a half-open interval [From, To).
type Range struct {
	From, To time.Time
}

// ErrEmpty is returned (wrapped) by ParseRange when from is not before to.
var ErrEmpty = errors.New("empty time range")

// ParseRange parses from and to against one now and checks that from < to.
// Empty strings take the defaults defFrom and defTo (in the same syntax).
func ParseRange(from, to, defFrom, defTo string, now time.Time) (Range, error) {
	if from == "" {
		from = defFrom
	}
	if to == "" {
		to = defTo
	}
	f, err := Parse(from, now)
	if err != nil {
		return Range{}, fmt.Errorf("-from: %w", err)
	}
	t, err := Parse(to, now)
	if err != nil {
		return Range{}, fmt.Errorf("-to: %w", err)
	}
	if !f.Before(t) {
		return Range{}, fmt.Errorf("%w: -from %s is not before -to %s", ErrEmpty, f.Format(time.RFC3339), t.Format(time.RFC3339))
	}
	return Range{From: f, To: t}, nil
}

// ParseStep parses a step such as "1m", "1h", "1d"; it must be positive.
func ParseStep(s string) (time.Duration, error) {
	d, err := config.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	if d <= 0 {
		return 0, fmt.Errorf("invalid step %q: must be positive", s)
	}
	return d, nil
}
