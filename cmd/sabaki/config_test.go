package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/exporters"
	"github.com/sabakiio/sabaki/sources"
)

// TestExampleConfigsValidate checks that every config shipped under configs/
// loads with `sabaki validate`, through the command itself.
func TestExampleConfigsValidate(t *testing.T) {
	files, err := filepath.Glob("../../configs/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no configs found: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := run([]string{"validate", "-config", f}, &out, &errb); code != 0 {
				t.Fatalf("validate %s: exit %d\n%s%s", f, code, out.String(), errb.String())
			}
			if want := f + ": ok\n"; out.String() != want {
				t.Errorf("stdout = %q, want %q", out.String(), want)
			}
		})
	}
}

// TestInvalidConfigs runs `sabaki validate` on each configs/testdata/invalid-*.yaml
// and compares its output with the file's "# want:" lines (FILE stands for the
// file's path, KNOWN_SOURCES/KNOWN_EXPORTERS for the wired type lists).
func TestInvalidConfigs(t *testing.T) {
	files, err := filepath.Glob("../../configs/testdata/invalid-*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no invalid configs found: %v", err)
	}
	repl := strings.NewReplacer(
		"KNOWN_SOURCES", strings.Join(keys(sourceTypes()), ", "),
		"KNOWN_EXPORTERS", strings.Join(keys(exporterTypes()), ", "),
	)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, line := range strings.Split(string(data), "\n") {
				if w, ok := strings.CutPrefix(line, "# want: "); ok {
					want = append(want, strings.ReplaceAll(repl.Replace(w), "FILE", f))
				}
			}
			if len(want) == 0 {
				t.Fatalf("%s has no # want: line", f)
			}
			var out, errb bytes.Buffer
			code := run([]string{"validate", "-config", f}, &out, &errb)
			if code != 1 {
				t.Errorf("exit code = %d, want 1", code)
			}
			if got := strings.TrimSuffix(errb.String(), "\n"); got != strings.Join(want, "\n") {
				t.Errorf("problems:\ngot:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
			}
			if out.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", out.String())
			}
		})
	}
}

func TestValidateMissingFile(t *testing.T) {
	var out, errb bytes.Buffer
	f := filepath.Join(t.TempDir(), "nope.yaml")
	if code := run([]string{"validate", "-config", f}, &out, &errb); code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if want := f + ": reading config: no such file or directory\n"; errb.String() != want {
		t.Errorf("got %q, want %q", errb.String(), want)
	}
}

func TestLoadDefaults(t *testing.T) {
	env := map[string]string{}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }

	t.Run("empty file has every default", func(t *testing.T) {
		cfg, ps := parseConfig("f", nil, lookup, false)
		if len(ps) > 0 {
			t.Fatal(ps)
		}
		if cfg.Agent.Window.D() != time.Minute || cfg.Agent.AdminListen != "127.0.0.1:9469" || cfg.Agent.DataDir != "./data" {
			t.Errorf("agent defaults: %+v", cfg.Agent)
		}
		if len(cfg.Retention) != 3 || cfg.Histogram.MaxSize != 160 {
			t.Errorf("retention %v histogram %+v", cfg.Retention, cfg.Histogram)
		}
	})
	t.Run("embedded default", func(t *testing.T) {
		cfg, ps := loadConfig("")
		if len(ps) > 0 {
			t.Fatal(ps)
		}
		var types []string
		for _, s := range cfg.Sources {
			types = append(types, s.Type)
		}
		if strings.Join(types, ",") != "otlp,self" {
			t.Errorf("source types = %v, want otlp,self", types)
		}
		if len(cfg.Exporters) == 0 || cfg.Exporters[0].Type != "console" {
			t.Errorf("exporters = %+v", cfg.Exporters)
		}
	})
	t.Run("entry defaults and name", func(t *testing.T) {
		cfg, ps := parseConfig("f", []byte("sources:\n  - type: self\n    interval: 2s\n    timeout: 1s\nexporters:\n  - type: console\n    name: dbg\n"), lookup, false)
		if len(ps) > 0 {
			t.Fatal(ps)
		}
		sc := cfg.Sources[0].Config.(*sources.SelfConfig)
		if sc.Interval.D() != 2*time.Second || sc.Name != "self" || cfg.Sources[0].Name != "self" {
			t.Errorf("self config %+v", sc)
		}
		ec := cfg.Exporters[0].Config.(*exporters.ConsoleConfig)
		if ec.Name != "dbg" || ec.MaxSeries != exporters.DefaultConsoleConfig().MaxSeries {
			t.Errorf("console config %+v", ec)
		}
	})
	t.Run("SABAKI_DATA_DIR overrides agent.data_dir", func(t *testing.T) {
		env["SABAKI_DATA_DIR"] = "/var/lib/sabaki"
		defer delete(env, "SABAKI_DATA_DIR")
		cfg, ps := parseConfig("f", []byte("agent:\n  data_dir: ./here\n"), lookup, false)
		if len(ps) > 0 {
			t.Fatal(ps)
		}
		if cfg.Agent.DataDir != "/var/lib/sabaki" {
			t.Errorf("data_dir = %q", cfg.Agent.DataDir)
		}
	})
	t.Run("env expansion", func(t *testing.T) {
		env["WIN"] = "5s"
		defer delete(env, "WIN")
		cfg, ps := parseConfig("f", []byte("agent:\n  window: ${WIN}\n  lateness: ${NOPE:-1m}\n"), lookup, false)
		if len(ps) > 0 {
			t.Fatal(ps)
		}
		if cfg.Agent.Window.D() != 5*time.Second || cfg.Agent.Lateness.D() != time.Minute {
			t.Errorf("agent = %+v", cfg.Agent)
		}
	})
	t.Run("default retention follows a short window", func(t *testing.T) {
		cfg, ps := parseConfig("f", []byte("agent:\n  window: 1s\n"), lookup, false)
		if len(ps) > 0 {
			t.Fatal(ps)
		}
		if cfg.Retention[0].Resolution.D() != time.Second || len(cfg.Retention) != 3 {
			t.Errorf("retention = %v", cfg.Retention)
		}
	})
}

func TestSameAddr(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1:4317", "127.0.0.1:4317", true},
		{"127.0.0.1:4317", "127.0.0.1:4318", false},
		{"0.0.0.0:4317", "127.0.0.1:4317", true},
		{":9469", "127.0.0.1:9469", true},
		{"127.0.0.1:0", "127.0.0.1:0", false},
		{"10.0.0.1:80", "10.0.0.2:80", false},
	}
	for _, tc := range tests {
		if got := sameAddr(tc.a, tc.b); got != tc.want {
			t.Errorf("sameAddr(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestCredentialedDefaults(t *testing.T) {
	dir := t.TempDir()
	sa := filepath.Join(dir, "sa.json")
	os.WriteFile(sa, []byte(`{"type":"service_account","project_id":"proj-from-file"}`), 0o600)
	tests := []struct {
		name      string
		env       map[string]string
		wantSrc   []string
		wantExp   []string
		checkProj string
	}{
		{"nothing", map[string]string{"HOME": dir}, []string{"self"}, []string{"console"}, ""},
		{"service account file", map[string]string{"GOOGLE_APPLICATION_CREDENTIALS": sa}, []string{"self", "cloudmonitoring"}, []string{"console"}, "proj-from-file"},
		{"project from env wins", map[string]string{"GOOGLE_APPLICATION_CREDENTIALS": sa, "GOOGLE_CLOUD_PROJECT": "p2"}, []string{"self", "cloudmonitoring"}, []string{"console"}, "p2"},
		{"project without credentials", map[string]string{"GOOGLE_CLOUD_PROJECT": "p2", "HOME": dir}, []string{"self"}, []string{"console"}, ""},
		{"missing credentials file", map[string]string{"GOOGLE_APPLICATION_CREDENTIALS": filepath.Join(dir, "nope.json"), "GOOGLE_CLOUD_PROJECT": "p2"}, []string{"self"}, []string{"console"}, ""},
	}
	if _, ok := exporterTypes()["mackerel"]; ok {
		tests = append(tests, struct {
			name      string
			env       map[string]string
			wantSrc   []string
			wantExp   []string
			checkProj string
		}{"mackerel key", map[string]string{"MACKEREL_APIKEY": "k", "HOME": dir}, []string{"self"}, []string{"console", "mackerel"}, ""})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
			cfg, ps := parseConfig(defaultConfigName, configsDefault(), lookup, true)
			if len(ps) > 0 {
				t.Fatal(ps)
			}
			var src, exp []string
			for _, s := range cfg.Sources {
				if s.Type != "otlp" {
					src = append(src, s.Type)
				}
				if s.Type == "cloudmonitoring" && tc.checkProj != "" {
					if p := reflectField(s.Config, "Project"); p != tc.checkProj {
						t.Errorf("project = %q, want %q", p, tc.checkProj)
					}
				}
			}
			for _, e := range cfg.Exporters {
				exp = append(exp, e.Type)
			}
			if strings.Join(src, ",") != strings.Join(tc.wantSrc, ",") || strings.Join(exp, ",") != strings.Join(tc.wantExp, ",") {
				t.Errorf("sources %v exporters %v, want %v and %v", src, exp, tc.wantSrc, tc.wantExp)
			}
		})
	}
}
