package admin

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServer(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "sabaki_test_total", Help: "t"})
	c.Add(3)
	reg.MustRegister(c)
	s, err := Listen("127.0.0.1:0", Settings{Gatherer: reg, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	defer s.Shutdown(context.Background())
	base := "http://" + s.Addr().String()

	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 503 || body != "not ready: starting\n" {
		t.Errorf("/readyz before checks = %d %q", code, body)
	}
	var storeErr error = errors.New("store not open")
	s.AddCheck("agent", func() error { return nil })
	s.AddCheck("store", func() error { return storeErr })
	if code, body := get(t, base+"/readyz"); code != 503 || body != "not ready: store: store not open\n" {
		t.Errorf("/readyz with a failing check = %d %q", code, body)
	}
	storeErr = nil
	if code, body := get(t, base+"/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz = %d %q", code, body)
	}
	code, body := get(t, base+"/metrics")
	if code != 200 || !strings.Contains(body, "sabaki_test_total 3") {
		t.Errorf("/metrics = %d, body lacks sabaki_test_total 3:\n%s", code, body)
	}
	if !strings.Contains(body, "promhttp_metric_handler_requests_total") {
		t.Errorf("/metrics lacks the handler's own metrics")
	}
	if code, body := get(t, base+"/debug/pprof/heap?debug=1"); code != 200 || !strings.Contains(body, "heap profile") {
		t.Errorf("/debug/pprof/heap on loopback = %d %.80q", code, body)
	}
	if code, _ := get(t, base+"/nope"); code != 404 {
		t.Errorf("/nope = %d, want 404", code)
	}
}

func TestListenPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = Listen(ln.Addr().String(), Settings{Gatherer: prometheus.NewRegistry()})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("Listen on a used port: err = %v, want address already in use", err)
	}
}

func TestServesProfilesOnlyOnLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9469}, true},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 9469}, true},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 9469}, false},
		{&net.TCPAddr{IP: net.IPv4(10, 0, 0, 5), Port: 9469}, false},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 9469}, false},
		{&net.UnixAddr{Name: "/run/sabaki.sock", Net: "unix"}, false},
	} {
		if got := servesProfiles(tc.addr); got != tc.want {
			t.Errorf("servesProfiles(%v) = %v, want %v", tc.addr, got, tc.want)
		}
	}
}
