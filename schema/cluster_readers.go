package schema

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Cluster readers: migrate's upgrade of the cluster layout before
// 2026-12-08 (reader names were Distributed tables over per-node views) to
// views over the Distributed served tables, and its checks of the nodes
// afterwards (docs/design.md, "Readers on a cluster read the replicated
// served tables").

// swapInView replaces reader table name (a Distributed table of the
// previous cluster layout) by view create: the view is made under a name
// of this call's own, then takes the reader name in one statement (one
// ON CLUSTER entry, run in order on each node, also on a node that was
// down and runs the queue later), and the old table is dropped. In an
// Atomic database (current releases) that statement is EXCHANGE TABLES,
// atomic for readers; in an Ordinary one (18.16) it is a RENAME of both,
// between whose two halves a reader may find no table of that name.
func swapInView(ctx context.Context, conn driver.Conn, r *rendered, name, create string) error {
	var dbEngine string
	if err := conn.QueryRow(ctx, "SELECT engine FROM system.databases WHERE name = ?", r.cfg.Database).Scan(&dbEngine); err != nil {
		return fmt.Errorf("migrate: read the engine of database %s: %w", r.cfg.Database, err)
	}
	tmp := fmt.Sprintf("%s%s%d_%d", name, swapTmpInfix, time.Now().Unix(), rand.Uint32())
	qs, err := swapStatements(r.cfg.Database, name, create, tmp, dbEngine == "Atomic", r.onCluster())
	if err != nil {
		return err
	}
	for _, q := range qs {
		if err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("migrate: replace reader table %s by a view: %w", name, err)
		}
	}
	return nil
}

// swapStatements are swapInView's statements: view create (of reader
// name) made as tmp, swapped in (atomic: EXCHANGE TABLES, else RENAME),
// the replaced table dropped.
func swapStatements(db, name, create, tmp string, atomic bool, onCluster string) ([]string, error) {
	prefix := "CREATE VIEW " + db + "." + name + " "
	if !strings.Contains(create, prefix) {
		return nil, fmt.Errorf("migrate: view %s: no %q in its statement", name, prefix)
	}
	swap := "RENAME TABLE " + db + "." + name + " TO " + db + "." + tmp + "_old, " + db + "." + tmp + " TO " + db + "." + name + onCluster
	old := tmp + "_old"
	if atomic {
		swap, old = "EXCHANGE TABLES "+db+"."+name+" AND "+db+"."+tmp+onCluster, tmp
	}
	return []string{
		strings.Replace(create, prefix, "CREATE VIEW "+db+"."+tmp+" ", 1),
		swap,
		"DROP TABLE IF EXISTS " + db + "." + old + onCluster,
	}, nil
}

// swapTmpInfix marks the objects swapInView makes: a view
// <name>_swap_<unix>_<random> before it takes the reader's name, and the
// replaced table under that name (plus "_old" on 18.16) until dropped.
const swapTmpInfix = "_swap_"

// swapLeftoverAge: objects of swapInView this old are leftovers (a swap
// takes seconds; an ON CLUSTER statement gives up after 180 s).
const swapLeftoverAge = 10 * time.Minute

// dropSwapLeftovers drops what an interrupted swapInView may have left
// for reader name: views of its own naming that never took the name, and
// replaced tables (Distributed over the per-node view) never dropped.
func dropSwapLeftovers(ctx context.Context, conn driver.Conn, r *rendered, name string, log *slog.Logger) error {
	db := r.cfg.Database
	rows, err := conn.Query(ctx, "SELECT name, engine, create_table_query FROM system.tables WHERE database = ? AND startsWith(name, ?)", db, name+swapTmpInfix)
	if err != nil {
		return fmt.Errorf("migrate: look for leftovers of %s: %w", name, err)
	}
	var drop []string
	for rows.Next() {
		var n, engine, def string
		if err := rows.Scan(&n, &engine, &def); err != nil {
			rows.Close()
			return fmt.Errorf("migrate: look for leftovers of %s: %w", name, err)
		}
		// Younger ones may belong to a migrate still under way.
		var made int64
		if _, err := fmt.Sscanf(strings.TrimPrefix(n, name+swapTmpInfix), "%d_", &made); err != nil || time.Since(time.Unix(made, 0)) < swapLeftoverAge {
			continue
		}
		if engine == "View" || engine == "Distributed" && strings.Contains(def, "'"+LocalView(name)+"'") {
			drop = append(drop, n)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("migrate: look for leftovers of %s: %w", name, err)
	}
	for _, n := range drop {
		if err := conn.Exec(ctx, "DROP TABLE IF EXISTS "+db+"."+n+r.onCluster()); err != nil {
			return fmt.Errorf("migrate: drop leftover %s: %w", n, err)
		}
		log.Info("dropped a leftover of replacing a reader table", "database", db, "table", n)
	}
	return nil
}

// warnLateNodes logs the nodes of a cluster that do not show reader view
// name as def (its marker and floor) yet, or installed it more than 30 s
// after the first node did (a node down during migrate runs the ON CLUSTER
// statement when back): after a calendar change, a poll of updated_at
// through such a node can miss rows (docs/operations.md, "Readers").
func warnLateNodes(ctx context.Context, t *Topology, r *rendered, name, marker, def string, log *slog.Logger) {
	if !t.Clustered() {
		return
	}
	floor := ""
	if m := floorRE.FindStringSubmatch(def); m != nil {
		floor = m[0]
	}
	type node struct {
		addr string
		at   int64
	}
	var ok []node
	first := int64(0)
	for _, sh := range t.Shards {
		for _, rep := range sh.Replicas {
			var at int64
			var got string
			err := rep.Conn.QueryRow(ctx, "SELECT toInt64(metadata_modification_time), create_table_query FROM system.tables WHERE database = ? AND name = ?", r.cfg.Database, name).Scan(&at, &got)
			if err != nil || !strings.Contains(got, marker) || !strings.Contains(got, floor) {
				log.Warn("a node does not show this view yet; until it does, a poll of updated_at through it can miss rows after a calendar change", "database", r.cfg.Database, "view", name, "node", rep.Addr, "err", err)
				continue
			}
			ok = append(ok, node{rep.Addr, at})
			if first == 0 || at < first {
				first = at
			}
		}
	}
	for _, n := range ok {
		if n.at > first+30 {
			log.Warn("a node installed the view late; a poll of updated_at through it can miss rows after a calendar change", "database", r.cfg.Database, "view", name, "node", n.addr, "late_s", n.at-first)
		}
	}
}
