// Package schema owns usagepipe's ClickHouse objects: the fact tables the
// pipeline writes, the views analysts and scoring jobs read
// (account_quarter_rollups, account_quarter_features), and the migrations
// that create and upgrade them (usagepipe migrate).
//
// The SQL lives in sql/ (one statement per file, rendered by DDL); the
// fact rows are in facts.go, the view rows in rollup.go. Package
// schema/store writes the facts.
//
// Design, each table's engine and ORDER BY, and why writing a fact twice
// changes nothing: README.md in this folder. On a ClickHouse cluster
// (Config.Cluster) the same statements are rewritten ON CLUSTER with
// Replicated engines (cluster_ddl.go; the readers are views over
// Distributed tables of the served tables, and cluster_readers.go upgrades
// the earlier layout), and Topology (cluster.go) says which
// shard holds an account and reads a shard only on a replica that caught up
// (docs/design.md, "ClickHouse clusters"). On one server older than 20.1
// the two reader objects are tables kept by Copy (copy.go; docs/design.md,
// "Reader tables where views cannot filter").
//
// Everything here is safe for concurrent use, except that a Copy is used
// by one goroutine at a time. Migrate may run in several processes at
// once. No metrics.
package schema
