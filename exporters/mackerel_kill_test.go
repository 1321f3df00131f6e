package exporters

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/internal/fake/fakemackerel"
)

// kill9Child is the process TestMackerelRealKill9 kills: it enqueues ten
// windows into the outbox in dir, says so, and sends them to the fake at url
// until it is killed.
func kill9Child(t *testing.T, dir, url string) {
	cfg := DefaultMackerelConfig()
	cfg.Service, cfg.APIKey, cfg.BaseURL = "toitta", testKey, url
	set := Settings{Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)), DataDir: dir}
	exp, err := NewMackerel(cfg, set)
	if err != nil {
		t.Fatal(err)
	}
	ob, err := NewOutbox(cfg.Outbox, exp, set)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-20 * time.Minute).Truncate(time.Minute)
	for i := range 10 {
		w, _ := latencyWindow(start.Add(time.Duration(i)*time.Minute), 50, false)
		if err := ob.Enqueue(w); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "enqueued"), []byte(start.Format(time.RFC3339)), 0o600)
	ob.Run(context.Background()) // until SIGKILL
}

// TestMackerelRealKill9 kills (SIGKILL) a process while its outbox has a
// post in flight, then starts over on the same directory: every window
// reaches Mackerel, the in-flight one at most twice.
func TestMackerelRealKill9(t *testing.T) {
	if dir := os.Getenv("SABAKI_KILL_DIR"); dir != "" {
		kill9Child(t, dir, os.Getenv("SABAKI_KILL_URL"))
		return
	}
	fake := fakemackerel.New(fakemackerel.Options{
		Keys: map[string]fakemackerel.Perm{testKey: {Read: true, Write: true}}, Services: []string{"toitta"},
	})
	defer fake.Close()
	// The first four posts go through; the fifth hangs until the kill.
	fake.FailAfter(4, 1, "/api/v0/services/", fakemackerel.Fault{Delay: time.Minute})
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestMackerelRealKill9$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SABAKI_KILL_DIR="+dir, "SABAKI_KILL_URL="+fake.URL)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(fake.Posts()) >= 4 })
	time.Sleep(300 * time.Millisecond) // the fifth post is now in flight
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	b, err := os.ReadFile(filepath.Join(dir, "enqueued"))
	if err != nil {
		t.Fatalf("child did not enqueue: %v", err)
	}
	start, _ := time.Parse(time.RFC3339, string(b))
	if n := len(fake.Points("toitta", "http.server.request.duration.count.GET")); n != 4 {
		t.Fatalf("before the restart %d minutes arrived, want 4", n)
	}

	cfg := DefaultMackerelConfig()
	cfg.Service, cfg.APIKey, cfg.BaseURL = "toitta", testKey, fake.URL
	set := Settings{DataDir: dir}
	exp, err := NewMackerel(cfg, set)
	if err != nil {
		t.Fatal(err)
	}
	ob, err := NewOutbox(cfg.Outbox, exp, set)
	if err != nil {
		t.Fatal(err)
	}
	if d := ob.Depth(); d != 6 {
		t.Fatalf("after the kill %d windows wait, want 6 (the in-flight one and five more)", d)
	}
	drain(t, ob)
	points := fake.Points("toitta", "http.server.request.duration.count.GET")
	if len(points) != 10 {
		t.Fatalf("%d of 10 minutes arrived", len(points))
	}
	for i, p := range points {
		if p.Time != start.Add(time.Duration(i)*time.Minute).Unix() || p.Value != 50 {
			t.Fatalf("minute %d: %+v", i, p)
		}
	}
	if _, overwrites, _ := fake.Stats(); overwrites > 0 {
		t.Logf("%d minute re-sent after the kill (harmless: last write wins)", overwrites)
	}
}
