package store

import (
	"context"
	"fmt"
	"runtime"

	"github.com/sabakiio/sabaki/metric"
)

// peakWant is a group's busiest step in one period (Query.Peak).
type peakWant struct {
	key  string // the group's key
	step int64  // the step start
}

// peakReader decodes the busiest steps' histograms of one segment from the
// chunks stream has already fetched (Query.Peak).
type peakReader struct {
	from, stepS int64
	// headed are the periods of the segment that hold head rows: their
	// counts are final only once the head has been folded, after the
	// chunks, so they are read again like periods of other tiers.
	headed map[int64]bool
	bufs   []*decodeBuf // a worker's, reused from one chunk start to the next
}

func (s *Store) newPeakReader(ctx context.Context, q rowQuerier, seg segment, from, stepS, peakS int64) (*peakReader, error) {
	r := &peakReader{from: from, stepS: stepS, headed: map[int64]bool{}}
	rows, err := q.QueryContext(ctx, `SELECT DISTINCT start FROM head WHERE tier = ? AND start >= ? AND start < ?`, seg.tier, seg.from, seg.to)
	if err != nil {
		return nil, fmt.Errorf("listing head rows: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var st int64
		if err := rows.Scan(&st); err != nil {
			return nil, fmt.Errorf("listing head rows: %w", err)
		}
		r.headed[alignDown(st, peakS)] = true
	}
	return r, rows.Err()
}

// busiest returns the start of the step with the highest count among a
// group's rows in the period [p, p+peakS) (the earliest of equal ones), and
// false if the group has no row there.
func busiest(t *stepTable, p, peakS, from, stepS int64) (int64, bool) {
	best, found := int64(0), false
	var most uint64
	for st := max(p, from); st < p+peakS; st += stepS {
		a := t.peek((st - from) / stepS)
		if a == nil || !a.used {
			continue
		}
		if c := a.m.agg.Count; !found || c > most {
			best, most, found = st, c, true
		}
	}
	return best, found
}

// read decodes, for each series (ids, sorted) of a group with a wanted step
// in the chunk raw returns, the histograms of those steps and hands them to
// add with the step's index. Groups are spread over the cores, each group's
// series taken in id order by one goroutine: add may touch the group's
// state without a lock, and the sums come out the same whatever the number
// of cores.
func (r *peakReader) read(ids []int64, groupOf func(id int64) (string, metric.Kind), want []peakWant, raw func(id int64) []byte, add func(key string, idx int64, p *point) error) error {
	if len(want) == 0 {
		return nil
	}
	type group struct {
		key   string
		steps []int64 // ascending (want is in period order)
		ids   []int64
		err   error
	}
	byKey := map[string]*group{}
	var groups []*group
	for _, w := range want {
		g := byKey[w.key]
		if g == nil {
			g = &group{key: w.key}
			byKey[w.key] = g
			groups = append(groups, g)
		}
		g.steps = append(g.steps, w.step)
	}
	for _, id := range ids {
		key, kind := groupOf(id)
		if g := byKey[key]; g != nil && kind == metric.Histogram {
			g.ids = append(g.ids, id)
		}
	}
	do := func(g *group, buf *decodeBuf) error {
		for _, id := range g.ids {
			data := raw(id)
			if data == nil {
				continue
			}
			ws := g.steps
			wanted := func(start int64) bool {
				t := alignDown(start, r.stepS)
				for len(ws) > 0 && ws[0] < t {
					ws = ws[1:]
				}
				return len(ws) > 0 && ws[0] == t
			}
			kind, pts, err := decodeChunkWith(data, decodeOptions{want: wanted, buf: buf, lazy: true})
			if err != nil {
				return fmt.Errorf("chunk of series %d: %w", id, err)
			}
			if kind != metric.Histogram {
				continue
			}
			// A range-coded chunk returns every window, the unwanted ones
			// as summaries; a packed one the wanted ones only.
			ws = g.steps
			for k := range pts {
				if p := &pts[k]; p.h != nil && !p.h.summary && wanted(p.start) {
					if err := add(g.key, (alignDown(p.start, r.stepS)-r.from)/r.stepS, p); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	workers := min(runtime.GOMAXPROCS(0), len(groups))
	for len(r.bufs) < workers {
		r.bufs = append(r.bufs, &decodeBuf{})
	}
	parallel(len(groups), workers, func(w, i int) { groups[i].err = do(groups[i], r.bufs[w]) })
	for _, g := range groups {
		if g.err != nil {
			return g.err
		}
	}
	return nil
}
