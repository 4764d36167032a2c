-- How far each partition of each topic incarnation is durably in the fact
-- tables: every record of (topic, topic_id, partition) below next_offset
-- has its facts written. A flush writes these rows after every fact table,
-- so a row is true when it lands; the position of a partition is the
-- greatest next_offset (rows of replays and zombies only repeat or trail
-- it). dedup_from_ms is where the duplicate filter's replay starts (record
-- time). Kafka's committed offsets are not trusted for this: they expire,
-- are deleted with the group, and restart with a re-created topic.
-- ORDER BY (topic, topic_id, partition): read per topic; the version column
-- keeps the greatest position after merges.
CREATE TABLE IF NOT EXISTS {{.DB}}.ingest_progress
(
    topic String,
    topic_id String,
    partition Int32,
    next_offset UInt64,
    dedup_from_ms Int64,
    written_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(next_offset)
ORDER BY (topic, topic_id, partition)
