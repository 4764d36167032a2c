package schema_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/schema"
)

// BenchmarkClusterReads: reads of the two reader names on a 3-node 18.16
// cluster (schema/chcluster), in the layout migrate builds (views over
// Distributed tables of the replicated served tables, layout=views_over_all)
// and in the layout before 2026-12-08 (Distributed tables over per-node
// views, layout=per_node_views), over the same served rows: 30,000
// accounts × 12 quarters, feature sets of 20 features (360k rollup rows,
// 7.2M feature rows). 18.16 pushes no filter into a view, so what differs
// is where the filter runs: on each shard (per-node views) or on the node
// asked (views over Distributed tables). docs/design.md, "Readers on a
// cluster read the replicated served tables"; benchmarks/README.md.
func BenchmarkClusterReads(b *testing.B) {
	ctx, c := startCluster(b)
	db := "b_cluster_reads"
	_, topo, _ := clusterDB(ctx, b, c, db)
	cfg := schema.Config{Database: db, FiscalStartMonth: 1, Cluster: c.Name}
	exec := func(r *schema.Replica, q string) {
		b.Helper()
		if err := r.Conn.Exec(ctx, q); err != nil {
			b.Fatalf("%s: %v", q, err)
		}
	}
	const accounts, quarters = 30000, 12
	var want uint64
	for si, sh := range topo.Shards {
		// Accounts 2k+si on shard si (which shard holds an account does
		// not matter to a read's cost).
		rows := accounts / len(topo.Shards) * quarters
		key := fmt.Sprintf("concat('acct-', toString(intDiv(number, %d) * %d + %d)), addMonths(toDate('2024-01-01'), (number %% %d) * 3), addMonths(toDate('2024-04-01'), (number %% %d) * 3), 'Q'", quarters, len(topo.Shards), si, quarters, quarters)
		exec(sh.Replicas[0], fmt.Sprintf("INSERT INTO %s.served_rollups (fy, account_id, quarter_start, quarter_end, quarter, seats_purchased, seats_assigned, seat_utilization, active_users, active_assigned_users, activation_rate, logins, feature_events, features_used, last_activity_at, updated_at, version) SELECT 1, %s, 10, 5, 0.5, 3, 2, 0.4, 100, 50, 7, now(), now(), 1 FROM numbers(%d)", db, key, rows))
		exec(sh.Replicas[0], fmt.Sprintf("INSERT INTO %s.served_feature_sets (fy, account_id, quarter_start, quarter_end, quarter, features, active_users, events, updated_at, version) SELECT 1, %s, arrayMap(i -> concat('f', toString(i)), range(20)), arrayMap(i -> toUInt64(i), range(20)), arrayMap(i -> toUInt64(i), range(20)), now(), 1 FROM numbers(%d)", db, key, rows))
		want += uint64(rows)
	}
	on := " ON CLUSTER '" + c.Name + "'"
	for _, name := range []string{"account_quarter_rollups", "account_quarter_features"} {
		sel, err := schema.ShardReader(cfg, name)
		if err != nil {
			b.Fatal(err)
		}
		exec(topo.Shards[0].Replicas[0], "CREATE VIEW "+db+"."+name+"_local"+on+" AS "+sel[1:len(sel)-1])
		exec(topo.Shards[0].Replicas[0], "CREATE TABLE "+db+".prev_"+name+on+" AS "+db+"."+name+"_local ENGINE = Distributed('"+c.Name+"', '"+db+"', '"+name+"_local')")
	}
	// Every node holds its shard's rows before timing.
	n0 := topo.Shards[0].Replicas[0]
	for deadline := time.Now().Add(60 * time.Second); ; {
		var n uint64
		if err := topo.Shards[0].Replicas[1].Conn.QueryRow(ctx, "SELECT count() FROM "+db+".served_rollups").Scan(&n); err != nil {
			b.Fatal(err)
		}
		if n == want/uint64(len(topo.Shards)) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("replica 2 of shard 1 holds %d rows after 60 s", n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, q := range []struct{ name, sql string }{
		{"rollups/all", "SELECT * FROM %s.%saccount_quarter_rollups"},
		{"rollups/one_account", "SELECT * FROM %s.%saccount_quarter_rollups WHERE account_id = 'acct-1234'"},
		{"rollups/one_quarter", "SELECT * FROM %s.%saccount_quarter_rollups WHERE quarter_start = '2026-10-01'"},
		{"features/all", "SELECT * FROM %s.%saccount_quarter_features"},
		{"features/one_account", "SELECT * FROM %s.%saccount_quarter_features WHERE account_id = 'acct-1234'"},
		{"features/one_quarter", "SELECT * FROM %s.%saccount_quarter_features WHERE quarter_start = '2026-10-01'"},
	} {
		for _, l := range []struct{ name, prefix string }{{"views_over_all", ""}, {"per_node_views", "prev_"}} {
			b.Run(q.name+"/layout="+l.name, func(b *testing.B) {
				sql := fmt.Sprintf(q.sql, db, l.prefix)
				var n int
				for b.Loop() {
					rows, err := n0.Conn.Query(ctx, sql)
					if err != nil {
						b.Fatalf("%s: %v", sql, err)
					}
					n = 0
					for rows.Next() {
						n++
					}
					if err := rows.Err(); err != nil {
						b.Fatal(err)
					}
					rows.Close()
				}
				if n == 0 {
					b.Fatalf("%s returned no rows", sql)
				}
				b.ReportMetric(float64(n), "rows/op")
			})
		}
	}
}
