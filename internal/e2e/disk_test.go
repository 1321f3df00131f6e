package e2e

import (
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// fillDisk writes dir/filler until the file system is full (ENOSPC) and
// returns a function that frees the space.
func fillDisk(t testing.TB, dir string) func() {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the disk: %v", err)
			}
			break
		}
	}
	f.Close()
	return func() { os.Remove(p) }
}

// TestDiskFull: the data directory is a small tmpfs (the test needs root to
// mount it; without, it falls back to RLIMIT_FSIZE set on the running agent
// with prlimit, soft limit only so that it can be raised again without
// CAP_SYS_RESOURCE; writes past a file's size fail with EFBIG). While the
// disk is full the agent keeps running and scraping, reports the failed
// store writes and outbox enqueues in /metrics and its log, and keeps the
// windows the store refused (sabaki_agent_store_pending_windows); when
// space returns it stores them, in order, and new windows again, and the
// store passes SQLite's integrity check and `sabaki query`. The windows the
// Mackerel outbox refused wait too (sabaki_agent_enqueue_pending_windows)
// and are queued once space returns, without a restart: Mackerel gets
// every window the pipeline emitted, none given up. Nothing acknowledged is lost: every scraped
// observation and every acknowledged OTLP delta observation is in the
// store, unless a window was given up (counted), which this short outage
// must not need. Short and full alike.
func TestDiskFull(t *testing.T) {
	// Parallel with TestCorruptStore after the other scenarios: neither
	// depends on tight timing (no exact counts), and both mostly wait.
	t.Parallel()
	e := newEnv(t)
	if err := os.MkdirAll(e.dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// SABAKI_E2E_DISKFULL=rlimit tests the fallback as root too.
	mode := "tmpfs"
	if os.Getenv("SABAKI_E2E_DISKFULL") == "rlimit" {
		mode = "rlimit"
	} else if err := exec.Command("mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", e.dataDir).Run(); err != nil {
		mode = "rlimit"
	} else {
		t.Cleanup(func() { exec.Command("umount", "-l", e.dataDir).Run() })
	}
	mk := newMackerel(t)
	l := startLoad(t, e, 2, 0)
	// A lateness longer than the outage: the delta sender retries the
	// exports refused while the journal could not be written, and their
	// points must still be on time when space returns (points older than
	// the lateness are dropped as too_late, counted: another matter).
	agentSec := strings.Replace(e.agentSection(), "lateness: 3s", "lateness: 15s", 1)
	cfg := e.writeConfig(t, agentSec+"sources:\n"+e.otlpSource("")+l.promSource("500ms")+"exporters:\n"+mackerelExporter(mk.URL))
	a := e.start(t, cfg, nil)
	l.waitBaseline(t)
	// An OTLP delta sender too: its points go through the delta journal,
	// on the same full disk.
	l.startDeltaSenders(t, e, 1)
	l.run(2*time.Second, 10)

	var free func()
	pid := fmt.Sprint(a.cmd.Process.Pid)
	switch mode {
	case "tmpfs":
		free = fillDisk(t, e.dataDir)
	case "rlimit":
		if out, err := exec.Command("prlimit", "--pid", pid, "--fsize=1:").CombinedOutput(); err != nil {
			t.Fatalf("prlimit: %v: %s", err, out)
		}
		free = func() {
			if out, err := exec.Command("prlimit", "--pid", pid, "--fsize=unlimited:").CombinedOutput(); err != nil {
				t.Fatalf("prlimit: %v: %s", err, out)
			}
		}
	}
	fullAt := time.Now()
	l.run(4*time.Second, 10)
	storeErrs := a.metricValue("sabaki_agent_store_write_errors_total")
	enqErrs := a.metricValue("sabaki_agent_enqueue_errors_total")
	pendingFull := a.metricValue("sabaki_agent_store_pending_windows")
	alive := a.healthy()
	free()
	freedAt := time.Now()
	_, sentAtFree, _, _ := exporterCounts(a)
	l.run(4*time.Second, 10)
	l.settle(t)
	time.Sleep(1500 * time.Millisecond)
	storeErrs2 := a.metricValue("sabaki_agent_store_write_errors_total")
	waitFor(t, 60*time.Second, "the windows waiting for the store to be stored", func() bool {
		return a.metricValue("sabaki_agent_store_pending_windows") == 0
	})
	retried := a.metricWhere("sabaki_agent_store_retries_total", `result="stored"`)
	abandoned := a.metricValue("sabaki_agent_store_windows_abandoned_total")
	// The exporter recovers too: the windows its outbox refused are queued
	// after the space returned, and every emitted window is sent.
	var enq, sent, dropped, waiting, emitted float64
	waitFor(t, 90*time.Second, "the outbox to take the refused windows and send every window", func() bool {
		emitted = a.metricValue("sabaki_pipeline_windows_total")
		enq, sent, dropped, waiting = exporterCounts(a)
		return waiting == 0 && sent > sentAtFree && a.metricValue("sabaki_agent_enqueue_pending_windows") == 0 && sent >= emitted
	})
	enqRetried := a.metricWhere("sabaki_agent_enqueue_retries_total", `result="queued"`)
	a.stop()

	t.Logf("%s: during 4 s of full disk: %v store write errors (%v windows waiting), %v windows refused by the outbox; after: %v store write errors, %v windows stored late, %v given up; outbox: %v enqueued, %v sent (%v when space returned), %v dropped; peak RSS %d KiB",
		mode, storeErrs, pendingFull, enqErrs, storeErrs2, retried, abandoned, enq, sent, sentAtFree, dropped, a.peakRSS)
	if !alive {
		t.Fatalf("the agent died (or failed /healthz) on a full disk")
	}
	if storeErrs == 0 {
		t.Errorf("no store write error reported while the disk was full")
	}
	if enqErrs == 0 {
		t.Errorf("no refused outbox enqueue reported while the disk was full (the exporter's drops)")
	}
	if !strings.Contains(a.out.String(), "queueing window for exporter failed") {
		t.Errorf("no error logged for the windows the outbox refused")
	}
	t.Logf("windows emitted %v, sent to Mackerel %v; queued late after the outbox refused them %v, given up %v", emitted, sent, enqRetried, a.counts.enqLost)
	if enqRetried == 0 || !strings.Contains(a.out.String(), "queued a window for an exporter after its outbox refused it") {
		t.Errorf("no window queued late after space returned (sabaki_agent_enqueue_retries_total{result=\"queued\"} %v, or no log line)", enqRetried)
	}
	if a.counts.enqLost != 0 || a.counts.dropped != 0 {
		t.Errorf("Mackerel did not get every window: %v given up after refused enqueues, %v dropped by the outbox", a.counts.enqLost, a.counts.dropped)
	}
	if storeErrs2-storeErrs > 2 {
		t.Errorf("store writes kept failing after space returned: %v → %v", storeErrs, storeErrs2)
	}
	if !strings.Contains(a.out.String(), "storing window failed") {
		t.Errorf("no error logged for the failed store writes")
	}
	if pendingFull == 0 {
		t.Errorf("no window waiting for the store while the disk was full (sabaki_agent_store_pending_windows)")
	}
	if retried == 0 || !strings.Contains(a.out.String(), "stored a window after failed store writes") {
		t.Errorf("no window stored late after space returned (sabaki_agent_store_retries_total{result=\"stored\"} %v, or no log line)", retried)
	}
	rows := query(t, e.dataDir, "-metric", "loadgen_request_duration_seconds", "-group-by", "e2e", "-stat", "count", "-from", "2h", "-step", "1s")
	var before, after int
	var stored float64
	for _, r := range rows {
		stored += r.Value
		switch {
		case r.Time.Before(fullAt):
			before++
		case r.Time.After(freedAt.Add(time.Second)):
			after++
		}
	}
	want := l.targets.Totals().Observations
	t.Logf("windows stored before the disk filled %d, after it was freed %d; observations generated %d, stored %v (lost %v)", before, after, want, stored, float64(want)-stored)
	if before == 0 || after == 0 {
		t.Errorf("windows stored before the disk filled %d, after %d: want both", before, after)
	}
	if stored > float64(want) {
		t.Errorf("stored %v observations, more than the %d generated", stored, want)
	}
	// Nothing lost: what is missing is no more than the windows reported
	// as given up can hold (at most the largest stored window each).
	var largest float64
	for _, r := range rows {
		largest = max(largest, r.Value)
	}
	// The delta sender: what the agent acknowledged and stored.
	var dStored, dLargest float64
	for _, r := range query(t, e.dataDir, "-metric", "http.server.request.duration", "-group-by", "service.instance.id", "-stat", "count", "-from", "2h", "-step", "1s") {
		dStored += r.Value
		dLargest = max(dLargest, r.Value)
	}
	dGen, _, _ := l.delta.Totals()
	dAck, dResent := l.delta.Acked(), l.delta.Resent()
	t.Logf("OTLP delta: generated %d, acknowledged %d (re-sent %d), stored %v (lost %v of the acknowledged)", dGen, dAck, dResent, dStored, float64(dAck)-dStored)
	if dStored > float64(dGen+dResent) {
		t.Errorf("OTLP delta: stored %v, more than the %d generated (+%d re-sent)", dStored, dGen, dResent)
	}
	// What a window given up held is missing (counted); nothing else.
	if lost := float64(dAck) - dStored; lost > abandoned*dLargest {
		t.Errorf("OTLP delta: lost %v acknowledged observations; %v windows were given up (at most %v each)", lost, abandoned, dLargest)
	}
	lostObs, dupObs := lostDup(float64(want), stored)
	l2, d2 := lostDup(float64(dAck), dStored)
	figures(t, a.counts, lostObs+l2, dupObs+d2, a.peakRSS)
	if lost := float64(want) - stored; lost > abandoned*largest {
		t.Errorf("lost %v observations; %v windows were given up (at most %v each)", lost, abandoned, largest)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(e.dataDir, "store", "sabaki.db")+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&res); err != nil || res != "ok" {
		t.Errorf("store integrity check: %q, %v", res, err)
	}
}

// TestCorruptStore: a store file cut in half, or with its header
// overwritten, makes `sabaki run` and `sabaki query` fail at once with an
// error naming the file (never a silent reset); moving the damaged store
// aside (the documented recovery: stop, move DATA_DIR/store away, start)
// starts a fresh store, and the outbox of the data directory is kept.
// Short and full alike.
func TestCorruptStore(t *testing.T) {
	t.Parallel() // see TestDiskFull
	for _, damage := range []string{"truncated", "header"} {
		t.Run(damage, func(t *testing.T) {
			t.Parallel() // mostly waiting: halves the scenario's wall time
			e := newEnv(t)
			mk := newMackerel(t)
			l := startLoad(t, e, 1, 0)
			cfg := e.writeConfig(t, e.agentSection()+"sources:\n"+l.promSource("500ms")+"exporters:\n"+mackerelExporter(mk.URL))
			a := e.start(t, cfg, nil)
			l.waitBaseline(t)
			l.run(2*time.Second, 10)
			l.settle(t)
			time.Sleep(1500 * time.Millisecond)
			a.stop()
			db := filepath.Join(e.dataDir, "store", "sabaki.db")
			st, err := os.Stat(db)
			if err != nil {
				t.Fatal(err)
			}
			switch damage {
			case "truncated":
				if err := os.Truncate(db, st.Size()/2); err != nil {
					t.Fatal(err)
				}
			case "header":
				f, err := os.OpenFile(db, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				f.WriteAt([]byte("this is not a database, really!!"), 0)
				f.Close()
			}
			stdout, stderr, code := runSabaki(t, "query", "-data-dir", e.dataDir, "-metric", "loadgen_request_duration_seconds", "-from", "2h")
			t.Logf("query on a %s store: exit %d: %s%s", damage, code, strings.TrimSpace(stderr), strings.TrimSpace(stdout))
			if code == 0 {
				t.Errorf("query on a %s store succeeded", damage)
			}
			if !strings.Contains(stderr, db) {
				t.Errorf("query's error does not name the store file %s: %s", db, stderr)
			}
			run := exec.Command(sabakiBin, "run", "-config", cfg)
			out, err := run.CombinedOutput()
			errLine := tail(strings.TrimSpace(string(out)), 1)
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, `"level":"ERROR"`) {
					errLine = l
				}
			}
			t.Logf("run on a %s store: %v: %s", damage, err, errLine)
			if err == nil {
				t.Errorf("run on a %s store exited 0", damage)
			}
			if !strings.Contains(string(out), "sabaki.db") && !strings.Contains(string(out), filepath.Join(e.dataDir, "store")) {
				t.Errorf("run's error does not name the store file")
			}
			// Recovery: move the store aside.
			if err := os.Rename(filepath.Join(e.dataDir, "store"), filepath.Join(e.dataDir, "store.damaged")); err != nil {
				t.Fatal(err)
			}
			a = e.start(t, cfg, nil)
			l.run(2*time.Second, 10)
			time.Sleep(1500 * time.Millisecond)
			a.stop()
			if rows := query(t, e.dataDir, "-metric", "loadgen_request_duration_seconds", "-group-by", "e2e", "-stat", "count", "-from", "2h", "-step", "1s"); len(rows) == 0 {
				t.Errorf("no windows stored after moving the damaged store aside")
			}
			// Nothing was reset behind the user's back: the damaged file is
			// where they moved it, as large as the damage left it.
			if st2, err := os.Stat(filepath.Join(e.dataDir, "store.damaged", "sabaki.db")); err != nil || (damage == "truncated" && st2.Size() != st.Size()/2) {
				t.Errorf("the damaged store moved aside was changed: %v", err)
			}
		})
	}
}
