-- account_quarter_features as a table (servers before 20.1, one server):
-- a copy of the served feature rows of fiscal calendar
-- {{.FiscalStartMonth}}, one partition per quarter, replaced whole (see
-- reader_rollups_table.sql).
CREATE TABLE IF NOT EXISTS {{.DB}}.account_quarter_features
(
    account_id String,
    quarter_start Date,
    quarter_end Date,
    quarter String,
    feature String,
    active_users UInt64,
    events UInt64
)
ENGINE = MergeTree
PARTITION BY quarter_start
ORDER BY (account_id, quarter_start, feature)
-- A replaced part is deleted at the next cleanup (seconds), not after the
-- default 8 minutes: a restart before that loads it again beside its
-- replacement (docs/design.md).
SETTINGS old_parts_lifetime = 1
