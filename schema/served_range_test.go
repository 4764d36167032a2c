package schema_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

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
	execSQL(t, st, "SYSTEM STOP MERGES "+st.Database()+".served_rollups")
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
	execSQL(t, st, "SYSTEM START MERGES "+st.Database()+".served_rollups")
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
	if err := st.Conn().QueryRow(context.Background(), "SELECT uniqExact(version) FROM "+st.Database()+".served_rollups WHERE account_id = ? AND quarter_start = toDate(?)", account, day).Scan(&n); err != nil {
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
		{"set too big", "SELECT count() FROM numbers(100) WHERE number IN (SELECT number FROM numbers(1000))", clickhouse.Settings{"max_rows_in_set": 10}, true},
		{"syntax", "SELECT (", nil, false},
		{"unknown table", "SELECT * FROM " + st.Database() + ".no_such_table", nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := clickhouse.Context(ctx, clickhouse.WithSettings(c.settings))
			var v uint64
			err := st.Conn().QueryRow(ctx, c.query).Scan(&v)
			if err == nil {
				t.Fatalf("%s: no error", c.query)
			}
			if got := schema.SizeError(fmt.Errorf("recompute served_rollups: %w", err)); got != c.size {
				t.Errorf("%v: size error %v, want %v", err, got, c.size)
			}
		})
	}
	// Errors a test cannot make a server throw on purpose.
	for _, c := range []struct {
		err  error
		size bool
	}{
		{&clickhouse.Exception{Code: 1001, Message: "std::exception. Code: 1001, type: std::bad_alloc, e.what() = std::bad_alloc"}, true},
		{&clickhouse.Exception{Code: 1001, Message: "std::exception. Code: 1001, type: std::out_of_range, e.what() = basic_string"}, false},
		{&clickhouse.Exception{Code: 62, Message: "Syntax error: failed at position 262144: max_query_size exceeded"}, false},
	} {
		if got := schema.SizeError(fmt.Errorf("recompute: %w", c.err)); got != c.size {
			t.Errorf("%v: size error %v, want %v", c.err, got, c.size)
		}
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

// faultConn passes everything to a real connection, but records the
// accounts of each recompute INSERT into served_feature_sets (the first
// statement of a chunk) and may fail a chunk's statements (fail) or make
// its landing look late (the next server clock read after a chunk's
// rollups INSERT is pushed ahead by lateBy).
type faultConn struct {
	driver.Conn
	ids    []string                                    // the test's account IDs, sorted
	fail   func(table string, accounts []string) error // table: "features" or "rollups"
	late   func(chunk int) bool                        // chunk: index into sizes
	sizes  []string                                    // each chunk attempted, in order: "l" (list) or "r" (range), and its accounts
	pushed bool
	failed []string // the table of each statement failed
	// clockFail: the clock read after a chunk's rows landed fails (a
	// connection lost just then).
	clockFail func(chunk int) bool
	broken    bool
}

// errRow is a driver.Row that failed.
type errRow struct{ err error }

func (r errRow) Err() error           { return r.err }
func (r errRow) Scan(...any) error    { return r.err }
func (r errRow) ScanStruct(any) error { return r.err }

func (f *faultConn) Exec(ctx context.Context, q string, args ...any) error {
	if strings.HasPrefix(q, "INSERT INTO ") && (strings.Contains(q, ".served_rollups (") || strings.Contains(q, ".served_feature_sets (")) {
		accounts, kind := f.accountsOf(q)
		table := "rollups"
		if strings.Contains(q, ".served_feature_sets (") {
			table = "features"
			f.sizes = append(f.sizes, fmt.Sprint(kind, len(accounts)))
		}
		if f.fail != nil {
			if err := f.fail(table, accounts); err != nil {
				f.failed = append(f.failed, table)
				if l, ok := err.(landedThen); ok {
					// The statement runs, then the error: its rows
					// landed, and the client does not know it.
					if err := f.Conn.Exec(ctx, q, args...); err != nil {
						return err
					}
					return l.err
				}
				return err
			}
		}
		if strings.Contains(q, ".served_rollups (") && f.late != nil && f.late(len(f.sizes)-1) {
			f.pushed = true
		}
		if strings.Contains(q, ".served_rollups (") && f.clockFail != nil && f.clockFail(len(f.sizes)-1) {
			f.broken = true
		}
	}
	return f.Conn.Exec(ctx, q, args...)
}

func (f *faultConn) QueryRow(ctx context.Context, q string, args ...any) driver.Row {
	if f.broken && q == "SELECT toUInt32(now())" {
		f.broken = false
		return errRow{fmt.Errorf("read: %w", errors.New("connection reset by peer"))}
	}
	if f.pushed && q == "SELECT toUInt32(now())" {
		f.pushed = false
		return f.Conn.QueryRow(ctx, "SELECT toUInt32(toUInt32(now()) + 100)")
	}
	return f.Conn.QueryRow(ctx, q, args...)
}

// accountsOf returns the test accounts a recompute statement selects: its
// account list, or the IDs inside its key range.
func (f *faultConn) accountsOf(q string) (accounts []string, kind string) {
	if i := strings.Index(q, "account_id IN ("); i >= 0 {
		list := q[i+len("account_id IN (") : i+strings.Index(q[i:], ")")]
		for _, v := range strings.Split(list, ",") {
			accounts = append(accounts, strings.Trim(v, "'"))
		}
		return accounts, "l"
	}
	var lo, hi, op string
	i := strings.Index(q, "account_id >= '")
	if _, err := fmt.Sscanf(strings.ReplaceAll(q[i:], "'", " "), "account_id >=  %s  AND account_id %s  %s ", &lo, &op, &hi); err != nil {
		panic(fmt.Sprintf("no account filter in %q: %v", q[:min(len(q), 200)], err))
	}
	for _, a := range f.ids {
		if a >= lo && (a < hi || op == "<=" && a == hi) {
			accounts = append(accounts, a)
		}
	}
	return accounts, "r"
}

// staleOf is sv.Stale, or the test fails.
func staleOf(t *testing.T, sv *schema.Served) map[string]int32 {
	t.Helper()
	stale, err := sv.Stale(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return stale
}

// landedThen, returned by a faultConn's fail, runs the statement before
// failing with err (a connection lost after the rows landed).
type landedThen struct{ err error }

func (l landedThen) Error() string { return l.err.Error() }

// failFrom fails the statements on table from the n-th call of a chunk's
// statements on (1-based, counting both tables), times times (all, if
// omitted), with err().
func failFrom(n int, table string, err func() error, times ...int) func(string, []string) error {
	calls, failed := 0, 0
	return func(tb string, _ []string) error {
		calls++
		if tb != table || calls < n || len(times) > 0 && failed >= times[0] {
			return nil
		}
		failed++
		return err()
	}
}

// TestRecomputeChunkFailures: how a recompute reacts to chunks that fail
// or land late, over a real server (the faults are injected per chunk by
// the accounts it names; the real server's errors are classified in
// TestRecomputeSizeErrors).
//   - A size error (here MEMORY_LIMIT_EXCEEDED for more than 3 accounts)
//     halves the chunk until it passes; a range grows back after a
//     success; every account ends exact.
//   - A size error at every size ends with an error once one account
//     fails (ranges first fall back to lists).
//   - Any other error ends the recompute at its first chunk.
//   - A chunk that lands late is done again, halved; a one-account list
//     that lands late three times in a row ends with an error (it used to
//     loop).
func TestRecomputeChunkFailures(t *testing.T) {
	ctx := context.Background()
	var ids []string
	for i := range 12 {
		ids = append(ids, fmt.Sprintf("acc%02d", i))
	}
	tooBig := func(_ string, accounts []string) error {
		if len(accounts) > 3 {
			return &clickhouse.Exception{Code: 241, Message: "Memory limit (for query) exceeded"}
		}
		return nil
	}
	always := func(string, []string) error {
		return &clickhouse.Exception{Code: 241, Message: "Memory limit (for query) exceeded"}
	}
	for _, c := range []struct {
		name      string
		ranges    bool
		chunk     int // ChunkAccounts
		fail      func(table string, accounts []string) error
		late      func(chunk int) bool
		clockFail func(chunk int) bool
		wantSizes string // chunks attempted, space-separated
		wantErr   string // "" for success (then every account is exact)
		wantStale int    // after an error: the first accounts that must be stale
		// prior: every account is served before (so an account is stale
		// after the call only if it was marked again); gaps: the batch
		// holds only the even accounts, from the second quarter (the
		// accounts' first month is January).
		prior, gaps bool
	}{
		{name: "lists halve and grow back", chunk: 12, fail: tooBig, wantSizes: "l12 l6 l3 l6 l3 l6 l3 l3"},
		{name: "ranges halve and grow back", ranges: true, chunk: 12, fail: tooBig, wantSizes: "r12 r6 r3 r6 r3 r6 r3 r3"},
		{name: "lists fail at one account", chunk: 12, fail: always, wantSizes: "l12 l6 l3 l1", wantErr: "code: 241"},
		{name: "ranges fall back to lists", ranges: true, chunk: 12, fail: always, wantSizes: "r12 r6 r3 r1 l12 l6 l3 l1", wantErr: "code: 241"},
		{name: "the group's last account fails alone", ranges: true, chunk: 12, fail: func(_ string, accounts []string) error {
			if slices.Contains(accounts, "acc11") {
				return &clickhouse.Exception{Code: 241, Message: "Memory limit (for query) exceeded"}
			}
			return nil
		}, wantSizes: "r12 r6 r6 r3 r3 r1 r2 r1 r1", wantErr: "code: 241"},
		{name: "other errors end at once", chunk: 12, fail: func(string, []string) error {
			return &clickhouse.Exception{Code: 60, Message: "Table does not exist"}
		}, wantSizes: "l12", wantErr: "code: 60"},
		{name: "a connection error ends at once", ranges: true, chunk: 12, fail: func(string, []string) error {
			return fmt.Errorf("read: %w", errors.New("connection reset by peer"))
		}, wantSizes: "r12", wantErr: "connection reset"},
		{name: "late lists halve", chunk: 12, late: func(i int) bool { return i < 2 }, wantSizes: "l12 l6 l3 l3 l3 l3"},
		{name: "late one-account list gives up", chunk: 1, late: func(int) bool { return true }, wantSizes: "l1 l1 l1", wantErr: "landed more than", wantStale: 1},
		// A late landing marks the chunk's accounts again at once: the
		// call then ends before redoing them (a connection error on the
		// next chunk), and they are still stale (their late rows alone
		// satisfy the flush's marks).
		{name: "late range, then a connection error", ranges: true, chunk: 12, late: func(i int) bool { return i == 0 }, fail: failFrom(3, "rollups", func() error {
			return fmt.Errorf("read: %w", errors.New("connection reset by peer"))
		}), wantSizes: "r12 r6", wantErr: "connection reset", wantStale: 12},
		// A rollup INSERT that fails after its rows landed (unknown to
		// the client): the chunk is marked again, whatever the error.
		{name: "rollups land, then the connection fails", chunk: 12, fail: failFrom(2, "rollups", func() error {
			return landedThen{&clickhouse.Exception{Code: 210, Message: "Connection refused"}}
		}), wantSizes: "l12", wantErr: "code: 210", wantStale: 12},
		// The odd accounts, not in the batch, lie inside the late range:
		// marked again with it (from the batch's quarter).
		{name: "late range with accounts outside the batch, then a connection error", ranges: true, chunk: 12, prior: true, gaps: true, late: func(i int) bool { return i == 0 }, fail: failFrom(3, "rollups", func() error {
			return fmt.Errorf("read: %w", errors.New("connection reset by peer"))
		}), wantSizes: "r11 r6", wantErr: "connection reset", wantStale: 11},
		{name: "late one-account list gives up, others served", chunk: 1, prior: true, late: func(int) bool { return true }, wantSizes: "l1 l1 l1", wantErr: "landed more than", wantStale: 1},
		// The rows landed, then the clock read fails: when they landed
		// is unknown, so they are marked again.
		{name: "clock read fails after the rows landed", chunk: 12, prior: true, clockFail: func(i int) bool { return i == 0 }, wantSizes: "l12", wantErr: "connection reset", wantStale: 12},
		{name: "rollups fail for size: halve after marking again", chunk: 12, fail: func(table string, accounts []string) error {
			if table == "rollups" && len(accounts) > 6 {
				return &clickhouse.Exception{Code: 241, Message: "Memory limit (for query) exceeded"}
			}
			return nil
		}, wantSizes: "l12 l6 l6"},
		// The late-start guard on the first statement: a pause, not the
		// size; the same chunk again with a new S, three times at most.
		{name: "late start of the first statement", chunk: 12, fail: failFrom(1, "features", func() error {
			return &clickhouse.Exception{Code: 395, Message: "Value passed to 'throwIf' function is non zero"}
		}, 2), wantSizes: "l12 l12 l12"},
		{name: "late start again and again", chunk: 12, fail: failFrom(1, "features", func() error {
			return &clickhouse.Exception{Code: 395, Message: "Value passed to 'throwIf' function is non zero"}
		}), wantSizes: "l12 l12 l12 l12", wantErr: "started more than"},
		// On the second statement it is the first one's length: halve.
		{name: "late start of the rollups", chunk: 12, fail: failFrom(2, "rollups", func() error {
			return &clickhouse.Exception{Code: 395, Message: "Value passed to 'throwIf' function is non zero"}
		}, 1), wantSizes: "l12 l6 l6"},
		{name: "late one-account range falls back to lists", ranges: true, chunk: 1, late: func(i int) bool { return i < 4 }, wantSizes: "r12 r6 r3 r1" + strings.Repeat(" l1", 12)},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := migrated(t, 1)
			cfg := schema.Config{Database: st.Database(), FiscalStartMonth: 1}
			var evs []ev
			for i, a := range ids {
				base := int64(i) * 10
				evs = append(evs,
					ev{id: fmt.Sprint("p", i), typ: event.SeatsPurchased, account: a, ms: ms("2026-01-05T00:00:00Z"), seats: int64(3 + i), offset: base},
					ev{id: fmt.Sprint("l", i), typ: event.Login, account: a, user: "u1", ms: ms("2026-02-10T00:00:00Z"), offset: base + 1},
					ev{id: fmt.Sprint("f", i), typ: event.FeatureUsed, account: a, user: "u2", feature: "f", ms: ms("2026-05-10T00:00:00Z"), offset: base + 2},
				)
			}
			if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
				t.Fatal(err)
			}
			fc := &faultConn{Conn: st.Conn(), ids: ids, fail: c.fail, late: c.late, clockFail: c.clockFail}
			sv, err := schema.NewServed(fc, cfg)
			if err != nil {
				t.Fatal(err)
			}
			sv.ChunkAccounts = c.chunk
			sv.RangeMin, sv.RangeAccountQuarters = 1000, 0
			if c.ranges {
				sv.RangeMin, sv.RangeAccountQuarters = 2, 24 // 12 accounts over two quarters
			}
			if c.prior {
				plain, err := schema.NewServed(st.Conn(), cfg)
				if err != nil {
					t.Fatal(err)
				}
				all := map[string]int32{}
				for _, a := range ids {
					all[a] = 2026 * 12
				}
				if err := plain.Recompute(ctx, all, nil); err != nil {
					t.Fatal(err)
				}
				if stale := staleOf(t, plain); len(stale) > 0 {
					t.Fatalf("after the first recompute, stale: %v", stale)
				}
			}
			batch := map[string]int32{}
			for i, a := range ids {
				switch {
				case !c.gaps:
					batch[a] = 2026 * 12
				case i%2 == 0:
					batch[a] = 2026*12 + 3
				}
			}
			rctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			err = sv.Recompute(rctx, batch, nil)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("recompute: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("recompute: error %v, want one with %q", err, c.wantErr)
			}
			if got := strings.Join(fc.sizes, " "); got != c.wantSizes {
				t.Errorf("chunks attempted (l: list, r: range; accounts): %s, want %s", got, c.wantSizes)
			}
			// A late landing or a failed rollup INSERT marks again, and
			// only they (the serve loop then sweeps).
			remarks := c.late != nil || c.clockFail != nil
			for _, f := range fc.failed {
				remarks = remarks || f == "rollups"
			}
			if got := sv.Remarked(); got != remarks {
				t.Errorf("Remarked() = %v, want %v", got, remarks)
			}
			if sv.Remarked() {
				t.Error("Remarked() true twice")
			}
			stale := staleOf(t, sv)
			if c.wantStale > 0 {
				for _, a := range ids[:c.wantStale] {
					if _, ok := stale[a]; !ok {
						t.Errorf("after the error, %s is not stale: its rows may have landed too late for the updated_at poll", a)
					}
				}
				if c.prior {
					for _, a := range ids[c.wantStale:] {
						if _, ok := stale[a]; ok {
							t.Errorf("after the error, %s is stale: it was served before and not in a failed or late chunk", a)
						}
					}
				}
				// The next round (no faults) satisfies the new marks.
				plain, err := schema.NewServed(st.Conn(), cfg)
				if err != nil {
					t.Fatal(err)
				}
				if err := plain.Recompute(ctx, stale, nil); err != nil {
					t.Fatal(err)
				}
				if again := staleOf(t, plain); len(again) > 0 {
					t.Errorf("after the next round, still stale: %v", again)
				}
			}
			if c.wantErr == "" {
				for a := range batch {
					if _, ok := stale[a]; ok {
						t.Errorf("after the recompute, %s is stale (a version not past its marks?)", a)
					}
				}
			}
			if c.wantErr == "" {
				refreshDue(t, st, cfg)
				if d := differences(t, sv, ids); d != "" {
					t.Errorf("after the recompute: %s", d)
				}
			}
		})
	}
}
