//! Output records of the rating core: priced usage lines and debits, with their stable ids.
//! Both serialize deterministically (no wall-clock field), so a replay is byte-identical.

pub mod components;
pub(crate) mod cursor;
pub mod escape;
pub mod json;
pub mod scan;

pub use components::{Component, Components};

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// What a debit bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum DebitKind {
    ModelCall,
    ToolCall,
    AgentExecution,
    AgentExecutionAdjustment,
    /// A re-rating's difference for one (account, execution or direct call): either sign
    /// (negative credits back), referencing the debits it corrects (`correction`).
    Correction,
}

impl DebitKind {
    pub const ALL: [DebitKind; 5] = [
        DebitKind::ModelCall,
        DebitKind::ToolCall,
        DebitKind::AgentExecution,
        DebitKind::AgentExecutionAdjustment,
        DebitKind::Correction,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DebitKind::ModelCall => "model_call",
            DebitKind::ToolCall => "tool_call",
            DebitKind::AgentExecution => "agent_execution",
            DebitKind::AgentExecutionAdjustment => "agent_execution_adjustment",
            DebitKind::Correction => "correction",
        }
    }
}

/// One asset's share of a debit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakdownLine {
    pub asset_id: String,
    pub asset_type: crate::catalog::AssetType,
    /// The price version that priced these calls (one breakdown line per asset and version);
    /// empty in debits written before it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub price_version: String,
    pub calls: u32,
    pub quantities: BTreeMap<String, Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
}

/// One debit for the billing ledger. Consumers dedupe by `debit_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Debit {
    pub debit_id: String,
    pub kind: DebitKind,
    pub account_id: String,
    pub execution_id: Option<String>,
    /// The account's plan that set the markup (an execution: at its first call).
    #[serde(default = "default_plan")]
    pub plan: String,
    /// That plan's version (absent: the built-in `default` plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_version: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup_rate: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    pub calls: u32,
    pub first_event_at: DateTime<Utc>,
    pub last_event_at: DateTime<Utc>,
    /// Vendor price per asset (sum = `subtotal`).
    pub breakdown: Vec<BreakdownLine>,
    /// The amount by component, markup as its own line: `models + tools + markup = total`
    /// ([`components`]). Absent from debits written before it existed (read as zeros: use
    /// [`Components::of`] on the breakdown there).
    #[serde(default)]
    pub components: Components,
    /// A correction debit's reference (kind `correction` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<CorrectionRef>,
}

/// What a correction debit corrects and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrectionRef {
    /// The catalog correction (`catalog publish --correction ID`).
    pub correction_id: String,
    pub reason: String,
    /// The original debits of the (account, execution or direct call), sorted.
    pub corrects: Vec<String>,
}

fn default_plan() -> String {
    crate::plans::DEFAULT_PLAN.to_string()
}

impl Debit {
    /// The debit's JSON: the bytes `serde_json::to_vec` writes, by the hand-written
    /// [`json::encode_debit`] (checked byte for byte against serde in tests).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(512);
        json::encode_debit(&mut buf, self);
        buf
    }
}

/// One priced unit of a priced line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedUnit {
    pub unit: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub credits: Decimal,
    pub per: u64,
}

/// One priced call, for analytics (the ClickHouse `usage_transactions` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    pub event_id: String,
    pub kind: crate::debit::LineKind,
    pub occurred_at: DateTime<Utc>,
    pub account_id: String,
    pub execution_id: Option<String>,
    pub agent_id: Option<String>,
    pub component: Option<String>,
    /// The canonical asset priced (never an alias).
    pub asset_id: String,
    /// The name the event was sent with, when it was an alias of `asset_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_name_sent: Option<String>,
    pub asset_type: crate::catalog::AssetType,
    pub vendor: String,
    pub price_version: String,
    /// The tier of the price version that priced the call (absent: the version has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The account's plan at `occurred_at` (`default` when none was assigned).
    #[serde(default = "default_plan")]
    pub plan: String,
    /// That plan's version (absent: the built-in `default` plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_version: Option<String>,
    /// The plan rule that applied (`vendor:anthropic`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_rule: Option<String>,
    /// The rule's discount, percent, if it was one (the units show list prices).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub discount_percent: Option<Decimal>,
    pub units: Vec<PricedUnit>,
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
    /// Contract v1.1 dimensions of the call, sorted by key; absent from the JSON when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dimensions: BTreeMap<String, String>,
    pub event_partition: i32,
    pub event_offset: i64,
}

/// Whether a priced call was direct use or part of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    ModelCall,
    ToolCall,
}

impl LineKind {
    /// The event type the call came as (`model_call`, `tool_call`), as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::ModelCall => "model_call",
            LineKind::ToolCall => "tool_call",
        }
    }
}

impl PricedLine {
    /// The line's JSON: the bytes `serde_json::to_vec` writes, by the hand-written
    /// [`json::encode_line`] (checked byte for byte against serde in tests).
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(512);
        json::encode_line(&mut buf, self);
        buf
    }

    /// The line's identity for consumers that deduplicate: its event's idempotency key
    /// (account_id, execution_id or empty, event_id) joined by `\n` (ids hold no control
    /// characters). `event_id` alone is not unique: it is scoped by account and execution.
    pub fn line_id(&self) -> String {
        line_id(
            &self.account_id,
            self.execution_id.as_deref().unwrap_or_default(),
            &self.event_id,
        )
    }
}

/// See [`PricedLine::line_id`]; the ClickHouse sink computes the same from its columns.
pub fn line_id(account_id: &str, execution_id: &str, event_id: &str) -> String {
    format!("{account_id}\n{execution_id}\n{event_id}")
}

fn hashed_id(prefix: &str, parts: &[&str]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("{prefix}_{:032x}", h.digest128())
}

/// Debit id of a direct call.
pub fn direct_debit_id(account_id: &str, event_id: &str) -> String {
    hashed_id("dc", &["direct", account_id, event_id])
}

/// Debit id of an execution: its id plus the id of the first call that opened it, so an
/// execution id reused after its memory expired yields a new debit, never a clash.
pub fn execution_debit_id(account_id: &str, execution_id: &str, first_event_id: &str) -> String {
    hashed_id(
        "ex",
        &["execution", account_id, execution_id, first_event_id],
    )
}

/// Debit id of a correction: one per (correction, account, execution or direct call), so a
/// re-rating run repeated or resumed after a crash emits the same ids.
pub fn correction_debit_id(correction_id: &str, account_id: &str, scope: &str) -> String {
    hashed_id("co", &["correction", correction_id, account_id, scope])
}

/// Debit id of a late call's adjustment.
pub fn adjustment_debit_id(account_id: &str, execution_id: &str, event_id: &str) -> String {
    hashed_id("ad", &["adjustment", account_id, execution_id, event_id])
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED_DIRECT_ID: &str = "dc_1c3e3fda4a63e632fdd8d3d11e4ca674";

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = direct_debit_id("acct", "e1");
        assert_eq!(a, direct_debit_id("acct", "e1"));
        assert_ne!(a, direct_debit_id("acct", "e2"));
        assert_ne!(a, direct_debit_id("acct2", "e1"));
        // Length-prefixed parts: ("ab","c") and ("a","bc") differ.
        assert_ne!(
            execution_debit_id("ab", "c", "x"),
            execution_debit_id("a", "bc", "x")
        );
        assert!(a.starts_with("dc_") && a.len() == 35);
        // Pinned: the id is part of the contract with the ledger and must never change.
        assert_eq!(direct_debit_id("acct", "e1"), PINNED_DIRECT_ID);
    }
}
