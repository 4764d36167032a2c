-- account_quarter_rollups (contract section 4): one row per
-- (account_id, quarter_start), read from served_rollups. FINAL keeps the
-- greatest version of each key, so a plain SELECT sees exactly one row
-- while older versions still wait for a merge; the cost is that of the
-- served rows, not of the history of facts. Filters on the key columns
-- reach the primary key on current ClickHouse (predicate push-down).
-- Fiscal year start month: {{.FiscalStartMonth}} (rows of other fiscal
-- calendars stay in the table, unread). The table alias ends in a hash of
-- this rendered statement: migrate finds it in system.tables to know the
-- view is this version. updated_at is never before {{.SwitchedAt}}, the
-- server second at which migrate installed this view (readers switched to
-- this calendar's rows), so that an updated_at poll sees every row after
-- a change of fiscal calendar (docs/design.md, "updated_at across a
-- calendar switch").
CREATE VIEW {{.DB}}.account_quarter_rollups AS
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
    if(updated_at < toDateTime({{.SwitchedAt}}, 'UTC'), toDateTime({{.SwitchedAt}}, 'UTC'), updated_at) AS updated_at
FROM {{.DB}}.served_rollups AS served_{{.Marker}} FINAL
WHERE fy = {{.FiscalStartMonth}}
