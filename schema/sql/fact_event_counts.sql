-- Event counts of one (account, month, kind, feature) among the source
-- offsets [bucket * BucketSize, covered_end) of one Kafka partition.
-- kind: 1 login (feature ''), 2 feature_used.
-- ORDER BY (account_id, month, kind, feature, src_topic, src_partition,
-- bucket): one row per offset bucket; a row is a pure function of the
-- offsets it covers, so the row with the greatest covered_end (the version
-- column) counts every event of the bucket that any writer saw. Readers take
-- argMax(events, covered_end) per key, then sum over buckets.
CREATE TABLE IF NOT EXISTS {{.DB}}.fact_event_counts
(
    account_id String,
    month Date,
    kind UInt8,
    feature String,
    src_topic String,
    src_partition Int32,
    bucket UInt64,
    covered_end UInt64,
    events UInt64
)
ENGINE = ReplacingMergeTree(covered_end)
ORDER BY (account_id, month, kind, feature, src_topic, src_partition, bucket)
