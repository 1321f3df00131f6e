package exporters

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"reflect"
	"testing"
	"time"

	"github.com/golang/snappy"

	"github.com/sabakiio/sabaki/metric"
)

// TestAppendRecordMatchesWholeEncode: the record appendRecord builds piece
// by piece is byte for byte the record of the earlier encoder, which
// compressed the whole body with one snappy.Encode, so both versions read
// each other's outboxes. Sizes cover a body under snappy's minimum block,
// one block, and many blocks with aggregates straddling block boundaries.
func TestAppendRecordMatchesWholeEncode(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    *metric.Window
	}{
		{"empty", &metric.Window{Start: t0, Duration: time.Minute}},
		{"zero start", &metric.Window{Duration: time.Minute, Revision: 3}},
		{"one series", testWindow(t0, 1)},
		{"2000 latency series", realisticWindow(t0, 2000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := []byte("earlier records")
			rec, err := appendRecord(bytes.Clone(prefix), tc.w)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(rec, prefix) {
				t.Fatal("appendRecord overwrote dst")
			}
			rec = rec[len(prefix):]
			payload := rec[frameHeader:]
			if n := binary.LittleEndian.Uint32(rec); int(n) != len(payload) {
				t.Fatalf("frame length %d, payload %d bytes", n, len(payload))
			}
			if sum := binary.LittleEndian.Uint32(rec[4:]); sum != crc32.Checksum(payload, castagnoli) {
				t.Fatal("frame checksum does not match the payload")
			}
			body, err := snappy.Decode(nil, payload[payloadHeaderSize:])
			if err != nil {
				t.Fatal(err)
			}
			if whole := snappy.Encode(nil, body); !bytes.Equal(whole, payload[payloadHeaderSize:]) {
				t.Fatalf("compressed body differs from snappy.Encode of the whole body (%d vs %d bytes)", len(payload)-payloadHeaderSize, len(whole))
			}
			if len(tc.w.Series) > 1000 && len(body) < 4*snappyBlock {
				t.Fatalf("body of %d bytes: the test does not span several blocks", len(body))
			}
			got, err := decodeWindow(payload)
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Series) != len(tc.w.Series) || got.Revision != tc.w.Revision || !got.Start.Equal(tc.w.Start) {
				t.Fatalf("decoded %d series rev %d start %v", len(got.Series), got.Revision, got.Start)
			}
		})
	}
}

// TestOutboxSendsHeldWindow: the window next in line is sent from memory,
// equal to what its record decodes to; a retry after a failed send reads
// the record from disk and sends the same content.
func TestOutboxSendsHeldWindow(t *testing.T) {
	env := newOutboxEnv(t)
	exp := &recExporter{name: "mackerel", fail: func(w *metric.Window, n int) error {
		if n == 2 {
			return errors.New("dial tcp: connection refused")
		}
		return nil
	}}
	o := env.open(exp, nil)
	w1, w2 := testWindow(t0, 3), testWindow(t0.Add(time.Minute), 3)
	w1.Start = w1.Start.Local() // handed over in UTC, as decoded
	mustEnqueue(t, o, w1)
	if o.held == nil || o.heldSeq != o.q[0].seq {
		t.Fatal("the head window is not held")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { o.Run(ctx); close(done) }()
	waitFor(t, func() bool { return len(exp.starts()) == 1 })
	mustEnqueue(t, o, w2) // fails once, then is read back
	waitFor(t, func() bool { return len(exp.starts()) == 2 })
	cancel()
	<-done

	exp.mu.Lock()
	got := exp.got
	exp.mu.Unlock()
	if &got[0].Series[0] != &w1.Series[0] {
		t.Error("the first window was not sent from memory")
	}
	if &got[1].Series[0] == &w2.Series[0] {
		t.Error("the retried window was sent from memory, not read back")
	}
	for i, w := range []*metric.Window{w1, w2} {
		p, err := encodeWindow(w)
		if err != nil {
			t.Fatal(err)
		}
		want, err := decodeWindow(p)
		if err != nil {
			t.Fatal(err)
		}
		if got[i].Start.Location() != time.UTC || !reflect.DeepEqual(summary(got[i]), summary(want)) {
			t.Errorf("window %d sent as %+v, its record holds %+v", i, summary(got[i]), summary(want))
		}
	}
	if o.held != nil {
		t.Error("a sent window is still held")
	}
}

// summary is what the held window and its decoded record must agree on.
func summary(w *metric.Window) []any {
	out := []any{w.Start.UnixNano(), w.Duration, w.Revision}
	for _, a := range w.Series {
		out = append(out, a.Name, a.Unit, a.Kind, fmt.Sprint(a.Resource), fmt.Sprint(a.Attrs), a.Sum, a.Count, a.Last, a.Min, a.Max,
			a.ErrorCount, a.ErrorTracked, a.Hist != nil)
		if a.Hist != nil {
			out = append(out, a.Hist.Count(), a.Hist.Scale(), a.Hist.Quantile(0.9))
		}
		for _, e := range a.Exemplars {
			out = append(out, e.TraceID, e.SpanID, e.Value, e.Time.UnixNano(), fmt.Sprint(e.Attrs))
		}
	}
	return out
}
