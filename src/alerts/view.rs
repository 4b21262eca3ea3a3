//! Each account's recent alerts as the HTTP API lists them (`GET /v1/accounts/{id}/alerts`),
//! held in memory without ClickHouse: credit alerts (the ledger's `credit_alerts` topic:
//! low balance, grant expiring) and spend alerts (this module's `alerts` topic) in; per
//! account the newest [`KEEP`] out, newest first. Pure: the follower ([`follow`]) moves the
//! bytes. A replayed alert (same `alert_id`) is kept once.

pub mod follow;

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::SpendAlert;
use crate::ledger::entry::CreditAlert;

/// Alerts kept per account (the newest).
pub const KEEP: usize = 50;

/// One alert as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertRow {
    pub alert_id: String,
    /// When it was raised: a credit alert's `occurred_at` (the entry that crossed, or the
    /// warning's time); a spend alert's time on the topic (its window's end without one).
    pub at: DateTime<Utc>,
    /// `low_balance`, `grant_expiring` (credit alerts), `account_hourly_credits`,
    /// `execution_credits` (spend alerts).
    pub kind: String,
    /// `below` or `recovered` (low balance), else null.
    pub crossing: Option<String>,
    /// The threshold's value in credits (null for a grant expiring).
    #[serde(with = "rust_decimal::serde::str_option")]
    pub threshold: Option<Decimal>,
    /// The threshold as set when it is a share of the last top-up (`"20%"`), else null.
    pub threshold_share: Option<String>,
    /// The balance after the entry (credit alerts), else null.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub balance: Option<Decimal>,
    /// Credits spent in the window or by the execution (spend alerts), else null.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub amount: Option<Decimal>,
    pub execution_id: Option<String>,
    /// The expiring grant (grant expiring), else null.
    pub grant_id: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl AlertRow {
    pub fn from_credit(a: &CreditAlert) -> AlertRow {
        AlertRow {
            alert_id: a.alert_id.clone(),
            at: a.occurred_at,
            kind: a.alert.as_str().to_string(),
            crossing: a.crossing.map(|c| c.as_str().to_string()),
            threshold: a.threshold.map(|d| d.normalize()),
            threshold_share: a.rule.clone(),
            balance: Some(a.balance.normalize()),
            amount: None,
            execution_id: None,
            grant_id: a.grant.as_ref().map(|g| g.grant_id.clone()),
            expires_at: a.grant.as_ref().and_then(|g| g.expires_at),
        }
    }

    /// `at`: when the alert was written to its topic (`None`: its window's end).
    pub fn from_spend(a: &SpendAlert, at: Option<DateTime<Utc>>) -> AlertRow {
        AlertRow {
            alert_id: a.alert_id.clone(),
            at: at.unwrap_or(a.window_end),
            kind: a.rule.clone(),
            crossing: None,
            threshold: Some(a.threshold.normalize()),
            threshold_share: None,
            balance: None,
            amount: Some(a.amount.normalize()),
            execution_id: a.execution_id.clone(),
            grant_id: None,
            expires_at: None,
        }
    }
}

/// Every account's newest alerts.
#[derive(Debug, Default)]
pub struct AlertsView {
    accounts: HashMap<String, VecDeque<AlertRow>>,
    keep: usize,
}

impl AlertsView {
    /// A view keeping the newest `keep` alerts per account (at least 1).
    pub fn new(keep: usize) -> AlertsView {
        AlertsView {
            keep: keep.max(1),
            ..Default::default()
        }
    }

    /// Adds an alert of `account` (ignored when it is kept already, or older than all
    /// `keep` kept).
    pub fn add(&mut self, account: &str, row: AlertRow) {
        let kept = self.accounts.entry(account.to_string()).or_default();
        if kept.iter().any(|r| r.alert_id == row.alert_id) {
            return;
        }
        // Ascending by time, then id (a stable order for equal times).
        let key = |r: &AlertRow| (r.at, r.alert_id.clone());
        let at = kept.partition_point(|r| key(r) < key(&row));
        if kept.len() >= self.keep && at == 0 {
            return;
        }
        kept.insert(at, row);
        if kept.len() > self.keep {
            kept.pop_front();
        }
    }

    /// The account's alerts, newest first, of `kind` when given, at most `limit`.
    pub fn recent(&self, account: &str, kind: Option<&str>, limit: usize) -> Vec<AlertRow> {
        self.accounts
            .get(account)
            .map(|kept| {
                kept.iter()
                    .rev()
                    .filter(|r| kind.is_none_or(|k| r.kind == k))
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Alerts held, all accounts together.
    pub fn len(&self) -> usize {
        self.accounts.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, secs: i64) -> AlertRow {
        AlertRow {
            alert_id: id.into(),
            at: DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap(),
            kind: if secs % 2 == 0 {
                "low_balance"
            } else {
                "execution_credits"
            }
            .into(),
            crossing: None,
            threshold: None,
            threshold_share: None,
            balance: None,
            amount: None,
            execution_id: None,
            grant_id: None,
            expires_at: None,
        }
    }

    fn ids(rows: &[AlertRow]) -> Vec<&str> {
        rows.iter().map(|r| r.alert_id.as_str()).collect()
    }

    #[test]
    fn keeps_the_newest_once_each_newest_first() {
        let mut v = AlertsView::new(3);
        for (id, t) in [("a", 1), ("c", 3), ("b", 2), ("d", 4), ("c", 3), ("z", 0)] {
            v.add("acct", row(id, t));
        }
        v.add("other", row("o", 9));
        assert_eq!(ids(&v.recent("acct", None, 10)), ["d", "c", "b"]);
        assert_eq!(ids(&v.recent("acct", None, 2)), ["d", "c"]);
        assert_eq!(ids(&v.recent("acct", Some("low_balance"), 10)), ["d", "b"]);
        assert_eq!(ids(&v.recent("nobody", None, 10)), Vec::<&str>::new());
        assert_eq!(v.len(), 4);
    }

    #[test]
    fn money_is_decimal_strings() {
        let mut r = row("x", 0);
        r.threshold = Some("10.50".parse().unwrap());
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["threshold"], "10.50");
        assert_eq!(j["balance"], serde_json::Value::Null);
    }
}
