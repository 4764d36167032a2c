-- The database that holds every usagepipe object. Created first, by every
-- migrate run (IF NOT EXISTS: a no-op once it exists).
CREATE DATABASE IF NOT EXISTS usage;

-- Migration bookkeeping: an append-only log, one row per applied migration
-- (checksum: sha256 of its statements) or (re)created view (checksum: the
-- view's marker; definition: the server's CREATE query; migrate decides
-- about views from system.tables, this is only their history). The state of
-- a migration is its row with the greatest seq (argMax), so a repeated or
-- concurrent migrate that writes a second row does no harm.
-- ORDER BY (name, seq): every read groups by name and takes the greatest seq.
CREATE TABLE IF NOT EXISTS usage.schema_migrations
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
ORDER BY (name, seq);

-- Which accounts had an accepted event in which UTC month. Drives the rows
-- of account_quarter_rollups (first quarter of each account, and the global
-- last quarter).
-- ORDER BY (account_id, month): the whole row is the key, so a repeated
-- insert collapses into one row on merge, and readers only use min/max,
-- which duplicates do not change.
CREATE TABLE IF NOT EXISTS usage.fact_account_months
(
    account_id String,
    month Date
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, month);

-- A user's latest login/feature_used in a UTC month.
-- ORDER BY (account_id, month, user_id): one row per user and month after
-- merges, the one with the greatest last_activity_ms (the version column).
-- Readers take max(last_activity_ms) and count distinct users, so unmerged
-- duplicates and rows of writers that saw fewer events do not matter.
CREATE TABLE IF NOT EXISTS usage.fact_user_activity
(
    account_id String,
    month Date,
    user_id String,
    last_activity_ms UInt64
)
ENGINE = ReplacingMergeTree(last_activity_ms)
ORDER BY (account_id, month, user_id);

-- That a user used a feature in a UTC month.
-- ORDER BY (account_id, month, feature, user_id): the whole row is the key;
-- readers count distinct users and features, which duplicates do not change.
CREATE TABLE IF NOT EXISTS usage.fact_feature_users
(
    account_id String,
    month Date,
    feature String,
    user_id String
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, month, feature, user_id);

-- Event counts of one (account, month, kind, feature) among the source
-- offsets [bucket * BucketSize, covered_end) of one Kafka partition.
-- kind: 1 login (feature ''), 2 feature_used.
-- ORDER BY (account_id, month, kind, feature, src_topic, src_partition,
-- bucket): one row per offset bucket; a row is a pure function of the
-- offsets it covers, so the row with the greatest covered_end (the version
-- column) counts every event of the bucket that any writer saw. Readers take
-- argMax(events, covered_end) per key, then sum over buckets.
CREATE TABLE IF NOT EXISTS usage.fact_event_counts
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
ENGINE = ReplacingMergeTree(covered_end)
ORDER BY (account_id, month, kind, feature, src_topic, src_partition, bucket);

-- The latest seat_assigned/seat_unassigned of (account, user) in a UTC month
-- as one writer saw it (assigned: 1 assigned, 0 unassigned).
-- ORDER BY (account_id, user_id, month, occurred_ms, event_id): the key names
-- one event, so repeats collapse; rows of different events all stay and
-- readers take argMax(assigned, (occurred_ms, event_id)), the latest event
-- with ties broken by the greater event_id.
CREATE TABLE IF NOT EXISTS usage.fact_seat_events
(
    account_id String,
    user_id String,
    month Date,
    occurred_ms UInt64,
    event_id String,
    assigned UInt8
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, user_id, month, occurred_ms, event_id);

-- The latest seats_purchased of an account in a UTC month as one writer saw
-- it.
-- ORDER BY (account_id, month, occurred_ms, event_id): the key names one
-- event, so repeats collapse; readers take argMax(seats, (occurred_ms,
-- event_id)) over all rows up to a quarter's end.
CREATE TABLE IF NOT EXISTS usage.fact_seat_purchases
(
    account_id String,
    month Date,
    occurred_ms UInt64,
    event_id String,
    seats UInt64
)
ENGINE = ReplacingMergeTree
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
CREATE TABLE IF NOT EXISTS usage.ingest_progress
(
    topic String,
    topic_id String,
    partition Int32,
    next_offset UInt64,
    dedup_from_ms Int64,
    written_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(next_offset)
ORDER BY (topic, topic_id, partition);

-- Every Kafka topic ID seen under a topic name. The first incarnation (least
-- first_seen_ms, then topic_id) writes its counts as src_topic = topic, as
-- releases before topic IDs did; every later one (the topic was deleted and
-- re-created) as topic#topic_id, so that their offsets, which restart at 0,
-- never fall into the same count bucket.
-- ORDER BY (topic, topic_id): read per topic name; repeats are harmless
-- (min(first_seen_ms) per ID).
CREATE TABLE IF NOT EXISTS usage.topic_incarnations
(
    topic String,
    topic_id String,
    first_seen_ms UInt64
)
ENGINE = MergeTree
ORDER BY (topic, topic_id);

-- account_quarter_rollups (contract section 4): one row per
-- (account_id, quarter_start), computed at read time from the facts.
-- Every source becomes rows of (account_id, qi, value columns) with qi the
-- month index of the fiscal quarter's first month; UNION ALL + GROUP BY
-- (account_id, qi) with max() merges them without JOINs, and HAVING keeps
-- the quarters from each account's first quarter through the global last
-- quarter (v_in_range). Every fact is read through max/argMax/uniqExact or
-- GROUP BY, so duplicates and unmerged ReplacingMergeTree rows change
-- nothing and no FINAL is needed.
-- Written for ClickHouse 18.16 and current releases alike: no WITH, no
-- JOIN; every UNION ALL branch names every column the same (18.16 prunes
-- unused UNION ALL columns by name, and mixes up unnamed ones); no lambda
-- captures a column of its FROM subquery (18.16 drops columns used only
-- inside a lambda), hence arrayPopFront/arrayPushBack to pair each
-- quarter with the next one.
-- Fiscal year start month: 1.
-- The outermost subquery's alias ends in a hash of this rendered statement:
-- migrate finds it in system.tables to know the view is this version.
CREATE VIEW usage.account_quarter_rollups AS
SELECT
    account_id,
    addMonths(toDate('2000-01-01'), qi - 24000) AS quarter_start,
    addMonths(quarter_start, 3) AS quarter_end,
    concat(toString(intDiv(qi - qi % 12 + 11, 12)), '-Q', toString(intDiv(qi % 12, 3) + 1)) AS quarter,
    seats_purchased,
    seats_assigned,
    if(seats_purchased = 0, 0., seats_assigned / seats_purchased) AS seat_utilization,
    active_users,
    active_assigned_users,
    if(seats_assigned = 0, 0., active_assigned_users / seats_assigned) AS activation_rate,
    logins,
    feature_events,
    features_used,
    toDateTime(intDiv(last_activity_ms, 1000), 'UTC') AS last_activity_at
FROM
(
    SELECT
        account_id,
        qi,
        max(v_in_range) AS in_range,
        max(v_seats_purchased) AS seats_purchased,
        max(v_seats_assigned) AS seats_assigned,
        max(v_active_users) AS active_users,
        max(v_active_assigned_users) AS active_assigned_users,
        max(v_logins) AS logins,
        max(v_feature_events) AS feature_events,
        max(v_features_used) AS features_used,
        max(v_last_activity_ms) AS last_activity_ms
    FROM
    (
        -- The account × quarter grid: each account's first quarter through
        -- the global last quarter.
        SELECT
            account_id,
            toInt32(first_q + 3 * arrayJoin(range(toUInt32(greatest(intDiv(last_q - first_q, 3) + 1, 0))))) AS qi,
            toUInt8(1) AS v_in_range,
            toUInt64(0) AS v_seats_purchased,
            toUInt64(0) AS v_seats_assigned,
            toUInt64(0) AS v_active_users,
            toUInt64(0) AS v_active_assigned_users,
            toUInt64(0) AS v_logins,
            toUInt64(0) AS v_feature_events,
            toUInt64(0) AS v_features_used,
            toUInt64(0) AS v_last_activity_ms
        FROM
        (
            SELECT account_id, toInt32((toInt32(toYear(min(month))) * 12 + toInt32(toMonth(min(month))) - 1) - (toInt32(toYear(min(month))) * 12 + toInt32(toMonth(min(month))) - 1) % 3) AS first_q, (SELECT toInt32((toInt32(toYear(max(month))) * 12 + toInt32(toMonth(max(month))) - 1) - (toInt32(toYear(max(month))) * 12 + toInt32(toMonth(max(month))) - 1) % 3) FROM usage.fact_account_months) AS last_q
            FROM usage.fact_account_months
            GROUP BY account_id
        ) AS grid

        UNION ALL

        -- seats_purchased as of each quarter's end: the latest purchase of
        -- each quarter holds from that quarter until the next quarter with a
        -- purchase (or the global last quarter).
        SELECT
            account_id,
            toInt32(tupleElement(seg, 1) + 3 * arrayJoin(range(toUInt32(greatest(intDiv(tupleElement(seg, 2) - tupleElement(seg, 1), 3), 0))))) AS qi,
            toUInt8(0) AS v_in_range,
            toUInt64(tupleElement(seg, 3)) AS v_seats_purchased,
            toUInt64(0) AS v_seats_assigned,
            toUInt64(0) AS v_active_users,
            toUInt64(0) AS v_active_assigned_users,
            toUInt64(0) AS v_logins,
            toUInt64(0) AS v_feature_events,
            toUInt64(0) AS v_features_used,
            toUInt64(0) AS v_last_activity_ms
        FROM
        (
            SELECT
                account_id,
                arrayJoin(arrayMap((x, next_q) -> (tupleElement(x, 1), next_q, tupleElement(x, 2)), s, arrayPushBack(arrayPopFront(arrayMap(x -> tupleElement(x, 1), s)), toInt32(last_q + 3)))) AS seg
            FROM
            (
                SELECT account_id, arraySort(groupArray((pq, ps))) AS s, (SELECT toInt32((toInt32(toYear(max(month))) * 12 + toInt32(toMonth(max(month))) - 1) - (toInt32(toYear(max(month))) * 12 + toInt32(toMonth(max(month))) - 1) % 3) FROM usage.fact_account_months) AS last_q
                FROM
                (
                    SELECT account_id, toInt32((toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) - (toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) % 3) AS pq, argMax(seats, (occurred_ms, event_id)) AS ps
                    FROM usage.fact_seat_purchases
                    GROUP BY account_id, pq
                ) AS purchase_quarters
                GROUP BY account_id
            ) AS purchase_history
        ) AS purchase_segments

        UNION ALL

        -- Per-user figures, summed per account and quarter.
        SELECT
            account_id,
            qi,
            toUInt8(0) AS v_in_range,
            toUInt64(0) AS v_seats_purchased,
            toUInt64(sum(u_assigned)) AS v_seats_assigned,
            toUInt64(sum(u_active)) AS v_active_users,
            toUInt64(sum(u_assigned * u_active)) AS v_active_assigned_users,
            toUInt64(0) AS v_logins,
            toUInt64(0) AS v_feature_events,
            toUInt64(0) AS v_features_used,
            toUInt64(max(u_last_ms)) AS v_last_activity_ms
        FROM
        (
            SELECT account_id, user_id, qi, max(w_assigned) AS u_assigned, max(w_active) AS u_active, max(w_last_ms) AS u_last_ms
            FROM
            (
                -- Quarters at whose end the user holds a seat: each quarter's
                -- latest seat event holds until the user's next quarter with a
                -- seat event (or the global last quarter); assigned ones count.
                SELECT
                    account_id,
                    user_id,
                    toInt32(tupleElement(seg, 1) + 3 * arrayJoin(range(toUInt32(greatest(intDiv(tupleElement(seg, 2) - tupleElement(seg, 1), 3), 0))))) AS qi,
                    toUInt8(1) AS w_assigned,
                    toUInt8(0) AS w_active,
                    toUInt64(0) AS w_last_ms
                FROM
                (
                    SELECT
                        account_id,
                        user_id,
                        arrayJoin(arrayFilter(x -> tupleElement(x, 3) = 1, arrayMap((x, next_q) -> (tupleElement(x, 1), next_q, tupleElement(x, 2)), s, arrayPushBack(arrayPopFront(arrayMap(x -> tupleElement(x, 1), s)), toInt32(last_q + 3))))) AS seg
                    FROM
                    (
                        SELECT account_id, user_id, arraySort(groupArray((sq, st))) AS s, (SELECT toInt32((toInt32(toYear(max(month))) * 12 + toInt32(toMonth(max(month))) - 1) - (toInt32(toYear(max(month))) * 12 + toInt32(toMonth(max(month))) - 1) % 3) FROM usage.fact_account_months) AS last_q
                        FROM
                        (
                            SELECT account_id, user_id, toInt32((toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) - (toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) % 3) AS sq, argMax(assigned, (occurred_ms, event_id)) AS st
                            FROM usage.fact_seat_events
                            GROUP BY account_id, user_id, sq
                        ) AS seat_quarters
                        GROUP BY account_id, user_id
                    ) AS seat_history
                ) AS seat_segments

                UNION ALL

                -- Users active in the quarter.
                SELECT account_id, user_id, toInt32((toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) - (toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) % 3) AS qi, toUInt8(0) AS w_assigned, toUInt8(1) AS w_active, last_activity_ms AS w_last_ms
                FROM usage.fact_user_activity
            ) AS user_rows
            GROUP BY account_id, user_id, qi
        ) AS user_quarters
        GROUP BY account_id, qi

        UNION ALL

        -- logins and feature_events: the latest row of each offset bucket.
        SELECT
            account_id,
            toInt32((toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) - (toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) % 3) AS qi,
            toUInt8(0) AS v_in_range,
            toUInt64(0) AS v_seats_purchased,
            toUInt64(0) AS v_seats_assigned,
            toUInt64(0) AS v_active_users,
            toUInt64(0) AS v_active_assigned_users,
            toUInt64(sumIf(n, kind = 1)) AS v_logins,
            toUInt64(sumIf(n, kind = 2)) AS v_feature_events,
            toUInt64(0) AS v_features_used,
            toUInt64(0) AS v_last_activity_ms
        FROM
        (
            SELECT account_id, month, kind, feature, src_topic, src_partition, bucket, argMax(events, covered_end) AS n
            FROM usage.fact_event_counts
            GROUP BY account_id, month, kind, feature, src_topic, src_partition, bucket
        ) AS buckets
        GROUP BY account_id, qi

        UNION ALL

        -- features_used: distinct features of the quarter.
        SELECT
            account_id,
            toInt32((toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) - (toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) % 3) AS qi,
            toUInt8(0) AS v_in_range,
            toUInt64(0) AS v_seats_purchased,
            toUInt64(0) AS v_seats_assigned,
            toUInt64(0) AS v_active_users,
            toUInt64(0) AS v_active_assigned_users,
            toUInt64(0) AS v_logins,
            toUInt64(0) AS v_feature_events,
            toUInt64(uniqExact(feature)) AS v_features_used,
            toUInt64(0) AS v_last_activity_ms
        FROM usage.fact_feature_users
        GROUP BY account_id, qi
    ) AS parts
    GROUP BY account_id, qi
    HAVING in_range = 1
) AS quarters_va16145074b0806a4;

-- account_quarter_features (contract section 4): one row per
-- (account_id, quarter_start, feature) with at least one event, computed at
-- read time from the facts (UNION ALL + GROUP BY, no JOIN, no FINAL, every
-- UNION ALL column named in every branch: see account_quarter_rollups.sql).
-- Fiscal year start month: 1. The last alias carries a
-- hash of this statement (see account_quarter_rollups.sql).
CREATE VIEW usage.account_quarter_features AS
SELECT
    account_id,
    addMonths(toDate('2000-01-01'), qi - 24000) AS quarter_start,
    addMonths(quarter_start, 3) AS quarter_end,
    concat(toString(intDiv(qi - qi % 12 + 11, 12)), '-Q', toString(intDiv(qi % 12, 3) + 1)) AS quarter,
    feature,
    active_users,
    events
FROM
(
    SELECT account_id, qi, feature, max(v_users) AS active_users, sum(v_events) AS events
    FROM
    (
        -- Distinct users per feature and quarter.
        SELECT account_id, toInt32((toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) - (toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) % 3) AS qi, feature, toUInt64(uniqExact(user_id)) AS v_users, toUInt64(0) AS v_events
        FROM usage.fact_feature_users
        GROUP BY account_id, qi, feature

        UNION ALL

        -- feature_used events: the latest row of each offset bucket.
        SELECT account_id, toInt32((toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) - (toInt32(toYear(month)) * 12 + toInt32(toMonth(month)) - 1) % 3) AS qi, feature, toUInt64(0) AS v_users, toUInt64(sum(n)) AS v_events
        FROM
        (
            SELECT account_id, month, feature, src_topic, src_partition, bucket, argMax(events, covered_end) AS n
            FROM usage.fact_event_counts
            WHERE kind = 2
            GROUP BY account_id, month, feature, src_topic, src_partition, bucket
        ) AS buckets
        GROUP BY account_id, qi, feature
    ) AS parts
    GROUP BY account_id, qi, feature
    HAVING events > 0
) AS feature_quarters_vaa90e9e4b31cd696;
