//! ClickHouse rows: output-topic JSON (priced lines, debits, dead letters) in, RowBinary rows
//! with checked scaled decimals out. Column order matches deploy/clickhouse/0001_tables.sql
//! with the columns of later migrations where they put them (`ALTER ... AFTER`).

use serde::Serialize;

use crate::debit::{Debit, PricedLine};
use crate::money::{DEBIT_SCALE, LINE_COST_SCALE, MoneyError, to_scaled_i128};
use crate::rejection::DeadLetter;

/// Why an output message cannot become a row.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("message is not valid json for {table}: {source}")]
    Json {
        table: &'static str,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Money(#[from] MoneyError),
}

/// Unix seconds as a ClickHouse `DateTime` (clamped to its range).
pub(super) fn ts(secs: i64) -> u32 {
    secs.clamp(0, i64::from(u32::MAX)) as u32
}

#[derive(Debug, Clone, Serialize, clickhouse::Row)]
pub struct TransactionRow {
    pub event_id: String,
    /// `model_call` or `tool_call` (migration 6).
    pub kind: String,
    pub occurred_at: u32,
    /// The sub-second part of `occurred_at`, in nanoseconds (migration 6).
    pub occurred_at_nanos: u32,
    pub account_id: String,
    pub execution_id: String,
    pub agent_id: String,
    pub component: String,
    /// Contract v1.1 dimensions as parallel arrays sorted by key (migration 3).
    pub dimension_keys: Vec<String>,
    pub dimension_values: Vec<String>,
    pub asset_id: String,
    /// The name sent: `asset_id` itself, or the alias the event used (migration 3).
    pub asset_name_sent: String,
    pub asset_type: String,
    pub vendor: String,
    pub units: Vec<String>,
    pub quantities: Vec<i128>,
    pub unit_credits: Vec<i128>,
    pub unit_per: Vec<u64>,
    pub cost: i128,
    pub price_version: String,
    /// Tier, plan, plan version, plan rule, discount (migration 5).
    pub tier: String,
    pub plan: String,
    pub plan_version: String,
    pub plan_rule: String,
    pub discount_percent: i128,
    pub event_partition: i32,
    pub event_offset: i64,
    pub src_partition: i32,
    pub src_offset: i64,
    pub ingested_at: u32,
}

#[derive(Debug, Clone, Serialize, clickhouse::Row)]
pub struct DebitRow {
    pub debit_id: String,
    pub kind: String,
    pub account_id: String,
    pub execution_id: String,
    /// The plan that set the markup (migration 5).
    pub plan: String,
    pub plan_version: String,
    pub subtotal: i128,
    /// Vendor price of the model calls, and of the tool calls (migration 6):
    /// `models + tools + markup = total`.
    pub models: i128,
    pub tools: i128,
    pub markup_rate: i128,
    pub markup: i128,
    pub total: i128,
    pub calls: u32,
    pub first_event_at: u32,
    pub last_event_at: u32,
    pub breakdown_assets: Vec<String>,
    pub breakdown_costs: Vec<i128>,
    /// Parallel to `breakdown_assets`; a correction's id, reason and corrected debits
    /// (migration 5).
    pub breakdown_price_versions: Vec<String>,
    pub correction_id: String,
    pub correction_reason: String,
    pub corrects: Vec<String>,
    pub src_partition: i32,
    pub src_offset: i64,
    pub ingested_at: u32,
}

#[derive(Debug, Clone, Serialize, clickhouse::Row)]
pub struct DeadLetterRow {
    pub dead_letter_id: String,
    pub reason: String,
    pub message: String,
    pub payload: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub src_partition: i32,
    pub src_offset: i64,
    pub ingested_at: u32,
}

/// Where a row came from on its output topic (for exactly-once resume).
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub partition: i32,
    pub offset: i64,
    pub ingested_at: u32,
}

/// A `priced_usage` message to its id and row by serde: any layout serde reads, and the
/// error messages (the sink tries [`super::line_scan::transaction_row`]'s fast path first).
pub fn transaction_row_serde(
    bytes: &[u8],
    src: Source,
) -> Result<(String, TransactionRow), RowError> {
    let l: PricedLine = serde_json::from_slice(bytes).map_err(|source| RowError::Json {
        table: "usage_transactions",
        source,
    })?;
    let mut quantities = Vec::with_capacity(l.units.len());
    let mut credits = Vec::with_capacity(l.units.len());
    for u in &l.units {
        quantities.push(to_scaled_i128(u.quantity, LINE_COST_SCALE)?);
        credits.push(to_scaled_i128(u.credits, LINE_COST_SCALE)?);
    }
    let id = l.line_id();
    let row = TransactionRow {
        kind: l.kind.as_str().to_string(),
        occurred_at: ts(l.occurred_at.timestamp()),
        occurred_at_nanos: chrono::Timelike::nanosecond(&l.occurred_at).min(999_999_999),
        account_id: l.account_id,
        execution_id: l.execution_id.unwrap_or_default(),
        agent_id: l.agent_id.unwrap_or_default(),
        component: l.component.unwrap_or_default(),
        dimension_keys: l.dimensions.keys().cloned().collect(),
        dimension_values: l.dimensions.values().cloned().collect(),
        asset_type: l.asset_type.as_str().to_string(),
        vendor: l.vendor,
        units: l.units.iter().map(|u| u.unit.clone()).collect(),
        quantities,
        unit_credits: credits,
        unit_per: l.units.iter().map(|u| u.per).collect(),
        cost: to_scaled_i128(l.cost, LINE_COST_SCALE)?,
        price_version: l.price_version,
        tier: l.tier.unwrap_or_default(),
        plan: l.plan,
        plan_version: l.plan_version.unwrap_or_default(),
        plan_rule: l.plan_rule.unwrap_or_default(),
        discount_percent: to_scaled_i128(l.discount_percent.unwrap_or_default(), LINE_COST_SCALE)?,
        event_partition: l.event_partition,
        event_offset: l.event_offset,
        src_partition: src.partition,
        src_offset: src.offset,
        ingested_at: src.ingested_at,
        asset_name_sent: l.asset_name_sent.unwrap_or_else(|| l.asset_id.clone()),
        asset_id: l.asset_id,
        event_id: l.event_id.clone(),
    };
    Ok((id, row))
}

pub fn debit_row(bytes: &[u8], src: Source) -> Result<(String, DebitRow), RowError> {
    let d: Debit = crate::debit::scan::decode(bytes).map_err(|source| RowError::Json {
        table: "debits",
        source,
    })?;
    // From the breakdown, not the message's `components`: debits written before that field
    // existed get the same split.
    let components = crate::debit::Components::of(&d.breakdown, d.markup);
    let mut costs = Vec::with_capacity(d.breakdown.len());
    for b in &d.breakdown {
        costs.push(to_scaled_i128(b.cost, LINE_COST_SCALE)?);
    }
    let row = DebitRow {
        debit_id: d.debit_id.clone(),
        kind: d.kind.as_str().to_string(),
        account_id: d.account_id,
        execution_id: d.execution_id.unwrap_or_default(),
        plan: d.plan,
        plan_version: d.plan_version.unwrap_or_default(),
        subtotal: to_scaled_i128(d.subtotal, DEBIT_SCALE)?,
        models: to_scaled_i128(components.models, DEBIT_SCALE)?,
        tools: to_scaled_i128(components.tools, DEBIT_SCALE)?,
        markup_rate: to_scaled_i128(d.markup_rate, DEBIT_SCALE)?,
        markup: to_scaled_i128(d.markup, DEBIT_SCALE)?,
        total: to_scaled_i128(d.total, DEBIT_SCALE)?,
        calls: d.calls,
        first_event_at: ts(d.first_event_at.timestamp()),
        last_event_at: ts(d.last_event_at.timestamp()),
        breakdown_assets: d.breakdown.iter().map(|b| b.asset_id.clone()).collect(),
        breakdown_costs: costs,
        breakdown_price_versions: d
            .breakdown
            .iter()
            .map(|b| b.price_version.clone())
            .collect(),
        correction_id: d
            .correction
            .as_ref()
            .map(|c| c.correction_id.clone())
            .unwrap_or_default(),
        correction_reason: d
            .correction
            .as_ref()
            .map(|c| c.reason.clone())
            .unwrap_or_default(),
        corrects: d.correction.map(|c| c.corrects).unwrap_or_default(),
        src_partition: src.partition,
        src_offset: src.offset,
        ingested_at: src.ingested_at,
    };
    Ok((d.debit_id, row))
}

pub fn dead_letter_row(bytes: &[u8], src: Source) -> Result<(String, DeadLetterRow), RowError> {
    let dl: DeadLetter = serde_json::from_slice(bytes).map_err(|source| RowError::Json {
        table: "dead_letters",
        source,
    })?;
    let id = dl.id();
    let row = DeadLetterRow {
        dead_letter_id: id.clone(),
        reason: dl.reason.as_str().to_string(),
        message: dl.message,
        payload: dl.payload.or(dl.payload_base64).unwrap_or_default(),
        source_topic: dl.source_topic,
        source_partition: dl.source_partition,
        source_offset: dl.source_offset,
        src_partition: src.partition,
        src_offset: src.offset,
        ingested_at: src.ingested_at,
    };
    Ok((id, row))
}
