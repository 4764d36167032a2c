package schema

import (
	"fmt"
	"regexp"
	"strings"
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

// LocalView is the name of the per-node view under reader object name on
// a cluster, where name itself is a Distributed table over these views.
func LocalView(name string) string { return name + "_local" }

var (
	createDBRE    = regexp.MustCompile(`CREATE DATABASE IF NOT EXISTS \w+`)
	createTableRE = regexp.MustCompile(`CREATE TABLE IF NOT EXISTS (\w+)\.(\w+)`)
	engineRE      = regexp.MustCompile(`ENGINE = (\w*MergeTree)(?:\(([^)]*)\))?`)
	createViewRE  = regexp.MustCompile(`CREATE VIEW (\w+)\.(\w+) AS`)
)

// onCluster rewrites one rendered single-server statement for cfg.Cluster.
func onCluster(cfg Config, sql string) string {
	on := " ON CLUSTER " + lit(cfg.Cluster)
	switch {
	case createDBRE.MatchString(sql):
		return createDBRE.ReplaceAllString(sql, "$0"+on)
	case createViewRE.MatchString(sql):
		return createViewRE.ReplaceAllString(sql, "CREATE VIEW $1.${2}_local"+on+" AS")
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

// distributedDDL is the Distributed table that readers query under view
// name on a cluster: the columns of the view, read from each shard's
// local view.
func distributedDDL(cfg Config, name string) string {
	cols := rollupColumns
	if name == "account_quarter_features" {
		cols = featureColumns
	}
	return fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s.%s ON CLUSTER %s\n(\n    %s\n)\nENGINE = Distributed(%s, %s, %s)",
		cfg.Database, name, lit(cfg.Cluster), strings.Join(cols, ",\n    "), lit(cfg.Cluster), lit(cfg.Database), lit(LocalView(name)))
}

var (
	rollupColumns = []string{
		"account_id String", "quarter_start Date", "quarter_end Date", "quarter String",
		"seats_purchased UInt64", "seats_assigned UInt64", "seat_utilization Float64",
		"active_users UInt64", "active_assigned_users UInt64", "activation_rate Float64",
		"logins UInt64", "feature_events UInt64", "features_used UInt64",
		"last_activity_at DateTime('UTC')", "updated_at DateTime('UTC')",
	}
	featureColumns = []string{
		"account_id String", "quarter_start Date", "quarter_end Date", "quarter String",
		"feature String", "active_users UInt64", "events UInt64",
	}
)
