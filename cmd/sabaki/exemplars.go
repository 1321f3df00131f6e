package main

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/sabakiio/sabaki/agent/admin"
	"github.com/sabakiio/sabaki/agent/store"
	"github.com/sabakiio/sabaki/internal/timerange"
)

// exemplarJSON is one element of GET /api/v1/exemplars, the same shape as
// `sabaki query -exemplars -o json`.
type exemplarJSON struct {
	Time       string            `json:"time"`
	Metric     string            `json:"metric"`
	Attributes map[string]string `json:"attributes"`
	Value      float64           `json:"value"`
	TraceID    string            `json:"trace_id"`
	SpanID     string            `json:"span_id"`
}

// exemplarsHandler serves
//
//	GET /api/v1/exemplars?metric=M[&from=1h][&to=now][&where=k=v ...]
//
// from/to take the same forms as every command (a duration back from now,
// RFC 3339, Unix seconds); the default range is the last hour. It answers a
// JSON array, newest window first within the store's order.
func exemplarsHandler(st *store.Store, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		name := q.Get("metric")
		if name == "" {
			admin.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": "metric is required: /api/v1/exemplars?metric=NAME&from=1h&to=now"})
			return
		}
		rng, err := timerange.ParseRange(q.Get("from"), q.Get("to"), "1h", "now", time.Now())
		if err != nil {
			admin.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": strings.TrimPrefix(err.Error(), "-")})
			return
		}
		where := map[string]string{}
		for _, kv := range q["where"] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				admin.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": "where must be key=value, got " + kv})
				return
			}
			where[k] = v
		}
		rows, err := st.Exemplars(r.Context(), store.Query{Metric: name, Where: where, From: rng.From, To: rng.To})
		if err != nil {
			log.Warn("exemplar query failed", "metric", name, "err", err)
			admin.WriteJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
			return
		}
		out := make([]exemplarJSON, 0, len(rows))
		for _, row := range rows {
			out = append(out, exemplarJSON{
				Time: row.Time.UTC().Format(time.RFC3339), Metric: name, Attributes: row.Attributes,
				Value: row.Exemplar.Value, TraceID: row.TraceIDHex(), SpanID: row.SpanIDHex(),
			})
		}
		admin.WriteJSON(w, http.StatusOK, out)
	})
}
