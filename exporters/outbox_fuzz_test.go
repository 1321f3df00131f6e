package exporters

import (
	"testing"
	"time"
)

// FuzzDecodeWindow feeds arbitrary payloads to the record decoder: it must
// reject them with an error, never panic or allocate without bound, and what
// it accepts must encode again.
func FuzzDecodeWindow(f *testing.F) {
	for _, n := range []int{0, 1, 3} {
		p, err := encodeWindow(testWindow(t0.Add(time.Duration(n)*time.Minute), n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
		f.Add(p[:len(p)/2])
	}
	f.Add([]byte{codecVersion, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, p []byte) {
		w, err := decodeWindow(p)
		if err != nil {
			return
		}
		q, err := encodeWindow(w)
		if err != nil {
			t.Fatalf("a decoded window does not encode: %v", err)
		}
		w2, err := decodeWindow(q)
		if err != nil || len(w2.Series) != len(w.Series) || !w2.Start.Equal(w.Start) {
			t.Fatalf("re-encoded window does not round-trip: %v", err)
		}
	})
}
