-- From which offset the archive (dedup_ids) holds every valid record the
-- partition's flushes wrote facts for, up to next_offset; carried by every
-- progress row of a release that archives. -1 (rows of releases before the
-- archive, or of one rolled back to): nothing is claimed. Migrate runs
-- this only where the column is missing (18.16 has no ADD COLUMN IF NOT
-- EXISTS).
ALTER TABLE {{.DB}}.ingest_progress ADD COLUMN ids_from Int64 DEFAULT -1
