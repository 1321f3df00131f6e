package fakegcp

import (
	"fmt"
	"strconv"
	"strings"

	"cloud.google.com/go/monitoring/apiv3/v2/monitoringpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// filter is the subset of the Monitoring filter language the fake
// understands: clauses joined by AND (parentheses allowed), each
// `selector op value` with selector metric.type, resource.type, project,
// resource.label(s).K or metric.label(s).K, op = or !=, and value a quoted
// string, one_of("a", …) or starts_with("p"). OR is rejected.
type filter struct {
	metricType string
	clauses    []clause
}

type clause struct {
	selector string
	negate   bool
	values   []string // one_of / equality
	prefix   bool     // starts_with
}

func parseFilter(src string) (*filter, error) {
	parts, err := splitAnd(src)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "filter %q: %v", src, err)
	}
	f := &filter{}
	nType := 0
	for _, p := range parts {
		c, err := parseClause(p)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "filter %q: %v", src, err)
		}
		if c.selector == "metric.type" {
			if c.negate || c.prefix || len(c.values) != 1 {
				return nil, status.Errorf(codes.InvalidArgument, "filter %q: a time series filter must name a single metric type", src)
			}
			f.metricType = c.values[0]
			nType++
			continue
		}
		f.clauses = append(f.clauses, c)
	}
	if nType != 1 {
		return nil, status.Errorf(codes.InvalidArgument, "filter %q: a time series filter must name exactly one metric type", src)
	}
	return f, nil
}

// splitAnd splits src on top-level AND, dropping parentheses that enclose a
// whole group.
func splitAnd(src string) ([]string, error) {
	src = strings.TrimSpace(src)
	if src == "" {
		return nil, fmt.Errorf("empty filter")
	}
	var parts []string
	depth, inQ, last := 0, false, 0
	for i := 0; i < len(src); i++ {
		switch ch := src[i]; {
		case ch == '\\' && inQ:
			i++
		case ch == '"':
			inQ = !inQ
		case inQ:
		case ch == '(':
			depth++
		case ch == ')':
			depth--
		case depth == 0 && (strings.HasPrefix(src[i:], " AND ") || strings.HasPrefix(src[i:], " OR ")):
			if strings.HasPrefix(src[i:], " OR ") {
				return nil, fmt.Errorf("fakegcp: OR is not supported")
			}
			parts = append(parts, src[last:i])
			i += len(" AND ") - 1
			last = i + 1
		}
	}
	if depth != 0 || inQ {
		return nil, fmt.Errorf("unbalanced parentheses or quotes")
	}
	parts = append(parts, src[last:])
	var out []string
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if strings.HasPrefix(p, "(") && strings.HasSuffix(p, ")") && enclosed(p) {
			sub, err := splitAnd(p[1 : len(p)-1])
			if err != nil {
				return nil, err
			}
			out = append(out, sub...)
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// enclosed reports whether the parenthesis at p[0] closes at the end of p.
func enclosed(p string) bool {
	depth, inQ := 0, false
	for i := 0; i < len(p); i++ {
		switch ch := p[i]; {
		case ch == '\\' && inQ:
			i++
		case ch == '"':
			inQ = !inQ
		case inQ:
		case ch == '(':
			depth++
		case ch == ')':
			depth--
			if depth == 0 && i != len(p)-1 {
				return false
			}
		}
	}
	return true
}

func parseClause(p string) (clause, error) {
	var c clause
	op := "="
	i := strings.Index(p, "!=")
	if i >= 0 {
		op = "!="
	} else {
		i = strings.Index(p, "=")
	}
	if i < 0 {
		return c, fmt.Errorf("clause %q: no = or !=", p)
	}
	c.selector = strings.TrimSpace(p[:i])
	c.negate = op == "!="
	rhs := strings.TrimSpace(p[i+len(op):])
	switch sel := c.selector; {
	case sel == "metric.type", sel == "resource.type", sel == "project":
	case strings.HasPrefix(sel, "resource.labels."), strings.HasPrefix(sel, "resource.label."),
		strings.HasPrefix(sel, "metric.labels."), strings.HasPrefix(sel, "metric.label."):
	default:
		return c, fmt.Errorf("clause %q: unsupported selector %q", p, sel)
	}
	switch {
	case strings.HasPrefix(rhs, "one_of(") && strings.HasSuffix(rhs, ")"):
		vals, err := parseStrings(rhs[len("one_of(") : len(rhs)-1])
		if err != nil {
			return c, fmt.Errorf("clause %q: %v", p, err)
		}
		c.values = vals
	case strings.HasPrefix(rhs, "starts_with(") && strings.HasSuffix(rhs, ")"):
		vals, err := parseStrings(rhs[len("starts_with(") : len(rhs)-1])
		if err != nil || len(vals) != 1 {
			return c, fmt.Errorf("clause %q: starts_with takes one string", p)
		}
		c.values, c.prefix = vals, true
	default:
		v, err := strconv.Unquote(rhs)
		if err != nil {
			return c, fmt.Errorf("clause %q: value must be a quoted string", p)
		}
		c.values = []string{v}
	}
	return c, nil
}

func parseStrings(s string) ([]string, error) {
	var out []string
	for _, part := range strings.Split(s, ",") {
		v, err := strconv.Unquote(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("bad string %q", part)
		}
		out = append(out, v)
	}
	return out, nil
}

func (f *filter) match(ts *monitoringpb.TimeSeries) bool {
	if ts.GetMetric().GetType() != f.metricType {
		return false
	}
	for _, c := range f.clauses {
		var v string
		var present bool
		switch sel := c.selector; {
		case sel == "resource.type":
			v, present = ts.GetResource().GetType(), true
		case sel == "project":
			v, present = ts.GetResource().GetLabels()["project_id"], true
		case strings.HasPrefix(sel, "resource."):
			v, present = ts.GetResource().GetLabels()[sel[strings.LastIndex(sel, ".")+1:]]
		default:
			v, present = ts.GetMetric().GetLabels()[sel[strings.LastIndex(sel, ".")+1:]]
		}
		ok := false
		if present {
			for _, want := range c.values {
				if c.prefix && strings.HasPrefix(v, want) || !c.prefix && v == want {
					ok = true
				}
			}
		}
		if ok == c.negate {
			return false
		}
	}
	return true
}
