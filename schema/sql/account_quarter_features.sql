-- account_quarter_features (contract section 4): one row per
-- (account_id, quarter_start, feature) with at least one event, computed at
-- read time from the facts (UNION ALL + GROUP BY, no JOIN, no FINAL, every
-- UNION ALL column named in every branch: see account_quarter_rollups.sql).
-- Fiscal year start month: {{.FiscalStartMonth}}. The last alias carries a
-- hash of this statement (see account_quarter_rollups.sql).
CREATE VIEW {{.DB}}.account_quarter_features AS
SELECT
    account_id,
    {{qstart "qi"}} AS quarter_start,
    addMonths(quarter_start, 3) AS quarter_end,
    {{label "qi"}} AS quarter,
    feature,
    active_users,
    events
FROM
(
    SELECT account_id, qi, feature, max(v_users) AS active_users, sum(v_events) AS events
    FROM
    (
        -- Distinct users per feature and quarter.
        SELECT account_id, {{qi "month"}} AS qi, feature, toUInt64(uniqExact(user_id)) AS v_users, toUInt64(0) AS v_events
        FROM {{.DB}}.fact_feature_users
        GROUP BY account_id, qi, feature

        UNION ALL

        -- feature_used events: the latest row of each offset bucket.
        SELECT account_id, {{qi "month"}} AS qi, feature, toUInt64(0) AS v_users, toUInt64(sum(n)) AS v_events
        FROM
        (
            SELECT account_id, month, feature, src_topic, src_partition, bucket, argMax(events, covered_end) AS n
            FROM {{.DB}}.fact_event_counts
            WHERE kind = 2
            GROUP BY account_id, month, feature, src_topic, src_partition, bucket
        ) AS buckets
        GROUP BY account_id, qi, feature
    ) AS parts
    GROUP BY account_id, qi, feature
    HAVING events > 0
) AS feature_quarters_{{.Marker}}
