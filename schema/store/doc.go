// Package store is usagepipe's ClickHouse writer: it writes the facts of a
// flush (schema.Facts) to the fact tables and reads the rollup views back.
//
// Every fact is idempotent (see schema's README), so a Write may be
// retried, repeated after a crash, or overlap another instance's Write for
// the same offsets without changing what the views return. Commit Kafka
// offsets only after Write has returned nil for the facts they cover.
//
// Concurrency: a Store's methods are safe for concurrent use; each Write
// uses its own connection from the driver's pool.
//
// Metrics (registered on the Registerer given to Open):
//
//	usagepipe_clickhouse_rows_written_total{table}  fact rows ClickHouse acknowledged
//
// Written for ClickHouse 18.16 and current releases: batch INSERTs with
// explicit column lists over the native protocol, one column appended whole
// per call, in blocks of BlockRows rows within one INSERT per table. Rows
// are written in the order given; aggregate.DrainAll gives them in each
// table's ORDER BY order, which ClickHouse inserts without sorting.
package store
