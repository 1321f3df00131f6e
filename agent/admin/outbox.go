package admin

import (
	"fmt"
	"strconv"
	"time"
)

// Queue is what /readyz reads of an exporter's outbox (exporters.Outbox).
type Queue interface {
	Depth() int
	Bytes() int64
	OldestAge() time.Duration
}

// OutboxNotReadyFraction is the share of an outbox's bounds past which the
// agent reports not ready: the outbox then holds more than 90 % of its
// max_bytes, or its oldest window is older than 90 % of its max_age. Past
// the bounds the outbox drops the oldest windows, so not-ready means "the
// destination has not taken data for long enough that loss is near".
const OutboxNotReadyFraction = 0.9

// OutboxStatus describes q's depth ("3 windows, 12.0 KiB (0.0% of
// max_bytes 2.5 GiB), oldest 2m0s (0.1% of max_age 24h0m0s)") and fails
// once q is past OutboxNotReadyFraction of maxBytes or maxAge.
func OutboxStatus(q Queue, maxBytes int64, maxAge time.Duration) Status {
	return func() (string, error) {
		n, b, age := q.Depth(), q.Bytes(), q.OldestAge()
		bf, af := share(float64(b), float64(maxBytes)), share(float64(age), float64(maxAge))
		detail := fmt.Sprintf("%d windows, %s (%.1f%% of max_bytes %s), oldest %s (%.1f%% of max_age %s)",
			n, fmtBytes(b), 100*bf, fmtBytes(maxBytes), age.Round(time.Second), 100*af, maxAge)
		switch {
		case bf > OutboxNotReadyFraction:
			return detail, fmt.Errorf("outbox holds %s, over %.0f%% of max_bytes %s: the destination is not taking data and the oldest windows will soon be dropped",
				fmtBytes(b), 100*OutboxNotReadyFraction, fmtBytes(maxBytes))
		case af > OutboxNotReadyFraction:
			return detail, fmt.Errorf("oldest unsent window is %s old, over %.0f%% of max_age %s: the destination is not taking data and it will soon be dropped",
				age.Round(time.Second), 100*OutboxNotReadyFraction, maxAge)
		}
		return detail, nil
	}
}

func share(v, bound float64) float64 {
	if bound <= 0 {
		return 0
	}
	return v / bound
}

// fmtBytes prints n in B, KiB, MiB or GiB with one decimal.
func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	v, i := float64(n), -1
	for v >= unit && i < 2 {
		v /= unit
		i++
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + []string{"KiB", "MiB", "GiB"}[i]
}
