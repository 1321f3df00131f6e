package sources

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	collectormetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// selfSignedCert writes a certificate for 127.0.0.1 and its key as PEM
// files and returns their paths and a pool trusting the certificate.
func selfSignedCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sabaki test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestOTLPTLS: with tls and a bearer token, both endpoints serve TLS only
// and require the token.
func TestOTLPTLS(t *testing.T) {
	certFile, keyFile, pool := selfSignedCert(t)
	r, sink, _ := startOTLP(t, func(c *OTLPConfig) {
		c.TLS = OTLPTLS{CertFile: certFile, KeyFile: keyFile}
		c.BearerToken = "tok"
	})
	body, _ := proto.Marshal(otlpRequest(2, 0))
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest(http.MethodPost, "https://"+r.HTTPAddr().String()+"/v1/metrics", strings.NewReader(string(body)))
	req.Header.Set("Content-Type", otlpProtoType)
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("https: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("https status %d", resp.StatusCode)
	}
	if resp, err := http.Post("http://"+r.HTTPAddr().String()+"/v1/metrics", otlpProtoType, strings.NewReader(string(body))); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("plain HTTP accepted on a TLS listener")
		}
	}
	conn, err := grpc.NewClient(r.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer tok")
	if _, err := collectormetrics.NewMetricsServiceClient(conn).Export(ctx, otlpRequest(2, 0)); err != nil {
		t.Fatalf("grpc over TLS: %v", err)
	}
	if n := len(sink.series()); n != 4 {
		t.Errorf("sink got %d series, want 4", n)
	}
}

// TestPrometheusTLS scrapes an https target trusted through tls.ca_file.
func TestPrometheusTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", string(expfmt.FmtText))
		_, _ = w.Write([]byte("# TYPE v gauge\nv 7\n"))
	}))
	defer srv.Close()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := promCfg(srv.URL + "/metrics")
	p, _ := newTestPrometheus(t, cfg, nil)
	if _, err := p.Collect(context.Background(), time.Now()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("untrusted certificate: err %v", err)
	}
	cfg.TLS.CAFile = ca
	p, _ = newTestPrometheus(t, cfg, nil)
	b, err := p.Collect(context.Background(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if v := promOne(t, b, "v", nil); v.Points[0].Value != 7 {
		t.Errorf("value %v", v.Points[0].Value)
	}
}
