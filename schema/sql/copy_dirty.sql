-- copy_dirty: "served rows of quarters from from_quarter on landed at or
-- before at" (server clock), written after each recompute landed, on
-- servers whose readers are tables (schema/copy.go). ReplacingMergeTree
-- keeps the latest per from_quarter.
CREATE TABLE IF NOT EXISTS {{.DB}}.copy_dirty
(
    from_quarter Date,
    at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree(at)
ORDER BY from_quarter
