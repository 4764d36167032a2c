-- What is to be recomputed: every flush writes, after its facts and before
-- its progress row, one row per (account, month) it wrote facts for;
-- marked_at is the server clock when the row landed. A mark is satisfied
-- once the account has served rows for every quarter from the month's
-- quarter through the last quarter, each with updated_at > marked_at (the
-- sweep in schema/served.go checks; docs/design.md, "Served rollups").
-- ORDER BY (account_id, month): ReplacingMergeTree keeps the latest mark.
CREATE TABLE IF NOT EXISTS {{.DB}}.rollup_marks
(
    account_id String,
    month Date,
    marked_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(marked_at)
ORDER BY (account_id, month)
