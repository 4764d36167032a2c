-- Every Kafka topic ID seen under a topic name. The first incarnation (least
-- first_seen_ms, then topic_id) writes its counts as src_topic = topic, as
-- releases before topic IDs did; every later one (the topic was deleted and
-- re-created) as topic#topic_id, so that their offsets, which restart at 0,
-- never fall into the same count bucket.
-- ORDER BY (topic, topic_id): read per topic name; repeats are harmless
-- (min(first_seen_ms) per ID).
CREATE TABLE IF NOT EXISTS {{.DB}}.topic_incarnations
(
    topic String,
    topic_id String,
    first_seen_ms UInt64
)
ENGINE = MergeTree
ORDER BY (topic, topic_id)
