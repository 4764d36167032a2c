-- account_quarter_features (contract section 4): one row per
-- (account_id, quarter_start, feature) with at least one event, read from
-- features_served FINAL (see account_quarter_rollups.sql).
-- Fiscal year start month: {{.FiscalStartMonth}}. The table alias carries
-- a hash of this statement.
CREATE VIEW {{.DB}}.account_quarter_features AS
SELECT
    account_id,
    quarter_start,
    quarter_end,
    quarter,
    feature,
    active_users,
    events
FROM {{.DB}}.features_served AS served_{{.Marker}} FINAL
WHERE fy = {{.FiscalStartMonth}}
