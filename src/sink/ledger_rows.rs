//! ClickHouse rows of the credits ledger: `balances` topic JSON in, a RowBinary
//! [`LedgerRow`] with checked scaled decimals out. Column order matches
//! deploy/clickhouse/0004_ledger.sql with the columns 0006_ledger_grants.sql adds.
//!
//! The sink reads only the fields its row needs ([`EntryIn`], borrowed from the message):
//! the fields it does not store (`balance_before`, `source`, `next_expiry`, a grant's
//! `amount`) are skipped unparsed, and each line's `quantities` object goes to its column
//! as written (the ledger writes it with serde_json, compact, keys sorted). A criterion
//! benchmark (`benches/core.rs`, `ledger_row_*`) measures it against decoding the whole
//! [`crate::ledger::core::BalanceEvent`]; a property test below holds the two equal.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde::Serialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::rows::{RowError, Source};
use crate::ledger::core::{EntryKind, GrantTerms};
use crate::ledger::funding::{Category, FundingCategory};
use crate::money::{DEBIT_SCALE, LINE_COST_SCALE, to_scaled_i128};

/// The fields of a balance entry (docs/credits.md, "Balances and alerts"; the same names,
/// defaults and required fields as [`crate::ledger::core::BalanceEvent`]) that its row
/// stores; strings borrowed where they have no escapes.
#[derive(Deserialize)]
struct EntryIn<'a> {
    #[serde(borrow)]
    entry_id: Cow<'a, str>,
    #[serde(borrow)]
    account_id: Cow<'a, str>,
    seq: u64,
    kind: EntryKind,
    #[serde(borrow)]
    reference: Cow<'a, str>,
    #[serde(borrow)]
    description: Cow<'a, str>,
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    /// Required as in the entry, not stored.
    #[allow(dead_code)]
    balance_before: IgnoredAny,
    #[serde(with = "rust_decimal::serde::str")]
    balance_after: Decimal,
    occurred_at: DateTime<Utc>,
    #[serde(default, borrow)]
    lines: Vec<LineIn<'a>>,
    /// Required as in the entry, not stored.
    #[allow(dead_code)]
    source: IgnoredAny,
    #[serde(default, borrow)]
    funded_by: Vec<FundingIn<'a>>,
    #[serde(default)]
    grant: Option<GrantTerms>,
    #[serde(default, borrow)]
    grants: Vec<OpenGrantIn<'a>>,
    #[serde(default, with = "rust_decimal::serde::str")]
    overdraft: Decimal,
}

/// One asset line of a debit entry.
#[derive(Deserialize)]
struct LineIn<'a> {
    #[serde(borrow)]
    asset_id: Cow<'a, str>,
    calls: u32,
    /// `{"<quantity>": "<decimal>", ...}` as written.
    #[serde(borrow)]
    quantities: &'a RawValue,
    #[serde(with = "rust_decimal::serde::str")]
    cost: Decimal,
}

/// One funding line.
#[derive(Deserialize)]
struct FundingIn<'a> {
    #[serde(default, borrow)]
    grant_id: Option<Cow<'a, str>>,
    category: FundingCategory,
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
}

/// One open grant after the entry.
#[derive(Deserialize)]
struct OpenGrantIn<'a> {
    #[serde(borrow)]
    grant_id: Cow<'a, str>,
    category: Category,
    priority: u8,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(with = "rust_decimal::serde::str")]
    remaining: Decimal,
}

/// One ledger row: a grant (`credit`), a debit or an expiry (`debit`), its funding and the
/// account after it.
#[derive(Debug, Clone, PartialEq, Serialize, clickhouse::Row)]
pub struct LedgerRow {
    pub entry_id: String,
    pub account_id: String,
    pub seq: u64,
    pub occurred_at: u32,
    pub kind: &'static str,
    pub reference: String,
    pub description: String,
    pub category: &'static str,
    pub priority: Option<u8>,
    pub expires_at: Option<u32>,
    pub credit: i128,
    pub debit: i128,
    pub balance_after: i128,
    pub funded_grants: Vec<String>,
    pub funded_categories: Vec<&'static str>,
    pub funded_amounts: Vec<i128>,
    pub overdraft: i128,
    pub open_grants: Vec<String>,
    pub open_categories: Vec<&'static str>,
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

/// Seconds since the epoch for a `DateTime` column, clamped to its `u32` range.
pub(super) fn secs(t: chrono::DateTime<chrono::Utc>) -> u32 {
    t.timestamp().clamp(0, i64::from(u32::MAX)) as u32
}

/// Each credits amount scaled to [`DEBIT_SCALE`] for a `Decimal128` column.
pub(super) fn scaled(values: impl Iterator<Item = Decimal>) -> Result<Vec<i128>, RowError> {
    values
        .map(|d| to_scaled_i128(d, DEBIT_SCALE).map_err(RowError::from))
        .collect()
}

/// Decodes a balance entry into its row; the id is `entry_id`. Errors: the JSON's
/// ([`RowError::Json`], table `ledger`), or a decimal beyond its column's scale or range.
pub fn ledger_row(bytes: &[u8], src: Source) -> Result<(String, LedgerRow), RowError> {
    let e: EntryIn = serde_json::from_slice(bytes).map_err(|source| RowError::Json {
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
    let entry_id = e.entry_id.into_owned();
    let row = LedgerRow {
        entry_id: entry_id.clone(),
        account_id: e.account_id.into_owned(),
        seq: e.seq,
        occurred_at: secs(e.occurred_at),
        kind: e.kind.as_str(),
        reference: e.reference.into_owned(),
        description: e.description.into_owned(),
        category: e.grant.as_ref().map(|g| g.category.as_str()).unwrap_or(""),
        priority: e.grant.as_ref().map(|g| g.priority),
        expires_at: e.grant.as_ref().and_then(|g| g.expires_at).map(secs),
        credit: to_scaled_i128(credit, DEBIT_SCALE)?,
        debit: to_scaled_i128(debit, DEBIT_SCALE)?,
        balance_after: to_scaled_i128(e.balance_after, DEBIT_SCALE)?,
        funded_grants: e
            .funded_by
            .iter()
            .map(|f| f.grant_id.as_deref().unwrap_or_default().to_string())
            .collect(),
        funded_categories: e.funded_by.iter().map(|f| f.category.as_str()).collect(),
        funded_amounts: scaled(e.funded_by.iter().map(|f| f.amount))?,
        overdraft: to_scaled_i128(e.overdraft, DEBIT_SCALE)?,
        open_grants: e.grants.iter().map(|g| g.grant_id.to_string()).collect(),
        open_categories: e.grants.iter().map(|g| g.category.as_str()).collect(),
        open_priorities: e.grants.iter().map(|g| g.priority).collect(),
        open_expires: e.grants.iter().map(|g| g.expires_at.map(secs)).collect(),
        open_remaining: scaled(e.grants.iter().map(|g| g.remaining))?,
        assets: e.lines.iter().map(|l| l.asset_id.to_string()).collect(),
        asset_calls: e.lines.iter().map(|l| l.calls).collect(),
        asset_quantities: e
            .lines
            .iter()
            .map(|l| l.quantities.get().to_string())
            .collect(),
        asset_costs: costs,
        src_partition: src.partition,
        src_offset: src.offset,
        ingested_at: src.ingested_at,
    };
    Ok((entry_id, row))
}
