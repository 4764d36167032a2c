-- Migration bookkeeping: an append-only log, one row per applied migration
-- (checksum: sha256 of its statements) or (re)created view (checksum: the
-- view's marker; definition: the server's CREATE query; migrate decides
-- about views from system.tables, this is only their history). The state of
-- a migration is its row with the greatest seq (argMax), so a repeated or
-- concurrent migrate that writes a second row does no harm.
-- ORDER BY (name, seq): every read groups by name and takes the greatest seq.
CREATE TABLE IF NOT EXISTS {{.DB}}.schema_migrations
(
    name String,
    kind String,
    version UInt32,
    checksum String,
    definition String,
    applied_at DateTime('UTC'),
    seq UInt64
)
ENGINE = MergeTree
ORDER BY (name, seq)
