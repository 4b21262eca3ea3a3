//! The ledger's answers, pure data: one [`LedgerAnswer`] per grant or command read from
//! `credit_grants`, on the `ledger_results` topic (key: `account_id`), so the CLI, the HTTP
//! API and a payment service learn the verdict the ledger committed: `applied`,
//! `already_applied` (same grant id and content: the original entry), `refused` (with the
//! reason), or `answered` (a status query or a settings change).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ledger::entry::GrantView;
use crate::ledger::funding::Category;
use crate::ledger::grant::GrantKind;
use crate::ledger::thresholds::AutoTopup;
use crate::rejection::RejectReason;

/// The ledger's decision on one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The grant was applied now (`entry`).
    Applied,
    /// The same grant id with the same content was applied before: nothing changed;
    /// `entry` is the original one. An idempotent success.
    AlreadyApplied,
    /// Nothing changed; `reason` says why.
    Refused,
    /// A query or a settings change was answered.
    Answered,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Applied => "applied",
            Verdict::AlreadyApplied => "already_applied",
            Verdict::Refused => "refused",
            Verdict::Answered => "answered",
        }
    }
}

/// Which command an answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    Grant,
    GrantStatus,
    AccountStatus,
    SetThresholds,
    SetAutoTopup,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Grant => "grant",
            CommandKind::GrantStatus => "grant_status",
            CommandKind::AccountStatus => "account_status",
            CommandKind::SetThresholds => "set_thresholds",
            CommandKind::SetAutoTopup => "set_auto_topup",
        }
    }
}

/// A ledger entry, referred to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRef {
    pub entry_id: String,
    pub seq: u64,
    #[serde(with = "rust_decimal::serde::str_option", default)]
    pub amount: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str_option", default)]
    pub balance_after: Option<Decimal>,
    pub occurred_at: Option<DateTime<Utc>>,
}

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// Applied, with credits left.
    Open,
    /// Applied, every credit used.
    UsedUp,
    /// Applied, its remainder forfeited at `expires_at`.
    Expired,
    /// Applied before the ledger kept grant terms: no detail.
    Applied,
    /// Not applied: the last send of this id was refused (`refusal`).
    Refused,
    /// Never seen by the ledger (or a refusal long forgotten).
    Unknown,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Open => "open",
            GrantState::UsedUp => "used_up",
            GrantState::Expired => "expired",
            GrantState::Applied => "applied",
            GrantState::Refused => "refused",
            GrantState::Unknown => "unknown",
        }
    }
}

/// A refusal, remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalView {
    pub reason: RejectReason,
    pub message: String,
}

/// What the ledger keeps of an applied grant and shows in its status: the kind, the terms
/// as resolved (category, priority, expiry) and the amount granted. Every field `None` for a
/// grant applied before the ledger kept them (format 0). Flattened into [`GrantStatus`] and
/// the ledger's grant marks: the same JSON fields in both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantFacts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<GrantKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Category>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Credits granted (negative for a negative adjustment).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub amount: Option<Decimal>,
}

impl GrantFacts {
    /// The facts of a grant as applied (its terms resolved to their defaults).
    pub fn of(g: &crate::ledger::grant::Grant) -> Self {
        GrantFacts {
            kind: Some(g.kind),
            category: Some(g.category()),
            priority: Some(g.priority()),
            expires_at: g.expires_at,
            amount: Some(g.amount),
        }
    }
}

/// A grant's status (answers to grants and to `grant_status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantStatus {
    pub grant_id: String,
    pub state: GrantState,
    #[serde(flatten)]
    pub facts: GrantFacts,
    /// Credits left (0 once closed).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub remaining: Option<Decimal>,
    /// Credits forfeited at expiry.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub forfeited: Option<Decimal>,
    /// The entry that applied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<EntryRef>,
    /// The entry that closed it (used up or expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_seq: Option<u64>,
    /// The last refusal of this id (a conflicting re-send, an invalid send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<RefusalView>,
}

impl GrantStatus {
    /// Nothing known of `grant_id`.
    pub fn unknown(grant_id: &str) -> Self {
        GrantStatus {
            grant_id: grant_id.to_string(),
            state: GrantState::Unknown,
            facts: GrantFacts::default(),
            remaining: None,
            forfeited: None,
            applied: None,
            closed_seq: None,
            refusal: None,
        }
    }
}

/// One threshold in force for an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdView {
    /// As configured: `"10"` or `"20%"`.
    pub rule: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub value: Decimal,
    /// The balance is announced below it.
    pub below: bool,
}

/// An account as the ledger holds it (answers to `account_status` and settings changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub account_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance: Decimal,
    /// Σ remaining of open paid grants.
    #[serde(with = "rust_decimal::serde::str")]
    pub paid: Decimal,
    /// Σ remaining of open promotional grants.
    #[serde(with = "rust_decimal::serde::str")]
    pub promotional: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub overdraft: Decimal,
    /// Open grants in draw-down order.
    pub grants: Vec<GrantView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_expiry: Option<GrantView>,
    pub thresholds: Vec<ThresholdView>,
    /// True when the account has its own thresholds (else `ledger.alert_thresholds`).
    pub custom_thresholds: bool,
    /// Seconds before an expiry that `grant_expiring` is raised (0: never).
    pub expiry_warning_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_topup: Option<AutoTopup>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub last_topup: Option<Decimal>,
    /// Entries so far (the last `seq`).
    pub entries: u64,
    pub updated_at: Option<DateTime<Utc>>,
    /// The ledger's clock for the account's partition (the last clock marker).
    pub clock: Option<DateTime<Utc>>,
}

/// The answer to one command on `credit_grants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerAnswer {
    /// The caller's request id (absent for grants sent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub account_id: String,
    pub command: CommandKind,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantStatus>,
    /// `applied`: the new entry; `already_applied`: the original one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountView>,
}
