package schema_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/chtest"
	"github.com/usagepipe/usagepipe/schema/store"
)

// open returns a Store on a fresh database (not yet migrated).
func open(t *testing.T) (*store.Store, string) {
	t.Helper()
	db := chtest.NewDatabase(t)
	st, err := store.Open(context.Background(), store.Config{Addr: []string{chtest.Addr()}, Database: db}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, db
}

// migrated returns a Store on a fresh, migrated database.
func migrated(t *testing.T, fiscalStart int) *store.Store {
	t.Helper()
	st, db := open(t)
	if err := schema.Migrate(context.Background(), st.Conn(), schema.Config{Database: db, FiscalStartMonth: fiscalStart}, nil); err != nil {
		t.Fatal(err)
	}
	return st
}

// snapshot describes every object of db as the server stores it, and the
// number of bookkeeping rows.
func snapshot(t *testing.T, conn driver.Conn, db string) string {
	t.Helper()
	ctx := context.Background()
	rows, err := conn.Query(ctx, "SELECT name, engine, create_table_query, toString(metadata_modification_time) FROM system.tables WHERE database = ? ORDER BY name", db)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var name, engine, create, mtime string
		if err := rows.Scan(&name, &engine, &create, &mtime); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %s %s\n  %s\n", name, engine, mtime, create)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".schema_migrations").Scan(&n); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "schema_migrations rows: %d\n", n)
	return b.String()
}

func tableNames(t *testing.T, conn driver.Conn, db string) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), "SELECT name FROM system.tables WHERE database = ? ORDER BY name", db)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	return out
}

// allObjects on 18.16, whose readers are tables kept with copy_beats,
// copy_dirty and copy_installs.
var allObjects = "account_quarter_features account_quarter_rollups copy_beats copy_dirty copy_installs dedup_ids fact_account_months fact_event_counts fact_feature_users fact_seat_events fact_seat_purchases fact_user_activity ingest_progress rollup_marks schema_migrations served_feature_sets served_rollups topic_incarnations"

func TestMigrateCreatesDatabaseAndObjects(t *testing.T) {
	st, _ := open(t)
	ctx := context.Background()
	db := "usage_" + strings.TrimPrefix(chtest.NewDatabase(t), "t_") // a database that does not exist yet
	t.Cleanup(func() { _ = st.Conn().Exec(context.Background(), "DROP DATABASE IF EXISTS "+db) })
	if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: db}, nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tableNames(t, st.Conn(), db), " "); got != allObjects {
		t.Errorf("objects = %s\nwant      %s", got, allObjects)
	}
}

func TestMigrateTwiceChangesNothing(t *testing.T) {
	st, db := open(t)
	ctx := context.Background()
	cfg := schema.Config{Database: db, FiscalStartMonth: 4}
	if err := schema.Migrate(ctx, st.Conn(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, st.Conn(), db)
	time.Sleep(1100 * time.Millisecond) // metadata_modification_time has seconds
	if err := schema.Migrate(ctx, st.Conn(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, st.Conn(), db); after != before {
		t.Errorf("second migrate changed the database:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestMigrateUpgradesOlderVersion: a database an older usagepipe left (the
// fact tables, already holding facts, and no views) gets the views, and
// keeps its data.
func TestMigrateUpgradesOlderVersion(t *testing.T) {
	st, db := open(t)
	ctx := context.Background()
	cfg := schema.Config{Database: db}
	if err := schema.MigrateTo(ctx, st.Conn(), cfg, nil, 1, false); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tableNames(t, st.Conn(), db), " "); strings.Contains(got, "account_quarter") {
		t.Fatalf("views exist before the upgrade: %s", got)
	}
	evs := seatsAndActivity()
	writeOld(t, st, factsOf(evs, nil))
	if err := schema.Migrate(ctx, st.Conn(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tableNames(t, st.Conn(), db), " "); got != allObjects {
		t.Errorf("objects = %s\nwant      %s", got, allObjects)
	}
	checkViews(t, st, evs, 1)
}

// TestMigrateAdoptsUnrecordedTables: fact tables created by hand (or by a
// usagepipe from before the bookkeeping table) are adopted, not recreated.
func TestMigrateAdoptsUnrecordedTables(t *testing.T) {
	st, db := open(t)
	ctx := context.Background()
	cfg := schema.Config{Database: db}
	ss, err := schema.DDL(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range ss {
		if strings.Contains(s, "CREATE TABLE IF NOT EXISTS "+db+".fact_") {
			if err := st.Conn().Exec(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
	}
	evs := seatsAndActivity()
	writeOld(t, st, factsOf(evs, nil))
	if err := schema.Migrate(ctx, st.Conn(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	checkViews(t, st, evs, 1)
}

// writeOld writes f's facts as a release before the served rollups did:
// no rollup_marks table yet, so Write fails there, after every fact table.
func writeOld(t *testing.T, st *store.Store, f *schema.Facts) {
	t.Helper()
	err := st.Write(context.Background(), f)
	if err == nil || !strings.Contains(err.Error(), "rollup_marks") {
		t.Fatalf("write to a database without rollup_marks: got %v, want its error", err)
	}
}

// TestMigrateFiscalChangeRecreatesViews: the fiscal start month lives in
// the views only; changing it replaces them, and the facts stay.
func TestMigrateFiscalChangeRecreatesViews(t *testing.T) {
	st, db := open(t)
	ctx := context.Background()
	evs := seatsAndActivity()
	if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: db}, nil); err != nil {
		t.Fatal(err)
	}
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	checkViews(t, st, evs, 1)
	for _, fs := range []int{4, 4, 1, 10} {
		if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: db, FiscalStartMonth: fs}, nil); err != nil {
			t.Fatal(err)
		}
		checkViews(t, st, evs, fs)
	}
}

// TestMigrateRepairsView: a view dropped or altered by hand is put back.
func TestMigrateRepairsView(t *testing.T) {
	st, db := open(t)
	ctx := context.Background()
	cfg := schema.Config{Database: db}
	if err := schema.Migrate(ctx, st.Conn(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	want := snapshot(t, st.Conn(), db)
	evs := seatsAndActivity()
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	if err := st.Conn().Exec(ctx, "DROP TABLE "+db+".account_quarter_rollups"); err != nil {
		t.Fatal(err)
	}
	if err := st.Conn().Exec(ctx, "DROP TABLE "+db+".account_quarter_features"); err != nil {
		t.Fatal(err)
	}
	if err := st.Conn().Exec(ctx, "CREATE VIEW "+db+".account_quarter_features AS SELECT 1 AS x"); err != nil {
		t.Fatal(err)
	}
	if err := schema.Migrate(ctx, st.Conn(), cfg, nil); err != nil {
		t.Fatal(err)
	}
	checkViews(t, st, evs, 1)
	got := snapshot(t, st.Conn(), db)
	strip := func(s string) string { // ignore times and the bookkeeping count
		var keep []string
		for line := range strings.SplitSeq(s, "\n") {
			if f := strings.Fields(line); len(f) == 4 && !strings.HasPrefix(line, " ") {
				line = f[0] + " " + f[1]
			}
			if !strings.HasPrefix(line, "schema_migrations rows") {
				keep = append(keep, line)
			}
		}
		return strings.Join(keep, "\n")
	}
	if strip(got) != strip(want) {
		t.Errorf("repaired objects differ:\n%s\nwant:\n%s", got, want)
	}
}

// viewColumns lists the views' columns as "table name type".
func viewColumns(t *testing.T, conn driver.Conn, db string) []string {
	t.Helper()
	var out []string
	for _, v := range viewNames {
		rows, err := conn.Query(context.Background(), columnsQuery(db, v))
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var table, name, typ string
			if err := rows.Scan(&table, &name, &typ); err != nil {
				t.Fatal(err)
			}
			out = append(out, table+" "+name+" "+typ)
		}
		rows.Close()
	}
	return out
}

// TestMigrateConcurrent: several `usagepipe run` starting at once each
// migrate the same database, also while replacing views of an older
// fiscal setting.
func TestMigrateConcurrent(t *testing.T) {
	st, db := open(t)
	ctx := context.Background()
	evs := seatsAndActivity()
	for _, fs := range []int{1, 4} {
		errs := make(chan error, 4)
		for range 4 {
			go func() { errs <- schema.Migrate(ctx, st.Conn(), schema.Config{Database: db, FiscalStartMonth: fs}, nil) }()
		}
		for range 4 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		write(t, st, factsOf(evs, nil))
		checkViews(t, st, evs, fs)
		for _, n := range tableNames(t, st.Conn(), db) {
			for _, left := range []string{"_building_", "_old_", "_replaced_", "copy_stage_"} {
				if strings.Contains(n, left) {
					t.Errorf("fiscal start %d: concurrent migrates left %s behind", fs, n)
				}
			}
		}
	}
}

// TestMigrateReplacesForeignView: the view installed is another setting's
// (another migrate won a race, or the bookkeeping says otherwise): migrate
// goes by the definition in system.tables, not by its records.
func TestMigrateReplacesForeignView(t *testing.T) {
	st, db := open(t)
	ctx := context.Background()
	evs := seatsAndActivity()
	if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: db, FiscalStartMonth: 4}, nil); err != nil {
		t.Fatal(err)
	}
	write(t, st, factsOf(evs, nil))
	ss, err := schema.DDL(schema.Config{Database: db, FiscalStartMonth: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range ss {
		if _, rest, ok := strings.Cut(q, "CREATE VIEW "+db+"."); ok {
			name, _, _ := strings.Cut(rest, " ")
			for _, q := range schema.ViewStatements(db, name, q, false, "") {
				if err := st.Conn().Exec(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	// The views now read fiscal start 1's served rows (none were built).
	if got := viewColumns(t, st.Conn(), db); len(got) == 0 {
		t.Fatal("no views installed")
	}
	if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: db, FiscalStartMonth: 4}, nil); err != nil {
		t.Fatal(err)
	}
	checkViews(t, st, evs, 4)
}

// TestMigrateMovesTableAside: a table (not a view) where a view belongs is
// renamed, not dropped, and the view takes its place.
func TestMigrateMovesTableAside(t *testing.T) {
	st, db := open(t)
	ctx := context.Background()
	if err := schema.MigrateTo(ctx, st.Conn(), schema.Config{Database: db}, nil, 1, false); err != nil {
		t.Fatal(err)
	}
	if err := st.Conn().Exec(ctx, "CREATE TABLE "+db+".account_quarter_rollups (account_id String, n UInt64) ENGINE = MergeTree ORDER BY account_id"); err != nil {
		t.Fatal(err)
	}
	b, err := st.Conn().PrepareBatch(ctx, "INSERT INTO "+db+".account_quarter_rollups (account_id, n)")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Append("kept", uint64(7)); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	if err := schema.Migrate(ctx, st.Conn(), schema.Config{Database: db}, nil); err != nil {
		t.Fatal(err)
	}
	evs := seatsAndActivity()
	write(t, st, factsOf(evs, nil))
	checkViews(t, st, evs, 1)
	var aside string
	for _, n := range tableNames(t, st.Conn(), db) {
		if strings.HasPrefix(n, "account_quarter_rollups_replaced_") {
			aside = n
		}
	}
	var n uint64
	if err := st.Conn().QueryRow(ctx, "SELECT sum(n) FROM "+db+"."+aside).Scan(&n); err != nil || n != 7 {
		t.Errorf("table moved aside (%q): sum(n) = %d, %v; want 7", aside, n, err)
	}
}

// TestMigrateFeatureSets: a database the first served release left
// (layout 1: rollups_served, its feature rows in features_served, rollup
// rows satisfying every mark, its build recorded as served_fy1) is built
// again into layout 2 before the readers switch: rows of layout 1 satisfy
// no mark of layout 2 (the fence against its writers), features_served's
// rows are never read, both old tables are dropped, run waits for the
// consumer group first (BackfillPending), and a second migrate changes
// nothing (docs/design.md, "Feature sets").
func TestMigrateFeatureSets(t *testing.T) {
	st, db := open(t)
	ctx := context.Background()
	cfg := schema.Config{Database: db}
	conn := st.Conn()
	exec := func(qs ...string) {
		t.Helper()
		for _, q := range qs {
			if err := conn.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := schema.MigrateTo(ctx, conn, cfg, nil, 3, false); err != nil {
		t.Fatal(err)
	}
	evs := seatsAndActivity()
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	// Layout 1's state: rollup rows newer than every mark, a feature row
	// no fact supports, and the record of its build.
	var sec uint32
	if err := conn.QueryRow(ctx, "SELECT toUInt32(toUInt32(now()) + 1)").Scan(&sec); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(time.Unix(int64(sec), 0)))
	qs, err := schema.RecomputeAllSQL(cfg, sec)
	if err != nil {
		t.Fatal(err)
	}
	oldRollups := strings.Replace(qs[1], ".served_rollups (", ".rollups_served (", 1)
	ghost := "INSERT INTO " + db + ".features_served SELECT 1, 'stale-account', toDate('2025-01-01'), toDate('2025-04-01'), '2025-Q1', 'ghost', 7, 7, now(), 1"
	exec(oldRollups, ghost,
		"INSERT INTO "+db+".schema_migrations (name, kind, applied_at, seq) SELECT 'served_fy1', 'backfill', now(), 1")
	sv1, err := conn.ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	readerTables := schema.ReaderTables(sv1.Version.Major, false)
	if readerTables {
		// Layout 1's reader tables (18.16), with the record its migrate
		// wrote (definition: the bare month) and a row only they hold.
		exec("CREATE TABLE "+db+".account_quarter_features (account_id String, quarter_start Date, quarter_end Date, quarter String, feature String, active_users UInt64, events UInt64) ENGINE = MergeTree PARTITION BY quarter_start ORDER BY (account_id, quarter_start, feature)",
			"CREATE TABLE "+db+".account_quarter_rollups (account_id String, quarter_start Date, quarter_end Date, quarter String, seats_purchased UInt64, seats_assigned UInt64, seat_utilization Float64, active_users UInt64, active_assigned_users UInt64, activation_rate Float64, logins UInt64, feature_events UInt64, features_used UInt64, last_activity_at DateTime('UTC'), updated_at DateTime('UTC')) ENGINE = MergeTree PARTITION BY quarter_start ORDER BY (account_id, quarter_start)",
			"INSERT INTO "+db+".account_quarter_features SELECT 'stale-account', toDate('2025-01-01'), toDate('2025-04-01'), '2025-Q1', 'ghost', 7, 7",
			"INSERT INTO "+db+".schema_migrations (name, kind, checksum, definition, applied_at, seq) SELECT 'reader_tables', 'reader', '"+schema.ReaderMarkerV1(cfg)+"', '1', now(), 2")
	}
	if pending, err := schema.BackfillPending(ctx, conn, cfg); err != nil || !pending {
		t.Fatalf("BackfillPending before the upgrade = %v, %v; want true (run must wait for the old release to leave)", pending, err)
	}

	// The fence: with layout 2's tables in place, layout 1's rollup rows
	// satisfy no mark, so whatever a writer of layout 1 recomputes stays
	// stale for layout 2's sweep.
	if err := schema.MigrateTo(ctx, conn, cfg, nil, 4, false); err != nil {
		t.Fatal(err)
	}
	sv, err := schema.NewServed(conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	stale, err := sv.Stale(ctx)
	if err != nil {
		t.Fatal(err)
	}
	accounts := map[string]bool{}
	for _, e := range evs {
		accounts[e.account] = true
	}
	if len(stale) != len(accounts) {
		t.Fatalf("stale accounts in layout 2 before its build: %d of %d (%v); want all: layout 1's rows must satisfy no mark", len(stale), len(accounts), stale)
	}

	if err := schema.Migrate(ctx, conn, cfg, nil); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tableNames(t, conn, db), " "); got != allObjects {
		t.Errorf("objects = %s\nwant      %s", got, allObjects)
	}
	if pending, err := schema.BackfillPending(ctx, conn, cfg); err != nil || pending {
		t.Errorf("BackfillPending after the upgrade = %v, %v; want false", pending, err)
	}
	for _, q := range []string{oldRollups, ghost} {
		if err := conn.Exec(ctx, q); err == nil {
			t.Errorf("a layout 1 INSERT still succeeds after the upgrade: %.80s…", q)
		}
	}
	checkViews(t, st, evs, 1)
	var ghosts uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+".account_quarter_features WHERE feature = 'ghost'").Scan(&ghosts); err != nil || ghosts != 0 {
		t.Errorf("rows of layout 1 (features_served, its reader tables) are read: %d, %v", ghosts, err)
	}
	if readerTables {
		// Rebuilt from layout 2, under a record a process of layout 1
		// reads as another calendar.
		var def string
		if err := conn.QueryRow(ctx, "SELECT argMax(definition, seq) FROM "+db+".schema_migrations WHERE name = 'reader_tables'").Scan(&def); err != nil || def != "1 served_v2" {
			t.Errorf("reader_tables record after the upgrade = %q, %v; want \"1 served_v2\"", def, err)
		}
	}

	before := snapshot(t, conn, db)
	time.Sleep(1100 * time.Millisecond) // metadata_modification_time has seconds
	if err := schema.Migrate(ctx, conn, cfg, nil); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, conn, db); after != before {
		t.Errorf("second migrate changed the database:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
