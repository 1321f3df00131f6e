package exporters

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/golang/snappy"

	"github.com/sabakiio/sabaki/metric"
)

func revised(w *metric.Window, rev int) *metric.Window {
	c := *w
	c.Revision = rev
	return &c
}

// TestOutboxDropsWindowsItAccepted: a window handed over twice (the daemon
// replayed it from the store after a kill -9 that came after the enqueue) is
// queued once, however the outbox learnt of it: still queued, sent (marks
// kept in the segment, then in the marks file once the segment is deleted),
// or marked at start.
func TestOutboxDropsWindowsItAccepted(t *testing.T) {
	env := newOutboxEnv(t)
	exp := &recExporter{name: "rec"}
	o := env.open(exp, nil)
	if !o.Fresh() {
		t.Fatal("a new outbox is not Fresh")
	}
	if err := o.MarkAccepted([]WindowKey{{Start: t0.Add(-time.Minute), Duration: time.Minute, Revision: 2}}); err != nil {
		t.Fatal(err)
	}
	if o.Fresh() {
		t.Fatal("Fresh after MarkAccepted")
	}
	w0, w1 := testWindow(t0, 1), testWindow(t0.Add(time.Minute), 1)
	steps := []struct {
		w     *metric.Window
		queue bool
	}{
		{testWindow(t0.Add(-time.Minute), 1), false},            // marked at start, revision 2
		{revised(testWindow(t0.Add(-time.Minute), 1), 3), true}, // a later revision of it
		{w0, true},
		{w0, false},             // queued
		{revised(w0, 1), true},  // a revision
		{w0, false},             // an older revision than the one held
		{w1, true},              // the next window
		{revised(w1, 0), false}, // again
		{&metric.Window{Start: w1.Start, Duration: 10 * time.Second}, true}, // another duration
	}
	for i, s := range steps {
		before := o.Depth()
		mustEnqueue(t, o, s.w)
		if queued := o.Depth() > before; queued != s.queue {
			t.Fatalf("step %d (%s rev %d): queued %v, want %v", i, s.w.Start, s.w.Revision, queued, s.queue)
		}
	}
	drain(t, o) // sends the five queued
	if n := len(exp.starts()); n != 5 {
		t.Fatalf("exporter got %d windows, want 5: %v\n%s", n, exp.starts(), env.logs)
	}

	// Reopen twice: the first open deletes the sent segment after saving
	// its marks; the second knows them from the marks file alone.
	for round := range 2 {
		o = env.open(exp, nil)
		if o.Fresh() {
			t.Fatalf("round %d: reopened outbox is Fresh", round)
		}
		for i, s := range steps {
			if s.queue && !o.Accepted(WindowKey{Start: s.w.Start, Duration: s.w.Duration, Revision: s.w.Revision}) {
				t.Fatalf("round %d: step %d's window not accepted after reopening", round, i)
			}
		}
		mustEnqueue(t, o, w1)
		if o.Depth() != 0 {
			t.Fatalf("round %d: a sent window was queued again", round)
		}
		drain(t, o)
		segs, _ := filepath.Glob(filepath.Join(env.dir, "outbox", "rec", "*"+segSuffix))
		if round == 1 && len(segs) != 0 {
			t.Fatalf("sent segments left: %v", segs)
		}
	}
	if n := len(exp.starts()); n != 5 {
		t.Fatalf("exporter got %d windows, want 5", n)
	}
}

// TestOutboxMarksPruned: marks past max_age + 1 h are not kept.
func TestOutboxMarksPruned(t *testing.T) {
	env := newOutboxEnv(t)
	o := env.open(&recExporter{name: "rec"}, nil)
	old := WindowKey{Start: env.clock.Now().Add(-25*time.Hour - time.Minute), Duration: time.Minute}
	recent := WindowKey{Start: env.clock.Now().Add(-2 * time.Hour), Duration: time.Minute}
	if err := o.MarkAccepted([]WindowKey{old, recent}); err != nil {
		t.Fatal(err)
	}
	drain(t, o)
	o = env.open(&recExporter{name: "rec"}, nil)
	defer drain(t, o)
	if o.Accepted(old) || !o.Accepted(recent) {
		t.Fatalf("after reopening: old accepted %v, recent accepted %v; want false, true", o.Accepted(old), o.Accepted(recent))
	}
}

// TestSnappyPrefix: the first bytes of a block, literals and back-references
// alike, are what the full decoder gives.
func TestSnappyPrefix(t *testing.T) {
	long := make([]byte, 5000)
	for i := range long {
		long[i] = byte(i * 7 % 251)
	}
	for _, in := range [][]byte{
		{},
		{1},
		bytes.Repeat([]byte{5, 6}, 100), // "\x05\x06" then a copy of itself
		bytes.Repeat([]byte{0}, 70000),
		long, // a literal longer than 60 bytes
		append(bytes.Repeat([]byte("abcdefgh"), 9000), long...), // 4-byte offsets
	} {
		enc := snappy.Encode(nil, in)
		for _, n := range []int{1, 4, 20, 100} {
			want := in[:min(n, len(in))]
			if got := snappyPrefix(enc, n); !bytes.Equal(got, want) {
				t.Errorf("snappyPrefix(%d bytes, %d) = %v, want %v", len(in), n, got, want)
			}
		}
	}
}

func TestPayloadKey(t *testing.T) {
	for _, w := range []*metric.Window{
		testWindow(t0, 0),
		testWindow(t0, 50),
		{Start: t0, Duration: 10 * time.Second, Revision: 300},
		{Start: time.Unix(0, 1), Duration: time.Nanosecond},
	} {
		p, err := encodeWindow(w)
		if err != nil {
			t.Fatal(err)
		}
		k, rev, err := payloadKey(p)
		if err != nil || k != keyOf(w.Start, w.Duration) || rev != w.Revision {
			t.Errorf("payloadKey = %v, %d, %v; want %v, %d", k, rev, err, keyOf(w.Start, w.Duration), w.Revision)
		}
	}
	if _, _, err := payloadKey([]byte{codecVersion, 0, 0, 0, 0, 0, 0, 0, 0, 0xff}); err == nil {
		t.Error("payloadKey accepted a corrupt body")
	}
}

func TestOutboxCorruptMarksFile(t *testing.T) {
	env := newOutboxEnv(t)
	o := env.open(&recExporter{name: "rec"}, nil)
	if err := o.MarkAccepted(nil); err != nil {
		t.Fatal(err)
	}
	drain(t, o)
	if err := os.WriteFile(filepath.Join(env.dir, "outbox", "rec", marksFile), []byte{marksVersion, 1, 2, 3, 4, 5}, 0o600); err != nil {
		t.Fatal(err)
	}
	o = env.open(&recExporter{name: "rec"}, nil)
	defer drain(t, o)
	if !o.Fresh() {
		t.Fatal("an outbox with a corrupt marks file is not Fresh")
	}
}

// FuzzPayloadKey: the key read from a record's first bytes is the one the
// full decoder reads, and no input makes it panic.
func FuzzPayloadKey(f *testing.F) {
	for _, w := range []*metric.Window{testWindow(t0, 0), testWindow(t0, 3), {Start: t0, Duration: time.Second, Revision: 1 << 20}} {
		p, err := encodeWindow(w)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
		f.Add(p[:payloadHeaderSize+3])
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		k, rev, err := payloadKey(p)
		w, werr := decodeWindow(p)
		if werr != nil {
			return
		}
		if err != nil || k != keyOf(w.Start, w.Duration) || rev != w.Revision {
			t.Fatalf("payloadKey = %v, %d, %v; the decoder reads %v, %d", k, rev, err, keyOf(w.Start, w.Duration), w.Revision)
		}
	})
}

// FuzzParseMarks: a marks file either parses or is refused; what parses
// writes back the same.
func FuzzParseMarks(f *testing.F) {
	o := &Outbox{dir: f.TempDir(), now: func() time.Time { return t0 }, cfg: DefaultOutboxConfig(), tracking: true, marksDirty: true,
		marks: map[markKey]int{keyOf(t0, time.Minute): 2, keyOf(t0.Add(time.Minute), 10*time.Second): 0}}
	if err := o.writeMarksLocked(); err != nil {
		f.Fatal(err)
	}
	good, err := os.ReadFile(filepath.Join(o.dir, marksFile))
	if err != nil {
		f.Fatal(err)
	}
	if m, err := parseMarks(good); err != nil || len(m) != 2 || m[keyOf(t0, time.Minute)] != 2 {
		f.Fatalf("parseMarks(written) = %v, %v", m, err)
	}
	f.Add(good)
	f.Add([]byte{marksVersion, 0, 0, 0, 0, 0})
	f.Add([]byte{marksVersion, 1, 2, 3, 4, 5})
	f.Fuzz(func(t *testing.T, b []byte) {
		marks, err := parseMarks(b)
		if err != nil {
			return
		}
		if marks == nil {
			t.Fatal("nil marks without an error")
		}
	})
}
