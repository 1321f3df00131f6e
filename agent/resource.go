package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/sabakiio/sabaki/metric"
)

// DetectSettings are the collaborators of DetectResource.
type DetectSettings struct {
	Logger *slog.Logger
	// Getenv reads the environment (os.Getenv when nil).
	Getenv func(string) string
	// MetadataURL is the metadata server's base URL, e.g.
	// "http://metadata.google.internal"; empty means GCE_METADATA_HOST (as
	// the Google client libraries) or metadata.google.internal.
	MetadataURL string
	// HTTPClient talks to the metadata server (a client with the detection
	// timeout when nil).
	HTTPClient *http.Client
	// Timeout bounds the whole gcp detection (default 500 ms).
	Timeout time.Duration
}

// DetectResource returns the agent's resource attributes: the detectors of
// cfg.Detect in order, then cfg.Attributes (static attributes win).
//
//   - env: OTEL_RESOURCE_ATTRIBUTES (k=v pairs, comma-separated,
//     percent-decoded, as the OTel SDKs read it); OTEL_SERVICE_NAME or, on
//     Cloud Run, K_SERVICE → service.name and faas.name; K_REVISION →
//     service.version and faas.version; K_CONFIGURATION →
//     gcp.cloud_run.configuration; CLOUD_RUN_JOB (a Cloud Run job) →
//     service.name and faas.name; cloud.provider=gcp and
//     cloud.platform=gcp_cloud_run (gcp_cloud_run_job for jobs) when any
//     K_SERVICE/CLOUD_RUN_JOB is set.
//   - gcp: the metadata server (500 ms): cloud.provider=gcp, cloud.account.id
//     (project ID), cloud.region, cloud.availability_zone (on GCE), and the
//     instance ID as faas.instance on Cloud Run or host.id elsewhere. Off GCP
//     it logs once at info level and returns what the other detectors found:
//     detection never fails the start.
//
// The error is non-nil only for an unknown detector name.
func DetectResource(ctx context.Context, cfg ResourceConfig, set DetectSettings) (metric.Attrs, error) {
	if set.Logger == nil {
		set.Logger = slog.New(slog.DiscardHandler)
	}
	if set.Getenv == nil {
		set.Getenv = os.Getenv
	}
	if set.Timeout <= 0 {
		set.Timeout = 500 * time.Millisecond
	}
	attrs := map[string]string{}
	for _, d := range cfg.Detect {
		switch d {
		case "env":
			detectEnv(set.Getenv, attrs)
		case "gcp":
			if err := detectGCP(ctx, set, attrs); err != nil {
				set.Logger.Info("not on Google Cloud (no metadata server); skipping gcp resource detection", "err", err)
			}
		default:
			return nil, fmt.Errorf("resource detection: unknown detector %q (known: env, gcp)", d)
		}
	}
	for k, v := range cfg.Attributes {
		attrs[k] = v
	}
	return metric.NewAttrs(attrs), nil
}

func detectEnv(getenv func(string) string, attrs map[string]string) {
	for k, v := range parseOTelResourceAttributes(getenv("OTEL_RESOURCE_ATTRIBUTES")) {
		attrs[k] = v
	}
	if svc := getenv("K_SERVICE"); svc != "" {
		attrs["service.name"] = svc
		attrs["faas.name"] = svc
		attrs["cloud.provider"] = "gcp"
		attrs["cloud.platform"] = "gcp_cloud_run"
	}
	if job := getenv("CLOUD_RUN_JOB"); job != "" {
		attrs["service.name"] = job
		attrs["faas.name"] = job
		attrs["cloud.provider"] = "gcp"
		attrs["cloud.platform"] = "gcp_cloud_run_job"
	}
	if rev := getenv("K_REVISION"); rev != "" {
		attrs["service.version"] = rev
		attrs["faas.version"] = rev
	}
	if c := getenv("K_CONFIGURATION"); c != "" {
		attrs["gcp.cloud_run.configuration"] = c
	}
	if n := getenv("OTEL_SERVICE_NAME"); n != "" {
		attrs["service.name"] = n // the OTel SDK rule: OTEL_SERVICE_NAME wins
	}
}

// parseOTelResourceAttributes reads "k1=v1,k2=v2" with percent-encoded
// values; malformed pairs are skipped (as the OTel SDKs do).
func parseOTelResourceAttributes(s string) map[string]string {
	out := map[string]string{}
	for _, pair := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(pair, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			continue
		}
		dv, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil {
			continue
		}
		out[k] = dv
	}
	return out
}

func detectGCP(ctx context.Context, set DetectSettings, attrs map[string]string) error {
	base := set.MetadataURL
	if base == "" {
		host := set.Getenv("GCE_METADATA_HOST")
		if host == "" {
			host = "metadata.google.internal"
		}
		base = "http://" + host
	}
	base = strings.TrimSuffix(base, "/") + "/computeMetadata/v1/"
	client := set.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: set.Timeout}
	}
	ctx, cancel := context.WithTimeout(ctx, set.Timeout)
	defer cancel()
	get := func(path string) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return "", err
		}
		req.Header.Set("Metadata-Flavor", "Google")
		resp, err := client.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if err != nil {
			return "", err
		}
		if resp.StatusCode == http.StatusNotFound {
			return "", errNotFound
		}
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Metadata-Flavor") != "Google" {
			return "", fmt.Errorf("metadata %s: HTTP %d", path, resp.StatusCode)
		}
		return strings.TrimSpace(string(body)), nil
	}
	project, err := get("project/project-id")
	if err != nil {
		return err
	}
	attrs["cloud.provider"] = "gcp"
	attrs["cloud.account.id"] = project
	// Cloud Run answers instance/region ("projects/123/regions/us-central1");
	// GCE and GKE answer instance/zone ("projects/123/zones/us-central1-a").
	if r, err := get("instance/region"); err == nil && r != "" {
		attrs["cloud.region"] = lastPart(r)
	} else if z, err := get("instance/zone"); err == nil && z != "" {
		zone := lastPart(z)
		attrs["cloud.availability_zone"] = zone
		if i := strings.LastIndexByte(zone, '-'); i > 0 {
			attrs["cloud.region"] = zone[:i]
		}
	}
	if id, err := get("instance/id"); err == nil && id != "" {
		if set.Getenv("K_SERVICE") != "" || set.Getenv("CLOUD_RUN_JOB") != "" {
			attrs["faas.instance"] = id
		} else {
			attrs["host.id"] = id
		}
	}
	return nil
}

var errNotFound = errors.New("not found")

func lastPart(s string) string {
	return s[strings.LastIndexByte(s, '/')+1:]
}
