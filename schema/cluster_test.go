package schema_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/chtest"
)

// TestClusterDDLParsesOnCurrentClickHouse: every statement migrate runs on
// a cluster parses on a current engine (chDB), which uses the same
// Replicated engines with ClickHouse Keeper.
func TestClusterDDLParsesOnCurrentClickHouse(t *testing.T) {
	ss, err := schema.DDL(schema.Config{Cluster: "usagepipe_test"})
	if err != nil {
		t.Fatal(err)
	}
	spec := chdbSpec{Statements: []string{}, Inserts: []chdbInsert{}, After: []string{}, Queries: map[string]string{}}
	for i, s := range ss {
		spec.Queries[fmt.Sprint(i)] = "SELECT formatQuery(" + sqlString(s) + ")"
	}
	res := runChDB(t, spec)
	replicated, onCluster, alters := 0, 0, 0
	for i := range ss {
		r, ok := res.Results[fmt.Sprint(i)]
		if !ok || len(r.Data) != 1 {
			t.Fatalf("statement %d: no result from chDB %s", i, res.Version)
		}
		got := fmt.Sprint(r.Data[0][0])
		switch {
		case strings.Contains(got, "ON CLUSTER"):
			onCluster++
		case strings.HasPrefix(got, "ALTER TABLE usage.ingest_progress") && strings.Contains(got, "ADD COLUMN `ids_from`"):
			// A table replicated on every node: run on one, replication
			// carries the change to the others.
			alters++
		}
		if strings.Contains(got, "ENGINE = Replicated") {
			replicated++
		}
	}
	// The database, 16 replicated tables (layout 1's served tables of
	// migration 0003 and layout 2's of 0004 among them), 2 views and 2
	// Distributed tables ON CLUSTER, and migration 0005's ADD COLUMN.
	if onCluster+alters != len(ss) || onCluster != 21 || alters != 1 || replicated != 16 {
		t.Fatalf("chDB %s formatted %d statements with ON CLUSTER and %d with a Replicated engine, of %d", res.Version, onCluster, replicated, len(ss))
	}
}

// TestClusterReaderSwapOnCurrentClickHouse: on a current engine (chDB,
// whose databases are Atomic) migrate's upgrade swap turns the previous
// cluster layout's reader, a Distributed table over a per-node view, into
// the view over the Distributed served table with EXCHANGE TABLES, which
// ClickHouse allows between those engines; the view keeps its marker, so
// migrate recognises it, and nothing temporary is left. ON CLUSTER is
// left out (chDB has no ZooKeeper); the 18.16 cluster runs the RENAME form
// with it (TestClusterShards/upgrade_from_per-node_views).
func TestClusterReaderSwapOnCurrentClickHouse(t *testing.T) {
	const db, cl = "usage", "usagepipe_test"
	cfg := schema.Config{Database: db, FiscalStartMonth: 1, Cluster: cl}
	strip := func(s string) string { return strings.ReplaceAll(s, " ON CLUSTER '"+cl+"'", "") }
	single, err := schema.DDL(schema.Config{Database: db, FiscalStartMonth: 1})
	if err != nil {
		t.Fatal(err)
	}
	clustered, err := schema.DDL(cfg)
	if err != nil {
		t.Fatal(err)
	}
	spec := chdbSpec{Inserts: []chdbInsert{}, After: []string{}, Queries: map[string]string{},
		Config: "<clickhouse><remote_servers><" + cl + "><shard><replica><host>127.0.0.1</host><port>1</port></replica></shard></" + cl + "></remote_servers></clickhouse>"}
	for _, s := range single {
		if !strings.Contains(s, "CREATE VIEW") {
			spec.Statements = append(spec.Statements, s)
		}
	}
	for _, s := range clustered {
		if strings.Contains(s, "ENGINE = Distributed") {
			spec.Statements = append(spec.Statements, strip(s))
		}
	}
	markers := map[string]string{}
	for _, name := range []string{"account_quarter_rollups", "account_quarter_features"} {
		sel, err := schema.ShardReader(cfg, name)
		if err != nil {
			t.Fatal(err)
		}
		spec.Statements = append(spec.Statements,
			"CREATE VIEW "+db+"."+name+"_local AS "+sel[1:len(sel)-1],
			"CREATE TABLE "+db+"."+name+" AS "+db+"."+name+"_local ENGINE = Distributed('"+cl+"', '"+db+"', '"+name+"_local')")
		create, marker, err := schema.ClusterViewSQL(cfg, name)
		if err != nil {
			t.Fatal(err)
		}
		markers[name] = marker
		qs, err := schema.SwapStatements(db, name, strip(create), name+"_swap_1_1", true, "")
		if err != nil {
			t.Fatal(err)
		}
		spec.After = append(spec.After, qs...)
	}
	spec.Queries["objects"] = "SELECT name, engine, create_table_query FROM system.tables WHERE database = '" + db + "' AND (name LIKE 'account_quarter_%' OR name LIKE '%_all') ORDER BY name"
	res := runChDB(t, spec)
	got := map[string][2]string{}
	for _, row := range res.Results["objects"].Data {
		got[fmt.Sprint(row[0])] = [2]string{fmt.Sprint(row[1]), fmt.Sprint(row[2])}
	}
	for name, marker := range markers {
		o := got[name]
		if o[0] != "View" || !strings.Contains(o[1], marker) || !strings.Contains(o[1], "_all AS served_") {
			t.Errorf("chDB %s: %s after the swap is %q", res.Version, name, o)
		}
	}
	for name, o := range got {
		if strings.Contains(name, "_swap_") {
			t.Errorf("chDB %s: %s left after the swap: %q", res.Version, name, o)
		}
	}
	if len(got) != 6 { // the two views, the two per-node views (migrate drops them next), the two _all tables
		t.Errorf("chDB %s: objects after the swap: %v", res.Version, got)
	}
}

func sqlString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`, "\n", `\n`)
	return "'" + r.Replace(s) + "'"
}

// TestShardIndexMatchesClickHouse: usagepipe maps an account to the shard
// ClickHouse would (sipHash64 through the weights), and ShardFilter
// selects exactly that shard's accounts, checked on the real server.
func TestShardIndexMatchesClickHouse(t *testing.T) {
	conn := chtest.Open(t, "")
	ctx := context.Background()
	for _, weights := range [][]int{{1, 1}, {2, 1, 3}, {1}} {
		var shards []*schema.Shard
		for i, w := range weights {
			shards = append(shards, &schema.Shard{Num: i + 1, Weight: w, Replicas: []*schema.Replica{{Addr: "x"}}})
		}
		topo, err := schema.NewTopology("c", nil, shards)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for i := range 3000 {
			ids = append(ids, fmt.Sprintf("acct-%d-%x", i, rand.Uint64()))
		}
		ids = append(ids, "", "ü-ñ", strings.Repeat("x", 300))
		counts := make([]int, len(weights))
		for i := range weights {
			var want []string
			for _, a := range ids {
				if topo.ShardIndex(a) == i {
					want = append(want, a)
				}
			}
			counts[i] = len(want)
			lits := make([]string, len(ids))
			for k, a := range ids {
				lits[k] = sqlString(a)
			}
			rows, err := conn.Query(ctx, "SELECT account_id FROM (SELECT arrayJoin(["+strings.Join(lits, ",")+"]) AS account_id) WHERE "+topo.ShardFilter(i))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for rows.Next() {
				var a string
				if err := rows.Scan(&a); err != nil {
					t.Fatal(err)
				}
				got = append(got, a)
			}
			rows.Close()
			if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
				t.Fatalf("weights %v shard %d: ClickHouse selects %d accounts, usagepipe maps %d", weights, i, len(got), len(want))
			}
		}
		// Every shard gets about its share of the weight.
		total := 0
		for _, w := range weights {
			total += w
		}
		for i, w := range weights {
			share := float64(counts[i]) / float64(len(ids))
			if want := float64(w) / float64(total); share < want*0.85 || share > want*1.15 {
				t.Errorf("weights %v: shard %d got %.2f of the accounts, want about %.2f", weights, i, share, want)
			}
		}
	}
}
