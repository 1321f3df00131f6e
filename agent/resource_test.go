package agent

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sabakiio/sabaki/metric"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// fakeMetadata serves the GCP metadata paths in vals, checking the
// Metadata-Flavor header as the real server does.
func fakeMetadata(t *testing.T, vals map[string]string) (*httptest.Server, *atomic.Int32) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.Header.Get("Metadata-Flavor") != "Google" {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		v, ok := vals[strings.TrimPrefix(r.URL.Path, "/computeMetadata/v1/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Metadata-Flavor", "Google")
		w.Write([]byte(v))
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

func TestDetectResource(t *testing.T) {
	cloudRun := map[string]string{
		"project/project-id": "my-project",
		"instance/region":    "projects/123456/regions/asia-northeast1",
		"instance/id":        "00bf4bf02d",
	}
	gce := map[string]string{
		"project/project-id": "my-project",
		"instance/zone":      "projects/123456/zones/us-central1-a",
		"instance/id":        "4520031799277581759",
	}
	for _, tc := range []struct {
		name     string
		cfg      ResourceConfig
		env      map[string]string
		metadata map[string]string
		want     metric.Attrs
	}{
		{
			name:     "cloud run service: env and metadata",
			cfg:      ResourceConfig{Detect: []string{"env", "gcp"}},
			env:      map[string]string{"K_SERVICE": "toitta", "K_REVISION": "toitta-00042-abc", "K_CONFIGURATION": "toitta"},
			metadata: cloudRun,
			want: attrsOf("service.name", "toitta", "faas.name", "toitta", "service.version", "toitta-00042-abc",
				"faas.version", "toitta-00042-abc", "gcp.cloud_run.configuration", "toitta", "cloud.provider", "gcp",
				"cloud.platform", "gcp_cloud_run", "cloud.account.id", "my-project", "cloud.region", "asia-northeast1",
				"faas.instance", "00bf4bf02d"),
		},
		{
			name:     "gce: zone and host.id",
			cfg:      ResourceConfig{Detect: []string{"gcp"}},
			metadata: gce,
			want: attrsOf("cloud.provider", "gcp", "cloud.account.id", "my-project", "cloud.region", "us-central1",
				"cloud.availability_zone", "us-central1-a", "host.id", "4520031799277581759"),
		},
		{
			name: "cloud run job",
			cfg:  ResourceConfig{Detect: []string{"env"}},
			env:  map[string]string{"CLOUD_RUN_JOB": "nightly"},
			want: attrsOf("service.name", "nightly", "faas.name", "nightly", "cloud.provider", "gcp", "cloud.platform", "gcp_cloud_run_job"),
		},
		{
			name: "OTEL_* variables, percent-decoded; OTEL_SERVICE_NAME wins; static attributes win over all",
			cfg:  ResourceConfig{Detect: []string{"env"}, Attributes: map[string]string{"deployment.environment.name": "prod"}},
			env: map[string]string{
				"OTEL_RESOURCE_ATTRIBUTES": "team=web%20platform, deployment.environment.name=dev,bad,=x,service.name=fromattrs",
				"OTEL_SERVICE_NAME":        "api",
			},
			want: attrsOf("team", "web platform", "deployment.environment.name", "prod", "service.name", "api"),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := DetectSettings{Getenv: envOf(tc.env)}
			if tc.metadata != nil {
				srv, _ := fakeMetadata(t, tc.metadata)
				set.MetadataURL = srv.URL
			}
			got, err := DetectResource(context.Background(), tc.cfg, set)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
		})
	}
}

func TestDetectResourceGCEMetadataHost(t *testing.T) {
	srv, hits := fakeMetadata(t, map[string]string{"project/project-id": "p"})
	host := strings.TrimPrefix(srv.URL, "http://")
	got, err := DetectResource(context.Background(), ResourceConfig{Detect: []string{"gcp"}},
		DetectSettings{Getenv: envOf(map[string]string{"GCE_METADATA_HOST": host})})
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := got.Get("cloud.account.id"); v != "p" || hits.Load() == 0 {
		t.Errorf("GCE_METADATA_HOST not used: %v", got)
	}
}

func TestDetectResourceOffGCP(t *testing.T) {
	// A server that is not the metadata server (no Metadata-Flavor), and a
	// closed port: both mean "not on GCP", logged once at info, no error.
	notMeta := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("hello")) }))
	defer notMeta.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	for _, url := range []string{notMeta.URL, closed.URL} {
		logs := &bytes.Buffer{}
		got, err := DetectResource(context.Background(), ResourceConfig{Detect: []string{"env", "gcp"}, Attributes: map[string]string{"a": "b"}},
			DetectSettings{Logger: slog.New(slog.NewTextHandler(logs, nil)), Getenv: envOf(nil), MetadataURL: url})
		if err != nil {
			t.Fatal(err)
		}
		if !got.Equal(attrsOf("a", "b")) {
			t.Errorf("%s: got %v", url, got)
		}
		if n := strings.Count(logs.String(), "not on Google Cloud"); n != 1 || !strings.Contains(logs.String(), "level=INFO") {
			t.Errorf("%s: logs = %q", url, logs)
		}
	}
	if _, err := DetectResource(context.Background(), ResourceConfig{Detect: []string{"aws"}}, DetectSettings{}); err == nil {
		t.Error("unknown detector accepted")
	}
}
