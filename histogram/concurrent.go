package histogram

import (
	"runtime"
	"sync"
	"unsafe"
)

// Concurrent is a histogram that many goroutines can Record into at once.
//
// It keeps a fixed set of shards (a power of two, at least 8·GOMAXPROCS at
// creation), each a Histogram behind its own mutex on its own cache lines.
// A goroutine picks its shard by hashing the address of a variable on its
// own stack: different goroutines have different stacks, so in the steady
// state each producer keeps using one shard, its mutex is uncontended and
// its cache lines stay in one core (the same effect as per-CPU sharding,
// which Go does not expose; sync.Pool-based shard hand-out was measured
// several times slower than this). If two goroutines collide on a shard the
// later one tries the next shards with TryLock and finally waits on one, so
// correctness never depends on the hash.
//
// Snapshot merges every shard into a Histogram and resets it, so each
// observation is reported by exactly one Snapshot.
type Concurrent struct {
	shards []*shard
	mask   uintptr
}

type shard struct {
	mu sync.Mutex
	h  Histogram
	_  [128 - 8 - 80]byte // one shard per two 64-byte cache lines
}

// NewConcurrent returns an empty concurrency-safe histogram with the
// settings of New(maxSize, maxScale).
func NewConcurrent(maxSize int, maxScale int32) *Concurrent {
	n := 8
	for n < 8*runtime.GOMAXPROCS(0) {
		n *= 2
	}
	c := &Concurrent{shards: make([]*shard, n), mask: uintptr(n - 1)}
	for i := range c.shards {
		s := &shard{}
		s.h = *New(maxSize, maxScale)
		c.shards[i] = s
	}
	return c
}

// shardHint hashes the address of a variable on the caller's stack.
// Stack addresses of one goroutine differ in the low bits only (stacks are
// at least 2 KiB apart); the multiplicative hash spreads the stack's
// identity over the shards.
func shardHint(p *byte) uintptr {
	return (uintptr(unsafe.Pointer(p)) >> 11) * 0x9E3779B97F4A7C15 >> 40
}

// lockSlow is taken when the goroutine's own shard is busy: it tries the
// next shards, then waits on its own.
func (c *Concurrent) lockSlow(i uintptr) *shard {
	for k := uintptr(1); k < 4; k++ {
		s := c.shards[(i+k)&c.mask]
		if s.mu.TryLock() {
			return s
		}
	}
	s := c.shards[i&c.mask]
	s.mu.Lock()
	return s
}

// Record adds one observation of v (NaN and ±Inf count as Dropped).
func (c *Concurrent) Record(v float64) {
	var probe byte
	i := shardHint(&probe)
	s := c.shards[i&c.mask]
	if !s.mu.TryLock() {
		s = c.lockSlow(i)
	}
	s.h.Record(v)
	s.mu.Unlock()
}

// RecordN adds n observations of v.
func (c *Concurrent) RecordN(v float64, n uint64) {
	var probe byte
	i := shardHint(&probe)
	s := c.shards[i&c.mask]
	if !s.mu.TryLock() {
		s = c.lockSlow(i)
	}
	s.h.RecordN(v, n)
	s.mu.Unlock()
}

// Snapshot merges everything recorded since the previous Snapshot into dst
// and resets the shards (merge-and-reset: dst's existing content is kept
// and added to). Records running concurrently land either in this snapshot
// or in the next one, never in both and never nowhere.
func (c *Concurrent) Snapshot(dst *Histogram) {
	for _, s := range c.shards {
		s.mu.Lock()
		dst.Merge(&s.h)
		s.h.Reset()
		s.mu.Unlock()
	}
}
