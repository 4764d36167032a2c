-- Served feature sets: one computed row per (fiscal start month, account,
-- quarter) and version, holding that quarter's feature rows as parallel
-- arrays (element i of features, active_users and events is one row of
-- account_quarter_features). Written by the same recompute as
-- served_rollups (features first, then rollups: a rollup row of version S
-- vouches that the feature sets of S landed). The view
-- account_quarter_features reads FINAL and ARRAY JOINs the arrays: a FINAL
-- read merges accounts x quarters rows, not one per feature (docs/design.md,
-- "Feature sets"). Replaces features_served (one row per feature).
-- ORDER BY (fy, account_id, quarter_start): the row's key. A granule of
-- 1024 sets (about 10k feature rows) keeps a one-account read small.
CREATE TABLE IF NOT EXISTS {{.DB}}.served_feature_sets
(
    fy UInt8,
    account_id String,
    quarter_start Date,
    quarter_end Date,
    quarter String,
    features Array(String),
    active_users Array(UInt64),
    events Array(UInt64),
    updated_at DateTime('UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (fy, account_id, quarter_start)
SETTINGS index_granularity = 1024
