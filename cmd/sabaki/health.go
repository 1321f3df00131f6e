package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// runHealth implements `sabaki health`: GET /readyz (or /healthz with
// -live) of a running agent's admin endpoint, exit 0 when it answers 200.
// It exists for container HEALTHCHECKs on images without curl.
func runHealth(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "", "admin `address` of the agent (default: agent.admin_listen of -config, or of the embedded default)")
	cfgPath := fs.String("config", "", "config `FILE` to read agent.admin_listen from")
	live := fs.Bool("live", false, "check /healthz (the process answers) instead of /readyz (ready to receive)")
	timeout := fs.Duration("timeout", 3*time.Second, "request `timeout`")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *addr == "" {
		cfg, ps := loadConfig(*cfgPath)
		if len(ps) > 0 {
			for _, p := range ps {
				fmt.Fprintln(stderr, formatProblem(configName(*cfgPath), p))
			}
			return 1
		}
		*addr = cfg.Agent.AdminListen
	}
	host, port, err := net.SplitHostPort(*addr)
	if err != nil {
		fmt.Fprintf(stderr, "sabaki health: invalid address %q: %v\n", *addr, err)
		return 2
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	path := "/readyz"
	if *live {
		path = "/healthz"
	}
	url := "http://" + net.JoinHostPort(host, port) + path
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "sabaki health: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	msg := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "sabaki health: %s: %s: %s\n", url, resp.Status, msg)
		return 1
	}
	fmt.Fprintf(stdout, "%s: %s\n", url, msg)
	return 0
}
