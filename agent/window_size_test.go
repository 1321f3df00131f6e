package agent

import (
	"testing"
	"unsafe"
)

// Emitted windows hold one agg per series for the whole lateness, and the
// pipeline one rawState per series: keep them small.
func TestStateSizes(t *testing.T) {
	if n := unsafe.Sizeof(agg{}); n > 64 {
		t.Errorf("agg is %d bytes, want <= 64", n)
	}
	// 80 bytes before the durable baselines added their 16-byte key and
	// pending-window pointer, and max_series its admission.
	if n := unsafe.Sizeof(rawState{}); n > 112 {
		t.Errorf("rawState is %d bytes, want <= 112", n)
	}
}

// There is one outSeries per raw series: unit, description and resource are
// shared through its meta.
func TestOutSeriesSize(t *testing.T) {
	if n := unsafe.Sizeof(outSeries{}); n > 64 {
		t.Errorf("outSeries is %d bytes, want <= 64", n)
	}
}
