-- The latest seat_assigned/seat_unassigned of (account, user) in a UTC month
-- as one writer saw it (assigned: 1 assigned, 0 unassigned).
-- ORDER BY (account_id, user_id, month, occurred_ms, event_id): the key names
-- one event, so repeats collapse; rows of different events all stay and
-- readers take argMax(assigned, (occurred_ms, event_id)), the latest event
-- with ties broken by the greater event_id.
CREATE TABLE IF NOT EXISTS {{.DB}}.fact_seat_events
(
    account_id String,
    user_id String,
    month Date,
    occurred_ms UInt64,
    event_id String,
    assigned UInt8
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, user_id, month, occurred_ms, event_id)
