-- copy_installs: "the reader tables' partition of quarter_start holds a
-- snapshot of the served rows taken after second snapshot" (schema/copy.go),
-- written after each install. ReplacingMergeTree keeps the latest.
CREATE TABLE IF NOT EXISTS {{.DB}}.copy_installs
(
    quarter_start Date,
    snapshot DateTime('UTC'),
    holder String
)
ENGINE = ReplacingMergeTree(snapshot)
ORDER BY quarter_start
