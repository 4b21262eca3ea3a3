//! `GET /v1/accounts` for operators (operator token; an account's key gets 403): every
//! account the ledger knows with its balance and last activity, from the ledger view in
//! memory (no ClickHouse; 503 while this instance is still reading it from Kafka).
//!
//! - `GET /v1/accounts?order=balance|account_id|last_activity&below=AMOUNT&limit=50&offset=0`
//!   -> `{"accounts": [{"account_id", "balance", "overdraft", "entries",
//!   "last_activity_at"}], "total", "next_offset"}`
//!
//! - `GET /v1/accounts/below-thresholds?limit=50&offset=0` -> `{"accounts": [{"account_id",
//!   "balance", "overdraft", "entries", "last_activity_at", "below": [{"threshold",
//!   "value"}]}], "total", "next_offset"}`: the accounts the ledger has announced to be
//!   below one of their thresholds (its own state, followed from its changelog), the lowest
//!   balance first; `below` names each such threshold as configured (`"10"`, `"20%"`) with
//!   its value in credits now, highest first
//!
//! `order=balance` (the default): the lowest balance first; `last_activity`: the most recent
//! first; ties by account id. `below`: only balances strictly below that amount (a decimal).
//! `total` counts the accounts that match; `next_offset` is `null` on the last page. Amounts
//! are decimal strings (normalized, as the balance answer writes them). Strict query string: an unknown or malformed parameter is a 400
//! naming it.

use std::str::FromStr;

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::HttpState;
use super::accounts::api;
use super::auth::Caller;
use super::params::{ApiError, Params};

/// The routes of this file (inside the auth layer).
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/accounts", get(list))
        .route("/v1/accounts/below-thresholds", get(below_thresholds))
}

/// One account of the list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AccountRow {
    pub account_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance: Decimal,
    /// Credits used past the last open grant (>= 0).
    #[serde(with = "rust_decimal::serde::str")]
    pub overdraft: Decimal,
    /// Ledger entries so far (the `seq` of the last one).
    pub entries: u64,
    /// When the last entry happened, to the second as the balance answer's
    /// `last_entry_at` (`null` when the ledger has no time for it).
    pub last_activity_at: Option<DateTime<Utc>>,
}

/// A threshold an account is below: as configured, and its value in credits now.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BelowRow {
    pub threshold: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub value: Decimal,
}

/// How the list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Balance,
    AccountId,
    LastActivity,
}

impl Order {
    fn parse(p: &Params) -> Result<Order, ApiError> {
        match p.get("order") {
            None | Some("balance") => Ok(Order::Balance),
            Some("account_id") => Ok(Order::AccountId),
            Some("last_activity") => Ok(Order::LastActivity),
            Some(v) => Err(ApiError::parameter(
                "order",
                Some(v),
                "order must be balance, account_id or last_activity",
            )),
        }
    }
}

/// Orders `rows` (see the module doc) and keeps those below `below`.
pub fn select(mut rows: Vec<AccountRow>, order: Order, below: Option<Decimal>) -> Vec<AccountRow> {
    if let Some(b) = below {
        rows.retain(|r| r.balance < b);
    }
    rows.sort_by(|a, b| {
        let first = match order {
            Order::Balance => a.balance.cmp(&b.balance),
            Order::AccountId => std::cmp::Ordering::Equal,
            Order::LastActivity => b.last_activity_at.cmp(&a.last_activity_at),
        };
        first.then_with(|| a.account_id.cmp(&b.account_id))
    });
    rows
}

fn amount(p: &Params, name: &str) -> Result<Option<Decimal>, ApiError> {
    let Some(v) = p.get(name) else {
        return Ok(None);
    };
    let ok = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-');
    match Decimal::from_str(v) {
        Ok(d) if ok => Ok(Some(d)),
        _ => Err(ApiError::parameter(
            name,
            Some(v),
            format!("{name} must be a decimal amount such as 10 or -2.50"),
        )),
    }
}

/// Rows of the view's accounts that pass `keep` (to the second, as the balance answer).
fn rows(
    view: &crate::ledger::view::LedgerView,
    keep: impl Fn(&crate::ledger::view::AccountView) -> bool,
) -> Vec<(AccountRow, Vec<BelowRow>)> {
    view.all()
        .filter(|(_, a)| a.seq > 0 && keep(a))
        .map(|(id, a)| {
            let row = AccountRow {
                account_id: id.to_string(),
                balance: a.balance.normalize(),
                overdraft: a.overdraft.normalize(),
                entries: a.seq,
                last_activity_at: a.updated_at,
            };
            let below = a
                .below
                .iter()
                .map(|(t, v)| BelowRow {
                    threshold: t.to_string(),
                    value: v.normalize(),
                })
                .collect();
            (row, below)
        })
        .collect()
}

fn to_second(mut r: AccountRow) -> AccountRow {
    r.last_activity_at = r
        .last_activity_at
        .and_then(|t| DateTime::from_timestamp(t.timestamp(), 0));
    r
}

async fn below_thresholds(
    State(s): State<HttpState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let api = api(&s)?;
    caller.require_operator("listing accounts below their thresholds")?;
    let p = Params::parse(raw.as_deref(), &["limit", "offset"])?;
    let limit = p.number("limit", 1, 1000)?.unwrap_or(50) as usize;
    let offset = p.number("offset", 0, u64::from(u32::MAX))?.unwrap_or(0) as usize;
    let mut found = {
        let shared = api.loaded_view()?;
        let view = shared.view.read().expect("view lock");
        rows(&view, |a| !a.below.is_empty())
    };
    found.sort_by(|a, b| {
        (a.0.balance.cmp(&b.0.balance)).then_with(|| a.0.account_id.cmp(&b.0.account_id))
    });
    let total = found.len();
    let page: Vec<serde_json::Value> = found
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|(r, below)| {
            let mut j = serde_json::to_value(to_second(r)).expect("a row serializes");
            j["below"] = serde_json::json!(below);
            j
        })
        .collect();
    let next = (offset + page.len() < total).then_some(offset + page.len());
    Ok(Json(serde_json::json!({
        "accounts": page,
        "total": total,
        "next_offset": next,
    })))
}

async fn list(
    State(s): State<HttpState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let api = api(&s)?;
    caller.require_operator("listing accounts")?;
    let p = Params::parse(raw.as_deref(), &["order", "below", "limit", "offset"])?;
    let order = Order::parse(&p)?;
    let below = amount(&p, "below")?;
    let limit = p.number("limit", 1, 1000)?.unwrap_or(50) as usize;
    let offset = p.number("offset", 0, u64::from(u32::MAX))?.unwrap_or(0) as usize;
    let rows: Vec<AccountRow> = {
        let shared = api.loaded_view()?;
        let view = shared.view.read().expect("view lock");
        rows(&view, |_| true).into_iter().map(|(r, _)| r).collect()
    };
    let rows = select(rows, order, below);
    let total = rows.len();
    // Ordered by the exact time; shown to the second.
    let page: Vec<AccountRow> = rows
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(to_second)
        .collect();
    let next = (offset + page.len() < total).then_some(offset + page.len());
    Ok(Json(serde_json::json!({
        "accounts": page,
        "total": total,
        "next_offset": next,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, balance: &str, at: i64) -> AccountRow {
        AccountRow {
            account_id: id.into(),
            balance: balance.parse().unwrap(),
            overdraft: Decimal::ZERO,
            entries: 1,
            last_activity_at: DateTime::from_timestamp(at, 0),
        }
    }

    fn ids(rows: &[AccountRow]) -> Vec<&str> {
        rows.iter().map(|r| r.account_id.as_str()).collect()
    }

    #[test]
    fn orders_and_filters_exactly() {
        let rows = vec![
            row("c", "10.00", 3),
            row("a", "9.999999", 1),
            row("b", "-0.01", 2),
            row("d", "10", 2),
        ];
        let r = select(rows.clone(), Order::Balance, None);
        assert_eq!(ids(&r), ["b", "a", "c", "d"]);
        assert_eq!(
            ids(&select(
                rows.clone(),
                Order::Balance,
                Some("10".parse().unwrap())
            )),
            ["b", "a"]
        );
        assert_eq!(
            ids(&select(rows.clone(), Order::LastActivity, None)),
            ["c", "b", "d", "a"]
        );
        assert_eq!(
            ids(&select(rows, Order::AccountId, None)),
            ["a", "b", "c", "d"]
        );
        let j = serde_json::to_value(row("x", "0.10", 0)).unwrap();
        assert_eq!(j["balance"], "0.10");
    }

    #[test]
    fn amounts_are_decimals_not_floats() {
        let p = Params::parse(Some("below=1e3"), &["below"]).unwrap();
        assert_eq!(
            amount(&p, "below").unwrap_err().body()["parameter"],
            "below"
        );
        let p = Params::parse(Some("below=12.50"), &["below"]).unwrap();
        assert_eq!(amount(&p, "below").unwrap(), Some("12.50".parse().unwrap()));
    }
}
