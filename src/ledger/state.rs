//! The ledger's state records, pure data: one account ([`AccountState`]), one applied grant
//! ([`GrantMark`]), one remembered refusal ([`RefusalMark`]), as the compacted `ledger_state`
//! changelog holds them (JSON values). Records written by earlier builds still read: an
//! account without `v` is migrated by [`AccountState::migrate_v0`], a grant mark that is a
//! bare number is a content hash.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ledger::answer::GrantFacts;
use crate::ledger::funding::{Category, DEFAULT_PRIORITY, Funds, OpenGrant};
use crate::ledger::thresholds::{AccountSettings, Threshold, derive_below, effective};

/// Format of the account records this build writes.
pub const ACCOUNT_FORMAT: u32 = 1;

/// The grant that holds a positive balance carried over from format 0 (before grants had
/// terms): paid, priority 50, never expires, drawn after every other grant of its priority.
pub const OPENING_GRANT_ID: &str = "opening-balance";

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One account's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    #[serde(with = "rust_decimal::serde::str")]
    pub balance: Decimal,
    pub seq: u64,
    pub updated_at: Option<DateTime<Utc>>,
    /// Record format: 0 (absent) before grants had terms, [`ACCOUNT_FORMAT`] now.
    #[serde(default)]
    pub v: u32,
    /// Open grants in draw-down order and the overdraft; `balance` = `funds.balance()`.
    #[serde(default)]
    pub funds: Funds,
    /// The amount of the last top-up (thresholds given as a share of it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub last_topup: Option<Decimal>,
    /// Thresholds (their text) the account has been announced to be below.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub below: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub settings: AccountSettings,
    /// A top-up request was raised and the balance has not been back at `below` since.
    #[serde(default, skip_serializing_if = "is_false")]
    pub topup_pending: bool,
    /// Top-up requests raised so far (their ids count them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub topup_requests: u64,
}

fn is_default(s: &AccountSettings) -> bool {
    *s == AccountSettings::default()
}

impl AccountState {
    /// A new account: balance 0, below every positive default threshold.
    pub fn new(defaults: &[Threshold]) -> Self {
        let mut a = AccountState {
            v: ACCOUNT_FORMAT,
            ..Default::default()
        };
        a.below = derive_below(&a.effective(defaults), Decimal::ZERO);
        a
    }

    /// The thresholds in force (the account's own, else `defaults`) with their values.
    pub fn effective(&self, defaults: &[Threshold]) -> Vec<(Threshold, Decimal)> {
        let ts = self.settings.thresholds.as_deref().unwrap_or(defaults);
        effective(ts, self.last_topup)
    }

    /// Format 0 held only the balance: a positive one becomes the [`OPENING_GRANT_ID`]
    /// grant, a negative one the overdraft; the announced-below set follows the balance
    /// (what format 0's crossing rule implied).
    pub fn migrate_v0(&mut self, defaults: &[Threshold]) {
        if self.v != 0 {
            return;
        }
        self.funds = Funds::default();
        if self.balance > Decimal::ZERO {
            self.funds.grants.push(OpenGrant {
                grant_id: OPENING_GRANT_ID.into(),
                category: Category::Paid,
                priority: DEFAULT_PRIORITY,
                expires_at: None,
                seq: 0,
                amount: self.balance,
                remaining: self.balance,
                warned: false,
            });
        } else {
            self.funds.overdraft = -self.balance;
        }
        self.below = derive_below(&self.effective(defaults), self.balance);
        self.v = ACCOUNT_FORMAT;
    }

    /// The warning window in seconds (the account's, else `default`; 0: none).
    pub fn warning_secs(&self, default: u64) -> u64 {
        self.settings.expiry_warning_secs.unwrap_or(default)
    }

    /// The earliest instant something is due: a grant's expiry, or its warning (window
    /// before the expiry, once).
    pub fn next_deadline(&self, default_warning_secs: u64) -> Option<DateTime<Utc>> {
        let window = self.warning_secs(default_warning_secs);
        self.funds
            .grants
            .iter()
            .filter_map(|g| {
                let e = g.expires_at?;
                let warn = (!g.warned).then(|| warn_at(g.expires_at, window)).flatten();
                Some(warn.map_or(e, |w| w.min(e)))
            })
            .min()
    }
}

/// When a grant expiring at `expires_at` is announced, `window` seconds before (none for a
/// grant that never expires or a window of 0; the earliest instant for a window reaching
/// before it).
pub fn warn_at(expires_at: Option<DateTime<Utc>>, window: u64) -> Option<DateTime<Utc>> {
    let e = expires_at?;
    if window == 0 {
        return None;
    }
    let w = i64::try_from(window)
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| e.checked_sub_signed(d));
    Some(w.unwrap_or(DateTime::<Utc>::MIN_UTC))
}

/// How a grant closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// Every credit of it was used (or it went to the overdraft).
    UsedUp,
    /// Its remainder was forfeited at `expires_at`.
    Expired,
}

/// When and how a grant closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    pub by: ClosedBy,
    /// The account's entry that closed it.
    pub seq: u64,
    /// Credits forfeited (expiry), else 0.
    #[serde(with = "rust_decimal::serde::str")]
    pub forfeited: Decimal,
}

/// An applied grant, remembered for good (a payment reference can be re-sent days later):
/// its content hash (idempotency) and what the status answer needs. Format 0 kept the
/// hash only (a bare number): the other fields are then `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantMark {
    pub hash: u64,
    #[serde(flatten)]
    pub facts: GrantFacts,
    /// The entry that applied it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<Closed>,
}

impl GrantMark {
    /// Reads a changelog value: a JSON object, or format 0's bare hash.
    pub fn read(v: &[u8]) -> Result<GrantMark, String> {
        if let Ok(m) = serde_json::from_slice::<GrantMark>(v) {
            return Ok(m);
        }
        let hash = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or("grant mark is neither a record nor a number")?;
        Ok(GrantMark {
            hash,
            facts: GrantFacts::default(),
            seq: None,
            entry_id: None,
            occurred_at: None,
            closed: None,
        })
    }
}

/// A refused grant id, remembered for its status answer (bounded per partition, oldest
/// forgotten first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalMark {
    /// Order of remembering (eviction).
    pub n: u64,
    pub reason: crate::rejection::RejectReason,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn format_0_records_read_and_migrate() {
        let old = br#"{"balance":"12.5","seq":3,"updated_at":"2026-03-01T10:00:00Z"}"#;
        let mut a: AccountState = serde_json::from_slice(old).unwrap();
        assert_eq!(a.v, 0);
        let defaults = [
            Threshold::Credits(Decimal::TEN),
            Threshold::Credits(Decimal::ZERO),
        ];
        a.migrate_v0(&defaults);
        assert_eq!(a.funds.balance(), Decimal::from_str("12.5").unwrap());
        assert_eq!(a.funds.grants[0].grant_id, OPENING_GRANT_ID);
        assert!(a.below.is_empty(), "12.5 is below neither 10 nor 0");
        let mut neg: AccountState =
            serde_json::from_slice(br#"{"balance":"-3","seq":1,"updated_at":null}"#).unwrap();
        neg.migrate_v0(&defaults);
        assert_eq!(
            (neg.funds.overdraft, neg.funds.balance()),
            (Decimal::from(3), Decimal::from(-3))
        );
        assert!(neg.below.contains("10") && neg.below.contains("0"));
        let m = GrantMark::read(b"1234567").unwrap();
        assert_eq!((m.hash, m.seq), (1234567, None));
        let back = GrantMark::read(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
