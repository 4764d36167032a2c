package schema_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

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
	q := sv.QuarterOf(2026*12 + 1)
	evs := []ev{{id: "l1", typ: event.Login, account: acct, user: "u1", ms: ms("2026-02-10T00:00:00Z"), offset: 1}}
	if err := st.Write(ctx, factsOf(evs, nil)); err != nil {
		t.Fatal(err)
	}
	if err := sv.Recompute(ctx, map[string]int32{acct: q}, nil); err != nil {
		t.Fatal(err)
	}
	tables := []string{"fact_account_months", "fact_user_activity", "fact_feature_users", "fact_event_counts", "fact_seat_events", "fact_seat_purchases", "rollup_marks", "served_rollups", "served_feature_sets"}
	if err := topo.CaughtUp(ctx, r1, db, tables...); err != nil {
		t.Fatalf("replica %s after the first write: %v", r1.Addr, err)
	}

	// The second replica stops fetching: the next facts reach only the
	// first.
	for _, tb := range tables {
		if err := r1.Conn.Exec(ctx, "SYSTEM STOP FETCHES "+db+"."+tb); err != nil {
			t.Fatal(err)
		}
	}
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
	for _, tb := range tables {
		if err := r1.Conn.Exec(ctx, "SYSTEM START FETCHES "+db+"."+tb); err != nil {
			t.Fatal(err)
		}
	}
	topo.LagWait = 30 * time.Second
	if err := sv.Recompute(ctx, map[string]int32{acct: q}, nil); err != nil {
		t.Fatal(err)
	}
	var diffs []string
	if n, err := sv.Verify(ctx, nil, func(d schema.Difference) { diffs = append(diffs, d.Key) }); err != nil || n != 1 || len(diffs) > 0 {
		t.Fatalf("verify: %d accounts, %v, differences %v", n, err, diffs)
	}
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
	t.Run("sweep with a shard down", func(t *testing.T) { sweepWithAShardDown(ctx, t, c) })
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
	sv2, err := schema.NewServedOn(topo, schema.Config{Database: db, FiscalStartMonth: 1, Cluster: c.Name})
	if err != nil {
		t.Fatal(err)
	}
	var diffs []string
	if n, err := sv2.Verify(ctx, nil, func(d schema.Difference) { diffs = append(diffs, d.Key) }); err != nil || n != 2 || len(diffs) > 0 {
		t.Fatalf("verify in a fresh process: %d accounts, %v, differences %v", n, err, diffs)
	}
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
func clusterDB(ctx context.Context, t *testing.T, c *chcluster.Cluster, db string) (*store.Store, *schema.Topology, *schema.Served) {
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

// startCluster starts a test cluster (stopped when the test ends) and
// gives the test 4 minutes.
func startCluster(t *testing.T) (context.Context, *chcluster.Cluster) {
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
