-- Which accounts had an accepted event in which UTC month. Drives the rows
-- of account_quarter_rollups (first quarter of each account, and the global
-- last quarter).
-- ORDER BY (account_id, month): the whole row is the key, so a repeated
-- insert collapses into one row on merge, and readers only use min/max,
-- which duplicates do not change.
CREATE TABLE IF NOT EXISTS {{.DB}}.fact_account_months
(
    account_id String,
    month Date
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, month)
