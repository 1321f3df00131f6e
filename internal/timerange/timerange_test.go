package timerange

import (
	"errors"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 11, 25, 21, 0, 30, 0, time.FixedZone("JST", 9*3600))

func TestParse(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{"now", now.UTC(), ""},
		{"NOW", now.UTC(), ""},
		{"", now.UTC(), ""},
		{"30m", now.Add(-30 * time.Minute).UTC(), ""},
		{"24h", now.Add(-24 * time.Hour).UTC(), ""},
		{"-24h", now.Add(-24 * time.Hour).UTC(), ""},
		{"90d", now.Add(-90 * 24 * time.Hour).UTC(), ""},
		{"1d12h", now.Add(-36 * time.Hour).UTC(), ""},
		{"5y", now.Add(-5 * 365 * 24 * time.Hour).UTC(), ""},
		{"2026-11-25T10:00:00Z", time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), ""},
		{"2026-11-25T19:00:00+09:00", time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), ""},
		{"2026-11-25T10:00:00.5Z", time.Date(2026, 11, 25, 10, 0, 0, 5e8, time.UTC), ""},
		{"2026-11-25", time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC), ""},
		{"1764064800", time.Unix(1764064800, 0).UTC(), ""},
		{"1764064800.25", time.Unix(1764064800, 25e7).UTC(), ""},
		{"0", time.Unix(0, 0).UTC(), ""},
		{"yesterday", time.Time{}, "invalid time"},
		{"--5m", time.Time{}, "invalid time"},
		{"12.3.4", time.Time{}, "invalid time"},
		{"99999999999999999999", time.Time{}, "out of range"},
		{"2026-13-01T00:00:00Z", time.Time{}, "invalid time"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := Parse(tc.in, now)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if !got.Equal(tc.want) || got.Location() != time.UTC {
				t.Errorf("Parse(%q) = %v, want %v (UTC)", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseRange(t *testing.T) {
	r, err := ParseRange("", "", "24h", "now", now)
	if err != nil {
		t.Fatal(err)
	}
	if !r.To.Equal(now) || r.To.Sub(r.From) != 24*time.Hour {
		t.Errorf("default range = %v..%v", r.From, r.To)
	}
	if _, err := ParseRange("1h", "2h", "", "", now); !errors.Is(err, ErrEmpty) {
		t.Errorf("from after to: err = %v, want ErrEmpty", err)
	}
	if _, err := ParseRange("bogus", "now", "", "", now); err == nil || !strings.HasPrefix(err.Error(), "-from: ") {
		t.Errorf("bad from: err = %v", err)
	}
	if _, err := ParseRange("1h", "bogus", "", "", now); err == nil || !strings.HasPrefix(err.Error(), "-to: ") {
		t.Errorf("bad to: err = %v", err)
	}
}

func TestParseStep(t *testing.T) {
	for in, want := range map[string]time.Duration{"1m": time.Minute, "1h": time.Hour, "1d": 24 * time.Hour, "90s": 90 * time.Second} {
		if got, err := ParseStep(in); err != nil || got != want {
			t.Errorf("ParseStep(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"0s", "-1m", "x", ""} {
		if _, err := ParseStep(in); err == nil {
			t.Errorf("ParseStep(%q): no error", in)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"now", "30m", "90d", "2026-11-25T10:00:00Z", "1764064800", "1.5", "-1h", "5y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Parse(s, now)
		if err == nil && got.Location() != time.UTC {
			t.Errorf("Parse(%q) not UTC", s)
		}
	})
}
