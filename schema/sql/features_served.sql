-- Served feature rows: one computed row per (fiscal start month, account,
-- quarter, feature) and version, written by the same recompute as
-- rollups_served (features first, then rollups: a rollup row of version S
-- vouches that the feature rows of S landed). The view
-- account_quarter_features reads FINAL.
-- ORDER BY (fy, account_id, quarter_start, feature): the row's key.
CREATE TABLE IF NOT EXISTS {{.DB}}.features_served
(
    fy UInt8,
    account_id String,
    quarter_start Date,
    quarter_end Date,
    quarter String,
    feature String,
    active_users UInt64,
    events UInt64,
    updated_at DateTime('UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (fy, account_id, quarter_start, feature)
