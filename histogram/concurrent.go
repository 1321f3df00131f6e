package histogram

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// Concurrent is a histogram that many goroutines can Record into at once.
//
// It keeps a fixed set of shards (2·GOMAXPROCS at creation), each a
// Histogram behind its own mutex on its own cache lines. A goroutine takes a
// shard from a sync.Pool, which hands back the shard its P used last, so in
// the steady state each P works on its own shard: the mutex is uncontended
// and its cache line never moves between cores. The pool only holds
// pointers to shards that also live in the fixed list, so when the garbage
// collector empties the pool nothing is lost: the next Record picks a shard
// round-robin and the mutex keeps sharing safe.
//
// Snapshot merges every shard into a Histogram and resets it, so each
// observation is reported by exactly one Snapshot.
type Concurrent struct {
	shards []*shard
	pool   sync.Pool
	next   atomic.Uint32
}

type shard struct {
	mu sync.Mutex
	h  Histogram
	_  [128 - 8 - 80]byte // one shard per two 64-byte cache lines
}

// NewConcurrent returns an empty concurrency-safe histogram with the
// settings of New(maxSize, maxScale).
func NewConcurrent(maxSize int, maxScale int32) *Concurrent {
	n := 2 * runtime.GOMAXPROCS(0)
	c := &Concurrent{shards: make([]*shard, n)}
	for i := range c.shards {
		s := &shard{}
		s.h = *New(maxSize, maxScale)
		c.shards[i] = s
	}
	return c
}

func (c *Concurrent) get() *shard {
	if s, ok := c.pool.Get().(*shard); ok {
		return s
	}
	return c.shards[int(c.next.Add(1))%len(c.shards)]
}

// Record adds one observation of v (NaN and ±Inf count as Dropped).
func (c *Concurrent) Record(v float64) {
	s := c.get()
	s.mu.Lock()
	s.h.Record(v)
	s.mu.Unlock()
	c.pool.Put(s)
}

// RecordN adds n observations of v.
func (c *Concurrent) RecordN(v float64, n uint64) {
	s := c.get()
	s.mu.Lock()
	s.h.RecordN(v, n)
	s.mu.Unlock()
	c.pool.Put(s)
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
