//go:build linux

package histogram

import (
	"runtime"
	"syscall"
	"testing"
	"time"
)

// The shared benchmark machine is often overloaded (load average several
// times its 2 cores), which inflates wall-clock ns/op unpredictably. The
// benchmarks therefore also report CPU time: "cpu-ns/op" is the CPU time of
// the benchmark's own OS thread (locked for the loop) per op, and for
// parallel benchmarks "proc-cpu-ns/op" is the whole process's CPU time per
// op (all goroutines together; with 2 goroutines perfectly parallel, wall
// ns/op would be half of it).

const rusageThread = 1 // RUSAGE_THREAD on Linux

func cpuNow(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuTimer measures the CPU time of a benchmark loop.
type cpuTimer struct {
	who   int
	start time.Duration
}

// startCPU locks the goroutine to its thread and starts measuring; call it
// right before the timed loop (after b.ResetTimer).
func startCPU(b *testing.B, parallel bool) *cpuTimer {
	t := &cpuTimer{who: rusageThread}
	if parallel {
		t.who = syscall.RUSAGE_SELF
	} else {
		runtime.LockOSThread()
	}
	t.start = cpuNow(t.who)
	return t
}

// stop reports the CPU time per op.
func (t *cpuTimer) stop(b *testing.B) {
	d := cpuNow(t.who) - t.start
	if t.who == rusageThread {
		runtime.UnlockOSThread()
		b.ReportMetric(float64(d.Nanoseconds())/float64(b.N), "cpu-ns/op")
	} else {
		b.ReportMetric(float64(d.Nanoseconds())/float64(b.N), "proc-cpu-ns/op")
	}
}
