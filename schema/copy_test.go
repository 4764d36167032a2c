package schema_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/store"
)

// copyDB returns a migrated database whose readers are tables (the test
// server is 18.16), with its Store.
func copyDB(t *testing.T) (*store.Store, string) {
	t.Helper()
	st := migrated(t, 1)
	sv, err := st.Conn().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if !schema.ReaderTables(sv.Version.Major, false) {
		t.Fatalf("server %s: the copy tests need a server before 20.1 (readers are tables there)", sv.Version)
	}
	return st, st.Database()
}

// putServed inserts served rows of quarter q for accounts a-0 … a-(n-1),
// features features each, with logins and feature events = value and
// version ver (updated_at = ver).
func putServed(t *testing.T, conn driver.Conn, db, q string, n, features int, value, ver uint32) {
	t.Helper()
	ctx := context.Background()
	for _, s := range []string{
		fmt.Sprintf("INSERT INTO %s.served_rollups SELECT 1, concat('a-', toString(number)), toDate('%s'), addMonths(toDate('%s'), 3), 'Q', 5, 4, 0.8, 3, 2, 0.5, %d, %d, %d, toDateTime(0, 'UTC'), toDateTime(%d, 'UTC'), %d FROM numbers(%d)",
			db, q, q, value, value, features, ver, uint64(ver)<<32, n),
		fmt.Sprintf("INSERT INTO %s.served_feature_sets SELECT 1, concat('a-', toString(number)), toDate('%s'), addMonths(toDate('%s'), 3), 'Q', arrayMap(i -> concat('f-', toString(i)), range(%d)), arrayMap(i -> toUInt64(1), range(%d)), arrayMap(i -> toUInt64(%d), range(%d)), toDateTime(%d, 'UTC'), %d FROM numbers(%d)",
			db, q, q, features, features, value, features, ver, uint64(ver)<<32, n),
	} {
		if err := conn.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
}

// readerRow reads logins and updated_at of one reader row (0, 0: none),
// and how many rows the key has.
func readerRow(t *testing.T, conn driver.Conn, db, account, q string) (logins uint64, updated uint32, n uint64) {
	t.Helper()
	err := conn.QueryRow(context.Background(), fmt.Sprintf("SELECT max(logins), toUInt32(max(updated_at)), count() FROM %s.account_quarter_rollups WHERE account_id = '%s' AND quarter_start = '%s'", db, account, q)).Scan(&logins, &updated, &n)
	if err != nil {
		t.Fatal(err)
	}
	return logins, updated, n
}

func one(t *testing.T, conn driver.Conn, q string) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// TestCopyReadsUseTheIndex: a reader table holds exactly the served rows
// of the greatest version, one part per quarter, and a read of one
// account reads only that account's granules (max_rows_to_read).
func TestCopyReadsUseTheIndex(t *testing.T) {
	st, db := copyDB(t)
	conn := st.Conn()
	ctx := context.Background()
	putServed(t, conn, db, "2026-01-01", 3000, 60, 1, 100)
	putServed(t, conn, db, "2026-01-01", 3000, 60, 2, 200) // a newer version of every row
	putServed(t, conn, db, "2026-04-01", 3000, 60, 7, 300)
	if err := schema.SyncReaders(ctx, conn, schema.Config{Database: db, FiscalStartMonth: 1}); err != nil {
		t.Fatal(err)
	}
	if n := one(t, conn, "SELECT count() FROM "+db+".account_quarter_features"); n != 2*3000*60 {
		t.Errorf("feature rows = %d, want %d", n, 2*3000*60)
	}
	if n := one(t, conn, "SELECT count() FROM "+db+".account_quarter_features WHERE quarter_start = '2026-01-01' AND events != 2"); n != 0 {
		t.Errorf("%d feature rows of an older version", n)
	}
	for _, table := range []string{"account_quarter_rollups", "account_quarter_features"} {
		if n := one(t, conn, "SELECT count() FROM system.parts WHERE database = '"+db+"' AND table = '"+table+"' AND active"); n != 2 {
			t.Errorf("%s: %d parts, want one per quarter (2)", table, n)
		}
	}
	limited := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"max_rows_to_read": 4 * 8192}))
	var n uint64
	if err := conn.QueryRow(limited, "SELECT count() FROM "+db+".account_quarter_features WHERE account_id = 'a-1234'").Scan(&n); err != nil {
		t.Fatalf("one account's features within 4 granules per quarter: %v", err)
	}
	if n != 120 {
		t.Errorf("one account's features = %d, want 120", n)
	}
	// The limit means something: a filter off the key reads everything.
	err := conn.QueryRow(limited, "SELECT count() FROM "+db+".account_quarter_features WHERE feature = 'f-7'").Scan(&n)
	if err == nil {
		t.Error("a filter off the primary key stayed within max_rows_to_read; the check above proves nothing")
	}
	if got, want := one(t, conn, "SELECT count() FROM "+db+".account_quarter_rollups"), uint64(6000); got != want {
		t.Errorf("rollup rows = %d, want %d", got, want)
	}
}

// TestCopyFencing: a holder whose lease was taken cannot install the
// snapshot it had in hand (its stage tables are gone), so the reader rows
// never go back; the new holder's installs go on.
func TestCopyFencing(t *testing.T) {
	st, db := copyDB(t)
	conn := st.Conn()
	ctx := context.Background()
	cfg := schema.Config{Database: db, FiscalStartMonth: 1}
	q := "2026-01-01"
	putServed(t, conn, db, q, 10, 2, 1, 100)
	a := schema.NewCopy(conn, cfg)
	if err := a.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// A takes a snapshot of version 1 … (value 1)
	before, installs := schema.CopyRefreshSteps(a, q, 150)
	for _, s := range before {
		if err := conn.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// … B takes the lease and installs version 2 …
	putServed(t, conn, db, q, 10, 2, 2, 200)
	b := schema.NewCopy(conn, cfg)
	if err := b.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx, q); err != nil {
		t.Fatal(err)
	}
	if logins, _, _ := readerRow(t, conn, db, "a-3", q); logins != 2 {
		t.Fatalf("after B's install logins = %d, want 2", logins)
	}
	// … and A's late install fails: the reader rows do not go back.
	for _, s := range installs {
		if err := conn.Exec(ctx, s); err == nil {
			t.Errorf("a fenced holder's install succeeded: %s", s)
		}
	}
	if logins, _, n := readerRow(t, conn, db, "a-3", q); logins != 2 || n != 1 {
		t.Errorf("after A's late install: logins = %d in %d rows, want 2 in 1", logins, n)
	}
	if err := a.Refresh(ctx, q); !errors.Is(err, schema.ErrLeaseLost) {
		t.Errorf("A's next refresh: %v, want ErrLeaseLost", err)
	}
	if a.Holds() {
		t.Error("A still believes it holds the lease")
	}
	putServed(t, conn, db, q, 10, 2, 3, 300)
	if err := b.Refresh(ctx, q); err != nil {
		t.Fatal(err)
	}
	if logins, _, _ := readerRow(t, conn, db, "a-3", q); logins != 3 {
		t.Errorf("B's next install: logins = %d, want 3", logins)
	}
	// ShouldTake: B beats, so nobody else takes over.
	if err := b.Beat(ctx); err != nil {
		t.Fatal(err)
	}
	if take, err := schema.NewCopy(conn, cfg).ShouldTake(ctx); err != nil || take {
		t.Errorf("ShouldTake with a live holder = %v, %v; want false", take, err)
	}
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if take, err := schema.NewCopy(conn, cfg).ShouldTake(ctx); err != nil || !take {
		t.Errorf("ShouldTake with no holder = %v, %v; want true", take, err)
	}
}

// TestCopyUpdatedAt: a copied row keeps the served updated_at while its
// values stay; a row whose values the readers did not hold yet gets at
// least the snapshot second - 20 s, so the contract's poll (≥ U − 60 s)
// finds it whenever it lands.
func TestCopyUpdatedAt(t *testing.T) {
	st, db := copyDB(t)
	conn := st.Conn()
	ctx := context.Background()
	cfg := schema.Config{Database: db, FiscalStartMonth: 1}
	q := "2026-01-01"
	putServed(t, conn, db, q, 5, 1, 1, 1000)
	c := schema.NewCopy(conn, cfg)
	if err := c.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Release(ctx)
	now := uint32(one(t, conn, "SELECT toUInt64(now())"))
	if err := c.Refresh(ctx, q); err != nil {
		t.Fatal(err)
	}
	_, u1, _ := readerRow(t, conn, db, "a-1", q)
	if u1 < now-20 {
		t.Errorf("a new row's updated_at %d < snapshot second %d - 20", u1, now)
	}
	// The same values recomputed later (served updated_at 2000, older
	// than the bump): no new bump, and not back to the served value.
	putServed(t, conn, db, q, 5, 1, 1, 2000)
	if err := c.Refresh(ctx, q); err != nil {
		t.Fatal(err)
	}
	if _, u2, _ := readerRow(t, conn, db, "a-1", q); u2 != u1 {
		t.Errorf("an unchanged row's updated_at = %d, want it kept at %d", u2, u1)
	}
	// New values with an old served updated_at (a recompute whose rows
	// landed long after its S): bumped to the snapshot.
	putServed(t, conn, db, q, 5, 1, 9, 3000)
	now = uint32(one(t, conn, "SELECT toUInt64(now())"))
	if err := c.Refresh(ctx, q); err != nil {
		t.Fatal(err)
	}
	logins, u3, _ := readerRow(t, conn, db, "a-1", q)
	if logins != 9 || u3 < now-20 {
		t.Errorf("a changed row: logins %d updated_at %d, want 9 and ≥ %d", logins, u3, now-20)
	}
	// Refreshed again with the same values: its updated_at does not go
	// back to the older served one (a poller between the two would miss
	// nothing, but one that read before the first must still find it).
	if err := c.Refresh(ctx, q); err != nil {
		t.Fatal(err)
	}
	if _, u4, _ := readerRow(t, conn, db, "a-1", q); u4 < u3 {
		t.Errorf("updated_at went back from %d to %d", u3, u4)
	}
	// A process of another calendar neither installs nor takes the lease.
	other := schema.NewCopy(conn, schema.Config{Database: db, FiscalStartMonth: 4})
	if take, err := other.ShouldTake(ctx); take || !errors.Is(err, schema.ErrCalendar) {
		t.Errorf("ShouldTake of another calendar = %v, %v; want false, ErrCalendar", take, err)
	}
}

// TestCopyFindsWhatNoMarkNamed: served rows whose copy_dirty row was lost
// (a crash between the recompute and it) are not due, but the comparison
// finds them; a reader partition of no served quarter is dropped.
func TestCopyFindsWhatNoMarkNamed(t *testing.T) {
	st, db := copyDB(t)
	conn := st.Conn()
	ctx := context.Background()
	cfg := schema.Config{Database: db, FiscalStartMonth: 1}
	putServed(t, conn, db, "2026-01-01", 10, 2, 1, 100)
	c := schema.NewCopy(conn, cfg)
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Release(ctx)
	putServed(t, conn, db, "2026-01-01", 10, 2, 5, 200) // no copy_dirty row
	if err := conn.Exec(ctx, "INSERT INTO "+db+".account_quarter_rollups (account_id, quarter_start) SELECT 'stray', toDate('2025-01-01')"); err != nil {
		t.Fatal(err)
	}
	due, err := c.Due(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != 0 {
		t.Errorf("due = %v, want none (no mark names the change)", due)
	}
	differ, err := c.Differing(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(differ, " ") != "2025-01-01 2026-01-01" {
		t.Errorf("differing = %v, want [2025-01-01 2026-01-01]", differ)
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if logins, _, _ := readerRow(t, conn, db, "a-3", "2026-01-01"); logins != 5 {
		t.Errorf("logins = %d, want 5", logins)
	}
	if n := one(t, conn, "SELECT count() FROM "+db+".account_quarter_rollups WHERE account_id = 'stray'"); n != 0 {
		t.Errorf("the stray row is still there")
	}
	if differ, err := c.Differing(ctx); err != nil || len(differ) != 0 {
		t.Errorf("after Sync: differing %v, %v", differ, err)
	}
}

// copyQ is the quarter installedCopy installs.
const copyQ = "2026-01-01"

// installedCopy is a Copy holding the lease over a fresh database whose
// quarter copyQ (20 accounts' served rows, 2 features each) it installed.
func installedCopy(t *testing.T) (driver.Conn, string, *schema.Copy) {
	t.Helper()
	st, db := copyDB(t)
	conn := st.Conn()
	putServed(t, conn, db, copyQ, 20, 2, 1, 100)
	c := schema.NewCopy(conn, schema.Config{Database: db, FiscalStartMonth: 1})
	if err := c.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Release(context.Background()) })
	return conn, db, c
}

// TestCopyRefusesShortStage: a stage holding fewer keys than the reader
// partition is not installed; the readers keep what they had. A stage
// short of keys is also short of rows, so a refusal always comes from the
// key count (the row count only lets a full stage skip it: every install
// in these tests). With the extra key once the partition holds 21 rows
// and 21 keys; with it twice 22 rows and 21 keys, and the refusal must
// name 21 keys: the partition's keys are compared, not its rows.
func TestCopyRefusesShortStage(t *testing.T) {
	for _, copies := range []int{1, 2} {
		t.Run(fmt.Sprintf("key %d times", copies), func(t *testing.T) {
			conn, db, c := installedCopy(t)
			ctx, q := context.Background(), copyQ
			// A key the served rows lack (they never lose one; a stage
			// missing keys is what the check stands between).
			for range copies {
				if err := conn.Exec(ctx, "INSERT INTO "+db+".account_quarter_rollups (account_id, quarter_start) SELECT 'ghost', toDate('"+q+"')"); err != nil {
					t.Fatal(err)
				}
			}
			err := c.Refresh(ctx, q)
			if err == nil || !strings.Contains(err.Error(), "not installed") {
				t.Fatalf("Refresh = %v, want a refusal", err)
			}
			if !strings.Contains(err.Error(), "the table 21 keys") {
				t.Errorf("Refresh = %v, want it to count 21 keys", err)
			}
			if n := one(t, conn, "SELECT count() FROM "+db+".account_quarter_rollups WHERE account_id = 'ghost'"); n != uint64(copies) {
				t.Errorf("ghost has %d rows, want %d (nothing replaced)", n, copies)
			}
		})
	}
}

// TestCopyCalendar: a process configured for another fiscal calendar than
// the reader tables' does not install.
func TestCopyCalendar(t *testing.T) {
	st, db := copyDB(t)
	conn := st.Conn()
	ctx := context.Background()
	putServed(t, conn, db, "2026-01-01", 3, 1, 1, 100)
	c := schema.NewCopy(conn, schema.Config{Database: db, FiscalStartMonth: 4})
	if err := c.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Release(ctx)
	if err := c.Refresh(ctx, "2026-01-01"); !errors.Is(err, schema.ErrCalendar) {
		t.Errorf("refresh with fiscal start 4 on tables of 1: %v, want ErrCalendar", err)
	}
}

// TestCopyHealsReplacedPartsAfterRestart: 18.16 deletes a replaced part's
// files at its next cleanup, and a restart before that loads the part
// again beside its replacement (every key twice). DETACH and ATTACH of the
// table load its parts from disk as a restart does; the next round finds
// the partitions of more than one part and replaces them whole.
func TestCopyHealsReplacedPartsAfterRestart(t *testing.T) {
	st, db := copyDB(t)
	conn := st.Conn()
	ctx := context.Background()
	q := "2026-01-01"
	putServed(t, conn, db, q, 50, 3, 1, 100)
	cfg := schema.Config{Database: db, FiscalStartMonth: 1}
	if err := schema.SyncReaders(ctx, conn, cfg); err != nil {
		t.Fatal(err)
	}
	putServed(t, conn, db, q, 50, 3, 2, 200)
	if err := schema.SyncReaders(ctx, conn, cfg); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"account_quarter_rollups", "account_quarter_features"} {
		for _, s := range []string{"DETACH TABLE " + db + "." + table, "ATTACH TABLE " + db + "." + table} {
			if err := conn.Exec(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
	}
	c := schema.NewCopy(conn, cfg)
	due, err := c.Due(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := one(t, conn, "SELECT count() FROM "+db+".account_quarter_rollups"); n != 50 {
		// The replaced part may be gone already (a cleanup ran): then
		// nothing is due either.
		if strings.Join(due, " ") != q {
			t.Errorf("%d rollup rows after a reload, and due = %v; want [%s]", n, due, q)
		}
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Release(ctx)
	if n := one(t, conn, "SELECT count() FROM "+db+".account_quarter_rollups"); n != 50 {
		t.Errorf("rollup rows after the next refresh: %d, want 50", n)
	}
	if n := one(t, conn, "SELECT count() FROM "+db+".account_quarter_features"); n != 150 {
		t.Errorf("feature rows after the next refresh: %d, want 150", n)
	}
}

// TestCopyHealsExtraParts: a reader partition of more than one part (what
// a crash between a REPLACE and the deletion of the replaced part leaves)
// is due, and the next refresh leaves one part, one row per key.
func TestCopyHealsExtraParts(t *testing.T) {
	conn, db, c := installedCopy(t)
	ctx, q := context.Background(), copyQ
	if err := conn.Exec(ctx, "INSERT INTO "+db+".account_quarter_rollups SELECT * FROM "+db+".account_quarter_rollups WHERE account_id = 'a-1'"); err != nil {
		t.Fatal(err)
	}
	due, err := c.Due(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(due, " ") != q {
		t.Errorf("due = %v, want [%s]", due, q)
	}
	for _, q := range due {
		if err := c.Refresh(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, n := readerRow(t, conn, db, "a-1", q); n != 1 {
		t.Errorf("a-1 has %d rows, want 1", n)
	}
	if n := one(t, conn, "SELECT count() FROM system.parts WHERE database = '"+db+"' AND table = 'account_quarter_rollups' AND active"); n != 1 {
		t.Errorf("%d parts, want 1", n)
	}
}

// TestCopyInterruptedAcquireLeavesNoStage: an Acquire cut short (a stop
// cancels its context) drops the stage tables it made; left behind with
// its heartbeat they made every process, itself included, wait 30 s for
// a holder that did not exist (CI: empty readers after a live consumer
// stopped during its first round).
func TestCopyInterruptedAcquireLeavesNoStage(t *testing.T) {
	st, db := copyDB(t)
	conn := st.Conn()
	cfg := schema.Config{Database: db, FiscalStartMonth: 1}
	failed := 0
	for d := time.Millisecond; d < 120*time.Millisecond; d += 3 * time.Millisecond {
		c := schema.NewCopy(conn, cfg)
		ctx, cancel := context.WithTimeout(context.Background(), d)
		err := c.Acquire(ctx)
		cancel()
		if err == nil {
			if err := c.Release(context.Background()); err != nil {
				t.Fatal(err)
			}
			continue
		}
		failed++
		if c.Holds() {
			t.Errorf("after a failed Acquire (%v) the Copy believes it holds the lease", err)
		}
		if n := one(t, conn, "SELECT count() FROM system.tables WHERE database = '"+db+"' AND startsWith(name, 'copy_stage_')"); n != 0 {
			t.Fatalf("an Acquire cut short after %v left %d stage tables (%v)", d, n, err)
		}
	}
	if failed == 0 {
		t.Fatal("no Acquire was cut short: the test proved nothing")
	}
	take, err := schema.NewCopy(conn, cfg).ShouldTake(context.Background())
	if err != nil || !take {
		t.Errorf("ShouldTake after the interrupted attempts = %v, %v; want true", take, err)
	}
}
