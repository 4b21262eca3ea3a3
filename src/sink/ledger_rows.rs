//! ClickHouse rows of the credits ledger: `balances` topic JSON ([`BalanceEvent`]) in, a
//! RowBinary [`LedgerRow`] with checked scaled decimals out. Column order matches
//! deploy/clickhouse/0004_ledger.sql with the columns 0006_ledger_grants.sql adds.

use rust_decimal::Decimal;
use serde::Serialize;

use super::rows::{RowError, Source};
use crate::ledger::core::BalanceEvent;
use crate::money::{DEBIT_SCALE, LINE_COST_SCALE, to_scaled_i128};

/// One ledger row: a grant (`credit`), a debit or an expiry (`debit`), its funding and the
/// account after it.
#[derive(Debug, Clone, Serialize, clickhouse::Row)]
pub struct LedgerRow {
    pub entry_id: String,
    pub account_id: String,
    pub seq: u64,
    pub occurred_at: u32,
    pub kind: String,
    pub reference: String,
    pub description: String,
    pub category: String,
    pub priority: Option<u8>,
    pub expires_at: Option<u32>,
    pub credit: i128,
    pub debit: i128,
    pub balance_after: i128,
    pub funded_grants: Vec<String>,
    pub funded_categories: Vec<String>,
    pub funded_amounts: Vec<i128>,
    pub overdraft: i128,
    pub open_grants: Vec<String>,
    pub open_categories: Vec<String>,
    pub open_priorities: Vec<u8>,
    pub open_expires: Vec<Option<u32>>,
    pub open_remaining: Vec<i128>,
    pub assets: Vec<String>,
    pub asset_calls: Vec<u32>,
    pub asset_quantities: Vec<String>,
    pub asset_costs: Vec<i128>,
    pub src_partition: i32,
    pub src_offset: i64,
    pub ingested_at: u32,
}

fn secs(t: chrono::DateTime<chrono::Utc>) -> u32 {
    t.timestamp().clamp(0, i64::from(u32::MAX)) as u32
}

fn scaled(values: impl Iterator<Item = Decimal>) -> Result<Vec<i128>, RowError> {
    values
        .map(|d| to_scaled_i128(d, DEBIT_SCALE).map_err(RowError::from))
        .collect()
}

/// Decodes a balance event into its row; the id is `entry_id`.
pub fn ledger_row(bytes: &[u8], src: Source) -> Result<(String, LedgerRow), RowError> {
    let e: BalanceEvent = serde_json::from_slice(bytes).map_err(|source| RowError::Json {
        table: "ledger",
        source,
    })?;
    let (credit, debit) = if e.amount.is_sign_negative() {
        (Decimal::ZERO, -e.amount)
    } else {
        (e.amount, Decimal::ZERO)
    };
    let mut costs = Vec::with_capacity(e.lines.len());
    for l in &e.lines {
        costs.push(to_scaled_i128(l.cost, LINE_COST_SCALE)?);
    }
    let row = LedgerRow {
        entry_id: e.entry_id.clone(),
        account_id: e.account_id,
        seq: e.seq,
        occurred_at: secs(e.occurred_at),
        kind: e.kind.as_str().to_string(),
        reference: e.reference,
        description: e.description,
        category: e
            .grant
            .as_ref()
            .map(|g| g.category.as_str().to_string())
            .unwrap_or_default(),
        priority: e.grant.as_ref().map(|g| g.priority),
        expires_at: e.grant.as_ref().and_then(|g| g.expires_at).map(secs),
        credit: to_scaled_i128(credit, DEBIT_SCALE)?,
        debit: to_scaled_i128(debit, DEBIT_SCALE)?,
        balance_after: to_scaled_i128(e.balance_after, DEBIT_SCALE)?,
        funded_grants: e
            .funded_by
            .iter()
            .map(|f| f.grant_id.clone().unwrap_or_default())
            .collect(),
        funded_categories: e
            .funded_by
            .iter()
            .map(|f| f.category.as_str().to_string())
            .collect(),
        funded_amounts: scaled(e.funded_by.iter().map(|f| f.amount))?,
        overdraft: to_scaled_i128(e.overdraft, DEBIT_SCALE)?,
        open_grants: e.grants.iter().map(|g| g.grant_id.clone()).collect(),
        open_categories: e
            .grants
            .iter()
            .map(|g| g.category.as_str().to_string())
            .collect(),
        open_priorities: e.grants.iter().map(|g| g.priority).collect(),
        open_expires: e.grants.iter().map(|g| g.expires_at.map(secs)).collect(),
        open_remaining: scaled(e.grants.iter().map(|g| g.remaining))?,
        assets: e.lines.iter().map(|l| l.asset_id.clone()).collect(),
        asset_calls: e.lines.iter().map(|l| l.calls).collect(),
        asset_quantities: e
            .lines
            .iter()
            .map(|l| serde_json::to_string(&l.quantities).expect("quantities serialize"))
            .collect(),
        asset_costs: costs,
        src_partition: src.partition,
        src_offset: src.offset,
        ingested_at: src.ingested_at,
    };
    Ok((e.entry_id, row))
}
