-- The rollup rows (contract section 4) of the accounts the filter selects,
-- for quarters from {{.FromQ}} on, computed from the facts. A recompute
-- (schema/served.go) INSERTs them into served_rollups; usagepipe verify
-- compares them with the view. Every filter is on the fact tables' primary
-- key prefix (account_id), so the cost is that of the accounts selected.
-- Seat and purchase facts are read over the accounts' whole history (the
-- seat state at a quarter's end needs it); activity facts only from the
-- quarter {{.FromQ}} on.
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
-- Fiscal year start month: {{.FiscalStartMonth}}.
SELECT
    account_id,
    {{qstart "qi"}} AS quarter_start,
    addMonths(quarter_start, 3) AS quarter_end,
    {{label "qi"}} AS quarter,
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
            SELECT account_id, {{qi "min(month)"}} AS first_q, {{lastq}} AS last_q
            FROM {{.DB}}.fact_account_months
            WHERE {{.Accounts}}
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
                SELECT account_id, arraySort(groupArray((pq, ps))) AS s, {{lastq}} AS last_q
                FROM
                (
                    SELECT account_id, {{qi "month"}} AS pq, argMax(seats, (occurred_ms, event_id)) AS ps
                    FROM {{.DB}}.fact_seat_purchases
                    WHERE {{.Accounts}}
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
                        SELECT account_id, user_id, arraySort(groupArray((sq, st))) AS s, {{lastq}} AS last_q
                        FROM
                        (
                            SELECT account_id, user_id, {{qi "month"}} AS sq, argMax(assigned, (occurred_ms, event_id)) AS st
                            FROM {{.DB}}.fact_seat_events
                            WHERE {{.Accounts}}
                            GROUP BY account_id, user_id, sq
                        ) AS seat_quarters
                        GROUP BY account_id, user_id
                    ) AS seat_history
                ) AS seat_segments

                UNION ALL

                -- Users active in the quarter.
                SELECT account_id, user_id, {{qi "month"}} AS qi, toUInt8(0) AS w_assigned, toUInt8(1) AS w_active, last_activity_ms AS w_last_ms
                FROM {{.DB}}.fact_user_activity
                WHERE {{.Accounts}} AND month >= {{.FromDate}}
            ) AS user_rows
            GROUP BY account_id, user_id, qi
        ) AS user_quarters
        GROUP BY account_id, qi

        UNION ALL

        -- logins and feature_events: the latest row of each offset bucket.
        SELECT
            account_id,
            {{qi "month"}} AS qi,
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
            FROM {{.DB}}.fact_event_counts
            WHERE {{.Accounts}} AND month >= {{.FromDate}}
            GROUP BY account_id, month, kind, feature, src_topic, src_partition, bucket
        ) AS buckets
        GROUP BY account_id, qi

        UNION ALL

        -- features_used: distinct features of the quarter.
        SELECT
            account_id,
            {{qi "month"}} AS qi,
            toUInt8(0) AS v_in_range,
            toUInt64(0) AS v_seats_purchased,
            toUInt64(0) AS v_seats_assigned,
            toUInt64(0) AS v_active_users,
            toUInt64(0) AS v_active_assigned_users,
            toUInt64(0) AS v_logins,
            toUInt64(0) AS v_feature_events,
            toUInt64(uniqExact(feature)) AS v_features_used,
            toUInt64(0) AS v_last_activity_ms
        FROM {{.DB}}.fact_feature_users
        WHERE {{.Accounts}} AND month >= {{.FromDate}}
        GROUP BY account_id, qi
    ) AS parts
    GROUP BY account_id, qi
    HAVING in_range = 1 AND qi >= {{.FromQ}}
) AS quarters
