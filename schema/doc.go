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
// changes nothing: README.md in this folder.
//
// Everything here is safe for concurrent use. Migrate may run in several
// processes at once. No metrics.
package schema
