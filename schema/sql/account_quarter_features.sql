-- account_quarter_features (contract section 4): one row per
-- (account_id, quarter_start, feature) with at least one event: the greatest
-- version of each (account, quarter)'s feature set, read from
-- served_feature_sets FINAL and unfolded by ARRAY JOIN (see
-- account_quarter_rollups.sql and docs/design.md, "Feature sets").
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
FROM {{.DB}}.served_feature_sets AS served_{{.Marker}} FINAL
ARRAY JOIN features AS feature, active_users, events
WHERE fy = {{.FiscalStartMonth}}
