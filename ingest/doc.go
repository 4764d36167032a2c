// Package ingest consumes the events topic: it decodes and validates every
// record (ingest/decode), sends rejected ones to the dead-letter topic,
// drops duplicates (ingest/dedup), aggregates the rest (aggregate) and
// writes the resulting facts to ClickHouse, committing Kafka offsets only
// after ClickHouse (and the dead-letter topic) acknowledged what they cover.
//
// # Exactly-once results
//
// Writes are idempotent (see package aggregate), so the consumer is
// at-least-once on the wire and exactly-once in the rollups:
//   - Progress lives in ClickHouse (assign.go): every flush writes, after
//     its facts, the next offset of each partition it advanced
//     (ingest_progress, per topic incarnation). On assignment a partition
//     resumes there, restores its open count bucket from fact_event_counts
//     (no recount from Kafka: retention may have deleted it), and is
//     rewound only to the duplicate filter's floor (dedup_from_ms) to fill
//     the filter. Group commits follow for lag tools.
//   - A record is dropped as a duplicate only when an earlier valid copy
//     of the same partition is within the window (any timestamp order,
//     contract section 2): that copy is either below the durable position
//     or read earlier in this run and flushed before any commit covering
//     either. When a record's window reaches time the filter no longer
//     holds, the part of the partition it needs is re-read first by a
//     direct reader (recover.go); past Config.DedupMemory older hours move
//     to an on-disk store (ingest/dedup).
//   - Transactions: read_committed; markers advance the position. Aborted
//     records the client drops just below an open transaction are found
//     by a fetch of the consumer's own (aborted.go), so the position
//     reaches the last stable offset without waiting for that transaction.
//   - Revoke: flush and commit, then let go. Loss: drop state, commit
//     nothing. A zombie's late writes are harmless; its commit is fenced by
//     the group generation.
//   - ClickHouse down: the flusher retries with backoff; the poll loop stops
//     polling once the next flush is due, so memory stays bounded by one
//     flush interval plus the client's fetch buffer; /readyz turns 503.
//
// # Hot path
//
// Per record: decode and validate, dedup check, aggregate. Each record is
// decoded one record ahead of its dedup check and aggregation, and its dedup
// slot and account state are prefetched then, so their cache misses overlap
// the previous record's work (the state of a backfill is far larger than
// the CPU caches). With --until-caught-up, an instance that has read every
// target offset itself flushes and commits at once.
//
// # Concurrency
//
// Run owns five goroutines: the poll loop (the caller's), the flusher, a
// ClickHouse pinger, the progress reporter (progress.go) and the serve loop
// (serve.go), which recomputes the served rollups of the accounts each
// flush wrote, off the ingest path, and sweeps for stale ones; the serve
// loop owns the live loop (live.go), which writes the live quarter's rows
// (for 10 minutes after a rollover also the quarter before's) from a
// cache of the accounts' facts after each flush while the consumer is
// caught up, and the copy lease's heartbeat; all stop
// before Run returns (with --until-caught-up, after the served rows are
// complete). Partitions of one poll are spread over per-worker goroutines
// (Config.Workers, each with its own Aggregator) that the poll loop starts
// and waits for. Rebalance callbacks run on the Kafka client's goroutine
// and take the same mutex as the poll loop; rebalances are blocked while a
// poll is being processed.
//
// # Progress
//
// While a run has a backlog it logs a "progress" line every
// Config.ProgressInterval (10s): records_done, rate_per_s, records_left (lag
// to the last stable offset of the owned partitions) and eta; every Run ends
// with a "run summary" line: records, accepted, rejected, duplicates,
// wall_time, rate_per_s. Both read existing counters: nothing per record.
//
// # Metrics
//
// usagepipe_records_consumed_total, usagepipe_events_accepted_total{type},
// usagepipe_events_rejected_total{reason}, usagepipe_events_duplicate_total,
// usagepipe_dlq_records_total{reason}, usagepipe_dlq_errors_total,
// usagepipe_flush_duration_seconds,
// usagepipe_flushes_total{result}, usagepipe_consumer_lag_records{partition},
// usagepipe_event_delay_seconds, usagepipe_last_flush_timestamp_seconds,
// usagepipe_ready, usagepipe_clickhouse_up, usagepipe_records_replayed_total,
// usagepipe_pending_facts, usagepipe_assigned_partitions,
// usagepipe_dedup_table_bytes, usagepipe_dedup_ids, usagepipe_dedup_disk_ids,
// usagepipe_dedup_disk_bytes, usagepipe_dedup_disk_lookups_total,
// usagepipe_dedup_recoveries_total, usagepipe_dedup_recovery_records_total,
// usagepipe_dedup_unrecoverable_total, usagepipe_dedup_records_ahead_total,
// usagepipe_records_expired_unread_total,
// usagepipe_restored_count_rows_total, usagepipe_served_delay_seconds,
// usagepipe_serve_accounts_recomputed_total, usagepipe_serve_sweeps_total,
// usagepipe_serve_stale_accounts_total, usagepipe_serve_errors_total,
// usagepipe_serve_pending_accounts, usagepipe_serve_copy_lease,
// usagepipe_serve_copy_installs_total, usagepipe_serve_live_rows_total,
// usagepipe_serve_live_loads_total, usagepipe_serve_live_errors_total,
// usagepipe_serve_live_cache_bytes.
package ingest
