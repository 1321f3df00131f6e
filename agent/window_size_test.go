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
	if n := unsafe.Sizeof(rawState{}); n > 80 {
		t.Errorf("rawState is %d bytes, want <= 80", n)
	}
}
