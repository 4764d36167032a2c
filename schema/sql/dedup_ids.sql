-- The duplicate filter's archive (docs/design.md, "Durable event IDs"):
-- the Kafka offset, timestamp and event_id of every valid record a flush
-- wrote facts for (counted or itself a duplicate), so that copies of
-- records Kafka's retention deleted are still recognised (contract
-- section 2). A flush writes, after its facts and before its progress
-- rows, one row per partition and hour of record time it read: that
-- hour's n records, offsets ascending, off_lo and off_hi their least and
-- greatest offset, encoded in records as, per record, uvarint(offset −
-- previous offset, the first relative to off_lo), uvarint(timestamp −
-- hour), uvarint(length of the event ID) and the event ID
-- (schema/archive.go: one string per row is cheaper to write than arrays).
-- Rows of replays and zombies repeat the same records, maybe cut at other
-- offsets, or miss some (a replay reset past records retention deleted):
-- readers take the union, and no merge may drop a row (MergeTree, not
-- ReplacingMergeTree: two rows with the same key need not hold the same
-- records).
-- hour is the start of the record time's hour (epoch ms): a band of old
-- time reads its own hours even where flushes mixed it with live traffic.
-- ORDER BY (topic, topic_id, partition, hour, off_lo, off_hi): read per
-- partition, band of hours and offset range. Not partitioned: one flush
-- of an import spans any number of months, and current servers refuse an
-- INSERT block into more than 100 partitions. Never delete rows of this
-- table: copies of the records they held would count again, unreported.
CREATE TABLE IF NOT EXISTS {{.DB}}.dedup_ids
(
    topic String,
    topic_id String,
    partition Int32,
    hour Int64,
    off_lo UInt64,
    off_hi UInt64,
    n UInt32,
    records String
)
ENGINE = MergeTree
ORDER BY (topic, topic_id, partition, hour, off_lo, off_hi)
