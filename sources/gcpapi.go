package sources

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"cloud.google.com/go/auth"
	"cloud.google.com/go/auth/credentials"
	monitoring "cloud.google.com/go/monitoring/apiv3/v2"
	"cloud.google.com/go/monitoring/apiv3/v2/monitoringpb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	metricpb "google.golang.org/genproto/googleapis/api/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// gcpMetricAPI is the narrow boundary between the Cloud Monitoring source and
// the Cloud Monitoring API: one page of ListTimeSeries per call (so paging,
// retries and quota accounting stay visible to the source) and metric
// descriptor look-ups. The real implementation wraps the gapic client; tests
// run the same client against internal/fake/fakegcp.
type gcpMetricAPI interface {
	// ListTimeSeriesPage performs exactly one ListTimeSeries RPC with req as
	// given (req.PageToken selects the page) and returns the raw response.
	ListTimeSeriesPage(ctx context.Context, req *monitoringpb.ListTimeSeriesRequest) (*monitoringpb.ListTimeSeriesResponse, error)
	// GetMetricDescriptor returns the descriptor of metricType in project.
	GetMetricDescriptor(ctx context.Context, project, metricType string) (*metricpb.MetricDescriptor, error)
	// ListMetricDescriptors returns every descriptor whose type starts with
	// prefix (all pages).
	ListMetricDescriptors(ctx context.Context, project, prefix string) ([]*metricpb.MetricDescriptor, error)
	Close() error
}

// gcpMonitoringReadScope is the only OAuth scope the source needs.
const gcpMonitoringReadScope = "https://www.googleapis.com/auth/monitoring.read"

// noRetry turns off the gapic client's own retries: the source retries
// itself, within its interval, and counts every attempt as an API call.
var noRetry = gax.WithRetry(func() gax.Retryer { return nil })

// gapicMetricAPI is gcpMetricAPI over cloud.google.com/go/monitoring/apiv3/v2.
type gapicMetricAPI struct {
	c *monitoring.MetricClient
}

func (a *gapicMetricAPI) ListTimeSeriesPage(ctx context.Context, req *monitoringpb.ListTimeSeriesRequest) (*monitoringpb.ListTimeSeriesResponse, error) {
	it := a.c.ListTimeSeries(ctx, req, noRetry)
	// InternalFetch is exactly one RPC for one page; the iterator's Next and
	// iterator.Pager would hide pages (and the Pager keeps fetching until it
	// has page_size series, while FULL-view page_size counts points).
	_, next, err := it.InternalFetch(int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	resp, _ := it.Response.(*monitoringpb.ListTimeSeriesResponse)
	if resp == nil {
		return nil, errors.New("ListTimeSeries: no response")
	}
	resp.NextPageToken = next
	return resp, nil
}

func (a *gapicMetricAPI) GetMetricDescriptor(ctx context.Context, project, metricType string) (*metricpb.MetricDescriptor, error) {
	return a.c.GetMetricDescriptor(ctx, &monitoringpb.GetMetricDescriptorRequest{
		Name: "projects/" + project + "/metricDescriptors/" + metricType,
	}, noRetry)
}

func (a *gapicMetricAPI) ListMetricDescriptors(ctx context.Context, project, prefix string) ([]*metricpb.MetricDescriptor, error) {
	it := a.c.ListMetricDescriptors(ctx, &monitoringpb.ListMetricDescriptorsRequest{
		Name:   "projects/" + project,
		Filter: fmt.Sprintf("metric.type = starts_with(%q)", prefix),
	}, noRetry)
	var out []*metricpb.MetricDescriptor
	for {
		d, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, d)
	}
}

func (a *gapicMetricAPI) Close() error { return a.c.Close() }

// newGapicMetricAPI builds the real client from the source config:
//   - credentials: none → no authentication; with an endpoint the connection
//     is plaintext (an emulator or internal/fake/fakegcp on loopback);
//   - credentials_file → that file;
//   - otherwise Application Default Credentials, detected up front so a
//     missing credential is a clear error at startup instead of a lazy
//     failure on the first RPC.
//
// It returns the project ID the credentials carry, if any, for a config
// that names no project.
func newGapicMetricAPI(ctx context.Context, cfg *CloudMonitoringConfig) (*gapicMetricAPI, string, error) {
	var opts []option.ClientOption
	if cfg.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(cfg.Endpoint))
	}
	var project string
	if cfg.Credentials == "none" {
		opts = append(opts, option.WithoutAuthentication())
		if cfg.Endpoint != "" {
			opts = append(opts, option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())))
		}
	} else {
		creds, err := detectGCPCredentials(cfg.CredentialsFile)
		if err != nil {
			return nil, "", err
		}
		if p, err := creds.ProjectID(ctx); err == nil {
			project = p
		}
		opts = append(opts, option.WithAuthCredentials(creds))
	}
	c, err := monitoring.NewMetricClient(ctx, opts...)
	if err != nil {
		return nil, "", fmt.Errorf("create Cloud Monitoring client: %w", err)
	}
	return &gapicMetricAPI{c: c}, project, nil
}

// ErrNoGCPCredentials is returned (wrapped) by NewCloudMonitoring when no
// Application Default Credentials were found; the message lists what was
// looked for.
var ErrNoGCPCredentials = errors.New("no Google credentials found")

// onGCE reports whether the GCE/Cloud Run metadata server answers. It probes
// the link-local metadata address, so tests replace it: they must send no
// traffic beyond loopback.
var onGCE = credentials.OnGCE

// detectGCPCredentials finds credentials the way Application Default
// Credentials do, asking only for the monitoring.read scope.
func detectGCPCredentials(file string) (*auth.Credentials, error) {
	if file != "" {
		creds, err := credentials.DetectDefault(&credentials.DetectOptions{
			Scopes:          []string{gcpMonitoringReadScope},
			CredentialsFile: file,
		})
		if err != nil {
			return nil, fmt.Errorf("read credentials_file %s: %w", file, err)
		}
		return creds, nil
	}
	if env := os.Getenv("GOOGLE_APPLICATION_CREDENTIALS"); env == "" {
		wellKnown := gcloudWellKnownFile()
		if _, err := os.Stat(wellKnown); err != nil && !onGCE() {
			return nil, fmt.Errorf("%w: looked for GOOGLE_APPLICATION_CREDENTIALS (unset), the gcloud file %s (%s), "+
				"and the GCE/Cloud Run metadata server (not reachable); set credentials_file, run "+
				"`gcloud auth application-default login`, or set `credentials: none` with an `endpoint` for an emulator",
				ErrNoGCPCredentials, wellKnown, statReason(err))
		}
	}
	creds, err := credentials.DetectDefault(&credentials.DetectOptions{Scopes: []string{gcpMonitoringReadScope}})
	if err != nil {
		return nil, fmt.Errorf("%w: Application Default Credentials: %w", ErrNoGCPCredentials, err)
	}
	return creds, nil
}

// gcloudWellKnownFile is where `gcloud auth application-default login`
// writes credentials (the same path the auth library checks).
func gcloudWellKnownFile() string {
	if runtime.GOOS == "windows" {
		return filepath.Join(os.Getenv("APPDATA"), "gcloud", "application_default_credentials.json")
	}
	home := os.Getenv("HOME")
	if home == "" {
		home, _ = os.UserHomeDir()
	}
	return filepath.Join(home, ".config", "gcloud", "application_default_credentials.json")
}

func statReason(err error) string {
	if errors.Is(err, os.ErrNotExist) {
		return "not found"
	}
	return strings.TrimSpace(err.Error())
}
