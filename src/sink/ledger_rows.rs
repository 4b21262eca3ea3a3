//! ClickHouse rows of the credits ledger: `balances` topic JSON ([`BalanceEvent`]) in, a
//! RowBinary [`LedgerRow`] with checked scaled decimals out. Column order matches
//! deploy/clickhouse/0004_ledger.sql.

use serde::Serialize;

use super::rows::{RowError, Source};
use crate::ledger::core::BalanceEvent;
use crate::money::{DEBIT_SCALE, LINE_COST_SCALE, to_scaled_i128};

/// One ledger row: a grant (`credit`) or a debit (`debit`) and the balance after it.
#[derive(Debug, Clone, Serialize, clickhouse::Row)]
pub struct LedgerRow {
    pub entry_id: String,
    pub account_id: String,
    pub seq: u64,
    pub occurred_at: u32,
    pub kind: String,
    pub reference: String,
    pub description: String,
    pub credit: i128,
    pub debit: i128,
    pub balance_after: i128,
    pub assets: Vec<String>,
    pub asset_calls: Vec<u32>,
    pub asset_quantities: Vec<String>,
    pub asset_costs: Vec<i128>,
    pub src_partition: i32,
    pub src_offset: i64,
    pub ingested_at: u32,
}

/// Decodes a balance event into its row; the id is `entry_id`.
pub fn ledger_row(bytes: &[u8], src: Source) -> Result<(String, LedgerRow), RowError> {
    let e: BalanceEvent = serde_json::from_slice(bytes).map_err(|source| RowError::Json {
        table: "ledger",
        source,
    })?;
    let (credit, debit) = if e.amount.is_sign_negative() {
        (rust_decimal::Decimal::ZERO, -e.amount)
    } else {
        (e.amount, rust_decimal::Decimal::ZERO)
    };
    let mut costs = Vec::with_capacity(e.lines.len());
    for l in &e.lines {
        costs.push(to_scaled_i128(l.cost, LINE_COST_SCALE)?);
    }
    let row = LedgerRow {
        entry_id: e.entry_id.clone(),
        account_id: e.account_id,
        seq: e.seq,
        occurred_at: e.occurred_at.timestamp().clamp(0, i64::from(u32::MAX)) as u32,
        kind: e.kind.as_str().to_string(),
        reference: e.reference,
        description: e.description,
        credit: to_scaled_i128(credit, DEBIT_SCALE)?,
        debit: to_scaled_i128(debit, DEBIT_SCALE)?,
        balance_after: to_scaled_i128(e.balance_after, DEBIT_SCALE)?,
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
