package schema_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

// TestServedRolloverRecomputesOnlyTheNewQuarter: when a fact of one
// account moves the last quarter, the sweep finds every other account
// stale from the new quarter only (their earlier rows are current), and
// the account with the new fact from its own first stale quarter; one
// sweep later the views equal the contract's rules.
func TestServedRolloverRecomputesOnlyTheNewQuarter(t *testing.T) {
	ctx := context.Background()
	st := migrated(t, 1)
	sv, err := schema.NewServed(st.Conn(), schema.Config{Database: st.Database(), FiscalStartMonth: 1})
	if err != nil {
		t.Fatal(err)
	}
	evs := []ev{
		{id: "p1", typ: event.SeatsPurchased, account: "a", ms: ms("2026-01-10T00:00:00Z"), seats: 5},
		{id: "l1", typ: event.Login, account: "a", user: "u1", ms: ms("2026-02-10T00:00:00Z"), offset: 1},
		{id: "l2", typ: event.Login, account: "b", user: "u2", ms: ms("2026-04-10T00:00:00Z"), offset: 2},
	}
	write(t, st, factsOf(evs, nil)) // writes, then sweeps
	if stale, err := sv.Stale(ctx); err != nil || len(stale) != 0 {
		t.Fatalf("stale after a sweep: %v, %v", stale, err)
	}
	evs = append(evs, ev{id: "l3", typ: event.Login, account: "c", user: "u3", ms: ms("2026-08-01T00:00:00Z"), offset: 3})
	if err := st.Write(ctx, factsOf(evs[3:], nil)); err != nil {
		t.Fatal(err)
	}
	stale, err := sv.Stale(ctx)
	if err != nil {
		t.Fatal(err)
	}
	q3 := int32(2026*12 + 6)
	want := map[string]int32{"a": q3, "b": q3, "c": q3}
	if fmt.Sprint(stale) != fmt.Sprint(want) {
		t.Fatalf("stale after the rollover: %v, want %v (every account from the new quarter only)", stale, want)
	}
	serve(t, st)
	checkViews(t, st, evs, 1)
}

// TestServedLongAccountIDs: a chunk of 1000 accounts with 200-byte IDs
// repeats its list in every fact scan of the recompute (far past the
// default max_query_size of 256 KiB): the recompute and verify still run.
func TestServedLongAccountIDs(t *testing.T) {
	ctx := context.Background()
	st := migrated(t, 1)
	var evs []ev
	for i := range 1000 {
		a := fmt.Sprintf("%0200d", i)
		evs = append(evs, ev{id: fmt.Sprint("e", i), typ: event.Login, account: a, user: "u", ms: ms("2026-02-10T00:00:00Z"), offset: int64(i)})
	}
	write(t, st, factsOf(evs, nil))
	checkViews(t, st, evs, 1)
	sv, err := schema.NewServed(st.Conn(), schema.Config{Database: st.Database(), FiscalStartMonth: 1})
	if err != nil {
		t.Fatal(err)
	}
	var diffs []string
	n, err := sv.Verify(ctx, nil, func(d schema.Difference) { diffs = append(diffs, d.Key) })
	if err != nil || n != 1000 || len(diffs) != 0 {
		t.Fatalf("verify: %d accounts, %v, differences %s", n, err, strings.Join(diffs, "; "))
	}
}

// TestServedFiscalSwitchBack: fiscal start 1, then 4 (facts written while
// 4 is in use are served for 4 only), then 1 again: migrate brings the rows
// of calendar 1 up to date before its views switch back, so a reader sees
// every fact at once, with no serve loop involved.
func TestServedFiscalSwitchBack(t *testing.T) {
	ctx := context.Background()
	st, db := open(t)
	migrate := func(fs int) {
		t.Helper()
		if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: db, FiscalStartMonth: fs}, nil); err != nil {
			t.Fatal(err)
		}
	}
	migrate(1)
	evs := seatsAndActivity()
	write(t, st, factsOf(evs, nil))
	migrate(4)
	more := []ev{
		{id: "n1", typ: event.Login, account: "acme", user: "u9", ms: ms("2026-11-02T00:00:00Z"), offset: 100},
		{id: "n2", typ: event.Login, account: "newco", user: "u1", ms: ms("2026-12-01T00:00:00Z"), offset: 101},
	}
	if err := st.Write(ctx, factsOf(more, nil)); err != nil {
		t.Fatal(err)
	}
	sv4, err := schema.NewServed(st.Conn(), schema.Config{Database: db, FiscalStartMonth: 4})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sv4.Sweep(ctx); err != nil { // the running pipeline of calendar 4
		t.Fatal(err)
	}
	migrate(1)
	all := append(append([]ev{}, evs...), more...)
	wantR, wantF := expect(all, 1)
	gotR, err := st.ReadRollups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := diff(fmtRollups(gotR), fmtRollups(wantR)); d != "" {
		t.Errorf("rollups right after switching back to fiscal start 1:\n%s", d)
	}
	gotF, err := st.ReadFeatures(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := diff(fmtFeatures(gotF), fmtFeatures(wantF)); d != "" {
		t.Errorf("features right after switching back to fiscal start 1:\n%s", d)
	}
}
