-- Served rollups (contract section 4, "Reading is cheap"): one computed row
-- per (fiscal start month, account, quarter) and version. A recompute
-- (schema/served.go) INSERTs rows computed from the facts by
-- compute_rollups.sql; version = S * 2^32 + a random tie-break, S being the
-- server clock (seconds) read before the INSERT, updated_at = S. The view
-- account_quarter_rollups reads FINAL: the greatest version of each key.
-- fy keeps the rows of two fiscal calendars apart (see docs/design.md,
-- "Served rollups").
-- ORDER BY (fy, account_id, quarter_start): the row's key; ReplacingMergeTree
-- keeps its greatest version on merge. Replaces rollups_served of migration
-- 0003 (docs/design.md, "Feature sets"): a writer of that layout still
-- running writes where nothing reads, so its marks stay for the sweep.
-- A granule of 1024 rows: a one-account read through FINAL reads one
-- granule of every unmerged part.
CREATE TABLE IF NOT EXISTS {{.DB}}.served_rollups
(
    fy UInt8,
    account_id String,
    quarter_start Date,
    quarter_end Date,
    quarter String,
    seats_purchased UInt64,
    seats_assigned UInt64,
    seat_utilization Float64,
    active_users UInt64,
    active_assigned_users UInt64,
    activation_rate Float64,
    logins UInt64,
    feature_events UInt64,
    features_used UInt64,
    last_activity_at DateTime('UTC'),
    updated_at DateTime('UTC'),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (fy, account_id, quarter_start)
SETTINGS index_granularity = 1024
