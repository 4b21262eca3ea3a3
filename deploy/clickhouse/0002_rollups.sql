-- Daily rollups, fed by materialized views from the base tables. SummingMergeTree with an
-- explicit list of summed columns: Decimal sums are exact on 18.16 and current LTS.
-- Rows for the same key are summed only when parts merge, so always read with
-- sum(...) GROUP BY, never a bare SELECT (and FINAL is not needed).
-- The views see only rows inserted after they exist, see docs/analytics.md for a backfill
CREATE TABLE IF NOT EXISTS {db}.daily_account_spend
(
    day        Date,
    account_id String,
    kind       String,
    debits     UInt64,
    subtotal   Decimal(38, 18),
    markup     Decimal(38, 18),
    total      Decimal(38, 18)
)
ENGINE = SummingMergeTree((debits, subtotal, markup, total))
PARTITION BY toYYYYMM(day)
ORDER BY (day, account_id, kind);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.daily_account_spend_mv
TO {db}.daily_account_spend
AS SELECT
    toDate(first_event_at) AS day,
    account_id,
    kind,
    count() AS debits,
    sum(subtotal) AS subtotal,
    sum(markup) AS markup,
    sum(total) AS total
FROM {db}.debits
GROUP BY day, account_id, kind;

CREATE TABLE IF NOT EXISTS {db}.daily_asset_spend
(
    day        Date,
    account_id String,
    asset_type String,
    asset_id   String,
    calls      UInt64,
    cost       Decimal(38, 12)
)
ENGINE = SummingMergeTree((calls, cost))
PARTITION BY toYYYYMM(day)
ORDER BY (day, account_id, asset_type, asset_id);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.daily_asset_spend_mv
TO {db}.daily_asset_spend
AS SELECT
    toDate(occurred_at) AS day,
    account_id,
    asset_type,
    asset_id,
    count() AS calls,
    sum(cost) AS cost
FROM {db}.usage_transactions
GROUP BY day, account_id, asset_type, asset_id;
