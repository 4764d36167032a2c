package schema_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
	"github.com/usagepipe/usagepipe/schema/store"
)

// checkViews compares both views with what the contract computes from evs.
func checkViews(t *testing.T, st *store.Store, evs []ev, fiscalStart int) {
	t.Helper()
	serve(t, st)
	wantR, wantF := expect(evs, fiscalStart)
	gotR, err := st.ReadRollups(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d := diff(fmtRollups(gotR), fmtRollups(wantR)); d != "" {
		t.Errorf("account_quarter_rollups (fiscal start %d):\n%s", fiscalStart, d)
	}
	gotF, err := st.ReadFeatures(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d := diff(fmtFeatures(gotF), fmtFeatures(wantF)); d != "" {
		t.Errorf("account_quarter_features (fiscal start %d):\n%s", fiscalStart, d)
	}
}

// write writes f as a flush does, then brings the served rows up to date
// as the serve loop's sweep does, for every fiscal calendar migrate built.
func write(t *testing.T, st *store.Store, f *schema.Facts) {
	t.Helper()
	if err := st.Write(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	serve(t, st)
}

// serve sweeps the served rows of every fiscal calendar migrate built, and
// checks that a second sweep finds nothing stale.
func serve(t *testing.T, st *store.Store) {
	t.Helper()
	ctx := context.Background()
	rows, err := st.Conn().Query(ctx, "SELECT DISTINCT name FROM "+st.Database()+".schema_migrations WHERE kind = 'backfill' AND startsWith(name, 'served_v2_fy')") // builds of the current layout
	if err != nil {
		t.Fatal(err)
	}
	var fys []int
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		var fy int
		if _, err := fmt.Sscanf(name, "served_v2_fy%d", &fy); err != nil {
			t.Fatalf("backfill record %q: %v", name, err)
		}
		fys = append(fys, fy)
	}
	rows.Close()
	if len(fys) == 0 {
		t.Fatal("no served rollups were built by migrate")
	}
	for _, fy := range fys {
		sv, err := schema.NewServed(st.Conn(), schema.Config{Database: st.Database(), FiscalStartMonth: fy})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sv.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		stale, err := sv.Stale(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(stale) > 0 {
			t.Fatalf("fiscal start %d: %d accounts still stale after a sweep: %v", fy, len(stale), stale)
		}
	}
	syncReaders(t, st)
}

// syncReaders brings the reader tables (servers before 20.1) up to date
// with the served rows, as the serve loop does, for the calendar they
// were installed for.
func syncReaders(t *testing.T, st *store.Store) {
	t.Helper()
	ctx := context.Background()
	var def string
	if err := st.Conn().QueryRow(ctx, "SELECT argMax(definition, seq) FROM "+st.Database()+".schema_migrations WHERE name = 'reader_tables'").Scan(&def); err != nil {
		t.Fatal(err)
	}
	if def == "" {
		return // views
	}
	var fy int
	if _, err := fmt.Sscanf(def, "%d served_v2", &fy); err != nil {
		t.Fatalf("reader_tables record %q: %v", def, err)
	}
	if err := schema.SyncReaders(ctx, st.Conn(), schema.Config{Database: st.Database(), FiscalStartMonth: fy}); err != nil {
		t.Fatal(err)
	}
}

// seatsAndActivity is a small hand-made history across quarter edges.
func seatsAndActivity() []ev {
	return []ev{
		{id: "p1", typ: event.SeatsPurchased, account: "acme", ms: ms("2026-01-10T00:00:00Z"), seats: 10},
		{id: "s1", typ: event.SeatAssigned, account: "acme", user: "ann", ms: ms("2026-01-11T00:00:00Z")},
		{id: "s2", typ: event.SeatAssigned, account: "acme", user: "bob", ms: ms("2026-01-11T00:00:00Z")},
		{id: "l1", typ: event.Login, account: "acme", user: "ann", ms: ms("2026-02-01T12:34:56.789Z"), offset: 1},
		{id: "f1", typ: event.FeatureUsed, account: "acme", user: "cid", feature: "export", ms: ms("2026-03-31T23:59:59Z"), offset: 2},
		{id: "s3", typ: event.SeatUnassigned, account: "acme", user: "bob", ms: ms("2026-04-01T00:00:00Z")},
		{id: "l2", typ: event.Login, account: "acme", user: "bob", ms: ms("2026-05-01T00:00:00+09:00"), offset: 3},
		{id: "p2", typ: event.SeatsPurchased, account: "quiet", ms: ms("2026-02-01T00:00:00Z"), seats: 3},
		{id: "x1", typ: event.Login, account: "late", user: "zed", ms: ms("2026-08-15T00:00:00Z"), offset: 4},
	}
}

// TestViewsSmall pins a hand-checked case: seats as of quarter end across
// quarters, activation, the account with seats and no activity having rows
// through the global last quarter, and last_activity_at of 1970 UTC.
func TestViewsSmall(t *testing.T) {
	st := migrated(t, 1)
	evs := seatsAndActivity()
	write(t, st, factsOf(evs, nil))
	checkViews(t, st, evs, 1)
	got, err := st.ReadRollups(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`"acme" 2026-01-01 2026-04-01 2026-Q1 purchased=10 assigned=2 util=0.2 active=2 activeAssigned=1 activation=0.5 logins=1 featureEvents=1 features=1 last=2026-03-31 23:59:59 UTC`,
		`"acme" 2026-04-01 2026-07-01 2026-Q2 purchased=10 assigned=1 util=0.1 active=1 activeAssigned=0 activation=0 logins=1 featureEvents=0 features=0 last=2026-04-30 15:00:00 UTC`,
		`"acme" 2026-07-01 2026-10-01 2026-Q3 purchased=10 assigned=1 util=0.1 active=0 activeAssigned=0 activation=0 logins=0 featureEvents=0 features=0 last=1970-01-01 00:00:00 UTC`,
		`"late" 2026-07-01 2026-10-01 2026-Q3 purchased=0 assigned=0 util=0 active=1 activeAssigned=0 activation=0 logins=1 featureEvents=0 features=0 last=2026-08-15 00:00:00 UTC`,
		`"quiet" 2026-01-01 2026-04-01 2026-Q1 purchased=3 assigned=0 util=0 active=0 activeAssigned=0 activation=0 logins=0 featureEvents=0 features=0 last=1970-01-01 00:00:00 UTC`,
		`"quiet" 2026-04-01 2026-07-01 2026-Q2 purchased=3 assigned=0 util=0 active=0 activeAssigned=0 activation=0 logins=0 featureEvents=0 features=0 last=1970-01-01 00:00:00 UTC`,
		`"quiet" 2026-07-01 2026-10-01 2026-Q3 purchased=3 assigned=0 util=0 active=0 activeAssigned=0 activation=0 logins=0 featureEvents=0 features=0 last=1970-01-01 00:00:00 UTC`,
	}
	if d := diff(fmtRollups(got), want); d != "" {
		t.Error(d)
	}
	// No activity reads as Unix 0 in UTC through clickhouse-go.
	last := got[2].LastActivityAt
	if !last.Equal(time.Unix(0, 0)) || last.Location() != time.UTC {
		t.Errorf("last_activity_at with no activity = %v (%v), want 1970-01-01 00:00:00 UTC", last, last.Location())
	}
}

// TestViewsIdempotentUnderReplays writes the same facts again, facts of
// shorter offset prefixes (a zombie writer or a replay after a crash, with
// smaller covered_end) before and after, and checks nothing changes; then
// merges everything and checks again.
func TestViewsIdempotentUnderReplays(t *testing.T) {
	st := migrated(t, 1)
	rng := rand.New(rand.NewPCG(1, 2))
	evs := randomEvents(rng, 1500)
	hi := maxOffsets(evs)
	half := map[int32]int64{}
	for p, o := range hi {
		half[p] = o / 2
	}
	write(t, st, factsOf(evs, half))
	write(t, st, factsOf(evs, nil))
	write(t, st, factsOf(evs, half))
	write(t, st, factsOf(evs, nil))
	checkViews(t, st, evs, 1)
	if err := st.Conn().Exec(context.Background(), "OPTIMIZE TABLE "+st.Database()+".fact_event_counts FINAL"); err != nil {
		t.Fatal(err)
	}
	checkViews(t, st, evs, 1)
}

// TestViewsRandomHistories compares the views with the contract computed
// from random event histories, for several fiscal calendars.
func TestViewsRandomHistories(t *testing.T) {
	for _, fs := range []int{1, 2, 4, 11} {
		st := migrated(t, fs)
		rng := rand.New(rand.NewPCG(uint64(fs), 7))
		evs := randomEvents(rng, 800)
		write(t, st, factsOf(evs, nil))
		checkViews(t, st, evs, fs)
	}
}

// TestViewsCountBucketsOverlap: two writers' rows for one offset bucket
// (covered_end 10 with 3 events, covered_end 20 with 5) count 5, not 8;
// a different bucket or partition adds.
func TestViewsCountBucketsOverlap(t *testing.T) {
	st := migrated(t, 1)
	m := int32(2026*12 + 0)
	row := func(part int32, bucket, end, n uint64) schema.EventCount {
		return schema.EventCount{Account: "a", Month: m, Kind: schema.KindLogin, Topic: topic, Partition: part, Bucket: bucket, CoveredEnd: end, Events: n}
	}
	f := &schema.Facts{
		AccountMonths: []schema.AccountMonth{{Account: "a", Month: m}},
		EventCounts:   []schema.EventCount{row(0, 0, 20, 5), row(0, 1, schema.BucketSize+7, 2), row(1, 0, 4, 1)},
	}
	write(t, st, f)
	write(t, st, &schema.Facts{EventCounts: []schema.EventCount{row(0, 0, 10, 3), row(0, 0, 20, 5)}})
	write(t, st, f)
	got, err := st.ReadRollups(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Logins != 8 {
		t.Fatalf("rollups = %v, want one row with 8 logins", fmtRollups(got))
	}
}

// TestViewsSeatTies: two seat events at the same millisecond; the greater
// event_id wins, whatever order they were written in.
func TestViewsSeatTies(t *testing.T) {
	at := ms("2026-02-02T02:02:02.002Z")
	f := func(first, second ev, want uint64) {
		t.Helper()
		st := migrated(t, 1)
		evs := []ev{first, second}
		write(t, st, factsOf(evs[:1], nil))
		write(t, st, factsOf(evs[1:], nil))
		checkViews(t, st, evs, 1)
		got, err := st.ReadRollups(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].SeatsAssigned != want {
			t.Errorf("%s then %s: %v, want seats_assigned=%d", first.id, second.id, fmtRollups(got), want)
		}
	}
	assign := ev{id: "b-assign", typ: event.SeatAssigned, account: "a", user: "u", ms: at}
	unassign := ev{id: "a-unassign", typ: event.SeatUnassigned, account: "a", user: "u", ms: at}
	f(assign, unassign, 1)
	f(unassign, assign, 1)
	unassign.id = "c-unassign"
	f(assign, unassign, 0)
	f(unassign, assign, 0)
}

// TestViewsSeatsAsOfAndOverAssignment: a purchase in Q1 applies to later
// quarters until the next one; more assigned than purchased gives a
// utilization above 1.
func TestViewsSeatsAsOfAndOverAssignment(t *testing.T) {
	st := migrated(t, 1)
	evs := []ev{
		{id: "p1", typ: event.SeatsPurchased, account: "a", ms: ms("2025-02-01T00:00:00Z"), seats: 2},
		{id: "s1", typ: event.SeatAssigned, account: "a", user: "u1", ms: ms("2025-02-01T00:00:00Z")},
		{id: "s2", typ: event.SeatAssigned, account: "a", user: "u2", ms: ms("2025-05-01T00:00:00Z")},
		{id: "s3", typ: event.SeatAssigned, account: "a", user: "u3", ms: ms("2025-08-01T00:00:00Z")},
		{id: "p2", typ: event.SeatsPurchased, account: "a", ms: ms("2026-01-01T00:00:00Z"), seats: 4},
		{id: "p0", typ: event.SeatsPurchased, account: "a", ms: ms("2026-03-31T23:59:59.999Z"), seats: 0},
		{id: "l", typ: event.Login, account: "b", user: "u", ms: ms("2026-12-31T23:59:59.999Z")},
	}
	write(t, st, factsOf(evs, nil))
	checkViews(t, st, evs, 1)
	got, err := st.ReadRollups(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var util []float64
	for _, r := range got {
		if r.AccountID == "a" {
			util = append(util, r.SeatUtilization)
		}
	}
	want := []float64{0.5, 1, 1.5, 1.5, 0, 0, 0, 0} // 2025-Q1..2026-Q4
	if len(util) != len(want) {
		t.Fatalf("utilization %v, want %v", util, want)
	}
	for i := range want {
		if util[i] != want[i] {
			t.Fatalf("utilization %v, want %v", util, want)
		}
	}
}

// TestViewsFiscalApril: labels and boundaries of a fiscal year starting in
// April; March 31 23:59:59.999 UTC and April 1 00:00 fall in different
// fiscal years.
func TestViewsFiscalApril(t *testing.T) {
	st := migrated(t, 4)
	evs := []ev{
		{id: "1", typ: event.Login, account: "a", user: "u", ms: ms("2026-03-31T23:59:59.999Z")},
		{id: "2", typ: event.Login, account: "a", user: "u", ms: ms("2026-04-01T08:59:59+09:00")}, // still March UTC
		{id: "3", typ: event.Login, account: "a", user: "u", ms: ms("2026-04-01T00:00:00Z")},
		{id: "4", typ: event.FeatureUsed, account: "a", user: "u", feature: "f", ms: ms("2027-01-01T00:00:00Z")},
	}
	write(t, st, factsOf(evs, nil))
	checkViews(t, st, evs, 4)
	got, err := st.ReadRollups(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var labels []string
	for _, r := range got {
		labels = append(labels, r.QuarterStart.Format(time.DateOnly)+"/"+r.QuarterEnd.Format(time.DateOnly)+" "+r.Quarter)
	}
	want := []string{"2026-01-01/2026-04-01 FY2026-Q4", "2026-04-01/2026-07-01 FY2027-Q1", "2026-07-01/2026-10-01 FY2027-Q2",
		"2026-10-01/2027-01-01 FY2027-Q3", "2027-01-01/2027-04-01 FY2027-Q4"}
	if d := diff(labels, want); d != "" {
		t.Error(d)
	}
	if got[0].Logins != 2 || got[1].Logins != 1 {
		t.Errorf("logins %d, %d; want 2, 1", got[0].Logins, got[1].Logins)
	}
}

// TestViewsOddIDsRoundTrip: account, user and feature IDs with quotes,
// backslashes, control characters and non-ASCII come back byte for byte.
func TestViewsOddIDsRoundTrip(t *testing.T) {
	st := migrated(t, 1)
	ids := []string{`it's`, `"dq"`, `back\slash`, "tab\tnew\nline", "Ünïcødé-账户-🚀", "nul\x00byte", "'; DROP TABLE x; --", "?", "@p"}
	var evs []ev
	for i, id := range ids {
		evs = append(evs, ev{id: id, typ: event.FeatureUsed, account: id, user: id, feature: id, ms: ms("2026-06-01T00:00:00Z"), offset: int64(i)})
	}
	write(t, st, factsOf(evs, nil))
	checkViews(t, st, evs, 1)
	got, err := st.ReadFeatures(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, f := range got {
		if f.AccountID != f.Feature {
			t.Errorf("account %q feature %q", f.AccountID, f.Feature)
		}
		seen[f.AccountID] = true
	}
	for _, id := range ids {
		if !seen[id] {
			t.Errorf("account %q lost", id)
		}
	}
}

// TestViewsOneRowPerKey: many unmerged parts of repeated facts; a plain
// SELECT still gives exactly one row per key.
func TestViewsOneRowPerKey(t *testing.T) {
	st := migrated(t, 1)
	ctx := context.Background()
	if err := st.Conn().Exec(ctx, "SYSTEM STOP MERGES"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Conn().Exec(context.Background(), "SYSTEM START MERGES") })
	rng := rand.New(rand.NewPCG(3, 4))
	evs := randomEvents(rng, 600)
	for range 5 {
		write(t, st, factsOf(evs, nil))
	}
	db := st.Database()
	f := func(q string) {
		t.Helper()
		var rows, keys uint64
		if err := st.Conn().QueryRow(ctx, q).Scan(&rows, &keys); err != nil {
			t.Fatal(err)
		}
		if rows == 0 || rows != keys {
			t.Errorf("%s: %d rows, %d keys", q, rows, keys)
		}
	}
	f("SELECT count(), uniqExact(account_id, quarter_start) FROM " + db + ".account_quarter_rollups")
	f("SELECT count(), uniqExact(account_id, quarter_start, feature) FROM " + db + ".account_quarter_features")
	checkViews(t, st, evs, 1)
}

// TestViewsRowsFollowAccountMonths: rows exist only from an account's first
// account month through the global last quarter, even if other facts say
// more (a Write that failed after fact_account_months is the only way to
// get there, and it writes account months first, so this guards the
// invariant rather than a normal state).
func TestViewsRowsFollowAccountMonths(t *testing.T) {
	st := migrated(t, 1)
	m := int32(2026*12 + 4) // May 2026: Q2
	write(t, st, &schema.Facts{
		AccountMonths: []schema.AccountMonth{{Account: "a", Month: m}},
		UserActivity: []schema.UserActivity{
			{Account: "a", User: "u", Month: m - 3, LastMs: ms("2026-02-01T00:00:00Z")}, // before a's first month
			{Account: "ghost", User: "u", Month: m, LastMs: ms("2026-05-01T00:00:00Z")}, // no account month
		},
		SeatPurchases: []schema.SeatPurchase{{Account: "a", Month: m - 3, OccurredMs: ms("2026-02-01T00:00:00Z"), EventID: "p", Seats: 5}},
	})
	got, err := st.ReadRollups(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`"a" 2026-04-01 2026-07-01 2026-Q2 purchased=5 assigned=0 util=0 active=0 activeAssigned=0 activation=0 logins=0 featureEvents=0 features=0 last=1970-01-01 00:00:00 UTC`}
	if d := diff(fmtRollups(got), want); d != "" {
		t.Error(d)
	}
}

// TestViewsColumnSubsets: a query that reads only some columns of a view
// gets the same numbers as a full read. (ClickHouse 18.16 prunes unused
// UNION ALL columns by name; a branch with unnamed columns once shifted
// values between columns.)
func TestViewsColumnSubsets(t *testing.T) {
	st := migrated(t, 1)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(5, 6))
	evs := randomEvents(rng, 500)
	write(t, st, factsOf(evs, nil))
	rollups, err := st.ReadRollups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	features, err := st.ReadFeatures(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sums := map[string]float64{"count()": float64(len(rollups))}
	for _, r := range rollups {
		sums["seats_purchased"] += float64(r.SeatsPurchased)
		sums["seats_assigned"] += float64(r.SeatsAssigned)
		sums["seat_utilization"] += r.SeatUtilization
		sums["active_users"] += float64(r.ActiveUsers)
		sums["active_assigned_users"] += float64(r.ActiveAssignedUsers)
		sums["activation_rate"] += r.ActivationRate
		sums["logins"] += float64(r.Logins)
		sums["feature_events"] += float64(r.FeatureEvents)
		sums["features_used"] += float64(r.FeaturesUsed)
		sums["toUInt32(last_activity_at)"] += float64(r.LastActivityAt.Unix())
		sums["toUInt16(quarter_start)"] += float64(r.QuarterStart.Unix() / 86400)
	}
	fsums := map[string]float64{"count()": float64(len(features))}
	for _, f := range features {
		fsums["active_users"] += float64(f.ActiveUsers)
		fsums["events"] += float64(f.Events)
		fsums["toUInt16(quarter_start)"] += float64(f.QuarterStart.Unix() / 86400)
	}
	check := func(view string, want map[string]float64) {
		t.Helper()
		var cols []string
		for c := range want {
			cols = append(cols, c)
		}
		sort.Strings(cols)
		sum := func(c string) string {
			if c == "count()" {
				return "toFloat64(count())"
			}
			return "sum(toFloat64(" + c + "))"
		}
		// every column alone, then random subsets
		subsets := make([][]string, 0, 2*len(cols))
		for _, c := range cols {
			subsets = append(subsets, []string{c})
		}
		for range len(cols) {
			perm := rng.Perm(len(cols))[:2+rng.IntN(len(cols)-1)]
			var sub []string
			for _, i := range perm {
				sub = append(sub, cols[i])
			}
			subsets = append(subsets, sub)
		}
		for _, sub := range subsets {
			exprs := make([]string, len(sub))
			got := make([]float64, len(sub))
			dest := make([]any, len(sub))
			for i, c := range sub {
				exprs[i], dest[i] = sum(c), &got[i]
			}
			q := "SELECT " + strings.Join(exprs, ", ") + " FROM " + st.Database() + "." + view
			if err := st.Conn().QueryRow(ctx, q).Scan(dest...); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
			for i, c := range sub {
				if math.Abs(got[i]-want[c]) > 1e-6 {
					t.Errorf("%s: %s = %v; a full read gives %v", q, c, got[i], want[c])
				}
			}
		}
	}
	check("account_quarter_rollups", sums)
	check("account_quarter_features", fsums)
}

// TestViewsAccountFilterPushdown: on 18.16 a per-account query is fast only
// with enable_optimize_predicate_expression = 1 (the README tells readers
// so; current releases push predicates down by default). It must give the
// same rows as filtering a full read.
func TestViewsAccountFilterPushdown(t *testing.T) {
	st := migrated(t, 4)
	rng := rand.New(rand.NewPCG(9, 10))
	evs := randomEvents(rng, 500)
	write(t, st, factsOf(evs, nil))
	wantR, wantF := expect(evs, 4)
	ctx := clickhouse.Context(context.Background(), clickhouse.WithSettings(clickhouse.Settings{"enable_optimize_predicate_expression": 1}))
	for _, account := range []string{"acme", `o'brien "quoted" \ back`} {
		rows, err := st.Conn().Query(ctx, "SELECT account_id, quarter_start, seats_purchased, seats_assigned, active_users, active_assigned_users, logins, feature_events, features_used, last_activity_at FROM "+
			st.Database()+".account_quarter_rollups WHERE account_id = ? ORDER BY quarter_start", account)
		if err != nil {
			t.Fatal(err)
		}
		var got, want []string
		for rows.Next() {
			var r schema.Rollup
			if err := rows.Scan(&r.AccountID, &r.QuarterStart, &r.SeatsPurchased, &r.SeatsAssigned, &r.ActiveUsers, &r.ActiveAssignedUsers, &r.Logins, &r.FeatureEvents, &r.FeaturesUsed, &r.LastActivityAt); err != nil {
				t.Fatal(err)
			}
			got = append(got, fmt.Sprint(r.AccountID, r.QuarterStart.Format(time.DateOnly), r.SeatsPurchased, r.SeatsAssigned, r.ActiveUsers, r.ActiveAssignedUsers, r.Logins, r.FeatureEvents, r.FeaturesUsed, r.LastActivityAt.Unix()))
		}
		rows.Close()
		for _, r := range wantR {
			if r.AccountID == account {
				want = append(want, fmt.Sprint(r.AccountID, r.QuarterStart.Format(time.DateOnly), r.SeatsPurchased, r.SeatsAssigned, r.ActiveUsers, r.ActiveAssignedUsers, r.Logins, r.FeatureEvents, r.FeaturesUsed, r.LastActivityAt.Unix()))
			}
		}
		if len(want) == 0 {
			t.Fatalf("fixture has no rows for %q", account)
		}
		if d := diff(got, want); d != "" {
			t.Errorf("rollups of %q with predicate pushdown:\n%s", account, d)
		}
		var n, events uint64
		if err := st.Conn().QueryRow(ctx, "SELECT count(), sum(events) FROM "+st.Database()+".account_quarter_features WHERE account_id = ?", account).Scan(&n, &events); err != nil {
			t.Fatal(err)
		}
		var wantN, wantEvents uint64
		for _, f := range wantF {
			if f.AccountID == account {
				wantN++
				wantEvents += f.Events
			}
		}
		if n != wantN || events != wantEvents {
			t.Errorf("features of %q with predicate pushdown: %d rows, %d events; want %d, %d", account, n, events, wantN, wantEvents)
		}
	}
}
