// Package config holds the pieces every config section shares: strict YAML
// decoding with file positions and "did you mean" suggestions, ${ENV}
// expansion, field errors from Validate, and the Duration and Bytes types.
//
// A config section is a struct with yaml tags and a Validate() error method.
// Validate reports problems with Field (or Fieldf) so the loader can point at
// the line of the offending key:
//
//	func (c *PrometheusConfig) Validate() error {
//		var errs []error
//		if c.Interval <= 0 {
//			errs = append(errs, config.Field("interval", "must be positive"))
//		}
//		return errors.Join(errs...)
//	}
package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Problem is one thing wrong with a config file, with its position.
type Problem struct {
	Line, Col int
	Path      string // e.g. sources[1].interval
	Msg       string
}

// Format renders the problem as FILE:LINE:COL: path: message.
func (p Problem) Format(file string) string {
	path := p.Path
	if path == "" {
		path = "(root)"
	}
	return fmt.Sprintf("%s:%d:%d: %s: %s", file, p.Line, p.Col, path, p.Msg)
}

// Problems is a list of problems; it is an error when non-empty.
type Problems []Problem

func (ps Problems) Error() string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Format("config")
	}
	return strings.Join(s, "\n")
}

// Sort orders problems by position.
func (ps Problems) Sort() {
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Line != ps[j].Line {
			return ps[i].Line < ps[j].Line
		}
		return ps[i].Col < ps[j].Col
	})
}

// FieldError is a validation error about one field, named by its path relative
// to the section being validated ("interval", "targets[2]", "tls.ca_file").
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Field returns a *FieldError for field with a formatted message.
func Field(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// Validator is implemented by config sections.
type Validator interface {
	Validate() error
}

// Join prefixes every FieldError in err with prefix (used by a section that
// validates sub-sections: config.Join("tls", c.TLS.Validate())).
func Join(prefix string, err error) error {
	if err == nil {
		return nil
	}
	var out []error
	for _, e := range flatten(err) {
		var fe *FieldError
		if errors.As(e, &fe) {
			out = append(out, &FieldError{Field: joinPath(prefix, fe.Field), Err: fe.Err})
		} else {
			out = append(out, &FieldError{Field: prefix, Err: e})
		}
	}
	return errors.Join(out...)
}

func joinPath(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	case strings.HasPrefix(b, "["):
		return a + b
	}
	return a + "." + b
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// Decode strictly decodes node into out (a pointer to a struct, slice or map),
// keeping any defaults already in out. Unknown keys are reported with a
// "did you mean" suggestion; type errors with their position. path is the
// node's own path in the file (e.g. "sources[1]"), used to name problems.
// When out implements Validator and decoding succeeded, Validate is called
// and its FieldErrors are mapped to the lines of the fields they name.
func Decode(node *yaml.Node, path string, out any) Problems {
	if node == nil {
		return nil
	}
	if node.Kind == yaml.DocumentNode && len(node.Content) > 0 {
		node = node.Content[0]
	}
	var ps Problems
	checkKeys(node, reflect.TypeOf(out), path, &ps)
	if len(ps) > 0 {
		return ps
	}
	if err := node.Decode(out); err != nil {
		ps = append(ps, typeErrors(node, path, err)...)
		return ps
	}
	if v, ok := out.(Validator); ok {
		ps = append(ps, ValidationProblems(node, path, v.Validate())...)
	}
	return ps
}

// ValidationProblems maps the FieldErrors in err (as returned by Validate) to
// the positions of the fields they name under node.
func ValidationProblems(node *yaml.Node, path string, err error) Problems {
	if err == nil {
		return nil
	}
	var ps Problems
	for _, e := range flatten(err) {
		field, msg := "", e.Error()
		var fe *FieldError
		if errors.As(e, &fe) {
			field, msg = fe.Field, fe.Err.Error()
		}
		n := Lookup(node, field)
		ps = append(ps, Problem{Line: n.Line, Col: n.Column, Path: joinPath(path, field), Msg: msg})
	}
	return ps
}

// Lookup returns the node at the relative path under node ("a.b[2].c"); when a
// part is missing it returns the deepest node found, so a problem about a
// missing field points at the section that lacks it.
func Lookup(node *yaml.Node, rel string) *yaml.Node {
	cur := node
	for _, part := range splitPath(rel) {
		if cur.Kind == yaml.DocumentNode && len(cur.Content) > 0 {
			cur = cur.Content[0]
		}
		next := (*yaml.Node)(nil)
		if idx, err := strconv.Atoi(part); err == nil && cur.Kind == yaml.SequenceNode {
			if idx >= 0 && idx < len(cur.Content) {
				next = cur.Content[idx]
			}
		} else if cur.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(cur.Content); i += 2 {
				if cur.Content[i].Value == part {
					next = cur.Content[i+1]
					if next.Kind == yaml.ScalarNode {
						next = cur.Content[i] // point at the key for scalars
						return next
					}
					break
				}
			}
		}
		if next == nil {
			return cur
		}
		cur = next
	}
	return cur
}

func splitPath(p string) []string {
	p = strings.ReplaceAll(p, "[", ".")
	p = strings.ReplaceAll(p, "]", "")
	var out []string
	for _, s := range strings.Split(p, ".") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

var lineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

func typeErrors(node *yaml.Node, path string, err error) Problems {
	msgs := []string{err.Error()}
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	var ps Problems
	for _, msg := range msgs {
		p := Problem{Line: node.Line, Col: node.Column, Path: path, Msg: msg}
		if m := lineRE.FindStringSubmatch(msg); m != nil {
			p.Line, _ = strconv.Atoi(m[1])
			p.Col = 1
			p.Msg = m[2]
			if n, sub := findByLine(node, p.Line, ""); n != nil {
				p.Col = n.Column
				p.Path = joinPath(path, sub)
			}
		}
		ps = append(ps, p)
	}
	return ps
}

// findByLine returns the last scalar value on line under n and its path.
func findByLine(n *yaml.Node, line int, rel string) (*yaml.Node, string) {
	if n.Kind == yaml.ScalarNode && n.Line == line {
		return n, rel
	}
	var found *yaml.Node
	var foundPath string
	for i, c := range n.Content {
		sub := rel
		switch n.Kind {
		case yaml.MappingNode:
			if i%2 == 0 {
				continue
			}
			sub = joinPath(rel, n.Content[i-1].Value)
		case yaml.SequenceNode:
			sub = fmt.Sprintf("%s[%d]", rel, i)
		}
		if f, p := findByLine(c, line, sub); f != nil {
			found, foundPath = f, p
		}
	}
	return found, foundPath
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
var nodeType = reflect.TypeOf(yaml.Node{})

// checkKeys walks node against t and reports keys that t has no field for.
func checkKeys(node *yaml.Node, t reflect.Type, path string, ps *Problems) {
	if node == nil || t == nil {
		return
	}
	if node.Kind == yaml.AliasNode {
		node = node.Alias
	}
	for t.Kind() == reflect.Pointer {
		if t.Implements(unmarshalerType) {
			return
		}
		t = t.Elem()
	}
	if t == nodeType || t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType) {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if node.Kind != yaml.MappingNode {
			return // the decoder reports the type error
		}
		fields := structFields(t)
		for i := 0; i+1 < len(node.Content); i += 2 {
			k, v := node.Content[i], node.Content[i+1]
			if k.Value == "<<" {
				continue
			}
			ft, ok := fields[k.Value]
			if !ok {
				msg := fmt.Sprintf("unknown key %q", k.Value)
				if s := suggest(k.Value, fields); s != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", s)
				}
				*ps = append(*ps, Problem{Line: k.Line, Col: k.Column, Path: joinPath(path, k.Value), Msg: msg})
				continue
			}
			checkKeys(v, ft, joinPath(path, k.Value), ps)
		}
	case reflect.Slice, reflect.Array:
		if node.Kind != yaml.SequenceNode {
			return
		}
		for i, c := range node.Content {
			checkKeys(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), ps)
		}
	case reflect.Map:
		if node.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(node.Content); i += 2 {
			checkKeys(node.Content[i+1], t.Elem(), joinPath(path, node.Content[i].Value), ps)
		}
	}
}

// structFields maps yaml key names to field types, following ",inline".
func structFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(opts, "inline") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range structFields(ft) {
					m[k] = v
				}
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = f.Type
	}
	return m
}

// suggest returns the known key closest to k, if it is close enough to be a typo.
func suggest(k string, fields map[string]reflect.Type) string {
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	return Suggest(k, names)
}

// Suggest returns the name in known closest to s (case-insensitively, by
// edit distance; the first in known wins a tie) when it is close enough to be
// a typo (at most max(2, len(s)/3) edits), else "". It is the "did you mean"
// of every config and command error.
func Suggest(s string, known []string) string {
	best, bestD := "", 1<<30
	for _, k := range known {
		if d := EditDistance(strings.ToLower(s), k); d < bestD {
			best, bestD = k, d
		}
	}
	if bestD <= max(2, len(s)/3) {
		return best
	}
	return ""
}

// EditDistance is the Levenshtein distance between a and b, in bytes.
func EditDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var envRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// ExpandEnv replaces ${NAME} and ${NAME:-default} in every scalar value under
// node (not in keys). lookup is os.LookupEnv in production. "$${" escapes a
// literal "${". Expansion happens after parsing so that a value can never
// inject YAML structure, and positions stay those of the file.
func ExpandEnv(node *yaml.Node, lookup func(string) (string, bool)) {
	if lookup == nil {
		lookup = os.LookupEnv
	}
	var walk func(n *yaml.Node, isKey bool)
	walk = func(n *yaml.Node, isKey bool) {
		if n.Kind == yaml.ScalarNode && !isKey && strings.Contains(n.Value, "${") {
			const esc = "\x00esc\x00"
			s := strings.ReplaceAll(n.Value, "$${", esc)
			s = envRE.ReplaceAllStringFunc(s, func(m string) string {
				sub := envRE.FindStringSubmatch(m)
				if v, ok := lookup(sub[1]); ok && (v != "" || sub[2] == "") {
					return v
				}
				return sub[3]
			})
			n.Value = strings.ReplaceAll(s, esc, "${")
			if n.Tag == "!!null" || n.Tag == "" {
				n.Tag = "" // let the decoder re-resolve the expanded value
			}
		}
		for i, c := range n.Content {
			walk(c, n.Kind == yaml.MappingNode && i%2 == 0)
		}
	}
	walk(node, false)
}
