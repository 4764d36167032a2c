package schema_test

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/aggregate/live"
	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

// TestLiveRulesMatchTheContract: the live state's row of the last quarter,
// built from the facts of replays, partial flushes and repeats merged in
// any order, equals the contract's rollup computed straight from the
// events (expect, which the view tests hold compute_*.sql to).
func TestLiveRulesMatchTheContract(t *testing.T) {
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 7))
		fiscalStart := 1 + int(seed%12)
		evs := randomEvents(rng, 50+rng.IntN(400))
		if seed%2 == 0 {
			// Seat and purchase events on few instants, and twins of
			// seat events at the same instant with the other state: the
			// tie rule (greater event_id) decides them.
			for i := range evs {
				if evs[i].typ != event.Login && evs[i].typ != event.FeatureUsed {
					evs[i].ms -= evs[i].ms % (10 * 24 * 3_600_000)
				}
			}
			next := maxOffsets(evs)
			for _, e := range evs {
				if (e.typ == event.SeatAssigned || e.typ == event.SeatUnassigned) && rng.IntN(2) == 0 {
					e.id = fmt.Sprintf("%016x", rng.Uint64())
					e.typ = event.SeatAssigned + event.SeatUnassigned - e.typ
					e.offset = next[e.partition]
					next[e.partition]++
					evs = append(evs, e)
				}
			}
		}
		fy := quarter.Fiscal{StartMonth: fiscalStart}
		var last int32
		first := int32(1 << 30)
		for _, e := range evs {
			last = max(last, quarter.MonthIndex(e.ms))
			first = min(first, quarter.MonthIndex(e.ms))
		}
		lastQ := fy.QuarterIndex(last)
		wantR, wantF := expect(evs, fiscalStart)

		// Flushes as a pipeline writes them: prefixes of each partition
		// (a crash and replay writes a prefix again), in shuffled order,
		// each one possibly twice.
		full := maxOffsets(evs)
		var writes []*schema.Facts
		for range 1 + rng.IntN(4) {
			part := map[int32]int64{}
			for p, end := range full {
				part[p] = rng.Int64N(end + 1)
			}
			writes = append(writes, factsOf(evs, part))
		}
		writes = append(writes, factsOf(evs, nil))
		for _, w := range writes {
			// As a flush writes them (aggregate.DrainAll): in the
			// table's key order, so each key's buckets ascend.
			slices.SortFunc(w.EventCounts, func(x, y schema.EventCount) int {
				return cmp.Or(strings.Compare(x.Account, y.Account), cmp.Compare(x.Month, y.Month), cmp.Compare(x.Kind, y.Kind),
					strings.Compare(x.Feature, y.Feature), strings.Compare(x.Topic, y.Topic), cmp.Compare(x.Partition, y.Partition), cmp.Compare(x.Bucket, y.Bucket))
			})
		}
		rng.Shuffle(len(writes), func(i, j int) { writes[i], writes[j] = writes[j], writes[i] })
		if rng.IntN(2) == 0 {
			writes = append(writes, writes[rng.IntN(len(writes))])
		}

		st := live.New(fy, lastQ)
		accounts := map[string]bool{}
		for _, e := range evs {
			accounts[e.account] = true
		}
		// Half the accounts are loaded from the first write (a snapshot),
		// the rest from nothing: both merge every later write.
		var loaded, empty []string
		for a := range accounts {
			if rng.IntN(2) == 0 {
				loaded = append(loaded, a)
			} else {
				empty = append(empty, a)
			}
		}
		now := time.Now()
		st.Load(loaded, loadOf(writes[0]), now)
		st.Load(empty, &schema.LiveLoad{}, now)
		for _, w := range writes {
			st.Apply(w, nil)
		}
		if seed%3 == 0 && lastQ > fy.QuarterIndex(first) {
			// Through a rollover: a state of the quarter before, with
			// every write merged (its seat parts keep what is dated
			// before that quarter's end), then the live quarter's
			// State with the writes merged again.
			prev := live.New(fy, lastQ-3)
			prev.Load(slices.Collect(maps.Keys(accounts)), &schema.LiveLoad{}, now)
			for _, w := range writes {
				prev.Apply(w, nil)
			}
			st = prev.Rollover(lastQ)
			for _, w := range writes {
				st.Apply(w, nil)
			}
		}

		var gotR []schema.Rollup
		var gotF []schema.FeatureRow
		for _, r := range wantR {
			if r.QuarterStart != quarter.MonthStart(lastQ) {
				continue
			}
			row, ok := st.Row(r.AccountID)
			if !ok {
				t.Fatalf("seed %d: account %q not cached", seed, r.AccountID)
			}
			gotR = append(gotR, row.Rollup)
			for i, f := range row.Features {
				gotF = append(gotF, schema.FeatureRow{AccountID: r.AccountID, QuarterStart: r.QuarterStart, Feature: f, ActiveUsers: row.FeatureUsers[i], Events: row.FeatureEvents[i]})
			}
		}
		var lastR []schema.Rollup
		for _, r := range wantR {
			if r.QuarterStart == quarter.MonthStart(lastQ) {
				lastR = append(lastR, r)
			}
		}
		var lastF []schema.FeatureRow
		for _, f := range wantF {
			if f.QuarterStart == quarter.MonthStart(lastQ) {
				lastF = append(lastF, f)
			}
		}
		if d := diff(fmtRollups(gotR), fmtRollups(lastR)); d != "" {
			t.Fatalf("seed %d (fiscal start %d): rollups differ:\n%s", seed, fiscalStart, d)
		}
		if d := diff(fmtFeatures(gotF), fmtFeatures(lastF)); d != "" {
			t.Fatalf("seed %d (fiscal start %d): features differ:\n%s", seed, fiscalStart, d)
		}
		if len(lastR) != len(accounts) {
			t.Fatalf("seed %d: %d rows of the last quarter for %d accounts", seed, len(lastR), len(accounts))
		}
	}
}

// loadOf is f in the shape LoadLive returns: each count key's greatest
// bucket (at its greatest covered_end) and the sum of its other buckets.
func loadOf(f *schema.Facts) *schema.LiveLoad {
	type key struct {
		a, feature, topic string
		m                 int32
		kind              uint8
		p                 int32
	}
	buckets := map[key]map[uint64]schema.EventCount{}
	for _, r := range f.EventCounts {
		k := key{r.Account, r.Feature, r.Topic, r.Month, r.Kind, r.Partition}
		if buckets[k] == nil {
			buckets[k] = map[uint64]schema.EventCount{}
		}
		if old, ok := buckets[k][r.Bucket]; !ok || r.CoveredEnd > old.CoveredEnd {
			buckets[k][r.Bucket] = r
		}
	}
	ld := &schema.LiveLoad{Facts: *f}
	ld.Facts.EventCounts = nil
	for _, bs := range buckets {
		top := slices.Max(slices.Collect(maps.Keys(bs)))
		var sum uint64
		for b, r := range bs {
			if b != top {
				sum += r.Events
			}
		}
		ld.Facts.EventCounts = append(ld.Facts.EventCounts, bs[top])
		ld.CountSums = append(ld.CountSums, sum)
	}
	return ld
}

// TestLiveLoadWriteVerify: facts of the last quarter written by flushes
// and a replay of part of them; LoadLive reads them back for every
// account, the state's rows of the last quarter go out as live rows (the
// greatest: a recompute of the same second loses the tie), and usagepipe
// verify finds them equal to a recompute from the facts. Though every
// mark was satisfied before, every account is then stale to the sweep
// from the live quarter (a live row satisfies no mark), and one sweep
// later nothing is.
func TestLiveLoadWriteVerify(t *testing.T) {
	ctx := context.Background()
	for seed := range uint64(4) {
		rng := rand.New(rand.NewPCG(seed, 11))
		fiscalStart := 1 + int(seed*5%12)
		st := migrated(t, fiscalStart)
		sv, err := schema.NewServed(st.Conn(), schema.Config{Database: st.Database(), FiscalStartMonth: fiscalStart})
		if err != nil {
			t.Fatal(err)
		}
		evs := randomEvents(rng, 300)
		write(t, st, factsOf(evs, nil)) // served rows built
		// More events of the last quarter (seats and purchases too),
		// written by a flush, a replay of part of it and the flush again,
		// with no recompute.
		fy := quarter.Fiscal{StartMonth: fiscalStart}
		var last int64
		for _, e := range evs {
			last = max(last, e.ms)
		}
		from := fy.Start(last).UnixMilli()
		offsets := maxOffsets(evs)
		n := len(evs)
		for i := range 200 {
			e := evs[rng.IntN(n)]
			e.id = fmt.Sprintf("x%d-%016x", i, rng.Uint64())
			e.ms = from + rng.Int64N(last-from+1)
			e.offset = offsets[e.partition] + int64(i)*7_000
			evs = append(evs, e)
		}
		half := map[int32]int64{}
		for p, end := range maxOffsets(evs) {
			half[p] = (end + offsets[p]) / 2
		}
		// (A count row counts a whole offset range: every flush is of
		// all events up to its offsets.)
		for _, f := range []*schema.Facts{factsOf(evs, half), factsOf(evs, nil), factsOf(evs, half)} {
			if err := st.Write(ctx, f); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := sv.Sweep(ctx); err != nil { // every mark satisfied
			t.Fatal(err)
		}
		lastQ, ok, err := sv.LastQuarter(ctx)
		if err != nil || !ok {
			t.Fatalf("last quarter: %v %v", ok, err)
		}
		accounts := map[string]bool{}
		for _, e := range evs {
			accounts[e.account] = true
		}
		var list []string
		for a := range accounts {
			list = append(list, a)
		}
		ld, err := sv.LoadLive(ctx, list, lastQ)
		if err != nil {
			t.Fatal(err)
		}
		if want := fy.QuarterIndex(quarter.MonthIndex(last)); lastQ != want {
			t.Fatalf("last quarter %d, want %d", lastQ, want)
		}
		state := live.New(fy, lastQ)
		state.Load(list, ld, time.Now())
		var rows []schema.LiveRow
		for _, a := range list {
			r, ok := state.Row(a)
			if !ok {
				t.Fatalf("seed %d: %q not loaded", seed, a)
			}
			rows = append(rows, r)
		}
		if err := sv.WriteLive(ctx, rows); err != nil {
			t.Fatal(err)
		}
		syncReaders(t, st) // where readers are tables (18.16), as the serve loop's copy
		var diffs []string
		if _, err := sv.Verify(ctx, nil, func(d schema.Difference) { diffs = append(diffs, fmt.Sprint(d)) }); err != nil || len(diffs) > 0 {
			t.Fatalf("seed %d: verify after live rows: %v\n%s", seed, err, strings.Join(diffs, "\n"))
		}
		stale, err := sv.Stale(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(stale) != len(list) {
			t.Fatalf("seed %d: %d accounts stale with live rows as greatest, want all %d", seed, len(stale), len(list))
		}
		for a, q := range stale {
			if q != lastQ {
				t.Errorf("seed %d: %q stale from quarter %d, want the live quarter %d", seed, a, q, lastQ)
			}
		}
		if _, err := sv.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		if stale, err := sv.Stale(ctx); err != nil || len(stale) != 0 {
			t.Fatalf("seed %d: stale after a sweep: %v %v", seed, stale, err)
		}
		checkViews(t, st, evs, fiscalStart)
	}
}

// TestLivePartialFlush: a flush that crashed after some tables leaves
// feature users without their counts (and a load may read exactly that).
// The live rows of such facts equal what a recompute computes from them:
// the feature counts in features_used but has no feature row until it has
// events (compute_features.sql: HAVING events > 0).
func TestLivePartialFlush(t *testing.T) {
	ctx := context.Background()
	st := migrated(t, 1)
	sv, err := schema.NewServed(st.Conn(), schema.Config{Database: st.Database(), FiscalStartMonth: 1})
	if err != nil {
		t.Fatal(err)
	}
	evs := []ev{
		{id: "l1", typ: event.Login, account: "a", user: "u1", ms: ms("2026-04-10T00:00:00Z"), offset: 1},
		{id: "f1", typ: event.FeatureUsed, account: "a", user: "u1", feature: "search", ms: ms("2026-04-11T00:00:00Z"), offset: 2},
	}
	write(t, st, factsOf(evs, nil))
	partial := factsOf(append(evs, ev{id: "f2", typ: event.FeatureUsed, account: "a", user: "u2", feature: "export", ms: ms("2026-04-12T00:00:00Z"), offset: 3}), nil)
	partial.EventCounts, partial.Progress = nil, nil // crashed before the counts
	if err := st.Write(ctx, partial); err != nil {
		t.Fatal(err)
	}
	q := int32(2026*12 + 3)
	ld, err := sv.LoadLive(ctx, []string{"a"}, q)
	if err != nil {
		t.Fatal(err)
	}
	state := live.New(quarter.Fiscal{StartMonth: 1}, q)
	state.Load([]string{"a"}, ld, time.Now())
	row, ok := state.Row("a")
	if !ok {
		t.Fatal("a not loaded")
	}
	if row.Rollup.FeaturesUsed != 2 || fmt.Sprint(row.Features) != "[search]" || row.Rollup.ActiveUsers != 2 {
		t.Fatalf("row %+v, features %v: want 2 features used, a feature row for search only, 2 active users", row.Rollup, row.Features)
	}
	if err := sv.WriteLive(ctx, []schema.LiveRow{row}); err != nil {
		t.Fatal(err)
	}
	syncReaders(t, st)
	var diffs []string
	if _, err := sv.Verify(ctx, nil, func(d schema.Difference) { diffs = append(diffs, fmt.Sprint(d)) }); err != nil || len(diffs) > 0 {
		t.Fatalf("verify: %v\n%s", err, strings.Join(diffs, "\n"))
	}
}
