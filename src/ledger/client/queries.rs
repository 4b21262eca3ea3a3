//! Reads for the CLI and the HTTP API: an account's balance (with its open grants) and
//! history from the ClickHouse `ledger` table, and every voucher from the compacted
//! `voucher_state` changelog.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use serde::Serialize;

use super::ClientError;
use crate::config::Config;
use crate::kafka;
use crate::ledger::entry::{BalanceEvent, GrantView};
use crate::ledger::voucher::VoucherState;

/// Every voucher in the compacted `voucher_state` changelog (blocking).
pub fn list_vouchers(cfg: &Config) -> Result<Vec<VoucherState>, ClientError> {
    let mut rc = kafka::reader_config(cfg);
    rc.set("isolation.level", "read_committed");
    rc.set("enable.partition.eof", "true");
    let reader: BaseConsumer<crate::stage::ReaderContext> =
        rc.create_with_context(crate::stage::ReaderContext)?;
    let topic = &cfg.topics.voucher_state;
    let md = reader.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let parts: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    reader.assign(&tpl)?;
    let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let mut done = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while done.len() < parts.len() {
        if std::time::Instant::now() > deadline {
            return Err(ClientError::Other(format!("timed out reading {topic}")));
        }
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = m.key().unwrap_or_default().to_vec();
                if key != crate::stage::OFFSETS_KEY {
                    latest.insert(key, m.payload().map(<[u8]>::to_vec));
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            _ => {}
        }
    }
    let mut out: Vec<VoucherState> = latest
        .into_values()
        .flatten()
        .filter_map(|v| serde_json::from_slice(&v).ok())
        .collect();
    out.sort_by(|a, b| {
        a.def
            .valid_from
            .cmp(&b.def.valid_from)
            .then(a.def.masked.cmp(&b.def.masked))
    });
    Ok(out)
}

/// An open grant as the ledger table's last row of an account holds it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OpenGrantRow {
    pub grant_id: String,
    pub category: String,
    pub priority: u8,
    /// RFC 3339; absent: never expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub remaining: String,
}

/// The latest balance of an account, from ClickHouse.
#[derive(Debug, Clone, Serialize)]
pub struct Balance {
    pub account_id: String,
    pub balance: String,
    /// Credits used past the last open grant.
    pub overdraft: String,
    pub entries: u64,
    pub last_entry_at: String,
    /// Open grants in draw-down order, with what is left of each.
    pub grants: Vec<OpenGrantRow>,
    /// The open grant that expires first.
    pub next_expiry: Option<OpenGrantRow>,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct BalanceRecord {
    balance_after: i128,
    seq: u64,
    occurred_at: u32,
    overdraft: i128,
    open_grants: Vec<String>,
    open_categories: Vec<String>,
    open_priorities: Vec<u8>,
    open_expires: Vec<Option<u32>>,
    open_remaining: Vec<i128>,
}

fn dec(v: i128, scale: u32) -> String {
    Decimal::try_from_i128_with_scale(v, scale)
        .map(|d| d.normalize().to_string())
        .unwrap_or_else(|_| "overflow".into())
}

fn ts(secs: u32) -> String {
    chrono::DateTime::from_timestamp(i64::from(secs), 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

impl OpenGrantRow {
    /// The row of an open grant as the ledger holds it (times to the second, as ClickHouse).
    pub fn from_view(g: &GrantView) -> OpenGrantRow {
        OpenGrantRow {
            grant_id: g.grant_id.clone(),
            category: g.category.as_str().to_string(),
            priority: g.priority,
            expires_at: g.expires_at.map(secs),
            remaining: g.remaining.normalize().to_string(),
        }
    }
}

fn secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Balance {
    /// The balance answer of an account as the ledger holds it (its state in the changelog,
    /// or the ledger view): `grants` in draw-down order.
    pub fn from_ledger(
        account_id: &str,
        balance: Decimal,
        overdraft: Decimal,
        seq: u64,
        updated_at: Option<DateTime<Utc>>,
        grants: &[GrantView],
    ) -> Balance {
        let next_expiry = grants
            .iter()
            .filter(|g| g.expires_at.is_some())
            .min_by_key(|g| g.expires_at)
            .map(OpenGrantRow::from_view);
        Balance {
            account_id: account_id.to_string(),
            balance: balance.normalize().to_string(),
            overdraft: overdraft.normalize().to_string(),
            entries: seq,
            last_entry_at: updated_at.map(secs).unwrap_or_default(),
            grants: grants.iter().map(OpenGrantRow::from_view).collect(),
            next_expiry,
        }
    }
}

/// The balance after the account's last entry and its open grants; `None` when it has no
/// entries.
pub async fn balance(
    ch: &clickhouse::Client,
    account_id: &str,
) -> Result<Option<Balance>, ClientError> {
    let rows: Vec<BalanceRecord> = ch
        .query("SELECT balance_after, seq, occurred_at, overdraft, open_grants, open_categories, open_priorities, open_expires, open_remaining FROM ledger WHERE account_id = ? ORDER BY seq DESC LIMIT 1")
        .bind(account_id)
        .fetch_all()
        .await?;
    Ok(rows.into_iter().next().map(|r| {
        let grants: Vec<OpenGrantRow> = r
            .open_grants
            .iter()
            .enumerate()
            .map(|(i, g)| OpenGrantRow {
                grant_id: g.clone(),
                category: r.open_categories.get(i).cloned().unwrap_or_default(),
                priority: r.open_priorities.get(i).copied().unwrap_or_default(),
                expires_at: r.open_expires.get(i).copied().flatten().map(ts),
                remaining: dec(r.open_remaining.get(i).copied().unwrap_or_default(), 18),
            })
            .collect();
        let next_expiry = r
            .open_expires
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.map(|e| (e, i)))
            .min()
            .and_then(|(_, i)| grants.get(i).cloned());
        Balance {
            account_id: account_id.to_string(),
            balance: dec(r.balance_after, 18),
            overdraft: dec(r.overdraft, 18),
            entries: r.seq,
            last_entry_at: ts(r.occurred_at),
            grants,
            next_expiry,
        }
    }))
}

/// What paid for part of an entry (or where part of a grant went).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FundingRow {
    /// Absent for the overdraft.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    pub category: String,
    pub amount: String,
}

/// One line of an account's history.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistoryEntry {
    pub seq: u64,
    pub date: String,
    pub kind: String,
    pub reference: String,
    pub description: String,
    pub credit: String,
    pub debit: String,
    pub balance: String,
    /// Grant and expiry entries: the grant's category, priority, expiry.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub category: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub funded_by: Vec<FundingRow>,
    /// Debits: vendor price per asset (`asset_id`, `calls`, `quantities`, `cost`); with
    /// `markup` they add up to `debit` (the markup is its own line, never spread over the
    /// assets). Empty for grants.
    pub assets: Vec<serde_json::Value>,
    /// Debits: `debit` minus the assets' vendor price; "0" for grants.
    pub markup: String,
}

/// Which entries [`history`] reads: newest first, `seq < before_seq`, dates in `window`
/// (`[from, to)`), at most `limit` (1..=1000).
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub limit: u32,
    pub before_seq: Option<u64>,
    pub window: crate::report::Window,
}

impl HistoryEntry {
    /// The history line of a balance event, as [`history`] reads it back from ClickHouse:
    /// times to the second, zero credit or debit as "0", decimals normalized. The ledger
    /// view serves these from memory; `tests/faults.rs` compares both.
    pub fn from_event(e: &BalanceEvent) -> HistoryEntry {
        let (credit, debit) = if e.amount.is_sign_negative() {
            (Decimal::ZERO, -e.amount)
        } else {
            (e.amount, Decimal::ZERO)
        };
        let text = |d: Decimal| d.normalize().to_string();
        // The markup of a debit: what it charged beyond its assets' vendor price.
        let markup = if e.lines.is_empty() {
            Decimal::ZERO
        } else {
            debit - e.lines.iter().map(|l| l.cost).sum::<Decimal>()
        };
        HistoryEntry {
            markup: text(markup),
            seq: e.seq,
            date: secs(e.occurred_at),
            kind: e.kind.as_str().to_string(),
            reference: e.reference.clone(),
            description: e.description.clone(),
            credit: text(credit),
            debit: text(debit),
            balance: text(e.balance_after),
            category: e
                .grant
                .as_ref()
                .map(|g| g.category.as_str().to_string())
                .unwrap_or_default(),
            priority: e.grant.as_ref().map(|g| g.priority),
            expires_at: e.grant.as_ref().and_then(|g| g.expires_at).map(secs),
            funded_by: e
                .funded_by
                .iter()
                .map(|f| FundingRow {
                    grant_id: f.grant_id.clone(),
                    category: f.category.as_str().to_string(),
                    amount: text(f.amount),
                })
                .collect(),
            assets: e
                .lines
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "asset_id": l.asset_id,
                        "calls": l.calls,
                        "quantities": l.quantities,
                        "cost": text(l.cost),
                    })
                })
                .collect(),
        }
    }
}

/// For entries in ledger order, newest first (as [`history`] returns them): whether each is
/// dated earlier than an entry applied before it (a smaller `seq`, further down the list).
/// Dates are event times, so ledger order and date order can differ; the CLI marks those.
pub fn dates_out_of_order(newest_first: &[HistoryEntry]) -> Vec<bool> {
    let mut marks = vec![false; newest_first.len()];
    let mut latest_below: Option<&str> = None;
    for (i, e) in newest_first.iter().enumerate().rev() {
        // RFC 3339 UTC strings of one format compare in time order.
        if latest_below.is_some_and(|d| e.date.as_str() < d) {
            marks[i] = true;
        }
        if latest_below.is_none_or(|d| e.date.as_str() > d) {
            latest_below = Some(e.date.as_str());
        }
    }
    marks
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct HistoryRecord {
    seq: u64,
    occurred_at: u32,
    kind: String,
    reference: String,
    description: String,
    category: String,
    priority: Option<u8>,
    expires_at: Option<u32>,
    credit: i128,
    debit: i128,
    balance_after: i128,
    funded_grants: Vec<String>,
    funded_categories: Vec<String>,
    funded_amounts: Vec<i128>,
    assets: Vec<String>,
    asset_calls: Vec<u32>,
    asset_quantities: Vec<String>,
    asset_costs: Vec<i128>,
}

/// Entries newest first with `seq < before_seq` (keyset paging) and dates in the window, at
/// most `limit`.
pub async fn history(
    ch: &clickhouse::Client,
    account_id: &str,
    page: &HistoryPage,
) -> Result<Vec<HistoryEntry>, ClientError> {
    let secs = |t: Option<chrono::DateTime<chrono::Utc>>, or: i64| {
        t.map_or(or, |t| t.timestamp())
            .clamp(0, i64::from(u32::MAX))
    };
    let rows: Vec<HistoryRecord> = ch
        .query("SELECT seq, occurred_at, kind, reference, description, category, priority, expires_at, credit, debit, balance_after, funded_grants, funded_categories, funded_amounts, assets, asset_calls, asset_quantities, asset_costs FROM ledger WHERE account_id = ? AND seq < ? AND occurred_at >= toDateTime(?) AND occurred_at < toDateTime(?) ORDER BY seq DESC LIMIT ?")
        .bind(account_id)
        .bind(page.before_seq.unwrap_or(u64::MAX))
        .bind(secs(page.window.0, 0))
        .bind(secs(page.window.1, i64::from(u32::MAX)))
        .bind(page.limit.clamp(1, 1000))
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| HistoryEntry {
            markup: dec(
                if r.kind == "debit" {
                    r.debit - r.asset_costs.iter().map(|c| c * 1_000_000).sum::<i128>()
                } else {
                    0
                },
                18,
            ),
            seq: r.seq,
            date: ts(r.occurred_at),
            kind: r.kind,
            reference: r.reference,
            description: r.description,
            credit: dec(r.credit, 18),
            debit: dec(r.debit, 18),
            balance: dec(r.balance_after, 18),
            category: r.category,
            priority: r.priority,
            expires_at: r.expires_at.map(ts),
            funded_by: r
                .funded_grants
                .iter()
                .enumerate()
                .map(|(i, g)| FundingRow {
                    grant_id: (!g.is_empty()).then(|| g.clone()),
                    category: r.funded_categories.get(i).cloned().unwrap_or_default(),
                    amount: dec(r.funded_amounts.get(i).copied().unwrap_or_default(), 18),
                })
                .collect(),
            assets: r
                .assets
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let q: serde_json::Value = r
                        .asset_quantities
                        .get(i)
                        .and_then(|q| serde_json::from_str(q).ok())
                        .unwrap_or_default();
                    serde_json::json!({
                        "asset_id": a,
                        "calls": r.asset_calls.get(i).copied().unwrap_or(0),
                        "quantities": q,
                        "cost": dec(r.asset_costs.get(i).copied().unwrap_or(0), 12),
                    })
                })
                .collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_that_go_back_in_ledger_order_are_marked() {
        let e = |seq: u64, date: &str| HistoryEntry {
            seq,
            date: date.into(),
            kind: "debit".into(),
            reference: String::new(),
            description: String::new(),
            credit: "0".into(),
            debit: "1".into(),
            balance: "0".into(),
            category: String::new(),
            priority: None,
            expires_at: None,
            funded_by: vec![],
            assets: vec![],
            markup: "0".into(),
        };
        let h = [
            e(5, "2026-11-04T00:00:00Z"),
            e(4, "2026-11-01T00:00:00Z"),
            e(3, "2026-11-03T00:00:00Z"),
            e(2, "2026-11-02T00:00:00Z"),
            e(1, "2026-11-02T00:00:00Z"),
        ];
        assert_eq!(dates_out_of_order(&h), [false, true, false, false, false]);
        assert!(dates_out_of_order(&[]).is_empty());
    }
}
