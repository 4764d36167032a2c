package aggregate

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

// countStore models fact_event_counts after merges: per (account, month,
// kind, feature, partition, bucket) the row with the greatest covered_end.
type countStore map[string]schema.EventCount

func rowKey(r schema.EventCount) string {
	return fmt.Sprintf("%s|%d|%d|%s|%d|%d", r.Account, r.Month, r.Kind, r.Feature, r.Partition, r.Bucket)
}

func (s countStore) write(rows []schema.EventCount) {
	for _, r := range rows {
		if old, ok := s[rowKey(r)]; !ok || r.CoveredEnd > old.CoveredEnd {
			s[rowKey(r)] = r
		}
	}
}

// totals is what the views compute: per (account, month, kind, feature),
// the sum over buckets.
func (s countStore) totals() map[string]uint64 {
	out := map[string]uint64{}
	for _, r := range s {
		out[fmt.Sprintf("%s|%d|%d|%s", r.Account, r.Month, r.Kind, r.Feature)] += r.Events
	}
	return out
}

func (s countStore) rows() []schema.EventCount {
	var out []schema.EventCount
	for _, r := range s {
		out = append(out, r)
	}
	return out
}

// restoreEvent is the event at one offset of the test partition (nil: a
// rejected record, duplicate or transaction marker).
func restoreEvent(rng *rand.Rand, off int64) *event.Event {
	if rng.IntN(10) == 0 {
		return nil
	}
	acct := fmt.Sprintf("a%d", rng.IntN(4))
	month := fmt.Sprintf("2026-%02d-15T00:00:00Z", 1+rng.IntN(3))
	if rng.IntN(2) == 0 {
		return ev(event.Login, fmt.Sprint(off), acct, fmt.Sprintf("u%d", rng.IntN(5)), "", month, 0)
	}
	return ev(event.FeatureUsed, fmt.Sprint(off), acct, fmt.Sprintf("u%d", rng.IntN(5)), fmt.Sprintf("f%d", rng.IntN(3)), month, 0)
}

// TestRestoreResumesCounts: whatever offsets flushes end at, whichever of
// them crashed after writing their counts but before their progress row,
// and wherever retention moved the log start, a partition restored from
// the stored counts at its durable position writes counts whose totals
// equal those of one uninterrupted owner — the window table of
// docs/design.md, "Progress lives in ClickHouse".
func TestRestoreResumesCounts(t *testing.T) {
	const B = schema.BucketSize
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 1))
		// The partition's offsets span a bucket boundary.
		lo := int64(B - 200 + rng.IntN(100))
		hi := int64(B + 50 + rng.IntN(150))
		evs := map[int64]*event.Event{}
		for off := lo; off < hi; off++ {
			evs[off] = restoreEvent(rng, off)
		}

		feed := func(a *Aggregator, from, to int64) {
			for off := from; off < to; off++ {
				if e := evs[off]; e != nil {
					a.Add(0, off, e)
				} else {
					a.Skip(0, off)
				}
			}
		}

		// One owner that never stops: the truth.
		truth := countStore{}
		one := New("t")
		one.Assign(0)
		feed(one, lo, hi)
		f := drain(one)
		truth.write(f.EventCounts)

		// Owners that stop at random offsets. Each flush writes its
		// counts; with probability 1/3 it dies before its progress row,
		// so the next owner resumes from the previous durable position.
		stored := countStore{}
		durable := lo
		a := New("t")
		a.Restore(0, "t", durable, nil)
		pos := lo
		for pos < hi {
			end := min(hi, pos+1+int64(rng.IntN(120)))
			feed(a, pos, end)
			f := drain(a)
			stored.write(f.EventCounts)
			pos = end
			if rng.IntN(3) == 0 {
				// The flush died before its progress row: the next owner
				// restores at the durable position and reads from there,
				// or from further on where retention already deleted
				// records the dead owner had read (their counts are
				// stored; records nobody counted are never deleted here).
				start := durable + int64(rng.IntN(int(pos-durable)+1))
				if rng.IntN(2) == 0 {
					start = durable
				}
				a = New("t")
				a.Restore(0, "t", durable, stored.rows())
				pos = start
				continue
			}
			durable = pos
		}
		if got, want := stored.totals(), truth.totals(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("seed %d (offsets %d..%d): totals\n got  %v\n want %v", seed, lo, hi, got, want)
		}
	}
}
