package main

import (
	"log/slog"
	"net/http"

	"github.com/sabakiio/sabaki/agent/admin"
	"github.com/sabakiio/sabaki/agent/store"
)

// exemplarsHandler serves GET /api/v1/exemplars?metric=M&from=1h&to=now.
// TODO(front-door): answer from the store's exemplar query when it lands.
func exemplarsHandler(st *store.Store, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		admin.WriteJSON(w, http.StatusNotImplemented, map[string]string{"error": "exemplar queries are not available in this build"})
	})
}
