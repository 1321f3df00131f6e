package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

// notifier speaks systemd's sd_notify protocol (a datagram to the unix socket
// in NOTIFY_SOCKET), without cgo or libsystemd, for Type=notify units:
// READY=1 once started, STATUS= after a SIGHUP reload, STOPPING=1 at shutdown, and WATCHDOG=1 every half of WATCHDOG_USEC when
// the unit sets WatchdogSec=. Outside systemd every method does nothing.
type notifier struct {
	addr     *net.UnixAddr
	watchdog time.Duration
}

func newNotifier(getenv func(string) string) *notifier {
	n := &notifier{}
	if s := getenv("NOTIFY_SOCKET"); s != "" {
		name := s
		if s[0] == '@' { // abstract namespace
			name = "\x00" + s[1:]
		}
		n.addr = &net.UnixAddr{Name: name, Net: "unixgram"}
	}
	if us, err := strconv.ParseInt(getenv("WATCHDOG_USEC"), 10, 64); err == nil && us > 0 {
		// WATCHDOG_PID, when set, must be us.
		if pid := getenv("WATCHDOG_PID"); pid == "" || pid == strconv.Itoa(os.Getpid()) {
			n.watchdog = time.Duration(us) * time.Microsecond
		}
	}
	return n
}

// send sends one state update; errors are returned for logging only.
func (n *notifier) send(state string) error {
	if n == nil || n.addr == nil {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

func (n *notifier) ready() error { return n.send("READY=1\nSTATUS=running") }

func (n *notifier) status(s string) error { return n.send("STATUS=" + s) }

func (n *notifier) stopping() error { return n.send("STOPPING=1\nSTATUS=stopping") }

// watchdogLoop pings the watchdog until stop is closed, as long as healthy
// reports true (a stuck agent stops pinging and systemd restarts it).
func (n *notifier) watchdogLoop(stop <-chan struct{}, healthy func() bool) {
	if n == nil || n.addr == nil || n.watchdog <= 0 {
		return
	}
	t := time.NewTicker(n.watchdog / 2)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if healthy() {
				n.send("WATCHDOG=1")
			}
		}
	}
}
