-- Contract v1.1 and model aliases (issue 16). Runs on 18.16 and current LTS: plain ALTER ...
-- ADD COLUMN (18.16 has no IF NOT EXISTS there; the runner treats an "already exists" from an
-- interrupted earlier run as done). Old rows read the DEFAULT expressions, so they stay right.
-- asset_name_sent: the name the event was sent with (an alias, or asset_id itself)
ALTER TABLE {db}.usage_transactions
    ADD COLUMN asset_name_sent String DEFAULT asset_id AFTER asset_id;

-- dimensions (contract v1.1): parallel arrays sorted by key, no Map type on 18.16
-- Filter with has(dimension_keys, 'project'), read a value with
-- dimension_values[indexOf(dimension_keys, 'project')] ('' when absent), group all keys
-- with ARRAY JOIN dimension_keys AS k, dimension_values AS v
ALTER TABLE {db}.usage_transactions
    ADD COLUMN dimension_keys Array(String) AFTER component;

ALTER TABLE {db}.usage_transactions
    ADD COLUMN dimension_values Array(String) AFTER dimension_keys;

-- Daily spend per dimension value (cost before markup), fed at insert time like the other
-- rollups. One row per (day, account, key, value): read with sum(...) GROUP BY
CREATE TABLE IF NOT EXISTS {db}.daily_dimension_spend
(
    day             Date,
    dimension_key   String,
    dimension_value String,
    account_id      String,
    calls           UInt64,
    cost            Decimal(38, 12)
)
ENGINE = SummingMergeTree((calls, cost))
PARTITION BY toYYYYMM(day)
ORDER BY (dimension_key, day, account_id, dimension_value);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.daily_dimension_spend_mv
TO {db}.daily_dimension_spend
AS SELECT
    toDate(occurred_at) AS day,
    dimension_key,
    dimension_value,
    account_id,
    count() AS calls,
    sum(cost) AS cost
FROM {db}.usage_transactions
ARRAY JOIN dimension_keys AS dimension_key, dimension_values AS dimension_value
GROUP BY day, dimension_key, dimension_value, account_id;
