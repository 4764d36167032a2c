package schema_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

// TestServedRangeChunks: a dense batch is recomputed by key ranges
// (account_id >= first AND account_id <= last), a sparse one by lists.
// With account IDs that sort byte-wise around quotes, backslashes,
// control and non-ASCII bytes, and one a prefix of another, a range
// recompute of every account but the first and last in byte order makes
// exactly those accounts' rows equal the facts (verify: 0 differences),
// with range chunks of one, two and three accounts (new facts before each
// pass), and leaves the two outside the ranges untouched (verify finds
// their rows missing). A later group's account inside a range already
// recomputed from an earlier quarter is skipped, and still exact.
func TestServedRangeChunks(t *testing.T) {
	ctx := context.Background()
	st := migrated(t, 1)
	ids := []string{"a", "a'", "a\\", "a\x01", "a\x00", "ab", "Ünïcødé-账户", "\xffz", "tab\there", `"dq"`, "z", "zz'"}
	var evs []ev
	for i, a := range ids {
		base := int64(i) * 10
		evs = append(evs,
			ev{id: fmt.Sprint("p", i), typ: event.SeatsPurchased, account: a, ms: ms("2026-01-05T00:00:00Z"), seats: int64(3 + i), offset: base},
			ev{id: fmt.Sprint("s", i), typ: event.SeatAssigned, account: a, user: "u1", ms: ms("2026-01-06T00:00:00Z"), offset: base + 1},
			ev{id: fmt.Sprint("l", i), typ: event.Login, account: a, user: "u1", ms: ms("2026-02-10T00:00:00Z"), offset: base + 2},
			ev{id: fmt.Sprint("f", i), typ: event.FeatureUsed, account: a, user: "u2", feature: a, ms: ms("2026-05-10T00:00:00Z"), offset: base + 3},
		)
	}
	// Facts only: no served row yet.
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	sv, err := schema.NewServed(st.Conn(), schema.Config{Database: st.Database(), FiscalStartMonth: 1})
	if err != nil {
		t.Fatal(err)
	}
	sorted := slices.Sorted(slices.Values(ids))
	q1 := int32(2026 * 12)

	// The density decision, with the default RangeMin lowered to these
	// few accounts.
	sv.RangeMin = 2
	for _, c := range []struct {
		name  string
		list  []string
		dense bool
	}{
		{"all", sorted, true},
		{"all but the ends", sorted[1 : len(sorted)-1], true},
		{"the two ends", []string{sorted[0], sorted[len(sorted)-1]}, false},
		{"every third", []string{sorted[0], sorted[3], sorted[6], sorted[9]}, false},
	} {
		n, err := schema.RangeChunk(ctx, sv, c.list, q1)
		if err != nil {
			t.Fatal(err)
		}
		if (n > 0) != c.dense {
			t.Errorf("%s: range chunk of %d accounts, want ranges %v", c.name, n, c.dense)
		}
	}
	sv.RangeMin = 1
	sv.RangeAccountQuarters = 1
	if n, err := schema.RangeChunk(ctx, sv, sorted, q1); err != nil || n != 1 {
		t.Fatalf("range chunk at 1 account-quarter over two quarters: %d, %v; want 1", n, err)
	}

	inner := sorted[1 : len(sorted)-1]
	for i, aq := range []int{1, 4, 7} {
		sv.RangeAccountQuarters = aq // 1, 2 and 3 accounts per range over two quarters
		// A new active user for every account, so that each pass changes
		// every inner account's rows.
		var more []ev
		for j, a := range ids {
			more = append(more, ev{id: fmt.Sprint("n", i, "-", j), typ: event.Login, account: a, user: fmt.Sprint("n", i), ms: ms("2026-02-11T00:00:00Z"), offset: int64(1000*(i+1) + j)})
		}
		if err := st.Write(ctx, factsOf(more, nil)); err != nil {
			t.Fatal(err)
		}
		batch := map[string]int32{}
		for _, a := range inner {
			batch[a] = q1
		}
		if err := sv.Recompute(ctx, batch, nil); err != nil {
			t.Fatalf("recompute by ranges of %d account-quarters: %v", aq, err)
		}
		// Verify also reads the reader tables where they are tables.
		if err := schema.SyncReaders(ctx, st.Conn(), schema.Config{Database: st.Database(), FiscalStartMonth: 1}); err != nil {
			t.Fatal(err)
		}
		var diffs []string
		n, err := sv.Verify(ctx, inner, func(d schema.Difference) { diffs = append(diffs, d.Key+" served "+d.Served+" computed "+d.Computed) })
		if err != nil || n != len(inner) || len(diffs) != 0 {
			t.Fatalf("ranges of %d account-quarters: verify %d accounts, %v, differences %s", aq, n, err, strings.Join(diffs, "; "))
		}
	}
	// Two groups: the inner accounts from Q1 by ranges, then the last
	// account and an inner one from Q2. The inner one is inside a range
	// already recomputed from Q1 (skipped); the last one is not.
	q2 := q1 + 3
	last, mid := sorted[len(sorted)-1], inner[len(inner)/2]
	late := []ev{
		{id: "late1", typ: event.Login, account: mid, user: "late", ms: ms("2026-05-20T00:00:00Z"), offset: 9000},
		{id: "late2", typ: event.Login, account: last, user: "late", ms: ms("2026-05-20T00:00:00Z"), offset: 9001},
	}
	if err := st.Write(ctx, factsOf(late, nil)); err != nil {
		t.Fatal(err)
	}
	batch := map[string]int32{last: q2}
	for _, a := range inner {
		batch[a] = q1
	}
	batch[mid] = q2
	if err := sv.Recompute(ctx, batch, nil); err != nil {
		t.Fatal(err)
	}
	if err := schema.SyncReaders(ctx, st.Conn(), schema.Config{Database: st.Database(), FiscalStartMonth: 1}); err != nil {
		t.Fatal(err)
	}
	var diffs []string
	if _, err := sv.Verify(ctx, sorted[1:], func(d schema.Difference) { diffs = append(diffs, d.Key) }); err != nil {
		t.Fatal(err)
	}
	if len(diffs) == 0 {
		t.Errorf("after two groups: want the last account's Q1 row missing, verify found nothing")
	}
	for _, d := range diffs {
		// The last account's Q1 row was never computed (its group starts
		// at Q2); nothing else may differ.
		if !strings.Contains(d, "quarter_start=2026-01-01") || !strings.Contains(d, fmt.Sprintf("%q", last)) {
			t.Errorf("after two groups: %s", d)
		}
	}
	for _, a := range []string{sorted[0]} {
		var diffs []string
		if _, err := sv.Verify(ctx, []string{a}, func(d schema.Difference) { diffs = append(diffs, d.Key) }); err != nil {
			t.Fatal(err)
		}
		if len(diffs) == 0 {
			t.Errorf("account %q outside every range was recomputed", a)
		}
	}
}
