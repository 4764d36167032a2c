package schema_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
	"github.com/usagepipe/usagepipe/schema/store"
)

// TestServedRangeChunks: a dense batch is recomputed by key ranges that
// tile its span, a sparse one by account lists. The account IDs sort
// byte-wise around quotes, backslashes, NUL and control bytes, non-ASCII
// and prefixes.
//   - The density check at its boundary (at most 2n accounts in the span:
//     ranges) and the chunk size (account-quarters over the span's months).
//   - Passes with ranges of one, two and three accounts, new facts before
//     each: every account of the span is exact afterwards — also the ones
//     left out of the batch (ranges cover them: that is how the test knows
//     ranges ran) — and the accounts outside the span are untouched.
//   - Two groups in one call: an account of the later group inside a
//     range already recomputed from the earlier quarter gets no second
//     recompute (merges stopped, its versions counted), and is exact.
//
// Reader tables (18.16) are refreshed only for the quarters copy_dirty
// names, so a recompute that marks too late a quarter fails here too.
func TestServedRangeChunks(t *testing.T) {
	ctx := context.Background()
	st := migrated(t, 1)
	cfg := schema.Config{Database: st.Database(), FiscalStartMonth: 1}
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
	sv, err := schema.NewServed(st.Conn(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	sorted := slices.Sorted(slices.Values(ids))
	q1, q2 := int32(2026*12), int32(2026*12+3)

	// The density decision, with the default RangeMin lowered to these
	// few accounts; the span of months is Q1–Q2 (two quarters).
	sv.RangeMin = 2
	for _, c := range []struct {
		name string
		list []string
		want int // RangeAccountQuarters 10 over two quarters: 5
	}{
		{"all", sorted, 5},
		{"six spanning 12 (2n)", []string{sorted[0], sorted[2], sorted[4], sorted[6], sorted[8], sorted[11]}, 5},
		{"five spanning 11 (2n+1)", []string{sorted[0], sorted[2], sorted[4], sorted[6], sorted[10]}, 0},
		{"the two ends", []string{sorted[0], sorted[len(sorted)-1]}, 0},
		{"below RangeMin", sorted[:1], 0},
	} {
		sv.RangeAccountQuarters = 10
		n, err := schema.RangeChunk(ctx, sv, c.list)
		if err != nil {
			t.Fatal(err)
		}
		if n != c.want {
			t.Errorf("%s: range chunk of %d accounts, want %d", c.name, n, c.want)
		}
	}

	// Passes over the inner accounts but one (gap), which is left out of
	// the batch and still recomputed: it lies inside the ranges.
	sv.RangeMin = 1
	inner := sorted[1 : len(sorted)-1]
	gap := inner[3]
	for i, aq := range []int{1, 4, 7} {
		sv.RangeAccountQuarters = aq // 1, 2 and 3 accounts per range over two quarters
		var more []ev
		for j, a := range ids {
			more = append(more, ev{id: fmt.Sprint("n", i, "-", j), typ: event.Login, account: a, user: fmt.Sprint("n", i), ms: ms("2026-02-11T00:00:00Z"), offset: int64(1000*(i+1) + j)})
		}
		if err := st.Write(ctx, factsOf(more, nil)); err != nil {
			t.Fatal(err)
		}
		batch := map[string]int32{}
		for _, a := range inner {
			if a != gap {
				batch[a] = q1
			}
		}
		if err := sv.Recompute(ctx, batch, nil); err != nil {
			t.Fatalf("recompute by ranges of %d account-quarters: %v", aq, err)
		}
		refreshDue(t, st, cfg)
		if d := differences(t, sv, inner); d != "" {
			t.Fatalf("ranges of %d account-quarters (gap account %q not in the batch): %s", aq, gap, d)
		}
	}
	for _, a := range []string{sorted[0], sorted[len(sorted)-1]} {
		if differences(t, sv, []string{a}) == "" {
			t.Errorf("account %q outside every range was recomputed", a)
		}
	}

	// Two groups: the inner accounts from Q1 by ranges, then the last
	// account and an inner one from Q2.
	sv.RangeAccountQuarters = 4
	last, mid := sorted[len(sorted)-1], inner[len(inner)/2]
	late := []ev{
		{id: "late1", typ: event.Login, account: mid, user: "late", ms: ms("2026-05-20T00:00:00Z"), offset: 9000},
		{id: "late2", typ: event.Login, account: last, user: "late", ms: ms("2026-05-20T00:00:00Z"), offset: 9001},
	}
	if err := st.Write(ctx, factsOf(late, nil)); err != nil {
		t.Fatal(err)
	}
	execSQL(t, st, "SYSTEM STOP MERGES "+st.Database()+".rollups_served")
	before := versions(t, st, mid, "2026-04-01")
	batch := map[string]int32{last: q2}
	for _, a := range inner {
		batch[a] = q1
	}
	batch[mid] = q2
	if err := sv.Recompute(ctx, batch, nil); err != nil {
		t.Fatal(err)
	}
	if got := versions(t, st, mid, "2026-04-01") - before; got != 1 {
		t.Errorf("account %q of the later group, inside a range from Q1: %d new versions of its Q2 row, want 1 (skipped)", mid, got)
	}
	execSQL(t, st, "SYSTEM START MERGES "+st.Database()+".rollups_served")
	refreshDue(t, st, cfg)
	d := differences(t, sv, sorted[1:])
	// The last account's Q1 row was never computed (its group starts at
	// Q2); nothing else may differ.
	want := fmt.Sprintf("account_id=%q quarter_start=2026-01-01 00:00:00", last)
	if d != want {
		t.Errorf("after two groups: differences %q, want only %q", d, want)
	}
}

// differences are verify's differences for accounts, keys only, joined.
func differences(t *testing.T, sv *schema.Served, accounts []string) string {
	t.Helper()
	var keys []string
	if _, err := sv.Verify(context.Background(), accounts, func(d schema.Difference) {
		if !slices.Contains(keys, d.Key) {
			keys = append(keys, d.Key)
		}
	}); err != nil {
		t.Fatal(err)
	}
	return strings.Join(keys, "; ")
}

// refreshDue refreshes the reader tables (where they are tables) for the
// quarters copy_dirty names, as the lease holder does between its full
// comparisons.
func refreshDue(t *testing.T, st *store.Store, cfg schema.Config) {
	t.Helper()
	ctx := context.Background()
	sv, err := schema.NewServed(st.Conn(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if on, err := sv.ReaderTablesOn(); err != nil || !on {
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	c := schema.NewCopy(st.Conn(), cfg)
	if err := c.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}()
	due, err := c.Due(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range due {
		if err := c.Refresh(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
}

// versions counts the distinct versions of an account's served rollup
// row for the quarter starting on day.
func versions(t *testing.T, st *store.Store, account, day string) int {
	t.Helper()
	var n uint64
	if err := st.Conn().QueryRow(context.Background(), "SELECT uniqExact(version) FROM "+st.Database()+".rollups_served WHERE account_id = ? AND quarter_start = toDate(?)", account, day).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return int(n)
}

func execSQL(t *testing.T, st *store.Store, q string) {
	t.Helper()
	if err := st.Conn().Exec(context.Background(), q); err != nil {
		t.Fatal(err)
	}
}

// TestRecomputeSizeErrors: the failures a smaller chunk may cure (server
// limits, a too-big statement, the late-start guard) halve a chunk; others
// (an unknown table, a closed connection) end the recompute at once. The
// errors come from the real server.
func TestRecomputeSizeErrors(t *testing.T) {
	ctx := context.Background()
	st := migrated(t, 1)
	for _, c := range []struct {
		name, query string
		settings    clickhouse.Settings
		size        bool
	}{
		{"timeout", "SELECT count() FROM system.numbers WHERE sleepEachRow(0.001) = 0", clickhouse.Settings{"max_execution_time": 1, "max_block_size": 100}, true},
		{"memory", "SELECT length(groupArray(number)) FROM numbers(10000000)", clickhouse.Settings{"max_memory_usage": 1000000}, true},
		{"big AST", "SELECT 1 + 2 + 3 + 4 + 5 + 6", clickhouse.Settings{"max_ast_elements": 3}, true},
		{"too many rows", "SELECT sum(number) FROM (SELECT number FROM system.numbers LIMIT 1000000)", clickhouse.Settings{"max_rows_to_read": 10}, true},
		{"late start", "SELECT throwIf(1)", nil, true},
		{"unknown table", "SELECT * FROM " + st.Database() + ".no_such_table", nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := clickhouse.Context(ctx, clickhouse.WithSettings(c.settings))
			var v uint64
			err := st.Conn().QueryRow(ctx, c.query).Scan(&v)
			if err == nil {
				t.Fatalf("%s: no error", c.query)
			}
			if got := schema.SizeError(fmt.Errorf("recompute rollups_served: %w", err)); got != c.size {
				t.Errorf("%v: size error %v, want %v", err, got, c.size)
			}
		})
	}
	other := migrated(t, 1)
	other.Close()
	err := other.Conn().Exec(ctx, "SELECT 1")
	if err == nil {
		t.Fatal("closed connection: no error")
	}
	if schema.SizeError(err) {
		t.Errorf("closed connection %v: taken for a size error", err)
	}
}
