-- Credits ledger: one row per balance change (grant or debit) with the balance after it,
-- written by the sink from the balances topic (exactly once, like the other base tables).
-- Runs on ClickHouse 18.16 and current LTS: no Map, DateTime64 or window functions needed,
-- the running total is the stream's balance_after (seq orders an account's entries).
-- Queries for history and balance at a date: docs/analytics.md ("Credits ledger")
CREATE TABLE IF NOT EXISTS {db}.ledger
(
    entry_id         String,
    account_id       String,
    seq              UInt64,
    occurred_at      DateTime,
    kind             String,
    reference        String,
    description      String,
    credit           Decimal(38, 18),
    debit            Decimal(38, 18),
    balance_after    Decimal(38, 18),
    assets           Array(String),
    asset_calls      Array(UInt32),
    asset_quantities Array(String),
    asset_costs      Array(Decimal(38, 12)),
    src_partition    Int32,
    src_offset       Int64,
    ingested_at      DateTime
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(ingested_at)
ORDER BY (account_id, seq);
