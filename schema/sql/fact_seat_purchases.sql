-- The latest seats_purchased of an account in a UTC month as one writer saw
-- it.
-- ORDER BY (account_id, month, occurred_ms, event_id): the key names one
-- event, so repeats collapse; readers take argMax(seats, (occurred_ms,
-- event_id)) over all rows up to a quarter's end.
CREATE TABLE IF NOT EXISTS {{.DB}}.fact_seat_purchases
(
    account_id String,
    month Date,
    occurred_ms UInt64,
    event_id String,
    seats UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (account_id, month, occurred_ms, event_id)
