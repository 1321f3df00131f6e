package main

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestNotifier(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	env := map[string]string{"NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "20000", "WATCHDOG_PID": strconv.Itoa(os.Getpid())}
	n := newNotifier(func(k string) string { return env[k] })
	if n.watchdog != 20*time.Millisecond {
		t.Errorf("watchdog = %v", n.watchdog)
	}
	read := func() string {
		t.Helper()
		buf := make([]byte, 512)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return string(buf[:k])
	}
	if err := n.ready(); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "READY=1\nSTATUS=running" {
		t.Errorf("ready sent %q", got)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { n.watchdogLoop(stop, func() bool { return true }); close(done) }()
	if got := read(); got != "WATCHDOG=1" {
		t.Errorf("watchdog sent %q", got)
	}
	close(stop)
	<-done
	n.stopping()
	for { // skip watchdog pings sent before the stop
		if got := read(); got != "WATCHDOG=1" {
			if got != "STOPPING=1\nSTATUS=stopping" {
				t.Errorf("stopping sent %q", got)
			}
			break
		}
	}

	// Outside systemd nothing is sent and nothing fails.
	off := newNotifier(func(string) string { return "" })
	if err := off.ready(); err != nil || off.watchdog != 0 {
		t.Errorf("without NOTIFY_SOCKET: %v %v", err, off.watchdog)
	}
	// Another process's watchdog is not ours.
	env["WATCHDOG_PID"] = "1"
	if n := newNotifier(func(k string) string { return env[k] }); n.watchdog != 0 {
		t.Errorf("watchdog for another pid = %v", n.watchdog)
	}
}
