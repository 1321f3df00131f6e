//go:build !linux

package histogram

import "testing"

// Without per-thread CPU clocks the benchmarks report wall time only.

type cpuTimer struct{}

func startCPU(b *testing.B, parallel bool) *cpuTimer { return &cpuTimer{} }

func (t *cpuTimer) stop(b *testing.B) {}
