package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

type testTLS struct {
	CAFile string `yaml:"ca_file"`
}

type testSection struct {
	Interval Duration          `yaml:"interval"`
	Targets  []string          `yaml:"targets"`
	TLS      testTLS           `yaml:"tls"`
	Labels   map[string]string `yaml:"labels"`
	Limit    int               `yaml:"limit"`
}

func (s *testSection) Validate() error {
	var errs []error
	if s.Interval <= 0 {
		errs = append(errs, Field("interval", "must be positive"))
	}
	if s.TLS.CAFile == "bad" {
		errs = append(errs, Join("tls", Field("ca_file", "cannot read %q", "bad")))
	}
	return errors.Join(errs...)
}

func parse(t *testing.T, src string) *yaml.Node {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatal(err)
	}
	return &n
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // formatted problems
	}{
		{"ok", "interval: 15s\ntargets: [a]\n", nil},
		{"unknown key with suggestion", "interval: 15s\nintervall: 3s\n", []string{`f:2:1: s.intervall: unknown key "intervall" (did you mean "interval"?)`}},
		{"nested unknown key", "interval: 1s\ntls:\n  ca_fil: x\n", []string{`f:3:3: s.tls.ca_fil: unknown key "ca_fil" (did you mean "ca_file"?)`}},
		{"unknown key, no suggestion", "interval: 1s\nzzzzzzzz: 1\n", []string{`f:2:1: s.zzzzzzzz: unknown key "zzzzzzzz"`}},
		{"bad duration", "interval: soon\n", []string{`f:1:11: s.interval: invalid duration "soon" (use e.g. 90s, 5m, 24h, 14d, 5y)`}},
		{"wrong type", "interval: 1s\nlimit: many\n", []string{"f:2:8: s.limit: cannot unmarshal !!str `many` into int"}},
		{"validate", "limit: 3\n", []string{`f:1:1: s.interval: must be positive`}},
		{"validate nested", "interval: 1s\ntls:\n  ca_file: bad\n", []string{`f:3:3: s.tls.ca_file: cannot read "bad"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s testSection
			ps := Decode(parse(t, tc.src), "s", &s)
			var got []string
			for _, p := range ps {
				got = append(got, p.Format("f"))
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestExpandEnv(t *testing.T) {
	env := map[string]string{"KEY": "secret", "EMPTY": ""}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	n := parse(t, "a: ${KEY}\nb: ${MISSING:-dflt}\nc: ${EMPTY:-dflt}\nd: x$${KEY}\n${KEY}: 1\n")
	ExpandEnv(n, lookup)
	var m map[string]string
	if err := n.Decode(&m); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "secret", "b": "dflt", "c": "dflt", "d": "x${KEY}", "${KEY}": "1"}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %q, want %q", k, m[k], v)
		}
	}
}

func TestParseDuration(t *testing.T) {
	tests := map[string]time.Duration{"90s": 90 * time.Second, "14d": 14 * 24 * time.Hour, "5y": 5 * 365 * 24 * time.Hour, "1d12h": 36 * time.Hour, "-2d": -48 * time.Hour}
	for in, want := range tests {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "d", "x1d", "1w"} {
		if _, err := ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) succeeded", bad)
		}
	}
	if FormatDuration(400*24*time.Hour) != "400d" || FormatDuration(5*365*24*time.Hour) != "5y" {
		t.Error("FormatDuration")
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"512": 512, "64KiB": 64 << 10, "1GiB": 1 << 30, "5MB": 5e6} {
		if got, err := ParseBytes(in); err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v", in, got, err)
		}
	}
	if _, err := ParseBytes("lots"); err == nil {
		t.Error("ParseBytes(lots) succeeded")
	}
}
