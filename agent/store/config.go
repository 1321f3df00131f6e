package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/sabakiio/sabaki/internal/config"
)

// TierConfig is one entry of the `retention:` list:
//
//	retention:
//	  - {resolution: 1m, keep: 14d}
//	  - {resolution: 1h, keep: 400d}
//	  - {resolution: 1d, keep: 5y}
type TierConfig struct {
	Resolution config.Duration `yaml:"resolution"`
	Keep       config.Duration `yaml:"keep"`
}

// DefaultRetention is 1-minute points for 14 days, hourly for 400 days and
// daily for 5 years.
func DefaultRetention() []TierConfig {
	return []TierConfig{
		{Resolution: config.Duration(time.Minute), Keep: config.Duration(14 * 24 * time.Hour)},
		{Resolution: config.Duration(time.Hour), Keep: config.Duration(400 * 24 * time.Hour)},
		{Resolution: config.Duration(24 * time.Hour), Keep: config.Duration(5 * 365 * 24 * time.Hour)},
	}
}

// Validate checks one tier on its own.
func (t *TierConfig) Validate() error {
	var errs []error
	if t.Resolution.D() < time.Second || t.Resolution.D()%time.Second != 0 {
		errs = append(errs, config.Field("resolution", "must be a whole number of seconds, at least 1s (got %s)", t.Resolution))
	}
	if t.Keep <= 0 {
		errs = append(errs, config.Field("keep", "must be positive"))
	}
	return errors.Join(errs...)
}

// ValidateRetention checks the tiers together against the agent window:
// resolutions ascend, each a multiple of the one before; the first equals
// agent.window (the store keeps what the pipeline emits); each tier keeps its
// points longer than the next tier's resolution (so every slot is rolled up
// before its points are deleted) and no shorter than the tier before.
// Field names are relative to the `retention` list ("[1].resolution").
func ValidateRetention(tiers []TierConfig, window time.Duration) error {
	if len(tiers) == 0 {
		return config.Field("", "needs at least one tier, e.g. {resolution: 1m, keep: 14d}")
	}
	var errs []error
	for i := range tiers {
		if err := tiers[i].Validate(); err != nil {
			errs = append(errs, config.Join(fmt.Sprintf("[%d]", i), err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if tiers[0].Resolution.D() != window {
		errs = append(errs, config.Field("[0].resolution", "must equal agent.window (%s), got %s", config.Duration(window), tiers[0].Resolution))
	}
	for i := 1; i < len(tiers); i++ {
		prev, cur := tiers[i-1], tiers[i]
		if cur.Resolution <= prev.Resolution || cur.Resolution%prev.Resolution != 0 {
			errs = append(errs, config.Field(fmt.Sprintf("[%d].resolution", i), "must be a multiple of the previous tier's resolution %s and larger, got %s", prev.Resolution, cur.Resolution))
		}
		if prev.Keep <= cur.Resolution {
			errs = append(errs, config.Field(fmt.Sprintf("[%d].keep", i-1), "must be longer than the next tier's resolution %s so each slot is rolled up before it is deleted, got %s", cur.Resolution, prev.Keep))
		}
		if cur.Keep < prev.Keep {
			errs = append(errs, config.Field(fmt.Sprintf("[%d].keep", i), "must not be shorter than the previous tier's keep %s, got %s", prev.Keep, cur.Keep))
		}
	}
	return errors.Join(errs...)
}

// Tiers converts validated tier configs into Options.Tiers.
func Tiers(cfg []TierConfig) []Tier {
	out := make([]Tier, len(cfg))
	for i, t := range cfg {
		out[i] = Tier{Resolution: t.Resolution.D(), Keep: t.Keep.D()}
	}
	return out
}

// Dir is where the store lives inside the agent's data directory. `sabaki
// run`, `query`, `export` and `backfill` all open the store there.
func Dir(dataDir string) string { return filepath.Join(dataDir, "store") }
