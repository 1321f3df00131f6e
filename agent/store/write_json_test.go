package store

import (
	"encoding/json"
	"testing"

	"github.com/sabakiio/sabaki/metric"
)

// TestAttrsJSON: series and exemplar rows keep the attribute JSON that
// json.Marshal of a map wrote before appendAttrsJSON, byte for byte, so
// rows written by either version compare and parse alike (parseAttrsFast).
func TestAttrsJSON(t *testing.T) {
	tests := []struct {
		name string
		a    metric.Attrs
	}{
		{"none", nil},
		{"one", metric.Attrs{{Key: "service.name", Value: "toitta"}}},
		{"sorted", metric.Attrs{{Key: "http.route", Value: "/api/items/{id}"}, {Key: "instance", Value: "127.0.0.1:9100"}, {Key: "le", Value: ""}}},
		{"quote and backslash", metric.Attrs{{Key: "q", Value: `say "hi" \ bye`}}},
		{"html", metric.Attrs{{Key: "a<b>", Value: "x&y"}}},
		{"control", metric.Attrs{{Key: "nl", Value: "a\nb\tc\x01"}}},
		{"utf-8", metric.Attrs{{Key: "city", Value: "東京"}, {Key: "sep", Value: "a\u2028b"}}},
		{"invalid utf-8", metric.Attrs{{Key: "bad", Value: "\xff\xfe"}}},
		{"unsorted", metric.Attrs{{Key: "b", Value: "1"}, {Key: "a", Value: "2"}}},
		{"duplicate key", metric.Attrs{{Key: "a", Value: "1"}, {Key: "a", Value: "2"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := "{}"
			if len(tc.a) > 0 {
				b, err := json.Marshal(tc.a.Map())
				if err != nil {
					t.Fatal(err)
				}
				want = string(b)
			}
			if got := attrsJSON(tc.a); got != want {
				t.Errorf("attrsJSON = %s, json.Marshal gives %s", got, want)
			}
			if got := string(appendAttrsJSON([]byte("x"), tc.a)); len(tc.a) > 0 && got != "x"+want {
				t.Errorf("appendAttrsJSON after x = %s, want x%s", got, want)
			}
			back, err := parseAttrsFast([]byte(want))
			if err != nil {
				t.Fatal(err)
			}
			// (json.Marshal writes invalid UTF-8 as U+FFFD.)
			if len(tc.a) > 0 && tc.name != "invalid utf-8" && !back.Equal(metric.NewAttrs(tc.a.Map())) {
				t.Errorf("read back as %v", back)
			}
		})
	}
}

// FuzzAttrsJSON: for any pair of attributes, appendAttrsJSON writes what
// json.Marshal of their map writes.
func FuzzAttrsJSON(f *testing.F) {
	f.Add("http.route", "/a", "tenant", "t<1>")
	f.Add("a", "\"", "a", "\\")
	f.Add("\x00", "\xff", "é", "\u2029")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		a := metric.Attrs{{Key: k1, Value: v1}, {Key: k2, Value: v2}}
		want, err := json.Marshal(a.Map())
		if err != nil {
			t.Fatal(err)
		}
		if got := attrsJSON(a); got != string(want) {
			t.Fatalf("attrsJSON = %s, json.Marshal gives %s", got, want)
		}
	})
}
