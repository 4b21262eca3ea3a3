-- Base tables written by the usage-aggregator sinks (RowBinary, column order is the contract).
-- Runs on ClickHouse 18.16 and current LTS: no LowCardinality, DateTime64, Map, Bool, TTL, CODEC.
-- Partitioned by ingestion month: one insert batch carries one ingested_at, so it is one part
-- (atomic on both versions). Sorted for the per-account, time-ranged questions analysts ask.
-- Comment lines here must never end with a semicolon (the runner splits on those lines)
CREATE TABLE IF NOT EXISTS {db}.usage_transactions
(
    event_id        String,
    occurred_at     DateTime,
    account_id      String,
    execution_id    String,
    agent_id        String,
    component       String,
    asset_id        String,
    asset_type      String,
    vendor          String,
    units           Array(String),
    quantities      Array(Decimal(38, 12)),
    unit_credits    Array(Decimal(38, 12)),
    unit_per        Array(UInt64),
    cost            Decimal(38, 12),
    price_version   String,
    event_partition Int32,
    event_offset    Int64,
    src_partition   Int32,
    src_offset      Int64,
    ingested_at     DateTime
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(ingested_at)
ORDER BY (account_id, occurred_at, event_id);

CREATE TABLE IF NOT EXISTS {db}.debits
(
    debit_id         String,
    kind             String,
    account_id       String,
    execution_id     String,
    subtotal         Decimal(38, 18),
    markup_rate      Decimal(38, 18),
    markup           Decimal(38, 18),
    total            Decimal(38, 18),
    calls            UInt32,
    first_event_at   DateTime,
    last_event_at    DateTime,
    breakdown_assets Array(String),
    breakdown_costs  Array(Decimal(38, 12)),
    src_partition    Int32,
    src_offset       Int64,
    ingested_at      DateTime
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(ingested_at)
ORDER BY (account_id, first_event_at, debit_id);

CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    dead_letter_id   String,
    reason           String,
    message          String,
    payload          String,
    source_topic     String,
    source_partition Int32,
    source_offset    Int64,
    src_partition    Int32,
    src_offset       Int64,
    ingested_at      DateTime
)
ENGINE = MergeTree()
PARTITION BY toYYYYMM(ingested_at)
ORDER BY (reason, ingested_at);
