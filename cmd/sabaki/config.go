package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sabakiio/sabaki/agent"
	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/configs"
	"github.com/sabakiio/sabaki/exporters"
	"github.com/sabakiio/sabaki/internal/config"
	"github.com/sabakiio/sabaki/sources"
)

// Config is the whole sabaki config file. Every field has a default; see
// configs/default.yaml for the embedded default and configs/reference.yaml
// for every section.
type Config struct {
	Agent     agent.AgentConfig
	Resource  agent.ResourceConfig
	Sources   []sourceEntry
	Rules     []agent.RuleConfig
	Histogram agent.HistogramConfig
	Retention []store.TierConfig
	Exporters []exporterEntry

	// File names the file the config came from, for messages.
	File string
}

// sourceEntry is one decoded entry under `sources:`; Config points to the
// type's own config struct (e.g. *sources.SelfConfig).
type sourceEntry struct {
	Type, Name string
	Config     any
	Path       string // "sources[2]", for messages
}

// exporterEntry is one decoded entry under `exporters:`.
type exporterEntry struct {
	Type, Name string
	Config     any
	Path       string
}

// rawConfig is the top level of the file: known sections, kept as nodes so
// each is decoded strictly on its own (and lists by their `type`).
type rawConfig struct {
	Agent, Resource, Histogram           *yaml.Node
	Sources, Rules, Retention, Exporters []*yaml.Node
}

var sections = []string{"agent", "resource", "sources", "rules", "histogram", "retention", "exporters"}

// splitSections sorts the top-level keys of doc into raw, reporting unknown
// keys (with a suggestion) and lists that are not lists.
func splitSections(doc *yaml.Node, raw *rawConfig) config.Problems {
	var ps config.Problems
	list := func(k, v *yaml.Node) []*yaml.Node {
		switch v.Kind {
		case yaml.SequenceNode:
			return v.Content
		case yaml.ScalarNode:
			if v.Tag == "!!null" {
				return nil
			}
		}
		ps = append(ps, config.Problem{Line: v.Line, Col: v.Column, Path: k.Value, Msg: "must be a list (- type: ...)"})
		return nil
	}
	for i := 0; i+1 < len(doc.Content); i += 2 {
		k, v := doc.Content[i], doc.Content[i+1]
		if v.Kind == yaml.AliasNode {
			v = v.Alias
		}
		switch k.Value {
		case "agent":
			raw.Agent = v
		case "resource":
			raw.Resource = v
		case "histogram":
			raw.Histogram = v
		case "sources":
			raw.Sources = list(k, v)
		case "rules":
			raw.Rules = list(k, v)
		case "retention":
			raw.Retention = list(k, v)
			if raw.Retention == nil {
				raw.Retention = []*yaml.Node{}
			}
		case "exporters":
			raw.Exporters = list(k, v)
		default:
			msg := fmt.Sprintf("unknown key %q", k.Value)
			if s := config.Suggest(k.Value, sections); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			ps = append(ps, config.Problem{Line: k.Line, Col: k.Column, Path: k.Value, Msg: msg})
		}
	}
	return ps
}

// defaultConfigName is how messages name the embedded default config.
const defaultConfigName = "(embedded default config)"

// loadConfig reads, expands and strictly decodes the config at path; an empty
// path loads the embedded configs/default.yaml (plus the Mackerel exporter and
// Cloud Monitoring source when their credentials are present). It is the one
// loader behind run, validate, query, export and backfill. On problems the
// returned config is nil and every problem found is returned, sorted by line.
func loadConfig(path string) (*Config, config.Problems) {
	if path == "" {
		return parseConfig(defaultConfigName, configs.Default, os.LookupEnv, true)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, config.Problems{{Msg: fmt.Sprintf("reading config: %v", errors.Unwrap(err))}}
	}
	return parseConfig(path, data, os.LookupEnv, false)
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseConfig is loadConfig on bytes, with the environment as a function
// (tests pass a map).
func parseConfig(file string, data []byte, lookup func(string) (string, bool), isDefault bool) (*Config, config.Problems) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		p := config.Problem{Line: 1, Col: 1, Msg: err.Error()}
		if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
			p.Line, _ = strconv.Atoi(m[1])
			p.Msg = m[2]
		}
		return nil, config.Problems{p}
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		doc = doc.Content[0]
	}
	if doc.Kind == 0 { // empty file: every default
		doc = &yaml.Node{Kind: yaml.MappingNode, Line: 1, Column: 1}
	}
	if doc.Kind != yaml.MappingNode {
		return nil, config.Problems{{Line: doc.Line, Col: doc.Column, Msg: "the config must be a mapping (agent:, sources:, exporters:, ...)"}}
	}
	config.ExpandEnv(doc, lookup)
	if isDefault {
		addCredentialedDefaults(doc, lookup)
	}

	var raw rawConfig
	ps := splitSections(doc, &raw)
	if len(ps) > 0 {
		ps.Sort()
		return nil, ps
	}
	cfg := &Config{
		File:      file,
		Agent:     agent.DefaultAgentConfig(),
		Resource:  agent.DefaultResourceConfig(),
		Histogram: agent.DefaultHistogramConfig(),
	}
	ps = append(ps, config.Decode(raw.Agent, "agent", &cfg.Agent)...)
	if v, ok := lookup("SABAKI_DATA_DIR"); ok && v != "" {
		cfg.Agent.DataDir = v
	}
	ps = append(ps, config.Decode(raw.Resource, "resource", &cfg.Resource)...)
	ps = append(ps, config.Decode(raw.Histogram, "histogram", &cfg.Histogram)...)
	for i, n := range raw.Rules {
		r := agent.DefaultRuleConfig()
		ps = append(ps, config.Decode(n, fmt.Sprintf("rules[%d]", i), &r)...)
		cfg.Rules = append(cfg.Rules, r)
	}
	if raw.Retention == nil { // absent; an empty list is reported by crossCheck
		cfg.Retention = defaultRetention(cfg.Agent.Window.D())
	}
	for i, n := range raw.Retention {
		var t store.TierConfig
		ps = append(ps, config.Decode(n, fmt.Sprintf("retention[%d]", i), &t)...)
		cfg.Retention = append(cfg.Retention, t)
	}

	srcTypes, expTypes := sourceTypes(), exporterTypes()
	for i, n := range raw.Sources {
		path := fmt.Sprintf("sources[%d]", i)
		typ, p := entryType(n, path, "source", keys(srcTypes))
		if p != nil {
			ps = append(ps, *p)
			continue
		}
		c := srcTypes[typ].newConfig()
		ps = append(ps, config.Decode(n, path, c)...)
		cfg.Sources = append(cfg.Sources, sourceEntry{Type: typ, Name: nameOf(c, typ), Config: c, Path: path})
	}
	for i, n := range raw.Exporters {
		path := fmt.Sprintf("exporters[%d]", i)
		typ, p := entryType(n, path, "exporter", keys(expTypes))
		if p != nil {
			ps = append(ps, *p)
			continue
		}
		c := expTypes[typ].newConfig()
		ps = append(ps, config.Decode(n, path, c)...)
		cfg.Exporters = append(cfg.Exporters, exporterEntry{Type: typ, Name: nameOf(c, typ), Config: c, Path: path})
	}
	if len(ps) == 0 {
		ps = append(ps, crossCheck(cfg, doc, &raw)...)
	}
	if len(ps) > 0 {
		ps.Sort()
		return nil, ps
	}
	return cfg, nil
}

// crossCheck finds problems no single section can see: retention against the
// window, duplicate names, two listeners on one address.
func crossCheck(cfg *Config, doc *yaml.Node, raw *rawConfig) config.Problems {
	var ps config.Problems
	if err := store.ValidateRetention(cfg.Retention, cfg.Agent.Window.D()); err != nil {
		node := doc
		if len(raw.Retention) > 0 {
			node = config.Lookup(doc, "retention")
		}
		ps = append(ps, config.ValidationProblems(node, "retention", err)...)
	}
	dup := func(kind string, names []string, paths []string) {
		seen := map[string]string{}
		for i, n := range names {
			if prev, ok := seen[n]; ok {
				node := config.Lookup(doc, paths[i]+".name")
				ps = append(ps, config.Problem{Line: node.Line, Col: node.Column, Path: paths[i] + ".name",
					Msg: fmt.Sprintf("duplicate %s name %q (also %s); give each a distinct name", kind, n, prev)})
				continue
			}
			seen[n] = paths[i]
		}
	}
	var names, paths []string
	for _, s := range cfg.Sources {
		names, paths = append(names, s.Name), append(paths, s.Path)
	}
	dup("source", names, paths)
	names, paths = nil, nil
	for _, e := range cfg.Exporters {
		names, paths = append(names, e.Name), append(paths, e.Path)
	}
	dup("exporter", names, paths)

	// Listeners: every string field whose yaml key ends in "listen".
	type listener struct{ path, addr string }
	var ls []listener
	if cfg.Agent.AdminListen != "" {
		ls = append(ls, listener{"agent.admin_listen", cfg.Agent.AdminListen})
	}
	for _, s := range cfg.Sources {
		for _, f := range listenFields(s.Config) {
			ls = append(ls, listener{s.Path + "." + f[0], f[1]})
		}
	}
	for _, e := range cfg.Exporters {
		for _, f := range listenFields(e.Config) {
			ls = append(ls, listener{e.Path + "." + f[0], f[1]})
		}
	}
	for i := range ls {
		for j := 0; j < i; j++ {
			if sameAddr(ls[i].addr, ls[j].addr) {
				node := config.Lookup(doc, ls[i].path)
				ps = append(ps, config.Problem{Line: node.Line, Col: node.Column, Path: ls[i].path,
					Msg: fmt.Sprintf("address %s is also used by %s", ls[i].addr, ls[j].path)})
				break
			}
		}
	}
	return ps
}

// listenFields returns [yaml key, value] of every non-empty string field of
// the struct behind cfg whose yaml key ends in "listen".
func listenFields(cfg any) [][2]string {
	v := reflect.ValueOf(cfg)
	for v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return nil
	}
	var out [][2]string
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if f.IsExported() && f.Type.Kind() == reflect.String && strings.HasSuffix(name, "listen") && v.Field(i).String() != "" {
			out = append(out, [2]string{name, v.Field(i).String()})
		}
	}
	return out
}

// sameAddr reports whether two listen addresses would collide: the same
// port, and the same host or a wildcard host on either side.
func sameAddr(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return ha == hb || wild(ha) || wild(hb)
}

// entryType returns the `type:` of a list entry, or a problem saying what is
// wrong with it.
func entryType(n *yaml.Node, path, what string, known []string) (string, *config.Problem) {
	if n.Kind != yaml.MappingNode {
		return "", &config.Problem{Line: n.Line, Col: n.Column, Path: path, Msg: fmt.Sprintf("a %s must be a mapping with a type (known types: %s)", what, strings.Join(known, ", "))}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value != "type" {
			continue
		}
		v := n.Content[i+1]
		if slices.Contains(known, v.Value) {
			return v.Value, nil
		}
		msg := fmt.Sprintf("unknown %s type %q", what, v.Value)
		if s := config.Suggest(v.Value, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		msg += fmt.Sprintf(" (known types: %s)", strings.Join(known, ", "))
		return "", &config.Problem{Line: v.Line, Col: v.Column, Path: path + ".type", Msg: msg}
	}
	return "", &config.Problem{Line: n.Line, Col: n.Column, Path: path, Msg: fmt.Sprintf("missing type (known types: %s)", strings.Join(known, ", "))}
}

// nameOf returns the Name of the sources.Common or exporters.Common embedded
// in cfg, setting it to typ when empty (the documented default).
func nameOf(cfg any, typ string) string {
	v := reflect.ValueOf(cfg).Elem()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		switch c := f.Addr().Interface().(type) {
		case *sources.Common:
			if c.Name == "" {
				c.Name = typ
			}
			return c.Name
		case *exporters.Common:
			if c.Name == "" {
				c.Name = typ
			}
			return c.Name
		}
	}
	return typ
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// addCredentialedDefaults extends the embedded default config with the parts
// that need credentials, when the credentials are present (and the type is
// wired into this build):
//
//   - MACKEREL_APIKEY set: a Mackerel exporter for the service named by
//     MACKEREL_SERVICE (default "sabaki").
//   - Google credentials in a file (GOOGLE_APPLICATION_CREDENTIALS or the
//     gcloud application-default file) and a project (GOOGLE_CLOUD_PROJECT,
//     GCLOUD_PROJECT, CLOUDSDK_CORE_PROJECT, or the credentials file's
//     project_id / quota_project_id): a Cloud Monitoring source for that
//     project. The metadata server alone does not turn it on: on Cloud Run
//     every sidecar instance would poll the same project (API quota, and the
//     same points counted once per instance); run one poller per project
//     with an explicit config instead.
//
// The additions go through the same decoding and validation as the file.
func addCredentialedDefaults(doc *yaml.Node, lookup func(string) (string, bool)) {
	add := func(section, snippet string) {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(snippet), &n); err != nil || len(n.Content) == 0 {
			return
		}
		entry := n.Content[0]
		config.ExpandEnv(entry, lookup)
		seq := config.Lookup(doc, section)
		if seq == doc || seq.Kind != yaml.SequenceNode {
			doc.Content = append(doc.Content,
				&yaml.Node{Kind: yaml.ScalarNode, Value: section},
				&yaml.Node{Kind: yaml.SequenceNode})
			seq = doc.Content[len(doc.Content)-1]
		}
		seq.Content = append(seq.Content, entry)
	}
	if v, ok := lookup("MACKEREL_APIKEY"); ok && v != "" {
		if _, wired := exporterTypes()["mackerel"]; wired {
			add("exporters", "type: mackerel\nservice: ${MACKEREL_SERVICE:-sabaki}\napi_key: ${MACKEREL_APIKEY}\n")
		}
	}
	if _, wired := sourceTypes()["cloudmonitoring"]; wired {
		if project, credFile, ok := googleCredentials(lookup); ok {
			snippet := "type: cloudmonitoring\nproject: " + strconv.Quote(project) + "\n"
			if credFile != "" {
				snippet += "credentials_file: " + strconv.Quote(credFile) + "\n"
			}
			add("sources", snippet)
		}
	}
}

// googleCredentials finds a Google credentials file and a project without
// touching the network. credFile is empty when the gcloud
// application-default file was found (the client finds it itself).
func googleCredentials(lookup func(string) (string, bool)) (project, credFile string, ok bool) {
	file := ""
	if v, ok := lookup("GOOGLE_APPLICATION_CREDENTIALS"); ok && v != "" {
		file, credFile = v, v
	} else {
		dir, _ := lookup("CLOUDSDK_CONFIG")
		if dir == "" {
			if home, ok := lookup("HOME"); ok && home != "" {
				dir = filepath.Join(home, ".config", "gcloud")
			}
		}
		if dir != "" {
			file = filepath.Join(dir, "application_default_credentials.json")
		}
	}
	if file == "" {
		return "", "", false
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", "", false
	}
	for _, k := range []string{"GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"} {
		if v, ok := lookup(k); ok && v != "" {
			return v, credFile, true
		}
	}
	var f struct {
		ProjectID      string `json:"project_id"`
		QuotaProjectID string `json:"quota_project_id"`
	}
	if json.Unmarshal(data, &f) != nil {
		return "", "", false
	}
	if f.ProjectID != "" {
		return f.ProjectID, credFile, true
	}
	if f.QuotaProjectID != "" {
		return f.QuotaProjectID, credFile, true
	}
	return "", "", false
}

// defaultRetention is store.DefaultRetention with its first tier's
// resolution set to the agent's window (the store keeps what the pipeline
// emits), dropping the coarser default tiers that are not multiples of it.
func defaultRetention(window time.Duration) []store.TierConfig {
	tiers := store.DefaultRetention()
	if window <= 0 || tiers[0].Resolution.D() == window {
		return tiers
	}
	out := []store.TierConfig{{Resolution: config.Duration(window), Keep: tiers[0].Keep}}
	for _, t := range tiers[1:] {
		if t.Resolution.D() > window && t.Resolution.D()%window == 0 {
			out = append(out, t)
		}
	}
	return out
}

// formatProblem renders p as FILE:LINE:COL: path: message, or FILE: message
// for problems without a position (an unreadable file).
func formatProblem(file string, p config.Problem) string {
	if p.Line == 0 {
		return file + ": " + p.Msg
	}
	return p.Format(file)
}
