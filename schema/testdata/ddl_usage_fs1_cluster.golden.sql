-- The database that holds every usagepipe object. Created first, by every
-- migrate run (IF NOT EXISTS: a no-op once it exists).
CREATE DATABASE IF NOT EXISTS usage ON CLUSTER 'usagepipe_test';

-- Migration bookkeeping: an append-only log, one row per applied migration
-- (checksum: sha256 of its statements) or (re)created view (checksum: the
-- view's marker; definition: the server's CREATE query; migrate decides
-- about views from system.tables, this is only their history). The state of
-- a migration is its row with the greatest seq (argMax), so a repeated or
-- concurrent migrate that writes a second row does no harm.
-- ORDER BY (name, seq): every read groups by name and takes the greatest seq.
CREATE TABLE IF NOT EXISTS usage.schema_migrations ON CLUSTER 'usagepipe_test'
(
    name String,
    kind String,
    version UInt32,
    checksum String,
    definition String,
    applied_at DateTime('UTC'),
    seq UInt64
)
ENGINE = ReplicatedMergeTree('/clickhouse/usagepipe/usage/all/schema_migrations', '{shard}-{replica}')
ORDER BY (name, seq);

-- A write a cluster node makes through its own ZooKeeper session before it
-- reads replication state (schema.Topology.CaughtUp): a session's write is
-- applied after every commit before it, so what the node reads next is not
-- older than that. One tiny table per node (its own ZooKeeper path on a
-- cluster, nothing to fetch for anyone); on one server it is never
-- written.
-- ORDER BY (k), k always 0: merges keep one row.
CREATE TABLE IF NOT EXISTS usage.replica_barrier ON CLUSTER 'usagepipe_test'
(
    k UInt8,
    nonce UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/barrier/{shard}-{replica}', 'node')
ORDER BY (k);

-- Which accounts had an accepted event in which UTC month. Drives the rows
-- of account_quarter_rollups (first quarter of each account, and the global
-- last quarter).
-- ORDER BY (account_id, month): the whole row is the key, so a repeated
-- insert collapses into one row on merge, and readers only use min/max,
-- which duplicates do not change.
CREATE TABLE IF NOT EXISTS usage.fact_account_months ON CLUSTER 'usagepipe_test'
(
    account_id String,
    month Date
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/{shard}/fact_account_months', '{replica}')
ORDER BY (account_id, month);

-- A user's latest login/feature_used in a UTC month.
-- ORDER BY (account_id, month, user_id): one row per user and month after
-- merges, the one with the greatest last_activity_ms (the version column).
-- Readers take max(last_activity_ms) and count distinct users, so unmerged
-- duplicates and rows of writers that saw fewer events do not matter.
CREATE TABLE IF NOT EXISTS usage.fact_user_activity ON CLUSTER 'usagepipe_test'
(
    account_id String,
    month Date,
    user_id String,
    last_activity_ms UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/{shard}/fact_user_activity', '{replica}', last_activity_ms)
ORDER BY (account_id, month, user_id);

-- That a user used a feature in a UTC month.
-- ORDER BY (account_id, month, feature, user_id): the whole row is the key;
-- readers count distinct users and features, which duplicates do not change.
CREATE TABLE IF NOT EXISTS usage.fact_feature_users ON CLUSTER 'usagepipe_test'
(
    account_id String,
    month Date,
    feature String,
    user_id String
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/{shard}/fact_feature_users', '{replica}')
ORDER BY (account_id, month, feature, user_id);

-- Event counts of one (account, month, kind, feature) among the source
-- offsets [bucket * BucketSize, covered_end) of one Kafka partition.
-- kind: 1 login (feature ''), 2 feature_used.
-- ORDER BY (account_id, month, kind, feature, src_topic, src_partition,
-- bucket): one row per offset bucket; a row is a pure function of the
-- offsets it covers, so the row with the greatest covered_end (the version
-- column) counts every event of the bucket that any writer saw. Readers take
-- argMax(events, covered_end) per key, then sum over buckets.
CREATE TABLE IF NOT EXISTS usage.fact_event_counts ON CLUSTER 'usagepipe_test'
(
    account_id String,
    month Date,
    kind UInt8,
    feature String,
    src_topic String,
    src_partition Int32,
    bucket UInt64,
    covered_end UInt64,
    events UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/{shard}/fact_event_counts', '{replica}', covered_end)
ORDER BY (account_id, month, kind, feature, src_topic, src_partition, bucket);

-- The latest seat_assigned/seat_unassigned of (account, user) in a UTC month
-- as one writer saw it (assigned: 1 assigned, 0 unassigned).
-- ORDER BY (account_id, user_id, month, occurred_ms, event_id): the key names
-- one event, so repeats collapse; rows of different events all stay and
-- readers take argMax(assigned, (occurred_ms, event_id)), the latest event
-- with ties broken by the greater event_id.
CREATE TABLE IF NOT EXISTS usage.fact_seat_events ON CLUSTER 'usagepipe_test'
(
    account_id String,
    user_id String,
    month Date,
    occurred_ms UInt64,
    event_id String,
    assigned UInt8
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/{shard}/fact_seat_events', '{replica}')
ORDER BY (account_id, user_id, month, occurred_ms, event_id);

-- The latest seats_purchased of an account in a UTC month as one writer saw
-- it.
-- ORDER BY (account_id, month, occurred_ms, event_id): the key names one
-- event, so repeats collapse; readers take argMax(seats, (occurred_ms,
-- event_id)) over all rows up to a quarter's end.
CREATE TABLE IF NOT EXISTS usage.fact_seat_purchases ON CLUSTER 'usagepipe_test'
(
    account_id String,
    month Date,
    occurred_ms UInt64,
    event_id String,
    seats UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/{shard}/fact_seat_purchases', '{replica}')
ORDER BY (account_id, month, occurred_ms, event_id);

-- How far each partition of each topic incarnation is durably in the fact
-- tables: every record of (topic, topic_id, partition) below next_offset
-- has its facts written. A flush writes these rows after every fact table,
-- so a row is true when it lands; the position of a partition is the
-- greatest next_offset (rows of replays and zombies only repeat or trail
-- it). dedup_from_ms is where the duplicate filter's replay starts (record
-- time). Kafka's committed offsets are not trusted for this: they expire,
-- are deleted with the group, and restart with a re-created topic.
-- ORDER BY (topic, topic_id, partition): read per topic; the version column
-- keeps the greatest position after merges.
CREATE TABLE IF NOT EXISTS usage.ingest_progress ON CLUSTER 'usagepipe_test'
(
    topic String,
    topic_id String,
    partition Int32,
    next_offset UInt64,
    dedup_from_ms Int64,
    written_at DateTime('UTC')
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/all/ingest_progress', '{shard}-{replica}', next_offset)
ORDER BY (topic, topic_id, partition);

-- Every Kafka topic ID seen under a topic name. The first incarnation (least
-- first_seen_ms, then topic_id) writes its counts as src_topic = topic, as
-- releases before topic IDs did; every later one (the topic was deleted and
-- re-created) as topic#topic_id, so that their offsets, which restart at 0,
-- never fall into the same count bucket.
-- ORDER BY (topic, topic_id): read per topic name; repeats are harmless
-- (min(first_seen_ms) per ID).
CREATE TABLE IF NOT EXISTS usage.topic_incarnations ON CLUSTER 'usagepipe_test'
(
    topic String,
    topic_id String,
    first_seen_ms UInt64
)
ENGINE = ReplicatedMergeTree('/clickhouse/usagepipe/usage/all/topic_incarnations', '{shard}-{replica}')
ORDER BY (topic, topic_id);

-- Served rollups (contract section 4, "Reading is cheap"): one computed row
-- per (fiscal start month, account, quarter) and version. A recompute
-- (schema/served.go) INSERTs rows computed from the facts by
-- compute_rollups.sql; version = S * 2^32 + a random tie-break, S being the
-- server clock (seconds) read before the INSERT, updated_at = S. The view
-- account_quarter_rollups reads FINAL: the greatest version of each key.
-- fy keeps the rows of two fiscal calendars apart (see docs/design.md,
-- "Served rollups").
-- ORDER BY (fy, account_id, quarter_start): the row's key; ReplacingMergeTree
-- keeps its greatest version on merge.
CREATE TABLE IF NOT EXISTS usage.rollups_served ON CLUSTER 'usagepipe_test'
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/{shard}/rollups_served', '{replica}', version)
ORDER BY (fy, account_id, quarter_start);

-- Served feature rows: one computed row per (fiscal start month, account,
-- quarter, feature) and version, written by the same recompute as
-- rollups_served (features first, then rollups: a rollup row of version S
-- vouches that the feature rows of S landed). The view
-- account_quarter_features reads FINAL.
-- ORDER BY (fy, account_id, quarter_start, feature): the row's key.
CREATE TABLE IF NOT EXISTS usage.features_served ON CLUSTER 'usagepipe_test'
(
    fy UInt8,
    account_id String,
    quarter_start Date,
    quarter_end Date,
    quarter String,
    feature String,
    active_users UInt64,
    events UInt64,
    updated_at DateTime('UTC'),
    version UInt64
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/{shard}/features_served', '{replica}', version)
ORDER BY (fy, account_id, quarter_start, feature);

-- What is to be recomputed: every flush writes, after its facts and before
-- its progress row, one row per (account, month) it wrote facts for;
-- marked_at is the server clock when the row landed. A mark is satisfied
-- once the account has served rows for every quarter from the month's
-- quarter through the last quarter, each with updated_at > marked_at (the
-- sweep in schema/served.go checks; docs/design.md, "Served rollups").
-- ORDER BY (account_id, month): ReplacingMergeTree keeps the latest mark.
CREATE TABLE IF NOT EXISTS usage.rollup_marks ON CLUSTER 'usagepipe_test'
(
    account_id String,
    month Date,
    marked_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/{shard}/rollup_marks', '{replica}', marked_at)
ORDER BY (account_id, month);

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
CREATE TABLE IF NOT EXISTS usage.served_rollups ON CLUSTER 'usagepipe_test'
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/{shard}/served_rollups', '{replica}', version)
ORDER BY (fy, account_id, quarter_start)
SETTINGS index_granularity = 1024;

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
CREATE TABLE IF NOT EXISTS usage.served_feature_sets ON CLUSTER 'usagepipe_test'
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
ENGINE = ReplicatedReplacingMergeTree('/clickhouse/usagepipe/usage/{shard}/served_feature_sets', '{replica}', version)
ORDER BY (fy, account_id, quarter_start)
SETTINGS index_granularity = 1024;

-- The duplicate filter's archive (docs/design.md, "Durable event IDs"):
-- the Kafka offset, timestamp and event_id of every valid record a flush
-- wrote facts for (counted or itself a duplicate), so that copies of
-- records Kafka's retention deleted are still recognised (contract
-- section 2). A flush writes, after its facts and before its progress
-- rows, one row per partition and hour of record time it read: that
-- hour's n records, offsets ascending, off_lo and off_hi their least and
-- greatest offset, encoded in records as, per record, uvarint(offset −
-- previous offset, the first relative to off_lo), uvarint(timestamp −
-- hour), uvarint(length of the event ID) and the event ID
-- (schema/archive.go: one string per row is cheaper to write than arrays).
-- Rows of replays and zombies repeat the same records, maybe cut at other
-- offsets, or miss some (a replay reset past records retention deleted):
-- readers take the union, and no merge may drop a row (MergeTree, not
-- ReplacingMergeTree: two rows with the same key need not hold the same
-- records).
-- hour is the start of the record time's hour (epoch ms): a band of old
-- time reads its own hours even where flushes mixed it with live traffic.
-- ORDER BY (topic, topic_id, partition, hour, off_lo, off_hi): read per
-- partition, band of hours and offset range. Not partitioned: one flush
-- of an import spans any number of months, and current servers refuse an
-- INSERT block into more than 100 partitions. Never delete rows of this
-- table: copies of the records they held would count again, unreported.
CREATE TABLE IF NOT EXISTS usage.dedup_ids ON CLUSTER 'usagepipe_test'
(
    topic String,
    topic_id String,
    partition Int32,
    hour Int64,
    off_lo UInt64,
    off_hi UInt64,
    n UInt32,
    records String
)
ENGINE = ReplicatedMergeTree('/clickhouse/usagepipe/usage/all/dedup_ids', '{shard}-{replica}')
ORDER BY (topic, topic_id, partition, hour, off_lo, off_hi);

-- From which offset the archive (dedup_ids) holds every valid record the
-- partition's flushes wrote facts for, up to next_offset; carried by every
-- progress row of a release that archives. -1 (rows of releases before the
-- archive, or of one rolled back to): nothing is claimed. Migrate runs
-- this only where the column is missing (18.16 has no ADD COLUMN IF NOT
-- EXISTS).
ALTER TABLE usage.ingest_progress ADD COLUMN ids_from Int64 DEFAULT -1;

CREATE TABLE IF NOT EXISTS usage.served_rollups_all ON CLUSTER 'usagepipe_test' AS usage.served_rollups
ENGINE = Distributed('usagepipe_test', 'usage', 'served_rollups');

CREATE TABLE IF NOT EXISTS usage.served_feature_sets_all ON CLUSTER 'usagepipe_test' AS usage.served_feature_sets
ENGINE = Distributed('usagepipe_test', 'usage', 'served_feature_sets');

-- account_quarter_rollups (contract section 4): one row per
-- (account_id, quarter_start), read from served_rollups. FINAL keeps the
-- greatest version of each key, so a plain SELECT sees exactly one row
-- while older versions still wait for a merge; the cost is that of the
-- served rows, not of the history of facts. Filters on the key columns
-- reach the primary key on current ClickHouse (predicate push-down).
-- Fiscal year start month: 1 (rows of other fiscal
-- calendars stay in the table, unread). The table alias ends in a hash of
-- this rendered statement: migrate finds it in system.tables to know the
-- view is this version. updated_at is never before 0, the
-- server second at which migrate installed this view (readers switched to
-- this calendar's rows), so that an updated_at poll sees every row after
-- a change of fiscal calendar (docs/design.md, "updated_at across a
-- calendar switch").
CREATE VIEW usage.account_quarter_rollups ON CLUSTER 'usagepipe_test' AS
SELECT
    account_id,
    quarter_start,
    quarter_end,
    quarter,
    seats_purchased,
    seats_assigned,
    seat_utilization,
    active_users,
    active_assigned_users,
    activation_rate,
    logins,
    feature_events,
    features_used,
    last_activity_at,
    if(updated_at < toDateTime(0, 'UTC'), toDateTime(0, 'UTC'), updated_at) AS updated_at
FROM usage.served_rollups_all AS served_v664c510ea1ce7407 FINAL
WHERE fy = 1;

-- account_quarter_features (contract section 4): one row per
-- (account_id, quarter_start, feature) with at least one event: the greatest
-- version of each (account, quarter)'s feature set, read from
-- served_feature_sets FINAL and unfolded by ARRAY JOIN (see
-- account_quarter_rollups.sql and docs/design.md, "Feature sets").
-- Fiscal year start month: 1. The table alias carries
-- a hash of this statement.
CREATE VIEW usage.account_quarter_features ON CLUSTER 'usagepipe_test' AS
SELECT
    account_id,
    quarter_start,
    quarter_end,
    quarter,
    feature,
    active_users,
    events
FROM usage.served_feature_sets_all AS served_vdd2dbe8581c6bc9f FINAL
ARRAY JOIN features AS feature, active_users, events
WHERE fy = 1;
