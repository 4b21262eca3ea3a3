//! An account's executions, newest first, from ClickHouse: a window of the first call's
//! time, a page size and an opaque cursor in; a page of executions with their totals out.
//! An execution is listed once its first calls are in ClickHouse (the sink's batch age,
//! about a second after they commit); its trace (`GET /v1/executions/{id}`) has no such gap.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

pub use super::page::Cursor;
use super::page::window_secs;
use super::rows::{at, dec};
use crate::money::{self, DEBIT_SCALE, LINE_COST_SCALE};
use crate::report::Window;
use crate::trace::Status;

/// What to list.
#[derive(Debug, Clone)]
pub struct Query {
    /// By the time of the execution's first call, `[from, to)`.
    pub window: Window,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

/// One execution of a page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExecutionSummary {
    pub execution_id: String,
    pub status: Status,
    pub first_event_at: DateTime<Utc>,
    pub last_event_at: DateTime<Utc>,
    pub calls: u64,
    /// Vendor price of its calls; `subtotal + markup = total`.
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub markup: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// Sum of its debits (0 while open).
    #[serde(with = "rust_decimal::serde::str")]
    pub billed: Decimal,
    pub debits: u64,
}

/// A page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Page {
    pub account_id: String,
    pub executions: Vec<ExecutionSummary>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct LineAgg {
    execution_id: String,
    first_at: u32,
    last_at: u32,
    calls: u64,
    subtotal: i128,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct DebitAgg {
    execution_id: String,
    debits: u64,
    closed: u64,
    subtotal: i128,
    markup: i128,
    total: i128,
}

/// One page of `account`'s executions; `markup_rate` prices the markup of open ones.
pub async fn executions(
    ch: &clickhouse::Client,
    account: &str,
    q: &Query,
    markup_rate: Decimal,
) -> Result<Page, clickhouse::error::Error> {
    let (from, to) = window_secs(&q.window);
    let (c_at, c_id) = q
        .cursor
        .as_ref()
        .map_or((i64::from(u32::MAX), String::new()), |c| {
            (i64::from(c.at), c.id.clone())
        });
    let rows: Vec<LineAgg> = ch
        .query(
            "SELECT execution_id, toUInt32(min(occurred_at)) AS first_at, toUInt32(max(occurred_at)) AS last_at, count() AS calls, sum(cost) AS subtotal \
             FROM usage_transactions WHERE account_id = ? AND execution_id != '' AND occurred_at >= toDateTime(?) \
             GROUP BY execution_id \
             HAVING first_at >= ? AND first_at < ? AND (first_at < ? OR (first_at = ? AND execution_id < ?)) \
             ORDER BY first_at DESC, execution_id DESC LIMIT ?",
        )
        .bind(account)
        .bind(from)
        .bind(from)
        .bind(to)
        .bind(c_at)
        .bind(c_at)
        .bind(&c_id)
        .bind(q.limit + 1)
        .fetch_all()
        .await?;
    let more = rows.len() > q.limit as usize;
    let rows = &rows[..rows.len().min(q.limit as usize)];
    let ids: Vec<&str> = rows.iter().map(|r| r.execution_id.as_str()).collect();
    let debits: Vec<DebitAgg> = if ids.is_empty() {
        Vec::new()
    } else {
        ch.query(
            "SELECT execution_id, count() AS debits, countIf(kind = 'agent_execution') AS closed, sum(subtotal) AS subtotal, sum(markup) AS markup, sum(total) AS total \
             FROM debits WHERE account_id = ? AND has(?, execution_id) GROUP BY execution_id",
        )
        .bind(account)
        .bind(&ids)
        .fetch_all()
        .await?
    };
    let executions = rows
        .iter()
        .map(|r| {
            let subtotal = dec(r.subtotal, LINE_COST_SCALE);
            let d = debits.iter().find(|d| d.execution_id == r.execution_id);
            let billed = d.map_or(Decimal::ZERO, |d| dec(d.total, DEBIT_SCALE));
            // The debits' markup once they bill every call; before, the rate's (the same
            // number: the markup is exact and linear).
            let markup = match d {
                Some(d) if dec(d.subtotal, DEBIT_SCALE) == subtotal => dec(d.markup, DEBIT_SCALE),
                _ => money::debit_markup(subtotal, markup_rate),
            };
            ExecutionSummary {
                execution_id: r.execution_id.clone(),
                status: if d.is_some_and(|d| d.closed > 0) {
                    Status::Closed
                } else {
                    Status::Open
                },
                first_event_at: at(r.first_at, 0),
                last_event_at: at(r.last_at, 0),
                calls: r.calls,
                subtotal,
                markup,
                total: (subtotal + markup).normalize(),
                billed,
                debits: d.map_or(0, |d| d.debits),
            }
        })
        .collect();
    Ok(Page {
        account_id: account.to_string(),
        next_cursor: more.then(|| {
            let last = &rows[rows.len() - 1];
            Cursor {
                at: last.first_at,
                id: last.execution_id.clone(),
            }
            .encode()
        }),
        executions,
    })
}
