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
