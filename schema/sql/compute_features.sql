-- The feature rows (contract section 4) of the accounts the filter
-- selects, for quarters from {{.FromQ}} on, computed from the facts
-- (UNION ALL + GROUP BY, no JOIN, no FINAL, every UNION ALL column named in
-- every branch: see compute_rollups.sql). A recompute INSERTs them into
-- served_feature_sets, grouped into one set per account and quarter.
-- Fiscal year start month: {{.FiscalStartMonth}}.
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
        WHERE {{.Accounts}} AND month >= {{.FromDate}}
        GROUP BY account_id, qi, feature

        UNION ALL

        -- feature_used events: the latest row of each offset bucket.
        SELECT account_id, {{qi "month"}} AS qi, feature, toUInt64(0) AS v_users, toUInt64(sum(n)) AS v_events
        FROM
        (
            SELECT account_id, month, feature, src_topic, src_partition, bucket, argMax(events, covered_end) AS n
            FROM {{.DB}}.fact_event_counts
            WHERE kind = 2 AND {{.Accounts}} AND month >= {{.FromDate}}
            GROUP BY account_id, month, feature, src_topic, src_partition, bucket
        ) AS buckets
        GROUP BY account_id, qi, feature
    ) AS parts
    GROUP BY account_id, qi, feature
    HAVING events > 0 AND qi >= {{.FromQ}}
) AS feature_quarters
