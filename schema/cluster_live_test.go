package schema_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/chcluster"
	"github.com/usagepipe/usagepipe/schema/event"
	"github.com/usagepipe/usagepipe/schema/store"
)

// TestClusterReadsOnlyCaughtUpReplicas proves the rule of docs/design.md
// ("The one new hazard") on a real cluster: a replica that has not fetched
// acknowledged facts is reported lagging, and while it is the only
// replica of its shard left, a recompute fails instead of writing a served
// row without those facts (which would carry a newer version: served rows
// going backwards). Once the replica with the facts is back, the recompute
// succeeds and verify finds the rows exact.
func TestClusterReadsOnlyCaughtUpReplicas(t *testing.T) {
	ctx, c := startCluster(t)
	db := "t_caught_up"
	st, topo, sv := clusterDB(ctx, t, c, db)
	topo.LagWait = time.Second
	acct := accountOn(topo, 0)
	r0, r1 := topo.Shards[0].Replicas[0], topo.Shards[0].Replicas[1]
	q, evs, tables := firstLogin(ctx, t, st, topo, sv, acct, r1, db)

	// The second replica stops fetching: the next facts reach only the
	// first.
	fetches(ctx, t, r1, db, tables, false)
	evs = append(evs, ev{id: "l2", typ: event.Login, account: acct, user: "u2", ms: ms("2026-02-11T00:00:00Z"), offset: 2})
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	if err := topo.CaughtUp(ctx, r1, db, tables...); !errors.Is(err, schema.ErrLagging) {
		t.Fatalf("replica %s without the second write's parts: CaughtUp = %v, want ErrLagging", r1.Addr, err)
	}
	if err := topo.CaughtUp(ctx, r0, db, tables...); err != nil {
		t.Fatalf("replica %s, which took the write: %v", r0.Addr, err)
	}

	// The replica with the facts dies: no replica of shard 1 may serve a
	// recompute, and none happens.
	version := func() uint64 {
		t.Helper()
		var v uint64
		if err := r1.Conn.QueryRow(ctx, "SELECT max(version) FROM "+db+".served_rollups WHERE account_id = ?", acct).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	before := version()
	c.Node(0).Kill()
	if err := sv.Recompute(ctx, map[string]int32{acct: q}, nil); !errors.Is(err, schema.ErrLagging) {
		t.Fatalf("recompute with only a lagging replica up: %v, want ErrLagging", err)
	}
	if after := version(); after != before {
		t.Fatalf("a served row was written on the lagging replica (version %d → %d)", before, after)
	}

	// Back (after its ZooKeeper session expired, so that it is active at
	// once), and the second replica fetches again: the recompute goes
	// through and the rows are exact.
	time.Sleep(5 * time.Second)
	if err := c.Node(0).Restart(ctx); err != nil {
		t.Fatal(err)
	}
	fetches(ctx, t, r1, db, tables, true)
	topo.LagWait = 30 * time.Second
	if err := sv.Recompute(ctx, map[string]int32{acct: q}, nil); err != nil {
		t.Fatal(err)
	}
	verifyClean(ctx, t, sv, 1)
	rows, err := st.ReadRollups(ctx)
	if err != nil || len(rows) != 1 || rows[0].ActiveUsers != 2 {
		t.Fatalf("rollups: %+v, %v; want one row with both users active", rows, err)
	}
}

// TestClusterShards: the contract's grid and a shard down, on one
// cluster (each case in its own database; the shard goes down last).
func TestClusterShards(t *testing.T) {
	ctx, c := startCluster(t)
	t.Run("last quarter from every shard", func(t *testing.T) { lastQuarterFromEveryShard(ctx, t, c) })
	t.Run("readers skip a lagging replica", func(t *testing.T) { readersSkipLaggingReplica(ctx, t, c) })
	t.Run("upgrade from per-node views", func(t *testing.T) { upgradeFromPerNodeViews(ctx, t, c) })
	t.Run("updated_at across a calendar switch", func(t *testing.T) { updatedAtAcrossCalendarSwitch(ctx, t, c) })
	t.Run("sweep with a shard down", func(t *testing.T) { sweepWithAShardDown(ctx, t, c) })
}

// updatedAtAcrossCalendarSwitch: the contract's poll (section 4: keep the
// greatest updated_at U read, next read updated_at >= U - 60 s) sees every
// row after the fiscal calendar changed and changed back, although those
// rows were computed an hour before (nothing changed them since): the
// views' updated_at is never before the second migrate installed them
// (docs/design.md, "updated_at across a calendar switch"). Before, the
// poll after the switch back read no row at all. On views (a cluster
// here; current releases on one server); 18.16's reader tables re-stamp
// rows new to the copy themselves.
func updatedAtAcrossCalendarSwitch(ctx context.Context, t *testing.T, c *chcluster.Cluster) {
	db := "t_calendar_switch"
	st, topo, sv := clusterDB(ctx, t, c, db)
	x, y := accountOn(topo, 0), accountOn(topo, 1)
	evs := []ev{
		{id: "x1", typ: event.Login, account: x, user: "u1", ms: ms("2026-02-10T00:00:00Z"), offset: 1},
		{id: "y1", typ: event.FeatureUsed, account: y, user: "u2", feature: "export", ms: ms("2026-05-10T00:00:00Z"), offset: 2},
	}
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	if err := sv.Recompute(ctx, map[string]int32{x: sv.QuarterOf(2026*12 + 1), y: sv.QuarterOf(2026*12 + 4)}, nil); err != nil {
		t.Fatal(err)
	}
	// The calendar-1 rows as if computed an hour ago, from facts marked
	// two hours ago (so that no sweep recomputes them).
	cols := "fy, account_id, quarter_start, quarter_end, quarter, seats_purchased, seats_assigned, seat_utilization, active_users, active_assigned_users, activation_rate, logins, feature_events, features_used, last_activity_at"
	for _, sh := range topo.Shards {
		for _, q := range []string{
			"INSERT INTO " + db + ".served_rollups (" + cols + ", updated_at, version) SELECT " + cols + ", updated_at - 3600, version + 1 FROM " + db + ".served_rollups FINAL WHERE fy = 1",
			"ALTER TABLE " + db + ".rollup_marks DROP PARTITION tuple()",
			"INSERT INTO " + db + ".rollup_marks (account_id, month, marked_at) SELECT account_id, month, now() - 7200 FROM " + db + ".fact_account_months",
		} {
			if err := sh.Replicas[0].Conn.Exec(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	poll := func(since string) (rows, all int, greatest time.Time) {
		t.Helper()
		for i := range 3 {
			conn := c.Node(i)
			nst, err := store.Open(ctx, store.Config{Addr: []string{conn.Addr}, Database: db}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			var n, total uint64
			var u time.Time
			err = nst.Conn().QueryRow(ctx, "SELECT countIf(updated_at >= toDateTime(?, 'UTC') - 60), count(), max(updated_at) FROM "+db+".account_quarter_rollups", since).Scan(&n, &total, &u)
			nst.Close()
			if err != nil {
				t.Fatal(err)
			}
			if i > 0 && (int(n) != rows || int(total) != all) {
				t.Fatalf("node %s polls %d of %d rows, node 0 %d of %d", conn.Addr, n, total, rows, all)
			}
			rows, all, greatest = int(n), int(total), u
		}
		return rows, all, greatest
	}
	switchTo := func(fs int) {
		t.Helper()
		if err := schema.MigrateOn(ctx, topo, schema.Config{Database: db, FiscalStartMonth: fs, Cluster: c.Name}, nil); err != nil {
			t.Fatal(err)
		}
	}
	switchTo(4)
	_, all4, u := poll("1970-01-01 00:00:00")
	if all4 == 0 {
		t.Fatal("no rows under calendar 4")
	}
	switchTo(1)
	rows, all, _ := poll(u.UTC().Format("2006-01-02 15:04:05"))
	if all == 0 || rows != all {
		t.Fatalf("after switching back to calendar 1 a poll with U = %v reads %d of the %d rows", u, rows, all)
	}
	verifyFresh(ctx, t, topo, schema.Config{Database: db, FiscalStartMonth: 1, Cluster: c.Name}, 2)
}

// upgradeFromPerNodeViews: migrate turns a cluster database of the layout
// before 2026-12-08 (each reader name a Distributed table over a per-node
// view <name>_local) into views over the Distributed served tables, on
// every node, with two migrates running at once (every instance of a new
// release migrates when it starts) and readers reading meanwhile; it drops
// the per-node views and an interrupted upgrade's leftovers (not a young
// object that may be another migrate's), and changes nothing when run
// again. Every node reads the same rows before and after.
func upgradeFromPerNodeViews(ctx context.Context, t *testing.T, c *chcluster.Cluster) {
	db := "t_upgrade_readers"
	st, topo, sv := clusterDB(ctx, t, c, db)
	a0, a1 := accountOn(topo, 0), accountOn(topo, 1)
	evs := []ev{
		{id: "l1", typ: event.Login, account: a0, user: "u1", ms: ms("2026-02-10T00:00:00Z"), offset: 1},
		{id: "f1", typ: event.FeatureUsed, account: a1, user: "u2", feature: "export", ms: ms("2026-05-10T00:00:00Z"), offset: 2},
	}
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	if err := sv.Recompute(ctx, map[string]int32{a0: sv.QuarterOf(2026*12 + 1), a1: sv.QuarterOf(2026*12 + 4)}, nil); err != nil {
		t.Fatal(err)
	}
	cfg := schema.Config{Database: db, FiscalStartMonth: 1, Cluster: c.Name}
	on := " ON CLUSTER '" + c.Name + "'"
	exec := func(q string) {
		t.Helper()
		if err := topo.All.Use(ctx, func(r *schema.Replica) error { return r.Conn.Exec(ctx, q) }); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// The previous layout, as its migrate left it, and leftovers of an
	// upgrade interrupted long ago (dropped) and of one under way (kept).
	old, young := "_swap_1000000000_1", fmt.Sprintf("_swap_%d_2", time.Now().Unix())
	for _, name := range []string{"account_quarter_rollups", "account_quarter_features"} {
		sel, err := schema.ShardReader(cfg, name)
		if err != nil {
			t.Fatal(err)
		}
		exec("CREATE VIEW " + db + "." + name + "_local" + on + " AS " + sel[1:len(sel)-1])
		exec("DROP TABLE " + db + "." + name + on)
		exec("CREATE TABLE " + db + "." + name + on + " AS " + db + "." + name + "_local ENGINE = Distributed('" + c.Name + "', '" + db + "', '" + name + "_local')")
		exec("CREATE VIEW " + db + "." + name + old + on + " AS SELECT 1 AS x")
		exec("CREATE TABLE " + db + "." + name + old + "_old" + on + " AS " + db + "." + name + "_local ENGINE = Distributed('" + c.Name + "', '" + db + "', '" + name + "_local')")
		exec("CREATE VIEW " + db + "." + name + young + on + " AS SELECT 1 AS x")
	}
	readAll := func(when string) []nodeRead {
		t.Helper()
		var out []nodeRead
		for i := range 3 {
			n := c.Node(i)
			nst, err := store.Open(ctx, store.Config{Addr: []string{n.Addr}, Database: db}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			var nr nodeRead
			if nr.rollups, err = nst.ReadRollups(ctx); err != nil {
				t.Fatalf("%s: rollups on %s: %v", when, n.Addr, err)
			}
			if nr.features, err = nst.ReadFeatures(ctx); err != nil {
				t.Fatalf("%s: features on %s: %v", when, n.Addr, err)
			}
			// a0: Q1 (and the grid through Q2); a1: Q2, with one feature row.
			if len(nr.rollups) != 3 || len(nr.features) != 1 || nr.features[0].AccountID != a1 || nr.features[0].Feature != "export" {
				t.Fatalf("%s: node %s reads %d rollups, features %+v; want 3 rows and a1's export", when, n.Addr, len(nr.rollups), nr.features)
			}
			nr.objects = map[string]string{}
			rows, err := nst.Conn().Query(ctx, "SELECT name, engine, create_table_query FROM system.tables WHERE database = ? AND name LIKE 'account_quarter_%'", db)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var name, engine, def string
				if err := rows.Scan(&name, &engine, &def); err != nil {
					t.Fatal(err)
				}
				nr.objects[name] = engine + " " + def
			}
			rows.Close()
			nst.Close()
			out = append(out, nr)
		}
		return out
	}
	before := readAll("previous layout")
	if !strings.HasPrefix(before[0].objects["account_quarter_rollups"], "Distributed ") {
		t.Fatalf("the previous layout was not built: %q", before[0].objects["account_quarter_rollups"])
	}

	// verify sees that the readers do not read this release's views: one
	// difference per reader name on the replica it verifies each shard on.
	var objDiffs []string
	if _, err := sv.Verify(ctx, nil, func(d schema.Difference) {
		if strings.HasPrefix(d.Key, "reader object on ") && d.Served == "Distributed" {
			objDiffs = append(objDiffs, d.Table+" "+d.Key)
		}
	}); err != nil || len(objDiffs) != 4 {
		t.Fatalf("verify on the previous layout: %v; reader-object differences %v, want 2 names × 2 shards", err, objDiffs)
	}

	// Two migrates at once, and a reader on every node meanwhile.
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readErrs := make([]int, 3)
	for i := range 3 {
		readers.Go(func() {
			nst, err := store.Open(ctx, store.Config{Addr: []string{c.Node(i).Addr}, Database: db}, nil, nil)
			if err != nil {
				readErrs[i] = -1
				return
			}
			defer nst.Close()
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if _, err := nst.ReadRollups(ctx); err != nil {
					readErrs[i]++
				}
			}
		})
	}
	migrateErrs := make([]error, 2)
	var migrates sync.WaitGroup
	for k := range 2 {
		migrates.Go(func() { migrateErrs[k] = schema.MigrateOn(ctx, topo, cfg, nil) })
	}
	migrates.Wait()
	close(stop)
	readers.Wait()
	t.Logf("reads that failed during the two migrates, per node: %v (18.16: an Ordinary database, RENAME of two tables is not atomic)", readErrs)
	for k, err := range migrateErrs {
		if err != nil {
			t.Errorf("migrate %d of 2: %v", k+1, err)
		}
	}
	after := readAll("after migrate")
	for i, nr := range after {
		n := c.Node(i).Addr
		for _, name := range []string{"account_quarter_rollups", "account_quarter_features"} {
			got := nr.objects[name]
			if !strings.HasPrefix(got, "View CREATE VIEW "+db+"."+name+" ") || !strings.Contains(got, "_all AS served_") {
				t.Errorf("after migrate: %s on %s is %q, not the view over the Distributed served table", name, n, got)
			}
			// Same calendar: the rows' updated_at stays theirs (no floor).
			if name == "account_quarter_rollups" && !strings.Contains(got, "toDateTime(0, 'UTC')") {
				t.Errorf("after migrate: %s on %s got a floor for its updated_at although the calendar did not change: %q", name, n, got)
			}
			for _, gone := range []string{name + "_local", name + old, name + old + "_old"} {
				if o, ok := nr.objects[gone]; ok {
					t.Errorf("after migrate: %s on %s is still there: %q", gone, n, o)
				}
			}
			if _, ok := nr.objects[name+young]; !ok {
				t.Errorf("after migrate: %s on %s, which may be another migrate's, was dropped", name+young, n)
			}
		}
		for k, o := range nr.objects {
			if strings.Contains(k, "_swap_") && !strings.HasSuffix(k, young) {
				t.Errorf("after migrate: %s on %s is left: %q", k, n, o)
			}
		}
		if !rowsEqual(nr, before[i]) {
			t.Errorf("node %s reads other rows after migrate:\n%+v\n%+v\nwas\n%+v\n%+v", n, nr.rollups, nr.features, before[i].rollups, before[i].features)
		}
	}
	if err := schema.MigrateOn(ctx, topo, cfg, nil); err != nil {
		t.Fatal(err)
	}
	for i, nr := range readAll("after a second migrate") {
		if !maps.Equal(nr.objects, after[i].objects) || !rowsEqual(nr, after[i]) {
			t.Errorf("a second migrate changed node %s:\n%v\nwas\n%v", c.Node(i).Addr, nr.objects, after[i].objects)
		}
	}
	verifyClean(ctx, t, sv, 2)
}

// readersSkipLaggingReplica: the reader views read each shard through a
// Distributed table over the replicated served tables, so ClickHouse
// checks the delay of the replica it reads (docs/design.md, "Readers on a
// cluster read the replicated served tables"). A node whose replica of
// shard 1 stopped fetching answers with the other replica's newer rows
// under the readers' profile (max_replica_delay_for_distributed_queries,
// fallback_to_stale_replicas_for_distributed_queries = 0), for both
// reader names. Before, the readers were Distributed tables over per-node
// views, which report no delay: that node served its own stale row.
func readersSkipLaggingReplica(ctx context.Context, t *testing.T, c *chcluster.Cluster) {
	db := "t_reader_lag"
	st, topo, sv := clusterDB(ctx, t, c, db)
	topo.LagWait = time.Second
	acct := accountOn(topo, 0)
	r1 := topo.Shards[0].Replicas[1]
	q, evs, tables := firstLogin(ctx, t, st, topo, sv, acct, r1, db)

	// read runs on r1's node what a reader runs, with the delay bound
	// maxDelay: the account's active users and its feature rows.
	read := func(maxDelay int) (active uint64, features []string, err error) {
		qctx := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{
			"max_replica_delay_for_distributed_queries":          maxDelay,
			"fallback_to_stale_replicas_for_distributed_queries": 0,
		}))
		if err := r1.Conn.QueryRow(qctx, "SELECT active_users FROM "+db+".account_quarter_rollups WHERE account_id = ? AND quarter_start = '2026-01-01'", acct).Scan(&active); err != nil {
			return 0, nil, err
		}
		rows, err := r1.Conn.Query(qctx, "SELECT feature FROM "+db+".account_quarter_features WHERE account_id = ? ORDER BY feature", acct)
		if err != nil {
			return 0, nil, err
		}
		defer rows.Close()
		for rows.Next() {
			var f string
			if err := rows.Scan(&f); err != nil {
				return 0, nil, err
			}
			features = append(features, f)
		}
		return active, features, rows.Err()
	}
	if a, f, err := read(300); err != nil || a != 1 || len(f) != 0 {
		t.Fatalf("before the lag: active %d, features %v, %v; want 1 and none", a, f, err)
	}

	// r1 stops fetching; the next facts and served rows reach only r0.
	fetches(ctx, t, r1, db, tables, false)
	evs = append(evs,
		ev{id: "l2", typ: event.Login, account: acct, user: "u2", ms: ms("2026-02-11T00:00:00Z"), offset: 2},
		ev{id: "f1", typ: event.FeatureUsed, account: acct, user: "u2", feature: "export", ms: ms("2026-02-11T00:01:00Z"), offset: 3})
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	if err := sv.Recompute(ctx, map[string]int32{acct: q}, nil); err != nil {
		t.Fatal(err)
	}
	// Until r1's delay passes the bound, which ClickHouse counts from the
	// oldest entry r1 has not fetched.
	var delay uint64
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err := r1.Conn.QueryRow(ctx, "SELECT min(absolute_delay) FROM system.replicas WHERE database = ? AND table IN ('served_rollups', 'served_feature_sets')", db).Scan(&delay); err != nil {
			t.Fatal(err)
		}
		if delay > 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica %s reports a delay of %d s after 30 s without fetches", r1.Addr, delay)
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The server's default bound (300 s) still reads r1 itself: the lag is
	// real, and the test would see it.
	if a, f, err := read(300); err != nil || a != 1 || len(f) != 0 {
		t.Fatalf("with a 300 s bound on %s (delay %d s): active %d, features %v, %v; want r1's own old row", r1.Addr, delay, a, f, err)
	}
	// The readers' bound: the other replica answers for shard 1.
	if a, f, err := read(2); err != nil || a != 2 || len(f) != 1 || f[0] != "export" {
		t.Fatalf("with a 2 s bound on %s (delay %d s): active %d, features %v, %v; want 2 and [export] from the other replica", r1.Addr, delay, a, f, err)
	}

	fetches(ctx, t, r1, db, tables, true)
	topo.LagWait = 30 * time.Second
	if err := topo.CaughtUp(ctx, r1, db, tables...); err != nil {
		t.Fatalf("replica %s after fetching again: %v", r1.Addr, err)
	}
	if a, f, err := read(300); err != nil || a != 2 || len(f) != 1 {
		t.Fatalf("after r1 caught up: active %d, features %v, %v; want 2 and [export]", a, f, err)
	}
	verifyClean(ctx, t, sv, 1)
}

// nodeRead is what one node's readers see: rows, and the objects named
// account_quarter_* (engine and definition).
type nodeRead struct {
	rollups  []schema.Rollup
	features []schema.FeatureRow
	objects  map[string]string
}

// rowsEqual: a and b read the same rows.
func rowsEqual(a, b nodeRead) bool {
	return reflect.DeepEqual(a.rollups, b.rollups) && reflect.DeepEqual(a.features, b.features)
}

// lastQuarterFromEveryShard: on a cluster the stream's last
// quarter (the grid's end, contract section 4) is the greatest over every
// shard. A fresh process (migrate's backfill, verify, a restarted run)
// used to know only the shard it recomputed first: an account of shard 1
// whose events stop in Q2 got no Q3 row when only shard 2's events had
// reached Q3, and verify reported the right row as a difference (found by
// a contract audit).
func lastQuarterFromEveryShard(ctx context.Context, t *testing.T, c *chcluster.Cluster) {
	db := "t_last_q"
	st, topo, sv := clusterDB(ctx, t, c, db)
	x, y := accountOn(topo, 0), accountOn(topo, 1)
	evs := []ev{
		{id: "x1", typ: event.Login, account: x, user: "u1", ms: ms("2026-05-10T00:00:00Z"), offset: 1},
		{id: "y1", typ: event.Login, account: y, user: "u2", ms: ms("2026-07-02T00:00:00Z"), offset: 2},
	}
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	if err := sv.Recompute(ctx, map[string]int32{x: sv.QuarterOf(2026*12 + 4), y: sv.QuarterOf(2026*12 + 6)}, nil); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{x + " 2026-04-01": true, x + " 2026-07-01": true, y + " 2026-07-01": true}
	var got map[string]bool
	deadline := time.Now().Add(30 * time.Second)
	for {
		rows, err := st.ReadRollups(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = map[string]bool{}
		for _, r := range rows {
			got[r.AccountID+" "+r.QuarterStart.Format(time.DateOnly)] = true
		}
		if len(got) == len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for k := range want {
		if !got[k] {
			t.Errorf("no row %s (rows: %v): the last quarter is every shard's", k, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("rows %v, want %v", got, want)
	}
	// A fresh process's verify agrees.
	verifyFresh(ctx, t, topo, schema.Config{Database: db, FiscalStartMonth: 1, Cluster: c.Name}, 2)
}

// sweepWithAShardDown: a sweep that cannot read one shard still
// sweeps the others (contract section 8: the pipeline keeps working while
// a shard is down; docs/operations.md, "How it reads"): new facts of an
// account on the shard that answers reach its served rows, and the sweep
// reports the shard it skipped. Before, the first unreadable shard failed
// the whole sweep and no account of any shard was recomputed.
func sweepWithAShardDown(ctx context.Context, t *testing.T, c *chcluster.Cluster) {
	db := "t_shard_down"
	st, topo, sv := clusterDB(ctx, t, c, db)
	topo.LagWait = time.Second
	x, y := accountOn(topo, 0), accountOn(topo, 1)
	evs := []ev{
		{id: "x1", typ: event.Login, account: x, user: "u1", ms: ms("2026-05-10T00:00:00Z"), offset: 1},
		{id: "y1", typ: event.Login, account: y, user: "u2", ms: ms("2026-05-11T00:00:00Z"), offset: 2},
	}
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := sv.Sweep(ctx); err != nil {
		t.Fatal(err)
	}

	c.Node(2).Kill() // shard 2's only replica
	evs = append(evs, ev{id: "x2", typ: event.Login, account: x, user: "u3", ms: ms("2026-05-12T00:00:00Z"), offset: 3})
	// (x's facts alone, all of them: a count row is a function of its
	// offsets, so it must hold x1 too.)
	if err := st.Write(ctx, factsOf([]ev{evs[0], evs[2]}, nil)); err != nil {
		t.Fatal(err)
	}
	n, err := sv.Sweep(ctx)
	if err == nil || n != 1 {
		t.Fatalf("sweep with shard 2 down: %d accounts recomputed, err %v; want %s's, and an error naming shard 2", n, err, x)
	}
	var logins uint64
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		// (Either replica of shard 1: the other fetches the row.)
		if err := topo.Shards[0].Replicas[0].Conn.QueryRow(ctx, "SELECT logins FROM "+db+".served_rollups FINAL WHERE account_id = ?", x).Scan(&logins); err != nil {
			t.Fatal(err)
		}
		if logins == 2 || time.Now().After(deadline) {
			break
		}
	}
	if logins != 2 {
		t.Fatalf("%s's served logins %d with shard 2 down, want 2 (sweep: %v)", x, logins, err)
	}
}

// clusterDB opens database db on c, migrated for calendar 1 (closed when
// the test ends), with its Served; the cluster must have two shards, the
// first with two replicas.
func clusterDB(ctx context.Context, t testing.TB, c *chcluster.Cluster, db string) (*store.Store, *schema.Topology, *schema.Served) {
	t.Helper()
	st, err := store.Open(ctx, store.Config{Addr: c.Addrs(), Database: db, Cluster: c.Name}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	topo := st.Topology()
	cfg := schema.Config{Database: db, FiscalStartMonth: 1, Cluster: c.Name}
	// A cluster just started has once dropped the first ON CLUSTER
	// statement's connection (EOF); migrate is idempotent, so it is tried
	// again (the tests are about what follows).
	for attempt := 1; ; attempt++ {
		err := schema.MigrateOn(ctx, topo, cfg, nil)
		if err == nil {
			break
		}
		if attempt == 3 {
			t.Fatal(err)
		}
		t.Logf("migrate, attempt %d: %v; again", attempt, err)
		time.Sleep(2 * time.Second)
	}
	sv, err := schema.NewServedOn(topo, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(topo.Shards) != 2 || len(topo.Shards[0].Replicas) != 2 {
		t.Fatalf("topology: %d shards, want shard 1 with two replicas and shard 2", len(topo.Shards))
	}
	return st, topo, sv
}

// accountOn is the first account acct-N that topo puts on shard index i.
func accountOn(topo *schema.Topology, i int) string {
	for k := 0; ; k++ {
		if a := fmt.Sprintf("acct-%d", k); topo.ShardIndex(a) == i {
			return a
		}
	}
}

// shardTables are the sharded replicated tables that a recompute reads
// and writes.
var shardTables = []string{"fact_account_months", "fact_user_activity", "fact_feature_users", "fact_event_counts", "fact_seat_events", "fact_seat_purchases", "rollup_marks", "served_rollups", "served_feature_sets"}

// firstLogin writes one login of acct (user u1, 2026 Q1) and its served
// row, and waits until replica r holds them. It returns the quarter, the
// events written and the tables to check r on.
func firstLogin(ctx context.Context, t *testing.T, st *store.Store, topo *schema.Topology, sv *schema.Served, acct string, r *schema.Replica, db string) (int32, []ev, []string) {
	t.Helper()
	q := sv.QuarterOf(2026*12 + 1)
	evs := []ev{{id: "l1", typ: event.Login, account: acct, user: "u1", ms: ms("2026-02-10T00:00:00Z"), offset: 1}}
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	if err := sv.Recompute(ctx, map[string]int32{acct: q}, nil); err != nil {
		t.Fatal(err)
	}
	if err := topo.CaughtUp(ctx, r, db, shardTables...); err != nil {
		t.Fatalf("replica %s after the first write: %v", r.Addr, err)
	}
	return q, evs, shardTables
}

// fetches starts (on) or stops replica r's fetches of tables of db.
func fetches(ctx context.Context, t *testing.T, r *schema.Replica, db string, tables []string, on bool) {
	t.Helper()
	verb := "SYSTEM STOP FETCHES "
	if on {
		verb = "SYSTEM START FETCHES "
	}
	for _, tb := range tables {
		if err := r.Conn.Exec(ctx, verb+db+"."+tb); err != nil {
			t.Fatal(err)
		}
	}
}

// verifyClean fails t unless verify checks accounts accounts and finds
// no difference.
func verifyClean(ctx context.Context, t *testing.T, sv *schema.Served, accounts int) {
	t.Helper()
	var diffs []string
	if n, err := sv.Verify(ctx, nil, func(d schema.Difference) { diffs = append(diffs, d.Table+" "+d.Key) }); err != nil || n != accounts || len(diffs) > 0 {
		t.Fatalf("verify: %d accounts (want %d), %v, differences %v", n, accounts, err, diffs)
	}
}

// verifyFresh is verifyClean in a fresh process's Served for cfg.
func verifyFresh(ctx context.Context, t *testing.T, topo *schema.Topology, cfg schema.Config, accounts int) {
	t.Helper()
	sv, err := schema.NewServedOn(topo, cfg)
	if err != nil {
		t.Fatal(err)
	}
	verifyClean(ctx, t, sv, accounts)
}

// startCluster starts a test cluster (stopped when the test ends) and
// gives the test 4 minutes.
func startCluster(t testing.TB) (context.Context, *chcluster.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	c, err := chcluster.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return ctx, c
}

// TestClusterReadersSilentZooKeeper bounds the window that ClickHouse's
// replica delay does not see (docs/design.md, "Why the poll misses
// nothing"): a replica whose ZooKeeper link goes silent reports no delay
// until its session is declared lost, so it serves its old rows for up to
// the session timeout T_s. After the landing of a newer row, a reader on
// that node under the readers' settings (delay bound D) gets the new row
// or an error, never the old one, from T_s + D + 1 s on.
func TestClusterReadersSilentZooKeeper(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	c, err := chcluster.StartWith(ctx, t.TempDir(), chcluster.Options{ZooKeeperProxy: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	db := "t_silent_zk"
	st, topo, sv := clusterDB(ctx, t, c, db)
	topo.LagWait = time.Second
	acct := accountOn(topo, 0)
	r1 := topo.Shards[0].Replicas[1]
	var n1 *chcluster.Node
	for _, n := range c.Nodes() {
		if n.Addr == r1.Addr {
			n1 = n
		}
	}
	if n1 == nil || n1.Shard != 1 {
		t.Fatalf("no node of shard 1 at %s", r1.Addr)
	}
	q, evs, tables := firstLogin(ctx, t, st, topo, sv, acct, r1, db)
	const maxDelay = 2
	rctx := clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{
		"max_replica_delay_for_distributed_queries":          maxDelay,
		"fallback_to_stale_replicas_for_distributed_queries": 0,
	}))
	read := func() (uint64, error) {
		var a uint64
		err := r1.Conn.QueryRow(rctx, "SELECT active_users FROM "+db+".account_quarter_rollups WHERE account_id = ? AND quarter_start = '2026-01-01'", acct).Scan(&a)
		return a, err
	}
	if a, err := read(); err != nil || a != 1 {
		t.Fatalf("before: active %d, %v; want 1", a, err)
	}

	if err := n1.SilenceZooKeeper(true); err != nil {
		t.Fatal(err)
	}
	evs = append(evs, ev{id: "l2", typ: event.Login, account: acct, user: "u2", ms: ms("2026-02-11T00:00:00Z"), offset: 2})
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	// The new row lands after this (strict: measured from before the
	// recompute rather than from its landing).
	landed := time.Now()
	if err := sv.Recompute(ctx, map[string]int32{acct: q}, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("recompute took %v", time.Since(landed).Round(time.Millisecond))
	// A reader on n1 must not get the old row once T_s + D + 1 s passed
	// (2 s more for scheduling on a busy machine).
	bound := time.Duration(chcluster.SessionTimeoutMS)*time.Millisecond + (maxDelay+1)*time.Second + 2*time.Second
	var lastStale time.Duration
	fresh, errs := 0, 0
	for time.Since(landed) < bound+5*time.Second {
		at := time.Since(landed) // when the read started
		a, err := read()
		switch {
		case err != nil:
			errs++
		case a == 1:
			lastStale = at
			if at > bound {
				t.Fatalf("a reader on %s got the old row %v after the new one landed (bound %v)", r1.Addr, at.Round(time.Millisecond), bound)
			}
		case a == 2:
			fresh++
		default:
			t.Fatalf("active %d", a)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("old row served for %v after the new one landed (session timeout %d ms); %d fresh reads, %d errors after",
		lastStale.Round(time.Millisecond), chcluster.SessionTimeoutMS, fresh, errs)
	if fresh == 0 {
		t.Fatalf("no read on %s returned the new row within %v (%d errors)", r1.Addr, bound+5*time.Second, errs)
	}

	if err := n1.SilenceZooKeeper(false); err != nil {
		t.Fatal(err)
	}
	// The node finds its session expired, opens a new one and fetches.
	topo.LagWait = 5 * time.Second
	for deadline := time.Now().Add(90 * time.Second); ; {
		err := topo.CaughtUp(ctx, r1, db, tables...)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica %s 90 s after its link came back: %v", r1.Addr, err)
		}
		time.Sleep(time.Second)
	}
	if a, err := read(); err != nil || a != 2 {
		t.Fatalf("after the link came back: active %d, %v; want 2", a, err)
	}
	verifyClean(ctx, t, sv, 1)
}
