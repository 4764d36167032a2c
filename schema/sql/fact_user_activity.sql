-- A user's latest login/feature_used in a UTC month.
-- ORDER BY (account_id, month, user_id): one row per user and month after
-- merges, the one with the greatest last_activity_ms (the version column).
-- Readers take max(last_activity_ms) and count distinct users, so unmerged
-- duplicates and rows of writers that saw fewer events do not matter.
CREATE TABLE IF NOT EXISTS {{.DB}}.fact_user_activity
(
    account_id String,
    month Date,
    user_id String,
    last_activity_ms UInt64
)
ENGINE = ReplacingMergeTree(last_activity_ms)
ORDER BY (account_id, month, user_id)
