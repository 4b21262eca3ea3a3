//! What the ledger writes, pure data: balance entries (`balances` topic, ClickHouse `ledger`
//! table), credit alerts (`credit_alerts`) and top-up requests (`topup_requests`). Shapes and
//! compatibility rules: docs/credits.md ("Balances and alerts"). Every field added after the
//! first format has a serde default, so events written before it still read.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ledger::funding::{Category, FundingLine, OpenGrant};
use crate::ledger::thresholds::AutoTopup;
pub use crate::ledger::thresholds::Crossing;

/// Format of the balance entries this build writes: 2 adds `funded_by`, `grant`, `grants`,
/// `overdraft` and `next_expiry` (events without `v` are format 1).
pub const ENTRY_FORMAT: u32 = 2;

/// What changed a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Topup,
    Voucher,
    Adjustment,
    Debit,
    /// The remainder of a grant forfeited at its `expires_at` (format 2).
    Expiry,
}

impl EntryKind {
    pub const ALL: [EntryKind; 5] = [
        EntryKind::Topup,
        EntryKind::Voucher,
        EntryKind::Adjustment,
        EntryKind::Debit,
        EntryKind::Expiry,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Topup => "topup",
            EntryKind::Voucher => "voucher",
            EntryKind::Adjustment => "adjustment",
            EntryKind::Debit => "debit",
            EntryKind::Expiry => "expiry",
        }
    }
}

/// One asset of a debit entry: what was used and what it cost (before markup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryLine {
    pub asset_id: String,
    pub calls: u32,
    pub quantities: BTreeMap<String, Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
}

/// Where an entry (or a command) was read: input topic position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntrySource {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The terms of the grant a grant or expiry entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantTerms {
    pub category: Category,
    pub priority: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// An open grant as shown: in balance entries, balance answers and alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    pub grant_id: String,
    pub category: Category,
    pub priority: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Credits granted (before any overdraft it repaid).
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// Credits left.
    #[serde(with = "rust_decimal::serde::str")]
    pub remaining: Decimal,
}

impl From<&OpenGrant> for GrantView {
    fn from(g: &OpenGrant) -> Self {
        GrantView {
            grant_id: g.grant_id.clone(),
            category: g.category,
            priority: g.priority,
            expires_at: g.expires_at,
            amount: g.amount,
            remaining: g.remaining,
        }
    }
}

fn one() -> u32 {
    1
}

/// A balance change: the `balances` topic message and the ClickHouse `ledger` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceEvent {
    /// Format of this event ([`ENTRY_FORMAT`]; absent: 1).
    #[serde(default = "one")]
    pub v: u32,
    /// Unique id of the entry: a hash of (account, kind, reference).
    pub entry_id: String,
    pub account_id: String,
    /// 1, 2, 3, ... per account, in the order the ledger applied the entries.
    pub seq: u64,
    pub kind: EntryKind,
    /// grant_id (grant and expiry entries) or debit_id.
    pub reference: String,
    pub description: String,
    /// Signed change: positive for grants, negative for debits and expiries.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance_before: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance_after: Decimal,
    /// When it happened: the grant's `occurred_at`, the debit's `last_event_at`, the
    /// expired grant's `expires_at`.
    pub occurred_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<EntryLine>,
    pub source: EntrySource,
    /// What paid for it, in draw-down order (debits, negative adjustments, expiries:
    /// negative lines, the overdraft last), or where a grant's credits went (the overdraft
    /// repaid, then the grant). The amounts sum to `amount` exactly (format 2).
    #[serde(default)]
    pub funded_by: Vec<FundingLine>,
    /// Grant and expiry entries: the grant's category, priority and expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantTerms>,
    /// The account's open grants after this entry, in draw-down order.
    #[serde(default)]
    pub grants: Vec<GrantView>,
    /// Credits used past the last open grant after this entry (>= 0).
    #[serde(default, with = "rust_decimal::serde::str")]
    pub overdraft: Decimal,
    /// The open grant that expires next after this entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_expiry: Option<GrantView>,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A balance crossed a threshold (`crossing`, `threshold`).
    #[default]
    LowBalance,
    /// A grant with credits left expires within the account's warning window (`grant`).
    GrantExpiring,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::LowBalance => "low_balance",
            AlertKind::GrantExpiring => "grant_expiring",
        }
    }
}

/// An alert on the `credit_alerts` topic: one per threshold crossing, one per expiring grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditAlert {
    pub alert_id: String,
    pub account_id: String,
    #[serde(default)]
    pub alert: AlertKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossing: Option<Crossing>,
    /// The threshold's value in credits.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub threshold: Option<Decimal>,
    /// The threshold as configured when it is a share of the last top-up (`"20%"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance: Decimal,
    pub seq: u64,
    /// The entry that crossed the threshold (low-balance alerts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    /// The expiring grant (grant-expiring alerts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantView>,
}

/// A request to the payment service to top an account up (`topup_requests` topic), raised
/// by the account's automatic top-up rule once per crossing of its `below` balance. Not a
/// grant: the ledger never creates credit; the payment service charges and sends a top-up,
/// ideally with `request_id` as its reference, so a request handled twice credits once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopupRequest {
    pub request_id: String,
    pub account_id: String,
    /// Credits to buy: the rule's fixed amount, or what refills to its target (at least
    /// `ledger.min_topup`, rounded up to cents).
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub rule: AutoTopup,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance: Decimal,
    pub seq: u64,
    pub occurred_at: DateTime<Utc>,
}
