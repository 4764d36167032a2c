-- copy_beats: the copy lease holder's heartbeat (schema/copy.go): a
-- process without the lease takes it when the newest beat is older than
-- 30 s. ReplacingMergeTree keeps the latest per holder.
CREATE TABLE IF NOT EXISTS {{.DB}}.copy_beats
(
    holder String,
    beat DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(beat)
ORDER BY holder
