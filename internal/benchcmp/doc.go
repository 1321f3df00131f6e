// Package benchcmp holds side-by-side benchmarks of sabaki's histogram
// package against go-expohisto v1.0.0 and the OpenTelemetry Go SDK v1.47.0
// exponential aggregation, on the same data in the same run, so the ratios
// are visible on a noisy machine:
//
//	go test -bench . -benchmem ./histogram/ ./internal/benchcmp/
//
// It lives outside histogram/ so that package keeps importing only the
// standard library. It has no non-test code.
package benchcmp
