package e2e

import (
	binenc "encoding/binary" // binary is the agent binary (harness_test.go)
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// dropLastQueued cuts the newest record off the outbox of exporter in
// dataDir while the agent is down, when that record is still unsent: the
// state a kill -9 leaves when it comes after the store committed the window
// and before the outbox had it. The restarted agent must queue that window
// again from the store (cmd/sabaki/replay.go). It reports whether it cut a
// record. The record layout is exporters/outbox.go's: length u32 LE,
// CRC-32C u32 LE, payload; segments are named by their first sequence
// number; cursor holds the first unsent one.
func dropLastQueued(t *testing.T, dataDir, exporter string) bool {
	t.Helper()
	dir := filepath.Join(dataDir, "outbox", exporter)
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segs) == 0 {
		return false
	}
	slices.Sort(segs) // zero-padded names
	last := segs[len(segs)-1]
	base, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(last), ".seg"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(last)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int
	for off := 0; off+8 <= len(data); {
		n := int(binenc.LittleEndian.Uint32(data[off:]))
		if off+8+n > len(data) {
			break // torn by the kill: the agent cuts it off itself
		}
		offs = append(offs, off)
		off += 8 + n
	}
	if len(offs) == 0 {
		return false
	}
	cursor := uint64(0)
	if b, err := os.ReadFile(filepath.Join(dir, "cursor")); err == nil && len(b) == 12 {
		cursor = binenc.LittleEndian.Uint64(b)
	}
	if seq := base + uint64(len(offs)-1); seq < cursor {
		return false // already sent: cutting it would make the replay a second send
	}
	if err := os.Truncate(last, int64(offs[len(offs)-1])); err != nil {
		t.Fatal(err)
	}
	return true
}
