package sources

import (
	"encoding/binary"
	"hash/maphash"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/sabakiio/sabaki/metric"
)

// otlpExemplarMemo hands each exemplar over once. The OTel SDKs keep a
// series' exemplars in its reservoir until newer ones replace them (Go SDK:
// "the stored exemplars are preserved after" each collection), so with
// cumulative temporality every export repeats them; passed on as they come,
// the same trace would be attached to every later window as if it had been
// slow in each. The memo remembers, per series, the exemplars of its last
// accepted point and filters those out of the next one. Identity is trace
// and span ID, value and timestamp: a new observation always differs.
// Entries not refreshed for otlpMemoTTL are swept.
type otlpExemplarMemo struct {
	mu        sync.Mutex
	m         map[uint64]otlpMemoEntry
	lastSweep time.Time
}

type otlpMemoEntry struct {
	keys []uint64
	at   time.Time
}

const otlpMemoTTL = 15 * time.Minute

var otlpSeed = maphash.MakeSeed()

// otlpMemoUpdate is what filter computed; commit records it once the sink
// accepted the batch (a refused batch is retried with its exemplars).
type otlpMemoUpdate struct {
	series uint64
	keys   []uint64
}

func otlpSeriesKey(h *maphash.Hash, s *metric.Series) uint64 {
	h.Reset()
	h.WriteString(s.Name)
	for _, set := range []metric.Attrs{s.Resource, s.Attrs} {
		h.WriteByte(1)
		for _, a := range set {
			h.WriteString(a.Key)
			h.WriteByte(0)
			h.WriteString(a.Value)
			h.WriteByte(0)
		}
	}
	return h.Sum64()
}

func otlpExemplarKey(h *maphash.Hash, e *metric.Exemplar) uint64 {
	h.Reset()
	h.Write(e.TraceID[:])
	h.Write(e.SpanID[:])
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], math.Float64bits(e.Value))
	binary.LittleEndian.PutUint64(b[8:], uint64(e.Time.UnixNano()))
	h.Write(b[:])
	return h.Sum64()
}

// filter drops from series the exemplars already handed over and returns
// the memo updates to commit after a successful Consume.
func (m *otlpExemplarMemo) filter(series []metric.Series) []otlpMemoUpdate {
	var h maphash.Hash
	h.SetSeed(otlpSeed)
	var ups []otlpMemoUpdate
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range series {
		s := &series[i]
		for j := range s.Points {
			pt := &s.Points[j]
			if len(pt.Exemplars) == 0 {
				continue
			}
			sk := otlpSeriesKey(&h, s)
			prev := m.m[sk].keys
			up := otlpMemoUpdate{series: sk, keys: make([]uint64, 0, len(pt.Exemplars))}
			kept := pt.Exemplars[:0]
			for _, e := range pt.Exemplars {
				k := otlpExemplarKey(&h, &e)
				up.keys = append(up.keys, k)
				if !slices.Contains(prev, k) {
					kept = append(kept, e)
				}
			}
			if len(kept) == 0 {
				kept = nil
			}
			pt.Exemplars = kept
			ups = append(ups, up)
		}
	}
	return ups
}

func (m *otlpExemplarMemo) commit(ups []otlpMemoUpdate, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		m.m = map[uint64]otlpMemoEntry{}
	}
	for _, u := range ups {
		m.m[u.series] = otlpMemoEntry{keys: u.keys, at: now}
	}
	if now.Sub(m.lastSweep) >= otlpMemoTTL {
		m.lastSweep = now
		for k, e := range m.m {
			if now.Sub(e.at) >= otlpMemoTTL {
				delete(m.m, k)
			}
		}
	}
}
