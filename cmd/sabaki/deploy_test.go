package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// sabakiConfigs returns every sabaki config under configs/ (recursively,
// without testdata/): YAML files that are not Kubernetes-style manifests.
func sabakiConfigs(t *testing.T) (configsFiles, manifests []string) {
	t.Helper()
	err := filepath.WalkDir("../../configs", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "testdata" {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".yaml") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var top map[string]any
		if err := yaml.Unmarshal(data, &top); err != nil {
			t.Errorf("%s: %v", path, err)
			return nil
		}
		if _, ok := top["apiVersion"]; ok {
			manifests = append(manifests, path)
		} else {
			configsFiles = append(configsFiles, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return configsFiles, manifests
}

// TestAllConfigsValidate runs `sabaki validate` on every config under
// configs/, including the deployment ones in subdirectories.
func TestAllConfigsValidate(t *testing.T) {
	files, _ := sabakiConfigs(t)
	if len(files) < 4 {
		t.Fatalf("found only %v", files)
	}
	t.Setenv("MACKEREL_APIKEY", "test-key") // the deployment configs read it
	for _, f := range files {
		var out, errb bytes.Buffer
		if code := run([]string{"validate", "-config", f}, &out, &errb); code != 0 {
			t.Errorf("validate %s: exit %d\n%s", f, code, errb.String())
		}
	}
}

// TestDeploymentManifests checks that the Cloud Run manifests name configs
// the container image really holds, and that sabaki's probes hit its admin
// port.
func TestDeploymentManifests(t *testing.T) {
	_, manifests := sabakiConfigs(t)
	if len(manifests) == 0 {
		t.Fatal("no deployment manifests under configs/")
	}
	dockerfile, err := os.ReadFile("../../configs/container/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// /etc/sabaki/<name> in the image ← configs/.../<name> in the repository.
	inImage := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^COPY (configs/\S+(?: configs/\S+)*) (/etc/sabaki/\S*)$`).FindAllStringSubmatch(string(dockerfile), -1) {
		srcs, dst := strings.Fields(m[1]), m[2]
		for _, src := range srcs {
			name := dst
			if strings.HasSuffix(dst, "/") {
				name = dst + filepath.Base(src)
			}
			inImage[name] = src
			if _, err := os.Stat(filepath.Join("../..", src)); err != nil {
				t.Errorf("Dockerfile copies %s, which does not exist", src)
			}
		}
	}
	if inImage["/etc/sabaki/sabaki.yaml"] == "" {
		t.Errorf("the image has no /etc/sabaki/sabaki.yaml (its CMD uses it); copies: %v", inImage)
	}
	for _, f := range manifests {
		data, _ := os.ReadFile(f)
		var svc struct {
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Name         string   `yaml:"name"`
							Args         []string `yaml:"args"`
							StartupProbe struct {
								HTTPGet struct {
									Path string `yaml:"path"`
									Port int    `yaml:"port"`
								} `yaml:"httpGet"`
							} `yaml:"startupProbe"`
						} `yaml:"containers"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		}
		if err := yaml.Unmarshal(data, &svc); err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		found := false
		for _, c := range svc.Spec.Template.Spec.Containers {
			if c.Name != "sabaki" {
				continue
			}
			found = true
			cfgPath := ""
			for i, a := range c.Args {
				if a == "-config" && i+1 < len(c.Args) {
					cfgPath = c.Args[i+1]
				}
			}
			src, ok := inImage[cfgPath]
			if !ok {
				t.Errorf("%s: sabaki runs -config %q, which the image does not contain", f, cfgPath)
				continue
			}
			cfg, ps := loadConfig(filepath.Join("../..", src))
			if len(ps) > 0 {
				t.Errorf("%s: %v", src, ps)
				continue
			}
			if p := c.StartupProbe.HTTPGet; p.Path != "/readyz" || !strings.HasSuffix(cfg.Agent.AdminListen, ":"+strconv.Itoa(p.Port)) || !strings.HasPrefix(cfg.Agent.AdminListen, "0.0.0.0:") {
				t.Errorf("%s: startup probe %s:%d does not reach admin_listen %s of %s", f, p.Path, p.Port, cfg.Agent.AdminListen, src)
			}
		}
		if !found {
			t.Errorf("%s: no container named sabaki", f)
		}
	}
}

// TestSystemdUnitVerifies runs systemd-analyze verify (Debian's systemd
// package; .ci/run installs it) on configs/systemd/sabaki.service, with
// ExecStart pointing at this test binary so the check that it is executable
// passes. Any warning fails the test.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd); .ci/run installs it")
	}
	unit, err := os.ReadFile("../../configs/systemd/sabaki.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "DynamicUser=yes", "StateDirectory=sabaki", "ConfigurationDirectory=sabaki",
		"EnvironmentFile=", "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes",
		"CapabilityBoundingSet=\n", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service",
		"Restart=on-failure", "ExecStart=/usr/local/bin/sabaki run -config /etc/sabaki/sabaki.yaml"} {
		if !bytes.Contains(unit, []byte(want)) {
			t.Errorf("unit lacks %q", want)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "sabaki.service")
	os.WriteFile(path, bytes.ReplaceAll(unit, []byte("/usr/local/bin/sabaki"), []byte(self)), 0o644)
	out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestREADMEConfigsValidate validates every complete config in the README
// (```yaml blocks whose first line is a top-level config section) and checks that each
// is the content of a file under configs/, so README and files cannot drift.
func TestREADMEConfigsValidate(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllSubmatch(readme, -1)
	n := 0
	for i, b := range blocks {
		body := b[1]
		first := ""
		for _, line := range strings.Split(string(body), "\n") {
			if s := strings.TrimSpace(line); s != "" && !strings.HasPrefix(s, "#") {
				first = line
				break
			}
		}
		key, _, _ := strings.Cut(first, ":")
		if !slices.Contains(sections, key) {
			continue // a fragment (one list entry) or another file format (capacity limits)
		}
		n++
		lookup := func(k string) (string, bool) { return "set", k == "MACKEREL_APIKEY" }
		if _, ps := parseConfig("README.md block", body, lookup, false); len(ps) > 0 {
			t.Errorf("README yaml block %d does not validate:\n%v\n%s", i, ps, body)
		}
		files, _ := sabakiConfigs(t)
		found := false
		for _, f := range files {
			if data, _ := os.ReadFile(f); bytes.Contains(data, body) {
				found = true
			}
		}
		if !found {
			t.Errorf("README yaml block %d is not the content of any file under configs/:\n%s", i, body)
		}
	}
	if n == 0 {
		t.Error("no complete config found in README.md")
	}
}
