package exporters

// OpenTelemetry → Prometheus name translation for the remote-write exporter,
// after the OTel specification "Prometheus and OpenMetrics Compatibility"
// (https://opentelemetry.io/docs/specs/otel/compatibility/prometheus_and_openmetrics/)
// and the translator Prometheus uses for its own OTLP receiver
// (prometheus/otlptranslator): invalid characters become "_", the unit is
// appended as a word ("_seconds", "_bytes", "_bytes_per_second"), counters
// end in "_total", unit "1" gauges in "_ratio".

import (
	"slices"
	"strings"
)

// promUnitWords maps UCUM units (as OTel instruments use them) to the words
// Prometheus names carry.
var promUnitWords = map[string]string{
	// time
	"d": "days", "h": "hours", "min": "minutes", "s": "seconds",
	"ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds",
	// bytes
	"By": "bytes", "KiBy": "kibibytes", "MiBy": "mebibytes", "GiBy": "gibibytes", "TiBy": "tibibytes",
	"KBy": "kilobytes", "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes",
	// SI
	"m": "meters", "V": "volts", "A": "amperes", "J": "joules", "W": "watts", "g": "grams",
	"Cel": "celsius", "Hz": "hertz", "%": "percent",
}

// promPerUnitWords maps the denominator of "x/y" units.
var promPerUnitWords = map[string]string{
	"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year",
}

// promUnit returns the unit words of a UCUM unit: "s" → ("seconds", ""),
// "By/s" → ("bytes", "second"); annotations in braces ("{request}") and "1"
// carry no unit.
func promUnit(unit string) (main, per string) {
	unit = strings.TrimSpace(unit)
	if unit == "" || unit == "1" {
		return "", ""
	}
	m, p, hasPer := strings.Cut(unit, "/")
	main = promUnitWord(m, promUnitWords)
	if hasPer {
		per = promUnitWord(p, promPerUnitWords)
	}
	return main, per
}

func promUnitWord(u string, table map[string]string) string {
	u = strings.TrimSpace(u)
	if u == "" || strings.HasPrefix(u, "{") {
		return ""
	}
	if w, ok := table[u]; ok {
		return w
	}
	return strings.Trim(sanitizePromName(u), "_")
}

// promMetricName returns the Prometheus name of a series: name tokens, then
// the unit words unless the name already holds them, then "total" for
// counters (once) or "ratio" for gauges of unit "1".
func promMetricName(name, unit string, counter, gauge bool) string {
	tokens := strings.FieldsFunc(name, func(r rune) bool { return !isPromNameRune(r) || r == '_' })
	main, per := promUnit(unit)
	if main != "" && !slices.Contains(tokens, main) {
		tokens = append(tokens, main)
	}
	if per != "" && !slices.Contains(tokens, per) {
		tokens = append(tokens, "per", per)
	}
	if counter {
		tokens = slices.DeleteFunc(tokens, func(t string) bool { return t == "total" })
		tokens = append(tokens, "total")
	}
	if gauge && strings.TrimSpace(unit) == "1" && !slices.Contains(tokens, "ratio") {
		tokens = append(tokens, "ratio")
	}
	n := strings.Join(tokens, "_")
	if n == "" {
		return "_"
	}
	if n[0] >= '0' && n[0] <= '9' {
		n = "_" + n
	}
	return n
}

func isPromNameRune(r rune) bool {
	return r == '_' || r == ':' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
}

// sanitizePromName replaces every character a metric name cannot hold with "_".
func sanitizePromName(s string) string {
	return strings.Map(func(r rune) rune {
		if isPromNameRune(r) {
			return r
		}
		return '_'
	}, s)
}

// promLabelName translates an attribute key to a label name: invalid
// characters become "_", a leading digit gets "key_" and a leading "__"
// (reserved for Prometheus) gets "key".
func promLabelName(k string) string {
	n := strings.Map(func(r rune) rune {
		if r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			return r
		}
		return '_'
	}, k)
	switch {
	case n == "":
		return "key_empty"
	case n[0] >= '0' && n[0] <= '9':
		return "key_" + n
	case strings.HasPrefix(n, "__"):
		return "key" + n
	}
	return n
}
