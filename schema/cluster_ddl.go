package schema

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Cluster DDL: the single-server statements, rewritten for a cluster
// (docs/design.md, "ClickHouse clusters"). Single-server DDL is never
// touched, so databases made before clusters keep their checksums.

// globalTables are replicated on every node of the cluster; every other
// table is sharded by account_id.
var globalTables = map[string]bool{
	"schema_migrations":  true,
	"ingest_progress":    true,
	"topic_incarnations": true,
	"dedup_ids":          true,
}

// LocalView is the name of the per-node view under reader object name in
// the cluster layout before 2026-12-08, where name was a Distributed table
// over these views; migrate drops both (docs/design.md, "Readers on a
// cluster read the replicated served tables").
func LocalView(name string) string { return name + "_local" }

// servedTables are the served tables the reader views read.
var servedTables = []string{"served_rollups", "served_feature_sets"}

// ServedAll is the name of the Distributed table over served table name
// on a cluster, which the reader views read.
func ServedAll(name string) string { return name + "_all" }

var (
	createDBRE    = regexp.MustCompile(`CREATE DATABASE IF NOT EXISTS \w+`)
	createTableRE = regexp.MustCompile(`CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)`)
	engineRE      = regexp.MustCompile(`ENGINE = (\w*MergeTree)(?:\(([^)]*)\))?`)
	createViewRE  = regexp.MustCompile(`CREATE VIEW (\w+)\.(\w+) AS`)
	viewFromRE    = regexp.MustCompile(`FROM (\w+)\.(served_rollups|served_feature_sets) AS`)
)

// onCluster rewrites one rendered single-server statement for cfg.Cluster.
func onCluster(cfg Config, sql string) string {
	on := " ON CLUSTER " + lit(cfg.Cluster)
	switch {
	case createDBRE.MatchString(sql):
		return createDBRE.ReplaceAllString(sql, "$0"+on)
	case createViewRE.MatchString(sql):
		// The view on every node, reading every shard's served rows
		// through the Distributed table over them.
		sql = viewFromRE.ReplaceAllString(sql, "FROM $1.${2}_all AS")
		return createViewRE.ReplaceAllString(sql, "CREATE VIEW $1.$2"+on+" AS")
	case createTableRE.MatchString(sql):
		m := createTableRE.FindStringSubmatch(sql)
		db, table := m[1], m[2]
		sql = createTableRE.ReplaceAllString(sql, "CREATE TABLE IF NOT EXISTS $1.$2"+on)
		path, replica := fmt.Sprintf("/clickhouse/usagepipe/%s/{shard}/%s", db, table), "{replica}"
		switch {
		case globalTables[table]:
			path, replica = fmt.Sprintf("/clickhouse/usagepipe/%s/all/%s", db, table), "{shard}-{replica}"
		case table == "replica_barrier": // one replica per node
			path, replica = fmt.Sprintf("/clickhouse/usagepipe/%s/barrier/{shard}-{replica}", db), "node"
		}
		return engineRE.ReplaceAllStringFunc(sql, func(e string) string {
			g := engineRE.FindStringSubmatch(e)
			args := lit(path) + ", " + lit(replica)
			if g[2] != "" {
				args += ", " + g[2]
			}
			return "ENGINE = Replicated" + g[1] + "(" + args + ")"
		})
	}
	return sql
}

// servedAllDDL is the Distributed table over served table name on a
// cluster: the reader views read through it, so that each shard is read on
// a replica whose delay ClickHouse checks. It has no sharding key: nothing
// writes through it.
func servedAllDDL(cfg Config, name string) string {
	db := cfg.Database
	return fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s ON CLUSTER %s AS %s.%s\nENGINE = Distributed(%s, %s, %s)",
		db, ServedAll(name), lit(cfg.Cluster), db, name, lit(cfg.Cluster), lit(db), lit(name))
}

// shardReader is reader view name's SELECT on one server, as a subquery:
// on a cluster node, what the view reads from that node's shard.
func shardReader(cfg Config, name string) (string, error) {
	cfg = cfg.withDefaults()
	cfg.Cluster = ""
	for _, v := range views {
		if v.name != name {
			continue
		}
		sql, err := renderFile(cfg, v.file, "shard")
		if err != nil {
			return "", err
		}
		sql = installSQL(sql, 0)
		prefix := "CREATE VIEW " + cfg.Database + "." + name + " AS"
		i := strings.Index(sql, prefix)
		if i < 0 {
			return "", fmt.Errorf("schema: %s: no %q", v.file, prefix)
		}
		return "(" + sql[i+len(prefix):] + ")", nil
	}
	return "", fmt.Errorf("schema: no reader view %s", name)
}

// checkReaderObject reports, as a Difference, reader name on conn's node
// when it is not the view migrate installs for cfg (another calendar's or
// release's, the previous layout's Distributed table, or missing).
func checkReaderObject(ctx context.Context, conn driver.Conn, node string, cfg Config, name string) (*Difference, error) {
	r, err := render(cfg)
	if err != nil {
		return nil, err
	}
	for i, v := range views {
		if v.name != name {
			continue
		}
		engine, def, err := viewDefinition(ctx, conn, cfg.Database, name)
		if err != nil {
			return nil, err
		}
		if engine == "View" && strings.Contains(def, r.views[i].marker) {
			return nil, nil
		}
		if engine == "" {
			engine = "no table"
		}
		return &Difference{Table: name, Key: "reader object on " + node,
			Served: engine, Computed: "the view of this release and fiscal start month " + fmt.Sprint(cfg.withDefaults().FiscalStartMonth) + ": run usagepipe migrate"}, nil
	}
	return nil, fmt.Errorf("schema: no reader view %s", name)
}
