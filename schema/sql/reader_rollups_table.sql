-- account_quarter_rollups as a table (servers before 20.1, one server):
-- exactly the contract's columns, one row per key, a copy of the served
-- rows of fiscal calendar {{.FiscalStartMonth}} kept by schema/copy.go.
-- Each quarter is one partition, replaced whole (docs/design.md, "Reader
-- tables where views cannot filter"), so a plain SELECT never sees two
-- rows of a key and its filters reach the primary key.
CREATE TABLE IF NOT EXISTS {{.DB}}.account_quarter_rollups
(
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
    updated_at DateTime('UTC')
)
ENGINE = MergeTree
PARTITION BY quarter_start
ORDER BY (account_id, quarter_start)
-- A replaced part is deleted at the next cleanup (seconds), not after the
-- default 8 minutes: a restart before that loads it again beside its
-- replacement (docs/design.md).
SETTINGS old_parts_lifetime = 1
