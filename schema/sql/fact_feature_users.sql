-- That a user used a feature in a UTC month.
-- ORDER BY (account_id, month, feature, user_id): the whole row is the key;
-- readers count distinct users and features, which duplicates do not change.
CREATE TABLE IF NOT EXISTS {{.DB}}.fact_feature_users
(
    account_id String,
    month Date,
    feature String,
    user_id String
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, month, feature, user_id)
